//! Botline takes Telegram bot updates and never loses one: each update is durable before
//! Telegram hears 200, processed exactly once into a store, and visible to the operator.
//!
//! This crate is the `botline` binary's library: the HTTP router ([`http`]), the worker
//! ([`worker`]), the Bot API client ([`telegram`]) and the [`sender`] that answers in the chat,
//! long polling ([`poll`]), settings ([`config`]), metrics ([`metrics`]), the operator commands
//! ([`ops`]) and [`serve`], which runs them together.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `sqlite` | yes | the embedded backend (`--backend embedded`): one SQLite file in the data directory |
//! | `aws` | yes | the AWS backend (`--backend aws`, SQS + DynamoDB) and secrets from Secrets Manager or SSM ([`aws`]) |

#[cfg(feature = "aws")]
pub mod aws;
mod backoff;
pub mod cli;
pub mod config;
pub mod forward;
pub mod handler;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod ops;
pub mod poll;
mod pump;
pub mod register;
pub mod runner;
pub mod schema;
pub mod secret;
pub mod sender;
pub mod serve;
pub mod shared_limits;
pub mod telegram;
pub mod transfer;
pub mod worker;

use std::sync::LazyLock;

/// The crate version, with the git commit it was built from when known: `0.1.0+1a2b3c4d5e6f`.
pub fn version() -> &'static str {
    static VERSION: LazyLock<String> = LazyLock::new(|| match option_env!("BOTLINE_GIT_COMMIT") {
        Some(commit) => format!("{}+{commit}", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    });
    &VERSION
}
