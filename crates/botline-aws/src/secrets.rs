//! Secrets — the webhook secret, the bot token, the OpenAI key — from the environment, a file,
//! Secrets Manager or SSM Parameter Store, kept in memory and refreshed now and then.
//!
//! Each secret `NAME` ([`SECRET_NAMES`]) comes from exactly one of:
//!
//! | variable | the secret is |
//! | --- | --- |
//! | `BOTLINE_<NAME>` | the value itself |
//! | `BOTLINE_<NAME>_FILE` | the content of that file |
//! | `BOTLINE_<NAME>_ID` | the `SecretString` of that Secrets Manager secret (name or ARN) |
//! | `BOTLINE_<NAME>_PARAM` | that SSM parameter (a `SecureString`, decrypted) |
//!
//! Values are trimmed; an empty variable counts as unset; two set at once are an error. A value
//! from a file, Secrets Manager or SSM is fetched again after the refresh interval (5 minutes by
//! default), so a rotated secret is picked up; when that fails, the value fetched before stays
//! in use and a warning is logged. [`SecretValue`] never shows its value through `Debug` or
//! `Display`, and no error or log line holds one.
//!
//! ```no_run
//! use botline_aws::secrets::{SecretSource, Secrets};
//!
//! # async fn run() -> Result<(), botline_aws::AwsError> {
//! let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let secrets = Secrets::new(&config);
//! if let Some(token) = secrets.get("BOT_TOKEN").await? {
//!     let _ = token.expose();
//! }
//! # Ok(())
//! # }
//! ```

use crate::{AwsError, describe};
use aws_config::SdkConfig;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The secrets Botline reads.
pub const SECRET_NAMES: [&str; 5] = [
    "WEBHOOK_SECRET",
    "BOT_TOKEN",
    "OPENAI_API_KEY",
    "HANDLER_SECRET_TOKEN",
    "HANDLER_SIGNING_SECRET",
];

/// A secret's value. `Debug` and `Display` show `<redacted>`; [`expose`](Self::expose) gives
/// the value to the one place that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl fmt::Display for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where one secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `BOTLINE_<NAME>`.
    Value(SecretValue),
    /// `BOTLINE_<NAME>_FILE`.
    File(PathBuf),
    /// `BOTLINE_<NAME>_ID`: a Secrets Manager secret's name or ARN.
    SecretsManager(String),
    /// `BOTLINE_<NAME>_PARAM`: an SSM parameter's name.
    Parameter(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(value) => f.debug_tuple("Value").field(value).finish(),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::SecretsManager(id) => f.debug_tuple("SecretsManager").field(id).finish(),
            Self::Parameter(name) => f.debug_tuple("Parameter").field(name).finish(),
        }
    }
}

impl SecretSource {
    /// The source of secret `name` (`BOT_TOKEN`, …) in the process environment, if any.
    pub fn from_env(name: &str) -> Result<Option<Self>, AwsError> {
        Self::from_lookup(name, |var| std::env::var(var).ok())
    }

    /// The source of secret `name` through `var`, which answers for a variable's name.
    pub fn from_lookup(
        name: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, AwsError> {
        let base = format!("BOTLINE_{name}");
        let set: Vec<(String, String)> = ["", "_FILE", "_ID", "_PARAM"]
            .iter()
            .map(|suffix| format!("{base}{suffix}"))
            .filter_map(|variable| {
                let value = var(&variable)?.trim().to_owned();
                (!value.is_empty()).then_some((variable, value))
            })
            .collect();
        if set.len() > 1 {
            let names: Vec<&str> = set.iter().map(|(variable, _)| variable.as_str()).collect();
            return Err(AwsError::Secret {
                name: name.to_owned(),
                reason: format!(
                    "more than one source is set ({}): set exactly one",
                    names.join(", ")
                ),
            });
        }
        Ok(set.into_iter().next().map(|(variable, value)| {
            match variable.strip_prefix(&base).unwrap_or_default() {
                "_FILE" => Self::File(PathBuf::from(value)),
                "_ID" => Self::SecretsManager(value),
                "_PARAM" => Self::Parameter(value),
                _ => Self::Value(SecretValue::new(value)),
            }
        }))
    }

    /// The cache's key: where the value is fetched from.
    fn key(&self) -> String {
        match self {
            Self::Value(_) => "value".to_owned(),
            Self::File(path) => format!("file:{}", path.display()),
            Self::SecretsManager(id) => format!("secretsmanager:{id}"),
            Self::Parameter(name) => format!("ssm:{name}"),
        }
    }
}

/// A fetched value and when to fetch it again.
struct Cached {
    value: SecretValue,
    next_fetch: Instant,
}

/// Resolves secrets, keeping each fetched value for the refresh interval. One per process;
/// cheap to share behind an `Arc`.
pub struct Secrets {
    secrets_manager: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
    refresh: Duration,
    cache: Mutex<HashMap<String, Cached>>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached: Vec<String> = self
            .cache
            .lock()
            .map(|cache| cache.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("Secrets")
            .field("refresh", &self.refresh)
            .field("cached", &cached)
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// How long a fetched value is used before it is fetched again.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

    /// After a failed refresh, how long the old value is used before the next try.
    const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

    /// Secrets fetched with the SDK configuration's credentials and region (and timeouts:
    /// [`ClientOptions`](crate::ClientOptions) sets them).
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            secrets_manager: aws_sdk_secretsmanager::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            refresh: Self::DEFAULT_REFRESH,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Another refresh interval.
    pub fn with_refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }

    /// Secret `name` (`BOT_TOKEN`, …) from the source the environment names; `None` when it
    /// names none.
    pub async fn get(&self, name: &str) -> Result<Option<SecretValue>, AwsError> {
        match SecretSource::from_env(name)? {
            Some(source) => self.resolve(name, &source).await.map(Some),
            None => Ok(None),
        }
    }

    /// Secret `name` from `source`: cached, fetched when the cache has none or it is older
    /// than the refresh interval. A failed refresh keeps the value fetched before (logged).
    pub async fn resolve(
        &self,
        name: &str,
        source: &SecretSource,
    ) -> Result<SecretValue, AwsError> {
        if let SecretSource::Value(value) = source {
            return Ok(value.clone());
        }
        let key = source.key();
        let now = Instant::now();
        let cached = self.cached(&key);
        if let Some((value, next_fetch)) = &cached
            && now < *next_fetch
        {
            return Ok(value.clone());
        }
        match self.fetch(name, source).await {
            Ok(value) => {
                self.store(key, value.clone(), now + self.refresh);
                Ok(value)
            }
            Err(e) => match cached {
                Some((old, _)) => {
                    tracing::warn!(
                        secret = name,
                        error = %e,
                        "could not refresh a secret; the value fetched before stays in use"
                    );
                    let retry = now + self.refresh.min(Self::RETRY_AFTER_FAILURE);
                    self.store(key, old.clone(), retry);
                    Ok(old)
                }
                None => Err(e),
            },
        }
    }

    fn cached(&self, key: &str) -> Option<(SecretValue, Instant)> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache
            .get(key)
            .map(|cached| (cached.value.clone(), cached.next_fetch))
    }

    fn store(&self, key: String, value: SecretValue, next_fetch: Instant) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.insert(key, Cached { value, next_fetch });
    }

    async fn fetch(&self, name: &str, source: &SecretSource) -> Result<SecretValue, AwsError> {
        let error = |reason: String| AwsError::Secret {
            name: name.to_owned(),
            reason,
        };
        let value = match source {
            SecretSource::Value(value) => return Ok(value.clone()),
            SecretSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| error(format!("cannot read {}: {}", path.display(), e.kind())))?,
            SecretSource::SecretsManager(id) => self
                .secrets_manager
                .get_secret_value()
                .secret_id(id)
                .send()
                .await
                .map_err(|e| error(describe(&format!("GetSecretValue {id}"), &e)))?
                .secret_string
                .ok_or_else(|| {
                    error(format!(
                        "Secrets Manager secret {id} has no SecretString (a binary secret?)"
                    ))
                })?,
            SecretSource::Parameter(parameter) => self
                .ssm
                .get_parameter()
                .name(parameter)
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| error(describe(&format!("GetParameter {parameter}"), &e)))?
                .parameter
                .and_then(|p| p.value)
                .ok_or_else(|| error(format!("SSM parameter {parameter} has no value")))?,
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(error("it is empty".into()));
        }
        Ok(SecretValue::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn one_source_per_secret() {
        let vars = [
            (
                "BOTLINE_BOT_TOKEN_ID",
                "arn:aws:secretsmanager:eu-north-1:1:secret:bot",
            ),
            ("BOTLINE_WEBHOOK_SECRET", "  hunter2  "),
            ("BOTLINE_OPENAI_API_KEY", ""),
            ("BOTLINE_OPENAI_API_KEY_PARAM", "/botline/openai"),
        ];
        assert_eq!(
            SecretSource::from_lookup("BOT_TOKEN", lookup(&vars)).unwrap(),
            Some(SecretSource::SecretsManager(
                "arn:aws:secretsmanager:eu-north-1:1:secret:bot".into()
            ))
        );
        assert_eq!(
            SecretSource::from_lookup("WEBHOOK_SECRET", lookup(&vars)).unwrap(),
            Some(SecretSource::Value(SecretValue::new("hunter2")))
        );
        assert_eq!(
            SecretSource::from_lookup("OPENAI_API_KEY", lookup(&vars)).unwrap(),
            Some(SecretSource::Parameter("/botline/openai".into()))
        );
        assert_eq!(
            SecretSource::from_lookup("OTHER", lookup(&vars)).unwrap(),
            None
        );
    }

    #[test]
    fn two_sources_are_an_error_that_shows_no_value() {
        let vars = [
            ("BOTLINE_BOT_TOKEN", "123:very-secret"),
            ("BOTLINE_BOT_TOKEN_FILE", "/run/secrets/bot"),
        ];
        let err = SecretSource::from_lookup("BOT_TOKEN", lookup(&vars)).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("BOTLINE_BOT_TOKEN, BOTLINE_BOT_TOKEN_FILE"),
            "{text}"
        );
        assert!(!text.contains("very-secret"), "{text}");
    }

    #[test]
    fn values_are_redacted() {
        let value = SecretValue::new("123:very-secret");
        let source = SecretSource::Value(value.clone());
        let shown = format!("{value} {value:?} {source:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(value.expose(), "123:very-secret");
    }
}
