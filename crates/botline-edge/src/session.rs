//! Session tokens: short-lived HS256 JWTs naming a Telegram user, issued once its initData
//! validated.
//!
//! Claims: `iss` = `botline`, `aud` = `botline-webapp`, `sub` = the user id (decimal), `iat`,
//! `exp`. Only HS256 is accepted (a token naming `none` or another algorithm is refused), and
//! expiry is checked against the caller's `now`, with no leeway, so it is testable and exact.
//!
//! The key is either configured ([`SessionKey::from_secret`], at least 32 bytes) or derived
//! from the bot token as `HMAC-SHA256(key = "botline-edge session key v1", message = token)`:
//! a label of its own, so the session key is never a key Telegram's scheme uses, and knowing
//! one reveals nothing of the token. Changing the bot token ends every session.

use crate::config::ConfigError;
use botline_core::UserId;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "botline";
const AUDIENCE: &str = "botline-webapp";
const DERIVATION_LABEL: &[u8] = b"botline-edge session key v1";
const MIN_KEY_BYTES: usize = 32;

/// The HS256 key; its `Debug` prints `[redacted]`.
#[derive(Clone)]
pub struct SessionKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey([redacted])")
    }
}

impl SessionKey {
    /// The key derived from the bot token.
    pub fn derive_from_bot_token(bot_token: &str) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(DERIVATION_LABEL).expect("HMAC takes any key");
        mac.update(bot_token.as_bytes());
        Self::from_bytes(&mac.finalize().into_bytes())
    }

    /// A configured key of at least 32 bytes.
    pub fn from_secret(secret: &[u8]) -> Result<Self, ConfigError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(ConfigError::ShortSessionKey);
        }
        Ok(Self::from_bytes(secret))
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
        }
    }
}

/// A verified session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the token is refused from this second on.
    pub expires_at: u64,
}

/// An issued token and when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken {
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a session token was refused or could not be made. The `Display` text never holds the
/// token or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("session token has expired")]
    Expired,
    /// Not a token this key signed: malformed, tampered with, another algorithm or audience.
    #[error("session token is not valid")]
    Invalid,
    #[error("cannot sign a session token")]
    Signing,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
}

impl SessionKey {
    /// A token for `user_id`, valid for `ttl` from `now`.
    pub fn issue(
        &self,
        user_id: UserId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SessionToken, SessionError> {
        let issued_at = unix_seconds(now);
        let expires_at = issued_at.saturating_add(ttl.as_secs().max(1));
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: user_id.0.to_string(),
            iat: issued_at,
            exp: expires_at,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| SessionError::Signing)?;
        Ok(SessionToken { token, expires_at })
    }
}

/// Verifies a session token at `now`: signature, algorithm, issuer, audience, expiry.
pub fn verify_session_token(
    token: &str,
    key: &SessionKey,
    now: SystemTime,
) -> Result<Session, SessionError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
    // Expiry is checked below against the caller's clock, exactly.
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
        .map_err(|_| SessionError::Invalid)?
        .claims;
    if unix_seconds(now) >= claims.exp {
        return Err(SessionError::Expired);
    }
    let user_id = claims
        .sub
        .parse::<i64>()
        .map_err(|_| SessionError::Invalid)?;
    Ok(Session {
        user_id: UserId(user_id),
        issued_at: claims.iat,
        expires_at: claims.exp,
    })
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const TOKEN: &str = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn round_trip_and_expiry() {
        let key = SessionKey::derive_from_bot_token(TOKEN);
        let issued = key
            .issue(
                UserId(279058397),
                Duration::from_secs(900),
                at(1_700_000_000),
            )
            .unwrap();
        assert_eq!(issued.expires_at, 1_700_000_900);
        let session = verify_session_token(&issued.token, &key, at(1_700_000_899)).unwrap();
        assert_eq!(
            session,
            Session {
                user_id: UserId(279058397),
                issued_at: 1_700_000_000,
                expires_at: 1_700_000_900
            }
        );
        assert_eq!(
            verify_session_token(&issued.token, &key, at(1_700_000_900)),
            Err(SessionError::Expired)
        );
    }

    #[test]
    fn other_keys_and_tampering_are_refused() {
        let key = SessionKey::derive_from_bot_token(TOKEN);
        let now = at(1_700_000_000);
        let issued = key.issue(UserId(42), Duration::from_secs(60), now).unwrap();

        let other = SessionKey::derive_from_bot_token("123456:another-token");
        assert_eq!(
            verify_session_token(&issued.token, &other, now),
            Err(SessionError::Invalid)
        );
        let configured = SessionKey::from_secret(&[7u8; 32]).unwrap();
        assert_eq!(
            verify_session_token(&issued.token, &configured, now),
            Err(SessionError::Invalid)
        );

        // Another user id in the payload, the signature kept.
        let parts: Vec<&str> = issued.token.split('.').collect();
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(payload.replace("\"42\"", "\"43\""));
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(
            verify_session_token(&tampered, &key, now),
            Err(SessionError::Invalid)
        );

        // alg "none", unsigned.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert_eq!(
            verify_session_token(&none, &key, now),
            Err(SessionError::Invalid)
        );
        assert_eq!(
            verify_session_token("not a token", &key, now),
            Err(SessionError::Invalid)
        );
    }

    #[test]
    fn keys_are_never_printed_and_short_ones_refused() {
        let key = SessionKey::derive_from_bot_token(TOKEN);
        assert!(!format!("{key:?}").contains("ABC"));
        let token = key
            .issue(UserId(1), Duration::from_secs(60), SystemTime::now())
            .unwrap();
        assert!(!format!("{token:?}").contains(&token.token));
        assert_eq!(
            SessionKey::from_secret(b"short").unwrap_err(),
            ConfigError::ShortSessionKey
        );
    }
}
