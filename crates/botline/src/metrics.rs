//! Botline's Prometheus metrics: their names, and the recorder behind `GET /metrics`.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `botline_webhook_requests_total` | counter | `outcome` | webhook requests by outcome: accepted, duplicate, unauthorized, invalid, too_large, unavailable |
//! | `botline_webhook_ack_seconds` | histogram | | request start to answer, for every webhook request |
//! | `botline_queue_depth` | gauge | `state` | updates pending or in_flight (read at scrape time) |
//! | `botline_dlq_depth` | gauge | | dead letters (read at scrape time) |
//! | `botline_receipt_to_stored_seconds` | histogram | | receipt of an update to its records committed |
//! | `botline_processing_attempts_total` | counter | | deliveries handed to the worker |
//! | `botline_processing_failures_total` | counter | | attempts that failed |
//! | `botline_dead_lettered_total` | counter | | updates that ran out of attempts |
//! | `botline_updates_processed_total` | counter | `outcome` | written, or already_done (a retry that changed nothing) |
//! | `botline_telegram_calls_total` | counter | `method`, `outcome` | Bot API calls made by the sender (`method`: the Bot API's name for the common methods, `other` for the rest): sent, retry (429, 5xx, network), refused (400/403/404, final) |
//! | `botline_update_to_reply_seconds` | histogram | | an outbox call written to Telegram accepting it |
//! | `botline_outbox_depth` | gauge | `state` | outbox calls pending or failed for good (read at scrape time) |
//! | `botline_shared_limiter_errors_total` | counter | `limiter` | requests to the shared rate limits (Redis, `BOTLINE_REDIS_URL`) that failed: `telegram` (the sender waits), `edge` (the address limiter counts alone meanwhile) |
//! | `botline_edge_refused_total` | counter | `reason` | requests the edge guard refused: allowlist (403), rate_limited (429), bad_forwarding (400) |
//! | `botline_handler_failures_total` | counter | | attempts the bot's handler failed (an error or a panic) |
//! | `botline_http_connections` | gauge | | connections `botline serve` has open |
//! | `botline_http_connections_refused_total` | counter | | connections closed on arrival: `max_connections` were open |
//! | `botline_http_timeouts_total` | counter | `phase` | requests whose headers (connection closed) or body (408) did not arrive in time |

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const WEBHOOK_REQUESTS: &str = "botline_webhook_requests_total";
pub const WEBHOOK_ACK_SECONDS: &str = "botline_webhook_ack_seconds";
pub const QUEUE_DEPTH: &str = "botline_queue_depth";
pub const DLQ_DEPTH: &str = "botline_dlq_depth";
pub const RECEIPT_TO_STORED_SECONDS: &str = "botline_receipt_to_stored_seconds";
pub const PROCESSING_ATTEMPTS: &str = "botline_processing_attempts_total";
pub const PROCESSING_FAILURES: &str = "botline_processing_failures_total";
pub const DEAD_LETTERED: &str = "botline_dead_lettered_total";
pub const UPDATES_PROCESSED: &str = "botline_updates_processed_total";
pub const TELEGRAM_CALLS: &str = "botline_telegram_calls_total";
pub const UPDATE_TO_REPLY_SECONDS: &str = "botline_update_to_reply_seconds";
pub const OUTBOX_DEPTH: &str = "botline_outbox_depth";
pub const HANDLER_FAILURES: &str = "botline_handler_failures_total";
pub const LEASE_EXTENSIONS: &str = "botline_lease_extensions_total";
pub const HTTP_CONNECTIONS: &str = "botline_http_connections";
pub const HTTP_CONNECTIONS_REFUSED: &str = "botline_http_connections_refused_total";
pub const HTTP_TIMEOUTS: &str = "botline_http_timeouts_total";

/// How often [`upkeep`] folds recorded histogram samples into the histograms.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the histogram samples recorded since the last time into the histograms, every
/// [`UPKEEP_EVERY`], until `stop`. The recorder keeps every sample until then (a scrape does the
/// same), so a server nobody scrapes grew by about 1 MB a minute at 500 updates/s without it.
pub async fn upkeep(handle: PrometheusHandle, stop: CancellationToken) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => handle.run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

/// Installs the process-wide recorder; `None` if one is already installed. Run [`upkeep`]
/// beside it.
pub fn install() -> Option<PrometheusHandle> {
    let latency_buckets = [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(WEBHOOK_ACK_SECONDS.into()), &latency_buckets)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(RECEIPT_TO_STORED_SECONDS.into()),
                &latency_buckets,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(UPDATE_TO_REPLY_SECONDS.into()),
                &latency_buckets,
            )
        })
        .ok()?
        .install_recorder()
        .ok()?;
    describe();
    Some(handle)
}

/// Describes every metric (units, help texts) to the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(WEBHOOK_REQUESTS, "Webhook requests by outcome");
    describe_histogram!(
        WEBHOOK_ACK_SECONDS,
        metrics::Unit::Seconds,
        "Time from a webhook request to its answer"
    );
    describe_gauge!(QUEUE_DEPTH, "Updates pending or in flight");
    describe_gauge!(DLQ_DEPTH, "Dead-lettered updates");
    describe_histogram!(
        RECEIPT_TO_STORED_SECONDS,
        metrics::Unit::Seconds,
        "Time from receiving an update to its records being committed"
    );
    describe_counter!(PROCESSING_ATTEMPTS, "Deliveries handed to the worker");
    describe_counter!(PROCESSING_FAILURES, "Processing attempts that failed");
    describe_counter!(DEAD_LETTERED, "Updates that ran out of attempts");
    describe_counter!(UPDATES_PROCESSED, "Updates processed, by outcome");
    describe_counter!(
        TELEGRAM_CALLS,
        "Bot API calls made by the sender, by method and outcome"
    );
    describe_histogram!(
        UPDATE_TO_REPLY_SECONDS,
        metrics::Unit::Seconds,
        "Time from an outbox call being written to Telegram accepting it"
    );
    describe_gauge!(OUTBOX_DEPTH, "Outbox calls pending or failed for good");
    describe_counter!(
        botline_core::limits::SHARED_LIMITER_ERRORS_METRIC,
        "Requests to the shared rate limits (Redis) that failed, by limiter: telegram or edge"
    );
    describe_counter!(
        HANDLER_FAILURES,
        "Attempts the bot's handler failed, by reason: error (an error or a panic) or timeout"
    );
    describe_counter!(
        LEASE_EXTENSIONS,
        "Leases extended while a slow attempt (a slow handler) was still running"
    );
    describe_gauge!(HTTP_CONNECTIONS, "HTTP connections open");
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections closed on arrival because max_connections were open"
    );
    describe_counter!(
        HTTP_TIMEOUTS,
        "HTTP requests whose headers or body did not arrive in time, by phase"
    );
}
