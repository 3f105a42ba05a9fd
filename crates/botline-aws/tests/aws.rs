//! What is particular to the AWS backend, against the moto server: enqueue's order of writes,
//! messages without items, FIFO order, the DLQ, provisioning, timeouts, the claim step as a
//! Lambda worker uses it, and what moto must enforce for these tests to mean anything.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use botline_aws::{
    AwsBackend, AwsSettings, ClientOptions, FifoGroup, MAX_RECEIVE_COUNT, QueueMessage, Receipt,
    provision,
};
use botline_core::testsuite::{message_update, register_update};
use botline_core::{
    Applied, BackendError, DeadLetters, Delivery, Enqueued, Failed, Handling, InboundUpdate,
    Outbox, OutboxAction, OutboxMessage, Queue, QueueConfig, Records, SessionChange, SessionRecord,
    Sessions, Store, build_records, clock,
};
use std::time::{Duration, Instant};

fn config() -> QueueConfig {
    common::whole_seconds()
}

/// Messages on a queue: (visible, hidden, delayed).
async fn queue_counts(backend: &AwsBackend, url: &str) -> (u64, u64, u64) {
    let attributes = backend
        .clients()
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .unwrap_or_default();
    let count = |name: QueueAttributeName| {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        count(QueueAttributeName::ApproximateNumberOfMessages),
        count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    )
}

async fn apply(backend: &AwsBackend, delivery: &Delivery) -> Applied {
    let records = build_records(&delivery.update, clock::now_ms()).expect("records");
    backend.apply(delivery, &records).await.expect("apply")
}

/// The update's item in `updates`, if any.
async fn update_item(
    backend: &AwsBackend,
    id: i64,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    backend
        .clients()
        .dynamodb
        .get_item()
        .table_name(&backend.tables().updates)
        .key("updateId", AttributeValue::N(id.to_string()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
}

/// Receives and applies until `count` updates are done (or 30 s passed), checking that no two
/// of a chat are ever out at once. Returns the ids in the order they were handed out.
async fn drain(backend: &AwsBackend, count: usize) -> Vec<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut order = Vec::new();
    while order.len() < count && Instant::now() < deadline {
        let deliveries = backend.receive(10).await.expect("receive");
        let mut chats: Vec<String> = deliveries
            .iter()
            .map(|d| d.update.order_key.to_string())
            .collect();
        chats.sort();
        chats.dedup();
        assert_eq!(
            chats.len(),
            deliveries.len(),
            "one update per chat at a time"
        );
        for delivery in &deliveries {
            order.push(delivery.update.update_id.0);
            assert_eq!(apply(backend, delivery).await, Applied::Written);
        }
        if deliveries.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_whose_send_fails_leaves_no_mark() {
    let clients = common::clients().await;
    let settings = provision(&clients, &common::unique_settings(true))
        .await
        .expect("provision");
    let missing = AwsSettings {
        queue_url: settings.queue_url.replace("-updates.fifo", "-missing.fifo"),
        ..settings.clone()
    };
    let update = message_update(1, 10, 1, "hello");
    let err = AwsBackend::new(clients.clone(), missing, config())
        .enqueue(&update)
        .await
        .expect_err("no such queue");
    assert!(matches!(err, BackendError::Unavailable(_)), "{err}");

    let backend = AwsBackend::new(clients, settings, config());
    assert!(update_item(&backend, 1).await.is_none(), "no dedupe mark");
    assert_eq!(
        backend.enqueue(&update).await.unwrap(),
        Enqueued::New,
        "Telegram's retry is new"
    );
    let deliveries = backend.receive(10).await.unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].update.raw, update.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_item_was_never_written_is_processed() {
    for fifo in [true, false] {
        let backend = common::backend_with(common::unique_settings(fifo), config()).await;
        // What a receiver that stopped between SendMessage and PutItem leaves behind.
        let update = message_update(7, 20, 3, "sent, then the receiver died");
        let received_at = clock::now_ms();
        let body = serde_json::json!({
            "v": 1,
            "updateId": 7,
            "entryId": "entry-7",
            "orderKey": "chat:20",
            "kind": "message",
            "receivedAtMs": received_at,
            "group": "chat:20",
            "raw": update.raw,
        })
        .to_string();
        let mut send = backend
            .clients()
            .sqs
            .send_message()
            .queue_url(&backend.settings().queue_url)
            .message_body(body);
        if fifo {
            send = send
                .message_group_id("chat:20")
                .message_deduplication_id("7");
        }
        send.send().await.expect("SendMessage");
        assert!(update_item(&backend, 7).await.is_none());

        let deliveries = backend.receive(10).await.unwrap();
        assert_eq!(deliveries.len(), 1, "fifo: {fifo}");
        let queued = &deliveries[0].update;
        assert_eq!(queued.entry_id, "entry-7");
        assert_eq!(queued.raw, update.raw);
        assert_eq!(queued.received_at_ms, received_at);
        assert_eq!(apply(&backend, &deliveries[0]).await, Applied::Written);
        assert_eq!(backend.enqueue(&update).await.unwrap(), Enqueued::Duplicate);
        let stats = backend.stats().await.unwrap();
        assert_eq!((stats.pending, stats.in_flight, stats.done), (0, 0, 1));
        assert_eq!(
            queue_counts(&backend, &backend.settings().queue_url.clone()).await,
            (0, 0, 0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_enqueues_end_in_update_id_order() {
    for fifo in [true, false] {
        let backend = common::backend_with(common::unique_settings(fifo), config()).await;
        for id in [5, 3, 4, 1, 2] {
            backend
                .enqueue(&message_update(id, -30, id, "x"))
                .await
                .unwrap();
        }
        backend
            .enqueue(&message_update(9, 31, 1, "another chat"))
            .await
            .unwrap();
        let order = drain(&backend, 6).await;
        let chat: Vec<i64> = order.iter().copied().filter(|id| *id != 9).collect();
        assert_eq!(chat, vec![1, 2, 3, 4, 5], "fifo: {fifo}");
        assert!(order.contains(&9));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_copied_to_the_dlq_and_redrive_removes_the_copy() {
    for fifo in [true, false] {
        let backend = common::backend_with(common::unique_settings(fifo), config()).await;
        let dlq = backend.settings().dlq_url.clone();
        backend
            .enqueue(&message_update(40, 41, 1, "poison"))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "not dead-lettered in time");
            let Some(delivery) = backend.receive(1).await.unwrap().pop() else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if backend.fail(&delivery, "boom").await.unwrap() == Failed::DeadLettered {
                break;
            }
        }
        assert_eq!(
            queue_counts(&backend, &dlq).await,
            (1, 0, 0),
            "fifo: {fifo}"
        );
        let copy = backend
            .clients()
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        assert_eq!(copy.len(), 1);
        let body: serde_json::Value = serde_json::from_str(copy[0].body().unwrap()).unwrap();
        assert_eq!(body["updateId"], 40);
        assert!(body["raw"].as_str().unwrap().contains("poison"));
        let main = backend.settings().queue_url.clone();
        assert_eq!(queue_counts(&backend, &main).await, (0, 0, 0));

        assert!(backend.redrive(botline_core::UpdateId(40)).await.unwrap());
        assert_eq!(
            queue_counts(&backend, &dlq).await,
            (0, 0, 0),
            "fifo: {fifo}"
        );
        let delivery = backend.receive(1).await.unwrap().remove(0);
        assert_eq!(delivery.attempt, 1);
        assert_eq!(apply(&backend, &delivery).await, Applied::Written);
        assert!(backend.list(10).await.unwrap().is_empty());
    }
}

/// Every message on `url` (received, and left hidden for 30 s): the bodies.
async fn drain_bodies(backend: &AwsBackend, url: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let got = backend
            .clients()
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .send()
            .await
            .expect("ReceiveMessage")
            .messages
            .unwrap_or_default();
        if got.is_empty() {
            break;
        }
        bodies.extend(got.into_iter().filter_map(|m| m.body));
    }
    bodies
}

/// Fails update `id` on every attempt until it is dead-lettered (20 s at most).
async fn fail_until_dead(backend: &AwsBackend, id: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "{id} not dead-lettered in time");
        let mut deliveries = backend.receive(10).await.unwrap();
        deliveries.retain(|d| d.update.update_id.0 == id);
        let Some(delivery) = deliveries.pop() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if backend.fail(&delivery, "boom").await.unwrap() == Failed::DeadLettered {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_keeps_no_typed_token_on_the_dlq_nor_in_its_item() {
    let token = "s3cr3t-T0ken-dlq";
    for fifo in [true, false] {
        let backend = common::backend_with(common::unique_settings(fifo), config()).await;
        // One dead-lettered by failing it, one by letting its leases expire.
        backend
            .enqueue(&register_update(80, 81, &format!("alice {token}")))
            .await
            .unwrap();
        fail_until_dead(&backend, 80).await;
        backend
            .enqueue(&register_update(82, 83, &format!("bob {token}")))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while backend
            .show(botline_core::UpdateId(82))
            .await
            .unwrap()
            .is_none()
        {
            assert!(Instant::now() < deadline, "82 not dead-lettered in time");
            backend.receive(10).await.unwrap();
            tokio::time::sleep(config().lease + Duration::from_millis(150)).await;
        }

        let bodies = drain_bodies(&backend, &backend.settings().dlq_url.clone()).await;
        let mut ids: Vec<i64> = bodies
            .iter()
            .map(|body| {
                assert!(
                    !body.contains(token),
                    "fifo: {fifo}: a DLQ copy keeps the token: {body}"
                );
                let body: serde_json::Value = serde_json::from_str(body).unwrap();
                let raw = body["raw"].as_str().unwrap();
                assert!(raw.contains("[redacted]"), "{raw}");
                serde_json::from_str::<serde_json::Value>(raw).expect("the update, redacted");
                body["updateId"].as_i64().unwrap()
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![80, 82], "fifo: {fifo}: one copy each");
        for id in [80, 82] {
            let item = update_item(&backend, id).await.unwrap();
            assert_eq!(item.get("state"), Some(&AttributeValue::S("dead".into())));
            let raw = match item.get("raw") {
                Some(AttributeValue::S(raw)) => raw.clone(),
                other => panic!("fifo: {fifo}: the dead item keeps its body: {other:?}"),
            };
            assert!(raw.contains("[redacted]"), "{raw}");
            assert!(
                !format!("{item:?}").contains(token),
                "fifo: {fifo}: the dead item keeps the token: {item:?}"
            );
        }
        let main = backend.settings().queue_url.clone();
        assert_eq!(
            queue_counts(&backend, &main).await,
            (0, 0, 0),
            "fifo: {fifo}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_an_older_build_wrote_is_shown_and_redriven_without_its_token() {
    let token = "s3cr3t-T0ken-old";
    for fifo in [true, false] {
        let backend = common::backend_with(common::unique_settings(fifo), config()).await;
        // What a build before dead-letter redaction left: a dead item with the token in its body.
        let update = register_update(90, 91, &format!("alice {token}"));
        assert!(update.raw.contains(token));
        let mut put = backend
            .clients()
            .dynamodb
            .put_item()
            .table_name(&backend.tables().updates)
            .item("updateId", AttributeValue::N("90".into()))
            .item("entryId", AttributeValue::S("entry-90".into()))
            .item("orderKey", AttributeValue::S(update.order_key.to_string()))
            .item("kind", AttributeValue::S(update.kind.as_str().into()))
            .item("receivedAt", AttributeValue::N(clock::now_ms().to_string()))
            .item("state", AttributeValue::S("dead".into()))
            .item("attempts", AttributeValue::N("3".into()))
            .item("raw", AttributeValue::S(update.raw.clone()))
            .item("lastError", AttributeValue::S("boom".into()))
            .item("deadAt", AttributeValue::N(clock::now_ms().to_string()));
        if fifo {
            put = put.item(
                "messageGroup",
                AttributeValue::S(update.order_key.to_string()),
            );
        }
        put.send().await.unwrap();

        let listed = backend.list(10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(
            !listed[0].update.raw.contains(token),
            "list: {}",
            listed[0].update.raw
        );
        assert!(listed[0].update.raw.contains("[redacted]"));
        let shown = backend
            .show(botline_core::UpdateId(90))
            .await
            .unwrap()
            .unwrap();
        assert!(
            !shown.update.raw.contains(token),
            "show: {}",
            shown.update.raw
        );

        assert!(backend.redrive(botline_core::UpdateId(90)).await.unwrap());
        let item = update_item(&backend, 90).await.unwrap();
        assert!(
            !format!("{item:?}").contains(token),
            "fifo: {fifo}: the redriven item keeps the token: {item:?}"
        );
        let bodies = drain_bodies(&backend, &backend.settings().queue_url.clone()).await;
        assert_eq!(bodies.len(), 1, "fifo: {fifo}");
        assert!(
            !bodies[0].contains(token),
            "fifo: {fifo}: the redriven message keeps the token: {}",
            bodies[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_expires_at_its_last_receive_is_not_lost_to_the_sqs_dlq() {
    let backend = common::fifo_backend(config()).await;
    backend
        .enqueue(&message_update(50, 51, 1, "crashes its worker"))
        .await
        .unwrap();
    // Each expired lease is one SQS receive of the same message: the third would be the last
    // before SQS's redrive policy moves it.
    for attempt in 1..=3 {
        let delivery = backend.receive(1).await.unwrap().remove(0);
        assert_eq!(delivery.attempt, attempt);
        tokio::time::sleep(config().lease + Duration::from_millis(150)).await;
    }
    assert!(backend.receive(10).await.unwrap().is_empty());
    let dead = backend.list(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("lease expired on each of 3 attempts")
    );
    let dlq = backend.settings().dlq_url.clone();
    assert_eq!(
        queue_counts(&backend, &dlq).await,
        (1, 0, 0),
        "our copy only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_update_keeps_no_body_and_no_message() {
    let backend = common::fifo_backend(config()).await;
    let token = "s3cr3t-T0ken-9";
    backend
        .enqueue(&register_update(60, 61, &format!("alice {token}")))
        .await
        .unwrap();
    let delivery = backend.receive(1).await.unwrap().remove(0);
    let item = update_item(&backend, 60).await.unwrap();
    assert!(
        item.contains_key("raw"),
        "queued and leased items keep the body"
    );
    assert!(item.contains_key("pendingKey"));
    let records = Handling::default()
        .records(&delivery.update, clock::now_ms())
        .unwrap();
    assert_eq!(
        backend.apply(&delivery, &records).await.unwrap(),
        Applied::Written
    );
    let item = update_item(&backend, 60).await.unwrap();
    assert_eq!(item.get("state"), Some(&AttributeValue::S("done".into())));
    assert!(!item.contains_key("raw"), "{item:?}");
    assert!(!item.contains_key("pendingKey"));
    assert!(
        !format!("{item:?}").contains(token),
        "no token in the queue's state"
    );
    let main = backend.settings().queue_url.clone();
    assert_eq!(queue_counts(&backend, &main).await, (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_decides_for_messages_from_a_lambda_event() {
    let backend = common::standard_backend(config()).await;
    for (id, chat) in [(70, 71), (71, 71), (72, 72)] {
        backend
            .enqueue(&message_update(id, chat, id, "x"))
            .await
            .unwrap();
    }
    // As the Lambda service would hand them over: received with the queue's own visibility.
    let received = backend
        .clients()
        .sqs
        .receive_message()
        .queue_url(&backend.settings().queue_url)
        .max_number_of_messages(10)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 3);
    let messages: Vec<QueueMessage> = received
        .into_iter()
        .map(|m| QueueMessage::from_sqs(m).expect("a whole message"))
        .collect();
    let ids: Vec<String> = messages.iter().map(|m| m.message_id.clone()).collect();
    let claimed = backend.claim(messages).await;
    assert!(claimed.failed.is_empty(), "{:?}", claimed.failed);
    let mut leased: Vec<i64> = claimed
        .deliveries
        .iter()
        .map(|d| d.update.update_id.0)
        .collect();
    leased.sort_unstable();
    assert_eq!(leased, vec![70, 72]);
    assert_eq!(claimed.held.len(), 1, "71 waits for 70");
    for delivery in &claimed.deliveries {
        let receipt = Receipt::parse(&delivery.receipt).expect("an AWS receipt");
        assert!(ids.contains(&receipt.message_id));
        assert_eq!(apply(&backend, delivery).await, Applied::Written);
    }
    // 70 done: 71 is woken at once, not when its hold ends.
    let next = backend.receive(10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].update.update_id.0, 71);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_groups_by_user_keep_chat_order() {
    let mut settings = common::unique_settings(true);
    settings.fifo_group = FifoGroup::User;
    let backend = common::backend_with(settings, config()).await;
    let from = |id: i64, user: i64| {
        InboundUpdate::parse(
            serde_json::json!({
                "update_id": id,
                "message": {
                    "message_id": id, "date": 1, "text": "x",
                    "chat": {"id": -80, "type": "group"},
                    "from": {"id": user, "first_name": "U"},
                }
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    };
    for (id, user) in [(82, 2), (81, 1), (83, 1)] {
        backend.enqueue(&from(id, user)).await.unwrap();
    }
    let groups: Vec<String> = backend
        .clients()
        .sqs
        .receive_message()
        .queue_url(&backend.settings().queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            m.attributes()?
                .get(&MessageSystemAttributeName::MessageGroupId)
                .cloned()
        })
        .collect();
    assert!(groups.contains(&"user:1".to_owned()), "{groups:?}");
    assert!(groups.contains(&"user:2".to_owned()), "{groups:?}");
    assert_eq!(drain(&backend, 3).await, vec![81, 82, 83]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_is_idempotent_and_makes_what_the_docs_say() {
    let clients = common::clients().await;
    let wanted = common::unique_settings(true);
    let first = provision(&clients, &wanted).await.unwrap();
    let again = provision(&clients, &wanted).await.unwrap();
    assert_eq!(first, again);
    assert!(first.queue_url.ends_with("-updates.fifo"));
    let redrive = clients
        .sqs
        .get_queue_attributes()
        .queue_url(&first.queue_url)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&QueueAttributeName::RedrivePolicy)
        .unwrap();
    let redrive: serde_json::Value = serde_json::from_str(&redrive).unwrap();
    assert_eq!(redrive["maxReceiveCount"].to_string(), "3");
    assert!(
        redrive["deadLetterTargetArn"]
            .as_str()
            .unwrap()
            .ends_with("-dlq.fifo")
    );

    let backend = AwsBackend::new(clients.clone(), first, config());
    let tables = backend.tables();
    for (table, index, ttl) in [
        (&tables.updates, Some("PendingIndex"), Some("expiresAt")),
        (&tables.events, Some("UserIdIndex"), None),
        (&tables.sessions, Some("UserIdIndex"), Some("expiresAt")),
        (&tables.outbox, Some("PendingIndex"), Some("expiresAt")),
        (&tables.messages, None, None),
        (&tables.users, None, None),
        (&tables.tokens, None, None),
    ] {
        let described = clients
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .unwrap()
            .table
            .unwrap();
        assert_eq!(
            described
                .billing_mode_summary()
                .and_then(|b| b.billing_mode())
                .map(|m| m.as_str().to_owned()),
            Some("PAY_PER_REQUEST".to_owned()),
            "{table}"
        );
        let indexes: Vec<&str> = described
            .global_secondary_indexes()
            .iter()
            .filter_map(|i| i.index_name())
            .collect();
        assert_eq!(indexes, index.into_iter().collect::<Vec<_>>(), "{table}");
        let described_ttl = clients
            .dynamodb
            .describe_time_to_live()
            .table_name(table)
            .send()
            .await
            .unwrap()
            .time_to_live_description
            .and_then(|t| t.attribute_name);
        assert_eq!(described_ttl.as_deref(), ttl, "{table}");
    }
}

/// Issue 18: provisioning tables laid out as the seed documents give them (`updates` without
/// `PendingIndex`, no `outbox` or `tokens` table) adds the index and the two tables and says so;
/// the backend then works; a second run finds everything as wanted and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_brings_the_seed_layout_up_to_date_and_says_what_it_did() {
    let clients = common::clients().await;
    let wanted = common::unique_settings(false);
    let tables = common::seed_tables(&clients, &wanted).await;

    let first = botline_aws::provision_report(&clients, &wanted)
        .await
        .unwrap();
    let said = first.actions.join("\n");
    for line in [
        format!("table {}: exists", tables.updates),
        format!("table {}: index PendingIndex added", tables.updates),
        format!("table {}: index UserIdIndex added", tables.events),
        format!("table {}: created", tables.outbox),
        format!("table {}: created", tables.tokens),
    ] {
        assert!(said.lines().any(|l| l == line), "{line:?} not in:\n{said}");
    }
    assert!(
        !said.contains(&format!("table {}: created", tables.updates)),
        "{said}"
    );

    let backend = AwsBackend::new(clients.clone(), first.settings.clone(), config());
    backend
        .enqueue(&message_update(4242, 77, 1, "after provisioning"))
        .await
        .unwrap();
    let delivered = backend.receive(10).await.unwrap();
    assert_eq!(delivered.len(), 1, "the claim works with the added index");
    backend.ack(&delivered[0]).await.unwrap();

    let again = botline_aws::provision_report(&clients, &wanted)
        .await
        .unwrap();
    assert_eq!(again.settings, first.settings);
    let said = again.actions.join("\n");
    assert!(
        !said.contains("created") && !said.contains("added"),
        "the second run changed something:\n{said}"
    );
}

/// Issue 18: the schema check names everything the seed layout lacks (the queues, the three
/// indexes, the two tables) and the command that creates it; after provisioning it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_check_names_what_the_seed_layout_lacks_until_provisioned() {
    let clients = common::clients().await;
    let wanted = common::unique_settings(false);
    let tables = common::seed_tables(&clients, &wanted).await;
    let err = botline_aws::check_schema(&clients, &wanted)
        .await
        .unwrap_err();
    let BackendError::Unprovisioned(missing) = &err else {
        panic!("not an unprovisioned schema: {err}");
    };
    let queue = wanted.queue_url.rsplit('/').next().unwrap();
    let dlq = wanted.dlq_url.rsplit('/').next().unwrap();
    assert_eq!(
        missing.missing,
        [
            format!("queue {queue} is missing"),
            format!("queue {dlq} is missing"),
            format!("table {} has no index UserIdIndex", tables.events),
            format!("table {} has no index UserIdIndex", tables.sessions),
            format!("table {} has no index PendingIndex", tables.updates),
            format!("table {} is missing", tables.outbox),
            format!("table {} is missing", tables.tokens),
        ]
    );
    // The ingest function asks only about what it touches.
    let ingest = botline_aws::check_schema_for(&clients, &wanted, botline_aws::SchemaNeeds::Ingest)
        .await
        .unwrap_err();
    let BackendError::Unprovisioned(ingest) = &ingest else {
        panic!("not an unprovisioned schema: {ingest}");
    };
    assert_eq!(
        ingest.missing,
        [
            format!("queue {queue} is missing"),
            format!("table {} has no index PendingIndex", tables.updates),
        ]
    );
    let message = err.to_string();
    assert!(
        message.starts_with("the AWS backend is not provisioned: queue "),
        "{message}"
    );
    assert!(
        message.ends_with("; run `botline provision --backend aws`"),
        "{message}"
    );

    let provisioned = botline_aws::provision(&clients, &wanted).await.unwrap();
    botline_aws::check_schema(&clients, &provisioned)
        .await
        .expect("nothing missing after provisioning");
    let backend = AwsBackend::new(clients.clone(), provisioned, config());
    backend.check_schema().await.unwrap();

    // A table deleted while Botline runs is named again.
    clients
        .dynamodb
        .delete_table()
        .table_name(&tables.tokens)
        .send()
        .await
        .unwrap();
    let err = backend.check_schema().await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "the AWS backend is not provisioned: table {} is missing; run `botline provision \
             --backend aws`",
            tables.tokens
        )
    );
    // The ingest function does not touch tokens.
    backend
        .checking(botline_aws::SchemaNeeds::Ingest)
        .check_schema()
        .await
        .expect("ingest needs no tokens table");
}

/// A TCP server that accepts connections and never answers.
async fn silent_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_absent_service_is_unavailable_within_the_timeout() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    for endpoint in [silent_endpoint().await, closed] {
        let options = ClientOptions {
            operation_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            ..common::options(&endpoint)
        };
        let clients = common::clients_for(&options).await;
        let settings = AwsSettings::new(
            format!("{endpoint}/123456789012/q.fifo"),
            format!("{endpoint}/123456789012/dlq.fifo"),
            "bl-",
        );
        let backend = AwsBackend::new(clients, settings, config());
        let started = Instant::now();
        let err = backend
            .enqueue(&message_update(1, 1, 1, "x"))
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Unavailable(_)), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{endpoint}: {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert!(matches!(
            backend.ping().await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(matches!(
            backend.receive(10).await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(8));
    }
}

/// What the backend relies on, checked against moto, so that the tests above mean what they
/// say (the crate docs list where moto and AWS differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_enforces_what_the_backend_relies_on() {
    let backend = common::fifo_backend(config()).await;
    let sqs = &backend.clients().sqs;
    let fifo = backend.settings().queue_url.clone();
    for (id, group) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        sqs.send_message()
            .queue_url(&fifo)
            .message_body(id)
            .message_group_id(group)
            .message_deduplication_id(id)
            .send()
            .await
            .unwrap();
    }
    let receive_one = || async {
        sqs.receive_message()
            .queue_url(&fifo)
            .max_number_of_messages(1)
            .visibility_timeout(30)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.body.unwrap(), m.receipt_handle.unwrap()))
            .collect::<Vec<_>>()
    };
    // A group with a message in flight gives nothing more; others do.
    let first = receive_one().await;
    assert_eq!(first[0].0, "a1");
    let second = receive_one().await;
    assert_eq!(second[0].0, "b1");
    assert!(receive_one().await.is_empty());
    // Deleting the message frees its group, in order.
    sqs.delete_message()
        .queue_url(&fifo)
        .receipt_handle(&first[0].1)
        .send()
        .await
        .unwrap();
    assert_eq!(receive_one().await[0].0, "a2");
    // A FIFO queue refuses per-message delays; a deduplication id is kept.
    let delayed = sqs
        .send_message()
        .queue_url(&fifo)
        .message_body("x")
        .message_group_id("c")
        .message_deduplication_id("c1")
        .delay_seconds(1)
        .send()
        .await;
    assert!(delayed.is_err());

    // A standard queue honours per-message delays and hides a received message.
    let standard = common::standard_backend(config()).await;
    let queue = standard.settings().queue_url.clone();
    let sqs = &standard.clients().sqs;
    sqs.send_message()
        .queue_url(&queue)
        .message_body("later")
        .delay_seconds(1)
        .send()
        .await
        .unwrap();
    let now = sqs
        .receive_message()
        .queue_url(&queue)
        .send()
        .await
        .unwrap();
    assert!(now.messages.unwrap_or_default().is_empty(), "delayed");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // SQS's redrive policy moves a message after maxReceiveCount receives.
    for receive in 1..=MAX_RECEIVE_COUNT {
        let got = sqs
            .receive_message()
            .queue_url(&queue)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        assert_eq!(got.len(), 1, "receive {receive}");
    }
    let moved = sqs
        .receive_message()
        .queue_url(&queue)
        .send()
        .await
        .unwrap();
    assert!(moved.messages.unwrap_or_default().is_empty());
    assert_eq!(
        queue_counts(&standard, &standard.settings().dlq_url.clone()).await,
        (1, 0, 0)
    );

    // A transaction cancelled by a condition says which item's condition failed.
    let dynamodb = &backend.clients().dynamodb;
    let table = backend.tables().messages.clone();
    let put = |chat: &str| {
        aws_sdk_dynamodb::types::TransactWriteItem::builder()
            .put(
                aws_sdk_dynamodb::types::Put::builder()
                    .table_name(&table)
                    .item("chatId", AttributeValue::S(chat.into()))
                    .item("messageId", AttributeValue::N("1".into()))
                    .condition_expression("attribute_not_exists(chatId)")
                    .build()
                    .unwrap(),
            )
            .build()
    };
    dynamodb
        .transact_write_items()
        .transact_items(put("x"))
        .send()
        .await
        .unwrap();
    let cancelled = dynamodb
        .transact_write_items()
        .transact_items(put("y"))
        .transact_items(put("x"))
        .send()
        .await
        .unwrap_err();
    let reasons: Vec<Option<String>> = match cancelled.as_service_error() {
        Some(
            aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c),
        ) => c
            .cancellation_reasons()
            .iter()
            .map(|r| r.code().map(str::to_owned))
            .collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reasons,
        vec![Some("None".into()), Some("ConditionalCheckFailed".into())]
    );
    let y = dynamodb
        .get_item()
        .table_name(&table)
        .key("chatId", AttributeValue::S("y".into()))
        .key("messageId", AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    assert!(y.item.is_none(), "all or nothing");

    // The pending index is sparse: an item without the key attribute is not in it.
    let updates = backend.tables().updates.clone();
    for (id, pending) in [(1, true), (2, false)] {
        let mut put = dynamodb
            .put_item()
            .table_name(&updates)
            .item("updateId", AttributeValue::N(id.to_string()))
            .item("state", AttributeValue::S("queued".into()));
        if pending {
            put = put.item("pendingKey", AttributeValue::S("chat:1".into()));
        }
        put.send().await.unwrap();
    }
    let indexed = dynamodb
        .query()
        .table_name(&updates)
        .index_name("PendingIndex")
        .key_condition_expression("pendingKey = :k")
        .expression_attribute_values(":k", AttributeValue::S("chat:1".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(indexed.items().len(), 1);
}

/// The session of chat 5, live for an hour.
fn chat_session(state: &str) -> SessionRecord {
    SessionRecord {
        session_id: "chat:5".into(),
        user_id: "telegram_1005".into(),
        chat_id: 5,
        state: state.into(),
        data: serde_json::Map::new(),
        created_at: clock::iso8601(clock::now_ms()),
        updated_at: clock::iso8601(clock::now_ms()),
        expires_at: clock::now_ms() / 1000 + 3600,
    }
}

/// `delivery`'s records with `calls` replies and a put of `session`.
fn with_effects(delivery: &Delivery, calls: usize, session: &SessionRecord) -> Records {
    let mut records = build_records(&delivery.update, clock::now_ms()).unwrap();
    records.outbox = (0..calls)
        .map(|n| {
            OutboxMessage::new(
                format!("{}:{n}", delivery.update.entry_id),
                5,
                OutboxAction::SendMessage {
                    text: format!("reply {n}"),
                    reply_to_message_id: None,
                },
            )
        })
        .collect();
    records.sessions = vec![SessionChange::Put(session.clone())];
    records
}

/// A transaction DynamoDB refuses (here: the message's item is over 400 KB) writes nothing of
/// the update, its session included; applied again once it can commit, it writes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_that_fails_leaves_no_session() {
    let backend = common::standard_backend(config()).await;
    backend
        .enqueue(&message_update(1, 5, 1, "x"))
        .await
        .unwrap();
    let delivery = backend.receive(1).await.unwrap().remove(0);
    let session = chat_session("asked");
    let mut records = with_effects(&delivery, 1, &session);
    let fits = records.clone();
    if let Some(message) = records.message.as_mut() {
        message.raw = "x".repeat(410 * 1024);
    }
    let failed = backend.apply(&delivery, &records).await;
    assert!(
        matches!(&failed, Err(BackendError::Unavailable(why)) if why.contains("size")),
        "{failed:?}"
    );
    assert_eq!(backend.session("chat:5").await.unwrap(), None);
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 0);
    assert_eq!(backend.user("telegram_1005").await.unwrap(), None);
    assert_ne!(
        update_item(&backend, 1).await.unwrap().get("state"),
        Some(&AttributeValue::S("done".into()))
    );

    assert_eq!(
        backend.apply(&delivery, &fits).await.unwrap(),
        Applied::Written
    );
    assert_eq!(backend.session("chat:5").await.unwrap(), Some(session));
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 1);
}

/// An update whose effects need more items than one transaction takes (100) is refused whole,
/// with an error that says so, before anything is written; 100 items are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_beyond_one_transaction_are_refused_whole() {
    let backend = common::standard_backend(config()).await;
    backend
        .enqueue(&message_update(1, 5, 1, "x"))
        .await
        .unwrap();
    let delivery = backend.receive(1).await.unwrap().remove(0);
    let session = chat_session("many");
    // The update, the message, the user and the event, 96 calls and the session: 101 items.
    let too_many = with_effects(&delivery, 96, &session);
    let refused = backend.apply(&delivery, &too_many).await;
    let Err(BackendError::Unavailable(why)) = &refused else {
        panic!("{refused:?}");
    };
    assert!(why.contains("101 items") && why.contains("100"), "{why}");
    assert_eq!(backend.session("chat:5").await.unwrap(), None);
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 0);

    let most = with_effects(&delivery, 95, &session);
    assert_eq!(
        backend.apply(&delivery, &most).await.unwrap(),
        Applied::Written
    );
    assert_eq!(backend.session("chat:5").await.unwrap(), Some(session));
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 95);
}
