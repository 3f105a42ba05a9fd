//! Botline's AWS backend: the queue on SQS (standard or FIFO, with a dead-letter queue), the
//! queue's state and the records on DynamoDB, secrets from Secrets Manager or SSM.
//!
//! [`AwsBackend`] implements every capability of [`botline_core::Backend`] with the semantics of
//! the embedded and Postgres backends and passes the same shared suite
//! (`botline_core::backend_suite!`), on a FIFO and on a standard queue, against moto's server
//! mode (with a lease and backoffs in whole seconds, as SQS counts them). The same code serves
//! `botline serve --backend aws` ([`Queue::receive`]) and the worker Lambda, which hands the
//! messages of its SQS event to [`AwsBackend::claim`].
//!
//! ```no_run
//! use botline_aws::{AwsBackend, AwsClients, AwsSettings, ClientOptions};
//! use botline_core::{Queue, QueueConfig};
//!
//! # async fn run() -> Result<(), botline_aws::AwsError> {
//! let settings = AwsSettings::from_env()?; // BOTLINE_QUEUE_URL, BOTLINE_DLQ_URL, BOTLINE_TABLE_PREFIX
//! let clients = AwsClients::load(&ClientOptions::default()).await;
//! let backend = AwsBackend::new(clients, settings, QueueConfig::default());
//! backend.ping().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Configuration
//!
//! | variable | what |
//! | --- | --- |
//! | `BOTLINE_QUEUE_URL` | the main queue (required); a URL ending in `.fifo` is a FIFO queue |
//! | `BOTLINE_DLQ_URL` | its dead-letter queue (required), FIFO exactly when the main queue is |
//! | `BOTLINE_TABLE_PREFIX` | prepended to the table names below (required, may be empty) |
//! | `BOTLINE_FIFO_GROUP` | `chat` (default) or `user`: a FIFO message's `MessageGroupId` |
//! | `BOTLINE_SQS_WAIT_SECONDS` | 0–20 (default 0): how long [`Queue::receive`] long-polls |
//! | `AWS_REGION`, `AWS_ENDPOINT_URL`, credentials | as the AWS SDK reads them (region default eu-north-1) |
//!
//! The SDK clients ([`ClientOptions`]) give each operation 5 s, each attempt 2 s, a connection
//! 1 s, with the SDK's standard retries (throttling, 5xx, network errors): a slow or absent
//! service makes a call fail with [`BackendError::Unavailable`] (the receiver answers 503), never
//! hang. Errors name the operation and AWS's error code and message, never a value Botline sent.
//!
//! Secrets: see [`secrets`] (`BOTLINE_<NAME>`, `_FILE`, `_ID` for Secrets Manager, `_PARAM` for
//! SSM, cached with a refresh interval).
//!
//! # Queues
//!
//! | queue | attributes ([`provision`]) |
//! | --- | --- |
//! | main | retention 4 days; visibility timeout 30 s (the CDK app sets 6 min for Lambda: either works, the claim sets each leased message's own); redrive policy to the DLQ with `maxReceiveCount` 3 ([`MAX_RECEIVE_COUNT`]; a deployment may set more, never less); FIFO: content-based deduplication off |
//! | DLQ | retention 14 days; receives Botline's copies of dead letters (for the DLQ-depth alarm; their bodies redacted, see [Dead letters and typed secrets](#dead-letters-and-typed-secrets)), and what SQS's redrive moves (only messages the claim step itself kept failing on, as they were sent) |
//!
//! A message's body is JSON: an update, `{"v":1,"updateId":…,"entryId":"…","orderKey":"chat:-100…","kind":"message","receivedAtMs":…,"group":"chat:…","raw":"<the body as Telegram sent it>"}`
//! (`group` only on a FIFO queue), or a wake-up, `{"v":1,"wake":<updateId>,"orderKey":"…"}`
//! (standard queue, below). FIFO messages carry `MessageGroupId` = the order key (`chat:<id>`,
//! or `user:<id>` with [`FifoGroup::User`]) and `MessageDeduplicationId` = the update id when
//! enqueued (a fresh id for every copy the backend sends later).
//!
//! [`check_schema`] asks whether both queues and the seven tables below with their indexes
//! exist (`GetQueueUrl`, `DescribeTable`), and names each that does not, with
//! [`PROVISION_COMMAND`]: `botline serve`, `botline poll` and both Lambda functions call it at
//! start (through [`Queue::check_schema`]) and, throttled, for `/health`.
//!
//! # Tables
//!
//! All on demand (`PAY_PER_REQUEST`); names are `<prefix><table>`. Attribute types: S string,
//! N number, BOOL boolean. Times are unix milliseconds unless said otherwise.
//!
//! | table | key | indexes | TTL | other attributes |
//! | --- | --- | --- | --- | --- |
//! | `messages` | `chatId` S, `messageId` N | | | `userId` N, `userName` S, `text` S, `timestamp` N, `raw` S, `createdAt` S (ISO 8601) |
//! | `users` | `userId` S (`telegram_<id>`) | | | `telegramId` N, `username`, `firstName`, `lastName`, `languageCode` S (absent when Telegram sent none), `createdAt`, `updatedAt` S |
//! | `events` | `eventId` S | `UserIdIndex`: `userId` S + `timestamp` S, projection ALL | | `eventType` S, `payload` S (the kind's JSON), `processed` BOOL, `updateId` N |
//! | `sessions` | `sessionId` S | `UserIdIndex`: `userId` S, projection ALL | `expiresAt` (unix s) | `chatId` N, `state` S, `data` S (JSON object), `createdAt`, `updatedAt` S |
//! | `updates` | `updateId` N | `PendingIndex`: `pendingKey` S + `updateId` N, projection INCLUDE `state`, `attempts`, `leaseUntil`, `leaseMessageId`, `notBefore` | `expiresAt` (unix s) | see below |
//! | `outbox` | `outboxId` S | `PendingIndex`: `pendingShard` S + `chatSeq` S, projection INCLUDE `chatId`, `dueAt` | `expiresAt` (unix s, set when a call is finished: 30 days on) | see below |
//! | `tokens` | `tokenDigest` S (SHA-256 hex of the token) | | | `username` S, `createdAt` N, `expiresAtMs` N; once redeemed `usedAt` N, `usedBy` N (Telegram user id), `usedChatId` N, `registeredAt` S |
//!
//! **`updates`** is the dedupe set and the queue's state, one item per update id:
//! `state` S (`queued`, `leased`, `done`, `dead`), `entryId` S, `orderKey` S, `kind` S,
//! `receivedAt` N, `messageGroup` S (FIFO), `attempts` N, `raw` S (the body: kept while the
//! update is unfinished; kept when it is dead, redacted of typed secrets in the write that makes
//! it dead; removed when it is done; either way no typed secret stays behind),
//! while leased `receipt` S (the lease id), `leaseUntil` N, `leaseMessageId` S (the SQS message
//! that carries the lease); after a failure `notBefore` N and `lastError` S; when dead `deadAt`
//! N. `pendingKey` S (= `orderKey`) is present exactly while the update is unfinished (queued or
//! leased), so `PendingIndex` holds each chat's unfinished updates in `update_id` order and
//! nothing else. `expiresAt` is the enqueue time plus the dedupe window; a dead letter has none
//! (it stays until it is redriven), a redrive sets it anew.
//!
//! **`outbox`**: `updateId` N, `chatId` N, `action` S (JSON, as [`OutboxAction`] serializes),
//! `state` S (`pending`, `done`, `failed`), `attempts` N, `dueAt` N (when it may be handed out:
//! later while leased or waiting out a `retry_after`), `createdAt` N, `seq` S, `chatSeq` S
//! (`<chatId>#<seq>`), `finishedAt` N, `telegramMessageId` N, `lastError` S. `seq` is the update
//! id (20 digits) and the call's place among that update's calls: one chat's updates are applied
//! one at a time in `update_id` order, so this is the order the calls were written in. A delayed
//! call (a reminder) has `chatSeq` `<chatId>#~<time>.<seq>` and `dueAt` and `createdAt` at its
//! time: it sorts after the chat's calls due at once, and holds up none of them while it waits.
//! `pendingShard` S is `"0"` exactly while the call is pending: `PendingIndex` lists the pending
//! calls of every chat, by chat and in order.
//!
//! # Enqueue
//!
//! 1. A consistent `GetItem` of the update's item: present (and within its dedupe window) →
//!    [`Enqueued::Duplicate`], nothing written.
//! 2. `SendMessage`. The call returns only after SQS accepted the message: the update is durable.
//! 3. `PutItem` of the item (`queued`, `attempts` 0, `pendingKey`, `expiresAt`), conditional on
//!    there being none (or an expired one).
//!
//! In this order a failed enqueue never leaves a mark that would make Telegram's retry look like
//! a duplicate: the mark is written only once the message is on the queue. A crash between 2 and
//! 3 leaves a message without an item, which the claim step treats as a queued update (it writes
//! the item). Two concurrent enqueues of one id may both send (on FIFO, SQS deduplicates them by
//! the update id); the conditional writes below make the second copy a no-op. A `PutItem` that
//! fails after the send is logged and the enqueue still answers [`Enqueued::New`].
//!
//! # The claim step
//!
//! SQS delivers messages; DynamoDB decides. [`AwsBackend::claim`] takes received messages (from
//! [`Queue::receive`], which receives them itself, or from a Lambda's SQS event) and decides for
//! each, one chat's messages after another, different chats concurrently:
//!
//! - **Dropped** (deleted) when its update is done or dead already, or when another message
//!   holds the update's live lease (a duplicate copy: the lease's own message comes back if the
//!   lease expires).
//! - **Held back** when its update is not the head of its chat — a lower unfinished update id
//!   exists, or another update of the chat is leased with a live lease — or waits out a backoff,
//!   or is the leased message back early.
//! - **Leased** when it is the head: a conditional `UpdateItem` (queued, backoff over; or leased
//!   with an expired lease; `attempts` as read) sets `leased`, a fresh `receipt`, `leaseUntil`,
//!   `leaseMessageId` and `attempts + 1`. The message stays hidden for the lease: when
//!   [`Queue::receive`] asked SQS to hide it for the lease (rounded up to whole seconds) and the
//!   claim came soon after, the lease simply ends when SQS shows the message again; otherwise
//!   `ChangeMessageVisibility` hides it for the lease, rounded up. [`Delivery::receipt`] holds
//!   the lease id, the message id and the SQS receipt handle ([`Receipt`]).
//! - **Dead-lettered** when it is the head and its last lease (attempt [`RetryPolicy::max_attempts`])
//!   expired: the conditional `UpdateItem` to `dead` also writes the body redacted (from the
//!   item, else from the message), a redacted copy goes to the DLQ, and the message is deleted.
//!
//! Attempts are counted in the item, not by SQS's `ApproximateReceiveCount`: holding an update
//! back is not an attempt. The receive count matters for one thing: a message SQS has delivered
//! [`MAX_RECEIVE_COUNT`] times would, were it leased and its lease expired, go to SQS's DLQ on its
//! next receive, before Botline could count the expiry. So such a message is never leased: it is
//! replaced by a fresh copy (receive count 0), which is. SQS's own redrive thus only ever takes
//! a message the claim step itself kept failing on.
//!
//! **Holding back.** On a FIFO queue the held message is sent again to the tail of its group
//! (a new deduplication id) and deleted: hidden, it would lock its whole group, and the group's
//! head may be behind it (updates enqueued out of order), so only moving it lets the group reach
//! the head; this gives `update_id` order even when updates arrive out of order. On a standard
//! queue the message is hidden with `ChangeMessageVisibility` while it has receives left (its next
//! receive is then at most the [`MAX_RECEIVE_COUNT`]-th, which SQS delivers), else sent again
//! with a delay and deleted. The hold is 5 s per unfinished update before it (at most 60 s), or
//! until the backoff or live lease ends; it is only the fallback: on a standard queue, when an
//! update is finished (acked, applied, dead), the backend sends a wake-up for the chat's next
//! queued update, so a chat's backlog moves as fast as it is processed. A FIFO group delivers its
//! next message by itself.
//!
//! [`Queue::receive`] receives FIFO messages one per `ReceiveMessage` and claims each at once (so
//! a batch never holds a group's later messages behind its head, which would have to be re-sent
//! behind everything else), standard ones up to 10 at a time; it keeps going until it has
//! `max`, a receive finds nothing, or, once it holds some, half the lease has passed (or,
//! on a standard queue, a batch gave nothing new).
//!
//! **A Lambda worker** converts the records of its SQS event into [`QueueMessage`]s
//! (`ApproximateReceiveCount` from the record's attributes, `visible_until_ms: None`) and calls
//! [`AwsBackend::claim`]. Dropped messages are deleted already. Report as batch item failures
//! the [`Claimed::held`] messages (on a standard queue a held message is only hidden, and
//! Lambda would delete it), the [`Claimed::failed`] ones, and the deliveries whose processing
//! failed, as `crates/botline-lambda` does.
//! When an event holds several messages of one FIFO group, claim them one at a time, each once the
//! one before it is finished: each is then its chat's head, and nothing is re-sent.
//!
//! # Finishing
//!
//! - [`Queue::ack`]: `UpdateItem` to `done` conditional on `leased` with this receipt (else
//!   [`BackendError::LeaseLost`], unless the update is done already), then `DeleteMessage`.
//! - [`Queue::fail`]: conditional on the receipt. Before the last attempt: back to `queued` with
//!   `notBefore` = now + [`RetryPolicy::backoff`], `lastError`, and the message hidden for the
//!   backoff rounded up to whole seconds (a FIFO group waits meanwhile); answers exactly
//!   [`Failed::Retrying`] with the policy's backoff. At the last: `dead` (`raw` kept, redacted
//!   in the same write; `attempts`, `lastError`, `deadAt` kept; `pendingKey` removed, so it does
//!   not block its chat), a copy to the DLQ, the message deleted.
//! - [`Store::apply`]: one `TransactWriteItems` (below), then `DeleteMessage`; so
//!   [`Store::apply_acknowledges`] is true.
//! - [`DeadLetters`]: `list` reads the `dead` items (a consistent `Scan`, oldest first), `show`
//!   one item (both redact what they read);
//!   `redrive` sends the body, redacted, to the main queue (a new deduplication id), sets the
//!   item back to `queued` with fresh attempts, its `pendingKey` and the redacted body, and
//!   deletes the DLQ's copies (receiving
//!   from the DLQ: best effort, as a standard DLQ may not show every message to one receive). The
//!   message goes first: a spare copy is dropped by the claim step, a queued item without a
//!   message would hold up its chat.
//! - [`Queue::stats`] is one consistent `Scan` of `updates` (a small projection): it reads the
//!   whole table, fine for an operator's command, not for a hot path. `ping` is
//!   `GetQueueAttributes`; `housekeeping` is DynamoDB's TTL.
//!
//! # Dead letters and typed secrets
//!
//! A dead letter outlives its attempts (its item until an operator redrives it, the DLQ's copy
//! for 14 days), so no copy of it that Botline writes keeps a secret a user typed (a `/register`
//! token, as [`botline_core::redact_typed_secrets`] finds them):
//!
//! - **the item**: the conditional `UpdateItem` that makes it `dead` (in [`Queue::fail`], and in
//!   the claim step when its last lease expired) writes `raw` redacted in the same write;
//! - **the DLQ's copy**: its envelope's body is redacted as it is sent, whichever path sends it
//!   (a message that is not Botline's goes to the DLQ as it is, redacted only when it is itself
//!   an update's body);
//! - **the main queue's message**: SQS cannot change a message; the one in hand is deleted;
//! - **a redrive** sends the redacted body and writes it to the queued item; `list` and `show`
//!   redact what they read, so a dead letter an older build wrote (its item still holding the
//!   token) is never shown with it, and its item loses the token when it is redriven (not
//!   before: nothing rewrites dead items meanwhile).
//!
//! Not redacted, because Botline never holds them when it dead-letters:
//!
//! - other copies of the update on the main queue (a held-back copy whose original could not be
//!   deleted, a concurrent enqueue's copy on a standard queue, the lease's own message when
//!   another copy brought the expired lease to light) keep the body as it was enqueued until
//!   the claim step receives them and, the update being dead, deletes them;
//! - **what SQS's own redrive moves**: a message received more than `maxReceiveCount` times
//!   without the claim step deciding on it (DynamoDB or SQS failing on every try, a worker that
//!   crashes or times out mid-claim, a dead update's spare copy whose deletion keeps failing)
//!   reaches the DLQ exactly as it was sent, token included, and stays there for the DLQ's
//!   retention. Botline does not see the move and cannot change the message. Such a message is
//!   no dead letter of Botline's (`dlq list` reads the items, not the DLQ): an operator deletes
//!   it from the DLQ (a redrive deletes the DLQ's messages of the update it redrives, best
//!   effort, this one among them).
//!
//! # Apply, and why each update is written once
//!
//! `apply` is one `TransactWriteItems`: the update's item to `done` (condition: not done yet;
//! its body removed), the message (condition: no message with its key: the first write wins),
//! the user (an upsert keeping `createdAt` with `if_not_exists`, the other fields following the
//! latest update), the event, the token's redemption (condition: issued to this username,
//! unused, unexpired), the outbox calls (condition: not written yet; ids from the records) and
//! the sessions the handler wrote ([`Records::sessions`](botline_core::Records), the last
//! change of each session): a put is an `UpdateItem` of every attribute, a delete a
//! `DeleteItem`. A put keeps the `createdAt` of a live session: it assumes the session is live
//! (condition: it exists and `expiresAt` is after now, in seconds; `createdAt` left as stored)
//! unless the try before found it was not, and then writes it whole (condition: no session, or
//! an expired one). When the update's own condition fails, it was applied before:
//! [`Applied::AlreadyDone`], nothing written. When only the message's, a call's, the token's or
//! a session's fails, the transaction is tried again without that message or call, with the
//! redemption answered by its refusal, or with the session assumed the other way: the conditions
//! are decided by the transaction that commits, so a token is redeemed once and answered
//! accordingly, and a session's `createdAt` is kept exactly when it was live.
//!
//! That is 4 items, one more for a token, and one per outbox call (a redemption's answer
//! included) and per session written. DynamoDB takes at most 100 items (and 4 MB) in one
//! transaction: an update whose effects need more is refused before anything is sent
//! ([`BackendError::Unavailable`], saying so; retried, it is refused again and dead-lettered),
//! never split over two transactions, which would break "all or nothing".
//!
//! The worker's role needs `dynamodb:UpdateItem` and `dynamodb:DeleteItem` on the `sessions`
//! table for the sessions `apply` writes (DynamoDB authorizes each item of a transaction by the
//! action of its kind, on its table).
//!
//! Exactly once, then: every record of an update commits in the transaction that marks it done,
//! and that transaction commits at most once per update; a retried, redelivered or concurrently
//! processed update finds it done and writes nothing; an outbox call is written once and sent at
//! least once (at most twice, when the sender crashes after Telegram accepted it). SQS delivering
//! a message twice, or a copy the backend sent, only ever reaches a claim that drops it or a
//! conditional write that fails.
//!
//! # Consistency and time
//!
//! Every decision is taken by a conditional write on the item, on DynamoDB's strongly
//! consistent base table. The indexes are eventually consistent on AWS (moto updates them at
//! once): an index that lags only makes the claim hold an update back a little longer or try a
//! lease whose condition then fails, except in one case — an update whose item was written
//! moments before (within the index's lag, typically milliseconds) may not yet be seen as
//! ahead of a later update of its chat, which could then go first. Telegram sends a chat's
//! updates one after another, waiting for each answer, so this needs a lag longer than a round
//! trip to Telegram. `sessions_by_user`, `events_by_user` and the outbox's hand-out read indexes
//! too, and so see a write of the last moments late.
//!
//! Leases, backoffs and the outbox's due times are this process's clock; SQS's visibility runs
//! on AWS's. A message SQS shows a little before the lease ends by our clock is held until it
//! does. Leases and backoffs are served in whole seconds (SQS's unit): the suite runs with a
//! 2 s lease and 1 s backoffs.
//!
//! # Limits
//!
//! - A DynamoDB item holds at most 400 KB: the update's body is stored in its `updates` item and
//!   its `messages` item, so an update larger than about 350 KB cannot be applied (it fails and is
//!   dead-lettered). SQS takes messages of 256 KiB (moto) to 1 MiB (AWS since 2025): keep the
//!   receiver's body limit below.
//! - `messages` without a chat scans the whole table and pages in memory: for exports of a
//!   modest table. `stats`, `list`, `outbox_stats` and `purge_expired_sessions` scan too.
//! - DynamoDB's TTL deletes expired items within days, not at once: the backend checks expiry
//!   itself where it matters (sessions, the dedupe window).
//! - The outbox's `PendingIndex` has one partition (`pendingShard` `"0"`): fine for the calls
//!   waiting at any moment of one bot; a shard number can be added when it is not.
//! - An update unfinished for longer than the dedupe window loses its item to TTL; its message
//!   brings it back (as a message without an item) with fresh attempts.
//!
//! # Testing
//!
//! ```text
//! scripts/moto.sh                # once: moto's server in target/moto-venv (pinned, from PyPI)
//! cargo test -p botline-aws      # one moto server per test binary, on a free local port
//! ```
//!
//! The tests start moto with `scripts/moto_server.py` in `target/moto-venv` (DynamoDB requests one
//! at a time, as DynamoDB applies conditional writes), or `$BOTLINE_MOTO_SERVER`, and fail,
//! saying to run `scripts/moto.sh`, when it is missing; each test makes its own queues and tables.
//! The shared suite runs twice, on a FIFO and on a standard queue (`tests/fifo_suite.rs`,
//! `tests/standard_suite.rs`), with a 2 s lease and 1 s backoffs; `tests/aws.rs` covers what is
//! particular to this backend, `tests/secrets.rs` the secrets.
//!
//! # What moto does differently
//!

//! The tests run against moto 5.2.5's server mode (`scripts/moto.sh`), which enforces FIFO
//! group locking across receives, per-message delays (and refuses them on FIFO queues),
//! visibility timeouts, the redrive policy on the receive after `maxReceiveCount`, conditional
//! writes, transactions with per-item cancellation reasons, and sparse indexes; the test
//! `moto_enforces_what_the_backend_relies_on` checks each. Where it differs from AWS, the backend
//! does not rely on it:
//!
//! - Its indexes are strongly consistent; DynamoDB's are not (see above).
//! - Its standard queues hand out messages oldest first and never twice; SQS's may reorder,
//!   deliver a message twice, and answer a short poll with nothing while messages wait (the
//!   claim step and the worker's polling cope with each, but the tests do not exercise them).
//! - Its long polls see a message that becomes visible only in steps of a second, and on a FIFO
//!   queue whose visible messages are all in locked groups they spin (a whole core) for the whole
//!   wait: the tests use no long polling (`receive_wait` 0).
//! - It does not expire items by TTL (the backend never relies on TTL having run).

pub mod invoke;
mod item;
mod limits;
mod outbox;
mod provision;
mod queue;
pub mod secrets;
mod settings;
mod store;

pub use limits::DynamoLimiter;
pub use provision::{
    PROVISION_COMMAND, Provisioned, SchemaNeeds, check_schema, check_schema_for, provision,
    provision_report,
};
pub use queue::{Claimed, MAX_RECEIVE_COUNT, QueueMessage, Receipt};
pub use settings::{AwsClients, AwsSettings, ClientOptions, FifoGroup};

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use botline_core::{BackendError, QueueConfig};

#[cfg(doc)]
use botline_core::{
    Applied, DeadLetters, Delivery, Enqueued, Failed, OutboxAction, Queue, RetryPolicy, Store,
};
use std::fmt;
use std::sync::Arc;

/// What can go wrong outside a backend call: settings, provisioning, secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AwsError {
    /// A required environment variable is not set.
    #[error("{0} is not set")]
    MissingSetting(&'static str),
    /// A setting that cannot be used.
    #[error("{name} is not valid: {reason}")]
    InvalidSetting { name: &'static str, reason: String },
    /// A call to AWS failed (or the data it returned cannot be used).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A secret could not be resolved. The text never holds the secret's value.
    #[error("secret {name}: {reason}")]
    Secret { name: String, reason: String },
}

/// The names of the backend's tables: `<prefix>messages`, … (see the crate docs for their keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub messages: String,
    pub users: String,
    pub events: String,
    pub sessions: String,
    pub updates: String,
    pub outbox: String,
    pub tokens: String,
}

impl Tables {
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            messages: format!("{prefix}messages"),
            users: format!("{prefix}users"),
            events: format!("{prefix}events"),
            sessions: format!("{prefix}sessions"),
            updates: format!("{prefix}updates"),
            outbox: format!("{prefix}outbox"),
            tokens: format!("{prefix}tokens"),
        }
    }
}

/// The AWS backend: the queue on SQS, the queue's state and the records on DynamoDB. Cheap to
/// clone; clones share the clients.
#[derive(Clone)]
pub struct AwsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    clients: AwsClients,
    settings: AwsSettings,
    config: QueueConfig,
    tables: Tables,
    schema_needs: SchemaNeeds,
}

impl fmt::Debug for AwsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsBackend")
            .field("settings", &self.inner.settings)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl AwsBackend {
    /// A backend on existing queues and tables (see [`provision`] to create them). No I/O.
    pub fn new(clients: AwsClients, settings: AwsSettings, config: QueueConfig) -> Self {
        let tables = Tables::with_prefix(&settings.table_prefix);
        Self {
            inner: Arc::new(Inner {
                clients,
                settings,
                config,
                tables,
                schema_needs: SchemaNeeds::Everything,
            }),
        }
    }

    /// The same backend, whose [`Queue::check_schema`](botline_core::Queue::check_schema) asks
    /// only about `needs` (the ingest function: [`SchemaNeeds::Ingest`]).
    pub fn checking(self, needs: SchemaNeeds) -> Self {
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                clients: inner.clients.clone(),
                settings: inner.settings.clone(),
                config: inner.config,
                tables: inner.tables.clone(),
                schema_needs: needs,
            }),
        }
    }

    pub(crate) fn schema_needs(&self) -> SchemaNeeds {
        self.inner.schema_needs
    }

    /// A backend configured from the environment: [`AwsSettings::from_env`] and the SDK's own
    /// variables (credentials, region, `AWS_ENDPOINT_URL`), with [`ClientOptions::default`].
    pub async fn from_env(config: QueueConfig) -> Result<Self, AwsError> {
        let settings = AwsSettings::from_env()?;
        let clients = AwsClients::load(&ClientOptions::default()).await;
        Ok(Self::new(clients, settings, config))
    }

    pub fn settings(&self) -> &AwsSettings {
        &self.inner.settings
    }

    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    pub fn clients(&self) -> &AwsClients {
        &self.inner.clients
    }

    pub(crate) fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    pub(crate) fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.inner.clients.sqs
    }

    pub(crate) fn dynamodb(&self) -> &aws_sdk_dynamodb::Client {
        &self.inner.clients.dynamodb
    }

    pub(crate) fn fifo(&self) -> bool {
        self.inner.settings.is_fifo()
    }
}

/// What an SDK error means to a caller: the service is away, slow, throttling or refusing, so
/// the call can be tried again later. The text names the operation and AWS's error code and
/// message, which never carry the values Botline sent.
pub(crate) fn unavailable<E, R>(operation: &str, error: SdkError<E, R>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    BackendError::Unavailable(describe(operation, &error))
}

pub(crate) fn describe<E, R>(operation: &str, error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match error {
        SdkError::TimeoutError(_) => {
            format!("{operation}: AWS did not answer within the operation timeout")
        }
        SdkError::DispatchFailure(failure) => {
            let why = if failure.is_timeout() {
                "timed out"
            } else if failure.is_io() {
                "a network error"
            } else {
                "a connection error"
            };
            format!("{operation}: the request could not be sent ({why})")
        }
        SdkError::ServiceError(_) => format!(
            "{operation}: {}: {}",
            error.code().unwrap_or("error"),
            error.message().unwrap_or("no message")
        ),
        SdkError::ResponseError(_) => {
            format!("{operation}: the response could not be read")
        }
        _ => format!("{operation}: the request could not be built"),
    }
}

/// Whether an SDK error is DynamoDB's answer that a condition did not hold.
pub(crate) fn is_condition_failed<E, R>(error: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    error.code() == Some("ConditionalCheckFailedException")
}
