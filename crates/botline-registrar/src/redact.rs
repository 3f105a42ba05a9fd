//! Keeping secrets out of error text.

use std::fmt;

/// Strings that must never appear in an error's text: a password, a whole connection string.
#[derive(Clone, Default)]
pub(crate) struct Secrets(Vec<String>);

impl Secrets {
    /// Adds `secret` unless it is empty.
    pub(crate) fn add(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if !secret.is_empty() && !self.0.contains(&secret) {
            self.0.push(secret);
        }
    }

    /// `text` with every known secret, and every one of `more` (a request's token), replaced by
    /// `[redacted]`, the longest first so that a secret inside another goes with it.
    pub(crate) fn scrub(&self, text: &str, more: &[&str]) -> String {
        let mut all: Vec<&str> = self
            .0
            .iter()
            .map(String::as_str)
            .chain(more.iter().copied())
            .filter(|s| !s.is_empty())
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut text = text.to_owned();
        for secret in all {
            if text.contains(secret) {
                text = text.replace(secret, crate::REDACTED);
            }
        }
        text
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} {})", self.0.len(), crate::REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_known_secrets_and_extra_ones_longest_first() {
        let mut secrets = Secrets::default();
        secrets.add("pw");
        secrets.add("");
        secrets.add("pw-and-more");
        let text = secrets.scrub("a pw-and-more b pw c tok-123 d", &["tok-123", ""]);
        assert_eq!(text, "a [redacted] b [redacted] c [redacted] d");
        assert!(!format!("{secrets:?}").contains("pw"));
    }
}
