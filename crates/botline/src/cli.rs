//! The command line. Flags that are settings are serialized (skipping those not given) and
//! layered over the environment and `botline.toml` by [`crate::config::Settings::load`].

pub use crate::config::BackendKind;
use crate::config::LogFormat;
use crate::ops::ExportFormat;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "botline", version = crate::version(), about = "Takes Telegram bot updates and never loses one.")]
pub struct Cli {
    /// Settings file [default: ./botline.toml, if it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive webhook updates, make them durable, process them into the store, and answer.
    Serve(ServeArgs),
    /// As `serve`, with updates fetched from Telegram by long polling (getUpdates) instead of a
    /// webhook: for a machine with no public HTTPS address.
    Poll(ServeArgs),
    /// Telegram's webhook for this bot: set, show, delete.
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
    /// Read the stored messages.
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
    },
    /// Read the stored events (one per update, the audit trail).
    Events {
        #[command(subcommand)]
        command: RecordsCommand,
    },
    /// Read the stored users.
    Users {
        #[command(subcommand)]
        command: RecordsCommand,
    },
    /// Write the records of an export (`messages`, `events` or `users export`, from any
    /// backend) into this backend: each where its key is not stored yet, a stored user merged
    /// (the earlier createdAt, the later copy's fields). The whole file is checked before
    /// anything is written; running it again writes nothing twice.
    Import {
        /// The export: JSON lines (of any kinds, concatenated), or CSV with a header.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The file's format [default: csv for a name ending in .csv, else jsonl]
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Look after updates that failed every attempt.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Registration tokens for `/register <username> <token>`.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Create what the backend needs, or bring it up to date: the embedded store's schema,
    /// Postgres's migrations, or on AWS both queues (with the redrive policy) and the seven
    /// tables with their indexes and TTL, adding an index an existing table lacks. Idempotent;
    /// prints what it did.
    Provision {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Copy the embedded store to a new file while `serve` runs (SQLite's online backup API:
    /// one consistent snapshot, holding everything acknowledged before the backup began).
    Backup {
        /// The new file to write; an existing one is never overwritten.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Copy a backup into a data directory that holds no store yet; `serve` on it goes on from
    /// there (queued updates are processed, once).
    Restore {
        /// The backup file (`botline backup --to FILE`).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Queue depth, updates in flight, dead letters, updates remembered.
    Stats {
        #[command(flatten)]
        store: StoreArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Where the store is.
#[derive(Debug, Clone, Args, Serialize)]
pub struct StoreArgs {
    /// The data directory [default: ./botline-data]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,

    /// The backend holding queue and store [default: embedded]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendKind>,

    /// The Postgres URL of `--backend postgres` (instead of BOTLINE_DATABASE_URL; a password
    /// given here is visible to other users of the machine, prefer the environment or a file).
    #[arg(long, value_name = "URL")]
    #[serde(skip)]
    pub database_url: Option<crate::secret::DatabaseUrl>,

    /// File holding the Postgres URL (instead of BOTLINE_DATABASE_URL).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct ServeArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub store: StoreArgs,

    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// File holding the webhook secret (instead of BOTLINE_WEBHOOK_SECRET).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Allow a non-loopback address without a webhook secret.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_no_secret: bool,

    /// Largest accepted body in bytes [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,

    /// Attempts before an update is dead-lettered [default: 3]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,

    /// Updates of different chats processed at once [default: 64]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_concurrency: Option<usize>,

    /// Log format [default: auto, JSON unless stderr is a terminal]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    #[command(flatten)]
    #[serde(flatten)]
    pub telegram: TelegramArgs,
}

/// How to reach the Bot API (the token comes from BOTLINE_BOT_TOKEN or the token file).
#[derive(Debug, Clone, Args, Serialize)]
pub struct TelegramArgs {
    /// File holding the bot token (instead of BOTLINE_BOT_TOKEN).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bot_token_file: Option<PathBuf>,

    /// The Bot API's base URL [default: https://api.telegram.org]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub telegram_api_url: Option<String>,
}

/// `botline webhook set`.
#[derive(Debug, Clone, Args, Serialize)]
pub struct WebhookSetArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub telegram: TelegramArgs,

    /// File holding the webhook secret (instead of BOTLINE_WEBHOOK_SECRET).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,

    /// The public HTTPS URL of the webhook.
    #[arg(long)]
    #[serde(skip)]
    pub url: String,

    /// Connections Telegram opens at once, 1-100 [Telegram's default: 40]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    #[serde(skip)]
    pub max_connections: Option<u32>,

    /// Update kinds to receive, comma-separated (e.g. message,callback_query) [default: all
    /// kinds except chat_member, message_reaction and message_reaction_count]
    #[arg(long, value_name = "KINDS")]
    #[serde(skip)]
    pub allowed_updates: Option<String>,

    /// Discard the updates Telegram holds for the bot.
    #[arg(long)]
    #[serde(skip)]
    pub drop_pending_updates: bool,
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Point Telegram at URL (your `/telegram/webhook`), with the configured webhook secret as
    /// `secret_token`.
    Set(WebhookSetArgs),
    /// Show the webhook as Telegram sees it: URL, pending updates, last error.
    Info {
        #[command(flatten)]
        telegram: TelegramArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove the webhook (needed before `botline poll`).
    Delete {
        #[command(flatten)]
        telegram: TelegramArgs,
        /// Discard the updates Telegram holds for the bot.
        #[arg(long)]
        drop_pending_updates: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MessagesCommand {
    /// Write stored messages to stdout, one record per line.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Only this chat's messages.
        #[arg(long, value_name = "ID", allow_hyphen_values = true)]
        chat: Option<i64>,
        /// Only messages sent at or after this time (RFC 3339, a date, or unix seconds).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
}

/// `botline events` and `botline users`.
#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Write every record to stdout, one per line (`botline import` reads it back).
    Export {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One JSON line per dead letter, oldest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// A dead letter with its update, as JSON.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// The update_id.
        id: i64,
    },
    /// Put dead letters back on the queue with fresh attempts.
    Redrive {
        #[command(flatten)]
        store: StoreArgs,
        /// The update_id to redrive.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Redrive every dead letter.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Issue a single-use token for USERNAME; it is printed once, on the last line, and kept
    /// only as a digest.
    Issue {
        #[command(flatten)]
        store: StoreArgs,
        username: String,
        /// How long the token stays valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}
