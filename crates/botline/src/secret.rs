//! The webhook secret: compared in constant time, never printed; and the database URL, which
//! may carry a password.

use crate::telegram::BotToken;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// Telegram's `secret_token`: 1–256 characters of `A-Z a-z 0-9 _ -`.
#[derive(Clone)]
pub struct WebhookSecret {
    value: Vec<u8>,
    /// SHA-256 of `value`: what a candidate's digest is compared with.
    digest: [u8; 32],
}

impl WebhookSecret {
    pub fn new(value: String) -> Result<Self, &'static str> {
        if value.is_empty() || value.len() > 256 {
            return Err("a webhook secret is 1 to 256 characters long");
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err("a webhook secret may only hold A-Z, a-z, 0-9, _ and -");
        }
        let digest = Sha256::digest(value.as_bytes()).into();
        Ok(Self {
            value: value.into_bytes(),
            digest,
        })
    }

    /// The secret itself, to hand to Telegram's setWebhook; never to a log.
    pub fn expose(&self) -> &str {
        // Only ASCII was accepted in `new`.
        std::str::from_utf8(&self.value).unwrap_or_default()
    }

    /// Whether `candidate` is the secret, in time that depends neither on where they differ nor
    /// on the secret's length: the candidate's SHA-256 is compared with the secret's, two arrays
    /// of 32 bytes, in constant time. (`ct_eq` on slices of unequal length returns at once, which
    /// told an attacker the secret's length.)
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let candidate: [u8; 32] = Sha256::digest(candidate).into();
        bool::from(self.digest.ct_eq(&candidate))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.value)
    }
}

/// A database connection string (`postgres://user:password@host/db`): it may hold a password,
/// so its `Debug` never shows it (a `Settings` printed whole in a log stays safe).
#[derive(Clone)]
pub struct DatabaseUrl(SecretString);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    /// The URL itself, to connect with; never to a log or an error.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseUrl([redacted])")
    }
}

impl PartialEq for DatabaseUrl {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

/// For `--database-url`.
impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(url))
    }
}

/// Secrets a caller fetched from a secret store (Secrets Manager, SSM Parameter Store) for the
/// settings: they take the place of `BOTLINE_WEBHOOK_SECRET`, `BOTLINE_BOT_TOKEN`,
/// `BOTLINE_HANDLER_SECRET_TOKEN` and `BOTLINE_HANDLER_SIGNING_SECRET`, which the secret
/// store's loader refuses to combine with an `_ID` or `_PARAM` of the same secret.
#[derive(Clone, Default, PartialEq)]
pub struct FetchedSecrets {
    pub webhook_secret: Option<WebhookSecret>,
    pub bot_token: Option<BotToken>,
    pub handler_secret_token: Option<WebhookSecret>,
    pub handler_signing_secret: Option<SigningSecret>,
}

/// The Standard Webhooks signing secret (`whsec_…`) of forwarded requests; never shown.
#[derive(Clone)]
pub struct SigningSecret(SecretString);

impl SigningSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(SecretString::from(secret.into()))
    }

    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for SigningSecret {
    fn eq(&self, other: &Self) -> bool {
        self.expose_secret() == other.expose_secret()
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl fmt::Debug for FetchedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedSecrets")
            .field("webhook_secret", &self.webhook_secret.is_some())
            .field("bot_token", &self.bot_token.is_some())
            .field("handler_secret_token", &self.handler_secret_token.is_some())
            .field(
                "handler_signing_secret",
                &self.handler_signing_secret.is_some(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_itself() {
        let secret = WebhookSecret::new("abc_DEF-123".into()).unwrap();
        assert!(secret.matches(b"abc_DEF-123"));
        assert!(!secret.matches(b"abc_DEF-124"));
        assert!(!secret.matches(b"abc_DEF-12"));
        assert!(!secret.matches(b""));
    }

    #[test]
    fn is_never_printed() {
        let secret = WebhookSecret::new("hunter2".into()).unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn candidates_of_any_length_are_compared_as_digests() {
        let secret = WebhookSecret::new("abc_DEF-123".into()).unwrap();
        for candidate in [&b""[..], b"a", b"abc_DEF-1234", &[b'x'; 10_000]] {
            assert!(!secret.matches(candidate));
        }
        assert!(secret == WebhookSecret::new("abc_DEF-123".into()).unwrap());
    }

    #[test]
    fn a_database_url_is_never_printed() {
        let url: DatabaseUrl = "postgres://botline:pa55w0rd@db:5432/botline"
            .parse()
            .unwrap();
        assert!(!format!("{url:?}").contains("pa55w0rd"));
        assert_eq!(url.expose(), "postgres://botline:pa55w0rd@db:5432/botline");
    }

    #[test]
    fn has_telegram_shape() {
        assert!(WebhookSecret::new(String::new()).is_err());
        assert!(WebhookSecret::new("a".repeat(257)).is_err());
        assert!(WebhookSecret::new("has space".into()).is_err());
        assert!(WebhookSecret::new("a".repeat(256)).is_ok());
    }
}
