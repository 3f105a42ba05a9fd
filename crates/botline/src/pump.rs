//! The loop the worker and the sender share: lease as much work as there are free slots (updates
//! from the queue, calls from the outbox), run each piece in a task of its own, and when nothing
//! was leased or no slot is free, wait for a wake-up, a finished piece, the poll interval or
//! shutdown. While leasing fails, it is tried again after a backoff.

use crate::backoff::{Backoff, sleep_unless_stopped};
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub(crate) struct Pump {
    /// Pieces run at once.
    pub(crate) slots: usize,
    /// The longest wait for a wake-up before leasing again.
    pub(crate) poll_interval: Duration,
    /// Notified when new work may be there; notified by the pump itself when a piece finishes
    /// (its chat's next piece may be due).
    pub(crate) wake: Arc<Notify>,
    /// What failed when leasing fails, for the log: "cannot receive updates".
    pub(crate) failing: &'static str,
}

impl Pump {
    /// Runs until `shutdown`, then returns the pieces still running, for the caller to finish
    /// or abort.
    pub(crate) async fn run<T, E, Lease, Leased, Run, Running>(
        &self,
        shutdown: &CancellationToken,
        mut lease: Lease,
        run: Run,
    ) -> JoinSet<()>
    where
        T: Send + 'static,
        E: Display,
        Lease: FnMut(usize) -> Leased,
        Leased: Future<Output = Result<Vec<T>, E>>,
        Run: Fn(T) -> Running,
        Running: Future<Output = ()> + Send + 'static,
    {
        let slots = Arc::new(Semaphore::new(self.slots));
        let mut in_hand = JoinSet::new();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            let free = slots.available_permits();
            let leased = if free == 0 {
                Ok(Vec::new())
            } else {
                lease(free).await
            };
            let idle = match leased {
                Ok(pieces) => {
                    backoff.reset();
                    let idle = pieces.is_empty();
                    for piece in pieces {
                        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                            break;
                        };
                        let (work, wake) = (run(piece), Arc::clone(&self.wake));
                        in_hand.spawn(async move {
                            work.await;
                            drop(slot);
                            wake.notify_one();
                        });
                    }
                    idle
                }
                Err(e) => {
                    let wait = backoff.next();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "{}", self.failing);
                    sleep_unless_stopped(wait, shutdown).await;
                    continue;
                }
            };
            if idle || slots.available_permits() == 0 {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.poll_interval) => {}
                    Some(_) = in_hand.join_next() => {}
                    () = shutdown.cancelled() => {}
                }
            }
            while in_hand.try_join_next().is_some() {}
        }
        in_hand
    }
}
