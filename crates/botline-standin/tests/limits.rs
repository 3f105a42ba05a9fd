//! Telegram's flood limits, when the stand-in enforces them. The per-group limit (20 a minute)
//! is tested on the limiter itself, with made-up times, in `src/state.rs`.

mod common;

use botline_standin::{Settings, StandIn};
use common::{call, settings, standin};
use serde_json::json;
use std::time::Duration;

fn enforcing() -> StandIn {
    StandIn::start(Settings {
        enforce_limits: true,
        ..settings()
    })
}

#[test]
fn one_message_a_second_to_a_chat() {
    let standin = enforcing();
    let base = standin.base_url();
    let send = |chat: i64| call(&base, "sendMessage", json!({"chat_id": chat, "text": "hi"}));

    // The test decides how much time passes, not the machine's speed.
    standin.freeze_clock();
    assert_eq!(send(42).status, 200);
    let limited = send(42);
    assert_eq!(
        limited.body,
        json!({"ok": false, "error_code": 429,
               "description": "Too Many Requests: retry after 1",
               "parameters": {"retry_after": 1}})
    );
    assert_eq!(limited.status, 429);
    assert_eq!(send(43).status, 200, "another chat is not limited");

    standin.advance_clock(Duration::from_millis(999));
    assert_eq!(send(42).status, 429, "not a second yet");
    standin.advance_clock(Duration::from_millis(1));
    let later = send(42);
    assert_eq!(later.status, 200);
    // The refused message was not sent.
    assert_eq!(later.body["result"]["message_id"], 2);
}

#[test]
fn thirty_messages_a_second_in_all() {
    let standin = enforcing();
    let base = standin.base_url();
    standin.freeze_clock();
    let statuses: Vec<u16> = (1..=31)
        .map(|chat| {
            call(
                &base,
                "sendMessage",
                json!({"chat_id": chat, "text": "news"}),
            )
            .status
        })
        .collect();
    assert_eq!(statuses[..30], [200; 30]);
    assert_eq!(statuses[30], 429);
}

#[test]
fn limits_are_off_unless_asked_for() {
    let standin = standin();
    let base = standin.base_url();
    for _ in 0..5 {
        let sent = call(&base, "sendMessage", json!({"chat_id": 42, "text": "hi"}));
        assert_eq!(sent.status, 200);
    }
}

#[test]
fn photos_count_as_messages_edits_and_chat_actions_do_not() {
    let standin = enforcing();
    let base = standin.base_url();
    let photo = |chat: i64| {
        call(
            &base,
            "sendPhoto",
            json!({"chat_id": chat, "photo": "https://example.org/cat.jpg"}),
        )
    };
    let text = |chat: i64| call(&base, "sendMessage", json!({"chat_id": chat, "text": "hi"}));

    assert_eq!(text(42).status, 200);
    let limited = photo(42);
    assert_eq!(
        limited.body,
        json!({"ok": false, "error_code": 429,
               "description": "Too Many Requests: retry after 1",
               "parameters": {"retry_after": 1}})
    );
    assert_eq!(limited.status, 429);
    assert_eq!(photo(43).status, 200);
    assert_eq!(text(43).status, 429, "a photo counts for the text after it");

    for i in 0..5 {
        let edited = call(
            &base,
            "editMessageText",
            json!({"chat_id": 42, "message_id": 1, "text": format!("edit {i}")}),
        );
        assert_eq!(edited.status, 200, "{:?}", edited.body);
        let action = call(
            &base,
            "sendChatAction",
            json!({"chat_id": 42, "action": "upload_photo"}),
        );
        assert_eq!(action.status, 200, "{:?}", action.body);
    }
}

#[test]
fn thirty_messages_a_second_in_all_photos_included() {
    let standin = enforcing();
    let base = standin.base_url();
    standin.freeze_clock();
    let statuses: Vec<u16> = (1..=31)
        .map(|chat| {
            let (method, params) = if chat % 2 == 0 {
                ("sendMessage", json!({"chat_id": chat, "text": "news"}))
            } else {
                (
                    "sendPhoto",
                    json!({"chat_id": chat, "photo": "https://example.org/news.jpg"}),
                )
            };
            call(&base, method, params).status
        })
        .collect();
    assert_eq!(statuses[..30], [200; 30]);
    assert_eq!(statuses[30], 429);
}
