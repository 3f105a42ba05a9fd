//! Botline on AWS: the backend of `--backend aws` (SQS + DynamoDB, see `botline_aws`) and the
//! secrets that live in Secrets Manager or SSM Parameter Store.
//!
//! `botline serve`, `botline poll` and both Lambda functions read the webhook secret, the
//! bot token and the handler's secret token and signing secret (forwarding) the same way: `BOTLINE_<NAME>` or `BOTLINE_<NAME>_FILE` as always, or
//! `BOTLINE_<NAME>_ID` (a Secrets Manager secret's name or ARN) or `BOTLINE_<NAME>_PARAM` (an
//! SSM `SecureString`), fetched with the AWS SDK's credentials. Exactly one source per secret;
//! two at once are refused. Values from a store are cached and fetched again after five
//! minutes ([`SecretStore::fill`] is cheap between fetches), so a long-running process or a
//! warm Lambda picks up a rotated secret.

use crate::config::{ConfigError, Settings};
use crate::secret::{SigningSecret, WebhookSecret};
use crate::telegram::BotToken;
use botline_aws::secrets::{SecretSource, SecretValue, Secrets};
use botline_aws::{AwsBackend, AwsError};
use botline_core::QueueConfig;

/// The backend on the queues and tables the environment names (`BOTLINE_QUEUE_URL`,
/// `BOTLINE_DLQ_URL`, `BOTLINE_TABLE_PREFIX`, …). Nothing is called yet: an AWS that cannot be
/// reached makes the first call fail (the receiver answers 503), not the start.
pub async fn open_backend(config: QueueConfig) -> Result<AwsBackend, ConfigError> {
    AwsBackend::from_env(config)
        .await
        .map_err(|e| ConfigError::Invalid(format!("--backend aws: {e}")))
}

/// `botline provision --backend aws`: the queues and tables the environment names, created or
/// brought up to date ([`botline_aws::provision_report`]); what was done, one line each.
pub async fn provision() -> Result<Vec<String>, ConfigError> {
    let invalid = |e: AwsError| ConfigError::Invalid(format!("--backend aws: {e}"));
    let settings = botline_aws::AwsSettings::from_env().map_err(invalid)?;
    let clients = botline_aws::AwsClients::load(&botline_aws::ClientOptions::default()).await;
    let provisioned = botline_aws::provision_report(&clients, &settings)
        .await
        .map_err(invalid)?;
    Ok(provisioned.actions)
}

/// The secrets of the settings that come from Secrets Manager or SSM.
#[derive(Debug)]
pub struct SecretStore {
    secrets: Secrets,
    webhook_secret: bool,
    bot_token: bool,
    handler_secret_token: bool,
    handler_signing_secret: bool,
}

/// Whether the environment names a secret store (`_ID` or `_PARAM`) for secret `name`. A
/// malformed combination (two sources) counts as yes, so that [`SecretStore::fill`] refuses it.
fn in_store(name: &str) -> bool {
    match SecretSource::from_env(name) {
        Ok(Some(SecretSource::SecretsManager(_) | SecretSource::Parameter(_))) | Err(_) => true,
        Ok(_) => false,
    }
}

impl SecretStore {
    /// A store when the environment names one for the webhook secret, the bot token or the
    /// handler's secrets; `None` (and no AWS configuration loaded) otherwise.
    pub async fn from_env() -> Option<Self> {
        let (webhook_secret, bot_token) = (in_store("WEBHOOK_SECRET"), in_store("BOT_TOKEN"));
        let handler_secret_token = in_store("HANDLER_SECRET_TOKEN");
        let handler_signing_secret = in_store("HANDLER_SIGNING_SECRET");
        if !(webhook_secret || bot_token || handler_secret_token || handler_signing_secret) {
            return None;
        }
        let config = botline_aws::ClientOptions::default().loader().load().await;
        Some(Self {
            secrets: Secrets::new(&config),
            webhook_secret,
            bot_token,
            handler_secret_token,
            handler_signing_secret,
        })
    }

    /// Puts the secrets from the store into `settings` (from the cache, when it is fresh).
    pub async fn fill(&self, settings: &mut Settings) -> Result<(), ConfigError> {
        if let Some(secret) = self.webhook_secret().await? {
            settings.fetched.webhook_secret = Some(secret);
        }
        if let Some(value) = self.get(self.bot_token, "BOT_TOKEN").await? {
            let token = BotToken::new(value.expose()).map_err(|e| {
                ConfigError::Invalid(format!("the bot token from the secret store: {e}"))
            })?;
            settings.fetched.bot_token = Some(token);
        }
        if let Some(value) = self
            .get(self.handler_secret_token, "HANDLER_SECRET_TOKEN")
            .await?
        {
            let token = WebhookSecret::new(value.expose().to_owned()).map_err(|e| {
                ConfigError::Invalid(format!(
                    "the handler's secret token from the secret store: {e}"
                ))
            })?;
            settings.fetched.handler_secret_token = Some(token);
        }
        if let Some(value) = self
            .get(self.handler_signing_secret, "HANDLER_SIGNING_SECRET")
            .await?
        {
            settings.fetched.handler_signing_secret = Some(SigningSecret::new(value.expose()));
        }
        Ok(())
    }

    /// The webhook secret, when it comes from the store (from the cache, when it is fresh).
    pub async fn webhook_secret(&self) -> Result<Option<WebhookSecret>, ConfigError> {
        let Some(value) = self.get(self.webhook_secret, "WEBHOOK_SECRET").await? else {
            return Ok(None);
        };
        WebhookSecret::new(value.expose().to_owned())
            .map(Some)
            .map_err(|e| {
                ConfigError::Invalid(format!("the webhook secret from the secret store: {e}"))
            })
    }

    /// Secret `name` from the store, when it is `stored` there.
    async fn get(&self, stored: bool, name: &str) -> Result<Option<SecretValue>, ConfigError> {
        if !stored {
            return Ok(None);
        }
        self.secrets.get(name).await.map_err(invalid)
    }
}

fn invalid(e: AwsError) -> ConfigError {
    ConfigError::Invalid(e.to_string())
}
