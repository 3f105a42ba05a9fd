//! The sender: makes the outbox's Bot API calls, each once, within Telegram's limits.
//!
//! Processing writes the calls an update asks for to the outbox in the transaction that marks
//! the update done, so a redelivered or retried update never adds a second call. The sender
//! leases the oldest pending call of each chat, makes it, and records the outcome:
//!
//! - accepted: done, with the id of the message Telegram sent;
//! - 429: the chat's next try waits `retry_after` (kept in the store, so a restart waits too),
//!   and when several chats are refused at once the whole sender pauses;
//! - 5xx, network errors, answers that are not Telegram's, a refused token: retried with
//!   exponential backoff;
//! - 400/403 (chat not found, bot blocked, message gone): failed for good, with the reason; so
//!   is a 404 for a method of [`OutboxAction::Call`] (the Bot API has no such method).
//!
//! Besides the replies of `/register` the outbox holds any Bot API method
//! ([`OutboxAction::Call`]); the methods that send a message (`send*`, `copyMessage`,
//! `forwardMessage`) count against the per-chat and per-group limits, the others only against
//! the overall one.
//!
//! Outgoing calls stay under Telegram's published limits: about 30 messages per second overall,
//! one per second in a chat, and 20 per minute in a group (here one every 3 s per group, which
//! can never exceed 20 in any minute). The limiters are governor's GCRA, in this process; with
//! `BOTLINE_REDIS_URL` they are buckets in Redis that every instance shares
//! ([`crate::shared_limits`]), and while Redis does not answer calls wait rather than go out
//! past the limits (a call that waited 30 s goes back to the outbox and is tried again).
//!
//! The window: if the process dies after Telegram accepted a call and before `call_done`
//! committed, the lease runs out and the call is made again. That one call may be sent twice;
//! no other path repeats one.

use crate::backoff::sleep_unless_stopped;
use crate::metrics as names;
use crate::pump::Pump;
use crate::telegram::{CallError, Telegram};
use botline_core::limits::{SHARED_LIMITER_ERRORS_METRIC, SharedLimiter, Taken, telegram_buckets};
use botline_core::{Backend, BackendError, OutboxAction, OutboxEntry, RetryPolicy};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a leased call is held before it is handed out again (longer than a call's timeout
/// plus the longest wait for a limiter).
pub const LEASE: Duration = Duration::from_secs(120);
/// Calls in flight at once (of different chats).
const CONCURRENCY: usize = 32;
/// How often the outbox is read when nothing woke the sender (retries whose wait ended).
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Backoff of a call that failed without a `retry_after`: 1 s × 2^(attempt-1), up to 5 min.
/// Only the waits are used: a call is retried until it is made or refused for good.
const CALL_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    backoff_base: Duration::from_secs(1),
    backoff_max: Duration::from_secs(300),
};
/// 429s from this many different chats within `FLOOD_WINDOW` mean the bot as a whole is limited.
const FLOOD_CHATS: usize = 2;
const FLOOD_WINDOW: Duration = Duration::from_secs(1);
/// How long a call waits for shared limits that do not answer before it goes back to the
/// outbox (well inside its [`LEASE`], so no other sender takes it meanwhile).
const SHARED_WAIT_MAX: Duration = Duration::from_secs(30);
/// Between two requests to shared limits that did not answer: 100 ms doubling up to 2 s.
const SHARED_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: u32::MAX,
    backoff_base: Duration::from_millis(100),
    backoff_max: Duration::from_secs(2),
};
/// Limiter entries of chats idle this long are forgotten.
const LIMITER_SHRINK_INTERVAL: Duration = Duration::from_secs(60);

/// Telegram's limits, as rate limiters: this process's own (governor), or, with
/// [`Limits::sharing`], buckets every instance shares ([`SharedLimiter`], Redis).
#[derive(Debug)]
pub struct Limits {
    per_second: u32,
    global: DefaultDirectRateLimiter,
    per_chat: DefaultKeyedRateLimiter<i64>,
    per_group: DefaultKeyedRateLimiter<i64>,
    shared: Option<Arc<dyn SharedLimiter>>,
    /// Whether the shared store failed on the last call that asked it.
    shared_down: AtomicBool,
}

/// The shared store did not answer for [`SHARED_WAIT_MAX`]; the call goes back to the outbox.
#[derive(Debug)]
struct LimitsAway(BackendError);

impl Limits {
    /// `per_second` overall, one message per second per chat, one per 3 s per group.
    pub fn telegram(per_second: NonZeroU32) -> Self {
        let one = NonZeroU32::MIN;
        Self {
            per_second: per_second.get(),
            global: RateLimiter::direct(Quota::per_second(per_second).allow_burst(per_second)),
            per_chat: RateLimiter::keyed(Quota::per_second(one).allow_burst(one)),
            per_group: RateLimiter::keyed(
                Quota::with_period(Duration::from_secs(3))
                    .unwrap_or_else(|| Quota::per_second(one))
                    .allow_burst(one),
            ),
            shared: None,
            shared_down: AtomicBool::new(false),
        }
    }

    /// The same limits, counted in `shared` for every instance of the bot
    /// ([`telegram_buckets`]: spaced evenly, with a little headroom, as calls from several
    /// instances meet at Telegram).
    pub fn sharing(mut self, shared: Arc<dyn SharedLimiter>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Waits until a call to `chat_id` may go out. Only messages count against the per-chat and
    /// per-group limits; every call counts against the overall one.
    async fn until_ready(&self, chat_id: i64, sends_message: bool) -> Result<(), LimitsAway> {
        let Some(shared) = &self.shared else {
            if sends_message {
                self.per_chat.until_key_ready(&chat_id).await;
                if chat_id < 0 {
                    self.per_group.until_key_ready(&chat_id).await;
                }
            }
            self.global.until_ready().await;
            return Ok(());
        };
        let buckets = telegram_buckets(self.per_second, chat_id, sends_message);
        let started = Instant::now();
        let mut failures = 0;
        loop {
            match shared.take(&buckets).await {
                Ok(taken) => {
                    if self.shared_down.swap(false, Ordering::Relaxed) {
                        tracing::info!("the shared rate limits answer again; calls go out");
                    }
                    match taken {
                        Taken::Yes => return Ok(()),
                        Taken::NotBefore(wait) => tokio::time::sleep(wait).await,
                    }
                }
                Err(error) => {
                    failures += 1;
                    metrics::counter!(SHARED_LIMITER_ERRORS_METRIC, "limiter" => "telegram")
                        .increment(1);
                    if !self.shared_down.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%error, "cannot reach the shared rate limits; calls wait until they answer");
                    }
                    if started.elapsed() >= SHARED_WAIT_MAX {
                        return Err(LimitsAway(error));
                    }
                    tokio::time::sleep(SHARED_RETRY.backoff(failures)).await;
                }
            }
        }
    }

    fn shrink(&self) {
        self.per_chat.retain_recent();
        self.per_group.retain_recent();
        self.per_chat.shrink_to_fit();
        self.per_group.shrink_to_fit();
    }
}

/// Makes the outbox's calls until shutdown.
#[derive(Debug, Clone)]
pub struct Sender {
    pub backend: Arc<dyn Backend>,
    pub telegram: Telegram,
    pub limits: Arc<Limits>,
    /// Notified when processing wrote calls.
    pub new_calls: Arc<Notify>,
}

/// When the bot as a whole was last told to slow down.
#[derive(Debug, Default)]
struct Flood {
    recent: Vec<(i64, Instant)>,
    paused_until: Option<Instant>,
}

impl Flood {
    /// Notes a 429 for `chat_id`; pauses everything when several chats got one at once.
    fn refused(&mut self, chat_id: i64, after: Duration) {
        let now = Instant::now();
        self.recent
            .retain(|(chat, at)| now.duration_since(*at) < FLOOD_WINDOW && *chat != chat_id);
        self.recent.push((chat_id, now));
        if self.recent.len() >= FLOOD_CHATS {
            let until = now + after;
            self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
            tracing::warn!(
                pause_ms = after.as_millis() as u64,
                "Telegram is limiting the bot as a whole; pausing all calls"
            );
        }
    }

    fn pause(&self) -> Option<Duration> {
        self.paused_until
            .and_then(|until| until.checked_duration_since(Instant::now()))
    }
}

impl Sender {
    /// Runs until `shutdown`; then finishes the calls in flight (or leaves them to their lease).
    pub async fn run(self, shutdown: CancellationToken) {
        let flood = Arc::new(Mutex::new(Flood::default()));
        let mut shrunk = Instant::now();
        let pump = Pump {
            slots: CONCURRENCY,
            poll_interval: POLL_INTERVAL,
            wake: Arc::clone(&self.new_calls),
            failing: "cannot read the outbox",
        };
        let mut in_flight = pump
            .run(
                &shutdown,
                |free| {
                    if shrunk.elapsed() > LIMITER_SHRINK_INTERVAL {
                        self.limits.shrink();
                        shrunk = Instant::now();
                    }
                    let pause = flood.lock().map_or(None, |f| f.pause());
                    let (backend, shutdown) = (Arc::clone(&self.backend), shutdown.clone());
                    async move {
                        // Telegram asked the bot to slow down: nothing is leased meanwhile.
                        if let Some(pause) = pause
                            && !sleep_unless_stopped(pause, &shutdown).await
                        {
                            return Ok(Vec::new());
                        }
                        backend.due_calls(free, LEASE).await
                    }
                },
                |entry| {
                    let (this, flood) = (self.clone(), Arc::clone(&flood));
                    async move { this.make(entry, &flood).await }
                },
            )
            .await;
        // Calls already on the wire finish; the rest keep their lease and go out after restart.
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
    }

    /// Makes the calls that are due now, until none is left or `deadline` comes; for a process
    /// that lives for one invocation (the worker Lambda, after a batch and on each tick of its
    /// schedule). Calls that have to wait (a reminder, a `retry_after`, a backoff) stay in the
    /// outbox for the next drain; a call still on the wire at the deadline keeps its lease and is
    /// made again once the lease ran out. Returns the calls made.
    pub async fn drain(&self, deadline: Instant) -> usize {
        let flood = Arc::new(Mutex::new(Flood::default()));
        let mut made = 0;
        loop {
            let pause = flood.lock().map_or(None, |f| f.pause());
            if let Some(pause) = pause {
                if Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
            if Instant::now() >= deadline {
                break;
            }
            let calls = match self.backend.due_calls(CONCURRENCY, LEASE).await {
                Ok(calls) if calls.is_empty() => break,
                Ok(calls) => calls,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox; its calls wait for the next drain");
                    break;
                }
            };
            made += calls.len();
            let mut in_flight = JoinSet::new();
            for entry in calls {
                let (this, flood) = (self.clone(), Arc::clone(&flood));
                in_flight.spawn(async move { this.make(entry, &flood).await });
            }
            let all = async { while in_flight.join_next().await.is_some() {} };
            if tokio::time::timeout_at(deadline.into(), all).await.is_err() {
                tracing::warn!(
                    "the drain's deadline came with calls on the wire; they keep their lease"
                );
                break;
            }
        }
        made
    }

    /// Makes one leased call and records how it went.
    async fn make(&self, entry: OutboxEntry, flood: &Mutex<Flood>) {
        let call = &entry.call;
        let chat_id = call.chat_id;
        let method = metric_method(call.action.method());
        if let Err(LimitsAway(error)) = self
            .limits
            .until_ready(chat_id, call.action.sends_message())
            .await
        {
            // Not made: back to the outbox, to be tried once the limits can be asked again.
            let reason = format!("not sent: the shared rate limits do not answer ({error})");
            if let Err(e) = self
                .backend
                .call_failed(&call.outbox_id, &reason, Some(SHARED_RETRY.backoff_max))
                .await
            {
                tracing::warn!(outbox_id = %call.outbox_id, error = %e, "cannot put a call back; its lease runs out");
            }
            return;
        }
        let started = Instant::now();
        let result = match &call.action {
            OutboxAction::SendMessage {
                text,
                reply_to_message_id,
            } => self
                .telegram
                .send_message(chat_id, text, *reply_to_message_id)
                .await
                .map(Some),
            OutboxAction::DeleteMessage { message_id } => self
                .telegram
                .delete_message(chat_id, *message_id)
                .await
                .map(|()| None),
            OutboxAction::Call { name, params } => self.telegram.call(name, params).await,
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let outcome = match &result {
            Ok(_) => "sent",
            Err(e) if e.is_retryable() => "retry",
            Err(_) => "refused",
        };
        names::count_telegram_call(method, outcome);
        let recorded = match result {
            Ok(message_id) => {
                metrics::histogram!(names::UPDATE_TO_REPLY_SECONDS).record(
                    (botline_core::clock::now_ms() - entry.created_at_ms).max(0) as f64 / 1000.0,
                );
                tracing::info!(
                    outbox_id = %call.outbox_id,
                    update_id = entry.update_id.0,
                    chat_id,
                    method = call.action.method(),
                    attempt = entry.attempt,
                    latency_ms,
                    outcome,
                    "telegram call"
                );
                self.backend.call_done(&call.outbox_id, message_id).await
            }
            Err(error) => {
                let retry_after = match &error {
                    CallError::RetryAfter { after, .. } => {
                        if let Ok(mut flood) = flood.lock() {
                            flood.refused(chat_id, *after);
                        }
                        Some(*after)
                    }
                    e if e.is_retryable() => Some(CALL_RETRY.backoff(entry.attempt)),
                    _ => None,
                };
                let log_level_warn = matches!(error, CallError::Unauthorized { .. });
                if log_level_warn {
                    tracing::error!(error = %error, "Telegram refused the bot token: check BOTLINE_BOT_TOKEN");
                }
                tracing::warn!(
                    outbox_id = %call.outbox_id,
                    update_id = entry.update_id.0,
                    chat_id,
                    method = call.action.method(),
                    attempt = entry.attempt,
                    latency_ms,
                    outcome,
                    retry_in_ms = retry_after.map(|d| d.as_millis() as u64),
                    error = %error,
                    "telegram call failed"
                );
                self.backend
                    .call_failed(&call.outbox_id, &error.to_string(), retry_after)
                    .await
            }
        };
        if let Err(e) = recorded {
            // The lease runs out and the call is made again: the documented window.
            tracing::warn!(outbox_id = %call.outbox_id, error = %e, "cannot record a call's outcome");
        }
    }
}

/// The `method` label of a call: the Bot API's name for the methods Telegram documents (as
/// of this build) that an outbox is likely to hold, `other` for the rest, so a handler's
/// unusual method names cannot grow the metric's label set without bound.
fn metric_method(method: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "sendMessage",
        "deleteMessage",
        "sendPhoto",
        "sendDocument",
        "sendVideo",
        "sendAudio",
        "sendVoice",
        "sendAnimation",
        "sendSticker",
        "sendLocation",
        "sendPoll",
        "sendMediaGroup",
        "sendChatAction",
        "copyMessage",
        "forwardMessage",
        "editMessageText",
        "editMessageCaption",
        "editMessageReplyMarkup",
        "answerCallbackQuery",
        "answerInlineQuery",
        "setMessageReaction",
        "pinChatMessage",
        "banChatMember",
        "restrictChatMember",
    ];
    KNOWN
        .iter()
        .find(|known| known.eq_ignore_ascii_case(method))
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(CALL_RETRY.backoff(1), Duration::from_secs(1));
        assert_eq!(CALL_RETRY.backoff(2), Duration::from_secs(2));
        assert_eq!(CALL_RETRY.backoff(4), Duration::from_secs(8));
        assert_eq!(CALL_RETRY.backoff(40), Duration::from_secs(300));
    }

    #[test]
    fn one_chat_refused_pauses_only_that_chat() {
        let mut flood = Flood::default();
        flood.refused(1, Duration::from_secs(5));
        flood.refused(1, Duration::from_secs(5));
        assert!(flood.pause().is_none());
        flood.refused(2, Duration::from_secs(5));
        assert!(flood.pause().is_some_and(|p| p > Duration::from_secs(4)));
    }

    #[tokio::test]
    async fn limits_hold_one_message_per_second_per_chat_and_one_per_three_in_a_group() {
        let limits = Limits::telegram(NonZeroU32::new(30).unwrap());
        limits.until_ready(7, true).await.unwrap();
        assert!(
            limits.per_chat.check_key(&7).is_err(),
            "a second message in the same second"
        );
        assert!(
            limits.per_chat.check_key(&8).is_ok(),
            "another chat is not held up"
        );
        limits.until_ready(-100, true).await.unwrap();
        let wait = match limits.per_group.check_key(&-100) {
            Err(not_until) => not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            )),
            Ok(()) => Duration::ZERO,
        };
        assert!(wait > Duration::from_millis(2900), "{wait:?}");
        // Ready on the first poll, with the group's bucket empty for three seconds.
        use futures_util::FutureExt as _;
        assert!(
            limits
                .until_ready(-100, false)
                .now_or_never()
                .is_some_and(|ready| ready.is_ok()),
            "deletions count only against the overall limit"
        );
        let fresh = Limits::telegram(NonZeroU32::new(30).unwrap());
        let mut allowed = 0;
        while fresh.global.check().is_ok() && allowed < 1000 {
            allowed += 1;
        }
        assert!(
            (30..35).contains(&allowed),
            "about 30 calls per second overall: {allowed}"
        );
    }
}
