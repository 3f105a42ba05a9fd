//! Rates shared by every instance of a bot: the contract of a store that keeps token buckets
//! where all instances see them (Redis, a DynamoDB table), and the buckets Botline keeps.
//!
//! A bucket is a GCRA (generic cell rate algorithm) cell, the algorithm of governor, which the
//! per-process limiters use: one token every [`Bucket::period`], at most [`Bucket::burst`] at
//! once. [`SharedLimiter::take`] takes one token from each of several buckets in one step, or
//! from none of them, so a call to a group that has to wait for the group's bucket does not
//! spend the chat's or the bot's token meanwhile.
//!
//! The buckets for Telegram's limits ([`telegram_buckets`]) are spaced a little wider than the
//! published limits ([`HEADROOM`]): a token is taken where the store's clock says, and the call
//! reaches Telegram a few milliseconds later, by a delay that differs from call to call; a
//! message a second apart by the store's clock must not arrive 999 ms apart.

use crate::BackendError;
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// The counter of failed requests to the shared store; its `limiter` label says whose
/// (`telegram`: the sender's Bot API limits, `edge`: the address limiter).
pub const SHARED_LIMITER_ERRORS_METRIC: &str = "botline_shared_limiter_errors_total";

/// How much wider than Telegram's published limits the shared buckets space calls (5 %: on a
/// busy machine a call's way from the bucket to Telegram varies by tens of milliseconds).
pub const HEADROOM_PERCENT: u32 = 5;
/// The same, as a factor on periods.
pub const HEADROOM: f64 = 1.0 + HEADROOM_PERCENT as f64 / 100.0;

/// One token bucket: its key in the shared store, and its rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// The key, unique per bot and per what is counted (`telegram:chat:42`); the store adds its
    /// own prefix.
    pub key: String,
    /// One token per period.
    pub period: Duration,
    /// Tokens that may be taken at once (≥ 1).
    pub burst: u32,
}

impl Bucket {
    /// `burst` tokens at once, refilled at `per_second`.
    pub fn per_second(key: impl Into<String>, per_second: u32, burst: u32) -> Self {
        Self {
            key: key.into(),
            period: Duration::from_secs(1) / per_second.max(1),
            burst: burst.max(1),
        }
    }
}

/// What a [`SharedLimiter`] answers when the tokens are not there yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// One token was taken from every bucket.
    Yes,
    /// None was taken; ask again after this long.
    NotBefore(Duration),
}

/// A store of token buckets that every instance of the bot shares.
#[async_trait]
pub trait SharedLimiter: Send + Sync + fmt::Debug {
    /// Takes one token from each of `buckets`, all at once or none. An error means the store
    /// cannot be asked now ([`BackendError::Unavailable`]); the caller decides whether to wait
    /// or to fall back.
    async fn take(&self, buckets: &[Bucket]) -> Result<Taken, BackendError>;
}

/// The buckets a Bot API call to `chat_id` takes, after Telegram's limits: `per_second`
/// calls overall, one message a second in a chat, twenty a minute in a group (one every 3 s,
/// which never exceeds twenty in any minute); each spaced by [`HEADROOM`]. Only messages count
/// against the chat and group limits.
pub fn telegram_buckets(per_second: u32, chat_id: i64, sends_message: bool) -> Vec<Bucket> {
    let widen = |period: Duration| period.mul_f64(HEADROOM);
    let mut buckets = vec![Bucket {
        key: "telegram:all".to_owned(),
        period: widen(Duration::from_secs(1) / per_second.max(1)),
        burst: 1,
    }];
    if sends_message {
        buckets.push(Bucket {
            key: format!("telegram:chat:{chat_id}"),
            period: widen(Duration::from_secs(1)),
            burst: 1,
        });
        if chat_id < 0 {
            buckets.push(Bucket {
                key: format!("telegram:group:{chat_id}"),
                period: Duration::from_secs(3),
                burst: 1,
            });
        }
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_to_a_group_takes_three_buckets_and_a_deletion_one() {
        let keys = |buckets: Vec<Bucket>| buckets.into_iter().map(|b| b.key).collect::<Vec<_>>();
        assert_eq!(
            keys(telegram_buckets(30, -100, true)),
            ["telegram:all", "telegram:chat:-100", "telegram:group:-100"]
        );
        assert_eq!(
            keys(telegram_buckets(30, 7, true)),
            ["telegram:all", "telegram:chat:7"]
        );
        assert_eq!(keys(telegram_buckets(30, -100, false)), ["telegram:all"]);
    }

    #[test]
    fn thirty_one_calls_span_more_than_a_second() {
        let all = &telegram_buckets(30, 1, false)[0];
        assert!(all.period * 30 >= Duration::from_millis(1049), "{all:?}");
        let chat = &telegram_buckets(30, 1, true)[1];
        assert!(chat.period >= Duration::from_millis(1049), "{chat:?}");
    }
}
