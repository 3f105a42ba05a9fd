//! A secret string: compared in constant time, never printed.

use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// A bot token, webhook secret or key: its `Debug` prints `[redacted]`, and the crate reads it
/// only to compute or compare with it.
///
/// It keeps the SHA-256 digest of its value, computed once, so that [`Secret::matches`]
/// compares two 32-byte digests and its time depends on neither the secret's length nor the
/// candidate's.
#[derive(Clone)]
pub struct Secret {
    value: Box<str>,
    digest: [u8; 32],
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into().into_boxed_str();
        let digest = sha256(value.as_bytes());
        Self { value, digest }
    }

    /// Whether `candidate` is this secret, in time that depends neither on where they differ
    /// nor on their lengths: the candidate's SHA-256 digest is compared with the secret's in
    /// constant time. (`ct_eq` on the raw slices would return early when the lengths differ,
    /// telling a timing attacker the secret's length.)
    pub fn matches(&self, candidate: &[u8]) -> bool {
        bool::from(self.digest.ct_eq(&sha256(candidate)))
    }

    /// The secret itself, to compute with; never to a log or an error.
    pub(crate) fn expose(&self) -> &str {
        &self.value
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
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
        // Neither a prefix nor a longer string that starts with it.
        assert!(!secret.matches(b"hunter2_secre"));
        assert!(!secret.matches(b"hunter2_secret\0"));
        assert!(!secret.matches(b"hunter2_secrets"));
        assert!(!secret.matches(b""));
        assert_eq!(secret.expose(), "hunter2_secret");
        let printed = format!("{secret:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        // Nor its digest, which would let the secret be checked offline.
        assert!(!printed.contains(&hex::encode(secret.digest)), "{printed}");
        assert!(
            !printed.contains(&format!("{:?}", secret.digest)),
            "{printed}"
        );
    }

    #[test]
    fn the_empty_secret_matches_only_the_empty_string() {
        let secret = Secret::new("");
        assert!(secret.matches(b""));
        assert!(!secret.matches(b"\0"));
        assert!(!secret.matches(b"x"));
    }

    #[test]
    fn clones_match_alike() {
        let secret = Secret::new("s3cret_token");
        let clone = secret.clone();
        assert!(clone.matches(b"s3cret_token"));
        assert!(!clone.matches(b"s3cret_toke"));
    }
}
