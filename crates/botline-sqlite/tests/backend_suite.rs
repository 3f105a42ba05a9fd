//! The shared backend suite against a real SQLite file in a temporary directory, without and
//! with the ingestion journal.

use botline_core::QueueConfig;
use botline_sqlite::SqliteBackend;

async fn backend(config: QueueConfig) -> SqliteBackend {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
        .keep();
    SqliteBackend::open(&dir, config).expect("open")
}

botline_core::backend_suite!(backend);

/// The same contract with the ingestion journal in front, as `botline serve` runs the store.
mod journaled {
    use super::*;

    async fn backend(config: QueueConfig) -> SqliteBackend {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir")
            .keep();
        SqliteBackend::open_journaled(&dir, config).expect("open")
    }

    botline_core::backend_suite!(backend);
}
