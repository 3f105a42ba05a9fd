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
//!
//! The modules are those of every backend (`botline-postgres`, `botline-aws`): `queue` (the
//! queue and the dead letters), `store` (the records, `apply`, registration tokens, sessions),
//! `outbox`; here also `journal`, `writer`, `backup` and `files` (the data directory).

pub mod backup;
pub mod files;
mod journal;
mod outbox;
mod queue;
mod store;
mod writer;

use botline_core::{BackendError, QueueConfig, clock};
use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
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

#[cfg(test)]
mod tests {
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
