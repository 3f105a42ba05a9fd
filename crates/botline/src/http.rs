//! The HTTP face of Botline: `POST /telegram/webhook`, `GET /health`, `GET /metrics`.
//!
//! One router, built here, is what `botline serve` runs on its listener ([`crate::listen`], with
//! the header-read timeout and connection cap) and what the ingest Lambda runs through
//! `lambda_http`. The body must arrive within `read_timeout` (408 otherwise).
//!
//! The webhook answers 200 only once the update is durable, and 503 with `Retry-After` when it
//! cannot be made durable in time, or while the backend's schema is known to lack something
//! ([`crate::schema`]): Telegram then retries instead of losing the update or handing it to a
//! worker that cannot work. Checks run cheapest first, and the body is not read before the
//! secret matched. `/health` answers 503 naming what is missing while it is missing.

use crate::config::{ConfigError, Settings};
use crate::metrics as names;
use crate::schema::{SchemaWatch, Verdict};
use crate::secret::WebhookSecret;
use crate::shared_limits::RedisLimiter;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use botline_core::{Backend, Enqueued, InboundUpdate, InvalidUpdate, clock};
use botline_edge::json_error as error;
use botline_edge::{EdgeGuard, EdgeLayer, WebAppAuth};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub use botline_core::update::SECRET_HEADER;
/// How long Telegram is asked to wait before retrying after a 503.
const RETRY_AFTER_SECONDS: u64 = 1;

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    pub backend: Arc<dyn Backend>,
    pub secret: Option<WebhookSecret>,
    pub max_body_bytes: usize,
    /// How long an update may take to become durable before the answer is 503.
    pub ack_timeout: Duration,
    /// How long the body of a request may take to arrive before the answer is 408.
    pub read_timeout: Duration,
    /// Woken when an update was enqueued, so the worker picks it up at once.
    pub new_update: Arc<Notify>,
    pub metrics: Option<PrometheusHandle>,
    /// The network allowlist and per-address rate limit in front of the webhook and the Mini
    /// App route, when configured.
    pub edge: Option<EdgeLayer>,
    /// The Mini App sign-in route, when enabled (it needs the bot token).
    pub webapp: Option<Arc<WebAppAuth>>,
    /// Whether the backend has the schema this build needs, checked at most every few seconds.
    pub schema: Arc<SchemaWatch>,
}

impl App {
    /// The webhook on `backend` with `secret` checked, and the limits, timeouts, edge guard and
    /// Mini App route of `settings`: what `serve` and the ingest Lambda run.
    pub fn from_settings(
        settings: &Settings,
        backend: Arc<dyn Backend>,
        secret: Option<WebhookSecret>,
    ) -> Result<Self, ConfigError> {
        let shared = settings.shared_limiter()?;
        Self::from_settings_sharing(settings, backend, secret, shared)
    }

    /// [`App::from_settings`] with the shared rate limits (`BOTLINE_REDIS_URL`) the caller
    /// connected already, so that a process which also sends (`serve`) keeps one connection.
    pub fn from_settings_sharing(
        settings: &Settings,
        backend: Arc<dyn Backend>,
        secret: Option<WebhookSecret>,
        shared: Option<Arc<RedisLimiter>>,
    ) -> Result<Self, ConfigError> {
        let (edge, webapp) = edge_guards(settings, secret.as_ref(), shared)?;
        Ok(Self {
            secret,
            max_body_bytes: settings.max_body_bytes,
            ack_timeout: settings.ack_timeout,
            read_timeout: settings.read_timeout,
            new_update: Arc::default(),
            metrics: None,
            edge,
            webapp,
            schema: Arc::new(SchemaWatch::new(Arc::clone(&backend))),
            backend,
        })
    }

    /// The webhook on `backend` with the default settings' limits and timeouts, no secret, no
    /// edge guard and no metrics: for tests and fuzzing.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        let settings = Settings::default();
        Self {
            schema: Arc::new(SchemaWatch::new(Arc::clone(&backend))),
            backend,
            secret: None,
            max_body_bytes: settings.max_body_bytes,
            ack_timeout: settings.ack_timeout,
            read_timeout: settings.read_timeout,
            new_update: Arc::default(),
            metrics: None,
            edge: None,
            webapp: None,
        }
    }

    /// Checks `secret` on every webhook request.
    pub fn with_secret(mut self, secret: Option<WebhookSecret>) -> Self {
        self.secret = secret;
        self
    }

    /// Serves `/metrics` from `metrics`.
    pub fn with_metrics(mut self, metrics: Option<PrometheusHandle>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Shares `schema` (the one the process checked at start) instead of a watch of its own.
    pub fn with_schema(mut self, schema: Arc<SchemaWatch>) -> Self {
        self.schema = schema;
        self
    }

    /// Wakes `worker` whenever an update was made durable.
    pub fn waking(mut self, worker: Arc<Notify>) -> Self {
        self.new_update = worker;
        self
    }
}

/// The edge guard's layer and the Mini App route, as configured.
fn edge_guards(
    settings: &Settings,
    secret: Option<&WebhookSecret>,
    shared: Option<Arc<RedisLimiter>>,
) -> Result<(Option<EdgeLayer>, Option<Arc<WebAppAuth>>), ConfigError> {
    let config = &settings.edge;
    let invalid = |e: botline_edge::ConfigError| ConfigError::Invalid(format!("edge: {e}"));
    let edge = if config.allowlist.is_some() || config.rate_limit.enabled {
        let secret = secret.map(|s| botline_edge::Secret::new(s.expose()));
        let guard = EdgeGuard::new(config, secret).map_err(invalid)?;
        let guard = match shared {
            Some(shared) => guard.sharing(shared),
            None => guard,
        };
        Some(Arc::new(guard).layer())
    } else {
        None
    };
    let webapp = if config.webapp.enabled {
        let Some(token) = settings.bot_token()? else {
            return Err(ConfigError::Invalid(
                "edge.webapp.enabled needs the bot token (BOTLINE_BOT_TOKEN or bot_token_file)"
                    .into(),
            ));
        };
        let auth = WebAppAuth::new(
            &config.webapp,
            botline_edge::Secret::new(token.expose()),
            None,
        )
        .map_err(invalid)?;
        Some(Arc::new(auth))
    } else {
        None
    };
    Ok((edge, webapp))
}

/// The router of all of Botline's HTTP endpoints.
pub fn router(app: Arc<App>) -> Router {
    routes(app, true)
}

/// `/health` and `/metrics` only, for `botline poll`, which takes no webhook.
pub fn status_router(app: Arc<App>) -> Router {
    routes(app, false)
}

fn routes(app: Arc<App>, webhook_route: bool) -> Router {
    let guarded = |route: axum::routing::MethodRouter<Arc<App>>| match &app.edge {
        Some(edge) => route.layer(edge.clone()),
        None => route,
    };
    let mut router = Router::new();
    if webhook_route {
        let webhook = guarded(post(webhook)).layer(
            tower_http::catch_panic::CatchPanicLayer::custom(webhook_panicked),
        );
        router = router.route("/telegram/webhook", webhook);
    }
    if let Some(auth) = &app.webapp {
        let sign_in = botline_edge::webapp::route(Arc::clone(auth));
        router = router.route(auth.path(), guarded(sign_in));
    }
    router
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            },
        ))
        .with_state(app)
}

/// A webhook request whose handling panicked: 500, counted with the other webhook answers
/// (`outcome="internal_error"`), so that the alert on webhook errors sees every 5xx.
fn webhook_panicked(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a webhook request panicked");
    metrics::counter!(names::WEBHOOK_REQUESTS, "outcome" => INTERNAL_ERROR).increment(1);
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// The `outcome` of a webhook request answered 500.
const INTERNAL_ERROR: &str = "internal_error";

/// How one webhook request ended.
#[derive(Debug)]
enum Outcome {
    Accepted(InboundUpdate),
    Duplicate(InboundUpdate),
    Unauthorized,
    TooLarge,
    Invalid(InvalidUpdate),
    /// The body could not be read (the client went away mid-body).
    Unreadable,
    /// The body did not arrive within the read timeout (a slow or stalled client).
    BodyTimeout,
    Unavailable {
        update: InboundUpdate,
        reason: String,
    },
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Self::Accepted(_) => "accepted",
            Self::Duplicate(_) => "duplicate",
            Self::Unauthorized => "unauthorized",
            Self::TooLarge => "too_large",
            Self::Invalid(_) | Self::Unreadable => "invalid",
            Self::BodyTimeout => "body_timeout",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    fn update(&self) -> Option<&InboundUpdate> {
        match self {
            Self::Accepted(update) | Self::Duplicate(update) => Some(update),
            Self::Unavailable { update, .. } => Some(update),
            _ => None,
        }
    }

    fn into_response(self, max_body_bytes: usize) -> Response {
        match self {
            Self::Accepted(_) | Self::Duplicate(_) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                r#"{"ok":true}"#,
            )
                .into_response(),
            Self::Unauthorized => error(StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::TooLarge => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body exceeds {max_body_bytes} bytes"),
            ),
            Self::Invalid(invalid) => error(StatusCode::BAD_REQUEST, &invalid.to_string()),
            Self::Unreadable => error(StatusCode::BAD_REQUEST, "body could not be read"),
            Self::BodyTimeout => {
                let mut response = error(StatusCode::REQUEST_TIMEOUT, "body not received in time");
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
            Self::Unavailable { .. } => {
                let mut response =
                    error(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
                response
            }
        }
    }
}

async fn webhook(State(app): State<Arc<App>>, request: Request) -> Response {
    let started = Instant::now();
    let outcome = receive(&app, request).await;
    let latency = started.elapsed();
    metrics::counter!(names::WEBHOOK_REQUESTS, "outcome" => outcome.label()).increment(1);
    metrics::histogram!(names::WEBHOOK_ACK_SECONDS).record(latency.as_secs_f64());
    let latency_ms = latency.as_secs_f64() * 1000.0;
    match (&outcome, outcome.update()) {
        (Outcome::Unavailable { reason, .. }, Some(update)) => tracing::warn!(
            update_id = update.id.0,
            kind = %update.kind,
            chat_id = update.order_key.chat().map(|c| c.0),
            outcome = outcome.label(),
            latency_ms,
            reason = %reason,
            "webhook"
        ),
        (_, Some(update)) => tracing::info!(
            update_id = update.id.0,
            kind = %update.kind,
            chat_id = update.order_key.chat().map(|c| c.0),
            outcome = outcome.label(),
            latency_ms,
            "webhook"
        ),
        (Outcome::Invalid(invalid), None) => tracing::info!(
            outcome = outcome.label(),
            latency_ms,
            reason = %invalid,
            "webhook"
        ),
        (_, None) => tracing::info!(outcome = outcome.label(), latency_ms, "webhook"),
    }
    outcome.into_response(app.max_body_bytes)
}

async fn receive(app: &App, request: Request) -> Outcome {
    let (parts, body) = request.into_parts();
    if let Some(secret) = &app.secret {
        let given = parts.headers.get(SECRET_HEADER).map(HeaderValue::as_bytes);
        if !given.is_some_and(|given| secret.matches(given)) {
            return Outcome::Unauthorized;
        }
    }
    if declared_length(&parts.headers).is_some_and(|len| len > app.max_body_bytes as u64) {
        return Outcome::TooLarge;
    }
    let body =
        match tokio::time::timeout(app.read_timeout, read_body(body, app.max_body_bytes)).await {
            Ok(Ok(body)) => body,
            Ok(Err(outcome)) => return outcome,
            Err(_) => {
                metrics::counter!(names::HTTP_TIMEOUTS, "phase" => "body").increment(1);
                return Outcome::BodyTimeout;
            }
        };
    let update = match InboundUpdate::parse(&body) {
        Ok(update) => update,
        Err(invalid) => return Outcome::Invalid(invalid),
    };
    // The last verdict, not a new check: a stale one is renewed in the background.
    if let Some(Verdict::Missing(missing)) = app.schema.last() {
        return Outcome::Unavailable {
            update,
            reason: missing.to_string(),
        };
    }
    match tokio::time::timeout(app.ack_timeout, app.backend.enqueue(&update)).await {
        Ok(Ok(Enqueued::New)) => {
            app.new_update.notify_one();
            Outcome::Accepted(update)
        }
        Ok(Ok(Enqueued::Duplicate)) => Outcome::Duplicate(update),
        Ok(Err(e)) => Outcome::Unavailable {
            update,
            reason: e.to_string(),
        },
        Err(_) => Outcome::Unavailable {
            update,
            reason: format!("not durable within {:?}", app.ack_timeout),
        },
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Outcome> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Outcome::TooLarge),
        Err(_) => Err(Outcome::Unreadable),
    }
}

/// `{"status":"ok","version":"..."}`; 503 with `"status":"unprovisioned"`, what is missing and
/// the command that creates it while the backend's schema lacks something; 503 with
/// `"status":"unavailable"` when the backend cannot take updates.
async fn health(State(app): State<Arc<App>>) -> Response {
    let version = crate::version();
    let verdict = tokio::time::timeout(app.ack_timeout, app.schema.verdict()).await;
    if let Ok(Verdict::Missing(missing)) = verdict {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({
                "status": "unprovisioned",
                "version": version,
                "missing": missing.missing,
                "fix": missing.fix,
                "error": missing.to_string(),
            })),
        )
            .into_response();
    }
    match tokio::time::timeout(app.ack_timeout, app.backend.ping()).await {
        Ok(Ok(())) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok", "version": version})),
        )
            .into_response(),
        failed => {
            let reason = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer in time".to_owned(),
            };
            tracing::warn!(reason = %reason, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "unavailable", "version": version})),
            )
                .into_response()
        }
    }
}

/// Prometheus text; queue and DLQ depth and the oldest pending update's age are read from the
/// backend at scrape time.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let Some(handle) = &app.metrics else {
        return error(StatusCode::NOT_FOUND, "metrics are not enabled");
    };
    match app.backend.stats().await {
        Ok(stats) => {
            metrics::gauge!(names::QUEUE_DEPTH, "state" => "pending").set(stats.pending as f64);
            metrics::gauge!(names::QUEUE_DEPTH, "state" => "in_flight").set(stats.in_flight as f64);
            metrics::gauge!(names::DLQ_DEPTH).set(stats.dead as f64);
            metrics::gauge!(names::OLDEST_PENDING_AGE_SECONDS)
                .set(names::age_seconds(stats.oldest_pending_ms, clock::now_ms()));
        }
        Err(e) => tracing::warn!(error = %e, "metrics: queue depth unavailable"),
    }
    match app.backend.outbox_stats().await {
        Ok(outbox) => {
            metrics::gauge!(names::OUTBOX_DEPTH, "state" => "pending").set(outbox.pending as f64);
            metrics::gauge!(names::OUTBOX_DEPTH, "state" => "failed").set(outbox.failed as f64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: outbox depth unavailable"),
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        handle.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// Every 5xx the webhook answers is in `botline_webhook_requests_total`: the alert on
    /// webhook errors counts `unavailable` (503) and `internal_error` (500).
    #[test]
    fn a_panicking_webhook_request_is_answered_500_and_counted() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let response = metrics::with_local_recorder(&recorder, || {
            webhook_panicked(Box::new("a bug in a backend"))
        });
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = handle.render();
        assert!(
            text.contains(r#"botline_webhook_requests_total{outcome="internal_error"} 1"#),
            "{text}"
        );
    }

    /// The outcomes shown at 0 from the start are the ones the webhook answers with.
    #[test]
    fn every_outcome_is_one_metrics_starts_at_zero() {
        let update = || {
            let body = r#"{"update_id":1,"message":{"message_id":1,"date":1,"chat":{"id":1,"type":"private"},"text":"hi"}}"#;
            InboundUpdate::parse(body.as_bytes()).unwrap()
        };
        let invalid = InboundUpdate::parse(b"{}").unwrap_err();
        let outcomes = [
            Outcome::Accepted(update()),
            Outcome::Duplicate(update()),
            Outcome::Unauthorized,
            Outcome::Invalid(invalid),
            Outcome::Unreadable,
            Outcome::TooLarge,
            Outcome::BodyTimeout,
            Outcome::Unavailable {
                update: update(),
                reason: String::new(),
            },
        ];
        let mut labels: Vec<&str> = outcomes.iter().map(Outcome::label).collect();
        labels.push(INTERNAL_ERROR);
        labels.dedup();
        assert_eq!(labels, names::WEBHOOK_OUTCOMES);
    }

    #[test]
    fn the_age_of_the_oldest_pending_update_is_in_seconds_and_never_negative() {
        assert_eq!(names::age_seconds(None, 10_000), 0.0);
        assert_eq!(names::age_seconds(Some(4_000), 10_000), 6.0);
        assert_eq!(names::age_seconds(Some(12_000), 10_000), 0.0, "clock skew");
    }
}
