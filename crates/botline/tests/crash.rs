//! SIGKILL at random moments while a client delivers the way Telegram does (each chat in order,
//! every failure retried with the same update until it is answered 200): afterwards every
//! acknowledged update is stored exactly once.

mod common;

use botline_bench::{LoadConfig, LoadLimit};
use common::Server;
use rand::Rng;
use std::time::Duration;

const KILLS: usize = 6;
const UPDATES: u64 = 4000;

#[test]
fn sigkill_loses_and_duplicates_no_acknowledged_update() {
    let mut server = Server::start(&[("BOTLINE_LEASE", "2s")]);
    let config = LoadConfig {
        url: server.url("/telegram/webhook"),
        connections: 16,
        chats: 64,
        rate: Some(1500.0),
        limit: LoadLimit::Updates(UPDATES),
        give_up: Duration::from_secs(120),
        request_timeout: Duration::from_secs(5),
        ..LoadConfig::default()
    };
    let load = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(botline_bench::run(config))
    });

    let mut rng = rand::rng();
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.random_range(150..450)));
        server.kill();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
        server.restart();
    }
    let report = load.join().unwrap().expect("the load ran");
    assert_eq!(
        report.given_up, 0,
        "every update was acknowledged in the end"
    );
    assert_eq!(report.acknowledged, UPDATES);
    assert!(
        report.connection_errors > 0 || report.retries > 0,
        "the kills were felt: {report:?}"
    );

    server.wait_drained();
    let exported = server.cli(&["messages", "export", "--format", "jsonl"]);
    let verification = botline_bench::verify(&report, &String::from_utf8(exported.stdout).unwrap());
    assert!(verification.is_ok(), "{verification:#?}");
    assert_eq!(verification.present, UPDATES);

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
    let logs = server.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}
