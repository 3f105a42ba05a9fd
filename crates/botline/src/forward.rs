//! Forwarding: each durable update is POSTed to the bot's own webhook handler — a bot written
//! with grammY, Telegraf, aiogram, python-telegram-bot or teloxide, unchanged — one chat at a
//! time, and the Bot API call its answer carries (Telegram's "reply in the webhook response")
//! goes into the outbox in the transaction that marks the update done: sent once, within
//! Telegram's limits, through 429s.
//!
//! Forwarding is one more handler ([`Bot::forward_to`](crate::handler::Bot::forward_to)): it
//! takes every update no earlier handler took, so a failed answer fails the attempt like any
//! handler's error (retried with backoff, dead-lettered after the last attempt, redrivable), and
//! `BOTLINE_HANDLER_TIMEOUT` bounds the wait for the answer.
//!
//! The handler is a URL ([`Forward::new`], `BOTLINE_HANDLER_URL`) or, on AWS, a Lambda function
//! invoked synchronously with the update as its payload ([`Forward::function`],
//! `BOTLINE_HANDLER_FUNCTION`; its result is read as the answer, see [`botline_aws::invoke`]).
//!
//! The request: the update's stored JSON byte for byte (`/register` tokens redacted), with
//! `Content-Type: application/json`, `X-Telegram-Bot-Api-Secret-Token` when a secret token is
//! set (the framework's own check passes unchanged), the Standard Webhooks headers
//! `webhook-id` (the update id), `webhook-timestamp` and, with a signing secret,
//! `webhook-signature`, and `botline-attempt` (1 for the first attempt).
//!
//! The answer: any 2xx is done. An empty body, `{}` or `{"ok":true}` carries no call; a JSON
//! object with a `method`, or the same form-encoded or as multipart/form-data (aiogram), is one
//! call; a JSON array of such objects
//! is several, sent in order. Anything else — another status, a body that is not a call, a
//! method the Bot API does not have, more than 1 MiB — fails the attempt, and nothing is sent.

use crate::handler::{Context, HandlerError, HandlerResult, RetryAfter};
use crate::http::SECRET_HEADER;
use crate::secret::WebhookSecret;
use botline_core::clock;
use bytes::Bytes;
use serde_json::{Map, Value};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The header that numbers the attempt (1 for the first).
pub const ATTEMPT_HEADER: &str = "botline-attempt";
/// The largest answer read; a larger one fails the attempt.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why forwarding cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the handler URL must be an http:// or https:// URL")]
    Url,
    #[error("the signing secret must be whsec_ followed by base64 (Standard Webhooks)")]
    SigningSecret,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Where and how updates are forwarded.
#[derive(Clone)]
pub struct Forward {
    target: Target,
    secret_token: Option<WebhookSecret>,
    signing: Option<Arc<standardwebhooks::Webhook>>,
}

/// Where the updates go.
#[derive(Clone)]
enum Target {
    /// POSTed to a URL.
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
    },
    /// A Lambda function, invoked with the update as its payload.
    #[cfg(feature = "aws")]
    Function(Arc<botline_aws::invoke::HandlerFunction>),
}

/// A handler's answer, from HTTP or from a function's result.
struct Answer {
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    content_type: Option<String>,
    body: Bytes,
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("to", &self.shown())
            .field("secret_token", &self.secret_token.is_some())
            .field("signed", &self.signing.is_some())
            .finish()
    }
}

impl Forward {
    /// Forwarding to `url` (`http://` or `https://`).
    pub fn new(url: &str) -> Result<Self, ForwardError> {
        let url = reqwest::Url::parse(url).map_err(|_| ForwardError::Url)?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ForwardError::Url);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // An answer is read as it is; a redirect is not followed with the update.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ForwardError::Client(e.to_string()))?;
        Ok(Self {
            target: Target::Url { url, client },
            secret_token: None,
            signing: None,
        })
    }

    /// Forwarding to a Lambda function, invoked synchronously with each update as its payload
    /// (`BOTLINE_HANDLER_FUNCTION`; see [`botline_aws::invoke`]).
    #[cfg(feature = "aws")]
    pub fn function(function: botline_aws::invoke::HandlerFunction) -> Self {
        Self {
            target: Target::Function(Arc::new(function)),
            secret_token: None,
            signing: None,
        }
    }

    /// Sends `secret` as `X-Telegram-Bot-Api-Secret-Token`, as Telegram would.
    pub fn secret_token(mut self, secret: WebhookSecret) -> Self {
        self.secret_token = Some(secret);
        self
    }

    /// Signs every request the Standard Webhooks way with `secret` (`whsec_<base64>`).
    pub fn signing_secret(mut self, secret: &str) -> Result<Self, ForwardError> {
        let key = secret
            .strip_prefix("whsec_")
            .ok_or(ForwardError::SigningSecret)?;
        if key.is_empty() {
            return Err(ForwardError::SigningSecret);
        }
        let webhook =
            standardwebhooks::Webhook::new(secret).map_err(|_| ForwardError::SigningSecret)?;
        self.signing = Some(Arc::new(webhook));
        Ok(self)
    }

    /// The handler, for logs and errors: the URL without credentials or query, or the function.
    fn shown(&self) -> String {
        match &self.target {
            Target::Url { url, .. } => {
                let mut shown = url.clone();
                let _ = shown.set_username("");
                let _ = shown.set_password(None);
                shown.set_query(None);
                format!("the handler at {shown}")
            }
            #[cfg(feature = "aws")]
            Target::Function(function) => format!("the handler function {}", function.name()),
        }
    }

    /// Hands the update to the handler and records the calls its answer carries.
    pub async fn deliver(&self, cx: &Context) -> HandlerResult {
        let answer = match &self.target {
            Target::Url { url, client } => self.post(cx, url, client).await?,
            #[cfg(feature = "aws")]
            Target::Function(function) => invoke(function, cx).await?,
        };
        if !answer.status.is_success() {
            let failed = format!("{} answered {}", self.shown(), answer.status);
            return Err(match answer.retry_after {
                Some(after) => RetryAfter::new(after, failed).into(),
                None => failed.into(),
            });
        }
        if answer.body.len() > MAX_ANSWER_BYTES {
            return Err(
                format!("the handler's answer is larger than {MAX_ANSWER_BYTES} bytes").into(),
            );
        }
        for (method, params) in calls_in_answer(answer.content_type.as_deref(), answer.body).await?
        {
            cx.call(&method, Value::Object(params))?;
        }
        Ok(())
    }

    /// POSTs the update to the handler's URL and reads the answer (at most one byte more than
    /// [`MAX_ANSWER_BYTES`]).
    async fn post(
        &self,
        cx: &Context,
        url: &reqwest::Url,
        client: &reqwest::Client,
    ) -> Result<Answer, HandlerError> {
        let body = cx.body().to_owned();
        let id = cx.update_id().to_string();
        let timestamp = clock::now_ms() / 1000;
        let mut request = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ATTEMPT_HEADER, cx.attempt())
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp);
        if let Some(secret) = &self.secret_token {
            request = request.header(SECRET_HEADER, secret.expose());
        }
        if let Some(signing) = &self.signing {
            let signature = signing
                .sign(&id, timestamp, body.as_bytes())
                .map_err(|e| format!("cannot sign the update: {e}"))?;
            request = request.header("webhook-signature", signature);
        }
        let mut response = request
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {}", self.shown(), e.without_url()))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut answer = Vec::new();
        if status.is_success() {
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("the handler's answer broke off: {}", e.without_url()))?
            {
                if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!(
                        "the handler's answer is larger than {MAX_ANSWER_BYTES} bytes"
                    )
                    .into());
                }
                answer.extend_from_slice(&chunk);
            }
        }
        Ok(Answer {
            status,
            retry_after,
            content_type,
            body: answer.into(),
        })
    }
}

/// Invokes the handler function with the update and reads its result as an answer.
#[cfg(feature = "aws")]
async fn invoke(
    function: &botline_aws::invoke::HandlerFunction,
    cx: &Context,
) -> Result<Answer, HandlerError> {
    use botline_aws::invoke::InvokeFailure;
    let result = function
        .invoke(
            cx.body().as_bytes(),
            &cx.update_id().to_string(),
            cx.attempt(),
        )
        .await;
    let answer = match result {
        Ok(answer) => answer,
        Err(InvokeFailure::Throttled {
            reason,
            after: Some(after),
        }) => return Err(RetryAfter::new(after, reason).into()),
        Err(failure) => return Err(failure.to_string().into()),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = answer
        .retry_after
        .as_deref()
        .and_then(|v| reqwest::header::HeaderValue::from_str(v).ok())
    {
        headers.insert(reqwest::header::RETRY_AFTER, value);
    }
    Ok(Answer {
        status: reqwest::StatusCode::from_u16(answer.status)
            .map_err(|_| "the handler function answered a status that is not HTTP's")?,
        retry_after: retry_after(&headers),
        content_type: answer.content_type,
        body: answer.body.into(),
    })
}

/// A Bot API call: the method, named as Telegram names it, and its parameters.
pub type Call = (String, Map<String, Value>);

/// A `Retry-After` header's wait: seconds, or an HTTP date (from now).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The Bot API calls an answer carries, in order.
pub async fn calls_in_answer(
    content_type: Option<&str>,
    body: Bytes,
) -> Result<Vec<Call>, HandlerError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let media_type = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    match media_type.as_deref() {
        Some("application/x-www-form-urlencoded") => {
            let mut params = Map::new();
            for (name, value) in form_urlencoded::parse(&body) {
                params.insert(name.to_string(), form_value(&name, value.into_owned()));
            }
            Ok(vec![call(params)?])
        }
        Some("multipart/form-data") => multipart_call(content_type.unwrap_or_default(), body).await,
        _ => {
            let answer: Value = serde_json::from_slice(&body)
                .map_err(|e| format!("the handler's answer is not JSON: {e}"))?;
            match answer {
                Value::Object(object) if !object.contains_key("method") => {
                    if object.keys().all(|key| key == "ok") {
                        Ok(Vec::new())
                    } else {
                        Err("the handler's answer is neither a Bot API call (no \"method\") nor empty".into())
                    }
                }
                Value::Object(object) => Ok(vec![call(object)?]),
                Value::Array(calls) => calls
                    .into_iter()
                    .map(|item| match item {
                        Value::Object(object) => call(object),
                        _ => Err("an item of the handler's answer is not a Bot API call".into()),
                    })
                    .collect(),
                _ => Err("the handler's answer is not a Bot API call".into()),
            }
        }
    }
}

/// A call written as multipart/form-data, as aiogram answers (`method` and each parameter a
/// part); no part at all is no call. A part that uploads a file is refused: the outbox keeps
/// calls, not files (send it by `file_id` or URL).
async fn multipart_call(content_type: &str, body: Bytes) -> Result<Vec<Call>, HandlerError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| format!("the handler's multipart answer: {e}"))?;
    let stream = futures_util::stream::once(std::future::ready(Ok::<_, std::io::Error>(body)));
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut params = Map::new();
    while let Some(part) = parts
        .next_field()
        .await
        .map_err(|e| format!("the handler's multipart answer: {e}"))?
    {
        let name = part.name().unwrap_or_default().to_owned();
        if part.file_name().is_some() {
            return Err(format!(
                "the handler's answer uploads a file ({name}), which Botline cannot keep in the outbox: send it by file_id or URL"
            )
            .into());
        }
        let value = part
            .text()
            .await
            .map_err(|e| format!("the handler's multipart answer: {e}"))?;
        params.insert(name.clone(), form_value(&name, value));
    }
    if params.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![call(params)?])
}

/// A form field's value as a call parameter: a string, but a chat or message id as a number,
/// so that the call is ordered with its chat.
fn form_value(name: &str, value: String) -> Value {
    match name {
        "chat_id" | "message_id" | "reply_to_message_id" => value
            .parse::<i64>()
            .map_or_else(|_| Value::String(value), Value::from),
        _ => Value::String(value),
    }
}

/// One call: `method` (a method of the Bot API, named as Telegram names it) and the rest.
fn call(mut params: Map<String, Value>) -> Result<Call, HandlerError> {
    let Some(Value::String(method)) = params.remove("method") else {
        return Err("a call in the handler's answer has no \"method\"".into());
    };
    let Some(known) = BOT_API_METHODS
        .iter()
        .find(|known| known.eq_ignore_ascii_case(&method))
    else {
        let shown: String = method.chars().take(64).collect();
        return Err(
            format!("the handler's answer calls {shown:?}, which is not a Bot API method").into(),
        );
    };
    Ok(((*known).to_owned(), params))
}

/// The Bot API's methods, as frankenstein 0.52 (Bot API 9) has them.
const BOT_API_METHODS: &[&str] = &[
    "addStickerToSet",
    "answerCallbackQuery",
    "answerChatJoinRequestQuery",
    "answerGuestQuery",
    "answerInlineQuery",
    "answerPreCheckoutQuery",
    "answerShippingQuery",
    "answerWebAppQuery",
    "approveChatJoinRequest",
    "approveSuggestedPost",
    "banChatMember",
    "banChatSenderChat",
    "close",
    "closeForumTopic",
    "closeGeneralForumTopic",
    "convertGiftToStars",
    "copyMessage",
    "copyMessages",
    "createChatInviteLink",
    "createChatSubscriptionInviteLink",
    "createForumTopic",
    "createInvoiceLink",
    "createNewStickerSet",
    "declineChatJoinRequest",
    "declineSuggestedPost",
    "deleteAllMessageReactions",
    "deleteBusinessMessages",
    "deleteChatPhoto",
    "deleteChatStickerSet",
    "deleteEphemeralMessage",
    "deleteForumTopic",
    "deleteMessage",
    "deleteMessageReaction",
    "deleteMessages",
    "deleteMyCommands",
    "deleteStickerFromSet",
    "deleteStickerSet",
    "deleteStory",
    "deleteWebhook",
    "editChatInviteLink",
    "editChatSubscriptionInviteLink",
    "editEphemeralMessageCaption",
    "editEphemeralMessageMedia",
    "editEphemeralMessageReplyMarkup",
    "editForumTopic",
    "editGeneralForumTopic",
    "editMessageCaption",
    "editMessageChecklist",
    "editMessageLiveLocation",
    "editMessageMedia",
    "editMessageReplyMarkup",
    "editMessageText",
    "editStory",
    "editUserStarSubscription",
    "exportChatInviteLink",
    "forwardMessage",
    "forwardMessages",
    "getAvailableGifts",
    "getBusinessAccountGifts",
    "getBusinessAccountStarBalance",
    "getBusinessConnection",
    "getChat",
    "getChatAdministrators",
    "getChatGifts",
    "getChatMember",
    "getChatMemberCount",
    "getChatMenuButton",
    "getCustomEmojiStickers",
    "getFile",
    "getForumTopicIconStickers",
    "getGameHighScores",
    "getManagedBotAccessSettings",
    "getManagedBotToken",
    "getMe",
    "getMyCommands",
    "getMyDefaultAdministratorRights",
    "getMyDescription",
    "getMyName",
    "getMyShortDescription",
    "getMyStarBalance",
    "getStarTransactions",
    "getStickerSet",
    "getUpdates",
    "getUserChatBoosts",
    "getUserGifts",
    "getUserPersonalChatMessages",
    "getUserProfileAudios",
    "getUserProfilePhotos",
    "getWebhookInfo",
    "giftPremiumSubscription",
    "hideGeneralForumTopic",
    "leaveChat",
    "logOut",
    "pinChatMessage",
    "postStory",
    "promoteChatMember",
    "readBusinessMessage",
    "refundStarPayment",
    "removeBusinessAccountProfilePhoto",
    "removeChatVerification",
    "removeMyProfilePhoto",
    "removeUserVerification",
    "reopenForumTopic",
    "reopenGeneralForumTopic",
    "replaceManagedBotToken",
    "replaceStickerInSet",
    "repostStory",
    "restrictChatMember",
    "revokeChatInviteLink",
    "savePreparedInlineMessage",
    "savePreparedKeyboardButton",
    "sendAnimation",
    "sendAudio",
    "sendChatAction",
    "sendChatJoinRequestWebApp",
    "sendChecklist",
    "sendContact",
    "sendDice",
    "sendDocument",
    "sendGame",
    "sendGift",
    "sendInvoice",
    "sendLivePhoto",
    "sendLocation",
    "sendMediaGroup",
    "sendMessage",
    "sendMessageDraft",
    "sendPaidMedia",
    "sendPhoto",
    "sendPoll",
    "sendRichMessage",
    "sendRichMessageDraft",
    "sendSticker",
    "sendVenue",
    "sendVideo",
    "sendVideoNote",
    "sendVoice",
    "setBusinessAccountBio",
    "setBusinessAccountGiftSettings",
    "setBusinessAccountName",
    "setBusinessAccountProfilePhoto",
    "setBusinessAccountUsername",
    "setChatAdministratorCustomTitle",
    "setChatDescription",
    "setChatMemberTag",
    "setChatMenuButton",
    "setChatPermissions",
    "setChatPhoto",
    "setChatStickerSet",
    "setChatTitle",
    "setCustomEmojiStickerSetThumbnail",
    "setGameScore",
    "setManagedBotAccessSettings",
    "setMessageReaction",
    "setMyCommands",
    "setMyDefaultAdministratorRights",
    "setMyDescription",
    "setMyName",
    "setMyProfilePhoto",
    "setMyShortDescription",
    "setPassportDataErrors",
    "setStickerEmojiList",
    "setStickerKeywords",
    "setStickerMaskPosition",
    "setStickerPositionInSet",
    "setStickerSetThumbnail",
    "setStickerSetTitle",
    "setUserEmojiStatus",
    "setWebhook",
    "stopMessageLiveLocation",
    "stopPoll",
    "transferBusinessAccountStars",
    "transferGift",
    "unbanChatMember",
    "unbanChatSenderChat",
    "unhideGeneralForumTopic",
    "unpinAllChatMessages",
    "unpinAllForumTopicMessages",
    "unpinAllGeneralForumTopicMessages",
    "unpinChatMessage",
    "upgradeGift",
    "verifyChat",
    "verifyUser",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn calls(content_type: Option<&str>, body: &str) -> Result<Vec<Value>, String> {
        calls_in_answer(content_type, Bytes::from(body.to_owned()))
            .await
            .map(|calls| {
                calls
                    .into_iter()
                    .map(|(method, params)| json!({"method": method, "params": params}))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn no_call_in_an_empty_or_ok_answer() {
        for body in ["", "  \n", "{}", r#"{"ok":true}"#] {
            assert_eq!(
                calls(Some("application/json"), body).await,
                Ok(vec![]),
                "{body:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_json_call_an_array_of_calls_and_a_form_encoded_one() {
        assert_eq!(
            calls(
                Some("application/json; charset=utf-8"),
                r#"{"method":"sendMessage","chat_id":7,"text":"hi"}"#
            )
            .await,
            Ok(vec![
                json!({"method": "sendMessage", "params": {"chat_id": 7, "text": "hi"}})
            ])
        );
        assert_eq!(
            calls(
                None,
                r#"[{"method":"sendMessage","chat_id":7,"text":"a"},{"method":"sendchataction","chat_id":7,"action":"typing"}]"#
            ).await,
            Ok(vec![
                json!({"method": "sendMessage", "params": {"chat_id": 7, "text": "a"}}),
                json!({"method": "sendChatAction", "params": {"chat_id": 7, "action": "typing"}}),
            ])
        );
        assert_eq!(
            calls(
                Some("application/x-www-form-urlencoded"),
                "method=sendMessage&chat_id=-1001&text=caf%C3%A9+%2B1&reply_markup=%7B%7D"
            )
            .await,
            Ok(vec![json!({"method": "sendMessage", "params": {
                "chat_id": -1001, "text": "café +1", "reply_markup": "{}"
            }})])
        );
    }

    #[tokio::test]
    async fn bad_answers_are_refused_with_a_reason() {
        for (content_type, body, reason) in [
            (None, "<html>", "not JSON"),
            (None, r#"{"text":"hi"}"#, "neither a Bot API call"),
            (
                None,
                r#"{"method":"sendMesage","chat_id":1}"#,
                "not a Bot API method",
            ),
            (
                None,
                r#"[{"method":"sendMessage"}, 5]"#,
                "not a Bot API call",
            ),
            (None, r#""sendMessage""#, "not a Bot API call"),
            (
                Some("application/x-www-form-urlencoded"),
                "chat_id=1",
                "no \"method\"",
            ),
            (
                Some("multipart/form-data; boundary=b"),
                "--b\r\nContent-Disposition: form-data; name=\"method\"\r\n\r\nsendPhoto\r\n--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"cat.jpg\"\r\n\r\nJPEG\r\n--b--\r\n",
                "uploads a file (photo)",
            ),
            (Some("multipart/form-data"), "--b--", "multipart answer"),
        ] {
            let error = calls(content_type, body).await.unwrap_err();
            assert!(error.contains(reason), "{body}: {error}");
        }
    }

    #[tokio::test]
    async fn aiogram_multipart_answers() {
        let boundary = "webhookBoundaryAbC-123";
        let part = |name: &str, value: &str| {
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{value}\r\n"
            )
        };
        let body = format!(
            "{}{}{}{}--{boundary}--\r\n",
            part("method", "sendMessage"),
            part("chat_id", "-1001"),
            part("text", "caf\u{e9}\r\nline two"),
            part("reply_markup", r#"{"inline_keyboard":[]}"#),
        );
        let content_type = format!("multipart/form-data; boundary={boundary}");
        assert_eq!(
            calls(Some(&content_type), &body).await,
            Ok(vec![json!({"method": "sendMessage", "params": {
                "chat_id": -1001, "text": "caf\u{e9}\r\nline two",
                "reply_markup": r#"{"inline_keyboard":[]}"#
            }})])
        );
        // aiogram's answer when the handler returned nothing: no part at all.
        assert_eq!(
            calls(Some(&content_type), &format!("--{boundary}--\r\n")).await,
            Ok(vec![])
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let after = retry_after(&headers).unwrap();
        assert!(after > Duration::from_secs(100) && after <= Duration::from_secs(120));
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn only_http_urls_and_whsec_secrets() {
        assert!(Forward::new("http://127.0.0.1:3000/bot").is_ok());
        assert!(matches!(Forward::new("ftp://x/"), Err(ForwardError::Url)));
        assert!(matches!(Forward::new("not a url"), Err(ForwardError::Url)));
        let forward = Forward::new("https://user:pa55@bot.example/hook?key=s3cret").unwrap();
        let shown = format!("{forward:?}");
        assert!(
            !shown.contains("pa55") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(
            forward
                .clone()
                .signing_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .is_ok()
        );
        for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!"] {
            assert!(forward.clone().signing_secret(bad).is_err(), "{bad}");
        }
    }
}
