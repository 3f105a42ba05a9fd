//! Rate limits every instance shares, kept in Redis (`BOTLINE_REDIS_URL`).
//!
//! Telegram counts a bot's calls, not a process's: two `serve` instances that each keep 30
//! calls a second send 60. With a Redis URL, the sender's Bot API limits and the edge's address
//! limiter take their tokens from buckets in Redis ([`RedisLimiter`]) instead of from this
//! process's memory.
//!
//! Each bucket is a GCRA cell: one key holding the bucket's theoretical arrival time, in
//! microseconds of Redis's own clock (`TIME`), so the instances' clocks do not have to agree.
//! One Lua script takes a token from every bucket a call needs, or from none, atomically; the
//! keys expire once their bucket is full again, so idle chats leave nothing behind. The keys
//! are `botline:{<bot id>}:<bucket>`: the hash tag keeps one bot's keys in one slot of a Redis
//! Cluster (a script may only touch one), and bots sharing a Redis keep apart.
//!
//! When Redis cannot be asked (down, unreachable, slower than [`TIMEOUT`]), the sender waits
//! and asks again rather than send past the limits, and the edge falls back to each process's
//! own buckets; both are logged and counted in `botline_shared_limiter_errors_total`.
//!
//! No crate keeps a GCRA on a plain Redis (redis-cell is a server module, which managed Redis
//! services do not load); the script is the algorithm governor implements, in twenty lines.

use async_trait::async_trait;
use botline_core::BackendError;
use botline_core::limits::{Bucket, SharedLimiter, Taken};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::time::Duration;

/// The longest a request to Redis may take before the limiter counts Redis as away.
pub const TIMEOUT: Duration = Duration::from_millis(500);

/// GCRA over several buckets at once. KEYS: the buckets; ARGV: each bucket's period and burst,
/// in that order, the period in microseconds. Returns 0 when a token was taken from every
/// bucket, else the microseconds to wait before asking again (and nothing was taken).
const TAKE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = 0
local next = {}
for i, key in ipairs(KEYS) do
  local period = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local allowed_at = tat - (burst - 1) * period
  if allowed_at - now > wait then wait = allowed_at - now end
  next[i] = tat + period
end
if wait > 0 then return math.ceil(wait) end
for i, key in ipairs(KEYS) do
  local ttl = math.ceil((next[i] - now) / 1000) + 1000
  redis.call('SET', key, string.format('%.0f', next[i]), 'PX', ttl)
end
return 0
";

/// Token buckets in Redis, shared by every instance that names the same Redis and bot.
#[derive(Clone)]
pub struct RedisLimiter {
    connection: ConnectionManager,
    script: redis::Script,
    prefix: String,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: it is not kept, and not printed.
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A Redis URL that cannot be used; the message names the problem, never the URL.
#[derive(Debug, thiserror::Error)]
#[error("BOTLINE_REDIS_URL: {0}")]
pub struct InvalidRedisUrl(String);

impl RedisLimiter {
    /// A limiter on the Redis at `url` (`redis://` or `rediss://`), for the bot whose numeric
    /// id is `bot_id` (the part of its token before the colon; `None` without a token). Connects
    /// on first use and reconnects by itself; nothing is sent before.
    pub fn connect_lazy(url: &SecretString, bot_id: Option<&str>) -> Result<Self, InvalidRedisUrl> {
        let url = url.expose_secret();
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("redis" | "rediss")) {
            return Err(InvalidRedisUrl(
                "must start with redis:// or rediss:// (TLS)".into(),
            ));
        }
        // rediss:// uses rustls, with the provider the rest of the process uses.
        botline_postgres::install_tls_provider();
        let client = redis::Client::open(url)
            .map_err(|e| InvalidRedisUrl(format!("does not parse ({:?})", e.kind())))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            // One quick attempt per request: a caller that finds Redis away decides itself
            // whether to wait or to fall back.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| InvalidRedisUrl(format!("{:?}", e.kind())))?;
        let bot = bot_id.unwrap_or("default");
        Ok(Self {
            connection,
            script: redis::Script::new(TAKE),
            prefix: format!("botline:{{{bot}}}:"),
        })
    }

    /// Whether Redis answers now (for `/health` and the start-up log).
    pub async fn ping(&self) -> Result<(), BackendError> {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(_) => Err(BackendError::Unavailable(format!(
                "redis did not answer within {TIMEOUT:?}"
            ))),
        }
    }
}

#[async_trait]
impl SharedLimiter for RedisLimiter {
    async fn take(&self, buckets: &[Bucket]) -> Result<Taken, BackendError> {
        let mut invocation = self.script.prepare_invoke();
        for bucket in buckets {
            let period_us = u64::try_from(bucket.period.as_micros()).unwrap_or(u64::MAX);
            invocation
                .key(format!("{}{}", self.prefix, bucket.key))
                .arg(period_us.max(1))
                .arg(bucket.burst.max(1));
        }
        let mut connection = self.connection.clone();
        let asked = invocation.invoke_async::<u64>(&mut connection);
        match tokio::time::timeout(TIMEOUT, asked).await {
            Ok(Ok(0)) => Ok(Taken::Yes),
            Ok(Ok(wait_us)) => Ok(Taken::NotBefore(Duration::from_micros(wait_us))),
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(_) => Err(BackendError::Unavailable(format!(
                "redis did not answer within {TIMEOUT:?}"
            ))),
        }
    }
}

/// Redis's error, without anything of the URL: its kind, and the server's or the socket's
/// words (neither holds the password).
fn unavailable(error: &redis::RedisError) -> BackendError {
    BackendError::Unavailable(format!("redis: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    #[test]
    fn a_url_that_is_not_redis_is_refused_without_being_repeated() {
        for bad in [
            "http://user:hunter2@cache:6379",
            "hunter2",
            "redis://:hunter2@[::1",
        ] {
            let error = RedisLimiter::connect_lazy(&url(bad), None).unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with("BOTLINE_REDIS_URL: "), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_and_its_password_stays_out_of_the_error() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let limiter = RedisLimiter::connect_lazy(
            &url(&format!("redis://:hunter2@127.0.0.1:{port}/0")),
            Some("42"),
        )
        .unwrap();
        assert!(!format!("{limiter:?}").contains("hunter2"));
        let bucket = Bucket::per_second("edge:addr:192.0.2.1", 1, 1);
        let error = limiter.take(&[bucket]).await.unwrap_err();
        assert!(matches!(error, BackendError::Unavailable(_)), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(limiter.ping().await.is_err());
    }
}
