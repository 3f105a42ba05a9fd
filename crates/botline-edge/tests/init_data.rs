//! initData validation against data signed here as Telegram documents it, and against vectors
//! from an independent implementation.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use botline_core::UserId;
use botline_edge::{
    InitDataError, TelegramEnvironment, validate_init_data, validate_init_data_signature,
};
use common::{data_check_string, encode, signed_init_data, telegram_hash};
use ed25519_dalek::{Signer, SigningKey};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BOT_TOKEN: &str = "7342037359:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
const AUTH_DATE: u64 = 1_733_584_787;
const USER: &str = r#"{"id":279058397,"first_name":"Vladislav + - ? \/","last_name":"Kibenko","username":"vdkfrost","language_code":"ru","is_premium":true,"allows_write_to_pm":true,"photo_url":"https:\/\/t.me\/i\/userpic\/320\/4FPEE4tmP3ATHa57u6MqTDih13LTOiMoKoLDRG4PnSA.svg"}"#;
const DAY: Duration = Duration::from_secs(24 * 3600);

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

fn fields() -> Vec<(&'static str, &'static str)> {
    vec![
        ("auth_date", "1733584787"),
        ("chat_instance", "2561715838436386938"),
        ("chat_type", "sender"),
        ("user", USER),
    ]
}

#[test]
fn valid_init_data_is_parsed() {
    let init_data = signed_init_data(&fields(), BOT_TOKEN);
    let data = validate_init_data(&init_data, BOT_TOKEN, DAY, at(AUTH_DATE + 60)).unwrap();
    assert_eq!(data.auth_date, AUTH_DATE);
    assert_eq!(data.chat_type.as_deref(), Some("sender"));
    assert_eq!(data.chat_instance.as_deref(), Some("2561715838436386938"));
    let user = data.user.unwrap();
    assert_eq!(user.id, UserId(279058397));
    assert_eq!(user.first_name, "Vladislav + - ? /");
    assert_eq!(user.last_name.as_deref(), Some("Kibenko"));
    assert_eq!(user.username.as_deref(), Some("vdkfrost"));
    assert_eq!(user.language_code.as_deref(), Some("ru"));
    assert_eq!(user.is_premium, Some(true));
    assert_eq!(user.allows_write_to_pm, Some(true));
    assert!(user.photo_url.unwrap().starts_with("https://t.me/"));
    assert!(data.other.is_empty());
}

#[test]
fn spaces_as_plus_and_unknown_fields_are_kept() {
    let token = BOT_TOKEN;
    let all = [
        ("auth_date", "1733584787"),
        ("query_id", "AAHdF6IQAAAAAN0XohDhrOrc"),
        ("start_param", "ref 42"),
        ("can_send_after", "10"),
        ("new_field", "kept as is"),
        ("user", r#"{"id":5,"first_name":"A B","future_flag":true}"#),
    ];
    let hash = telegram_hash(&data_check_string(&all), token);
    // Form encoding: spaces as `+`, as a browser's URLSearchParams writes them.
    let body: Vec<String> = all
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v).replace("%20", "+")))
        .collect();
    let init_data = format!("{}&hash={hash}", body.join("&"));
    let data = validate_init_data(&init_data, token, DAY, at(AUTH_DATE)).unwrap();
    assert_eq!(data.query_id.as_deref(), Some("AAHdF6IQAAAAAN0XohDhrOrc"));
    assert_eq!(data.start_param.as_deref(), Some("ref 42"));
    assert_eq!(data.can_send_after, Some(10));
    assert_eq!(data.other["new_field"], "kept as is");
    let user = data.user.unwrap();
    assert_eq!(user.first_name, "A B");
    assert_eq!(user.other["future_flag"], true);
}

#[test]
fn the_signature_field_is_part_of_the_hmac_data_check_string() {
    let mut with_signature = fields();
    with_signature.push(("signature", "c2lnbmF0dXJl"));
    let init_data = signed_init_data(&with_signature, BOT_TOKEN);
    let data = validate_init_data(&init_data, BOT_TOKEN, DAY, at(AUTH_DATE)).unwrap();
    assert_eq!(data.signature.as_deref(), Some("c2lnbmF0dXJl"));

    // A hash over the fields without `signature` does not match once `signature` is sent.
    let hash = telegram_hash(&data_check_string(&fields()), BOT_TOKEN);
    let sent: Vec<String> = with_signature
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let init_data = format!("{}&hash={hash}", sent.join("&"));
    assert_eq!(
        validate_init_data(&init_data, BOT_TOKEN, DAY, at(AUTH_DATE)).unwrap_err(),
        InitDataError::BadHash
    );
}

#[test]
fn a_tampered_field_is_refused() {
    let init_data = signed_init_data(&fields(), BOT_TOKEN);
    let tampered = init_data.replace("279058397", "279058398");
    assert_ne!(tampered, init_data);
    assert_eq!(
        validate_init_data(&tampered, BOT_TOKEN, DAY, at(AUTH_DATE)).unwrap_err(),
        InitDataError::BadHash
    );
    // A field added after signing.
    let added = format!("{init_data}&start_param=admin");
    assert_eq!(
        validate_init_data(&added, BOT_TOKEN, DAY, at(AUTH_DATE)).unwrap_err(),
        InitDataError::BadHash
    );
    // A field taken away.
    let removed = init_data.replace("chat_type=sender&", "");
    assert_eq!(
        validate_init_data(&removed, BOT_TOKEN, DAY, at(AUTH_DATE)).unwrap_err(),
        InitDataError::BadHash
    );
}

#[test]
fn another_bots_token_is_refused() {
    let init_data = signed_init_data(&fields(), BOT_TOKEN);
    let other = "7342037359:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaX";
    assert_eq!(
        validate_init_data(&init_data, other, DAY, at(AUTH_DATE)).unwrap_err(),
        InitDataError::BadHash
    );
}

#[test]
fn stale_and_future_init_data_is_refused() {
    let init_data = signed_init_data(&fields(), BOT_TOKEN);
    let max_age = Duration::from_secs(3600);
    assert!(validate_init_data(&init_data, BOT_TOKEN, max_age, at(AUTH_DATE + 3600)).is_ok());
    assert_eq!(
        validate_init_data(&init_data, BOT_TOKEN, max_age, at(AUTH_DATE + 3601)).unwrap_err(),
        InitDataError::Expired
    );
    // A little ahead of our clock is tolerated; far ahead is not.
    assert!(validate_init_data(&init_data, BOT_TOKEN, max_age, at(AUTH_DATE - 60)).is_ok());
    assert_eq!(
        validate_init_data(&init_data, BOT_TOKEN, max_age, at(AUTH_DATE - 3600)).unwrap_err(),
        InitDataError::FromTheFuture
    );
}

#[test]
fn malformed_init_data_is_refused() {
    let now = at(AUTH_DATE);
    let valid = signed_init_data(&fields(), BOT_TOKEN);
    let no_hash = valid.split("&hash=").next().unwrap().to_owned();
    let cases = [
        (no_hash.clone(), InitDataError::Missing("hash")),
        (String::new(), InitDataError::Missing("hash")),
        (
            format!("{no_hash}&hash=xyz"),
            InitDataError::Malformed("hash is not 64 hex digits"),
        ),
        (
            valid.replace("chat_type=sender", "chat_type=%zzsender"),
            InitDataError::Malformed("bad percent-encoding"),
        ),
        (
            valid.replace("chat_type=sender", "chat_type=sen%FFder"),
            InitDataError::Malformed("field is not UTF-8"),
        ),
        (
            format!("chat_type=group&{valid}"),
            InitDataError::DuplicateField,
        ),
        (format!("{valid}&"), InitDataError::Malformed("empty field")),
        (
            format!("{valid}&flag"),
            InitDataError::Malformed("field without ="),
        ),
    ];
    for (input, expected) in cases {
        let error = validate_init_data(&input, BOT_TOKEN, DAY, now).unwrap_err();
        assert_eq!(error, expected, "{input}");
        assert!(error.is_malformed(), "{input}");
    }
    // Signed, but not initData inside: checked after the hash, still malformed.
    let no_auth_date = signed_init_data(&[("user", USER)], BOT_TOKEN);
    assert_eq!(
        validate_init_data(&no_auth_date, BOT_TOKEN, DAY, now).unwrap_err(),
        InitDataError::Missing("auth_date")
    );
    let bad_user = signed_init_data(
        &[("auth_date", "1733584787"), ("user", r#"{"name":"x"}"#)],
        BOT_TOKEN,
    );
    assert!(
        validate_init_data(&bad_user, BOT_TOKEN, DAY, now)
            .unwrap_err()
            .is_malformed()
    );
    assert!(!InitDataError::BadHash.is_malformed());
}

#[test]
fn errors_never_carry_the_token_or_the_data() {
    let init_data = signed_init_data(&fields(), BOT_TOKEN);
    let error = validate_init_data(&init_data, "123:other", DAY, at(AUTH_DATE)).unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(
        !text.contains("AAHdq") && !text.contains("279058397"),
        "{text}"
    );
}

/// A vector from aiogram's test suite (an independent implementation): token `42:TEST`.
#[test]
fn agrees_with_an_independent_implementation() {
    let init_data = "auth_date=1650385342\
        &user=%7B%22id%22%3A42%2C%22first_name%22%3A%22Test%22%7D\
        &query_id=test\
        &hash=46d2ea5e32911ec8d30999b56247654460c0d20949b6277af519e76271182803";
    let data = validate_init_data(init_data, "42:TEST", DAY, at(1_650_385_342)).unwrap();
    assert_eq!(data.user.unwrap().id, UserId(42));
    assert_eq!(data.query_id.as_deref(), Some("test"));
    assert_eq!(
        validate_init_data(init_data, "42:INVALID", DAY, at(1_650_385_342)).unwrap_err(),
        InitDataError::BadHash
    );
}

/// `<bot_id>:WebAppData\n` + the fields but `hash` and `signature`, signed with `key`.
fn third_party_signed(bot_id: i64, fields: &[(&str, &str)], key: &SigningKey) -> String {
    let message = format!("{bot_id}:WebAppData\n{}", data_check_string(fields));
    let signature = URL_SAFE_NO_PAD.encode(key.sign(message.as_bytes()).to_bytes());
    let mut parts: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    parts.push(format!("signature={signature}"));
    // A hash is sent too and is not part of what is signed.
    parts.push(format!("hash={}", "ab".repeat(32)));
    parts.join("&")
}

#[test]
fn third_party_signature_validates() {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let public = key.verifying_key().to_bytes();
    let init_data = third_party_signed(7342037359, &fields(), &key);
    let data =
        validate_init_data_signature(&init_data, 7342037359, &public, DAY, at(AUTH_DATE)).unwrap();
    assert_eq!(data.user.unwrap().id, UserId(279058397));
    assert!(data.signature.is_some());

    let wrong_bot = validate_init_data_signature(&init_data, 1, &public, DAY, at(AUTH_DATE));
    assert_eq!(wrong_bot.unwrap_err(), InitDataError::BadSignature);
    let tampered = init_data.replace("sender", "private");
    let tampered = validate_init_data_signature(&tampered, 7342037359, &public, DAY, at(AUTH_DATE));
    assert_eq!(tampered.unwrap_err(), InitDataError::BadSignature);
    // Not signed by Telegram's production key.
    let production = TelegramEnvironment::Production.public_key();
    let other_key =
        validate_init_data_signature(&init_data, 7342037359, &production, DAY, at(AUTH_DATE));
    assert_eq!(other_key.unwrap_err(), InitDataError::BadSignature);
    let stale = validate_init_data_signature(
        &init_data,
        7342037359,
        &public,
        DAY,
        at(AUTH_DATE + 2 * 86400),
    );
    assert_eq!(stale.unwrap_err(), InitDataError::Expired);
    let unsigned = signed_init_data(&fields(), BOT_TOKEN);
    assert_eq!(
        validate_init_data_signature(&unsigned, 7342037359, &public, DAY, at(AUTH_DATE))
            .unwrap_err(),
        InitDataError::Missing("signature")
    );
}

/// aiogram's third-party vector: bot 42, its own test key pair.
#[test]
fn third_party_signature_agrees_with_an_independent_implementation() {
    let public: [u8; 32] =
        hex::decode("4112765021341e5415e772cd65903f6b94e3ea1c2ab669e6d3e18ee2db00da61")
            .unwrap()
            .try_into()
            .unwrap();
    let init_data = "auth_date=1650385342\
        &user=%7B%22id%22%3A42%2C%22first_name%22%3A%22Test%22%7D\
        &query_id=test\
        &signature=JQ0JR2tjC65yq_jNZV0wuJVX6J-SWPMV0mprUXG34g-NvxL4RcF1Rz5n4VVo00VRghEUBf5t___uoeb1-jU_Cw";
    let data =
        validate_init_data_signature(init_data, 42, &public, DAY, at(1_650_385_342)).unwrap();
    assert_eq!(data.user.unwrap().first_name, "Test");
    let altered = init_data.replace("-jU_Cw", "-j1U_w");
    assert!(validate_init_data_signature(&altered, 42, &public, DAY, at(1_650_385_342)).is_err());
}
