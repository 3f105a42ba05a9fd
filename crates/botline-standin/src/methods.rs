//! The Bot API methods the stand-in knows, answering as Telegram does
//! (<https://core.telegram.org/bots/api>): the same envelope, result shapes and error texts.

use crate::Settings;
use crate::state::{Sent, Shared, State};
use serde_json::{Map, Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The methods answered; any other name is 404, as Telegram answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    GetMe,
    SendMessage,
    SendPhoto,
    EditMessageText,
    DeleteMessage,
    AnswerCallbackQuery,
    SendChatAction,
    SetWebhook,
    GetWebhookInfo,
    DeleteWebhook,
    GetUpdates,
}

impl Method {
    const ALL: [Self; 11] = [
        Self::GetMe,
        Self::SendMessage,
        Self::SendPhoto,
        Self::EditMessageText,
        Self::DeleteMessage,
        Self::AnswerCallbackQuery,
        Self::SendChatAction,
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
            Self::SendPhoto => "sendPhoto",
            Self::EditMessageText => "editMessageText",
            Self::DeleteMessage => "deleteMessage",
            Self::AnswerCallbackQuery => "answerCallbackQuery",
            Self::SendChatAction => "sendChatAction",
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

/// The longest text sendMessage and editMessageText take, in UTF-16 code units.
const MAX_TEXT: usize = 4096;
/// The longest photo caption, in UTF-16 code units.
const MAX_CAPTION: usize = 1024;
/// The longest notification answerCallbackQuery shows, in UTF-16 code units.
const MAX_CALLBACK_TEXT: usize = 200;
/// sendChatAction's actions: those documented, and the older names Telegram still takes
/// (`record_audio`, `upload_audio`, `pick_up_location`) and `cancel`, as its Bot API server does.
const CHAT_ACTIONS: [&str; 15] = [
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
    "record_audio",
    "upload_audio",
    "pick_up_location",
    "cancel",
];
/// The sizes a sent photo comes in, smallest first: Telegram's size letter, width, height.
const PHOTO_SIZES: [(&str, u32, u32); 3] = [("s", 90, 60), ("m", 320, 213), ("x", 800, 533)];
/// How the stand-in's photo file_ids begin (`AgAC` as Telegram's photos' do).
const PHOTO_FILE_ID: &str = "AgACStandInPhoto";
/// How the stand-in's photo file_unique_ids begin.
const PHOTO_UNIQUE_ID: &str = "AQADStandIn";
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
            Method::SendPhoto => send_photo(&mut state, settings, params),
            Method::EditMessageText => edit_message_text(&mut state, settings, params),
            Method::DeleteMessage => delete_message(&mut state, params),
            Method::AnswerCallbackQuery => answer_callback_query(&mut state, params),
            Method::SendChatAction => send_chat_action(&mut state, params),
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
    // Telegram looks at the text before the chat.
    let text = params.text("text").unwrap_or_default();
    if text.trim().is_empty() {
        return bad_request("message text is empty");
    }
    if text.encode_utf16().count() > MAX_TEXT {
        return bad_request("message is too long");
    }
    let target = match target(params) {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    let content = json!({ "text": text });
    deliver(state, settings, params, &target, content, Some(text))
}

/// sendPhoto by `file_id` or URL. Uploads are multipart bodies, which the stand-in does not read
/// (they are answered 400 before any method's own checks).
fn send_photo(state: &mut State, settings: &Settings, params: Params<'_>) -> Reply {
    let sizes = match params.text("photo").as_deref() {
        // `attach://name` names a part of a multipart body, and there is none.
        None | Some("") => return bad_request("there is no photo in the request"),
        Some(photo) if photo.starts_with("attach://") => {
            return bad_request("there is no photo in the request");
        }
        Some(photo) => match photo_sizes(photo) {
            Some(sizes) => sizes,
            None => return bad_request("wrong file identifier/HTTP URL specified"),
        },
    };
    let caption = params
        .text("caption")
        .filter(|caption| !caption.trim().is_empty());
    if caption
        .as_ref()
        .is_some_and(|caption| caption.encode_utf16().count() > MAX_CAPTION)
    {
        return bad_request("message caption is too long");
    }
    let target = match target(params) {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    let mut content = json!({ "photo": sizes });
    if let Some(caption) = caption {
        content["caption"] = json!(caption);
    }
    deliver(state, settings, params, &target, content, None)
}

/// Sends a message whose own parameters have been checked: to a chat that exists and has not
/// blocked the bot, within the flood limits (when enforced). `content` holds the fields of the
/// Message past those every message has; the message is remembered for editMessageText.
fn deliver(
    state: &mut State,
    settings: &Settings,
    params: Params<'_>,
    target: &Target,
    content: Value,
    text: Option<String>,
) -> Reply {
    let chat_id = state.chat_id(target);
    let chat_json = state.chat_json(chat_id);
    let now = state.now();
    let chat = state.chats.entry(chat_id).or_default();
    if chat.missing {
        return chat_not_found();
    }
    if chat.blocked {
        return blocked();
    }
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
    });
    if let (Value::Object(fields), Value::Object(content)) = (&mut message, content) {
        fields.extend(content);
    }
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
    chat.messages.insert(
        chat.last_message_id,
        Sent {
            date,
            text,
            keyboard: inline_keyboard(params),
        },
    );
    Reply::ok(message)
}

/// The inline keyboard of `reply_markup`, the only markup a message carries (and editing may
/// change); other keyboards belong to the chat, not the message.
fn inline_keyboard(params: Params<'_>) -> Option<Value> {
    params
        .json("reply_markup")?
        .get("inline_keyboard")
        .filter(|rows| rows.as_array().is_some_and(|rows| !rows.is_empty()))
        .cloned()
}

/// The PhotoSize objects Telegram answers for a photo sent as `photo`: a file_id (any string of
/// the characters file_ids are made of) or an http(s) URL, which the stand-in does not fetch.
/// `None` when `photo` is neither.
///
/// The same `photo` always gives the same sizes, and any of the file_ids answered names the same
/// photo again, as Telegram's `file_unique_id` stays the same for a file.
fn photo_sizes(photo: &str) -> Option<Value> {
    let key = if is_http_url(photo) {
        fnv1a(photo.as_bytes())
    } else if !photo.is_empty()
        && photo
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        own_photo_key(photo).unwrap_or_else(|| fnv1a(photo.as_bytes()))
    } else {
        return None;
    };
    let sizes: Vec<Value> = PHOTO_SIZES
        .iter()
        .map(|&(kind, width, height)| {
            json!({
                "file_id": format!("{PHOTO_FILE_ID}{key:016x}_{kind}"),
                "file_unique_id": format!("{PHOTO_UNIQUE_ID}{key:016x}{kind}"),
                "width": width,
                "height": height,
                "file_size": u64::from(width * height / 8) + key % 1024,
            })
        })
        .collect();
    Some(Value::Array(sizes))
}

/// The photo a file_id answered by [`photo_sizes`] names, if it is one.
fn own_photo_key(file_id: &str) -> Option<u64> {
    let rest = file_id.strip_prefix(PHOTO_FILE_ID)?;
    let (key, kind) = rest.split_once('_')?;
    if key.len() != 16 || !PHOTO_SIZES.iter().any(|&(known, ..)| known == kind) {
        return None;
    }
    u64::from_str_radix(key, 16).ok()
}

/// An `http://` or `https://` URL with a host, which Telegram would fetch the file from.
fn is_http_url(photo: &str) -> bool {
    let lower = photo.to_ascii_lowercase();
    lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .is_some_and(|host| !host.is_empty() && !host.contains(char::is_whitespace))
}

/// 64-bit FNV-1a: a hash that stays the same across runs and Rust versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// editMessageText. Not counted against the flood limits: Telegram limits edits too, separately
/// and without documenting how, so the stand-in does not limit them.
fn edit_message_text(state: &mut State, settings: &Settings, params: Params<'_>) -> Reply {
    let text = params.text("text").unwrap_or_default();
    if text.trim().is_empty() {
        return bad_request("message text is empty");
    }
    let message_id = params.int("message_id").filter(|&id| id > 0);
    let no_chat = match params.get("chat_id") {
        None => true,
        Some(Value::String(chat)) => chat.is_empty(),
        Some(_) => false,
    };
    if no_chat && message_id.is_none() {
        // A message sent through the bot's inline mode: users send those, not the stand-in, so
        // any identifier is taken, and answered `true` as Telegram answers for them.
        return match params.text("inline_message_id") {
            Some(id) if !id.is_empty() => Reply::ok(json!(true)),
            _ => bad_request("message identifier is not specified"),
        };
    }
    let target = match target(params) {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    let chat_id = state.chat_id(&target);
    let chat_json = state.chat_json(chat_id);
    let chat = state.chats.entry(chat_id).or_default();
    if chat.missing {
        return chat_not_found();
    }
    if chat.blocked {
        return blocked();
    }
    let Some((message_id, sent)) =
        message_id.and_then(|id| chat.messages.get_mut(&id).map(|sent| (id, sent)))
    else {
        return bad_request("message to edit not found");
    };
    let Some(current) = &sent.text else {
        return bad_request("there is no text in the message to edit");
    };
    if text.encode_utf16().count() > MAX_TEXT {
        // Telegram's servers refuse it, in their own words: sendMessage's text is checked
        // before it leaves the Bot API server, an edit's is not.
        return bad_request("MESSAGE_TOO_LONG");
    }
    let keyboard = inline_keyboard(params);
    if *current == text && sent.keyboard == keyboard {
        return bad_request(
            "message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
        );
    }
    sent.text = Some(text.clone());
    sent.keyboard = keyboard;
    Reply::ok(json!({
        "message_id": message_id,
        "from": bot_user(settings),
        "chat": chat_json,
        "date": sent.date,
        "edit_date": unix_now().max(sent.date),
        "text": text,
    }))
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
    chat.messages.remove(&message_id);
    Reply::ok(json!(true))
}

/// answerCallbackQuery. The stand-in does not know which queries were sent to the bot (tests
/// deliver updates to Botline themselves), so any id is taken once; Telegram's ids are integers,
/// and any other id is as unknown to Telegram as one answered already.
fn answer_callback_query(state: &mut State, params: Params<'_>) -> Reply {
    let Some(id) = params
        .int("callback_query_id")
        .filter(|&id| id != 0)
        .filter(|id| !state.answered_callback_queries.contains(id))
    else {
        return bad_request("query is too old and response timeout expired or query ID is invalid");
    };
    let text = params.text("text").unwrap_or_default();
    if text.encode_utf16().count() > MAX_CALLBACK_TEXT {
        // Telegram's own servers refuse it, in their words.
        return bad_request("MESSAGE_TOO_LONG");
    }
    state.answered_callback_queries.insert(id);
    Reply::ok(json!(true))
}

/// sendChatAction. Not counted against the flood limits for messages.
fn send_chat_action(state: &mut State, params: Params<'_>) -> Reply {
    // Telegram looks at the action before the chat.
    let action = params
        .text("action")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !CHAT_ACTIONS.contains(&action.as_str()) {
        return bad_request("wrong parameter action in request");
    }
    let target = match target(params) {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    let chat_id = state.chat_id(&target);
    let chat = state.chats.entry(chat_id).or_default();
    if chat.missing {
        return chat_not_found();
    }
    if chat.blocked {
        return blocked();
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
        assert_eq!(Method::parse("sendphoto"), Some(Method::SendPhoto));
        assert_eq!(Method::parse("sendSticker"), None);
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
    fn photos_keep_their_ids() {
        let cat = photo_sizes("https://example.org/cat.jpg").unwrap();
        assert_eq!(
            photo_sizes("https://example.org/cat.jpg").as_ref(),
            Some(&cat)
        );
        for size in cat.as_array().unwrap() {
            let file_id = size["file_id"].as_str().unwrap();
            assert_eq!(photo_sizes(file_id).as_ref(), Some(&cat), "{file_id}");
        }
        assert_ne!(
            photo_sizes("https://example.org/dog.jpg").as_ref(),
            Some(&cat)
        );
        assert_ne!(photo_sizes("AgACAgIAAxkBAAIBY2Zz").as_ref(), Some(&cat));
        // The same ids from one run, or Rust version, to the next.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn photos_are_file_ids_or_http_urls() {
        for good in [
            "https://example.org/cat.jpg",
            "HTTP://example.org",
            "AgACAgIAAxkBAAIBY2Zz-_x",
        ] {
            assert!(photo_sizes(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "https://",
            "http:///cat.jpg",
            "ftp://example.org/cat.jpg",
            "file:///tmp/cat.jpg",
            "with space",
            "AgACStandInPhoto=",
        ] {
            assert!(photo_sizes(bad).is_none(), "{bad}");
        }
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
