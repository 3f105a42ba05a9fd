//! What the stand-in remembers between calls: the calls it answered, the faults still to inject,
//! chats and the messages sent to them, the callback queries answered, the webhook, the queued
//! updates, and the flood counters.

use crate::Settings;
use serde::Serialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One request to a Bot API path, as the stand-in answered it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    /// The method as Telegram spells it (`sendMessage`, whatever case was asked for), or as
    /// requested when Telegram has no such method.
    pub method: String,
    /// The parameters, merged from the query string and the body (the body wins). Values sent
    /// form-urlencoded or in the query string are strings, as they arrived.
    pub params: Value,
    /// The HTTP status answered; `None` when the connection was closed without an answer (a
    /// [`Fault::Drop`], or a client that gave up on a long poll).
    pub status: Option<u16>,
    /// Whether the path carried the configured token. The token itself is never kept.
    pub token_ok: bool,
    /// When the request arrived, counted from the stand-in's start (`at_ms` in JSON).
    #[serde(rename = "at_ms", serialize_with = "as_millis")]
    pub at: Duration,
    /// When the request arrived, by this machine's wall clock: microseconds since the unix
    /// epoch (`at_unix_us` in JSON), so that a load test can tell how long after it sent an
    /// update the bot's reply arrived.
    #[serde(rename = "at_unix_us")]
    pub unix_us: i64,
}

impl Call {
    /// Whether the call was answered 200 (`"ok": true`).
    pub fn succeeded(&self) -> bool {
        self.status == Some(200)
    }

    fn is(&self, method: &str) -> bool {
        self.method.eq_ignore_ascii_case(method)
    }
}

/// Microseconds since the unix epoch by the wall clock (0 before it).
pub(crate) fn unix_micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

fn as_millis<S: serde::Serializer>(at: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(at.as_millis()).unwrap_or(u64::MAX))
}

/// A failure to answer with, instead of the method's own answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// 429 `Too Many Requests: retry after N` with `parameters.retry_after = N`, as Telegram's
    /// flood control answers.
    TooManyRequests { retry_after: u32 },
    /// A 5xx from Telegram's front end (502 `Bad Gateway`, ...) in the Bot API envelope.
    Server(u16),
    /// Any other Bot API error: HTTP status `code` and `{"ok":false,"error_code":code,...}`.
    Api { code: u16, description: String },
    /// The connection is closed without an answer.
    Drop,
    /// The call is answered normally, this much later.
    Delay(Duration),
}

/// The webhook as the last setWebhook or deleteWebhook left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WebhookState {
    /// Empty when no webhook is set.
    pub url: String,
    /// The `secret_token` given with the URL (Telegram never shows it back; tests may look).
    pub secret_token: Option<String>,
    /// Set (40 unless given) while a webhook is set.
    pub max_connections: Option<u32>,
    /// The update kinds asked for; kept until a call names others, as Telegram does.
    pub allowed_updates: Option<Vec<String>>,
    /// Unix time of the last delivery error, as set by the test.
    pub last_error_date: Option<i64>,
    pub last_error_message: Option<String>,
    /// Updates queued and not yet confirmed through getUpdates.
    pub pending_update_count: usize,
}

impl WebhookState {
    pub(crate) fn is_set(&self) -> bool {
        !self.url.is_empty()
    }
}

/// A fault waiting for its calls.
#[derive(Debug)]
struct PendingFault {
    /// The method it is for (any case), or any method.
    method: Option<String>,
    remaining: u32,
    fault: Fault,
}

/// One chat the bot talks to.
#[derive(Debug, Default)]
pub(crate) struct Chat {
    pub(crate) last_message_id: i64,
    pub(crate) blocked: bool,
    pub(crate) missing: bool,
    pub(crate) undeletable: HashSet<i64>,
    pub(crate) deleted: HashSet<i64>,
    /// The messages the stand-in sent here and has not deleted, by id, for editMessageText.
    pub(crate) messages: HashMap<i64, Sent>,
}

/// A message the stand-in sent, as far as editMessageText needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sent {
    /// Unix seconds, as the message's `date` said.
    pub(crate) date: u64,
    /// The text of a text message; `None` for a photo, whose caption is not text to edit.
    pub(crate) text: Option<String>,
    /// The inline keyboard (`reply_markup.inline_keyboard`) it carries, if any.
    pub(crate) keyboard: Option<Value>,
}

/// Channels addressed as `@name` get ids from here down, in the order they are first named.
const CHANNEL_IDS_FROM: i64 = -1_001_000_000_000;

/// Everything behind the lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) calls: Vec<Call>,
    faults: VecDeque<PendingFault>,
    pub(crate) chats: HashMap<i64, Chat>,
    /// Channel usernames, by the id they were given.
    channels: Vec<String>,
    pub(crate) webhook: WebhookState,
    /// Updates for getUpdates, by `update_id`.
    pub(crate) updates: VecDeque<Value>,
    /// Counts getUpdates requests; only the latest one may wait for updates.
    pub(crate) poller: u64,
    pub(crate) flood: Flood,
    /// The callback queries answered, which cannot be answered again.
    pub(crate) answered_callback_queries: HashSet<i64>,
    /// The flood limits' time while a test holds it ([`crate::StandIn::freeze_clock`]).
    pub(crate) frozen_at: Option<Instant>,
}

impl State {
    /// Now, for the flood limits: the frozen time while a test holds the clock.
    pub(crate) fn now(&self) -> Instant {
        self.frozen_at.unwrap_or_else(Instant::now)
    }

    /// The id of the channel `@name`, given one the first time it is named.
    pub(crate) fn channel_id(&mut self, name: &str) -> i64 {
        let index = match self
            .channels
            .iter()
            .position(|known| known.eq_ignore_ascii_case(name))
        {
            Some(index) => index,
            None => {
                self.channels.push(name.to_owned());
                self.channels.len() - 1
            }
        };
        CHANNEL_IDS_FROM - i64::try_from(index).unwrap_or(i64::MAX / 2)
    }

    /// The username of the channel with this id, if it was named as `@name`.
    pub(crate) fn channel_name(&self, id: i64) -> Option<&str> {
        let index = usize::try_from(CHANNEL_IDS_FROM.checked_sub(id)?).ok()?;
        self.channels.get(index).map(String::as_str)
    }

    /// Forgets the updates that `offset` confirms, as getUpdates does: below a positive offset;
    /// all but the last `-offset` for a negative one.
    pub(crate) fn confirm(&mut self, offset: Option<i64>) {
        match offset {
            Some(offset) if offset > 0 => self
                .updates
                .retain(|update| update_id(update).is_some_and(|id| id >= offset)),
            Some(offset) if offset < 0 => {
                let keep = usize::try_from(offset.unsigned_abs()).unwrap_or(usize::MAX);
                while self.updates.len() > keep {
                    self.updates.pop_front();
                }
            }
            _ => {}
        }
    }

    pub(crate) fn webhook_state(&self) -> WebhookState {
        WebhookState {
            pending_update_count: self.updates.len(),
            ..self.webhook.clone()
        }
    }
}

/// The `update_id` of an update.
pub(crate) fn update_id(update: &Value) -> Option<i64> {
    update.get("update_id")?.as_i64()
}

/// Telegram's documented flood limits on sending
/// (<https://core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this>).
#[derive(Debug, Default)]
pub(crate) struct Flood {
    last_per_chat: HashMap<i64, Instant>,
    per_group: HashMap<i64, VecDeque<Instant>>,
    overall: VecDeque<Instant>,
}

/// One message a second to a chat.
const PER_CHAT: Duration = Duration::from_secs(1);
/// Twenty messages a minute to a group.
const GROUP_WINDOW: Duration = Duration::from_secs(60);
const GROUP_MAX: usize = 20;
/// Thirty messages a second in all.
const OVERALL_WINDOW: Duration = Duration::from_secs(1);
const OVERALL_MAX: usize = 30;

impl Flood {
    /// Whether a message to `chat` may go out at `now`; if not, the seconds to wait.
    pub(crate) fn check(&mut self, chat: i64, now: Instant) -> Result<(), u32> {
        forget_older(&mut self.overall, now, OVERALL_WINDOW);
        if self.overall.len() >= OVERALL_MAX {
            return Err(seconds_until(self.overall[0] + OVERALL_WINDOW, now));
        }
        if let Some(&last) = self.last_per_chat.get(&chat)
            && now.saturating_duration_since(last) < PER_CHAT
        {
            return Err(seconds_until(last + PER_CHAT, now));
        }
        if chat < 0
            && let Some(sent) = self.per_group.get_mut(&chat)
        {
            forget_older(sent, now, GROUP_WINDOW);
            if sent.len() >= GROUP_MAX {
                return Err(seconds_until(sent[0] + GROUP_WINDOW, now));
            }
        }
        Ok(())
    }

    /// Counts a message sent to `chat` at `now`.
    pub(crate) fn sent(&mut self, chat: i64, now: Instant) {
        self.overall.push_back(now);
        self.last_per_chat.insert(chat, now);
        if chat < 0 {
            self.per_group.entry(chat).or_default().push_back(now);
        }
    }
}

fn forget_older(sent: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while sent
        .front()
        .is_some_and(|&at| now.saturating_duration_since(at) >= window)
    {
        sent.pop_front();
    }
}

/// Whole seconds from `now` to `when`, at least 1, as Telegram's `retry_after` counts.
fn seconds_until(when: Instant, now: Instant) -> u32 {
    let wait = when.saturating_duration_since(now);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(seconds.max(1)).unwrap_or(u32::MAX)
}

/// What the server's handlers and the test's [`crate::StandIn`] share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) started: Instant,
    state: Mutex<State>,
    /// Signalled when a call is recorded.
    calls_changed: Condvar,
    /// Bumped whenever a waiting getUpdates should look again (updates pushed, webhook changed,
    /// another getUpdates came in).
    polls_changed: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            started: Instant::now(),
            state: Mutex::new(State::default()),
            calls_changed: Condvar::new(),
            polls_changed: watch::Sender::new(0),
        }
    }

    /// The state; a panic elsewhere while it was held does not make it unusable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, call: Call) {
        self.lock().calls.push(call);
        self.calls_changed.notify_all();
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub(crate) fn calls_of(&self, method: &str) -> Vec<Call> {
        let state = self.lock();
        state
            .calls
            .iter()
            .filter(|c| c.is(method))
            .cloned()
            .collect()
    }

    pub(crate) fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The successful calls of `method`, once there are `n` of them or `timeout` has passed.
    pub(crate) fn wait_for_calls(&self, method: &str, n: usize, timeout: Duration) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let succeeded = succeeded_calls(&state.calls, method);
            let now = Instant::now();
            if succeeded.len() >= n || now >= deadline {
                return succeeded;
            }
            state = self
                .calls_changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    pub(crate) fn succeeded_calls(&self, method: &str) -> Vec<Call> {
        succeeded_calls(&self.lock().calls, method)
    }

    /// Holds the flood limits' clock at the present moment (from now on, see
    /// [`Shared::advance_clock`]).
    pub(crate) fn freeze_clock(&self) {
        self.lock().frozen_at = Some(Instant::now());
    }

    /// Moves the held clock on by `by` (holding it first if it was not).
    pub(crate) fn advance_clock(&self, by: Duration) {
        let mut state = self.lock();
        let at = state.frozen_at.unwrap_or_else(Instant::now);
        state.frozen_at = Some(at + by);
    }

    pub(crate) fn fail_next(&self, method: Option<&str>, count: u32, fault: Fault) {
        if count == 0 {
            return;
        }
        self.lock().faults.push_back(PendingFault {
            method: method.map(str::to_owned),
            remaining: count,
            fault,
        });
    }

    /// The fault for this call of `method`, if one is waiting (the oldest that matches).
    pub(crate) fn take_fault(&self, method: &str) -> Option<Fault> {
        let mut state = self.lock();
        let index = state.faults.iter().position(|pending| {
            pending
                .method
                .as_deref()
                .is_none_or(|wanted| wanted.eq_ignore_ascii_case(method))
        })?;
        let pending = &mut state.faults[index];
        pending.remaining -= 1;
        let fault = pending.fault.clone();
        if pending.remaining == 0 {
            state.faults.remove(index);
        }
        Some(fault)
    }

    /// Queues updates for getUpdates, each of which must have an integer `update_id`.
    pub(crate) fn push_updates(&self, updates: Vec<Value>) -> Result<(), crate::Error> {
        if let Some(index) = updates.iter().position(|u| update_id(u).is_none()) {
            return Err(crate::Error::UpdateWithoutId { index });
        }
        {
            let mut state = self.lock();
            state.updates.extend(updates);
            state
                .updates
                .make_contiguous()
                .sort_by_key(|u| update_id(u).unwrap_or(i64::MIN));
        }
        self.wake_polls();
        Ok(())
    }

    pub(crate) fn webhook(&self) -> WebhookState {
        self.lock().webhook_state()
    }

    pub(crate) fn set_webhook_error(&self, date: i64, message: String) {
        let mut state = self.lock();
        state.webhook.last_error_date = Some(date);
        state.webhook.last_error_message = Some(message);
    }

    pub(crate) fn with_chat(&self, chat: i64, change: impl FnOnce(&mut Chat)) {
        change(self.lock().chats.entry(chat).or_default());
    }

    /// Makes every waiting getUpdates look again.
    pub(crate) fn wake_polls(&self) {
        self.polls_changed
            .send_modify(|generation| *generation += 1);
    }

    /// A receiver that sees the next [`Shared::wake_polls`].
    pub(crate) fn poll_changes(&self) -> watch::Receiver<u64> {
        self.polls_changed.subscribe()
    }
}

fn succeeded_calls(calls: &[Call], method: &str) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| c.is(method) && c.succeeded())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn one_message_a_second_to_a_chat() {
        let mut flood = Flood::default();
        let t = Instant::now();
        assert_eq!(flood.check(42, t), Ok(()));
        flood.sent(42, t);
        assert_eq!(flood.check(42, later(t, 300)), Err(1));
        assert_eq!(flood.check(43, later(t, 300)), Ok(()));
        assert_eq!(flood.check(42, later(t, 1000)), Ok(()));
    }

    #[test]
    fn twenty_messages_a_minute_to_a_group() {
        let mut flood = Flood::default();
        let t = Instant::now();
        for i in 0..20 {
            let at = later(t, i * 1500);
            assert_eq!(flood.check(-7, at), Ok(()), "message {i}");
            flood.sent(-7, at);
        }
        // The 21st, 30 s after the first: wait until the first is a minute old.
        assert_eq!(flood.check(-7, later(t, 30_000)), Err(30));
        assert_eq!(flood.check(-7, later(t, 59_500)), Err(1));
        assert_eq!(flood.check(-7, later(t, 60_000)), Ok(()));
        // Private chats have no per-minute limit.
        for i in 0..25 {
            let at = later(t, 100_000 + i * 1500);
            assert_eq!(flood.check(7, at), Ok(()), "message {i}");
            flood.sent(7, at);
        }
    }

    #[test]
    fn thirty_messages_a_second_in_all() {
        let mut flood = Flood::default();
        let t = Instant::now();
        for chat in 0..30 {
            assert_eq!(flood.check(chat + 1, later(t, 10)), Ok(()));
            flood.sent(chat + 1, later(t, 10));
        }
        assert_eq!(flood.check(100, later(t, 500)), Err(1));
        assert_eq!(flood.check(100, later(t, 1010)), Ok(()));
    }

    #[test]
    fn offsets_confirm_like_get_updates() {
        let mut state = State {
            updates: (1..=5)
                .map(|id| serde_json::json!({ "update_id": id }))
                .collect(),
            ..State::default()
        };
        state.confirm(None);
        assert_eq!(state.updates.len(), 5);
        state.confirm(Some(3));
        assert_eq!(state.updates.front().and_then(update_id), Some(3));
        state.confirm(Some(-1));
        assert_eq!(state.updates.len(), 1);
        assert_eq!(state.updates.front().and_then(update_id), Some(5));
    }

    #[test]
    fn channels_keep_their_ids() {
        let mut state = State::default();
        let news = state.channel_id("news");
        assert_eq!(state.channel_id("other"), news - 1);
        assert_eq!(state.channel_id("NEWS"), news);
        assert_eq!(state.channel_name(news), Some("news"));
        assert_eq!(state.channel_name(42), None);
        assert_eq!(state.channel_name(news - 5), None);
    }
}
