//! The contracts every backend implements: small traits, each one capability (as apalis splits
//! `Backend`, `TaskSink`, `Ack`).
//!
//! - [`Queue`]: make an update durable once (dedupe by `update_id`), hand it out under a lease,
//!   take it back as done or failed. At least once; one chat at a time in `update_id` order.
//! - [`DeadLetters`]: what failed [`RetryPolicy::max_attempts`] times, to list, show and redrive.
//! - [`Store`]: write the records of one update together with the mark that it is done, so a
//!   retried update changes nothing; and read them back.
//! - [`Sessions`]: conversation state with a time to live.

use crate::ids::UpdateId;
#[cfg(doc)]
use crate::records::SessionChange;
use crate::records::{
    EventRecord, MessageRecord, OutboxMessage, Records, SessionRecord, UserRecord,
};
use crate::update::{InboundUpdate, OrderKey, UpdateKind};
use async_trait::async_trait;
use std::time::Duration;

/// Why a backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend cannot be reached or cannot commit now (disk full, read-only, locked,
    /// network): the caller answers 503 or retries later. The text is for logs, not clients.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The lease on a delivery expired and the update was handed out again.
    #[error("the lease on update {0} was lost")]
    LeaseLost(UpdateId),
    /// Stored data that cannot be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A table, index, queue or migration this build needs is missing: nothing works until it
    /// is created ([`Queue::check_schema`]).
    #[error(transparent)]
    Unprovisioned(Unprovisioned),
}

/// What a backend lacks of the schema this build needs, every missing thing named, and the
/// command that creates them:
///
/// ```text
/// the AWS backend is not provisioned: table botline-updates has no index PendingIndex; table
/// botline-outbox is missing; run `botline provision --backend aws`
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {backend} backend is not provisioned: {}; run `{fix}`", .missing.join("; "))]
pub struct Unprovisioned {
    /// The backend, as the message names it: `AWS`, `Postgres`.
    pub backend: &'static str,
    /// One phrase per missing thing (`table botline-outbox is missing`), in a stable order.
    pub missing: Vec<String>,
    /// The command that creates what is missing.
    pub fix: &'static str,
}

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Deliveries before an update is dead-lettered (a lease that expires counts as one).
    pub max_attempts: u32,
    /// Wait after the first failure; each further failure doubles it.
    pub backoff_base: Duration,
    /// The longest wait between two attempts.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `failed_attempts + 1`, after `failed_attempts` failures (≥ 1).
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let doublings = failed_attempts.saturating_sub(1).min(31);
        self.backoff_base
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// How a queue hands out and retries updates, and how long it remembers ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// How long a delivery is held by its worker before it is handed out again.
    pub lease: Duration,
    pub retry: RetryPolicy,
    /// How long a seen `update_id` is remembered for dedupe. Telegram redelivers for up to 24 h.
    pub dedupe_window: Duration,
}

impl QueueConfig {
    /// The shortest dedupe window Botline accepts: twice Telegram's redelivery horizon.
    pub const MIN_DEDUPE_WINDOW: Duration = Duration::from_secs(48 * 3600);
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            dedupe_window: Duration::from_secs(72 * 3600),
        }
    }
}

/// An update as the queue holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedUpdate {
    /// The queue's own id for this entry, stable across deliveries (the event id).
    pub entry_id: String,
    pub update_id: UpdateId,
    pub kind: UpdateKind,
    pub order_key: OrderKey,
    /// The body as Telegram sent it.
    pub raw: String,
    /// When the receiver made it durable, unix milliseconds.
    pub received_at_ms: i64,
}

impl QueuedUpdate {
    pub fn new(update: InboundUpdate, entry_id: String, received_at_ms: i64) -> Self {
        Self {
            entry_id,
            update_id: update.id,
            kind: update.kind,
            order_key: update.order_key,
            raw: update.raw,
            received_at_ms,
        }
    }
}

/// One delivery of a queued update to a worker, under a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub update: QueuedUpdate,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// Names this lease; acks and failures with a stale receipt are refused.
    pub receipt: String,
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The update is durable and will be processed.
    New,
    /// The `update_id` was seen within the dedupe window: nothing was written.
    Duplicate,
}

/// What a failure report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// The update will be handed out again after the wait.
    Retrying { after: Duration },
    /// The update ran out of attempts and is now a dead letter.
    DeadLettered,
}

/// What applying an update's records did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Written,
    /// The update had already been applied: nothing was written.
    AlreadyDone,
}

/// The counts an operator watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting to be handed out (including those waiting out a backoff).
    pub pending: u64,
    /// Handed out, lease not expired.
    pub in_flight: u64,
    /// Dead letters.
    pub dead: u64,
    /// Done and still remembered for dedupe.
    pub done: u64,
    /// When the oldest update not yet done nor dead (waiting or in flight) was received, unix
    /// milliseconds; `None` when there is none. Counts in-flight updates as SQS's
    /// `ApproximateAgeOfOldestMessage` does, so a stuck attempt ages too.
    pub oldest_pending_ms: Option<i64>,
}

/// A dead-lettered update and why it died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub update: QueuedUpdate,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub dead_at_ms: i64,
}

/// Which messages to read back: in (`chatId`, `messageId`) order, except on DynamoDB without
/// a `chat_id`, where a scan returns each chat's messages together in `messageId` order and the
/// chats in the table's own order. Either way, passing the last message of a page as `after`
/// reads the next page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageQuery {
    pub chat_id: Option<String>,
    /// Only messages sent at or after this time, unix milliseconds.
    pub since_ms: Option<i64>,
    /// Resume after this (`chatId`, `messageId`), for paging.
    pub after: Option<(String, i64)>,
    pub limit: usize,
}

/// Records brought in from an export (`botline import`): written as they are, each only where
/// its key is not stored yet, except a user already stored, who keeps the earlier `createdAt`
/// and takes the other fields of whichever copy has the later `updatedAt`. Importing the same
/// records twice writes nothing the second time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Import {
    pub messages: Vec<MessageRecord>,
    pub users: Vec<UserRecord>,
    pub events: Vec<EventRecord>,
}

impl Import {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.users.is_empty() && self.events.is_empty()
    }

    pub fn len(&self) -> usize {
        self.messages.len() + self.users.len() + self.events.len()
    }
}

/// What an [`Import`] wrote: records whose key was not stored before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub messages: u64,
    pub users: u64,
    pub events: u64,
}

impl std::ops::AddAssign for Imported {
    fn add_assign(&mut self, other: Self) {
        self.messages += other.messages;
        self.users += other.users;
        self.events += other.events;
    }
}

/// The longest failure reason a backend keeps, in characters (a failed attempt's
/// [`Queue::fail`], a failed call's [`Outbox::call_failed`]): enough for any error Botline or a
/// handler writes, and a bound on what one failure can store.
pub const MAX_REASON_CHARS: usize = 2000;

/// `reason` as a backend stores it: its first [`MAX_REASON_CHARS`] characters.
pub fn stored_reason(reason: &str) -> String {
    reason.chars().take(MAX_REASON_CHARS).collect()
}

/// Which of two copies of a user [`Import`] keeps: the earlier `createdAt`, and the other
/// fields of the copy updated last (the stored one on a tie).
pub fn merge_user(stored: &UserRecord, imported: &UserRecord) -> UserRecord {
    let mut merged = if imported.updated_at > stored.updated_at {
        imported.clone()
    } else {
        stored.clone()
    };
    merged.created_at = std::cmp::min(&stored.created_at, &imported.created_at).clone();
    merged
}

/// Durable, deduplicated, leased delivery of updates.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Makes the update durable unless its id was seen within the dedupe window. Returns only
    /// once the update would survive a crash.
    async fn enqueue(&self, update: &InboundUpdate) -> Result<Enqueued, BackendError>;

    /// Leases up to `max` updates, each the oldest unfinished update of its order key, so that
    /// one chat's updates go out one at a time in `update_id` order.
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, BackendError>;

    /// Holds a delivery's lease for another [`QueueConfig::lease`] from now, while its worker is
    /// still at it (a slow handler). [`BackendError::LeaseLost`] once the update was handed out
    /// again or finished: the worker then stops, as its ack would be refused.
    async fn extend(&self, delivery: &Delivery) -> Result<(), BackendError>;

    /// Marks a delivered update done.
    async fn ack(&self, delivery: &Delivery) -> Result<(), BackendError>;

    /// Reports a failed attempt: the update is retried after a backoff, or dead-lettered.
    async fn fail(&self, delivery: &Delivery, reason: &str) -> Result<Failed, BackendError> {
        self.fail_after(delivery, reason, Duration::ZERO).await
    }

    /// [`Queue::fail`], waiting at least `wait` before the next attempt when it is longer than
    /// the backoff (a handler that was told to retry later).
    async fn fail_after(
        &self,
        delivery: &Delivery,
        reason: &str,
        wait: Duration,
    ) -> Result<Failed, BackendError>;

    async fn stats(&self) -> Result<QueueStats, BackendError>;

    /// Whether the queue can take an update now (for health checks).
    async fn ping(&self) -> Result<(), BackendError>;

    /// Whether everything this build needs of the backend exists: its tables, their indexes,
    /// its queues, its migrations. [`BackendError::Unprovisioned`] names each thing missing;
    /// [`BackendError::Unavailable`] when the backend could not be asked. `serve`, `poll` and
    /// the Lambda functions call it at start and again (throttled) for `/health`, so a worker
    /// that cannot work is never hidden behind a 200. Backends that create their schema
    /// themselves (the embedded one) keep the default.
    async fn check_schema(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Periodic upkeep: forget ids older than the dedupe window, purge what has expired.
    /// Backends whose service does this itself (DynamoDB TTL, SQS retention) keep the default.
    async fn housekeeping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Called once when the process stops, after the last write: a backend with a local log
    /// (SQLite's WAL) folds it into its files, so overwritten data (a redacted token) is gone.
    async fn close(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Updates that ran out of attempts.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Oldest first, at most `limit`.
    async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError>;

    async fn show(&self, id: UpdateId) -> Result<Option<DeadLetter>, BackendError>;

    /// Puts one dead letter back on the queue with fresh attempts. False if there is none.
    async fn redrive(&self, id: UpdateId) -> Result<bool, BackendError>;

    /// Puts every dead letter back; returns how many.
    async fn redrive_all(&self) -> Result<u64, BackendError>;
}

/// The records updates become.
#[async_trait]
pub trait Store: Send + Sync {
    /// Writes an update's records and marks it done, in one transaction. A second call for the
    /// same update writes nothing. The first record of a (`chatId`, `messageId`) wins; a user's
    /// `createdAt` is kept and the rest of the user moves to the latest values. The same
    /// transaction redeems the token of [`Records::redemption`] (the store knows a token, not
    /// the command that redeems it), writes the call that answers it before the other outbox
    /// calls, and replaces the queue's copy of the body with its
    /// redacted form.
    ///
    /// The same transaction puts or deletes the sessions of [`Records::sessions`]: of several
    /// changes to one session in one update the last one wins ([`Records::session_writes`]); a
    /// [`SessionChange::Put`] keeps the `createdAt` of a live session it replaces. Since an
    /// update found done writes nothing, a session change is never applied twice, and a retried
    /// update never writes its session over the one a later update of the same chat wrote; an
    /// attempt that fails before its apply commits leaves no session change behind.
    ///
    /// Where queue and store share a database the mark is the queue's own, so this also
    /// acknowledges the delivery and a later [`Queue::ack`] changes nothing.
    async fn apply(&self, delivery: &Delivery, records: &Records) -> Result<Applied, BackendError>;

    /// Whether [`Store::apply`] also acknowledges the delivery (queue and store share one
    /// database), so that the worker need not call [`Queue::ack`] after it.
    fn apply_acknowledges(&self) -> bool {
        false
    }

    async fn messages(&self, query: &MessageQuery) -> Result<Vec<MessageRecord>, BackendError>;

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, BackendError>;

    /// A user's events at or after `since` (ISO 8601), oldest first.
    async fn events_by_user(
        &self,
        user_id: &str,
        since: &str,
    ) -> Result<Vec<EventRecord>, BackendError>;

    /// Up to `limit` events after the one keyed `after`, in an order the backend keeps while
    /// paging (`eventId` order where it can sort; DynamoDB's scan order): an export reads every
    /// event by passing the last one's `eventId` until a page comes back short.
    async fn events(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, BackendError>;

    /// Up to `limit` users after the one keyed `after`, paged as [`Store::events`].
    async fn users(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, BackendError>;

    /// Writes records read from an export ([`Import`]), in one transaction where the backend
    /// has them (on DynamoDB, one conditional write per record: a failure part way leaves the
    /// records before it, and importing again completes it).
    async fn import(&self, records: &Import) -> Result<Imported, BackendError>;
}

/// Conversation state with a time to live.
#[async_trait]
pub trait Sessions: Send + Sync {
    /// Creates or replaces a session, as given: `createdAt` included (unlike a
    /// [`SessionChange::Put`] written by [`Store::apply`], which keeps a live session's).
    async fn put_session(&self, session: &SessionRecord) -> Result<(), BackendError>;

    /// The session, unless it does not exist or has expired.
    async fn session(&self, session_id: &str) -> Result<Option<SessionRecord>, BackendError>;

    /// A user's live sessions.
    async fn sessions_by_user(&self, user_id: &str) -> Result<Vec<SessionRecord>, BackendError>;

    async fn delete_session(&self, session_id: &str) -> Result<bool, BackendError>;

    /// Deletes sessions expired at `now_ms`; returns how many.
    async fn purge_expired_sessions(&self, now_ms: i64) -> Result<u64, BackendError>;
}

/// A Bot API call in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub call: OutboxMessage,
    pub update_id: UpdateId,
    /// 1 for the first try.
    pub attempt: u32,
    pub created_at_ms: i64,
}

/// How the outbox stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: u64,
    pub done: u64,
    pub failed: u64,
}

/// The Bot API calls that processing decided on, made once each by the sender.
///
/// A call is handed out under a lease, like an update; within a chat, one call at a time in the
/// order they were written. A crash after Telegram accepted a call and before [`call_done`]
/// committed hands it out again: that one call may be made twice, nothing else.
///
/// [`call_done`]: Outbox::call_done
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Leases up to `max` calls that are due, the oldest pending of each chat.
    async fn due_calls(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OutboxEntry>, BackendError>;

    /// Records that Telegram accepted the call (with the id of the message it sent, if any).
    async fn call_done(
        &self,
        outbox_id: &str,
        telegram_message_id: Option<i64>,
    ) -> Result<(), BackendError>;

    /// Records a failed try: retried after `retry_after`, or, with `None`, failed for good.
    async fn call_failed(
        &self,
        outbox_id: &str,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Result<(), BackendError>;

    async fn outbox_stats(&self) -> Result<OutboxStats, BackendError>;
}

/// Single-use registration tokens, issued by the operator and redeemed by an update's handler
/// ([`Records::redemption`]; Botline's built-in `/register`).
#[async_trait]
pub trait RegistrationTokens: Send + Sync {
    /// Keeps a token's digest for `username` until `expires_at_ms`.
    async fn issue_token(
        &self,
        username: &str,
        token_digest: &str,
        expires_at_ms: i64,
    ) -> Result<(), BackendError>;
}

/// Everything a full backend offers.
pub trait Backend:
    Queue + DeadLetters + Store + Sessions + Outbox + RegistrationTokens + std::fmt::Debug
{
}

impl<T> Backend for T where
    T: Queue + DeadLetters + Store + Sessions + Outbox + RegistrationTokens + std::fmt::Debug
{
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_reason_keeps_its_first_characters_not_bytes() {
        assert_eq!(stored_reason("timed out"), "timed out");
        let long = "é".repeat(MAX_REASON_CHARS + 5);
        let stored = stored_reason(&long);
        assert_eq!(stored.chars().count(), MAX_REASON_CHARS);
        assert_eq!(stored.len(), 2 * MAX_REASON_CHARS, "cut between characters");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let policy = RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(350));
        assert_eq!(policy.backoff(40), Duration::from_millis(350));
    }
}
