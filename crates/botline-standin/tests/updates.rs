//! getUpdates: offsets, limits, long polling and its conflicts.

mod common;

use common::{assert_error, call, fixture, standin};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn ids(answer: &common::Answer) -> Vec<i64> {
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["update_id"].as_i64().unwrap())
        .collect()
}

fn fixtures() -> Vec<Value> {
    // Pushed out of order: the stand-in queues them by update_id.
    [
        "message-group-text.json",
        "message-private-text.json",
        "edited-message.json",
        "message-private-command-start.json",
    ]
    .map(fixture)
    .to_vec()
}

#[test]
fn offsets_confirm_updates_and_limits_cut_the_answer() {
    let standin = standin();
    let base = standin.base_url();
    let poll = |params| call(&base, "getUpdates", params);
    standin.push_updates(fixtures());

    let all = poll(json!({}));
    assert_eq!(ids(&all), [700000001, 700000002, 700000004, 700000023]);
    // Updates come back byte for byte as pushed.
    assert_eq!(all.body["result"][0], fixture("message-private-text.json"));
    assert_eq!(ids(&poll(json!({"limit": 2}))), [700000001, 700000002]);
    // Unconfirmed updates are answered again.
    assert_eq!(ids(&poll(json!({"limit": 1}))), [700000001]);

    // An offset confirms (forgets) every update below it.
    assert_eq!(
        ids(&poll(json!({"offset": 700000002}))),
        [700000002, 700000004, 700000023]
    );
    assert_eq!(standin.webhook().pending_update_count, 3);
    assert_eq!(
        ids(&poll(json!({"offset": "700000004", "limit": "1"}))),
        [700000004]
    );
    // A negative offset keeps only the last ones.
    assert_eq!(ids(&poll(json!({"offset": -1}))), [700000023]);
    assert_eq!(ids(&poll(json!({"offset": 700000024}))), Vec::<i64>::new());
    assert_eq!(standin.webhook().pending_update_count, 0);
}

#[test]
fn a_long_poll_wakes_when_updates_arrive() {
    let standin = standin();
    let base = standin.base_url();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            standin.push_updates(vec![fixture("callback-query.json")]);
        });
        let started = Instant::now();
        let answer = call(&base, "getUpdates", json!({"timeout": 20}));
        let waited = started.elapsed();
        assert_eq!(ids(&answer), [700000024]);
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    });
}

#[test]
fn a_long_poll_ends_empty_at_its_timeout() {
    let standin = standin();
    standin.push_updates(vec![fixture("message-private-text.json")]);
    let started = Instant::now();
    // Below the offset does not count: the poll waits, then answers [].
    let answer = call(
        &standin.base_url(),
        "getUpdates",
        json!({"offset": 700000002, "timeout": 1}),
    );
    assert_eq!(ids(&answer), Vec::<i64>::new());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

#[test]
fn get_updates_is_a_conflict_while_a_webhook_is_set() {
    let standin = standin();
    let base = standin.base_url();
    let set = call(
        &base,
        "setWebhook",
        json!({"url": "https://example.org/hook"}),
    );
    assert_eq!(set.status, 200);
    assert_error(
        &call(&base, "getUpdates", json!({})),
        409,
        "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
    );
    call(&base, "deleteWebhook", json!({}));
    assert_eq!(call(&base, "getUpdates", json!({})).status, 200);
}

#[test]
fn a_waiting_poll_is_ended_by_a_newer_poll_or_a_webhook() {
    let standin = standin();
    let base = standin.base_url();
    std::thread::scope(|scope| {
        let older = scope.spawn(|| call(&base, "getUpdates", json!({"timeout": 20})));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(call(&base, "getUpdates", json!({})).status, 200);
        assert_error(
            &older.join().unwrap(),
            409,
            "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
        );

        let waiting = scope.spawn(|| call(&base, "getUpdates", json!({"timeout": 20})));
        std::thread::sleep(Duration::from_millis(300));
        call(
            &base,
            "setWebhook",
            json!({"url": "https://example.org/hook"}),
        );
        assert_error(
            &waiting.join().unwrap(),
            409,
            "Conflict: terminated by setWebhook request",
        );
    });
}

#[test]
#[should_panic(expected = "update 1 has no integer update_id")]
fn updates_need_an_update_id() {
    standin().push_updates(vec![json!({"update_id": 1}), json!({"message": {}})]);
}
