//! Talking to a stand-in over HTTP, as a Bot API client does.
#![allow(dead_code)] // each test file uses a part of this

use botline_standin::{Settings, StandIn};
use serde_json::Value;
use std::time::Duration;

pub const TOKEN: &str = "123456:AAH-test_secret";

/// A stand-in with the test token and otherwise default settings.
pub fn standin() -> StandIn {
    StandIn::start(settings())
}

pub fn settings() -> Settings {
    Settings {
        token: TOKEN.into(),
        ..Settings::default()
    }
}

/// An HTTP answer: status and JSON body (`Null` when the body is empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn answer(mut response: ureq::http::Response<ureq::Body>) -> Answer {
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .read_to_string()
        .expect("a readable body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    Answer { status, body }
}

/// POSTs `body` with `content_type`; `Err` when the connection failed (no answer at all).
pub fn try_post(url: &str, content_type: &str, body: &str) -> Result<Answer, ureq::Error> {
    agent()
        .post(url)
        .header("Content-Type", content_type)
        .send(body)
        .map(answer)
}

pub fn post(url: &str, content_type: &str, body: &str) -> Answer {
    try_post(url, content_type, body).unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

pub fn post_json(url: &str, body: &Value) -> Answer {
    post(url, "application/json", &body.to_string())
}

pub fn get(url: &str) -> Answer {
    agent()
        .get(url)
        .call()
        .map(answer)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub fn delete(url: &str) -> Answer {
    agent()
        .delete(url)
        .call()
        .map(answer)
        .unwrap_or_else(|e| panic!("DELETE {url}: {e}"))
}

/// Calls a Bot API method with JSON parameters, as frankenstein does.
pub fn call(base: &str, method: &str, params: Value) -> Answer {
    post_json(&format!("{base}/bot{TOKEN}/{method}"), &params)
}

/// A Telegram update from the workspace's fixtures (`tests/data`).
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/../../tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `error_code` envelope Telegram answers with, checked against the HTTP status.
#[track_caller]
pub fn assert_error(answer: &Answer, code: u16, description: &str) {
    assert_eq!(answer.status, code, "{:?}", answer.body);
    assert_eq!(answer.body["ok"], false, "{:?}", answer.body);
    assert_eq!(answer.body["error_code"], code, "{:?}", answer.body);
    assert_eq!(answer.body["description"], description, "{:?}", answer.body);
}
