//! Botline's edge: what stands between the open internet and the webhook and Mini App routes.
//!
//! - **Network allowlist** ([`EdgeConfig::allowlist`]): off by default; when on, only clients in
//!   the listed networks (by default Telegram's published webhook ranges) reach the inner
//!   service, everyone else gets 403 `{"error":"forbidden"}`.
//! - **Client address** ([`client`]): the socket peer (axum's `ConnectInfo<SocketAddr>`), or a
//!   [`ClientAddr`] request extension that an entry point such as the ingest Lambda inserts;
//!   behind operator-named trusted proxies, the first untrusted hop of `X-Forwarded-For` or
//!   RFC 7239 `Forwarded`, read right to left. From a trusted proxy, a forwarding header that
//!   does not parse, or a trusted hop that names no address (`unknown`, `_hidden`), gets 400
//!   `{"error":"bad forwarding header"}` ([`BadForwarding`]): the client is not known, and
//!   neither the client's own word nor the proxy's address stands in for it.
//! - **Rate limits**: a token bucket per client address on the guarded routes, opt-in like the
//!   allowlist (requests carrying the correct webhook secret are never throttled: limiting must
//!   not delay Telegram's own deliveries), and one per Telegram user on the Mini App auth route;
//!   429 with `Retry-After`.
//!   The keyed state is bounded ([`RateLimitConfig::max_keys`]) so a flood of distinct addresses
//!   cannot grow it without end.
//! - **Mini App initData** ([`validate_init_data`]): Telegram's HMAC check, freshness, strict
//!   parsing; optionally the Ed25519 third-party `signature` ([`validate_init_data_signature`]).
//!   [`webapp`] serves `POST /telegram/webapp/auth`, which trades valid initData for a
//!   short-lived HS256 session token ([`session`]).
//!
//! The allowlist and the address limiter are one tower [`Layer`](tower::Layer), [`EdgeLayer`],
//! configured by the plain, deserializable [`EdgeConfig`].
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `botline_edge_refused_total` | counter | `reason` | requests refused at the edge: `bad_forwarding` (400), `allowlist` (403) or `rate_limited` (429) |
//!
//! Secrets (bot token, webhook secret, session key) are held in types whose `Debug` prints
//! `[redacted]`, and no error or log line carries them.
//!
//! Errors: each fallible entry point has its own error enum ([`ConfigError`], [`InitDataError`],
//! [`SessionError`]) rather than one per crate, because their callers act on them differently
//! (a startup failure, a 400/401 answer, a 401 answer) and none can produce another's variants.

pub mod client;
pub mod config;
pub mod guard;
pub mod init_data;
mod limiter;
mod response;
pub use response::error as json_error;
pub mod secret;
pub mod session;
pub mod webapp;

pub use client::{BadForwarding, ClientAddr, ProxyHeader};
pub use config::{ConfigError, EdgeConfig, RateLimitConfig, WebAppConfig};
pub use guard::{EdgeGuard, EdgeLayer, EdgeService, Refusal};
pub use init_data::{
    InitData, InitDataError, TelegramEnvironment, WebAppChat, WebAppUser, validate_init_data,
    validate_init_data_signature,
};
pub use secret::Secret;
pub use session::{Session, SessionError, SessionKey, SessionToken, verify_session_token};
pub use webapp::WebAppAuth;

/// The name of the refusal counter; its `reason` label is `bad_forwarding`, `allowlist` or
/// `rate_limited` ([`Refusal::reason`]).
pub const REFUSED_METRIC: &str = "botline_edge_refused_total";

pub use botline_core::update::SECRET_HEADER;
