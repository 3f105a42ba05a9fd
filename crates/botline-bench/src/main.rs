//! `botline-bench`: the command line of the load generator; see the library's documentation.

use botline_bench::flood::FloodConfig;
use botline_bench::server::parse_env;
use botline_bench::{
    BenchError, CrashPlan, LoadConfig, LoadLimit, ManagedRun, ManagedServer, RepliesConfig, Report,
    ServerConfig, VerifyConfig, VerifyStore, parse_duration, run, run_managed,
};
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgGroup, CommandFactory, FromArgMatches, Parser};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Delivers Telegram-like updates to a Botline webhook the way Telegram does (per-chat order,
/// retries of the same update until acknowledged), measures acknowledgement latency and
/// throughput, and optionally checks that every acknowledged update was stored exactly once,
/// byte for byte.
///
/// With --serve it starts the server itself (fresh data directory, free loopback port, generated
/// secret), samples its memory, can SIGKILL and restart it at random moments (--kills), checks
/// its store and stops it with SIGTERM.
///
/// Exit code: 0 done, 1 the store check failed (or a managed server died on its own), 2 the run
/// could not be done.
#[derive(Debug, Parser)]
#[command(name = "botline-bench", version)]
#[command(group(ArgGroup::new("limit").required(true).args(["duration", "updates"])))]
struct Cli {
    /// Webhook URL (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080/telegram/webhook")]
    url: String,

    /// Start `BIN serve` and load it: on a fresh data directory, a free loopback port and a
    /// generated webhook secret, without the caller's BOTLINE_* variables. Samples its RSS once
    /// a second, checks its store with BIN afterwards, stops it with SIGTERM.
    #[arg(
        long,
        value_name = "BIN",
        conflicts_with_all = ["url", "verify_data_dir", "botline_bin"]
    )]
    serve: Option<PathBuf>,

    /// The managed server's data directory: created if missing, must be empty [default: a new
    /// temporary directory, kept and printed].
    #[arg(long, value_name = "DIR", requires = "serve")]
    data_dir: Option<PathBuf>,

    /// SIGKILL the managed server this many times at random moments spread over the run
    /// (--seed governs them), each time restarting it on the same data directory and port.
    #[arg(long, value_name = "N", requires = "serve")]
    kills: Option<u32>,

    /// Extra environment of the managed server, e.g. BOTLINE_LEASE=2s (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env, requires = "serve")]
    server_env: Vec<(String, String)>,

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

    /// Seed of chats, users and texts, and of the moments of --kills [default: derived from the
    /// first update id].
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

    /// Also write the report (with every acknowledged update and the run second by second) as
    /// JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,

    /// Also draw the run over time to this SVG: throughput, latency p50/p99/max and a managed
    /// server's RSS per second, with its kills.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

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

    /// After the load, check the bot's replies at this Bot API stand-in (`botline-standin`'s base
    /// URL, http://HOST:PORT), for Botline forwarding to the echo-and-/start example bot
    /// (BOTLINE_HANDLER_URL): every acknowledged text message must get exactly one sendMessage
    /// with the right text. Reports receipt-to-reply latency and replies per second.
    #[arg(long, value_name = "URL", conflicts_with = "serve")]
    verify_replies: Option<String>,

    /// How long to wait for every acknowledged update to be stored (with --kills at least the
    /// managed server's lease + 30 s: updates in flight at a kill wait out their lease).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    verify_timeout: Duration,
}

/// What to run: a load against a server that runs already, or one this process manages.
enum Mode {
    Load(LoadConfig),
    Managed {
        load: LoadConfig,
        server: ServerConfig,
        managed: ManagedRun,
    },
}

impl Cli {
    /// Reads the command line; exits with 2 and clap's message when it is wrong.
    fn parse_checked() -> Self {
        let matches = Self::command().get_matches();
        let cli = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if cli.serve.is_some() {
            // Both also come from the environment, where they do not conflict.
            for (id, flag) in [
                ("secret", "--secret"),
                ("verify_database_url", "--verify-database-url"),
            ] {
                if matches.value_source(id) == Some(ValueSource::CommandLine) {
                    Self::command()
                        .error(
                            ErrorKind::ArgumentConflict,
                            format!(
                                "{flag} cannot be used with --serve: the managed server gets a \
                                 generated secret and its own store"
                            ),
                        )
                        .exit();
                }
            }
        }
        cli
    }

    fn into_mode(mut self) -> Mode {
        let Some(bin) = self.serve.take() else {
            return Mode::Load(self.into_config());
        };
        let server = ServerConfig {
            data_dir: self.data_dir.take(),
            env: std::mem::take(&mut self.server_env),
            ..ServerConfig::new(bin)
        };
        let managed = ManagedRun {
            crash: self.kills.filter(|&kills| kills > 0).map(CrashPlan::new),
            verify_timeout: self.verify_timeout,
        };
        Mode::Managed {
            load: self.into_config(),
            server,
            managed,
        }
    }

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
        let replies = self.verify_replies.map(|standin_url| RepliesConfig {
            standin_url,
            timeout: self.verify_timeout,
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
            replies,
            json_out: self.json_out,
            plot: self.plot,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let outcome = match Cli::parse_checked().into_mode() {
        Mode::Load(config) => run(config).await,
        Mode::Managed {
            load,
            server,
            managed,
        } => managed_run(load, server, managed).await,
    };
    match outcome {
        Ok(report) => {
            print!("{report}");
            warn_about(&report);
            if report.verified_ok() && report.server_ok() {
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

/// Starts the server, says where it is, and runs the load against it.
async fn managed_run(
    load: LoadConfig,
    server: ServerConfig,
    managed: ManagedRun,
) -> Result<Report, BenchError> {
    load.check()?;
    let server = tokio::task::spawn_blocking(move || ManagedServer::start(server))
        .await
        .map_err(|e| BenchError::Task(e.to_string()))??;
    eprintln!(
        "botline-bench: started {} serve on {}, data dir {} (kept), log {}",
        server.bin().display(),
        server.listen(),
        server.data_dir().display(),
        server.log().display()
    );
    run_managed(load, server, managed).await
}

fn warn_about(report: &Report) {
    if report.given_up > 0 {
        eprintln!(
            "botline-bench: warning: {} updates were never acknowledged",
            report.given_up
        );
    }
    let Some(server) = &report.server else {
        return;
    };
    if let Some(died) = &server.died {
        eprintln!("botline-bench: the managed server died on its own: {died}");
    }
    if server.kills < server.kills_planned {
        eprintln!(
            "botline-bench: warning: {} of {} kills done before the load ended",
            server.kills, server.kills_planned
        );
    }
    if !server.stopped_cleanly {
        eprintln!(
            "botline-bench: warning: the managed server did not stop cleanly: {}",
            server.stop
        );
    }
}
