//! Botline's core: the domain types, the parsing of Telegram updates, the records an update
//! becomes, and the contracts every backend implements.
//!
//! Backends and entry points depend on this crate, never the other way round. It holds no I/O.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`ids`] | 64-bit newtype ids (`UpdateId`, `ChatId`, `UserId`, `MessageId`) |
//! | [`update`] | validation of a webhook body into an [`InboundUpdate`]: `update_id`, kind, order key |
//! | [`records`] | the message, user, event and session records, and [`build_records`] |
//! | [`redact`] | secrets users type (`/register` tokens), found and replaced: [`redact_typed_secrets`] |
//! | [`backend`] | the [`Queue`], [`DeadLetters`], [`Store`] and [`Sessions`] contracts |
//! | [`clock`] | unix-millisecond time and its ISO 8601 text |
//! | [`limits`] | token buckets shared by every instance ([`SharedLimiter`]) and Telegram's limits as buckets |
//! | `testsuite` | (feature `testsuite`) the behaviours every backend must pass: [`backend_suite!`] |
//!
//! # Features
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `testsuite` | the shared backend test suite, for the test targets of backend crates |

pub mod backend;
pub mod clock;
pub mod commands;
pub mod ids;
pub mod limits;
pub mod records;
pub mod redact;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod update;

pub use backend::{
    Applied, Backend, BackendError, DeadLetter, DeadLetters, Delivery, Enqueued, Failed, Import,
    Imported, MessageQuery, Outbox, OutboxEntry, OutboxStats, Queue, QueueConfig, QueueStats,
    QueuedUpdate, RegistrationTokens, RetryPolicy, Sessions, Store, Unprovisioned,
};
pub use ids::{ChatId, MessageId, UpdateId, UserId};
pub use limits::{Bucket, SharedLimiter, Taken};
pub use records::{
    EventRecord, Handling, MessageRecord, OutboxAction, OutboxMessage, Records, Redemption,
    SessionChange, SessionRecord, UserRecord, build_records,
};
pub use redact::redact_typed_secrets;
pub use update::{InboundUpdate, InvalidUpdate, OrderKey, UpdateKind};
