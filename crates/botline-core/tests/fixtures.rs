//! Parsing and record building against the real Telegram updates in `tests/data/`.

use botline_core::records::build_records;
use botline_core::{ChatId, InboundUpdate, OrderKey, QueuedUpdate, UpdateId, UserId};
use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

fn fixture(name: &str) -> (Vec<u8>, InboundUpdate) {
    let body = std::fs::read(data_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let update = InboundUpdate::parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
    (body, update)
}

fn fixtures(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/data")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_fixture_is_an_update_kept_byte_for_byte() {
    let files = fixtures(&data_dir());
    assert!(files.len() >= 40, "only {} fixtures", files.len());
    for path in files {
        let body = std::fs::read(&path).unwrap();
        let update =
            InboundUpdate::parse(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(update.raw.as_bytes(), body.as_slice(), "{}", path.display());
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let expected_kind = if name.starts_with("message-reaction") {
            &name.replace('-', "_")
        } else if name.starts_with("message-") {
            "message"
        } else if name == "unknown-update-kind" {
            "future_update_kind"
        } else {
            &name.replace('-', "_")
        };
        assert_eq!(update.kind.as_str(), expected_kind, "{name}");
        let queued = QueuedUpdate::new(update, "e".into(), 0);
        let records = build_records(&queued, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(records.event.event_type, expected_kind);
        assert_eq!(
            records.message.is_some(),
            expected_kind == "message",
            "{name}: a message record for message updates only"
        );
    }
}

#[test]
fn every_invalid_body_is_refused() {
    let dir = data_dir().join("invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data/invalid")
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    for path in files {
        let body = std::fs::read(&path).unwrap();
        assert!(
            InboundUpdate::parse(&body).is_err(),
            "{} was accepted",
            path.display()
        );
    }
}

#[test]
fn chats_of_every_type_order_their_updates() {
    let cases = [
        (
            "message-private-text.json",
            OrderKey::Chat(ChatId(123456789)),
        ),
        (
            "message-group-text.json",
            OrderKey::Chat(ChatId(-4012345678)),
        ),
        (
            "message-supergroup-text.json",
            OrderKey::Chat(ChatId(-1001234567890)),
        ),
        ("channel-post.json", OrderKey::Chat(ChatId(-1001122334455))),
        ("callback-query.json", OrderKey::Chat(ChatId(123456789))),
        ("my-chat-member.json", OrderKey::Chat(ChatId(-4012345678))),
    ];
    for (name, key) in cases {
        let (_, update) = fixture(name);
        assert_eq!(update.order_key, key, "{name}");
    }
    let (_, inline) = fixture("inline-query.json");
    assert!(matches!(inline.order_key, OrderKey::User(UserId(_))));
    let (_, poll) = fixture("poll.json");
    assert_eq!(poll.order_key, OrderKey::Update(poll.id));
}

#[test]
fn ids_above_two_to_the_32_survive() {
    let (_, update) = fixture("message-large-ids.json");
    assert_eq!(update.id, UpdateId(5_000_000_001));
    assert_eq!(update.order_key, OrderKey::Chat(ChatId(-1009876543210123)));
    let queued = QueuedUpdate::new(update, "e".into(), 0);
    let records = build_records(&queued, 0).unwrap();
    let message = records.message.unwrap();
    assert_eq!(message.chat_id, "-1009876543210123");
    assert_eq!(message.user_id, Some(7123456789012));
    assert_eq!(message.message_id, 2147483699);
    assert_eq!(records.user.unwrap().user_id, "telegram_7123456789012");
}

#[test]
fn text_keeps_emoji_right_to_left_script_and_escapes() {
    let text_of = |name: &str| {
        let (body, update) = fixture(name);
        let queued = QueuedUpdate::new(update, "e".into(), 0);
        let text = build_records(&queued, 0)
            .unwrap()
            .message
            .unwrap()
            .text
            .unwrap();
        (String::from_utf8(body).unwrap(), text)
    };
    let (_, emoji) = text_of("message-emoji.json");
    assert!(emoji.contains('\u{200d}'), "ZWJ sequences kept: {emoji}");
    let (_, rtl) = text_of("message-rtl.json");
    assert!(
        rtl.chars().any(|c| ('\u{0590}'..='\u{06ff}').contains(&c)),
        "{rtl}"
    );
    let (raw, escaped) = text_of("message-escapes.json");
    assert!(escaped.contains('é') && escaped.contains('😀') && escaped.contains('"'));
    assert!(
        raw.contains("\\u00e9") && raw.contains("\\ud83d\\ude00"),
        "raw keeps the escapes"
    );
}

#[test]
fn commands_and_media_are_messages_with_their_text() {
    let text_of = |name: &str| {
        let (_, update) = fixture(name);
        let queued = QueuedUpdate::new(update, "e".into(), 0);
        build_records(&queued, 0).unwrap().message.unwrap().text
    };
    // The bot's username is unknown here, so the command is not acted on; its token is
    // redacted all the same, whatever bot it addresses.
    assert_eq!(
        text_of("message-group-command-with-botname.json").as_deref(),
        Some("/register@botline_bot alice [redacted]")
    );
    assert_eq!(
        text_of("message-private-command-start.json").as_deref(),
        Some("/start")
    );
    assert!(text_of("message-photo-caption.json").is_some(), "caption");
    assert_eq!(text_of("message-sticker.json"), None);
}
