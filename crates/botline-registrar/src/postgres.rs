//! [`PostgresRegistrar`]: a Postgres function decides.

use percent_encoding::percent_decode_str;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Column, Executor, Postgres, Statement, Type, TypeInfo};

use crate::identifier::{Dialect, QualifiedName};
use crate::redact::Secrets;
use crate::{Registrar, RegistrarError, RegistrationRequest};

/// The signature every registration function must have, as operators read it.
const SIGNATURE: &str = "(p_username text, p_token text, p_telegram_user_id bigint, \
                         p_chat_id bigint) RETURNS boolean";

/// How [`PostgresRegistrar`] uses its pool. Built from [`Default`] and the setters.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    max_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Duration,
}

impl Default for PostgresOptions {
    /// 4 connections, 3 s to get one (connecting included), 5 s per statement.
    fn default() -> Self {
        Self {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
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
    /// [`RegistrarError::Unavailable`]: how fast an unreachable server is reported.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The server-side `statement_timeout` of every connection: a function that runs longer is
    /// cancelled and the call is [`RegistrarError::Unavailable`].
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }
}

/// Registers through a Postgres function `fn(text, text, bigint, bigint) RETURNS boolean`,
/// called as `SELECT "schema"."fn"($1::text, $2::text, $3::bigint, $4::bigint)` with the
/// username, the token, the Telegram user id and the chat id.
///
/// `true` registers, `false` or `NULL` (or no row) refuses. The function runs in its own
/// transaction (autocommit) under the pool's `statement_timeout`. An example function, idempotent
/// as it must be, is in the crate's `sql/example_postgres.sql`.
pub struct PostgresRegistrar {
    pool: PgPool,
    function: QualifiedName,
    call: String,
    /// `postgres://user@host:port/db`, for messages: never the password.
    target: String,
    secrets: Secrets,
    options: PostgresOptions,
}

impl fmt::Debug for PostgresRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresRegistrar")
            .field("target", &self.target)
            .field("function", &self.function)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PostgresRegistrar {
    /// Opens the pool and [checks](Self::check) that `function` exists with the expected
    /// signature: [`RegistrarError::Unavailable`] when the server cannot be reached within the
    /// acquire timeout, [`RegistrarError::Misconfigured`] when the URL or the function is wrong.
    ///
    /// `url` is a libpq-style URL (`postgres://user:password@host:5432/db?sslmode=verify-full`);
    /// `sslmode` is `disable`, `prefer` (the default: TLS when the server offers it, its
    /// certificate unchecked), `require` (TLS, certificate unchecked), `verify-ca` or
    /// `verify-full` (the certificate checked against the system's store and the file named by
    /// `sslrootcert`, and for `verify-full` the host name too), as libpq reads them;
    /// `function` is `name` or `schema.name`, unquoted parts folded to lower case as Postgres
    /// does, `"Quoted"` parts kept as written.
    pub async fn connect(
        url: &str,
        function: &str,
        options: PostgresOptions,
    ) -> Result<Self, RegistrarError> {
        let registrar = Self::connect_lazy(url, function, options)?;
        registrar.check().await?;
        Ok(registrar)
    }

    /// Like [`connect`](Self::connect) but opens no connection: for a process that must start
    /// while the database is down. Connections are opened by the first call. Must be called
    /// inside a tokio runtime.
    pub fn connect_lazy(
        url: &str,
        function: &str,
        options: PostgresOptions,
    ) -> Result<Self, RegistrarError> {
        // As botline-postgres's `install_tls_provider`: sqlx's verify-ca path needs the
        // process's default rustls provider, which rustls cannot pick when a build enables both
        // of its providers.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let function = QualifiedName::parse(function, Dialect::Postgres)
            .map_err(RegistrarError::Misconfigured)?;
        let secrets = url_secrets(url)?;
        let connect = PgConnectOptions::from_str(url).map_err(|e| {
            RegistrarError::Misconfigured(format!(
                "the Postgres URL is not valid: {}",
                secrets.scrub(&e.to_string(), &[])
            ))
        })?;
        let connect = connect.application_name("botline-registrar").options([(
            "statement_timeout",
            options.statement_timeout.as_millis().to_string(),
        )]);
        let target = format!(
            "postgres://{}@{}:{}/{}",
            connect.get_username(),
            connect.get_host(),
            connect.get_port(),
            connect.get_database().unwrap_or_default()
        );
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect);
        Ok(Self {
            pool,
            call: call_sql(&function),
            function,
            target,
            secrets,
            options,
        })
    }

    /// Whether the function exists, is callable with `(text, text, bigint, bigint)` and returns
    /// `boolean`, found by preparing the call without running it.
    pub async fn check(&self) -> Result<(), RegistrarError> {
        let checked = async {
            let mut conn = self.pool.acquire().await?;
            let statement = (&mut *conn).prepare(&self.call).await?;
            Ok::<_, sqlx::Error>(
                statement
                    .columns()
                    .iter()
                    .map(|c| (c.type_info().clone(), c.type_info().name().to_owned()))
                    .collect::<Vec<_>>(),
            )
        };
        let columns = self.with_deadline(checked, &[]).await?;
        match columns.as_slice() {
            [(info, _)] if <bool as Type<Postgres>>::compatible(info) => Ok(()),
            other => Err(RegistrarError::Misconfigured(format!(
                "Postgres function {} returns {}, expected boolean: it must be {}{SIGNATURE}",
                self.function,
                other
                    .iter()
                    .map(|(_, name)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.function,
            ))),
        }
    }

    /// The deadline the client keeps even when the server or the network stops answering.
    fn deadline(&self) -> Duration {
        self.options.acquire_timeout + self.options.statement_timeout + Duration::from_secs(1)
    }

    async fn with_deadline<T>(
        &self,
        work: impl Future<Output = Result<T, sqlx::Error>>,
        token: &[&str],
    ) -> Result<T, RegistrarError> {
        match tokio::time::timeout(self.deadline(), work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(&e, token)),
            Err(_) => Err(RegistrarError::Unavailable(format!(
                "{} did not answer within {:?}",
                self.target,
                self.deadline()
            ))),
        }
    }

    /// What a driver error means for the caller, its text scrubbed of the password and `token`.
    fn error(&self, e: &sqlx::Error, token: &[&str]) -> RegistrarError {
        let scrub = |text: String| self.secrets.scrub(&text, token);
        let function = &self.function;
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default().into_owned();
                let message = scrub(db.message().to_owned());
                match classify_sqlstate(&code) {
                    Class::Unavailable if code == "57014" => RegistrarError::Unavailable(format!(
                        "{function} was cancelled after the statement timeout of {:?}: {message} \
                         (SQLSTATE {code})",
                        self.options.statement_timeout
                    )),
                    Class::Unavailable => RegistrarError::Unavailable(format!(
                        "{}: {message} (SQLSTATE {code})",
                        self.target
                    )),
                    Class::Misconfigured if code == "42883" => {
                        RegistrarError::Misconfigured(format!(
                            "Postgres function {function} cannot be called as \
                             {function}(text, text, bigint, bigint): {message} (SQLSTATE {code}); \
                             create it as {function}{SIGNATURE} (see botline-registrar's README)"
                        ))
                    }
                    Class::Misconfigured if code.starts_with("42") => {
                        RegistrarError::Misconfigured(format!(
                            "{} refused {function}: {message} (SQLSTATE {code}); it must be \
                             {function}{SIGNATURE}, callable by this user",
                            self.target
                        ))
                    }
                    Class::Misconfigured => RegistrarError::Misconfigured(format!(
                        "{}: {message} (SQLSTATE {code})",
                        self.target
                    )),
                }
            }
            sqlx::Error::PoolTimedOut => RegistrarError::Unavailable(format!(
                "no connection to {} within {:?}: is the server up and reachable?",
                self.target, self.options.acquire_timeout
            )),
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::TypeNotFound { .. }
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::ColumnNotFound(_) => RegistrarError::Misconfigured(format!(
                "Postgres function {function} must return boolean, as \
                 {function}{SIGNATURE}: {}",
                scrub(e.to_string())
            )),
            sqlx::Error::Configuration(_) | sqlx::Error::InvalidArgument(_) => {
                RegistrarError::Misconfigured(format!("{}: {}", self.target, scrub(e.to_string())))
            }
            _ => RegistrarError::Unavailable(format!("{}: {}", self.target, scrub(e.to_string()))),
        }
    }
}

#[async_trait]
impl Registrar for PostgresRegistrar {
    async fn register(&self, request: &RegistrationRequest<'_>) -> Result<bool, RegistrarError> {
        let answer = sqlx::query_scalar::<_, Option<bool>>(&self.call)
            .bind(request.username)
            .bind(request.token)
            .bind(request.telegram_user_id)
            .bind(request.chat_id)
            .fetch_optional(&self.pool);
        let answer = self.with_deadline(answer, &[request.token]).await?;
        Ok(answer.flatten().unwrap_or(false))
    }

    async fn ping(&self) -> Result<(), RegistrarError> {
        self.with_deadline(sqlx::query("SELECT 1").execute(&self.pool), &[])
            .await
            .map(drop)
    }
}

/// The call, the types fixed by casts so that preparing it checks the signature.
fn call_sql(function: &QualifiedName) -> String {
    format!("SELECT {function}($1::text, $2::text, $3::bigint, $4::bigint)")
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Unavailable,
    Misconfigured,
}

/// Retry or call an operator, by SQLSTATE class: access, syntax, authorization, missing
/// database or schema, unsupported feature, routine and data errors need an operator; connection
/// trouble, cancellation (statement timeout), deadlocks and serialization failures, lack of
/// resources, a read-only standby, constraint races and errors the function raises itself
/// (`P0001`) are worth a retry.
fn classify_sqlstate(code: &str) -> Class {
    match code.get(..2) {
        Some("42" | "28" | "3D" | "3F" | "0A" | "2F" | "39" | "22") => Class::Misconfigured,
        _ => Class::Unavailable,
    }
}

/// The password in `url`, as written and percent-decoded, in the userinfo or a `password`
/// parameter, and `PGPASSWORD`, which sqlx also reads.
fn url_secrets(url: &str) -> Result<Secrets, RegistrarError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        RegistrarError::Misconfigured(format!(
            "the Postgres URL is not valid ({e}): expected postgres://user:password@host:port/db"
        ))
    })?;
    let mut secrets = Secrets::default();
    if let Some(password) = parsed.password() {
        secrets.add(password);
        // The password as the server takes it, its `%XX` escapes decoded.
        secrets.add(
            percent_decode_str(password)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    for (key, value) in parsed.query_pairs() {
        if key == "password" {
            secrets.add(value.into_owned());
        }
    }
    if let Ok(password) = std::env::var("PGPASSWORD") {
        secrets.add(password);
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_quotes_the_name_and_fixes_the_types() {
        let name = QualifiedName::parse("app.Register", Dialect::Postgres).unwrap();
        assert_eq!(
            call_sql(&name),
            r#"SELECT "app"."register"($1::text, $2::text, $3::bigint, $4::bigint)"#
        );
    }

    #[test]
    fn sqlstates_are_sorted_into_retry_and_operator() {
        for code in [
            "42883", "42501", "42P01", "28P01", "3D000", "3F000", "2F005", "22P02",
        ] {
            assert_eq!(classify_sqlstate(code), Class::Misconfigured, "{code}");
        }
        for code in [
            "57014", "57P01", "08006", "40001", "40P01", "53300", "25006", "23505", "P0001",
            "XX000", "",
        ] {
            assert_eq!(classify_sqlstate(code), Class::Unavailable, "{code}");
        }
    }

    #[test]
    fn passwords_are_found_encoded_decoded_and_as_a_parameter() {
        let secrets =
            url_secrets("postgres://bot:p%40ss%2Fw0rd@db.example:5432/app?password=other-pw")
                .unwrap();
        let text = secrets.scrub("a p%40ss%2Fw0rd b p@ss/w0rd c other-pw", &[]);
        assert_eq!(text, "a [redacted] b [redacted] c [redacted]");
    }

    #[test]
    fn an_invalid_url_is_misconfigured_without_echoing_it() {
        let err = url_secrets("postgres://bot:Hunter2-secret@db.example:notaport/app").unwrap_err();
        assert!(matches!(err, RegistrarError::Misconfigured(_)));
        assert!(!err.to_string().contains("Hunter2-secret"), "{err}");
    }

    #[test]
    fn options_have_sane_defaults_and_setters() {
        let o = PostgresOptions::default();
        assert_eq!(o.max_connections, 4);
        assert_eq!(o.statement_timeout, Duration::from_secs(5));
        let o = o
            .max_connections(0)
            .acquire_timeout(Duration::from_millis(500))
            .statement_timeout(Duration::from_secs(1));
        assert_eq!(o.max_connections, 1);
        assert_eq!(o.acquire_timeout, Duration::from_millis(500));
    }
}
