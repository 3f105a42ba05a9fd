//! An arbitrary webhook request (method, path, secret header, content type, content length,
//! chunking, body) → `botline::http::router` on a real SQLite store, through tower's `oneshot`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|request: botline_fuzz::WebhookRequest| {
    botline_fuzz::check_webhook_request(&request);
});
