//! `botline poll`: long polling with getUpdates into the same durable inbox as the webhook, for
//! a machine with no public HTTPS address.
//!
//! Telegram forgets an update once getUpdates is called with an `offset` past it, so the offset
//! moves only after every update of a batch is durable. A crash in between fetches the batch
//! again, and the queue's dedupe drops what it already has.

use crate::backoff::{Backoff, sleep_unless_stopped};
use crate::telegram::{CallError, Telegram};
use botline_core::{Backend, Enqueued, InboundUpdate};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Updates asked for per getUpdates call (Telegram's maximum).
const BATCH: u32 = 100;
/// The longest wait before a failed call or enqueue is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why polling stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(
        "Telegram refuses getUpdates while a webhook is set ({0}). Remove the webhook with \
         `botline webhook delete` (add --drop-pending-updates to discard what Telegram holds), \
         or keep the webhook and run `botline serve` instead"
    )]
    WebhookSet(String),
    #[error("another getUpdates client is polling for this bot ({0}); only one may poll at a time")]
    OtherPoller(String),
    #[error("{0}")]
    Unauthorized(CallError),
}

#[derive(Debug)]
pub struct Poller {
    pub backend: Arc<dyn Backend>,
    pub telegram: Telegram,
    /// Woken when an update was enqueued.
    pub new_update: Arc<Notify>,
    /// How long one getUpdates call waits for updates.
    pub timeout: Duration,
    /// How long one enqueue may take before it is tried again.
    pub ack_timeout: Duration,
}

impl Poller {
    /// Polls until `shutdown`, or until Telegram says polling cannot work.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), PollError> {
        let mut offset: Option<i64> = None;
        let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
        tracing::info!(api = self.telegram.base(), "polling Telegram for updates");
        loop {
            let batch = tokio::select! {
                batch = self.telegram.get_updates(offset, BATCH, self.timeout) => batch,
                () = shutdown.cancelled() => return Ok(()),
            };
            match batch {
                Ok(updates) => {
                    backoff.reset();
                    match self.make_durable(&updates, &shutdown).await {
                        Some(next) => offset = next.or(offset),
                        None => return Ok(()),
                    }
                }
                Err(CallError::Conflict { description }) => {
                    return Err(if description.to_lowercase().contains("webhook") {
                        PollError::WebhookSet(description)
                    } else {
                        PollError::OtherPoller(description)
                    });
                }
                Err(e @ CallError::Unauthorized { .. }) => return Err(PollError::Unauthorized(e)),
                Err(e) => {
                    let wait = match &e {
                        CallError::RetryAfter { after, .. } => *after,
                        _ => backoff.next(),
                    };
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "getUpdates failed");
                    if !sleep_unless_stopped(wait, &shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Enqueues every update of a batch, retrying until each is durable. The offset that
    /// confirms them (`Some(None)` for an empty batch), or `None` if shutdown came first.
    async fn make_durable(
        &self,
        updates: &[Box<RawValue>],
        shutdown: &CancellationToken,
    ) -> Option<Option<i64>> {
        let mut next = None;
        for raw in updates {
            let body = raw.get().as_bytes();
            match InboundUpdate::parse(body) {
                Ok(update) => {
                    let id = update.id.0;
                    self.enqueue(&update, shutdown).await?;
                    next = Some(next.map_or(id + 1, |n: i64| n.max(id + 1)));
                }
                Err(invalid) => {
                    // Telegram's own updates always parse; if one does not, it is skipped (its id,
                    // when readable, still moves the offset, or it would come back forever).
                    let id = serde_json::from_str::<serde_json::Value>(raw.get())
                        .ok()
                        .and_then(|v| v.get("update_id")?.as_i64());
                    tracing::error!(update_id = id, reason = %invalid, "getUpdates returned an update that is not valid; skipped");
                    if let Some(id) = id {
                        next = Some(next.map_or(id + 1, |n: i64| n.max(id + 1)));
                    }
                }
            }
        }
        Some(next)
    }

    async fn enqueue(&self, update: &InboundUpdate, shutdown: &CancellationToken) -> Option<()> {
        let mut backoff = Backoff::new(Duration::from_millis(200), MAX_BACKOFF);
        loop {
            let outcome =
                tokio::time::timeout(self.ack_timeout, self.backend.enqueue(update)).await;
            let reason = match outcome {
                Ok(Ok(enqueued)) => {
                    if enqueued == Enqueued::New {
                        self.new_update.notify_one();
                    }
                    tracing::info!(
                        update_id = update.id.0,
                        kind = %update.kind,
                        chat_id = update.order_key.chat().map(|c| c.0),
                        outcome = if enqueued == Enqueued::New { "accepted" } else { "duplicate" },
                        "polled"
                    );
                    return Some(());
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("not durable within {:?}", self.ack_timeout),
            };
            let wait = backoff.next();
            tracing::warn!(update_id = update.id.0, reason = %reason, retry_in_ms = wait.as_millis() as u64, "cannot make a polled update durable; the offset waits");
            if !sleep_unless_stopped(wait, shutdown).await {
                return None;
            }
        }
    }
}
