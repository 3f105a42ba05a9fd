//! Botline's Postgres backend: the queue, the dedupe set and the records in one Postgres
//! database that several Botline instances share, behind a load balancer.
//!
//! [`PostgresBackend`] implements every capability of [`botline_core::Backend`] with the
//! semantics of the embedded SQLite backend (`botline-sqlite`), table for table, and passes the
//! same shared suite (`botline_core::backend_suite!`):
//!
//! - **Enqueue** is one statement: the `update_id` is the primary key of `updates`, so a
//!   duplicate within the dedupe window inserts nothing, and two instances receiving the same
//!   update at once store it once. It returns after `COMMIT`, which Postgres makes durable
//!   (`synchronous_commit`; a warning is logged at connect when the server has it `off`).
//! - **Apply** writes an update's records and its outcome (the redacted body, a redeemed
//!   registration token, the registration, the outbox calls, the sessions its handler wrote)
//!   and marks the update done, in one transaction that first locks the update's row: a
//!   retried or concurrent apply of the same update waits, then finds it done and writes
//!   nothing ([`Applied::AlreadyDone`]). So [`Store::apply_acknowledges`] is true. An update
//!   whose handler redeemed no token and wrote no session (nearly all) is applied by one
//!   statement, `botline_apply` (migration 0005), which is its own transaction: one round trip
//!   to the server instead of ten.
//! - **Retries**: a failed attempt waits out an exponential backoff; an expired lease counts as an
//!   attempt; after [`RetryPolicy::max_attempts`] the update is a dead letter, listed, shown and
//!   redriven by [`DeadLetters`].
//! - **Housekeeping** forgets done updates older than the dedupe window (their bodies go with
//!   them) and deletes expired sessions, in batches that skip rows another instance holds.
//!
//! ```no_run
//! use botline_core::{Queue, QueueConfig};
//! use botline_postgres::{PostgresBackend, PostgresOptions};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), botline_core::BackendError> {
//! let options = PostgresOptions::default()
//!     .max_connections(16)
//!     .acquire_timeout(Duration::from_millis(1500));
//! let backend = PostgresBackend::connect_with(
//!     "postgres://botline:secret@db.internal:5432/botline",
//!     QueueConfig::default(),
//!     options,
//! )
//! .await?; // migrated
//! backend.ping().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # One chat at a time, across instances
//!
//! Updates with the same [`OrderKey`](botline_core::OrderKey) (a chat) must be handed out one at
//! a time, in `update_id` order, even when several processes call [`Queue::receive`] at once.
//! Picking "the oldest pending update of each key" and locking it with `FOR UPDATE SKIP LOCKED`
//! is not enough on its own: each statement decides on a snapshot taken when it started, so two
//! instances can each see a different row as a key's head (an update with a lower id committed
//! in between, a lease committed just after the snapshot) and lease one each. So `receive` is
//! one transaction of two statements:
//!
//! 1. **Claim keys.** Find the keys whose head (the pending update with the lowest id) is visible
//!    (not leased, backoff over) and that have no update in flight, and take a transaction-level
//!    advisory lock per key with `pg_try_advisory_xact_lock(namespace, hashtext(key))`. A key
//!    another instance is leasing right now is skipped, not waited for.
//! 2. **Lease.** With the locks held, a *new* statement (so a new snapshot, which sees every lease
//!    committed by whoever held a key's lock before) checks each claimed key again, locks its head
//!    row `FOR UPDATE SKIP LOCKED` (skipping a row a worker is acknowledging at that moment), and
//!    leases it: `attempts + 1`, a fresh receipt, `visible_at = now + lease`. A head out of
//!    attempts (its leases expired) is dead-lettered instead.
//!
//! The advisory locks are released at `COMMIT`, after the leases are visible. Every decision to
//! lease an update of a key is therefore made by the one transaction holding that key's lock, on
//! a snapshot that contains every earlier decision: at most one update of a key is ever in
//! flight. Acknowledging, failing, applying and expiry only ever take an update out of flight,
//! and need no claim lock. A hash collision between two keys only makes them wait for each other.
//! An update that arrives late with a lower id than one already in flight waits until that one
//! is done (the embedded backend would hand it out at once): one at a time wins over order.
//!
//! A key's backlog drains in linear time: an update enqueued behind a lower pending one of its key
//! is *parked* (`visible_at` = the largest bigint), out of the range the claim scans, and a
//! trigger brings the key's next one forward when an update leaves the pending state
//! (migration 0003). Enqueueing and bringing forward serialise per key on an advisory lock of a
//! third namespace, held for the rest of their transaction, so the lowest pending update of a key
//! is never left parked; enqueueing takes it last, after its own rows are written, so that a
//! redelivery waiting on a finishing update's row never holds it. The claim's ranges stop below
//! the parked value, and the lease finds a claimed key's head as its lowest pending update
//! through the pending index, so no statement reads a key's backlog
//! (`cargo bench -p botline-bench --bench backlog`). Parking is an optimisation only: the claim
//! still takes an update only with no lower one of its key pending. A redriven update is not
//! parked.
//!
//! The outbox hands out Bot API calls the same way, one per chat at a time, under locks of its own
//! namespace.
//!
//! # Time
//!
//! Leases, backoffs, receive times and the dedupe window run on the database's clock
//! (`now()` at the start of each transaction), which all instances share, so instances whose
//! clocks disagree still agree on when a lease expires. Record times (`createdAt`, session and
//! token expiry) are the caller's, as in the embedded backend.
//!
//! # When Postgres is away
//!
//! Every call returns [`BackendError::Unavailable`] within a deadline: waiting for a pooled
//! connection (connecting included) is bounded by [`PostgresOptions::acquire_timeout`], each
//! statement by the server-side `statement_timeout`, and the whole call by a client-side deadline
//! (the two added, plus a second) that also holds when the network stops answering. Keep the
//! acquire timeout below the receiver's ack timeout, so that it answers 503 in time. The pool
//! reconnects by itself once the server is back. Error text and `Debug` output name the server as
//! `postgres://user@host:port/db`, never with the password.
//!
//! # Setting up
//!
//! Give Botline a database of its own, or a schema of its own through the URL
//! (`?options=-c%20search_path%3Dbotline`), on Postgres 13 or newer. [`PostgresBackend::connect`]
//! runs the migrations in `migrations/` (sqlx's migrator, under its own advisory lock, so
//! instances starting together migrate once).
//!
//! TLS (rustls) follows the URL's `sslmode` as libpq does: `disable`; `prefer` (the default:
//! TLS when the server offers it, its certificate not checked); `require` (TLS or no
//! connection, certificate not checked); `verify-ca` (the server's certificate must chain to the
//! system's certificate store or to the CA file named by `sslrootcert`); `verify-full` (that, and
//! the certificate must name the host in the URL). Managed Postgres (RDS, Cloud SQL, Neon,
//! Supabase) wants `verify-full` with the provider's CA bundle as `sslrootcert`. Unlike libpq,
//! `verify-ca` checks the host name too (sqlx 0.8 with rustls 0.23.24 or newer, sqlx issue
//! #3793, fixed in sqlx 0.9): stricter, never weaker.
//!
//! # Limits
//!
//! - A redacted body is overwritten in place, but Postgres keeps the old row version until
//!   `VACUUM` reclaims it, and in its WAL and backups; the embedded backend zeroes it.
//! - Text the store keeps cannot hold the NUL character in Postgres; a NUL in a stored field is
//!   written as U+FFFD (raw bodies keep it escaped, byte for byte).

mod migrations;
mod outbox;
mod queue;
mod secrets;
mod store;

use botline_core::{BackendError, QueueConfig};
use secrets::Secrets;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx_core::migrate::MigrateError;
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use botline_core::{Applied, DeadLetters, Queue, RetryPolicy, Store};

/// Makes rustls's ring provider the process's default, unless one is set already. sqlx brings
/// its own provider for its connections but, for `sslmode=verify-ca`, builds the certificate
/// verifier with the process's default, which rustls cannot pick by itself when a build enables
/// both of its providers (the AWS SDK in the same binary enables aws-lc-rs): it panics.
pub fn install_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one in between: that one serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// How [`PostgresBackend`] uses its pool. Built from [`Default`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    max_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Duration,
    migration_timeout: Duration,
}

impl Default for PostgresOptions {
    /// 10 connections, 1.5 s to get one (connecting included: below the receiver's default ack
    /// timeout of 2 s), 5 s per statement, 60 s for the migrations.
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_millis(1500),
            statement_timeout: Duration::from_secs(5),
            migration_timeout: Duration::from_secs(60),
        }
    }
}

impl PostgresOptions {
    /// The most connections the pool opens (at least 1).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long a call waits for a connection, connecting included, before it is
    /// [`BackendError::Unavailable`]: how fast an unreachable server is reported.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The server-side `statement_timeout` of every connection: a statement that runs longer
    /// is cancelled and the call is [`BackendError::Unavailable`].
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How long the migrations may take, waiting for another instance's included.
    pub fn migration_timeout(mut self, timeout: Duration) -> Self {
        self.migration_timeout = timeout;
        self
    }

    /// The client-side deadline of one call: it holds even when the network stops answering.
    fn deadline(&self) -> Duration {
        self.acquire_timeout + self.statement_timeout + Duration::from_secs(1)
    }
}

/// The Postgres backend. Cheap to clone; clones share one pool.
#[derive(Clone)]
pub struct PostgresBackend {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    config: QueueConfig,
    options: PostgresOptions,
    /// `postgres://user@host:port/db`, for messages: never the password.
    target: String,
    secrets: Secrets,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("target", &self.inner.target)
            .field("config", &self.inner.config)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl PostgresBackend {
    /// Connects with [`PostgresOptions::default`] and runs the migrations.
    ///
    /// `url` is a libpq-style URL, `postgres://user:password@host:5432/db`.
    pub async fn connect(url: &str, config: QueueConfig) -> Result<Self, BackendError> {
        Self::connect_with(url, config, PostgresOptions::default()).await
    }

    /// Connects and runs the migrations: [`BackendError::Unavailable`] when the server cannot
    /// be reached within the acquire timeout or the URL is not valid, [`BackendError::Corrupt`]
    /// when the database was migrated by a newer build.
    pub async fn connect_with(
        url: &str,
        config: QueueConfig,
        options: PostgresOptions,
    ) -> Result<Self, BackendError> {
        let backend = Self::connect_lazy(url, config, options)?;
        backend.migrate().await?;
        backend.warn_if_commits_are_not_durable().await;
        Ok(backend)
    }

    /// Like [`connect_with`](Self::connect_with) but opens no connection and runs no
    /// migrations: for a process that must start while the database is down. Connections are
    /// opened by the first call; call [`migrate`](Self::migrate) before relying on the schema.
    /// Must be called inside a tokio runtime.
    pub fn connect_lazy(
        url: &str,
        config: QueueConfig,
        options: PostgresOptions,
    ) -> Result<Self, BackendError> {
        install_tls_provider();
        let secrets = Secrets::of_url(url);
        let connect = PgConnectOptions::from_str(url).map_err(|e| {
            BackendError::Unavailable(format!(
                "the Postgres URL is not valid ({}): expected postgres://user:password@host:port/db",
                secrets.scrub(&e.to_string())
            ))
        })?;
        let target = format!(
            "postgres://{}@{}:{}/{}",
            connect.get_username(),
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or_default()
        );
        // A backslash keeps the space in the value: Postgres splits `options` at spaces.
        let connect = connect.application_name("botline").options([
            (
                "statement_timeout",
                options.statement_timeout.as_millis().to_string(),
            ),
            (
                "idle_in_transaction_session_timeout",
                options.deadline().as_millis().to_string(),
            ),
            ("default_transaction_isolation", r"read\ committed".into()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                config,
                options,
                target,
                secrets,
            }),
        })
    }

    /// Brings the schema up to this build's, once however many instances call it at once.
    pub async fn migrate(&self) -> Result<(), BackendError> {
        let timeout = self.inner.options.migration_timeout;
        // A connection of its own, on which statements may run as long as the migration may
        // (waiting for another instance's migration included).
        let connect = self
            .inner
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .options([("statement_timeout", timeout.as_millis().to_string())]);
        let migrated = async {
            let migrator = migrations::migrator()
                .await
                .map_err(|e| self.migration_error(e))?;
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(self.inner.options.acquire_timeout)
                .connect_lazy_with(connect);
            let migrated = migrator.run(&pool).await;
            pool.close().await;
            migrated.map_err(|e| self.migration_error(e))
        };
        let deadline = self.inner.options.acquire_timeout + timeout + Duration::from_secs(1);
        self.within(deadline, migrated).await
    }

    /// The server, as `postgres://user@host:port/db` (never with the password).
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    async fn warn_if_commits_are_not_durable(&self) {
        let level = self
            .run(async {
                let level: String =
                    sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
                        .fetch_one(&self.inner.pool)
                        .await?;
                Ok(level)
            })
            .await;
        if let Ok(level) = level
            && level == "off"
        {
            tracing::warn!(
                target = %self.inner.target,
                "synchronous_commit is off: an update acknowledged to Telegram can be lost if \
                 Postgres crashes; set it to on"
            );
        }
    }

    fn migration_error(&self, e: MigrateError) -> Fault {
        match e {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => Fault::Sql(e),
            MigrateError::VersionMissing(version) => {
                Fault::Backend(BackendError::Corrupt(format!(
                    "{} has migration {version}, which this build does not know: it was migrated by a \
                 newer Botline",
                    self.inner.target
                )))
            }
            MigrateError::VersionMismatch(version) => {
                Fault::Backend(BackendError::Corrupt(format!(
                    "{}: migration {version} was changed after it was applied",
                    self.inner.target
                )))
            }
            e => Fault::Backend(BackendError::Corrupt(format!(
                "{}: {}",
                self.inner.target,
                self.inner.secrets.scrub(&e.to_string())
            ))),
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    pub(crate) fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    /// Runs `work` within the call deadline and says what its failure means to the caller.
    pub(crate) async fn run<T>(
        &self,
        work: impl Future<Output = Result<T, Fault>>,
    ) -> Result<T, BackendError> {
        self.within(self.inner.options.deadline(), work).await
    }

    async fn within<T>(
        &self,
        deadline: Duration,
        work: impl Future<Output = Result<T, Fault>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(deadline, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Fault::Sql(e))) => Err(self.error(&e)),
            Ok(Err(Fault::Backend(e))) => Err(e),
            Err(_) => Err(BackendError::Unavailable(format!(
                "{} did not answer within {deadline:?}",
                self.inner.target
            ))),
        }
    }

    /// What a driver error means to the caller, its text scrubbed of the password.
    fn error(&self, e: &sqlx::Error) -> BackendError {
        let target = &self.inner.target;
        let scrub = |text: &str| self.inner.secrets.scrub(text);
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default().into_owned();
                let message = scrub(db.message());
                if code == "57014" {
                    BackendError::Unavailable(format!(
                        "{target}: a statement was cancelled after the statement timeout of {:?}: \
                         {message} (SQLSTATE {code})",
                        self.inner.options.statement_timeout
                    ))
                } else {
                    BackendError::Unavailable(format!("{target}: {message} (SQLSTATE {code})"))
                }
            }
            sqlx::Error::PoolTimedOut => BackendError::Unavailable(format!(
                "no connection to {target} within {:?}: is the server up and reachable?",
                self.inner.options.acquire_timeout
            )),
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::ColumnNotFound(_) => {
                BackendError::Corrupt(format!("{target}: {}", scrub(&e.to_string())))
            }
            _ => BackendError::Unavailable(format!("{target}: {}", scrub(&e.to_string()))),
        }
    }
}

/// Why a unit of work failed: the driver (mapped once, by [`PostgresBackend::run`]) or a
/// verdict of the work itself.
#[derive(Debug)]
pub(crate) enum Fault {
    Sql(sqlx::Error),
    Backend(BackendError),
}

impl From<sqlx::Error> for Fault {
    fn from(e: sqlx::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<BackendError> for Fault {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

/// Milliseconds, as the queue's columns hold them.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A count or limit for SQL.
pub(crate) fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Postgres text cannot hold NUL: it is stored as U+FFFD.
pub(crate) fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(value)
    }
}

/// [`text`] of an optional field.
pub(crate) fn opt_text(value: Option<&String>) -> Option<Cow<'_, str>> {
    value.map(|value| text(value))
}

/// A count from Postgres (never negative) as the core's counts are.
pub(crate) fn count(n: i64) -> u64 {
    n.unsigned_abs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_and_other_text_borrowed() {
        assert!(matches!(text("plain"), Cow::Borrowed("plain")));
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
    }

    #[tokio::test]
    async fn debug_and_url_errors_never_show_the_password() {
        let backend = PostgresBackend::connect_lazy(
            "postgres://bot:Pa55-w0rd@db.example:5433/botline",
            QueueConfig::default(),
            PostgresOptions::default(),
        )
        .unwrap();
        let debug = format!("{backend:?}");
        assert!(
            debug.contains("postgres://bot@db.example:5433/botline"),
            "{debug}"
        );
        assert!(!debug.contains("Pa55-w0rd"), "{debug}");

        let err = PostgresBackend::connect_lazy(
            "postgres://bot:Pa55-w0rd@db.example:port/botline",
            QueueConfig::default(),
            PostgresOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, BackendError::Unavailable(_)), "{err}");
        assert!(!format!("{err} {err:?}").contains("Pa55-w0rd"), "{err}");

        let err = PostgresBackend::connect_lazy(
            "postgres://bot:Pa55-w0rd@db.example/botline?sslmode=sometimes",
            QueueConfig::default(),
            PostgresOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("ssl_mode"), "{err}");
        assert!(!format!("{err} {err:?}").contains("Pa55-w0rd"), "{err}");
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            PostgresBackend::connect_lazy(
                &format!("postgres://bot:Pa55-w0rd@db.example/botline?sslmode={mode}"),
                QueueConfig::default(),
                PostgresOptions::default(),
            )
            .unwrap();
        }
    }
}
