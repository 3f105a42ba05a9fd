//! The run second by second: acknowledgements and their latency, failed requests, kills of a
//! managed server and its memory; for the plot ([`crate::plot`]) and the JSON report.
//!
//! Memory stays bounded however long the run: one small histogram for the second in progress
//! (two significant digits, about 26 KiB, reset when the second is over), and a handful of numbers
//! for each second that is over (about 100 bytes, so 180 KiB for half an hour).

use crate::report::HISTOGRAM_MAX_MICROS;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// One second of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondStats {
    /// Seconds since the load started. The entry covers `[second, second + 1)`; the last one
    /// ends with the run ([`crate::Report::duration_secs`]), so it may be shorter.
    pub second: u64,
    /// Updates acknowledged in this second.
    pub acknowledged: u64,
    /// Median acknowledgement latency of those updates (two significant digits), ms; `None`
    /// when none was acknowledged.
    pub ack_p50_ms: Option<f64>,
    /// Their 99th percentile, ms.
    pub ack_p99_ms: Option<f64>,
    /// Their maximum, ms.
    pub ack_max_ms: Option<f64>,
    /// Requests answered with a non-2xx status.
    pub non_2xx: u64,
    /// Requests that got no answer (connect, send, body, timeout).
    pub connection_errors: u64,
    /// Updates given up.
    pub given_up: u64,
    /// Times a managed server was SIGKILLed.
    pub kills: u32,
    /// A managed server's resident memory (`VmRSS`), KiB, when it was sampled in this second.
    pub server_rss_kib: Option<u64>,
}

impl SecondStats {
    fn starting(second: u64) -> Self {
        Self {
            second,
            ..Self::default()
        }
    }

    /// Requests that failed: non-2xx answers and connection errors.
    pub fn failed_requests(&self) -> u64 {
        self.non_2xx + self.connection_errors
    }
}

/// Records events into the second they happen in, shared by every connection of a run.
#[derive(Debug)]
pub(crate) struct Timeline {
    start: Instant,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    over: Vec<SecondStats>,
    current: SecondStats,
    /// Latencies acknowledged in the current second, microseconds.
    latency: Histogram<u64>,
    finished: bool,
}

impl State {
    /// Closes seconds until the current one is `second`.
    fn advance_to(&mut self, second: u64) {
        while self.current.second < second {
            let next = SecondStats::starting(self.current.second + 1);
            self.close_current(next);
        }
    }

    fn close_current(&mut self, next: SecondStats) {
        let mut done = std::mem::replace(&mut self.current, next);
        if !self.latency.is_empty() {
            let ms = |micros: u64| micros as f64 / 1000.0;
            done.ack_p50_ms = Some(ms(self.latency.value_at_quantile(0.50)));
            done.ack_p99_ms = Some(ms(self.latency.value_at_quantile(0.99)));
            done.ack_max_ms = Some(ms(self.latency.max()));
            self.latency.reset();
        }
        self.over.push(done);
    }
}

impl Timeline {
    /// A timeline whose second 0 begins at `start`.
    pub(crate) fn new(start: Instant) -> Self {
        Self {
            start,
            state: Mutex::new(State {
                over: Vec::new(),
                current: SecondStats::starting(0),
                latency: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 2)
                    .expect("constant bounds that hdrhistogram accepts"),
                finished: false,
            }),
        }
    }

    /// Applies `change` to the second it is now; nothing once the timeline is finished.
    fn record(&self, change: impl FnOnce(&mut SecondStats, &mut Histogram<u64>)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.finished {
            return;
        }
        // Read under the lock, so the seconds only ever move forward.
        let second = Instant::now()
            .saturating_duration_since(self.start)
            .as_secs();
        state.advance_to(second);
        let State {
            current, latency, ..
        } = &mut *state;
        change(current, latency);
    }

    pub(crate) fn acknowledged(&self, latency_micros: u64) {
        self.record(|second, latency| {
            second.acknowledged += 1;
            latency.saturating_record(latency_micros);
        });
    }

    pub(crate) fn non_2xx(&self) {
        self.record(|second, _| second.non_2xx += 1);
    }

    pub(crate) fn connection_error(&self) {
        self.record(|second, _| second.connection_errors += 1);
    }

    pub(crate) fn given_up(&self) {
        self.record(|second, _| second.given_up += 1);
    }

    pub(crate) fn kill(&self) {
        self.record(|second, _| second.kills += 1);
    }

    pub(crate) fn server_rss(&self, kib: u64) {
        self.record(|second, _| {
            second.server_rss_kib = Some(second.server_rss_kib.map_or(kib, |k| k.max(kib)));
        });
    }

    /// Ends the timeline at `end` and returns every second up to it; later events are dropped.
    pub(crate) fn finish(&self, end: Instant) -> Vec<SecondStats> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.finished {
            return state.over.clone();
        }
        let elapsed = end.saturating_duration_since(self.start);
        state.advance_to(elapsed.as_secs());
        // The second the run ended in, unless it ended right on its boundary with nothing in it.
        if elapsed.subsec_nanos() > 0
            || state.current != SecondStats::starting(state.current.second)
        {
            let after = SecondStats::starting(state.current.second + 1);
            state.close_current(after);
        }
        state.finished = true;
        state.over.clone()
    }
}

/// The largest RSS sample in the second and in the last third of `seconds`, KiB: after warm-up,
/// a server that keeps growing shows a last third above the second.
pub fn rss_thirds(seconds: &[SecondStats]) -> (Option<u64>, Option<u64>) {
    let len = seconds.len();
    let max = |part: &[SecondStats]| part.iter().filter_map(|s| s.server_rss_kib).max();
    let second = seconds.get(len / 3..2 * len / 3).and_then(max);
    let last = seconds.get(2 * len / 3..).and_then(max);
    (second, last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn events_land_in_their_second_and_gaps_are_filled() {
        // A start in the past, so the events land in second 2.
        let start = Instant::now() - Duration::from_millis(2500);
        let timeline = Timeline::new(start);
        timeline.acknowledged(1_000);
        timeline.acknowledged(3_000);
        timeline.acknowledged(100_000);
        timeline.non_2xx();
        timeline.connection_error();
        timeline.server_rss(2048);
        timeline.server_rss(1024);
        timeline.kill();
        let seconds = timeline.finish(start + Duration::from_millis(4200));
        assert_eq!(
            seconds.iter().map(|s| s.second).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(seconds[0], SecondStats::starting(0));
        let busy = &seconds[2];
        assert_eq!(busy.acknowledged, 3);
        assert_eq!(
            (busy.non_2xx, busy.connection_errors, busy.kills),
            (1, 1, 1)
        );
        assert_eq!(busy.failed_requests(), 2);
        assert_eq!(busy.server_rss_kib, Some(2048));
        // Two significant digits: within 1 %.
        let p50 = busy.ack_p50_ms.expect("a median");
        assert!((p50 - 3.0).abs() <= 0.03, "{busy:?}");
        let max = busy.ack_max_ms.expect("a max");
        assert!((max - 100.0).abs() <= 1.0, "{busy:?}");
        assert_eq!(seconds[3].ack_p50_ms, None);

        // Finished: nothing more is recorded.
        timeline.acknowledged(1);
        assert_eq!(timeline.finish(Instant::now()), seconds);
    }

    #[test]
    fn a_run_that_ends_on_a_second_boundary_has_no_empty_tail() {
        let start = Instant::now() - Duration::from_secs(5);
        let timeline = Timeline::new(start);
        let seconds = timeline.finish(start + Duration::from_secs(2));
        assert_eq!(seconds.len(), 2);
    }

    #[test]
    fn thirds_of_the_rss_series() {
        let series = |rss: &[Option<u64>]| -> Vec<SecondStats> {
            rss.iter()
                .enumerate()
                .map(|(second, &server_rss_kib)| SecondStats {
                    second: second as u64,
                    server_rss_kib,
                    ..SecondStats::default()
                })
                .collect()
        };
        let flat = series(&[
            Some(900),
            Some(100),
            Some(100),
            Some(120),
            Some(110),
            Some(115),
        ]);
        assert_eq!(rss_thirds(&flat), (Some(120), Some(115)));
        let growing = series(&[
            Some(100),
            Some(110),
            Some(120),
            Some(130),
            Some(140),
            Some(150),
        ]);
        assert_eq!(rss_thirds(&growing), (Some(130), Some(150)));
        assert_eq!(rss_thirds(&series(&[None, None, None])), (None, None));
        assert_eq!(rss_thirds(&[]), (None, None));
    }
}
