//! Botline's two AWS Lambda functions, from the same code as `botline serve --backend aws`:
//!
//! - **ingest** (`botline-ingest`, [`ingest`]): API Gateway's HTTP API (payload format 2.0)
//!   → the very router of `botline serve` ([`botline::http::router`]) through `lambda_http`:
//!   `POST /telegram/webhook` answers 200 only once the update is on SQS, 401/400/413 as on any
//!   backend, 503 with `Retry-After` when SQS or DynamoDB cannot take it in time; `GET /health`.
//!   The client's address for the edge guard is API Gateway's `requestContext.http.sourceIp`.
//! - **worker** (`botline-worker`, [`worker`]): SQS events (batches of up to 10) → the AWS
//!   backend's claim step → the worker's processing into DynamoDB, different chats at once and
//!   one chat's updates in order, answering with partial batch failures
//!   (`ReportBatchItemFailures`); then the replies due in the outbox go out to Telegram. And an
//!   EventBridge schedule's tick (every minute in the CDK app): the calls due in the outbox go
//!   out, reminders and calls that waited out a `retry_after` among them, with no traffic at all.
//!
//! Both check at the cold start that the queues and tables they need exist (`botline::schema`):
//! while one is missing, ingest answers the webhook 503 with `Retry-After` and `GET /health` 503
//! naming it, and the worker reports every record of its events as failed, so nothing is taken
//! from Telegram or the queue that no worker could process. `botline provision --backend aws`
//! creates what is missing.
//!
//! # Configuration
//!
//! Both read the settings of `botline serve` from the environment (`BOTLINE_*`, see the
//! README), with the backend fixed to `aws`, and:
//!
//! | variable | function | what |
//! | --- | --- | --- |
//! | `BOTLINE_QUEUE_URL`, `BOTLINE_DLQ_URL`, `BOTLINE_TABLE_PREFIX`, `BOTLINE_FIFO_GROUP` | both | the queues and tables (`botline_aws`) |
//! | `BOTLINE_WEBHOOK_SECRET_ID` (or `_PARAM`, `_FILE`, or the value) | ingest | Telegram's `secret_token`; required unless `BOTLINE_INSECURE_NO_SECRET=true` |
//! | `BOTLINE_BOT_TOKEN_ID` (or `_PARAM`, `_FILE`, or the value) | worker | the bot token, for replies; without it replies wait in the outbox |
//! | `BOTLINE_BOT_USERNAME` | worker | the bot's username; asked of Telegram (getMe) at a cold start when unset |
//! | `BOTLINE_HANDLER_URL`, `BOTLINE_HANDLER_SECRET_TOKEN` and `BOTLINE_HANDLER_SIGNING_SECRET` (each also `_ID`, `_PARAM`, `_FILE`), `BOTLINE_HANDLER_TIMEOUT` | worker | forward every update to the bot's own webhook handler (see `botline::forward`) |
//! | `BOTLINE_HANDLER_FUNCTION` (instead of the URL) | worker | invoke that Lambda function (name or ARN) with every update and send the call its result carries (see `botline_aws::invoke`); `AWS_ENDPOINT_URL_LAMBDA` points the invocation elsewhere |
//! | `BOTLINE_STAGE` | both | the `Stage` dimension of the metrics (default `local`) |
//! | `BOTLINE_LOG` | both | the log filter (default `info`); logs are JSON lines |
//!
//! Secrets from Secrets Manager or SSM are fetched at the cold start and cached for five
//! minutes per execution environment; the ingest function checks every request against the
//! current webhook secret, so a rotation takes effect within five minutes without a deploy.
//!
//! # Metrics
//!
//! Each invocation ends with CloudWatch Embedded Metric Format lines on stdout (namespace
//! `Botline`, dimension `Stage`, labels as further dimensions), which CloudWatch turns into
//! metrics without an API call. The names are those of `GET /metrics` ([`botline::metrics`]):
//!
//! | metric | dimensions | alarm on |
//! | --- | --- | --- |
//! | `botline_webhook_requests_total` | `Stage`, `outcome` (accepted = received, duplicate, unauthorized, invalid, too_large, unavailable, internal_error) | unavailable > 0 |
//! | `botline_webhook_ack_seconds` | `Stage` | p99 |
//! | `botline_updates_processed_total` | `Stage`, `outcome` (written, already_done) | |
//! | `botline_processing_failures_total` | `Stage` | rate |
//! | `botline_dead_lettered_total` | `Stage` | > 0 |
//! | `botline_receipt_to_stored_seconds` | `Stage` | p99 |
//! | `botline_telegram_calls_total` | `Stage`, `method`, `outcome` | refused > 0 |
//! | `ColdStart` | `Stage` | |
//!
//! # Building
//!
//! `scripts/build-lambdas.sh` builds both as `bootstrap` zips for `provided.al2023`
//! (`target/lambda/botline-ingest/bootstrap.zip`, `target/lambda/botline-worker/bootstrap.zip`),
//! which the CDK app in `infra/` deploys.

pub mod ingest;
pub mod worker;

use botline::config::{BackendKind, ConfigError, NoFlags, Settings};
use tracing_subscriber::EnvFilter;

/// Why an invocation is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The worker was invoked with something else than an SQS event or a scheduled event. Only
    /// the payload's top-level keys are named: its values may be anything.
    #[error(
        "the worker takes an SQS event (\"Records\") or an EventBridge scheduled event \
         (\"detail-type\": \"Scheduled Event\"), not an event with the keys {keys:?}"
    )]
    UnknownEvent { keys: Vec<String> },
    /// An EventBridge event that is not a schedule's.
    #[error(
        "the worker takes EventBridge's scheduled events only (source \"aws.events\", \
         detail-type \"Scheduled Event\"), not {detail_type:?} from {event_source:?}"
    )]
    NotASchedule {
        event_source: String,
        detail_type: String,
    },
}

/// The namespace of the functions' metrics.
pub const METRICS_NAMESPACE: &str = "Botline";

/// The settings from the environment (and `botline.toml` beside the function, if one was
/// deployed), on the AWS backend.
pub fn settings() -> Result<Settings, ConfigError> {
    let mut settings = Settings::load(None, &NoFlags {})?;
    settings.backend = BackendKind::Aws;
    Ok(settings)
}

/// JSON log lines without a timestamp (CloudWatch Logs adds one), filtered by `BOTLINE_LOG`.
pub fn init_logging() {
    let filter = EnvFilter::try_from_env("BOTLINE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_target(false)
        .with_current_span(false)
        .without_time()
        .init();
}

/// Installs the Embedded Metric Format recorder (namespace [`METRICS_NAMESPACE`], dimension
/// `Stage` from `BOTLINE_STAGE`) and describes Botline's metrics to it.
pub fn init_metrics() -> Result<&'static metrics_cloudwatch_embedded::Collector, String> {
    let stage = std::env::var("BOTLINE_STAGE").unwrap_or_else(|_| "local".to_owned());
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(METRICS_NAMESPACE)
        .with_dimension("Stage", stage)
        .lambda_cold_start_metric("ColdStart")
        .with_lambda_request_id("RequestId")
        .init()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    botline::metrics::describe();
    Ok(collector)
}
