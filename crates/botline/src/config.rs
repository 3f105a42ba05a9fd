//! Settings, layered: command-line flags, then `BOTLINE_*` environment variables, then an
//! optional `botline.toml`, then defaults (figment does the merging).
//!
//! Secrets are not settings: the webhook secret comes from `BOTLINE_WEBHOOK_SECRET` or from the
//! file named by `webhook_secret_file` (flag, `BOTLINE_WEBHOOK_SECRET_FILE` or the TOML file),
//! never from the TOML file itself, so a config file can be committed safely. The bot token
//! likewise comes from `BOTLINE_BOT_TOKEN` or the file named by `bot_token_file`.

use crate::secret::{DatabaseUrl, FetchedSecrets, WebhookSecret};
use crate::sender::Limits;
use crate::shared_limits::RedisLimiter;
use crate::telegram::{BotToken, Telegram};
use botline_core::{QueueConfig, RetryPolicy};
use botline_registrar::{PostgresOptions, PostgresRegistrar, Registrar, SqlServerRegistrar};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "botline.toml";

/// Every setting, with its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Which backend holds queue and store.
    pub backend: BackendKind,
    /// Where the embedded store lives.
    pub data_dir: PathBuf,
    /// A file holding the Postgres URL of the `postgres` backend (instead of
    /// `BOTLINE_DATABASE_URL`); the URL may hold a password, so it is never a setting itself.
    pub database_url_file: Option<PathBuf>,
    /// `--database-url`, when given (never read from the environment or a file by figment).
    #[serde(skip)]
    pub database_url: Option<DatabaseUrl>,
    /// Connections each instance of the `postgres` backend keeps open at most, shared by the
    /// receiver, the worker and the sender.
    pub database_pool_size: u32,
    /// The address `botline serve` listens on.
    pub listen: SocketAddr,
    /// A file holding the webhook secret (Telegram's `secret_token`).
    pub webhook_secret_file: Option<PathBuf>,
    /// Serve a non-loopback address without a webhook secret (anyone could post updates).
    pub insecure_no_secret: bool,
    /// Bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// How long the receiver waits for an update to become durable before answering 503.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Time a client has to send a request's headers, and again its body (Telegram sends each
    /// request whole at once): a slower one is closed (headers) or answered 408 (body).
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// HTTP connections `serve` keeps open at once; more are closed on arrival. Above
    /// Telegram's `max_connections` (at most 100), with room for health checks and scrapes.
    pub max_connections: usize,
    /// How long a worker holds an update before it is handed out again.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Attempts before an update is dead-lettered.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// How long seen `update_id`s are remembered (at least 48 h).
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Updates processed at once (of different chats).
    pub worker_concurrency: usize,
    /// The longest the bot's handler may take at one update; the lease is extended while it
    /// runs. A slower handler is stopped and its attempt fails (retried, then dead-lettered).
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Duration,
    /// The bot's own webhook handler (a grammY, aiogram, … bot): every update no Rust handler
    /// took is POSTed there once durable, and the call its answer carries is sent once.
    pub handler_url: Option<String>,
    /// Instead of a URL, a Lambda function (name or ARN) invoked synchronously with each update
    /// as its payload; its result is read as the handler's answer (`BOTLINE_HANDLER_FUNCTION`).
    pub handler_function: Option<String>,
    /// A file holding the secret token sent to that handler as
    /// `X-Telegram-Bot-Api-Secret-Token` (instead of `BOTLINE_HANDLER_SECRET_TOKEN`).
    pub handler_secret_token_file: Option<PathBuf>,
    /// A file holding the Standard Webhooks signing secret, `whsec_…` (instead of
    /// `BOTLINE_HANDLER_SIGNING_SECRET`).
    pub handler_signing_secret_file: Option<PathBuf>,
    /// `auto` (JSON unless stderr is a terminal), `json` or `text`.
    pub log_format: LogFormat,
    /// The bot's username, so that `/command@otherbot` is left alone. Unset: only commands
    /// without `@botname` are taken. Asked of Telegram (getMe) when a bot token is set.
    pub bot_username: Option<String>,
    /// The Bot API's base URL: Telegram's, a local Bot API server, or a test stand-in.
    pub telegram_api_url: String,
    /// A file holding the bot token (instead of `BOTLINE_BOT_TOKEN`).
    pub bot_token_file: Option<PathBuf>,
    /// Bot API calls per second, overall (Telegram allows about 30).
    pub telegram_calls_per_second: u32,
    /// A file holding the Redis URL (instead of `BOTLINE_REDIS_URL`) whose buckets every
    /// instance shares for Telegram's limits and the edge's address limiter; the URL may hold
    /// a password, so it is never a setting itself. Without one, each process counts alone.
    pub redis_url_file: Option<PathBuf>,
    /// How long one getUpdates call of `botline poll` waits for updates.
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
    /// Who decides `/register <username> <token>`.
    pub registration: RegistrationBackend,
    /// The Postgres function or SQL Server procedure that decides it [default:
    /// `party_telegram_user_register`, or `dbo.PartyTelegramUser_REGISTER_tr` on SQL Server].
    pub registration_procedure: Option<String>,
    /// A file holding the registration database's connection string (instead of
    /// `BOTLINE_REGISTRATION_DATABASE_URL`); it holds a password, so it is never a setting.
    pub registration_database_url_file: Option<PathBuf>,
    /// The edge guard (`[edge]` in `botline.toml`): Telegram network allowlist, trusted
    /// proxies, per-address rate limit, Mini App `initData` sign-in. All off by default.
    pub edge: botline_edge::EdgeConfig,
    /// Secrets fetched from a secret store (Secrets Manager, SSM) before the settings are used
    /// (see `crate::aws::fetch_secrets`); never read from a file or the environment by figment.
    #[serde(skip)]
    pub fetched: FetchedSecrets,
}

/// Which backend holds queue and store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// SQLite in the data directory: one machine, nothing to run beside it.
    Embedded,
    /// A Postgres database shared by several instances (`BOTLINE_DATABASE_URL`).
    Postgres,
    /// SQS and DynamoDB (`BOTLINE_QUEUE_URL`, `BOTLINE_DLQ_URL`, `BOTLINE_TABLE_PREFIX`; the AWS
    /// SDK's own variables for region, credentials and `AWS_ENDPOINT_URL`).
    Aws,
}

/// Who decides `/register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationBackend {
    /// Single-use tokens issued with `botline tokens issue`, checked in the store.
    Embedded,
    /// A Postgres function `(username text, token text, telegram_user_id bigint, chat_id bigint)
    /// returns boolean`.
    Postgres,
    /// A SQL Server stored procedure, through TDS (tiberius).
    Sqlserver,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Text,
}

impl Default for Settings {
    fn default() -> Self {
        let queue = QueueConfig::default();
        Self {
            backend: BackendKind::Embedded,
            data_dir: PathBuf::from("./botline-data"),
            database_url_file: None,
            database_url: None,
            database_pool_size: 10,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            webhook_secret_file: None,
            insecure_no_secret: false,
            max_body_bytes: 1024 * 1024,
            ack_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            max_connections: 512,
            lease: queue.lease,
            max_attempts: queue.retry.max_attempts,
            backoff_base: queue.retry.backoff_base,
            backoff_max: queue.retry.backoff_max,
            dedupe_window: queue.dedupe_window,
            worker_concurrency: 64,
            handler_timeout: Duration::from_secs(30),
            handler_url: None,
            handler_function: None,
            handler_secret_token_file: None,
            handler_signing_secret_file: None,
            log_format: LogFormat::Auto,
            bot_username: None,
            telegram_api_url: crate::telegram::DEFAULT_API_URL.to_owned(),
            bot_token_file: None,
            telegram_calls_per_second: 30,
            redis_url_file: None,
            poll_timeout: Duration::from_secs(25),
            registration: RegistrationBackend::Embedded,
            registration_procedure: None,
            registration_database_url_file: None,
            edge: botline_edge::EdgeConfig::default(),
            fetched: FetchedSecrets::default(),
        }
    }
}

/// Why the settings cannot be used. The text is meant for the operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The environment variables that are settings (the rest of `BOTLINE_*` are secrets or belong
/// to other parts).
const ENV_SETTINGS: &[&str] = &[
    "backend",
    "data_dir",
    "database_url_file",
    "database_pool_size",
    "listen",
    "webhook_secret_file",
    "insecure_no_secret",
    "max_body_bytes",
    "ack_timeout",
    "read_timeout",
    "max_connections",
    "lease",
    "max_attempts",
    "backoff_base",
    "backoff_max",
    "dedupe_window",
    "worker_concurrency",
    "handler_timeout",
    "handler_url",
    "handler_function",
    "handler_secret_token_file",
    "handler_signing_secret_file",
    "log_format",
    "bot_username",
    "telegram_api_url",
    "bot_token_file",
    "telegram_calls_per_second",
    "redis_url_file",
    "poll_timeout",
    "registration",
    "registration_procedure",
    "registration_database_url_file",
];

/// The edge guard's settings (`[edge]` in `botline.toml`) as `BOTLINE_EDGE_*` variables: the
/// variable's name after `BOTLINE_EDGE_`, lowercased, and the setting it sets. Lists take one
/// string of entries separated by commas (`BOTLINE_EDGE_ALLOWLIST="telegram, 10.0.0.0/8"`).
const EDGE_ENV_SETTINGS: &[(&str, &str)] = &[
    ("allowlist", "edge.allowlist"),
    ("trusted_proxies", "edge.trusted_proxies"),
    ("proxy_header", "edge.proxy_header"),
    ("rate_limit_enabled", "edge.rate_limit.enabled"),
    ("rate_limit_rate", "edge.rate_limit.rate"),
    ("rate_limit_burst", "edge.rate_limit.burst"),
    ("rate_limit_max_keys", "edge.rate_limit.max_keys"),
    ("rate_limit_ipv6_prefix", "edge.rate_limit.ipv6_prefix"),
    (
        "rate_limit_cleanup_interval",
        "edge.rate_limit.cleanup_interval",
    ),
    ("webapp_enabled", "edge.webapp.enabled"),
    ("webapp_path", "edge.webapp.path"),
    ("webapp_max_age", "edge.webapp.max_age"),
    ("webapp_session_ttl", "edge.webapp.session_ttl"),
    ("webapp_rate", "edge.webapp.rate"),
    ("webapp_burst", "edge.webapp.burst"),
    ("webapp_max_keys", "edge.webapp.max_keys"),
];

/// The `BOTLINE_EDGE_*` variables of [`EDGE_ENV_SETTINGS`], as nested settings.
fn edge_env() -> Env {
    Env::prefixed("BOTLINE_EDGE_").filter_map(|key| {
        EDGE_ENV_SETTINGS
            .iter()
            .find(|(name, _)| key == *name)
            .map(|(_, path)| (*path).into())
    })
}

/// The flags of a command that has none of the settings' flags, for [`Settings::load`] (a
/// struct with no fields: figment layers a map, which `()` is not).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NoFlags {}

impl Settings {
    /// Layers `flags` (a serializable struct whose `None` fields are skipped) over
    /// `BOTLINE_*` variables over the TOML file over the defaults.
    pub fn load<F: Serialize>(config_file: Option<&Path>, flags: &F) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match config_file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Invalid(format!(
                        "config file {} does not exist",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file(path));
            }
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        let settings: Settings = figment
            .merge(Env::prefixed("BOTLINE_").only(ENV_SETTINGS))
            .merge(edge_env())
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |text: &str| Err(ConfigError::Invalid(text.to_owned()));
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes must be at least 1024");
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1");
        }
        self.edge
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if self.worker_concurrency == 0 {
            return invalid("worker_concurrency must be at least 1");
        }
        if self.handler_timeout.is_zero() || self.handler_timeout > Duration::from_secs(900) {
            return invalid("handler_timeout must be more than 0 and at most 15m");
        }
        if !(2..=1000).contains(&self.database_pool_size) {
            return invalid("database_pool_size must be between 2 and 1000");
        }
        if self.dedupe_window < QueueConfig::MIN_DEDUPE_WINDOW {
            return invalid(
                "dedupe_window must be at least 48h: Telegram redelivers an update for up to 24 hours",
            );
        }
        if self.read_timeout.is_zero() || self.read_timeout > Duration::from_secs(300) {
            return invalid("read_timeout must be more than 0 and at most 300s");
        }
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1");
        }
        if self.lease < Duration::from_secs(1) || self.ack_timeout.is_zero() {
            return invalid("lease must be at least 1s and ack_timeout more than 0");
        }
        if !(1..=1000).contains(&self.telegram_calls_per_second) {
            return invalid("telegram_calls_per_second must be between 1 and 1000");
        }
        if self.poll_timeout > Duration::from_secs(300) {
            return invalid("poll_timeout must be at most 300s");
        }
        if !(self.telegram_api_url.starts_with("https://")
            || self.telegram_api_url.starts_with("http://"))
        {
            return invalid("telegram_api_url must start with https:// or http://");
        }
        Ok(())
    }

    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            lease: self.lease,
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                backoff_base: self.backoff_base,
                backoff_max: self.backoff_max,
            },
            dedupe_window: self.dedupe_window,
        }
    }

    /// The webhook secret: `BOTLINE_WEBHOOK_SECRET`, else the secret file, else none.
    pub fn webhook_secret(&self) -> Result<Option<WebhookSecret>, ConfigError> {
        if let Some(secret) = &self.fetched.webhook_secret {
            return Ok(Some(secret.clone()));
        }
        if let Ok(value) = std::env::var("BOTLINE_WEBHOOK_SECRET") {
            if self.webhook_secret_file.is_some() {
                return Err(ConfigError::Invalid(
                    "set BOTLINE_WEBHOOK_SECRET or a webhook secret file, not both".into(),
                ));
            }
            return WebhookSecret::new(value)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("BOTLINE_WEBHOOK_SECRET: {e}")));
        }
        let Some(path) = &self.webhook_secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        WebhookSecret::new(text.trim_end_matches(['\n', '\r']).to_owned())
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))
    }

    /// The Postgres URL: `--database-url`, else `BOTLINE_DATABASE_URL`, else the URL file.
    pub fn postgres_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = &self.database_url {
            return Ok(url.expose().to_owned());
        }
        if let Ok(url) = std::env::var("BOTLINE_DATABASE_URL") {
            return Ok(url);
        }
        match &self.database_url_file {
            Some(path) => std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                }),
            None => Err(ConfigError::Invalid(
                "--backend postgres needs BOTLINE_DATABASE_URL, --database-url or \
                 --database-url-file"
                    .into(),
            )),
        }
    }

    /// The bot token: `BOTLINE_BOT_TOKEN`, else the token file, else none.
    pub fn bot_token(&self) -> Result<Option<BotToken>, ConfigError> {
        if let Some(token) = &self.fetched.bot_token {
            return Ok(Some(token.clone()));
        }
        BotToken::from_env_or_file(self.bot_token_file.as_deref()).map_err(ConfigError::Invalid)
    }

    /// Forwarding to the bot's own handler, when `handler_url` or `handler_function` is set:
    /// to a URL with the secret token (`BOTLINE_HANDLER_SECRET_TOKEN`, its file, or from a
    /// secret store) and the signing secret (`BOTLINE_HANDLER_SIGNING_SECRET`, likewise) when
    /// set; to a function with neither (Lambda authorizes the call with IAM).
    pub fn forward(&self) -> Result<Option<crate::forward::Forward>, ConfigError> {
        let mut forward = match (&self.handler_url, &self.handler_function) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "set BOTLINE_HANDLER_URL or BOTLINE_HANDLER_FUNCTION, not both".into(),
                ));
            }
            (Some(url), None) => crate::forward::Forward::new(url)
                .map_err(|e| ConfigError::Invalid(format!("BOTLINE_HANDLER_URL: {e}")))?,
            (None, Some(function)) => handler_function(function)?,
        };
        let secret_token = match &self.fetched.handler_secret_token {
            Some(token) => Some(token.clone()),
            None => secret_from_env_or_file(
                "BOTLINE_HANDLER_SECRET_TOKEN",
                self.handler_secret_token_file.as_deref(),
            )?
            .map(|token| {
                WebhookSecret::new(token)
                    .map_err(|e| ConfigError::Invalid(format!("the handler's secret token: {e}")))
            })
            .transpose()?,
        };
        let signing_secret = match &self.fetched.handler_signing_secret {
            Some(secret) => Some(secret.expose_secret().to_owned()),
            None => secret_from_env_or_file(
                "BOTLINE_HANDLER_SIGNING_SECRET",
                self.handler_signing_secret_file.as_deref(),
            )?,
        };
        if self.handler_function.is_some() && (secret_token.is_some() || signing_secret.is_some()) {
            return Err(ConfigError::Invalid(
                "BOTLINE_HANDLER_FUNCTION is invoked with the AWS credentials: the handler's \
                 secret token and signing secret are for BOTLINE_HANDLER_URL"
                    .into(),
            ));
        }
        if let Some(token) = secret_token {
            forward = forward.secret_token(token);
        }
        if let Some(secret) = signing_secret {
            forward = forward.signing_secret(&secret).map_err(|e| {
                ConfigError::Invalid(format!("BOTLINE_HANDLER_SIGNING_SECRET: {e}"))
            })?;
        }
        Ok(Some(forward))
    }

    /// A Bot API client, when a bot token is configured.
    pub fn telegram(&self) -> Result<Option<Telegram>, ConfigError> {
        let Some(token) = self.bot_token()? else {
            return Ok(None);
        };
        Telegram::new(&self.telegram_api_url, token, self.poll_timeout)
            .map(Some)
            .map_err(ConfigError::Invalid)
    }

    /// Telegram's limits for the sender, at `telegram_calls_per_second` overall.
    /// Telegram's limits for the sender: shared through Redis when a Redis URL is set,
    /// this process's own otherwise.
    pub fn telegram_limits(&self) -> Result<Limits, ConfigError> {
        self.telegram_limits_or(None)
    }

    /// Telegram's limits for the sender: shared through Redis when a Redis URL is set, else
    /// through `fallback` when given (the worker Lambda's DynamoDB buckets), else this
    /// process's own.
    pub fn telegram_limits_or(
        &self,
        fallback: Option<Arc<dyn botline_core::SharedLimiter>>,
    ) -> Result<Limits, ConfigError> {
        let shared = match self.shared_limiter()? {
            Some(redis) => Some(redis as Arc<dyn botline_core::SharedLimiter>),
            None => fallback,
        };
        Ok(self.telegram_limits_sharing(shared))
    }

    /// Telegram's limits for the sender, shared through `shared` when given (the limiter the
    /// caller connected already), else this process's own.
    pub fn telegram_limits_sharing(
        &self,
        shared: Option<Arc<dyn botline_core::SharedLimiter>>,
    ) -> Limits {
        let limits = Limits::telegram(
            NonZeroU32::new(self.telegram_calls_per_second).unwrap_or(NonZeroU32::MIN),
        );
        match shared {
            Some(shared) => limits.sharing(shared),
            None => limits,
        }
    }

    /// The buckets every instance shares, when `BOTLINE_REDIS_URL` (or its file) is set: in
    /// Redis, under the bot's id. Connects on first use.
    pub fn shared_limiter(&self) -> Result<Option<Arc<RedisLimiter>>, ConfigError> {
        let Some(url) =
            secret_from_env_or_file("BOTLINE_REDIS_URL", self.redis_url_file.as_deref())?
        else {
            return Ok(None);
        };
        let token = self.bot_token()?;
        let bot_id = token
            .as_ref()
            .and_then(|token| token.expose().split_once(':'))
            .map(|(id, _)| id);
        RedisLimiter::connect_lazy(&SecretString::from(url), bot_id)
            .map(|limiter| Some(Arc::new(limiter)))
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Like [`Settings::telegram`], for commands that cannot work without a token.
    pub fn require_telegram(&self) -> Result<Telegram, ConfigError> {
        self.telegram()?.ok_or_else(|| {
            ConfigError::Invalid(
                "no bot token: set BOTLINE_BOT_TOKEN or BOTLINE_BOT_TOKEN_FILE (the token \
                 @BotFather gave you)"
                    .into(),
            )
        })
    }

    /// The registration backend outside the store, if one is configured. Nothing is connected
    /// yet (a database that is down must not keep updates from being received); call
    /// [`Registrar::ping`] to find out early.
    pub fn registrar(&self) -> Result<Option<Arc<dyn Registrar>>, ConfigError> {
        let invalid = |e: botline_registrar::RegistrarError| ConfigError::Invalid(e.to_string());
        let url = || -> Result<String, ConfigError> {
            if let Ok(url) = std::env::var("BOTLINE_REGISTRATION_DATABASE_URL") {
                if self.registration_database_url_file.is_some() {
                    return Err(ConfigError::Invalid(
                        "set BOTLINE_REGISTRATION_DATABASE_URL or a registration database URL \
                         file, not both"
                            .into(),
                    ));
                }
                return Ok(url);
            }
            let Some(path) = &self.registration_database_url_file else {
                return Err(ConfigError::Invalid(format!(
                    "registration = {:?} needs BOTLINE_REGISTRATION_DATABASE_URL or \
                     registration_database_url_file",
                    self.registration
                )));
            };
            std::fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })
        };
        let registrar: Arc<dyn Registrar> = match self.registration {
            RegistrationBackend::Embedded => return Ok(None),
            RegistrationBackend::Postgres => {
                let function = self
                    .registration_procedure
                    .as_deref()
                    .unwrap_or("party_telegram_user_register");
                Arc::new(
                    PostgresRegistrar::connect_lazy(&url()?, function, PostgresOptions::default())
                        .map_err(invalid)?,
                )
            }
            RegistrationBackend::Sqlserver => {
                let procedure = self
                    .registration_procedure
                    .as_deref()
                    .unwrap_or("dbo.PartyTelegramUser_REGISTER_tr");
                Arc::new(SqlServerRegistrar::new(&url()?, procedure).map_err(invalid)?)
            }
        };
        Ok(Some(registrar))
    }

    /// Refuses to serve a non-loopback address without a secret unless told to.
    pub fn check_exposure(&self, secret: Option<&WebhookSecret>) -> Result<(), ConfigError> {
        if secret.is_none() && !self.listen.ip().is_loopback() && !self.insecure_no_secret {
            return Err(ConfigError::Invalid(format!(
                "refusing to listen on {} without a webhook secret: anyone who can reach it could \
                 post updates. Set BOTLINE_WEBHOOK_SECRET (and pass it to Telegram's setWebhook as \
                 secret_token), or pass --insecure-no-secret if something in front checks it",
                self.listen
            )));
        }
        Ok(())
    }
}

/// A secret from the variable `name`, else from `file` (its trailing newline dropped); never
/// both.
/// Forwarding to the Lambda function `name`.
#[cfg(feature = "aws")]
fn handler_function(name: &str) -> Result<crate::forward::Forward, ConfigError> {
    botline_aws::invoke::HandlerFunction::new(name)
        .map(crate::forward::Forward::function)
        .map_err(|e| ConfigError::Invalid(format!("BOTLINE_HANDLER_FUNCTION {e}")))
}

#[cfg(not(feature = "aws"))]
fn handler_function(_name: &str) -> Result<crate::forward::Forward, ConfigError> {
    Err(ConfigError::Invalid(
        "BOTLINE_HANDLER_FUNCTION needs a build with the `aws` feature".into(),
    ))
}

fn secret_from_env_or_file(name: &str, file: Option<&Path>) -> Result<Option<String>, ConfigError> {
    if let Ok(value) = std::env::var(name) {
        if file.is_some() {
            return Err(ConfigError::Invalid(format!(
                "set {name} or its file, not both"
            )));
        }
        return Ok(Some(value));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's `Jail` closures return its large error type.
mod tests {
    use super::*;
    use figment::Jail;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        listen: Option<SocketAddr>,
    }

    fn load(jail_file: Option<&str>, flags: &Flags) -> Result<Settings, String> {
        Settings::load(jail_file.map(Path::new), flags).map_err(|e| e.to_string())
    }

    #[test]
    fn a_command_without_flags_loads_the_settings() {
        Jail::expect_with(|jail| {
            jail.set_env("BOTLINE_MAX_ATTEMPTS", "5");
            let settings = Settings::load(None, &NoFlags {}).map_err(|e| e.to_string())?;
            assert_eq!(settings.max_attempts, 5);
            Ok(())
        });
    }

    #[test]
    fn the_handler_timeout_is_a_setting_within_bounds() {
        Jail::expect_with(|jail| {
            assert_eq!(
                load(None, &Flags::default())?.handler_timeout,
                Duration::from_secs(30)
            );
            jail.set_env("BOTLINE_HANDLER_TIMEOUT", "90s");
            assert_eq!(
                load(None, &Flags::default())?.handler_timeout,
                Duration::from_secs(90)
            );
            for refused in ["0s", "16m"] {
                jail.set_env("BOTLINE_HANDLER_TIMEOUT", refused);
                let error = load(None, &Flags::default()).unwrap_err();
                assert!(
                    error.contains("handler_timeout must be"),
                    "{refused}: {error}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn forwarding_is_set_up_from_the_variables_and_bad_values_are_refused_unshown() {
        Jail::expect_with(|jail| {
            assert!(load(None, &Flags::default())?.forward().unwrap().is_none());
            jail.set_env("BOTLINE_HANDLER_URL", "http://127.0.0.1:3000/bot");
            jail.set_env("BOTLINE_HANDLER_SECRET_TOKEN", "tok-s3cret");
            let forward = load(None, &Flags::default())?.forward().unwrap().unwrap();
            assert!(!format!("{forward:?}").contains("s3cret"));
            jail.set_env("BOTLINE_HANDLER_SIGNING_SECRET", "not-whsec-s3cret");
            let error = load(None, &Flags::default())?
                .forward()
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("whsec_") && !error.contains("s3cret"),
                "{error}"
            );
            jail.set_env(
                "BOTLINE_HANDLER_SIGNING_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            );
            jail.create_file("token", "tok-s3cret\n")?;
            jail.set_env("BOTLINE_HANDLER_SECRET_TOKEN_FILE", "token");
            let error = load(None, &Flags::default())?
                .forward()
                .unwrap_err()
                .to_string();
            assert!(error.contains("not both"), "{error}");
            jail.set_env("BOTLINE_HANDLER_URL", "ftp://example.org/bot");
            let error = load(None, &Flags::default())?
                .forward()
                .unwrap_err()
                .to_string();
            assert!(error.contains("BOTLINE_HANDLER_URL"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_handler_function_instead_of_a_url() {
        Jail::expect_with(|jail| {
            jail.set_env("BOTLINE_HANDLER_FUNCTION", "my-bot-handler");
            let forward = load(None, &Flags::default())?.forward().unwrap().unwrap();
            let shown = format!("{forward:?}");
            assert!(
                shown.contains("the handler function my-bot-handler"),
                "{shown}"
            );
            jail.set_env("BOTLINE_HANDLER_FUNCTION", "my bot");
            let error = load(None, &Flags::default())?.forward().unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("BOTLINE_HANDLER_FUNCTION must be"),
                "{error}"
            );
            jail.set_env("BOTLINE_HANDLER_FUNCTION", "my-bot-handler");
            jail.set_env("BOTLINE_HANDLER_SECRET_TOKEN", "tok-s3cret");
            let error = load(None, &Flags::default())?
                .forward()
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("for BOTLINE_HANDLER_URL") && !error.contains("s3cret"),
                "{error}"
            );
            jail.set_env("BOTLINE_HANDLER_URL", "http://127.0.0.1:3000/bot");
            let error = load(None, &Flags::default())?.forward().unwrap_err();
            assert!(error.to_string().contains("not both"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn settings_printed_whole_show_no_database_password() {
        let settings = Settings {
            database_url: Some(DatabaseUrl::new("postgres://botline:pa55w0rd@db/botline")),
            ..Settings::default()
        };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("pa55w0rd"), "{printed}");
        assert_eq!(
            settings.postgres_url().unwrap(),
            "postgres://botline:pa55w0rd@db/botline"
        );
    }

    #[test]
    fn defaults_need_no_configuration() {
        Jail::expect_with(|_| {
            let settings = load(None, &Flags::default()).unwrap();
            assert_eq!(settings, Settings::default());
            assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
            assert_eq!(settings.data_dir, PathBuf::from("./botline-data"));
            Ok(())
        });
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "botline.toml",
                "listen = \"127.0.0.1:1000\"\ndata_dir = \"/from/file\"\nlease = \"45s\"\nmax_attempts = 5\n",
            )?;
            jail.set_env("BOTLINE_LISTEN", "127.0.0.1:2000");
            jail.set_env("BOTLINE_MAX_ATTEMPTS", "4");
            let settings = load(None, &Flags::default()).unwrap();
            assert_eq!(settings.listen.port(), 2000);
            assert_eq!(settings.max_attempts, 4);
            assert_eq!(settings.data_dir, PathBuf::from("/from/file"));
            assert_eq!(settings.lease, Duration::from_secs(45));
            let flags = Flags {
                listen: Some("127.0.0.1:3000".parse().unwrap()),
            };
            assert_eq!(load(None, &flags).unwrap().listen.port(), 3000);
            Ok(())
        });
    }

    #[test]
    fn edge_settings_come_from_the_environment_too() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "botline.toml",
                "[edge]\nproxy_header = \"forwarded\"\n[edge.rate_limit]\nrate = 3\nburst = 10\n",
            )?;
            jail.set_env("BOTLINE_EDGE_ALLOWLIST", "telegram, 10.0.0.0/8");
            jail.set_env("BOTLINE_EDGE_TRUSTED_PROXIES", "10.1.0.0/16");
            jail.set_env("BOTLINE_EDGE_RATE_LIMIT_ENABLED", "true");
            jail.set_env("BOTLINE_EDGE_RATE_LIMIT_RATE", "5");
            jail.set_env("BOTLINE_EDGE_WEBAPP_ENABLED", "true");
            jail.set_env("BOTLINE_EDGE_WEBAPP_MAX_AGE", "2h");
            // Not a setting: ignored, as other unknown BOTLINE_* variables are.
            jail.set_env("BOTLINE_EDGE_RATE_LIMIT", "true");
            let edge = load(None, &Flags::default())?.edge;
            let mut allowlist = botline_edge::EdgeConfig::telegram_default()
                .allowlist
                .unwrap();
            allowlist.push("10.0.0.0/8".parse().unwrap());
            assert_eq!(edge.allowlist, Some(allowlist));
            assert_eq!(edge.trusted_proxies, ["10.1.0.0/16".parse().unwrap()]);
            assert_eq!(edge.proxy_header, botline_edge::ProxyHeader::Forwarded);
            assert!(edge.rate_limit.enabled);
            assert_eq!((edge.rate_limit.rate, edge.rate_limit.burst), (5, 10));
            assert!(edge.webapp.enabled);
            assert_eq!(edge.webapp.max_age, Duration::from_secs(7200));

            jail.set_env("BOTLINE_EDGE_TRUSTED_PROXIES", "10.1.0.0/16, the-proxy");
            let error = load(None, &Flags::default()).unwrap_err();
            assert!(error.contains("\"the-proxy\" is not a network"), "{error}");
            jail.set_env("BOTLINE_EDGE_TRUSTED_PROXIES", "");
            jail.set_env("BOTLINE_EDGE_RATE_LIMIT_BURST", "0");
            let error = load(None, &Flags::default()).unwrap_err();
            assert!(error.contains("edge.rate_limit.burst"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_secret_in_the_config_file_is_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("botline.toml", "webhook_secret = \"abc\"\n")?;
            let error = load(None, &Flags::default()).unwrap_err();
            assert!(error.contains("webhook_secret"), "{error}");
            assert!(!error.contains("abc"), "the value is not echoed: {error}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_explained() {
        Jail::expect_with(|jail| {
            jail.set_env("BOTLINE_DEDUPE_WINDOW", "1h");
            assert!(load(None, &Flags::default()).unwrap_err().contains("48h"));
            jail.set_env("BOTLINE_DEDUPE_WINDOW", "72h");
            jail.set_env("BOTLINE_LISTEN", "nowhere");
            let error = load(None, &Flags::default()).unwrap_err();
            assert!(error.to_lowercase().contains("listen"), "{error}");
            assert!(load(Some("missing.toml"), &Flags::default()).is_err());
            jail.set_env("BOTLINE_LISTEN", "127.0.0.1:8080");
            jail.set_env("BOTLINE_DATABASE_POOL_SIZE", "1");
            let error = load(None, &Flags::default()).unwrap_err();
            assert!(error.contains("database_pool_size"), "{error}");
            jail.set_env("BOTLINE_DATABASE_POOL_SIZE", "24");
            assert_eq!(
                load(None, &Flags::default()).unwrap().database_pool_size,
                24
            );
            Ok(())
        });
    }

    #[test]
    fn the_secret_comes_from_the_environment_or_a_file() {
        Jail::expect_with(|jail| {
            jail.create_file("secret.txt", "file-secret_1\n")?;
            let mut settings = Settings::default();
            assert!(settings.webhook_secret().unwrap().is_none());
            settings.webhook_secret_file = Some("secret.txt".into());
            let secret = settings.webhook_secret().unwrap().unwrap();
            assert!(secret.matches(b"file-secret_1"));
            jail.set_env("BOTLINE_WEBHOOK_SECRET", "env-secret");
            assert!(settings.webhook_secret().is_err(), "both is ambiguous");
            settings.webhook_secret_file = None;
            assert!(
                settings
                    .webhook_secret()
                    .unwrap()
                    .unwrap()
                    .matches(b"env-secret")
            );
            jail.set_env("BOTLINE_WEBHOOK_SECRET", "bad secret!");
            let error = settings.webhook_secret().unwrap_err().to_string();
            assert!(!error.contains("bad secret!"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn public_addresses_need_a_secret_or_an_explicit_flag() {
        let mut settings = Settings {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Settings::default()
        };
        let error = settings.check_exposure(None).unwrap_err().to_string();
        assert!(error.contains("--insecure-no-secret"), "{error}");
        let secret = WebhookSecret::new("s".into()).unwrap();
        assert!(settings.check_exposure(Some(&secret)).is_ok());
        settings.insecure_no_secret = true;
        assert!(settings.check_exposure(None).is_ok());
        assert!(Settings::default().check_exposure(None).is_ok());
    }
}
