//! The data directory and its files, kept to the user Botline runs as.
//!
//! The store holds messages, users, raw updates and registration token digests, so:
//! - the directory is created `0700`, and one that other users can write to is refused (they
//!   could swap the store or plant a link where Botline will write);
//! - `botline.db` is created `0600` before SQLite opens it (SQLite gives its `-wal` and `-shm`
//!   the database file's mode), and a store an older build left readable by others is narrowed
//!   to `0600`;
//! - `serve.lock` is opened without following a symbolic link and without truncating, so a link
//!   planted in its place cannot make Botline empty another file.
//!
//! The umask still applies on creation, so a narrower one gives narrower files.

use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The mode of the data directory Botline creates.
pub const DIR_MODE: u32 = 0o700;
/// The mode of the files Botline creates in it.
pub const FILE_MODE: u32 = 0o600;
/// The lock file `botline serve` holds in its data directory.
pub const LOCK_FILE: &str = "serve.lock";

/// Why the data directory or one of its files cannot be used. The text names the path and says
/// what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("cannot create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "refusing to use {path}: other users can write to it (mode {mode:o}), so they could \
         replace the store or plant a link in it. Run `chmod o-w {path}` or pick a directory \
         only Botline's user can write"
    )]
    WritableByOthers { path: PathBuf, mode: u32 },
    #[error("refusing to open {path}: it is a symbolic link (remove it; Botline creates the file)")]
    Symlink { path: PathBuf },
    #[error("another `botline serve` is using {path}")]
    Locked { path: PathBuf },
}

/// Creates `dir` (`0700`) if needed, and refuses one that other users can write to.
pub fn prepare_data_dir(dir: &Path) -> Result<(), DataDirError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| DataDirError::Create {
            path: dir.to_owned(),
            source,
        })?;
    // The directory itself may be a link (to another disk): its target is what is checked.
    let metadata = std::fs::metadata(dir).map_err(|source| DataDirError::Create {
        path: dir.to_owned(),
        source,
    })?;
    if !metadata.is_dir() {
        return Err(DataDirError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(DataDirError::WritableByOthers {
            path: dir.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Creates the store's file `0600` when it does not exist yet, and narrows a store file (and its
/// `-wal` and `-shm`) that others may read to `0600`.
pub(crate) fn private_store_file(path: &Path) -> Result<(), DataDirError> {
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(DataDirError::Symlink {
                path: path.to_owned(),
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // O_EXCL: fails on anything in the way, a link included.
            if let Err(source) = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(path)
                && source.kind() != io::ErrorKind::AlreadyExists
            {
                return Err(DataDirError::Create {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        // Left to SQLite, which names the problem (see `explain`).
        Err(_) => return Ok(()),
    }
    narrow(path);
    for suffix in ["-wal", "-shm"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        narrow(Path::new(&companion));
    }
    Ok(())
}

/// Narrows an existing regular file that group or others may read or write to `0600`. A file
/// that cannot be changed (read-only file system, another owner) is left as it is: opening the
/// store reports what is wrong with it.
fn narrow(path: &Path) {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if !metadata.is_file() || mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700)) {
        Ok(()) => tracing::info!(
            path = %path.display(),
            was = format!("{mode:o}"),
            "the store's file was readable by other users; narrowed to the owner"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            error = %e,
            "the store's file is readable by other users and could not be narrowed"
        ),
    }
}

/// The lock that keeps a second `botline serve` off a data directory, held while the returned
/// file is open. The directory is prepared as [`prepare_data_dir`] does; the lock file is opened
/// without following a link and without truncating.
pub fn lock_data_dir(dir: &Path) -> Result<File, DataDirError> {
    prepare_data_dir(dir)?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::ELOOP) {
                DataDirError::Symlink { path: path.clone() }
            } else {
                DataDirError::Create {
                    path: path.clone(),
                    source,
                }
            }
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(DataDirError::Locked {
            path: dir.to_owned(),
        }),
        Err(TryLockError::Error(source)) => Err(DataDirError::Create { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_new_directory_is_private_and_one_others_can_write_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        prepare_data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = prepare_data_dir(&dir).unwrap_err().to_string();
        assert!(
            refused.contains("other users can write") && refused.contains("chmod o-w"),
            "{refused}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_data_dir(&dir).unwrap();
    }

    #[test]
    fn the_lock_follows_no_link_and_truncates_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        prepare_data_dir(&dir).unwrap();
        let victim = root.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(LOCK_FILE)).unwrap();
        let refused = lock_data_dir(&dir).unwrap_err();
        assert!(matches!(refused, DataDirError::Symlink { .. }), "{refused}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");

        std::fs::remove_file(dir.join(LOCK_FILE)).unwrap();
        std::fs::write(dir.join(LOCK_FILE), "left by a previous run").unwrap();
        let lock = lock_data_dir(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
            "left by a previous run"
        );
        assert!(matches!(
            lock_data_dir(&dir),
            Err(DataDirError::Locked { .. })
        ));
        drop(lock);
        lock_data_dir(&dir).unwrap();
    }
}
