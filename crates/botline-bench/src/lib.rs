//! Botline's load generator: delivers Telegram-like `message` updates to a webhook the way
//! Telegram does, measures how fast they are acknowledged, and checks what was stored.
//!
//! # What it does
//!
//! - **Per-chat order, like Telegram.** The next update of a chat is sent only after the previous
//!   one got a 2xx. Each chat is pinned to one connection (chat index modulo connections) and each
//!   connection sends one request at a time over one keep-alive HTTP/1.1 connection.
//! - **Retries, like Telegram.** A non-2xx answer, a broken connection or a timeout repeats the
//!   same body (same `update_id`) after a backoff of 50 ms doubling to 1 s, reconnecting as
//!   needed, until it is acknowledged or `give_up` (default 60 s) has passed; then it counts as
//!   lost by the client. This survives the server being killed and restarted.
//! - **Realistic bodies**, built in code ([`body`]): private chats, groups and supergroups (ids
//!   beyond 2^32), users with names, usernames and languages, texts of 10–400 characters in
//!   several scripts with emoji, bot commands with their entity, photos with captions; most
//!   escaped as the Bot API escapes them (`\uXXXX`, `\/`). Update ids are `first_update_id + k`,
//!   message ids increase per chat, `date` is now.
//! - **Open or closed loop.** With a rate, update k is due at `start + k / rate` and its latency
//!   counts from then, so queueing in the client counts (no coordinated omission). Without, each
//!   connection sends as fast as it is answered and latency counts from the first send.
//! - **Report** ([`Report`]): acknowledged updates, duration, throughput, acknowledgement latency
//!   p50/p90/p99/p99.9/max (microsecond resolution), non-2xx answers by status, connection
//!   errors by kind, retries, updates given up, and every acknowledged update with its chat and
//!   message id.
//! - **Verification** ([`verify()`], [`export_and_verify`]): after the load, `botline messages
//!   export --data-dir DIR --format jsonl` is run until every acknowledged update is stored or
//!   30 s pass; each must be stored exactly once with `raw` equal, byte for byte, to the body that
//!   was sent. Also reports receipt-to-stored latency (`createdAt` − first send).
//!
//! # Command line
//!
//! ```text
//! botline-bench --url http://127.0.0.1:8080/telegram/webhook --secret S \
//!     --connections 40 --chats 1000 --rate 2000 --duration 10s \
//!     --json-out report.json --verify-data-dir ./botline-data --botline-bin target/release/botline
//! ```
//!
//! `--secret` may come from `BOTLINE_WEBHOOK_SECRET`. Without `--rate` the load is closed loop.
//! One of `--duration` and `--updates` is required. `--first-update-id` defaults to the current
//! unix time in milliseconds × 1000, so reruns do not collide with ids the server deduplicates.
//! A progress line goes to stderr once a second when stderr is a terminal. The exit code is 0
//! when done, 1 when the store check found an acknowledged update missing, duplicated or
//! altered, 2 when the run could not be done.
//!
//! # As a library
//!
//! ```no_run
//! # async fn example() -> Result<(), botline_bench::BenchError> {
//! use botline_bench::{LoadConfig, LoadLimit, run};
//!
//! let report = run(LoadConfig {
//!     url: "http://127.0.0.1:18080/telegram/webhook".to_owned(),
//!     secret: Some("test-secret".to_owned()),
//!     connections: 8,
//!     chats: 50,
//!     limit: LoadLimit::Updates(500),
//!     ..LoadConfig::default()
//! })
//! .await?;
//! assert_eq!(report.acknowledged, 500);
//! // Check the store yourself with report.acked_updates, or:
//! // let verification = botline_bench::verify(&report, &exported_jsonl);
//! # Ok(())
//! # }
//! ```

pub mod body;
mod config;
pub mod flood;
mod load;
mod report;
pub mod verify;

pub use config::{
    BenchError, LoadConfig, LoadLimit, MAX_CONNECTIONS, VerifyConfig, VerifyStore, parse_duration,
};
pub use load::{INITIAL_BACKOFF, MAX_BACKOFF, SECRET_HEADER, run};
pub use report::{AckedUpdate, GivenUpUpdate, LatencySummary, Report};
pub use verify::{MessageKey, RawMismatch, Verification, export_and_verify, verify};
