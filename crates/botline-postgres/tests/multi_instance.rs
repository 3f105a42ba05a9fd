//! Several Botline instances on one database: two `PostgresBackend`s, each with its own pool,
//! receiving at once from many chats, as instances behind a load balancer do.

mod common;

use botline_core::testsuite::{message_update, suite_config};
use botline_core::{
    Applied, BackendError, Delivery, Enqueued, Queue, QueueConfig, Store, build_records, clock,
};
use botline_postgres::PostgresBackend;
use common::TestDb;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// What the workers of all instances saw.
#[derive(Debug, Default)]
struct Seen {
    /// Order keys with a delivery leased and not yet processed.
    in_flight: HashSet<String>,
    /// Update ids per order key, in the order they were processed.
    processed: HashMap<String, Vec<i64>>,
    written: usize,
}

impl Seen {
    fn total(&self) -> usize {
        self.processed.values().map(Vec::len).sum()
    }
}

/// Takes a batch of deliveries as in flight, failing if another instance holds one of their keys.
fn take(seen: &Mutex<Seen>, instance: &str, deliveries: &[Delivery]) {
    let mut seen = seen.lock().unwrap();
    for delivery in deliveries {
        let key = delivery.update.order_key.to_string();
        assert!(
            seen.in_flight.insert(key.clone()),
            "{instance} was handed update {} of {key} while another of {key} was in flight",
            delivery.update.update_id
        );
    }
}

/// Processes one delivery: records it, lets its key go, applies it.
async fn process(backend: &PostgresBackend, seen: &Mutex<Seen>, delivery: &Delivery) {
    let key = delivery.update.order_key.to_string();
    {
        let mut seen = seen.lock().unwrap();
        seen.processed
            .entry(key.clone())
            .or_default()
            .push(delivery.update.update_id.0);
        seen.in_flight.remove(&key);
    }
    let records = build_records(&delivery.update, clock::now_ms()).expect("records");
    let applied = backend.apply(delivery, &records).await.expect("apply");
    assert_eq!(
        applied,
        Applied::Written,
        "update {} applied twice",
        delivery.update.update_id
    );
    seen.lock().unwrap().written += 1;
}

fn assert_in_order_and_complete(seen: &Seen, chats: usize, per_chat: usize) {
    assert_eq!(seen.processed.len(), chats, "{:?}", seen.processed.keys());
    for (key, order) in &seen.processed {
        assert_eq!(order.len(), per_chat, "{key} processed {order:?}");
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {order:?}"
        );
    }
    assert_eq!(seen.written, chats * per_chat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_hand_out_one_update_per_chat_at_a_time_in_order() {
    const CHATS: i64 = 12;
    const PER_CHAT: i64 = 20;
    let db = TestDb::new().await;
    // A lease no worker outlives here: any overlap is the queue's fault, not an expiry.
    let config = QueueConfig {
        lease: Duration::from_secs(20),
        ..suite_config()
    };
    let instances = [
        ("a", Arc::new(db.backend(config).await)),
        ("b", Arc::new(db.backend(config).await)),
    ];
    let seen = Arc::new(Mutex::new(Seen::default()));

    // Each chat's updates arrive one after another, each at both instances at once (Telegram
    // retrying through the load balancer): exactly one of the two stores it.
    let mut senders = Vec::new();
    for chat in 0..CHATS {
        let (a, b) = (Arc::clone(&instances[0].1), Arc::clone(&instances[1].1));
        senders.push(tokio::spawn(async move {
            for n in 0..PER_CHAT {
                let update = message_update(1000 + n * CHATS + chat, -chat - 1, n + 1, "x");
                let (at_a, at_b) = tokio::join!(a.enqueue(&update), b.enqueue(&update));
                let mut answers = [at_a.expect("enqueue"), at_b.expect("enqueue")];
                answers.sort_by_key(|answer| *answer == Enqueued::Duplicate);
                assert_eq!(answers, [Enqueued::New, Enqueued::Duplicate]);
                tokio::time::sleep(Duration::from_millis((n % 3) as u64)).await;
            }
        }));
    }

    let total = (CHATS * PER_CHAT) as usize;
    let mut workers = Vec::new();
    for (name, backend) in &instances {
        for worker in 0..3_u64 {
            let (name, backend, seen) = (*name, Arc::clone(backend), Arc::clone(&seen));
            workers.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while seen.lock().unwrap().total() < total {
                    assert!(Instant::now() < deadline, "not all updates were processed");
                    let deliveries = backend.receive(4).await.expect("receive");
                    if deliveries.is_empty() {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        continue;
                    }
                    take(&seen, name, &deliveries);
                    for delivery in &deliveries {
                        tokio::time::sleep(Duration::from_millis(worker % 3)).await;
                        process(&backend, &seen, delivery).await;
                    }
                }
            }));
        }
    }
    for task in senders.into_iter().chain(workers) {
        task.await.expect("task");
    }

    assert_in_order_and_complete(&seen.lock().unwrap(), CHATS as usize, PER_CHAT as usize);
    for (_, backend) in &instances {
        let stats = backend.stats().await.expect("stats");
        assert_eq!(
            (stats.pending, stats.in_flight, stats.dead, stats.done),
            (0, 0, 0, total as u64)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leases_of_an_instance_that_stops_are_taken_over() {
    const CHATS: i64 = 8;
    const PER_CHAT: i64 = 4;
    let db = TestDb::new().await;
    let config = QueueConfig {
        lease: Duration::from_millis(800),
        ..suite_config()
    };
    let a = db.backend(config).await;
    let b = db.backend(config).await;
    for n in 0..PER_CHAT {
        for chat in 0..CHATS {
            let update = message_update(500 + n * CHATS + chat, chat + 1, n + 1, "x");
            assert_eq!(a.enqueue(&update).await.unwrap(), Enqueued::New);
        }
    }
    let seen = Mutex::new(Seen::default());

    // Instance a processes the first update of every chat, then takes the second ones and stops.
    let first = a.receive(100).await.unwrap();
    assert_eq!(first.len(), CHATS as usize, "one per chat");
    take(&seen, "a", &first);
    for delivery in &first {
        process(&a, &seen, delivery).await;
    }
    let abandoned = a.receive(100).await.unwrap();
    let abandoned_at = Instant::now();
    assert_eq!(abandoned.len(), CHATS as usize);
    let abandoned_ids: HashSet<i64> = abandoned.iter().map(|d| d.update.update_id.0).collect();

    // Instance b gets nothing of those chats until the leases expire, then everything.
    let total = (CHATS * PER_CHAT) as usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut taken_over = 0;
    while seen.lock().unwrap().total() < total {
        assert!(Instant::now() < deadline, "updates were lost");
        let deliveries = b.receive(5).await.unwrap();
        if deliveries.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        assert!(
            abandoned_at.elapsed() >= config.lease - Duration::from_millis(150),
            "b was handed {:?} {:?} into a's lease",
            deliveries
                .iter()
                .map(|d| d.update.update_id)
                .collect::<Vec<_>>(),
            abandoned_at.elapsed()
        );
        for delivery in &deliveries {
            if abandoned_ids.contains(&delivery.update.update_id.0) {
                assert_eq!(delivery.attempt, 2, "an expired lease is an attempt");
                taken_over += 1;
            } else {
                assert_eq!(delivery.attempt, 1);
            }
            seen.lock()
                .unwrap()
                .in_flight
                .insert(delivery.update.order_key.to_string());
            process(&b, &seen, delivery).await;
        }
    }
    assert_eq!(taken_over, CHATS);
    assert_in_order_and_complete(&seen.lock().unwrap(), CHATS as usize, PER_CHAT as usize);

    // Instance a comes back with its stale deliveries: they are done, and failing one is refused.
    let stale = &abandoned[0];
    assert!(matches!(
        a.fail(stale, "late").await,
        Err(BackendError::LeaseLost(_))
    ));
    let records = build_records(&stale.update, clock::now_ms()).unwrap();
    assert_eq!(
        a.apply(stale, &records).await.unwrap(),
        Applied::AlreadyDone
    );
    assert!(b.receive(100).await.unwrap().is_empty());
    let stats = b.stats().await.unwrap();
    assert_eq!((stats.pending, stats.done), (0, total as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_arriving_out_of_order_still_go_out_one_per_chat_at_a_time() {
    const CHATS: i64 = 6;
    const PER_CHAT: i64 = 20;
    let db = TestDb::new().await;
    let config = QueueConfig {
        lease: Duration::from_secs(20),
        ..suite_config()
    };
    let instances = [
        ("a", Arc::new(db.backend(config).await)),
        ("b", Arc::new(db.backend(config).await)),
    ];
    let seen = Arc::new(Mutex::new(Seen::default()));

    // Two senders per chat, one per instance, each with every other update in a scrambled
    // order: lower ids keep arriving after higher ones were handed out.
    let mut senders = Vec::new();
    for chat in 0..CHATS {
        for (half, (_, backend)) in instances.iter().enumerate() {
            let backend = Arc::clone(backend);
            senders.push(tokio::spawn(async move {
                for n in (0..PER_CHAT).map(|n| (n * 7) % PER_CHAT) {
                    if n % 2 != half as i64 {
                        continue;
                    }
                    let update = message_update(1000 + n * CHATS + chat, chat + 1, n + 1, "x");
                    assert_eq!(backend.enqueue(&update).await.unwrap(), Enqueued::New);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
    }

    let total = (CHATS * PER_CHAT) as usize;
    let mut workers = Vec::new();
    for (name, backend) in &instances {
        for _ in 0..3 {
            let (name, backend, seen) = (*name, Arc::clone(backend), Arc::clone(&seen));
            workers.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while seen.lock().unwrap().total() < total {
                    assert!(Instant::now() < deadline, "not all updates were processed");
                    let deliveries = backend.receive(3).await.expect("receive");
                    if deliveries.is_empty() {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    take(&seen, name, &deliveries);
                    for delivery in &deliveries {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        process(&backend, &seen, delivery).await;
                    }
                }
            }));
        }
    }
    for task in senders.into_iter().chain(workers) {
        task.await.expect("task");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.written, total, "each update processed once");
    for (key, order) in &seen.processed {
        let unique: HashSet<_> = order.iter().collect();
        assert_eq!(unique.len(), PER_CHAT as usize, "{key}: {order:?}");
    }
}
