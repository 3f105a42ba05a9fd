//! The records: messages, users, events, sessions, registration tokens and registrations, and
//! `apply`, which writes an update's records with the mark that it is done.

use crate::queue::DONE;
use crate::{Fault, PostgresBackend, opt_text, sql_limit, text};
use async_trait::async_trait;
use botline_core::backend::{Applied, Import, Imported, MessageQuery};
use botline_core::{
    BackendError, Delivery, EventRecord, MessageRecord, OutboxMessage, Records, RegistrationTokens,
    SessionChange, SessionRecord, Sessions, Store, UserRecord, clock,
};
use sqlx::PgConnection;

#[async_trait]
impl Store for PostgresBackend {
    async fn apply(&self, delivery: &Delivery, records: &Records) -> Result<Applied, BackendError> {
        let id = delivery.update.update_id;
        if records.redemption.is_none() && records.sessions.is_empty() {
            return self.run(apply_in_one_statement(self, records)).await;
        }
        self.run(async {
            let mut tx = self.pool().begin().await?;
            // The row lock makes a concurrent apply of the same update wait here, then see it
            // done.
            let state: Option<i16> =
                sqlx::query_scalar("SELECT state FROM updates WHERE update_id = $1 FOR UPDATE")
                    .bind(id.0)
                    .fetch_optional(&mut *tx)
                    .await?;
            if state == Some(DONE) {
                tx.rollback().await?;
                return Ok(Applied::AlreadyDone);
            }
            write_records(&mut tx, records).await?;
            write_outcome(&mut tx, records).await?;
            sqlx::query(
                "UPDATE updates SET state = 1, finished_at = botline_now_ms() WHERE update_id = $1",
            )
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Applied::Written)
        })
        .await
    }

    fn apply_acknowledges(&self) -> bool {
        true
    }

    async fn messages(&self, query: &MessageQuery) -> Result<Vec<MessageRecord>, BackendError> {
        let (after_chat, after_message) = query.after.clone().unwrap_or((String::new(), i64::MIN));
        self.run(async {
            let rows: Vec<MessageRow> = sqlx::query_as(
                r#"SELECT chat_id, message_id, user_id, user_name, "text", "timestamp", raw, created_at
                   FROM messages
                   WHERE ($1::text IS NULL OR chat_id = $1) AND ($2::bigint IS NULL OR "timestamp" >= $2)
                     AND (chat_id, message_id) > ($3, $4)
                   ORDER BY chat_id, message_id LIMIT $5"#,
            )
            .bind(query.chat_id.as_deref())
            .bind(query.since_ms)
            .bind(&after_chat)
            .bind(after_message)
            .bind(sql_limit(query.limit))
            .fetch_all(self.pool())
            .await?;
            Ok(rows.into_iter().map(message).collect())
        })
        .await
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, BackendError> {
        self.run(async {
            let row: Option<UserRow> = sqlx::query_as(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"
            ))
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
            Ok(row.map(user))
        })
        .await
    }

    async fn events_by_user(
        &self,
        user_id: &str,
        since: &str,
    ) -> Result<Vec<EventRecord>, BackendError> {
        self.run(async {
            let rows: Vec<EventRow> = sqlx::query_as(
                r#"SELECT event_id, user_id, event_type, payload::text, "timestamp", processed
                       FROM events WHERE user_id = $1 AND "timestamp" >= $2
                       ORDER BY "timestamp", event_id"#,
            )
            .bind(user_id)
            .bind(since)
            .fetch_all(self.pool())
            .await?;
            Ok(rows.into_iter().map(event).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, BackendError> {
        self.run(async {
            let rows: Vec<EventRow> = sqlx::query_as(
                r#"SELECT event_id, user_id, event_type, payload::text, "timestamp", processed
                       FROM events WHERE $1::text IS NULL OR event_id > $1
                       ORDER BY event_id LIMIT $2"#,
            )
            .bind(after)
            .bind(sql_limit(limit))
            .fetch_all(self.pool())
            .await?;
            Ok(rows.into_iter().map(event).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, BackendError> {
        self.run(async {
            let rows: Vec<UserRow> = sqlx::query_as(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE $1::text IS NULL OR user_id > $1
                 ORDER BY user_id LIMIT $2"
            ))
            .bind(after)
            .bind(sql_limit(limit))
            .fetch_all(self.pool())
            .await?;
            Ok(rows.into_iter().map(user).collect())
        })
        .await
    }

    async fn import(&self, records: &Import) -> Result<Imported, BackendError> {
        self.run(async {
            let mut tx = self.pool().begin().await?;
            let imported = import(&mut tx, records).await?;
            tx.commit().await?;
            Ok(imported)
        })
        .await
    }
}

/// An event's columns, its payload as JSON text.
type EventRow = (String, Option<String>, String, String, String, bool);

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

type MessageRow = (
    String,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    i64,
    String,
    String,
);

fn message(
    (chat_id, message_id, user_id, user_name, text, timestamp, raw, created_at): MessageRow,
) -> MessageRecord {
    MessageRecord {
        chat_id,
        message_id,
        user_id,
        user_name,
        text,
        timestamp,
        raw,
        created_at,
    }
}

type UserRow = (
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
);

fn user(
    (user_id, telegram_id, username, first_name, last_name, language_code, created_at, updated_at): UserRow,
) -> UserRecord {
    UserRecord {
        user_id,
        telegram_id,
        username,
        first_name,
        last_name,
        language_code,
        created_at,
        updated_at,
    }
}

/// [`Store::apply`] of an update whose handler redeemed no token and wrote no session (nearly
/// every update): `botline_apply` (migration 0005) writes what the longer path writes, in the
/// same order and under the same row lock, in one statement and one round trip.
async fn apply_in_one_statement(
    backend: &PostgresBackend,
    records: &Records,
) -> Result<Applied, Fault> {
    let m = records.message.as_ref();
    let u = records.user.as_ref();
    let e = &records.event;
    let mut ids = Vec::with_capacity(records.outbox.len());
    let mut chat_ids = Vec::with_capacity(records.outbox.len());
    let mut actions = Vec::with_capacity(records.outbox.len());
    let mut send_at = Vec::with_capacity(records.outbox.len());
    for call in &records.outbox {
        ids.push(text(&call.outbox_id).into_owned());
        chat_ids.push(call.chat_id);
        actions.push(
            serde_json::to_string(&call.action).map_err(|e| {
                BackendError::Corrupt(format!("outbox call {}: {e}", call.outbox_id))
            })?,
        );
        send_at.push(call.send_at_ms);
    }
    let written: bool = sqlx::query_scalar(
        "SELECT botline_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                              $16, $17, $18, $19, $20, $21::json, $22, $23, $24, $25, $26::json[],
                              $27, $28)",
    )
    .bind(records.update_id.0)
    .bind(m.map(|m| text(&m.chat_id)))
    .bind(m.map(|m| m.message_id))
    .bind(m.and_then(|m| m.user_id))
    .bind(m.and_then(|m| opt_text(m.user_name.as_ref())))
    .bind(m.and_then(|m| opt_text(m.text.as_ref())))
    .bind(m.map(|m| m.timestamp))
    .bind(m.map(|m| &m.raw))
    .bind(m.map(|m| text(&m.created_at)))
    .bind(u.map(|u| text(&u.user_id)))
    .bind(u.map(|u| u.telegram_id))
    .bind(u.and_then(|u| opt_text(u.username.as_ref())))
    .bind(u.and_then(|u| opt_text(u.first_name.as_ref())))
    .bind(u.and_then(|u| opt_text(u.last_name.as_ref())))
    .bind(u.and_then(|u| opt_text(u.language_code.as_ref())))
    .bind(u.map(|u| text(&u.created_at)))
    .bind(u.map(|u| text(&u.updated_at)))
    .bind(text(&e.event_id))
    .bind(opt_text(e.user_id.as_ref()))
    .bind(text(&e.event_type))
    .bind(e.payload.to_string())
    .bind(text(&e.timestamp))
    .bind(e.processed)
    .bind(ids)
    .bind(chat_ids)
    .bind(actions)
    .bind(send_at)
    .bind(records.redacted_raw.as_deref())
    .fetch_one(backend.pool())
    .await?;
    Ok(if written {
        Applied::Written
    } else {
        Applied::AlreadyDone
    })
}

/// The message (the first write of a `chatId` + `messageId` wins), the user (upserted, keeping
/// `createdAt`) and the event.
async fn write_records(conn: &mut PgConnection, records: &Records) -> Result<(), sqlx::Error> {
    if let Some(m) = &records.message {
        insert_message(conn, m).await?;
    }
    if let Some(u) = &records.user {
        sqlx::query(
            "INSERT INTO users (user_id, telegram_id, username, first_name, last_name,
                                language_code, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (user_id) DO UPDATE SET
                 telegram_id = excluded.telegram_id, username = excluded.username,
                 first_name = excluded.first_name, last_name = excluded.last_name,
                 language_code = excluded.language_code, updated_at = excluded.updated_at",
        )
        .bind(text(&u.user_id))
        .bind(u.telegram_id)
        .bind(opt_text(u.username.as_ref()))
        .bind(opt_text(u.first_name.as_ref()))
        .bind(opt_text(u.last_name.as_ref()))
        .bind(opt_text(u.language_code.as_ref()))
        .bind(text(&u.created_at))
        .bind(text(&u.updated_at))
        .execute(&mut *conn)
        .await?;
    }
    insert_event(conn, &records.event).await?;
    Ok(())
}

/// Writes a message unless its (`chatId`, `messageId`) is stored: the first write wins.
/// Whether it was written.
async fn insert_message(conn: &mut PgConnection, m: &MessageRecord) -> Result<bool, sqlx::Error> {
    let written = sqlx::query(
        r#"INSERT INTO messages (chat_id, message_id, user_id, user_name, "text", "timestamp", raw, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"#,
    )
    .bind(text(&m.chat_id))
    .bind(m.message_id)
    .bind(m.user_id)
    .bind(opt_text(m.user_name.as_ref()))
    .bind(opt_text(m.text.as_ref()))
    .bind(m.timestamp)
    .bind(&m.raw)
    .bind(text(&m.created_at))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(written == 1)
}

/// Writes an event unless its `eventId` is stored. Whether it was written.
async fn insert_event(conn: &mut PgConnection, e: &EventRecord) -> Result<bool, sqlx::Error> {
    let written = sqlx::query(
        r#"INSERT INTO events (event_id, user_id, event_type, payload, "timestamp", processed)
           VALUES ($1, $2, $3, $4::json, $5, $6) ON CONFLICT DO NOTHING"#,
    )
    .bind(text(&e.event_id))
    .bind(opt_text(e.user_id.as_ref()))
    .bind(text(&e.event_type))
    .bind(e.payload.to_string())
    .bind(text(&e.timestamp))
    .bind(e.processed)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(written == 1)
}

const USER_COLUMNS: &str = "user_id, telegram_id, username, first_name, last_name, language_code, \
                            created_at, updated_at";

/// [`Store::import`]'s writes, in the caller's transaction: each record where its key is new;
/// a stored user merged as [`botline_core::backend::merge_user`] does.
async fn import(conn: &mut PgConnection, records: &Import) -> Result<Imported, sqlx::Error> {
    let mut imported = Imported::default();
    for m in &records.messages {
        imported.messages += u64::from(insert_message(conn, m).await?);
    }
    for u in &records.users {
        let written = sqlx::query(
            "INSERT INTO users (user_id, telegram_id, username, first_name, last_name,
                                language_code, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(text(&u.user_id))
        .bind(u.telegram_id)
        .bind(opt_text(u.username.as_ref()))
        .bind(opt_text(u.first_name.as_ref()))
        .bind(opt_text(u.last_name.as_ref()))
        .bind(opt_text(u.language_code.as_ref()))
        .bind(text(&u.created_at))
        .bind(text(&u.updated_at))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if written == 1 {
            imported.users += 1;
            continue;
        }
        let stored: UserRow = sqlx::query_as(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE user_id = $1 FOR UPDATE"
        ))
        .bind(text(&u.user_id))
        .fetch_one(&mut *conn)
        .await?;
        let stored = user(stored);
        let merged = botline_core::backend::merge_user(&stored, u);
        if merged != stored {
            sqlx::query(
                "UPDATE users SET telegram_id = $2, username = $3, first_name = $4,
                     last_name = $5, language_code = $6, created_at = $7, updated_at = $8
                 WHERE user_id = $1",
            )
            .bind(text(&merged.user_id))
            .bind(merged.telegram_id)
            .bind(opt_text(merged.username.as_ref()))
            .bind(opt_text(merged.first_name.as_ref()))
            .bind(opt_text(merged.last_name.as_ref()))
            .bind(opt_text(merged.language_code.as_ref()))
            .bind(text(&merged.created_at))
            .bind(text(&merged.updated_at))
            .execute(&mut *conn)
            .await?;
        }
    }
    for e in &records.events {
        imported.events += u64::from(insert_event(conn, e).await?);
    }
    Ok(imported)
}

/// The parts of an update's outcome beyond its records: the redacted body, a redeemed
/// registration token, the registration and its answer, the outbox calls, the sessions.
async fn write_outcome(conn: &mut PgConnection, records: &Records) -> Result<(), Fault> {
    let now = clock::now_ms();
    if let Some(raw) = &records.redacted_raw {
        sqlx::query("UPDATE update_bodies SET raw = $2 WHERE update_id = $1")
            .bind(records.update_id.0)
            .bind(raw)
            .execute(&mut *conn)
            .await?;
    }
    let mut calls: Vec<OutboxMessage> = Vec::with_capacity(records.outbox.len() + 1);
    if let Some(redemption) = &records.redemption {
        let user = redemption.telegram_user_id;
        let redeemed = sqlx::query(
            "UPDATE registration_tokens SET used_at = $4, used_by = $3
             WHERE token_digest = $1 AND username = $2 AND used_at IS NULL
               AND expires_at > $4",
        )
        .bind(&redemption.token_digest)
        .bind(text(&redemption.username))
        .bind(user)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if redeemed {
            sqlx::query(
                "INSERT INTO registrations (telegram_user_id, username, chat_id, registered_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (telegram_user_id) DO UPDATE SET username = excluded.username,
                     chat_id = excluded.chat_id, registered_at = excluded.registered_at",
            )
            .bind(user)
            .bind(text(&redemption.username))
            .bind(redemption.chat_id)
            .bind(clock::iso8601(now))
            .execute(&mut *conn)
            .await?;
        }
        calls.push(redemption.answer(redeemed).clone());
    }
    calls.extend(records.outbox.iter().cloned());
    // One at a time, in order: (`created_at`, `seq`) orders a chat's calls. A delayed call is
    // written as made at its time, so it holds up none that are due before it.
    for call in calls {
        let action = serde_json::to_string(&call.action)
            .map_err(|e| BackendError::Corrupt(format!("outbox call {}: {e}", call.outbox_id)))?;
        sqlx::query(
            "INSERT INTO outbox (outbox_id, update_id, chat_id, action, due_at, created_at)
             VALUES ($1, $2, $3, $4::json, greatest(botline_now_ms(), $5),
                     greatest(botline_now_ms(), $5))
             ON CONFLICT DO NOTHING",
        )
        .bind(text(&call.outbox_id))
        .bind(records.update_id.0)
        .bind(call.chat_id)
        .bind(action)
        .bind(call.send_at_ms)
        .execute(&mut *conn)
        .await?;
    }
    write_sessions(conn, records, now).await?;
    Ok(())
}

/// The sessions the update's handler wrote, the last change of each: a put as
/// [`Sessions::put_session`] writes it, but keeping the `created_at` of a live session it
/// replaces (`now_ms`, the caller's clock, decides which is live, as [`Sessions::session`]
/// does); a delete as [`Sessions::delete_session`].
async fn write_sessions(
    conn: &mut PgConnection,
    records: &Records,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    for change in records.session_writes() {
        match change {
            SessionChange::Put(s) => {
                let data = serde_json::Value::Object(s.data.clone()).to_string();
                sqlx::query(
                    "INSERT INTO sessions (session_id, user_id, chat_id, state, data, created_at,
                                           updated_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5::json, $6, $7, $8)
                     ON CONFLICT (session_id) DO UPDATE SET user_id = excluded.user_id,
                         chat_id = excluded.chat_id, state = excluded.state, data = excluded.data,
                         created_at = CASE WHEN sessions.expires_at > $9
                                           THEN sessions.created_at ELSE excluded.created_at END,
                         updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                )
                .bind(text(&s.session_id))
                .bind(text(&s.user_id))
                .bind(s.chat_id)
                .bind(text(&s.state))
                .bind(&data)
                .bind(text(&s.created_at))
                .bind(text(&s.updated_at))
                .bind(s.expires_at)
                .bind(expired_by(now_ms))
                .execute(&mut *conn)
                .await?;
            }
            SessionChange::Delete { session_id } => {
                sqlx::query("DELETE FROM sessions WHERE session_id = $1")
                    .bind(text(session_id))
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl RegistrationTokens for PostgresBackend {
    async fn issue_token(
        &self,
        username: &str,
        token_digest: &str,
        expires_at_ms: i64,
    ) -> Result<(), BackendError> {
        self.run(async {
            sqlx::query(
                "INSERT INTO registration_tokens (token_digest, username, created_at, expires_at)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(text(token_digest))
            .bind(text(username))
            .bind(clock::now_ms())
            .bind(expires_at_ms)
            .execute(self.pool())
            .await?;
            Ok(())
        })
        .await
    }
}

const SESSION_COLUMNS: &str =
    "session_id, user_id, chat_id, state, data::text, created_at, updated_at, expires_at";

type SessionRow = (String, String, i64, String, String, String, String, i64);

fn session(
    (session_id, user_id, chat_id, state, data, created_at, updated_at, expires_at): SessionRow,
) -> Result<SessionRecord, BackendError> {
    Ok(SessionRecord {
        data: serde_json::from_str(&data)
            .map_err(|e| BackendError::Corrupt(format!("session {session_id} data: {e}")))?,
        session_id,
        user_id,
        chat_id,
        state,
        created_at,
        updated_at,
        expires_at,
    })
}

/// The newest `expires_at` (unix seconds) that has expired at `now_ms`: a session is live while
/// `expires_at * 1000 > now_ms`.
fn expired_by(now_ms: i64) -> i64 {
    now_ms.div_euclid(1000)
}

#[async_trait]
impl Sessions for PostgresBackend {
    async fn put_session(&self, s: &SessionRecord) -> Result<(), BackendError> {
        let data = serde_json::Value::Object(s.data.clone()).to_string();
        self.run(async {
            sqlx::query(
                "INSERT INTO sessions (session_id, user_id, chat_id, state, data, created_at,
                                       updated_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5::json, $6, $7, $8)
                 ON CONFLICT (session_id) DO UPDATE SET user_id = excluded.user_id,
                     chat_id = excluded.chat_id, state = excluded.state, data = excluded.data,
                     created_at = excluded.created_at, updated_at = excluded.updated_at,
                     expires_at = excluded.expires_at",
            )
            .bind(text(&s.session_id))
            .bind(text(&s.user_id))
            .bind(s.chat_id)
            .bind(text(&s.state))
            .bind(&data)
            .bind(text(&s.created_at))
            .bind(text(&s.updated_at))
            .bind(s.expires_at)
            .execute(self.pool())
            .await?;
            Ok(())
        })
        .await
    }

    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, BackendError> {
        self.run(async {
            let row: Option<SessionRow> = sqlx::query_as(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = $1 AND expires_at > $2"
            ))
            .bind(session_id)
            .bind(expired_by(clock::now_ms()))
            .fetch_optional(self.pool())
            .await?;
            Ok(row.map(session).transpose()?)
        })
        .await
    }

    async fn sessions_by_user(&self, user_id: &str) -> Result<Vec<SessionRecord>, BackendError> {
        self.run(async {
            let rows: Vec<SessionRow> = sqlx::query_as(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = $1 AND expires_at > $2
                 ORDER BY created_at, session_id"
            ))
            .bind(user_id)
            .bind(expired_by(clock::now_ms()))
            .fetch_all(self.pool())
            .await?;
            Ok(rows.into_iter().map(session).collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, BackendError> {
        self.run(async {
            let deleted = sqlx::query("DELETE FROM sessions WHERE session_id = $1")
                .bind(session_id)
                .execute(self.pool())
                .await?
                .rows_affected();
            Ok(deleted == 1)
        })
        .await
    }

    async fn purge_expired_sessions(&self, now_ms: i64) -> Result<u64, BackendError> {
        self.run(async {
            let purged = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                .bind(expired_by(now_ms))
                .execute(self.pool())
                .await?
                .rows_affected();
            Ok(purged)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_at_its_second() {
        // Live while expires_at * 1000 > now_ms, that is expires_at > expired_by(now_ms).
        for (expires_at, now_ms) in [(100, 99_999), (100, 100_000), (-1, -1), (-1, -1001)] {
            assert_eq!(
                expires_at * 1000 > now_ms,
                expires_at > expired_by(now_ms),
                "{expires_at} at {now_ms}"
            );
        }
    }
}
