//! Where the backend's queues and tables are, and how its SDK clients talk to AWS.

use crate::AwsError;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use std::time::Duration;

/// What orders a FIFO queue's message groups: the `MessageGroupId` of an update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FifoGroup {
    /// The update's order key (its chat, or its user when it belongs to no chat): the group is
    /// the unit Botline orders, so SQS does the ordering and nothing is re-sent in normal
    /// operation.
    #[default]
    Chat,
    /// The user who caused the update (seed 002), else the order key. Botline still processes
    /// one chat at a time in `update_id` order: updates of one chat from several users sit in
    /// several groups, and those that are not their chat's head are re-sent (see the crate docs).
    User,
}

impl std::str::FromStr for FifoGroup {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "chat" => Ok(Self::Chat),
            "user" => Ok(Self::User),
            other => Err(format!("{other:?} is not a FIFO group: use chat or user")),
        }
    }
}

/// The queues and tables of one deployment, as the CDK app hands them to the functions and to
/// `botline serve --backend aws`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// `BOTLINE_QUEUE_URL`: the main queue. A URL ending in `.fifo` is a FIFO queue.
    pub queue_url: String,
    /// `BOTLINE_DLQ_URL`: the dead-letter queue (FIFO exactly when the main queue is).
    pub dlq_url: String,
    /// `BOTLINE_TABLE_PREFIX`: prepended to every table name (`<prefix>messages`, …); may be
    /// empty.
    pub table_prefix: String,
    /// `BOTLINE_FIFO_GROUP` (`chat` or `user`, default `chat`): the `MessageGroupId` of a FIFO
    /// queue's messages. Ignored on a standard queue.
    pub fifo_group: FifoGroup,
    /// `BOTLINE_SQS_WAIT_SECONDS` (0 to 20, default 0): how long [`Queue::receive`] long-polls
    /// SQS before it answers that there is nothing. Long polling saves empty receives; it also
    /// makes a receive that finds nothing take that long.
    ///
    /// [`Queue::receive`]: botline_core::Queue::receive
    pub receive_wait: Duration,
}

impl AwsSettings {
    /// Settings for a chat-grouped FIFO or a standard queue, without long polling.
    pub fn new(
        queue_url: impl Into<String>,
        dlq_url: impl Into<String>,
        table_prefix: impl Into<String>,
    ) -> Self {
        Self {
            queue_url: queue_url.into(),
            dlq_url: dlq_url.into(),
            table_prefix: table_prefix.into(),
            fifo_group: FifoGroup::Chat,
            receive_wait: Duration::ZERO,
        }
    }

    /// Reads the settings from the process environment (see the fields).
    pub fn from_env() -> Result<Self, AwsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `var`, which answers for an environment variable's name.
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, AwsError> {
        let required = |name: &'static str| var(name).ok_or(AwsError::MissingSetting(name));
        let non_empty = |name: &'static str| {
            let value = required(name)?.trim().to_owned();
            if value.is_empty() {
                return Err(AwsError::InvalidSetting {
                    name,
                    reason: "it is empty".into(),
                });
            }
            Ok(value)
        };
        let mut settings = Self::new(
            non_empty("BOTLINE_QUEUE_URL")?,
            non_empty("BOTLINE_DLQ_URL")?,
            required("BOTLINE_TABLE_PREFIX")?.trim().to_owned(),
        );
        if let Some(group) = var("BOTLINE_FIFO_GROUP").filter(|v| !v.trim().is_empty()) {
            settings.fifo_group = group.parse().map_err(|reason| AwsError::InvalidSetting {
                name: "BOTLINE_FIFO_GROUP",
                reason,
            })?;
        }
        if let Some(wait) = var("BOTLINE_SQS_WAIT_SECONDS").filter(|v| !v.trim().is_empty()) {
            let seconds = wait
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|s| *s <= 20)
                .ok_or_else(|| AwsError::InvalidSetting {
                    name: "BOTLINE_SQS_WAIT_SECONDS",
                    reason: format!("{wait:?} is not a whole number of seconds from 0 to 20"),
                })?;
            settings.receive_wait = Duration::from_secs(seconds);
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what AWS would refuse later: URLs, a DLQ of the main queue's type, table names.
    pub fn validate(&self) -> Result<(), AwsError> {
        for (name, url) in [
            ("BOTLINE_QUEUE_URL", &self.queue_url),
            ("BOTLINE_DLQ_URL", &self.dlq_url),
        ] {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || queue_name(url).is_empty()
            {
                return Err(AwsError::InvalidSetting {
                    name,
                    reason: format!(
                        "{url:?} is not a queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)"
                    ),
                });
            }
        }
        if self.is_fifo() != self.dlq_url.ends_with(".fifo") {
            return Err(AwsError::InvalidSetting {
                name: "BOTLINE_DLQ_URL",
                reason: "the dead-letter queue of a FIFO queue must be a FIFO queue, and that of \
                         a standard queue a standard one"
                    .into(),
            });
        }
        let valid_table_char = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
        if !self.table_prefix.chars().all(valid_table_char) || self.table_prefix.len() > 200 {
            return Err(AwsError::InvalidSetting {
                name: "BOTLINE_TABLE_PREFIX",
                reason: "a table name holds only letters, digits, '_', '-' and '.'".into(),
            });
        }
        if self.receive_wait > Duration::from_secs(20) {
            return Err(AwsError::InvalidSetting {
                name: "BOTLINE_SQS_WAIT_SECONDS",
                reason: "SQS long-polls for at most 20 seconds".into(),
            });
        }
        Ok(())
    }

    /// Whether the main queue is a FIFO queue (its URL ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.queue_url.ends_with(".fifo")
    }
}

/// A queue's name: the last segment of its URL.
pub(crate) fn queue_name(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// How the SDK clients reach AWS, and how long they may take: a slow or absent service must make
/// a call fail ([`BackendError::Unavailable`], so the receiver answers 503), never hang.
///
/// [`BackendError::Unavailable`]: botline_core::BackendError::Unavailable
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Another endpoint for every service (an emulator). The SDK also reads `AWS_ENDPOINT_URL`.
    pub endpoint_url: Option<String>,
    /// The region when the environment names none (`AWS_REGION`, the profile): eu-north-1.
    pub default_region: String,
    /// The longest one SDK operation may take, its retries included.
    pub operation_timeout: Duration,
    /// The longest one attempt of an operation may take.
    pub attempt_timeout: Duration,
    /// The longest a new connection may take.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    /// 5 s per operation, 2 s per attempt (the SDK's standard retries: up to 3 attempts with
    /// backoff, for throttling, 5xx and network errors), 1 s to connect.
    fn default() -> Self {
        Self {
            endpoint_url: None,
            default_region: "eu-north-1".into(),
            operation_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

impl ClientOptions {
    /// The SDK's configuration loader with these options: credentials and region from the
    /// environment (the Lambda role, a profile, `AWS_*` variables), as `aws-config` finds them.
    /// Add to it (`.credentials_provider(...)`) before `.load()`.
    pub fn loader(&self) -> ConfigLoader {
        let region = aws_config::meta::region::RegionProviderChain::default_provider()
            .or_else(Region::new(self.default_region.clone()));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .retry_config(RetryConfig::standard())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(self.operation_timeout)
                    .operation_attempt_timeout(self.attempt_timeout)
                    .connect_timeout(self.connect_timeout)
                    .read_timeout(self.attempt_timeout)
                    .build(),
            );
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        loader
    }
}

/// The SDK clients the backend uses. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
}

impl AwsClients {
    /// Clients from a loaded SDK configuration.
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            sqs: aws_sdk_sqs::Client::new(config),
            dynamodb: aws_sdk_dynamodb::Client::new(config),
        }
    }

    /// Clients configured from the environment and `options`.
    pub async fn load(options: &ClientOptions) -> Self {
        Self::new(&options.loader().load().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    const QUEUE: &str = "https://sqs.eu-north-1.amazonaws.com/123456789012/botline-updates.fifo";
    const DLQ: &str = "https://sqs.eu-north-1.amazonaws.com/123456789012/botline-dlq.fifo";

    #[test]
    fn reads_the_environment_the_cdk_app_sets() {
        let settings = AwsSettings::from_lookup(lookup(&[
            ("BOTLINE_QUEUE_URL", QUEUE),
            ("BOTLINE_DLQ_URL", DLQ),
            ("BOTLINE_TABLE_PREFIX", "botline-prod-"),
            ("BOTLINE_FIFO_GROUP", "user"),
            ("BOTLINE_SQS_WAIT_SECONDS", "10"),
        ]))
        .unwrap();
        assert!(settings.is_fifo());
        assert_eq!(settings.table_prefix, "botline-prod-");
        assert_eq!(settings.fifo_group, FifoGroup::User);
        assert_eq!(settings.receive_wait, Duration::from_secs(10));
        assert_eq!(queue_name(&settings.queue_url), "botline-updates.fifo");
    }

    #[test]
    fn names_what_is_missing_or_wrong() {
        let err = AwsSettings::from_lookup(lookup(&[("BOTLINE_QUEUE_URL", QUEUE)])).unwrap_err();
        assert_eq!(err.to_string(), "BOTLINE_DLQ_URL is not set");
        let err = AwsSettings::from_lookup(lookup(&[
            ("BOTLINE_QUEUE_URL", QUEUE),
            ("BOTLINE_DLQ_URL", DLQ),
        ]))
        .unwrap_err();
        assert_eq!(err.to_string(), "BOTLINE_TABLE_PREFIX is not set");
        let err = AwsSettings::from_lookup(lookup(&[
            ("BOTLINE_QUEUE_URL", QUEUE),
            (
                "BOTLINE_DLQ_URL",
                "https://sqs.eu-north-1.amazonaws.com/1/dlq",
            ),
            ("BOTLINE_TABLE_PREFIX", ""),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("must be a FIFO queue"), "{err}");
        let err = AwsSettings::from_lookup(lookup(&[
            ("BOTLINE_QUEUE_URL", "botline-updates"),
            ("BOTLINE_DLQ_URL", DLQ),
            ("BOTLINE_TABLE_PREFIX", ""),
        ]))
        .unwrap_err();
        assert!(err.to_string().starts_with("BOTLINE_QUEUE_URL"), "{err}");
        for (name, value) in [
            ("BOTLINE_FIFO_GROUP", "channel"),
            ("BOTLINE_SQS_WAIT_SECONDS", "21"),
        ] {
            let err = AwsSettings::from_lookup(lookup(&[
                ("BOTLINE_QUEUE_URL", QUEUE),
                ("BOTLINE_DLQ_URL", DLQ),
                ("BOTLINE_TABLE_PREFIX", "p-"),
                (name, value),
            ]))
            .unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
        }
    }
}
