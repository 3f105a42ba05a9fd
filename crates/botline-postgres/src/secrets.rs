//! Keeping the database password out of error text and `Debug` output.

use botline_core::commands::REDACTED;
use percent_encoding::percent_decode_str;
use std::fmt;

/// Strings that must never appear in an error's text: the password as written in the URL,
/// percent-decoded, in a `password` parameter, and `PGPASSWORD` (which sqlx also reads).
#[derive(Clone, Default)]
pub(crate) struct Secrets(Vec<String>);

impl Secrets {
    /// The secrets in a Postgres URL. A URL that does not parse has no known password, so its
    /// whole text is the secret.
    pub(crate) fn of_url(url: &str) -> Self {
        let mut secrets = Self::default();
        match url::Url::parse(url) {
            Ok(parsed) => {
                if let Some(password) = parsed.password() {
                    secrets.add(password);
                    // The password as the server takes it, its `%XX` escapes decoded.
                    secrets.add(
                        percent_decode_str(password)
                            .decode_utf8_lossy()
                            .into_owned(),
                    );
                }
                for (key, value) in parsed.query_pairs() {
                    if key == "password" {
                        secrets.add(value.into_owned());
                    }
                }
            }
            Err(_) => secrets.add(url),
        }
        if let Ok(password) = std::env::var("PGPASSWORD") {
            secrets.add(password);
        }
        secrets
    }

    /// Adds `secret` unless it is empty.
    fn add(&mut self, secret: impl Into<String>) {
        let secret = secret.into();
        if !secret.is_empty() && !self.0.contains(&secret) {
            self.0.push(secret);
            self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// `text` with every secret replaced by `[redacted]`, the longest first so that a secret
    /// inside another goes with it.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.0 {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} {REDACTED})", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_password_as_written_and_decoded() {
        let secrets = Secrets::of_url("postgres://bot:p%40ss-w0rd@db:5432/botline?password=other");
        let text = secrets.scrub("bad p%40ss-w0rd, p@ss-w0rd or other");
        assert_eq!(text, "bad [redacted], [redacted] or [redacted]");
        assert!(!format!("{secrets:?}").contains("w0rd"));
    }

    #[test]
    fn an_unparsable_url_is_a_secret_as_a_whole() {
        let secrets = Secrets::of_url("postgres://bot:pw@[broken");
        assert_eq!(
            secrets.scrub("cannot parse postgres://bot:pw@[broken"),
            "cannot parse [redacted]"
        );
    }

    #[test]
    fn longer_secrets_go_first() {
        let mut secrets = Secrets::default();
        secrets.add("pw");
        secrets.add("pw-and-more");
        secrets.add("");
        assert_eq!(
            secrets.scrub("a pw-and-more b pw"),
            "a [redacted] b [redacted]"
        );
    }
}
