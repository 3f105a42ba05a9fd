//! Injected failures: what a client sees, and what is recorded.

mod common;

use botline_standin::Fault;
use common::{TOKEN, assert_error, call, standin, try_post};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn too_many_requests_then_success() {
    let standin = standin();
    let base = standin.base_url();
    standin.fail_next(
        Some("sendMessage"),
        2,
        Fault::TooManyRequests { retry_after: 3 },
    );
    let send = || call(&base, "sendMessage", json!({"chat_id": 42, "text": "hi"}));

    for _ in 0..2 {
        let limited = send();
        assert_eq!(limited.status, 429);
        assert_eq!(
            limited.body,
            json!({"ok": false, "error_code": 429,
                   "description": "Too Many Requests: retry after 3",
                   "parameters": {"retry_after": 3}})
        );
        // Other methods are not affected.
        assert_eq!(call(&base, "getMe", json!({})).status, 200);
    }
    let sent = send();
    assert_eq!(sent.status, 200);
    // The refused calls sent nothing.
    assert_eq!(sent.body["result"]["message_id"], 1);

    let statuses: Vec<_> = standin
        .calls_of("sendMessage")
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, [Some(429), Some(429), Some(200)]);
    let succeeded = standin.wait_for_calls("sendMessage", 1, Duration::from_secs(1));
    assert_eq!(succeeded.len(), 1);
}

#[test]
fn server_and_api_errors_come_in_the_envelope() {
    let standin = standin();
    let base = standin.base_url();
    standin.fail_next(None, 1, Fault::Server(502));
    standin.fail_next(Some("getMe"), 1, Fault::Server(503));
    standin.fail_next(
        Some("deleteMessage"),
        1,
        Fault::Api {
            code: 400,
            description: "Bad Request: message can't be deleted".into(),
        },
    );

    // The fault for any method hits the first call, whichever it is.
    assert_error(
        &call(&base, "getWebhookInfo", json!({})),
        502,
        "Bad Gateway",
    );
    assert_error(&call(&base, "getMe", json!({})), 503, "Service Unavailable");
    assert_error(
        &call(
            &base,
            "deleteMessage",
            json!({"chat_id": 1, "message_id": 2}),
        ),
        400,
        "Bad Request: message can't be deleted",
    );
    assert_eq!(call(&base, "getMe", json!({})).status, 200);
}

#[test]
fn faults_wait_for_a_call_with_the_right_token() {
    let standin = standin();
    let base = standin.base_url();
    standin.fail_next(None, 1, Fault::Server(500));
    let wrong = try_post(
        &format!("{base}/bot1:wrong/getMe"),
        "application/json",
        "{}",
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    assert_error(
        &call(&base, "getMe", json!({})),
        500,
        "Internal Server Error",
    );
}

#[test]
fn a_dropped_call_gets_no_answer_at_all() {
    let standin = standin();
    let base = standin.base_url();
    standin.fail_next(Some("getMe"), 1, Fault::Drop);

    let dropped = try_post(
        &format!("{base}/bot{TOKEN}/getMe"),
        "application/json",
        "{}",
    );
    assert!(dropped.is_err(), "answered: {dropped:?}");
    assert_eq!(call(&base, "getMe", json!({})).status, 200);

    let statuses: Vec<_> = standin.calls_of("getMe").iter().map(|c| c.status).collect();
    assert_eq!(statuses, [None, Some(200)]);
}

#[test]
fn a_delayed_call_is_answered_late_and_normally() {
    let standin = standin();
    let base = standin.base_url();
    standin.fail_next(
        Some("sendMessage"),
        1,
        Fault::Delay(Duration::from_millis(400)),
    );
    let started = Instant::now();
    let sent = call(&base, "sendMessage", json!({"chat_id": 1, "text": "slow"}));
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(sent.status, 200);
    assert_eq!(sent.body["result"]["text"], "slow");
}

#[test]
fn wait_for_calls_waits_for_successes_until_its_timeout() {
    let standin = standin();
    let base = standin.base_url();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..3 {
                std::thread::sleep(Duration::from_millis(100));
                call(
                    &base,
                    "sendMessage",
                    json!({"chat_id": 1, "text": format!("{i}")}),
                );
            }
        });
        let sent = standin.wait_for_calls("sendMessage", 3, Duration::from_secs(10));
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[2].params["text"], "2");
    });
    let started = Instant::now();
    let sent = standin.wait_for_calls("sendMessage", 4, Duration::from_millis(300));
    assert_eq!(sent.len(), 3);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn every_method_takes_injected_faults_and_is_recorded() {
    let standin = standin();
    let base = standin.base_url();
    standin.fail_next(
        Some("sendPhoto"),
        1,
        Fault::TooManyRequests { retry_after: 2 },
    );
    standin.fail_next(Some("editMessageText"), 1, Fault::Server(502));
    standin.fail_next(Some("answerCallbackQuery"), 1, Fault::Server(500));
    standin.fail_next(
        Some("sendChatAction"),
        1,
        Fault::Api {
            code: 403,
            description: "Forbidden: bot was kicked from the group chat".into(),
        },
    );
    let photo = || {
        call(
            &base,
            "sendPhoto",
            json!({"chat_id": 42, "photo": "https://example.org/cat.jpg"}),
        )
    };
    let edit = || {
        call(
            &base,
            "editMessageText",
            json!({"chat_id": 43, "message_id": 1, "text": "edited"}),
        )
    };
    let answer = || {
        call(
            &base,
            "answerCallbackQuery",
            json!({"callback_query_id": "4382123457712345678"}),
        )
    };
    let act = || {
        call(
            &base,
            "sendChatAction",
            json!({"chat_id": -4012345678_i64, "action": "typing"}),
        )
    };

    let limited = photo();
    assert_eq!(
        limited.body,
        json!({"ok": false, "error_code": 429,
               "description": "Too Many Requests: retry after 2",
               "parameters": {"retry_after": 2}})
    );
    // The refused photo was not sent.
    assert_eq!(photo().body["result"]["message_id"], 1);
    call(&base, "sendMessage", json!({"chat_id": 43, "text": "hi"}));
    assert_error(&edit(), 502, "Bad Gateway");
    assert_eq!(edit().body["result"]["text"], "edited");
    assert_error(&answer(), 500, "Internal Server Error");
    // The query was not answered by the failed call.
    assert_eq!(answer().body["result"], true);
    assert_error(&act(), 403, "Forbidden: bot was kicked from the group chat");
    assert_eq!(act().body["result"], true);

    for method in [
        "sendPhoto",
        "editMessageText",
        "answerCallbackQuery",
        "sendChatAction",
    ] {
        let succeeded = standin.wait_for_calls(method, 1, Duration::from_secs(1));
        assert_eq!(succeeded.len(), 1, "{method}");
        assert_eq!(succeeded[0].method, method);
        let statuses: Vec<_> = standin.calls_of(method).iter().map(|c| c.status).collect();
        assert_eq!(statuses.len(), 2, "{method}");
        assert_ne!(statuses[0], Some(200), "{method}");
        assert_eq!(statuses[1], Some(200), "{method}");
    }
}
