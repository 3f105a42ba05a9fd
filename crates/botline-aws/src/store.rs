//! The records on DynamoDB: `apply` as one `TransactWriteItems`, the reads, sessions and
//! registration tokens.

use crate::item::{Item, get_s, key, n, names, opt_bool, opt_n, opt_s, req_n, req_s, s, values};
use crate::outbox::outbox_put;
use crate::queue::{DONE, Receipt};
use crate::{AwsBackend, is_condition_failed, unavailable};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, Put, ReturnValue, TransactWriteItem, Update,
};
use botline_core::{
    Applied, BackendError, Delivery, EventRecord, Import, Imported, MessageQuery, MessageRecord,
    OutboxMessage, Records, RegistrationTokens, SessionChange, SessionRecord, Sessions, Store,
    UserRecord, clock,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The index of `events` and `sessions` by user.
pub(crate) const USER_ID_INDEX: &str = "UserIdIndex";

/// Transactions `apply` tries before it reports the store unavailable: a condition that failed
/// on a message or an outbox call, a token that cannot be redeemed, a session that did (or did
/// not) exist as the try assumed, or a conflict with another transaction each take one more.
const APPLY_TRIES: usize = 6;

/// The most items DynamoDB takes in one `TransactWriteItems`.
pub(crate) const MAX_TRANSACTION_ITEMS: usize = 100;

/// What each item of an apply transaction is, to read its cancellation reason.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Update,
    Message,
    User,
    Event,
    Token,
    Outbox(String),
    /// A session put, whose condition says whether the session was live.
    Session(String),
    /// A session deleted (no condition).
    SessionDeleted,
}

/// What an apply transaction leaves out after a try was cancelled.
#[derive(Debug, Default)]
struct Leave {
    /// The message exists already: the first write wins.
    message: bool,
    /// The token cannot be redeemed: the answer is a refusal.
    token: bool,
    /// Outbox calls that exist already.
    outbox: HashSet<String>,
    /// Sessions put that were not live at the last try (absent or expired): written whole,
    /// `createdAt` included. The others are assumed live and keep their `createdAt`.
    new_sessions: HashSet<String>,
}

fn built<T, E: std::fmt::Display>(value: Result<T, E>) -> Result<T, BackendError> {
    value.map_err(|e| BackendError::Unavailable(format!("TransactWriteItems: {e}")))
}

fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}

fn opt_string(item: &mut Item, name: &str, value: Option<&String>) {
    if let Some(value) = value {
        item.insert(name.to_owned(), s(value));
    }
}

impl AwsBackend {
    /// The items of one try of `apply`'s transaction, and what each is.
    fn apply_items(
        &self,
        delivery: &Delivery,
        records: &Records,
        now: i64,
        leave: &Leave,
    ) -> Result<(Vec<TransactWriteItem>, Vec<Part>), BackendError> {
        let t = self.tables();
        let update = &delivery.update;
        let mut items = Vec::new();
        let mut parts = Vec::new();

        let done = "SET #state = :done, #doneAt = :now, #entryId = if_not_exists(#entryId, :entry), \
                    #orderKey = if_not_exists(#orderKey, :orderKey), #kind = if_not_exists(#kind, :kind), \
                    #receivedAt = if_not_exists(#receivedAt, :receivedAt), \
                    #attempts = if_not_exists(#attempts, :zero), \
                    #expiresAt = if_not_exists(#expiresAt, :expires) \
                    REMOVE #pendingKey, #receipt, #leaseUntil, #leaseMessageId, #notBefore, #raw";
        let not_done = "attribute_not_exists(#updateId) OR #state <> :done";
        items.push(
            TransactWriteItem::builder()
                .update(built(
                    Update::builder()
                        .table_name(&t.updates)
                        .set_key(Some(key("updateId", n(update.update_id.0))))
                        .update_expression(done)
                        .condition_expression(not_done)
                        .set_expression_attribute_names(names([done, not_done]))
                        .set_expression_attribute_values(values([
                            (":done", s(DONE)),
                            (":now", n(now)),
                            (":entry", s(&update.entry_id)),
                            (":orderKey", s(update.order_key.to_string())),
                            (":kind", s(update.kind.as_str())),
                            (":receivedAt", n(update.received_at_ms)),
                            (":zero", n(0)),
                            (":expires", n(self.expires_at(now))),
                        ]))
                        .build(),
                )?)
                .build(),
        );
        parts.push(Part::Update);

        if let Some(m) = records.message.as_ref().filter(|_| !leave.message) {
            let first = "attribute_not_exists(#chatId)";
            items.push(
                TransactWriteItem::builder()
                    .put(built(
                        Put::builder()
                            .table_name(&t.messages)
                            .set_item(Some(message_item(m)))
                            .condition_expression(first)
                            .set_expression_attribute_names(names([first]))
                            .build(),
                    )?)
                    .build(),
            );
            parts.push(Part::Message);
        }

        if let Some(u) = &records.user {
            let mut set = vec![
                "#telegramId = :telegramId".to_owned(),
                "#updatedAt = :updatedAt".to_owned(),
                "#createdAt = if_not_exists(#createdAt, :createdAt)".to_owned(),
            ];
            let mut remove = Vec::new();
            let mut vals: HashMap<String, AttributeValue> = HashMap::from([
                (":telegramId".to_owned(), n(u.telegram_id)),
                (":updatedAt".to_owned(), s(&u.updated_at)),
                (":createdAt".to_owned(), s(&u.created_at)),
            ]);
            for (name, value) in [
                ("username", &u.username),
                ("firstName", &u.first_name),
                ("lastName", &u.last_name),
                ("languageCode", &u.language_code),
            ] {
                match value {
                    Some(value) => {
                        set.push(format!("#{name} = :{name}"));
                        vals.insert(format!(":{name}"), s(value));
                    }
                    // Fields follow the latest update.
                    None => remove.push(format!("#{name}")),
                }
            }
            let mut upsert = format!("SET {}", set.join(", "));
            if !remove.is_empty() {
                upsert.push_str(&format!(" REMOVE {}", remove.join(", ")));
            }
            items.push(
                TransactWriteItem::builder()
                    .update(built(
                        Update::builder()
                            .table_name(&t.users)
                            .set_key(Some(key("userId", s(&u.user_id))))
                            .update_expression(&upsert)
                            .set_expression_attribute_names(names([upsert.as_str()]))
                            .set_expression_attribute_values(Some(vals))
                            .build(),
                    )?)
                    .build(),
            );
            parts.push(Part::User);
        }

        let mut event = event_item(&records.event);
        event.insert("updateId".to_owned(), n(records.update_id.0));
        items.push(
            TransactWriteItem::builder()
                .put(built(
                    Put::builder()
                        .table_name(&t.events)
                        .set_item(Some(event))
                        .build(),
                )?)
                .build(),
        );
        parts.push(Part::Event);

        let mut calls: Vec<OutboxMessage> = Vec::with_capacity(records.outbox.len() + 1);
        if let Some(redemption) = &records.redemption {
            let redeem = !leave.token;
            if redeem {
                let user = redemption.telegram_user_id;
                let update = "SET #usedAt = :now, #usedBy = :user, #usedChatId = :chat, \
                              #registeredAt = :registeredAt";
                let condition = "attribute_exists(#tokenDigest) AND #username = :username \
                                 AND attribute_not_exists(#usedAt) AND #expiresAtMs > :now";
                items.push(
                    TransactWriteItem::builder()
                        .update(built(
                            Update::builder()
                                .table_name(&t.tokens)
                                .set_key(Some(key("tokenDigest", s(&redemption.token_digest))))
                                .update_expression(update)
                                .condition_expression(condition)
                                .set_expression_attribute_names(names([update, condition]))
                                .set_expression_attribute_values(values([
                                    (":now", n(now)),
                                    (":user", n(user)),
                                    (":chat", n(redemption.chat_id)),
                                    (":registeredAt", s(clock::iso8601(now))),
                                    (":username", s(&redemption.username)),
                                ]))
                                .build(),
                        )?)
                        .build(),
                );
                parts.push(Part::Token);
            }
            calls.push(redemption.answer(redeem).clone());
        }
        calls.extend(records.outbox.iter().cloned());
        for (index, call) in calls.iter().enumerate() {
            if leave.outbox.contains(&call.outbox_id) {
                continue;
            }
            items.push(
                TransactWriteItem::builder()
                    .put(outbox_put(&t.outbox, call, records.update_id, index, now)?)
                    .build(),
            );
            parts.push(Part::Outbox(call.outbox_id.clone()));
        }

        // A session is live while `expiresAt` (unix seconds) is after `:cut`.
        let cut = n(now.div_euclid(1000));
        for change in records.session_writes() {
            match change {
                SessionChange::Put(session) => {
                    let new = leave.new_sessions.contains(&session.session_id);
                    items.push(
                        TransactWriteItem::builder()
                            .update(session_put(&t.sessions, session, new, cut.clone())?)
                            .build(),
                    );
                    parts.push(Part::Session(session.session_id.clone()));
                }
                SessionChange::Delete { session_id } => {
                    items.push(
                        TransactWriteItem::builder()
                            .delete(built(
                                Delete::builder()
                                    .table_name(&t.sessions)
                                    .set_key(Some(key("sessionId", s(session_id))))
                                    .build(),
                            )?)
                            .build(),
                    );
                    parts.push(Part::SessionDeleted);
                }
            }
        }

        if items.len() > MAX_TRANSACTION_ITEMS {
            return Err(BackendError::Unavailable(format!(
                "update {} cannot be applied: its records, {} outbox calls and {} session \
                 changes make {} items, more than the {MAX_TRANSACTION_ITEMS} one DynamoDB \
                 transaction takes",
                update.update_id,
                records.outbox.len() + usize::from(records.redemption.is_some()),
                records.session_writes().len(),
                items.len()
            )));
        }
        Ok((items, parts))
    }
}

/// A session put as one item of `apply`'s transaction: every attribute as
/// [`Sessions::put_session`] writes them. When the session is assumed live (`new` false), the
/// stored `createdAt` is kept and the condition is that the session exists and has not expired
/// at `cut` (unix seconds); when it is assumed `new`, `createdAt` is the record's and the
/// condition is that there is no session or only an expired one. A condition that fails cancels
/// the try, and the next assumes the other.
fn session_put(
    table: &str,
    session: &SessionRecord,
    new: bool,
    cut: AttributeValue,
) -> Result<Update, BackendError> {
    let data = serde_json::Value::Object(session.data.clone()).to_string();
    let (update, condition) = if new {
        (
            "SET #userId = :userId, #chatId = :chatId, #state = :state, #data = :data, \
             #createdAt = :createdAt, #updatedAt = :updatedAt, #expiresAt = :expiresAt",
            "attribute_not_exists(#sessionId) OR #expiresAt <= :cut",
        )
    } else {
        (
            "SET #userId = :userId, #chatId = :chatId, #state = :state, #data = :data, \
             #createdAt = if_not_exists(#createdAt, :createdAt), #updatedAt = :updatedAt, \
             #expiresAt = :expiresAt",
            "attribute_exists(#sessionId) AND #expiresAt > :cut",
        )
    };
    built(
        Update::builder()
            .table_name(table)
            .set_key(Some(key("sessionId", s(&session.session_id))))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names([update, condition]))
            .set_expression_attribute_values(values([
                (":userId", s(&session.user_id)),
                (":chatId", n(session.chat_id)),
                (":state", s(&session.state)),
                (":data", s(data)),
                (":createdAt", s(&session.created_at)),
                (":updatedAt", s(&session.updated_at)),
                (":expiresAt", n(session.expires_at)),
                (":cut", cut),
            ]))
            .build(),
    )
}

#[async_trait]
impl Store for AwsBackend {
    /// One `TransactWriteItems`: the update's item marked done (unless it is done already), the
    /// message (unless one with its key exists), the user, the event, the token's redemption,
    /// the outbox calls and the sessions put or deleted. A condition that fails on the message,
    /// the token or an outbox call cancels the try; the next try leaves that item out (or
    /// writes the redemption's refusal); one that fails on a session put makes the next
    /// try assume the session was the other way (live, or absent or expired). More than the
    /// 100 items DynamoDB takes in one transaction is an error, before anything is sent. Then
    /// the message is deleted from SQS.
    async fn apply(&self, delivery: &Delivery, records: &Records) -> Result<Applied, BackendError> {
        let now = clock::now_ms();
        let mut leave = Leave::default();
        let mut written = false;
        for attempt in 0..APPLY_TRIES {
            let (items, parts) = self.apply_items(delivery, records, now, &leave)?;
            let sent = self
                .dynamodb()
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            let e = match sent {
                Ok(_) => {
                    written = true;
                    break;
                }
                Err(e) => e,
            };
            let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                e.as_service_error()
            else {
                return Err(unavailable("TransactWriteItems", e));
            };
            let reasons = cancelled.cancellation_reasons();
            let failed = |code: &'static str| {
                parts
                    .iter()
                    .zip(reasons)
                    .filter(move |(_, reason)| reason.code() == Some(code))
                    .map(|(part, _)| part)
            };
            if failed("ConditionalCheckFailed").any(|part| *part == Part::Update) {
                return Ok(Applied::AlreadyDone);
            }
            let mut understood = false;
            for part in failed("ConditionalCheckFailed") {
                understood = true;
                match part {
                    Part::Message => leave.message = true,
                    Part::Token => leave.token = true,
                    Part::Outbox(id) => {
                        leave.outbox.insert(id.clone());
                    }
                    // The session was not as assumed: assume the other next time.
                    Part::Session(id) => {
                        if !leave.new_sessions.remove(id) {
                            leave.new_sessions.insert(id.clone());
                        }
                    }
                    Part::Update | Part::User | Part::Event | Part::SessionDeleted => {}
                }
            }
            if failed("TransactionConflict").next().is_some() {
                understood = true;
                let pause = 20 * (u64::try_from(attempt).unwrap_or(0) + 1);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            if !understood {
                let why: Vec<String> = reasons
                    .iter()
                    .filter_map(|r| r.code())
                    .filter(|code| *code != "None")
                    .map(str::to_owned)
                    .collect();
                return Err(BackendError::Unavailable(format!(
                    "TransactWriteItems was cancelled: {}",
                    if why.is_empty() {
                        "no reason given".to_owned()
                    } else {
                        why.join(", ")
                    }
                )));
            }
        }
        if !written {
            return Err(BackendError::Unavailable(format!(
                "TransactWriteItems for update {} was cancelled {APPLY_TRIES} times",
                delivery.update.update_id
            )));
        }
        if let Some(receipt) = Receipt::parse(&delivery.receipt)
            && let Err(e) = self
                .sqs()
                .delete_message()
                .queue_url(&self.settings().queue_url)
                .receipt_handle(receipt.receipt_handle)
                .send()
                .await
        {
            tracing::warn!(error = %crate::describe("DeleteMessage", &e), "applied update's message not deleted; it is dropped when it comes back");
        }
        self.wake_next(
            &delivery.update.order_key.to_string(),
            delivery.update.update_id.0,
        )
        .await;
        Ok(Applied::Written)
    }

    fn apply_acknowledges(&self) -> bool {
        true
    }

    async fn messages(&self, query: &MessageQuery) -> Result<Vec<MessageRecord>, BackendError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let t = &self.tables().messages;
        let mut found = Vec::new();
        if let Some(chat) = &query.chat_id {
            let after = match &query.after {
                Some((after_chat, _)) if after_chat.as_str() > chat.as_str() => {
                    return Ok(Vec::new());
                }
                Some((after_chat, message)) if after_chat == chat => Some(*message),
                _ => None,
            };
            let condition = if after.is_some() {
                "#chatId = :chat AND #messageId > :after"
            } else {
                "#chatId = :chat"
            };
            let filter = query.since_ms.map(|_| "#timestamp >= :since");
            let mut vals = HashMap::from([(":chat".to_owned(), s(chat))]);
            if let Some(after) = after {
                vals.insert(":after".to_owned(), n(after));
            }
            if let Some(since) = query.since_ms {
                vals.insert(":since".to_owned(), n(since));
            }
            let mut start = None;
            loop {
                let page = self
                    .dynamodb()
                    .query()
                    .table_name(t)
                    .key_condition_expression(condition)
                    .set_filter_expression(filter.map(str::to_owned))
                    .set_expression_attribute_names(names([condition, filter.unwrap_or("")]))
                    .set_expression_attribute_values(Some(vals.clone()))
                    .consistent_read(true)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| unavailable("Query messages", e))?;
                for item in page.items() {
                    found.push(message(item)?);
                }
                start = page.last_evaluated_key;
                if start.is_none() || found.len() >= query.limit {
                    break;
                }
            }
        } else {
            // No chat to query: a scan, resumed after the last message of the page before
            // (DynamoDB's order: each chat's messages together by messageId, chats in hash
            // order), so that an export reads the table once, not once per page.
            let filter = query.since_ms.map(|_| "#timestamp >= :since");
            let start = query.after.as_ref().map(|(chat, message)| {
                Item::from([
                    ("chatId".to_owned(), s(chat)),
                    ("messageId".to_owned(), n(*message)),
                ])
            });
            let since = query
                .since_ms
                .and_then(|since| values([(":since", n(since))]));
            let items = self.scan_page(t, start, filter, since, query.limit).await?;
            return items.iter().map(message).collect();
        }
        found.sort_by(|a, b| (&a.chat_id, a.message_id).cmp(&(&b.chat_id, b.message_id)));
        found.truncate(query.limit);
        Ok(found)
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, BackendError> {
        let got = self
            .dynamodb()
            .get_item()
            .table_name(&self.tables().users)
            .set_key(Some(key("userId", s(user_id))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem users", e))?;
        got.item.as_ref().map(user).transpose()
    }

    async fn events_by_user(
        &self,
        user_id: &str,
        since: &str,
    ) -> Result<Vec<EventRecord>, BackendError> {
        // DynamoDB refuses an empty string in a key condition: "since the beginning" has none.
        let condition = if since.is_empty() {
            "#userId = :user"
        } else {
            "#userId = :user AND #timestamp >= :since"
        };
        let mut vals = HashMap::from([(":user".to_owned(), s(user_id))]);
        if !since.is_empty() {
            vals.insert(":since".to_owned(), s(since));
        }
        let mut events = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .dynamodb()
                .query()
                .table_name(&self.tables().events)
                .index_name(USER_ID_INDEX)
                .key_condition_expression(condition)
                .set_expression_attribute_names(names([condition]))
                .set_expression_attribute_values(Some(vals.clone()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query events UserIdIndex", e))?;
            for item in page.items() {
                events.push(event(item)?);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        events.sort_by(|a, b| (&a.timestamp, &a.event_id).cmp(&(&b.timestamp, &b.event_id)));
        Ok(events)
    }

    async fn events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, BackendError> {
        let items = self
            .scan_page(
                &self.tables().events,
                after.map(|after| key("eventId", s(after))),
                None,
                None,
                limit,
            )
            .await?;
        items.iter().map(event).collect()
    }

    async fn users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, BackendError> {
        let items = self
            .scan_page(
                &self.tables().users,
                after.map(|after| key("userId", s(after))),
                None,
                None,
                limit,
            )
            .await?;
        items.iter().map(user).collect()
    }

    async fn import(&self, records: &Import) -> Result<Imported, BackendError> {
        use futures_util::future::try_join_all;
        let t = self.tables();
        let mut imported = Imported::default();
        let count = |written: Vec<bool>| written.into_iter().filter(|w| *w).count() as u64;
        for chunk in records.messages.chunks(IMPORT_CONCURRENCY) {
            let puts = chunk
                .iter()
                .map(|m| self.put_new(&t.messages, "chatId", message_item(m)));
            imported.messages += count(try_join_all(puts).await?);
        }
        for chunk in records.users.chunks(IMPORT_CONCURRENCY) {
            imported.users += count(try_join_all(chunk.iter().map(|u| self.import_user(u))).await?);
        }
        for chunk in records.events.chunks(IMPORT_CONCURRENCY) {
            let puts = chunk
                .iter()
                .map(|e| self.put_new(&t.events, "eventId", event_item(e)));
            imported.events += count(try_join_all(puts).await?);
        }
        Ok(imported)
    }
}

/// A message's item (without the condition that makes the first write win).
fn message_item(m: &MessageRecord) -> Item {
    let mut item = Item::from([
        ("chatId".to_owned(), s(&m.chat_id)),
        ("messageId".to_owned(), n(m.message_id)),
        ("timestamp".to_owned(), n(m.timestamp)),
        ("raw".to_owned(), s(&m.raw)),
        ("createdAt".to_owned(), s(&m.created_at)),
    ]);
    if let Some(user_id) = m.user_id {
        item.insert("userId".to_owned(), n(user_id));
    }
    opt_string(&mut item, "userName", m.user_name.as_ref());
    opt_string(&mut item, "text", m.text.as_ref());
    item
}

/// An event's item; `apply` adds the `updateId` it came from, an import has none.
fn event_item(e: &EventRecord) -> Item {
    let mut item = Item::from([
        ("eventId".to_owned(), s(&e.event_id)),
        ("eventType".to_owned(), s(&e.event_type)),
        ("payload".to_owned(), s(json_text(&e.payload))),
        ("timestamp".to_owned(), s(&e.timestamp)),
        ("processed".to_owned(), AttributeValue::Bool(e.processed)),
    ]);
    opt_string(&mut item, "userId", e.user_id.as_ref());
    item
}

fn user_item(u: &UserRecord) -> Item {
    let mut item = Item::from([
        ("userId".to_owned(), s(&u.user_id)),
        ("telegramId".to_owned(), n(u.telegram_id)),
        ("createdAt".to_owned(), s(&u.created_at)),
        ("updatedAt".to_owned(), s(&u.updated_at)),
    ]);
    opt_string(&mut item, "username", u.username.as_ref());
    opt_string(&mut item, "firstName", u.first_name.as_ref());
    opt_string(&mut item, "lastName", u.last_name.as_ref());
    opt_string(&mut item, "languageCode", u.language_code.as_ref());
    item
}

/// Records written at once by [`Store::import`] on DynamoDB (one conditional write each).
const IMPORT_CONCURRENCY: usize = 16;

impl AwsBackend {
    /// Up to `limit` items of `table` that pass `filter` (with its `values`), after the item
    /// whose key is `start`, in scan order. Each request evaluates at most the items still
    /// wanted, so the last item returned is the last one read: the next page starts there.
    async fn scan_page(
        &self,
        table: &str,
        mut start: Option<Item>,
        filter: Option<&str>,
        values: Option<HashMap<String, AttributeValue>>,
        limit: usize,
    ) -> Result<Vec<Item>, BackendError> {
        let mut found = Vec::new();
        while found.len() < limit {
            let want = i32::try_from(limit - found.len()).unwrap_or(i32::MAX);
            let page = self
                .dynamodb()
                .scan()
                .table_name(table)
                .limit(want)
                .set_filter_expression(filter.map(str::to_owned))
                .set_expression_attribute_names(filter.and_then(|f| names([f])))
                .set_expression_attribute_values(values.clone())
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Scan", e))?;
            found.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(found)
    }

    /// Puts `item` unless an item with its key attribute `name` exists; whether it was put.
    async fn put_new(&self, table: &str, name: &str, item: Item) -> Result<bool, BackendError> {
        let new = format!("attribute_not_exists(#{name})");
        match self
            .dynamodb()
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression(&new)
            .set_expression_attribute_names(names([new.as_str()]))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(unavailable("PutItem", e)),
        }
    }

    /// Imports a user: put if new, else merged with the stored one
    /// ([`botline_core::backend::merge_user`]), written only if the stored one did not change
    /// meanwhile (read again otherwise). Whether the user was new.
    async fn import_user(&self, u: &UserRecord) -> Result<bool, BackendError> {
        let table = &self.tables().users;
        loop {
            if self.put_new(table, "userId", user_item(u)).await? {
                return Ok(true);
            }
            let Some(stored) = self.user(&u.user_id).await? else {
                continue; // deleted meanwhile
            };
            let merged = botline_core::backend::merge_user(&stored, u);
            if merged == stored {
                return Ok(false);
            }
            let unchanged = "#createdAt = :createdAt AND #updatedAt = :updatedAt";
            match self
                .dynamodb()
                .put_item()
                .table_name(table)
                .set_item(Some(user_item(&merged)))
                .condition_expression(unchanged)
                .set_expression_attribute_names(names([unchanged]))
                .set_expression_attribute_values(values([
                    (":createdAt", s(&stored.created_at)),
                    (":updatedAt", s(&stored.updated_at)),
                ]))
                .send()
                .await
            {
                Ok(_) => return Ok(false),
                Err(e) if is_condition_failed(&e) => continue,
                Err(e) => return Err(unavailable("PutItem users", e)),
            }
        }
    }
}

fn message(item: &Item) -> Result<MessageRecord, BackendError> {
    let what = "a message";
    let what: &dyn std::fmt::Display = &what;
    Ok(MessageRecord {
        chat_id: req_s(item, "chatId", what)?,
        message_id: req_n(item, "messageId", what)?,
        user_id: opt_n(item, "userId", what)?,
        user_name: opt_s(item, "userName"),
        text: opt_s(item, "text"),
        timestamp: req_n(item, "timestamp", what)?,
        raw: req_s(item, "raw", what)?,
        created_at: req_s(item, "createdAt", what)?,
    })
}

fn user(item: &Item) -> Result<UserRecord, BackendError> {
    let what = "a user";
    let what: &dyn std::fmt::Display = &what;
    Ok(UserRecord {
        user_id: req_s(item, "userId", what)?,
        telegram_id: req_n(item, "telegramId", what)?,
        username: opt_s(item, "username"),
        first_name: opt_s(item, "firstName"),
        last_name: opt_s(item, "lastName"),
        language_code: opt_s(item, "languageCode"),
        created_at: req_s(item, "createdAt", what)?,
        updated_at: req_s(item, "updatedAt", what)?,
    })
}

fn event(item: &Item) -> Result<EventRecord, BackendError> {
    let event_id = req_s(item, "eventId", &"an event")?;
    let what: &dyn std::fmt::Display = &format!("event {event_id}");
    let payload = req_s(item, "payload", what)?;
    Ok(EventRecord {
        payload: serde_json::from_str(&payload)
            .map_err(|e| BackendError::Corrupt(format!("event {event_id} payload: {e}")))?,
        user_id: opt_s(item, "userId"),
        event_type: req_s(item, "eventType", what)?,
        timestamp: req_s(item, "timestamp", what)?,
        processed: opt_bool(item, "processed").unwrap_or(false),
        event_id,
    })
}

fn session(item: &Item) -> Result<SessionRecord, BackendError> {
    let session_id = req_s(item, "sessionId", &"a session")?;
    let what: &dyn std::fmt::Display = &format!("session {session_id}");
    let data = req_s(item, "data", what)?;
    Ok(SessionRecord {
        data: serde_json::from_str(&data)
            .map_err(|e| BackendError::Corrupt(format!("session {session_id} data: {e}")))?,
        user_id: req_s(item, "userId", what)?,
        chat_id: req_n(item, "chatId", what)?,
        state: req_s(item, "state", what)?,
        created_at: req_s(item, "createdAt", what)?,
        updated_at: req_s(item, "updatedAt", what)?,
        expires_at: req_n(item, "expiresAt", what)?,
        session_id,
    })
}

#[async_trait]
impl Sessions for AwsBackend {
    async fn put_session(&self, session: &SessionRecord) -> Result<(), BackendError> {
        let data = serde_json::Value::Object(session.data.clone()).to_string();
        let item = Item::from([
            ("sessionId".to_owned(), s(&session.session_id)),
            ("userId".to_owned(), s(&session.user_id)),
            ("chatId".to_owned(), n(session.chat_id)),
            ("state".to_owned(), s(&session.state)),
            ("data".to_owned(), s(data)),
            ("createdAt".to_owned(), s(&session.created_at)),
            ("updatedAt".to_owned(), s(&session.updated_at)),
            ("expiresAt".to_owned(), n(session.expires_at)),
        ]);
        self.dynamodb()
            .put_item()
            .table_name(&self.tables().sessions)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable("PutItem sessions", e))?;
        Ok(())
    }

    /// DynamoDB's TTL deletes an expired session within days, not at once: expiry is checked
    /// here.
    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, BackendError> {
        let got = self
            .dynamodb()
            .get_item()
            .table_name(&self.tables().sessions)
            .set_key(Some(key("sessionId", s(session_id))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem sessions", e))?;
        let now = clock::now_ms();
        Ok(got
            .item
            .as_ref()
            .map(session)
            .transpose()?
            .filter(|s| !s.is_expired(now)))
    }

    async fn sessions_by_user(&self, user_id: &str) -> Result<Vec<SessionRecord>, BackendError> {
        let condition = "#userId = :user";
        let now = clock::now_ms();
        let mut sessions = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .dynamodb()
                .query()
                .table_name(&self.tables().sessions)
                .index_name(USER_ID_INDEX)
                .key_condition_expression(condition)
                .set_expression_attribute_names(names([condition]))
                .set_expression_attribute_values(values([(":user", s(user_id))]))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query sessions UserIdIndex", e))?;
            for item in page.items() {
                let found = session(item)?;
                if !found.is_expired(now) {
                    sessions.push(found);
                }
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        sessions
            .sort_by(|a, b| (&a.created_at, &a.session_id).cmp(&(&b.created_at, &b.session_id)));
        Ok(sessions)
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, BackendError> {
        let deleted = self
            .dynamodb()
            .delete_item()
            .table_name(&self.tables().sessions)
            .set_key(Some(key("sessionId", s(session_id))))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| unavailable("DeleteItem sessions", e))?;
        Ok(deleted.attributes.is_some_and(|old| !old.is_empty()))
    }

    /// A scan for sessions expired at `now_ms`, each deleted unless it was renewed meanwhile.
    async fn purge_expired_sessions(&self, now_ms: i64) -> Result<u64, BackendError> {
        let expired = "#expiresAt <= :cut";
        let cut = n(now_ms.div_euclid(1000));
        let mut items = self
            .dynamodb()
            .scan()
            .table_name(&self.tables().sessions)
            .filter_expression(expired)
            .projection_expression("#sessionId")
            .set_expression_attribute_names(names([expired, "#sessionId"]))
            .set_expression_attribute_values(values([(":cut", cut.clone())]))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut purged = 0;
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| unavailable("Scan sessions", e))?;
            let Some(id) = get_s(&item, "sessionId") else {
                continue;
            };
            let deleted = self
                .dynamodb()
                .delete_item()
                .table_name(&self.tables().sessions)
                .set_key(Some(key("sessionId", s(id))))
                .condition_expression(expired)
                .set_expression_attribute_names(names([expired]))
                .set_expression_attribute_values(values([(":cut", cut.clone())]))
                .send()
                .await;
            match deleted {
                Ok(_) => purged += 1,
                Err(e) if is_condition_failed(&e) => {}
                Err(e) => return Err(unavailable("DeleteItem sessions", e)),
            }
        }
        Ok(purged)
    }
}

#[async_trait]
impl RegistrationTokens for AwsBackend {
    async fn issue_token(
        &self,
        username: &str,
        token_digest: &str,
        expires_at_ms: i64,
    ) -> Result<(), BackendError> {
        let item = Item::from([
            ("tokenDigest".to_owned(), s(token_digest)),
            ("username".to_owned(), s(username)),
            ("createdAt".to_owned(), n(clock::now_ms())),
            ("expiresAtMs".to_owned(), n(expires_at_ms)),
        ]);
        let condition = "attribute_not_exists(#tokenDigest)";
        let put = self
            .dynamodb()
            .put_item()
            .table_name(&self.tables().tokens)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names(names([condition]))
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(BackendError::Unavailable(
                "a token with this digest was issued before".into(),
            )),
            Err(e) => Err(unavailable("PutItem tokens", e)),
        }
    }
}
