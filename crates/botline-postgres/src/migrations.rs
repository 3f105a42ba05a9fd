//! The schema's migrations, embedded at compile time and run by sqlx's migrator.
//!
//! The files in `migrations/` are named as the `sqlx` CLI names them (`<version>_<name>.sql`), so
//! the CLI can apply them too, with the same checksums. `sqlx::migrate!` would read the directory
//! itself, but sqlx's `macros` and `migrate` features name its optional SQLite driver, which Cargo
//! then resolves into the lock file, where its native library clashes with `rusqlite`'s. So the
//! migrator comes from `sqlx-core` (feature `migrate`) and `sqlx-postgres` (feature `migrate`,
//! which makes a Postgres connection migratable), and the files are embedded here.

use sqlx_core::error::BoxDynError;
use sqlx_core::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

/// Version, description (the file name's words) and SQL of every migration, oldest first.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "queue and store",
        include_str!("../migrations/0001_queue_and_store.sql"),
    ),
    (
        2,
        "outbox delayed calls",
        include_str!("../migrations/0002_outbox_delayed_calls.sql"),
    ),
    (
        3,
        "park behind chat head",
        include_str!("../migrations/0003_park_behind_chat_head.sql"),
    ),
    (
        4,
        "oldest pending index",
        include_str!("../migrations/0004_oldest_pending_index.sql"),
    ),
    (
        5,
        "apply in one statement",
        include_str!("../migrations/0005_apply_in_one_statement.sql"),
    ),
];

/// [`MIGRATIONS`] as sqlx's migrator takes them.
#[derive(Debug, Clone, Copy)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The command that applies what [`not_applied`] names.
pub(crate) const PROVISION_COMMAND: &str = "botline provision --backend postgres";

/// One `migration <version> (<name>) is not applied` for each of this build's migrations that
/// `applied` (the versions sqlx recorded as successful) lacks, oldest first.
pub(crate) fn not_applied(applied: &[i64]) -> Vec<String> {
    MIGRATIONS
        .iter()
        .filter(|(version, ..)| !applied.contains(version))
        .map(|(version, description, _)| {
            format!("migration {version} ({description}) is not applied")
        })
        .collect()
}

/// The migrator for this build's schema.
pub(crate) async fn migrator() -> Result<Migrator, sqlx_core::migrate::MigrateError> {
    Migrator::new(Embedded).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migrations_not_applied_are_named_in_order() {
        assert!(not_applied(&[1, 2, 3, 4, 5]).is_empty());
        assert_eq!(
            not_applied(&[1]),
            [
                "migration 2 (outbox delayed calls) is not applied",
                "migration 3 (park behind chat head) is not applied",
                "migration 4 (oldest pending index) is not applied",
                "migration 5 (apply in one statement) is not applied",
            ]
        );
    }

    #[test]
    fn every_file_in_migrations_is_embedded_under_its_version_and_name() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS
            .iter()
            .map(|(version, description, _)| {
                format!("{version:04}_{}.sql", description.replace(' ', "_"))
            })
            .collect();
        assert_eq!(files, embedded);
        for (version, description, sql) in MIGRATIONS {
            let file = format!("{dir}/{version:04}_{}.sql", description.replace(' ', "_"));
            assert_eq!(std::fs::read_to_string(file).unwrap(), *sql);
        }
    }
}
