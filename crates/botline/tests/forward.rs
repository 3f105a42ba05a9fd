//! Forwarding to the bot's own webhook handler (issue 16), black box: the `botline` binary in
//! front of a handler (an HTTP server in this test, answering as grammY's webhook reply does)
//! and the Bot API stand-in. Each update reaches the handler with Telegram's secret header and a
//! Standard Webhooks signature, one chat at a time in order; each call an answer carries reaches
//! Telegram once, through a 429; a handler that is down at first is retried until it is up; one
//! that answers 500 sends its update to the DLQ while the chat goes on; a bad answer (no
//! method, over 1 MiB) sends nothing; an answer later than `BOTLINE_HANDLER_TIMEOUT` is never
//! sent, and the retry's is, once; a `Retry-After` in a failed answer is waited out.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use botline_standin::{Fault, Settings as StandInSettings, StandIn};
use common::{Server, deliver, free_port, message, replies, wait_until};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET_TOKEN: &str = "handler-secret-token";
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const GIVE_UP: Duration = Duration::from_secs(60);

/// When the handler was asked about the "busy" update.
static BUSY_SEEN: Mutex<Vec<Instant>> = Mutex::new(Vec::new());

/// What the handler saw: (update id, chat, text, attempt header, body).
type Seen = Arc<Mutex<Vec<(i64, i64, String, String, String)>>>;

/// The bot's handler: checks the secret and the signature as a framework would, and answers
/// each text as the test needs.
async fn handle(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
    let secret = headers
        .get("x-telegram-bot-api-secret-token")
        .and_then(|v| v.to_str().ok());
    if secret != Some(SECRET_TOKEN) {
        return (StatusCode::UNAUTHORIZED, "wrong secret").into_response();
    }
    let webhook = standardwebhooks::Webhook::new(SIGNING_SECRET).unwrap();
    if webhook.verify(&body, &headers).is_err() {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let update: Value = serde_json::from_slice(&body).unwrap();
    let id = update["update_id"].as_i64().unwrap();
    assert_eq!(headers["webhook-id"], id.to_string().as_str());
    let chat = update["message"]["chat"]["id"].as_i64().unwrap();
    let text = update["message"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let attempt = headers["botline-attempt"].to_str().unwrap().to_owned();
    let first_time = {
        let mut seen = seen.lock().unwrap();
        let first_time = !seen.iter().any(|s| s.0 == id);
        let body = String::from_utf8_lossy(&body).into_owned();
        seen.push((id, chat, text.clone(), attempt, body));
        first_time
    };
    let json = |value: Value| {
        (
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response()
    };
    match text.as_str() {
        // Past BOTLINE_HANDLER_TIMEOUT the first time: that answer must never be sent.
        "slow" if first_time => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json(json!({"method": "sendMessage", "chat_id": chat, "text": "too late"}))
        }
        "slow" => json(json!({"method": "sendMessage", "chat_id": chat, "text": "in time"})),
        "huge" => {
            json(json!({"method": "sendMessage", "chat_id": chat, "text": "x".repeat(2 << 20)}))
        }
        // Busy the first time, with a Retry-After far above the backoff (200 ms).
        "busy" => {
            BUSY_SEEN.lock().unwrap().push(Instant::now());
            if first_time {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "2")],
                )
                    .into_response()
            } else {
                json(json!({"method": "sendMessage", "chat_id": chat, "text": "not busy now"}))
            }
        }
        "fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "quiet" => json(json!({"ok": true})),
        "nonsense" => json(json!({"text": "no method"})),
        "form" => (
            [(header::CONTENT_TYPE, "application/x-www-form-urlencoded")],
            format!("method=sendMessage&chat_id={chat}&text=form+reply"),
        )
            .into_response(),
        "two" => json(json!([
            {"method": "sendMessage", "chat_id": chat, "text": "first of two"},
            {"method": "sendMessage", "chat_id": chat, "text": "second of two"},
        ])),
        _ => {
            json(json!({"method": "sendMessage", "chat_id": chat, "text": format!("echo: {text}")}))
        }
    }
}

/// Starts the handler on `port` in a thread of its own.
fn start_handler(port: u16, seen: Seen) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = Router::new().route("/bot", post(handle)).with_state(seen);
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
}

#[test]
fn every_answered_call_reaches_telegram_once_and_a_failing_update_does_not_block_its_chat() {
    let standin = StandIn::start(StandInSettings::default());
    standin.fail_next(
        Some("sendMessage"),
        1,
        Fault::TooManyRequests { retry_after: 1 },
    );
    let handler_port = free_port();
    let handler_url = format!("http://127.0.0.1:{handler_port}/bot");
    let api = standin.base_url();
    let token = StandInSettings::default().token;
    let server = Server::start(&[
        ("BOTLINE_BOT_TOKEN", &token),
        ("BOTLINE_TELEGRAM_API_URL", &api),
        ("BOTLINE_HANDLER_URL", &handler_url),
        ("BOTLINE_HANDLER_SECRET_TOKEN", SECRET_TOKEN),
        ("BOTLINE_HANDLER_SIGNING_SECRET", SIGNING_SECRET),
        ("BOTLINE_MAX_ATTEMPTS", "10"),
        ("BOTLINE_BACKOFF_BASE", "200ms"),
        ("BOTLINE_BACKOFF_MAX", "500ms"),
        ("BOTLINE_HANDLER_TIMEOUT", "1s"),
    ]);
    let webhook = server.url("/telegram/webhook");
    let updates = [
        (1, 10, "/start"),
        (2, 10, "one"),
        (3, 10, "two"),
        (4, 10, "three"),
        (5, 20, "fail"),
        (6, 20, "after the failure"),
        (7, 30, "form"),
        (8, 30, "quiet"),
        (9, 30, "nonsense"),
        (10, 30, "last"),
        (11, 40, "slow"),
        (12, 40, "huge"),
        (13, 40, "after the huge one"),
        (14, 50, "busy"),
    ];
    for (id, chat, text) in updates {
        deliver(&webhook, None, &message(id, chat, id, text), GIVE_UP);
    }
    // The handler is down: attempts fail until it is up.
    wait_until("an attempt refused by the absent handler", GIVE_UP, || {
        server.logs().contains("cannot reach the handler")
    });
    let seen: Seen = Arc::default();
    start_handler(handler_port, Arc::clone(&seen));
    // Telegram redelivers one: it is not forwarded twice.
    deliver(&webhook, None, &message(2, 10, 2, "one"), GIVE_UP);

    wait_until("every reply", GIVE_UP, || {
        replies(&standin, 10).len() == 5
            && replies(&standin, 20).len() == 1
            && replies(&standin, 30).len() == 2
            && replies(&standin, 40).len() == 2
            && replies(&standin, 50).len() == 1
    });
    let stats = server.wait_drained();
    assert_eq!(stats["dead"], 3, "{stats}");

    assert_eq!(
        replies(&standin, 10),
        [
            "echo: /start",
            "echo: one",
            "first of two",
            "second of two",
            "echo: three"
        ]
    );
    assert_eq!(replies(&standin, 20), ["echo: after the failure"]);
    assert_eq!(replies(&standin, 30), ["form reply", "echo: last"]);
    // The slow answer was given up at the timeout and never sent; the retry's was, once.
    assert_eq!(
        replies(&standin, 40),
        ["in time", "echo: after the huge one"]
    );

    let seen = seen.lock().unwrap().clone();
    // One chat at a time, in update_id order; every update of chat 10 reached the handler once.
    for chat in [10, 20, 30] {
        let ids: Vec<i64> = seen.iter().filter(|s| s.1 == chat).map(|s| s.0).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "chat {chat} in order: {seen:?}");
    }
    let of_chat_10: Vec<i64> = seen.iter().filter(|s| s.1 == 10).map(|s| s.0).collect();
    assert_eq!(of_chat_10, [1, 2, 3, 4]);
    // The body is the update as Telegram sent it, byte for byte.
    let start = seen.iter().find(|s| s.0 == 1).unwrap();
    assert_eq!(start.4.as_bytes(), message(1, 10, 1, "/start"));
    // The 500 was tried until its last attempt, numbered.
    let fail_attempts: Vec<&str> = seen
        .iter()
        .filter(|s| s.0 == 5)
        .map(|s| s.3.as_str())
        .collect();
    assert_eq!(fail_attempts.last(), Some(&"10"), "{seen:?}");

    let dead = server.cli(&["dlq", "show", "5"]);
    let dead = String::from_utf8_lossy(&dead.stdout);
    assert!(dead.contains("answered 500"), "{dead}");
    let dead = server.cli(&["dlq", "show", "9"]);
    let dead = String::from_utf8_lossy(&dead.stdout);
    assert!(dead.contains("neither a Bot API call"), "{dead}");
    // The handler's Retry-After held the update back, beyond the backoff.
    assert_eq!(replies(&standin, 50), ["not busy now"]);
    let busy = BUSY_SEEN.lock().unwrap().clone();
    assert_eq!(busy.len(), 2, "asked twice: busy, then not");
    assert!(busy[1] - busy[0] >= Duration::from_secs(2), "{busy:?}");
    let dead = server.cli(&["dlq", "show", "12"]);
    let dead = String::from_utf8_lossy(&dead.stdout);
    assert!(dead.contains("larger than 1048576 bytes"), "{dead}");
    let logs = server.logs();
    assert!(
        logs.contains("the handler did not finish within 1s"),
        "{logs}"
    );
    assert!(!logs.contains(SECRET_TOKEN) && !logs.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
}
