//! What fuzzing found, replayed as plain tests (`cargo test` in `fuzz/`, which
//! `scripts/test.sh` runs) through the targets' own checks ([`check_update_parser`],
//! [`check_webhook_request`]). The findings in botline-core's own API are also tests of that
//! crate (`crates/botline-core/tests/fuzz_findings.rs`).

use axum::http::StatusCode;
use botline_core::InboundUpdate;
use botline_fuzz::{WebhookRequest, check_update_parser, check_webhook_request};

/// Bodies `serde_json::Value` cannot read (finding 2 of botline-core's update parser) through the
/// whole webhook: refused with 400 since the fix, as the router's contract says for what the
/// parser refuses.
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
        assert!(InboundUpdate::parse(body.as_bytes()).is_err());
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}

/// Two inputs of `scripts/fuzz.sh update_parser 600` on 2026-12-04, as found, through the
/// parser target's own check:
/// - finding 3 of botline-core's parser: a key in serde_json's private namespace
///   (`$serde_json::private::RawValue`) made the body unreadable once a `/register` token was
///   redacted and the body written anew with sorted keys; it is now refused with 400
///   (`crates/botline-core/tests/fuzz_findings.rs`);
/// - a false alarm of the target: the token's text also stood inside a key
///   (`"offses4cr3t-T0kent"`), which redaction leaves alone by design (keys are Telegram's
///   names), and the check of the records did not allow for that as the check of the body did
///   (then again for a key holding a byte that the records' Debug shows escaped, and, in a
///   third run, for a key holding the token inside another such key).
#[test]
fn update_parser_inputs_of_2026_12_04_pass_its_check() {
    let reserved_key = r##"{
  "update_id": 700000003,
  "me essage": {
    "message_id": 57,
    "from": {
      "id": 123456789,
      "is_bot": false,
      "first_name": "Alicp",
      "$serde_json::private::RawValue": true
    },
    "date": 1732200040,
    "text": "/register@botline_bot alice$s2cr3t-T0ken",
    "entities": [
      {
        "offset": 0,
        "length": 21,
        "type": "bot_command"
      }
    ]
  }
}
"##;
    let token_in_a_key = r##"{
  "update_id": 700000003,
  "message": {
    "message_id":-57,
    "from": {
      "id": 123456789,
      "is_bot": false,
      "first_name": "Alice",
      "llanguage_ast_name": "Novak",
      "username": "alice_nv",
      "language_;ode": "en"
    }, "chat": {
      "id": -4012345678,
      "title": "Botline Testers",
      "type": "group",
      "all_members_are_administratDataaaaaigh222222222222222222222222222222222244444444eig`te_id\"#$70000 10\\\\\\\\ors": true
    },
  " ad te": 1732200040,
    "text": "/register@botline_bot alice s4cr3t-T0ken",
    "entities": [
      {
        "offses4cr3t-T0kent": 0,
        "length": 21,
        "type": "bot_command"
      }
    ]
  }
}
"##;
    // The same, in a key with a byte that Debug escapes (0x7f, written <DEL> here).
    let token_in_an_escaped_key = &r##"{
  "update_id": 700000003,
  "message": {
    "message_id": 57,
    "from": {
      "id": 123456789,
      "is_bot": false,
      "first_name": "Alice",
      "llanguage_ase": "Novak",
      "us/rname": "alice_nv",
      "language_;ode": "en"
    }, "chat": {
      "id": -4012345678,
      "title": "Botline Ters",
      "type": "gs4cr3t-T0kenroup",
      "all_members_anguage_asetrat<DEL>rs": true
    },
  " ad ?te": 1732200040,
    "text": "/register@botline_bot alces anguage_ase",
    "entities": [
      {
        "offset":																																					 0,
     "type": "bot_commanis_botd"
      }
    ]
  }
}
"##
    .replace("<DEL>", "\u{7f}");
    // Minimized by hand from a later run's input: one key holding the token inside another
    // such key, so that taking the shorter out of the longer joined the rest into the token.
    let token_in_a_key_in_a_key = r#"{"update_id":700000004,"message":{"message_id":58,
"chat":{"id":42,"type":"private","As4cr3t-T0ken":1,"s4cr3As4cr3t-T0kent-T0ken":2},
"date":1732200041,"text":"/register alice s4cr3t-T0ken"}}"#;
    assert!(InboundUpdate::parse(reserved_key.as_bytes()).is_err());
    assert!(InboundUpdate::parse(token_in_a_key.as_bytes()).is_ok());
    assert!(InboundUpdate::parse(token_in_an_escaped_key.as_bytes()).is_ok());
    assert!(InboundUpdate::parse(token_in_a_key_in_a_key.as_bytes()).is_ok());
    for body in [
        reserved_key,
        token_in_a_key,
        token_in_an_escaped_key,
        token_in_a_key_in_a_key,
    ] {
        check_update_parser(body.as_bytes());
    }
    let mut request = WebhookRequest::seed_prefix().to_vec();
    request.extend_from_slice(reserved_key.as_bytes());
    let request = <WebhookRequest as arbitrary::Arbitrary>::arbitrary_take_rest(
        arbitrary::Unstructured::new(&request),
    )
    .unwrap();
    assert_eq!(
        check_webhook_request(&request).expect("a valid request"),
        StatusCode::BAD_REQUEST
    );
}
