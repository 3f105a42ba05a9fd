//! The bot's own logic: handlers registered by command, update kind or filter, whose effects
//! (Bot API calls, calls due later, session state) are committed with the update's done mark,
//! so a retried or redelivered update never doubles one and a failed attempt leaves none.
//!
//! ```no_run
//! use botline::handler::{Bot, Context, HandlerResult};
//!
//! async fn start(cx: Context) -> HandlerResult {
//!     let name = cx.sender().map_or("there", |user| user.first_name.as_str());
//!     cx.reply(format!("Hi {name}!"));
//!     Ok(())
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Bot::new().command("start", start).main()
//! }
//! ```
//!
//! What is exactly once and what is not: the effects recorded on the [`Context`] are written in
//! the transaction that marks the update done, once. A handler itself may run more than once
//! for one update (an attempt that failed, a worker that died before committing): what it does
//! elsewhere (an LLM, another database) is at least once, and [`Context::update_id`] is the key
//! to make those calls idempotent.

use botline_core::commands::Command;
use botline_core::update::KNOWN_KINDS;
use botline_core::{
    OutboxAction, OutboxMessage, QueuedUpdate, SessionChange, SessionRecord, UserId, clock,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::task::AbortOnDropHandle;

/// What a handler returns: an error fails the attempt (retried after a backoff, dead-lettered
/// after the last one), and none of its effects are written.
pub type HandlerResult = Result<(), HandlerError>;

/// Any error a handler returns.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// A handler: an `async fn(Context) -> HandlerResult`.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, cx: Context) -> BoxFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn call(&self, cx: Context) -> BoxFuture {
        Box::pin(self(cx))
    }
}

/// A handler's error that asks for the next attempt no sooner than `after` (an API that
/// rate-limited the handler, a forwarded handler's `Retry-After`): the attempt fails like any
/// error, and the update waits the longer of this and the backoff (at most an hour).
///
/// ```
/// # use botline::handler::{Context, HandlerResult, RetryAfter};
/// # use std::time::Duration;
/// async fn ask(cx: Context) -> HandlerResult {
///     // The model said 429: try this update again in 20 s, not at the next backoff.
///     Err(RetryAfter::new(Duration::from_secs(20), "the model is rate-limited").into())
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryAfter {
    pub after: Duration,
    pub reason: String,
}

impl RetryAfter {
    pub fn new(after: Duration, reason: impl Into<String>) -> Self {
        Self {
            after,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (retry after {})",
            self.reason,
            humantime::format_duration(self.after)
        )
    }
}

impl std::error::Error for RetryAfter {}

/// Which updates a handler takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    kind: Option<String>,
    chat_type: Option<String>,
    text_prefix: Option<String>,
    unknown_kinds: bool,
}

impl Filter {
    /// Updates of `kind` (`message`, `edited_message`, `callback_query`, …).
    pub fn kind(kind: &str) -> Self {
        Self {
            kind: Some(kind.to_owned()),
            ..Self::default()
        }
    }

    /// Every update.
    pub fn any() -> Self {
        Self::default()
    }

    /// Updates of kinds this build does not know (Telegram adds kinds): see [`Context::raw`].
    pub fn unknown() -> Self {
        Self {
            unknown_kinds: true,
            ..Self::default()
        }
    }

    /// Only in chats of this type: `private`, `group`, `supergroup`, `channel`.
    pub fn chat_type(self, chat_type: &str) -> Self {
        Self {
            chat_type: Some(chat_type.to_owned()),
            ..self
        }
    }

    /// Only when the text (or caption) starts with `prefix`.
    pub fn text_starts_with(self, prefix: &str) -> Self {
        Self {
            text_prefix: Some(prefix.to_owned()),
            ..self
        }
    }

    fn matches(&self, update: &Incoming) -> bool {
        if self.unknown_kinds && KNOWN_KINDS.contains(&update.kind.as_str()) {
            return false;
        }
        if self.kind.as_ref().is_some_and(|kind| *kind != update.kind) {
            return false;
        }
        if let Some(chat_type) = &self.chat_type
            && update.chat_type.as_deref() != Some(chat_type.as_str())
        {
            return false;
        }
        if let Some(prefix) = &self.text_prefix
            && !update
                .text
                .as_deref()
                .is_some_and(|t| t.starts_with(prefix))
        {
            return false;
        }
        true
    }
}

/// When a route takes an update.
#[derive(Debug, Clone)]
enum Matcher {
    Command(String),
    Filter(Filter),
}

#[derive(Clone)]
struct Route {
    matcher: Matcher,
    handler: Arc<dyn Handler>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("matcher", &self.matcher)
            .finish_non_exhaustive()
    }
}

/// A bot: its handlers, tried in the order they were added; the first that matches an update
/// handles it.
#[derive(Debug, Clone)]
pub struct Bot {
    routes: Arc<Vec<Route>>,
    session_ttl: Duration,
}

impl Default for Bot {
    fn default() -> Self {
        Self::new()
    }
}

impl Bot {
    /// Forwards every update no handler added before took to the bot's own webhook handler
    /// (`BOTLINE_HANDLER_URL`; see [`crate::forward`]).
    pub fn forward_to(self, forward: crate::forward::Forward) -> Self {
        self.on_any(move |cx: Context| {
            let forward = forward.clone();
            async move { forward.deliver(&cx).await }
        })
    }

    /// How long a session lives after its last write, unless the bot says otherwise.
    pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

    /// A bot with no handlers (Botline's built-in records and `/register` only).
    pub fn new() -> Self {
        Self {
            routes: Arc::new(Vec::new()),
            session_ttl: Self::DEFAULT_SESSION_TTL,
        }
    }

    fn route(mut self, matcher: Matcher, handler: impl Handler) -> Self {
        Arc::make_mut(&mut self.routes).push(Route {
            matcher,
            handler: Arc::new(handler),
        });
        self
    }

    /// `/name` (any case), `/name@thisbot` and their arguments ([`Context::args`]), in a
    /// message.
    pub fn command(self, name: &str, handler: impl Handler) -> Self {
        self.route(
            Matcher::Command(name.trim_start_matches('/').to_owned()),
            handler,
        )
    }

    /// Updates that `filter` takes.
    pub fn on(self, filter: Filter, handler: impl Handler) -> Self {
        self.route(Matcher::Filter(filter), handler)
    }

    pub fn on_message(self, handler: impl Handler) -> Self {
        self.on(Filter::kind("message"), handler)
    }

    pub fn on_edited_message(self, handler: impl Handler) -> Self {
        self.on(Filter::kind("edited_message"), handler)
    }

    pub fn on_callback_query(self, handler: impl Handler) -> Self {
        self.on(Filter::kind("callback_query"), handler)
    }

    pub fn on_inline_query(self, handler: impl Handler) -> Self {
        self.on(Filter::kind("inline_query"), handler)
    }

    pub fn on_chat_member(self, handler: impl Handler) -> Self {
        self.on(Filter::kind("chat_member"), handler)
    }

    /// Every update no handler before took.
    pub fn on_any(self, handler: impl Handler) -> Self {
        self.on(Filter::any(), handler)
    }

    /// Updates of kinds this build does not know, raw.
    pub fn on_unknown(self, handler: impl Handler) -> Self {
        self.on(Filter::unknown(), handler)
    }

    /// How long a session lives after its last write (default 30 days).
    pub fn session_ttl(self, ttl: Duration) -> Self {
        Self {
            session_ttl: ttl,
            ..self
        }
    }

    /// Whether the bot has handlers of its own.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Runs Botline's command line (`serve`, `poll`, `messages export`, `dlq`, `stats`,
    /// `webhook`, `tokens`) with this bot's handlers, and returns the process's exit code.
    pub fn main(self) -> std::process::ExitCode {
        crate::runner::main(self)
    }

    /// The handler for `update`, if any takes it.
    fn handler_for(&self, update: &Incoming, bot_username: Option<&str>) -> Option<&Route> {
        self.routes.iter().find(|route| match &route.matcher {
            Matcher::Command(name) => update.command.as_ref().is_some_and(|(command, _)| {
                Command::parse(command).is_some_and(|c| c.is(name) && c.is_for(bot_username))
            }),
            Matcher::Filter(filter) => filter.matches(update),
        })
    }

    /// Runs the handler that takes `update`, if any, and returns the effects it recorded.
    /// `backend` reads the session when the handler asks for it.
    pub(crate) async fn handle(
        &self,
        update: &QueuedUpdate,
        attempt: u32,
        bot_username: Option<&str>,
        sessions: Arc<dyn botline_core::Backend>,
    ) -> Result<Effects, HandlerError> {
        let Ok(raw) = serde_json::from_str::<Value>(&update.raw) else {
            return Ok(Effects::default());
        };
        let mut incoming = Incoming::read(update, raw);
        let Some(route) = self.handler_for(&incoming, bot_username) else {
            return Ok(Effects::default());
        };
        let handler = Arc::clone(&route.handler);
        // Typed only for an update a handler takes: most updates of a busy bot match none.
        incoming.typed = Incoming::typed(&incoming.raw);
        let effects = Arc::new(Mutex::new(Effects::default()));
        let cx = Context {
            inner: Arc::new(Inner {
                incoming,
                body: update.raw.clone(),
                attempt,
                bot_username: bot_username.map(str::to_owned),
                entry_id: update.entry_id.clone(),
                session_ttl: self.session_ttl,
                backend: sessions,
            }),
            effects: Arc::clone(&effects),
        };
        // A panic fails the attempt like an error: the worker goes on.
        // Stopped with the attempt when it is given up (a timeout, a lost lease).
        let outcome = AbortOnDropHandle::new(tokio::spawn(handler.call(cx))).await;
        match outcome {
            Ok(Ok(())) => Ok(std::mem::take(&mut *lock(&effects))),
            Ok(Err(e)) => Err(e),
            Err(e) if e.is_panic() => Err("the handler panicked".into()),
            Err(e) => Err(e.into()),
        }
    }
}

fn lock(effects: &Mutex<Effects>) -> std::sync::MutexGuard<'_, Effects> {
    effects
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a handler recorded, to be written with the update's records.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    calls: Vec<(OutboxAction, i64, Option<i64>)>,
    session: Option<SessionChange>,
}

impl Effects {
    /// Into the update's records: calls with ids derived from the queue entry (`<entry>:h<n>`),
    /// so a retried update writes the same ids and nothing twice.
    pub(crate) fn into_records(self, entry_id: &str, records: &mut botline_core::Records) {
        for (n, (action, chat_id, send_at)) in self.calls.into_iter().enumerate() {
            let call = OutboxMessage::new(format!("{entry_id}:h{}", n + 1), chat_id, action);
            records.outbox.push(match send_at {
                Some(at) => call.at(at),
                None => call,
            });
        }
        records.sessions.extend(self.session);
    }
}

/// An update as the router reads it.
#[derive(Debug)]
struct Incoming {
    update_id: i64,
    kind: String,
    raw: Value,
    /// The object of the update's kind (`update.message`, …).
    payload: Value,
    chat_id: Option<i64>,
    chat_type: Option<String>,
    sender: Option<frankenstein::types::User>,
    text: Option<String>,
    /// The message's text when it is a command: (text, its arguments).
    command: Option<(String, String)>,
    message_id: Option<i64>,
    typed: Option<frankenstein::updates::Update>,
}

impl Incoming {
    /// The update as frankenstein's types read it; `None` for a kind or field they do not know.
    fn typed(raw: &Value) -> Option<frankenstein::updates::Update> {
        serde_json::from_value(raw.clone()).ok()
    }

    /// What routing needs of an update; [`Incoming::typed`] is filled in once a handler takes
    /// it.
    fn read(update: &QueuedUpdate, raw: Value) -> Self {
        let kind = update.kind.as_str().to_owned();
        let payload = raw.get(&kind).cloned().unwrap_or(Value::Null);
        let message = if payload.get("chat").is_some() {
            Some(&payload)
        } else {
            // A callback query's chat is its message's.
            payload.get("message")
        };
        let chat = message.and_then(|m| m.get("chat"));
        let text = ["text", "caption"]
            .iter()
            .find_map(|field| payload.get(*field)?.as_str())
            .map(str::to_owned);
        let command = (kind == "message")
            .then(|| {
                let text = payload.get("text")?.as_str()?;
                let command = Command::parse(text)?;
                Some((text.to_owned(), command.args.to_owned()))
            })
            .flatten();
        let sender = ["from", "user"]
            .iter()
            .find_map(|field| serde_json::from_value(payload.get(*field)?.clone()).ok());
        Self {
            update_id: update.update_id.0,
            chat_id: chat.and_then(|c| c.get("id")?.as_i64()),
            chat_type: chat
                .and_then(|c| c.get("type")?.as_str())
                .map(str::to_owned),
            message_id: message.and_then(|m| m.get("message_id")?.as_i64()),
            typed: None,
            sender,
            text,
            command,
            kind,
            payload,
            raw,
        }
    }
}

#[derive(Debug)]
struct Inner {
    incoming: Incoming,
    /// The update's JSON as stored.
    body: String,
    attempt: u32,
    bot_username: Option<String>,
    entry_id: String,
    session_ttl: Duration,
    backend: Arc<dyn botline_core::Backend>,
}

/// What a handler knows of its update, and where it records its effects. Cheap to clone; every
/// clone records into the same effects.
#[derive(Debug, Clone)]
pub struct Context {
    inner: Arc<Inner>,
    effects: Arc<Mutex<Effects>>,
}

impl Context {
    /// The update's JSON text as stored, byte for byte (`/register` tokens redacted).
    pub fn body(&self) -> &str {
        &self.inner.body
    }

    /// Which attempt at the update this is: 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The update's id: stable across every attempt and redelivery, the idempotency key for
    /// what the handler does elsewhere.
    pub fn update_id(&self) -> i64 {
        self.inner.incoming.update_id
    }

    /// The update's kind: `message`, `callback_query`, … or one Telegram added later.
    pub fn kind(&self) -> &str {
        &self.inner.incoming.kind
    }

    /// The whole update as Telegram sent it (with `/register` tokens redacted).
    pub fn raw(&self) -> &Value {
        &self.inner.incoming.raw
    }

    /// The object of the update's kind (`update.message`, `update.callback_query`, …), raw.
    pub fn payload(&self) -> &Value {
        &self.inner.incoming.payload
    }

    /// The update as frankenstein's types read it; `None` for a kind or field they do not know.
    pub fn update(&self) -> Option<&frankenstein::updates::Update> {
        self.inner.incoming.typed.as_ref()
    }

    /// The chat the update happened in (a callback query's: its message's).
    pub fn chat_id(&self) -> Option<i64> {
        self.inner.incoming.chat_id
    }

    /// The user who caused the update.
    pub fn sender(&self) -> Option<&frankenstein::types::User> {
        self.inner.incoming.sender.as_ref()
    }

    /// The message's text or caption.
    pub fn text(&self) -> Option<&str> {
        self.inner.incoming.text.as_deref()
    }

    /// A command's arguments (`/note buy milk` → `buy milk`); empty otherwise.
    pub fn args(&self) -> &str {
        self.inner
            .incoming
            .command
            .as_ref()
            .map_or("", |(_, args)| args.trim())
    }

    /// The message's id, when the update carries one.
    pub fn message_id(&self) -> Option<i64> {
        self.inner.incoming.message_id
    }

    /// The bot's username, when Botline knows it.
    pub fn bot_username(&self) -> Option<&str> {
        self.inner.bot_username.as_deref()
    }

    /// `text` to the update's chat. Without a chat (an inline query), nothing is sent.
    pub fn reply(&self, text: impl Into<String>) {
        if let Some(chat_id) = self.chat_id() {
            self.send_message(chat_id, text);
        }
    }

    /// sendMessage: `text` to `chat_id`.
    pub fn send_message(&self, chat_id: i64, text: impl Into<String>) {
        self.push(
            OutboxAction::SendMessage {
                text: text.into(),
                reply_to_message_id: None,
            },
            chat_id,
            None,
        );
    }

    /// Any Bot API method, with its parameters as Telegram takes them (a JSON object):
    /// `cx.call("sendPhoto", json!({"chat_id": id, "photo": file_id}))?`. The call is ordered
    /// with its chat's (`params.chat_id`, else the update's chat). Parameters that are not an
    /// object are an error.
    pub fn call(&self, method: &str, params: Value) -> HandlerResult {
        self.call_at(method, params, None)
    }

    /// `text` to `chat_id`, no earlier than `delay` from now (a reminder); it survives
    /// restarts, and goes out once.
    pub fn send_after(&self, delay: Duration, chat_id: i64, text: impl Into<String>) {
        let at =
            clock::now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        self.send_at(at, chat_id, text);
    }

    /// `text` to `chat_id`, no earlier than `at_ms` (unix milliseconds).
    pub fn send_at(&self, at_ms: i64, chat_id: i64, text: impl Into<String>) {
        self.push(
            OutboxAction::SendMessage {
                text: text.into(),
                reply_to_message_id: None,
            },
            chat_id,
            Some(at_ms),
        );
    }

    /// Any Bot API method, no earlier than `at_ms` (unix milliseconds) when given.
    pub fn call_at(&self, method: &str, params: Value, at_ms: Option<i64>) -> HandlerResult {
        let Value::Object(params) = params else {
            return Err(format!("the parameters of {method} are not a JSON object").into());
        };
        let chat_id = params
            .get("chat_id")
            .and_then(Value::as_i64)
            .or(self.chat_id())
            .unwrap_or_default();
        self.push(OutboxAction::call(method, params), chat_id, at_ms);
        Ok(())
    }

    fn push(&self, action: OutboxAction, chat_id: i64, at_ms: Option<i64>) {
        lock(&self.effects).calls.push((action, chat_id, at_ms));
    }

    /// The id of this chat and sender's session.
    fn session_id(&self) -> Option<String> {
        let chat = self.chat_id()?;
        let user = self.sender()?.id;
        Some(format!("{chat}:{user}"))
    }

    /// This chat and sender's session, as the last update that wrote it left it (empty when
    /// there is none, or it expired). Change it and [`Context::save_session`] it.
    pub async fn session(&self) -> Result<Session, HandlerError> {
        let Some(session_id) = self.session_id() else {
            return Err("this update has no chat or no sender: it has no session".into());
        };
        let found = self.inner.backend.session(&session_id).await?;
        Ok(Session {
            data: found.as_ref().map(|s| s.data.clone()).unwrap_or_default(),
            state: found.map(|s| s.state).unwrap_or_default(),
        })
    }

    /// Writes `session` with the update's other effects; it lives the bot's session TTL from
    /// now.
    pub fn save_session(&self, session: Session) {
        let (Some(session_id), Some(chat_id), Some(sender)) =
            (self.session_id(), self.chat_id(), self.sender())
        else {
            return;
        };
        let now = clock::iso8601(clock::now_ms());
        let ttl = i64::try_from(self.inner.session_ttl.as_secs()).unwrap_or(i64::MAX);
        let record = SessionRecord {
            session_id,
            user_id: UserId(i64::try_from(sender.id).unwrap_or_default()).record_key(),
            chat_id,
            state: session.state,
            data: session.data,
            created_at: now.clone(),
            updated_at: now,
            expires_at: (clock::now_ms() / 1000).saturating_add(ttl),
        };
        lock(&self.effects).session = Some(SessionChange::Put(record));
    }

    /// Deletes this chat and sender's session with the update's other effects.
    pub fn clear_session(&self) {
        if let Some(session_id) = self.session_id() {
            lock(&self.effects).session = Some(SessionChange::Delete { session_id });
        }
    }

    /// The queue entry's id, for ids of the bot's own that must not change across attempts.
    pub fn entry_id(&self) -> &str {
        &self.inner.entry_id
    }
}

/// A conversation's state: a name (`state`) and JSON data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    pub state: String,
    pub data: Map<String, Value>,
}

impl Session {
    /// The value at `key`, read as `T`; `None` when absent.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, HandlerError> {
        self.data
            .get(key)
            .map(|value| serde_json::from_value(value.clone()))
            .transpose()
            .map_err(Into::into)
    }

    /// Sets `key` to `value`.
    pub fn set<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), HandlerError> {
        self.data
            .insert(key.to_owned(), serde_json::to_value(value)?);
        Ok(())
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.data.remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use botline_core::InboundUpdate;

    async fn noop(_: Context) -> HandlerResult {
        Ok(())
    }

    fn incoming(body: Value) -> Incoming {
        let update = InboundUpdate::parse(body.to_string().as_bytes()).unwrap();
        let queued = QueuedUpdate::new(update, "entry".into(), 0);
        let raw = serde_json::from_str(&queued.raw).unwrap();
        Incoming::read(&queued, raw)
    }

    fn message(chat_type: &str, text: &str) -> Incoming {
        incoming(serde_json::json!({
            "update_id": 1,
            "message": {
                "message_id": 3, "date": 1,
                "chat": {"id": 9, "type": chat_type},
                "from": {"id": 7, "is_bot": false, "first_name": "Ann"},
                "text": text,
            }
        }))
    }

    /// Which route takes the update: its index in the order they were added.
    fn taken_by(bot: &Bot, update: &Incoming, username: Option<&str>) -> Option<usize> {
        let route = bot.handler_for(update, username)?;
        bot.routes.iter().position(|r| std::ptr::eq(r, route))
    }

    #[test]
    fn commands_are_matched_by_name_and_addressee() {
        let bot = Bot::new()
            .command("note", noop)
            .command("/notes", noop)
            .on_message(noop);
        let me = Some("notes_bot");
        assert_eq!(
            taken_by(&bot, &message("private", "/note milk"), me),
            Some(0)
        );
        assert_eq!(
            taken_by(&bot, &message("private", "/NOTE milk"), me),
            Some(0)
        );
        assert_eq!(
            taken_by(&bot, &message("group", "/note@notes_bot milk"), me),
            Some(0)
        );
        assert_eq!(taken_by(&bot, &message("private", "/notes"), me), Some(1));
        // Another bot's command, or not a command: the next handler that takes a message.
        assert_eq!(
            taken_by(&bot, &message("group", "/note@other_bot x"), me),
            Some(2)
        );
        assert_eq!(
            taken_by(&bot, &message("private", "note milk"), me),
            Some(2)
        );
        assert_eq!(
            taken_by(&bot, &message("private", "/notebook"), me),
            Some(2)
        );
        // Without the bot's username, only unaddressed commands are taken.
        assert_eq!(
            taken_by(&bot, &message("group", "/note@notes_bot x"), None),
            Some(2)
        );
        let update = message("private", "/note  buy milk ");
        assert_eq!(
            update.command.as_ref().map(|(_, args)| args.trim()),
            Some("buy milk")
        );
    }

    #[test]
    fn kinds_filters_and_unknown_kinds() {
        let bot = Bot::new()
            .on(
                Filter::kind("message")
                    .chat_type("private")
                    .text_starts_with("hi"),
                noop,
            )
            .on_callback_query(noop)
            .on_unknown(noop)
            .on_any(noop);
        assert_eq!(
            taken_by(&bot, &message("private", "hi there"), None),
            Some(0)
        );
        assert_eq!(taken_by(&bot, &message("group", "hi there"), None), Some(3));
        assert_eq!(taken_by(&bot, &message("private", "oh hi"), None), Some(3));
        let callback = incoming(serde_json::json!({
            "update_id": 2,
            "callback_query": {
                "id": "1", "chat_instance": "x", "data": "yes",
                "from": {"id": 7, "is_bot": false, "first_name": "Ann"},
                "message": {"message_id": 5, "date": 1, "chat": {"id": 9, "type": "private"}}
            }
        }));
        assert_eq!(taken_by(&bot, &callback, None), Some(1));
        assert_eq!(
            callback.chat_id,
            Some(9),
            "a callback's chat is its message's"
        );
        assert_eq!(callback.sender.as_ref().map(|u| u.id), Some(7));
        let future = incoming(serde_json::json!({"update_id": 3, "future_kind": {"x": 1}}));
        assert_eq!(taken_by(&bot, &future, None), Some(2));
        assert!(Incoming::typed(&future.raw).is_none() && future.raw["future_kind"]["x"] == 1);
        assert!(
            Incoming::typed(&callback.raw).is_some(),
            "a known kind reads typed"
        );
        let edited = incoming(serde_json::json!({
            "update_id": 4,
            "edited_message": {"message_id": 3, "date": 1, "edit_date": 2,
                "chat": {"id": 9, "type": "private"}, "text": "/note x"}
        }));
        assert_eq!(
            taken_by(&bot, &edited, None),
            Some(3),
            "an edit is not a command"
        );
        assert!(Bot::new().handler_for(&edited, None).is_none());
    }
}
