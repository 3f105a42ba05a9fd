//! What fuzzing found, replayed as plain tests (`cargo test` in `fuzz/`): on botline-core's API
//! directly, and through the webhook target's own check ([`check_webhook_request`]).
//!
//! Findings in crates this directory does not own are `#[ignore]`d with the reason until their
//! fix lands; `cargo test -- --ignored` shows them failing.

use axum::http::StatusCode;
use botline_core::{Handling, InboundUpdate, QueuedUpdate};
use botline_fuzz::{WebhookRequest, check_webhook_request};
use serde_json::Value;

fn queued(body: &str) -> QueuedUpdate {
    let update = InboundUpdate::parse(body.as_bytes()).expect("the webhook accepts it");
    QueuedUpdate::new(update, "entry-1".to_owned(), 1_714_564_800_000)
}

/// A `/register` message whose token also occurs elsewhere in the body, byte for byte.
fn register_with_token(token: &'static str) -> String {
    format!(
        r#"{{"update_id":90,"message":{{"message_id":17,"date":1714564800,"chat":{{"id":7,"type":"private"}},"from":{{"id":7,"is_bot":false,"first_name":"Ann"}},"text":"/register alice {token}"}}}}"#
    )
}

/// Finding 1 (update_parser): the token of a `/register` is redacted from the raw body by
/// replacing its text everywhere in the body. A token that also occurs outside the message text
/// (digits of the `date`, a key such as `message_id`) is replaced there too: the stored body
/// (`messages.raw`, and the queue's copy) is then not JSON, or not the update any more.
#[test]
#[ignore = "botline-core bug, reported: Redactions::raw replaces the token outside the text too"]
fn a_registration_token_found_elsewhere_in_the_body_leaves_it_json() {
    let handling = Handling {
        bot_username: Some("botline_bot".to_owned()),
    };
    let mut bodies: Vec<String> = ["17145648", "message_id", "first_name"]
        .into_iter()
        .map(register_with_token)
        .collect();
    // As the fuzzer found it (minimized by hand): the token also stands in a text that is not a
    // `/register` command, so the event keeps it there while the raw body loses it.
    bodies.push(
        r#"{"update_id":91,"message":{"message_id":18,"date":1,"chat":{"id":7,"type":"private"},"text":"/register alice s3cr3t-T0ken","reply_to_message":{"message_id":17,"date":1,"chat":{"id":7,"type":"private"},"text":"my token is s3cr3t-T0ken"}}}"#.to_owned(),
    );
    let mut failures = Vec::new();
    for body in &bodies {
        let records = handling.records(&queued(body), 0).expect("records");
        let redacted = records.redacted_raw.expect("a registration is redacted");
        match serde_json::from_str::<Value>(&redacted) {
            Err(e) => failures.push(format!("not JSON ({e}): {redacted}")),
            Ok(value) if value["message"] != records.event.payload => failures.push(format!(
                "raw and event redacted differently: {redacted} / {}",
                records.event.payload
            )),
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Finding 2 (update_parser, strict mode): the webhook validates a body with serde_json's
/// `RawValue` (which skips over values without reading them), the worker reads it into a
/// `serde_json::Value`. A body `Value` cannot read — a number beyond `f64` (`1e400`), or nesting
/// deeper than 128 — is acknowledged with 200 and then fails every processing attempt
/// (`CorruptUpdate`) until it is dead-lettered.
#[test]
#[ignore = "botline-core bug, reported: InboundUpdate::parse accepts what Handling::records cannot read"]
fn an_accepted_update_can_always_become_records() {
    let deep = format!(
        r#"{{"update_id":3,"message":{{"chat":{{"id":1}},"x":{}{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let mut failures = Vec::new();
    for body in [
        r#"{"update_id":1,"message":{"message_id":1,"date":1,"chat":{"id":1},"text":"x","n":1e400}}"#.to_owned(),
        r#"{"update_id":2,"edited_message":{"chat":{"id":1},"n":-1e309}}"#.to_owned(),
        // As `BOTLINE_FUZZ_STRICT=records scripts/fuzz.sh update_parser` found it in 2 s,
        // minimized by `cargo fuzz tmin` to 24 bytes.
        r#"{"update_id":7,"":2e457}"#.to_owned(),
        deep,
    ] {
        if Handling::default().records(&queued(&body), 0).is_err() {
            failures.push(format!("accepted, but cannot become records: {body:.120}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same bodies through the whole webhook: acknowledged (200), as the router's contract says
/// for what the parser accepts. This holds today, and must still hold, or turn into a 400, with
/// the fix of finding 2.
#[test]
fn bodies_value_cannot_read_are_answered_consistently_by_the_webhook() {
    for body in [
        r#"{"update_id":41,"message":{"chat":{"id":1},"n":1e400}}"#.to_owned(),
        format!(
            r#"{{"update_id":42,"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
    ] {
        let mut request = WebhookRequest::seed_prefix().to_vec();
        request.extend_from_slice(body.as_bytes());
        let request = <WebhookRequest as arbitrary::Arbitrary>::arbitrary_take_rest(
            arbitrary::Unstructured::new(&request),
        )
        .unwrap();
        let status = check_webhook_request(&request).expect("a valid request");
        let parses = InboundUpdate::parse(body.as_bytes()).is_ok();
        assert_eq!(
            status,
            if parses {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            }
        );
    }
}
