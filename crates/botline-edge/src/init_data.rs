//! Telegram Mini App `initData`: validation and parsing.
//!
//! `initData` (`Telegram.WebApp.initData`) is a URL-encoded query string that Telegram signs.
//! As Telegram documents it (<https://core.telegram.org/bots/webapps#validating-data-received-via-the-mini-app>):
//!
//! - the data-check-string is every received field except `hash`, sorted by name, each written
//!   `name=value` with the value URL-decoded, joined with `\n`. Since Bot API 8.0 initData also
//!   carries an Ed25519 `signature`; it is a received field like any other and **is** part of
//!   the data-check-string for the HMAC check;
//! - `secret_key = HMAC-SHA256(key = "WebAppData", message = bot_token)`;
//! - `hash = hex(HMAC-SHA256(key = secret_key, message = data_check_string))`.
//!
//! For a party without the bot token ("validating data for third-party use"), the
//! data-check-string is `<bot_id>:WebAppData\n` followed by every field except `hash` and
//! `signature`, sorted and joined as above, and `signature` is the base64url Ed25519 signature
//! of it under Telegram's public key ([`validate_init_data_signature`]).
//!
//! Parsing is strict where laxness would let two parties read one string differently: a field
//! given twice, a bad percent escape, a value that is not UTF-8 once decoded, an empty or
//! `=`-less field are all refused rather than guessed at. The hash is checked before any JSON
//! inside is parsed.

use botline_core::{ChatId, UserId};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest initData accepted; Telegram's are well under 4 KiB.
pub const MAX_INIT_DATA_BYTES: usize = 16 * 1024;

/// How far in the future `auth_date` may lie, for clocks that disagree with Telegram's.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(5 * 60);

/// Why initData was refused. The `Display` text names no value and no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InitDataError {
    #[error("init data is longer than {MAX_INIT_DATA_BYTES} bytes")]
    TooLong,
    #[error("malformed init data: {0}")]
    Malformed(&'static str),
    #[error("malformed init data: a field appears more than once")]
    DuplicateField,
    #[error("init data has no `{0}`")]
    Missing(&'static str),
    /// The hash does not match: tampered with, or signed for another bot.
    #[error("init data hash does not match")]
    BadHash,
    /// The Ed25519 signature does not verify.
    #[error("init data signature does not verify")]
    BadSignature,
    #[error("init data is older than allowed")]
    Expired,
    #[error("init data is dated in the future")]
    FromTheFuture,
}

impl InitDataError {
    /// Whether the input was not initData at all (answer 400), rather than initData that is not
    /// genuine or no longer fresh (answer 401).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Self::TooLong | Self::Malformed(_) | Self::DuplicateField | Self::Missing(_)
        )
    }
}

/// The validated contents of initData (Telegram's `WebAppInitData`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InitData {
    /// When Telegram issued it, in Unix seconds.
    pub auth_date: u64,
    pub query_id: Option<String>,
    pub user: Option<WebAppUser>,
    pub receiver: Option<WebAppUser>,
    pub chat: Option<WebAppChat>,
    pub chat_type: Option<String>,
    pub chat_instance: Option<String>,
    pub start_param: Option<String>,
    pub can_send_after: Option<u64>,
    /// The Ed25519 signature (base64url), when Telegram sent one.
    pub signature: Option<String>,
    /// Fields this crate does not know yet, URL-decoded, kept as given.
    pub other: BTreeMap<String, String>,
}

impl InitData {
    /// `auth_date` as a time.
    pub fn auth_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.auth_date)
    }
}

/// Telegram's `WebAppUser`. Field names are Telegram's, as `initDataUnsafe.user` has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebAppUser {
    pub id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_bot: Option<bool>,
    pub first_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_premium: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_to_attachment_menu: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allows_write_to_pm: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo_url: Option<String>,
    /// Fields this crate does not know yet.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Telegram's `WebAppChat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebAppChat {
    pub id: ChatId,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo_url: Option<String>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Which of Telegram's Ed25519 keys signed the initData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelegramEnvironment {
    Production,
    /// Telegram's test environment (test DCs).
    Test,
}

impl TelegramEnvironment {
    /// Telegram's published public key for this environment.
    pub fn public_key(self) -> [u8; 32] {
        match self {
            Self::Production => PRODUCTION_PUBLIC_KEY,
            Self::Test => TEST_PUBLIC_KEY,
        }
    }
}

const PRODUCTION_PUBLIC_KEY: [u8; 32] =
    hex32("e7bf03a2fa4602af4580703d88dda5bb59f32ed8b02a56c187fe7d34caed242d");
const TEST_PUBLIC_KEY: [u8; 32] =
    hex32("40055058a4ee38156a06562e52eece92a771bcd8346a8c4615cb7376eddf72ec");

/// Validates initData with the bot token, checks that `auth_date` is no older than `max_age`
/// at `now` (nor more than [`MAX_FUTURE_SKEW`] ahead of it), and parses it.
pub fn validate_init_data(
    init_data: &str,
    bot_token: &str,
    max_age: Duration,
    now: SystemTime,
) -> Result<InitData, InitDataError> {
    let mut fields = parse_fields(init_data)?;
    let hash = fields
        .remove("hash")
        .ok_or(InitDataError::Missing("hash"))?;
    let hash = decode_hash(&hash)?;
    let data_check_string = join_fields(&fields);

    let mut secret = HmacSha256::new_from_slice(b"WebAppData").expect("HMAC takes any key");
    secret.update(bot_token.as_bytes());
    let secret_key = secret.finalize().into_bytes();
    let mut mac = HmacSha256::new_from_slice(&secret_key).expect("HMAC takes any key");
    mac.update(data_check_string.as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&hash)
        .map_err(|_| InitDataError::BadHash)?;

    check_age(&fields, max_age, now)?;
    InitData::from_fields(fields)
}

/// Validates initData by its Ed25519 `signature` (no bot token needed: "third-party use") for
/// the bot `bot_id`, with `public_key` (see [`TelegramEnvironment::public_key`]), checks its
/// age as [`validate_init_data`] does, and parses it. `hash` is neither needed nor checked.
pub fn validate_init_data_signature(
    init_data: &str,
    bot_id: i64,
    public_key: &[u8; 32],
    max_age: Duration,
    now: SystemTime,
) -> Result<InitData, InitDataError> {
    use base64::Engine as _;
    use ed25519_dalek::{Signature, VerifyingKey};

    let mut fields = parse_fields(init_data)?;
    fields.remove("hash");
    let signature_text = fields
        .remove("signature")
        .ok_or(InitDataError::Missing("signature"))?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature_text.trim_end_matches('='))
        .ok()
        .and_then(|bytes| <[u8; 64]>::try_from(bytes).ok())
        .ok_or(InitDataError::Malformed(
            "signature is not 64 bytes of base64url",
        ))?;
    let message = format!("{bot_id}:WebAppData\n{}", join_fields(&fields));
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| InitDataError::BadSignature)?;
    key.verify_strict(message.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| InitDataError::BadSignature)?;

    check_age(&fields, max_age, now)?;
    fields.insert("signature".to_owned(), signature_text);
    InitData::from_fields(fields)
}

type HmacSha256 = Hmac<Sha256>;

/// The fields, URL-decoded, by name; refuses anything but a plain `a=1&b=2` string.
fn parse_fields(init_data: &str) -> Result<BTreeMap<String, String>, InitDataError> {
    if init_data.len() > MAX_INIT_DATA_BYTES {
        return Err(InitDataError::TooLong);
    }
    let mut fields = BTreeMap::new();
    if init_data.is_empty() {
        return Ok(fields);
    }
    for pair in init_data.split('&') {
        if pair.is_empty() {
            return Err(InitDataError::Malformed("empty field"));
        }
        let (name, value) = pair
            .split_once('=')
            .ok_or(InitDataError::Malformed("field without ="))?;
        let name = decode_component(name)?;
        if name.is_empty() {
            return Err(InitDataError::Malformed("field without a name"));
        }
        if fields.insert(name, decode_component(value)?).is_some() {
            return Err(InitDataError::DuplicateField);
        }
    }
    Ok(fields)
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space), refusing bad escapes and
/// bytes that are not UTF-8 once decoded.
fn decode_component(text: &str) -> Result<String, InitDataError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let high = bytes.get(i + 1).and_then(|&b| hex_value(b));
                let low = bytes.get(i + 2).and_then(|&b| hex_value(b));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(InitDataError::Malformed("bad percent-encoding"));
                };
                out.push(high << 4 | low);
                i += 3;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| InitDataError::Malformed("field is not UTF-8"))
}

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn decode_hash(hash: &str) -> Result<[u8; 32], InitDataError> {
    hex::decode(hash)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or(InitDataError::Malformed("hash is not 64 hex digits"))
}

/// `name=value` lines in name order (the map's order), joined with `\n`.
fn join_fields(fields: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    out
}

fn check_age(
    fields: &BTreeMap<String, String>,
    max_age: Duration,
    now: SystemTime,
) -> Result<(), InitDataError> {
    let auth_date = auth_date(fields)?;
    let issued = UNIX_EPOCH + Duration::from_secs(auth_date);
    match now.duration_since(issued) {
        Ok(age) if age > max_age => Err(InitDataError::Expired),
        Ok(_) => Ok(()),
        Err(ahead) if ahead.duration() > MAX_FUTURE_SKEW => Err(InitDataError::FromTheFuture),
        Err(_) => Ok(()),
    }
}

fn auth_date(fields: &BTreeMap<String, String>) -> Result<u64, InitDataError> {
    let text = fields
        .get("auth_date")
        .ok_or(InitDataError::Missing("auth_date"))?;
    parse_unsigned(text).ok_or(InitDataError::Malformed("auth_date is not a Unix time"))
}

/// Decimal digits only: no sign, no spaces.
fn parse_unsigned(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl InitData {
    fn from_fields(mut fields: BTreeMap<String, String>) -> Result<Self, InitDataError> {
        let auth_date = auth_date(&fields)?;
        fields.remove("auth_date");
        let user = json_field(&mut fields, "user", "user is not a WebAppUser object")?;
        let receiver = json_field(
            &mut fields,
            "receiver",
            "receiver is not a WebAppUser object",
        )?;
        let chat = json_field(&mut fields, "chat", "chat is not a WebAppChat object")?;
        let can_send_after = match fields.remove("can_send_after") {
            Some(text) => Some(
                parse_unsigned(&text)
                    .ok_or(InitDataError::Malformed("can_send_after is not a number"))?,
            ),
            None => None,
        };
        Ok(Self {
            auth_date,
            query_id: fields.remove("query_id"),
            user,
            receiver,
            chat,
            chat_type: fields.remove("chat_type"),
            chat_instance: fields.remove("chat_instance"),
            start_param: fields.remove("start_param"),
            can_send_after,
            signature: fields.remove("signature"),
            other: fields,
        })
    }
}

fn json_field<T: serde::de::DeserializeOwned>(
    fields: &mut BTreeMap<String, String>,
    name: &str,
    problem: &'static str,
) -> Result<Option<T>, InitDataError> {
    fields
        .remove(name)
        .map(|text| serde_json::from_str(&text).map_err(|_| InitDataError::Malformed(problem)))
        .transpose()
}

/// 64 lowercase hex digits as 32 bytes, at compile time.
const fn hex32(text: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hex digit"),
        }
    }
    let bytes = text.as_bytes();
    assert!(bytes.len() == 64, "not 64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(bytes[2 * i]) << 4 | nibble(bytes[2 * i + 1]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_decoding() {
        assert_eq!(decode_component("a+b%20c%2Bd").unwrap(), "a b c+d");
        assert_eq!(decode_component("%7B%22x%22%7D").unwrap(), r#"{"x"}"#);
        assert_eq!(decode_component("é").unwrap(), "é");
        for bad in ["%", "%2", "%zz", "a%g0", "%ff"] {
            assert!(decode_component(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_shapes() {
        assert_eq!(parse_fields("").unwrap().len(), 0);
        assert_eq!(parse_fields("a=&b=2").unwrap()["a"], "");
        assert_eq!(parse_fields("a=1=2").unwrap()["a"], "1=2");
        assert_eq!(
            parse_fields("a=1&a=2").unwrap_err(),
            InitDataError::DuplicateField
        );
        // The same name spelled two ways is still the same field.
        assert_eq!(
            parse_fields("a=1&%61=2").unwrap_err(),
            InitDataError::DuplicateField
        );
        for bad in ["a=1&", "&a=1", "a=1&&b=2", "a", "=1", "a=1&b"] {
            assert!(parse_fields(bad).is_err(), "{bad}");
        }
        let long = format!("a={}", "x".repeat(MAX_INIT_DATA_BYTES));
        assert_eq!(parse_fields(&long).unwrap_err(), InitDataError::TooLong);
    }

    #[test]
    fn telegram_keys_are_valid_points() {
        for environment in [TelegramEnvironment::Production, TelegramEnvironment::Test] {
            let key = environment.public_key();
            assert!(ed25519_dalek::VerifyingKey::from_bytes(&key).is_ok());
        }
        assert_eq!(
            hex::encode(TelegramEnvironment::Production.public_key()),
            "e7bf03a2fa4602af4580703d88dda5bb59f32ed8b02a56c187fe7d34caed242d"
        );
        assert_eq!(
            hex::encode(TelegramEnvironment::Test.public_key()),
            "40055058a4ee38156a06562e52eece92a771bcd8346a8c4615cb7376eddf72ec"
        );
    }
}
