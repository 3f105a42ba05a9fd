//! A stand-in for AWS Lambda's Invoke API (`POST /2015-03-31/functions/{name}/invocations`),
//! for testing a caller that invokes a function synchronously: no emulator here runs Lambda
//! functions, so the "function" is a Rust closure given to [`LambdaStandIn::start`] (which may
//! run a real handler in a process: Botline's tests run a grammY handler module with Node).
//!
//! It answers as Lambda does, on the wire the AWS SDK reads: the function's result as the body
//! with 200; `X-Amz-Function-Error: Unhandled` and the error document when the function throws;
//! 429 `TooManyRequestsException` with `Retry-After` when throttled; 404
//! `ResourceNotFoundException` for another function. A request without a SigV4 signature for
//! the `lambda` service is refused with 403, as AWS would. Every invocation is recorded.
//!
//! Point the SDK at it with the client's endpoint URL (or `AWS_ENDPOINT_URL_LAMBDA`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// One invocation, as the stand-in received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The `FunctionName` of the path (a name or an ARN, decoded).
    pub function: String,
    /// `X-Amz-Invocation-Type` (`RequestResponse` when absent, as Lambda reads it).
    pub invocation_type: String,
    /// The client context, decoded from base64 JSON, if one was sent.
    pub client_context: Option<Value>,
    /// The payload, byte for byte.
    pub payload: Bytes,
}

/// What the function does with one invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It returns this result (JSON, as a Node or Python handler's return value is).
    Returns(Vec<u8>),
    /// It throws: Lambda answers 200 with `X-Amz-Function-Error: Unhandled` and this document
    /// (`{"errorType":…,"errorMessage":…,"trace":[…]}`).
    Throws(Value),
    /// Lambda throttles the call: 429 with `Retry-After: <seconds>`.
    Throttled { retry_after_seconds: u64 },
}

type Function = dyn Fn(&Invocation) -> Outcome + Send + Sync;

struct Shared {
    name: String,
    function: Box<Function>,
    invocations: Mutex<Vec<Invocation>>,
    invoked: Notify,
}

/// A running stand-in for one function; it serves until dropped.
pub struct LambdaStandIn {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LambdaStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaStandIn")
            .field("function", &self.shared.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl LambdaStandIn {
    /// Serves the function `name` (invoked by that name or by any ARN ending in
    /// `:function:<name>`, with or without a qualifier) on 127.0.0.1, on the current tokio
    /// runtime.
    ///
    /// # Panics
    /// If it cannot listen on a local port.
    pub async fn start(
        name: &str,
        function: impl Fn(&Invocation) -> Outcome + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            function: Box::new(function),
            invocations: Mutex::new(Vec::new()),
            invoked: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the Lambda stand-in listens on a local port");
        let addr = listener.local_addr().expect("a local address");
        let router = Router::new()
            .route("/2015-03-31/functions/{name}/invocations", post(invoke))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            shared,
            addr,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`: the endpoint URL to give the SDK.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every invocation so far, in order.
    pub fn invocations(&self) -> Vec<Invocation> {
        self.shared
            .invocations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `done` holds for the invocations so far, or `give_up` has passed (then
    /// returns what there is).
    pub async fn wait_until(
        &self,
        give_up: Duration,
        done: impl Fn(&[Invocation]) -> bool,
    ) -> Vec<Invocation> {
        let deadline = tokio::time::Instant::now() + give_up;
        loop {
            let invoked = self.shared.invoked.notified();
            let invocations = self.invocations();
            if done(&invocations) {
                return invocations;
            }
            if tokio::time::timeout_at(deadline, invoked).await.is_err() {
                return self.invocations();
            }
        }
    }
}

impl Drop for LambdaStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Whether `requested` (a name, a partial or full ARN, with an optional qualifier) names `name`.
fn names(requested: &str, name: &str) -> bool {
    let unqualified = match requested.split_once(":function:") {
        Some((_, rest)) => rest.split(':').next().unwrap_or(rest),
        None => requested.split(':').next().unwrap_or(requested),
    };
    unqualified == name
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-amzn-ErrorType", kind),
            ("content-type", "application/json"),
        ],
        json!({"Type": "User", "message": message}).to_string(),
    )
        .into_response()
}

async fn invoke(
    State(shared): State<Arc<Shared>>,
    Path(function): Path<String>,
    headers: HeaderMap,
    payload: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // SigV4 for Lambda: `Credential=<key>/<date>/<region>/lambda/aws4_request`.
    let signed = header("authorization").is_some_and(|auth| {
        auth.starts_with("AWS4-HMAC-SHA256 ") && auth.contains("/lambda/aws4_request")
    });
    if !signed {
        return error(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        );
    }
    if !names(&function, &shared.name) {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {function}"),
        );
    }
    let client_context = header("x-amz-client-context").map(|encoded| {
        STANDARD
            .decode(encoded)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or(Value::Null)
    });
    let invocation = Invocation {
        function,
        invocation_type: header("x-amz-invocation-type")
            .unwrap_or("RequestResponse")
            .to_owned(),
        client_context,
        payload,
    };
    // The function may block (a test's function can run a process): off the server's threads.
    let outcome = {
        let (shared, invocation) = (Arc::clone(&shared), invocation.clone());
        tokio::task::spawn_blocking(move || (shared.function)(&invocation)).await
    };
    let Ok(outcome) = outcome else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ServiceException",
            "the stand-in's function panicked",
        );
    };
    shared
        .invocations
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(invocation);
    shared.invoked.notify_waiters();
    match outcome {
        Outcome::Returns(result) => (
            StatusCode::OK,
            [("x-amz-executed-version", "$LATEST")],
            result,
        )
            .into_response(),
        Outcome::Throws(document) => (
            StatusCode::OK,
            [
                ("x-amz-executed-version", "$LATEST"),
                ("x-amz-function-error", "Unhandled"),
            ],
            document.to_string(),
        )
            .into_response(),
        Outcome::Throttled {
            retry_after_seconds,
        } => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequestsException",
                "Rate Exceeded.",
            );
            if let Ok(value) = retry_after_seconds.to_string().parse() {
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn a_function_is_named_by_name_or_arn() {
        for requested in [
            "echo",
            "echo:live",
            "123456789012:function:echo",
            "arn:aws:lambda:eu-north-1:123456789012:function:echo",
            "arn:aws:lambda:eu-north-1:123456789012:function:echo:$LATEST",
        ] {
            assert!(names(requested, "echo"), "{requested}");
        }
        assert!(!names("echo2", "echo"));
        assert!(!names("arn:aws:lambda:eu-north-1:1:function:other", "echo"));
    }
}
