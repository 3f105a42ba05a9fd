//! SIGKILL at random moments while a client delivers the way Telegram does (each chat in order,
//! every failure retried with the same update until it is answered 200): afterwards every
//! acknowledged update is stored exactly once.
//!
//! The kills, restarts and the check of the store are botline-bench's managed server, the same
//! code as `botline-bench --serve BIN --kills N` (and `scripts/crash.sh`).

use botline_bench::{
    CrashPlan, LoadConfig, LoadLimit, ManagedRun, ManagedServer, ServerConfig, run_managed,
};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_botline");
const KILLS: u32 = 6;
const UPDATES: u64 = 4000;

#[test]
fn sigkill_loses_and_duplicates_no_acknowledged_update() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
        .keep();
    let server = ManagedServer::start(ServerConfig {
        data_dir: Some(dir.join("data")),
        env: vec![("BOTLINE_LEASE".to_owned(), "2s".to_owned())],
        ..ServerConfig::new(BIN)
    })
    .expect("botline serve starts");
    let config = LoadConfig {
        connections: 16,
        chats: 64,
        rate: Some(1500.0),
        limit: LoadLimit::Updates(UPDATES),
        give_up: Duration::from_secs(120),
        request_timeout: Duration::from_secs(5),
        ..LoadConfig::default()
    };
    // A new seed each run, printed with the report on failure.
    let crash = CrashPlan {
        seed: Some(rand::random()),
        ..CrashPlan::new(KILLS)
    };
    let report = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_managed(
            config,
            server,
            ManagedRun {
                crash: Some(crash),
                ..ManagedRun::default()
            },
        ))
        .expect("the load ran");

    let server = report.server.as_ref().expect("a server report");
    assert_eq!(server.kills, KILLS, "{report}");
    assert_eq!(
        report.timeline.iter().map(|s| s.kills).sum::<u32>(),
        KILLS,
        "every kill is in the timeline"
    );
    assert_eq!(server.died, None, "{report}");
    assert_eq!(
        report.given_up, 0,
        "every update was acknowledged in the end: {report}"
    );
    assert_eq!(report.acknowledged, UPDATES);
    assert!(
        report.connection_errors > 0 || report.retries > 0,
        "the kills were felt: {report}"
    );
    let verification = report.verification.as_ref().expect("the store was checked");
    assert!(verification.is_ok(), "{report}");
    assert_eq!(verification.present, UPDATES);
    assert!(server.stopped_cleanly, "{report}");

    // Exactly once in every table, not only in the message table keyed by message.
    let db = rusqlite::Connection::open(server.data_dir.join("botline.db")).unwrap();
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |row| row.get(0)).unwrap() };
    assert_eq!(count("SELECT COUNT(*) FROM updates"), UPDATES as i64);
    assert_eq!(
        count("SELECT COUNT(*) FROM updates WHERE state = 1"),
        UPDATES as i64
    );
    assert_eq!(count("SELECT COUNT(*) FROM events"), UPDATES as i64);
    let repeated = count(
        "SELECT COUNT(*) FROM (SELECT 1 FROM events
         GROUP BY json_extract(payload, '$.chat.id'), json_extract(payload, '$.message_id')
         HAVING COUNT(*) > 1)",
    );
    assert_eq!(repeated, 0, "an update produced two events");
    let logs = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(!logs.is_empty(), "the server logged to {:?}", server.log);
    assert!(!logs.contains("panicked"), "{logs}");
}
