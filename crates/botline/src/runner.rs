//! Botline's command line, run with a bot's handlers: [`crate::handler::Bot::main`]. The
//! `botline` binary is this with Botline's built-in records and `/register` only.

use crate::cli::{
    Cli, Command, DlqCommand, MessagesCommand, RecordsCommand, StoreArgs, TokensCommand,
    WebhookCommand,
};
use crate::config::{LogFormat, NoFlags, Settings};
use crate::handler::Bot;
use crate::ops::{self, OpsError};
use crate::serve::{open_backend, poll_bot, serve_bot};
use crate::telegram::{WebhookRequest, parse_allowed_updates};
use crate::transfer;
use botline_core::{UpdateId, clock};
use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Parses the command line, runs the command with `bot`'s handlers, and returns the exit code.
pub fn main(bot: Bot) -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    let settings = match &cli.command {
        Command::Serve(args) | Command::Poll(args) => Settings::load(config, args),
        Command::Webhook {
            command: WebhookCommand::Set(args),
        } => Settings::load(config, args),
        Command::Webhook {
            command: WebhookCommand::Info { telegram, .. } | WebhookCommand::Delete { telegram, .. },
        } => Settings::load(config, telegram),
        command => match store_args(command) {
            Some(store) => Settings::load(config, store),
            None => Settings::load(config, &NoFlags {}),
        },
    };
    // `--database-url` is a secret: given to the settings here, never layered by figment.
    let database_url = store_args(&cli.command).and_then(|store| store.database_url.clone());
    let settings = settings.map(|mut settings| {
        settings.database_url = database_url;
        settings
    });
    let settings = match settings {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("botline: {e}");
            return ExitCode::from(2);
        }
    };
    let serving = matches!(cli.command, Command::Serve(_) | Command::Poll(_));
    let _logs = init_logging(settings.log_format, if serving { "info" } else { "warn" });

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("botline: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command, settings, bot));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "botline failed");
            eprintln!("botline: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings, bot: Bot) -> Result<(), String> {
    match command {
        Command::Serve(_) => {
            let metrics = crate::metrics::install();
            return serve_bot(settings, metrics, bot)
                .await
                .map_err(|e| e.to_string());
        }
        Command::Poll(_) => {
            let metrics = crate::metrics::install();
            return poll_bot(settings, metrics, bot)
                .await
                .map_err(|e| e.to_string());
        }
        Command::Webhook { command } => return webhook(command, &settings).await,
        Command::Backup { to, .. } => return backup_or_restore(&settings, Copy::Backup(&to)),
        Command::Restore { from, .. } => {
            return backup_or_restore(&settings, Copy::Restore(&from));
        }
        Command::Provision { .. } => {
            return crate::serve::provision(&settings, std::io::stdout().lock())
                .await
                .map_err(|e| e.to_string());
        }
        _ => {}
    }
    // Tokens may be issued and records imported before the first `serve`; the other commands
    // read what serve wrote.
    let existing = !matches!(command, Command::Tokens { .. } | Command::Import { .. });
    let backend = open_backend(&settings, existing)
        .await
        .map_err(|e| e.to_string())?;
    let out = std::io::stdout().lock();
    let result = match command {
        Command::Serve(_)
        | Command::Poll(_)
        | Command::Webhook { .. }
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Provision { .. } => Ok(()),
        Command::Messages {
            command:
                MessagesCommand::Export {
                    format,
                    chat,
                    since,
                    ..
                },
        } => {
            let since = since.map(|s| clock::parse_time(&s)).transpose()?;
            transfer::export_messages(&*backend, format, chat.map(|c| c.to_string()), since, out)
                .await
                .map(|_| ())
        }
        Command::Events {
            command: RecordsCommand::Export { format, .. },
        } => transfer::export_events(&*backend, format, out)
            .await
            .map(|_| ()),
        Command::Users {
            command: RecordsCommand::Export { format, .. },
        } => transfer::export_users(&*backend, format, out)
            .await
            .map(|_| ()),
        Command::Import { from, format, .. } => {
            let format = transfer::import_format(&from, format);
            transfer::import(&*backend, &from, format, out)
                .await
                .map(|_| ())
        }
        Command::Dlq { command } => match command {
            DlqCommand::List { limit, .. } => ops::dlq_list(&*backend, limit, out).await,
            DlqCommand::Show { id, .. } => ops::dlq_show(&*backend, UpdateId(id), out).await,
            DlqCommand::Redrive { id, .. } => {
                ops::dlq_redrive(&*backend, id.map(UpdateId), out).await
            }
        },
        Command::Tokens {
            command: TokensCommand::Issue { username, ttl, .. },
        } => ops::issue_token(&*backend, &username, ttl, out).await,
        Command::Stats { json, .. } => ops::stats(&*backend, json, out).await,
    };
    match result {
        Err(e) if e.is_broken_pipe() => Ok(()),
        other => other.map_err(|e: OpsError| e.to_string()),
    }
}

/// The store flags of the commands that open the store.
fn store_args(command: &Command) -> Option<&StoreArgs> {
    match command {
        Command::Serve(args) | Command::Poll(args) => Some(&args.store),
        Command::Messages {
            command: MessagesCommand::Export { store, .. },
        }
        | Command::Events {
            command: RecordsCommand::Export { store, .. },
        }
        | Command::Users {
            command: RecordsCommand::Export { store, .. },
        }
        | Command::Import { store, .. }
        | Command::Dlq {
            command:
                DlqCommand::List { store, .. }
                | DlqCommand::Show { store, .. }
                | DlqCommand::Redrive { store, .. },
        }
        | Command::Tokens {
            command: TokensCommand::Issue { store, .. },
        }
        | Command::Stats { store, .. }
        | Command::Backup { store, .. }
        | Command::Restore { store, .. }
        | Command::Provision { store } => Some(store),
        Command::Webhook { .. } => None,
    }
}

/// `botline backup` or `botline restore`.
enum Copy<'a> {
    Backup(&'a std::path::Path),
    Restore(&'a std::path::Path),
}

/// Backs up or restores the embedded store (Postgres and AWS have their own: pg_dump,
/// DynamoDB's point-in-time recovery).
fn backup_or_restore(settings: &Settings, copy: Copy<'_>) -> Result<(), String> {
    if settings.backend != crate::config::BackendKind::Embedded {
        return Err(
            "backup and restore copy the embedded store; back Postgres up with pg_dump, and \
             DynamoDB with its point-in-time recovery or on-demand backups"
                .into(),
        );
    }
    #[cfg(feature = "sqlite")]
    {
        use botline_sqlite::backup;
        let (copied, what) = match copy {
            Copy::Backup(to) => (
                backup::backup(&settings.data_dir, to),
                format!(
                    "backed up {} to {}",
                    settings.data_dir.display(),
                    to.display()
                ),
            ),
            Copy::Restore(from) => (
                backup::restore(from, &settings.data_dir),
                format!(
                    "restored {} into {}",
                    from.display(),
                    settings.data_dir.display()
                ),
            ),
        };
        let copied = copied.map_err(|e| e.to_string())?;
        println!("{what}: {} pages, {} bytes", copied.pages, copied.bytes);
        Ok(())
    }
    #[cfg(not(feature = "sqlite"))]
    {
        let (Copy::Backup(file) | Copy::Restore(file)) = copy;
        Err(format!(
            "cannot copy {}: this build has no embedded store (feature `sqlite`)",
            file.display()
        ))
    }
}

async fn webhook(command: WebhookCommand, settings: &Settings) -> Result<(), String> {
    let telegram = settings.require_telegram().map_err(|e| e.to_string())?;
    let out = std::io::stdout().lock();
    let result = match command {
        WebhookCommand::Set(args) => {
            let allowed_updates = args
                .allowed_updates
                .as_deref()
                .map(parse_allowed_updates)
                .transpose()?;
            let secret = settings.webhook_secret().map_err(|e| e.to_string())?;
            let request = WebhookRequest {
                url: args.url,
                max_connections: args.max_connections,
                allowed_updates,
                drop_pending_updates: args.drop_pending_updates,
                secret_token: secret.map(|s| s.expose().to_owned()),
            };
            ops::webhook_set(&telegram, &request, out).await
        }
        WebhookCommand::Info { json, .. } => ops::webhook_info(&telegram, json, out).await,
        WebhookCommand::Delete {
            drop_pending_updates,
            ..
        } => ops::webhook_delete(&telegram, drop_pending_updates, out).await,
    };
    result.map_err(|e| e.to_string())
}

/// Logs go to stderr (stdout carries command output): JSON unless stderr is a terminal, through
/// a non-blocking writer that never drops a line.
fn init_logging(
    format: LogFormat,
    default_level: &str,
) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_env("BOTLINE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
    guard
}
