//! What fuzzing found, replayed as plain tests (`cargo test` in `fuzz/`) through the webhook
//! target's own check ([`check_webhook_request`]). The findings in botline-core's own API are
//! tests of that crate (`crates/botline-core/tests/fuzz_findings.rs`), so that CI runs them.

use axum::http::StatusCode;
use botline_core::InboundUpdate;
use botline_fuzz::{WebhookRequest, check_webhook_request};

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
