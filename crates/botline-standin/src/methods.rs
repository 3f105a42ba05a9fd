//! The Bot API methods the stand-in knows, answering as Telegram does
//! (<https://core.telegram.org/bots/api>): the same envelope, result shapes and error texts.

use crate::Settings;
use crate::state::{Shared, State};
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The methods answered; any other name is 404, as Telegram answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    GetMe,
    SendMessage,
    DeleteMessage,
    SetWebhook,
    GetWebhookInfo,
    DeleteWebhook,
    GetUpdates,
}

impl Method {
    const ALL: [Self; 7] = [
        Self::GetMe,
        Self::SendMessage,
        Self::DeleteMessage,
        Self::SetWebhook,
        Self::GetWebhookInfo,
        Self::DeleteWebhook,
        Self::GetUpdates,
    ];

    /// The method called `name`, in any case (Telegram ignores case in method names).
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|method| method.name().eq_ignore_ascii_case(name))
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::GetMe => "getMe",
            Self::SendMessage => "sendMessage",
            Self::DeleteMessage => "deleteMessage",
            Self::SetWebhook => "setWebhook",
            Self::GetWebhookInfo => "getWebhookInfo",
            Self::DeleteWebhook => "deleteWebhook",
            Self::GetUpdates => "getUpdates",
        }
    }
}

/// An answer: the HTTP status and the Bot API envelope.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Reply {
    pub(crate) fn ok(result: Value) -> Self {
        Self {
            status: 200,
            body: json!({ "ok": true, "result": result }),
        }
    }

    /// A success that also says what happened (setWebhook's "Webhook was set").
    fn ok_described(result: Value, description: &str) -> Self {
        Self {
            status: 200,
            body: json!({ "ok": true, "result": result, "description": description }),
        }
    }

    pub(crate) fn error(code: u16, description: &str) -> Self {
        Self {
            status: code,
            body: json!({ "ok": false, "error_code": code, "description": description }),
        }
    }

    pub(crate) fn too_many_requests(retry_after: u32) -> Self {
        Self {
            status: 429,
            body: json!({
                "ok": false,
                "error_code": 429,
                "description": format!("Too Many Requests: retry after {retry_after}"),
                "parameters": { "retry_after": retry_after },
            }),
        }
    }

    pub(crate) fn unauthorized() -> Self {
        Self::error(401, "Unauthorized")
    }

    pub(crate) fn not_found() -> Self {
        Self::error(404, "Not Found")
    }

    /// A 5xx from Telegram's front end, described the way HTTP names the status.
    pub(crate) fn server_error(status: u16) -> Self {
        let description = match status {
            500 => "Internal Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Server Error",
        };
        Self::error(status, description)
    }
}

fn bad_request(what: &str) -> Reply {
    Reply::error(400, &format!("Bad Request: {what}"))
}

fn chat_not_found() -> Reply {
    bad_request("chat not found")
}

fn blocked() -> Reply {
    Reply::error(403, "Forbidden: bot was blocked by the user")
}

/// A call's parameters, read as Telegram reads them: a number may come as a string, an object
/// or array as a JSON-serialized string (form-urlencoded bodies and query strings carry only
/// strings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params<'a>(pub(crate) &'a Map<String, Value>);

impl Params<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|value| !value.is_null())
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn text(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    fn flag(&self, key: &str) -> bool {
        match self.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => matches!(s.trim(), "true" | "True" | "1"),
            Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
            _ => false,
        }
    }

    fn json(&self, key: &str) -> Option<Value> {
        match self.get(key)? {
            Value::String(s) => serde_json::from_str(s).ok(),
            other => Some(other.clone()),
        }
    }
}

/// Whom `chat_id` names.
enum Target {
    Id(i64),
    Channel(String),
}

fn target(params: Params<'_>) -> Result<Target, Reply> {
    let chat_is_empty = || bad_request("chat_id is empty");
    match params.get("chat_id") {
        None => Err(chat_is_empty()),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|&id| id != 0)
            .map(Target::Id)
            .ok_or_else(chat_not_found),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.is_empty() {
                Err(chat_is_empty())
            } else if let Ok(id) = s.parse::<i64>() {
                if id == 0 {
                    Err(chat_not_found())
                } else {
                    Ok(Target::Id(id))
                }
            } else {
                match s.strip_prefix('@') {
                    Some(name)
                        if !name.is_empty()
                            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        Ok(Target::Channel(name.to_owned()))
                    }
                    _ => Err(chat_not_found()),
                }
            }
        }
        Some(_) => Err(chat_not_found()),
    }
}

impl State {
    fn chat_id(&mut self, target: &Target) -> i64 {
        match target {
            Target::Id(id) => *id,
            Target::Channel(name) => self.channel_id(name),
        }
    }

    /// The `Chat` object for `id`: a private chat for positive ids, a supergroup for
    /// `-100…` ids, a basic group for other negative ids, a channel for one named `@name`.
    fn chat_json(&self, id: i64) -> Value {
        if let Some(name) = self.channel_name(id) {
            json!({ "id": id, "type": "channel", "title": name, "username": name })
        } else if id > 0 {
            json!({ "id": id, "type": "private", "first_name": format!("User {id}") })
        } else if id <= -1_000_000_000_000 {
            json!({ "id": id, "type": "supergroup", "title": format!("Supergroup {id}") })
        } else {
            json!({ "id": id, "type": "group", "title": format!("Group {id}") })
        }
    }
}

/// The bot's id: the number before the token's colon, as Telegram's tokens are made.
fn bot_id(settings: &Settings) -> i64 {
    settings
        .token
        .split_once(':')
        .and_then(|(id, _)| id.parse().ok())
        .unwrap_or(1)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The longest text sendMessage takes, in UTF-16 code units.
const MAX_TEXT: usize = 4096;
/// Telegram's default for setWebhook's `max_connections`.
const DEFAULT_MAX_CONNECTIONS: i64 = 40;
/// The ports Telegram delivers webhooks to.
const WEBHOOK_PORTS: [u16; 4] = [443, 80, 88, 8443];
/// The longest long poll the stand-in holds (Telegram documents no limit).
const MAX_POLL: Duration = Duration::from_secs(3600);

impl Shared {
    /// Answers one call of a method that answers at once (all but getUpdates).
    pub(crate) fn answer(&self, method: Method, params: Params<'_>) -> Reply {
        let settings = &self.settings;
        let mut state = self.lock();
        match method {
            Method::GetMe => get_me(settings),
            Method::SendMessage => send_message(&mut state, settings, params),
            Method::DeleteMessage => delete_message(&mut state, params),
            Method::SetWebhook => {
                let reply = set_webhook(&mut state, settings, params);
                drop(state);
                self.wake_polls();
                reply
            }
            Method::GetWebhookInfo => get_webhook_info(&state),
            Method::DeleteWebhook => {
                let reply = remove_webhook(&mut state, params.flag("drop_pending_updates"));
                drop(state);
                self.wake_polls();
                reply
            }
            Method::GetUpdates => {
                unreachable!("getUpdates may wait; it is answered by get_updates")
            }
        }
    }

    /// getUpdates: the queued updates from `offset` on, waiting up to `timeout` seconds for some
    /// when there are none.
    pub(crate) async fn get_updates(&self, params: Params<'_>) -> Reply {
        let offset = params.int("offset");
        let limit =
            usize::try_from(params.int("limit").unwrap_or(100).clamp(1, 100)).unwrap_or(100);
        let timeout = Duration::from_secs(params.int("timeout").unwrap_or(0).max(0).unsigned_abs())
            .min(MAX_POLL);
        let me = {
            let mut state = self.lock();
            if state.webhook.is_set() {
                return Reply::error(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
                );
            }
            state.confirm(offset);
            state.poller += 1;
            state.poller
        };
        // A getUpdates that is still waiting is ended by this one, as Telegram ends it.
        self.wake_polls();
        let mut changes = self.poll_changes();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let mut state = self.lock();
                if state.poller != me {
                    return Reply::error(
                        409,
                        "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
                    );
                }
                if state.webhook.is_set() {
                    return Reply::error(409, "Conflict: terminated by setWebhook request");
                }
                // Updates pushed while waiting may still be below the offset.
                state.confirm(offset.filter(|&offset| offset > 0));
                if !state.updates.is_empty() || tokio::time::Instant::now() >= deadline {
                    let updates: Vec<Value> = state.updates.iter().take(limit).cloned().collect();
                    return Reply::ok(Value::Array(updates));
                }
            }
            if let Ok(Err(_)) = tokio::time::timeout_at(deadline, changes.changed()).await {
                // The sender lives as long as `self`: this cannot happen, but must not spin.
                return Reply::ok(json!([]));
            }
        }
    }
}

fn bot_user(settings: &Settings) -> Value {
    json!({
        "id": bot_id(settings),
        "is_bot": true,
        "first_name": settings.first_name,
        "username": settings.username,
    })
}

fn get_me(settings: &Settings) -> Reply {
    let mut user = bot_user(settings);
    if let Value::Object(fields) = &mut user {
        fields.insert("can_join_groups".into(), true.into());
        fields.insert("can_read_all_group_messages".into(), false.into());
        fields.insert("supports_inline_queries".into(), false.into());
    }
    Reply::ok(user)
}

fn send_message(state: &mut State, settings: &Settings, params: Params<'_>) -> Reply {
    let target = match target(params) {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    let text = params.text("text").unwrap_or_default();
    if text.trim().is_empty() {
        return bad_request("message text is empty");
    }
    if text.encode_utf16().count() > MAX_TEXT {
        return bad_request("message is too long");
    }
    let chat_id = state.chat_id(&target);
    let chat_json = state.chat_json(chat_id);
    let chat = state.chats.entry(chat_id).or_default();
    if chat.missing {
        return chat_not_found();
    }
    if chat.blocked {
        return blocked();
    }
    let now = Instant::now();
    if settings.enforce_limits
        && let Err(retry_after) = state.flood.check(chat_id, now)
    {
        return Reply::too_many_requests(retry_after);
    }
    state.flood.sent(chat_id, now);
    chat.last_message_id += 1;
    let date = unix_now();
    let mut message = json!({
        "message_id": chat.last_message_id,
        "from": bot_user(settings),
        "chat": chat_json,
        "date": date,
        "text": text,
    });
    let reply_to = params
        .json("reply_parameters")
        .and_then(|reply| Params(reply.as_object()?).int("message_id"))
        .or_else(|| params.int("reply_to_message_id"));
    if let Some(reply_to) = reply_to {
        // Only what the stand-in knows of the message answered: the rest is Telegram's memory.
        message["reply_to_message"] = json!({
            "message_id": reply_to,
            "chat": message["chat"].clone(),
            "date": date,
        });
    }
    Reply::ok(message)
}

fn delete_message(state: &mut State, params: Params<'_>) -> Reply {
    let target = match target(params) {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    let Some(message_id) = params.int("message_id") else {
        return bad_request("message identifier is not specified");
    };
    let chat_id = state.chat_id(&target);
    let chat = state.chats.entry(chat_id).or_default();
    if chat.missing {
        return chat_not_found();
    }
    if chat.blocked {
        return blocked();
    }
    if chat.undeletable.contains(&message_id) || !chat.deleted.insert(message_id) {
        return bad_request("message to delete not found");
    }
    Reply::ok(json!(true))
}

fn set_webhook(state: &mut State, settings: &Settings, params: Params<'_>) -> Reply {
    let url = params.text("url").unwrap_or_default().trim().to_owned();
    let drop_pending = params.flag("drop_pending_updates");
    if url.is_empty() {
        return remove_webhook(state, drop_pending);
    }
    if let Err(reply) = check_webhook_url(&url, settings.allow_http_webhook) {
        return reply;
    }
    let secret_token = match params.get("secret_token") {
        None => None,
        Some(_) => match params.text("secret_token") {
            Some(secret) if is_secret_token(&secret) => Some(secret),
            _ => return bad_request("secret token contains unallowed characters"),
        },
    };
    let max_connections = match params.get("max_connections") {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(_) => match params.int("max_connections") {
            Some(n) if (1..=100).contains(&n) => n,
            _ => return bad_request("max_connections must be between 1 and 100"),
        },
    };
    if params.get("allowed_updates").is_some() {
        match params
            .json("allowed_updates")
            .and_then(|kinds| serde_json::from_value::<Vec<String>>(kinds).ok())
        {
            Some(kinds) => state.webhook.allowed_updates = Some(kinds),
            None => return bad_request("can't parse allowed updates"),
        }
    }
    if drop_pending {
        state.updates.clear();
    }
    let already = state.webhook.url == url;
    state.webhook.url = url;
    state.webhook.secret_token = secret_token;
    state.webhook.max_connections = u32::try_from(max_connections).ok();
    let description = if already {
        "Webhook is already set"
    } else {
        "Webhook was set"
    };
    Reply::ok_described(json!(true), description)
}

/// setWebhook with an empty URL, or deleteWebhook.
fn remove_webhook(state: &mut State, drop_pending: bool) -> Reply {
    if drop_pending {
        state.updates.clear();
    }
    let was_set = state.webhook.is_set();
    state.webhook.url.clear();
    state.webhook.secret_token = None;
    state.webhook.max_connections = None;
    let description = if was_set {
        "Webhook was deleted"
    } else {
        "Webhook is already deleted"
    };
    Reply::ok_described(json!(true), description)
}

fn get_webhook_info(state: &State) -> Reply {
    let webhook = state.webhook_state();
    let mut info = json!({
        "url": webhook.url,
        "has_custom_certificate": false,
        "pending_update_count": webhook.pending_update_count,
    });
    if let Some(date) = webhook.last_error_date {
        info["last_error_date"] = json!(date);
    }
    if let Some(message) = webhook.last_error_message {
        info["last_error_message"] = json!(message);
    }
    if let Some(max) = webhook.max_connections {
        info["max_connections"] = json!(max);
    }
    if let Some(kinds) = webhook.allowed_updates {
        info["allowed_updates"] = json!(kinds);
    }
    Reply::ok(info)
}

/// 1–256 characters of `A-Z`, `a-z`, `0-9`, `_` and `-`, as setWebhook documents.
fn is_secret_token(secret: &str) -> bool {
    (1..=256).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Telegram delivers only to HTTPS on ports 443, 80, 88 and 8443. With `allow_local_http`,
/// any URL on 127.0.0.1, localhost or [::1] is taken too, since tests run Botline there.
fn check_webhook_url(url: &str, allow_local_http: bool) -> Result<(), Reply> {
    let https_only = || bad_request("bad webhook: An HTTPS URL must be provided for webhook");
    let (scheme, rest) = url.split_once("://").ok_or_else(https_only)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (host_port, None),
    };
    if host.is_empty() {
        return Err(bad_request(
            "bad webhook: Failed to resolve host: Name or service not known",
        ));
    }
    let scheme = scheme.to_ascii_lowercase();
    let local = ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|local| host.eq_ignore_ascii_case(local));
    if allow_local_http && local && (scheme == "http" || scheme == "https") {
        return Ok(());
    }
    if scheme != "https" {
        return Err(https_only());
    }
    let port = match port {
        None | Some("") => 443,
        Some(port) => port.parse().unwrap_or(0),
    };
    if !WEBHOOK_PORTS.contains(&port) {
        return Err(bad_request(
            "bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_ignore_case() {
        assert_eq!(Method::parse("SENDMESSAGE"), Some(Method::SendMessage));
        assert_eq!(Method::parse("getupdates"), Some(Method::GetUpdates));
        assert_eq!(Method::parse("sendPhoto"), None);
    }

    #[test]
    fn webhook_urls_like_telegram() {
        for good in [
            "https://example.org/hook",
            "https://example.org:8443/hook?x=1",
            "https://user@example.org:88",
            "http://127.0.0.1:8080/telegram/webhook",
            "http://localhost:1/",
            "http://[::1]:9000/x",
        ] {
            assert!(check_webhook_url(good, true).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("http://example.org/hook", "HTTPS URL"),
            ("example.org", "HTTPS URL"),
            ("ftp://example.org", "HTTPS URL"),
            ("https://example.org:8080/hook", "ports 80, 88, 443 or 8443"),
            ("https:///hook", "resolve host"),
        ] {
            let reply = check_webhook_url(bad, true).unwrap_err();
            let description = reply.body["description"].as_str().unwrap();
            assert!(description.contains(why), "{bad}: {description}");
        }
        assert!(check_webhook_url("http://127.0.0.1:8080/", false).is_err());
    }

    #[test]
    fn secret_tokens_like_telegram() {
        assert!(is_secret_token("abc-DEF_123"));
        assert!(is_secret_token(&"a".repeat(256)));
        assert!(!is_secret_token(""));
        assert!(!is_secret_token(&"a".repeat(257)));
        assert!(!is_secret_token("with space"));
        assert!(!is_secret_token("dot."));
    }
}
