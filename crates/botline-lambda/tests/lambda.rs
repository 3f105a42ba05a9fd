//! The two Lambda handlers, invoked in-process with API Gateway HTTP API, SQS and EventBridge
//! scheduled events in the shapes AWS sends (`tests/fixtures/`), against moto's server mode:
//! ingest → SQS → worker → DynamoDB, redelivery, a poison update dead-lettered after 3 receives
//! (its token redacted) while its neighbours are stored (partial batch failures), a redrive; and
//! the worker's tick, which sends reminders and calls that waited out a `retry_after` with no
//! traffic at all.
//!
//! Lambda's SQS event source mapping is played by [`EventSource`]: it receives up to 10
//! messages, hands them to the worker as one event, and deletes those the answer does not list
//! as batch item failures, as Lambda does.

#[path = "../../botline-aws/tests/common/mod.rs"]
mod common;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_sqs::types::MessageSystemAttributeName;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use botline::config::{BackendKind, Settings};
use botline::forward::Forward;
use botline::handler::{Bot, Context, HandlerResult};
use botline::secret::WebhookSecret;
use botline::telegram::BotToken;
use botline_aws::AwsBackend;
use botline_aws::invoke::HandlerFunction;
use botline_core::{DeadLetters, MessageQuery, Outbox, Queue, Store, UpdateId, clock};
use botline_lambda::ingest::Ingest;
use botline_lambda::worker::{Answer, Ticked, WorkerFunction};
use botline_registrar::{Registrar, RegistrarError, RegistrationRequest};
use botline_standin::lambda::{Invocation, LambdaStandIn, Outcome};
use botline_standin::{Call, Fault, StandIn};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "fixture-secret_123";
const TOKEN: &str = "4242:TESTtoken_for-the-standin";
const BOT: &str = "botline_test_bot";

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The functions' settings, as the environment would give them, in whole seconds (SQS's unit).
fn settings(standin: Option<&StandIn>) -> Settings {
    let queue = common::whole_seconds();
    let mut settings = Settings {
        backend: BackendKind::Aws,
        lease: queue.lease,
        max_attempts: queue.retry.max_attempts,
        backoff_base: queue.retry.backoff_base,
        backoff_max: queue.retry.backoff_max,
        ack_timeout: Duration::from_secs(10),
        bot_username: Some(BOT.into()),
        ..Settings::default()
    };
    settings.fetched.webhook_secret = Some(WebhookSecret::new(SECRET.into()).unwrap());
    if let Some(standin) = standin {
        settings.telegram_api_url = standin.base_url();
        settings.fetched.bot_token = Some(BotToken::new(TOKEN).unwrap());
    }
    settings
}

fn text(update_id: i64, chat: i64, message_id: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": {"id": chat, "is_bot": false, "first_name": "Tester"},
            "chat": {"id": chat, "type": "private", "first_name": "Tester"},
            "date": 1_795_342_542,
            "text": text,
        }
    })
}

/// The webhook fixture with `update` as its body and `secret` in Telegram's header.
fn webhook_event(update: &Value, secret: &str) -> lambda_http::Request {
    let mut event = fixture("apigw-v2-webhook.json");
    let body = update.to_string();
    event["headers"]["content-length"] = body.len().to_string().into();
    event["headers"]["x-telegram-bot-api-secret-token"] = secret.into();
    event["body"] = body.into();
    lambda_http::request::from_str(&event.to_string()).expect("an API Gateway v2 event")
}

async fn call(
    ingest: &Ingest,
    request: lambda_http::Request,
) -> (StatusCode, String, Option<String>) {
    let response = ingest.handle(request).await;
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        retry_after,
    )
}

/// Telegram delivering `updates` to the ingest function, each answered 200.
async fn deliver_all(ingest: &Ingest, updates: &[Value]) {
    for update in updates {
        let (status, body, _) = call(ingest, webhook_event(update, SECRET)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

async fn ingest_on(backend: &AwsBackend, settings: Settings) -> Ingest {
    Ingest::new(settings, Arc::new(backend.clone()), None)
        .await
        .expect("the ingest handler")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_api_gateway_events_as_the_server_does() {
    let backend = common::standard_backend(common::whole_seconds()).await;
    let ingest = ingest_on(&backend, settings(None)).await;

    // The fixture exactly as API Gateway sends it.
    let event = fixture("apigw-v2-webhook.json");
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let (status, body, _) = call(&ingest, request).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, r#"{"ok":true}"#));
    // Telegram's retry of the same update: 200, nothing new.
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    assert_eq!(call(&ingest, request).await.0, StatusCode::OK);
    let stats = backend.stats().await.unwrap();
    assert_eq!(stats.pending + stats.in_flight, 1, "{stats:?}");

    // A base64-encoded body, as API Gateway sends binary media types.
    let mut encoded = fixture("apigw-v2-webhook.json");
    let update = text(815_000_002, 4_100_001, 2, "second");
    encoded["body"] = STANDARD.encode(update.to_string()).into();
    encoded["isBase64Encoded"] = true.into();
    let request = lambda_http::request::from_str(&encoded.to_string()).unwrap();
    assert_eq!(call(&ingest, request).await.0, StatusCode::OK);

    let (status, _, _) = call(&ingest, webhook_event(&update, "not-the-secret")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut garbage = fixture("apigw-v2-webhook.json");
    garbage["body"] = "{not json".into();
    let request = lambda_http::request::from_str(&garbage.to_string()).unwrap();
    assert_eq!(call(&ingest, request).await.0, StatusCode::BAD_REQUEST);

    let health =
        lambda_http::request::from_str(&fixture("apigw-v2-health.json").to_string()).unwrap();
    let (status, body, _) = call(&ingest, health).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(r#""status":"ok""#), "{body}");

    let stats = backend.stats().await.unwrap();
    assert_eq!(
        stats.pending + stats.in_flight,
        2,
        "refused requests enqueue nothing: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_when_aws_cannot_take_the_update() {
    // Queues and tables on a port where nothing listens.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{closed}");
    let clients = common::clients_for(&common::options(&endpoint)).await;
    let aws = botline_aws::AwsSettings::new(
        format!("{endpoint}/123456789012/away"),
        format!("{endpoint}/123456789012/away-dlq"),
        "away-",
    );
    let backend = AwsBackend::new(clients, aws, common::whole_seconds());
    let ingest = ingest_on(&backend, settings(None)).await;
    let update = text(815_000_100, 4_100_100, 1, "is anyone there");
    let (status, body, retry_after) = call(&ingest, webhook_event(&update, SECRET)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let health =
        lambda_http::request::from_str(&fixture("apigw-v2-health.json").to_string()).unwrap();
    assert_eq!(
        call(&ingest, health).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Issue 18: on the tables as the seed documents lay them out (no `PendingIndex`, no `outbox`
/// or `tokens` table), the ingest function never answers Telegram 200: the webhook is 503 with
/// `Retry-After` (Telegram keeps the update and retries), `/health` 503 naming what is missing
/// and the command that creates it; and the worker leaves the whole batch on the queue. Once
/// provisioned, a fresh execution environment takes the update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_seed_layout_ingest_answers_503_and_the_worker_claims_nothing() {
    let clients = common::clients().await;
    let aws = common::seed_layout(&clients, &common::unique_settings(false)).await;
    let tables = botline_aws::Tables::with_prefix(&aws.table_prefix);
    let backend = AwsBackend::new(clients.clone(), aws, common::whole_seconds());
    let ingest = ingest_on(&backend, settings(None)).await;

    let update = text(815_000_300, 4_100_300, 1, "before provisioning");
    let (status, body, retry_after) = call(&ingest, webhook_event(&update, SECRET)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let health =
        lambda_http::request::from_str(&fixture("apigw-v2-health.json").to_string()).unwrap();
    let (status, body, _) = call(&ingest, health).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    let missing: Vec<&str> = health["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for named in [
        format!("table {} has no index PendingIndex", tables.updates),
        format!("table {} is missing", tables.outbox),
        format!("table {} is missing", tables.tokens),
    ] {
        assert!(missing.contains(&named.as_str()), "{named} not in {health}");
    }
    assert_eq!(health["fix"], "botline provision --backend aws", "{health}");
    let stats = backend.stats().await.unwrap();
    assert_eq!(stats.pending + stats.in_flight, 0, "{stats:?}");

    // A message on the queue (sent as an older ingest would have): the worker reports it.
    let sent = clients
        .sqs
        .send_message()
        .queue_url(&backend.settings().queue_url)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    let mut event = fixture("sqs-event.json");
    event["Records"][0]["messageId"] = sent.message_id.clone().unwrap().into();
    let event: SqsEvent = serde_json::from_value(event).unwrap();
    let worker = WorkerFunction::new(&settings(None), backend.clone()).unwrap();
    let answer = worker.handle(event, None).await;
    let failed: Vec<&str> = answer
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, [sent.message_id.as_deref().unwrap()]);

    let provisioned = botline_aws::provision(&clients, backend.settings())
        .await
        .unwrap();
    let backend = AwsBackend::new(clients, provisioned, common::whole_seconds());
    let ingest = ingest_on(&backend, settings(None)).await;
    let (status, body, _) = call(&ingest, webhook_event(&update, SECRET)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_to_start_without_a_webhook_secret() {
    let backend = common::standard_backend(common::whole_seconds()).await;
    let mut settings = settings(None);
    settings.fetched.webhook_secret = None;
    let refused = Ingest::new(settings.clone(), Arc::new(backend.clone()), None).await;
    assert!(refused.unwrap_err().to_string().contains("webhook secret"));
    settings.insecure_no_secret = true;
    assert!(Ingest::new(settings, Arc::new(backend), None).await.is_ok());
}

/// Decides `/register` attempts: yes to everyone, except that while it is broken it cannot
/// answer for `alice` (an outage that only her update runs into).
#[derive(Debug, Default)]
struct TestRegistrar {
    broken: AtomicBool,
    /// Registrations asked for while not broken.
    asked: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl Registrar for TestRegistrar {
    async fn register(&self, request: &RegistrationRequest<'_>) -> Result<bool, RegistrarError> {
        if request.username == "alice" && self.broken.load(Ordering::SeqCst) {
            return Err(RegistrarError::Unavailable("the test says no".into()));
        }
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }

    async fn ping(&self) -> Result<(), RegistrarError> {
        Ok(())
    }
}

/// Lambda's SQS event source mapping, played against the emulator.
struct EventSource {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    template: Value,
    /// How many times each update id was in an event.
    handed_out: HashMap<i64, u32>,
    /// Events whose answer listed some records as failed and not others.
    partial_batches: usize,
    /// The body of each update's message, as received.
    bodies: HashMap<i64, String>,
}

impl EventSource {
    fn new(backend: &AwsBackend) -> Self {
        Self {
            sqs: backend.clients().sqs.clone(),
            queue_url: backend.settings().queue_url.clone(),
            template: fixture("sqs-event.json")["Records"][0].clone(),
            handed_out: HashMap::new(),
            partial_batches: 0,
            bodies: HashMap::new(),
        }
    }

    /// Receives up to 10 messages and builds the event Lambda would, from the fixture's record.
    async fn receive(&mut self) -> Vec<Value> {
        let received = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("ReceiveMessage");
        let arn = format!(
            "arn:aws:sqs:{}:123456789012:{}",
            common::REGION,
            self.queue_url.rsplit('/').next().unwrap()
        );
        received
            .messages()
            .iter()
            .map(|message| {
                let mut record = self.template.clone();
                let body = message.body().unwrap_or_default();
                if let Some(id) = update_id_of(body) {
                    *self.handed_out.entry(id).or_default() += 1;
                    self.bodies.insert(id, body.to_owned());
                }
                record["messageId"] = message.message_id().unwrap().into();
                record["receiptHandle"] = message.receipt_handle().unwrap().into();
                record["body"] = body.into();
                record["md5OfBody"] = message.md5_of_body().unwrap_or_default().into();
                record["eventSourceARN"] = arn.clone().into();
                let attributes: serde_json::Map<String, Value> = message
                    .attributes()
                    .into_iter()
                    .flatten()
                    .map(|(name, value)| (name.as_str().to_owned(), value.clone().into()))
                    .collect();
                record["attributes"] = attributes.into();
                record
            })
            .collect()
    }

    /// Hands `records` to the worker as one event, as Lambda invokes it, and deletes what it
    /// did not report failed.
    async fn invoke(&mut self, worker: &WorkerFunction, records: &[Value]) -> SqsBatchResponse {
        let response = match worker.invoke(json!({ "Records": records }), None).await {
            Ok(Answer::Batch(response)) => response,
            other => panic!("an SQS event answered {other:?}"),
        };
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        if !failed.is_empty() && failed.len() < records.len() {
            self.partial_batches += 1;
        }
        for record in records {
            if !failed.contains(&record["messageId"].as_str().unwrap()) {
                // Lambda deletes the batch's successes; a message gone already is no error.
                let _ = self
                    .sqs
                    .delete_message()
                    .queue_url(&self.queue_url)
                    .receipt_handle(record["receiptHandle"].as_str().unwrap())
                    .send()
                    .await;
            }
        }
        response
    }

    /// Invokes the worker with whatever the queue hands out until `done` says so.
    async fn run_until<F, Fut>(&mut self, worker: &WorkerFunction, what: &str, done: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done().await {
            assert!(
                Instant::now() < deadline,
                "not within 120 s: {what}; updates handed out: {:?}",
                self.handed_out
            );
            let records = self.receive().await;
            if records.is_empty() {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            self.invoke(worker, &records).await;
        }
    }
}

fn update_id_of(body: &str) -> Option<i64> {
    let body: Value = serde_json::from_str(body).ok()?;
    body["updateId"].as_i64()
}

async fn stored(backend: &AwsBackend, chat: i64) -> Vec<i64> {
    let query = MessageQuery {
        chat_id: Some(chat.to_string()),
        limit: 1000,
        ..MessageQuery::default()
    };
    let mut ids: Vec<i64> = backend
        .messages(&query)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.message_id)
        .collect();
    ids.sort_unstable();
    ids
}

async fn end_to_end(fifo: bool) {
    // `RUST_LOG=info cargo test -p botline-lambda -- --nocapture` shows the handlers' logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let standin = StandIn::start(botline_standin::Settings {
        token: TOKEN.into(),
        username: BOT.into(),
        ..Default::default()
    });
    let backend =
        common::backend_with(common::unique_settings(fifo), common::whole_seconds()).await;
    let settings = settings(Some(&standin));
    let ingest = ingest_on(&backend, settings.clone()).await;
    let registrar = Arc::new(TestRegistrar::default());
    registrar.broken.store(true, Ordering::SeqCst);
    let worker = WorkerFunction::new(&settings, backend.clone())
        .unwrap()
        .with_registrar(Some(registrar.clone() as Arc<dyn Registrar>));

    // Chat A's first update is the poison: its registration cannot be decided while the
    // registrar is broken. Chats B and C are its neighbours, in the same batches.
    let (a, b, c) = (4_200_001, 4_200_002, 4_200_003);
    let poison = 910_001;
    let updates = [
        text(poison, a, 1, "/register alice s3cret-token-A"),
        text(910_002, b, 1, "hello from b"),
        text(910_003, c, 1, "hello from c"),
        text(910_004, a, 2, "after the poison"),
        text(910_005, b, 2, "/register bob s3cret-token-B"),
        text(910_006, c, 2, "more from c"),
        text(910_007, b, 3, "bye from b"),
    ];
    deliver_all(&ingest, &updates).await;
    // Telegram retrying one: still 200, still one.
    assert_eq!(
        call(&ingest, webhook_event(&updates[1], SECRET)).await.0,
        StatusCode::OK
    );

    let mut source = EventSource::new(&backend);
    let dead = || async { backend.show(UpdateId(poison)).await.unwrap().is_some() };
    let neighbours_stored = || async {
        stored(&backend, b).await == [1, 2, 3]
            && stored(&backend, c).await == [1, 2]
            && stored(&backend, a).await == [2]
    };
    source
        .run_until(
            &worker,
            "the poison dead-lettered and its neighbours stored",
            || async { dead().await && neighbours_stored().await },
        )
        .await;

    let letter = backend.show(UpdateId(poison)).await.unwrap().unwrap();
    assert_eq!(letter.attempts, 3);
    assert!(
        letter
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("unavailable"),
        "{letter:?}"
    );
    // Three attempts, each a receive; a receive that comes a little before the backoff ended
    // (SQS counts visibility in whole seconds) is held back, not counted as an attempt.
    let received = source.handed_out[&poison];
    assert!(
        (3..=5).contains(&received),
        "the poison was received {received} times"
    );
    assert!(source.partial_batches > 0, "a batch failed in part");
    let dlq = backend
        .clients()
        .sqs
        .receive_message()
        .queue_url(&backend.settings().dlq_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let on_dlq: Vec<i64> = dlq
        .messages()
        .iter()
        .filter_map(|m| update_id_of(m.body().unwrap_or_default()))
        .collect();
    assert_eq!(on_dlq, [poison], "the DLQ holds the poison's copy");
    for message in dlq.messages() {
        let body = message.body().unwrap_or_default();
        assert!(
            !body.contains("s3cret-token-A"),
            "the DLQ copy keeps the token: {body}"
        );
    }
    assert!(!letter.update.raw.contains("s3cret-token-A"), "{letter:?}");

    // The reply to bob went out once.
    let sent = standin
        .wait_for_calls_async("sendMessage", 1, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].params["chat_id"], json!(b));
    assert_eq!(
        sent[0].params["text"],
        "Registration successful! Welcome bob"
    );

    // SQS delivering a message again (at least once): a copy of a stored update changes nothing.
    let body = source.bodies[&910_006].clone();
    let copy = backend
        .clients()
        .sqs
        .send_message()
        .queue_url(&backend.settings().queue_url)
        .message_body(body);
    let copy = if fifo {
        copy.message_group_id(format!("chat:{c}"))
            .message_deduplication_id("redelivered-910006")
    } else {
        copy
    };
    copy.send().await.unwrap();
    source
        .run_until(&worker, "the redelivered copy consumed", || async {
            let stats = backend.stats().await.unwrap();
            let attributes = backend
                .clients()
                .sqs
                .get_queue_attributes()
                .queue_url(&backend.settings().queue_url)
                .attribute_names(
                    aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages,
                )
                .send()
                .await
                .unwrap();
            let visible = attributes
                .attributes()
                .and_then(|a| {
                    a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
                })
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(1);
            stats.pending + stats.in_flight == 0 && visible == 0
        })
        .await;
    assert_eq!(stored(&backend, c).await, [1, 2]);

    // The registrar is back, but the dead letter's token was redacted when it died: the
    // redriven poison is answered as failed without asking the registrar, and alice types her
    // token again.
    registrar.broken.store(false, Ordering::SeqCst);
    let asked_before = registrar.asked.load(Ordering::SeqCst);
    assert!(backend.redrive(UpdateId(poison)).await.unwrap());
    source
        .run_until(&worker, "the redriven update stored", || async {
            stored(&backend, a).await == [1, 2]
        })
        .await;
    let sent = standin
        .wait_for_calls_async("sendMessage", 2, Duration::from_secs(10))
        .await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].params["chat_id"], json!(a));
    assert_eq!(
        sent[1].params["text"],
        "Registration failed. Please check your credentials and try again."
    );
    assert_eq!(registrar.asked.load(Ordering::SeqCst), asked_before);
    assert!(backend.show(UpdateId(poison)).await.unwrap().is_none());
    assert_eq!(
        stored(&backend, b).await,
        [1, 2, 3],
        "nothing was stored twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_a_fifo_queue() {
    end_to_end(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_on_a_standard_queue() {
    end_to_end(false).await;
}

/// A tick of the worker's schedule, as the EventBridge rule sends it.
async fn tick(worker: &WorkerFunction) -> Ticked {
    match worker
        .invoke(fixture("eventbridge-scheduled-event.json"), None)
        .await
    {
        Ok(Answer::Tick(ticked)) => ticked,
        other => panic!("a scheduled event answered {other:?}"),
    }
}

/// docs/handlers.md's reminder: `/remind SECONDS TEXT` answers at once and reminds later.
async fn remind(cx: Context) -> HandlerResult {
    let (seconds, text) = cx
        .args()
        .split_once(' ')
        .ok_or("usage: /remind SECONDS TEXT")?;
    let seconds: u64 = seconds.parse()?;
    let chat = cx.chat_id().unwrap_or_default();
    cx.reply(format!("I'll remind you in {seconds} s."));
    cx.send_after(
        Duration::from_secs(seconds),
        chat,
        format!("Reminder: {text}"),
    );
    Ok(())
}

async fn pong(cx: Context) -> HandlerResult {
    cx.reply("pong");
    Ok(())
}

/// The ingest function and a worker with `/remind` and `pong` on fresh queues and tables.
struct Timers {
    standin: StandIn,
    backend: AwsBackend,
    ingest: Ingest,
    worker: WorkerFunction,
}

async fn timers() -> Timers {
    let standin = StandIn::start(botline_standin::Settings {
        token: TOKEN.into(),
        username: BOT.into(),
        ..Default::default()
    });
    let backend = common::standard_backend(common::whole_seconds()).await;
    let settings = settings(Some(&standin));
    let ingest = ingest_on(&backend, settings.clone()).await;
    let worker = WorkerFunction::new(&settings, backend.clone())
        .unwrap()
        .with_bot(Bot::new().command("remind", remind).on_message(pong));
    Timers {
        standin,
        backend,
        ingest,
        worker,
    }
}

/// The calls of `method` Telegram accepted.
fn accepted(standin: &StandIn, method: &str) -> Vec<Call> {
    standin
        .calls_of(method)
        .into_iter()
        .filter(|call| call.status == Some(200))
        .collect()
}

fn texts(calls: &[Call]) -> Vec<&str> {
    calls
        .iter()
        .map(|call| call.params["text"].as_str().unwrap_or_default())
        .collect()
}

/// Issue 19, item 1: a reminder due with nothing on the queue goes out when the schedule ticks,
/// once, though two ticks arrive together, and not before its time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_goes_out_on_a_tick_with_no_traffic_once() {
    let Timers {
        standin,
        backend,
        ingest,
        worker,
    } = timers().await;
    let chat = 4_500_001;
    let delay_ms = 5_000;
    let delivered = clock::now_ms();
    deliver_all(&ingest, &[text(940_001, chat, 1, "/remind 5 stretch")]).await;
    let mut source = EventSource::new(&backend);
    source
        .run_until(&worker, "the /remind stored", || async {
            stored(&backend, chat).await == [1]
        })
        .await;
    // Processed before this: the reminder is due by then plus its delay.
    let processed = clock::now_ms();
    assert_eq!(
        texts(&accepted(&standin, "sendMessage")),
        ["I'll remind you in 5 s."],
        "the batch sent the answer, and the reminder waits for its time"
    );
    let stats = backend.stats().await.unwrap();
    assert_eq!(stats.pending + stats.in_flight, 0, "no traffic: {stats:?}");

    while clock::now_ms() < processed + delay_ms {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two ticks at once (EventBridge delivers at least once; a tick may outlast the next).
    let (first, second) = tokio::join!(tick(&worker), tick(&worker));
    assert_eq!(first.calls + second.calls, 1, "{first:?} {second:?}");
    let sent = accepted(&standin, "sendMessage");
    assert_eq!(
        texts(&sent),
        ["I'll remind you in 5 s.", "Reminder: stretch"]
    );
    assert_eq!(sent[1].params["chat_id"], json!(chat));
    assert!(
        sent[1].unix_us >= (delivered + delay_ms) * 1000,
        "the reminder went out before its time: {:?}",
        sent[1]
    );
    assert_eq!(tick(&worker).await, Ticked { calls: 0 });
    assert_eq!(standin.calls_of("sendMessage").len(), 2, "once each");
}

/// A reply Telegram refused with `retry_after` after the batch waits it out and goes out on a
/// later tick, with nothing on the queue; ticks before then make no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_refused_with_retry_after_goes_out_on_a_later_tick() {
    let Timers {
        standin,
        backend,
        ingest,
        worker,
    } = timers().await;
    let chat = 4_500_002;
    standin.fail_next(
        Some("sendMessage"),
        1,
        Fault::TooManyRequests { retry_after: 2 },
    );
    deliver_all(&ingest, &[text(940_101, chat, 1, "ping")]).await;
    let mut source = EventSource::new(&backend);
    source
        .run_until(&worker, "the ping stored", || async {
            stored(&backend, chat).await == [1]
        })
        .await;
    let refused = standin.calls_of("sendMessage");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].status, Some(429));
    let stats = backend.stats().await.unwrap();
    assert_eq!(stats.pending + stats.in_flight, 0, "no traffic: {stats:?}");

    let deadline = Instant::now() + Duration::from_secs(60);
    while accepted(&standin, "sendMessage").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the reply did not go out on a tick"
        );
        tick(&worker).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sent = accepted(&standin, "sendMessage");
    assert_eq!(texts(&sent), ["pong"]);
    assert!(
        sent[0].unix_us >= refused[0].unix_us + 2_000_000,
        "retry_after not waited out: {refused:?} {sent:?}"
    );
    assert_eq!(tick(&worker).await, Ticked { calls: 0 });
    assert_eq!(
        standin.calls_of("sendMessage").len(),
        2,
        "the refused try and the one that went out; no tick called early"
    );
}

/// A tick with nothing due calls Telegram not at all: not on an empty outbox, not for a reminder
/// whose time has not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_with_nothing_due_makes_no_call() {
    let Timers {
        standin,
        backend,
        ingest,
        worker,
    } = timers().await;
    assert_eq!(tick(&worker).await, Ticked { calls: 0 });
    assert_eq!(standin.calls(), Vec::<Call>::new());

    let chat = 4_500_003;
    deliver_all(&ingest, &[text(940_201, chat, 1, "/remind 3600 later")]).await;
    let mut source = EventSource::new(&backend);
    source
        .run_until(&worker, "the /remind stored", || async {
            stored(&backend, chat).await == [1]
        })
        .await;
    assert_eq!(
        texts(&accepted(&standin, "sendMessage")),
        ["I'll remind you in 3600 s."]
    );
    standin.clear_calls();
    for _ in 0..2 {
        assert_eq!(tick(&worker).await, Ticked { calls: 0 });
    }
    assert_eq!(
        standin.calls(),
        Vec::<Call>::new(),
        "the reminder is an hour away"
    );
    assert_eq!(backend.outbox_stats().await.unwrap().pending, 1);
}

/// An event that is neither an SQS batch nor a schedule's tick is an error naming what the
/// worker takes, not a panic, and does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_event_is_an_error() {
    let Timers {
        standin, worker, ..
    } = timers().await;
    let unknown = worker
        .invoke(json!({"hello": "world", "token": "not-to-be-logged"}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&unknown, botline_lambda::Error::UnknownEvent { keys } if keys == &["hello", "token"]),
        "{unknown:?}"
    );
    let message = unknown.to_string();
    assert!(
        message.contains("Records") && message.contains("Scheduled Event"),
        "{message}"
    );
    assert!(!message.contains("not-to-be-logged"), "{message}");
    for shape in [json!([1, 2]), json!("tick"), json!(null), json!({})] {
        let error = worker.invoke(shape.clone(), None).await.unwrap_err();
        assert!(
            matches!(&error, botline_lambda::Error::UnknownEvent { keys } if keys.is_empty()),
            "{shape}: {error:?}"
        );
    }
    // An EventBridge event, but not the schedule's.
    let mut other = fixture("eventbridge-scheduled-event.json");
    other["source"] = "aws.ec2".into();
    other["detail-type"] = "EC2 Instance State-change Notification".into();
    other["detail"] = json!({"instance-id": "i-abcd1111", "state": "pending"});
    let error = worker.invoke(other, None).await.unwrap_err();
    assert!(
        matches!(&error, botline_lambda::Error::NotASchedule { event_source, .. } if event_source == "aws.ec2"),
        "{error:?}"
    );
    assert_eq!(standin.calls(), Vec::<Call>::new());
}

/// A worker that forwards to a handler function played by the Invoke API stand-in, with the
/// ingest function in front, on fresh queues and tables.
struct Forwarding {
    standin: StandIn,
    lambda: LambdaStandIn,
    client: aws_sdk_lambda::Client,
    backend: AwsBackend,
    ingest: Ingest,
    worker: WorkerFunction,
}

/// The stand-in serves the function `name` (made by `function` from the Bot API stand-in); the
/// worker invokes it as `requested` (a name or an ARN).
async fn forwarding<F>(
    fifo: bool,
    name: &str,
    requested: &str,
    function: impl FnOnce(&StandIn) -> F,
) -> Forwarding
where
    F: Fn(&Invocation) -> Outcome + Send + Sync + 'static,
{
    let standin = StandIn::start(botline_standin::Settings {
        token: TOKEN.into(),
        username: BOT.into(),
        ..Default::default()
    });
    let lambda = LambdaStandIn::start(name, function(&standin)).await;
    let client = aws_sdk_lambda::Client::new(
        &common::sdk_config(&common::options(&lambda.endpoint_url())).await,
    );
    let backend =
        common::backend_with(common::unique_settings(fifo), common::whole_seconds()).await;
    let settings = settings(Some(&standin));
    let ingest = ingest_on(&backend, settings.clone()).await;
    let function = HandlerFunction::new(requested)
        .unwrap()
        .with_client(client.clone());
    let worker = WorkerFunction::new(&settings, backend.clone())
        .unwrap()
        .with_bot(Bot::new().forward_to(Forward::function(function)));
    Forwarding {
        standin,
        lambda,
        client,
        backend,
        ingest,
        worker,
    }
}

/// The handler function of `the_worker_invokes_the_handler_function`, as a Node handler would
/// be written: an echo answered as the invocation's result, an API Gateway-style answer, a
/// handler that returns nothing, one that throws, and one that Lambda throttles at first.
fn handler_function(invocation: &Invocation) -> Outcome {
    let update: Value = serde_json::from_slice(&invocation.payload).expect("the update as JSON");
    let chat = update["message"]["chat"]["id"].clone();
    let text = update["message"]["text"].as_str().unwrap_or_default();
    let attempt = invocation
        .client_context
        .as_ref()
        .map(|c| c["custom"]["botline-attempt"].clone());
    match text {
        "boom" => Outcome::Throws(json!({
            "errorType": "Error",
            "errorMessage": "boom",
            "trace": ["Error: boom", "    at Runtime.handler (/var/task/index.mjs:4:11)"],
        })),
        "gateway" => Outcome::Returns(
            json!({
                "statusCode": 200,
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
                "body": format!("method=sendMessage&chat_id={chat}&text=via+gateway"),
            })
            .to_string()
            .into_bytes(),
        ),
        "quiet" => Outcome::Returns(b"null".to_vec()),
        "busy" if attempt == Some(json!("1")) => Outcome::Throttled {
            retry_after_seconds: 1,
        },
        _ => Outcome::Returns(
            json!({"method": "sendMessage", "chat_id": chat, "text": format!("echo: {text}")})
                .to_string()
                .into_bytes(),
        ),
    }
}

/// `BOTLINE_HANDLER_FUNCTION`: the worker invokes the bot's own handler function for each
/// update, one chat at a time, and sends the call its result carries once; a function that
/// throws is retried and dead-lettered while its chat goes on. Lambda itself is played by the
/// Invoke API stand-in (`botline_standin::lambda`): no emulator here runs functions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_invokes_the_handler_function() {
    let arn = "arn:aws:lambda:eu-north-1:123456789012:function:bot-handler";
    let Forwarding {
        standin,
        lambda,
        client,
        backend,
        ingest,
        worker,
    } = forwarding(false, "bot-handler", arn, |_| handler_function).await;

    let (a, b) = (4_300_001, 4_300_002);
    let boom = 920_002;
    let updates = [
        text(920_001, a, 1, "hello"),
        text(boom, a, 2, "boom"),
        text(920_003, a, 3, "after boom"),
        text(920_004, b, 1, "gateway"),
        text(920_005, b, 2, "quiet"),
        text(920_006, b, 3, "busy"),
    ];
    deliver_all(&ingest, &updates).await;
    let mut source = EventSource::new(&backend);
    source
        .run_until(&worker, "every update done or dead-lettered", || async {
            backend.show(UpdateId(boom)).await.unwrap().is_some()
                && stored(&backend, a).await == [1, 3]
                && stored(&backend, b).await == [1, 2, 3]
        })
        .await;
    let sent = standin
        .wait_for_calls_async("sendMessage", 4, Duration::from_secs(10))
        .await;
    let mut texts: Vec<(Value, String)> = sent
        .iter()
        .map(|call| {
            (
                call.params["chat_id"].clone(),
                call.params["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    texts.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(
        texts,
        [
            (json!(a), "echo: after boom".to_owned()),
            (json!(b), "echo: busy".to_owned()),
            (json!(a), "echo: hello".to_owned()),
            (json!(b), "via gateway".to_owned()),
        ],
        "each reply once, none for the quiet one or the one that threw"
    );

    let letter = backend.show(UpdateId(boom)).await.unwrap().unwrap();
    let error = letter.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("the handler function") && error.contains("Error: boom"),
        "{error}"
    );
    assert!(
        !error.contains("/var/task"),
        "the stack is left out: {error}"
    );

    let invocations = lambda.invocations();
    for invocation in &invocations {
        assert_eq!(invocation.function, arn);
        assert_eq!(invocation.invocation_type, "RequestResponse");
    }
    // The payload is the update as Telegram sent it, byte for byte, and the client context
    // carries its id and the attempt.
    let of = |id: i64| -> Vec<&Invocation> {
        invocations
            .iter()
            .filter(|i| update_id_of_payload(&i.payload) == Some(id))
            .collect()
    };
    let first = of(920_001);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].payload, updates[0].to_string().as_bytes());
    assert_eq!(
        first[0].client_context,
        Some(json!({"custom": {"webhook-id": "920001", "botline-attempt": "1"}}))
    );
    let attempts: Vec<Value> = of(boom)
        .iter()
        .map(|i| i.client_context.clone().unwrap()["custom"]["botline-attempt"].clone())
        .collect();
    assert_eq!(attempts, [json!("1"), json!("2"), json!("3")]);
    // Chat A in order: its third update only once the second was dead-lettered.
    let chat_a: Vec<i64> = invocations
        .iter()
        .filter_map(|i| update_id_of_payload(&i.payload))
        .filter(|id| (920_001..=920_003).contains(id))
        .collect();
    assert_eq!(chat_a, [920_001, boom, boom, boom, 920_003]);
    // Throttled at first (the SDK's own retries included), then answered on attempt 2.
    let busy = of(920_006);
    assert!(busy.len() >= 2, "{busy:?}");
    assert_eq!(
        busy.last().unwrap().client_context.clone().unwrap()["custom"]["botline-attempt"],
        "2"
    );

    // Another function than the stand-in has is an error naming it.
    let missing = HandlerFunction::new("no-such-function")
        .unwrap()
        .with_client(client)
        .invoke(b"{}", "1", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("no-such-function") && missing.contains("ResourceNotFoundException"),
        "{missing}"
    );
}

fn update_id_of_payload(payload: &[u8]) -> Option<i64> {
    serde_json::from_slice::<Value>(payload).ok()?["update_id"].as_i64()
}

/// The grammY example's Lambda handler (`examples/grammy-handler/src/lambda.ts`), run by Node
/// once per invocation as Lambda's runtime would (`dist/invoke-local.js`): the update on stdin,
/// the result on stdout, a thrown error as Lambda's error document with exit code 1.
fn grammy_function(api: String) -> impl Fn(&Invocation) -> Outcome + Send + Sync + 'static {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/grammy-handler");
    assert!(
        dir.join("dist/lambda.js").exists() && dir.join("node_modules/grammy").exists(),
        "examples/grammy-handler is not built: run scripts/test.sh, or `npm ci && npm run build` there"
    );
    move |invocation| {
        use std::io::Write;
        let mut node = std::process::Command::new("node")
            .arg("dist/invoke-local.js")
            .current_dir(&dir)
            .env("BOT_TOKEN", TOKEN)
            .env("TELEGRAM_API_ROOT", &api)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node runs");
        node.stdin
            .take()
            .unwrap()
            .write_all(&invocation.payload)
            .unwrap();
        let output = node.wait_with_output().unwrap();
        if output.status.success() {
            Outcome::Returns(output.stdout)
        } else {
            Outcome::Throws(serde_json::from_slice(&output.stdout).unwrap_or(Value::Null))
        }
    }
}

/// A real grammY handler as the function: its replies are sent once each, and an update its
/// handler throws at is dead-lettered after its attempts while the chat goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grammy_handler_function_behind_the_worker() {
    let Forwarding {
        standin,
        lambda,
        backend,
        ingest,
        worker,
        ..
    } = forwarding(true, "grammy-bot", "grammy-bot", |standin| {
        grammy_function(standin.base_url())
    })
    .await;

    let chat = 4_400_001;
    let failing = 930_003;
    let mut start = text(930_001, chat, 1, "/start");
    start["message"]["entities"] = json!([{"type": "bot_command", "offset": 0, "length": 6}]);
    let mut fail = text(failing, chat, 3, "/fail");
    fail["message"]["entities"] = json!([{"type": "bot_command", "offset": 0, "length": 5}]);
    let updates = [
        start,
        text(930_002, chat, 2, "hello"),
        fail,
        text(930_004, chat, 4, "after"),
    ];
    deliver_all(&ingest, &updates).await;
    let mut source = EventSource::new(&backend);
    source
        .run_until(&worker, "the chat done, /fail dead-lettered", || async {
            backend.show(UpdateId(failing)).await.unwrap().is_some()
                && stored(&backend, chat).await == [1, 2, 4]
        })
        .await;
    let sent = standin
        .wait_for_calls_async("sendMessage", 3, Duration::from_secs(10))
        .await;
    let texts: Vec<&str> = sent
        .iter()
        .map(|call| call.params["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Hi Tester!", "echo: hello", "echo: after"]);
    let letter = backend.show(UpdateId(failing)).await.unwrap().unwrap();
    let error = letter.last_error.unwrap_or_default();
    assert!(
        error.contains("BotError") && error.contains("failed on purpose"),
        "{error}"
    );
    assert_eq!(
        lambda
            .invocations()
            .iter()
            .filter(|i| update_id_of_payload(&i.payload) == Some(failing))
            .count(),
        3
    );
}
