//! Botline's embedded backend: queue, dedupe set and records in one SQLite file in WAL mode.
//!
//! The process that serves the store ([`SqliteBackend::open_journaled`]) acknowledges updates
//! into an append-only ingestion journal beside it, imported into the queue by a thread of its
//! own (the `journal` module: what each step can lose in a crash, and why none of it was
//! acknowledged).
//!
//! Every write goes through one writer thread that commits all writes waiting at that moment in
//! one transaction (group commit), with `synchronous = FULL` so that a commit is on disk before
//! any caller hears of it. Reads use their own connections and never wait for the writer.
//! Other processes (the operator CLI) may open the same file while `botline serve` runs.
//!
//! `receive` reads chat heads only, so a backlog drains in linear time however long one chat's
//! is. It scans pending updates by `visible_at`, and an update queued behind another of its
//! chat is *parked* (`visible_at` = `i64::MAX`, out of the scanned range) until the update before
//! it leaves the queue: a trigger (`updates_next_of_chat`, `schema.sql`) then makes the chat's
//! next one visible, in the transaction that finished the one before. Without it, every
//! `receive` while a chat's head was in flight examined that chat's whole backlog (100,000
//! pending: 105 ms per update instead of 0.9 ms; `cargo bench -p botline-bench --bench
//! backlog`, docs/benchmarks.md). Parking is an optimisation only: `receive` still hands out an
//! update only when no lower one of its chat is pending, and the lowest pending update of a
//! chat is never parked, so a store written by an older build (nothing parked) works as before.

pub mod backup;
pub mod files;
mod journal;
mod writer;

use async_trait::async_trait;
use botline_core::backend::{
    Applied, DeadLetter, Enqueued, Failed, Import, Imported, MessageQuery, QueueStats,
    stored_reason,
};
use botline_core::{
    BackendError, DeadLetters, Delivery, EventRecord, InboundUpdate, MessageRecord, OrderKey,
    Outbox, OutboxEntry, OutboxMessage, OutboxStats, Queue, QueueConfig, QueuedUpdate, Records,
    RegistrationTokens, SessionChange, SessionRecord, Sessions, Store, UpdateId, UpdateKind,
    UserRecord, clock,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use writer::Writer;

pub use files::{DataDirError, lock_data_dir, prepare_data_dir};
pub use journal::JOURNAL_DIR;

/// The schema, applied at every open (idempotent).
const SCHEMA: &str = include_str!("schema.sql");
const SCHEMA_VERSION: i64 = 1;
/// The `visible_at` of a pending update parked behind its chat's head (`schema.sql`).
const PARKED: i64 = i64::MAX;
/// How long a statement waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The file name inside a data directory.
pub const DB_FILE: &str = "botline.db";

const DONE: i64 = 1;

/// When the oldest unfinished update was received: the first entry of
/// `updates_pending_by_receipt`, never a scan of the done ones.
const OLDEST_PENDING: &str = "SELECT min(received_at) FROM updates WHERE state = 0";

/// The embedded backend. Cheap to clone; all clones share one writer.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    writer: Writer,
    readers: Readers,
    config: QueueConfig,
    /// Where acknowledged updates go first, in the process that serves the store
    /// ([`SqliteBackend::open_journaled`]).
    journal: Option<journal::Journal>,
    /// Set by the first [`Queue::close`]; later ones do nothing.
    closed: AtomicBool,
}

impl SqliteBackend {
    /// Opens (creating if needed) the store in `data_dir`: the directory `0700`, the files
    /// `0600`, and a directory other users can write to is refused (see [`files`]).
    pub fn open(data_dir: &Path, config: QueueConfig) -> Result<Self, BackendError> {
        prepare_data_dir(data_dir).map_err(|e| BackendError::Unavailable(e.to_string()))?;
        Self::open_file(data_dir, config, true, false)
    }

    /// Opens the store in `data_dir` as [`SqliteBackend::open`] does, for the process that
    /// serves it: `enqueue` appends to the ingestion journal (see `journal.rs`: one `write` and
    /// one `fdatasync` per group of requests), and a thread imports the journal into the queue.
    /// What a previous process left in the journal is imported before this returns.
    ///
    /// Only for a caller holding the data directory's lock ([`lock_data_dir`]): two processes
    /// appending to one journal would interleave their records.
    pub fn open_journaled(data_dir: &Path, config: QueueConfig) -> Result<Self, BackendError> {
        prepare_data_dir(data_dir).map_err(|e| BackendError::Unavailable(e.to_string()))?;
        Self::open_file(data_dir, config, true, true)
    }

    /// Hands back at once every update leased by a process that is gone, instead of when its
    /// lease expires; returns how many. Only for a caller that knows no other process works on
    /// this store (`botline serve` holds the data directory's lock). The attempt each lease
    /// counted stays counted, as for an expired lease.
    pub async fn release_leases(&self) -> Result<u64, BackendError> {
        self.write(|conn| {
            conn.prepare_cached(
                "UPDATE updates SET visible_at = ?1, receipt = NULL
                 WHERE state = 0 AND receipt IS NOT NULL AND visible_at > ?1",
            )
            .and_then(|mut release| release.execute(params![clock::now_ms()]))
            .map(|n| n as u64)
            .map_err(unavailable)
        })
        .await
    }

    /// Opens the store in `data_dir`, which must already hold one (for the operator CLI).
    pub fn open_existing(data_dir: &Path, config: QueueConfig) -> Result<Self, BackendError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(BackendError::Unavailable(format!(
                "no Botline store at {} (start `botline serve --data-dir {}` first)",
                path.display(),
                data_dir.display()
            )));
        }
        Self::open_file(data_dir, config, false, false)
    }

    fn open_file(
        data_dir: &Path,
        config: QueueConfig,
        create: bool,
        journaled: bool,
    ) -> Result<Self, BackendError> {
        let path = &data_dir.join(DB_FILE);
        files::private_store_file(path).map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let conn = connect(path, create).map_err(|e| explain(path, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(unavailable)?;
        if version > SCHEMA_VERSION {
            return Err(BackendError::Corrupt(format!(
                "{} has schema version {version}, newer than this build's {SCHEMA_VERSION}",
                path.display()
            )));
        }
        // The schema is written under the write lock; a store that has it whole already (the
        // operator's commands beside a running `serve`) is not written to, so that opening it
        // does not queue behind the server's writer.
        if version < SCHEMA_VERSION || !has_schema(&conn).map_err(unavailable)? {
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
                .map_err(|e| explain(path, unavailable(e)))?;
        }
        // What the journal holds is imported before anything reads the queue.
        let journal_start = if journaled {
            Some(journal::recover(&conn, data_dir)?.0)
        } else {
            journal::recover_if_unlocked(&conn, data_dir)?;
            None
        };
        let writer = Writer::start(conn)
            .map_err(|e| BackendError::Unavailable(format!("cannot start the writer: {e}")))?;
        let readers = Readers {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        };
        let journal = match journal_start {
            Some(start) => Some(journal::Journal::start(
                data_dir,
                start,
                readers.take()?,
                writer.clone(),
            )?),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                readers,
                config,
                journal,
                closed: AtomicBool::new(false),
            }),
        })
    }

    async fn write<R, F>(&self, op: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: Fn(&Connection) -> Result<R, BackendError> + Send + 'static,
    {
        self.inner.writer.write(op).await
    }

    async fn read<R, F>(&self, op: F) -> Result<R, BackendError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, BackendError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner.readers.take()?;
            let result = op(&conn);
            inner.readers.give_back(conn);
            result
        })
        .await
        .map_err(|e| BackendError::Unavailable(format!("read task failed: {e}")))?
    }
}

/// Whether every table and index of [`SCHEMA`] exists (a read: no lock beyond WAL's).
fn has_schema(conn: &Connection) -> rusqlite::Result<bool> {
    let mut exists = conn.prepare("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = ?1)")?;
    for name in schema_objects() {
        if !exists.query_row([name], |row| row.get::<_, bool>(0))? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The names of the tables, indexes and triggers [`SCHEMA`] creates (`… IF NOT EXISTS <name>`).
fn schema_objects() -> impl Iterator<Item = &'static str> {
    SCHEMA.split("IF NOT EXISTS").skip(1).filter_map(|rest| {
        rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|word| !word.is_empty())
    })
}

fn connect(path: &Path, create: bool) -> Result<Connection, BackendError> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(unavailable)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(unavailable)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(BackendError::Unavailable(format!(
            "{} cannot use WAL mode (got {mode})",
            path.display()
        )));
    }
    // secure_delete: content deleted or overwritten (a body whose typed token was redacted,
    // bodies past the dedupe window) is zeroed in the file, not left in free space.
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA cache_size = -2000; PRAGMA secure_delete = ON;",
    )
    .map_err(unavailable)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Names the store's file in an error opening it and, when the file system refuses to write the
/// file or to create the WAL beside it (read-only, immutable, no permission), says so: SQLite's
/// own "unable to open database file" names neither.
fn explain(path: &Path, e: BackendError) -> BackendError {
    let BackendError::Unavailable(message) = e else {
        return e;
    };
    let cause = why_not_writable(path)
        .map(|cause| format!(" ({cause})"))
        .unwrap_or_default();
    BackendError::Unavailable(format!("{}: {message}{cause}", path.display()))
}

fn why_not_writable(path: &Path) -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new().append(true).open(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Some(format!("cannot write {}: {e}", path.display()));
    }
    let dir = path.parent()?;
    let probe = dir.join(format!(".{DB_FILE}.probe-{}", std::process::id()));
    match std::fs::File::create_new(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!("cannot create files in {}: {e}", dir.display())),
    }
}

/// Idle read connections, opened on demand.
#[derive(Debug)]
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Read connections kept open between reads.
    const KEEP: usize = 4;

    fn take(&self) -> Result<Connection, BackendError> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = connect(&self.path, false)?;
                conn.execute_batch("PRAGMA query_only = ON")
                    .map_err(unavailable)?;
                Ok(conn)
            }
        }
    }

    /// Closes the idle connections; a read after this opens a new one.
    fn close(&self) {
        let idle = self
            .idle
            .lock()
            .map(|mut idle| std::mem::take(&mut *idle))
            .unwrap_or_default();
        for conn in idle {
            if let Err((_, e)) = conn.close() {
                tracing::warn!(error = %e, "closing a SQLite read connection");
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < Self::KEEP
        {
            idle.push(conn);
        }
    }
}

/// SQLite's errors all mean "cannot do it now" to the caller: full, read-only, locked, I/O.
pub(crate) fn unavailable(e: rusqlite::Error) -> BackendError {
    BackendError::Unavailable(format!("SQLite: {e}"))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The columns of a queued update, from `updates AS u JOIN update_bodies AS b USING (update_id)`.
const UPDATE_COLUMNS: &str = "u.update_id, u.entry_id, u.order_key, u.kind, b.raw, u.received_at";
const UPDATE_ROWS: &str = "updates AS u JOIN update_bodies AS b USING (update_id)";

/// A `updates` row (selected with [`UPDATE_COLUMNS`] first) as a queued update.
fn queued_update(row: &Row<'_>) -> rusqlite::Result<QueuedUpdate> {
    let order_key: String = row.get(2)?;
    let order_key = order_key.parse::<OrderKey>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(QueuedUpdate {
        update_id: UpdateId(row.get(0)?),
        entry_id: row.get(1)?,
        order_key,
        kind: UpdateKind(row.get(3)?),
        raw: row.get(4)?,
        received_at_ms: row.get(5)?,
    })
}

fn dead_letter(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        update: queued_update(row)?,
        attempts: row.get(6)?,
        last_error: row.get(7)?,
        dead_at_ms: row.get::<_, Option<i64>>(8)?.unwrap_or_default(),
    })
}

#[async_trait]
impl Queue for SqliteBackend {
    async fn enqueue(&self, update: &InboundUpdate) -> Result<Enqueued, BackendError> {
        if let Some(journal) = &self.inner.journal {
            if !holds_typed_secret(&update.raw) {
                return journal.append(update).await;
            }
            // The journal's segments are never redacted: a body with a token a user typed goes
            // to the queue directly, where processing redacts it, after what was acknowledged
            // before it.
            journal.caught_up().await;
            if journal.holds(update.id) {
                return Ok(Enqueued::Duplicate);
            }
        }
        let record = journal::Record::of(update, clock::now_ms());
        self.write(move |conn| {
            let new = journal::insert(conn, std::slice::from_ref(&record)).map_err(unavailable)?;
            Ok(if new == 0 {
                Enqueued::Duplicate
            } else {
                Enqueued::New
            })
        })
        .await
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let Some(journal) = &self.inner.journal else {
            return self.lease(max).await;
        };
        // Everything acknowledged before this call is handed out or waited for; but the worker
        // does not wait for the importer while the queue holds as much as it asks for.
        let acknowledged = journal.durable_records();
        let all_imported = journal.imported(acknowledged);
        let mut deliveries = self.lease(max).await?;
        // (Imported during that lease is not enough: the lease may have read before it.)
        if deliveries.len() < max && !all_imported {
            journal.caught_up_to(acknowledged).await;
            deliveries.extend(self.lease(max - deliveries.len()).await?);
        }
        Ok(deliveries)
    }
    async fn extend(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let id = delivery.update.update_id;
        let receipt = delivery.receipt.clone();
        let lease = self.inner.config.lease;
        self.write(move |conn| {
            let extended = conn
                .prepare_cached(
                    "UPDATE updates SET visible_at = ?3
                     WHERE update_id = ?1 AND receipt = ?2 AND state = 0",
                )
                .and_then(|mut extend| {
                    extend.execute(params![
                        id.0,
                        receipt,
                        clock::now_ms().saturating_add(millis(lease))
                    ])
                })
                .map_err(unavailable)?;
            if extended == 1 {
                Ok(())
            } else {
                Err(BackendError::LeaseLost(id))
            }
        })
        .await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let id = delivery.update.update_id;
        let receipt = delivery.receipt.clone();
        self.write(move |conn| {
            let acked = conn
                .prepare_cached(
                    "UPDATE updates SET state = 1, finished_at = ?3
                     WHERE update_id = ?1 AND receipt = ?2 AND state = 0",
                )
                .and_then(|mut ack| ack.execute(params![id.0, receipt, clock::now_ms()]))
                .map_err(unavailable)?;
            if acked == 1 || state_of(conn, id)? == Some(DONE) {
                Ok(())
            } else {
                Err(BackendError::LeaseLost(id))
            }
        })
        .await
    }

    async fn fail_after(
        &self,
        delivery: &Delivery,
        reason: &str,
        wait: Duration,
    ) -> Result<Failed, BackendError> {
        let id = delivery.update.update_id;
        let receipt = delivery.receipt.clone();
        let raw = delivery.update.raw.clone();
        let reason = stored_reason(reason);
        let retry = self.inner.config.retry;
        self.write(move |conn| {
            let attempts: Option<u32> = conn
                .prepare_cached(
                    "SELECT attempts FROM updates WHERE update_id = ?1 AND receipt = ?2 AND state = 0",
                )
                .and_then(|mut select| {
                    select
                        .query_row(params![id.0, receipt], |row| row.get(0))
                        .optional()
                })
                .map_err(unavailable)?;
            let attempts = attempts.ok_or(BackendError::LeaseLost(id))?;
            let now = clock::now_ms();
            if attempts >= retry.max_attempts {
                conn.prepare_cached(
                    "UPDATE updates SET state = 2, finished_at = ?2, receipt = NULL, last_error = ?3
                     WHERE update_id = ?1",
                )
                .and_then(|mut kill| kill.execute(params![id.0, now, reason]))
                .map_err(unavailable)?;
                redact_dead_body(conn, id, &raw)?;
                return Ok(Failed::DeadLettered);
            }
            let after = retry.backoff(attempts).max(wait);
            conn.prepare_cached(
                "UPDATE updates SET visible_at = ?2, receipt = NULL, last_error = ?3
                 WHERE update_id = ?1",
            )
            .and_then(|mut retry| {
                retry.execute(params![id.0, now.saturating_add(millis(after)), reason])
            })
            .map_err(unavailable)?;
            Ok(Failed::Retrying { after })
        })
        .await
    }

    async fn stats(&self) -> Result<QueueStats, BackendError> {
        let inner = Arc::clone(&self.inner);
        let (mut stats, (unimported, oldest_unimported)) = self
            .read(move |conn| match &inner.journal {
                // No import commits during the read: each update is counted once, in the
                // queue or in the journal.
                Some(journal) => {
                    let (stats, unimported) = journal.counted_with(|| queue_stats(conn));
                    Ok((stats?, unimported))
                }
                None => Ok((queue_stats(conn)?, (0, None))),
            })
            .await?;
        stats.pending += unimported;
        stats.oldest_pending_ms = match (stats.oldest_pending_ms, oldest_unimported) {
            (Some(stored), Some(journaled)) => Some(stored.min(journaled)),
            (stored, journaled) => stored.or(journaled),
        };
        Ok(stats)
    }

    /// A write that must reach the file, through the writer: it is running, can take the write
    /// lock, and the file system takes what it writes. An empty transaction writes nothing, so
    /// it commits on a full or read-only disk that refuses every update. (Rewriting
    /// `user_version` with its value dirties the header page and nothing else.)
    async fn ping(&self) -> Result<(), BackendError> {
        if let Some(journal) = &self.inner.journal {
            journal.ping().await?;
        }
        self.write(|conn| {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(unavailable)
        })
        .await
    }

    async fn housekeeping(&self) -> Result<(), BackendError> {
        const BATCH: usize = 10_000;
        let cutoff = clock::now_ms() - millis(self.inner.config.dedupe_window);
        let mut forgotten = 0;
        // In batches, so that acknowledgements queued behind a batch wait for little.
        loop {
            let deleted = self
                .write(move |conn| {
                    let forget = |sql: &str| {
                        conn.prepare_cached(sql)
                            .and_then(|mut forget| forget.execute(params![cutoff, BATCH as i64]))
                            .map_err(unavailable)
                    };
                    forget(
                        "DELETE FROM update_bodies WHERE update_id IN
                         (SELECT update_id FROM updates WHERE state = 1 AND received_at < ?1
                          ORDER BY received_at LIMIT ?2)",
                    )?;
                    forget(
                        "DELETE FROM updates WHERE update_id IN
                         (SELECT update_id FROM updates WHERE state = 1 AND received_at < ?1
                          ORDER BY received_at LIMIT ?2)",
                    )
                })
                .await?;
            forgotten += deleted;
            if deleted < BATCH {
                break;
            }
            tokio::task::yield_now().await;
        }
        let purged = self.purge_expired_sessions(clock::now_ms()).await?;
        let redacted = self.write(redact_dead_letters).await?;
        if redacted > 0 {
            tracing::info!(
                dead_letters = redacted,
                "redacted the registration tokens that older dead letters still held"
            );
        }
        self.truncate_wal().await?;
        tracing::debug!(forgotten, purged, "housekeeping");
        Ok(())
    }

    /// Folds the WAL into the database, then closes every connection and waits until they are
    /// closed, the write connection last: the last close deletes the WAL file.
    async fn close(&self) -> Result<(), BackendError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(journal) = &self.inner.journal {
            journal.close().await;
        }
        let truncated = self.truncate_wal().await;
        self.inner.readers.close();
        self.inner.writer.close().await?;
        truncated
    }
}

impl SqliteBackend {
    /// Leases up to `max` chat heads that are due (what `receive` hands out), dead-lettering
    /// a head whose lease expired on its last attempt.
    async fn lease(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let config = self.inner.config;
        self.write(move |conn| {
            let now = clock::now_ms();
            let heads = conn
                .prepare_cached(&format!(
                    "SELECT {UPDATE_COLUMNS}, u.attempts FROM {UPDATE_ROWS}
                     WHERE u.state = 0 AND u.visible_at <= ?1
                       AND NOT EXISTS (SELECT 1 FROM updates AS p
                                       WHERE p.state = 0 AND p.order_key = u.order_key
                                         AND p.update_id < u.update_id)
                     ORDER BY u.visible_at, u.update_id LIMIT ?2"
                ))
                .and_then(|mut select| {
                    select
                        .query_map(params![now, max as i64], |row| {
                            Ok((queued_update(row)?, row.get::<_, u32>(6)?))
                        })?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            let mut deliveries = Vec::with_capacity(heads.len());
            for (update, attempts) in heads {
                if attempts >= config.retry.max_attempts {
                    conn.prepare_cached(
                        "UPDATE updates SET state = 2, finished_at = ?2, receipt = NULL,
                         last_error = ?3 WHERE update_id = ?1",
                    )
                    .and_then(|mut kill| {
                        kill.execute(params![
                            update.update_id.0,
                            now,
                            format!("lease expired on each of {attempts} attempts")
                        ])
                    })
                    .map_err(unavailable)?;
                    redact_dead_body(conn, update.update_id, &update.raw)?;
                    continue;
                }
                let receipt = uuid::Uuid::new_v4().simple().to_string();
                conn.prepare_cached(
                    "UPDATE updates SET attempts = attempts + 1, visible_at = ?2, receipt = ?3
                     WHERE update_id = ?1",
                )
                .and_then(|mut lease| {
                    lease.execute(params![
                        update.update_id.0,
                        now.saturating_add(millis(config.lease)),
                        receipt
                    ])
                })
                .map_err(unavailable)?;
                deliveries.push(Delivery {
                    update,
                    attempt: attempts + 1,
                    receipt,
                });
            }
            Ok(deliveries)
        })
        .await
    }

    /// Copies the WAL into the database and empties it, so the older page images it holds (the
    /// body of a `/register` before its token was redacted) are gone from disk.
    async fn truncate_wal(&self) -> Result<(), BackendError> {
        let (busy, log, done) = self
            .inner
            .writer
            .outside_transaction(|conn| {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(unavailable)
            })
            .await?;
        if busy != 0 {
            tracing::warn!(
                log,
                done,
                "the WAL could not be truncated: a reader is in the way"
            );
        }
        Ok(())
    }
}

/// The queue's counts, as `stats` reports them (the journal's part aside).
fn queue_stats(conn: &Connection) -> Result<QueueStats, BackendError> {
    let now = clock::now_ms();
    let count = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<u64, BackendError> {
        conn.prepare_cached(sql)
            .and_then(|mut count| count.query_row(params, |row| row.get::<_, i64>(0)))
            .map(|n| n.unsigned_abs())
            .map_err(unavailable)
    };
    Ok(QueueStats {
        pending: count(
            "SELECT COUNT(*) FROM updates WHERE state = 0
             AND (receipt IS NULL OR visible_at <= ?1)",
            params![now],
        )?,
        in_flight: count(
            "SELECT COUNT(*) FROM updates WHERE state = 0
             AND receipt IS NOT NULL AND visible_at > ?1",
            params![now],
        )?,
        dead: count("SELECT COUNT(*) FROM updates WHERE state = 2", &[])?,
        done: count("SELECT COUNT(*) FROM updates WHERE state = 1", &[])?,
        oldest_pending_ms: conn
            .prepare_cached(OLDEST_PENDING)
            .and_then(|mut oldest| oldest.query_row([], |row| row.get(0)))
            .map_err(unavailable)?,
    })
}

/// Whether `raw` carries a secret a user typed (a `/register` token). Most bodies are let
/// through by a scan for the word, or for an escape that could spell a part of it (`\/`, or
/// `\u00XX` of an ASCII letter or `/`), before any parse.
fn holds_typed_secret(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let word = bytes
        .windows(b"register".len())
        .any(|word| word.eq_ignore_ascii_case(b"register"));
    let escaped = raw.contains("\\/")
        || raw.match_indices("\\u00").any(|(at, _)| {
            raw.get(at + 4..at + 6)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .is_some_and(|c| c.is_ascii_alphabetic() || c == b'/')
        });
    (word || escaped) && botline_core::redact_typed_secrets(raw).is_some()
}

/// Replaces a dead letter's body with its redacted form when it holds a secret a user typed: a
/// dead letter outlives its attempts (until an operator redrives it), and nothing else would
/// ever redact it. `secure_delete` zeroes the old body's page; the next checkpoint takes it out
/// of the WAL.
fn redact_dead_body(conn: &Connection, id: UpdateId, raw: &str) -> Result<(), BackendError> {
    let Some(redacted) = botline_core::redact_typed_secrets(raw) else {
        return Ok(());
    };
    conn.prepare_cached("UPDATE update_bodies SET raw = ?2 WHERE update_id = ?1")
        .and_then(|mut update| update.execute(params![id.0, redacted]))
        .map_err(unavailable)?;
    Ok(())
}

/// Redacts the dead letters that a build before dead-letter redaction left with a typed secret
/// in their body; returns how many. Dead letters are few and this reads only theirs.
fn redact_dead_letters(conn: &Connection) -> Result<u64, BackendError> {
    let bodies = conn
        .prepare_cached(
            "SELECT b.update_id, b.raw FROM update_bodies AS b JOIN updates AS u USING (update_id)
             WHERE u.state = 2 AND b.raw LIKE '%register%'",
        )
        .and_then(|mut select| {
            select
                .query_map([], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(unavailable)?;
    let mut redacted = 0;
    for (id, raw) in bodies {
        if botline_core::redact_typed_secrets(&raw).is_some() {
            redact_dead_body(conn, UpdateId(id), &raw)?;
            redacted += 1;
        }
    }
    Ok(redacted)
}

fn state_of(conn: &Connection, id: UpdateId) -> Result<Option<i64>, BackendError> {
    conn.prepare_cached("SELECT state FROM updates WHERE update_id = ?1")
        .and_then(|mut select| select.query_row(params![id.0], |row| row.get(0)).optional())
        .map_err(unavailable)
}

#[async_trait]
impl DeadLetters for SqliteBackend {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {UPDATE_COLUMNS}, u.attempts, u.last_error, u.finished_at FROM {UPDATE_ROWS}
                 WHERE u.state = 2 ORDER BY u.finished_at, u.update_id LIMIT ?1"
            ))
            .and_then(|mut select| {
                select
                    .query_map(params![limit as i64], dead_letter)?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn show(&self, id: UpdateId) -> Result<Option<DeadLetter>, BackendError> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {UPDATE_COLUMNS}, u.attempts, u.last_error, u.finished_at FROM {UPDATE_ROWS}
                 WHERE u.state = 2 AND u.update_id = ?1"
            ))
            .and_then(|mut select| select.query_row(params![id.0], dead_letter).optional())
            .map_err(unavailable)
        })
        .await
    }

    async fn redrive(&self, id: UpdateId) -> Result<bool, BackendError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE updates SET state = 0, attempts = 0, receipt = NULL, finished_at = NULL,
                     visible_at = CASE WHEN EXISTS (SELECT 1 FROM updates AS p
                                                    WHERE p.state = 0
                                                      AND p.order_key = updates.order_key
                                                      AND p.update_id < updates.update_id)
                                       THEN ?3 ELSE ?2 END
                 WHERE update_id = ?1 AND state = 2",
            )
            .and_then(|mut redrive| redrive.execute(params![id.0, clock::now_ms(), PARKED]))
            .map(|changed| changed == 1)
            .map_err(unavailable)
        })
        .await
    }

    async fn redrive_all(&self) -> Result<u64, BackendError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE updates SET state = 0, attempts = 0, visible_at = ?1, receipt = NULL,
                 finished_at = NULL WHERE state = 2",
            )
            .and_then(|mut redrive| redrive.execute(params![clock::now_ms()]))
            .and_then(|changed| {
                // Many of one chat's updates put back at once: all but its head wait parked.
                conn.prepare_cached(
                    "UPDATE updates SET visible_at = ?1
                     WHERE state = 0 AND receipt IS NULL AND visible_at <> ?1
                       AND EXISTS (SELECT 1 FROM updates AS p
                                   WHERE p.state = 0 AND p.order_key = updates.order_key
                                     AND p.update_id < updates.update_id)",
                )?
                .execute(params![PARKED])?;
                Ok(changed as u64)
            })
            .map_err(unavailable)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteBackend {
    async fn apply(&self, delivery: &Delivery, records: &Records) -> Result<Applied, BackendError> {
        let id = delivery.update.update_id;
        let records = records.clone();
        self.write(move |conn| {
            if state_of(conn, id)? == Some(DONE) {
                return Ok(Applied::AlreadyDone);
            }
            write_records(conn, &records).map_err(unavailable)?;
            write_outcome(conn, &records).map_err(unavailable)?;
            conn.prepare_cached(
                "UPDATE updates SET state = 1, finished_at = ?2 WHERE update_id = ?1",
            )
            .and_then(|mut done| done.execute(params![id.0, clock::now_ms()]))
            .map_err(unavailable)?;
            Ok(Applied::Written)
        })
        .await
    }

    fn apply_acknowledges(&self) -> bool {
        true
    }

    async fn messages(&self, query: &MessageQuery) -> Result<Vec<MessageRecord>, BackendError> {
        let query = query.clone();
        self.read(move |conn| {
            let (after_chat, after_message) = query.after.unwrap_or((String::new(), i64::MIN));
            conn.prepare_cached(
                "SELECT chat_id, message_id, user_id, user_name, text, timestamp, raw, created_at
                 FROM messages
                 WHERE (?1 IS NULL OR chat_id = ?1) AND (?2 IS NULL OR timestamp >= ?2)
                   AND (chat_id, message_id) > (?3, ?4)
                 ORDER BY chat_id, message_id LIMIT ?5",
            )
            .and_then(|mut select| {
                select
                    .query_map(
                        params![
                            query.chat_id,
                            query.since_ms,
                            after_chat,
                            after_message,
                            query.limit as i64
                        ],
                        |row| {
                            Ok(MessageRecord {
                                chat_id: row.get(0)?,
                                message_id: row.get(1)?,
                                user_id: row.get(2)?,
                                user_name: row.get(3)?,
                                text: row.get(4)?,
                                timestamp: row.get(5)?,
                                raw: row.get(6)?,
                                created_at: row.get(7)?,
                            })
                        },
                    )?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, BackendError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT user_id, telegram_id, username, first_name, last_name, language_code,
                        created_at, updated_at FROM users WHERE user_id = ?1",
            )
            .and_then(|mut select| select.query_row(params![user_id], user).optional())
            .map_err(unavailable)
        })
        .await
    }

    async fn events_by_user(
        &self,
        user_id: &str,
        since: &str,
    ) -> Result<Vec<EventRecord>, BackendError> {
        let (user_id, since) = (user_id.to_owned(), since.to_owned());
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT event_id, user_id, event_type, payload, timestamp, processed FROM events
                     WHERE user_id = ?1 AND timestamp >= ?2 ORDER BY timestamp, event_id",
                )
                .and_then(|mut select| {
                    select
                        .query_map(params![user_id, since], event_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            rows.into_iter().map(event).collect()
        })
        .await
    }

    async fn events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, BackendError> {
        let after = after.map(str::to_owned);
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT event_id, user_id, event_type, payload, timestamp, processed FROM events
                     WHERE ?1 IS NULL OR event_id > ?1 ORDER BY event_id LIMIT ?2",
                )
                .and_then(|mut select| {
                    select
                        .query_map(params![after, limit as i64], event_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            rows.into_iter().map(event).collect()
        })
        .await
    }

    async fn users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, BackendError> {
        let after = after.map(str::to_owned);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT user_id, telegram_id, username, first_name, last_name, language_code,
                        created_at, updated_at FROM users
                 WHERE ?1 IS NULL OR user_id > ?1 ORDER BY user_id LIMIT ?2",
            )
            .and_then(|mut select| {
                select
                    .query_map(params![after, limit as i64], user)?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn import(&self, records: &Import) -> Result<Imported, BackendError> {
        let records = Arc::new(records.clone());
        self.write(move |conn| import(conn, &records).map_err(unavailable))
            .await
    }
}

fn user(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        user_id: row.get(0)?,
        telegram_id: row.get(1)?,
        username: row.get(2)?,
        first_name: row.get(3)?,
        last_name: row.get(4)?,
        language_code: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
    })
}

/// An event's columns, its payload still JSON text.
type EventRow = (String, Option<String>, String, String, String, bool);

fn event_row(row: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn event(
    (event_id, user_id, event_type, payload, timestamp, processed): EventRow,
) -> Result<EventRecord, BackendError> {
    Ok(EventRecord {
        payload: serde_json::from_str(&payload)
            .map_err(|e| BackendError::Corrupt(format!("event {event_id} payload: {e}")))?,
        event_id,
        user_id,
        event_type,
        timestamp,
        processed,
    })
}

/// [`Store::import`]'s writes: each record where its key is new; a stored user merged as
/// [`botline_core::backend::merge_user`] does.
fn import(conn: &Connection, records: &Import) -> rusqlite::Result<Imported> {
    let mut imported = Imported::default();
    for m in &records.messages {
        imported.messages += insert_message(conn, m)? as u64;
    }
    for u in &records.users {
        let new = conn
            .prepare_cached(
                "INSERT INTO users (user_id, telegram_id, username, first_name, last_name, language_code, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                u.user_id,
                u.telegram_id,
                u.username,
                u.first_name,
                u.last_name,
                u.language_code,
                u.created_at,
                u.updated_at
            ])? as u64;
        if new == 0 {
            let stored = conn
                .prepare_cached(
                    "SELECT user_id, telegram_id, username, first_name, last_name, language_code,
                            created_at, updated_at FROM users WHERE user_id = ?1",
                )?
                .query_row(params![u.user_id], user)?;
            let merged = botline_core::backend::merge_user(&stored, u);
            if merged != stored {
                conn.prepare_cached(
                    "UPDATE users SET telegram_id = ?2, username = ?3, first_name = ?4,
                         last_name = ?5, language_code = ?6, created_at = ?7, updated_at = ?8
                     WHERE user_id = ?1",
                )?
                .execute(params![
                    merged.user_id,
                    merged.telegram_id,
                    merged.username,
                    merged.first_name,
                    merged.last_name,
                    merged.language_code,
                    merged.created_at,
                    merged.updated_at
                ])?;
            }
        }
        imported.users += new;
    }
    for e in &records.events {
        imported.events += insert_event(conn, e)? as u64;
    }
    Ok(imported)
}

fn write_records(conn: &Connection, records: &Records) -> rusqlite::Result<()> {
    if let Some(m) = &records.message {
        insert_message(conn, m)?;
    }
    if let Some(u) = &records.user {
        conn.prepare_cached(
            "INSERT INTO users (user_id, telegram_id, username, first_name, last_name, language_code, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (user_id) DO UPDATE SET
                 telegram_id = excluded.telegram_id, username = excluded.username,
                 first_name = excluded.first_name, last_name = excluded.last_name,
                 language_code = excluded.language_code, updated_at = excluded.updated_at",
        )?
        .execute(params![
            u.user_id,
            u.telegram_id,
            u.username,
            u.first_name,
            u.last_name,
            u.language_code,
            u.created_at,
            u.updated_at
        ])?;
    }
    insert_event(conn, &records.event)?;
    Ok(())
}

/// Writes a message unless its (`chatId`, `messageId`) is stored: the first write wins. 1 if
/// written.
fn insert_message(conn: &Connection, m: &MessageRecord) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO messages (chat_id, message_id, user_id, user_name, text, timestamp, raw, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        m.chat_id,
        m.message_id,
        m.user_id,
        m.user_name,
        m.text,
        m.timestamp,
        m.raw,
        m.created_at
    ])
}

/// Writes an event unless its `eventId` is stored. 1 if written.
fn insert_event(conn: &Connection, e: &EventRecord) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO events (event_id, user_id, event_type, payload, timestamp, processed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        e.event_id,
        e.user_id,
        e.event_type,
        e.payload.to_string(),
        e.timestamp,
        e.processed
    ])
}

/// The parts of an update's outcome beyond its records: the redacted body, a redeemed
/// registration token and its answer, the outbox calls, the sessions.
fn write_outcome(conn: &Connection, records: &Records) -> rusqlite::Result<()> {
    let now = clock::now_ms();
    if let Some(raw) = &records.redacted_raw {
        conn.prepare_cached("UPDATE update_bodies SET raw = ?2 WHERE update_id = ?1")?
            .execute(params![records.update_id.0, raw])?;
    }
    let mut calls: Vec<OutboxMessage> = Vec::with_capacity(records.outbox.len() + 1);
    if let Some(redemption) = &records.redemption {
        let user = redemption.telegram_user_id;
        let redeemed =
            conn.prepare_cached(
                "UPDATE registration_tokens SET used_at = ?4, used_by = ?3
                 WHERE token_digest = ?1 AND username = ?2 AND used_at IS NULL
                   AND expires_at > ?4",
            )?
            .execute(params![
                redemption.token_digest,
                redemption.username,
                user,
                now
            ])? == 1;
        if redeemed {
            conn.prepare_cached(
                "INSERT INTO registrations (telegram_user_id, username, chat_id, registered_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (telegram_user_id) DO UPDATE SET username = excluded.username,
                     chat_id = excluded.chat_id, registered_at = excluded.registered_at",
            )?
            .execute(params![
                user,
                redemption.username,
                redemption.chat_id,
                clock::iso8601(now)
            ])?;
        }
        calls.push(redemption.answer(redeemed).clone());
    }
    calls.extend(records.outbox.iter().cloned());
    for call in calls {
        let action = serde_json::to_string(&call.action)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        // A delayed call is written as made at its time: a chat's calls go out in the order of
        // `created_at`, so it holds up none that are due before it.
        conn.prepare_cached(
            "INSERT INTO outbox (outbox_id, update_id, chat_id, action, due_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            call.outbox_id,
            records.update_id.0,
            call.chat_id,
            action,
            call.due_from(now)
        ])?;
    }
    write_sessions(conn, records, now)
}

/// The sessions the update's handler wrote, the last change of each: a put as
/// [`Sessions::put_session`] writes it, but keeping the `created_at` of a live session it
/// replaces (`now_ms` decides which is live, as [`Sessions::session`] does); a delete as
/// [`Sessions::delete_session`].
fn write_sessions(conn: &Connection, records: &Records, now_ms: i64) -> rusqlite::Result<()> {
    for change in records.session_writes() {
        match change {
            SessionChange::Put(s) => {
                let data = serde_json::Value::Object(s.data.clone()).to_string();
                conn.prepare_cached(&format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (session_id) DO UPDATE SET
                         user_id = excluded.user_id, chat_id = excluded.chat_id,
                         state = excluded.state, data = excluded.data,
                         created_at = CASE WHEN sessions.expires_at * 1000 > ?9
                                           THEN sessions.created_at ELSE excluded.created_at END,
                         updated_at = excluded.updated_at, expires_at = excluded.expires_at"
                ))?
                .execute(params![
                    s.session_id,
                    s.user_id,
                    s.chat_id,
                    s.state,
                    data,
                    s.created_at,
                    s.updated_at,
                    s.expires_at,
                    now_ms
                ])?;
            }
            SessionChange::Delete { session_id } => {
                conn.prepare_cached("DELETE FROM sessions WHERE session_id = ?1")?
                    .execute(params![session_id])?;
            }
        }
    }
    Ok(())
}

fn outbox_entry(row: &Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let action: String = row.get(3)?;
    Ok(OutboxEntry {
        call: OutboxMessage {
            outbox_id: row.get(0)?,
            chat_id: row.get(2)?,
            action: serde_json::from_str(&action).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
            })?,
            send_at_ms: None,
        },
        update_id: UpdateId(row.get(1)?),
        attempt: row.get(4)?,
        created_at_ms: row.get(5)?,
    })
}

#[async_trait]
impl Outbox for SqliteBackend {
    async fn due_calls(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, BackendError> {
        self.write(move |conn| {
            let now = clock::now_ms();
            let mut due = conn
                .prepare_cached(
                    "SELECT outbox_id, update_id, chat_id, action, attempts + 1, created_at
                     FROM outbox AS o
                     WHERE state = 0 AND due_at <= ?1
                       AND NOT EXISTS (SELECT 1 FROM outbox AS p
                                       WHERE p.state = 0 AND p.chat_id = o.chat_id
                                         AND (p.created_at, p.outbox_id) < (o.created_at, o.outbox_id))
                     ORDER BY due_at, created_at, outbox_id LIMIT ?2",
                )
                .and_then(|mut select| {
                    select
                        .query_map(params![now, max as i64], outbox_entry)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            for entry in &mut due {
                conn.prepare_cached(
                    "UPDATE outbox SET attempts = attempts + 1, due_at = ?2 WHERE outbox_id = ?1",
                )
                .and_then(|mut lease_it| {
                    lease_it.execute(params![entry.call.outbox_id, now.saturating_add(millis(lease))])
                })
                .map_err(unavailable)?;
            }
            Ok(due)
        })
        .await
    }

    async fn call_done(
        &self,
        outbox_id: &str,
        telegram_message_id: Option<i64>,
    ) -> Result<(), BackendError> {
        let outbox_id = outbox_id.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE outbox SET state = 1, finished_at = ?2, telegram_message_id = ?3,
                 last_error = NULL WHERE outbox_id = ?1",
            )
            .and_then(|mut done| {
                done.execute(params![outbox_id, clock::now_ms(), telegram_message_id])
            })
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn call_failed(
        &self,
        outbox_id: &str,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Result<(), BackendError> {
        let outbox_id = outbox_id.to_owned();
        let reason = stored_reason(reason);
        self.write(move |conn| {
            let now = clock::now_ms();
            let statement = match retry_after {
                Some(_) => "UPDATE outbox SET due_at = ?2, last_error = ?3 WHERE outbox_id = ?1 AND state = 0",
                None => "UPDATE outbox SET state = 2, finished_at = ?2, last_error = ?3 WHERE outbox_id = ?1",
            };
            let at = retry_after.map_or(now, |after| now.saturating_add(millis(after)));
            conn.prepare_cached(statement)
                .and_then(|mut failed| failed.execute(params![outbox_id, at, reason]))
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, BackendError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FILTER (WHERE state = 0), COUNT(*) FILTER (WHERE state = 1),
                        COUNT(*) FILTER (WHERE state = 2) FROM outbox",
                [],
                |row| {
                    Ok(OutboxStats {
                        pending: row.get::<_, i64>(0)?.unsigned_abs(),
                        done: row.get::<_, i64>(1)?.unsigned_abs(),
                        failed: row.get::<_, i64>(2)?.unsigned_abs(),
                    })
                },
            )
            .map_err(unavailable)
        })
        .await
    }
}

#[async_trait]
impl RegistrationTokens for SqliteBackend {
    async fn issue_token(
        &self,
        username: &str,
        token_digest: &str,
        expires_at_ms: i64,
    ) -> Result<(), BackendError> {
        let (username, token_digest) = (username.to_owned(), token_digest.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO registration_tokens (token_digest, username, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut issue| {
                issue.execute(params![
                    token_digest,
                    username,
                    clock::now_ms(),
                    expires_at_ms
                ])
            })
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }
}

const SESSION_COLUMNS: &str =
    "session_id, user_id, chat_id, state, data, created_at, updated_at, expires_at";

fn session(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    let data: String = row.get(4)?;
    Ok(SessionRecord {
        session_id: row.get(0)?,
        user_id: row.get(1)?,
        chat_id: row.get(2)?,
        state: row.get(3)?,
        data: serde_json::from_str(&data).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
        })?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
        expires_at: row.get(7)?,
    })
}

#[async_trait]
impl Sessions for SqliteBackend {
    async fn put_session(&self, s: &SessionRecord) -> Result<(), BackendError> {
        let s = s.clone();
        let data = serde_json::Value::Object(s.data.clone()).to_string();
        self.write(move |conn| {
            conn.prepare_cached(&format!(
                "INSERT OR REPLACE INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))
            .and_then(|mut put| {
                put.execute(params![
                    s.session_id,
                    s.user_id,
                    s.chat_id,
                    s.state,
                    data,
                    s.created_at,
                    s.updated_at,
                    s.expires_at
                ])
            })
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, BackendError> {
        let session_id = session_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1 AND expires_at * 1000 > ?2"
            ))
            .and_then(|mut select| {
                select
                    .query_row(params![session_id, clock::now_ms()], session)
                    .optional()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn sessions_by_user(&self, user_id: &str) -> Result<Vec<SessionRecord>, BackendError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1 AND expires_at * 1000 > ?2
                 ORDER BY created_at, session_id"
            ))
            .and_then(|mut select| {
                select
                    .query_map(params![user_id, clock::now_ms()], session)?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, BackendError> {
        let session_id = session_id.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM sessions WHERE session_id = ?1")
                .and_then(|mut delete| delete.execute(params![session_id]))
                .map(|deleted| deleted == 1)
                .map_err(unavailable)
        })
        .await
    }

    async fn purge_expired_sessions(&self, now_ms: i64) -> Result<u64, BackendError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM sessions WHERE expires_at * 1000 <= ?1")
                .and_then(|mut purge| purge.execute(params![now_ms]))
                .map(|purged| purged as u64)
                .map_err(unavailable)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_typed_token_is_found_however_the_command_is_spelled_and_other_bodies_skip_the_parse() {
        let body = |text: &str| {
            format!(
                r#"{{"update_id":1,"message":{{"message_id":1,"date":1,"chat":{{"id":1,"type":"private"}},"text":"{text}"}}}}"#
            )
        };
        for text in [
            "/register alice s3cr3tT0ken",
            r"\/register alice s3cr3tT0ken",
            r"/\u0072egister alice s3cr3tT0ken",
            r"\u002fregister alice s3cr3tT0ken",
        ] {
            assert!(super::holds_typed_secret(&body(text)), "{text}");
        }
        for text in [
            "hello",
            r"caf\u00e9 \ud83d\ude00",
            "to register, type it",
            "/start",
        ] {
            assert!(!super::holds_typed_secret(&body(text)), "{text}");
        }
    }

    use super::*;

    #[test]
    fn every_table_and_index_of_the_schema_is_checked() {
        let names: Vec<&str> = schema_objects().collect();
        let created = ["CREATE TABLE", "CREATE INDEX", "CREATE TRIGGER"]
            .iter()
            .map(|create| SCHEMA.matches(create).count())
            .sum::<usize>();
        assert_eq!(names.len(), created, "{names:?}");
        assert!(names.contains(&"updates") && names.contains(&"updates_pending_by_key"));
        assert!(names.iter().all(|name| !name.is_empty()));
    }

    /// `stats` runs at every scrape of `/metrics`: the oldest pending update is found in the
    /// partial index of pending updates, not by reading the done ones kept for dedupe.
    #[test]
    fn the_oldest_pending_update_is_read_from_its_index() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {OLDEST_PENDING}"))
            .unwrap()
            .query_map([], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // One search of the index (a covering one: the table is not read), no scan.
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(
            plan[0].starts_with("SEARCH updates USING")
                && plan[0].ends_with("INDEX updates_pending_by_receipt"),
            "{plan:?}"
        );
    }
}
