//! What Botline's fuzz targets check, shared by the targets (`fuzz_targets/`) and by the
//! regression tests (`tests/`), so a crash found by `cargo fuzz` replays as a plain `cargo test`.
//!
//! - [`check_update_parser`]: arbitrary bytes through [`InboundUpdate::parse`] and, for what
//!   parses, [`Handling::records`]. Never a panic; what parses is kept byte for byte; records are
//!   consistent with the update; a redacted body is still JSON, with the same value as the
//!   records that were built from it, and holds no token of the registration that the built-in
//!   `/register` would redeem (decided as it decides: [`decide_register`]).
//! - [`check_webhook_request`]: a [`WebhookRequest`] (method, path, secret header, content type,
//!   content length, chunking, body) through `botline::http::router` on a real SQLite store,
//!   driven with tower's `oneshot`. The status must be the one an oracle derives from the
//!   router's documented rules (405/404, 401, 413, 400, 200 or 503); a 200 for a body that the
//!   parser rejects, or a 500 (a handler panic caught by the router), is a bug.

use arbitrary::{Arbitrary, Unstructured};
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use botline::http::{App, SECRET_HEADER, router};
use botline::secret::WebhookSecret;
use botline_core::commands::{RegisterDecision, Registration, decide_register, register_args};
use botline_core::{Backend, Handling, InboundUpdate, QueueConfig, QueuedUpdate};
use botline_sqlite::SqliteBackend;
use http_body_util::BodyExt;
use serde_json::Value;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tower::ServiceExt;

/// The webhook secret of the router that has one. Fake, and only ever used in process.
pub const SECRET: &str = "fuzz-secret_NOT-a-real-token-0123";
/// The body limit of both routers: small, so the fuzzer reaches it.
pub const MAX_BODY_BYTES: usize = 4096;
/// The bot username [`check_update_parser`] handles commands for (besides none).
pub const BOT_USERNAME: &str = "botline_bot";
/// `received_at_ms` / `now_ms` of the records built by [`check_update_parser`].
const NOW_MS: i64 = 1_714_564_800_000;

/// Feeds `data` to the update parser, and what parses to the record builder, asserting what
/// must hold. Panics on a violation (which is what the fuzzer reports).
pub fn check_update_parser(data: &[u8]) {
    let parsed = InboundUpdate::parse(data);
    assert_eq!(
        parsed,
        InboundUpdate::parse(data),
        "parsing is deterministic"
    );
    let update = match parsed {
        Ok(update) => update,
        Err(invalid) => {
            // The message goes back to the client: short, and never the body.
            assert!(invalid.to_string().len() < 100);
            return;
        }
    };
    assert_eq!(
        update.raw.as_bytes(),
        data,
        "the body is kept byte for byte"
    );
    assert!(update.id.0 >= 0);
    let queued = QueuedUpdate::new(update.clone(), "fuzz-entry".to_owned(), NOW_MS);
    for handling in [
        Handling::default(),
        Handling {
            bot_username: Some(BOT_USERNAME.to_owned()),
        },
    ] {
        let records = match handling.records(&queued, NOW_MS) {
            Ok(records) => records,
            Err(corrupt) => panic!(
                "accepted update {} cannot become records: {corrupt}",
                update.id.0
            ),
        };
        assert_eq!(records.update_id, update.id);
        assert_eq!(records.event.event_type, update.kind.as_str());
        assert_eq!(records.event.event_id, queued.entry_id);
        let raw = records.redacted_raw.as_deref().unwrap_or(&update.raw);
        let attempt = register_attempt(&update, raw, handling.bot_username.as_deref());
        if let Some(message) = &records.message {
            assert_eq!(update.kind.as_str(), "message");
            assert_eq!(message.raw, raw, "a message keeps the (redacted) body");
        }
        if let Some(redacted) = &records.redacted_raw {
            let value: Value = serde_json::from_str(redacted)
                .unwrap_or_else(|e| panic!("the redacted body is not JSON ({e}): {redacted}"));
            let payload = value.get(update.kind.as_str()).unwrap_or(&Value::Null);
            assert!(
                same_json(payload, &records.event.payload),
                "the redacted body and the event were redacted alike:\n{payload}\n{}",
                records.event.payload
            );
            if let Some(attempt) = &attempt {
                let token = attempt.token.as_str();
                assert!(
                    !any_string_contains(&value, token),
                    "the token is gone from every string of the body (its text may still be \
                     digits of a number or part of a key): {redacted}"
                );
                // As in the body: a key of the update may hold the token's text (Telegram's
                // keys are its schema's names, not what a user typed), nothing else may.
                let original: Value = serde_json::from_str(&update.raw).expect("parsed before");
                // The username is stored and echoed in the answer.
                let mut shown = format!("{records:?} {}", attempt.username);
                // Longest first, and a `"` (never part of a token) where each stood: taking a
                // shorter key out of a longer one, or out of its neighbours, must not join the
                // text around it into the token's.
                let mut keys = keys_containing(&original, token);
                keys.sort_by_key(|key| std::cmp::Reverse(key.len()));
                for key in keys {
                    // As the records' Debug shows it: as is, Debug-escaped (a key in a
                    // `Value`), and the Debug of its JSON form (a key in a stored body).
                    let json = serde_json::to_string(&key).expect("a string");
                    for form in [
                        key.clone(),
                        debug_inner(&key),
                        debug_inner(&json[1..json.len() - 1]),
                    ] {
                        shown = shown.replace(&form, "\"");
                    }
                }
                assert!(
                    !shown.contains(token),
                    "and from the records, but for keys: {shown}"
                );
            }
        } else {
            assert!(attempt.is_none(), "a registration is redacted");
        }
        for call in &records.outbox {
            assert!(call.outbox_id.starts_with("fuzz-entry:"));
        }
    }
}

/// The `/register` attempt Botline's built-in handler would redeem, decided as it decides it:
/// from the command's arguments as typed (in `update`) and as stored (in `stored`, the body
/// with the secrets typed in it redacted).
fn register_attempt(
    update: &InboundUpdate,
    stored: &str,
    bot_username: Option<&str>,
) -> Option<Registration> {
    if update.kind.as_str() != "message" {
        return None;
    }
    let args = |body: &str| -> Option<String> {
        let value: Value = serde_json::from_str(body).ok()?;
        let text = value.get("message")?.get("text")?.as_str()?;
        register_args(text, bot_username).map(str::to_owned)
    };
    let (typed, stored) = (args(&update.raw)?, args(stored)?);
    match decide_register(&typed, &stored) {
        RegisterDecision::Attempt(registration) => Some(registration),
        RegisterDecision::TokenGone | RegisterDecision::Malformed => None,
    }
}

/// `text` as `{:?}` shows it, without the quotes around it.
fn debug_inner(text: &str) -> String {
    let shown = format!("{text:?}");
    shown[1..shown.len() - 1].to_owned()
}

/// The keys anywhere in `value` that contain `needle`.
fn keys_containing(value: &Value, needle: &str) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .flat_map(|item| keys_containing(item, needle))
            .collect(),
        Value::Object(fields) => fields
            .iter()
            .flat_map(|(key, field)| {
                let own = key.contains(needle).then(|| key.clone());
                own.into_iter().chain(keys_containing(field, needle))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a string anywhere in `value` (not a key) contains `needle`.
fn any_string_contains(value: &Value, needle: &str) -> bool {
    match value {
        Value::String(text) => text.contains(needle),
        Value::Array(items) => items.iter().any(|item| any_string_contains(item, needle)),
        Value::Object(fields) => fields
            .values()
            .any(|field| any_string_contains(field, needle)),
        _ => false,
    }
}

/// Equal JSON values, but numbers that only an `f64` holds (beyond 64-bit integers) may differ
/// in their last bit: a redaction that rewrites the body from a `serde_json::Value` writes them
/// back in shortest form, and serde_json (without `float_roundtrip`) may read that form one ulp
/// off.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || ((x - y) / x.abs().max(y.abs())).abs() < 1e-12,
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, x)| y.get(key).is_some_and(|y| same_json(x, y)))
        }
        _ => a == b,
    }
}

/// One request to the webhook router, as the fuzzer draws it: six one-byte selectors, then the
/// body, which is the rest of the input (so a seed is [`WebhookRequest::seed_prefix`] followed by
/// a fixture body byte for byte; see `tests/seeds.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    /// `% 8`: POST (0–4), GET, PUT, HEAD.
    pub method: u8,
    /// `% 8`: `/telegram/webhook` (0–4), with a query, with a trailing slash, `/health`.
    pub path: u8,
    /// `% 8`: which router (without or with a secret) and which secret header; see
    /// [`SecretCase`].
    pub secret: u8,
    /// `% 4`: `application/json`, none, `text/plain`, `application/json; charset=utf-8`.
    pub content_type: u8,
    /// `% 8`: see [`WebhookRequest::content_length_header`].
    pub content_length: u8,
    /// 0: the body in one piece (with its exact size known); n: a stream of n-byte chunks with
    /// no size known, as a chunked request arrives.
    pub chunking: u8,
    pub body: Vec<u8>,
}

/// Which router a request goes to, and what it sends as `X-Telegram-Bot-Api-Secret-Token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretCase {
    /// The router without a secret; no header.
    NoSecretNoHeader,
    /// The router without a secret; a header it must ignore.
    NoSecretWithHeader(Vec<u8>),
    /// The router with [`SECRET`]; this header, or none.
    WithSecret(Option<Vec<u8>>),
}

impl<'a> Arbitrary<'a> for WebhookRequest {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut request = Self::selectors(u)?;
        request.body = <&[u8]>::arbitrary(u)?.to_vec();
        Ok(request)
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut request = Self::selectors(&mut u)?;
        request.body = u.take_rest().to_vec();
        Ok(request)
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (Self::PREFIX_LEN, None)
    }
}

impl WebhookRequest {
    fn selectors(u: &mut Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(Self {
            method: u.arbitrary()?,
            path: u.arbitrary()?,
            secret: u.arbitrary()?,
            content_type: u.arbitrary()?,
            content_length: u.arbitrary()?,
            chunking: u.arbitrary()?,
            body: Vec::new(),
        })
    }

    /// The number of selector bytes before the body.
    pub const PREFIX_LEN: usize = 6;

    /// The bytes that decode into `POST /telegram/webhook` with the right secret (on the router
    /// that has one), `application/json`, no Content-Length header, the body in one piece.
    pub fn seed_prefix() -> [u8; Self::PREFIX_LEN] {
        [0, 0, 2, 0, 0, 0]
    }

    pub fn method(&self) -> Method {
        match self.method % 8 {
            0..=4 => Method::POST,
            5 => Method::GET,
            6 => Method::PUT,
            _ => Method::HEAD,
        }
    }

    pub fn path(&self) -> &'static str {
        match self.path % 8 {
            0..=4 => "/telegram/webhook",
            5 => "/telegram/webhook?x=1",
            6 => "/telegram/webhook/",
            _ => "/health",
        }
    }

    pub fn secret_case(&self) -> SecretCase {
        let mut wrong = SECRET.as_bytes().to_vec();
        if let Some(last) = wrong.last_mut() {
            *last ^= 1;
        }
        match self.secret % 8 {
            0 => SecretCase::NoSecretNoHeader,
            1 => SecretCase::NoSecretWithHeader(b"anything".to_vec()),
            2..=4 => SecretCase::WithSecret(Some(SECRET.as_bytes().to_vec())),
            5 => SecretCase::WithSecret(None),
            6 => SecretCase::WithSecret(Some(wrong)),
            // Arbitrary bytes: the first `chunking` bytes of the body.
            _ => SecretCase::WithSecret(Some(
                self.body[..usize::from(self.chunking).min(self.body.len())].to_vec(),
            )),
        }
    }

    pub fn content_type(&self) -> Option<&'static str> {
        match self.content_type % 4 {
            0 => Some("application/json"),
            1 => None,
            2 => Some("text/plain"),
            _ => Some("application/json; charset=utf-8"),
        }
    }

    /// `% 8`: none (0–2), the body's length, `0`, one over the limit, the body's length + 1000,
    /// not a number.
    pub fn content_length_header(&self) -> Option<String> {
        match self.content_length % 8 {
            0..=2 => None,
            3 => Some(self.body.len().to_string()),
            4 => Some("0".to_owned()),
            5 => Some((MAX_BODY_BYTES + 1).to_string()),
            6 => Some((self.body.len() + 1000).to_string()),
            _ => Some("12abc".to_owned()),
        }
    }

    /// The statuses the router may answer, derived from its documented rules alone.
    pub fn expected_statuses(&self) -> &'static [StatusCode] {
        const HEALTH: &[StatusCode] = &[StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE];
        const ACCEPTED: &[StatusCode] = &[StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE];
        let method = self.method();
        match self.path() {
            "/telegram/webhook/" => &[StatusCode::NOT_FOUND],
            "/health" if method == Method::GET || method == Method::HEAD => HEALTH,
            "/health" => &[StatusCode::METHOD_NOT_ALLOWED],
            _ if method != Method::POST => &[StatusCode::METHOD_NOT_ALLOWED],
            _ => {
                if let SecretCase::WithSecret(given) = self.secret_case()
                    && given.as_deref() != Some(SECRET.as_bytes())
                {
                    return &[StatusCode::UNAUTHORIZED];
                }
                let declared = self
                    .content_length_header()
                    .and_then(|len| len.parse::<u64>().ok());
                if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64)
                    || self.body.len() > MAX_BODY_BYTES
                {
                    return &[StatusCode::PAYLOAD_TOO_LARGE];
                }
                match InboundUpdate::parse(&self.body) {
                    Ok(_) => ACCEPTED,
                    Err(_) => &[StatusCode::BAD_REQUEST],
                }
            }
        }
    }

    /// The HTTP request, or `None` when a header the fuzzer drew is not a valid header value
    /// (an HTTP server would have refused it before the router).
    pub fn to_request(&self) -> Option<Request<Body>> {
        let mut request = Request::builder().method(self.method()).uri(self.path());
        match self.secret_case() {
            SecretCase::NoSecretWithHeader(value) | SecretCase::WithSecret(Some(value)) => {
                request = request.header(SECRET_HEADER, HeaderValue::from_bytes(&value).ok()?);
            }
            SecretCase::NoSecretNoHeader | SecretCase::WithSecret(None) => {}
        }
        if let Some(content_type) = self.content_type() {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(length) = self.content_length_header() {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        let body = if self.chunking == 0 {
            Body::from(self.body.clone())
        } else {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = self
                .body
                .chunks(usize::from(self.chunking))
                .map(|chunk| Ok(chunk.to_vec()))
                .collect();
            Body::from_stream(futures_util::stream::iter(chunks))
        };
        request.body(body).ok()
    }
}

/// What every request of a process shares: a runtime, one SQLite store in a temporary
/// directory, and the routers without and with a secret in front of it.
struct Harness {
    runtime: tokio::runtime::Runtime,
    open: Router,
    guarded: Router,
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("botline-fuzz-")
            .tempdir()
            .expect("a temporary directory");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let backend: Arc<dyn Backend> = Arc::new(
            SqliteBackend::open(dir.path(), QueueConfig::default()).expect("the SQLite store"),
        );
        let app = |secret: Option<&str>| {
            let mut app = App::new(Arc::clone(&backend)).with_secret(
                secret.map(|s| WebhookSecret::new(s.to_owned()).expect("a valid secret")),
            );
            // A small limit, so that the fuzzer's inputs reach its edge from both sides.
            app.max_body_bytes = MAX_BODY_BYTES;
            app.ack_timeout = Duration::from_secs(10);
            app.read_timeout = Duration::from_secs(10);
            router(Arc::new(app))
        };
        Harness {
            runtime,
            open: app(None),
            guarded: app(Some(SECRET)),
            _dir: dir,
        }
    })
}

/// Sends `request` through the router and asserts the answer; returns the status (or `None`
/// when the request could not be built).
pub fn check_webhook_request(request: &WebhookRequest) -> Option<StatusCode> {
    let harness = harness();
    let http = request.to_request()?;
    let router = match request.secret_case() {
        SecretCase::WithSecret(_) => harness.guarded.clone(),
        _ => harness.open.clone(),
    };
    let (status, body) = harness.runtime.block_on(async move {
        let response = router
            .oneshot(http)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a response body")
            .to_bytes();
        (status, body)
    });
    let expected = request.expected_statuses();
    assert!(
        expected.contains(&status),
        "{} {} answered {status}, expected one of {expected:?}: {}",
        request.method(),
        request.path(),
        String::from_utf8_lossy(&body)
    );
    if request.path().starts_with("/telegram/webhook") && request.path() != "/telegram/webhook/" {
        if status == StatusCode::OK {
            assert_eq!(&body[..], br#"{"ok":true}"#);
            assert!(
                InboundUpdate::parse(&request.body).is_ok(),
                "a 200 for a body the parser rejects"
            );
        } else if status != StatusCode::METHOD_NOT_ALLOWED {
            let error: Value = serde_json::from_slice(&body).expect("errors are JSON");
            assert!(error["error"].is_string(), "{error}");
            assert!(body.len() < 200, "errors are short");
        }
    }
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(SECRET), "the secret is never echoed");
    Some(status)
}
