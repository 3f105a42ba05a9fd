//! Registration backends for `/register <username> <token>`: an outside database decides whether
//! the credentials are good, Botline only asks and answers the user.
//!
//! The embedded backend checks single-use tokens inside Botline's own SQLite store
//! (`botline tokens issue`); this crate is for deployments whose tokens live elsewhere. Each
//! backend implements [`Registrar`]:
//!
//! | backend | what it calls | tested against |
//! | --- | --- | --- |
//! | [`PostgresRegistrar`] (feature `postgres`) | `SELECT schema.fn($1, $2, $3, $4)`, a function returning `boolean` | a real Postgres, in this crate's tests |
//! | [`SqlServerRegistrar`] (feature `sqlserver`) | `EXEC @rc = [dbo].[PartyTelegramUser_REGISTER_tr] @Username = @P1, …` | **not run against a live SQL Server**: statement, parameters, answer and error mapping are unit-tested |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `postgres` | yes | [`PostgresRegistrar`], on sqlx 0.8 (tokio, no TLS) |
//! | `sqlserver` | yes | [`SqlServerRegistrar`], on tiberius 0.13 (TDS, TLS by rustls) |
//!
//! # What an answer means
//!
//! - `Ok(true)`: registered; the user is told "Registration successful!".
//! - `Ok(false)`: the database refused the credentials; the user is told to check them.
//! - `Err(`[`RegistrarError::Unavailable`]`)`: no decision could be had now (server down, timeout,
//!   deadlock, pool exhausted): retry the update later.
//! - `Err(`[`RegistrarError::Misconfigured`]`)`: the database is there but cannot answer as
//!   configured (function or procedure missing, wrong signature or result type, login or
//!   permission refused), or its routine answered something the contract does not define (a
//!   SQL Server procedure that returns no result set and return code 0): an operator must act;
//!   retrying alone will not help. An undefined answer is never taken as a registration.
//!
//! # At least once
//!
//! Botline processes each update exactly once into its own store, but the registrar is another
//! database: if the worker stops after the function committed and before Botline recorded its
//! answer, the update is processed again and the function is **called again for the same
//! message**. A registration function must therefore be idempotent for
//! `(telegram_user_id, token)`: the same user presenting a token it already redeemed must get
//! `true` again. The example function in `sql/example_postgres.sql` (see the crate's
//! `README.md`) behaves so, and the tests check it.
//!
//! # Secrets
//!
//! The token a user typed and the database password are never part of an error's text or of any
//! `Debug` output: [`RegistrationRequest`]'s `Debug` prints `[redacted]`, the backends print their
//! target without its password, and every message taken from a driver or a server is scrubbed of
//! the token and the password before it becomes a [`RegistrarError`].

use std::fmt;

use async_trait::async_trait;

// Shared by the backends; with one feature off, part of them goes unused.
#[cfg_attr(
    not(all(feature = "postgres", feature = "sqlserver")),
    allow(dead_code)
)]
mod identifier;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg_attr(
    not(any(feature = "postgres", feature = "sqlserver")),
    allow(dead_code)
)]
mod redact;
#[cfg(feature = "sqlserver")]
mod sqlserver;

#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresRegistrar};
#[cfg(feature = "sqlserver")]
pub use sqlserver::{SqlServerOptions, SqlServerRegistrar};

/// What `Debug` prints in place of a secret.
pub const REDACTED: &str = "[redacted]";

/// A backend that decides `/register` attempts.
#[async_trait]
pub trait Registrar: Send + Sync + fmt::Debug {
    /// `true` = registered, `false` = credentials refused. `Err` = could not decide now (retry
    /// later) or misconfigured.
    async fn register(&self, request: &RegistrationRequest<'_>) -> Result<bool, RegistrarError>;

    /// Cheap connectivity check for health.
    async fn ping(&self) -> Result<(), RegistrarError>;
}

/// One `/register` attempt as the backend receives it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RegistrationRequest<'a> {
    /// The username the user typed.
    pub username: &'a str,
    /// The token as typed: a secret, never printed (`Debug` shows `[redacted]`).
    pub token: &'a str,
    /// The sender's Telegram user id.
    pub telegram_user_id: i64,
    /// The chat the command was sent in.
    pub chat_id: i64,
}

impl fmt::Debug for RegistrationRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationRequest")
            .field("username", &self.username)
            .field("token", &REDACTED)
            .field("telegram_user_id", &self.telegram_user_id)
            .field("chat_id", &self.chat_id)
            .finish()
    }
}

/// Why a registrar could not decide. The text never holds a token or a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrarError {
    /// No answer now (unreachable, timed out, overloaded, deadlocked): retry later.
    #[error("registration backend unavailable: {0}")]
    Unavailable(String),
    /// The backend cannot answer as configured (function missing, wrong signature, login
    /// refused): an operator must act.
    #[error("registration backend misconfigured: {0}")]
    Misconfigured(String),
}

impl RegistrarError {
    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_request_hides_the_token() {
        let request = RegistrationRequest {
            username: "alice",
            token: "s3cr3t-T0ken",
            telegram_user_id: 42,
            chat_id: -100,
        };
        let debug = format!("{request:?}");
        assert!(!debug.contains("s3cr3t-T0ken"), "{debug}");
        assert!(debug.contains("[redacted]") && debug.contains("alice") && debug.contains("42"));
    }

    #[test]
    fn only_unavailable_is_retryable() {
        assert!(RegistrarError::Unavailable("down".into()).is_retryable());
        assert!(!RegistrarError::Misconfigured("no function".into()).is_retryable());
    }
}
