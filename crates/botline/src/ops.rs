//! The operator's commands: look after dead letters, read the counts,
//! issue registration tokens, manage Telegram's webhook. Those on the store open it next to a
//! running `botline serve`.

use crate::telegram::{CallError, Telegram, WebhookRequest};
use botline_core::backend::DeadLetter;
use botline_core::{Backend, BackendError, UpdateId, clock};
use serde::Serialize;
use std::io::{self, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header line, then one row per message (RFC 4180 quoting).
    Csv,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Telegram(#[from] CallError),
}

impl OpsError {
    /// A reader that went away (`| head`) is not an error.
    pub fn is_broken_pipe(&self) -> bool {
        let io = match self {
            Self::Output(e) => Some(e),
            Self::Csv(e) => match e.kind() {
                csv::ErrorKind::Io(e) => Some(e),
                _ => None,
            },
            _ => None,
        };
        io.is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// A dead letter as the operator reads it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeadLetterView<'a> {
    update_id: i64,
    kind: &'a str,
    order_key: String,
    attempts: u32,
    last_error: Option<&'a str>,
    received_at: String,
    dead_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<serde_json::Value>,
}

impl<'a> DeadLetterView<'a> {
    fn new(dead: &'a DeadLetter, with_raw: bool) -> Self {
        Self {
            update_id: dead.update.update_id.0,
            kind: dead.update.kind.as_str(),
            order_key: dead.update.order_key.to_string(),
            attempts: dead.attempts,
            last_error: dead.last_error.as_deref(),
            received_at: clock::iso8601(dead.update.received_at_ms),
            dead_at: clock::iso8601(dead.dead_at_ms),
            raw: with_raw.then(|| {
                // Backends redact a dead letter when it dies; this covers one an older build
                // stored before they did, so `dlq show` never prints a typed token.
                let raw = botline_core::redact_typed_secrets(&dead.update.raw)
                    .unwrap_or_else(|| dead.update.raw.clone());
                serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw))
            }),
        }
    }
}

/// One line per dead letter, oldest first.
pub async fn dlq_list(
    backend: &dyn Backend,
    limit: usize,
    mut out: impl Write,
) -> Result<(), OpsError> {
    let dead = backend.list(limit).await?;
    if dead.is_empty() {
        writeln!(out, "no dead letters")?;
    }
    for letter in &dead {
        serde_json::to_writer(&mut out, &DeadLetterView::new(letter, false))
            .map_err(io::Error::from)?;
        writeln!(out)?;
    }
    Ok(())
}

/// One dead letter with its body, pretty-printed.
pub async fn dlq_show(
    backend: &dyn Backend,
    id: UpdateId,
    mut out: impl Write,
) -> Result<(), OpsError> {
    let letter = backend
        .show(id)
        .await?
        .ok_or_else(|| OpsError::NotFound(format!("update {id} is not a dead letter")))?;
    serde_json::to_writer_pretty(&mut out, &DeadLetterView::new(&letter, true))
        .map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

pub async fn dlq_redrive(
    backend: &dyn Backend,
    id: Option<UpdateId>,
    mut out: impl Write,
) -> Result<(), OpsError> {
    match id {
        Some(id) => {
            if !backend.redrive(id).await? {
                return Err(OpsError::NotFound(format!(
                    "update {id} is not a dead letter"
                )));
            }
            writeln!(out, "update {id} is back on the queue")?;
        }
        None => {
            let count = backend.redrive_all().await?;
            writeln!(out, "{count} dead letters are back on the queue")?;
        }
    }
    Ok(())
}

pub async fn stats(backend: &dyn Backend, json: bool, mut out: impl Write) -> Result<(), OpsError> {
    let stats = backend.stats().await?;
    let outbox = backend.outbox_stats().await?;
    let oldest_age = stats
        .oldest_pending_ms
        .map(|oldest| crate::metrics::age_seconds(Some(oldest), clock::now_ms()));
    if json {
        let value = serde_json::json!({
            "pending": stats.pending,
            "inFlight": stats.in_flight,
            "oldestPendingAgeSeconds": oldest_age,
            "dead": stats.dead,
            "done": stats.done,
            "outbox": {
                "pending": outbox.pending,
                "done": outbox.done,
                "failed": outbox.failed,
            },
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "pending    {}", stats.pending)?;
        writeln!(out, "in flight  {}", stats.in_flight)?;
        match oldest_age {
            Some(age) => writeln!(out, "oldest     received {age:.1} s ago, not done yet")?,
            None => writeln!(out, "oldest     none (nothing pending or in flight)")?,
        }
        writeln!(out, "dead       {}", stats.dead)?;
        writeln!(out, "done       {} (remembered for dedupe)", stats.done)?;
        writeln!(
            out,
            "replies    {} waiting, {} sent, {} refused by Telegram",
            outbox.pending, outbox.done, outbox.failed
        )?;
    }
    Ok(())
}

/// Issues a single-use registration token for `username`, valid for `ttl`, and prints it on the
/// last line. Only its SHA-256 digest is stored.
pub async fn issue_token(
    backend: &dyn Backend,
    username: &str,
    ttl: std::time::Duration,
    mut out: impl Write,
) -> Result<(), OpsError> {
    use rand::RngCore;
    if !botline_core::commands::is_username(username) {
        return Err(OpsError::Invalid(
            "a username is 1 to 64 of A-Z a-z 0-9 _ . - @".to_owned(),
        ));
    }
    let mut bytes = [0_u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at = clock::now_ms().saturating_add(ttl_ms);
    let digest = botline_core::commands::token_digest(&token);
    backend.issue_token(username, &digest, expires_at).await?;
    writeln!(
        out,
        "single-use token for {username}, valid until {}; send it as: /register {username} <token>",
        clock::iso8601(expires_at)
    )?;
    writeln!(out, "{token}")?;
    Ok(())
}

/// `botline webhook set`: points Telegram at the webhook, with the secret as `secret_token`.
pub async fn webhook_set(
    telegram: &Telegram,
    request: &WebhookRequest,
    mut out: impl Write,
) -> Result<(), OpsError> {
    if !request.url.starts_with("https://") {
        // Telegram refuses it too; saying so here is clearer than its "bad webhook".
        tracing::warn!(url = %request.url, "Telegram only delivers to https:// webhooks");
    }
    telegram.set_webhook(request).await?;
    writeln!(
        out,
        "webhook set: Telegram now posts updates to {}{}",
        request.url,
        if request.secret_token.is_some() {
            " with the webhook secret"
        } else {
            " WITHOUT a secret: anyone who finds the URL can post updates (set \
             BOTLINE_WEBHOOK_SECRET and run this again)"
        }
    )?;
    Ok(())
}

/// `botline webhook info`.
pub async fn webhook_info(
    telegram: &Telegram,
    json: bool,
    mut out: impl Write,
) -> Result<(), OpsError> {
    let info = telegram.webhook_info().await?;
    if json {
        let value = serde_json::to_value(&info).map_err(io::Error::other)?;
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let url = if info.url.is_empty() {
        "none (no webhook is set: `botline poll` can fetch updates)".to_owned()
    } else {
        info.url.clone()
    };
    writeln!(out, "url:              {url}")?;
    writeln!(out, "pending updates:  {}", info.pending_update_count)?;
    if let Some(max) = info.max_connections {
        writeln!(out, "max connections:  {max}")?;
    }
    match &info.allowed_updates {
        Some(kinds) if !kinds.is_empty() => {
            let names: Vec<String> = kinds
                .iter()
                .filter_map(|k| serde_json::to_value(k).ok())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            writeln!(out, "allowed updates:  {}", names.join(", "))?;
        }
        _ => writeln!(out, "allowed updates:  Telegram's default")?,
    }
    if let Some(ip) = &info.ip_address {
        writeln!(out, "ip address:       {ip}")?;
    }
    match (info.last_error_date, &info.last_error_message) {
        (Some(date), message) => writeln!(
            out,
            "last error:       {} {}",
            clock::iso8601(
                i64::try_from(date)
                    .unwrap_or(i64::MAX / 1000)
                    .saturating_mul(1000)
            ),
            message.as_deref().unwrap_or("")
        )?,
        (None, _) => writeln!(out, "last error:       none")?,
    }
    Ok(())
}

/// `botline webhook delete`.
pub async fn webhook_delete(
    telegram: &Telegram,
    drop_pending_updates: bool,
    mut out: impl Write,
) -> Result<(), OpsError> {
    telegram.delete_webhook(drop_pending_updates).await?;
    writeln!(
        out,
        "webhook deleted{}; `botline poll` can fetch updates now",
        if drop_pending_updates {
            ", pending updates dropped"
        } else {
            ""
        }
    )?;
    Ok(())
}
