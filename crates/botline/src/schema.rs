//! Whether the backend has the schema this build needs (its tables and their indexes, its
//! queues, its migrations: [`Queue::check_schema`]), asked at start and again, at most every
//! [`RECHECK`], while Botline runs.
//!
//! `serve` and `poll` refuse to start when something is missing, naming it and the command that
//! creates it (`botline provision --backend …`). While something is missing, `/health` answers
//! 503 naming it and the webhook answers 503 with `Retry-After`, so Telegram keeps the update
//! instead of handing it to a worker that cannot work. A backend that cannot be asked (it is
//! away) tells nothing about its schema: the verdict is then [`Verdict::Unknown`], and the calls
//! themselves fail as they would anyway.
//!
//! [`Queue::check_schema`]: botline_core::Queue::check_schema

use botline_core::{Backend, BackendError, Unprovisioned};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a verdict is trusted before the schema is asked about again: a few calls (on AWS,
/// one `DescribeTable` per table and one `GetQueueUrl` per queue) per instance every 5 s at most.
pub const RECHECK: Duration = Duration::from_secs(5);

/// What the last check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything this build needs is there.
    Ready,
    /// Something is missing: named, with the command that creates it.
    Missing(Unprovisioned),
    /// The backend could not be asked (why, for the logs).
    Unknown(String),
}

impl Verdict {
    fn of(checked: Result<(), BackendError>) -> Self {
        match checked {
            Ok(()) => Self::Ready,
            Err(BackendError::Unprovisioned(missing)) => Self::Missing(missing),
            Err(other) => Self::Unknown(other.to_string()),
        }
    }
}

/// The backend's schema, checked at most every [`RECHECK`]. Shared by the handlers of one
/// process (`/health`, the webhook, the worker Lambda's invocations).
#[derive(Debug)]
pub struct SchemaWatch {
    backend: Arc<dyn Backend>,
    recheck: Duration,
    last: Mutex<Option<(Instant, Verdict)>>,
    /// A check is under way (one at a time; the others use the last verdict meanwhile).
    checking: tokio::sync::Mutex<()>,
    /// A background check was started and has not finished.
    spawned: AtomicBool,
}

impl SchemaWatch {
    /// A watch on `backend` that has not checked yet.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            recheck: RECHECK,
            last: Mutex::new(None),
            checking: tokio::sync::Mutex::new(()),
            spawned: AtomicBool::new(false),
        }
    }

    /// Checks now, whatever the last verdict's age, and keeps the verdict.
    pub async fn check(&self) -> Verdict {
        let _one = self.checking.lock().await;
        self.check_locked().await
    }

    /// The last verdict while it is fresh, else a new one (waiting for it).
    pub async fn verdict(&self) -> Verdict {
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        let _one = self.checking.lock().await;
        // Another caller may have checked while this one waited.
        if let Some(fresh) = self.fresh() {
            return fresh;
        }
        self.check_locked().await
    }

    /// The last verdict at once (`None` before the first check); when it is stale, a new check
    /// starts in the background. For the webhook, which must not wait on the check.
    pub fn last(self: &Arc<Self>) -> Option<Verdict> {
        let last = self.lock().clone();
        let stale = last
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= self.recheck);
        if stale && !self.spawned.swap(true, Ordering::AcqRel) {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.verdict().await;
                this.spawned.store(false, Ordering::Release);
            });
        }
        last.map(|(_, verdict)| verdict)
    }

    fn fresh(&self) -> Option<Verdict> {
        match &*self.lock() {
            Some((at, verdict)) if at.elapsed() < self.recheck => Some(verdict.clone()),
            _ => None,
        }
    }

    async fn check_locked(&self) -> Verdict {
        let verdict = Verdict::of(self.backend.check_schema().await);
        let previous = self
            .lock()
            .replace((Instant::now(), verdict.clone()))
            .map(|(_, verdict)| verdict);
        if previous.as_ref() != Some(&verdict) {
            match &verdict {
                Verdict::Ready if previous.is_some() => {
                    tracing::info!("the backend's schema is complete");
                }
                Verdict::Ready => {}
                Verdict::Missing(missing) => tracing::error!(error = %missing, "schema check"),
                Verdict::Unknown(why) => {
                    tracing::warn!(error = %why, "cannot check the backend's schema");
                }
            }
        }
        verdict
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Verdict)>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}
