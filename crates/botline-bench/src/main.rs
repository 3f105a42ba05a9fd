//! `botline-bench`: the command line of the load generator; see the library's documentation.

use botline_bench::flood::FloodConfig;
use botline_bench::{LoadConfig, LoadLimit, VerifyConfig, VerifyStore, parse_duration, run};
use clap::{ArgGroup, Parser};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Delivers Telegram-like updates to a Botline webhook the way Telegram does (per-chat order,
/// retries of the same update until acknowledged), measures acknowledgement latency and
/// throughput, and optionally checks that every acknowledged update was stored exactly once,
/// byte for byte.
///
/// Exit code: 0 done, 1 the store check failed, 2 the run could not be done.
#[derive(Debug, Parser)]
#[command(name = "botline-bench", version)]
#[command(group(ArgGroup::new("limit").required(true).args(["duration", "updates"])))]
struct Cli {
    /// Webhook URL (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080/telegram/webhook")]
    url: String,

    /// Webhook secret, sent as X-Telegram-Bot-Api-Secret-Token.
    #[arg(long, env = "BOTLINE_WEBHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,

    /// Concurrent keep-alive connections (1..=100); each chat is pinned to one.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u16).range(1..=100))]
    connections: u16,

    /// Distinct chats the updates are spread over.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    chats: u32,

    /// Open loop at this many updates per second; latency counts from each update's due time.
    /// Without it: closed loop, as fast as the server answers.
    #[arg(long)]
    rate: Option<f64>,

    /// Issue updates for this long (e.g. 10s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Issue exactly this many updates.
    #[arg(long)]
    updates: Option<u64>,

    /// update_id of the first update [default: unix time in ms × 1000].
    #[arg(long)]
    first_update_id: Option<u64>,

    /// Seed of chats, users and texts [default: derived from the first update id].
    #[arg(long)]
    seed: Option<u64>,

    /// Give an update up (lost by the client) when not acknowledged this long after its first try.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    give_up: Duration,

    /// Longest wait for one request before the connection is dropped and the update retried.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,

    /// Meanwhile, flood the webhook with this many requests per second from other addresses
    /// (a new connection each, no or a wrong secret), to test an edge guard. Needs --duration.
    #[arg(long, requires = "duration")]
    flood_rate: Option<f64>,

    /// Distinct source addresses of the flood, from --flood-from on (loopback on Linux).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    flood_sources: u32,

    /// The first source address of the flood.
    #[arg(long, default_value = "127.1.0.1")]
    flood_from: std::net::Ipv4Addr,

    /// The (wrong) secret the flood sends; none by default.
    #[arg(long)]
    flood_secret: Option<String>,

    /// Also write the report (with every acknowledged update) as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,

    /// After the load, check the store in this Botline data directory.
    #[arg(long, requires = "botline_bin", conflicts_with = "verify_database_url")]
    verify_data_dir: Option<PathBuf>,

    /// After the load, check the store in this Postgres database (`--backend postgres`).
    #[arg(
        long,
        env = "BOTLINE_BENCH_VERIFY_DATABASE_URL",
        hide_env_values = true
    )]
    #[arg(requires = "botline_bin")]
    verify_database_url: Option<String>,

    /// The botline binary that exports the store (`messages export --format jsonl`).
    #[arg(long)]
    botline_bin: Option<PathBuf>,

    /// How long to wait for every acknowledged update to be stored.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    verify_timeout: Duration,
}

impl Cli {
    fn into_config(self) -> LoadConfig {
        let limit = match (self.duration, self.updates) {
            (_, Some(updates)) => LoadLimit::Updates(updates),
            (Some(duration), None) => LoadLimit::Duration(duration),
            // clap requires one of the two.
            (None, None) => LoadConfig::default().limit,
        };
        let store = match (self.verify_data_dir, self.verify_database_url) {
            (Some(dir), _) => Some(VerifyStore::DataDir(dir)),
            (None, Some(database_url)) => Some(VerifyStore::Postgres { database_url }),
            (None, None) => None,
        };
        let verify = store
            .zip(self.botline_bin)
            .map(|(store, botline_bin)| VerifyConfig {
                timeout: self.verify_timeout,
                ..VerifyConfig::of(store, botline_bin)
            });
        let flood = self.flood_rate.map(|rate| FloodConfig {
            rate,
            sources: self.flood_sources,
            base: self.flood_from,
            secret: self.flood_secret,
        });
        LoadConfig {
            url: self.url,
            flood,
            secret: self.secret.filter(|s| !s.is_empty()),
            connections: usize::from(self.connections),
            chats: self.chats as usize,
            rate: self.rate,
            limit,
            first_update_id: self.first_update_id,
            seed: self.seed,
            give_up: self.give_up,
            request_timeout: self.request_timeout,
            verify,
            json_out: self.json_out,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Cli::parse().into_config();
    match run(config).await {
        Ok(report) => {
            print!("{report}");
            if report.given_up > 0 {
                eprintln!(
                    "botline-bench: warning: {} updates were never acknowledged",
                    report.given_up
                );
            }
            if report.verified_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("botline-bench: error: {error}");
            ExitCode::from(2)
        }
    }
}
