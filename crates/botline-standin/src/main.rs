//! `botline-standin`: the Telegram Bot API stand-in as a server of its own, for manual runs and
//! load tests. Prints its base URL on stdout once listening; serves until Ctrl-C or SIGTERM.
//!
//! The token comes from `--token-file` or `BOTLINE_STANDIN_TOKEN`, never from the command line
//! (where `ps` would show it), and is never printed.

use botline_standin::{Settings, StandIn};
use clap::Parser;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const TOKEN_ENV: &str = "BOTLINE_STANDIN_TOKEN";

/// A local stand-in for Telegram's Bot API server, for manual runs and load tests.
///
/// Prints its base URL once listening. Control endpoints (unauthenticated, keep it local):
/// GET and DELETE /_standin/calls[?method=NAME][&from=N] (each call with its arrival in unix
/// microseconds, at_unix_us), POST /_standin/faults
/// ({"method":"sendMessage","count":2,"kind":"too_many_requests","retry_after":3}; kinds
/// server {status}, api {code, description}, drop, delay {ms}), POST /_standin/updates (an
/// update or an array), GET /_standin/webhook, POST /_standin/webhook/error {date, message},
/// POST /_standin/chats/ID/blocked, /_standin/chats/ID/missing,
/// /_standin/chats/ID/undeletable/MESSAGE_ID.
#[derive(Debug, Parser)]
#[command(name = "botline-standin", version)]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// File holding the bot token to accept (else the BOTLINE_STANDIN_TOKEN variable).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Answer 429 past Telegram's flood limits on sendMessage and sendPhoto.
    #[arg(long)]
    enforce_limits: bool,
    /// The bot's username, as getMe answers it.
    #[arg(long, default_value = "botline_test_bot")]
    username: String,
}

/// The token from the file or the environment; errors never contain it.
fn read_token(file: Option<&Path>) -> Result<String, String> {
    let from_env = std::env::var(TOKEN_ENV).ok();
    let token = match (file, from_env) {
        (Some(_), Some(_)) => return Err(format!("give --token-file or {TOKEN_ENV}, not both")),
        (Some(path), None) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?,
        (None, Some(token)) => token,
        (None, None) => {
            return Err(format!(
                "give the bot token with --token-file or {TOKEN_ENV}"
            ));
        }
    };
    let token = token.trim();
    if token.is_empty() || token.contains(char::is_whitespace) || token.contains('/') {
        return Err("the bot token must be one word without '/' (as @BotFather gives it)".into());
    }
    Ok(token.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let token = match read_token(cli.token_file.as_deref()) {
        Ok(token) => token,
        Err(error) => {
            eprintln!("botline-standin: {error}");
            return ExitCode::from(2);
        }
    };
    let settings = Settings {
        token,
        username: cli.username,
        enforce_limits: cli.enforce_limits,
        control_api: true,
        listen: cli.listen,
        ..Settings::default()
    };
    let standin = match StandIn::try_start(settings) {
        Ok(standin) => standin,
        Err(error) => {
            eprintln!("botline-standin: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", standin.base_url());
    if let Err(error) = stopped().await {
        eprintln!("botline-standin: cannot wait for a signal: {error}");
        return ExitCode::FAILURE;
    }
    drop(standin);
    ExitCode::SUCCESS
}

/// Returns on Ctrl-C or, on Unix, SIGTERM.
async fn stopped() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
