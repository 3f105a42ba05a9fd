//! The load itself: connections that deliver updates the way Telegram does.
//!
//! Each chat is pinned to one connection (chat index modulo connections), and each connection
//! sends one request at a time over one keep-alive HTTP/1.1 connection. So the next update of a
//! chat is sent only after the previous one got its 2xx, as Telegram does, and an update that
//! failed is retried — same body, same `update_id` — before anything behind it on its connection.
//!
//! In open loop a scheduler issues update k at `start + k / rate` to the queue of its chat's
//! connection, and its latency counts from that due time, so time spent queued behind a slow or
//! failing request counts too (no coordinated omission). In closed loop each connection issues its
//! next update as soon as the previous one is done, and latency counts from the first send.

use crate::body::{Chat, Composer, Population, fingerprint};
use crate::config::{BenchError, LoadConfig, LoadLimit, Target, VerifyConfig, unix_micros_now};
use crate::replies::fetch_and_check;
use crate::report::{AckedUpdate, GivenUpUpdate, LatencySummary, Report, new_histogram};
use crate::timeline::Timeline;
use crate::verify::export_and_verify;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The header Telegram puts the webhook's secret token in. Spelled out here, not taken from
/// `botline-core`: the load tool is a client that knows Botline only by its HTTP answers.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// First wait before a retry; doubles after each failure up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two tries of one update.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Runs the load described by `config`, waits until every issued update is acknowledged or given
/// up, checks the store if `config.verify` says so and the bot's replies if `config.replies`
/// does, writes `config.json_out` and `config.plot` if
/// set, and returns what it measured. Fails only when the configuration is invalid, the host does
/// not resolve, the store's export never runs, or a file cannot be written; a server that fails
/// requests is measured, not an error.
pub async fn run(config: LoadConfig) -> Result<Report, BenchError> {
    let prepared = Prepared::new(&config).await?;
    let live = Arc::new(Live::new(Instant::now(), 0));
    let mut report = prepared.run(&config, live).await?;
    if let Some(verify_config) = config.verify.clone() {
        report = verify_store(report, verify_config).await?;
    }
    if let Some(replies_config) = config.replies.clone() {
        let (mut checked, replies) = tokio::task::spawn_blocking(move || {
            let replies = fetch_and_check(&report, &replies_config);
            (report, replies)
        })
        .await
        .map_err(|e| BenchError::Task(e.to_string()))?;
        checked.replies = Some(replies?);
        report = checked;
    }
    write_outputs(&config, &report)?;
    Ok(report)
}

/// Checks the store after the load (blocking, so on the blocking pool).
pub(crate) async fn verify_store(
    report: Report,
    verify_config: VerifyConfig,
) -> Result<Report, BenchError> {
    let (mut report, verification) = tokio::task::spawn_blocking(move || {
        let verification = export_and_verify(&report, &verify_config);
        (report, verification)
    })
    .await
    .map_err(|e| BenchError::Task(e.to_string()))?;
    report.verification = Some(verification?);
    Ok(report)
}

/// Writes the JSON report and the plot, when asked for.
pub(crate) fn write_outputs(config: &LoadConfig, report: &Report) -> Result<(), BenchError> {
    if let Some(path) = &config.json_out {
        write_json(path, report)?;
    }
    if let Some(path) = &config.plot {
        crate::plot::write_svg(report, path)?;
    }
    Ok(())
}

/// A checked configuration with its resolved address and its chats: everything the load needs
/// before its clock starts.
pub(crate) struct Prepared {
    target: Arc<Target>,
    addrs: Arc<[SocketAddr]>,
    first_update_id: u64,
    pub(crate) seed: u64,
    connections: usize,
    parts: Vec<Vec<Chat>>,
}

impl Prepared {
    /// Checks `config`, resolves its host and draws its chats.
    pub(crate) async fn new(config: &LoadConfig) -> Result<Self, BenchError> {
        let target = Arc::new(config.target()?);
        config.check_outputs()?;
        let addrs: Arc<[SocketAddr]> = tokio::net::lookup_host(target.authority.as_str())
            .await
            .map_err(|source| BenchError::Resolve {
                host: target.authority.clone(),
                source,
            })?
            .collect::<Vec<_>>()
            .into();
        if addrs.is_empty() {
            return Err(BenchError::Resolve {
                host: target.authority.clone(),
                source: std::io::Error::other("no addresses"),
            });
        }
        let first_update_id = config.first_update_id_or_now();
        let seed = config.seed.unwrap_or_else(|| mix(first_update_id));
        let connections = config.connections.min(config.chats);
        let parts = Population::generate(seed, config.chats).split(connections);
        Ok(Self {
            target,
            addrs,
            first_update_id,
            seed,
            connections,
            parts,
        })
    }

    /// Runs the load from `live.start` until every issued update is acknowledged or given up.
    pub(crate) async fn run(
        self,
        config: &LoadConfig,
        live: Arc<Live>,
    ) -> Result<Report, BenchError> {
        let Self {
            target,
            addrs,
            first_update_id,
            seed,
            connections,
            parts,
        } = self;
        let next_seq = Arc::new(AtomicU64::new(0));
        let started_at_unix_ms =
            unix_micros_now() / 1000 - i64::try_from(live.start.elapsed().as_millis()).unwrap_or(0);
        let start = live.start;
        let (stop_at, max_updates) = match config.limit {
            LoadLimit::Duration(d) => (Some(start + d), None),
            LoadLimit::Updates(n) => (None, Some(n)),
        };

        let mut queues = Vec::with_capacity(connections);
        let mut workers: Vec<JoinHandle<WorkerStats>> = Vec::with_capacity(connections);
        for (index, chats) in parts.into_iter().enumerate() {
            let index = index as u64;
            let source = if config.rate.is_some() {
                let (sender, receiver) = mpsc::unbounded_channel();
                queues.push(sender);
                Source::Open(receiver)
            } else {
                Source::Closed {
                    next_seq: Arc::clone(&next_seq),
                    stop_at,
                    max_updates,
                    rng: Box::new(StdRng::seed_from_u64(mix(seed ^ (index + 1)))),
                    live: Arc::clone(&live),
                }
            };
            let worker = Worker {
                target: Arc::clone(&target),
                addrs: Arc::clone(&addrs),
                chats,
                composer: Composer::new(mix(seed.wrapping_add(1_000 + index))),
                first_update_id,
                give_up: config.give_up,
                request_timeout: config.request_timeout,
                conn: None,
                failing_since: None,
                live: Arc::clone(&live),
                stats: WorkerStats::new(start),
            };
            workers.push(tokio::spawn(worker.run(source)));
        }

        let scheduler = config.rate.map(|rate| {
            tokio::spawn(schedule(
                rate,
                config.limit,
                start,
                config.chats,
                mix(seed.wrapping_add(7)),
                queues,
                Arc::clone(&live),
            ))
        });
        // `target()` checked that a flood comes with a duration.
        let flood = config
            .flood
            .clone()
            .zip(stop_at)
            .map(|(flood_config, stop_at)| {
                let server = addrs.iter().copied().find(SocketAddr::is_ipv4);
                let target = Arc::clone(&target);
                tokio::spawn(async move {
                    let Some(server) = server else {
                        return Err(BenchError::Config(
                            "the flood needs an IPv4 server address".to_owned(),
                        ));
                    };
                    crate::flood::flood(flood_config, target, server, stop_at).await
                })
            });
        let done = Arc::new(tokio::sync::Notify::new());
        let progress = config.progress.then(|| {
            tokio::spawn(show_progress(
                Arc::clone(&live),
                config.limit,
                Arc::clone(&done),
            ))
        });

        let mut stats = Vec::with_capacity(workers.len());
        let mut failure = None;
        for worker in workers {
            match worker.await {
                Ok(s) => stats.push(s),
                Err(e) => failure = Some(BenchError::Task(e.to_string())),
            }
        }
        if let Some(scheduler) = scheduler
            && let Err(e) = scheduler.await
        {
            failure = Some(BenchError::Task(e.to_string()));
        }
        if let Some(progress) = progress {
            done.notify_one();
            let _ = progress.await;
        }
        let flood_report = match flood {
            Some(task) => match task.await {
                Ok(Ok(report)) => Some(report),
                Ok(Err(error)) => return Err(error),
                Err(e) => return Err(BenchError::Task(e.to_string())),
            },
            None => None,
        };
        if let Some(error) = failure {
            return Err(error);
        }

        let finished = stats.iter().map(|s| s.finished).max().unwrap_or(start);
        let timeline = live.timeline.finish(finished);
        let mut report = summarize(
            config,
            connections,
            first_update_id,
            started_at_unix_ms,
            start,
            stats,
        );
        report.seed = seed;
        report.flood = flood_report;
        report.timeline = timeline;
        Ok(report)
    }
}

/// Writes the report as pretty JSON.
fn write_json(path: &std::path::Path, report: &Report) -> Result<(), BenchError> {
    let error = |source| BenchError::Write {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(error)?;
    let mut writer = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut writer, report).map_err(|e| error(e.into()))?;
    writer.write_all(b"\n").map_err(error)?;
    writer.flush().map_err(error)
}

/// Merges what the connections measured into a report.
fn summarize(
    config: &LoadConfig,
    connections: usize,
    first_update_id: u64,
    started_at_unix_ms: i64,
    start: Instant,
    stats: Vec<WorkerStats>,
) -> Report {
    let mut latency = new_histogram();
    let mut non_2xx_by_status = BTreeMap::new();
    let mut connection_errors_by_kind = BTreeMap::new();
    let (mut retries, mut updates_sent) = (0, 0);
    let mut acked_updates = Vec::new();
    let mut given_up_updates = Vec::new();
    let mut finished = start;
    for s in stats {
        // Same bounds on both sides, so adding cannot fail.
        let _ = latency.add(&s.latency);
        for (status, count) in s.statuses {
            *non_2xx_by_status.entry(status).or_insert(0) += count;
        }
        for (kind, count) in s.errors {
            *connection_errors_by_kind
                .entry(kind.to_owned())
                .or_insert(0) += count;
        }
        retries += s.retries;
        updates_sent += s.sent;
        acked_updates.extend(s.acked);
        given_up_updates.extend(s.given_up);
        finished = finished.max(s.finished);
    }
    acked_updates.sort_by_key(|a| a.update_id);
    given_up_updates.sort_by_key(|g| g.update_id);
    let duration_secs = finished.duration_since(start).as_secs_f64();
    let acknowledged = acked_updates.len() as u64;
    Report {
        mode: if config.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_owned(),
        target_rate: config.rate,
        connections,
        chats: config.chats,
        first_update_id,
        seed: 0,
        started_at_unix_ms,
        duration_secs,
        updates_sent,
        acknowledged,
        throughput_per_sec: if duration_secs > 0.0 {
            acknowledged as f64 / duration_secs
        } else {
            0.0
        },
        ack_latency: LatencySummary::from_micros(&latency),
        non_2xx_by_status,
        connection_errors: connection_errors_by_kind.values().sum(),
        connection_errors_by_kind,
        retries,
        given_up: given_up_updates.len() as u64,
        given_up_updates,
        acked_updates,
        flood: None,
        verification: None,
        replies: None,
        timeline: Vec::new(),
        server: None,
    }
}

/// Open loop: issues update k to its chat's connection at `start + k / rate`, until the limit.
async fn schedule(
    rate: f64,
    limit: LoadLimit,
    start: Instant,
    chats: usize,
    seed: u64,
    queues: Vec<mpsc::UnboundedSender<Job>>,
    live: Arc<Live>,
) {
    let connections = queues.len().max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    for seq in 0u64.. {
        let due = start + Duration::from_secs_f64(seq as f64 / rate);
        let done = match limit {
            LoadLimit::Updates(max) => seq >= max,
            LoadLimit::Duration(d) => due >= start + d,
        };
        if done || live.is_abandoned() {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let chat = rng.random_range(0..chats);
        let job = Job {
            seq,
            chat: chat / connections,
            due: Some(due),
        };
        let Some(queue) = queues.get(chat % connections) else {
            break;
        };
        if queue.send(job).is_err() {
            break;
        }
    }
}

/// Shows a progress bar on stderr, redrawn four times a second, until `done` is notified: for
/// a count of updates, updates done (acknowledged or given up) of the count; for a duration,
/// seconds of it; beside it acknowledgements per second over the last second, retries, failed
/// requests, updates given up and kills.
async fn show_progress(live: Arc<Live>, limit: LoadLimit, done: Arc<tokio::sync::Notify>) {
    let (len, unit) = match limit {
        LoadLimit::Updates(n) => (n, "updates"),
        LoadLimit::Duration(d) => (d.as_secs().max(1), "s"),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
    // The message is cut to the terminal's width: the most telling numbers first.
    let template = format!(
        "[{{elapsed_precise}}] [{{bar:20}}] {{pos}}/{{len}} {unit}, eta {{eta}}: {{wide_msg}}"
    );
    bar.set_style(
        ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    // (when, acknowledged) of the last four ticks, for the rate over the last second.
    let mut window = std::collections::VecDeque::from([(live.start, 0)]);
    let mut finished = false;
    while !finished {
        tokio::select! {
            _ = ticks.tick() => {}
            () = done.notified() => finished = true,
        }
        let now = Instant::now();
        let acked = live.acked.load(Ordering::Relaxed);
        let position = match limit {
            LoadLimit::Updates(_) => acked + live.given_up.load(Ordering::Relaxed),
            LoadLimit::Duration(_) => now.duration_since(live.start).as_secs(),
        };
        let (then, acked_then) = window.front().copied().unwrap_or((live.start, 0));
        let seconds = now.duration_since(then).as_secs_f64();
        let rate = if seconds > 0.0 {
            (acked - acked_then) as f64 / seconds
        } else {
            0.0
        };
        window.push_back((now, acked));
        if window.len() > 4 {
            window.pop_front();
        }
        let kills = match live.kills_planned {
            0 => String::new(),
            planned => format!(", kills {}/{planned}", live.kills.load(Ordering::Relaxed)),
        };
        bar.set_message(format!(
            "{rate:.0} acks/s, {} retries, {} errors{kills}, {} given up, {acked} acked",
            live.retries.load(Ordering::Relaxed),
            live.failures.load(Ordering::Relaxed),
            live.given_up.load(Ordering::Relaxed),
        ));
        bar.set_position(position.min(len));
    }
    bar.finish();
}

/// SplitMix64: spreads a seed so that neighbouring inputs give unrelated streams.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What the connections, the progress bar and a managed server's supervisor share while a run
/// goes on: totals so far, the run second by second, and whether the run was cut short.
#[derive(Debug)]
pub(crate) struct Live {
    /// When the load started.
    pub(crate) start: Instant,
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) given_up: AtomicU64,
    /// Kills of a managed server, planned and done.
    pub(crate) kills_planned: u32,
    pub(crate) kills: AtomicU32,
    abandoned: AtomicBool,
    pub(crate) timeline: Timeline,
}

impl Live {
    pub(crate) fn new(start: Instant, kills_planned: u32) -> Self {
        Self {
            start,
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            given_up: AtomicU64::new(0),
            kills_planned,
            kills: AtomicU32::new(0),
            abandoned: AtomicBool::new(false),
            timeline: Timeline::new(start),
        }
    }

    /// Cuts the run short: no new update is issued, and one that fails is given up at once.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    /// A managed server was killed.
    pub(crate) fn record_kill(&self) {
        self.kills.fetch_add(1, Ordering::Relaxed);
        self.timeline.kill();
    }
}

/// One update to issue: its sequence number (update id − first update id), its chat (index
/// among the connection's chats) and, in open loop, when it is due.
#[derive(Debug)]
struct Job {
    seq: u64,
    chat: usize,
    due: Option<Instant>,
}

/// Where a connection gets its next update from.
enum Source {
    /// Issued by the open-loop scheduler.
    Open(mpsc::UnboundedReceiver<Job>),
    /// Closed loop: the next sequence number, shared by all connections, on a chat of its own.
    Closed {
        next_seq: Arc<AtomicU64>,
        stop_at: Option<Instant>,
        max_updates: Option<u64>,
        rng: Box<StdRng>,
        live: Arc<Live>,
    },
}

impl Source {
    async fn next(&mut self, chats: usize) -> Option<Job> {
        match self {
            Self::Open(queue) => queue.recv().await,
            Self::Closed {
                next_seq,
                stop_at,
                max_updates,
                rng,
                live,
            } => {
                if chats == 0
                    || stop_at.is_some_and(|at| Instant::now() >= at)
                    || live.is_abandoned()
                {
                    return None;
                }
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                if max_updates.is_some_and(|max| seq >= max) {
                    return None;
                }
                Some(Job {
                    seq,
                    chat: rng.random_range(0..chats),
                    due: None,
                })
            }
        }
    }
}

/// What one connection measured.
struct WorkerStats {
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<&'static str, u64>,
    retries: u64,
    sent: u64,
    acked: Vec<AckedUpdate>,
    given_up: Vec<GivenUpUpdate>,
    finished: Instant,
}

impl WorkerStats {
    fn new(start: Instant) -> Self {
        Self {
            latency: new_histogram(),
            statuses: BTreeMap::new(),
            errors: BTreeMap::new(),
            retries: 0,
            sent: 0,
            acked: Vec::new(),
            given_up: Vec::new(),
            finished: start,
        }
    }
}

/// One open HTTP/1.1 connection. Dropping it closes it.
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Conn {
    async fn open(addrs: &[SocketAddr]) -> Result<Self, FailureKind> {
        let stream = TcpStream::connect(addrs)
            .await
            .map_err(|_| FailureKind::Connect)?;
        stream.set_nodelay(true).map_err(|_| FailureKind::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| FailureKind::Connect)?;
        // The connection's errors surface through `sender`; nothing to do with them here.
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender, driver })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy)]
enum FailureKind {
    /// Could not connect (refused, reset during the handshake).
    Connect,
    /// The connection broke while sending or before the answer's head.
    Send,
    /// The connection broke while reading the answer's body.
    Body,
    /// No whole answer within the request timeout.
    Timeout,
}

impl FailureKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Send => "send",
            Self::Body => "body",
            Self::Timeout => "timeout",
        }
    }
}

/// The outcome of one request.
enum Outcome {
    Acked,
    Rejected(StatusCode),
    Failed(FailureKind),
}

/// One connection and the chats pinned to it.
struct Worker {
    target: Arc<Target>,
    addrs: Arc<[SocketAddr]>,
    chats: Vec<Chat>,
    composer: Composer,
    first_update_id: u64,
    give_up: Duration,
    request_timeout: Duration,
    conn: Option<Conn>,
    /// When the current run of failed requests on this connection began.
    failing_since: Option<Instant>,
    live: Arc<Live>,
    stats: WorkerStats,
}

impl Worker {
    async fn run(mut self, mut source: Source) -> WorkerStats {
        while let Some(job) = source.next(self.chats.len()).await {
            self.deliver(job).await;
            self.stats.finished = Instant::now();
        }
        self.stats
    }

    /// Sends one update until it is acknowledged or given up.
    async fn deliver(&mut self, job: Job) {
        let Some(chat) = self.chats.get_mut(job.chat) else {
            return;
        };
        let update = self.composer.compose(
            chat,
            self.first_update_id.saturating_add(job.seq),
            unix_micros_now() / 1_000_000,
        );
        let first_sent_unix_us = unix_micros_now();
        let first_try = Instant::now();
        let origin = job.due.unwrap_or(first_try);
        self.stats.sent += 1;
        self.live.sent.fetch_add(1, Ordering::Relaxed);

        let mut backoff = INITIAL_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.attempt(&update.body).await {
                Outcome::Acked => {
                    let micros = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
                    self.stats.latency.saturating_record(micros);
                    self.live.timeline.acknowledged(micros);
                    self.stats.acked.push(AckedUpdate {
                        update_id: update.update_id,
                        chat_id: update.chat_id,
                        message_id: update.message_id,
                        first_sent_unix_us,
                        attempts,
                        body_len: update.body.len(),
                        body_fnv1a: format!("{:016x}", fingerprint(&update.body)),
                        body: Some(update.body.clone()),
                    });
                    self.live.acked.fetch_add(1, Ordering::Relaxed);
                    self.failing_since = None;
                    return;
                }
                Outcome::Rejected(status) => {
                    *self.stats.statuses.entry(status.as_u16()).or_insert(0) += 1;
                    self.live.timeline.non_2xx();
                }
                Outcome::Failed(kind) => {
                    *self.stats.errors.entry(kind.as_str()).or_insert(0) += 1;
                    self.live.timeline.connection_error();
                }
            }
            self.live.failures.fetch_add(1, Ordering::Relaxed);

            let streak_start = *self.failing_since.get_or_insert(first_try);
            let deadline = streak_start.min(first_try) + self.give_up;
            let now = Instant::now();
            if now >= deadline || self.live.is_abandoned() {
                self.stats.given_up.push(GivenUpUpdate {
                    update_id: update.update_id,
                    chat_id: update.chat_id,
                    message_id: update.message_id,
                    attempts,
                });
                self.live.given_up.fetch_add(1, Ordering::Relaxed);
                self.live.timeline.given_up();
                return;
            }
            self.stats.retries += 1;
            self.live.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One request with the body, on the open connection or a new one. A connection that broke
    /// or timed out is dropped, so the next try reconnects.
    async fn attempt(&mut self, body: &Bytes) -> Outcome {
        let exchange = exchange(&mut self.conn, &self.target, &self.addrs, body.clone());
        let outcome = match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(Ok(status)) if status.is_success() => return Outcome::Acked,
            Ok(Ok(status)) => return Outcome::Rejected(status),
            Ok(Err(kind)) => Outcome::Failed(kind),
            Err(_) => Outcome::Failed(FailureKind::Timeout),
        };
        self.conn = None;
        outcome
    }
}

/// A webhook POST of `body` to `target`, with `secret` in Telegram's header when given.
pub(crate) fn webhook_request(
    target: &Target,
    secret: Option<&HeaderValue>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let mut request = Request::post(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, "application/json");
    if let Some(secret) = secret {
        request = request.header(SECRET_HEADER, secret.clone());
    }
    request.body(Full::new(body))
}

/// Sends the body and reads the whole answer (so the connection can carry the next request).
async fn exchange(
    conn: &mut Option<Conn>,
    target: &Target,
    addrs: &[SocketAddr],
    body: Bytes,
) -> Result<StatusCode, FailureKind> {
    if conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
        *conn = None;
        *conn = Some(Conn::open(addrs).await?);
    }
    let Some(conn) = conn.as_mut() else {
        return Err(FailureKind::Connect);
    };
    conn.sender.ready().await.map_err(|_| FailureKind::Send)?;
    // Path, host and secret were checked when the target was built.
    let request =
        webhook_request(target, target.secret.as_ref(), body).map_err(|_| FailureKind::Send)?;
    let response = conn
        .sender
        .send_request(request)
        .await
        .map_err(|_| FailureKind::Send)?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|_| FailureKind::Body)?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_spreads_neighbours() {
        assert_ne!(mix(1), mix(2));
        assert_ne!(mix(0), 0);
    }
}
