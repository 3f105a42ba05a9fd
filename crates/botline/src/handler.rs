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

use botline_core::commands::{Command, TypedSecret, token_digest};
use botline_core::update::KNOWN_KINDS;
use botline_core::{
    OutboxAction, OutboxMessage, QueuedUpdate, Redemption, SessionChange, SessionRecord, UserId,
    clock,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
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

    fn matches(&self, update: &Probe<'_>) -> bool {
        if self.unknown_kinds && KNOWN_KINDS.contains(&update.kind) {
            return false;
        }
        if self.kind.as_ref().is_some_and(|kind| kind != update.kind) {
            return false;
        }
        if let Some(chat_type) = &self.chat_type
            && update.chat_type != Some(chat_type.as_str())
        {
            return false;
        }
        if let Some(prefix) = &self.text_prefix
            && !update.text.is_some_and(|t| t.starts_with(prefix))
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

    /// A bot with Botline's built-in handler, `/register` ([`crate::register`]); add yours
    /// after it. A command of your own named `register` replaces it.
    pub fn new() -> Self {
        Self::empty().command("register", crate::register::register)
    }

    /// A bot with no handlers at all, not even the built-in `/register`: every update is
    /// stored, and nothing answers.
    pub fn empty() -> Self {
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
    /// message. A command added again under the same name replaces the earlier handler, in its
    /// place (so a bot can take over the built-in `/register`).
    pub fn command(mut self, name: &str, handler: impl Handler) -> Self {
        let name = name.trim_start_matches('/').to_owned();
        let same = |route: &Route| matches!(&route.matcher, Matcher::Command(other) if other.eq_ignore_ascii_case(&name));
        if let Some(route) = Arc::make_mut(&mut self.routes).iter_mut().find(|r| same(r)) {
            route.handler = Arc::new(handler);
            return self;
        }
        self.route(Matcher::Command(name), handler)
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

    /// Whether the bot has no handlers, not even the built-in ones.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Runs Botline's command line (`serve`, `poll`, `messages export`, `dlq`, `stats`,
    /// `webhook`, `tokens`) with this bot's handlers, and returns the process's exit code.
    pub fn main(self) -> std::process::ExitCode {
        crate::runner::main(self)
    }

    /// The handler for `update`, if any takes it.
    fn handler_for(&self, update: &Probe<'_>, bot_username: Option<&str>) -> Option<&Route> {
        self.routes.iter().find(|route| match &route.matcher {
            Matcher::Command(name) => update
                .command
                .is_some_and(|command| command.is(name) && command.is_for(bot_username)),
            Matcher::Filter(filter) => filter.matches(update),
        })
    }

    /// Runs the handler that takes `update`, if any, and returns the effects it recorded.
    /// `update` is the update as stored (secrets a user typed redacted) and `payload` its
    /// kind's object, parsed; `typed` is the update as received when it differs (a secret was
    /// redacted), for [`Context::args_as_typed`]. `backend` reads the session when the handler
    /// asks for it.
    pub(crate) async fn handle(
        &self,
        seen: Seen<'_>,
        attempt: u32,
        bot_username: Option<&str>,
        sessions: Arc<dyn botline_core::Backend>,
    ) -> Result<Effects, HandlerError> {
        let Seen {
            update,
            payload,
            typed,
        } = seen;
        let probe = Probe::read(update.kind.as_str(), payload);
        let Some(route) = self.handler_for(&probe, bot_username) else {
            return Ok(Effects::default());
        };
        let handler = Arc::clone(&route.handler);
        let typed_args = typed.and_then(|typed| {
            let raw: Value = serde_json::from_str(&typed.raw).ok()?;
            let text = raw.get(typed.kind.as_str())?.get("text")?.as_str()?;
            Some(Command::parse(text)?.args.to_owned())
        });
        let incoming = Incoming::read(update, probe, payload);
        let effects = Arc::new(Mutex::new(Effects::default()));
        let cx = Context {
            inner: Arc::new(Inner {
                incoming,
                body: update.raw.clone(),
                typed_args,
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

/// An update as a handler sees it ([`Bot::handle`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seen<'a> {
    /// As stored: with the secrets a user typed redacted.
    pub update: &'a QueuedUpdate,
    /// The object of the update's kind, as stored, parsed.
    pub payload: &'a Value,
    /// As received, when that differs from `update`.
    pub typed: Option<&'a QueuedUpdate>,
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
    redemption: Option<PendingRedemption>,
}

/// A token to redeem ([`Context::redeem_token`]), and the texts that answer it.
#[derive(Debug)]
struct PendingRedemption {
    username: String,
    token: TypedSecret,
    telegram_user_id: i64,
    chat_id: i64,
    message_id: Option<i64>,
    redeemed: String,
    refused: String,
}

impl Effects {
    /// Into the update's records: calls with ids derived from the queue entry (`<entry>:h0001`
    /// on, a redemption's answer `<entry>:h0000`), so a retried update writes the same ids and
    /// nothing twice. The number is zero-padded: the embedded store orders a chat's calls made
    /// at the same millisecond by id, and `h10` would go out before `h2`.
    pub(crate) fn into_records(self, entry_id: &str, records: &mut botline_core::Records) {
        for (n, (action, chat_id, send_at)) in self.calls.into_iter().enumerate() {
            let call = OutboxMessage::new(format!("{entry_id}:h{:04}", n + 1), chat_id, action);
            records.outbox.push(match send_at {
                Some(at) => call.at(at),
                None => call,
            });
        }
        records.sessions.extend(self.session);
        records.redemption = self.redemption.map(|pending| {
            let answer = |text: String| {
                OutboxMessage::new(
                    format!("{entry_id}:h0000"),
                    pending.chat_id,
                    OutboxAction::SendMessage {
                        text,
                        reply_to_message_id: pending.message_id,
                    },
                )
            };
            Redemption {
                token_digest: token_digest(pending.token.expose()),
                token: pending.token,
                telegram_user_id: pending.telegram_user_id,
                chat_id: pending.chat_id,
                redeemed: answer(pending.redeemed),
                refused: answer(pending.refused),
                username: pending.username,
            }
        });
    }
}

/// What routing reads of an update, borrowed from its payload: most updates of a busy bot
/// match no handler and are read no further.
#[derive(Debug, Clone, Copy)]
struct Probe<'a> {
    kind: &'a str,
    chat_type: Option<&'a str>,
    /// The text, or the caption.
    text: Option<&'a str>,
    /// A message's command.
    command: Option<Command<'a>>,
}

impl<'a> Probe<'a> {
    fn read(kind: &'a str, payload: &'a Value) -> Self {
        let chat = chat_of(payload);
        let text = ["text", "caption"]
            .iter()
            .find_map(|field| payload.get(*field)?.as_str());
        let command = (kind == "message")
            .then(|| Command::parse(payload.get("text")?.as_str()?))
            .flatten();
        Self {
            kind,
            chat_type: chat.and_then(|c| c.get("type")?.as_str()),
            text,
            command,
        }
    }
}

/// The chat an update's object is in (a callback query's: its message's).
fn chat_of(payload: &Value) -> Option<&Value> {
    message_of(payload)?.get("chat")
}

/// The message an update's object is or carries (a callback query's message).
fn message_of(payload: &Value) -> Option<&Value> {
    if payload.get("chat").is_some() {
        Some(payload)
    } else {
        payload.get("message")
    }
}

/// An update a handler takes, as its [`Context`] gives it.
#[derive(Debug)]
struct Incoming {
    update_id: i64,
    kind: String,
    /// The whole update, parsed when a handler asks ([`Context::raw`]).
    raw: OnceLock<Value>,
    /// The object of the update's kind (`update.message`, …).
    payload: Value,
    chat_id: Option<i64>,
    chat_type: Option<String>,
    sender: Option<frankenstein::types::User>,
    text: Option<String>,
    /// A message's command's arguments.
    args: Option<String>,
    message_id: Option<i64>,
    typed: Option<frankenstein::updates::Update>,
}

impl Incoming {
    fn read(update: &QueuedUpdate, probe: Probe<'_>, payload: &Value) -> Self {
        let message = message_of(payload);
        let sender = ["from", "user"]
            .iter()
            .find_map(|field| serde_json::from_value(payload.get(*field)?.clone()).ok());
        Self {
            update_id: update.update_id.0,
            kind: probe.kind.to_owned(),
            raw: OnceLock::new(),
            chat_id: chat_of(payload).and_then(|c| c.get("id")?.as_i64()),
            chat_type: probe.chat_type.map(str::to_owned),
            message_id: message.and_then(|m| m.get("message_id")?.as_i64()),
            // Typed only for an update a handler takes.
            typed: serde_json::from_str(&update.raw).ok(),
            sender,
            text: probe.text.map(str::to_owned),
            args: probe.command.map(|command| command.args.to_owned()),
            payload: payload.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    incoming: Incoming,
    /// The update's JSON as stored.
    body: String,
    /// A command's arguments as the user typed them, when a secret was redacted from them.
    typed_args: Option<String>,
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
        self.inner
            .incoming
            .raw
            .get_or_init(|| serde_json::from_str(&self.inner.body).unwrap_or(Value::Null))
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

    /// A command's arguments (`/note buy milk` → `buy milk`); empty otherwise. As stored: a
    /// secret typed in them (a `/register` token) reads `[redacted]`.
    pub fn args(&self) -> &str {
        self.inner.incoming.args.as_deref().map_or("", str::trim)
    }

    /// A command's arguments as the user typed them, before Botline redacted the secrets in
    /// them (a `/register` token): for the handler that checks such a secret. Never log, store
    /// or send what this returns.
    pub fn args_as_typed(&self) -> &str {
        self.inner
            .typed_args
            .as_deref()
            .map_or_else(|| self.args(), str::trim)
    }

    /// The type of the update's chat: `private`, `group`, `supergroup` or `channel`.
    pub fn chat_type(&self) -> Option<&str> {
        self.inner.incoming.chat_type.as_deref()
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

    /// `text` to the update's chat, as a reply to the update's message.
    pub fn reply_to_message(&self, text: impl Into<String>) {
        if let Some(chat_id) = self.chat_id() {
            self.push(
                OutboxAction::SendMessage {
                    text: text.into(),
                    reply_to_message_id: self.message_id(),
                },
                chat_id,
                None,
            );
        }
    }

    /// deleteMessage: the message `message_id` of `chat_id`.
    pub fn delete_message(&self, chat_id: i64, message_id: i64) {
        self.push(OutboxAction::DeleteMessage { message_id }, chat_id, None);
    }

    /// Redeems a single-use token that `botline tokens issue <username>` issued, for the
    /// update's sender, in the transaction that commits the update's effects: `redeemed` is
    /// the answer when the token was issued for `username` and is neither used nor expired,
    /// `refused` otherwise. The answer goes to the update's chat as a reply to its message,
    /// before the handler's other calls. The token is handled as a secret: only its SHA-256 is
    /// compared and stored (or, with `BOTLINE_REGISTRAR_URL`, it is handed to that
    /// registration database). One redemption per update; an update without a sender or a
    /// chat has none to make.
    pub fn redeem_token(
        &self,
        username: &str,
        token: &str,
        redeemed: impl Into<String>,
        refused: impl Into<String>,
    ) -> HandlerResult {
        let (Some(chat_id), Some(sender)) = (self.chat_id(), self.sender()) else {
            return Err("a token is redeemed by the sender of an update in a chat".into());
        };
        let mut effects = lock(&self.effects);
        if effects.redemption.is_some() {
            return Err("one token redemption per update".into());
        }
        effects.redemption = Some(PendingRedemption {
            username: username.to_owned(),
            token: TypedSecret::new(token.to_owned()),
            telegram_user_id: i64::try_from(sender.id)?,
            chat_id,
            message_id: self.message_id(),
            redeemed: redeemed.into(),
            refused: refused.into(),
        });
        Ok(())
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

    /// An update, and its kind's object parsed.
    struct Held(QueuedUpdate, Value);

    impl Held {
        fn probe(&self) -> Probe<'_> {
            Probe::read(self.0.kind.as_str(), &self.1)
        }

        fn incoming(&self) -> Incoming {
            Incoming::read(&self.0, self.probe(), &self.1)
        }
    }

    fn incoming(body: Value) -> Held {
        let update = InboundUpdate::parse(body.to_string().as_bytes()).unwrap();
        let queued = QueuedUpdate::new(update, "entry".into(), 0);
        let payload = body.get(queued.kind.as_str()).cloned().unwrap_or_default();
        Held(queued, payload)
    }

    fn message(chat_type: &str, text: &str) -> Held {
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
    fn taken_by(bot: &Bot, update: &Held, username: Option<&str>) -> Option<usize> {
        let route = bot.handler_for(&update.probe(), username)?;
        bot.routes.iter().position(|r| std::ptr::eq(r, route))
    }

    #[test]
    fn commands_are_matched_by_name_and_addressee() {
        let bot = Bot::empty()
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
            update.incoming().args.as_deref().map(str::trim),
            Some("buy milk")
        );
    }

    #[test]
    fn kinds_filters_and_unknown_kinds() {
        let bot = Bot::empty()
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
        let read = callback.incoming();
        assert_eq!(read.chat_id, Some(9), "a callback's chat is its message's");
        assert_eq!(read.sender.as_ref().map(|u| u.id), Some(7));
        assert!(read.typed.is_some(), "a known kind reads typed");
        let future = incoming(serde_json::json!({"update_id": 3, "future_kind": {"x": 1}}));
        assert_eq!(taken_by(&bot, &future, None), Some(2));
        let read = future.incoming();
        assert!(read.typed.is_none() && read.payload["x"] == 1);
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
        assert!(Bot::new().handler_for(&edited.probe(), None).is_none());
    }

    #[test]
    fn register_is_built_in_and_a_command_of_the_same_name_replaces_it() {
        let register = message("private", "/register alice s3cr3t-T0ken");
        let bot = Bot::new().on_any(noop);
        assert_eq!(taken_by(&bot, &register, None), Some(0));
        assert_eq!(taken_by(&bot, &message("private", "/start"), None), Some(1));
        assert!(Bot::empty().handler_for(&register.probe(), None).is_none());
        let own = Bot::new().on_any(noop).command("/Register", noop);
        assert_eq!(own.routes.len(), 2, "replaced in its place, not added");
        assert!(matches!(&own.routes[0].matcher, Matcher::Command(name) if name == "register"));
    }

    #[test]
    fn call_ids_sort_in_the_order_the_calls_were_made() {
        let update = message("private", "/note x");
        let mut records = botline_core::build_records(&update.0, 0).unwrap();
        let mut effects = Effects::default();
        for n in 0..12 {
            effects
                .calls
                .push((OutboxAction::DeleteMessage { message_id: n }, 9, None));
        }
        effects.into_records("entry", &mut records);
        let ids: Vec<&str> = records
            .outbox
            .iter()
            .map(|c| c.outbox_id.as_str())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(
            ids, sorted,
            "the embedded store orders one millisecond's calls by id"
        );
        assert_eq!(ids[11], "entry:h0012");
    }
}
