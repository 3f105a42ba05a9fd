//! The worker: leases updates from the queue, turns each into its records, and stores them
//! together with the mark that it is done.
//!
//! The queue hands out only the oldest unfinished update of each chat, so one chat's updates are
//! processed one at a time in `update_id` order while different chats run concurrently, up to
//! `concurrency` at once. A failed attempt is reported back and retried after a backoff; after
//! the last attempt the update is a dead letter.

use crate::handler::Bot;
use crate::metrics as names;
use botline_core::{Applied, Backend, BackendError, Delivery, Failed, Handling, Records, clock};
use botline_registrar::{Registrar, RegistrationRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often the worker looks for work when nothing woke it (retries whose backoff ended,
/// leases that expired).
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often expired dedupe ids and sessions are purged.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Worker {
    pub backend: Arc<dyn Backend>,
    /// Updates processed at once.
    pub concurrency: usize,
    /// Notified when there may be new work.
    pub wake: Arc<Notify>,
    /// What the bot knows of itself, for its commands. `None` until getMe answered: updates
    /// wait in the queue rather than be handled without the bot's username.
    pub handling: watch::Receiver<Option<Handling>>,
    /// Notified when processing wrote outbox calls.
    pub outbox: Arc<Notify>,
    /// Decides `/register` outside the store (a database function), when configured.
    pub registrar: Option<Arc<dyn Registrar>>,
    /// The bot's own handlers.
    pub bot: Bot,
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
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut in_hand = JoinSet::new();
        let mut backoff = Duration::ZERO;
        while !shutdown.is_cancelled() {
            let free = slots.available_permits();
            let received = if free == 0 {
                Ok(Vec::new())
            } else {
                self.backend.receive(free).await
            };
            let idle = match received {
                Ok(deliveries) => {
                    backoff = Duration::ZERO;
                    let idle = deliveries.is_empty();
                    for delivery in deliveries {
                        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                            break;
                        };
                        let (backend, wake) = (Arc::clone(&self.backend), Arc::clone(&self.wake));
                        let handling = self.handling.borrow().clone().unwrap_or_default();
                        let outbox = Arc::clone(&self.outbox);
                        let registrar = self.registrar.clone();
                        let bot = self.bot.clone();
                        in_hand.spawn(async move {
                            let processed =
                                process(&backend, &handling, registrar.as_deref(), &bot, delivery)
                                    .await;
                            if processed.wrote_calls {
                                outbox.notify_one();
                            }
                            drop(slot);
                            // The chat's next update may now be handed out.
                            wake.notify_one();
                        });
                    }
                    idle
                }
                Err(e) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot receive updates");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => {}
                    }
                    continue;
                }
            };
            if idle || slots.available_permits() == 0 {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                    Some(_) = in_hand.join_next() => {}
                    () = shutdown.cancelled() => {}
                }
            }
            while in_hand.try_join_next().is_some() {}
        }
        let unfinished = in_hand.len();
        if unfinished > 0 {
            tracing::info!(updates = unfinished, "finishing the updates in hand");
        }
        while in_hand.join_next().await.is_some() {}
    }
}

/// With a registration backend outside the store, asks it about a `/register` attempt and turns
/// the answer into the reply, written to the outbox with the records. (Without one, the store
/// decides inside the transaction that writes the records.)
///
/// The backend is called before the records are committed: if the process dies in between, the
/// update is processed again and the backend asked again, so its function should be idempotent
/// for the same user and token (the example function is). A backend that cannot answer fails
/// the attempt, which is retried with the queue's backoff and dead-lettered after the last one.
async fn decide_registration(
    registrar: Option<&dyn Registrar>,
    records: &mut Records,
) -> Result<(), BackendError> {
    let Some(registrar) = registrar else {
        return Ok(());
    };
    let Some(attempt) = records.registration.take() else {
        return Ok(());
    };
    let registered = match attempt.telegram_user_id {
        Some(telegram_user_id) => {
            let request = RegistrationRequest {
                username: &attempt.username,
                token: attempt.token.expose(),
                telegram_user_id,
                chat_id: attempt.chat_id,
            };
            match registrar.register(&request).await {
                Ok(registered) => registered,
                Err(e) => {
                    if !e.is_retryable() {
                        tracing::error!(error = %e, "the registration backend is misconfigured");
                    }
                    records.registration = Some(attempt);
                    return Err(BackendError::Unavailable(e.to_string()));
                }
            }
        }
        // A message with no sender (a channel post) cannot register anyone.
        None => false,
    };
    records.outbox.insert(0, attempt.reply(registered));
    Ok(())
}

/// Runs the bot's handler for the update, if one takes it, and adds its effects to the records.
/// An update that is already done is not handled again: its effects were committed once.
async fn run_handlers(
    bot: &Bot,
    backend: &Arc<dyn Backend>,
    handling: &Handling,
    delivery: &Delivery,
    records: &mut Records,
) -> Result<(), BackendError> {
    if bot.is_empty() {
        return Ok(());
    }
    let update = &delivery.update;
    // The handler reads the body as stored: with `/register` tokens redacted.
    let redacted;
    let seen = match &records.redacted_raw {
        Some(raw) => {
            redacted = botline_core::QueuedUpdate {
                raw: raw.clone(),
                ..update.clone()
            };
            &redacted
        }
        None => update,
    };
    match bot
        .handle(seen, handling.bot_username.as_deref(), Arc::clone(backend))
        .await
    {
        Ok(effects) => {
            effects.into_records(&update.entry_id, records);
            Ok(())
        }
        Err(e) => {
            metrics::counter!(names::HANDLER_FAILURES).increment(1);
            Err(BackendError::Unavailable(format!(
                "the handler failed: {e}"
            )))
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

/// How one attempt at one update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// The update is finished: its records are stored (now or before).
    pub stored: bool,
    /// The attempt wrote outbox calls for the sender.
    pub wrote_calls: bool,
}

/// One attempt at one update: its records are stored and the delivery acknowledged, or the
/// failure is reported to the queue (retried after a backoff, or dead-lettered).
pub async fn process(
    backend: &Arc<dyn Backend>,
    handling: &Handling,
    registrar: Option<&dyn Registrar>,
    bot: &Bot,
    delivery: Delivery,
) -> Processed {
    metrics::counter!(names::PROCESSING_ATTEMPTS).increment(1);
    let update = &delivery.update;
    let started = std::time::Instant::now();
    let mut calls = false;
    let result = match handling.records(update, clock::now_ms()) {
        Ok(mut records) => match decide_registration(registrar, &mut records).await {
            Ok(()) => match run_handlers(bot, backend, handling, &delivery, &mut records).await {
                Ok(()) => {
                    calls = !records.outbox.is_empty() || records.registration.is_some();
                    backend.apply(&delivery, &records).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        Err(corrupt) => Err(BackendError::Corrupt(corrupt.to_string())),
    };
    let result = match result {
        Ok(applied) if !backend.apply_acknowledges() => {
            backend.ack(&delivery).await.map(|()| applied)
        }
        other => other,
    };
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
            let failed = backend.fail(&delivery, &e.to_string()).await;
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
