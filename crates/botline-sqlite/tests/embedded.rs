//! Behaviours of the embedded backend beyond the shared suite: forgetting old ids, reopening.

use botline_core::testsuite::{message_update, suite_config};
use botline_core::{
    Applied, BackendError, Enqueued, Outbox, OutboxAction, OutboxMessage, Queue, QueueConfig,
    SessionChange, SessionRecord, Sessions, Store, build_records, clock,
};
use botline_sqlite::SqliteBackend;
use std::sync::Arc;
use std::time::Duration;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_forgets_done_ids_past_the_window_and_nothing_else() {
    let dir = dir();
    let config = QueueConfig {
        dedupe_window: Duration::ZERO,
        ..suite_config()
    };
    let backend = Arc::new(SqliteBackend::open(dir.path(), config).unwrap());
    // More than one housekeeping batch of done updates.
    let done = 10_050;
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..done {
        let backend = Arc::clone(&backend);
        tasks.spawn(async move { backend.enqueue(&message_update(id, id, 1, "x")).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap(), Enqueued::New);
    }
    let mut applied = 0;
    while applied < done {
        for delivery in backend.receive(1000).await.unwrap() {
            let records = build_records(&delivery.update, clock::now_ms()).unwrap();
            backend.apply(&delivery, &records).await.unwrap();
            applied += 1;
        }
    }
    let pending = message_update(done + 1, -1, 1, "still pending");
    backend.enqueue(&pending).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    backend.housekeeping().await.unwrap();

    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.done, stats.pending), (0, 1), "{stats:?}");
    assert_eq!(
        backend
            .enqueue(&message_update(0, 0, 1, "x"))
            .await
            .unwrap(),
        Enqueued::New,
        "a forgotten id is new again"
    );
    assert_eq!(
        backend.enqueue(&pending).await.unwrap(),
        Enqueued::Duplicate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_store_has_every_acknowledged_update() {
    let dir = dir();
    {
        let backend = SqliteBackend::open(dir.path(), suite_config()).unwrap();
        for id in 1..=3 {
            backend
                .enqueue(&message_update(id, 5, id, "x"))
                .await
                .unwrap();
        }
        let leased = backend.receive(10).await.unwrap();
        assert_eq!(leased.len(), 1, "one chat, one at a time");
    }
    let backend = SqliteBackend::open_existing(dir.path(), suite_config()).unwrap();
    assert_eq!(
        backend.stats().await.unwrap().pending + backend.stats().await.unwrap().in_flight,
        3
    );
    tokio::time::sleep(suite_config().lease + Duration::from_millis(100)).await;
    let delivery = backend.receive(10).await.unwrap().remove(0);
    assert_eq!(
        delivery.update.update_id.0, 1,
        "the leased update comes back first"
    );
    assert_eq!(delivery.attempt, 2);
    assert!(SqliteBackend::open_existing(&dir.path().join("nowhere"), suite_config()).is_err());
}

/// An operator's command opens the store beside a running server: while another process holds
/// the write lock (a long write of the server's), the store opens and reads at once, rather
/// than fail with "database is locked" after the busy timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_store_opens_and_reads_while_another_process_writes() {
    let dir = dir();
    {
        let backend = SqliteBackend::open(dir.path(), suite_config()).unwrap();
        backend
            .enqueue(&message_update(1, 5, 1, "x"))
            .await
            .unwrap();
    }
    let writer = rusqlite::Connection::open(dir.path().join(botline_sqlite::DB_FILE)).unwrap();
    writer
        .execute_batch("BEGIN IMMEDIATE; UPDATE updates SET attempts = attempts;")
        .unwrap();
    let backend = SqliteBackend::open_existing(dir.path(), suite_config())
        .expect("opens while the write lock is held elsewhere");
    let stats = backend.stats().await.unwrap();
    assert_eq!(stats.pending, 1, "{stats:?}");
    writer.execute_batch("COMMIT").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_process_that_is_gone_are_released_at_once() {
    let dir = dir();
    let config = QueueConfig {
        lease: Duration::from_secs(600),
        ..suite_config()
    };
    {
        let killed = SqliteBackend::open(dir.path(), config).unwrap();
        for (id, chat) in [(1, 5), (2, 5), (3, 6)] {
            killed
                .enqueue(&message_update(id, chat, id, "x"))
                .await
                .unwrap();
        }
        assert_eq!(
            killed.receive(10).await.unwrap().len(),
            2,
            "heads of two chats"
        );
    }
    let backend = SqliteBackend::open(dir.path(), config).unwrap();
    assert!(
        backend.receive(10).await.unwrap().is_empty(),
        "leased for 10 minutes"
    );
    assert_eq!(backend.release_leases().await.unwrap(), 2);
    let mut deliveries = backend.receive(10).await.unwrap();
    deliveries.sort_by_key(|d| d.update.update_id);
    let ids: Vec<(i64, u32)> = deliveries
        .iter()
        .map(|d| (d.update.update_id.0, d.attempt))
        .collect();
    assert_eq!(
        ids,
        [(1, 2), (3, 2)],
        "the same heads, their first attempt counted"
    );
    assert_eq!(
        backend.release_leases().await.unwrap(),
        2,
        "leased again just now"
    );
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.pending, stats.in_flight, stats.done), (3, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_every_connection_and_leaves_no_wal() {
    let dir = dir();
    let wal = dir.path().join(format!("{}-wal", botline_sqlite::DB_FILE));
    let backend = SqliteBackend::open(dir.path(), suite_config()).unwrap();
    for id in 1..=50 {
        backend
            .enqueue(&message_update(id, id, id, "x"))
            .await
            .unwrap();
    }
    // A read, so an idle read connection is open beside the writer.
    assert_eq!(backend.stats().await.unwrap().pending, 50);
    assert!(wal.exists(), "WAL mode writes a WAL while open");

    // The handle stays alive: the connections are closed by `close`, not by a drop.
    backend.close().await.unwrap();
    assert!(!wal.exists(), "the last connection's close deletes the WAL");
    let late = backend.enqueue(&message_update(51, 51, 51, "x")).await;
    assert!(
        matches!(late, Err(BackendError::Unavailable(_))),
        "a write after close is refused, not lost silently: {late:?}"
    );
    backend.close().await.unwrap();

    let reopened = SqliteBackend::open_existing(dir.path(), suite_config()).unwrap();
    assert_eq!(reopened.stats().await.unwrap().pending, 50);
}

/// An apply whose transaction fails after the session was written (here its last statement, the
/// done mark, refused by a trigger) leaves no session, no call and no record; applied again once
/// it can commit, it writes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_fails_leaves_no_session() {
    let dir = dir();
    let backend = SqliteBackend::open(dir.path(), suite_config()).unwrap();
    backend
        .enqueue(&message_update(1, 5, 1, "x"))
        .await
        .unwrap();
    let delivery = backend.receive(1).await.unwrap().remove(0);
    let session = SessionRecord {
        session_id: "chat:5".into(),
        user_id: "telegram_1005".into(),
        chat_id: 5,
        state: "asked".into(),
        data: serde_json::Map::new(),
        created_at: clock::iso8601(clock::now_ms()),
        updated_at: clock::iso8601(clock::now_ms()),
        expires_at: clock::now_ms() / 1000 + 3600,
    };
    let mut records = build_records(&delivery.update, clock::now_ms()).unwrap();
    records.outbox = vec![OutboxMessage::new(
        "x:1",
        5,
        OutboxAction::SendMessage {
            text: "hi".into(),
            reply_to_message_id: None,
        },
    )];
    records.sessions = vec![SessionChange::Put(session.clone())];

    let other = rusqlite::Connection::open(dir.path().join(botline_sqlite::DB_FILE)).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER refuse_done BEFORE UPDATE OF state ON updates WHEN NEW.state = 1
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    let failed = backend.apply(&delivery, &records).await;
    assert!(
        matches!(&failed, Err(BackendError::Unavailable(why)) if why.contains("refused")),
        "{failed:?}"
    );
    assert_eq!(backend.session("chat:5").await.unwrap(), None);
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 0);
    assert_eq!(backend.user("telegram_1005").await.unwrap(), None);

    other.execute_batch("DROP TRIGGER refuse_done").unwrap();
    assert_eq!(
        backend.apply(&delivery, &records).await.unwrap(),
        Applied::Written
    );
    assert_eq!(backend.session("chat:5").await.unwrap(), Some(session));
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 1);
}
