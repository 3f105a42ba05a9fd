//! `botline serve` and `botline poll`: intake (webhook or long polling), worker, sender and
//! housekeeping in one process, on one backend.

use crate::backoff::{Backoff, sleep_unless_stopped};
use crate::config::{BackendKind, ConfigError, Settings};
use crate::handler::Bot;
use crate::http::{App, router, status_router};
use crate::poll::{PollError, Poller};
use crate::schema::{SchemaWatch, Verdict};
use crate::sender::Sender;
use crate::telegram::{CallError, Telegram};
use crate::worker::{Processor, Worker, housekeeping};
use botline_core::{Backend, BackendError, Handling, Unprovisioned};
use metrics_exporter_prometheus::PrometheusHandle;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
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
    #[error(transparent)]
    Poll(PollError),
    /// The backend lacks a table, index, queue or migration: named, with the command that
    /// creates it.
    #[error(transparent)]
    Unprovisioned(Unprovisioned),
}

/// Opens the configured backend for an operator command: the embedded store in
/// `settings.data_dir` (`existing`: it must have been created already), Postgres, connected
/// and migrated, or SQS and DynamoDB (nothing is called yet).
pub async fn open_backend(
    settings: &Settings,
    existing: bool,
) -> Result<Arc<dyn Backend>, ServeError> {
    let config = settings.queue_config();
    let _ = existing; // only the embedded store is opened "existing"
    Ok(match settings.backend {
        #[cfg(feature = "sqlite")]
        BackendKind::Embedded => Arc::new(if existing {
            botline_sqlite::SqliteBackend::open_existing(&settings.data_dir, config)?
        } else {
            botline_sqlite::SqliteBackend::open(&settings.data_dir, config)?
        }),
        BackendKind::Postgres => Arc::new(
            botline_postgres::PostgresBackend::connect(&settings.postgres_url()?, config).await?,
        ),
        #[cfg(feature = "aws")]
        BackendKind::Aws => Arc::new(crate::aws::open_backend(config).await?),
        #[allow(unreachable_patterns)] // with every backend compiled in
        other => {
            return Err(ConfigError::Invalid(format!(
                "this build of botline has no {other:?} backend (cargo feature {:?})",
                format!("{other:?}").to_lowercase()
            ))
            .into());
        }
    })
}

/// `botline provision`: creates what the configured backend needs, or brings it up to date,
/// and writes one line per thing it created, changed or found as wanted.
pub async fn provision(
    settings: &Settings,
    mut out: impl std::io::Write,
) -> Result<(), ServeError> {
    let config = settings.queue_config();
    let actions = match settings.backend {
        #[cfg(feature = "sqlite")]
        BackendKind::Embedded => {
            botline_sqlite::SqliteBackend::open(&settings.data_dir, config)?;
            vec![format!(
                "embedded store {}: schema up to date",
                settings.data_dir.display()
            )]
        }
        BackendKind::Postgres => {
            let backend =
                botline_postgres::PostgresBackend::connect(&settings.postgres_url()?, config)
                    .await?;
            vec![format!(
                "postgres {}: migrations applied, schema up to date",
                backend.target()
            )]
        }
        #[cfg(feature = "aws")]
        BackendKind::Aws => crate::aws::provision().await?,
        #[allow(unreachable_patterns)] // with every backend compiled in
        _ => {
            open_backend(settings, false).await?;
            Vec::new()
        }
    };
    for action in actions {
        writeln!(out, "{action}")
            .map_err(|e| ConfigError::Invalid(format!("cannot write the report: {e}")))?;
    }
    Ok(())
}

/// The backend `serve` runs on, and whether its schema is still being brought up to date.
struct Serving {
    backend: Arc<dyn Backend>,
    /// A Postgres that was down at start, migrated in the background once it is back.
    migrating: bool,
}

/// Opens the backend `serve` runs on. A Postgres that is down at start does not stop the
/// server: it answers 503 and keeps trying to migrate until the database is back.
async fn open_serving_backend(
    settings: &Settings,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> Result<Serving, ServeError> {
    #[cfg(feature = "sqlite")]
    if settings.backend == BackendKind::Embedded {
        // This process holds the data directory's lock: acknowledgements go to the journal.
        let backend = botline_sqlite::SqliteBackend::open_journaled(
            &settings.data_dir,
            settings.queue_config(),
        )?;
        // This process holds the data directory's lock, so no other one works on a lease: those
        // of a process that was killed are free now, not when they expire (30 s by default).
        let released = backend.release_leases().await?;
        if released > 0 {
            tracing::info!(
                updates = released,
                "took back the updates a previous run had in hand when it was stopped"
            );
        }
        return Ok(Serving {
            backend: Arc::new(backend),
            migrating: false,
        });
    }
    if settings.backend != BackendKind::Postgres {
        return Ok(Serving {
            backend: open_backend(settings, false).await?,
            migrating: false,
        });
    }
    let url = settings.postgres_url()?;
    let config = settings.queue_config();
    let options =
        botline_postgres::PostgresOptions::default().max_connections(settings.database_pool_size);
    let backend = botline_postgres::PostgresBackend::connect_lazy(&url, config, options)?;
    let migrated = backend.migrate().await;
    if let Err(e) = &migrated {
        tracing::error!(error = %e, "Postgres is not ready; answering 503 until it is");
        let (retry, stop) = (backend.clone(), shutdown.clone());
        tasks.spawn(async move {
            let mut wait = Duration::from_secs(1);
            loop {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => return,
                }
                match retry.migrate().await {
                    Ok(()) => {
                        tracing::info!("Postgres is ready");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "Postgres is still not ready"),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }
    Ok(Serving {
        backend: Arc::new(backend),
        migrating: migrated.is_err(),
    })
}

/// Checks the backend's schema before anything is served: something missing stops the start,
/// named with the command that creates it (`botline provision --backend …`). A backend that
/// cannot be asked, or a Postgres still to be migrated in the background, does not: `/health`
/// and the webhook answer 503 until the check passes.
async fn check_schema_at_start(serving: &Serving) -> Result<Arc<SchemaWatch>, ServeError> {
    let watch = Arc::new(SchemaWatch::new(Arc::clone(&serving.backend)));
    match watch.check().await {
        Verdict::Missing(missing) if !serving.migrating => Err(ServeError::Unprovisioned(missing)),
        _ => Ok(watch),
    }
}

/// How updates arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Telegram posts them to `POST /telegram/webhook` (`botline serve`).
    Webhook,
    /// Botline fetches them with getUpdates (`botline poll`).
    Poll,
}

/// `botline serve`: serves until SIGTERM or SIGINT, then stops accepting, finishes the
/// requests and updates in hand, and returns.
pub async fn serve(
    settings: Settings,
    metrics: Option<PrometheusHandle>,
) -> Result<(), ServeError> {
    run(settings, metrics, Intake::Webhook, Bot::new()).await
}

/// `botline poll`: as `serve`, with updates fetched by long polling instead of a webhook.
pub async fn poll(settings: Settings, metrics: Option<PrometheusHandle>) -> Result<(), ServeError> {
    run(settings, metrics, Intake::Poll, Bot::new()).await
}

/// [`serve`] with `bot`'s handlers.
pub async fn serve_bot(
    settings: Settings,
    metrics: Option<PrometheusHandle>,
    bot: Bot,
) -> Result<(), ServeError> {
    run(settings, metrics, Intake::Webhook, bot).await
}

/// [`poll`] with `bot`'s handlers.
pub async fn poll_bot(
    settings: Settings,
    metrics: Option<PrometheusHandle>,
    bot: Bot,
) -> Result<(), ServeError> {
    run(settings, metrics, Intake::Poll, bot).await
}

async fn run(
    settings: Settings,
    metrics: Option<PrometheusHandle>,
    intake: Intake,
    bot: Bot,
) -> Result<(), ServeError> {
    #[cfg(feature = "aws")]
    let settings = {
        let mut settings = settings;
        if let Some(store) = crate::aws::SecretStore::from_env().await {
            store.fill(&mut settings).await?;
        }
        settings
    };
    let secret = match intake {
        Intake::Webhook => {
            let secret = settings.webhook_secret()?;
            settings.check_exposure(secret.as_ref())?;
            if secret.is_none() {
                warn_without_secret(&settings);
            }
            secret
        }
        Intake::Poll => None,
    };
    let telegram = match intake {
        Intake::Webhook => settings.telegram()?,
        Intake::Poll => Some(settings.require_telegram()?),
    };
    let registrar = settings.registrar()?;
    let bot = match settings.forward()? {
        Some(forward) => {
            tracing::info!(handler = ?forward, "forwarding every update to the bot's own handler");
            bot.forward_to(forward)
        }
        None => bot,
    };
    // Several instances may share a Postgres; one data directory has one server.
    let _lock = match settings.backend {
        BackendKind::Embedded => Some(lock_data_dir(&settings.data_dir)?),
        BackendKind::Postgres | BackendKind::Aws => None,
    };
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let serving = open_serving_backend(&settings, &mut tasks, &shutdown).await?;
    let schema = check_schema_at_start(&serving).await?;
    let backend = serving.backend;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: settings.listen,
            source,
        })?;
    let new_update = Arc::new(Notify::new());
    let metrics_upkeep = metrics.clone();
    // One connection to the shared rate limits (Redis), for the edge and the sender both.
    let shared_limits = settings.shared_limiter()?;
    let app = Arc::new(
        App::from_settings_sharing(
            &settings,
            Arc::clone(&backend),
            secret,
            shared_limits.clone(),
        )?
        .with_schema(schema)
        .waking(Arc::clone(&new_update))
        .with_metrics(metrics),
    );
    // Without a configured username, the bot's own is asked of Telegram before processing.
    let known = (settings.bot_username.is_some() || telegram.is_none()).then(|| Handling {
        bot_username: settings.bot_username.clone(),
    });
    let (handling_tx, handling) = watch::channel(known);
    let new_calls = Arc::new(Notify::new());
    tasks.spawn(
        Worker {
            processor: Processor::new(Arc::clone(&backend), &settings)
                .with_bot(bot)
                .with_registrar(registrar.clone()),
            concurrency: settings.worker_concurrency,
            new_update: Arc::clone(&new_update),
            handling,
            new_calls: Arc::clone(&new_calls),
        }
        .run(shutdown.clone()),
    );
    if let Some(registrar) = registrar {
        // Said early, so a wrong URL or a missing function is seen before the first /register.
        tasks.spawn(async move {
            match registrar.ping().await {
                Ok(()) => tracing::info!(registrar = ?registrar, "registration backend ready"),
                Err(e) => tracing::error!(error = %e, "registration backend not ready; /register attempts are retried"),
            }
        });
    }
    tasks.spawn(housekeeping(Arc::clone(&backend), shutdown.clone()));
    if let Some(handle) = &metrics_upkeep {
        tasks.spawn(crate::metrics::upkeep(handle.clone(), shutdown.clone()));
    }
    match &telegram {
        Some(telegram) => {
            tasks.spawn(identify(
                telegram.clone(),
                handling_tx,
                settings.bot_username.clone(),
                shutdown.clone(),
            ));
            tasks.spawn(
                Sender {
                    backend: Arc::clone(&backend),
                    telegram: telegram.clone(),
                    limits: Arc::new(settings.telegram_limits_sharing(
                        shared_limits.map(|redis| redis as Arc<dyn botline_core::SharedLimiter>),
                    )),
                    new_calls,
                }
                .run(shutdown.clone()),
            );
        }
        None => tracing::warn!(
            "no bot token (BOTLINE_BOT_TOKEN or BOTLINE_BOT_TOKEN_FILE): replies wait in the \
             outbox and go out once a token is configured"
        ),
    }
    let replies = telegram.is_some();
    let polling = match (intake, telegram) {
        (Intake::Poll, Some(telegram)) => {
            let poller = Poller {
                backend: Arc::clone(&backend),
                telegram,
                new_update,
                timeout: settings.poll_timeout,
                ack_timeout: settings.ack_timeout,
            };
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                let result = poller.run(stop.clone()).await;
                // Polling that cannot go on stops the whole process.
                stop.cancel();
                result
            }))
        }
        _ => None,
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %settings.data_dir.display(),
        intake = ?intake,
        secret = app.secret.is_some(),
        replies,
        registration = ?settings.registration,
        version = crate::version(),
        "botline is serving"
    );

    let routes = match intake {
        Intake::Webhook => router(app),
        Intake::Poll => status_router(app),
    };
    let stopping = shutdown.clone();
    let limits = crate::listen::HttpLimits {
        max_connections: settings.max_connections,
        header_read_timeout: settings.read_timeout,
    };
    let server = crate::listen::serve(listener, routes, limits, async move {
        tokio::select! {
            () = wait_for_signal() => {
                tracing::info!("shutting down: no new requests; finishing those in hand");
            }
            () = stopping.cancelled() => {}
        }
        stopping.cancel();
    });
    let server = tokio::spawn(server);
    shutdown.cancelled().await;
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them"),
    }
    while tasks.join_next().await.is_some() {}
    if let Err(e) = backend.close().await {
        tracing::warn!(error = %e, "closing the store");
    }
    let polled = match polling {
        Some(polling) => match polling.await {
            Ok(result) => result.map_err(ServeError::Poll),
            Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
        },
        None => Ok(()),
    };
    tracing::info!("stopped");
    polled
}

/// Said at every start without a webhook secret, on loopback too: a reverse proxy or any other
/// process on the host can forge an update (a group `/register` that makes the bot delete a
/// message of the forger's choosing), and nothing would tell it from Telegram's.
fn warn_without_secret(settings: &Settings) {
    tracing::warn!(
        listen = %settings.listen,
        "no webhook secret: anyone who can reach {} (a reverse proxy, another process on this \
         host) can post forged updates. Set BOTLINE_WEBHOOK_SECRET (or webhook_secret_file) and \
         pass it to setWebhook as secret_token (`botline webhook set` does)",
        settings.listen
    );
}

/// Asks Telegram who the bot is (getMe) until it answers, and hands the username to the worker
/// so `/command@otherbot` is left alone. A refused token ends the wait with the username unknown
/// (only unaddressed commands are taken) rather than hold processing up forever.
async fn identify(
    telegram: Telegram,
    handling: watch::Sender<Option<Handling>>,
    configured: Option<String>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let answer = tokio::select! {
            answer = telegram.identify(configured.as_deref()) => answer,
            () = shutdown.cancelled() => return,
        };
        match answer {
            Ok(known) => {
                handling.send_replace(Some(known));
                return;
            }
            Err(e @ CallError::Unauthorized { .. }) => {
                tracing::error!(error = %e, "Telegram refused the bot token; commands addressed as /command@botname are not recognised until it is fixed");
                handling.send_if_modified(|known| {
                    known.get_or_insert_with(|| Handling {
                        bot_username: configured.clone(),
                    });
                    true
                });
                return;
            }
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "getMe failed; commands addressed with @botname wait for it");
                if !sleep_unless_stopped(wait, &shutdown).await {
                    return;
                }
            }
        }
    }
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
/// Taken before the store is opened, so a refused server touches nothing. The directory is
/// made `0700` (one others can write to is refused) and the lock file opened without following
/// a link or truncating: see `botline_sqlite::files`.
#[cfg(feature = "sqlite")]
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ServeError> {
    botline_sqlite::lock_data_dir(dir).map_err(|e| ServeError::DataDir(e.to_string()))
}

/// Without the embedded backend there is no data directory to lock; opening the backend says
/// that it is missing.
#[cfg(not(feature = "sqlite"))]
fn lock_data_dir(_dir: &Path) -> Result<(), ServeError> {
    Ok(())
}
