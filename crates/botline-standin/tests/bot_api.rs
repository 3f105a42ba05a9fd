//! The Bot API envelope, methods and errors, over HTTP.

mod common;

use common::{TOKEN, assert_error, call, get, post, standin};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    let unknown = call(&base, "sendSticker", json!({"chat_id": 1}));
    assert_eq!((unknown.status, &unknown.body), (404, &not_found));
    for path in [format!("/bot{TOKEN}/"), "/".into(), "/getMe".into()] {
        let answer = post(&format!("{base}{path}"), "application/json", "{}");
        assert_eq!((answer.status, &answer.body), (404, &not_found), "{path}");
    }
    assert_eq!(standin.calls_of("sendSticker")[0].status, Some(404));
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
fn send_photo_answers_photo_sizes_and_is_recorded() {
    let standin = standin();
    let base = standin.base_url();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let by_url = call(
        &base,
        "sendPhoto",
        json!({"chat_id": 42, "photo": "https://example.org/cat.jpg", "caption": "a cat",
               "reply_parameters": {"message_id": 3}}),
    );
    assert_eq!(by_url.status, 200, "{:?}", by_url.body);
    assert_eq!(by_url.body["ok"], true);
    let message = &by_url.body["result"];
    assert_eq!(message["message_id"], 1);
    assert_eq!(message["chat"]["id"], 42);
    assert_eq!(message["from"]["id"], 123456);
    assert_eq!(message["caption"], "a cat");
    assert_eq!(message["reply_to_message"]["message_id"], 3);
    assert!(message.get("text").is_none());
    assert!(message["date"].as_u64().unwrap().abs_diff(now) <= 5);
    let sizes = message["photo"].as_array().unwrap();
    assert_eq!(sizes.len(), 3);
    let mut widths = Vec::new();
    for size in sizes {
        let fields: Vec<&str> = size
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for field in ["file_id", "file_unique_id", "width", "height", "file_size"] {
            assert!(fields.contains(&field), "{field} missing from {size}");
        }
        assert!(size["file_id"].as_str().unwrap().starts_with("AgAC"));
        assert!(size["height"].as_u64().unwrap() > 0);
        assert!(size["file_size"].as_u64().unwrap() > 0);
        widths.push(size["width"].as_u64().unwrap());
    }
    assert!(widths.is_sorted(), "smallest first: {widths:?}");
    let largest = sizes.last().unwrap();

    // The same URL is the same photo; a file_id answered is that photo again.
    let again = call(
        &base,
        "sendPhoto",
        json!({"chat_id": 42, "photo": "https://example.org/cat.jpg"}),
    );
    assert_eq!(again.body["result"]["photo"], message["photo"]);
    assert!(again.body["result"].get("caption").is_none());
    let forwarded = call(
        &base,
        "sendPhoto",
        json!({"chat_id": -1001234567890_i64, "photo": largest["file_id"]}),
    );
    assert_eq!(forwarded.body["result"]["photo"], message["photo"]);
    assert_eq!(forwarded.body["result"]["message_id"], 1);
    let other = call(
        &base,
        "sendPhoto",
        json!({"chat_id": 42, "photo": "AgACAgIAAxkBAAIBY2Zz_some-file-id"}),
    );
    assert_eq!(other.status, 200, "{:?}", other.body);
    assert_ne!(
        other.body["result"]["photo"][0]["file_unique_id"],
        sizes[0]["file_unique_id"]
    );
    // Photos and texts share a chat's message ids.
    assert_eq!(other.body["result"]["message_id"], 3);
    let text = call(&base, "sendMessage", json!({"chat_id": 42, "text": "hi"}));
    assert_eq!(text.body["result"]["message_id"], 4);

    // Form bodies and query strings, as for sendMessage.
    let form = post(
        &format!("{base}/bot{TOKEN}/sendPhoto"),
        "application/x-www-form-urlencoded",
        "chat_id=42&photo=http%3A%2F%2Fexample.org%2Fdog.png&caption=a+dog",
    );
    assert_eq!(form.status, 200, "{:?}", form.body);
    assert_eq!(form.body["result"]["caption"], "a dog");
    let query = get(&format!(
        "{base}/bot{TOKEN}/sendphoto?chat_id=%40news&photo={}",
        largest["file_id"].as_str().unwrap()
    ));
    assert_eq!(query.status, 200, "{:?}", query.body);
    assert_eq!(query.body["result"]["chat"]["type"], "channel");
    assert_eq!(query.body["result"]["photo"], message["photo"]);

    let recorded = standin.wait_for_calls("sendPhoto", 6, Duration::from_secs(1));
    assert_eq!(recorded.len(), 6);
    assert!(recorded.iter().all(|c| c.method == "sendPhoto"));
    assert_eq!(recorded[0].params["caption"], "a cat");
    assert_eq!(recorded[4].params["photo"], "http://example.org/dog.png");
}

#[test]
fn send_photo_errors_are_worded_as_telegram_words_them() {
    let standin = standin();
    let base = standin.base_url();
    let send = |params| call(&base, "sendPhoto", params);
    let no_photo = "Bad Request: there is no photo in the request";
    let wrong_photo = "Bad Request: wrong file identifier/HTTP URL specified";

    assert_error(&send(json!({"chat_id": 42})), 400, no_photo);
    assert_error(&send(json!({"chat_id": 42, "photo": ""})), 400, no_photo);
    // Uploads come as multipart bodies, which the stand-in does not read.
    assert_error(
        &send(json!({"chat_id": 42, "photo": "attach://cat"})),
        400,
        no_photo,
    );
    for wrong in [
        "/home/me/cat.jpg",
        "ftp://example.org/cat.jpg",
        "https://",
        "a b",
    ] {
        assert_error(
            &send(json!({"chat_id": 42, "photo": wrong})),
            400,
            wrong_photo,
        );
    }
    let photo = "https://example.org/cat.jpg";
    // Captions count UTF-16 code units: each of these emoji is two.
    assert_error(
        &send(json!({"chat_id": 42, "photo": photo, "caption": "😀".repeat(513)})),
        400,
        "Bad Request: message caption is too long",
    );
    let longest = send(json!({"chat_id": 42, "photo": photo, "caption": "😀".repeat(512)}));
    assert_eq!(longest.status, 200, "{:?}", longest.body);
    assert_error(
        &send(json!({"photo": photo})),
        400,
        "Bad Request: chat_id is empty",
    );
    assert_error(
        &send(json!({"chat_id": "not a chat", "photo": photo})),
        400,
        "Bad Request: chat not found",
    );
    standin.block_chat(77);
    assert_error(
        &send(json!({"chat_id": 77, "photo": photo})),
        403,
        "Forbidden: bot was blocked by the user",
    );
    standin.missing_chat(-500);
    assert_error(
        &send(json!({"chat_id": -500, "photo": photo})),
        400,
        "Bad Request: chat not found",
    );
    let multipart = post(
        &format!("{base}/bot{TOKEN}/sendPhoto"),
        "multipart/form-data; boundary=x",
        "--x\r\nContent-Disposition: form-data; name=\"chat_id\"\r\n\r\n42\r\n--x--\r\n",
    );
    assert_eq!(multipart.status, 400, "{:?}", multipart.body);

    let statuses: Vec<_> = standin
        .calls_of("sendPhoto")
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(
        statuses,
        [
            400, 400, 400, 400, 400, 400, 400, 400, 200, 400, 400, 403, 400, 400
        ]
        .map(Some)
    );
    // The refused photos were not sent.
    let sent = send(json!({"chat_id": 42, "photo": photo}));
    assert_eq!(sent.body["result"]["message_id"], 2);
}

#[test]
fn edit_message_text_edits_what_the_standin_sent() {
    let standin = standin();
    let base = standin.base_url();
    let edit = |params| call(&base, "editMessageText", params);
    let sent = call(
        &base,
        "sendMessage",
        json!({"chat_id": 42, "text": "hello"}),
    );
    let date = sent.body["result"]["date"].as_u64().unwrap();

    let edited = edit(json!({"chat_id": 42, "message_id": 1, "text": "hello again"}));
    assert_eq!(edited.status, 200, "{:?}", edited.body);
    assert_eq!(edited.body["ok"], true);
    let message = &edited.body["result"];
    assert_eq!(message["message_id"], 1);
    assert_eq!(message["chat"], sent.body["result"]["chat"]);
    assert_eq!(message["from"]["id"], 123456);
    assert_eq!(message["text"], "hello again");
    assert_eq!(message["date"], date);
    assert!(message["edit_date"].as_u64().unwrap() >= date);

    let not_modified = "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message";
    assert_error(
        &edit(json!({"chat_id": 42, "message_id": 1, "text": "hello again"})),
        400,
        not_modified,
    );
    // The same text with a keyboard is a change; the keyboard again is not.
    let keyboard = json!({"inline_keyboard": [[{"text": "OK", "callback_data": "ok"}]]});
    let with_keyboard = json!({"chat_id": 42, "message_id": 1, "text": "hello again",
                               "reply_markup": keyboard});
    assert_eq!(edit(with_keyboard.clone()).status, 200);
    assert_error(&edit(with_keyboard), 400, not_modified);
    // Form-urlencoded: the message id as text, the keyboard as a JSON string (the same again).
    let form = post(
        &format!("{base}/bot{TOKEN}/editMessageText"),
        "application/x-www-form-urlencoded",
        &format!(
            "chat_id=42&message_id=1&text=hello+again&reply_markup={}",
            keyboard.to_string().replace('"', "%22").replace(' ', "+")
        ),
    );
    assert_error(&form, 400, not_modified);
    let form = post(
        &format!("{base}/bot{TOKEN}/editMessageText"),
        "application/x-www-form-urlencoded",
        "chat_id=42&message_id=1&text=from+a+form",
    );
    assert_eq!(form.status, 200, "{:?}", form.body);
    assert_eq!(form.body["result"]["text"], "from a form");

    let not_found = "Bad Request: message to edit not found";
    assert_error(
        &edit(json!({"chat_id": 42, "message_id": 2, "text": "x"})),
        400,
        not_found,
    );
    assert_error(
        &edit(json!({"chat_id": 43, "message_id": 1, "text": "x"})),
        400,
        not_found,
    );
    assert_error(&edit(json!({"chat_id": 42, "text": "x"})), 400, not_found);
    call(
        &base,
        "sendPhoto",
        json!({"chat_id": 42, "photo": "https://example.org/cat.jpg", "caption": "cat"}),
    );
    assert_error(
        &edit(json!({"chat_id": 42, "message_id": 2, "text": "x"})),
        400,
        "Bad Request: there is no text in the message to edit",
    );
    call(
        &base,
        "deleteMessage",
        json!({"chat_id": 42, "message_id": 1}),
    );
    assert_error(
        &edit(json!({"chat_id": 42, "message_id": 1, "text": "x"})),
        400,
        not_found,
    );

    let inline = edit(json!({"inline_message_id": "AgAAAN4pAQB", "text": "x"}));
    assert_eq!(inline.body, json!({"ok": true, "result": true}));
    assert_error(
        &edit(json!({"text": "x"})),
        400,
        "Bad Request: message identifier is not specified",
    );
    assert_error(
        &edit(json!({"message_id": 1, "text": "x"})),
        400,
        "Bad Request: chat_id is empty",
    );
    call(
        &base,
        "sendMessage",
        json!({"chat_id": 42, "text": "third"}),
    );
    assert_error(
        &edit(json!({"chat_id": 42, "message_id": 3, "text": " "})),
        400,
        "Bad Request: message text is empty",
    );
    assert_error(
        &edit(json!({"chat_id": 42, "message_id": 3})),
        400,
        "Bad Request: message text is empty",
    );
    assert_error(
        &edit(json!({"chat_id": 42, "message_id": 3, "text": "x".repeat(4097)})),
        400,
        "Bad Request: MESSAGE_TOO_LONG",
    );
    assert_eq!(
        edit(json!({"chat_id": 42, "message_id": 3, "text": "x".repeat(4096)})).status,
        200
    );
    standin.block_chat(42);
    assert_error(
        &edit(json!({"chat_id": 42, "message_id": 3, "text": "y"})),
        403,
        "Forbidden: bot was blocked by the user",
    );
    standin.missing_chat(44);
    assert_error(
        &edit(json!({"chat_id": 44, "message_id": 1, "text": "y"})),
        400,
        "Bad Request: chat not found",
    );

    let edits = standin.wait_for_calls("editMessageText", 5, Duration::from_secs(1));
    assert_eq!(edits.len(), 5);
    assert_eq!(edits[0].params["text"], "hello again");
    assert_eq!(standin.calls_of("editmessagetext").len(), 20);
}

#[test]
fn answer_callback_query_is_true_once_per_query() {
    let standin = standin();
    let base = standin.base_url();
    let answer = |params| call(&base, "answerCallbackQuery", params);
    let invalid =
        "Bad Request: query is too old and response timeout expired or query ID is invalid";

    let answered = answer(
        json!({"callback_query_id": "4382123457712345678", "text": "Done",
                                 "show_alert": true, "cache_time": 5}),
    );
    assert_eq!(answered.status, 200);
    assert_eq!(answered.body, json!({"ok": true, "result": true}));
    assert_error(
        &answer(json!({"callback_query_id": "4382123457712345678"})),
        400,
        invalid,
    );
    assert_error(&answer(json!({})), 400, invalid);
    assert_error(&answer(json!({"callback_query_id": ""})), 400, invalid);
    assert_error(
        &answer(json!({"callback_query_id": "not-an-id"})),
        400,
        invalid,
    );

    // A refused answer leaves the query to be answered.
    assert_error(
        &answer(json!({"callback_query_id": "17", "text": "x".repeat(201)})),
        400,
        "Bad Request: MESSAGE_TOO_LONG",
    );
    let longest = answer(json!({"callback_query_id": "17", "text": "x".repeat(200)}));
    assert_eq!(longest.status, 200, "{:?}", longest.body);
    let form = post(
        &format!("{base}/bot{TOKEN}/answerCallbackQuery"),
        "application/x-www-form-urlencoded",
        "callback_query_id=18&url=https%3A%2F%2Ft.me%2Fbotline_test_bot%3Fstart%3Dx",
    );
    assert_eq!(form.body, json!({"ok": true, "result": true}));
    assert_error(
        &get(&format!(
            "{base}/bot{TOKEN}/answerCallbackQuery?callback_query_id=18"
        )),
        400,
        invalid,
    );

    let answers = standin.wait_for_calls("answerCallbackQuery", 3, Duration::from_secs(1));
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0].params["text"], "Done");
    assert_eq!(answers[0].params["show_alert"], true);
    assert_eq!(standin.calls_of("answerCallbackQuery").len(), 9);
}

#[test]
fn send_chat_action_takes_telegrams_actions() {
    let standin = standin();
    let base = standin.base_url();
    let act = |params| call(&base, "sendChatAction", params);

    for action in [
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
    ] {
        let acted = act(json!({"chat_id": 42, "action": action}));
        assert_eq!(acted.body, json!({"ok": true, "result": true}), "{action}");
    }
    assert_eq!(
        act(json!({"chat_id": -100123, "action": "TYPING"})).status,
        200
    );
    let query = get(&format!(
        "{base}/bot{TOKEN}/sendChatAction?chat_id=%40news&action=upload_photo"
    ));
    assert_eq!(query.body, json!({"ok": true, "result": true}));

    let wrong = "Bad Request: wrong parameter action in request";
    assert_error(
        &act(json!({"chat_id": 42, "action": "dancing"})),
        400,
        wrong,
    );
    assert_error(&act(json!({"chat_id": 42})), 400, wrong);
    // The action is looked at before the chat.
    assert_error(&act(json!({"action": "dancing"})), 400, wrong);
    assert_error(
        &act(json!({"action": "typing"})),
        400,
        "Bad Request: chat_id is empty",
    );
    standin.block_chat(77);
    assert_error(
        &act(json!({"chat_id": 77, "action": "typing"})),
        403,
        "Forbidden: bot was blocked by the user",
    );
    standin.missing_chat(-500);
    assert_error(
        &act(json!({"chat_id": -500, "action": "typing"})),
        400,
        "Bad Request: chat not found",
    );

    let actions = standin.wait_for_calls("sendChatAction", 13, Duration::from_secs(1));
    assert_eq!(actions.len(), 13);
    assert_eq!(
        actions[0].params,
        json!({"chat_id": 42, "action": "typing"})
    );
    assert_eq!(standin.calls_of("sendChatAction").len(), 19);
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
