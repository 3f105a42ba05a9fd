//! The queue and the dead letters: enqueue (dedupe by `update_id`), the lease of each chat's
//! oldest pending update, ack, fail and its backoff, stats, and what failed for good.

use crate::{
    DONE, OLDEST_PENDING, PARKED, SCHEMA_VERSION, SqliteBackend, journal, millis, unavailable,
};
use async_trait::async_trait;
use botline_core::backend::{DeadLetter, Enqueued, Failed, QueueStats, stored_reason};
use botline_core::{
    BackendError, DeadLetters, Delivery, InboundUpdate, OrderKey, Queue, QueuedUpdate, Sessions,
    UpdateId, UpdateKind, clock,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The columns of a queued update, from `updates AS u JOIN update_bodies AS b USING (update_id)`.
const UPDATE_COLUMNS: &str = "u.update_id, u.entry_id, u.order_key, u.kind, b.raw, u.received_at";
const UPDATE_ROWS: &str = "updates AS u JOIN update_bodies AS b USING (update_id)";

/// A `updates` row (selected with [`UPDATE_COLUMNS`] first) as a queued update.
fn queued_update(row: &Row<'_>) -> rusqlite::Result<QueuedUpdate> {
    let order_key: String = row.get(2)?;
    let order_key = order_key.parse::<OrderKey>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.into())
    })?;
    Ok(QueuedUpdate {
        update_id: UpdateId(row.get(0)?),
        entry_id: row.get(1)?,
        order_key,
        kind: UpdateKind(row.get(3)?),
        raw: row.get(4)?,
        received_at_ms: row.get(5)?,
    })
}

fn dead_letter(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        update: queued_update(row)?,
        attempts: row.get(6)?,
        last_error: row.get(7)?,
        dead_at_ms: row.get::<_, Option<i64>>(8)?.unwrap_or_default(),
    })
}

#[async_trait]
impl Queue for SqliteBackend {
    async fn enqueue(&self, update: &InboundUpdate) -> Result<Enqueued, BackendError> {
        if let Some(journal) = &self.inner.journal {
            if !holds_typed_secret(&update.raw) {
                return journal.append(update).await;
            }
            // The journal's segments are never redacted: a body with a token a user typed goes
            // to the queue directly, where processing redacts it, after what was acknowledged
            // before it.
            journal.caught_up().await;
            if journal.holds(update.id) {
                return Ok(Enqueued::Duplicate);
            }
        }
        let record = journal::Record::of(update, clock::now_ms());
        self.write(move |conn| {
            let new = journal::insert(conn, std::slice::from_ref(&record)).map_err(unavailable)?;
            Ok(if new == 0 {
                Enqueued::Duplicate
            } else {
                Enqueued::New
            })
        })
        .await
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let Some(journal) = &self.inner.journal else {
            return self.lease(max).await;
        };
        // Everything acknowledged before this call is handed out or waited for; but the worker
        // does not wait for the importer while the queue holds as much as it asks for.
        let acknowledged = journal.durable_records();
        let all_imported = journal.imported(acknowledged);
        let mut deliveries = self.lease(max).await?;
        // (Imported during that lease is not enough: the lease may have read before it.)
        if deliveries.len() < max && !all_imported {
            journal.caught_up_to(acknowledged).await;
            deliveries.extend(self.lease(max - deliveries.len()).await?);
        }
        Ok(deliveries)
    }
    async fn extend(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let id = delivery.update.update_id;
        let receipt = delivery.receipt.clone();
        let lease = self.inner.config.lease;
        self.write(move |conn| {
            let extended = conn
                .prepare_cached(
                    "UPDATE updates SET visible_at = ?3
                     WHERE update_id = ?1 AND receipt = ?2 AND state = 0",
                )
                .and_then(|mut extend| {
                    extend.execute(params![
                        id.0,
                        receipt,
                        clock::now_ms().saturating_add(millis(lease))
                    ])
                })
                .map_err(unavailable)?;
            if extended == 1 {
                Ok(())
            } else {
                Err(BackendError::LeaseLost(id))
            }
        })
        .await
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let id = delivery.update.update_id;
        let receipt = delivery.receipt.clone();
        self.write(move |conn| {
            let acked = conn
                .prepare_cached(
                    "UPDATE updates SET state = 1, finished_at = ?3
                     WHERE update_id = ?1 AND receipt = ?2 AND state = 0",
                )
                .and_then(|mut ack| ack.execute(params![id.0, receipt, clock::now_ms()]))
                .map_err(unavailable)?;
            if acked == 1 || state_of(conn, id)? == Some(DONE) {
                Ok(())
            } else {
                Err(BackendError::LeaseLost(id))
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
        let receipt = delivery.receipt.clone();
        let raw = delivery.update.raw.clone();
        let reason = stored_reason(reason);
        let retry = self.inner.config.retry;
        self.write(move |conn| {
            let attempts: Option<u32> = conn
                .prepare_cached(
                    "SELECT attempts FROM updates WHERE update_id = ?1 AND receipt = ?2 AND state = 0",
                )
                .and_then(|mut select| {
                    select
                        .query_row(params![id.0, receipt], |row| row.get(0))
                        .optional()
                })
                .map_err(unavailable)?;
            let attempts = attempts.ok_or(BackendError::LeaseLost(id))?;
            let now = clock::now_ms();
            if attempts >= retry.max_attempts {
                conn.prepare_cached(
                    "UPDATE updates SET state = 2, finished_at = ?2, receipt = NULL, last_error = ?3
                     WHERE update_id = ?1",
                )
                .and_then(|mut kill| kill.execute(params![id.0, now, reason]))
                .map_err(unavailable)?;
                redact_dead_body(conn, id, &raw)?;
                return Ok(Failed::DeadLettered);
            }
            let after = retry.backoff(attempts).max(wait);
            conn.prepare_cached(
                "UPDATE updates SET visible_at = ?2, receipt = NULL, last_error = ?3
                 WHERE update_id = ?1",
            )
            .and_then(|mut retry| {
                retry.execute(params![id.0, now.saturating_add(millis(after)), reason])
            })
            .map_err(unavailable)?;
            Ok(Failed::Retrying { after })
        })
        .await
    }

    async fn stats(&self) -> Result<QueueStats, BackendError> {
        let inner = Arc::clone(&self.inner);
        let (mut stats, (unimported, oldest_unimported)) = self
            .read(move |conn| match &inner.journal {
                // No import commits during the read: each update is counted once, in the
                // queue or in the journal.
                Some(journal) => {
                    let (stats, unimported) = journal.counted_with(|| queue_stats(conn));
                    Ok((stats?, unimported))
                }
                None => Ok((queue_stats(conn)?, (0, None))),
            })
            .await?;
        stats.pending += unimported;
        stats.oldest_pending_ms = match (stats.oldest_pending_ms, oldest_unimported) {
            (Some(stored), Some(journaled)) => Some(stored.min(journaled)),
            (stored, journaled) => stored.or(journaled),
        };
        Ok(stats)
    }

    /// A write that must reach the file, through the writer: it is running, can take the write
    /// lock, and the file system takes what it writes. An empty transaction writes nothing, so
    /// it commits on a full or read-only disk that refuses every update. (Rewriting
    /// `user_version` with its value dirties the header page and nothing else.)
    async fn ping(&self) -> Result<(), BackendError> {
        if let Some(journal) = &self.inner.journal {
            journal.ping().await?;
        }
        self.write(|conn| {
            conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(unavailable)
        })
        .await
    }

    async fn housekeeping(&self) -> Result<(), BackendError> {
        const BATCH: usize = 10_000;
        let cutoff = clock::now_ms() - millis(self.inner.config.dedupe_window);
        let mut forgotten = 0;
        // In batches, so that acknowledgements queued behind a batch wait for little.
        loop {
            let deleted = self
                .write(move |conn| {
                    let forget = |sql: &str| {
                        conn.prepare_cached(sql)
                            .and_then(|mut forget| forget.execute(params![cutoff, BATCH as i64]))
                            .map_err(unavailable)
                    };
                    forget(
                        "DELETE FROM update_bodies WHERE update_id IN
                         (SELECT update_id FROM updates WHERE state = 1 AND received_at < ?1
                          ORDER BY received_at LIMIT ?2)",
                    )?;
                    forget(
                        "DELETE FROM updates WHERE update_id IN
                         (SELECT update_id FROM updates WHERE state = 1 AND received_at < ?1
                          ORDER BY received_at LIMIT ?2)",
                    )
                })
                .await?;
            forgotten += deleted;
            if deleted < BATCH {
                break;
            }
            tokio::task::yield_now().await;
        }
        let purged = self.purge_expired_sessions(clock::now_ms()).await?;
        let redacted = self.write(redact_dead_letters).await?;
        if redacted > 0 {
            tracing::info!(
                dead_letters = redacted,
                "redacted the registration tokens that older dead letters still held"
            );
        }
        self.truncate_wal().await?;
        tracing::debug!(forgotten, purged, "housekeeping");
        Ok(())
    }

    /// Folds the WAL into the database, then closes every connection and waits until they are
    /// closed, the write connection last: the last close deletes the WAL file.
    async fn close(&self) -> Result<(), BackendError> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(journal) = &self.inner.journal {
            journal.close().await;
        }
        let truncated = self.truncate_wal().await;
        self.inner.readers.close();
        self.inner.writer.close().await?;
        truncated
    }
}

impl SqliteBackend {
    /// Leases up to `max` chat heads that are due (what `receive` hands out), dead-lettering
    /// a head whose lease expired on its last attempt.
    async fn lease(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let config = self.inner.config;
        self.write(move |conn| {
            let now = clock::now_ms();
            let heads = conn
                .prepare_cached(&format!(
                    "SELECT {UPDATE_COLUMNS}, u.attempts FROM {UPDATE_ROWS}
                     WHERE u.state = 0 AND u.visible_at <= ?1
                       AND NOT EXISTS (SELECT 1 FROM updates AS p
                                       WHERE p.state = 0 AND p.order_key = u.order_key
                                         AND p.update_id < u.update_id)
                     ORDER BY u.visible_at, u.update_id LIMIT ?2"
                ))
                .and_then(|mut select| {
                    select
                        .query_map(params![now, max as i64], |row| {
                            Ok((queued_update(row)?, row.get::<_, u32>(6)?))
                        })?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            let mut deliveries = Vec::with_capacity(heads.len());
            for (update, attempts) in heads {
                if attempts >= config.retry.max_attempts {
                    conn.prepare_cached(
                        "UPDATE updates SET state = 2, finished_at = ?2, receipt = NULL,
                         last_error = ?3 WHERE update_id = ?1",
                    )
                    .and_then(|mut kill| {
                        kill.execute(params![
                            update.update_id.0,
                            now,
                            format!("lease expired on each of {attempts} attempts")
                        ])
                    })
                    .map_err(unavailable)?;
                    redact_dead_body(conn, update.update_id, &update.raw)?;
                    continue;
                }
                let receipt = uuid::Uuid::new_v4().simple().to_string();
                conn.prepare_cached(
                    "UPDATE updates SET attempts = attempts + 1, visible_at = ?2, receipt = ?3
                     WHERE update_id = ?1",
                )
                .and_then(|mut lease| {
                    lease.execute(params![
                        update.update_id.0,
                        now.saturating_add(millis(config.lease)),
                        receipt
                    ])
                })
                .map_err(unavailable)?;
                deliveries.push(Delivery {
                    update,
                    attempt: attempts + 1,
                    receipt,
                });
            }
            Ok(deliveries)
        })
        .await
    }

    /// Copies the WAL into the database and empties it, so the older page images it holds (the
    /// body of a `/register` before its token was redacted) are gone from disk.
    async fn truncate_wal(&self) -> Result<(), BackendError> {
        let (busy, log, done) = self
            .inner
            .writer
            .outside_transaction(|conn| {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(unavailable)
            })
            .await?;
        if busy != 0 {
            tracing::warn!(
                log,
                done,
                "the WAL could not be truncated: a reader is in the way"
            );
        }
        Ok(())
    }
}

/// The queue's counts, as `stats` reports them (the journal's part aside).
fn queue_stats(conn: &Connection) -> Result<QueueStats, BackendError> {
    let now = clock::now_ms();
    let count = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<u64, BackendError> {
        conn.prepare_cached(sql)
            .and_then(|mut count| count.query_row(params, |row| row.get::<_, i64>(0)))
            .map(|n| n.unsigned_abs())
            .map_err(unavailable)
    };
    Ok(QueueStats {
        pending: count(
            "SELECT COUNT(*) FROM updates WHERE state = 0
             AND (receipt IS NULL OR visible_at <= ?1)",
            params![now],
        )?,
        in_flight: count(
            "SELECT COUNT(*) FROM updates WHERE state = 0
             AND receipt IS NOT NULL AND visible_at > ?1",
            params![now],
        )?,
        dead: count("SELECT COUNT(*) FROM updates WHERE state = 2", &[])?,
        done: count("SELECT COUNT(*) FROM updates WHERE state = 1", &[])?,
        oldest_pending_ms: conn
            .prepare_cached(OLDEST_PENDING)
            .and_then(|mut oldest| oldest.query_row([], |row| row.get(0)))
            .map_err(unavailable)?,
    })
}

/// Whether `raw` carries a secret a user typed (a `/register` token). Most bodies are let
/// through by a scan for the word, or for an escape that could spell a part of it (`\/`, or
/// `\u00XX` of an ASCII letter or `/`), before any parse.
fn holds_typed_secret(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let word = bytes
        .windows(b"register".len())
        .any(|word| word.eq_ignore_ascii_case(b"register"));
    let escaped = raw.contains("\\/")
        || raw.match_indices("\\u00").any(|(at, _)| {
            raw.get(at + 4..at + 6)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .is_some_and(|c| c.is_ascii_alphabetic() || c == b'/')
        });
    (word || escaped) && botline_core::redact_typed_secrets(raw).is_some()
}

/// Replaces a dead letter's body with its redacted form when it holds a secret a user typed: a
/// dead letter outlives its attempts (until an operator redrives it), and nothing else would
/// ever redact it. `secure_delete` zeroes the old body's page; the next checkpoint takes it out
/// of the WAL.
fn redact_dead_body(conn: &Connection, id: UpdateId, raw: &str) -> Result<(), BackendError> {
    let Some(redacted) = botline_core::redact_typed_secrets(raw) else {
        return Ok(());
    };
    conn.prepare_cached("UPDATE update_bodies SET raw = ?2 WHERE update_id = ?1")
        .and_then(|mut update| update.execute(params![id.0, redacted]))
        .map_err(unavailable)?;
    Ok(())
}

/// Redacts the dead letters that a build before dead-letter redaction left with a typed secret
/// in their body; returns how many. Dead letters are few and this reads only theirs.
fn redact_dead_letters(conn: &Connection) -> Result<u64, BackendError> {
    let bodies = conn
        .prepare_cached(
            "SELECT b.update_id, b.raw FROM update_bodies AS b JOIN updates AS u USING (update_id)
             WHERE u.state = 2 AND b.raw LIKE '%register%'",
        )
        .and_then(|mut select| {
            select
                .query_map([], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(unavailable)?;
    let mut redacted = 0;
    for (id, raw) in bodies {
        if botline_core::redact_typed_secrets(&raw).is_some() {
            redact_dead_body(conn, UpdateId(id), &raw)?;
            redacted += 1;
        }
    }
    Ok(redacted)
}

pub(crate) fn state_of(conn: &Connection, id: UpdateId) -> Result<Option<i64>, BackendError> {
    conn.prepare_cached("SELECT state FROM updates WHERE update_id = ?1")
        .and_then(|mut select| select.query_row(params![id.0], |row| row.get(0)).optional())
        .map_err(unavailable)
}

#[async_trait]
impl DeadLetters for SqliteBackend {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {UPDATE_COLUMNS}, u.attempts, u.last_error, u.finished_at FROM {UPDATE_ROWS}
                 WHERE u.state = 2 ORDER BY u.finished_at, u.update_id LIMIT ?1"
            ))
            .and_then(|mut select| {
                select
                    .query_map(params![limit as i64], dead_letter)?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn show(&self, id: UpdateId) -> Result<Option<DeadLetter>, BackendError> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {UPDATE_COLUMNS}, u.attempts, u.last_error, u.finished_at FROM {UPDATE_ROWS}
                 WHERE u.state = 2 AND u.update_id = ?1"
            ))
            .and_then(|mut select| select.query_row(params![id.0], dead_letter).optional())
            .map_err(unavailable)
        })
        .await
    }

    async fn redrive(&self, id: UpdateId) -> Result<bool, BackendError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE updates SET state = 0, attempts = 0, receipt = NULL, finished_at = NULL,
                     visible_at = CASE WHEN EXISTS (SELECT 1 FROM updates AS p
                                                    WHERE p.state = 0
                                                      AND p.order_key = updates.order_key
                                                      AND p.update_id < updates.update_id)
                                       THEN ?3 ELSE ?2 END
                 WHERE update_id = ?1 AND state = 2",
            )
            .and_then(|mut redrive| redrive.execute(params![id.0, clock::now_ms(), PARKED]))
            .map(|changed| changed == 1)
            .map_err(unavailable)
        })
        .await
    }

    async fn redrive_all(&self) -> Result<u64, BackendError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE updates SET state = 0, attempts = 0, visible_at = ?1, receipt = NULL,
                 finished_at = NULL WHERE state = 2",
            )
            .and_then(|mut redrive| redrive.execute(params![clock::now_ms()]))
            .and_then(|changed| {
                // Many of one chat's updates put back at once: all but its head wait parked.
                conn.prepare_cached(
                    "UPDATE updates SET visible_at = ?1
                     WHERE state = 0 AND receipt IS NULL AND visible_at <> ?1
                       AND EXISTS (SELECT 1 FROM updates AS p
                                   WHERE p.state = 0 AND p.order_key = updates.order_key
                                     AND p.update_id < updates.update_id)",
                )?
                .execute(params![PARKED])?;
                Ok(changed as u64)
            })
            .map_err(unavailable)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_typed_token_is_found_however_the_command_is_spelled_and_other_bodies_skip_the_parse() {
        let body = |text: &str| {
            format!(
                r#"{{"update_id":1,"message":{{"message_id":1,"date":1,"chat":{{"id":1,"type":"private"}},"text":"{text}"}}}}"#
            )
        };
        for text in [
            "/register alice s3cr3tT0ken",
            r"\/register alice s3cr3tT0ken",
            r"/\u0072egister alice s3cr3tT0ken",
            r"\u002fregister alice s3cr3tT0ken",
        ] {
            assert!(super::holds_typed_secret(&body(text)), "{text}");
        }
        for text in [
            "hello",
            r"caf\u00e9 \ud83d\ude00",
            "to register, type it",
            "/start",
        ] {
            assert!(!super::holds_typed_secret(&body(text)), "{text}");
        }
    }
}
