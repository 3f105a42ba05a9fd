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
//! - **Over time** ([`timeline`], [`plot`]): per second, acknowledgements, their latency
//!   p50/p99/max, non-2xx answers, connection errors, give-ups, kills and a managed server's RSS,
//!   in the report and its JSON; in bounded memory (one small histogram for the second in
//!   progress), so a half-hour soak costs a few hundred KiB. Drawn as an SVG with `--plot`.
//! - **A managed server** ([`server`], [`run_managed`]): `--serve BIN` starts `BIN serve` on a
//!   fresh data directory, a free loopback port and a generated secret, waits for `/health`,
//!   samples its RSS once a second, SIGKILLs and restarts it at random moments with `--kills N`
//!   ([`CrashPlan`]), checks its store as `--verify-data-dir` does, and stops it with SIGTERM.
//!   A crash or soak run is one command (`scripts/crash.sh`, `scripts/soak.sh`), and
//!   `crates/botline/tests/crash.rs` and `soak.rs` use the same code.
//! - **Verification** ([`verify()`], [`export_and_verify`]): after the load, `botline messages
//!   export --data-dir DIR --format jsonl` is run until every acknowledged update is stored or
//!   30 s pass; each must be stored exactly once with `raw` equal, byte for byte, to the body that
//!   was sent. Also reports receipt-to-stored latency (`createdAt` − first send) and the rate at
//!   which the load was stored (stored updates / seconds from the start to the last `createdAt`).
//! - **Replies** ([`replies`], `--verify-replies STANDIN_URL`): with Botline forwarding to the
//!   echo-and-`/start` example bot (`BOTLINE_HANDLER_URL`) and sending through `botline-standin`,
//!   every acknowledged text message must get exactly one `sendMessage` with the bot's text.
//!   Reports receipt-to-reply latency (arrival at the stand-in − first send) and replies per
//!   second (`scripts/bench.sh forward`).
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
//! `--plot FILE.svg` draws throughput, latency and (managed) RSS per second; the JSON report
//! (`--json-out`) has the same series under `timeline`. A progress bar (updates or seconds done,
//! eta, acknowledgements per second, retries, errors, kills) goes to stderr when it is a
//! terminal.
//!
//! With a server it starts itself:
//!
//! ```text
//! botline-bench --serve target/release/botline --rate 500 --duration 30m \
//!     --plot soak.svg --json-out soak.json                        # a soak
//! botline-bench --serve target/release/botline --kills 20 --updates 20000 --rate 2000 \
//!     --server-env BOTLINE_LEASE=2s                               # a crash test
//! ```
//!
//! - `--serve BIN` runs `BIN serve --data-dir DIR --listen 127.0.0.1:PORT` with a generated
//!   `BOTLINE_WEBHOOK_SECRET` and none of the caller's other `BOTLINE_*` variables (no real bot
//!   token gets made-up updates), in `DIR`, logging to `DIR/botline-serve.log`; verifies the
//!   store with `BIN` (so `--url`, `--secret`, `--verify-data-dir`, `--verify-database-url` and
//!   `--botline-bin` do not apply; `--verify-timeout` does).
//! - `--data-dir DIR` is its data directory, created if missing and refused unless empty;
//!   by default a new temporary directory, printed and kept.
//! - `--kills N` SIGKILLs it N times, spread over the run with random gaps that `--seed`
//!   governs (see [`CrashPlan`]), restarting it each time on the same directory and port; the
//!   report says how many kills were done. The store check then waits at least the server's
//!   lease (`BOTLINE_LEASE`, Botline's default 30 s) plus 30 s, as updates in flight at a kill
//!   are stored only once their lease expired.
//! - `--server-env KEY=VALUE` (repeatable) adds to its environment, e.g. `BOTLINE_LEASE=2s`.
//!
//! The exit code is 0 when done, 1 when the store check found an acknowledged update missing,
//! duplicated or altered (or a managed server died on its own), 2 when the run could not be
//! done (bad flags, a server that does not start or come back, an export that never runs).
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
//!
//! With a managed server, killed three times (blocking calls: from a test or `spawn_blocking`):
//!
//! ```no_run
//! # async fn example() -> Result<(), botline_bench::BenchError> {
//! use botline_bench::{
//!     CrashPlan, LoadConfig, LoadLimit, ManagedRun, ManagedServer, ServerConfig, run_managed,
//! };
//!
//! let server = ManagedServer::start(ServerConfig::new("target/release/botline"))?;
//! let load = LoadConfig {
//!     rate: Some(500.0),
//!     limit: LoadLimit::Updates(5000),
//!     ..LoadConfig::default()
//! };
//! let managed = ManagedRun {
//!     crash: Some(CrashPlan::new(3)),
//!     ..ManagedRun::default()
//! };
//! let report = run_managed(load, server, managed).await?;
//! assert!(report.verified_ok() && report.server_ok());
//! let server = report.server.as_ref().expect("managed");
//! println!("{} kills, max RSS {:?} KiB", server.kills, server.max_rss_kib);
//! # Ok(())
//! # }
//! ```

pub mod body;
mod config;
pub mod flood;
mod load;
mod managed;
pub mod plot;
pub mod replies;
mod report;
pub mod server;
pub mod timeline;
pub mod verify;

pub use config::{
    BenchError, LoadConfig, LoadLimit, MAX_CONNECTIONS, VerifyConfig, VerifyStore, parse_duration,
};
pub use load::{INITIAL_BACKOFF, MAX_BACKOFF, SECRET_HEADER, run};
pub use managed::{CrashPlan, ManagedRun, STOP_TIMEOUT, run_managed};
pub use replies::{RepliesConfig, ReplyCheck, check_replies, expected_reply, fetch_and_check};
pub use report::{AckedUpdate, GivenUpUpdate, LatencySummary, Report, ServerReport};
pub use server::{ManagedServer, ServerConfig};
pub use timeline::SecondStats;
pub use verify::{MessageKey, RawMismatch, Verification, export_and_verify, verify};
