//! The worker function: an SQS event's messages → the claim step → processing → replies; and a
//! scheduled tick → the calls that are due.
//!
//! # Two events
//!
//! The function takes two shapes of event ([`WorkerEvent`]; anything else is an [`Error`]):
//!
//! - **an SQS batch** from the queue's event source mapping (below), answered with its batch item
//!   failures; once the batch is handled, the outbox's calls that are due go out;
//! - **a scheduled event** from an EventBridge rule (`source` `aws.events`, `detail-type`
//!   `Scheduled Event`; the CDK app's `botline-<stage>-worker-tick`, every minute by default):
//!   the outbox's calls that are due go out, and nothing else is done. This is what sends, with no
//!   traffic at all, the calls that wait for their time: a reminder (`cx.send_after`,
//!   `send_at`, `call_at`), a call waiting out Telegram's `retry_after` or a backoff after a 5xx.
//!   A reminder goes out within one tick of its time. A tick with nothing due reads the outbox's
//!   pending calls once (one DynamoDB `Query`) and calls Telegram not at all.
//!
//! The queue needs no tick: SQS itself hands the worker again a message whose visibility ended
//! (an update's backoff, a handler's `RetryAfter`, an expired lease, a held-back message), and
//! DynamoDB's TTL is the AWS backend's housekeeping. Ticks and batches may run at once, in
//! different execution environments: the outbox leases each call with a conditional write, so a
//! call goes out once whichever invocation takes it.
//!
//! # Batch item failures
//!
//! Which messages are reported as batch item failures (so that Lambda leaves them on the
//! queue instead of deleting them):
//!
//! - an update whose processing failed: the backend already hid its message for the backoff
//!   (or, at the last attempt, dead-lettered it and deleted the message);
//! - a message the claim step held back: on a standard queue it is hidden until its chat's
//!   head is finished and must stay; on a FIFO queue it was sent again behind its group and
//!   deleted, and reporting it changes nothing;
//! - a message the claim step could not decide (AWS did not answer): it comes back after its
//!   visibility timeout.
//!
//! - every message of the event, while the backend's schema lacks a queue, table or index
//!   ([`botline::schema`], checked at the cold start and at most every few seconds after): the
//!   claim step would fail on each anyway. SQS delivers them again after their visibility
//!   timeout; a message received more than the redrive policy's `maxReceiveCount` times goes to
//!   the DLQ, from which SQS's own redrive (`StartMessageMoveTask`) brings it back once
//!   `botline provision --backend aws` has run.
//!
//! Not reported: updates stored (their message is deleted already) and messages the claim step
//! dropped (done before, or a spare copy). A record that cannot even be read is reported.
//!
//! On a FIFO queue one event may hold several messages of one group (chat), in order: they are
//! claimed and processed one after another, each once the one before is finished, so each is
//! its chat's head when claimed; groups run concurrently. On a standard queue the claim step
//! takes the whole batch, leases each chat's head, and the leased updates run concurrently.

use crate::Error;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use botline::config::{ConfigError, Settings};
use botline::handler::Bot;
use botline::schema::{SchemaWatch, Verdict};
use botline::sender::Sender;
use botline::telegram::Telegram;
use botline::worker::Processor;
use botline_aws::{AwsBackend, Claimed, QueueMessage, Receipt};
use botline_core::{Backend, Delivery, Handling};
use botline_registrar::Registrar;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinSet;

/// How long a cold start waits for Telegram to say who the bot is.
const GET_ME_TIMEOUT: Duration = Duration::from_secs(3);
/// Time kept free at the end of an invocation, for the answer and the metrics.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);
/// How long the replies may take when the event has no deadline (in tests).
const DEFAULT_DRAIN: Duration = Duration::from_secs(10);
/// The `source` and `detail-type` of the event an EventBridge rule's schedule sends.
const SCHEDULE_SOURCE: &str = "aws.events";
const SCHEDULE_DETAIL_TYPE: &str = "Scheduled Event";

/// What the worker function is invoked with.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WorkerEvent {
    /// Messages of the queue, from the event source mapping.
    Batch(SqsEvent),
    /// A tick of the schedule: send what is due.
    Schedule(EventBridgeEvent),
}

impl WorkerEvent {
    /// Reads an invocation's payload: an SQS event (it has `Records`), or an EventBridge
    /// scheduled event. An EventBridge event of another kind is refused too: nothing but the
    /// schedule is meant to invoke the worker.
    pub fn from_payload(payload: Value) -> Result<Self, Error> {
        let keys = match &payload {
            Value::Object(map) => map.keys().cloned().collect(),
            _ => Vec::new(),
        };
        match serde_json::from_value(payload) {
            Ok(WorkerEvent::Schedule(event))
                if event.source != SCHEDULE_SOURCE || event.detail_type != SCHEDULE_DETAIL_TYPE =>
            {
                Err(Error::NotASchedule {
                    event_source: event.source,
                    detail_type: event.detail_type,
                })
            }
            Ok(event) => Ok(event),
            Err(_) => Err(Error::UnknownEvent { keys }),
        }
    }
}

/// The worker function's answer: the batch item failures of an SQS event, or what a tick did.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Answer {
    /// The messages Lambda is to leave on the queue.
    Batch(SqsBatchResponse),
    Tick(Ticked),
}

/// What a tick did (the answer goes back to EventBridge, which keeps nothing of it; for the
/// tests and the logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Ticked {
    /// Bot API calls made, accepted or not.
    pub calls: usize,
}

/// The worker function's state, kept across the invocations of one execution environment.
#[derive(Debug)]
pub struct WorkerFunction {
    aws: AwsBackend,
    /// The backend, the handlers, the registration backend, the lease and the timeouts.
    processor: Processor,
    telegram: Option<Telegram>,
    sender: Option<Sender>,
    /// What the bot knows of itself, once known (configured, or from getMe).
    handling: Mutex<Option<Handling>>,
    configured_username: Option<String>,
    /// The bot's own webhook handler, when `BOTLINE_HANDLER_URL` is set: every update the
    /// bot's Rust handlers leave goes there.
    forward: Option<botline::forward::Forward>,
    /// The backend's schema: while something is missing no message is claimed.
    schema: SchemaWatch,
}

impl WorkerFunction {
    /// The worker on `backend`, with the bot token, username, registration backend, call rate
    /// and handler URL of `settings`.
    pub fn new(settings: &Settings, backend: AwsBackend) -> Result<Self, ConfigError> {
        let telegram = settings.telegram()?;
        let shared: Arc<dyn Backend> = Arc::new(backend.clone());
        // Telegram counts the bot's calls, not one environment's: the limits are Redis's
        // buckets when BOTLINE_REDIS_URL is set, else DynamoDB's, in the outbox table.
        let limits = Arc::new(settings.telegram_limits_or(Some(Arc::new(backend.limiter())))?);
        let sender = telegram.clone().map(|telegram| Sender {
            backend: Arc::clone(&shared),
            telegram,
            limits,
            new_calls: Arc::new(Notify::new()),
        });
        let known = (settings.bot_username.is_some() || telegram.is_none()).then(|| Handling {
            bot_username: settings.bot_username.clone(),
        });
        let worker = Self {
            schema: SchemaWatch::new(Arc::clone(&shared)),
            aws: backend,
            processor: Processor::new(shared, settings).with_registrar(settings.registrar()?),
            forward: settings.forward()?,
            telegram,
            sender,
            handling: Mutex::new(known),
            configured_username: settings.bot_username.clone(),
        };
        // No Rust handlers of its own: Botline's records, `/register`, and forwarding if set.
        Ok(worker.with_bot(Bot::new()))
    }

    /// Runs `bot`'s handlers on every update, as `serve` does with them.
    pub fn with_bot(mut self, bot: Bot) -> Self {
        let bot = match self.forward.clone() {
            Some(forward) => bot.forward_to(forward),
            None => bot,
        };
        self.processor = self.processor.with_bot(bot);
        self
    }

    /// Replaces the registration backend of the settings (tests, or a backend of one's own).
    pub fn with_registrar(mut self, registrar: Option<Arc<dyn Registrar>>) -> Self {
        self.processor = self.processor.with_registrar(registrar);
        self
    }

    /// Handles one SQS event; `deadline` is the invocation's (the replies stop before it).
    pub async fn handle(&self, event: SqsEvent, deadline: Option<Instant>) -> SqsBatchResponse {
        if let Verdict::Missing(missing) = self.schema.verdict().await {
            tracing::error!(error = %missing, records = event.records.len(), "the batch is left on the queue");
            return batch_failures(
                event
                    .records
                    .into_iter()
                    .filter_map(|record| record.message_id)
                    .collect(),
            );
        }
        let handling = self.handling().await;
        let mut failures = Vec::new();
        let mut messages = Vec::with_capacity(event.records.len());
        for record in event.records {
            match message(&record) {
                Some(message) => messages.push((group(&record), message)),
                None => {
                    tracing::error!(message_id = ?record.message_id, "an SQS record without an id, a receipt handle or a body");
                    failures.extend(record.message_id);
                }
            }
        }
        let received = messages.len();
        let all: Vec<String> = messages.iter().map(|(_, m)| m.message_id.clone()).collect();
        let mut lanes = JoinSet::new();
        if self.aws.settings().is_fifo() {
            // One lane per message group, in the event's order.
            let mut groups: Vec<(Option<String>, Vec<QueueMessage>)> = Vec::new();
            for (group, message) in messages {
                match groups
                    .iter_mut()
                    .find(|(g, _)| *g == group && group.is_some())
                {
                    Some((_, lane)) => lane.push(message),
                    None => groups.push((group, vec![message])),
                }
            }
            for (_, lane) in groups {
                let this = self.lane(handling.clone());
                lanes.spawn(async move {
                    let mut outcome = Outcome::default();
                    for message in lane {
                        outcome.merge(this.run(vec![message]).await);
                    }
                    outcome
                });
            }
        } else {
            let this = self.lane(handling);
            let batch = messages.into_iter().map(|(_, m)| m).collect();
            lanes.spawn(async move { this.run(batch).await });
        }
        let mut outcome = Outcome::default();
        while let Some(done) = lanes.join_next().await {
            match done {
                Ok(done) => outcome.merge(done),
                Err(e) => {
                    tracing::error!(error = %e, "a lane of the batch panicked");
                    outcome.panicked = true;
                }
            }
        }
        if outcome.panicked {
            // Which messages the panic left unfinished is not known: the whole batch is reported.
            // Messages of stored updates are deleted already (reporting them changes nothing),
            // and any copy that comes back is dropped by the claim step.
            failures.extend(all);
        } else {
            failures.extend(outcome.failed.iter().cloned());
        }
        tracing::info!(
            received,
            stored = outcome.stored,
            dropped = outcome.dropped,
            reported_failed = failures.len(),
            "batch handled"
        );
        let made = self.send_due(deadline).await;
        if made > 0 {
            tracing::info!(calls = made, "replies sent");
        }
        batch_failures(failures)
    }

    /// Handles one invocation: an SQS batch or a tick of the schedule ([`WorkerEvent`]).
    /// `deadline` is the invocation's.
    pub async fn invoke(&self, payload: Value, deadline: Option<Instant>) -> Result<Answer, Error> {
        match WorkerEvent::from_payload(payload) {
            Ok(WorkerEvent::Batch(event)) => Ok(Answer::Batch(self.handle(event, deadline).await)),
            Ok(WorkerEvent::Schedule(_)) => Ok(Answer::Tick(self.tick(deadline).await)),
            Err(e) => {
                tracing::error!(error = %e, "an event the worker does not take");
                Err(e)
            }
        }
    }

    /// A tick of the schedule: makes the calls that are due (reminders, and calls whose
    /// `retry_after` or backoff ended), until none is left or the deadline comes.
    pub async fn tick(&self, deadline: Option<Instant>) -> Ticked {
        if self.sender.is_none() {
            tracing::warn!("no bot token: the calls due wait in the outbox");
        }
        let calls = self.send_due(deadline).await;
        if calls > 0 {
            tracing::info!(calls, "calls due sent on the tick");
        } else {
            tracing::debug!("tick: nothing due");
        }
        Ticked { calls }
    }

    /// Makes the outbox's calls that are due, before `deadline` (less a margin for the answer);
    /// returns how many were made.
    async fn send_due(&self, deadline: Option<Instant>) -> usize {
        let Some(sender) = &self.sender else {
            return 0;
        };
        let deadline = deadline
            .map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or(d))
            .unwrap_or_else(|| Instant::now() + DEFAULT_DRAIN);
        sender.drain(deadline).await
    }

    /// What the bot knows of itself: configured, or asked of Telegram once per execution
    /// environment. When Telegram does not answer in time the batch is handled with the
    /// configured username (none: only commands without `@botname` are taken) and Telegram is
    /// asked again on the next invocation. Set `BOTLINE_BOT_USERNAME` to avoid the call.
    async fn handling(&self) -> Handling {
        let mut known = self.handling.lock().await;
        if let Some(handling) = &*known {
            return handling.clone();
        }
        let fallback = Handling {
            bot_username: self.configured_username.clone(),
        };
        let Some(telegram) = &self.telegram else {
            return fallback;
        };
        match tokio::time::timeout(
            GET_ME_TIMEOUT,
            telegram.identify(self.configured_username.as_deref()),
        )
        .await
        {
            Ok(Ok(handling)) => {
                *known = Some(handling.clone());
                handling
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "getMe failed; this batch takes only commands without @botname");
                fallback
            }
            Err(_) => {
                tracing::warn!(
                    "getMe did not answer in time; this batch takes only commands without @botname"
                );
                fallback
            }
        }
    }

    fn lane(&self, handling: Handling) -> Lane {
        Lane {
            aws: self.aws.clone(),
            processor: self.processor.clone(),
            handling,
        }
    }
}

/// What a lane needs, owned, to run on its own task.
struct Lane {
    aws: AwsBackend,
    processor: Processor,
    handling: Handling,
}

impl Lane {
    /// Claims `messages` and processes the leased updates concurrently.
    async fn run(&self, messages: Vec<QueueMessage>) -> Outcome {
        let Claimed {
            deliveries,
            held,
            dropped,
            failed,
        } = self.aws.claim(messages).await;
        let mut outcome = Outcome {
            dropped: dropped.len(),
            failed: held,
            ..Outcome::default()
        };
        for (message_id, error) in failed {
            tracing::warn!(message_id = %message_id, error = %error, "the claim step could not decide a message; it comes back");
            outcome.failed.push(message_id);
        }
        let mut running = JoinSet::new();
        for delivery in deliveries {
            let processor = self.processor.clone();
            let handling = self.handling.clone();
            running.spawn(async move {
                let message_id = message_id(&delivery);
                let processed = processor.process(&handling, delivery).await;
                (message_id, processed.stored)
            });
        }
        while let Some(done) = running.join_next().await {
            match done {
                Ok((_, true)) => outcome.stored += 1,
                Ok((message_id, false)) => outcome.failed.push(message_id),
                Err(e) => {
                    // Which message it was is lost with the task: the caller reports the batch.
                    tracing::error!(error = %e, "processing an update panicked");
                    outcome.panicked = true;
                }
            }
        }
        outcome
    }
}

/// What became of a lane's messages.
#[derive(Debug, Default)]
struct Outcome {
    stored: usize,
    dropped: usize,
    /// Message ids to report as batch item failures.
    failed: Vec<String>,
    panicked: bool,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.stored += other.stored;
        self.dropped += other.dropped;
        self.failed.extend(other.failed);
        self.panicked |= other.panicked;
    }
}

/// The SQS message a delivery came in.
fn message_id(delivery: &Delivery) -> String {
    Receipt::parse(&delivery.receipt)
        .map_or_else(|| delivery.receipt.clone(), |receipt| receipt.message_id)
}

/// An event's record as the claim step takes it.
fn message(record: &SqsMessage) -> Option<QueueMessage> {
    Some(QueueMessage {
        message_id: record.message_id.clone()?,
        receipt_handle: record.receipt_handle.clone()?,
        body: record.body.clone()?,
        receive_count: record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|count| count.parse().ok())
            .unwrap_or(1),
        visible_until_ms: None,
    })
}

/// A FIFO record's message group.
fn group(record: &SqsMessage) -> Option<String> {
    record.attributes.get("MessageGroupId").cloned()
}

fn batch_failures(ids: Vec<String>) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = ids
        .into_iter()
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    response
}

/// The worker function's `main` with `bot`'s handlers: reads the settings and secrets, opens the
/// backend, and serves Lambda's invocations until the environment ends. The `botline-worker`
/// binary is this with the built-in `/register` only; a bot's own worker function is one line:
///
/// ```no_run
/// # async fn handlers() -> Result<(), lambda_runtime::Error> {
/// botline_lambda::worker::run(botline::handler::Bot::new() /* .command("start", start) */).await
/// # }
/// ```
pub async fn run(bot: Bot) -> Result<(), lambda_runtime::Error> {
    crate::init_logging();
    let metrics = crate::init_metrics()?;
    let mut settings = crate::settings()?;
    if let Some(store) = botline::aws::SecretStore::from_env().await {
        store.fill(&mut settings).await?;
    }
    let backend = botline::aws::open_backend(settings.queue_config()).await?;
    let worker = Arc::new(WorkerFunction::new(&settings, backend)?.with_bot(bot));
    if let Verdict::Missing(missing) = worker.schema.check().await {
        tracing::error!(error = %missing, "every batch is left on the queue until it is provisioned");
    }
    tracing::info!(version = botline::version(), "worker function ready");
    metrics_cloudwatch_embedded::lambda::handler::run(
        metrics,
        move |event: lambda_runtime::LambdaEvent<Value>| {
            let worker = Arc::clone(&worker);
            async move {
                let deadline = invocation_deadline(event.context.deadline);
                worker
                    .invoke(event.payload, deadline)
                    .await
                    .map_err(lambda_runtime::Error::from)
            }
        },
    )
    .await
}

/// The invocation's deadline (unix milliseconds) on this process's monotonic clock.
fn invocation_deadline(unix_ms: u64) -> Option<Instant> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    Some(Instant::now() + Duration::from_millis(unix_ms.checked_sub(now_ms)?))
}
