//! The self-hosted monitoring in `deploy/` (docs/operations.md): the Prometheus alert rules pass
//! `promtool check rules`, and their unit tests (`promtool test rules`) pass on a series
//! recorded from a real `botline serve`; the Grafana dashboard's queries parse; and every metric
//! name the rules, the dashboard and the recording use is one Botline exposes
//! ([`botline::metrics::ALL`]), so that renaming a metric breaks this test, not the alerts.
//!
//! The recording is checked in (the `input_series` of `deploy/prometheus/tests/`), made by
//!
//! ```text
//! cargo test -p botline --test alerts -- --ignored record_the_alert_fixture
//! ```
//!
//! which runs `botline serve` between the Bot API stand-in and a bot handler over HTTP, drives
//! a fixed schedule of traffic and faults (a handler failing an update once, an update failing
//! until it is dead-lettered and then redriven, a reply Telegram refuses, the store locked so
//! the webhook answers 503, a hung handler behind a backlog), and scrapes `/metrics` every
//! [`TICK`]. Scrape `n` is written at `n` × [`STEP`] of the rule tests' time: the run is
//! stretched [`STRETCH`] times, so that 5 minutes of alert window are 10 s of the run. Counts
//! and ratios do not change with the stretch; the one duration the rules read, the oldest
//! pending update's age, is stretched with the timeline it belongs to. Histograms are left out.
//!
//! promtool comes with Debian's `prometheus` package (scripts/test.sh installs it where it is
//! missing). Without it these tests fail; they never skip.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use botline::metrics::{ALL, Kind};
use botline_standin::{Settings as StandInSettings, StandIn};
use common::{Server, deliver, free_port, get, message};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RULES: &str = "deploy/prometheus/botline-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests/botline-rules.test.yml";
const DASHBOARD: &str = "deploy/grafana/botline-dashboard.json";

/// The recorded series sit between these lines of [`RULE_TESTS`].
const BEGIN_RECORDED: &str = "      # BEGIN recorded";
const END_RECORDED: &str = "      # END recorded";

/// A scrape of the recorded run every `TICK`...
const TICK: Duration = Duration::from_millis(500);
/// ...written `STEP` apart in the rule tests (their `interval`).
const STEP: Duration = Duration::from_secs(15);
const STRETCH: f64 = 30.0;
/// The labels a Prometheus scrape adds (`job`, `instance`), on every recorded series.
const SCRAPE_LABELS: &str = r#"instance="recorded",job="botline""#;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn promtool(args: &[&str]) -> Output {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo(""))
        .output()
        .expect("promtool runs: install Debian's `prometheus` package (scripts/test.sh does)");
    assert!(
        out.status.success(),
        "promtool {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The names of the alerts in [`RULES`].
fn alerts() -> Vec<String> {
    read(RULES)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// Every name a query can use for a Botline metric: histograms as their three series.
fn known_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for &(name, kind) in ALL {
        names.insert(name.to_owned());
        if kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// Every `botline_…` word in `text` (in a query, a comment or an annotation alike).
fn metric_words(text: &str) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut words = BTreeSet::new();
    for (at, _) in text.match_indices("botline_") {
        if text[..at].chars().next_back().is_some_and(is_word) {
            continue;
        }
        let word: String = text[at..].chars().take_while(|&c| is_word(c)).collect();
        words.insert(word);
    }
    words
}

fn assert_known(what: &str, words: &BTreeSet<String>) {
    let known = known_names();
    let unknown: Vec<&String> = words.difference(&known).collect();
    assert!(
        unknown.is_empty(),
        "{what} names metrics Botline does not expose: {unknown:?} (known: {known:?})"
    );
}

#[test]
fn the_rules_pass_promtool_check() {
    let out = promtool(&["check", "rules", RULES]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let alerts = alerts();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    assert!(
        stdout.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{stdout}"
    );
}

#[test]
fn every_rule_passes_its_tests_on_the_recorded_run() {
    let tests = read(RULE_TESTS);
    // Each alert is tested firing and not firing.
    for alert in alerts() {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|case| case.contains(&format!("alertname: {alert}\n")))
            .collect();
        assert!(
            cases.iter().any(|case| case.contains("exp_alerts: []")),
            "{alert} is never tested not firing"
        );
        assert!(
            cases.iter().any(|case| case.contains("exp_labels:")),
            "{alert} is never tested firing"
        );
    }
    let out = promtool(&["test", "rules", RULE_TESTS]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SUCCESS"), "{stdout}");
}

#[test]
fn the_rules_and_the_recording_name_only_real_metrics() {
    let rules = read(RULES);
    let words = metric_words(&rules);
    assert_known(RULES, &words);
    for used in [
        "botline_dlq_depth",
        "botline_processing_failures_total",
        "botline_processing_attempts_total",
        "botline_webhook_requests_total",
        "botline_queue_depth",
        "botline_oldest_pending_age_seconds",
        "botline_telegram_calls_total",
    ] {
        assert!(words.contains(used), "the rules do not use {used}");
    }
    let tests = read(RULE_TESTS);
    let recorded = recorded_part(&tests);
    assert!(recorded.contains("- series:"), "nothing recorded");
    assert_known(RULE_TESTS, &metric_words(&tests));
}

#[test]
fn the_dashboard_queries_real_metrics_through_its_datasource_input() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    let mut exprs = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("a title");
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} queries nothing");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            exprs.push(target["expr"].as_str().expect("an expr").to_owned());
        }
    }
    let words = metric_words(&exprs.join("\n"));
    assert_known(DASHBOARD, &words);
    for shown in [
        "botline_webhook_requests_total",
        "botline_updates_processed_total",
        "botline_processing_failures_total",
        "botline_dlq_depth",
        "botline_dead_lettered_total",
        "botline_queue_depth",
        "botline_oldest_pending_age_seconds",
        "botline_webhook_ack_seconds_bucket",
        "botline_receipt_to_stored_seconds_bucket",
        "botline_outbox_depth",
        "botline_telegram_calls_total",
    ] {
        assert!(words.contains(shown), "the dashboard does not show {shown}");
    }
    for outcome in ["accepted", "duplicate"] {
        assert!(
            exprs
                .iter()
                .any(|e| e.contains(&format!("outcome=\"{outcome}\""))),
            "no panel of {outcome} webhook requests"
        );
    }
    // Each query parses: promtool checks them as recording rules, with Grafana's variables
    // replaced by what Grafana would put in their place.
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr.replace("$__rate_interval", "1m").replace("$job", ".*");
            let quoted = serde_json::to_string(&expr).unwrap();
            format!("      - record: dashboard:query_{i}\n        expr: {quoted}\n")
        })
        .collect();
    let file = common::temp_dir().join("dashboard-queries.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{stdout}"
    );
}

/// The recorded part of the rule tests.
fn recorded_part(tests: &str) -> &str {
    let begin = tests.find(BEGIN_RECORDED).expect("the BEGIN line");
    let end = tests.find(END_RECORDED).expect("the END line");
    &tests[begin..end]
}

// --- The recording --------------------------------------------------------------------------

/// What the bot's handler does, switched by the recording as it goes.
#[derive(Debug, Default)]
struct Control {
    /// Updates with the text `poison` fail while set.
    poison: AtomicBool,
    /// Updates with the text `backlog` wait while set.
    hang: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
}

/// The bot's handler, answering as grammY's webhook reply does: `flaky` fails its first
/// attempt, `poison` fails while [`Control::poison`], `backlog` waits while [`Control::hang`]
/// and then answers nothing to send; everything else is echoed.
async fn handle(State(control): State<Arc<Control>>, headers: HeaderMap, body: Bytes) -> Response {
    let update: Value = serde_json::from_slice(&body).unwrap_or_default();
    let chat = update["message"]["chat"]["id"].as_i64().unwrap_or_default();
    let text = update["message"]["text"].as_str().unwrap_or_default();
    let first_attempt = headers
        .get("botline-attempt")
        .is_some_and(|attempt| attempt == "1");
    let failed = || (StatusCode::INTERNAL_SERVER_ERROR, "failed").into_response();
    let answer = |value: Value| {
        (
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response()
    };
    match text {
        "flaky" if first_attempt => failed(),
        "poison" if control.poison.load(Ordering::SeqCst) => failed(),
        "poison" => answer(json!({"ok": true})),
        "backlog" => {
            let hang = control.hang.lock().unwrap().clone();
            if let Some(mut hang) = hang {
                let _ = hang.wait_for(|hanging| !hanging).await;
            }
            answer(json!({"ok": true}))
        }
        _ => answer(
            json!({"method": "sendMessage", "chat_id": chat, "text": format!("echo: {text}")}),
        ),
    }
}

fn start_handler(port: u16, control: Arc<Control>) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let app = Router::new()
                .route("/bot", post(handle))
                .with_state(control);
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
}

/// One scrape: every Botline series but the histograms', by its text (name and labels).
type Scrape = BTreeMap<String, f64>;

fn scrape(url: &str) -> Scrape {
    let (status, text) = get(url);
    assert_eq!(status, 200, "GET /metrics: {text}");
    text.lines()
        .filter(|line| line.starts_with("botline_"))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let name = series.split('{').next().unwrap_or_default();
            !ALL.iter()
                .any(|&(histogram, kind)| kind == Kind::Histogram && name.starts_with(histogram))
        })
        .map(|(series, value)| (series.to_owned(), value.parse().expect("a number")))
        .collect()
}

/// The scrapes so far, taken every [`TICK`] by a thread of their own.
#[derive(Debug, Clone, Default)]
struct Recording {
    scrapes: Arc<Mutex<Vec<Scrape>>>,
}

impl Recording {
    fn start(url: String, total: usize) -> (Self, std::thread::JoinHandle<()>) {
        let recording = Self::default();
        let scrapes = Arc::clone(&recording.scrapes);
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            for n in 0..total {
                let at = started + TICK * n as u32;
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let scraped = scrape(&url);
                scrapes.lock().unwrap().push(scraped);
            }
        });
        (recording, thread)
    }

    fn len(&self) -> usize {
        self.scrapes.lock().unwrap().len()
    }

    /// Waits for scrape `n` to be taken (the schedule's clock).
    fn at(&self, n: usize) {
        while self.len() < n {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The latest scrape's value of `series` (0 when absent).
    fn value(&self, series: &str) -> f64 {
        self.scrapes
            .lock()
            .unwrap()
            .last()
            .and_then(|scrape| scrape.get(series).copied())
            .unwrap_or(0.0)
    }

    /// Waits until the scrapes show `what` ([`Self::value`]s that `done` accepts), at the
    /// latest by scrape `by`: the schedule of the rule tests counts on it.
    fn until(&self, by: usize, what: &str, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            assert!(
                self.len() < by,
                "{what}: not seen by scrape {by} (now {})",
                self.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `input_series` of promtool's rule tests, one series a line pair, indented for
    /// [`RULE_TESTS`].
    fn input_series(&self) -> String {
        let scrapes = self.scrapes.lock().unwrap();
        let names: BTreeSet<&String> = scrapes.iter().flat_map(|s| s.keys()).collect();
        let mut out = String::new();
        for name in names {
            let values: Vec<Option<f64>> = scrapes
                .iter()
                .map(|scrape| {
                    scrape.get(name).map(|&value| {
                        if name.starts_with(botline::metrics::OLDEST_PENDING_AGE_SECONDS) {
                            (value * STRETCH * 10.0).round() / 10.0
                        } else {
                            value
                        }
                    })
                })
                .collect();
            let series = match name.strip_suffix('}') {
                Some(labelled) => format!("{labelled},{SCRAPE_LABELS}}}"),
                None => format!("{name}{{{SCRAPE_LABELS}}}"),
            };
            out.push_str(&format!(
                "      - series: '{series}'\n        values: '{}'\n",
                expanding(&values)
            ));
        }
        out
    }
}

/// `values` in promtool's expanding notation: a run of one value as `v+0xN`, of missing
/// samples as `_xN`.
fn expanding(values: &[Option<f64>]) -> String {
    let mut runs: Vec<(Option<f64>, usize)> = Vec::new();
    for &value in values {
        match runs.last_mut() {
            Some((last, count)) if *last == value => *count += 1,
            _ => runs.push((value, 1)),
        }
    }
    runs.iter()
        .map(|&(value, count)| match (value, count) {
            (None, 1) => "_".to_owned(),
            (None, n) => format!("_x{n}"),
            (Some(v), 1) => format!("{v}"),
            (Some(v), n) => format!("{v}+0x{}", n - 1),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_expanding_notation_is_promtools() {
    assert_eq!(
        expanding(&[None, None, Some(0.0), Some(0.0), Some(1.5), None]),
        "_x2 0+0x1 1.5 _"
    );
}

/// The schedule, in scrapes (each [`STEP`] of rule-test time, 4 a minute). The eval times in
/// [`RULE_TESTS`] are set by it.
mod at {
    /// Every 4 scrapes until the backlog, 5 updates that are answered.
    pub const TRAFFIC_UNTIL: usize = 220;
    /// 5 updates whose first attempt fails.
    pub const FLAKY: usize = 40;
    /// An update that fails until it is dead-lettered...
    pub const POISON: usize = 80;
    /// ...then succeeds, redriven.
    pub const REDRIVE: usize = 100;
    /// A reply to a chat that blocked the bot.
    pub const REFUSED: usize = 140;
    /// The store locked: the webhook answers 503...
    pub const LOCKED: usize = 180;
    /// ...until then.
    pub const UNLOCKED: usize = 186;
    /// 1200 updates behind a hung handler...
    pub const BACKLOG: usize = 220;
    /// ...until it is released.
    pub const RELEASED: usize = 304;
    pub const END: usize = 360;
}

/// Records the series of [`RULE_TESTS`] from a real run (see the module docs): rewrites the
/// part between its BEGIN and END lines. About three minutes.
#[test]
#[ignore = "writes the checked-in recording; run it by name when the metrics change"]
fn record_the_alert_fixture() {
    const SECRET_TOKEN: &str = "handler-secret-token";
    const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let standin = StandIn::start(StandInSettings::default());
    let control = Arc::new(Control::default());
    let handler_port = free_port();
    start_handler(handler_port, Arc::clone(&control));
    let handler_url = format!("http://127.0.0.1:{handler_port}/bot");
    let api = standin.base_url();
    let token = StandInSettings::default().token;
    let server = Server::start(&[
        ("BOTLINE_BOT_TOKEN", &token),
        ("BOTLINE_TELEGRAM_API_URL", &api),
        ("BOTLINE_HANDLER_URL", &handler_url),
        ("BOTLINE_HANDLER_SECRET_TOKEN", SECRET_TOKEN),
        ("BOTLINE_HANDLER_SIGNING_SECRET", SIGNING_SECRET),
        ("BOTLINE_MAX_ATTEMPTS", "3"),
        ("BOTLINE_BACKOFF_BASE", "100ms"),
        ("BOTLINE_BACKOFF_MAX", "200ms"),
        ("BOTLINE_ACK_TIMEOUT", "300ms"),
        ("BOTLINE_HANDLER_TIMEOUT", "120s"),
    ]);
    let webhook = server.url("/telegram/webhook");
    let next_id = Arc::new(AtomicI64::new(1));
    let update = {
        let next_id = Arc::clone(&next_id);
        move |chat: i64, text: &str| {
            let id = next_id.fetch_add(1, Ordering::SeqCst);
            message(id, chat, id, text)
        }
    };
    let (recording, scraper) = Recording::start(server.url("/metrics"), at::END);

    let traffic = {
        let (recording, webhook, update) = (recording.clone(), webhook.clone(), update.clone());
        std::thread::spawn(move || {
            for n in (0..at::TRAFFIC_UNTIL).step_by(4) {
                recording.at(n);
                for chat in 100..105 {
                    deliver(
                        &webhook,
                        None,
                        &update(chat, "hello"),
                        Duration::from_secs(30),
                    );
                }
            }
        })
    };
    let failures = "botline_processing_failures_total";
    let dlq = "botline_dlq_depth";

    recording.at(at::FLAKY);
    for chat in 200..205 {
        deliver(
            &webhook,
            None,
            &update(chat, "flaky"),
            Duration::from_secs(5),
        );
    }
    recording.until(at::FLAKY + 8, "5 failed attempts", |r| {
        r.value(failures) >= 5.0
    });

    recording.at(at::POISON);
    control.poison.store(true, Ordering::SeqCst);
    deliver(
        &webhook,
        None,
        &update(300, "poison"),
        Duration::from_secs(5),
    );
    recording.until(at::POISON + 6, "a dead letter", |r| r.value(dlq) == 1.0);
    recording.at(at::REDRIVE);
    control.poison.store(false, Ordering::SeqCst);
    let redriven = server.cli(&["dlq", "redrive", "--all"]);
    assert!(
        redriven.status.success(),
        "{}",
        String::from_utf8_lossy(&redriven.stderr)
    );
    recording.until(at::REDRIVE + 6, "the DLQ empty again", |r| {
        r.value(dlq) == 0.0
    });

    recording.at(at::REFUSED);
    standin.block_chat(7000);
    deliver(
        &webhook,
        None,
        &update(7000, "hello"),
        Duration::from_secs(5),
    );
    recording.until(at::REFUSED + 6, "a refused reply", |r| {
        r.value(r#"botline_telegram_calls_total{method="sendMessage",outcome="refused"}"#) == 1.0
    });

    recording.at(at::LOCKED);
    let store = rusqlite::Connection::open(server.data_dir.join("botline.db")).unwrap();
    while store.execute_batch("BEGIN EXCLUSIVE").is_err() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let refused: Vec<Vec<u8>> = (400..405).map(|chat| update(chat, "hello")).collect();
    for body in &refused {
        assert_eq!(common::post(&webhook, None, body).status, 503);
    }
    recording.until(at::UNLOCKED, "5 webhook requests answered 503", |r| {
        r.value(r#"botline_webhook_requests_total{outcome="unavailable"}"#) >= 5.0
    });
    recording.at(at::UNLOCKED);
    store.execute_batch("ROLLBACK").unwrap();
    drop(store);
    // Telegram retries them.
    for body in &refused {
        deliver(&webhook, None, body, Duration::from_secs(5));
    }
    traffic.join().unwrap();

    recording.at(at::BACKLOG);
    let (hang, hanging) = tokio::sync::watch::channel(true);
    *control.hang.lock().unwrap() = Some(hanging);
    // From 8 senders at once, as Telegram's connections (`max_connections`) would.
    std::thread::scope(|scope| {
        for first in 0..8 {
            let (webhook, update) = (&webhook, &update);
            scope.spawn(move || {
                for chat in (10_000 + first..11_200).step_by(8) {
                    let answer = common::post(webhook, None, &update(chat, "backlog"));
                    assert_eq!(answer.status, 200, "{answer:?}");
                }
            });
        }
    });
    recording.until(at::BACKLOG + 20, "more than 1000 updates waiting", |r| {
        r.value(r#"botline_queue_depth{state="pending"}"#) > 1000.0
    });
    recording.at(at::RELEASED);
    hang.send(false).unwrap();
    recording.until(at::RELEASED + 26, "the backlog drained", |r| {
        r.value(r#"botline_queue_depth{state="pending"}"#) == 0.0
            && r.value(r#"botline_queue_depth{state="in_flight"}"#) == 0.0
            && r.value("botline_oldest_pending_age_seconds") == 0.0
    });
    scraper.join().unwrap();
    assert_eq!(recording.value(dlq), 0.0);

    let path = repo(RULE_TESTS);
    let tests = std::fs::read_to_string(&path).unwrap();
    let begin = tests.find(BEGIN_RECORDED).expect("the BEGIN line");
    let begin = begin + tests[begin..].find('\n').unwrap() + 1;
    let end = tests.find(END_RECORDED).expect("the END line");
    let written = format!(
        "{}{}{}",
        &tests[..begin],
        recording.input_series(),
        &tests[end..]
    );
    std::fs::write(&path, written).unwrap();
    assert_eq!(STEP.as_secs_f64() / TICK.as_secs_f64(), STRETCH);
}
