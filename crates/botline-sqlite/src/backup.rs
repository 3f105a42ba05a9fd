//! Online backup and restore of the embedded store, with SQLite's backup API.
//!
//! [`backup`] copies `botline.db` while `botline serve` keeps writing to it: it opens its own
//! read-only connection and copies every page in one step, inside one read transaction, so the
//! copy is the store as one commit left it (in WAL mode a reader does not hold up the writer,
//! and the writer does not restart the copy). Then it imports into the copy what the server's
//! ingestion journal holds past the position the copy records (the segments are opened before
//! the copy begins, so one the server deletes meanwhile stays readable). Everything
//! acknowledged before the backup began is in it: an update is acknowledged only once it is
//! durable in the journal. A file copy of a live store (database, `-wal` and `-shm` taken at
//! different moments) is not.
//!
//! [`restore`] copies a backup into a data directory that has no store yet; `botline serve` on
//! that directory then goes on where the backup left off (updates that were queued are
//! processed, once).

use crate::DB_FILE;
use crate::files::{FILE_MODE, prepare_data_dir};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a backup or a restore copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Database pages copied.
    pub pages: i32,
    /// The copy's size in bytes.
    pub bytes: u64,
}

/// Why a backup or a restore did not happen. Nothing was left behind but, for a failed copy,
/// the partial destination file, which is removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("{path} has no store (no {DB_FILE}); is it the data directory `botline serve` uses?")]
    NoStore { path: PathBuf },
    #[error("{path} exists already: a backup never overwrites a file; name a new one")]
    Exists { path: PathBuf },
    #[error("{path} holds a store already: restore into a new, empty data directory")]
    StoreExists { path: PathBuf },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    DataDir(#[from] crate::files::DataDirError),
    #[error("SQLite: {source} (copying {from} to {to})")]
    Sqlite {
        from: PathBuf,
        to: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot read the journal in {path}: {source}")]
    Journal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the copy at {path} does not check out: {detail}")]
    Damaged { path: PathBuf, detail: String },
}

/// Copies the store in `data_dir` to the new file `to`, while `botline serve` may be running.
pub fn backup(data_dir: &Path, to: &Path) -> Result<Copied, BackupError> {
    let from = data_dir.join(DB_FILE);
    if !from.is_file() {
        return Err(BackupError::NoStore {
            path: data_dir.to_owned(),
        });
    }
    // Before the copy: a segment the server imports and deletes during it stays readable.
    let segments =
        crate::journal::open_segments(&data_dir.join(crate::JOURNAL_DIR)).map_err(|source| {
            BackupError::Journal {
                path: data_dir.join(crate::JOURNAL_DIR),
                source,
            }
        })?;
    create_private(to, || BackupError::Exists {
        path: to.to_owned(),
    })?;
    copy(&from, to, segments)
}

/// Copies the backup `from` into `data_dir` (created `0700` if missing), which must hold no store.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Copied, BackupError> {
    if !from.is_file() {
        return Err(BackupError::NoStore {
            path: from.to_owned(),
        });
    }
    prepare_data_dir(data_dir)?;
    let journal = data_dir.join(crate::JOURNAL_DIR);
    if crate::journal::open_segments(&journal).is_ok_and(|segments| !segments.is_empty()) {
        return Err(BackupError::StoreExists {
            path: data_dir.to_owned(),
        });
    }
    let to = data_dir.join(DB_FILE);
    create_private(&to, || BackupError::StoreExists {
        path: data_dir.to_owned(),
    })?;
    copy(from, &to, Vec::new())
}

/// Creates `path`, `0600`, refusing one that exists (or a link in its place).
fn create_private(path: &Path, exists: impl Fn() -> BackupError) -> Result<(), BackupError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map(drop)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => exists(),
            _ => BackupError::Create {
                path: path.to_owned(),
                source,
            },
        })
}

/// Copies the database `from` into the empty file `to` in one step, checks the copy, and
/// removes it again if anything failed.
fn copy(from: &Path, to: &Path, journal: Vec<(u64, std::fs::File)>) -> Result<Copied, BackupError> {
    let copied = copy_pages(from, to, journal);
    if copied.is_err() {
        let _ = std::fs::remove_file(to);
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = to.as_os_str().to_owned();
            side.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(side));
        }
    }
    copied
}

fn copy_pages(
    from: &Path,
    to: &Path,
    journal: Vec<(u64, std::fs::File)>,
) -> Result<Copied, BackupError> {
    let sqlite = |source| BackupError::Sqlite {
        from: from.to_owned(),
        to: to.to_owned(),
        source,
    };
    let source = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    source
        .busy_timeout(Duration::from_secs(5))
        .map_err(sqlite)?;
    let mut target = Connection::open(to).map_err(sqlite)?;
    let pages = {
        let backup = Backup::new(&source, &mut target).map_err(sqlite)?;
        // -1: every page in one step, so the copy is one snapshot of the source.
        loop {
            match backup.step(-1).map_err(sqlite)? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        backup.progress().pagecount
    };
    crate::journal::replay(&target, journal).map_err(|e| BackupError::Damaged {
        path: to.to_owned(),
        detail: format!("the journal could not be added: {e}"),
    })?;
    let check: String = target
        .query_row("PRAGMA quick_check", [], |row| row.get(0))
        .map_err(sqlite)?;
    if check != "ok" {
        return Err(BackupError::Damaged {
            path: to.to_owned(),
            detail: check,
        });
    }
    // The copy keeps the source's WAL mode; fold its WAL into the file so that the backup is
    // one file.
    target
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(sqlite)?;
    drop(target);
    let bytes = std::fs::metadata(to)
        .map_err(|source| BackupError::Create {
            path: to.to_owned(),
            source,
        })?
        .len();
    Ok(Copied { pages, bytes })
}
