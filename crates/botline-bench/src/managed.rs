//! A load against a server the run manages itself ([`run_managed`]): it samples the server's
//! memory once a second, SIGKILLs and restarts it at random moments if asked ([`CrashPlan`]),
//! checks its store afterwards and stops it with SIGTERM.

use crate::config::{BenchError, LoadConfig, LoadLimit, VerifyConfig};
use crate::load::{Live, Prepared, verify_store, write_outputs};
use crate::report::{Report, ServerReport};
use crate::server::ManagedServer;
use crate::timeline::rss_thirds;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long the server may take to exit after SIGTERM at the end.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// SIGKILLs of the managed server while the load runs, each followed by a restart on the same
/// data directory and port.
///
/// The kills are spread over the run's progress — its time for a duration, its issued updates
/// for a count — with kill `i` of `n` at `(i + u) / (n + 1)` of the run, `u` uniform in
/// ±0.4. So the gaps between kills are random (0.2 to 1.8 times the mean gap) but the server
/// always gets some of the run between two kills; after each kill it stays down for a random
/// time up to `max_downtime` before it is started again.
#[derive(Debug, Clone, PartialEq)]
pub struct CrashPlan {
    /// How many SIGKILLs.
    pub kills: u32,
    /// The seed of the moments and downtimes; `None` derives it from the load's seed.
    pub seed: Option<u64>,
    /// The longest a killed server stays down before the restart.
    pub max_downtime: Duration,
}

impl CrashPlan {
    /// `kills` SIGKILLs, seeded from the load's seed, down for up to 200 ms each.
    pub fn new(kills: u32) -> Self {
        Self {
            kills,
            seed: None,
            max_downtime: Duration::from_millis(200),
        }
    }

    /// When to kill (fraction of the run's progress) and how long to stay down, in order.
    fn schedule(&self, seed: u64) -> Vec<PlannedKill> {
        let mut rng = StdRng::seed_from_u64(seed);
        let slots = f64::from(self.kills) + 1.0;
        (1..=self.kills)
            .map(|i| PlannedKill {
                at: (f64::from(i) + rng.random_range(-0.4..0.4)) / slots,
                downtime: self.max_downtime.mul_f64(rng.random_range(0.0..=1.0)),
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct PlannedKill {
    at: f64,
    downtime: Duration,
}

/// What a managed run does besides the load.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedRun {
    /// Kill and restart the server while the load runs.
    pub crash: Option<CrashPlan>,
    /// How long to wait for every acknowledged update to be stored.
    pub verify_timeout: Duration,
}

impl Default for ManagedRun {
    /// No kills; 30 s for the store.
    fn default() -> Self {
        Self {
            crash: None,
            verify_timeout: Duration::from_secs(30),
        }
    }
}

/// Runs the load of `config` against `server`: points `config.url` and `config.secret` at it,
/// samples its RSS once a second into the timeline, kills and restarts it as `managed.crash`
/// says, checks its store as `--verify-data-dir` does (with the server's own binary, in place of
/// `config.verify`), stops it with SIGTERM, and writes `config.json_out` and `config.plot`.
/// After kills the check waits at least the server's lease plus 30 s
/// ([`ManagedServer::lease`]): updates in flight at a kill are stored only once their lease
/// expired.
///
/// A server that dies on its own (not by a planned kill) cuts the load short: the report's
/// [`ServerReport::died`] says how, and the store is not checked. Fails when the configuration
/// is invalid, a restart does not come up healthy, the store's export never runs, or a file
/// cannot be written; the server is killed then.
pub async fn run_managed(
    mut config: LoadConfig,
    server: ManagedServer,
    managed: ManagedRun,
) -> Result<Report, BenchError> {
    config.url = server.webhook_url();
    config.secret = Some(server.secret().to_owned());
    config.verify = None;
    let kills_asked = managed.crash.as_ref().is_some_and(|crash| crash.kills > 0);
    let verify_config = VerifyConfig {
        timeout: verify_timeout(managed.verify_timeout, kills_asked, server.lease()),
        ..VerifyConfig::new(server.data_dir(), server.bin())
    };
    let prepared = Prepared::new(&config).await?;
    let kill_seed = managed
        .crash
        .as_ref()
        .map(|crash| crash.seed.unwrap_or(prepared.seed ^ 0x6b69_6c6c_7365_6564));
    let kills = managed
        .crash
        .as_ref()
        .zip(kill_seed)
        .map(|(crash, seed)| crash.schedule(seed))
        .unwrap_or_default();
    let kills_planned = u32::try_from(kills.len()).unwrap_or(u32::MAX);

    let live = Arc::new(Live::new(Instant::now(), kills_planned));
    let stop = Arc::new(AtomicBool::new(false));
    let supervisor = {
        let (live, stop, limit) = (Arc::clone(&live), Arc::clone(&stop), config.limit);
        std::thread::Builder::new()
            .name("botline-bench-supervisor".to_owned())
            .spawn(move || {
                let mut server = server;
                let end = supervise(&mut server, &kills, limit, &live, &stop);
                (server, end)
            })
            .map_err(|e| BenchError::Task(format!("cannot start the supervisor: {e}")))?
    };
    let loaded = prepared.run(&config, Arc::clone(&live)).await;
    stop.store(true, Ordering::Release);
    let (mut server, end) = tokio::task::spawn_blocking(move || supervisor.join())
        .await
        .map_err(|e| BenchError::Task(e.to_string()))?
        .map_err(|_| BenchError::Task("the server's supervisor panicked".to_owned()))?;
    let mut report = loaded?;
    let died = match end {
        Ok(()) => None,
        Err(Ended::Died(how)) => Some(how),
        Err(Ended::Failed(error)) => return Err(error),
    };
    if died.is_none() {
        report = verify_store(report, verify_config).await?;
    }
    let (stop, stopped_cleanly) = if died.is_some() {
        ("had died already".to_owned(), false)
    } else {
        let stopped = tokio::task::spawn_blocking(move || {
            let stopped = server.terminate(STOP_TIMEOUT);
            (server, stopped)
        })
        .await
        .map_err(|e| BenchError::Task(e.to_string()))?;
        server = stopped.0;
        match stopped.1 {
            Ok(status) => (format!("{status} after SIGTERM"), status.success()),
            Err(error) => (error.to_string(), false),
        }
    };

    let (second_third, last_third) = rss_thirds(&report.timeline);
    report.server = Some(ServerReport {
        bin: server.bin().to_owned(),
        data_dir: server.data_dir().to_owned(),
        log: server.log().to_owned(),
        listen: server.listen().to_string(),
        kills_planned,
        kills: live.kills.load(Ordering::Relaxed),
        kill_seed,
        rss_samples: report.rss_series().count() as u64,
        max_rss_kib: report.rss_series().map(|(_, kib)| kib).max(),
        rss_second_third_max_kib: second_third,
        rss_last_third_max_kib: last_third,
        died,
        stop,
        stopped_cleanly,
    });
    write_outputs(&config, &report)?;
    Ok(report)
}

/// How long to wait for the store: `asked`, but after kills at least the server's lease and
/// half a minute more, since an update in flight at a kill is stored only after its lease
/// expired and the restarted server took it up again.
fn verify_timeout(asked: Duration, kills: bool, lease: Duration) -> Duration {
    if kills {
        asked.max(lease + Duration::from_secs(30))
    } else {
        asked
    }
}

/// Why the supervisor ended before it was told to stop.
enum Ended {
    /// The server exited on its own.
    Died(String),
    /// It could not be restarted or watched.
    Failed(BenchError),
}

/// Until `stop`: samples the server's RSS once a second (in the middle of each second of the
/// timeline) and kills and restarts it at the planned moments. Cuts the load short when the
/// server dies on its own or does not come back; leaves it running otherwise.
fn supervise(
    server: &mut ManagedServer,
    kills: &[PlannedKill],
    limit: LoadLimit,
    live: &Live,
    stop: &AtomicBool,
) -> Result<(), Ended> {
    let second = Duration::from_secs(1);
    let mut next_sample = live.start + second / 2;
    let mut planned = kills.iter().peekable();
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        match server.exited() {
            Ok(None) => {}
            Ok(Some(status)) => {
                break Err(Ended::Died(format!(
                    "botline serve exited on its own with {status} {:.1} s into the load; end of {}:\n{}",
                    live.start.elapsed().as_secs_f64(),
                    server.log().display(),
                    server.log_tail()
                )));
            }
            Err(error) => break Err(Ended::Failed(error)),
        }
        let now = Instant::now();
        if now >= next_sample {
            if let Some(kib) = server.rss_kib() {
                live.timeline.server_rss(kib);
            }
            while next_sample <= now {
                next_sample += second;
            }
        }
        if let Some(kill) = planned.next_if(|kill| progress(limit, live, now) >= kill.at) {
            server.kill();
            live.record_kill();
            std::thread::sleep(kill.downtime);
            if let Err(error) = server.restart() {
                break Err(Ended::Failed(BenchError::Server(format!(
                    "after kill {} of {}: {error}",
                    live.kills.load(Ordering::Relaxed),
                    kills.len()
                ))));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if result.is_err() {
        live.abandon();
    }
    result
}

/// How far the load is, 0 to 1: by time for a duration, by issued updates for a count.
fn progress(limit: LoadLimit, live: &Live, now: Instant) -> f64 {
    match limit {
        LoadLimit::Duration(d) => {
            now.saturating_duration_since(live.start).as_secs_f64() / d.as_secs_f64().max(1e-9)
        }
        LoadLimit::Updates(n) => live.sent.load(Ordering::Relaxed) as f64 / n.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_are_spread_in_order_with_random_gaps() {
        let plan = CrashPlan::new(20);
        let kills = plan.schedule(7);
        assert_eq!(kills.len(), 20);
        assert!(kills.windows(2).all(|w| w[1].at - w[0].at >= 0.2 / 21.0));
        assert!(kills.first().is_some_and(|k| k.at > 0.0));
        assert!(kills.last().is_some_and(|k| k.at < 1.0));
        assert!(kills.iter().all(|k| k.downtime <= plan.max_downtime));
        let gaps: Vec<f64> = kills.windows(2).map(|w| w[1].at - w[0].at).collect();
        let spread = gaps.iter().copied().fold(f64::MIN, f64::max)
            - gaps.iter().copied().fold(f64::MAX, f64::min);
        assert!(spread > 0.01, "the gaps differ: {gaps:?}");
        // The seed governs it.
        assert_eq!(plan.schedule(7), kills);
        assert_ne!(plan.schedule(8), kills);
        assert!(CrashPlan::new(0).schedule(7).is_empty());
    }

    #[test]
    fn after_kills_the_check_outwaits_the_lease() {
        let (thirty, two) = (Duration::from_secs(30), Duration::from_secs(2));
        assert_eq!(verify_timeout(thirty, false, thirty), thirty);
        assert_eq!(
            verify_timeout(thirty, true, thirty),
            Duration::from_secs(60)
        );
        assert_eq!(verify_timeout(thirty, true, two), Duration::from_secs(32));
        let long = Duration::from_secs(300);
        assert_eq!(verify_timeout(long, true, thirty), long);
    }

    #[test]
    fn progress_by_time_or_by_updates() {
        let live = Live::new(Instant::now() - Duration::from_secs(5), 0);
        let by_time = progress(
            LoadLimit::Duration(Duration::from_secs(10)),
            &live,
            Instant::now(),
        );
        assert!((0.5..0.6).contains(&by_time), "{by_time}");
        live.sent.store(250, Ordering::Relaxed);
        assert_eq!(
            progress(LoadLimit::Updates(1000), &live, Instant::now()),
            0.25
        );
    }
}
