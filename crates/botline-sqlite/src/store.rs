//! The records: messages, users, events, `apply` (an update's records, outcome and done mark in
//! one transaction), the import, registration tokens and sessions.

use crate::queue::state_of;
use crate::{DONE, SqliteBackend, unavailable};
use async_trait::async_trait;
use botline_core::backend::{Applied, Import, Imported, MessageQuery};
use botline_core::{
    BackendError, Delivery, EventRecord, MessageRecord, OutboxMessage, Records, RegistrationTokens,
    SessionChange, SessionRecord, Sessions, Store, UserRecord, clock,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::sync::Arc;

#[async_trait]
impl Store for SqliteBackend {
    async fn apply(&self, delivery: &Delivery, records: &Records) -> Result<Applied, BackendError> {
        let id = delivery.update.update_id;
        let records = records.clone();
        self.write(move |conn| {
            if state_of(conn, id)? == Some(DONE) {
                return Ok(Applied::AlreadyDone);
            }
            write_records(conn, &records).map_err(unavailable)?;
            write_outcome(conn, &records).map_err(unavailable)?;
            conn.prepare_cached(
                "UPDATE updates SET state = 1, finished_at = ?2 WHERE update_id = ?1",
            )
            .and_then(|mut done| done.execute(params![id.0, clock::now_ms()]))
            .map_err(unavailable)?;
            Ok(Applied::Written)
        })
        .await
    }

    fn apply_acknowledges(&self) -> bool {
        true
    }

    async fn messages(&self, query: &MessageQuery) -> Result<Vec<MessageRecord>, BackendError> {
        let query = query.clone();
        self.read(move |conn| {
            let (after_chat, after_message) = query.after.unwrap_or((String::new(), i64::MIN));
            conn.prepare_cached(
                "SELECT chat_id, message_id, user_id, user_name, text, timestamp, raw, created_at
                 FROM messages
                 WHERE (?1 IS NULL OR chat_id = ?1) AND (?2 IS NULL OR timestamp >= ?2)
                   AND (chat_id, message_id) > (?3, ?4)
                 ORDER BY chat_id, message_id LIMIT ?5",
            )
            .and_then(|mut select| {
                select
                    .query_map(
                        params![
                            query.chat_id,
                            query.since_ms,
                            after_chat,
                            after_message,
                            query.limit as i64
                        ],
                        |row| {
                            Ok(MessageRecord {
                                chat_id: row.get(0)?,
                                message_id: row.get(1)?,
                                user_id: row.get(2)?,
                                user_name: row.get(3)?,
                                text: row.get(4)?,
                                timestamp: row.get(5)?,
                                raw: row.get(6)?,
                                created_at: row.get(7)?,
                            })
                        },
                    )?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, BackendError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT user_id, telegram_id, username, first_name, last_name, language_code,
                        created_at, updated_at FROM users WHERE user_id = ?1",
            )
            .and_then(|mut select| select.query_row(params![user_id], user).optional())
            .map_err(unavailable)
        })
        .await
    }

    async fn events_by_user(
        &self,
        user_id: &str,
        since: &str,
    ) -> Result<Vec<EventRecord>, BackendError> {
        let (user_id, since) = (user_id.to_owned(), since.to_owned());
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT event_id, user_id, event_type, payload, timestamp, processed FROM events
                     WHERE user_id = ?1 AND timestamp >= ?2 ORDER BY timestamp, event_id",
                )
                .and_then(|mut select| {
                    select
                        .query_map(params![user_id, since], event_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            rows.into_iter().map(event).collect()
        })
        .await
    }

    async fn events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, BackendError> {
        let after = after.map(str::to_owned);
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(
                    "SELECT event_id, user_id, event_type, payload, timestamp, processed FROM events
                     WHERE ?1 IS NULL OR event_id > ?1 ORDER BY event_id LIMIT ?2",
                )
                .and_then(|mut select| {
                    select
                        .query_map(params![after, limit as i64], event_row)?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            rows.into_iter().map(event).collect()
        })
        .await
    }

    async fn users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, BackendError> {
        let after = after.map(str::to_owned);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT user_id, telegram_id, username, first_name, last_name, language_code,
                        created_at, updated_at FROM users
                 WHERE ?1 IS NULL OR user_id > ?1 ORDER BY user_id LIMIT ?2",
            )
            .and_then(|mut select| {
                select
                    .query_map(params![after, limit as i64], user)?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn import(&self, records: &Import) -> Result<Imported, BackendError> {
        let records = Arc::new(records.clone());
        self.write(move |conn| import(conn, &records).map_err(unavailable))
            .await
    }
}

fn user(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        user_id: row.get(0)?,
        telegram_id: row.get(1)?,
        username: row.get(2)?,
        first_name: row.get(3)?,
        last_name: row.get(4)?,
        language_code: row.get(5)?,
        created_at: row.get(6)?,
        updated_at: row.get(7)?,
    })
}

/// An event's columns, its payload still JSON text.
type EventRow = (String, Option<String>, String, String, String, bool);

fn event_row(row: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn event(
    (event_id, user_id, event_type, payload, timestamp, processed): EventRow,
) -> Result<EventRecord, BackendError> {
    Ok(EventRecord {
        payload: serde_json::from_str(&payload)
            .map_err(|e| BackendError::Corrupt(format!("event {event_id} payload: {e}")))?,
        event_id,
        user_id,
        event_type,
        timestamp,
        processed,
    })
}

/// [`Store::import`]'s writes: each record where its key is new; a stored user merged as
/// [`botline_core::backend::merge_user`] does.
fn import(conn: &Connection, records: &Import) -> rusqlite::Result<Imported> {
    let mut imported = Imported::default();
    for m in &records.messages {
        imported.messages += insert_message(conn, m)? as u64;
    }
    for u in &records.users {
        let new = conn
            .prepare_cached(
                "INSERT INTO users (user_id, telegram_id, username, first_name, last_name, language_code, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                u.user_id,
                u.telegram_id,
                u.username,
                u.first_name,
                u.last_name,
                u.language_code,
                u.created_at,
                u.updated_at
            ])? as u64;
        if new == 0 {
            let stored = conn
                .prepare_cached(
                    "SELECT user_id, telegram_id, username, first_name, last_name, language_code,
                            created_at, updated_at FROM users WHERE user_id = ?1",
                )?
                .query_row(params![u.user_id], user)?;
            let merged = botline_core::backend::merge_user(&stored, u);
            if merged != stored {
                conn.prepare_cached(
                    "UPDATE users SET telegram_id = ?2, username = ?3, first_name = ?4,
                         last_name = ?5, language_code = ?6, created_at = ?7, updated_at = ?8
                     WHERE user_id = ?1",
                )?
                .execute(params![
                    merged.user_id,
                    merged.telegram_id,
                    merged.username,
                    merged.first_name,
                    merged.last_name,
                    merged.language_code,
                    merged.created_at,
                    merged.updated_at
                ])?;
            }
        }
        imported.users += new;
    }
    for e in &records.events {
        imported.events += insert_event(conn, e)? as u64;
    }
    Ok(imported)
}

fn write_records(conn: &Connection, records: &Records) -> rusqlite::Result<()> {
    if let Some(m) = &records.message {
        insert_message(conn, m)?;
    }
    if let Some(u) = &records.user {
        conn.prepare_cached(
            "INSERT INTO users (user_id, telegram_id, username, first_name, last_name, language_code, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (user_id) DO UPDATE SET
                 telegram_id = excluded.telegram_id, username = excluded.username,
                 first_name = excluded.first_name, last_name = excluded.last_name,
                 language_code = excluded.language_code, updated_at = excluded.updated_at",
        )?
        .execute(params![
            u.user_id,
            u.telegram_id,
            u.username,
            u.first_name,
            u.last_name,
            u.language_code,
            u.created_at,
            u.updated_at
        ])?;
    }
    insert_event(conn, &records.event)?;
    Ok(())
}

/// Writes a message unless its (`chatId`, `messageId`) is stored: the first write wins. 1 if
/// written.
fn insert_message(conn: &Connection, m: &MessageRecord) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO messages (chat_id, message_id, user_id, user_name, text, timestamp, raw, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        m.chat_id,
        m.message_id,
        m.user_id,
        m.user_name,
        m.text,
        m.timestamp,
        m.raw,
        m.created_at
    ])
}

/// Writes an event unless its `eventId` is stored. 1 if written.
fn insert_event(conn: &Connection, e: &EventRecord) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO events (event_id, user_id, event_type, payload, timestamp, processed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        e.event_id,
        e.user_id,
        e.event_type,
        e.payload.to_string(),
        e.timestamp,
        e.processed
    ])
}

/// The parts of an update's outcome beyond its records: the redacted body, a redeemed
/// registration token and its answer, the outbox calls, the sessions.
fn write_outcome(conn: &Connection, records: &Records) -> rusqlite::Result<()> {
    let now = clock::now_ms();
    if let Some(raw) = &records.redacted_raw {
        conn.prepare_cached("UPDATE update_bodies SET raw = ?2 WHERE update_id = ?1")?
            .execute(params![records.update_id.0, raw])?;
    }
    let mut calls: Vec<OutboxMessage> = Vec::with_capacity(records.outbox.len() + 1);
    if let Some(redemption) = &records.redemption {
        let user = redemption.telegram_user_id;
        let redeemed =
            conn.prepare_cached(
                "UPDATE registration_tokens SET used_at = ?4, used_by = ?3
                 WHERE token_digest = ?1 AND username = ?2 AND used_at IS NULL
                   AND expires_at > ?4",
            )?
            .execute(params![
                redemption.token_digest,
                redemption.username,
                user,
                now
            ])? == 1;
        if redeemed {
            conn.prepare_cached(
                "INSERT INTO registrations (telegram_user_id, username, chat_id, registered_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (telegram_user_id) DO UPDATE SET username = excluded.username,
                     chat_id = excluded.chat_id, registered_at = excluded.registered_at",
            )?
            .execute(params![
                user,
                redemption.username,
                redemption.chat_id,
                clock::iso8601(now)
            ])?;
        }
        calls.push(redemption.answer(redeemed).clone());
    }
    calls.extend(records.outbox.iter().cloned());
    for call in calls {
        let action = serde_json::to_string(&call.action)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        // A delayed call is written as made at its time: a chat's calls go out in the order of
        // `created_at`, so it holds up none that are due before it.
        conn.prepare_cached(
            "INSERT INTO outbox (outbox_id, update_id, chat_id, action, due_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            call.outbox_id,
            records.update_id.0,
            call.chat_id,
            action,
            call.due_from(now)
        ])?;
    }
    write_sessions(conn, records, now)
}

/// The sessions the update's handler wrote, the last change of each: a put as
/// [`Sessions::put_session`] writes it, but keeping the `created_at` of a live session it
/// replaces (`now_ms` decides which is live, as [`Sessions::session`] does); a delete as
/// [`Sessions::delete_session`].
fn write_sessions(conn: &Connection, records: &Records, now_ms: i64) -> rusqlite::Result<()> {
    for change in records.session_writes() {
        match change {
            SessionChange::Put(s) => {
                let data = serde_json::Value::Object(s.data.clone()).to_string();
                conn.prepare_cached(&format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (session_id) DO UPDATE SET
                         user_id = excluded.user_id, chat_id = excluded.chat_id,
                         state = excluded.state, data = excluded.data,
                         created_at = CASE WHEN sessions.expires_at * 1000 > ?9
                                           THEN sessions.created_at ELSE excluded.created_at END,
                         updated_at = excluded.updated_at, expires_at = excluded.expires_at"
                ))?
                .execute(params![
                    s.session_id,
                    s.user_id,
                    s.chat_id,
                    s.state,
                    data,
                    s.created_at,
                    s.updated_at,
                    s.expires_at,
                    now_ms
                ])?;
            }
            SessionChange::Delete { session_id } => {
                conn.prepare_cached("DELETE FROM sessions WHERE session_id = ?1")?
                    .execute(params![session_id])?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl RegistrationTokens for SqliteBackend {
    async fn issue_token(
        &self,
        username: &str,
        token_digest: &str,
        expires_at_ms: i64,
    ) -> Result<(), BackendError> {
        let (username, token_digest) = (username.to_owned(), token_digest.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO registration_tokens (token_digest, username, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut issue| {
                issue.execute(params![
                    token_digest,
                    username,
                    clock::now_ms(),
                    expires_at_ms
                ])
            })
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }
}

const SESSION_COLUMNS: &str =
    "session_id, user_id, chat_id, state, data, created_at, updated_at, expires_at";

fn session(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    let data: String = row.get(4)?;
    Ok(SessionRecord {
        session_id: row.get(0)?,
        user_id: row.get(1)?,
        chat_id: row.get(2)?,
        state: row.get(3)?,
        data: serde_json::from_str(&data).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
        })?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
        expires_at: row.get(7)?,
    })
}

#[async_trait]
impl Sessions for SqliteBackend {
    async fn put_session(&self, s: &SessionRecord) -> Result<(), BackendError> {
        let s = s.clone();
        let data = serde_json::Value::Object(s.data.clone()).to_string();
        self.write(move |conn| {
            conn.prepare_cached(&format!(
                "INSERT OR REPLACE INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))
            .and_then(|mut put| {
                put.execute(params![
                    s.session_id,
                    s.user_id,
                    s.chat_id,
                    s.state,
                    data,
                    s.created_at,
                    s.updated_at,
                    s.expires_at
                ])
            })
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, BackendError> {
        let session_id = session_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?1 AND expires_at * 1000 > ?2"
            ))
            .and_then(|mut select| {
                select
                    .query_row(params![session_id, clock::now_ms()], session)
                    .optional()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn sessions_by_user(&self, user_id: &str) -> Result<Vec<SessionRecord>, BackendError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?1 AND expires_at * 1000 > ?2
                 ORDER BY created_at, session_id"
            ))
            .and_then(|mut select| {
                select
                    .query_map(params![user_id, clock::now_ms()], session)?
                    .collect()
            })
            .map_err(unavailable)
        })
        .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, BackendError> {
        let session_id = session_id.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM sessions WHERE session_id = ?1")
                .and_then(|mut delete| delete.execute(params![session_id]))
                .map(|deleted| deleted == 1)
                .map_err(unavailable)
        })
        .await
    }

    async fn purge_expired_sessions(&self, now_ms: i64) -> Result<u64, BackendError> {
        self.write(move |conn| {
            conn.prepare_cached("DELETE FROM sessions WHERE expires_at * 1000 <= ?1")
                .and_then(|mut purge| purge.execute(params![now_ms]))
                .map(|purged| purged as u64)
                .map_err(unavailable)
        })
        .await
    }
}
