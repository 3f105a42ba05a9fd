//! What fuzzing (`fuzz/`, `scripts/fuzz.sh`) found in botline-core, replayed as plain tests so
//! that CI runs them.

use botline_core::commands::{RegisterDecision, decide_register, register_args};
use botline_core::{Handling, InboundUpdate, InvalidUpdate, QueuedUpdate};
use serde_json::Value;

fn queued(body: &str) -> QueuedUpdate {
    let update = InboundUpdate::parse(body.as_bytes()).expect("the webhook accepts it");
    QueuedUpdate::new(update, "entry-1".to_owned(), 1_714_564_800_000)
}

/// A `/register` message whose token also occurs elsewhere in the body, byte for byte.
fn register_with_token(token: &str) -> String {
    format!(
        r#"{{"update_id":90,"message":{{"message_id":17,"date":1714564800,"chat":{{"id":7,"type":"private"}},"from":{{"id":7,"is_bot":false,"first_name":"Ann"}},"text":"/register alice {token}"}}}}"#
    )
}

/// Finding 1 (update_parser): the token of a `/register` was redacted from the raw body by
/// replacing its text everywhere in the body. A token that also occurs outside the message text
/// (digits of the `date`, a key such as `message_id`) was replaced there too, and the stored body
/// stopped being JSON or being the update; a token in a quoted text that is not a command was
/// redacted in the raw body but not in the event.
#[test]
fn a_registration_token_found_elsewhere_in_the_body_leaves_it_json_and_secret() {
    let handling = Handling {
        bot_username: Some("botline_bot".to_owned()),
    };
    let mut bodies: Vec<(String, &str)> = ["17145648", "1714564800", "message_id", "first_name"]
        .into_iter()
        .map(|token| (register_with_token(token), token))
        .collect();
    // As the fuzzer found it (minimized by hand): the token also stands in a text that is not a
    // `/register` command.
    bodies.push((
        r#"{"update_id":91,"message":{"message_id":18,"date":1,"chat":{"id":7,"type":"private"},"text":"/register alice s3cr3t-T0ken","reply_to_message":{"message_id":17,"date":1,"chat":{"id":7,"type":"private"},"text":"my token is s3cr3t-T0ken"}}}"#.to_owned(),
        "s3cr3t-T0ken",
    ));
    for (body, token) in &bodies {
        let original: Value = serde_json::from_str(body).unwrap();
        let records = handling.records(&queued(body), 0).expect("records");
        let redacted = records
            .redacted_raw
            .clone()
            .expect("a registration is redacted");
        let value: Value = serde_json::from_str(&redacted)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {redacted}"));
        assert_eq!(value["message"], records.event.payload, "{redacted}");
        assert_eq!(value["update_id"], original["update_id"], "{redacted}");
        assert_eq!(
            value["message"]["date"], original["message"]["date"],
            "{redacted}"
        );
        assert_eq!(
            value["message"]["message_id"],
            original["message"]["message_id"]
        );
        assert_eq!(
            value["message"]["from"], original["message"]["from"],
            "{redacted}"
        );
        assert_eq!(value["message"]["text"], "/register alice [redacted]");
        let mut strings = Vec::new();
        collect_strings(&value, &mut strings);
        assert!(
            strings.iter().all(|s| !s.contains(token)),
            "{token:?} left in a string: {redacted}"
        );
        let message = records.message.as_ref().expect("the message is stored");
        assert_eq!(message.raw, redacted);
    }
}

fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|item| collect_strings(item, out)),
        Value::Object(fields) => fields
            .values()
            .for_each(|field| collect_strings(field, out)),
        _ => {}
    }
}

/// Finding 2 (update_parser, strict mode): the webhook validated a body by skimming it with
/// serde_json's `RawValue`, and the worker reads it into a `serde_json::Value`. A body `Value`
/// cannot read (a number beyond `f64`, nesting deeper than 128) was acknowledged with 200 and then
/// failed every processing attempt until it was dead-lettered. Now it is refused with 400, and
/// whatever the webhook accepts becomes records.
#[test]
fn an_accepted_update_can_always_become_records() {
    let deep = format!(
        r#"{{"update_id":3,"message":{{"chat":{{"id":1}},"x":{}{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    for body in [
        r#"{"update_id":1,"message":{"message_id":1,"date":1,"chat":{"id":1},"text":"x","n":1e400}}"#.to_owned(),
        r#"{"update_id":2,"edited_message":{"chat":{"id":1},"n":-1e309}}"#.to_owned(),
        // As `BOTLINE_FUZZ_STRICT=records scripts/fuzz.sh update_parser` found it in 2 s,
        // minimized by `cargo fuzz tmin` to 24 bytes.
        r#"{"update_id":7,"":2e457}"#.to_owned(),
        deep,
    ] {
        assert_eq!(
            InboundUpdate::parse(body.as_bytes()),
            Err(InvalidUpdate::Unreadable),
            "{body:.120}"
        );
    }
    let shallow = format!(
        r#"{{"update_id":4,"message":{{"chat":{{"id":1}},"x":{}{}}}}}"#,
        "[".repeat(120),
        "]".repeat(120)
    );
    for body in [
        r#"{"update_id":5,"message":{"message_id":1,"date":1,"chat":{"id":1},"n":1e300}}"#
            .to_owned(),
        shallow,
    ] {
        assert!(
            Handling::default().records(&queued(&body), 0).is_ok(),
            "accepted, but cannot become records: {body:.120}"
        );
    }
}

/// Finding 3 (update_parser, 2026-12-04, on the fixes of findings 1 and 2): serde_json reads an
/// object whose *first* key is `$serde_json::private::RawValue` as one of its own raw-value
/// markers. In the body below that key comes last in `from`, so the body reads; but redacting
/// the `/register` token writes the body anew from a `Value`, whose keys are sorted, `$` first,
/// and the stored body could no longer be read back. Keys in that namespace are refused with
/// 400 wherever they stand, escaped or not.
#[test]
fn a_key_reserved_by_the_json_reader_is_refused_wherever_it_stands() {
    let found = r#"{"update_id":700000003,"me essage":{"message_id":57,"from":{"id":123456789,"is_bot":false,"first_name":"Alicp","$serde_json::private::RawValue":true},"date":1732200040,"text":"/register@botline_bot alice$s2cr3t-T0ken","entities":[{"offset":0,"length":21,"type":"bot_command"}]}}"#;
    for body in [
        found,
        r#"{"update_id":1,"message":{"chat":{"id":1},"from":{"$serde_json::private::RawValue":"1","id":2},"text":"/register a b"}}"#,
        r#"{"update_id":2,"$serde_json::private::RawValue":{}}"#,
        r#"{"update_id":3,"message":{"chat":{"id":1},"x":[{"\u0024serde_json::private::RawValue":1}]}}"#,
        r#"{"update_id":4,"message":{"chat":{"id":1},"$serde_json::private::Number":"1"}}"#,
    ] {
        let refused = InboundUpdate::parse(body.as_bytes());
        assert_eq!(refused, Err(InvalidUpdate::ReservedKey), "{body:.120}");
        let text = refused.unwrap_err().to_string();
        assert!(text.len() < 100 && !text.contains("s2cr3t"), "{text}");
    }

    // Keys that only look like it are the sender's own, and survive redaction readable.
    let handling = Handling {
        bot_username: Some("botline_bot".to_owned()),
    };
    for key in [
        "serde_json::private::RawValue",
        "$serde_json",
        "$serde_json::privat",
    ] {
        let body = format!(
            r#"{{"update_id":5,"message":{{"message_id":1,"date":1,"chat":{{"id":7,"type":"private"}},"from":{{"id":7,"is_bot":false,"first_name":"Ann","{key}":true}},"text":"/register alice s3cr3t-T0ken"}}}}"#
        );
        let records = handling.records(&queued(&body), 0).expect("records");
        let redacted = records.redacted_raw.expect("the token is redacted");
        let value: Value = serde_json::from_str(&redacted)
            .unwrap_or_else(|e| panic!("the redacted body reads back ({e}): {redacted}"));
        assert_eq!(value["message"]["from"][key], Value::Bool(true));
        assert!(!redacted.contains("s3cr3t-T0ken"), "{redacted}");
    }
}

/// Finding 4 (update_parser, 2026-12-04): a `/register` whose username contains its token
/// (`alicelas3cr3tUT0kennguage_c s3cr3tUT0ken`). The token was redacted from the texts, but the
/// registration attempt kept the username, token and all, for the store and for the reply
/// ("Registration successful! Welcome <username>"). Such a registration is now malformed: the
/// whole argument text is redacted and the answer is the format reply. The same holds for a
/// username holding a token typed elsewhere in the update (a quoted `/register`): the built-in
/// `/register` decides from the arguments as typed and as stored ([`decide_register`]).
#[test]
fn a_username_holding_a_token_is_not_a_registration() {
    let handling = Handling {
        bot_username: Some("botline_bot".to_owned()),
    };
    let found = r#"{"update_id":70003,"message":{"message_id":57,"from":{"guage_code":"en"},"chat":{"id":-803464400080,"text":"/register@bot!lin=_bot alice ss3cr3tAT0ken#3cr3tUT0ken","all_members_are_admini(strators":true},"date":1732200040,"text":"/register@botline_bot alicelas3cr3tUT0kennguage_c s3cr3tUT0ken","entities":[{"offype":"bot_comusmand"}]}}"#;
    let quoted = r#"{"update_id":70004,"message":{"message_id":58,"date":1,"chat":{"id":7,"type":"private"},"from":{"id":7,"is_bot":false,"first_name":"Ann"},"text":"/register ann_0ther-T0ken_x own-T0ken-1","reply_to_message":{"message_id":50,"date":1,"chat":{"id":7,"type":"private"},"text":"/register bob 0ther-T0ken"}}}"#;
    let plain = register_with_token("s3cr3t-T0ken");
    for (body, tokens, registers) in [
        (found, &["s3cr3tUT0ken"][..], false),
        (quoted, &["0ther-T0ken", "own-T0ken-1"][..], false),
        (plain.as_str(), &["s3cr3t-T0ken"][..], true),
    ] {
        let records = handling.records(&queued(body), 0).expect("records");
        let shown = format!("{records:?}");
        for token in tokens {
            assert!(!shown.contains(token), "{token} in {shown}");
        }
        let args = |body: &str| {
            let value: Value = serde_json::from_str(body).unwrap();
            let text = value["message"]["text"].as_str().unwrap().to_owned();
            register_args(&text, Some("botline_bot"))
                .unwrap()
                .to_owned()
        };
        let stored = records.redacted_raw.as_deref().expect("redacted");
        let decision = decide_register(&args(body), &args(stored));
        match decision {
            RegisterDecision::Attempt(registration) => {
                assert!(registers, "{body}");
                assert_eq!(registration.username, "alice");
            }
            other => assert!(!registers && other == RegisterDecision::Malformed, "{body}"),
        }
    }
}
