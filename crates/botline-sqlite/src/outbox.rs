//! The outbox: Bot API calls written with the update that asked for them, handed to the sender
//! one chat at a time, in the order written.

use crate::{SqliteBackend, millis, unavailable};
use async_trait::async_trait;
use botline_core::backend::stored_reason;
use botline_core::{
    BackendError, Outbox, OutboxEntry, OutboxMessage, OutboxStats, UpdateId, clock,
};
use rusqlite::{Row, params};
use std::time::Duration;

fn outbox_entry(row: &Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let action: String = row.get(3)?;
    Ok(OutboxEntry {
        call: OutboxMessage {
            outbox_id: row.get(0)?,
            chat_id: row.get(2)?,
            action: serde_json::from_str(&action).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
            })?,
            send_at_ms: None,
        },
        update_id: UpdateId(row.get(1)?),
        attempt: row.get(4)?,
        created_at_ms: row.get(5)?,
    })
}

#[async_trait]
impl Outbox for SqliteBackend {
    async fn due_calls(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, BackendError> {
        self.write(move |conn| {
            let now = clock::now_ms();
            let mut due = conn
                .prepare_cached(
                    "SELECT outbox_id, update_id, chat_id, action, attempts + 1, created_at
                     FROM outbox AS o
                     WHERE state = 0 AND due_at <= ?1
                       AND NOT EXISTS (SELECT 1 FROM outbox AS p
                                       WHERE p.state = 0 AND p.chat_id = o.chat_id
                                         AND (p.created_at, p.outbox_id) < (o.created_at, o.outbox_id))
                     ORDER BY due_at, created_at, outbox_id LIMIT ?2",
                )
                .and_then(|mut select| {
                    select
                        .query_map(params![now, max as i64], outbox_entry)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            for entry in &mut due {
                conn.prepare_cached(
                    "UPDATE outbox SET attempts = attempts + 1, due_at = ?2 WHERE outbox_id = ?1",
                )
                .and_then(|mut lease_it| {
                    lease_it.execute(params![entry.call.outbox_id, now.saturating_add(millis(lease))])
                })
                .map_err(unavailable)?;
            }
            Ok(due)
        })
        .await
    }

    async fn call_done(
        &self,
        outbox_id: &str,
        telegram_message_id: Option<i64>,
    ) -> Result<(), BackendError> {
        let outbox_id = outbox_id.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE outbox SET state = 1, finished_at = ?2, telegram_message_id = ?3,
                 last_error = NULL WHERE outbox_id = ?1",
            )
            .and_then(|mut done| {
                done.execute(params![outbox_id, clock::now_ms(), telegram_message_id])
            })
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn call_failed(
        &self,
        outbox_id: &str,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Result<(), BackendError> {
        let outbox_id = outbox_id.to_owned();
        let reason = stored_reason(reason);
        self.write(move |conn| {
            let now = clock::now_ms();
            let statement = match retry_after {
                Some(_) => "UPDATE outbox SET due_at = ?2, last_error = ?3 WHERE outbox_id = ?1 AND state = 0",
                None => "UPDATE outbox SET state = 2, finished_at = ?2, last_error = ?3 WHERE outbox_id = ?1",
            };
            let at = retry_after.map_or(now, |after| now.saturating_add(millis(after)));
            conn.prepare_cached(statement)
                .and_then(|mut failed| failed.execute(params![outbox_id, at, reason]))
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, BackendError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT COUNT(*) FILTER (WHERE state = 0), COUNT(*) FILTER (WHERE state = 1),
                        COUNT(*) FILTER (WHERE state = 2) FROM outbox",
                [],
                |row| {
                    Ok(OutboxStats {
                        pending: row.get::<_, i64>(0)?.unsigned_abs(),
                        done: row.get::<_, i64>(1)?.unsigned_abs(),
                        failed: row.get::<_, i64>(2)?.unsigned_abs(),
                    })
                },
            )
            .map_err(unavailable)
        })
        .await
    }
}
