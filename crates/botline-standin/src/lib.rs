//! A local stand-in for Telegram's Bot API server, for Botline's tests and load tests.
//!
//! Telegram's servers cannot be reached from here, so tests point Botline at this server
//! (`BOTLINE_TELEGRAM_API_URL=`[`StandIn::base_url`]) and then look at what it was asked.
//!
//! ```no_run
//! use botline_standin::{Fault, Settings, StandIn};
//! use std::time::Duration;
//!
//! let standin = StandIn::start(Settings { token: "123:ABC".into(), ..Default::default() });
//! standin.fail_next(Some("sendMessage"), 1, Fault::TooManyRequests { retry_after: 2 });
//! // ... run `botline` with BOTLINE_TELEGRAM_API_URL = standin.base_url() ...
//! let sent = standin.wait_for_calls("sendMessage", 1, Duration::from_secs(10));
//! assert_eq!(sent[0].params["text"], "hello");
//! ```
//!
//! # What it imitates
//!
//! As <https://core.telegram.org/bots/api> documents it:
//!
//! - `/bot<token>/<method>` by GET or POST, parameters in the query string, a JSON body or a
//!   form-urlencoded body; method names in any case. A wrong token is 401 `Unauthorized`, an
//!   unknown method 404 `Not Found`.
//! - The envelope: `{"ok":true,"result":...}`, or `{"ok":false,"error_code":N,"description":...,
//!   "parameters":{...}}` with HTTP status N.
//! - getMe, sendMessage, sendPhoto, editMessageText, deleteMessage, answerCallbackQuery,
//!   sendChatAction, setWebhook, getWebhookInfo, deleteWebhook and getUpdates, with Telegram's
//!   result shapes and error texts: `chat not found`, `bot was blocked by the user`, `message
//!   text is empty`, `message caption is too long`, `message to edit not found`, `message is not
//!   modified: ...`, `query is too old and response timeout expired or query ID is invalid`,
//!   `wrong parameter action in request`, setWebhook's URL, port and secret-token checks,
//!   getUpdates' offset confirmation, long polling and its 409s.
//! - sendPhoto by file_id or http(s) URL: the photo comes back as three PhotoSize objects whose
//!   ids depend only on `photo` (sending one of those file_ids again gives the same photo).
//! - editMessageText on the text messages the stand-in sent (and has not deleted) in that chat;
//!   an `inline_message_id` is taken as it is, answered `true`.
//! - answerCallbackQuery: each (integer) `callback_query_id` may be answered once.
//! - Flood control, when [`Settings::enforce_limits`] is on: one message (sendMessage or
//!   sendPhoto) a second to a chat, twenty a minute to a group, thirty a second in all, else 429
//!   with `retry_after`. Edits and chat actions are not limited.
//! - Failures injected with [`StandIn::fail_next`]: 429, 5xx, any API error, a connection
//!   closed without an answer, a slow answer.
//!
//! # What it does not
//!
//! - Other methods (404), multipart bodies (400, so no uploads), fetching photo URLs or knowing
//!   which file_ids exist, inline keyboards, entities and parse modes (accepted and recorded,
//!   not checked; an edit compares the inline keyboard to tell whether anything changed).
//! - Delivering updates to the webhook: updates pushed with [`StandIn::push_updates`] wait for
//!   getUpdates; a test posts webhook updates to Botline itself. `allowed_updates` is
//!   remembered, not applied.
//! - Telegram's memory of messages: a reply's `reply_to_message` carries only its id, chat and
//!   date; any message may be deleted once unless marked [`StandIn::undeletable`]; only the
//!   messages the stand-in sent can be edited (it keeps them all, for as long as it runs).
//! - Knowing which callback queries were sent to the bot: any integer id is answered once.
//! - Webhook URLs on 127.0.0.1, localhost and `[::1]` are accepted over http and on any port
//!   while [`Settings::allow_http_webhook`] is on (the default), since tests run Botline there.
//!   Telegram refuses them.
//! - Texts Telegram never documented (an unparsable body, `max_connections` out of range) are
//!   the stand-in's own words.
//!
//! # Running it alone
//!
//! The `botline-standin` binary serves the same API for manual runs and load tests, plus control
//! endpoints under `/_standin/` (see [`Settings::control_api`]).

mod http;
pub mod lambda;
mod methods;
mod state;

pub use state::{Call, Fault, WebhookState};

use serde_json::Value;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How a stand-in behaves.
#[derive(Clone)]
pub struct Settings {
    /// The bot token accepted in `/bot<token>/`; its number is the bot's user id.
    pub token: String,
    /// The bot's username, as getMe answers it.
    pub username: String,
    /// The bot's first name, as getMe answers it.
    pub first_name: String,
    /// Accept http:// webhook URLs (and any port) on 127.0.0.1, localhost and `[::1]`.
    pub allow_http_webhook: bool,
    /// Answer 429 past Telegram's flood limits on sendMessage and sendPhoto.
    pub enforce_limits: bool,
    /// Serve the control endpoints under `/_standin/` (unauthenticated: for local use).
    pub control_api: bool,
    /// Where to listen; port 0 picks a free one.
    pub listen: SocketAddr,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            token: "123456:stand-in-token".into(),
            username: "botline_test_bot".into(),
            first_name: "Botline Test Bot".into(),
            allow_http_webhook: true,
            enforce_limits: false,
            control_api: false,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("token", &"[redacted]")
            .field("username", &self.username)
            .field("first_name", &self.first_name)
            .field("allow_http_webhook", &self.allow_http_webhook)
            .field("enforce_limits", &self.enforce_limits)
            .field("control_api", &self.control_api)
            .field("listen", &self.listen)
            .finish()
    }
}

/// What can go wrong starting or feeding a stand-in.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the stand-in's server thread: {0}")]
    Start(std::io::Error),
    #[error("update {index} has no integer update_id")]
    UpdateWithoutId { index: usize },
}

/// A running stand-in: its own tokio runtime on a background thread, serving until dropped.
///
/// Its methods may be called from any thread, inside a tokio runtime or not.
pub struct StandIn {
    shared: Arc<state::Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for StandIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandIn")
            .field("addr", &self.addr)
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl StandIn {
    /// Starts a stand-in and returns once it is listening.
    ///
    /// # Panics
    /// If it cannot listen on [`Settings::listen`]; see [`StandIn::try_start`].
    pub fn start(settings: Settings) -> Self {
        match Self::try_start(settings) {
            Ok(standin) => standin,
            Err(error) => panic!("the Telegram stand-in did not start: {error}"),
        }
    }

    /// Starts a stand-in and returns once it is listening.
    pub fn try_start(settings: Settings) -> Result<Self, Error> {
        let addr = settings.listen;
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let shared = Arc::new(state::Shared::new(settings));
        let router = http::router(shared.clone());
        let (shutdown, stop) = oneshot::channel();
        let (started, running) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("botline-standin".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("botline-standin-worker")
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = started.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let _ = started.send(Ok(()));
                            http::serve(listener, router, stop).await;
                        }
                        Err(error) => {
                            let _ = started.send(Err(error));
                        }
                    }
                });
                // Ends the connections and long polls still open.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(Error::Start)?;
        match running.recv() {
            Ok(Ok(())) => Ok(Self {
                shared,
                addr,
                shutdown: Some(shutdown),
                thread: Some(thread),
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(Error::Start(error))
            }
            Err(_) => {
                let _ = thread.join();
                Err(Error::Start(std::io::Error::other(
                    "the server thread ended before it was listening",
                )))
            }
        }
    }

    /// `http://127.0.0.1:PORT`: the Bot API's base URL, without `/bot<token>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every call answered so far, in the order they were answered.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls()
    }

    /// The calls of `method` (any case), whatever they were answered.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.shared.calls_of(method)
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.shared.clear_calls();
    }

    /// The successful (200) calls of `method`, once there are at least `n`, or whatever there
    /// are when `timeout` has passed. Blocks the thread; in async code see
    /// [`StandIn::wait_for_calls_async`].
    pub fn wait_for_calls(&self, method: &str, n: usize, timeout: Duration) -> Vec<Call> {
        self.shared.wait_for_calls(method, n, timeout)
    }

    /// [`StandIn::wait_for_calls`] for async code (needs a tokio runtime with time enabled).
    pub async fn wait_for_calls_async(
        &self,
        method: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<Call> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let succeeded = self.shared.succeeded_calls(method);
            if succeeded.len() >= n || tokio::time::Instant::now() >= deadline {
                return succeeded;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Holds the clock the flood limits read (with `enforce_limits`) at the present moment, so
    /// that a test decides how much time passes between its calls, whatever the machine's speed.
    pub fn freeze_clock(&self) {
        self.shared.freeze_clock();
    }

    /// Moves the flood limits' held clock on by `by` (holding it first if it was not).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.advance_clock(by);
    }

    /// Answers the next `count` calls of `method` (any method if `None`, any case) with `fault`
    /// instead of their own answer. Faults hit calls with the right token only, before the
    /// method is looked up; when several wait, the oldest that matches goes first.
    pub fn fail_next(&self, method: Option<&str>, count: u32, fault: Fault) {
        self.shared.fail_next(method, count, fault);
    }

    /// Queues updates for getUpdates, ordered by `update_id`, and wakes a waiting long poll.
    ///
    /// # Panics
    /// If an update has no integer `update_id`; see [`StandIn::try_push_updates`].
    pub fn push_updates(&self, updates: Vec<Value>) {
        if let Err(error) = self.try_push_updates(updates) {
            panic!("{error}");
        }
    }

    /// Queues updates for getUpdates, unless one has no integer `update_id`.
    pub fn try_push_updates(&self, updates: Vec<Value>) -> Result<(), Error> {
        self.shared.push_updates(updates)
    }

    /// The webhook as setWebhook and deleteWebhook left it.
    pub fn webhook(&self) -> WebhookState {
        self.shared.webhook()
    }

    /// The last delivery error getWebhookInfo reports (`date` in unix seconds).
    pub fn set_webhook_error(&self, date: i64, message: impl Into<String>) {
        self.shared.set_webhook_error(date, message.into());
    }

    /// From now on, sending to, editing, deleting in or sending chat actions to `chat` is 403
    /// `Forbidden: bot was blocked by the user`.
    pub fn block_chat(&self, chat: i64) {
        self.shared.with_chat(chat, |chat| chat.blocked = true);
    }

    /// From now on, `chat` is 400 `Bad Request: chat not found`.
    pub fn missing_chat(&self, chat: i64) {
        self.shared.with_chat(chat, |chat| chat.missing = true);
    }

    /// Deleting `message_id` in `chat` is 400 `Bad Request: message to delete not found`.
    pub fn undeletable(&self, chat: i64, message_id: i64) {
        self.shared.with_chat(chat, |chat| {
            chat.undeletable.insert(message_id);
        });
    }
}

impl Drop for StandIn {
    /// Stops the server, ending its open connections, and waits for its thread.
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
