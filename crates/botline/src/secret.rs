//! The webhook secret: compared in constant time, never printed.

use crate::telegram::BotToken;
use std::fmt;
use subtle::ConstantTimeEq;

/// Telegram's `secret_token`: 1–256 characters of `A-Z a-z 0-9 _ -`.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

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
        Ok(Self(value.into_bytes()))
    }

    /// The secret itself, to hand to Telegram's setWebhook; never to a log.
    pub fn expose(&self) -> &str {
        // Only ASCII was accepted in `new`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Whether `candidate` is the secret, in time that does not depend on where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        // Lengths are compared in constant time too: `ct_eq` on slices of unequal length
        // returns false without reading them.
        bool::from(self.0.as_slice().ct_eq(candidate))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl PartialEq for WebhookSecret {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.0)
    }
}

/// Secrets a caller fetched from a secret store (Secrets Manager, SSM Parameter Store) for the
/// settings: they take the place of `BOTLINE_WEBHOOK_SECRET` and `BOTLINE_BOT_TOKEN`, which the
/// secret store's loader refuses to combine with an `_ID` or `_PARAM` of the same secret.
#[derive(Clone, Default, PartialEq)]
pub struct FetchedSecrets {
    pub webhook_secret: Option<WebhookSecret>,
    pub bot_token: Option<BotToken>,
}

impl fmt::Debug for FetchedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchedSecrets")
            .field("webhook_secret", &self.webhook_secret.is_some())
            .field("bot_token", &self.bot_token.is_some())
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
    fn has_telegram_shape() {
        assert!(WebhookSecret::new(String::new()).is_err());
        assert!(WebhookSecret::new("a".repeat(257)).is_err());
        assert!(WebhookSecret::new("has space".into()).is_err());
        assert!(WebhookSecret::new("a".repeat(256)).is_ok());
    }
}
