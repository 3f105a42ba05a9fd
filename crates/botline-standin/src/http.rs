//! The HTTP side: `/bot<token>/<method>` as Telegram serves it, the `/_standin/` control
//! endpoints, and a connection loop that can hang up on a request without answering it.

use crate::methods::{Method, Params, Reply};
use crate::state::{Call, Fault, Shared, unix_micros_now};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tower::ServiceExt;

/// The largest request body read (Telegram takes up to 10 MB outside file uploads).
const MAX_BODY: usize = 10 * 1024 * 1024;

/// The stand-in's routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new();
    if shared.settings.control_api {
        router = router.nest("/_standin", control_routes());
    }
    router.fallback(bot_api).with_state(shared)
}

/// Serves `router` on `listener` until `shutdown` fires (or its sender is dropped).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    mut shutdown: oneshot::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors or a connection reset before accept: try again soon.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        tokio::spawn(serve_connection(stream, router.clone()));
    }
}

/// Lets a handler close its connection without answering ([`Fault::Drop`]).
#[derive(Debug, Clone)]
struct HangUp(Arc<Notify>);

async fn serve_connection(stream: TcpStream, router: Router) {
    let _ = stream.set_nodelay(true);
    let hang_up = Arc::new(Notify::new());
    let service = {
        let hang_up = hang_up.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(HangUp(hang_up.clone()));
            router.clone().oneshot(request)
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        // Dropping the connection closes the socket, with the request unanswered.
        () = hang_up.notified() => {}
    }
}

fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(reply.body)).into_response()
}

/// A call being answered; recorded once, when answered or when its request is dropped.
struct CallRecord {
    shared: Arc<Shared>,
    call: Option<Call>,
}

impl CallRecord {
    fn finish(&mut self, status: Option<u16>) {
        if let Some(mut call) = self.call.take() {
            call.status = status;
            self.shared.record(call);
        }
    }

    fn answer(mut self, reply: Reply) -> Response {
        self.finish(Some(reply.status));
        respond(reply)
    }

    fn method(&self) -> &str {
        self.call.as_ref().map_or("", |call| call.method.as_str())
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// `/bot<token>/<method>`: token check, injected fault, then the method.
async fn bot_api(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let at = shared.started.elapsed();
    let unix_us = unix_micros_now();
    let (parts, body) = request.into_parts();
    let Some((token, method_name)) = bot_path(parts.uri.path()) else {
        return respond(Reply::not_found());
    };
    let params = read_params(&parts, body).await;
    let method = Method::parse(&method_name);
    let token_ok = token == shared.settings.token;
    drop(token);
    let mut record = CallRecord {
        shared: shared.clone(),
        call: Some(Call {
            method: method.map_or(method_name, |m| m.name().to_owned()),
            params: Value::Object(params.as_ref().cloned().unwrap_or_default()),
            status: None,
            token_ok,
            at,
            unix_us,
        }),
    };
    if !token_ok {
        return record.answer(Reply::unauthorized());
    }
    match shared.take_fault(record.method()) {
        None => {}
        Some(Fault::TooManyRequests { retry_after }) => {
            return record.answer(Reply::too_many_requests(retry_after));
        }
        Some(Fault::Server(status)) => return record.answer(Reply::server_error(status)),
        Some(Fault::Api { code, description }) => {
            return record.answer(Reply::error(code, &description));
        }
        Some(Fault::Drop) => {
            record.finish(None);
            if let Some(HangUp(hang_up)) = parts.extensions.get::<HangUp>() {
                hang_up.notify_one();
            }
            return std::future::pending().await;
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
    }
    let Some(method) = method else {
        return record.answer(Reply::not_found());
    };
    let params = match params {
        Ok(params) => params,
        Err(reply) => return record.answer(reply),
    };
    let reply = match method {
        Method::GetUpdates => shared.get_updates(Params(&params)).await,
        other => shared.answer(other, Params(&params)),
    };
    record.answer(reply)
}

/// The token (percent-decoded) and method name of a `/bot<token>/<method>` path.
fn bot_path(path: &str) -> Option<(String, String)> {
    let (token, method) = path.strip_prefix("/bot")?.split_once('/')?;
    if method.is_empty() || method.contains('/') {
        return None;
    }
    let token = percent_encoding::percent_decode_str(token)
        .decode_utf8()
        .ok()?;
    Some((token.into_owned(), method.to_owned()))
}

/// The parameters from the query string and the body (JSON or form-urlencoded); the body's
/// win. An unreadable body is the Bad Request to answer, once the token has been checked.
async fn read_params(parts: &Parts, body: Body) -> Result<Map<String, Value>, Reply> {
    let mut params = Map::new();
    if let Some(query) = parts.uri.query() {
        params.extend(form_pairs(query.as_bytes()));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| Reply::error(413, "Request Entity Too Large"))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(params);
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let from_body = match content_type.as_str() {
        "application/json" => json_object(&bytes)?,
        "application/x-www-form-urlencoded" => form_pairs(&bytes).collect(),
        "multipart/form-data" => {
            return Err(Reply::error(
                400,
                "Bad Request: the stand-in does not read multipart/form-data bodies",
            ));
        }
        _ if bytes.trim_ascii_start().starts_with(b"{") => json_object(&bytes)?,
        _ => form_pairs(&bytes).collect(),
    };
    params.extend(from_body);
    Ok(params)
}

fn form_pairs(bytes: &[u8]) -> impl Iterator<Item = (String, Value)> + '_ {
    form_urlencoded::parse(bytes).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
}

fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, Reply> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(params)) => Ok(params),
        _ => Err(Reply::error(400, "Bad Request: can't parse JSON object")),
    }
}

// --- Control endpoints, for the binary's users (load tests, manual runs) ---

fn control_routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/calls", get(list_calls).delete(clear_calls))
        .route("/faults", post(add_fault))
        .route("/updates", post(push_updates))
        .route("/webhook", get(webhook))
        .route("/webhook/error", post(set_webhook_error))
        .route("/chats/{chat_id}/blocked", post(block_chat))
        .route("/chats/{chat_id}/missing", post(missing_chat))
        .route(
            "/chats/{chat_id}/undeletable/{message_id}",
            post(undeletable),
        )
}

fn control_error(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

#[derive(Debug, Deserialize)]
struct CallsQuery {
    method: Option<String>,
    /// Skip the first `from` calls of the list (a load test fetches only the new ones).
    #[serde(default)]
    from: usize,
}

/// `GET /_standin/calls[?method=sendMessage][&from=N]`: the calls in the order answered, from
/// the N-th on (0-based; N beyond the end gives `[]`).
async fn list_calls(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<CallsQuery>,
) -> Json<Vec<Call>> {
    let mut calls = match query.method {
        Some(method) => shared.calls_of(&method),
        None => shared.calls(),
    };
    calls.drain(..query.from.min(calls.len()));
    Json(calls)
}

/// `DELETE /_standin/calls`
async fn clear_calls(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.clear_calls();
    StatusCode::NO_CONTENT
}

/// `POST /_standin/faults`, e.g. `{"method":"sendMessage","count":2,"kind":"too_many_requests",
/// "retry_after":3}`; kinds `server` (`status`), `api` (`code`, `description`), `drop`, `delay`
/// (`ms`). Without `method` the fault hits any method; `count` defaults to 1.
#[derive(Debug, Deserialize)]
struct FaultRequest {
    method: Option<String>,
    #[serde(default = "one")]
    count: u32,
    #[serde(flatten)]
    fault: FaultKind,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum FaultKind {
    TooManyRequests { retry_after: u32 },
    Server { status: u16 },
    Api { code: u16, description: String },
    Drop,
    Delay { ms: u64 },
}

impl From<FaultKind> for Fault {
    fn from(kind: FaultKind) -> Self {
        match kind {
            FaultKind::TooManyRequests { retry_after } => Self::TooManyRequests { retry_after },
            FaultKind::Server { status } => Self::Server(status),
            FaultKind::Api { code, description } => Self::Api { code, description },
            FaultKind::Drop => Self::Drop,
            FaultKind::Delay { ms } => Self::Delay(Duration::from_millis(ms)),
        }
    }
}

async fn add_fault(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<FaultRequest>,
) -> StatusCode {
    shared.fail_next(
        request.method.as_deref(),
        request.count,
        request.fault.into(),
    );
    StatusCode::NO_CONTENT
}

/// `POST /_standin/updates` with one update or an array of them.
async fn push_updates(State(shared): State<Arc<Shared>>, Json(updates): Json<Value>) -> Response {
    let updates = match updates {
        Value::Array(updates) => updates,
        update => vec![update],
    };
    match shared.push_updates(updates) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => control_error(&error.to_string()),
    }
}

/// `GET /_standin/webhook`
async fn webhook(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.webhook()).into_response()
}

#[derive(Debug, Deserialize)]
struct WebhookError {
    date: i64,
    message: String,
}

/// `POST /_standin/webhook/error` with `{"date":1714564800,"message":"Connection refused"}`
async fn set_webhook_error(
    State(shared): State<Arc<Shared>>,
    Json(error): Json<WebhookError>,
) -> StatusCode {
    shared.set_webhook_error(error.date, error.message);
    StatusCode::NO_CONTENT
}

async fn block_chat(State(shared): State<Arc<Shared>>, Path(chat_id): Path<i64>) -> StatusCode {
    shared.with_chat(chat_id, |chat| chat.blocked = true);
    StatusCode::NO_CONTENT
}

async fn missing_chat(State(shared): State<Arc<Shared>>, Path(chat_id): Path<i64>) -> StatusCode {
    shared.with_chat(chat_id, |chat| chat.missing = true);
    StatusCode::NO_CONTENT
}

async fn undeletable(
    State(shared): State<Arc<Shared>>,
    Path((chat_id, message_id)): Path<(i64, i64)>,
) -> StatusCode {
    shared.with_chat(chat_id, |chat| {
        chat.undeletable.insert(message_id);
    });
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_paths() {
        assert_eq!(
            bot_path("/bot123:ABC/getMe"),
            Some(("123:ABC".into(), "getMe".into()))
        );
        assert_eq!(
            bot_path("/bot123%3AABC/sendMessage"),
            Some(("123:ABC".into(), "sendMessage".into()))
        );
        assert_eq!(bot_path("/bot123:ABC/"), None);
        assert_eq!(bot_path("/bot123:ABC"), None);
        assert_eq!(bot_path("/bot123:ABC/getMe/more"), None);
        assert_eq!(bot_path("/file/bot123:ABC/x"), None);
    }

    #[test]
    fn fault_requests_read_as_documented() {
        let request: FaultRequest = serde_json::from_value(json!({
            "method": "sendMessage", "count": 2, "kind": "too_many_requests", "retry_after": 3,
        }))
        .unwrap();
        assert_eq!(request.count, 2);
        assert_eq!(
            Fault::from(request.fault),
            Fault::TooManyRequests { retry_after: 3 }
        );
        let request: FaultRequest =
            serde_json::from_value(json!({ "kind": "delay", "ms": 250 })).unwrap();
        assert_eq!(request.count, 1);
        assert_eq!(
            Fault::from(request.fault),
            Fault::Delay(Duration::from_millis(250))
        );
    }

    /// A GET over HTTP/1.0 (the connection closes after the answer): status line and body.
    fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }

    #[test]
    fn calls_carry_their_wall_clock_arrival_and_can_be_listed_from_an_index() {
        let standin = crate::StandIn::start(crate::Settings {
            token: "1:T".into(),
            control_api: true,
            ..crate::Settings::default()
        });
        let before = unix_micros_now();
        for text in ["one", "two", "three"] {
            let (status, _) = get(
                standin.addr(),
                &format!("/bot1:T/sendMessage?chat_id=5&text={text}"),
            );
            assert!(status.contains(" 200 "), "{status}");
        }
        get(standin.addr(), "/bot1:T/getMe");
        let after = unix_micros_now();

        let calls = standin.calls_of("sendMessage");
        assert_eq!(calls.len(), 3);
        assert!(calls.windows(2).all(|w| w[0].unix_us <= w[1].unix_us));
        assert!(calls.iter().all(|c| (before..=after).contains(&c.unix_us)));

        let (status, body) = get(standin.addr(), "/_standin/calls?method=sendMessage&from=1");
        assert!(status.contains(" 200 "), "{status}");
        let listed: Vec<Value> = serde_json::from_str(&body).unwrap();
        let texts: Vec<&str> = listed
            .iter()
            .map(|c| c["params"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["two", "three"]);
        assert_eq!(listed[0]["at_unix_us"], json!(calls[1].unix_us));

        let (_, body) = get(standin.addr(), "/_standin/calls?from=9");
        assert_eq!(body, "[]");
        let (_, body) = get(standin.addr(), "/_standin/calls");
        assert_eq!(serde_json::from_str::<Vec<Value>>(&body).unwrap().len(), 4);
    }
}
