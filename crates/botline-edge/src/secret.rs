//! A secret string: compared in constant time, never printed.

use std::fmt;
use subtle::ConstantTimeEq;

/// A bot token, webhook secret or key: its `Debug` prints `[redacted]`, and the crate reads it
/// only to compute or compare with it.
#[derive(Clone)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into().into_boxed_str())
    }

    /// Whether `candidate` is this secret, in time that does not depend on where they differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        // `ct_eq` on slices of unequal length returns false without comparing their contents.
        bool::from(self.0.as_bytes().ct_eq(candidate))
    }

    /// The secret itself, to compute with; never to a log or an error.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_itself_and_is_never_printed() {
        let secret = Secret::new("hunter2_secret");
        assert!(secret.matches(b"hunter2_secret"));
        assert!(!secret.matches(b"hunter2_secreT"));
        assert!(!secret.matches(b"hunter2_secre"));
        assert!(!secret.matches(b""));
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
