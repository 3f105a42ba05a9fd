//! The shared backend suite against a real SQLite file in a temporary directory.

use botline_core::QueueConfig;
use botline_sqlite::SqliteBackend;

async fn backend(config: QueueConfig) -> SqliteBackend {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
        .keep();
    SqliteBackend::open(&dir, config).expect("open")
}

botline_core::backend_suite!(backend);
