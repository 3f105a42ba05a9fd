//! `botline serve`: receiver, worker and housekeeping in one process, on one backend.

use crate::config::{ConfigError, Settings};
use crate::http::{App, router};
use crate::worker::{Worker, housekeeping};
use botline_core::{Backend, BackendError};
use metrics_exporter_prometheus::PrometheusHandle;
use std::fs::{File, TryLockError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for open connections to finish their requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Backend(#[from] BackendError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    DataDir(String),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the embedded store in `settings.data_dir`.
pub fn open_backend(settings: &Settings, existing: bool) -> Result<Arc<dyn Backend>, BackendError> {
    let config = settings.queue_config();
    let backend = if existing {
        botline_sqlite::SqliteBackend::open_existing(&settings.data_dir, config)?
    } else {
        botline_sqlite::SqliteBackend::open(&settings.data_dir, config)?
    };
    Ok(Arc::new(backend))
}

/// Serves until SIGTERM or SIGINT, then stops accepting, finishes the requests and updates in
/// hand, and returns.
pub async fn serve(
    settings: Settings,
    metrics: Option<PrometheusHandle>,
) -> Result<(), ServeError> {
    let secret = settings.webhook_secret()?;
    settings.check_exposure(secret.as_ref())?;
    let _lock = lock_data_dir(&settings.data_dir)?;
    let backend = open_backend(&settings, false)?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: settings.listen,
            source,
        })?;
    let wake = Arc::new(Notify::new());
    let app = Arc::new(App {
        backend: Arc::clone(&backend),
        secret,
        max_body_bytes: settings.max_body_bytes,
        ack_timeout: settings.ack_timeout,
        new_update: Arc::clone(&wake),
        metrics,
    });
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(
        Worker {
            backend: Arc::clone(&backend),
            concurrency: settings.worker_concurrency,
            wake,
            handling: Arc::new(botline_core::Handling {
                bot_username: settings.bot_username.clone(),
            }),
            outbox: Arc::new(Notify::new()),
        }
        .run(shutdown.clone()),
    );
    let upkeep = tokio::spawn(housekeeping(Arc::clone(&backend), shutdown.clone()));
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %settings.data_dir.display(),
        secret = app.secret.is_some(),
        version = crate::version(),
        "botline is serving"
    );

    let stopping = shutdown.clone();
    let server = axum::serve(listener, router(app)).with_graceful_shutdown(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new requests; finishing those in hand");
        stopping.cancel();
    });
    let server = tokio::spawn(async move { server.await });
    shutdown.cancelled().await;
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them"),
    }
    let _ = worker.await;
    let _ = upkeep.await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// Keeps a second `botline serve` off the same data directory (the CLI may still open it).
/// Taken before the store is opened, so a refused server touches nothing.
fn lock_data_dir(dir: &Path) -> Result<File, ServeError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ServeError::DataDir(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join("serve.lock");
    let file = File::create(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(ServeError::DataDir(format!(
            "another `botline serve` is using {}",
            dir.display()
        ))),
        Err(TryLockError::Error(e)) => Err(ServeError::Io(e)),
    }
}
