//! Token buckets in DynamoDB, for Telegram's limits across the worker function's execution
//! environments when no Redis is configured ([`DynamoLimiter`]).
//!
//! The worker Lambda runs in up to `maxConcurrency` environments at once, each with its own
//! memory: counted per process, the bot's 30 calls a second become 30 per environment. The
//! buckets here are items of the `outbox` table (the worker already reads and writes it, so no
//! table or permission is added): `outboxId` `limit#<bucket>`, the bucket's theoretical arrival
//! time `tat` (microseconds since the epoch) and the TTL `expiresAt`. They carry neither
//! `state` nor `pendingShard`, so the outbox's index, its stats and its calls never see them.
//!
//! A token is taken as in the Redis script ([`botline_core::limits`]): read the buckets
//! (consistent), compute, and write every bucket's new time in one transaction whose
//! conditions say nobody moved them since; a transaction that loses a race reads again. The
//! time is the environment's clock (Lambda's are kept by the Amazon Time Sync Service, within
//! a millisecond or so of each other), which the buckets' headroom covers.
//!
//! Redis is the better store when there is one: one round trip instead of two, no write
//! capacity spent per call. This one exists so that a deployment without Redis still holds
//! Telegram's limits.

use crate::item::{Item, get_s, n, names, opt_n, s, values};
use crate::{AwsBackend, unavailable};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{KeysAndAttributes, Put, TransactWriteItem};
use botline_core::limits::{Bucket, SharedLimiter, Taken};
use botline_core::{BackendError, clock};
use std::collections::HashMap;
use std::time::Duration;

/// Reads and writes before a contended take answers "ask again shortly".
const TRIES: usize = 4;
/// What "shortly" is.
const CONTENDED_WAIT: Duration = Duration::from_millis(20);
/// How long a full bucket's item outlives its time before DynamoDB's TTL may delete it.
const KEEP_SECONDS: i64 = 60;

/// Buckets kept in the deployment's `outbox` table.
#[derive(Debug, Clone)]
pub struct DynamoLimiter {
    backend: AwsBackend,
}

impl AwsBackend {
    /// Token buckets in this deployment's `outbox` table, for limits that hold across
    /// instances and Lambda execution environments without Redis.
    pub fn limiter(&self) -> DynamoLimiter {
        DynamoLimiter {
            backend: self.clone(),
        }
    }
}

fn item_id(bucket: &Bucket) -> String {
    format!("limit#{}", bucket.key)
}

#[async_trait]
impl SharedLimiter for DynamoLimiter {
    async fn take(&self, buckets: &[Bucket]) -> Result<Taken, BackendError> {
        let table = &self.backend.tables().outbox;
        for _ in 0..TRIES {
            let keys = buckets
                .iter()
                .map(|bucket| Item::from([("outboxId".to_owned(), s(item_id(bucket)))]))
                .collect::<Vec<_>>();
            let read = self
                .backend
                .dynamodb()
                .batch_get_item()
                .request_items(
                    table,
                    KeysAndAttributes::builder()
                        .set_keys(Some(keys))
                        .consistent_read(true)
                        .projection_expression("outboxId, tat")
                        .build()
                        .map_err(|e| BackendError::Unavailable(format!("BatchGetItem: {e}")))?,
                )
                .send()
                .await
                .map_err(|e| unavailable("BatchGetItem outbox (limits)", e))?;
            let found: HashMap<String, i64> = read
                .responses()
                .and_then(|tables| tables.get(table.as_str()))
                .into_iter()
                .flatten()
                .filter_map(|item| {
                    let id = get_s(item, "outboxId")?.to_owned();
                    let tat = opt_n::<i64>(item, "tat", &id).ok().flatten()?;
                    Some((id, tat))
                })
                .collect();
            if !read.unprocessed_keys().is_none_or(HashMap::is_empty) {
                // Throttled: not every bucket was read. Ask again shortly.
                return Ok(Taken::NotBefore(CONTENDED_WAIT));
            }

            let now = clock::now_ms() * 1000;
            let mut wait = 0i64;
            let mut writes = Vec::with_capacity(buckets.len());
            for bucket in buckets {
                let id = item_id(bucket);
                let period = i64::try_from(bucket.period.as_micros())
                    .unwrap_or(i64::MAX)
                    .max(1);
                let burst = i64::from(bucket.burst.max(1));
                let before = found.get(&id).copied();
                let tat = before.unwrap_or(now).max(now);
                wait = wait.max(tat - (burst - 1) * period - now);
                let next = tat + period;
                let item = Item::from([
                    ("outboxId".to_owned(), s(&id)),
                    ("tat".to_owned(), n(next)),
                    ("expiresAt".to_owned(), n(next / 1_000_000 + KEEP_SECONDS)),
                ]);
                let put = Put::builder().table_name(table).set_item(Some(item));
                let put = match before {
                    None => put.condition_expression("attribute_not_exists(outboxId)"),
                    Some(before) => put
                        .condition_expression("#tat = :before")
                        .set_expression_attribute_names(names(["#tat"]))
                        .set_expression_attribute_values(values([(":before", n(before))])),
                };
                let put = put
                    .build()
                    .map_err(|e| BackendError::Unavailable(format!("Put limit: {e}")))?;
                writes.push(TransactWriteItem::builder().put(put).build());
            }
            if wait > 0 {
                return Ok(Taken::NotBefore(Duration::from_micros(wait.unsigned_abs())));
            }
            let written = self
                .backend
                .dynamodb()
                .transact_write_items()
                .set_transact_items(Some(writes))
                .send()
                .await;
            match written {
                Ok(_) => return Ok(Taken::Yes),
                // Another instance took a token in between: read again.
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(TransactWriteItemsError::TransactionCanceledException(_))
                    ) => {}
                Err(e) => return Err(unavailable("TransactWriteItems outbox (limits)", e)),
            }
        }
        Ok(Taken::NotBefore(CONTENDED_WAIT))
    }
}
