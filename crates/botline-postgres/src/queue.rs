//! The queue and its dead letters: `updates` and `update_bodies`.

use crate::{Fault, PostgresBackend, count, millis, sql_limit, text};
use async_trait::async_trait;
use botline_core::backend::{DeadLetter, Enqueued, Failed, QueueStats, stored_reason};
use botline_core::{
    BackendError, DeadLetters, Delivery, InboundUpdate, OrderKey, Queue, QueuedUpdate, UpdateId,
    UpdateKind,
};
use std::sync::LazyLock;
use std::time::Duration;

/// The advisory-lock namespace (first key of `pg_try_advisory_xact_lock(int, int)`) of order
/// keys; the second key is `hashtext(order_key)`. "BL" and 1.
pub(crate) const ORDER_KEY_LOCKS: i32 = 0x424C_0001;

/// Done updates forgotten per housekeeping statement, so no statement runs long.
const FORGET_BATCH: i64 = 10_000;

/// Pending updates that could be handed out now, as `u`: the head of their key (no pending
/// update with a lower id), visible (not leased, backoff over) and with no update of their key
/// in flight (one leased while it arrived late with a higher id). The largest bigint is a parked
/// update's `visible_at` (migration 0003): bounding the in-flight range below it keeps a long
/// parked backlog out of that range too.
const HEADS: &str = "u.state = 0 AND u.visible_at <= botline_now_ms()
    AND NOT EXISTS (SELECT 1 FROM updates AS p
                    WHERE p.state = 0 AND p.order_key = u.order_key AND p.update_id < u.update_id)
    AND NOT EXISTS (SELECT 1 FROM updates AS p
                    WHERE p.state = 0 AND p.order_key = u.order_key
                      AND p.receipt IS NOT NULL AND p.visible_at > botline_now_ms()
                      AND p.visible_at < 9223372036854775807)";

/// Step 1 of `receive`: the keys of up to $1 heads, each locked for this transaction by an
/// advisory lock, skipping keys another transaction holds. The subquery's `LIMIT` keeps
/// Postgres from evaluating the lock function on rows beyond it.
static CLAIM_KEYS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT c.order_key FROM (
             SELECT u.order_key FROM updates AS u WHERE {HEADS}
             ORDER BY u.visible_at, u.update_id LIMIT $1
         ) AS c
         WHERE pg_try_advisory_xact_lock($2, hashtext(c.order_key))"
    )
});

/// Step 2 of `receive`, in a new snapshot with the claimed keys ($1) locked: leases up to $2
/// heads for $3 ms, dead-letters those with $4 attempts behind them, and returns the leased.
/// A key's head is its lowest pending update, found by the pending index whatever the length of
/// the key's backlog (left to itself, the planner may read a key's whole backlog to filter it).
static LEASE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH heads AS (
             SELECT u.update_id, u.attempts FROM updates AS u
             WHERE u.update_id IN (SELECT (SELECT min(p.update_id) FROM updates AS p
                                           WHERE p.state = 0 AND p.order_key = k.key)
                                   FROM unnest($1::text[]) AS k (key))
               AND {HEADS}
             ORDER BY u.visible_at, u.update_id LIMIT $2
             FOR UPDATE OF u SKIP LOCKED
         ), dead AS (
             UPDATE updates AS u SET state = 2, finished_at = botline_now_ms(), receipt = NULL,
                 last_error = format('lease expired on each of %s attempts', h.attempts)
             FROM heads AS h WHERE u.update_id = h.update_id AND h.attempts >= $4
             RETURNING u.update_id
         ), leased AS (
             UPDATE updates AS u SET attempts = u.attempts + 1,
                 visible_at = botline_now_ms() + $3, receipt = gen_random_uuid()::text
             FROM heads AS h WHERE u.update_id = h.update_id AND h.attempts < $4
             RETURNING u.update_id, u.entry_id, u.order_key, u.kind, u.received_at, u.attempts,
                 u.receipt
         )
         SELECT l.update_id, l.entry_id, l.order_key, l.kind, b.raw, l.received_at, l.attempts,
             l.receipt
         FROM leased AS l JOIN update_bodies AS b USING (update_id)
         UNION ALL
         SELECT d.update_id, '', '', '', b.raw, 0, 0, NULL
         FROM dead AS d JOIN update_bodies AS b USING (update_id)
         ORDER BY 1"
    )
});

/// The columns of a queued update, from `updates AS u JOIN update_bodies AS b USING (update_id)`.
const UPDATE_COLUMNS: &str = "u.update_id, u.entry_id, u.order_key, u.kind, b.raw, u.received_at";

type UpdateRow = (i64, String, String, String, String, i64);
/// What [`LEASE_SQL`] returns: an update's columns, its attempts and its receipt; no receipt
/// for an update the statement dead-lettered.
type LeaseRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    i32,
    Option<String>,
);
type DeadRow = (
    i64,
    String,
    String,
    String,
    String,
    i64,
    i32,
    Option<String>,
    Option<i64>,
);

fn queued_update(
    (update_id, entry_id, order_key, kind, raw, received_at): UpdateRow,
) -> Result<QueuedUpdate, BackendError> {
    let order_key = order_key.parse::<OrderKey>().map_err(|e| {
        BackendError::Corrupt(format!(
            "update {update_id} has order key {order_key:?}: {e}"
        ))
    })?;
    Ok(QueuedUpdate {
        entry_id,
        update_id: UpdateId(update_id),
        kind: UpdateKind(kind),
        order_key,
        raw,
        received_at_ms: received_at,
    })
}

fn dead_letter(
    (update_id, entry_id, order_key, kind, raw, received_at, attempts, last_error, dead_at): DeadRow,
) -> Result<DeadLetter, BackendError> {
    Ok(DeadLetter {
        update: queued_update((update_id, entry_id, order_key, kind, raw, received_at))?,
        attempts: attempts_of(update_id, attempts)?,
        last_error,
        dead_at_ms: dead_at.unwrap_or_default(),
    })
}

fn attempts_of(update_id: i64, attempts: i32) -> Result<u32, BackendError> {
    u32::try_from(attempts)
        .map_err(|_| BackendError::Corrupt(format!("update {update_id} has {attempts} attempts")))
}

/// Replaces a dead letter's body with its redacted form when it holds a secret a user typed: a
/// dead letter outlives its attempts (until an operator redrives it), and nothing else would
/// ever redact it.
async fn redact_dead_body(
    tx: &mut sqlx::PgConnection,
    update_id: i64,
    raw: &str,
) -> Result<(), sqlx::Error> {
    if let Some(redacted) = botline_core::redact_typed_secrets(raw) {
        sqlx::query("UPDATE update_bodies SET raw = $2 WHERE update_id = $1")
            .bind(update_id)
            .bind(text(&redacted))
            .execute(tx)
            .await?;
    }
    Ok(())
}

/// A failure's reason as stored: [`stored_reason`] with no NUL.
fn reason_text(reason: &str) -> String {
    stored_reason(&text(reason))
}

#[async_trait]
impl Queue for PostgresBackend {
    async fn enqueue(&self, update: &InboundUpdate) -> Result<Enqueued, BackendError> {
        let entry_id = uuid::Uuid::now_v7().to_string();
        self.run(async {
            // The insert, and the parking behind a lower pending update of the key
            // (migration 0003), in one function: one round trip.
            let new: bool = sqlx::query_scalar("SELECT botline_enqueue($1, $2, $3, $4, $5)")
                .bind(update.id.0)
                .bind(&entry_id)
                .bind(update.order_key.to_string())
                .bind(text(update.kind.as_str()))
                .bind(&update.raw)
                .fetch_one(self.pool())
                .await?;
            Ok(if new {
                Enqueued::New
            } else {
                Enqueued::Duplicate
            })
        })
        .await
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let config = *self.config();
        self.run(async {
            let mut tx = self.pool().begin().await?;
            // Twice as many keys as wanted: a key another instance leases at this moment is
            // skipped, and the next ones take its place.
            let keys: Vec<String> = sqlx::query_scalar(&CLAIM_KEYS_SQL)
                .bind(sql_limit(max).saturating_mul(2))
                .bind(ORDER_KEY_LOCKS)
                .fetch_all(&mut *tx)
                .await?;
            if keys.is_empty() {
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            let mut rows: Vec<LeaseRow> = sqlx::query_as(&LEASE_SQL)
                .bind(&keys)
                .bind(sql_limit(max))
                .bind(millis(config.lease))
                .bind(i32::try_from(config.retry.max_attempts).unwrap_or(i32::MAX))
                .fetch_all(&mut *tx)
                .await?;
            // The rows without a receipt were dead-lettered by this statement (their leases ran
            // out on every attempt): their bodies are redacted in the same transaction.
            for (update_id, .., raw, _, _, receipt) in &rows {
                if receipt.is_none() {
                    redact_dead_body(&mut tx, *update_id, raw).await?;
                }
            }
            tx.commit().await?;
            rows.retain(|row| row.7.is_some());
            rows.into_iter()
                .map(
                    |(
                        update_id,
                        entry_id,
                        order_key,
                        kind,
                        raw,
                        received_at,
                        attempts,
                        receipt,
                    )| {
                        Ok(Delivery {
                            update: queued_update((
                                update_id,
                                entry_id,
                                order_key,
                                kind,
                                raw,
                                received_at,
                            ))?,
                            attempt: attempts_of(update_id, attempts)?,
                            receipt: receipt.unwrap_or_default(),
                        })
                    },
                )
                .collect::<Result<Vec<_>, BackendError>>()
                .map_err(Fault::Backend)
        })
        .await
    }

    async fn extend(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let id = delivery.update.update_id;
        let lease = self.config().lease;
        self.run(async {
            let extended = sqlx::query(
                "UPDATE updates SET visible_at = botline_now_ms() + $3
                 WHERE update_id = $1 AND receipt = $2 AND state = 0",
            )
            .bind(id.0)
            .bind(&delivery.receipt)
            .bind(millis(lease))
            .execute(self.pool())
            .await?
            .rows_affected();
            if extended == 1 {
                Ok(())
            } else {
                Err(Fault::Backend(BackendError::LeaseLost(id)))
            }
        })
        .await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let id = delivery.update.update_id;
        self.run(async {
            let acked = sqlx::query(
                "UPDATE updates SET state = 1, finished_at = botline_now_ms()
                 WHERE update_id = $1 AND receipt = $2 AND state = 0",
            )
            .bind(id.0)
            .bind(&delivery.receipt)
            .execute(self.pool())
            .await?
            .rows_affected();
            if acked == 1 || state_of(self, id).await? == Some(DONE) {
                Ok(())
            } else {
                Err(Fault::Backend(BackendError::LeaseLost(id)))
            }
        })
        .await
    }

    async fn fail_after(
        &self,
        delivery: &Delivery,
        reason: &str,
        wait: Duration,
    ) -> Result<Failed, BackendError> {
        let id = delivery.update.update_id;
        let reason = reason_text(reason);
        let retry = self.config().retry;
        self.run(async {
            let mut tx = self.pool().begin().await?;
            let attempts: Option<i32> = sqlx::query_scalar(
                "SELECT attempts FROM updates WHERE update_id = $1 AND receipt = $2 AND state = 0
                 FOR UPDATE",
            )
            .bind(id.0)
            .bind(&delivery.receipt)
            .fetch_optional(&mut *tx)
            .await?;
            let attempts = attempts.ok_or(BackendError::LeaseLost(id))?;
            let attempts = attempts_of(id.0, attempts)?;
            let failed = if attempts >= retry.max_attempts {
                sqlx::query(
                    "UPDATE updates SET state = 2, finished_at = botline_now_ms(), receipt = NULL,
                     last_error = $2 WHERE update_id = $1",
                )
                .bind(id.0)
                .bind(&reason)
                .execute(&mut *tx)
                .await?;
                redact_dead_body(&mut tx, id.0, &delivery.update.raw).await?;
                Failed::DeadLettered
            } else {
                let after = retry.backoff(attempts).max(wait);
                sqlx::query(
                    "UPDATE updates SET visible_at = botline_now_ms() + $2, receipt = NULL,
                     last_error = $3 WHERE update_id = $1",
                )
                .bind(id.0)
                .bind(millis(after))
                .bind(&reason)
                .execute(&mut *tx)
                .await?;
                Failed::Retrying { after }
            };
            tx.commit().await?;
            Ok(failed)
        })
        .await
    }

    async fn stats(&self) -> Result<QueueStats, BackendError> {
        self.run(async {
            let (pending, in_flight, dead, done, oldest_pending_ms): (
                i64,
                i64,
                i64,
                i64,
                Option<i64>,
            ) = sqlx::query_as(
                "SELECT
                     (SELECT count(*) FROM updates WHERE state = 0
                        AND (receipt IS NULL OR visible_at <= botline_now_ms())),
                     (SELECT count(*) FROM updates WHERE state = 0
                        AND receipt IS NOT NULL AND visible_at > botline_now_ms()),
                     (SELECT count(*) FROM updates WHERE state = 2),
                     (SELECT count(*) FROM updates WHERE state = 1),
                     -- The first entry of updates_pending_by_receipt (migration 4).
                     (SELECT min(received_at) FROM updates WHERE state = 0)",
            )
            .fetch_one(self.pool())
            .await?;
            Ok(QueueStats {
                pending: count(pending),
                in_flight: count(in_flight),
                dead: count(dead),
                done: count(done),
                oldest_pending_ms,
            })
        })
        .await
    }

    /// A round trip to the server through the pool.
    async fn ping(&self) -> Result<(), BackendError> {
        self.run(async {
            sqlx::query("SELECT 1").execute(self.pool()).await?;
            Ok(())
        })
        .await
    }

    /// Every migration of this build recorded as applied in sqlx's `_sqlx_migrations` (none
    /// when the table is not there): a database behind the build is named migration by
    /// migration. `serve` migrates at start, so this finds something only when the database
    /// was replaced or changed by hand while it runs, or could not be migrated.
    async fn check_schema(&self) -> Result<(), BackendError> {
        let applied: Vec<i64> = self
            .run(async {
                let tracked: bool =
                    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                        .fetch_one(self.pool())
                        .await?;
                if !tracked {
                    return Ok(Vec::new());
                }
                let applied =
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(self.pool())
                        .await?;
                Ok(applied)
            })
            .await?;
        let missing = crate::migrations::not_applied(&applied);
        if missing.is_empty() {
            return Ok(());
        }
        Err(BackendError::Unprovisioned(botline_core::Unprovisioned {
            backend: "Postgres",
            missing,
            fix: crate::migrations::PROVISION_COMMAND,
        }))
    }

    async fn housekeeping(&self) -> Result<(), BackendError> {
        let window = millis(self.config().dedupe_window);
        let mut forgotten = 0;
        // In batches, each its own statement; rows another instance is deleting are skipped.
        loop {
            let deleted = self
                .run(async {
                    let deleted = sqlx::query(
                        "DELETE FROM updates WHERE update_id IN (
                             SELECT update_id FROM updates
                             WHERE state = 1 AND received_at < botline_now_ms() - $1
                             ORDER BY received_at LIMIT $2
                             FOR UPDATE SKIP LOCKED)",
                    )
                    .bind(window)
                    .bind(FORGET_BATCH)
                    .execute(self.pool())
                    .await?
                    .rows_affected();
                    Ok(deleted)
                })
                .await?;
            forgotten += deleted;
            if deleted < FORGET_BATCH.unsigned_abs() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let purged =
            botline_core::Sessions::purge_expired_sessions(self, botline_core::clock::now_ms())
                .await?;
        // Dead letters that a build before dead-letter redaction left with a typed secret.
        let redacted = self
            .run(async {
                let mut tx = self.pool().begin().await?;
                let bodies: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT b.update_id, b.raw FROM update_bodies AS b
                     JOIN updates AS u USING (update_id)
                     WHERE u.state = 2 AND b.raw ILIKE '%register%'
                     FOR UPDATE OF b SKIP LOCKED",
                )
                .fetch_all(&mut *tx)
                .await?;
                let mut redacted = 0u64;
                for (update_id, raw) in &bodies {
                    if botline_core::redact_typed_secrets(raw).is_some() {
                        redact_dead_body(&mut tx, *update_id, raw).await?;
                        redacted += 1;
                    }
                }
                tx.commit().await?;
                Ok(redacted)
            })
            .await?;
        if redacted > 0 {
            tracing::info!(
                dead_letters = redacted,
                "redacted the registration tokens that older dead letters still held"
            );
        }
        tracing::debug!(forgotten, purged, "housekeeping");
        Ok(())
    }

    /// Closes the pool, once the connections in use are given back.
    async fn close(&self) -> Result<(), BackendError> {
        self.run(async {
            self.pool().close().await;
            Ok(())
        })
        .await
    }
}

/// The `state` of a done update.
pub(crate) const DONE: i16 = 1;

/// An update's `state`, if it is still remembered.
pub(crate) async fn state_of(
    backend: &PostgresBackend,
    id: UpdateId,
) -> Result<Option<i16>, sqlx::Error> {
    sqlx::query_scalar("SELECT state FROM updates WHERE update_id = $1")
        .bind(id.0)
        .fetch_optional(backend.pool())
        .await
}

#[async_trait]
impl DeadLetters for PostgresBackend {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.run(async {
            let rows: Vec<DeadRow> = sqlx::query_as(&format!(
                "SELECT {UPDATE_COLUMNS}, u.attempts, u.last_error, u.finished_at
                 FROM updates AS u JOIN update_bodies AS b USING (update_id)
                 WHERE u.state = 2 ORDER BY u.finished_at, u.update_id LIMIT $1"
            ))
            .bind(sql_limit(limit))
            .fetch_all(self.pool())
            .await?;
            Ok(rows
                .into_iter()
                .map(dead_letter)
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn show(&self, id: UpdateId) -> Result<Option<DeadLetter>, BackendError> {
        self.run(async {
            let row: Option<DeadRow> = sqlx::query_as(&format!(
                "SELECT {UPDATE_COLUMNS}, u.attempts, u.last_error, u.finished_at
                 FROM updates AS u JOIN update_bodies AS b USING (update_id)
                 WHERE u.state = 2 AND u.update_id = $1"
            ))
            .bind(id.0)
            .fetch_optional(self.pool())
            .await?;
            Ok(row.map(dead_letter).transpose()?)
        })
        .await
    }

    async fn redrive(&self, id: UpdateId) -> Result<bool, BackendError> {
        self.run(async {
            let redriven = sqlx::query(
                "UPDATE updates SET state = 0, attempts = 0, visible_at = botline_now_ms(),
                 receipt = NULL, finished_at = NULL WHERE update_id = $1 AND state = 2",
            )
            .bind(id.0)
            .execute(self.pool())
            .await?
            .rows_affected();
            Ok(redriven == 1)
        })
        .await
    }

    async fn redrive_all(&self) -> Result<u64, BackendError> {
        self.run(async {
            let redriven = sqlx::query(
                "UPDATE updates SET state = 0, attempts = 0, visible_at = botline_now_ms(),
                 receipt = NULL, finished_at = NULL WHERE state = 2",
            )
            .execute(self.pool())
            .await?
            .rows_affected();
            Ok(redriven)
        })
        .await
    }
}
