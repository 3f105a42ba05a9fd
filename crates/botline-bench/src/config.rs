//! What a run does: [`LoadConfig`], and the checks that turn it into a target to send to.

use crate::flood::FloodConfig;
use crate::replies::RepliesConfig;
use hyper::Uri;
use hyper::header::HeaderValue;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most connections a run may open, as Telegram's `max_connections` allows.
pub const MAX_CONNECTIONS: usize = 100;

/// When a run stops issuing new updates. Updates already issued are still delivered (or given
/// up) before [`crate::run`] returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadLimit {
    /// Issue updates for this long from the start.
    Duration(Duration),
    /// Issue exactly this many updates.
    Updates(u64),
}

/// The store a run is checked against.
#[derive(Clone, PartialEq)]
pub enum VerifyStore {
    /// The embedded store in this `--data-dir`.
    DataDir(PathBuf),
    /// A Postgres database (`--backend postgres`), handed to the export in
    /// `BOTLINE_DATABASE_URL`, never on its command line.
    Postgres { database_url: String },
}

impl fmt::Debug for VerifyStore {
    /// Leaves the database URL out: it may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DataDir(dir) => f.debug_tuple("DataDir").field(dir).finish(),
            Self::Postgres { .. } => f.write_str("Postgres { .. }"),
        }
    }
}

/// Where to read the store back from after the load, to check what was acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyConfig {
    /// The store of the Botline being checked.
    pub store: VerifyStore,
    /// The `botline` binary, run as `<bin> messages export <store> --format jsonl`.
    pub botline_bin: PathBuf,
    /// How long to keep exporting until every acknowledged update is present.
    pub timeout: Duration,
}

impl VerifyConfig {
    /// Checks the embedded store in `data_dir` with `botline_bin`, waiting up to 30 s for the
    /// worker.
    pub fn new(data_dir: impl Into<PathBuf>, botline_bin: impl Into<PathBuf>) -> Self {
        Self::of(VerifyStore::DataDir(data_dir.into()), botline_bin)
    }

    /// Checks `store` with `botline_bin`, waiting up to 30 s for the worker.
    pub fn of(store: VerifyStore, botline_bin: impl Into<PathBuf>) -> Self {
        Self {
            store,
            botline_bin: botline_bin.into(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The export command for this store.
    pub(crate) fn export_command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.botline_bin);
        command.args(["messages", "export"]);
        match &self.store {
            VerifyStore::DataDir(dir) => {
                // The embedded store in that directory, whatever the environment says.
                command
                    .arg("--data-dir")
                    .arg(dir)
                    .env_remove("BOTLINE_BACKEND");
            }
            VerifyStore::Postgres { database_url } => {
                command
                    .args(["--backend", "postgres"])
                    .env("BOTLINE_DATABASE_URL", database_url);
            }
        }
        command.args(["--format", "jsonl"]);
        command
    }
}

/// Everything a run does. `Default` is a 10-second closed-loop run of 40 connections and 1000
/// chats against `http://127.0.0.1:8080/telegram/webhook` without a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// The webhook URL; `http` only (Botline sits behind a TLS terminator in production).
    pub url: String,
    /// Sent as `X-Telegram-Bot-Api-Secret-Token` when set.
    pub secret: Option<String>,
    /// Concurrent keep-alive connections, 1..=100. More than `chats` are not opened: a
    /// connection only carries the chats pinned to it (chat index modulo connections).
    pub connections: usize,
    /// How many distinct chats the updates are spread over (uniformly).
    pub chats: usize,
    /// Open loop at this many updates per second (update k is due at start + k / rate, and its
    /// latency counts from then); `None` is a closed loop, each connection sending its next
    /// update as soon as the previous one is acknowledged.
    pub rate: Option<f64>,
    /// When to stop issuing updates.
    pub limit: LoadLimit,
    /// The `update_id` of the first update; the k-th has `first_update_id + k`. `None` takes the
    /// current unix time in milliseconds × 1000, so that reruns against the same store do not
    /// collide with the ids it already deduplicates.
    pub first_update_id: Option<u64>,
    /// Seed of the chats, users and texts. `None` derives it from the first update id, so reruns
    /// draw other chat ids too.
    pub seed: Option<u64>,
    /// An update that is not acknowledged this long after its first try is given up (lost by the
    /// client). The clock starts at the update's first try or, if earlier, at the start of its
    /// connection's current run of failures, so that a dead server drains a backlog in one try
    /// per update instead of one `give_up` each.
    pub give_up: Duration,
    /// Longest wait for one request (connect, send, whole answer); past it the connection is
    /// dropped and the update retried.
    pub request_timeout: Duration,
    /// Also flood the server from other addresses while the load runs (see [`FloodConfig`]).
    pub flood: Option<FloodConfig>,
    /// After the load, check the store (see [`VerifyConfig`]).
    pub verify: Option<VerifyConfig>,
    /// After the load (and the store's check), check the bot's replies at a Bot API stand-in
    /// (see [`crate::replies`]).
    pub replies: Option<RepliesConfig>,
    /// Also write the report as JSON to this file.
    pub json_out: Option<PathBuf>,
    /// Also draw the run over time as an SVG to this file (see [`crate::plot`]).
    pub plot: Option<PathBuf>,
    /// Show a progress bar on stderr. The binary turns it on when stderr is a terminal.
    pub progress: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080/telegram/webhook".to_owned(),
            secret: None,
            connections: 40,
            chats: 1000,
            rate: None,
            limit: LoadLimit::Duration(Duration::from_secs(10)),
            first_update_id: None,
            seed: None,
            give_up: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            flood: None,
            verify: None,
            replies: None,
            json_out: None,
            plot: None,
            progress: false,
        }
    }
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("cannot read the replies at {url}: {detail}")]
    Replies { url: String, detail: String },
    #[error("cannot export messages with {bin}: {detail}")]
    Export { bin: String, detail: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a load task failed: {0}")]
    Task(String),
    #[error("managed server: {0}")]
    Server(String),
    #[error("cannot draw the plot: {0}")]
    Plot(String),
}

/// The checked form of the URL and secret: what every request carries.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `host:port`, to resolve and for the `Host` header.
    pub authority: String,
    /// Path and query of the request line.
    pub path: String,
    pub secret: Option<HeaderValue>,
}

impl LoadConfig {
    /// Checks the options and the URL.
    pub(crate) fn target(&self) -> Result<Target, BenchError> {
        let invalid = |message: String| Err(BenchError::Config(message));
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return invalid(format!(
                "connections must be 1..={MAX_CONNECTIONS}, not {}",
                self.connections
            ));
        }
        if self.flood.is_some() && !matches!(self.limit, LoadLimit::Duration(_)) {
            return invalid("a flood needs a duration, not a count of updates".to_owned());
        }
        if self.chats == 0 {
            return invalid("chats must be at least 1".to_owned());
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0)
        {
            return invalid(format!("rate must be a positive number, not {rate}"));
        }
        match self.limit {
            LoadLimit::Duration(d) if d.is_zero() => {
                return invalid("duration must be more than zero".to_owned());
            }
            LoadLimit::Updates(0) => return invalid("updates must be at least 1".to_owned()),
            _ => {}
        }
        if self.request_timeout.is_zero() {
            return invalid("request timeout must be more than zero".to_owned());
        }
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e| BenchError::Config(format!("url {:?}: {e}", self.url)))?;
        if uri.scheme_str() != Some("http") {
            return invalid(format!("url {:?} must start with http://", self.url));
        }
        let Some(host) = uri.host() else {
            return invalid(format!("url {:?} has no host", self.url));
        };
        let port = uri.port_u16().unwrap_or(80);
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let secret = self
            .secret
            .as_deref()
            .map(|s| {
                HeaderValue::from_str(s).map_err(|_| {
                    BenchError::Config("secret must be visible ASCII characters".to_owned())
                })
            })
            .transpose()?;
        Ok(Target {
            authority,
            path,
            secret,
        })
    }

    /// Checks the options, the URL and the output files' directories, as a run does before it
    /// starts: to fail before starting anything else.
    pub fn check(&self) -> Result<(), BenchError> {
        self.target()?;
        self.check_outputs()
    }

    /// Fails when the report or the plot could not be written for want of a directory, before
    /// the run rather than after it.
    pub(crate) fn check_outputs(&self) -> Result<(), BenchError> {
        for path in self.json_out.iter().chain(&self.plot) {
            let directory = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => std::path::Path::new("."),
            };
            if !directory.is_dir() {
                return Err(BenchError::Write {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no directory {}", directory.display()),
                    ),
                });
            }
        }
        Ok(())
    }

    /// The first update id this run uses.
    pub(crate) fn first_update_id_or_now(&self) -> u64 {
        self.first_update_id
            .unwrap_or_else(|| unix_micros_now().unsigned_abs() / 1000 * 1000)
    }
}

/// Microseconds since the unix epoch (0 if the clock is before it).
pub(crate) fn unix_micros_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Reads a duration as people type it: `10s`, `500ms`, `1.5s`, `2m`, `1h`, or bare seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }

    #[test]
    fn checks_the_target() {
        let config = LoadConfig {
            url: "http://localhost:9000/telegram/webhook?x=1".to_owned(),
            secret: Some("s3cret".to_owned()),
            ..LoadConfig::default()
        };
        let target = config.target().expect("valid");
        assert_eq!(target.authority, "localhost:9000");
        assert_eq!(target.path, "/telegram/webhook?x=1");
        assert!(target.secret.is_some());

        let bad = |change: fn(&mut LoadConfig)| {
            let mut config = LoadConfig::default();
            change(&mut config);
            config.target().is_err()
        };
        assert!(bad(|c| c.connections = 0));
        assert!(bad(|c| c.connections = 101));
        assert!(bad(|c| c.chats = 0));
        assert!(bad(|c| c.rate = Some(0.0)));
        assert!(bad(|c| c.limit = LoadLimit::Updates(0)));
        assert!(bad(|c| c.url = "https://example.com/".to_owned()));
        assert!(bad(|c| c.secret = Some("line\nbreak".to_owned())));
    }

    #[test]
    fn outputs_need_a_directory() {
        let with = |json_out: &str, plot: &str| LoadConfig {
            json_out: Some(PathBuf::from(json_out)),
            plot: Some(PathBuf::from(plot)),
            ..LoadConfig::default()
        };
        assert!(with("report.json", "/tmp/plot.svg").check_outputs().is_ok());
        let error = with("report.json", "/nonexistent/plot.svg")
            .check_outputs()
            .expect_err("no such directory");
        assert!(
            error.to_string().contains("no directory /nonexistent"),
            "{error}"
        );
    }
}
