//! The Bot API envelope, methods and errors, over HTTP.

mod common;

use common::{TOKEN, assert_error, call, get, post, standin};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

#[test]
fn get_me_answers_the_bot_in_the_envelope() {
    let standin = standin();
    let answer = call(&standin.base_url(), "getMe", json!({}));
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        json!({"ok": true, "result": {
            "id": 123456, "is_bot": true, "first_name": "Botline Test Bot",
            "username": "botline_test_bot", "can_join_groups": true,
            "can_read_all_group_messages": false, "supports_inline_queries": false,
        }})
    );
}

#[test]
fn send_message_answers_a_whole_message_and_is_recorded() {
    let standin = standin();
    let base = standin.base_url();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let first = call(
        &base,
        "sendMessage",
        json!({"chat_id": 42, "text": "hello"}),
    );
    assert_eq!(first.status, 200);
    let message = &first.body["result"];
    assert_eq!(first.body["ok"], true);
    assert_eq!(message["message_id"], 1);
    assert_eq!(message["chat"]["id"], 42);
    assert_eq!(message["chat"]["type"], "private");
    assert_eq!(message["from"]["id"], 123456);
    assert_eq!(message["from"]["is_bot"], true);
    assert_eq!(message["from"]["username"], "botline_test_bot");
    assert_eq!(message["text"], "hello");
    assert!(message["date"].as_u64().unwrap().abs_diff(now) <= 5);
    assert!(message.get("reply_to_message").is_none());

    // Ids count per chat; replies carry the message answered.
    let second = call(
        &base,
        "sendMessage",
        json!({"chat_id": 42, "text": "again", "reply_parameters": {"message_id": 7}}),
    );
    assert_eq!(second.body["result"]["message_id"], 2);
    assert_eq!(second.body["result"]["reply_to_message"]["message_id"], 7);
    assert_eq!(second.body["result"]["reply_to_message"]["chat"]["id"], 42);
    let group = call(
        &base,
        "sendMessage",
        json!({"chat_id": -1001234567890_i64, "text": "hi all", "reply_to_message_id": 3}),
    );
    assert_eq!(group.body["result"]["message_id"], 1);
    assert_eq!(group.body["result"]["chat"]["type"], "supergroup");
    assert_eq!(group.body["result"]["reply_to_message"]["message_id"], 3);
    let basic = call(
        &base,
        "sendMessage",
        json!({"chat_id": -4012345678_i64, "text": "x"}),
    );
    assert_eq!(basic.body["result"]["chat"]["type"], "group");

    let calls = standin.calls_of("sendmessage");
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c.succeeded() && c.token_ok));
    assert_eq!(calls[0].method, "sendMessage");
    assert_eq!(calls[0].params, json!({"chat_id": 42, "text": "hello"}));
    assert!(calls[0].at <= calls[1].at);
}

#[test]
fn form_bodies_and_query_strings_count_like_json() {
    let standin = standin();
    let url = format!("{}/bot{TOKEN}/sendMessage", standin.base_url());

    let form = post(
        &url,
        "application/x-www-form-urlencoded",
        "chat_id=42&text=hello+there%21&reply_parameters=%7B%22message_id%22%3A5%7D",
    );
    assert_eq!(form.status, 200, "{:?}", form.body);
    assert_eq!(form.body["result"]["text"], "hello there!");
    assert_eq!(form.body["result"]["reply_to_message"]["message_id"], 5);

    // Method names in any case, parameters in the query string, GET as well as POST.
    let query = get(&format!(
        "{}/bot{TOKEN}/SENDMESSAGE?chat_id=%40news&text=from+the+query",
        standin.base_url()
    ));
    assert_eq!(query.status, 200, "{:?}", query.body);
    assert_eq!(query.body["result"]["text"], "from the query");
    assert_eq!(query.body["result"]["chat"]["type"], "channel");
    assert_eq!(query.body["result"]["chat"]["username"], "news");

    // The body wins over the query string.
    let both = post(
        &format!("{url}?chat_id=1&text=query"),
        "application/json",
        r#"{"text":"body"}"#,
    );
    assert_eq!(both.body["result"]["text"], "body");
    assert_eq!(both.body["result"]["chat"]["id"], 1);

    let recorded = standin.calls_of("sendMessage");
    assert_eq!(recorded[0].params["chat_id"], "42");
    assert_eq!(recorded[1].method, "sendMessage");
    assert_eq!(recorded[2].params, json!({"chat_id": "1", "text": "body"}));
}

#[test]
fn a_wrong_token_is_401_and_no_token_is_ever_recorded() {
    let standin = standin();
    let wrong = post(
        &format!("{}/bot123456:not-the-secret/getMe", standin.base_url()),
        "application/json",
        "{}",
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.body,
        json!({"ok": false, "error_code": 401, "description": "Unauthorized"})
    );
    call(&standin.base_url(), "getMe", json!({}));

    let calls = standin.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].token_ok, calls[0].status), (false, Some(401)));
    assert_eq!((calls[1].token_ok, calls[1].status), (true, Some(200)));
    let shown = format!(
        "{calls:?} {} {standin:?}",
        serde_json::to_string(&calls).unwrap()
    );
    assert!(!shown.contains("not-the-secret"), "{shown}");
    assert!(!shown.contains("AAH-test_secret"), "{shown}");
}

#[test]
fn unknown_methods_and_paths_are_404() {
    let standin = standin();
    let base = standin.base_url();
    let not_found = json!({"ok": false, "error_code": 404, "description": "Not Found"});
    let unknown = call(&base, "sendPhoto", json!({"chat_id": 1}));
    assert_eq!((unknown.status, &unknown.body), (404, &not_found));
    for path in [format!("/bot{TOKEN}/"), "/".into(), "/getMe".into()] {
        let answer = post(&format!("{base}{path}"), "application/json", "{}");
        assert_eq!((answer.status, &answer.body), (404, &not_found), "{path}");
    }
    assert_eq!(standin.calls_of("sendPhoto")[0].status, Some(404));
}

#[test]
fn send_message_errors_are_worded_as_telegram_words_them() {
    let standin = standin();
    let base = standin.base_url();
    let send = |params| call(&base, "sendMessage", params);

    assert_error(
        &send(json!({"chat_id": 42, "text": ""})),
        400,
        "Bad Request: message text is empty",
    );
    assert_error(
        &send(json!({"chat_id": 42, "text": " \n "})),
        400,
        "Bad Request: message text is empty",
    );
    assert_error(
        &send(json!({"chat_id": 42})),
        400,
        "Bad Request: message text is empty",
    );
    assert_error(
        &send(json!({"text": "hi"})),
        400,
        "Bad Request: chat_id is empty",
    );
    assert_error(
        &send(json!({"chat_id": "not a chat", "text": "hi"})),
        400,
        "Bad Request: chat not found",
    );
    assert_error(
        &send(json!({"chat_id": 42, "text": "x".repeat(4097)})),
        400,
        "Bad Request: message is too long",
    );
    assert_eq!(
        send(json!({"chat_id": 42, "text": "x".repeat(4096)})).status,
        200
    );

    standin.block_chat(77);
    assert_error(
        &send(json!({"chat_id": 77, "text": "hi"})),
        403,
        "Forbidden: bot was blocked by the user",
    );
    standin.missing_chat(-500);
    assert_error(
        &send(json!({"chat_id": -500, "text": "hi"})),
        400,
        "Bad Request: chat not found",
    );
    let statuses: Vec<_> = standin
        .calls_of("sendMessage")
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(
        statuses,
        [400, 400, 400, 400, 400, 400, 200, 403, 400].map(Some)
    );

    let unparsable = post(
        &format!("{base}/bot{TOKEN}/sendMessage"),
        "application/json",
        "{not json",
    );
    assert_error(&unparsable, 400, "Bad Request: can't parse JSON object");
}

#[test]
fn delete_message_is_true_once_unless_undeletable() {
    let standin = standin();
    let base = standin.base_url();
    let delete = |params| call(&base, "deleteMessage", params);

    let deleted = delete(json!({"chat_id": 42, "message_id": 10}));
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.body, json!({"ok": true, "result": true}));
    let not_found = "Bad Request: message to delete not found";
    assert_error(
        &delete(json!({"chat_id": 42, "message_id": 10})),
        400,
        not_found,
    );
    standin.undeletable(42, 11);
    assert_error(
        &delete(json!({"chat_id": 42, "message_id": 11})),
        400,
        not_found,
    );
    assert_error(
        &delete(json!({"chat_id": 42})),
        400,
        "Bad Request: message identifier is not specified",
    );
    standin.missing_chat(43);
    assert_error(
        &delete(json!({"chat_id": 43, "message_id": 1})),
        400,
        "Bad Request: chat not found",
    );
    assert_eq!(standin.calls_of("deleteMessage").len(), 5);
}

#[test]
fn dropping_the_standin_ends_its_polls_and_closes_its_port() {
    let standin = standin();
    let base = standin.base_url();
    std::thread::scope(|scope| {
        let poll = scope.spawn(|| {
            common::try_post(
                &format!("{base}/bot{TOKEN}/getUpdates"),
                "application/json",
                r#"{"timeout":30}"#,
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        let started = std::time::Instant::now();
        drop(standin);
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        assert!(poll.join().unwrap().is_err(), "the poll was answered");
    });
    assert!(
        common::try_post(
            &format!("{base}/bot{TOKEN}/getMe"),
            "application/json",
            "{}"
        )
        .is_err()
    );
}
