//! The queue: SQS messages carry the updates, DynamoDB's `updates` items say what state each is
//! in. The claim step turns received messages into leased deliveries (see the crate docs).

use crate::item::{
    Item, get_s, key, n, names, opt_n, opt_s, req_n, req_s, s, values, whole_seconds,
};
use crate::{AwsBackend, FifoGroup, describe, is_condition_failed, unavailable};
use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use botline_core::backend::{DeadLetter, Enqueued, Failed, QueueStats, stored_reason};
use botline_core::{
    BackendError, DeadLetters, Delivery, InboundUpdate, OrderKey, Queue, QueuedUpdate, UpdateId,
    UpdateKind, build_records, clock,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

/// The `state` of an update's item.
pub(crate) const QUEUED: &str = "queued";
pub(crate) const LEASED: &str = "leased";
pub(crate) const DONE: &str = "done";
pub(crate) const DEAD: &str = "dead";

/// The sparse index of unfinished updates by order key (see the crate docs).
pub(crate) const PENDING_INDEX: &str = "PendingIndex";

/// The `maxReceiveCount` of the main queue's redrive policy that Botline assumes (and
/// [`provision`](crate::provision) sets): a message that SQS has delivered this many times is
/// never leased, but replaced by a fresh copy, so that SQS never moves a message to the DLQ that
/// Botline still counts on. A deployment may set a higher count, never a lower one.
pub const MAX_RECEIVE_COUNT: u32 = 3;

/// How long a message waits (standard queue) for each unfinished update of its chat before it:
/// its turn normally comes earlier, when the update before it finishes and wakes it; this is
/// the fallback when a wake-up is lost.
const HOLD_PER_UPDATE_AHEAD: i32 = 5;
/// The longest a held-back message waits before SQS delivers it again (standard queue).
const MAX_HOLD_SECONDS: i32 = 60;

/// Rounds of receive-and-claim one [`Queue::receive`] makes at most.
const MAX_ROUNDS: usize = 8;

/// How many times a claim re-reads an item that changed under it before giving up.
const CLAIM_TRIES: usize = 3;

/// The update expression that makes a leased item a dead letter; with `redact`, its body is
/// replaced by `:raw` (its form without typed secrets) in the same write.
fn dead_update_expression(redact: bool) -> &'static str {
    if redact {
        "SET #state = :dead, #lastError = :error, #deadAt = :now, #raw = :raw \
         REMOVE #pendingKey, #receipt, #leaseUntil, #leaseMessageId, #notBefore, #expiresAt"
    } else {
        "SET #state = :dead, #lastError = :error, #deadAt = :now \
         REMOVE #pendingKey, #receipt, #leaseUntil, #leaseMessageId, #notBefore, #expiresAt"
    }
}

/// `values`, with `:raw` when there is a redacted body to write.
fn with_raw(values: Option<Item>, raw: Option<&str>) -> Option<Item> {
    let Some(raw) = raw else {
        return values;
    };
    let mut values = values.unwrap_or_default();
    values.insert(":raw".to_owned(), s(raw));
    Some(values)
}

/// A message body as it may outlive its update's attempts (a copy for the DLQ): an envelope
/// whose update body holds a secret a user typed (a `/register` token) is written anew with the
/// body redacted ([`botline_core::redact_typed_secrets`]); a body that is not an envelope is
/// redacted when it is itself an update; anything else (a wake-up) is returned as it is.
fn redacted_message_body(body: &str) -> String {
    match Envelope::decode(body) {
        Some(envelope) => match botline_core::redact_typed_secrets(&envelope.raw) {
            Some(raw) => Envelope { raw, ..envelope }.encode(),
            None => body.to_owned(),
        },
        None => botline_core::redact_typed_secrets(body).unwrap_or_else(|| body.to_owned()),
    }
}

/// The body of every message Botline sends to its queues: the update as the receiver made it
/// durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Envelope {
    /// The format's version.
    pub v: u32,
    pub update_id: i64,
    pub entry_id: String,
    pub order_key: String,
    pub kind: String,
    pub received_at_ms: i64,
    /// The FIFO `MessageGroupId` the update was sent with, for copies and redrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub raw: String,
}

impl Envelope {
    /// The JSON body, with the few characters SQS refuses (U+FFFE, U+FFFF) escaped.
    pub fn encode(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        if json.chars().all(sqs_allows) {
            return json;
        }
        let mut safe = String::with_capacity(json.len() + 16);
        for c in json.chars() {
            if sqs_allows(c) {
                safe.push(c);
            } else {
                // Only inside JSON strings: the structure is ASCII.
                for unit in c.encode_utf16(&mut [0; 2]) {
                    safe.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        safe
    }

    pub fn decode(body: &str) -> Option<Self> {
        serde_json::from_str::<Self>(body).ok().filter(|e| e.v == 1)
    }
}

/// The body of a wake-up: a nudge for an update whose item holds its body (see
/// [`AwsBackend::wake_next`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Wake {
    pub v: u32,
    /// The update to hand out.
    pub wake: i64,
    pub order_key: String,
}

/// A message body Botline sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    Update(Envelope),
    Wake(Wake),
}

impl Body {
    pub fn decode(body: &str) -> Option<Self> {
        if let Some(envelope) = Envelope::decode(body) {
            return Some(Self::Update(envelope));
        }
        serde_json::from_str::<Wake>(body)
            .ok()
            .filter(|w| w.v == 1)
            .map(Self::Wake)
    }

    fn update_id(&self) -> i64 {
        match self {
            Self::Update(e) => e.update_id,
            Self::Wake(w) => w.wake,
        }
    }

    fn order_key(&self) -> &str {
        match self {
            Self::Update(e) => &e.order_key,
            Self::Wake(w) => &w.order_key,
        }
    }

    fn raw(&self) -> Option<&str> {
        match self {
            Self::Update(e) => Some(&e.raw),
            Self::Wake(_) => None,
        }
    }
}

/// The characters a message body may hold.
fn sqs_allows(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// A message as SQS delivered it, to [`Queue::receive`] or to a Lambda function in its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// SQS's `ApproximateReceiveCount`, this delivery included.
    pub receive_count: u32,
    /// Until when (unix ms, by this process's clock) SQS keeps the message hidden at least, when
    /// the receiver knows it: then a lease ending then needs no visibility change. `None` (a
    /// Lambda event) makes the claim set the visibility itself.
    pub visible_until_ms: Option<i64>,
}

impl QueueMessage {
    /// A message from `ReceiveMessage` (asked for `ApproximateReceiveCount`); `None` when it
    /// lacks an id, a receipt handle or a body.
    pub fn from_sqs(message: aws_sdk_sqs::types::Message) -> Option<Self> {
        let receive_count = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|count| count.parse().ok())
            .unwrap_or(1);
        Some(Self {
            message_id: message.message_id?,
            receipt_handle: message.receipt_handle?,
            body: message.body?,
            receive_count,
            visible_until_ms: None,
        })
    }
}

/// What the claim step did with a batch of messages. Every message is in exactly one list.
#[derive(Debug, Default)]
pub struct Claimed {
    /// Leased: each the head of its chat, its message invisible for the lease. Acknowledge,
    /// fail or apply each (its message is deleted then).
    pub deliveries: Vec<Delivery>,
    /// Held back (not the head of its chat, or waiting out a backoff, or at its last SQS
    /// delivery): hidden for a while (standard queue, while the message has receives left), or
    /// sent again as a new message and this one deleted. Message ids.
    pub held: Vec<String>,
    /// Deleted: its update is done or dead already, or another copy holds its lease, or it
    /// is not a Botline message (moved to the DLQ). Message ids.
    pub dropped: Vec<String>,
    /// Left as they were (they come back after their visibility timeout): message id and why.
    pub failed: Vec<(String, BackendError)>,
}

/// What [`Delivery::receipt`] holds on this backend: the lease and the SQS message it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The lease's id (the item's `receipt`): acks and failures with another are refused.
    pub lease: String,
    pub message_id: String,
    pub receipt_handle: String,
}

impl Receipt {
    pub fn parse(receipt: &str) -> Option<Self> {
        let mut parts = receipt.splitn(3, ' ');
        let (lease, message_id, receipt_handle) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Self {
            lease: lease.to_owned(),
            message_id: message_id.to_owned(),
            receipt_handle: receipt_handle.to_owned(),
        })
    }

    /// The lease of a receipt, or the whole text when it is not one of ours.
    fn lease_of(receipt: &str) -> &str {
        receipt.split(' ').next().unwrap_or(receipt)
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.lease, self.message_id, self.receipt_handle
        )
    }
}

/// An update's item in `updates`.
#[derive(Debug, Clone)]
pub(crate) struct UpdateRow {
    pub id: i64,
    pub entry_id: String,
    pub order_key: String,
    pub kind: String,
    pub received_at_ms: i64,
    pub group: Option<String>,
    pub raw: Option<String>,
    pub state: String,
    pub attempts: u32,
    pub receipt: Option<String>,
    pub lease_until: i64,
    pub lease_message_id: Option<String>,
    pub not_before: i64,
    pub last_error: Option<String>,
    pub dead_at: Option<i64>,
}

impl UpdateRow {
    fn from_item(item: &Item) -> Result<Self, BackendError> {
        let id: i64 = req_n(item, "updateId", &"an update item")?;
        let what = format!("update {id}");
        let what: &dyn fmt::Display = &what;
        Ok(Self {
            id,
            entry_id: req_s(item, "entryId", what)?,
            order_key: req_s(item, "orderKey", what)?,
            kind: req_s(item, "kind", what)?,
            received_at_ms: req_n(item, "receivedAt", what)?,
            group: opt_s(item, "messageGroup"),
            raw: opt_s(item, "raw"),
            state: req_s(item, "state", what)?,
            attempts: opt_n(item, "attempts", what)?.unwrap_or(0),
            receipt: opt_s(item, "receipt"),
            lease_until: opt_n(item, "leaseUntil", what)?.unwrap_or(0),
            lease_message_id: opt_s(item, "leaseMessageId"),
            not_before: opt_n(item, "notBefore", what)?.unwrap_or(0),
            last_error: opt_s(item, "lastError"),
            dead_at: opt_n(item, "deadAt", what)?,
        })
    }

    fn queued_update(&self, fallback_raw: Option<&str>) -> Result<QueuedUpdate, BackendError> {
        let order_key = self
            .order_key
            .parse::<OrderKey>()
            .map_err(|e| BackendError::Corrupt(format!("update {}: order key: {e}", self.id)))?;
        let raw = self
            .raw
            .as_deref()
            .or(fallback_raw)
            .ok_or_else(|| BackendError::Corrupt(format!("update {} has no body", self.id)))?;
        Ok(QueuedUpdate {
            entry_id: self.entry_id.clone(),
            update_id: UpdateId(self.id),
            kind: UpdateKind(self.kind.clone()),
            order_key,
            raw: raw.to_owned(),
            received_at_ms: self.received_at_ms,
        })
    }

    fn envelope(&self) -> Result<Envelope, BackendError> {
        Ok(Envelope {
            v: 1,
            update_id: self.id,
            entry_id: self.entry_id.clone(),
            order_key: self.order_key.clone(),
            kind: self.kind.clone(),
            received_at_ms: self.received_at_ms,
            group: self.group.clone(),
            raw: self
                .raw
                .clone()
                .ok_or_else(|| BackendError::Corrupt(format!("update {} has no body", self.id)))?,
        })
    }
}

/// What the claim step decided for one message.
enum Outcome {
    Leased(Box<Delivery>),
    Held,
    Dropped,
}

/// Where an unfinished update stands: from its item, or from its entry in the pending index.
#[derive(Debug, Clone)]
struct Standing {
    state: String,
    attempts: u32,
    lease_until: i64,
    lease_message_id: Option<String>,
    not_before: i64,
}

impl Standing {
    fn of_row(row: &UpdateRow) -> Self {
        Self {
            state: row.state.clone(),
            attempts: row.attempts,
            lease_until: row.lease_until,
            lease_message_id: row.lease_message_id.clone(),
            not_before: row.not_before,
        }
    }
}

/// A chat's unfinished updates, as the pending index shows them to one of them.
#[derive(Debug, Default)]
struct ChatView {
    /// The update's own entry.
    own: Option<Standing>,
    /// Unfinished updates of the chat with lower ids.
    ahead: usize,
    /// The end of a live lease on an update of the chat with a higher id.
    leased_until: Option<i64>,
}

impl AwsBackend {
    /// The item of an update that is queued for the first time, from its envelope.
    fn new_update_item(&self, envelope: &Envelope, now_ms: i64) -> Item {
        let mut item = Item::from([
            ("updateId".to_owned(), n(envelope.update_id)),
            ("entryId".to_owned(), s(&envelope.entry_id)),
            ("orderKey".to_owned(), s(&envelope.order_key)),
            ("pendingKey".to_owned(), s(&envelope.order_key)),
            ("kind".to_owned(), s(&envelope.kind)),
            ("receivedAt".to_owned(), n(envelope.received_at_ms)),
            ("state".to_owned(), s(QUEUED)),
            ("attempts".to_owned(), n(0)),
            ("raw".to_owned(), s(&envelope.raw)),
            ("expiresAt".to_owned(), n(self.expires_at(now_ms))),
        ]);
        if let Some(group) = &envelope.group {
            item.insert("messageGroup".to_owned(), s(group));
        }
        item
    }

    /// The TTL (unix seconds) that keeps an update's id for the dedupe window from `now_ms`.
    pub(crate) fn expires_at(&self, now_ms: i64) -> i64 {
        let window = i64::try_from(self.config().dedupe_window.as_secs()).unwrap_or(i64::MAX);
        (now_ms / 1000).saturating_add(window)
    }

    /// The FIFO group of an update (none on a standard queue).
    fn group_of(&self, update: &QueuedUpdate) -> Option<String> {
        if !self.fifo() {
            return None;
        }
        let user = match self.settings().fifo_group {
            FifoGroup::Chat => None,
            FifoGroup::User => build_records(update, 0)
                .ok()
                .and_then(|records| records.user)
                .map(|user| format!("user:{}", user.telegram_id)),
        };
        Some(user.unwrap_or_else(|| update.order_key.to_string()))
    }

    pub(crate) async fn get_update(&self, id: i64) -> Result<Option<UpdateRow>, BackendError> {
        let got = self
            .dynamodb()
            .get_item()
            .table_name(&self.tables().updates)
            .set_key(Some(key("updateId", n(id))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("GetItem updates", e))?;
        got.item.as_ref().map(UpdateRow::from_item).transpose()
    }

    /// Sends `body` to `queue_url`: on a FIFO queue in `group` with `dedup` (a fresh id when
    /// none), on a standard one after `delay_s` seconds.
    async fn send(
        &self,
        queue_url: &str,
        body: String,
        group: Option<&str>,
        dedup: Option<String>,
        delay_s: i32,
    ) -> Result<(), BackendError> {
        let mut send = self
            .sqs()
            .send_message()
            .queue_url(queue_url)
            .message_body(body);
        if queue_url.ends_with(".fifo") {
            send = send
                .message_group_id(group.unwrap_or("botline"))
                .message_deduplication_id(
                    dedup.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
                );
        } else if delay_s > 0 {
            send = send.delay_seconds(delay_s.min(900));
        }
        send.send()
            .await
            .map_err(|e| unavailable("SendMessage", e))?;
        Ok(())
    }

    async fn delete_message(&self, receipt_handle: &str) -> Result<(), BackendError> {
        self.sqs()
            .delete_message()
            .queue_url(&self.settings().queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| unavailable("DeleteMessage", e))?;
        Ok(())
    }

    /// Deletes a message whose update no longer needs it; a failure only means SQS delivers it
    /// again, and the claim drops it then.
    async fn delete_quietly(&self, receipt_handle: &str) {
        if let Err(e) = self.delete_message(receipt_handle).await {
            tracing::warn!(error = %e, "could not delete a finished update's message; it will be dropped when it comes back");
        }
    }

    async fn change_visibility(&self, receipt_handle: &str, seconds: i32) {
        let changed = self
            .sqs()
            .change_message_visibility()
            .queue_url(&self.settings().queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds.clamp(0, 43_200))
            .send()
            .await;
        if let Err(e) = changed {
            tracing::warn!(error = %describe("ChangeMessageVisibility", &e), "could not change a message's visibility");
        }
    }

    /// Up to `max` (≤ 10) messages, waiting up to `wait` for the first.
    async fn receive_messages(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<QueueMessage>, BackendError> {
        let lease_ms = i64::try_from(self.config().lease.as_millis()).unwrap_or(i64::MAX);
        let hidden = whole_seconds(lease_ms).max(1);
        let asked = clock::now_ms();
        let received = self
            .sqs()
            .receive_message()
            .queue_url(&self.settings().queue_url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(0))
            .visibility_timeout(hidden)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| unavailable("ReceiveMessage", e))?;
        Ok(received
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(QueueMessage::from_sqs)
            .map(|message| QueueMessage {
                // SQS hid it when it answered, after it was asked.
                visible_until_ms: Some(asked + i64::from(hidden) * 1000),
                ..message
            })
            .collect())
    }

    /// The claim step: decides for each message whether its update is handed out (leased),
    /// held back (sent again and deleted), or dropped (deleted). Messages of one chat are
    /// decided one after another, in the order given; chats concurrently.
    ///
    /// [`Queue::receive`] calls it with what it receives; a Lambda worker calls it with the
    /// messages of its SQS event (see the crate docs).
    pub async fn claim(&self, messages: Vec<QueueMessage>) -> Claimed {
        let mut chats: Vec<(String, Vec<QueueMessage>)> = Vec::new();
        for message in messages {
            let chat = Body::decode(&message.body)
                .map(|body| body.order_key().to_owned())
                .unwrap_or_default();
            match chats.iter_mut().find(|(key, _)| *key == chat) {
                Some((_, batch)) => batch.push(message),
                None => chats.push((chat, vec![message])),
            }
        }
        let decided = futures_util::future::join_all(chats.into_iter().map(|(_, batch)| async {
            let mut decided = Vec::with_capacity(batch.len());
            for message in batch {
                let outcome = self.claim_one(&message).await;
                decided.push((message.message_id, outcome));
            }
            decided
        }))
        .await;
        let mut claimed = Claimed::default();
        for (message_id, outcome) in decided.into_iter().flatten() {
            match outcome {
                Ok(Outcome::Leased(delivery)) => claimed.deliveries.push(*delivery),
                Ok(Outcome::Held) => claimed.held.push(message_id),
                Ok(Outcome::Dropped) => claimed.dropped.push(message_id),
                Err(e) => claimed.failed.push((message_id, e)),
            }
        }
        claimed
    }

    async fn claim_one(&self, message: &QueueMessage) -> Result<Outcome, BackendError> {
        let Some(body) = Body::decode(&message.body) else {
            tracing::error!(
                message_id = %message.message_id,
                "a message that is not a Botline update: moved to the dead-letter queue"
            );
            // Moved as it is, but for a typed secret when the body is itself an update.
            self.send(
                &self.settings().dlq_url.clone(),
                redacted_message_body(&message.body),
                Some("botline-unreadable"),
                None,
                0,
            )
            .await?;
            self.delete_message(&message.receipt_handle).await?;
            return Ok(Outcome::Dropped);
        };
        let id = body.update_id();
        let max_attempts = self.config().retry.max_attempts;
        let mut trust_index = true;
        for _ in 0..CLAIM_TRIES {
            let now = clock::now_ms();
            let view = self.chat_view(body.order_key(), id, now).await?;
            let standing = match view.own.filter(|_| trust_index) {
                Some(standing) => standing,
                // Not unfinished (done, dead, unknown), or not in the index yet: its item says.
                None => match self.get_update(id).await? {
                    Some(row) if row.state == DONE || row.state == DEAD => {
                        self.delete_message(&message.receipt_handle).await?;
                        return Ok(Outcome::Dropped);
                    }
                    Some(row) => Standing::of_row(&row),
                    None => match &body {
                        // Sent, but the receiver stopped before it wrote the item: a queued
                        // update.
                        Body::Update(envelope) => {
                            self.create_update(envelope, now).await?;
                            trust_index = false;
                            continue;
                        }
                        // A wake-up for an update forgotten since.
                        Body::Wake(_) => {
                            self.delete_message(&message.receipt_handle).await?;
                            return Ok(Outcome::Dropped);
                        }
                    },
                },
            };
            if standing.state == LEASED && standing.lease_until > now {
                if standing.lease_message_id.as_deref() == Some(&message.message_id) {
                    // The leased message itself, back before the lease ran out by this
                    // process's clock: held until it does.
                    self.hold(&body, message, whole_seconds(standing.lease_until - now))
                        .await?;
                    return Ok(Outcome::Held);
                }
                // Another copy: the lease's own message comes back if the lease expires.
                self.delete_message(&message.receipt_handle).await?;
                return Ok(Outcome::Dropped);
            }
            if standing.state == LEASED && standing.attempts >= max_attempts {
                let Some(row) = self.get_update(id).await? else {
                    continue;
                };
                // The body as the item keeps it, else as this message carries it: the dead
                // item keeps it redacted, and so does the DLQ's copy (`send_to_dlq` redacts);
                // this message, the one copy on the main queue in hand, is deleted.
                let raw = row.raw.as_deref().or(body.raw());
                let redacted = raw.and_then(botline_core::redact_typed_secrets);
                if self
                    .dead_letter_expired(&row, redacted.as_deref(), now)
                    .await?
                {
                    let copy = row
                        .envelope()
                        .map(|e| e.encode())
                        .unwrap_or_else(|_| message.body.clone());
                    self.send_to_dlq(&copy, row.group.as_deref(), row.id).await;
                    self.delete_quietly(&message.receipt_handle).await;
                    self.wake_next(&row.order_key, row.id).await;
                    return Ok(Outcome::Dropped);
                }
                trust_index = false;
                continue;
            }
            if standing.state == QUEUED && standing.not_before > now {
                self.hold(&body, message, whole_seconds(standing.not_before - now))
                    .await?;
                return Ok(Outcome::Held);
            }
            if view.ahead > 0 {
                // Its turn comes when the updates before it are finished: the last of them
                // wakes it (standard queue), or its FIFO group brings it round again.
                let ahead = i32::try_from(view.ahead).unwrap_or(i32::MAX);
                let hold = ahead
                    .saturating_mul(HOLD_PER_UPDATE_AHEAD)
                    .min(MAX_HOLD_SECONDS);
                self.hold(&body, message, hold).await?;
                return Ok(Outcome::Held);
            }
            if let Some(until) = view.leased_until {
                self.hold(
                    &body,
                    message,
                    whole_seconds(until - now).clamp(1, MAX_HOLD_SECONDS),
                )
                .await?;
                return Ok(Outcome::Held);
            }
            if message.receive_count >= MAX_RECEIVE_COUNT {
                // Leased now, this message would go to SQS's DLQ when the lease expired,
                // before Botline saw the expiry: a fresh copy is leased instead.
                self.requeue(&body, message, 0).await?;
                return Ok(Outcome::Held);
            }
            if let Some(delivery) = self.lease(id, &standing, message, body.raw(), now).await? {
                return Ok(Outcome::Leased(Box::new(delivery)));
            }
            // The item changed since the index showed it: read the item itself next time.
            trust_index = false;
        }
        // The item kept changing under us (claims of other copies): again in a second.
        self.hold(&body, message, 1).await?;
        Ok(Outcome::Held)
    }

    /// The chat's unfinished updates as the pending index shows them to update `id`. One query,
    /// of the chat's whole backlog for its head, of less for others. DynamoDB keeps the index
    /// eventually consistent (see the crate docs): every write the claim decides on is
    /// conditional on the item itself.
    async fn chat_view(
        &self,
        order_key: &str,
        id: i64,
        now: i64,
    ) -> Result<ChatView, BackendError> {
        let condition = "#pendingKey = :key";
        let projection = "#updateId, #state, #attempts, #leaseUntil, #leaseMessageId, #notBefore";
        let what = "an index entry of updates";
        let mut view = ChatView::default();
        let mut start = None;
        loop {
            let page = self
                .dynamodb()
                .query()
                .table_name(&self.tables().updates)
                .index_name(PENDING_INDEX)
                .key_condition_expression(condition)
                .projection_expression(projection)
                .set_expression_attribute_names(names([condition, projection]))
                .set_expression_attribute_values(values([(":key", s(order_key))]))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("Query updates PendingIndex", e))?;
            let mut past_own = false;
            for item in page.items() {
                let entry: i64 = req_n(item, "updateId", &what)?;
                let standing = Standing {
                    state: opt_s(item, "state").unwrap_or_default(),
                    attempts: opt_n(item, "attempts", &what)?.unwrap_or(0),
                    lease_until: opt_n(item, "leaseUntil", &what)?.unwrap_or(0),
                    lease_message_id: opt_s(item, "leaseMessageId"),
                    not_before: opt_n(item, "notBefore", &what)?.unwrap_or(0),
                };
                if entry < id {
                    view.ahead += 1;
                } else if entry == id {
                    view.own = Some(standing);
                } else {
                    past_own = true;
                    if standing.state == LEASED && standing.lease_until > now {
                        view.leased_until = view.leased_until.max(Some(standing.lease_until));
                    }
                }
            }
            start = page.last_evaluated_key;
            // Behind others, it waits whatever comes after it.
            if start.is_none() || (view.ahead > 0 && past_own) {
                return Ok(view);
            }
        }
    }

    /// Writes the item of an update whose message arrived before (or without) its item.
    async fn create_update(&self, envelope: &Envelope, now_ms: i64) -> Result<(), BackendError> {
        let condition = "attribute_not_exists(#updateId)";
        let put = self
            .dynamodb()
            .put_item()
            .table_name(&self.tables().updates)
            .set_item(Some(self.new_update_item(envelope, now_ms)))
            .condition_expression(condition)
            .set_expression_attribute_names(names([condition]))
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Ok(()),
            Err(e) => Err(unavailable("PutItem updates", e)),
        }
    }

    /// Holds a message back for `seconds`: on a standard queue, while it has receives left,
    /// by hiding it; else by sending a copy (after `seconds` on a standard queue; to the tail of
    /// its group on a FIFO queue, where a hidden message would hold up its whole group) and
    /// deleting it.
    async fn hold(
        &self,
        body: &Body,
        message: &QueueMessage,
        seconds: i32,
    ) -> Result<(), BackendError> {
        if !self.fifo() && message.receive_count < MAX_RECEIVE_COUNT {
            // Its next receive is at most the MAX_RECEIVE_COUNT-th: SQS hands it to us, not to
            // its DLQ.
            return self
                .sqs()
                .change_message_visibility()
                .queue_url(&self.settings().queue_url)
                .receipt_handle(&message.receipt_handle)
                .visibility_timeout(seconds.clamp(0, 43_200))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| unavailable("ChangeMessageVisibility", e));
        }
        self.requeue(body, message, seconds).await
    }

    /// Sends a copy of the message back to the queue (after `delay_s` on a standard queue; at
    /// the tail of its group on a FIFO queue) and deletes this one. A new message starts with a
    /// receive count of 0, so holding an update back never brings it nearer SQS's DLQ.
    async fn requeue(
        &self,
        body: &Body,
        message: &QueueMessage,
        delay_s: i32,
    ) -> Result<(), BackendError> {
        let group = match body {
            Body::Update(envelope) => envelope.group.clone(),
            Body::Wake(_) => None,
        }
        .unwrap_or_else(|| body.order_key().to_owned());
        let dedup = format!("{}.{}", body.update_id(), uuid::Uuid::new_v4().simple());
        self.send(
            &self.settings().queue_url.clone(),
            message.body.clone(),
            Some(&group),
            Some(dedup),
            delay_s,
        )
        .await?;
        self.delete_quietly(&message.receipt_handle).await;
        Ok(())
    }

    /// Leases update `id`, the head of its chat, through `message`: `None` if the item is no
    /// longer as `standing` says. The lease ends when SQS shows the message again: when the
    /// receive hid it for long enough, then; else the message is hidden for the lease, rounded up
    /// to whole seconds.
    async fn lease(
        &self,
        id: i64,
        standing: &Standing,
        message: &QueueMessage,
        fallback_raw: Option<&str>,
        now: i64,
    ) -> Result<Option<Delivery>, BackendError> {
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let lease_ms = i64::try_from(self.config().lease.as_millis()).unwrap_or(i64::MAX);
        let hidden = i64::from(whole_seconds(lease_ms).max(1)) * 1000;
        let (until, hide) = match message.visible_until_ms {
            // Within a tenth of the lease of the receive: the lease ends with the hiding.
            Some(visible) if visible - now >= lease_ms - lease_ms / 10 => (visible, false),
            _ => (now.saturating_add(hidden), true),
        };
        let attempt = standing.attempts + 1;
        let update = "SET #state = :leased, #receipt = :lease, #leaseUntil = :until, \
                      #leaseMessageId = :message, #attempts = :attempt REMOVE #notBefore";
        let condition = "#attempts = :seen AND ((#state = :queued AND \
                         (attribute_not_exists(#notBefore) OR #notBefore <= :now)) OR \
                         (#state = :leased AND #leaseUntil <= :now))";
        let leased = self
            .dynamodb()
            .update_item()
            .table_name(&self.tables().updates)
            .set_key(Some(key("updateId", n(id))))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names([update, condition]))
            .set_expression_attribute_values(values([
                (":leased", s(LEASED)),
                (":queued", s(QUEUED)),
                (":lease", s(&lease)),
                (":until", n(until)),
                (":message", s(&message.message_id)),
                (":attempt", n(attempt)),
                (":seen", n(standing.attempts)),
                (":now", n(now)),
            ]))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        let item = match leased {
            Ok(output) => output.attributes.unwrap_or_default(),
            Err(e) if is_condition_failed(&e) => return Ok(None),
            Err(e) => return Err(unavailable("UpdateItem updates", e)),
        };
        if hide {
            self.change_visibility(&message.receipt_handle, whole_seconds(hidden))
                .await;
        }
        let row = UpdateRow::from_item(&item)?;
        Ok(Some(Delivery {
            update: row.queued_update(fallback_raw)?,
            attempt,
            receipt: Receipt {
                lease,
                message_id: message.message_id.clone(),
                receipt_handle: message.receipt_handle.clone(),
            }
            .to_string(),
        }))
    }

    /// Dead-letters a head whose last lease expired, its body replaced by `redacted` (its form
    /// without typed secrets) when there is one: false if the item changed since read.
    async fn dead_letter_expired(
        &self,
        row: &UpdateRow,
        redacted: Option<&str>,
        now: i64,
    ) -> Result<bool, BackendError> {
        let update = dead_update_expression(redacted.is_some());
        let condition = "#state = :leased AND #receipt = :receipt AND #leaseUntil <= :now";
        let dead = self
            .dynamodb()
            .update_item()
            .table_name(&self.tables().updates)
            .set_key(Some(key("updateId", n(row.id))))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names([update, condition]))
            .set_expression_attribute_values(with_raw(
                values([
                    (":dead", s(DEAD)),
                    (":leased", s(LEASED)),
                    (
                        ":error",
                        s(format!(
                            "lease expired on each of {} attempts",
                            row.attempts
                        )),
                    ),
                    (":now", n(now)),
                    (":receipt", s(row.receipt.clone().unwrap_or_default())),
                ]),
                redacted,
            ))
            .send()
            .await;
        match dead {
            Ok(_) => {
                tracing::warn!(
                    update_id = row.id,
                    attempts = row.attempts,
                    "dead-lettered: its lease expired on each attempt"
                );
                Ok(true)
            }
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(unavailable("UpdateItem updates", e)),
        }
    }

    /// A copy of a dead letter for the DLQ, which operators and the DLQ alarm watch. The item is
    /// the dead letter; a copy that cannot be sent is logged. The copy holds no typed secret
    /// (the DLQ keeps it for 14 days): its body is redacted here whatever the caller passed.
    async fn send_to_dlq(&self, body: &str, group: Option<&str>, id: i64) {
        let dedup = format!("{id}.dead.{}", uuid::Uuid::new_v4().simple());
        let sent = self
            .send(
                &self.settings().dlq_url.clone(),
                redacted_message_body(body),
                Some(group.unwrap_or("botline-dead")),
                Some(dedup),
                0,
            )
            .await;
        if let Err(e) = sent {
            tracing::error!(update_id = id, error = %e, "dead letter not copied to the DLQ");
        }
    }

    /// On a standard queue, once an update of a chat is finished: sends a copy of the chat's
    /// next queued update at once, instead of leaving it to come back when its hold ends (up to
    /// [`MAX_HOLD_SECONDS`]). A FIFO queue delivers the group's next message by itself.
    pub(crate) async fn wake_next(&self, order_key: &str, finished: i64) {
        if self.fifo() {
            return;
        }
        if let Err(e) = self.try_wake_next(order_key, finished).await {
            tracing::warn!(error = %e, "could not wake the chat's next update; it comes back when its hold ends");
        }
    }

    async fn try_wake_next(&self, order_key: &str, finished: i64) -> Result<(), BackendError> {
        let condition = "#pendingKey = :key";
        let projection = "#updateId, #state, #notBefore";
        let page = self
            .dynamodb()
            .query()
            .table_name(&self.tables().updates)
            .index_name(PENDING_INDEX)
            .key_condition_expression(condition)
            .projection_expression(projection)
            .set_expression_attribute_names(names([condition, projection]))
            .set_expression_attribute_values(values([(":key", s(order_key))]))
            .limit(3)
            .send()
            .await
            .map_err(|e| unavailable("Query updates PendingIndex", e))?;
        let what = "an index entry of updates";
        let Some(next) = page
            .items()
            .iter()
            .find(|item| opt_n::<i64>(item, "updateId", &what).ok().flatten() != Some(finished))
        else {
            return Ok(());
        };
        let not_before: i64 = opt_n(next, "notBefore", &what)?.unwrap_or(0);
        if get_s(next, "state") != Some(QUEUED) || not_before > clock::now_ms() {
            // Leased, or waiting out a backoff: its own message comes back in time.
            return Ok(());
        }
        let wake = Wake {
            v: 1,
            wake: req_n(next, "updateId", &what)?,
            order_key: order_key.to_owned(),
        };
        let body = serde_json::to_string(&wake).unwrap_or_default();
        self.send(&self.settings().queue_url.clone(), body, None, None, 0)
            .await
    }

    /// Deletes the DLQ's copies of these updates: best effort (a standard queue may not show
    /// every message to one receive; a FIFO DLQ shows a group's messages one batch at a time).
    async fn purge_dlq_copies(&self, ids: &HashSet<i64>) {
        if ids.is_empty() {
            return;
        }
        let dlq = self.settings().dlq_url.clone();
        let mut held = Vec::new();
        for _ in 0..20 {
            let received = self
                .sqs()
                .receive_message()
                .queue_url(&dlq)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .visibility_timeout(20)
                .send()
                .await;
            let messages = match received {
                Ok(received) => received.messages.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(error = %describe("ReceiveMessage DLQ", &e), "could not look for the DLQ's copies of redriven updates");
                    break;
                }
            };
            if messages.is_empty() {
                break;
            }
            for message in messages {
                let Some(handle) = message.receipt_handle.clone() else {
                    continue;
                };
                let ours = message
                    .body()
                    .and_then(Envelope::decode)
                    .is_some_and(|e| ids.contains(&e.update_id));
                if ours {
                    let deleted = self
                        .sqs()
                        .delete_message()
                        .queue_url(&dlq)
                        .receipt_handle(handle)
                        .send()
                        .await;
                    if let Err(e) = deleted {
                        tracing::warn!(error = %describe("DeleteMessage DLQ", &e), "could not delete a redriven update's DLQ copy");
                    }
                } else {
                    held.push(handle);
                }
            }
        }
        for handle in held {
            let released = self
                .sqs()
                .change_message_visibility()
                .queue_url(&dlq)
                .receipt_handle(handle)
                .visibility_timeout(0)
                .send()
                .await;
            if let Err(e) = released {
                tracing::debug!(error = %describe("ChangeMessageVisibility DLQ", &e), "a DLQ message stays hidden until its visibility timeout");
            }
        }
    }

    /// Puts a dead letter back on the queue: false if it is not (or no longer) dead. The message
    /// and the queued item hold the body without typed secrets, even when the dead letter was
    /// written by a build that did not redact dead letters.
    async fn redrive_one(&self, row: &UpdateRow, now: i64) -> Result<bool, BackendError> {
        let envelope = row.envelope()?;
        let redacted = botline_core::redact_typed_secrets(&envelope.raw);
        let envelope = match &redacted {
            Some(raw) => Envelope {
                raw: raw.clone(),
                ..envelope
            },
            None => envelope,
        };
        // The message first: a spare copy is dropped by the claim, but a queued item without a
        // message would hold up its chat.
        let dedup = format!("{}.redrive.{}", row.id, uuid::Uuid::new_v4().simple());
        self.send(
            &self.settings().queue_url.clone(),
            envelope.encode(),
            row.group.as_deref().or(Some(&row.order_key)),
            Some(dedup),
            0,
        )
        .await?;
        let update = if redacted.is_some() {
            "SET #state = :queued, #attempts = :zero, #pendingKey = #orderKey, \
             #expiresAt = :expires, #raw = :raw \
             REMOVE #deadAt, #notBefore, #receipt, #leaseUntil, #leaseMessageId"
        } else {
            "SET #state = :queued, #attempts = :zero, #pendingKey = #orderKey, \
             #expiresAt = :expires REMOVE #deadAt, #notBefore, #receipt, #leaseUntil, #leaseMessageId"
        };
        let condition = "#state = :dead";
        let redriven = self
            .dynamodb()
            .update_item()
            .table_name(&self.tables().updates)
            .set_key(Some(key("updateId", n(row.id))))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names([update, condition]))
            .set_expression_attribute_values(with_raw(
                values([
                    (":queued", s(QUEUED)),
                    (":dead", s(DEAD)),
                    (":zero", n(0)),
                    (":expires", n(self.expires_at(now))),
                ]),
                redacted.as_deref(),
            ))
            .send()
            .await;
        match redriven {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(unavailable("UpdateItem updates", e)),
        }
    }

    /// Every dead item, oldest first.
    async fn dead_rows(&self) -> Result<Vec<UpdateRow>, BackendError> {
        let filter = "#state = :dead";
        let mut items = self
            .dynamodb()
            .scan()
            .table_name(&self.tables().updates)
            .filter_expression(filter)
            .set_expression_attribute_names(names([filter]))
            .set_expression_attribute_values(values([(":dead", s(DEAD))]))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut rows = Vec::new();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| unavailable("Scan updates", e))?;
            rows.push(UpdateRow::from_item(&item)?);
        }
        rows.sort_by_key(|row| (row.dead_at.unwrap_or_default(), row.id));
        Ok(rows)
    }

    /// Finishes the lease named by `receipt`: state done. Ok(false) if the lease was lost.
    async fn finish(&self, id: i64, receipt: &str, now: i64) -> Result<bool, BackendError> {
        let update = "SET #state = :done, #doneAt = :now \
                      REMOVE #pendingKey, #receipt, #leaseUntil, #leaseMessageId, #notBefore, #raw";
        let condition = "#state = :leased AND #receipt = :receipt";
        let done = self
            .dynamodb()
            .update_item()
            .table_name(&self.tables().updates)
            .set_key(Some(key("updateId", n(id))))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names([update, condition]))
            .set_expression_attribute_values(values([
                (":done", s(DONE)),
                (":leased", s(LEASED)),
                (":receipt", s(Receipt::lease_of(receipt))),
                (":now", n(now)),
            ]))
            .send()
            .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(unavailable("UpdateItem updates", e)),
        }
    }
}

#[async_trait]
impl Queue for AwsBackend {
    /// Dedupe by a consistent read of the update's item; then the message; then the item
    /// (see the crate docs for why in this order).
    async fn enqueue(&self, update: &InboundUpdate) -> Result<Enqueued, BackendError> {
        let now = clock::now_ms();
        let projection = "#updateId, #expiresAt";
        let seen = self
            .dynamodb()
            .get_item()
            .table_name(&self.tables().updates)
            .set_key(Some(key("updateId", n(update.id.0))))
            .consistent_read(true)
            .projection_expression(projection)
            .set_expression_attribute_names(names([projection]))
            .send()
            .await
            .map_err(|e| unavailable("GetItem updates", e))?;
        if let Some(item) = seen.item.filter(|item| !item.is_empty()) {
            let expires_at: Option<i64> = opt_n(&item, "expiresAt", &update.id)?;
            // An id past its window that TTL has not deleted yet is forgotten all the same.
            if expires_at.is_none_or(|expires_at| expires_at >= now / 1000) {
                return Ok(Enqueued::Duplicate);
            }
        }
        let queued = QueuedUpdate::new(update.clone(), uuid::Uuid::now_v7().to_string(), now);
        let envelope = Envelope {
            v: 1,
            update_id: update.id.0,
            entry_id: queued.entry_id.clone(),
            order_key: update.order_key.to_string(),
            kind: update.kind.as_str().to_owned(),
            received_at_ms: now,
            group: self.group_of(&queued),
            raw: update.raw.clone(),
        };
        self.send(
            &self.settings().queue_url.clone(),
            envelope.encode(),
            envelope.group.as_deref(),
            Some(update.id.0.to_string()),
            0,
        )
        .await?;
        // Durable now. The item is the dedupe mark and the queue state; a claim writes it if
        // this does not (crash, error).
        let condition = "attribute_not_exists(#updateId) OR #expiresAt < :now";
        let put = self
            .dynamodb()
            .put_item()
            .table_name(&self.tables().updates)
            .set_item(Some(self.new_update_item(&envelope, now)))
            .condition_expression(condition)
            .set_expression_attribute_names(names([condition]))
            .set_expression_attribute_values(values([(":now", n(now / 1000))]))
            .send()
            .await;
        match put {
            Ok(_) => {}
            // A concurrent enqueue of the same id, or a claim of this message, wrote it.
            Err(e) if is_condition_failed(&e) => {}
            Err(e) => tracing::warn!(
                update_id = update.id.0,
                error = %describe("PutItem updates", &e),
                "update queued without its dedupe mark; the worker writes it"
            ),
        }
        Ok(Enqueued::New)
    }

    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        let mut deliveries = Vec::new();
        let mut first_error = None;
        let started = Instant::now();
        // Once something is leased, spend at most half a lease (and 5 s) looking for more, so
        // that what was leased first is still well within its lease when the worker gets it.
        let budget = (self.config().lease / 2).min(Duration::from_secs(5));
        let mut polls = 0;
        while deliveries.len() < max && polls < max + MAX_ROUNDS {
            let wait = if polls == 0 {
                self.settings().receive_wait
            } else {
                Duration::ZERO
            };
            if !deliveries.is_empty() && started.elapsed() > budget {
                break;
            }
            // FIFO: one message per receive, so that a batch never holds a group's later
            // messages behind its head (they would have to be re-sent to the group's tail).
            let want = if self.fifo() {
                1
            } else {
                (max - deliveries.len()).min(10)
            };
            let messages = match self.receive_messages(want, wait).await {
                Ok(messages) => messages,
                Err(e) if deliveries.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "stopped receiving");
                    break;
                }
            };
            polls += 1;
            if messages.is_empty() {
                break;
            }
            let claimed = self.claim(messages).await;
            let leased_none = claimed.deliveries.is_empty();
            deliveries.extend(claimed.deliveries);
            for (message_id, e) in claimed.failed {
                tracing::warn!(%message_id, error = %e, "could not claim a message; it comes back after its visibility timeout");
                first_error.get_or_insert(e);
            }
            if leased_none && !deliveries.is_empty() && !self.fifo() {
                // A batch of nothing but held-back or stale messages: what is in hand goes to
                // the worker now.
                break;
            }
        }
        match first_error {
            Some(e) if deliveries.is_empty() => Err(e),
            _ => Ok(deliveries),
        }
    }

    /// The item's `leaseUntil` moves on by the lease (in whole seconds, as SQS counts), under
    /// the lease's own receipt; then the message is hidden as long. Should hiding it fail, the
    /// message shows early and the claim step holds it back until the lease ends.
    async fn extend(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let id = delivery.update.update_id;
        let lease_ms = i64::try_from(self.config().lease.as_millis()).unwrap_or(i64::MAX);
        let hidden = whole_seconds(lease_ms).max(1);
        let update = "SET #leaseUntil = :until";
        let condition = "#state = :leased AND #receipt = :receipt";
        let extended = self
            .dynamodb()
            .update_item()
            .table_name(&self.tables().updates)
            .set_key(Some(key("updateId", n(id.0))))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names([update, condition]))
            .set_expression_attribute_values(values([
                (":leased", s(LEASED)),
                (":receipt", s(Receipt::lease_of(&delivery.receipt))),
                (
                    ":until",
                    n(clock::now_ms().saturating_add(i64::from(hidden) * 1000)),
                ),
            ]))
            .send()
            .await;
        match extended {
            Ok(_) => {}
            Err(e) if is_condition_failed(&e) => return Err(BackendError::LeaseLost(id)),
            Err(e) => return Err(unavailable("UpdateItem updates", e)),
        }
        if let Some(receipt) = Receipt::parse(&delivery.receipt) {
            self.change_visibility(&receipt.receipt_handle, hidden)
                .await;
        }
        Ok(())
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let id = delivery.update.update_id;
        if !self
            .finish(id.0, &delivery.receipt, clock::now_ms())
            .await?
        {
            return match self.get_update(id.0).await? {
                Some(row) if row.state == DONE => Ok(()),
                _ => Err(BackendError::LeaseLost(id)),
            };
        }
        if let Some(receipt) = Receipt::parse(&delivery.receipt) {
            self.delete_quietly(&receipt.receipt_handle).await;
        }
        self.wake_next(&delivery.update.order_key.to_string(), id.0)
            .await;
        Ok(())
    }

    async fn fail_after(
        &self,
        delivery: &Delivery,
        reason: &str,
        wait: Duration,
    ) -> Result<Failed, BackendError> {
        let id = delivery.update.update_id;
        let retry = self.config().retry;
        let now = clock::now_ms();
        let reason = stored_reason(reason);
        let receipt = Receipt::parse(&delivery.receipt);
        let dead = delivery.attempt >= retry.max_attempts;
        // A dead letter outlives its attempts: its item keeps the body without typed secrets
        // (the delivery's body is the item's, or its message's when the item had none).
        let redacted = dead
            .then(|| botline_core::redact_typed_secrets(&delivery.update.raw))
            .flatten();
        let (update, after) = if dead {
            (dead_update_expression(redacted.is_some()), Duration::ZERO)
        } else {
            (
                "SET #state = :queued, #lastError = :error, #notBefore = :notBefore \
                 REMOVE #receipt, #leaseUntil, #leaseMessageId",
                retry.backoff(delivery.attempt).max(wait),
            )
        };
        let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        let condition = "#state = :leased AND #receipt = :receipt AND #attempts = :attempt";
        let failed = self
            .dynamodb()
            .update_item()
            .table_name(&self.tables().updates)
            .set_key(Some(key("updateId", n(id.0))))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names([update, condition]))
            .set_expression_attribute_values(if dead {
                with_raw(
                    values([
                        (":dead", s(DEAD)),
                        (":error", s(&reason)),
                        (":now", n(now)),
                        (":leased", s(LEASED)),
                        (":receipt", s(Receipt::lease_of(&delivery.receipt))),
                        (":attempt", n(delivery.attempt)),
                    ]),
                    redacted.as_deref(),
                )
            } else {
                values([
                    (":queued", s(QUEUED)),
                    (":error", s(&reason)),
                    (":notBefore", n(now.saturating_add(after_ms))),
                    (":leased", s(LEASED)),
                    (":receipt", s(Receipt::lease_of(&delivery.receipt))),
                    (":attempt", n(delivery.attempt)),
                ])
            })
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        let item = match failed {
            Ok(output) => output.attributes.unwrap_or_default(),
            Err(e) if is_condition_failed(&e) => return Err(BackendError::LeaseLost(id)),
            Err(e) => return Err(unavailable("UpdateItem updates", e)),
        };
        if !dead {
            if let Some(receipt) = receipt {
                // Back after the backoff; a FIFO group waits for it meanwhile.
                self.change_visibility(&receipt.receipt_handle, whole_seconds(after_ms))
                    .await;
            }
            return Ok(Failed::Retrying { after });
        }
        tracing::warn!(
            update_id = id.0,
            attempts = delivery.attempt,
            "dead-lettered"
        );
        // From the item as written, its body redacted (and `send_to_dlq` redacts whatever it
        // sends).
        let body = UpdateRow::from_item(&item)
            .and_then(|row| row.envelope())
            .map(|e| e.encode())
            .unwrap_or_else(|_| String::new());
        let group = get_s(&item, "messageGroup").map(str::to_owned);
        if !body.is_empty() {
            self.send_to_dlq(&body, group.as_deref(), id.0).await;
        }
        if let Some(receipt) = receipt {
            self.delete_quietly(&receipt.receipt_handle).await;
        }
        self.wake_next(&delivery.update.order_key.to_string(), id.0)
            .await;
        Ok(Failed::DeadLettered)
    }

    /// One consistent scan of `updates` (a small projection), counted here. The oldest pending
    /// update is read from the same items' `receivedAt` (SQS's `ApproximateAgeOfOldestMessage`
    /// is a CloudWatch metric, not a queue attribute `GetQueueAttributes` returns).
    async fn stats(&self) -> Result<QueueStats, BackendError> {
        let now = clock::now_ms();
        let projection = "#state, #leaseUntil, #receivedAt";
        let mut items = self
            .dynamodb()
            .scan()
            .table_name(&self.tables().updates)
            .projection_expression(projection)
            .set_expression_attribute_names(names([projection]))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send();
        let mut stats = QueueStats::default();
        while let Some(item) = items.next().await {
            let item = item.map_err(|e| unavailable("Scan updates", e))?;
            let lease_until: i64 = opt_n(&item, "leaseUntil", &"an update")?.unwrap_or(0);
            let state = get_s(&item, "state");
            match state {
                Some(QUEUED) => stats.pending += 1,
                Some(LEASED) if lease_until > now => stats.in_flight += 1,
                Some(LEASED) => stats.pending += 1,
                Some(DONE) => stats.done += 1,
                Some(DEAD) => stats.dead += 1,
                _ => {}
            }
            if matches!(state, Some(QUEUED | LEASED)) {
                let received: Option<i64> = opt_n(&item, "receivedAt", &"an update")?;
                stats.oldest_pending_ms = match (stats.oldest_pending_ms, received) {
                    (Some(oldest), Some(received)) => Some(oldest.min(received)),
                    (oldest, received) => oldest.or(received),
                };
            }
        }
        Ok(stats)
    }

    /// `GetQueueAttributes` on the main queue.
    async fn ping(&self) -> Result<(), BackendError> {
        self.sqs()
            .get_queue_attributes()
            .queue_url(&self.settings().queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| unavailable("GetQueueAttributes", e))?;
        Ok(())
    }

    /// Both queues, the seven tables and their indexes ([`crate::check_schema`]), or what
    /// [`AwsBackend::checking`] narrowed it to.
    async fn check_schema(&self) -> Result<(), BackendError> {
        crate::check_schema_for(self.clients(), self.settings(), self.schema_needs()).await
    }
}

#[async_trait]
impl DeadLetters for AwsBackend {
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.dead_rows()
            .await?
            .into_iter()
            .take(limit)
            .map(|row| dead_letter(&row))
            .collect()
    }

    async fn show(&self, id: UpdateId) -> Result<Option<DeadLetter>, BackendError> {
        match self.get_update(id.0).await? {
            Some(row) if row.state == DEAD => dead_letter(&row).map(Some),
            _ => Ok(None),
        }
    }

    async fn redrive(&self, id: UpdateId) -> Result<bool, BackendError> {
        let Some(row) = self.get_update(id.0).await?.filter(|row| row.state == DEAD) else {
            return Ok(false);
        };
        let redriven = self.redrive_one(&row, clock::now_ms()).await?;
        if redriven {
            self.purge_dlq_copies(&HashSet::from([id.0])).await;
        }
        Ok(redriven)
    }

    async fn redrive_all(&self) -> Result<u64, BackendError> {
        let now = clock::now_ms();
        let mut redriven = HashSet::new();
        for row in self.dead_rows().await? {
            if self.redrive_one(&row, now).await? {
                redriven.insert(row.id);
            }
        }
        self.purge_dlq_copies(&redriven).await;
        Ok(redriven.len() as u64)
    }
}

/// A dead item as `list` and `show` answer it: never with a typed secret, even from a dead
/// letter a build before dead-letter redaction wrote (its item keeps the token until it is
/// redriven).
fn dead_letter(row: &UpdateRow) -> Result<DeadLetter, BackendError> {
    let mut update = row.queued_update(None)?;
    if let Some(raw) = botline_core::redact_typed_secrets(&update.raw) {
        update.raw = raw;
    }
    Ok(DeadLetter {
        update,
        attempts: row.attempts,
        last_error: row.last_error.clone(),
        dead_at_ms: row.dead_at.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_any_body() {
        let envelope = Envelope {
            v: 1,
            update_id: 5_000_000_001,
            entry_id: "e".into(),
            order_key: "chat:-100".into(),
            kind: "message".into(),
            received_at_ms: 1,
            group: Some("chat:-100".into()),
            raw: "{\"t\":\"\u{FFFE}\u{FFFF} \u{1F600} \\u0000\"}".into(),
        };
        let body = envelope.encode();
        assert!(body.chars().all(sqs_allows), "{body}");
        assert_eq!(Envelope::decode(&body), Some(envelope));
        assert_eq!(Envelope::decode("{\"hello\":1}"), None);
    }

    #[test]
    fn dlq_bodies_keep_no_typed_token() {
        let update = |text: &str| {
            serde_json::json!({
                "update_id": 5,
                "message": {"message_id": 1, "date": 1, "chat": {"id": 7, "type": "private"}, "text": text},
            })
            .to_string()
        };
        let envelope = |raw: String| Envelope {
            v: 1,
            update_id: 5,
            entry_id: "e".into(),
            order_key: "chat:7".into(),
            kind: "message".into(),
            received_at_ms: 1,
            group: None,
            raw,
        };
        let secret = envelope(update("/register alice s3cr3t-T0ken")).encode();
        let copy = redacted_message_body(&secret);
        assert!(!copy.contains("s3cr3t"), "{copy}");
        let copy = Envelope::decode(&copy).expect("still an envelope");
        assert_eq!(copy.update_id, 5);
        assert!(
            copy.raw.contains("/register alice [redacted]"),
            "{}",
            copy.raw
        );

        let plain = envelope(update("hello")).encode();
        assert_eq!(redacted_message_body(&plain), plain, "nothing to redact");
        let wake = "{\"v\":1,\"wake\":5,\"orderKey\":\"chat:7\"}";
        assert_eq!(redacted_message_body(wake), wake);
        let bare = update("/register alice s3cr3t-T0ken");
        assert!(!redacted_message_body(&bare).contains("s3cr3t"));
    }

    #[test]
    fn receipts_carry_lease_and_message() {
        let receipt = Receipt {
            lease: "abc".into(),
            message_id: "m-1".into(),
            receipt_handle: "AQEB+x/y==".into(),
        };
        let text = receipt.to_string();
        assert_eq!(Receipt::parse(&text), Some(receipt));
        assert_eq!(Receipt::lease_of(&text), "abc");
        assert_eq!(Receipt::parse("abc"), None);
    }
}
