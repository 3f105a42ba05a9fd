//! Any Bot API method in the outbox (issue 15's effects): written with an update's records,
//! made once by the sender against the Bot API stand-in, with its parameters as given; a method
//! Telegram does not have fails for good, once.

use botline::sender::{Limits, Sender};
use botline::telegram::{BotToken, Telegram};
use botline_core::{Backend, OutboxAction, OutboxMessage, QueueConfig, build_records, clock};
use botline_sqlite::SqliteBackend;
use botline_standin::StandIn;
use serde_json::{Map, Value, json};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn params(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => unreachable!("an object"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_method_goes_out_once_with_its_parameters() {
    let standin = StandIn::start(botline_standin::Settings::default());
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(SqliteBackend::open(dir.path(), QueueConfig::default()).unwrap());

    let body = br#"{"update_id":1,"message":{"message_id":5,"date":1,"chat":{"id":42,"type":"private"},"text":"photo please"}}"#;
    let update = botline_core::InboundUpdate::parse(body).unwrap();
    backend.enqueue(&update).await.unwrap();
    let delivery = backend.receive(1).await.unwrap().remove(0);
    let mut records = build_records(&delivery.update, clock::now_ms()).unwrap();
    let entry = &delivery.update.entry_id;
    records.outbox = vec![
        OutboxMessage {
            outbox_id: format!("{entry}:1"),
            chat_id: 42,
            action: OutboxAction::call(
                "sendPhoto",
                params(json!({
                    "chat_id": 42,
                    "photo": "https://example.org/cat.jpg",
                    "caption": "a cat",
                    "reply_parameters": {"message_id": 5},
                })),
            ),
            send_at_ms: None,
        },
        OutboxMessage {
            outbox_id: format!("{entry}:2"),
            chat_id: 42,
            action: OutboxAction::call("sendTelepathy", params(json!({"chat_id": 42}))),
            send_at_ms: None,
        },
    ];
    backend.apply(&delivery, &records).await.unwrap();
    // Applied twice (a retried update): still one of each.
    backend.apply(&delivery, &records).await.unwrap();

    let token = BotToken::new(&botline_standin::Settings::default().token).unwrap();
    let telegram = Telegram::new(&standin.base_url(), token, Duration::from_secs(1)).unwrap();
    let sender = Sender {
        backend: Arc::clone(&backend),
        telegram,
        limits: Arc::new(Limits::telegram(NonZeroU32::new(30).unwrap())),
        new_calls: Arc::default(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while backend.outbox_stats().await.unwrap().pending > 0 {
        assert!(Instant::now() < deadline, "the outbox never emptied");
        sender.drain(deadline).await;
    }

    let photos = standin.calls_of("sendPhoto");
    assert_eq!(photos.len(), 1, "{photos:?}");
    assert_eq!(photos[0].status, Some(200));
    assert_eq!(photos[0].params["photo"], "https://example.org/cat.jpg");
    assert_eq!(photos[0].params["caption"], "a cat");
    assert_eq!(photos[0].params["reply_parameters"]["message_id"], 5);
    let unknown = standin.calls_of("sendTelepathy");
    assert_eq!(
        unknown.len(),
        1,
        "a refused call is not retried: {unknown:?}"
    );
    assert_eq!(unknown[0].status, Some(404));
    let stats = backend.outbox_stats().await.unwrap();
    assert_eq!((stats.done, stats.failed), (1, 1), "{stats:?}");
}
