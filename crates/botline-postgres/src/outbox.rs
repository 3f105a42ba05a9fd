//! The outbox: Bot API calls handed out under a lease, one per chat at a time, in the order they
//! were written (a delayed call in the order of its time); across instances as the queue does it
//! (see the crate docs).

use crate::queue::ORDER_KEY_LOCKS;
use crate::{Fault, PostgresBackend, count, millis, sql_limit, text};
use async_trait::async_trait;
use botline_core::backend::stored_reason;
use botline_core::{BackendError, Outbox, OutboxEntry, OutboxMessage, OutboxStats, UpdateId};
use std::sync::LazyLock;
use std::time::Duration;

/// The advisory-lock namespace of outbox chats, next to the queue's.
const CHAT_LOCKS: i32 = ORDER_KEY_LOCKS + 1;

/// Pending calls that could go out now, as `o`: the oldest pending of their chat by
/// (`created_at`, `seq`), due, and with no call of their chat leased or waiting out a retry (one
/// that was written late, behind a leased one). A delayed call not tried yet (`attempts` 0, its
/// `created_at` its time) holds up nothing before its time.
const HEADS: &str = "o.state = 0 AND o.due_at <= botline_now_ms()
    AND NOT EXISTS (SELECT 1 FROM outbox AS p
                    WHERE p.state = 0 AND p.chat_id = o.chat_id
                      AND (p.created_at, p.seq) < (o.created_at, o.seq))
    AND NOT EXISTS (SELECT 1 FROM outbox AS p
                    WHERE p.state = 0 AND p.chat_id = o.chat_id AND p.attempts > 0
                      AND p.due_at > botline_now_ms())";

/// Step 1: the chats of up to $1 due calls, each locked for this transaction.
static CLAIM_CHATS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT c.chat_id FROM (
             SELECT o.chat_id FROM outbox AS o WHERE {HEADS}
             ORDER BY o.due_at, o.seq LIMIT $1
         ) AS c
         WHERE pg_try_advisory_xact_lock($2, hashtext(c.chat_id::text))"
    )
});

/// Step 2, in a new snapshot with the chats ($1) locked: leases up to $2 calls for $3 ms.
static LEASE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH heads AS (
             SELECT o.outbox_id FROM outbox AS o
             WHERE o.chat_id = ANY($1) AND {HEADS}
             ORDER BY o.due_at, o.seq LIMIT $2
             FOR UPDATE OF o SKIP LOCKED
         ), leased AS (
             UPDATE outbox AS o SET attempts = o.attempts + 1, due_at = botline_now_ms() + $3
             FROM heads AS h WHERE o.outbox_id = h.outbox_id
             RETURNING o.outbox_id, o.update_id, o.chat_id, o.action::text, o.attempts,
                 o.created_at, o.seq
         )
         SELECT outbox_id, update_id, chat_id, action, attempts, created_at FROM leased
         ORDER BY seq"
    )
});

type CallRow = (String, i64, i64, String, i32, i64);

fn outbox_entry(
    (outbox_id, update_id, chat_id, action, attempts, created_at): CallRow,
) -> Result<OutboxEntry, BackendError> {
    Ok(OutboxEntry {
        call: OutboxMessage {
            action: serde_json::from_str(&action)
                .map_err(|e| BackendError::Corrupt(format!("outbox call {outbox_id}: {e}")))?,
            chat_id,
            outbox_id,
            send_at_ms: None,
        },
        update_id: UpdateId(update_id),
        attempt: u32::try_from(attempts)
            .map_err(|_| BackendError::Corrupt(format!("outbox call has {attempts} attempts")))?,
        created_at_ms: created_at,
    })
}

#[async_trait]
impl Outbox for PostgresBackend {
    async fn due_calls(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, BackendError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.run(async {
            let mut tx = self.pool().begin().await?;
            let chats: Vec<i64> = sqlx::query_scalar(&CLAIM_CHATS_SQL)
                .bind(sql_limit(max).saturating_mul(2))
                .bind(CHAT_LOCKS)
                .fetch_all(&mut *tx)
                .await?;
            if chats.is_empty() {
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            let rows: Vec<CallRow> = sqlx::query_as(&LEASE_SQL)
                .bind(&chats)
                .bind(sql_limit(max))
                .bind(millis(lease))
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.into_iter()
                .map(outbox_entry)
                .collect::<Result<_, _>>()
                .map_err(Fault::Backend)
        })
        .await
    }

    async fn call_done(
        &self,
        outbox_id: &str,
        telegram_message_id: Option<i64>,
    ) -> Result<(), BackendError> {
        self.run(async {
            sqlx::query(
                "UPDATE outbox SET state = 1, finished_at = botline_now_ms(),
                 telegram_message_id = $2, last_error = NULL WHERE outbox_id = $1",
            )
            .bind(outbox_id)
            .bind(telegram_message_id)
            .execute(self.pool())
            .await?;
            Ok(())
        })
        .await
    }

    async fn call_failed(
        &self,
        outbox_id: &str,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Result<(), BackendError> {
        let reason = stored_reason(&text(reason));
        self.run(async {
            let failed = match retry_after {
                Some(after) => sqlx::query(
                    "UPDATE outbox SET due_at = botline_now_ms() + $3, last_error = $2
                     WHERE outbox_id = $1 AND state = 0",
                )
                .bind(outbox_id)
                .bind(&reason)
                .bind(millis(after)),
                None => sqlx::query(
                    "UPDATE outbox SET state = 2, finished_at = botline_now_ms(), last_error = $2
                     WHERE outbox_id = $1",
                )
                .bind(outbox_id)
                .bind(&reason),
            };
            failed.execute(self.pool()).await?;
            Ok(())
        })
        .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, BackendError> {
        self.run(async {
            let (pending, done, failed): (i64, i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state = 0), count(*) FILTER (WHERE state = 1),
                        count(*) FILTER (WHERE state = 2) FROM outbox",
            )
            .fetch_one(self.pool())
            .await?;
            Ok(OutboxStats {
                pending: count(pending),
                done: count(done),
                failed: count(failed),
            })
        })
        .await
    }
}
