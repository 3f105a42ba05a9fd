//! The behaviours every backend must show, run by each backend crate against the real service
//! (a SQLite file, Postgres, the AWS emulator), as apalis's `generic_storage_test!` does.
//!
//! ```text
//! async fn backend(config: QueueConfig) -> MyBackend { MyBackend::connect(config).await }
//! botline_core::backend_suite!(backend);
//! ```
//!
//! The suite runs on real time with short leases and backoffs ([`suite_config`]: hundreds of
//! milliseconds); it asserts what happens, never how fast. A backend whose service cannot honour
//! such times (SQS counts visibility timeouts in whole seconds) runs it with a [`QueueConfig`] of
//! its own, which every test then uses, for the backend and for its waits alike:
//!
//! ```text
//! fn whole_seconds() -> QueueConfig { QueueConfig { lease: Duration::from_secs(2), ..suite_config() } }
//! botline_core::backend_suite!(backend, config = whole_seconds);
//! ```

use crate::backend::{
    Applied, Backend, BackendError, Enqueued, Failed, Import, Imported, MessageQuery, QueueConfig,
};
use crate::commands::{
    RegisterDecision, TypedSecret, decide_register, register_args, token_digest,
};
use crate::records::{
    OutboxAction, OutboxMessage, Records, Redemption, SessionChange, SessionRecord, build_records,
};
use crate::{Delivery, InboundUpdate, QueuedUpdate, RetryPolicy, UpdateId, clock};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Generates one `#[tokio::test]` per behaviour, each with a fresh backend from `$factory`, an
/// `async fn(QueueConfig) -> impl Backend`, made with [`suite_config`] or, with
/// `config = $config`, with what `$config` (a `fn() -> QueueConfig`) returns.
#[macro_export]
macro_rules! backend_suite {
    ($factory:path) => {
        $crate::backend_suite!($factory, config = $crate::testsuite::suite_config);
    };
    ($factory:path, config = $config:path) => {
        $crate::backend_suite!(@tests $factory, $config;
            enqueue_dedupes_by_update_id,
            keeps_the_body_byte_for_byte,
            an_acked_update_is_not_delivered_again,
            an_expired_lease_is_delivered_again,
            an_extended_lease_is_kept_until_it_ends,
            failures_back_off_then_dead_letter,
            a_failure_can_ask_for_a_longer_wait,
            expired_leases_count_as_attempts,
            dead_letters_can_be_redriven,
            stats_tell_when_the_oldest_unfinished_update_was_received,
            a_dead_letter_does_not_block_its_chat,
            a_dead_letter_keeps_no_typed_token,
            one_chat_at_a_time_in_update_id_order,
            a_long_backlog_of_one_chat_drains_in_order,
            per_chat_order_holds_under_concurrency,
            apply_is_idempotent,
            the_first_write_of_a_message_wins,
            a_user_upsert_keeps_created_at,
            events_are_queryable_by_user_and_time,
            messages_filter_and_page,
            records_export_and_import,
            sessions_expire,
            a_token_is_redeemed_once_and_answered_first,
            outbox_calls_go_out_once_in_order_per_chat,
            any_bot_api_call_is_kept_as_written,
            a_delayed_call_waits_for_its_time_and_holds_up_nothing,
            sessions_are_written_with_the_effects_once,
        );
    };
    (@tests $factory:path, $config:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testsuite::$name($factory, $config()).await;
            }
        )*
    };
}

/// The settings the suite runs with unless a backend passes its own: short enough to wait out,
/// long enough not to race.
pub fn suite_config() -> QueueConfig {
    QueueConfig {
        lease: Duration::from_millis(400),
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_millis(300),
        },
        dedupe_window: QueueConfig::MIN_DEDUPE_WINDOW,
    }
}

/// A `message` update in `chat` from user 1000 + chat.
pub fn message_update(update_id: i64, chat: i64, message_id: i64, text: &str) -> InboundUpdate {
    let user = 1000 + chat.abs();
    let body = serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "date": 1_714_564_800 + message_id,
            "chat": {"id": chat, "type": if chat < 0 { "supergroup" } else { "private" }},
            "from": {"id": user, "is_bot": false, "first_name": "Test", "username": format!("user{user}")},
            "text": text,
        }
    });
    InboundUpdate::parse(body.to_string().as_bytes()).expect("a valid update")
}

async fn fresh<B, F, Fut>(make: &F, config: QueueConfig) -> B
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    make(config).await
}

async fn enqueue<B: Backend>(backend: &B, update: &InboundUpdate) {
    assert_eq!(
        backend.enqueue(update).await.expect("enqueue"),
        Enqueued::New,
        "update {} should be new",
        update.id
    );
}

async fn receive<B: Backend>(backend: &B, max: usize) -> Vec<Delivery> {
    backend.receive(max).await.expect("receive")
}

async fn apply<B: Backend>(backend: &B, delivery: &Delivery, now_ms: i64) -> Applied {
    let records = build_records(&delivery.update, now_ms).expect("records");
    backend.apply(delivery, &records).await.expect("apply")
}

fn ids(deliveries: &[Delivery]) -> Vec<i64> {
    let mut ids: Vec<i64> = deliveries.iter().map(|d| d.update.update_id.0).collect();
    ids.sort_unstable();
    ids
}

async fn wait_past(duration: Duration) {
    tokio::time::sleep(duration + Duration::from_millis(150)).await;
}

pub async fn enqueue_dedupes_by_update_id<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    let update = message_update(1, 10, 1, "hello");
    enqueue(&backend, &update).await;
    assert_eq!(backend.enqueue(&update).await.unwrap(), Enqueued::Duplicate);
    let same_id_other_body = message_update(1, 11, 5, "other");
    assert_eq!(
        backend.enqueue(&same_id_other_body).await.unwrap(),
        Enqueued::Duplicate
    );
    let deliveries = receive(&backend, 10).await;
    assert_eq!(ids(&deliveries), vec![1]);
    assert_eq!(deliveries[0].update.raw, update.raw);
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.pending, stats.in_flight), (0, 1));
}

pub async fn keeps_the_body_byte_for_byte<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    let body = "{ \"update_id\" : 5000000001,\n \"future_kind\":{\"chat\":{\"id\":-1009876543210123},\"text\":\"\\u00e9\\ud83d\\ude00 \u{5e9}\u{5dc}\u{5d5}\u{5dd}\",\"n\":1.50}}";
    let update = InboundUpdate::parse(body.as_bytes()).unwrap();
    enqueue(&backend, &update).await;
    let deliveries = receive(&backend, 1).await;
    assert_eq!(deliveries.len(), 1);
    let queued = &deliveries[0].update;
    assert_eq!(queued.raw, body);
    assert_eq!(queued.update_id, UpdateId(5_000_000_001));
    assert_eq!(queued.kind.as_str(), "future_kind");
    assert_eq!(queued.order_key, update.order_key);
    assert!(!queued.entry_id.is_empty());
    assert!(queued.received_at_ms > 0);
}

pub async fn an_acked_update_is_not_delivered_again<B: Backend, F, Fut>(
    make: F,
    config: QueueConfig,
) where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    let update = message_update(2, 10, 1, "hello");
    enqueue(&backend, &update).await;
    let delivery = receive(&backend, 1).await.remove(0);
    backend.ack(&delivery).await.unwrap();
    backend
        .ack(&delivery)
        .await
        .expect("a second ack is harmless");
    wait_past(config.lease).await;
    assert!(receive(&backend, 10).await.is_empty());
    assert_eq!(
        backend.enqueue(&update).await.unwrap(),
        Enqueued::Duplicate,
        "a done update is still remembered"
    );
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.pending, stats.in_flight, stats.done), (0, 0, 1));
}

pub async fn an_expired_lease_is_delivered_again<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(3, 10, 1, "hello")).await;
    let first = receive(&backend, 1).await.remove(0);
    assert_eq!(first.attempt, 1);
    assert!(
        receive(&backend, 10).await.is_empty(),
        "leased updates are not handed out twice"
    );
    wait_past(config.lease).await;
    let second = receive(&backend, 1).await.remove(0);
    assert_eq!(second.update.update_id, first.update.update_id);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.receipt, first.receipt);
    assert!(matches!(
        backend.ack(&first).await,
        Err(BackendError::LeaseLost(_))
    ));
    assert!(matches!(
        backend.fail(&first, "stale").await,
        Err(BackendError::LeaseLost(_))
    ));
    backend.ack(&second).await.unwrap();
}

pub async fn an_extended_lease_is_kept_until_it_ends<B: Backend, F, Fut>(
    make: F,
    config: QueueConfig,
) where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(40, 10, 1, "a slow handler")).await;
    let slow = receive(&backend, 1).await.remove(0);
    // Extended every quarter lease, the lease outlives three of its own lengths.
    let every = config.lease / 4;
    for _ in 0..12 {
        tokio::time::sleep(every).await;
        backend.extend(&slow).await.expect("extend a live lease");
        assert!(
            receive(&backend, 10).await.is_empty(),
            "an extended lease is not handed out again"
        );
    }
    assert_eq!(
        apply(&backend, &slow, 1_714_564_900_000).await,
        Applied::Written
    );
    if !backend.apply_acknowledges() {
        backend.ack(&slow).await.unwrap();
    }
    assert!(matches!(
        backend.extend(&slow).await,
        Err(BackendError::LeaseLost(UpdateId(40)))
    ));

    // Not extended, the lease ends; the next delivery holds the update, not the first.
    enqueue(&backend, &message_update(41, 11, 1, "a stalled worker")).await;
    let stalled = receive(&backend, 1).await.remove(0);
    wait_past(config.lease).await;
    let again = receive(&backend, 1).await.remove(0);
    assert_eq!(again.update.update_id, UpdateId(41));
    assert_eq!(again.attempt, 2);
    assert!(matches!(
        backend.extend(&stalled).await,
        Err(BackendError::LeaseLost(UpdateId(41)))
    ));
    backend.extend(&again).await.expect("the new lease is live");
    backend.ack(&again).await.unwrap();
    assert_eq!(backend.stats().await.unwrap().pending, 0);
}

pub async fn failures_back_off_then_dead_letter<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(4, 10, 1, "poison")).await;
    for attempt in 1..=3u32 {
        let delivery = receive(&backend, 1).await.remove(0);
        assert_eq!(delivery.attempt, attempt);
        let failed = backend
            .fail(&delivery, &format!("boom {attempt}"))
            .await
            .unwrap();
        if attempt < 3 {
            let after = config.retry.backoff(attempt);
            assert_eq!(failed, Failed::Retrying { after });
            assert!(
                receive(&backend, 1).await.is_empty(),
                "a failed update waits out its backoff"
            );
            wait_past(after).await;
        } else {
            assert_eq!(failed, Failed::DeadLettered);
        }
    }
    wait_past(config.retry.backoff_max).await;
    assert!(receive(&backend, 10).await.is_empty());
    let dead = backend.list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].update.update_id, UpdateId(4));
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(dead[0].last_error.as_deref(), Some("boom 3"));
    assert!(dead[0].update.raw.contains("poison"));
    assert_eq!(
        backend.show(UpdateId(4)).await.unwrap(),
        Some(dead[0].clone())
    );
    assert_eq!(backend.show(UpdateId(99)).await.unwrap(), None);
    let stats = backend.stats().await.unwrap();
    assert_eq!(stats.dead, 1);
    assert_eq!(
        stats.oldest_pending_ms, None,
        "a dead letter is not pending"
    );
}

pub async fn stats_tell_when_the_oldest_unfinished_update_was_received<B: Backend, F, Fut>(
    make: F,
    config: QueueConfig,
) where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    let oldest = || async { backend.stats().await.unwrap().oldest_pending_ms };
    assert_eq!(oldest().await, None, "nothing queued");
    enqueue(&backend, &message_update(70, 10, 1, "first")).await;
    let first = receive(&backend, 1).await.remove(0);
    assert_eq!(
        oldest().await,
        Some(first.update.received_at_ms),
        "an update in flight is not done yet"
    );
    // So that the next one is received in a later millisecond (the backends' clocks are this
    // machine's): the oldest is then told apart from the newest.
    while clock::now_ms() <= first.update.received_at_ms {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    enqueue(&backend, &message_update(71, 11, 1, "second")).await;
    assert_eq!(oldest().await, Some(first.update.received_at_ms));
    backend.ack(&first).await.unwrap();
    let waiting = oldest().await;
    let second = receive(&backend, 1).await.remove(0);
    assert_eq!(second.update.update_id, UpdateId(71));
    assert_eq!(
        waiting,
        Some(second.update.received_at_ms),
        "the waiting one, once the first is done"
    );
    backend.ack(&second).await.unwrap();
    assert_eq!(oldest().await, None, "everything is done");
}

pub async fn a_failure_can_ask_for_a_longer_wait<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(42, 10, 1, "rate-limited")).await;
    let delivery = receive(&backend, 1).await.remove(0);
    // Longer than any backoff of the policy: the update waits for it.
    let wait = config.retry.backoff_max + Duration::from_secs(1);
    assert_eq!(
        backend
            .fail_after(&delivery, "retry later", wait)
            .await
            .unwrap(),
        Failed::Retrying { after: wait }
    );
    wait_past(config.retry.backoff_max).await;
    assert!(
        receive(&backend, 1).await.is_empty(),
        "the wait asked for is kept, not only the backoff"
    );
    wait_past(wait - config.retry.backoff_max).await;
    let again = receive(&backend, 1).await.remove(0);
    assert_eq!((again.update.update_id, again.attempt), (UpdateId(42), 2));
    // A shorter wait than the backoff changes nothing.
    assert_eq!(
        backend
            .fail_after(&again, "retry soon", Duration::from_millis(1))
            .await
            .unwrap(),
        Failed::Retrying {
            after: config.retry.backoff(2)
        }
    );
}

pub async fn expired_leases_count_as_attempts<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(5, 10, 1, "crashes its worker")).await;
    for attempt in 1..=3u32 {
        let delivery = receive(&backend, 1).await.remove(0);
        assert_eq!(delivery.attempt, attempt);
        wait_past(config.lease).await;
    }
    assert!(receive(&backend, 10).await.is_empty());
    let dead = backend.list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
}

async fn dead_letter<B: Backend>(backend: &B, update: &InboundUpdate) {
    enqueue(backend, update).await;
    loop {
        let mut deliveries = receive(backend, 100).await;
        deliveries.retain(|d| d.update.update_id == update.id);
        match deliveries.pop() {
            Some(delivery) => {
                if backend.fail(&delivery, "boom").await.unwrap() == Failed::DeadLettered {
                    return;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub async fn dead_letters_can_be_redriven<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    dead_letter(&backend, &message_update(6, 10, 1, "a")).await;
    assert!(backend.redrive(UpdateId(6)).await.unwrap());
    assert!(
        !backend.redrive(UpdateId(6)).await.unwrap(),
        "no longer dead"
    );
    assert!(!backend.redrive(UpdateId(404)).await.unwrap());
    let delivery = receive(&backend, 10).await.remove(0);
    assert_eq!(delivery.update.update_id, UpdateId(6));
    assert_eq!(delivery.attempt, 1, "a redriven update gets fresh attempts");
    assert_eq!(
        apply(&backend, &delivery, clock::now_ms()).await,
        Applied::Written
    );
    assert!(backend.list(10).await.unwrap().is_empty());

    dead_letter(&backend, &message_update(7, 11, 1, "b")).await;
    dead_letter(&backend, &message_update(8, 12, 1, "c")).await;
    assert_eq!(backend.redrive_all().await.unwrap(), 2);
    assert_eq!(ids(&receive(&backend, 10).await), vec![7, 8]);
    assert_eq!(backend.stats().await.unwrap().dead, 0);
}

/// A `/register` that fails every attempt (its registration database is down) or whose leases
/// all expire is dead-lettered without its token: every copy a backend keeps after the attempts
/// is redacted, and redriven, the user is asked to register again.
pub async fn a_dead_letter_keeps_no_typed_token<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    let token = "s3cr3t-T0ken-dead";
    let failed = message_update(31, 31, 1, &format!("/register alice {token}"));
    dead_letter(&backend, &failed).await;

    let expired = message_update(32, 32, 1, &format!("/register@some_bot bob {token}"));
    enqueue(&backend, &expired).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while backend.show(UpdateId(32)).await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "update 32 was not dead-lettered after its leases expired"
        );
        // Leased and never finished: each lease expires and counts as an attempt.
        receive(&backend, 10).await;
        wait_past(config.lease).await;
    }

    let dead = backend.list(10).await.unwrap();
    assert_eq!(ids_of(&dead), vec![31, 32]);
    for letter in &dead {
        let raw = &letter.update.raw;
        assert!(!raw.contains(token), "a dead letter keeps the token: {raw}");
        assert!(raw.contains("[redacted]"), "{raw}");
        let shown = backend
            .show(letter.update.update_id)
            .await
            .unwrap()
            .unwrap();
        assert!(!shown.update.raw.contains(token));
        assert!(
            !letter
                .last_error
                .clone()
                .unwrap_or_default()
                .contains(token)
        );
    }

    assert!(backend.redrive(UpdateId(31)).await.unwrap());
    let delivery = loop {
        let mut deliveries = receive(&backend, 10).await;
        deliveries.retain(|d| d.update.update_id == UpdateId(31));
        if let Some(delivery) = deliveries.pop() {
            break delivery;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "update 31 not redriven"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!delivery.update.raw.contains(token));
    let body: serde_json::Value = serde_json::from_str(&delivery.update.raw).unwrap();
    let args = register_args(body["message"]["text"].as_str().unwrap(), None).unwrap();
    assert_eq!(
        decide_register(args, args),
        RegisterDecision::TokenGone,
        "no token left to check: the user is asked to type it again"
    );
}

fn ids_of(dead: &[crate::DeadLetter]) -> Vec<i64> {
    let mut ids: Vec<i64> = dead.iter().map(|d| d.update.update_id.0).collect();
    ids.sort_unstable();
    ids
}

pub async fn a_dead_letter_does_not_block_its_chat<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(21, 10, 2, "second")).await;
    dead_letter(&backend, &message_update(20, 10, 1, "first")).await;
    let deliveries = receive(&backend, 10).await;
    assert_eq!(ids(&deliveries), vec![21]);
}

pub async fn one_chat_at_a_time_in_update_id_order<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    for (id, chat) in [
        (12, -100),
        (10, -100),
        (11, -100),
        (30, 7),
        (31, 7),
        (40, 8),
    ] {
        enqueue(&backend, &message_update(id, chat, id, "x")).await;
    }
    let first = receive(&backend, 10).await;
    assert_eq!(ids(&first), vec![10, 30, 40], "only the head of each chat");
    assert!(
        receive(&backend, 10).await.is_empty(),
        "heads are in flight"
    );
    for delivery in &first {
        apply(&backend, delivery, clock::now_ms()).await;
    }
    let second = receive(&backend, 10).await;
    assert_eq!(ids(&second), vec![11, 31]);
    for delivery in &second {
        backend.ack(delivery).await.unwrap();
    }
    assert_eq!(ids(&receive(&backend, 10).await), vec![12]);
}

/// One chat with a long backlog (as after a bot was down, or its handler failed for a while),
/// beside another chat: every update is handed out once its turn comes, in `update_id` order,
/// whatever order they arrived in; a retried update holds up its chat, a dead letter does not.
/// (How fast a backlog drains is measured by `cargo bench -p botline-bench --bench backlog`.)
pub async fn a_long_backlog_of_one_chat_drains_in_order<B: Backend, F, Fut>(
    make: F,
    config: QueueConfig,
) where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    const FIRST: i64 = 5000;
    const LAST: i64 = 5099;
    let config = QueueConfig {
        retry: RetryPolicy {
            max_attempts: 2,
            ..config.retry
        },
        ..config
    };
    let backend = fresh(&make, config).await;
    // The second half arrives first; another chat's update comes in between.
    for id in (FIRST + 50..=LAST).chain(FIRST..FIRST + 50) {
        enqueue(&backend, &message_update(id, 70, id, "x")).await;
        if id == FIRST + 70 {
            enqueue(&backend, &message_update(9000, 71, 1, "y")).await;
        }
    }
    let give_up = std::time::Instant::now() + (config.lease * 300).max(Duration::from_secs(120));
    let (mut handed_out, mut failed_once) = (Vec::new(), HashSet::new());
    let mut last_of_chat = i64::MIN;
    while !handed_out.contains(&LAST) || !handed_out.contains(&9000) {
        assert!(
            std::time::Instant::now() < give_up,
            "the backlog did not drain: {handed_out:?}"
        );
        let deliveries = receive(&backend, 10).await;
        if deliveries.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for delivery in deliveries {
            let id = delivery.update.update_id.0;
            handed_out.push(id);
            if id != 9000 {
                assert!(
                    id >= last_of_chat,
                    "{id} handed out after {last_of_chat}, a later update of its chat"
                );
                last_of_chat = id;
            }
            // 5010 fails once and is retried; 5020 fails on both of its attempts and is
            // dead-lettered; the chat goes on behind each.
            if id == FIRST + 20 || (id == FIRST + 10 && failed_once.insert(id)) {
                backend
                    .fail_after(&delivery, "handler failed", Duration::ZERO)
                    .await
                    .expect("fail");
                continue;
            }
            apply(&backend, &delivery, clock::now_ms()).await;
        }
    }
    let chat: Vec<i64> = handed_out
        .iter()
        .copied()
        .filter(|&id| id != 9000)
        .collect();
    let mut expected: Vec<i64> = (FIRST..=LAST).collect();
    expected.insert(11, FIRST + 10);
    expected.insert(22, FIRST + 20);
    assert_eq!(
        chat, expected,
        "in update_id order, each once but for retries"
    );
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 1), "{stats:?}");
}

pub async fn per_chat_order_holds_under_concurrency<B: Backend + 'static, F, Fut>(
    make: F,
    config: QueueConfig,
) where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    const CHATS: i64 = 6;
    const PER_CHAT: i64 = 15;
    // A guard against a hang, not a speed target: 30 s at the suite's 400 ms lease, and as many
    // leases for a backend whose service counts in whole seconds.
    let give_up_after = (config.lease * 75).max(Duration::from_secs(30));
    // Order holds while a lease does: once one expires the update is handed out again, and its
    // effects are kept once by `apply` (`AlreadyDone`), not by order. Nothing here waits for a
    // lease to expire, so a long one costs nothing and keeps a stall of the machine (seen: more
    // than the 2 s lease of the moto suites, on 2 loaded cores) from looking like a lost order.
    let config = QueueConfig {
        lease: config.lease.max(Duration::from_secs(10)),
        ..config
    };
    let backend = Arc::new(fresh(&make, config).await);
    let in_flight = Arc::new(Mutex::new(HashSet::<String>::new()));
    let processed = Arc::new(Mutex::new(HashMap::<String, Vec<i64>>::new()));

    // Each chat's updates arrive one after another, as Telegram sends them.
    let mut senders = Vec::new();
    for chat in 0..CHATS {
        let backend = Arc::clone(&backend);
        senders.push(tokio::spawn(async move {
            for n in 0..PER_CHAT {
                let id = 1000 + n * CHATS + chat;
                enqueue(&*backend, &message_update(id, -chat - 1, n + 1, "x")).await;
                tokio::time::sleep(Duration::from_millis(id as u64 % 3)).await;
            }
        }));
    }
    let mut workers = Vec::new();
    for worker in 0..4u64 {
        let (backend, in_flight, processed) = (
            Arc::clone(&backend),
            Arc::clone(&in_flight),
            Arc::clone(&processed),
        );
        workers.push(tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + give_up_after;
            while tokio::time::Instant::now() < deadline {
                let done: usize = processed.lock().unwrap().values().map(Vec::len).sum();
                if done == (CHATS * PER_CHAT) as usize {
                    return;
                }
                let deliveries = receive(&*backend, 3).await;
                if deliveries.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                for delivery in deliveries {
                    let key = delivery.update.order_key.to_string();
                    assert!(
                        in_flight.lock().unwrap().insert(key.clone()),
                        "two updates of {key} in flight at once"
                    );
                    tokio::time::sleep(Duration::from_millis((worker + 1) % 3)).await;
                    processed
                        .lock()
                        .unwrap()
                        .entry(key.clone())
                        .or_default()
                        .push(delivery.update.update_id.0);
                    in_flight.lock().unwrap().remove(&key);
                    apply(&*backend, &delivery, clock::now_ms()).await;
                }
            }
        }));
    }
    for task in senders.into_iter().chain(workers) {
        task.await.expect("task");
    }
    let processed = processed.lock().unwrap();
    assert_eq!(processed.len(), CHATS as usize);
    for (chat, order) in processed.iter() {
        assert_eq!(order.len(), PER_CHAT as usize, "{chat} processed {order:?}");
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{chat} out of order: {order:?}"
        );
    }
}

pub async fn apply_is_idempotent<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(50, -100, 1, "hello")).await;
    let delivery = receive(&backend, 1).await.remove(0);
    let records: Records = build_records(&delivery.update, clock::now_ms()).unwrap();
    assert_eq!(
        backend.apply(&delivery, &records).await.unwrap(),
        Applied::Written
    );
    assert_eq!(
        backend.apply(&delivery, &records).await.unwrap(),
        Applied::AlreadyDone
    );
    let later = build_records(&delivery.update, clock::now_ms() + 5000).unwrap();
    assert_eq!(
        backend.apply(&delivery, &later).await.unwrap(),
        Applied::AlreadyDone
    );
    let messages = backend
        .messages(&MessageQuery {
            limit: 100,
            ..MessageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(messages, vec![records.message.clone().unwrap()]);
    let events = backend.events_by_user("telegram_1100", "").await.unwrap();
    assert_eq!(events, vec![records.event.clone()]);
    wait_past(config.lease).await;
    assert!(receive(&backend, 10).await.is_empty(), "applied means done");
}

pub async fn the_first_write_of_a_message_wins<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(60, 5, 1, "first")).await;
    let first = receive(&backend, 1).await.remove(0);
    apply(&backend, &first, clock::now_ms()).await;
    enqueue(&backend, &message_update(61, 5, 1, "second")).await;
    let second = receive(&backend, 1).await.remove(0);
    assert_eq!(
        apply(&backend, &second, clock::now_ms()).await,
        Applied::Written
    );
    let messages = backend
        .messages(&MessageQuery {
            limit: 10,
            ..MessageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].text.as_deref(), Some("first"));
    let events = backend.events_by_user("telegram_1005", "").await.unwrap();
    assert_eq!(events.len(), 2, "one event per update");
}

pub async fn a_user_upsert_keeps_created_at<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    let first = InboundUpdate::parse(
        br#"{"update_id":70,"message":{"message_id":1,"date":1,"chat":{"id":3},"from":{"id":3,"first_name":"Ann","username":"ann","language_code":"en"},"text":"a"}}"#,
    )
    .unwrap();
    let second = InboundUpdate::parse(
        br#"{"update_id":71,"edited_message":{"message_id":1,"date":1,"chat":{"id":3},"from":{"id":3,"first_name":"Ann","last_name":"Lee","username":"ann_lee"},"text":"b"}}"#,
    )
    .unwrap();
    enqueue(&backend, &first).await;
    let delivery = receive(&backend, 1).await.remove(0);
    apply(&backend, &delivery, 1_700_000_000_000).await;
    enqueue(&backend, &second).await;
    let delivery = receive(&backend, 1).await.remove(0);
    apply(&backend, &delivery, 1_700_000_060_000).await;
    let user = backend.user("telegram_3").await.unwrap().expect("user");
    assert_eq!(user.telegram_id, 3);
    assert_eq!(user.created_at, "2023-11-14T22:13:20.000Z");
    assert_eq!(user.updated_at, "2023-11-14T22:14:20.000Z");
    assert_eq!(user.username.as_deref(), Some("ann_lee"));
    assert_eq!(user.last_name.as_deref(), Some("Lee"));
    assert_eq!(user.language_code, None, "fields follow the latest update");
    assert_eq!(backend.user("telegram_4").await.unwrap(), None);
}

pub async fn events_are_queryable_by_user_and_time<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(80, 9, 1, "a")).await;
    let delivery = receive(&backend, 1).await.remove(0);
    apply(&backend, &delivery, clock::now_ms()).await;
    let cutoff = clock::iso8601(clock::now_ms() + 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    enqueue(&backend, &message_update(81, 9, 2, "b")).await;
    let delivery = receive(&backend, 1).await.remove(0);
    apply(&backend, &delivery, clock::now_ms()).await;
    let all = backend.events_by_user("telegram_1009", "").await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].timestamp <= all[1].timestamp);
    assert!(all.iter().all(|e| e.event_type == "message" && e.processed));
    let recent = backend
        .events_by_user("telegram_1009", &cutoff)
        .await
        .unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].payload["text"], "b");
    assert!(
        backend
            .events_by_user("telegram_1", "")
            .await
            .unwrap()
            .is_empty()
    );
}

/// Every record of `backend`, read a page of `page` at a time as an export does, each kind
/// sorted by its key.
pub async fn export_all<B: Backend>(backend: &B, page: usize) -> Import {
    let mut all = Import::default();
    let mut query = MessageQuery {
        limit: page,
        ..MessageQuery::default()
    };
    loop {
        let got = backend.messages(&query).await.expect("messages");
        query.after = got.last().map(|m| (m.chat_id.clone(), m.message_id));
        let done = got.len() < page;
        all.messages.extend(got);
        if done {
            break;
        }
    }
    loop {
        let after = all.users.last().map(|u| u.user_id.clone());
        let got = backend.users(after.as_deref(), page).await.expect("users");
        assert!(got.len() <= page, "a page of at most {page}");
        let done = got.len() < page;
        all.users.extend(got);
        if done {
            break;
        }
    }
    loop {
        let after = all.events.last().map(|e| e.event_id.clone());
        let got = backend
            .events(after.as_deref(), page)
            .await
            .expect("events");
        assert!(got.len() <= page, "a page of at most {page}");
        let done = got.len() < page;
        all.events.extend(got);
        if done {
            break;
        }
    }
    all.users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    all.events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    all
}

pub async fn records_export_and_import<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let source = fresh(&make, config).await;
    let mut id = 300;
    for chat in [1_i64, 2, 3] {
        for message in 1..=3 {
            id += 1;
            enqueue(&source, &message_update(id, chat, message, "export me")).await;
        }
    }
    let mut stored = 0;
    while stored < 9 {
        let deliveries = receive(&source, 10).await;
        for delivery in &deliveries {
            apply(&source, delivery, clock::now_ms()).await;
        }
        stored += deliveries.len();
    }

    // Pages of 2 over 3 users and 9 events: the last page is short, none holds a record twice.
    let exported = export_all(&source, 2).await;
    assert_eq!(exported.messages.len(), 9);
    let users: Vec<&str> = exported.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(users, ["telegram_1001", "telegram_1002", "telegram_1003"]);
    assert_eq!(exported.events.len(), 9);
    let events: HashSet<&str> = exported
        .events
        .iter()
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(events.len(), 9, "no event twice");
    assert!(
        exported
            .events
            .iter()
            .all(|e| e.payload["text"] == "export me")
    );

    // Into another backend: every record, as it was; a second import writes nothing.
    let target = fresh(&make, config).await;
    let imported = target.import(&exported).await.expect("import");
    assert_eq!(
        imported,
        Imported {
            messages: 9,
            users: 3,
            events: 9
        }
    );
    assert_eq!(export_all(&target, 1000).await, exported);
    assert_eq!(
        target.import(&exported).await.expect("import again"),
        Imported::default()
    );
    assert_eq!(export_all(&target, 1000).await, exported);

    // A user stored already keeps the earlier createdAt and the fields of the later copy.
    let stored = exported.users[0].clone();
    let newer = crate::UserRecord {
        username: Some("renamed".into()),
        created_at: "2000-01-01T00:00:00.000Z".into(),
        updated_at: "2999-01-01T00:00:00.000Z".into(),
        ..stored.clone()
    };
    let older = crate::UserRecord {
        username: Some("stale".into()),
        created_at: "2999-01-01T00:00:00.000Z".into(),
        updated_at: "2000-01-01T00:00:00.000Z".into(),
        ..stored.clone()
    };
    let users = Import {
        users: vec![older.clone()],
        ..Import::default()
    };
    assert_eq!(target.import(&users).await.unwrap(), Imported::default());
    assert_eq!(
        target.user(&stored.user_id).await.unwrap(),
        Some(stored.clone()),
        "an older copy changes nothing"
    );
    let users = Import {
        users: vec![newer.clone()],
        ..Import::default()
    };
    assert_eq!(target.import(&users).await.unwrap(), Imported::default());
    assert_eq!(
        target.user(&stored.user_id).await.unwrap(),
        Some(newer),
        "a newer copy's fields, the earlier createdAt"
    );
}

pub async fn messages_filter_and_page<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    let mut id = 90;
    for chat in [-5_i64, 6, 7] {
        for message in 1..=3 {
            id += 1;
            enqueue(&backend, &message_update(id, chat, message, "m")).await;
        }
    }
    let mut stored = 0;
    while stored < 9 {
        let deliveries = receive(&backend, 10).await;
        for delivery in &deliveries {
            apply(&backend, delivery, clock::now_ms()).await;
        }
        stored += deliveries.len();
    }
    let query = |chat_id: Option<&str>, since_ms, after: Option<(&str, i64)>, limit| MessageQuery {
        chat_id: chat_id.map(str::to_owned),
        since_ms,
        after: after.map(|(c, m)| (c.to_owned(), m)),
        limit,
    };
    let keys = |messages: Vec<crate::MessageRecord>| -> Vec<(String, i64)> {
        messages
            .into_iter()
            .map(|m| (m.chat_id, m.message_id))
            .collect()
    };
    let chat = keys(
        backend
            .messages(&query(Some("6"), None, None, 10))
            .await
            .unwrap(),
    );
    assert_eq!(
        chat,
        vec![("6".into(), 1), ("6".into(), 2), ("6".into(), 3)]
    );
    let since = backend
        .messages(&query(
            Some("7"),
            Some((1_714_564_800 + 2) * 1000),
            None,
            10,
        ))
        .await
        .unwrap();
    assert_eq!(keys(since), vec![("7".into(), 2), ("7".into(), 3)]);
    let mut paged = Vec::new();
    let mut after: Option<(String, i64)> = None;
    loop {
        let page = backend
            .messages(&MessageQuery {
                after: after.clone(),
                limit: 4,
                ..MessageQuery::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|m| (m.chat_id.clone(), m.message_id));
        paged.extend(keys(page));
    }
    assert_eq!(paged.len(), 9);
    let unique: HashSet<_> = paged.iter().collect();
    assert_eq!(unique.len(), 9);
}

pub async fn sessions_expire<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    let now_s = clock::now_ms() / 1000;
    let session = |id: &str, user: &str, expires_at: i64| SessionRecord {
        session_id: id.into(),
        user_id: user.into(),
        chat_id: -100,
        state: "awaiting_token".into(),
        data: serde_json::json!({"step": 1, "nested": {"a": [1, 2]}})
            .as_object()
            .cloned()
            .unwrap(),
        created_at: clock::iso8601(clock::now_ms()),
        updated_at: clock::iso8601(clock::now_ms()),
        expires_at,
    };
    let live = session("s-live", "telegram_1", now_s + 3600);
    let expired = session("s-old", "telegram_1", now_s - 1);
    let other = session("s-other", "telegram_2", now_s + 3600);
    for s in [&live, &expired, &other] {
        backend.put_session(s).await.unwrap();
    }
    assert_eq!(backend.session("s-live").await.unwrap(), Some(live.clone()));
    assert_eq!(backend.session("s-old").await.unwrap(), None, "expired");
    assert_eq!(
        backend.sessions_by_user("telegram_1").await.unwrap(),
        vec![live.clone()]
    );
    let mut moved = live.clone();
    moved.state = "done".into();
    backend.put_session(&moved).await.unwrap();
    assert_eq!(backend.session("s-live").await.unwrap(), Some(moved));
    assert_eq!(
        backend
            .purge_expired_sessions(clock::now_ms())
            .await
            .unwrap(),
        1
    );
    assert!(backend.delete_session("s-other").await.unwrap());
    assert!(!backend.delete_session("s-other").await.unwrap());
    assert_eq!(backend.session("s-other").await.unwrap(), None);
}

/// The text of the first call of [`outbox_calls_go_out_once_in_order_per_chat`].
const FORMAT: &str = "Please use format: /start";

/// A `/register` message from user 1000 + |chat| in `chat`.
pub fn register_update(update_id: i64, chat: i64, args: &str) -> InboundUpdate {
    message_update(update_id, chat, update_id, &format!("/register {args}"))
}

/// The records of `update` with `calls` (an action and a chat each) as its handler's effects.
pub fn records_with_calls(update: &QueuedUpdate, calls: &[(OutboxAction, i64)]) -> Records {
    let mut records = build_records(update, clock::now_ms()).expect("records");
    for (n, (action, chat)) in calls.iter().enumerate() {
        records.outbox.push(OutboxMessage::new(
            format!("{}:{}", update.entry_id, n + 1),
            *chat,
            action.clone(),
        ));
    }
    records
}

/// The records of `update` (a message of `user` in `chat`) with its handler redeeming `token`
/// for `username`: answered `hi <username>` or `refused`.
pub fn records_redeeming(
    update: &QueuedUpdate,
    user: i64,
    chat: i64,
    username: &str,
    token: &str,
) -> Records {
    let mut records = build_records(update, clock::now_ms()).expect("records");
    let answer =
        |said: String| OutboxMessage::new(format!("{}:0", update.entry_id), chat, text(&said));
    records.redemption = Some(Redemption {
        username: username.to_owned(),
        token_digest: token_digest(token),
        token: TypedSecret::new(token.to_owned()),
        telegram_user_id: user,
        chat_id: chat,
        redeemed: answer(format!("hi {username}")),
        refused: answer("refused".to_owned()),
    });
    records
}

/// [`records_with_calls`], applied.
async fn apply_with_calls<B: Backend>(
    backend: &B,
    delivery: &Delivery,
    calls: &[(OutboxAction, i64)],
) -> Records {
    let records = records_with_calls(&delivery.update, calls);
    backend.apply(delivery, &records).await.expect("apply");
    records
}

fn text(text: &str) -> OutboxAction {
    OutboxAction::SendMessage {
        text: text.to_owned(),
        reply_to_message_id: None,
    }
}

fn sent_text(action: &OutboxAction) -> &str {
    match action {
        OutboxAction::SendMessage { text, .. } => text,
        OutboxAction::DeleteMessage { .. } => "",
        OutboxAction::Call { params, .. } => params
            .get("text")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default(),
    }
}

/// A handler's token redemption: the token is redeemed once, by the username it was issued
/// for, before it expires; the call for the outcome is written before the update's other calls,
/// once however often the update is applied.
pub async fn a_token_is_redeemed_once_and_answered_first<B: Backend, F, Fut>(
    make: F,
    config: QueueConfig,
) where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    let token = "s3cr3t-T0ken-1";
    let far = clock::now_ms() + 3_600_000;
    backend
        .issue_token("alice", &token_digest(token), far)
        .await
        .unwrap();
    backend
        .issue_token("bob", &token_digest("expired-T0ken"), clock::now_ms() - 1)
        .await
        .unwrap();

    let attempts = [
        (200, "alice", token),
        (201, "alice", token),
        (202, "bob", "expired-T0ken"),
        (203, "mallory", token),
    ];
    for (id, username, typed) in attempts {
        enqueue(
            &backend,
            &register_update(id, 9, &format!("{username} {typed}")),
        )
        .await;
        let delivery = receive(&backend, 1).await.remove(0);
        let entry = &delivery.update.entry_id;
        let mut records = records_redeeming(&delivery.update, 1009, 9, username, typed);
        records.outbox.push(OutboxMessage::new(
            format!("{entry}:2"),
            9,
            text(&format!("after {id}")),
        ));
        backend.apply(&delivery, &records).await.expect("apply");
        // A retried update redeems and answers nothing new.
        backend.apply(&delivery, &records).await.expect("apply");
    }
    let mut answers = Vec::new();
    loop {
        let calls = backend
            .due_calls(10, Duration::from_secs(30))
            .await
            .unwrap();
        if calls.is_empty() {
            break;
        }
        for call in calls {
            answers.push((call.update_id.0, sent_text(&call.call.action).to_owned()));
            backend
                .call_done(&call.call.outbox_id, Some(1))
                .await
                .unwrap();
        }
    }
    let mut expected = Vec::new();
    for (id, answer) in [
        (200, "hi alice"),
        (201, "refused"),
        (202, "refused"),
        (203, "refused"),
    ] {
        expected.push((id, answer.to_owned()));
        expected.push((id, format!("after {id}")));
    }
    assert_eq!(answers, expected, "one answer per update, first, in order");
    let stored = backend
        .messages(&MessageQuery {
            limit: 10,
            ..MessageQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(stored.len(), attempts.len());
    for message in &stored {
        assert!(
            !message.raw.contains(token) && !message.text.as_deref().unwrap_or("").contains(token)
        );
    }
    let events = backend.events_by_user("telegram_1009", "").await.unwrap();
    assert!(
        events
            .iter()
            .all(|e| !e.payload.to_string().contains(token))
    );
}

pub async fn outbox_calls_go_out_once_in_order_per_chat<B: Backend, F, Fut>(
    make: F,
    config: QueueConfig,
) where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    // In two groups: an answer, then the deletion of the message answered.
    enqueue(&backend, &message_update(300, -50, 300, "/start")).await;
    enqueue(&backend, &message_update(301, -51, 301, "/start")).await;
    for delivery in receive(&backend, 10).await {
        let chat = delivery.update.order_key.chat().expect("a chat").0;
        let message_id = delivery.update.update_id.0;
        let calls = [
            (text(FORMAT), chat),
            (OutboxAction::DeleteMessage { message_id }, chat),
        ];
        apply_with_calls(&backend, &delivery, &calls).await;
        apply_with_calls(&backend, &delivery, &calls).await;
    }
    assert_eq!(
        backend.outbox_stats().await.unwrap().pending,
        4,
        "no call written twice"
    );

    let lease = Duration::from_millis(400);
    let first = backend.due_calls(10, lease).await.unwrap();
    assert_eq!(first.len(), 2, "one call per chat at a time");
    assert!(first.iter().all(|c| sent_text(&c.call.action) == FORMAT));
    assert!(first.iter().all(|c| c.attempt == 1));
    assert!(
        backend.due_calls(10, lease).await.unwrap().is_empty(),
        "leased"
    );

    // Chat -50: the answer goes through; its deletion comes next (held, under a long lease).
    let (done, waiting): (Vec<_>, Vec<_>) = first.into_iter().partition(|c| c.call.chat_id == -50);
    backend
        .call_done(&done[0].call.outbox_id, Some(77))
        .await
        .unwrap();
    let held = backend
        .due_calls(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].call.action,
        OutboxAction::DeleteMessage { message_id: 300 }
    );

    // Chat -51: Telegram asked to wait; not due before that, due after.
    backend
        .call_failed(
            &waiting[0].call.outbox_id,
            "429 retry after",
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(backend.due_calls(10, lease).await.unwrap().is_empty());
    wait_past(Duration::from_millis(300)).await;
    let retried = backend.due_calls(10, lease).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].call.outbox_id, waiting[0].call.outbox_id);
    assert_eq!(retried[0].attempt, 2);

    // A final failure does not block the chat; an expired lease hands a call out again.
    backend
        .call_failed(&retried[0].call.outbox_id, "403 bot was blocked", None)
        .await
        .unwrap();
    let deletion = backend.due_calls(10, lease).await.unwrap();
    assert_eq!(deletion.len(), 1);
    assert_eq!(
        deletion[0].call.action,
        OutboxAction::DeleteMessage { message_id: 301 }
    );
    wait_past(lease).await;
    let again = backend.due_calls(10, lease).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].call.outbox_id, deletion[0].call.outbox_id);
    assert_eq!(again[0].attempt, 2);
    for call in held.iter().chain(&again) {
        backend.call_done(&call.call.outbox_id, None).await.unwrap();
    }
    let stats = backend.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.done, stats.failed), (0, 3, 1));
}

/// Any Bot API method in the outbox (a handler's effect): its name and parameters come back as
/// written, nested objects, numbers beyond 2^53 and text in any script included, once however
/// often the update is applied, in the order written within the chat.
pub async fn any_bot_api_call_is_kept_as_written<B: Backend, F, Fut>(make: F, config: QueueConfig)
where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(400, 60, 1, "/menu")).await;
    let delivery = receive(&backend, 1).await.remove(0);
    let mut records = build_records(&delivery.update, clock::now_ms()).expect("records");
    let params = |value: serde_json::Value| match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("an object"),
    };
    let photo = OutboxAction::call(
        "sendPhoto",
        params(serde_json::json!({
            "chat_id": 60,
            "photo": "AgACAgIAAxkBAAIBZ2Z",
            "caption": "Ответ ✓ «quoted» \"and\" \\ back\nslash",
            "reply_markup": {"inline_keyboard": [[
                {"text": "Yes", "callback_data": "yes:1"},
                {"text": "No", "callback_data": "no:1"}
            ]]},
            "message_thread_id": 9_007_199_254_740_993_i64,
        })),
    );
    let answer = OutboxAction::call(
        "answerCallbackQuery",
        params(serde_json::json!({"callback_query_id": "4382bfdwdsb323b2d9", "text": "Saved"})),
    );
    let entry = &delivery.update.entry_id;
    records.outbox = vec![
        crate::OutboxMessage {
            outbox_id: format!("{entry}:1"),
            chat_id: 60,
            action: photo.clone(),
            send_at_ms: None,
        },
        crate::OutboxMessage {
            outbox_id: format!("{entry}:2"),
            chat_id: 60,
            action: answer.clone(),
            send_at_ms: None,
        },
    ];
    backend.apply(&delivery, &records).await.expect("apply");
    backend
        .apply(&delivery, &records)
        .await
        .expect("apply again");
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 2);

    let lease = Duration::from_secs(60);
    let first = backend.due_calls(10, lease).await.unwrap();
    assert_eq!(first.len(), 1, "one call of the chat at a time");
    assert_eq!(first[0].call.action, photo);
    backend
        .call_done(&first[0].call.outbox_id, Some(12))
        .await
        .unwrap();
    let second = backend.due_calls(10, lease).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].call.action, answer);
    backend
        .call_done(&second[0].call.outbox_id, None)
        .await
        .unwrap();
    let stats = backend.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.done), (0, 2));
}

/// A call due later (a reminder) is not handed out before its time, and the chat's calls that
/// are due before it go out meanwhile; once due, it goes out.
pub async fn a_delayed_call_waits_for_its_time_and_holds_up_nothing<B: Backend, F, Fut>(
    make: F,
    config: QueueConfig,
) where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    let backend = fresh(&make, config).await;
    enqueue(&backend, &message_update(500, 70, 1, "/remind 2 tea")).await;
    let delivery = receive(&backend, 1).await.remove(0);
    let mut records = build_records(&delivery.update, clock::now_ms()).expect("records");
    let entry = &delivery.update.entry_id;
    let say = |text: &str| OutboxAction::SendMessage {
        text: text.to_owned(),
        reply_to_message_id: None,
    };
    let send_at = clock::now_ms() + 2_000;
    records.outbox = vec![
        crate::OutboxMessage::new(format!("{entry}:1"), 70, say("I'll remind you in 2 s.")),
        crate::OutboxMessage::new(format!("{entry}:2"), 70, say("Reminder: tea")).at(send_at),
        crate::OutboxMessage::new(format!("{entry}:3"), 70, say("Anything else?")),
    ];
    backend.apply(&delivery, &records).await.expect("apply");
    backend
        .apply(&delivery, &records)
        .await
        .expect("apply again");

    let lease = Duration::from_secs(60);
    let mut sent = Vec::new();
    for _ in 0..2 {
        let calls = backend.due_calls(10, lease).await.unwrap();
        assert_eq!(calls.len(), 1, "{calls:?}");
        sent.push(sent_text(&calls[0].call.action).to_owned());
        backend
            .call_done(&calls[0].call.outbox_id, None)
            .await
            .unwrap();
    }
    assert_eq!(sent, ["I'll remind you in 2 s.", "Anything else?"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let reminder = loop {
        let mut calls = backend.due_calls(10, lease).await.unwrap();
        if let Some(call) = calls.pop() {
            assert!(
                clock::now_ms() >= send_at,
                "handed out {} ms before its time",
                send_at - clock::now_ms()
            );
            break call;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reminder never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sent_text(&reminder.call.action), "Reminder: tea");
    backend
        .call_done(&reminder.call.outbox_id, None)
        .await
        .unwrap();
    let stats = backend.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.done), (0, 3));
}

/// A handler's session is written with its effects (here a reply), in the transaction that marks
/// the update done: readable once applied, by its id and by its user; never written twice (the
/// same delivery applied again, its handler run again with a newer session, changes nothing);
/// replaced by a later update of the chat keeping its `createdAt`; gone once an update deletes
/// it. A retry of an earlier update, found done, does not write its older session over a later
/// update's. Of several changes to one session in one update the last wins. An expired session
/// still stored does not exist: a put replaces it whole.
///
/// An attempt that fails leaves no session: no backend makes `apply` fail on demand (it takes
/// no receipt, so a lost lease does not refuse it), so the failed attempt here is one whose
/// handler failed after building its records: they are never applied, the update is reported
/// failed, and its next attempt writes its own.
pub async fn sessions_are_written_with_the_effects_once<B: Backend, F, Fut>(
    make: F,
    config: QueueConfig,
) where
    F: Fn(QueueConfig) -> Fut,
    Fut: Future<Output = B>,
{
    const CHAT: i64 = 80;
    let backend = fresh(&make, config).await;
    let user = "telegram_1080";
    let id = "chat:80";
    let expires_at = clock::now_ms() / 1000 + 3600;
    let session = |state: &str, step: i64| SessionRecord {
        session_id: id.into(),
        user_id: user.into(),
        chat_id: CHAT,
        state: state.into(),
        data: serde_json::json!({"step": step, "name": "Zoë ✓", "answers": [1, {"a": null}]})
            .as_object()
            .cloned()
            .unwrap(),
        created_at: clock::iso8601(clock::now_ms()),
        updated_at: clock::iso8601(clock::now_ms()),
        expires_at,
    };
    let reply = |delivery: &Delivery, n: &str, text: &str| {
        OutboxMessage::new(
            format!("{}:{n}", delivery.update.entry_id),
            CHAT,
            OutboxAction::SendMessage {
                text: text.to_owned(),
                reply_to_message_id: None,
            },
        )
    };
    let records_with = |delivery: &Delivery, outbox: Vec<OutboxMessage>, sessions| {
        let mut records = build_records(&delivery.update, clock::now_ms()).expect("records");
        records.outbox = outbox;
        records.sessions = sessions;
        records
    };
    let next = |update_id: i64, message_id: i64, text: &'static str| {
        let backend = &backend;
        async move {
            enqueue(backend, &message_update(update_id, CHAT, message_id, text)).await;
            receive(backend, 1).await.remove(0)
        }
    };

    // An expired session under the same id, not purged yet.
    let mut expired = session("expired", 0);
    expired.created_at = "2000-01-01T00:00:00.000Z".into();
    expired.expires_at = clock::now_ms() / 1000 - 60;
    backend.put_session(&expired).await.unwrap();

    // Update 600 creates the session with its reply.
    let first = next(600, 1, "/start").await;
    let asked_name = session("asked_name", 1);
    let first_records = records_with(
        &first,
        vec![reply(&first, "1", "What is your name?")],
        vec![SessionChange::Put(asked_name.clone())],
    );
    assert_eq!(
        backend.apply(&first, &first_records).await.unwrap(),
        Applied::Written
    );
    assert_eq!(
        backend.session(id).await.unwrap(),
        Some(asked_name.clone()),
        "written whole over the expired session, createdAt included"
    );
    assert_eq!(
        backend.sessions_by_user(user).await.unwrap(),
        vec![asked_name.clone()]
    );
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 1);

    // The same delivery again, its handler run again (a newer `updatedAt`): nothing changes.
    let mut newer = session("asked_name", 1);
    newer.updated_at = clock::iso8601(clock::now_ms() + 1000);
    let rerun = records_with(
        &first,
        vec![reply(&first, "1", "What is your name?")],
        vec![SessionChange::Put(newer)],
    );
    assert_eq!(
        backend.apply(&first, &rerun).await.unwrap(),
        Applied::AlreadyDone
    );
    assert_eq!(
        backend.session(id).await.unwrap(),
        Some(asked_name.clone()),
        "a retry writes no session: updatedAt unchanged"
    );
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 1);

    // Update 601: the first attempt's handler fails after building its records, which are
    // never applied; the update is retried.
    let failing = next(601, 2, "Ann").await;
    let _never_applied = records_with(
        &failing,
        vec![reply(&failing, "failed", "never sent")],
        vec![SessionChange::Put(session("never", 9))],
    );
    let failed = backend.fail(&failing, "handler failed").await.unwrap();
    assert!(matches!(failed, Failed::Retrying { .. }), "{failed:?}");
    assert_eq!(
        backend.session(id).await.unwrap(),
        Some(asked_name.clone()),
        "a failed attempt leaves no session"
    );
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let second = loop {
        let mut deliveries = receive(&backend, 1).await;
        deliveries.retain(|d| d.update.update_id == UpdateId(601));
        if let Some(delivery) = deliveries.pop() {
            break delivery;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "update 601 was not retried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(second.attempt, 2);

    // Its second attempt replaces the session: the new state, the original `createdAt`.
    let mut asked_age = session("asked_age", 2);
    asked_age.expires_at = expires_at + 60;
    assert_ne!(asked_age.created_at, asked_name.created_at);
    let second_records = records_with(
        &second,
        vec![reply(&second, "1", "How old are you, Ann?")],
        vec![SessionChange::Put(asked_age.clone())],
    );
    assert_eq!(
        backend.apply(&second, &second_records).await.unwrap(),
        Applied::Written
    );
    let kept = SessionRecord {
        created_at: asked_name.created_at.clone(),
        ..asked_age.clone()
    };
    assert_eq!(backend.session(id).await.unwrap(), Some(kept.clone()));
    assert_eq!(
        backend.sessions_by_user(user).await.unwrap(),
        vec![kept.clone()]
    );

    // Update 600 retried now (its worker lost its lease and came back): found done, it does not
    // write its older session over update 601's.
    assert_eq!(
        backend.apply(&first, &first_records).await.unwrap(),
        Applied::AlreadyDone
    );
    assert_eq!(backend.session(id).await.unwrap(), Some(kept));

    // Update 602 puts the session and then deletes it: the last change wins.
    let third = next(602, 3, "42").await;
    let third_records = records_with(
        &third,
        Vec::new(),
        vec![
            SessionChange::Put(session("done", 3)),
            SessionChange::Delete {
                session_id: id.into(),
            },
        ],
    );
    assert_eq!(
        backend.apply(&third, &third_records).await.unwrap(),
        Applied::Written
    );
    assert_eq!(backend.session(id).await.unwrap(), None);
    assert!(backend.sessions_by_user(user).await.unwrap().is_empty());

    // Update 603 deletes it (there is none) and puts it again: a new session, as written.
    let fourth = next(603, 4, "/start").await;
    let restarted = session("restarted", 1);
    let fourth_records = records_with(
        &fourth,
        Vec::new(),
        vec![
            SessionChange::Delete {
                session_id: id.into(),
            },
            SessionChange::Put(restarted.clone()),
        ],
    );
    assert_eq!(
        backend.apply(&fourth, &fourth_records).await.unwrap(),
        Applied::Written
    );
    assert_eq!(backend.session(id).await.unwrap(), Some(restarted));
    assert_eq!(
        backend.outbox_stats().await.unwrap().pending,
        2,
        "the replies of updates 600 and 601, each once; none of the failed attempt"
    );
}
