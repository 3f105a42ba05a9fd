//! Botline's Prometheus metrics: their names, and the recorder behind `GET /metrics`.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `botline_webhook_requests_total` | counter | `outcome` | webhook requests by outcome: accepted, duplicate, unauthorized, invalid, too_large, body_timeout (408), unavailable (503), internal_error (500) |
//! | `botline_webhook_ack_seconds` | histogram | | request start to answer, for every webhook request that did not panic |
//! | `botline_queue_depth` | gauge | `state` | updates pending or in_flight (read at scrape time) |
//! | `botline_oldest_pending_age_seconds` | gauge | | age of the oldest update not yet done nor dead, waiting or in flight, from its receipt; 0 when there is none (read at scrape time) |
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
//! | `botline_handler_failures_total` | counter | `reason` | attempts the bot's handler failed: error (an error or a panic) or timeout |
//! | `botline_lease_extensions_total` | counter | | leases extended while a slow attempt was still running |
//! | `botline_http_connections` | gauge | | connections `botline serve` has open |
//! | `botline_http_connections_refused_total` | counter | | connections closed on arrival: `max_connections` were open |
//! | `botline_http_timeouts_total` | counter | `phase` | requests whose headers (connection closed) or body (408) did not arrive in time |
//!
//! [`ALL`] lists them for the tests: the alert rules in `deploy/prometheus/` and the dashboard
//! in `deploy/grafana/` may query no other name (`crates/botline/tests/alerts.rs`).

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
pub const OLDEST_PENDING_AGE_SECONDS: &str = "botline_oldest_pending_age_seconds";

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Exposed as `<name>_bucket`, `<name>_sum` and `<name>_count`.
    Histogram,
}

/// Every metric Botline exposes on `/metrics`, with its kind: the table above.
pub const ALL: &[(&str, Kind)] = &[
    (WEBHOOK_REQUESTS, Kind::Counter),
    (WEBHOOK_ACK_SECONDS, Kind::Histogram),
    (QUEUE_DEPTH, Kind::Gauge),
    (OLDEST_PENDING_AGE_SECONDS, Kind::Gauge),
    (DLQ_DEPTH, Kind::Gauge),
    (RECEIPT_TO_STORED_SECONDS, Kind::Histogram),
    (PROCESSING_ATTEMPTS, Kind::Counter),
    (PROCESSING_FAILURES, Kind::Counter),
    (DEAD_LETTERED, Kind::Counter),
    (UPDATES_PROCESSED, Kind::Counter),
    (TELEGRAM_CALLS, Kind::Counter),
    (UPDATE_TO_REPLY_SECONDS, Kind::Histogram),
    (OUTBOX_DEPTH, Kind::Gauge),
    (
        botline_core::limits::SHARED_LIMITER_ERRORS_METRIC,
        Kind::Counter,
    ),
    (botline_edge::REFUSED_METRIC, Kind::Counter),
    (HANDLER_FAILURES, Kind::Counter),
    (LEASE_EXTENSIONS, Kind::Counter),
    (HTTP_CONNECTIONS, Kind::Gauge),
    (HTTP_CONNECTIONS_REFUSED, Kind::Counter),
    (HTTP_TIMEOUTS, Kind::Counter),
];

/// Every `outcome` of [`WEBHOOK_REQUESTS`].
pub const WEBHOOK_OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "unauthorized",
    "invalid",
    "too_large",
    "body_timeout",
    "unavailable",
    "internal_error",
];

/// Every `outcome` of [`TELEGRAM_CALLS`].
pub const TELEGRAM_CALL_OUTCOMES: &[&str] = &["sent", "retry", "refused"];

/// Counts one Bot API call of `method` (as [`TELEGRAM_CALLS`] labels it) that ended with
/// `outcome`, and shows the method's other outcomes at 0 until they happen.
pub fn count_telegram_call(method: &'static str, outcome: &'static str) {
    for &other in TELEGRAM_CALL_OUTCOMES {
        metrics::counter!(TELEGRAM_CALLS, "method" => method, "outcome" => other)
            .increment(u64::from(other == outcome));
    }
}

/// Shows the counters the alert rules divide or take the increase of at 0 from the start: a
/// counter that first appears at 1 has no increase to `rate()` or `increase()`, so the first
/// failures after a start would go unseen. The lease extensions too: a dashboard's first slow
/// handler is then an increase from 0.
pub fn zero_counters() {
    for &outcome in WEBHOOK_OUTCOMES {
        metrics::counter!(WEBHOOK_REQUESTS, "outcome" => outcome).absolute(0);
    }
    for name in [
        PROCESSING_ATTEMPTS,
        PROCESSING_FAILURES,
        DEAD_LETTERED,
        LEASE_EXTENSIONS,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for outcome in ["written", "already_done"] {
        metrics::counter!(UPDATES_PROCESSED, "outcome" => outcome).absolute(0);
    }
    for reason in ["error", "timeout"] {
        metrics::counter!(HANDLER_FAILURES, "reason" => reason).absolute(0);
    }
    // The method of Botline's own replies; other methods appear at their first call.
    for &outcome in TELEGRAM_CALL_OUTCOMES {
        metrics::counter!(TELEGRAM_CALLS, "method" => "sendMessage", "outcome" => outcome)
            .absolute(0);
    }
}

/// The value of [`OLDEST_PENDING_AGE_SECONDS`]: from the oldest pending update's receipt
/// (`oldest_ms`, unix milliseconds) to `now_ms`; 0 when nothing is pending, or when the
/// backend's clock is ahead of this one's.
pub fn age_seconds(oldest_ms: Option<i64>, now_ms: i64) -> f64 {
    oldest_ms.map_or(0.0, |oldest| {
        now_ms.saturating_sub(oldest).max(0) as f64 / 1000.0
    })
}

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
    zero_counters();
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
    describe_gauge!(
        OLDEST_PENDING_AGE_SECONDS,
        metrics::Unit::Seconds,
        "Age of the oldest update not yet done nor dead (waiting or in flight); 0 when none"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in this module's docs and [`ALL`] name the same metrics, of the same kinds.
    #[test]
    fn the_table_lists_every_metric() {
        let source = include_str!("metrics.rs");
        let table: Vec<(String, String)> = source
            .lines()
            .filter_map(|line| line.strip_prefix("//! | `"))
            .map(|row| {
                let mut cells = row.split('|');
                let name = cells.next().unwrap().trim().trim_end_matches('`');
                let kind = cells.next().unwrap().trim();
                (name.to_owned(), kind.to_owned())
            })
            .collect();
        let all: Vec<(String, String)> = ALL
            .iter()
            .map(|(name, kind)| ((*name).to_owned(), format!("{kind:?}").to_lowercase()))
            .collect();
        assert_eq!(table, all);
    }

    #[test]
    fn the_counters_the_alerts_use_start_at_zero() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            zero_counters();
            count_telegram_call("deleteMessage", "refused");
        });
        let text = handle.render();
        for line in [
            r#"botline_webhook_requests_total{outcome="unavailable"} 0"#,
            r#"botline_webhook_requests_total{outcome="internal_error"} 0"#,
            "botline_processing_attempts_total 0",
            "botline_processing_failures_total 0",
            "botline_dead_lettered_total 0",
            "botline_lease_extensions_total 0",
            r#"botline_telegram_calls_total{method="sendMessage",outcome="refused"} 0"#,
            r#"botline_telegram_calls_total{method="deleteMessage",outcome="refused"} 1"#,
            r#"botline_telegram_calls_total{method="deleteMessage",outcome="sent"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }
}
