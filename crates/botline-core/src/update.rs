//! What the receiver needs to know of a webhook body before it makes the update durable.
//!
//! The body is validated (a JSON object with a non-negative integer `update_id`) and read for
//! three things only: its id, its kind and the key that orders it (its chat). Everything else is
//! kept byte for byte in [`InboundUpdate::raw`], so an update kind or field that Botline does not
//! know yet is stored and passed on, never refused (teloxide's `UpdateKind::Error` does the same).

use crate::ids::{ChatId, UpdateId, UserId};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The header Telegram sends the `secret_token` of `setWebhook` in, with every webhook request
/// (HTTP header names are case-insensitive; this is the lower-case spelling `http` takes).
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// The update kinds of the Bot API, in the order Telegram documents them.
pub const KNOWN_KINDS: &[&str] = &[
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
];

/// Why a body is not an update. The text is short and safe to send back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidUpdate {
    #[error("body is not valid JSON")]
    NotJson,
    #[error("update must be a JSON object")]
    NotAnObject,
    #[error("update_id is missing")]
    MissingUpdateId,
    #[error("update_id must be a non-negative 64-bit integer")]
    BadUpdateId,
    /// Valid JSON that no JSON reader of the pipeline can hold: a number beyond the range of a
    /// 64-bit float (`1e400`), or arrays and objects nested deeper than 128 levels.
    #[error("body holds a number out of range or nests deeper than 128 levels")]
    Unreadable,
    /// An object key in serde_json's private namespace (`$serde_json::private::RawValue`). The
    /// JSON reader takes an object whose first key is one of these for its own internal
    /// markers. Once a body is written anew (a `/register` token redacted, keys sorted), such a
    /// key can come first, and the stored body cannot be read back. Telegram sends no such key.
    #[error("body holds an object key reserved by the JSON reader")]
    ReservedKey,
}

/// The kind of an update: the name of its one optional field (`message`, `callback_query`, …),
/// or a name Telegram added after this code was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpdateKind(pub String);

impl UpdateKind {
    /// The kind of an update that carries nothing but its id.
    pub fn empty() -> Self {
        Self("unknown".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the Bot API documents this kind (as of this build).
    pub fn is_known(&self) -> bool {
        KNOWN_KINDS.contains(&self.0.as_str())
    }
}

/// The kind as it may go into a log line: the sender chooses an unknown kind's name (the first
/// key of the body), so anything but `A-Z a-z 0-9 _ - . :` is written as an escape (`\u{a}`),
/// and a name can neither end a log line nor forge a field. Stored records use [`UpdateKind::as_str`].
impl fmt::Display for UpdateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
        if self.0.chars().all(plain) {
            return f.write_str(&self.0);
        }
        for c in self.0.chars() {
            if plain(c) {
                fmt::Write::write_char(f, c)?;
            } else {
                write!(f, "{}", c.escape_unicode())?;
            }
        }
        Ok(())
    }
}

/// What orders an update relative to others: updates with the same key are processed one at a
/// time in `update_id` order; different keys run concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderKey {
    /// The chat the update happened in.
    Chat(ChatId),
    /// The user who caused an update that belongs to no chat (inline queries, poll answers…).
    User(UserId),
    /// Neither: the update is ordered by nothing but itself.
    Update(UpdateId),
}

impl OrderKey {
    /// The chat, when the update belongs to one.
    pub fn chat(self) -> Option<ChatId> {
        match self {
            Self::Chat(chat) => Some(chat),
            _ => None,
        }
    }
}

impl fmt::Display for OrderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Chat(id) => write!(f, "chat:{id}"),
            Self::User(id) => write!(f, "user:{id}"),
            Self::Update(id) => write!(f, "update:{id}"),
        }
    }
}

impl std::str::FromStr for OrderKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tag, id) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not an order key"))?;
        let id: i64 = id
            .parse()
            .map_err(|_| format!("{s:?} is not an order key"))?;
        match tag {
            "chat" => Ok(Self::Chat(ChatId(id))),
            "user" => Ok(Self::User(UserId(id))),
            "update" => Ok(Self::Update(UpdateId(id))),
            _ => Err(format!("{s:?} is not an order key")),
        }
    }
}

/// A webhook body that is a valid update, with the body kept as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundUpdate {
    pub id: UpdateId,
    pub kind: UpdateKind,
    pub order_key: OrderKey,
    /// The body byte for byte: 64-bit ids, key order and escapes as Telegram sent them.
    pub raw: String,
}

impl InboundUpdate {
    /// Validates a webhook body and reads its id, kind and order key.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidUpdate> {
        // Validated once here; parsing a `&str` then trusts it instead of checking again.
        let body = std::str::from_utf8(body).map_err(|_| InvalidUpdate::NotJson)?;
        let fields: TopLevel<'_> = serde_json::from_str(body).map_err(|e| {
            if e.is_data() {
                InvalidUpdate::NotAnObject
            } else {
                InvalidUpdate::NotJson
            }
        })?;
        // A repeated key counts as its last occurrence, as serde_json's `Value` reads it.
        let id_field = fields
            .0
            .iter()
            .rev()
            .find(|(key, _)| key == "update_id")
            .ok_or(InvalidUpdate::MissingUpdateId)?;
        let id = serde_json::from_str::<i64>(id_field.1.get())
            .ok()
            .filter(|id| *id >= 0)
            .map(UpdateId)
            .ok_or(InvalidUpdate::BadUpdateId)?;
        // The top-level pass skims values without reading them; the worker reads the body into a
        // `serde_json::Value`. Refuse here what it could not read, or the update would be
        // acknowledged and then fail every attempt until it is dead-lettered.
        serde_json::from_str::<Readable>(body).map_err(|e| {
            if e.to_string().starts_with(RESERVED_KEY) {
                InvalidUpdate::ReservedKey
            } else {
                InvalidUpdate::Unreadable
            }
        })?;
        let kind_field = fields.0.iter().find(|(key, _)| key != "update_id");
        let (kind, order_key) = match kind_field {
            Some((key, value)) => (
                UpdateKind(key.clone().into_owned()),
                order_key_of(value).unwrap_or(OrderKey::Update(id)),
            ),
            None => (UpdateKind::empty(), OrderKey::Update(id)),
        };
        Ok(Self {
            id,
            kind,
            order_key,
            raw: body.to_owned(),
        })
    }
}

/// The chat an update belongs to, or failing that the user who caused it.
fn order_key_of(value: &RawValue) -> Option<OrderKey> {
    #[derive(Deserialize)]
    struct Id {
        id: i64,
    }
    #[derive(Deserialize)]
    struct Inner {
        chat: Option<Id>,
    }
    #[derive(Deserialize)]
    struct Probe {
        chat: Option<Id>,
        message: Option<Inner>,
        from: Option<Id>,
        user: Option<Id>,
    }
    let probe: Probe = serde_json::from_str(value.get()).ok()?;
    probe
        .chat
        .or(probe.message.and_then(|m| m.chat))
        .map(|chat| OrderKey::Chat(ChatId(chat.id)))
        .or_else(|| {
            probe
                .from
                .or(probe.user)
                .map(|u| OrderKey::User(UserId(u.id)))
        })
}

/// The top-level fields of a JSON object, in order, values left unparsed.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = TopLevel<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(2);
                while let Some(Key(key)) = map.next_key()? {
                    fields.push((key, map.next_value()?));
                }
                Ok(TopLevel(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// A JSON value read the way `serde_json::Value` reads one (numbers within `f64`, at most 128
/// levels deep, strings unescaped into valid UTF-8), keeping nothing of it.
struct Readable;

impl<'de> Deserialize<'de> for Readable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ReadableVisitor)
    }
}

struct ReadableVisitor;

impl<'de> Visitor<'de> for ReadableVisitor {
    type Value = Readable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Readable, E> {
        Ok(Readable)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Readable, A::Error> {
        while seq.next_element::<Readable>()?.is_some() {}
        Ok(Readable)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Readable, A::Error> {
        while map.next_entry::<UnreservedKey, Readable>()?.is_some() {}
        Ok(Readable)
    }
}

/// The error [`UnreservedKey`] fails with; the prefix of its message.
const RESERVED_KEY: &str = "reserved key";

/// An object key outside serde_json's private namespace, checked as unescaped (so
/// `"\u0024serde_json::private::…"` is caught too), keeping nothing of it.
struct UnreservedKey;

impl<'de> Deserialize<'de> for UnreservedKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = UnreservedKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<UnreservedKey, E> {
                if key.starts_with("$serde_json::private::") {
                    Err(E::custom(RESERVED_KEY))
                } else {
                    Ok(UnreservedKey)
                }
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// An object key, borrowed from the body unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<InboundUpdate, InvalidUpdate> {
        InboundUpdate::parse(body.as_bytes())
    }

    #[test]
    fn refuses_what_the_worker_could_not_read() {
        let deep = |levels: usize| {
            format!(
                r#"{{"update_id":3,"message":{{"x":{}{}}}}}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            )
        };
        for body in [
            r#"{"update_id":1,"message":{"chat":{"id":1},"n":1e400}}"#.to_owned(),
            r#"{"update_id":2,"edited_message":{"n":-1e309}}"#.to_owned(),
            r#"{"update_id":7,"":2e457}"#.to_owned(),
            r#"{"update_id":8,"message":{"text":"\ud800"}}"#.to_owned(),
            deep(200),
        ] {
            assert_eq!(parse(&body), Err(InvalidUpdate::Unreadable), "{body:.80}");
            assert!(serde_json::from_str::<serde_json::Value>(&body).is_err());
        }
        let edge = r#"{"update_id":9,"message":{"n":1.7976931348623157e308,"m":-9223372036854775808,"u":18446744073709551615}}"#;
        assert!(parse(edge).is_ok());
        // Around the depth limit, both readers draw the line at the same level.
        let readable = |body: &str| serde_json::from_str::<serde_json::Value>(body).is_ok();
        assert!(readable(&deep(100)) && !readable(&deep(140)));
        for levels in 100..140 {
            let body = deep(levels);
            assert_eq!(parse(&body).is_ok(), readable(&body), "{levels} levels");
        }
    }

    #[test]
    fn reads_id_kind_and_chat() {
        let update = parse(r#"{"update_id":7,"message":{"message_id":1,"date":1,"chat":{"id":-100123,"type":"supergroup"},"text":"hi"}}"#).unwrap();
        assert_eq!(update.id, UpdateId(7));
        assert_eq!(update.kind.as_str(), "message");
        assert_eq!(update.order_key, OrderKey::Chat(ChatId(-100123)));
    }

    #[test]
    fn orders_callback_queries_by_their_message_chat_and_inline_queries_by_user() {
        let cb = parse(r#"{"update_id":1,"callback_query":{"id":"x","from":{"id":5},"message":{"chat":{"id":9}}}}"#).unwrap();
        assert_eq!(cb.order_key, OrderKey::Chat(ChatId(9)));
        let iq = parse(r#"{"update_id":2,"inline_query":{"id":"x","from":{"id":5},"query":""}}"#)
            .unwrap();
        assert_eq!(iq.order_key, OrderKey::User(UserId(5)));
        let poll = parse(r#"{"update_id":3,"poll":{"id":"p"}}"#).unwrap();
        assert_eq!(poll.order_key, OrderKey::Update(UpdateId(3)));
    }

    #[test]
    fn keeps_unknown_kinds_and_the_body_byte_for_byte() {
        let body = "{\"update_id\":5000000001, \"future_kind\":{\"chat\":{\"id\":-1009876543210123},\"t\":\"\\u00e9\"}}";
        let update = parse(body).unwrap();
        assert_eq!(update.kind.as_str(), "future_kind");
        assert!(!update.kind.is_known());
        assert_eq!(update.order_key, OrderKey::Chat(ChatId(-1009876543210123)));
        assert_eq!(update.raw, body);
    }

    #[test]
    fn an_update_with_only_its_id_is_kept() {
        let update = parse(r#"{"update_id":0}"#).unwrap();
        assert_eq!(update.kind, UpdateKind::empty());
        assert_eq!(update.order_key, OrderKey::Update(UpdateId(0)));
    }

    #[test]
    fn a_chat_id_of_the_wrong_type_falls_back_to_update_order() {
        let update = parse(r#"{"update_id":4,"message":{"chat":{"id":"abc"}}}"#).unwrap();
        assert_eq!(update.order_key, OrderKey::Update(UpdateId(4)));
    }

    #[test]
    fn rejects_what_is_not_an_update() {
        use InvalidUpdate::*;
        let cases = [
            ("", NotJson),
            ("{", NotJson),
            ("not json", NotJson),
            (r#"{"update_id":1} trailing"#, NotJson),
            ("[]", NotAnObject),
            ("null", NotAnObject),
            ("\"x\"", NotAnObject),
            ("{}", MissingUpdateId),
            (r#"{"message":{}}"#, MissingUpdateId),
            (r#"{"update_id":"1"}"#, BadUpdateId),
            (r#"{"update_id":1.5}"#, BadUpdateId),
            (r#"{"update_id":1e3}"#, BadUpdateId),
            (r#"{"update_id":-1}"#, BadUpdateId),
            (r#"{"update_id":null}"#, BadUpdateId),
            (r#"{"update_id":9223372036854775808}"#, BadUpdateId),
        ];
        for (body, want) in cases {
            assert_eq!(parse(body), Err(want), "body {body:?}");
        }
    }

    #[test]
    fn a_repeated_update_id_counts_as_its_last_occurrence() {
        let update = parse(r#"{"update_id":1,"message":{},"update_id":2}"#).unwrap();
        assert_eq!(update.id, UpdateId(2));
    }

    #[test]
    fn order_keys_round_trip_through_text() {
        for key in [
            OrderKey::Chat(ChatId(-100)),
            OrderKey::User(UserId(7)),
            OrderKey::Update(UpdateId(9)),
        ] {
            assert_eq!(key.to_string().parse::<OrderKey>(), Ok(key));
        }
    }

    #[test]
    fn a_kind_is_displayed_without_anything_that_could_forge_a_log_line() {
        assert_eq!(UpdateKind("message".into()).to_string(), "message");
        let forged = UpdateKind("x\n2026-12-06T00:00:00Z INFO forged=1 \"q\"".into());
        let shown = forged.to_string();
        assert!(!shown.contains(['\n', ' ', '"', '=']), "{shown}");
        assert!(shown.starts_with("x\\u{a}2026"), "{shown}");
        assert_eq!(
            forged.as_str(),
            "x\n2026-12-06T00:00:00Z INFO forged=1 \"q\""
        );
    }
}
