//! The Bot API client: frankenstein's typed calls, with the bot token kept out of sight and
//! Telegram's answers sorted into what the sender and the operator commands act on.
//!
//! The token is part of every request's URL path (`{api}/bot<token>/<method>`). frankenstein
//! strips URLs from its HTTP errors; on top of that, this module never formats its `Bot` (whose
//! `Debug` shows the URL), and [`Telegram::scrub`] removes the token from any text that leaves
//! here, in case an answer or a proxy echoes it.

use botline_core::Handling;
use frankenstein::AsyncTelegramApi;
use frankenstein::client_reqwest::Bot;
use frankenstein::methods::{
    DeleteMessageParams, DeleteWebhookParams, GetUpdatesParams, SendMessageParams, SetWebhookParams,
};
use frankenstein::response::{ErrorResponse, MethodResponse};
use frankenstein::types::{AllowedUpdate, ReplyParameters};
use frankenstein::updates::WebhookInfo;
use serde_json::value::RawValue;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// Where the Bot API is unless `BOTLINE_TELEGRAM_API_URL` says otherwise.
pub const DEFAULT_API_URL: &str = "https://api.telegram.org";
/// The longest a call (other than a long poll) may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than its `timeout` a long poll may take before it counts as failed.
const POLL_SLACK: Duration = Duration::from_secs(15);
/// Error texts kept from Telegram's answers, at most.
const MAX_REASON: usize = 500;

/// The bot token from @BotFather: `<bot id>:<secret>`. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct BotToken(String);

impl BotToken {
    pub fn new(value: &str) -> Result<Self, &'static str> {
        let value = value.trim_end_matches(['\n', '\r']);
        let Some((id, secret)) = value.split_once(':') else {
            return Err("a bot token looks like 123456:ABC-DEF..., as @BotFather gives it");
        };
        let id_ok = !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit());
        let secret_ok = !secret.is_empty()
            && secret.len() <= 128
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !(id_ok && secret_ok) {
            return Err("a bot token looks like 123456:ABC-DEF..., as @BotFather gives it");
        }
        Ok(Self(value.to_owned()))
    }

    /// Reads a token from `BOTLINE_BOT_TOKEN`, else from `file`; `None` when neither is set.
    pub fn from_env_or_file(file: Option<&Path>) -> Result<Option<Self>, String> {
        if let Ok(value) = std::env::var("BOTLINE_BOT_TOKEN") {
            if file.is_some() {
                return Err("set BOTLINE_BOT_TOKEN or a bot token file, not both".into());
            }
            return Self::new(&value)
                .map(Some)
                .map_err(|e| format!("BOTLINE_BOT_TOKEN: {e}"));
        }
        let Some(path) = file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::new(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The token itself, for what must be keyed by it (the Mini App `initData` check); never
    /// for a log or an error.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The numeric part, which is public (it is the bot's user id).
    pub fn bot_id(&self) -> &str {
        self.0.split_once(':').map_or("", |(id, _)| id)
    }
}

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BotToken({}:[redacted])", self.bot_id())
    }
}

/// Why a call did not succeed, as the caller acts on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// 429: Telegram asks to wait before this chat (or the bot) is tried again.
    #[error("Telegram asked to retry after {}s: {description}", .after.as_secs())]
    RetryAfter {
        after: Duration,
        description: String,
    },
    /// Telegram refused the call for good (400, 403: chat not found, bot blocked, ...).
    #[error("Telegram refused the call ({code}): {description}")]
    Refused { code: u64, description: String },
    /// The token is wrong or revoked (401, 404): nothing will work until it is fixed.
    #[error("Telegram refused the bot token ({code}): {description}")]
    Unauthorized { code: u64, description: String },
    /// 409: a webhook is set, so getUpdates is not allowed (or the other way round).
    #[error("Telegram answered 409: {description}")]
    Conflict { description: String },
    /// 5xx, a network failure or an answer that is not Telegram's: try again later.
    #[error("Telegram could not be reached: {0}")]
    Transient(String),
}

impl CallError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RetryAfter { .. } | Self::Transient(_) | Self::Unauthorized { .. }
        )
    }
}

/// A Bot API client for one bot.
#[derive(Clone)]
pub struct Telegram {
    /// Calls that answer at once.
    bot: Bot,
    /// getUpdates, whose answer may take the long-poll timeout.
    poller: Bot,
    token: BotToken,
    /// The base URL without the token, for logs.
    base: String,
}

impl fmt::Debug for Telegram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telegram")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish()
    }
}

impl Telegram {
    /// A client for `token` on the Bot API at `base` (`https://api.telegram.org`, a local Bot API
    /// server, or a test stand-in). `poll_timeout` is the longest long poll this client makes.
    pub fn new(base: &str, token: BotToken, poll_timeout: Duration) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(format!(
                "the Telegram API URL must start with https:// or http://, not {base:?}"
            ));
        }
        let client = |timeout: Duration| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(timeout)
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        };
        let api_url = format!("{base}/bot{}", token.0);
        Ok(Self {
            bot: Bot::builder()
                .api_url(api_url.clone())
                .client(client(CALL_TIMEOUT)?)
                .build(),
            poller: Bot::builder()
                .api_url(api_url)
                .client(client(poll_timeout + POLL_SLACK)?)
                .build(),
            token,
            base,
        })
    }

    /// The API's base URL (without the token).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `text` with the bot token replaced, for anything that is logged, stored or printed.
    pub fn scrub(&self, text: &str) -> String {
        let secret = self.token.0.split_once(':').map_or("", |(_, s)| s);
        let mut text = text.replace(&self.token.0, "[redacted]");
        if !secret.is_empty() {
            text = text.replace(secret, "[redacted]");
        }
        if text.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }

    fn classify(&self, error: frankenstein::Error) -> CallError {
        match error {
            frankenstein::Error::Api(ErrorResponse {
                description,
                error_code,
                parameters,
                ..
            }) => {
                let description = self.scrub(&description);
                let retry_after = parameters.as_ref().and_then(|p| p.retry_after);
                match error_code {
                    429 => CallError::RetryAfter {
                        // Telegram always says how long; if not, a short pause is safe.
                        after: Duration::from_secs(u64::from(retry_after.unwrap_or(1)).max(1)),
                        description,
                    },
                    401 | 404 => CallError::Unauthorized {
                        code: error_code,
                        description,
                    },
                    409 => CallError::Conflict { description },
                    code if code >= 500 => {
                        CallError::Transient(format!("Telegram answered {code}: {description}"))
                    }
                    code => CallError::Refused { code, description },
                }
            }
            // A body that is not Telegram's envelope: a proxy's error page, a cut connection.
            frankenstein::Error::JsonDecode { source, .. } => CallError::Transient(
                self.scrub(&format!("the answer is not a Bot API response: {source}")),
            ),
            other => CallError::Transient(self.scrub(&error_chain(&other))),
        }
    }

    async fn ask<P, T>(&self, method: &str, params: &P) -> Result<T, CallError>
    where
        P: serde::Serialize + fmt::Debug + Send + Sync,
        T: serde::de::DeserializeOwned,
    {
        self.bot
            .request::<_, MethodResponse<T>>(method, Some(params))
            .await
            .map(|response| response.result)
            .map_err(|e| self.classify(e))
    }

    /// getMe: the bot's own user.
    pub async fn get_me(&self) -> Result<frankenstein::types::User, CallError> {
        self.bot
            .get_me()
            .await
            .map(|r| r.result)
            .map_err(|e| self.classify(e))
    }

    /// What the bot knows of itself, from getMe: its username, or `configured` when Telegram
    /// gives none. A configured username that differs from Telegram's is logged, and Telegram's
    /// is used. `serve` asks until Telegram answers; the worker Lambda function once per
    /// execution environment.
    pub async fn identify(&self, configured: Option<&str>) -> Result<Handling, CallError> {
        let me = self.get_me().await?;
        tracing::info!(bot_id = me.id, username = ?me.username, "Telegram knows the bot");
        if let (Some(configured), Some(actual)) = (configured, &me.username)
            && !configured.eq_ignore_ascii_case(actual)
        {
            tracing::warn!(configured = %configured, actual = %actual, "bot_username differs from what Telegram says; using Telegram's");
        }
        Ok(Handling {
            bot_username: me.username.or_else(|| configured.map(str::to_owned)),
        })
    }

    /// sendMessage; the id of the message Telegram sent.
    pub async fn send_message(
        &self,
        chat_id: i64,
        text: &str,
        reply_to: Option<i64>,
    ) -> Result<i64, CallError> {
        let reply = reply_to.and_then(|id| i32::try_from(id).ok()).map(|id| {
            ReplyParameters::builder()
                .message_id(id)
                // The message answered may be gone (deleted in a group): answer anyway.
                .allow_sending_without_reply(true)
                .build()
        });
        let params = SendMessageParams::builder()
            .chat_id(chat_id)
            .text(text)
            .maybe_reply_parameters(reply)
            .build();
        let sent: frankenstein::types::Message = self.ask("sendMessage", &params).await?;
        Ok(i64::from(sent.message_id))
    }

    /// Any Bot API method with its parameters as Telegram takes them; the id of the message it
    /// sent or edited, when its result is a message.
    pub async fn call(
        &self,
        method: &str,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<i64>, CallError> {
        match self.ask::<_, serde_json::Value>(method, params).await {
            Ok(result) => Ok(result.get("message_id").and_then(serde_json::Value::as_i64)),
            // A well-formed token that Telegram does not know is 401; 404 is a method it does
            // not have (a typo, or one this bot's Telegram does not offer yet): final, as a 400.
            Err(CallError::Unauthorized {
                code: 404,
                description,
            }) => Err(CallError::Refused {
                code: 404,
                description: format!("the Bot API has no method {method:?}: {description}"),
            }),
            Err(e) => Err(e),
        }
    }

    /// deleteMessage.
    pub async fn delete_message(&self, chat_id: i64, message_id: i64) -> Result<(), CallError> {
        let message_id = i32::try_from(message_id).map_err(|_| CallError::Refused {
            code: 400,
            description: format!("message id {message_id} is out of range"),
        })?;
        let params = DeleteMessageParams::builder()
            .chat_id(chat_id)
            .message_id(message_id)
            .build();
        let _: bool = self.ask("deleteMessage", &params).await?;
        Ok(())
    }

    /// setWebhook.
    pub async fn set_webhook(&self, webhook: &WebhookRequest) -> Result<(), CallError> {
        let params = SetWebhookParams::builder()
            .url(webhook.url.clone())
            .maybe_max_connections(webhook.max_connections)
            .maybe_allowed_updates(webhook.allowed_updates.clone())
            .maybe_drop_pending_updates(webhook.drop_pending_updates.then_some(true))
            .maybe_secret_token(webhook.secret_token.clone())
            .build();
        let _: bool = self.ask("setWebhook", &params).await?;
        Ok(())
    }

    /// getWebhookInfo.
    pub async fn webhook_info(&self) -> Result<WebhookInfo, CallError> {
        self.bot
            .get_webhook_info()
            .await
            .map(|r| r.result)
            .map_err(|e| self.classify(e))
    }

    /// deleteWebhook.
    pub async fn delete_webhook(&self, drop_pending_updates: bool) -> Result<(), CallError> {
        let params = DeleteWebhookParams::builder()
            .maybe_drop_pending_updates(drop_pending_updates.then_some(true))
            .build();
        let _: bool = self.ask("deleteWebhook", &params).await?;
        Ok(())
    }

    /// getUpdates, each update as the exact JSON Telegram sent (so it is kept byte for byte, as
    /// a webhook body is).
    pub async fn get_updates(
        &self,
        offset: Option<i64>,
        limit: u32,
        timeout: Duration,
    ) -> Result<Vec<Box<RawValue>>, CallError> {
        let params = GetUpdatesParams::builder()
            .maybe_offset(offset)
            .limit(limit)
            .timeout(u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX))
            .build();
        self.poller
            .request::<_, MethodResponse<Vec<Box<RawValue>>>>("getUpdates", Some(&params))
            .await
            .map(|response| response.result)
            .map_err(|e| self.classify(e))
    }
}

/// What `botline webhook set` asks Telegram for.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    pub url: String,
    pub max_connections: Option<u32>,
    pub allowed_updates: Option<Vec<AllowedUpdate>>,
    pub drop_pending_updates: bool,
    pub secret_token: Option<String>,
}

impl fmt::Debug for WebhookRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookRequest")
            .field("url", &self.url)
            .field("max_connections", &self.max_connections)
            .field("allowed_updates", &self.allowed_updates)
            .field("drop_pending_updates", &self.drop_pending_updates)
            .field(
                "secret_token",
                &self.secret_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Reads `message,edited_message,...` as Telegram's update kinds.
pub fn parse_allowed_updates(kinds: &str) -> Result<Vec<AllowedUpdate>, String> {
    kinds
        .split(',')
        .map(str::trim)
        .filter(|kind| !kind.is_empty())
        .map(|kind| {
            serde_json::from_value(serde_json::Value::String(kind.to_owned()))
                .map_err(|_| format!("{kind:?} is not an update kind Telegram knows (e.g. message, edited_message, callback_query)"))
        })
        .collect()
}

/// An error and its sources, `: `-separated (reqwest's top line alone says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456:AAH-secret_part";

    fn telegram() -> Telegram {
        Telegram::new(
            "http://127.0.0.1:9",
            BotToken::new(TOKEN).unwrap(),
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn tokens_have_botfathers_shape_and_are_never_printed() {
        let token = BotToken::new("123456:AAH-secret_part\n").unwrap();
        assert_eq!(token.bot_id(), "123456");
        assert!(!format!("{token:?}").contains("secret"));
        for bad in [
            "",
            "nocolon",
            ":abc",
            "12:",
            "12:a b",
            "x1:abc",
            "12:abc/def",
        ] {
            let error = BotToken::new(bad).unwrap_err();
            assert!(!error.contains(bad) || bad.is_empty(), "{error}");
        }
        assert!(!format!("{:?}", telegram()).contains("secret_part"));
    }

    #[test]
    fn scrub_removes_the_token_and_its_secret_half() {
        let t = telegram();
        let scrubbed = t.scrub(&format!("GET /bot{TOKEN}/getMe and AAH-secret_part alone"));
        assert!(!scrubbed.contains("secret_part"), "{scrubbed}");
        assert!(t.scrub(&"x".repeat(2000)).chars().count() <= MAX_REASON + 1);
    }

    fn api(code: u64, description: &str, retry_after: Option<u16>) -> frankenstein::Error {
        let body = serde_json::json!({
            "ok": false, "error_code": code, "description": description,
            "parameters": {"retry_after": retry_after},
        });
        frankenstein::Error::Api(serde_json::from_value(body).unwrap())
    }

    #[test]
    fn answers_are_sorted_by_what_to_do() {
        let t = telegram();
        assert_eq!(
            t.classify(api(429, "Too Many Requests: retry after 7", Some(7))),
            CallError::RetryAfter {
                after: Duration::from_secs(7),
                description: "Too Many Requests: retry after 7".into()
            }
        );
        assert!(matches!(
            t.classify(api(403, "Forbidden: bot was blocked by the user", None)),
            CallError::Refused { code: 403, .. }
        ));
        assert!(matches!(
            t.classify(api(400, "Bad Request: chat not found", None)),
            CallError::Refused { code: 400, .. }
        ));
        assert!(matches!(
            t.classify(api(502, "Bad Gateway", None)),
            CallError::Transient(_)
        ));
        assert!(matches!(
            t.classify(api(401, "Unauthorized", None)),
            CallError::Unauthorized { .. }
        ));
        assert!(matches!(
            t.classify(api(409, "Conflict: can't use getUpdates", None)),
            CallError::Conflict { .. }
        ));
        let echoed = t.classify(api(400, &format!("bad url /bot{TOKEN}/x"), None));
        assert!(!echoed.to_string().contains("secret_part"), "{echoed}");
        assert!(
            !CallError::Refused {
                code: 400,
                description: String::new()
            }
            .is_retryable()
        );
    }

    #[test]
    fn allowed_updates_are_telegrams_kinds() {
        assert_eq!(
            parse_allowed_updates("message, callback_query").unwrap(),
            vec![AllowedUpdate::Message, AllowedUpdate::CallbackQuery]
        );
        assert!(
            parse_allowed_updates("message,bogus")
                .unwrap_err()
                .contains("bogus")
        );
    }

    #[tokio::test]
    async fn a_network_failure_is_transient_and_names_no_token() {
        let error = telegram().get_me().await.unwrap_err();
        assert!(matches!(error, CallError::Transient(_)), "{error:?}");
        assert!(!error.to_string().contains("secret_part"), "{error}");
    }
}
