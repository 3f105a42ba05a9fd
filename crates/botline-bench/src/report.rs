//! What a run found: [`Report`], printed for people by its `Display` and saved as JSON by serde.

use crate::flood::FloodReport;
use crate::replies::ReplyCheck;
use crate::timeline::SecondStats;
use crate::verify::Verification;
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
pub(crate) const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;

/// A new latency histogram in microseconds.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3)
        .expect("constant bounds that hdrhistogram accepts")
}

/// Percentiles of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// How many latencies were recorded.
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// The percentiles of a histogram of microseconds (all zero when it is empty).
    pub fn from_micros(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 0 {
            return f.write_str("no samples");
        }
        write!(
            f,
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, n={})",
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.mean_ms,
            self.count
        )
    }
}

/// An update the server acknowledged with a 2xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckedUpdate {
    pub update_id: u64,
    pub chat_id: i64,
    pub message_id: i64,
    /// When the first request carrying it was sent, unix microseconds (this machine's clock).
    pub first_sent_unix_us: i64,
    /// Requests it took, the acknowledged one included.
    pub attempts: u32,
    /// The body's length in bytes.
    pub body_len: usize,
    /// 64-bit FNV-1a of the body, as 16 hex digits ([`crate::body::fingerprint`]).
    pub body_fnv1a: String,
    /// The body itself; kept in memory for an exact comparison, not saved in JSON.
    #[serde(skip)]
    pub body: Option<Bytes>,
}

/// An update that was issued but not acknowledged before `give_up` passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GivenUpUpdate {
    pub update_id: u64,
    pub chat_id: i64,
    pub message_id: i64,
    pub attempts: u32,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `"open"` (with `target_rate`) or `"closed"`.
    pub mode: String,
    /// Updates per second asked for in open loop.
    pub target_rate: Option<f64>,
    /// Connections used (at most one per chat).
    pub connections: usize,
    pub chats: usize,
    pub first_update_id: u64,
    /// The seed of chats, users and texts (and of a managed server's kills): `--seed` replays it.
    #[serde(default)]
    pub seed: u64,
    /// When the load started, unix milliseconds.
    pub started_at_unix_ms: i64,
    /// From the start until the last update was acknowledged or given up, seconds.
    pub duration_secs: f64,
    /// Distinct updates issued (each sent at least once).
    pub updates_sent: u64,
    /// Updates answered with a 2xx.
    pub acknowledged: u64,
    /// `acknowledged / duration_secs`.
    pub throughput_per_sec: f64,
    /// From the due time (open loop) or the first send (closed loop) to the 2xx, retries included.
    pub ack_latency: LatencySummary,
    /// Non-2xx answers by status code.
    pub non_2xx_by_status: BTreeMap<u16, u64>,
    /// Requests that got no answer: all kinds together.
    pub connection_errors: u64,
    /// Requests that got no answer, by kind: `connect`, `send`, `body`, `timeout`.
    pub connection_errors_by_kind: BTreeMap<String, u64>,
    /// Requests repeated after a failure.
    pub retries: u64,
    /// Updates given up (lost by the client, never acknowledged).
    pub given_up: u64,
    pub given_up_updates: Vec<GivenUpUpdate>,
    /// Every acknowledged update, by `update_id`.
    pub acked_updates: Vec<AckedUpdate>,
    /// What the flood from other addresses got, when one was sent.
    pub flood: Option<FloodReport>,
    /// The check of the store, when one was asked for.
    pub verification: Option<Verification>,
    /// The check of the bot's replies at a Bot API stand-in, when one was asked for.
    #[serde(default)]
    pub replies: Option<ReplyCheck>,
    /// The run second by second, from the start of the load to its end.
    #[serde(default)]
    pub timeline: Vec<SecondStats>,
    /// The server the run started itself ([`crate::run_managed`]), its kills and its memory.
    #[serde(default)]
    pub server: Option<ServerReport>,
}

impl Report {
    /// Whether nothing acknowledged is missing, duplicated or altered in the store (true when the
    /// store was not checked), and every reply checked arrived exactly once (true when the
    /// replies were not checked).
    pub fn verified_ok(&self) -> bool {
        self.verification.as_ref().is_none_or(Verification::is_ok)
            && self.replies.as_ref().is_none_or(ReplyCheck::is_ok)
    }

    /// Whether a managed server ran until it was stopped: it did not die on its own (true when
    /// the run managed no server).
    pub fn server_ok(&self) -> bool {
        self.server.as_ref().is_none_or(|s| s.died.is_none())
    }

    /// A managed server's resident memory over time: (second of the load, KiB), one sample a
    /// second while it was up.
    pub fn rss_series(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.timeline
            .iter()
            .filter_map(|s| s.server_rss_kib.map(|kib| (s.second, kib)))
    }
}

/// The `botline serve` a run started itself, killed and restarted, and stopped at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerReport {
    /// The binary, run as `<bin> serve`.
    pub bin: PathBuf,
    /// Its data directory; kept after the run.
    pub data_dir: PathBuf,
    /// Its stdout and stderr, across restarts.
    pub log: PathBuf,
    /// The loopback address it listened on.
    pub listen: String,
    /// SIGKILLs asked for.
    pub kills_planned: u32,
    /// SIGKILLs done, each followed by a restart on the same data directory and port.
    pub kills: u32,
    /// The seed of the kills' moments and downtimes.
    pub kill_seed: Option<u64>,
    /// RSS samples taken (one a second while the server was up).
    pub rss_samples: u64,
    /// The largest RSS sample, KiB.
    pub max_rss_kib: Option<u64>,
    /// The largest RSS sample in the second third of the load, KiB (after warm-up).
    pub rss_second_third_max_kib: Option<u64>,
    /// The largest RSS sample in the last third of the load, KiB: far above the second third
    /// means the server keeps growing.
    pub rss_last_third_max_kib: Option<u64>,
    /// How the server ended when it died on its own (not by a kill of this run); the load was
    /// then cut short and the store not checked.
    pub died: Option<String>,
    /// How it ended when stopped with SIGTERM at the end.
    pub stop: String,
    /// Whether it exited with status 0 after SIGTERM, in time.
    pub stopped_cleanly: bool,
}

impl fmt::Display for ServerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |kib: Option<u64>| {
            kib.map_or_else(|| "-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
        };
        writeln!(
            f,
            "  server              {} serve on {}",
            self.bin.display(),
            self.listen
        )?;
        writeln!(
            f,
            "  data dir            {} (kept; log {})",
            self.data_dir.display(),
            self.log.display()
        )?;
        if self.kills_planned > 0 {
            writeln!(
                f,
                "  kills               {} of {} (SIGKILL, restarted on the same data dir and port; seed {})",
                self.kills,
                self.kills_planned,
                self.kill_seed
                    .map_or_else(|| "-".to_owned(), |s| s.to_string())
            )?;
        }
        writeln!(
            f,
            "  server RSS (MiB)    max {}  (second third max {}, last third max {}; {} samples)",
            mib(self.max_rss_kib),
            mib(self.rss_second_third_max_kib),
            mib(self.rss_last_third_max_kib),
            self.rss_samples
        )?;
        if let Some(died) = &self.died {
            writeln!(f, "  server DIED         {died}")?;
        }
        writeln!(f, "  server stop         {}", self.stop)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.target_rate {
            Some(rate) => format!("open loop at {rate} updates/s"),
            None => "closed loop".to_owned(),
        };
        writeln!(
            f,
            "botline-bench: {mode}, {} connections, {} chats, update ids from {}, seed {}",
            self.connections, self.chats, self.first_update_id, self.seed
        )?;
        writeln!(f, "  updates sent        {}", self.updates_sent)?;
        writeln!(
            f,
            "  acknowledged        {} in {:.2} s = {:.1} acks/s",
            self.acknowledged, self.duration_secs, self.throughput_per_sec
        )?;
        writeln!(f, "  ack latency (ms)    {}", self.ack_latency)?;
        writeln!(
            f,
            "  non-2xx answers     {}",
            counts(&self.non_2xx_by_status)
        )?;
        writeln!(
            f,
            "  connection errors   {}{}",
            self.connection_errors,
            if self.connection_errors > 0 {
                format!(" ({})", counts(&self.connection_errors_by_kind))
            } else {
                String::new()
            }
        )?;
        writeln!(f, "  retries             {}", self.retries)?;
        write!(f, "  given up            {}", self.given_up)?;
        if self.given_up > 0 {
            write!(f, "  (lost by the client: never acknowledged)")?;
        }
        writeln!(f)?;
        if let Some(flood) = &self.flood {
            write!(f, "{flood}")?;
        }
        if let Some(server) = &self.server {
            write!(f, "{server}")?;
        }
        if let Some(verification) = &self.verification {
            write!(f, "{verification}")?;
        }
        if let Some(replies) = &self.replies {
            write!(f, "{replies}")?;
        }
        Ok(())
    }
}

/// `503: 12, 500: 1`, or `none`.
fn counts<K: fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(key, count)| format!("{key}: {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut histogram = new_histogram();
        for ms in 1..=1000u64 {
            histogram.record(ms * 1000).expect("in range");
        }
        let summary = LatencySummary::from_micros(&histogram);
        assert_eq!(summary.count, 1000);
        let close = |actual: f64, expected: f64| (actual - expected).abs() <= expected * 0.002;
        assert!(close(summary.p50_ms, 500.0), "{summary:?}");
        assert!(close(summary.p90_ms, 900.0), "{summary:?}");
        assert!(close(summary.p99_ms, 990.0), "{summary:?}");
        assert!(close(summary.p999_ms, 999.0), "{summary:?}");
        assert!(close(summary.max_ms, 1000.0), "{summary:?}");
        assert!(close(summary.mean_ms, 500.5), "{summary:?}");
    }

    #[test]
    fn microsecond_resolution_and_tail() {
        let mut histogram = new_histogram();
        for _ in 0..9_990 {
            histogram.record(250).expect("in range");
        }
        for _ in 0..10 {
            histogram.record(2_000_000).expect("in range");
        }
        let summary = LatencySummary::from_micros(&histogram);
        assert_eq!(summary.p50_ms, 0.25);
        assert_eq!(summary.p99_ms, 0.25);
        assert!((summary.p999_ms - 0.25).abs() < 1e-9, "{summary:?}");
        assert!((summary.max_ms - 2000.0).abs() < 2.0, "{summary:?}");
        let text = summary.to_string();
        assert!(text.starts_with("p50 0.250  p90 0.250"), "{text}");
    }

    #[test]
    fn empty_histogram_reports_nothing() {
        let summary = LatencySummary::from_micros(&new_histogram());
        assert_eq!(summary, LatencySummary::default());
        assert_eq!(summary.to_string(), "no samples");
    }

    #[test]
    fn report_prints_statuses_and_errors() {
        let report = Report {
            mode: "closed".to_owned(),
            target_rate: None,
            connections: 2,
            chats: 3,
            first_update_id: 10,
            seed: 5,
            started_at_unix_ms: 0,
            duration_secs: 2.0,
            updates_sent: 5,
            acknowledged: 4,
            throughput_per_sec: 2.0,
            ack_latency: LatencySummary::default(),
            non_2xx_by_status: BTreeMap::from([(500, 1), (503, 2)]),
            connection_errors: 1,
            connection_errors_by_kind: BTreeMap::from([("connect".to_owned(), 1)]),
            retries: 3,
            given_up: 1,
            given_up_updates: Vec::new(),
            acked_updates: Vec::new(),
            flood: Some(FloodReport {
                target_rate: 100.0,
                sources: 16,
                sent: 990,
                sent_per_sec: 99.0,
                skipped: 10,
                by_status: BTreeMap::from([(401, 90), (429, 900)]),
                failed: 0,
                accepted: 0,
            }),
            verification: None,
            replies: None,
            timeline: Vec::new(),
            server: None,
        };
        let text = report.to_string();
        assert!(
            text.contains("990 requests from 16 addresses at 99.0/s (asked 100/s, 10 skipped)"),
            "{text}"
        );
        assert!(
            text.contains("401: 90, 429: 900; no answer 0; accepted (2xx) 0"),
            "{text}"
        );
        assert!(
            text.contains("non-2xx answers     500: 1, 503: 2"),
            "{text}"
        );
        assert!(
            text.contains("connection errors   1 (connect: 1)"),
            "{text}"
        );
        assert!(text.contains("4 in 2.00 s = 2.0 acks/s"), "{text}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["non_2xx_by_status"]["503"], 2);
    }

    #[test]
    fn report_prints_the_managed_server_and_its_memory() {
        let server = ServerReport {
            bin: PathBuf::from("/bin/botline"),
            data_dir: PathBuf::from("/tmp/botline-bench-x"),
            log: PathBuf::from("/tmp/botline-bench-x/botline-serve.log"),
            listen: "127.0.0.1:4000".to_owned(),
            kills_planned: 5,
            kills: 4,
            kill_seed: Some(9),
            rss_samples: 3,
            max_rss_kib: Some(40_960),
            rss_second_third_max_kib: Some(30_720),
            rss_last_third_max_kib: Some(40_960),
            died: None,
            stop: "exit status: 0 after SIGTERM".to_owned(),
            stopped_cleanly: true,
        };
        let text = server.to_string();
        assert!(text.contains("kills               4 of 5"), "{text}");
        assert!(text.contains("seed 9"), "{text}");
        assert!(
            text.contains("max 40.0  (second third max 30.0, last third max 40.0; 3 samples)"),
            "{text}"
        );
        assert!(!text.contains("DIED"), "{text}");
        let died = ServerReport {
            died: Some("signal: 6 (SIGABRT)".to_owned()),
            ..server
        };
        assert!(died.to_string().contains("server DIED         signal: 6"));

        let mut report: Report = serde_json::from_str(
            r#"{"mode":"open","target_rate":1.0,"connections":1,"chats":1,"first_update_id":1,
                "started_at_unix_ms":0,"duration_secs":1.0,"updates_sent":0,"acknowledged":0,
                "throughput_per_sec":0.0,"ack_latency":{"count":0,"mean_ms":0.0,"p50_ms":0.0,
                "p90_ms":0.0,"p99_ms":0.0,"p999_ms":0.0,"max_ms":0.0},"non_2xx_by_status":{},
                "connection_errors":0,"connection_errors_by_kind":{},"retries":0,"given_up":0,
                "given_up_updates":[],"acked_updates":[],"flood":null,"verification":null}"#,
        )
        .expect("a report saved before the timeline existed");
        assert!(report.server_ok());
        report.server = Some(died);
        assert!(!report.server_ok());
        report.timeline = vec![
            SecondStats {
                second: 0,
                server_rss_kib: Some(10),
                ..SecondStats::default()
            },
            SecondStats::default(),
        ];
        assert_eq!(report.rss_series().collect::<Vec<_>>(), [(0, 10)]);
    }
}
