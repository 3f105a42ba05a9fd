//! The wait between tries of something that keeps failing — the store, the outbox, getUpdates,
//! getMe — in the loops of the worker, the sender and the poller: doubled at each failure from
//! a floor up to a ceiling, back to the floor after a success. (How long a failed *update* or
//! *call* waits is the queue's [`RetryPolicy`](botline_core::RetryPolicy), by its attempt.)

use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    floor: Duration,
    ceiling: Duration,
    /// The last wait; zero after a success.
    last: Duration,
}

impl Backoff {
    pub(crate) fn new(floor: Duration, ceiling: Duration) -> Self {
        Self {
            floor,
            ceiling,
            last: Duration::ZERO,
        }
    }

    /// The wait after one more failure: the floor, then twice the last, up to the ceiling.
    pub(crate) fn next(&mut self) -> Duration {
        self.last = (self.last * 2).clamp(self.floor, self.ceiling);
        self.last
    }

    /// After a success: the next failure waits the floor.
    pub(crate) fn reset(&mut self) {
        self.last = Duration::ZERO;
    }
}

/// Sleeps `wait`, or less if `shutdown` comes first: false then.
pub(crate) async fn sleep_unless_stopped(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_floor_to_the_ceiling_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(100));
    }
}
