//! The worker: leases updates from the queue, turns each into its records, and stores them
//! together with the mark that it is done.
//!
//! The queue hands out only the oldest unfinished update of each chat, so one chat's updates are
//! processed one at a time in `update_id` order while different chats run concurrently, up to
//! `concurrency` at once. A failed attempt is reported back and retried after a backoff; after
//! the last attempt the update is a dead letter.

use crate::handler::{Bot, RetryAfter, Seen};
use crate::metrics as names;
use crate::pump::Pump;
use botline_core::{Applied, Backend, BackendError, Delivery, Failed, Handling, Records, clock};
use botline_registrar::{Registrar, RegistrationRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How often the worker looks for work when nothing woke it (retries whose backoff ended,
/// leases that expired).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The longest a handler's [`RetryAfter`] holds its update (and with it its chat) back.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How often expired dedupe ids and sessions are purged.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Worker {
    /// How each update is processed: the backend, the handlers, the lease and the timeouts.
    pub processor: Processor,
    /// Updates processed at once.
    pub concurrency: usize,
    /// Notified when an update was queued (by the webhook or the poller): there may be work.
    pub new_update: Arc<Notify>,
    /// What the bot knows of itself, for its commands. `None` until getMe answered: updates
    /// wait in the queue rather than be handled without the bot's username.
    pub handling: watch::Receiver<Option<Handling>>,
    /// Notifies the sender when processing wrote outbox calls.
    pub new_calls: Arc<Notify>,
}

/// Everything one attempt at an update needs besides the update and the bot's identity: the
/// same for `serve`'s worker and the worker Lambda function.
#[derive(Debug, Clone)]
pub struct Processor {
    pub backend: Arc<dyn Backend>,
    /// Decides token redemptions (`/register`) outside the store (a database function), when
    /// configured.
    pub registrar: Option<Arc<dyn Registrar>>,
    /// The bot's own handlers.
    pub bot: Bot,
    /// The queue's lease ([`QueueConfig::lease`](botline_core::QueueConfig)): an attempt
    /// extends it every third of it for as long as it runs.
    pub lease: Duration,
    /// The longest the bot's handler may take at one update: a slower one is stopped and its
    /// attempt fails (retried, then dead-lettered), its effects dropped.
    pub handler_timeout: Duration,
}

impl Processor {
    /// A processor with the built-in handlers only (`/register`), with the lease and timeouts of `settings`.
    pub fn new(backend: Arc<dyn Backend>, settings: &crate::config::Settings) -> Self {
        Self {
            backend,
            registrar: None,
            bot: Bot::new(),
            lease: settings.lease,
            handler_timeout: settings.handler_timeout,
        }
    }

    /// Runs `bot`'s handlers on every update.
    pub fn with_bot(mut self, bot: Bot) -> Self {
        self.bot = bot;
        self
    }

    /// Asks `registrar` about token redemptions (`/register`) instead of the store.
    pub fn with_registrar(mut self, registrar: Option<Arc<dyn Registrar>>) -> Self {
        self.registrar = registrar;
        self
    }
}

impl Worker {
    /// Runs until `shutdown`; then finishes the updates in hand and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if self.handling.borrow().is_none() {
            tracing::info!("waiting for Telegram to say who the bot is (getMe) before processing");
            tokio::select! {
                known = self.handling.wait_for(Option::is_some) => if known.is_err() { return },
                () = shutdown.cancelled() => return,
            }
        }
        let pump = Pump {
            slots: self.concurrency,
            poll_interval: POLL_INTERVAL,
            wake: Arc::clone(&self.new_update),
            failing: "cannot receive updates",
        };
        let backend = Arc::clone(&self.processor.backend);
        let mut in_hand = pump
            .run(
                &shutdown,
                |free| {
                    let backend = Arc::clone(&backend);
                    async move { backend.receive(free).await }
                },
                |delivery| {
                    let processor = self.processor.clone();
                    let handling = self.handling.borrow().clone().unwrap_or_default();
                    let new_calls = Arc::clone(&self.new_calls);
                    async move {
                        if processor.process(&handling, delivery).await.wrote_calls {
                            new_calls.notify_one();
                        }
                    }
                },
            )
            .await;
        let unfinished = in_hand.len();
        if unfinished > 0 {
            tracing::info!(updates = unfinished, "finishing the updates in hand");
        }
        while in_hand.join_next().await.is_some() {}
    }
}

/// With a registration backend outside the store, asks it about the token the handler
/// redeems and writes the answer for its verdict to the outbox with the records. (Without one,
/// the store decides inside the transaction that writes the records.)
///
/// The backend is called before the records are committed: if the process dies in between, the
/// update is processed again and the backend asked again, so its function should be idempotent
/// for the same user and token (the example function is). A backend that cannot answer fails
/// the attempt, which is retried with the queue's backoff and dead-lettered after the last one.
async fn decide_redemption(
    registrar: Option<&dyn Registrar>,
    records: &mut Records,
) -> Result<(), BackendError> {
    let Some(registrar) = registrar else {
        return Ok(());
    };
    let Some(redemption) = records.redemption.take() else {
        return Ok(());
    };
    let request = RegistrationRequest {
        username: &redemption.username,
        token: redemption.token.expose(),
        telegram_user_id: redemption.telegram_user_id,
        chat_id: redemption.chat_id,
    };
    match registrar.register(&request).await {
        Ok(registered) => {
            records
                .outbox
                .insert(0, redemption.answer(registered).clone());
            Ok(())
        }
        Err(e) => {
            if !e.is_retryable() {
                tracing::error!(error = %e, "the registration backend is misconfigured");
            }
            Err(BackendError::Unavailable(e.to_string()))
        }
    }
}

/// Forgets dedupe ids past their window and purges expired sessions, now and every ten minutes,
/// until `shutdown`.
pub async fn housekeeping(backend: Arc<dyn Backend>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tokio::select! {
            _ = every.tick() => {
                if let Err(e) = backend.housekeeping().await {
                    tracing::warn!(error = %e, "housekeeping failed");
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

/// Why an attempt failed: the text is the reason the queue keeps (and the DLQ shows).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the handler failed: {0}")]
    Handler(crate::handler::HandlerError),
    #[error("the handler did not finish within {0}")]
    Timeout(humantime::FormattedDuration),
}

impl AttemptError {
    /// How long the handler asked the update to wait ([`RetryAfter`]), at most an hour.
    fn retry_after(&self) -> Duration {
        match self {
            AttemptError::Handler(e) => e
                .downcast_ref::<RetryAfter>()
                .map_or(Duration::ZERO, |r| r.after.min(MAX_RETRY_AFTER)),
            _ => Duration::ZERO,
        }
    }
}

/// How one attempt at one update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// The update is finished: its records are stored (now or before).
    pub stored: bool,
    /// The attempt wrote outbox calls for the sender.
    pub wrote_calls: bool,
}

impl Processor {
    /// One attempt at one update: its records are stored and the delivery acknowledged, or
    /// the failure is reported to the queue (retried after a backoff, or dead-lettered). The
    /// lease is extended while the attempt runs; should it be lost all the same (the backend
    /// was away for a whole lease), the attempt stops and leaves the update to its next holder.
    pub async fn process(&self, handling: &Handling, delivery: Delivery) -> Processed {
        metrics::counter!(names::PROCESSING_ATTEMPTS).increment(1);
        let backend = &self.backend;
        let update = &delivery.update;
        let started = std::time::Instant::now();
        let mut calls = false;
        let attempt = async {
            let mut records = handling
                .records(update, clock::now_ms())
                .map_err(|corrupt| BackendError::Corrupt(corrupt.to_string()))?;
            self.run_handlers(handling, &delivery, &mut records).await?;
            decide_redemption(self.registrar.as_deref(), &mut records).await?;
            calls = !records.outbox.is_empty() || records.redemption.is_some();
            let applied = backend.apply(&delivery, &records).await?;
            if !backend.apply_acknowledges() {
                backend.ack(&delivery).await?;
            }
            Ok::<_, AttemptError>(applied)
        };
        let result = self.holding_lease(&delivery, attempt).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(applied) => {
                let outcome = match applied {
                    Applied::Written => "written",
                    Applied::AlreadyDone => "already_done",
                };
                let stored_after_ms = clock::now_ms().saturating_sub(update.received_at_ms);
                metrics::counter!(names::UPDATES_PROCESSED, "outcome" => outcome).increment(1);
                metrics::histogram!(names::RECEIPT_TO_STORED_SECONDS)
                    .record(stored_after_ms as f64 / 1000.0);
                tracing::info!(
                    update_id = update.update_id.0,
                    kind = %update.kind,
                    chat_id = update.order_key.chat().map(|c| c.0),
                    attempt = delivery.attempt,
                    outcome,
                    latency_ms,
                    stored_after_ms,
                    "processed"
                );
                Processed {
                    stored: true,
                    wrote_calls: calls,
                }
            }
            Err(e) => {
                metrics::counter!(names::PROCESSING_FAILURES).increment(1);
                let failed = match &e {
                    // Its next holder has it: a failure report would be refused as well.
                    AttemptError::Backend(BackendError::LeaseLost(_)) => Err(e.to_string()),
                    _ => backend
                        .fail_after(&delivery, &e.to_string(), e.retry_after())
                        .await
                        .map_err(|e| e.to_string()),
                };
                let outcome = match &failed {
                    Ok(Failed::Retrying { .. }) => "retrying",
                    Ok(Failed::DeadLettered) => {
                        metrics::counter!(names::DEAD_LETTERED).increment(1);
                        "dead_lettered"
                    }
                    // The lease will expire and the update will be handed out again.
                    Err(_) => "lease_left_to_expire",
                };
                tracing::warn!(
                    update_id = update.update_id.0,
                    kind = %update.kind,
                    chat_id = update.order_key.chat().map(|c| c.0),
                    attempt = delivery.attempt,
                    outcome,
                    latency_ms,
                    error = %e,
                    "processing failed"
                );
                Processed {
                    stored: false,
                    wrote_calls: false,
                }
            }
        }
    }

    /// Runs `attempt`, extending the delivery's lease every third of a lease until it ends. A
    /// lease that is lost all the same stops the attempt: its effects are not committed.
    async fn holding_lease<T>(
        &self,
        delivery: &Delivery,
        attempt: impl Future<Output = Result<T, AttemptError>>,
    ) -> Result<T, AttemptError> {
        let every = (self.lease / 3).max(Duration::from_millis(100));
        let keeper = async {
            loop {
                tokio::time::sleep(every).await;
                match self.backend.extend(delivery).await {
                    Ok(()) => metrics::counter!(names::LEASE_EXTENSIONS).increment(1),
                    Err(lost @ BackendError::LeaseLost(_)) => return lost,
                    // Tried again at the next turn; the lease holds a while yet.
                    Err(e) => tracing::warn!(
                        update_id = delivery.update.update_id.0,
                        error = %e,
                        "could not extend a lease"
                    ),
                }
            }
        };
        tokio::select! {
            biased;
            result = attempt => result,
            lost = keeper => Err(lost.into()),
        }
    }

    /// Runs the bot's handler for the update, if one takes it, within the handler timeout, and
    /// adds its effects to the records. An update that is already done is not handled again:
    /// its effects were committed once.
    async fn run_handlers(
        &self,
        handling: &Handling,
        delivery: &Delivery,
        records: &mut Records,
    ) -> Result<(), AttemptError> {
        if self.bot.is_empty() {
            return Ok(());
        }
        let update = &delivery.update;
        // The handler reads the body as stored: with `/register` tokens redacted.
        let redacted = records
            .redacted_raw
            .as_ref()
            .map(|raw| botline_core::QueuedUpdate {
                raw: raw.clone(),
                ..update.clone()
            });
        let seen = Seen {
            update: redacted.as_ref().unwrap_or(update),
            payload: &records.event.payload,
            typed: redacted.is_some().then_some(update),
        };
        let handled = self.bot.handle(
            seen,
            delivery.attempt,
            handling.bot_username.as_deref(),
            Arc::clone(&self.backend),
        );
        match tokio::time::timeout(self.handler_timeout, handled).await {
            Ok(Ok(effects)) => {
                effects.into_records(&update.entry_id, records);
                Ok(())
            }
            Ok(Err(e)) => {
                metrics::counter!(names::HANDLER_FAILURES, "reason" => "error").increment(1);
                Err(AttemptError::Handler(e))
            }
            Err(_) => {
                metrics::counter!(names::HANDLER_FAILURES, "reason" => "timeout").increment(1);
                Err(AttemptError::Timeout(humantime::format_duration(
                    self.handler_timeout,
                )))
            }
        }
    }
}
