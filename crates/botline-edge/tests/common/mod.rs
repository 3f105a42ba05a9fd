//! Shared by the integration tests: a real server on 127.0.0.1, a real client, and initData
//! signed the way Telegram documents it, computed here independently of the crate.

#![allow(dead_code)]

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use std::net::SocketAddr;

/// Serves `app` on 127.0.0.1:0 with the socket peer as `ConnectInfo`, as `botline serve` does.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// POSTs `body` to `path` with `headers`.
pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let headers: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(name, value)| (*name, value.as_bytes()))
        .collect();
    post_bytes(addr, path, &headers, body).await
}

/// POSTs `body` to `path` with `headers` whose values are sent as the bytes given, obs-text
/// (0x80 to 0xFF) included; each pair is a header line of its own, in order.
pub async fn post_bytes(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &str,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, HeaderValue::from_bytes(value).unwrap());
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The data-check-string: `name=value` for every field, sorted by name, joined with `\n`.
pub fn data_check_string(fields: &[(&str, &str)]) -> String {
    let mut sorted: Vec<_> = fields.to_vec();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `hex(HMAC-SHA256(HMAC-SHA256("WebAppData", token), data_check_string))`.
pub fn telegram_hash(data_check_string: &str, bot_token: &str) -> String {
    let mut secret = Hmac::<Sha256>::new_from_slice(b"WebAppData").unwrap();
    secret.update(bot_token.as_bytes());
    let secret = secret.finalize().into_bytes();
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).unwrap();
    mac.update(data_check_string.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// initData as Telegram would send it: the fields URL-encoded, then `hash`.
pub fn signed_init_data(fields: &[(&str, &str)], bot_token: &str) -> String {
    let hash = telegram_hash(&data_check_string(fields), bot_token);
    let mut parts: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{name}={}", encode(value)))
        .collect();
    parts.push(format!("hash={hash}"));
    parts.join("&")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
