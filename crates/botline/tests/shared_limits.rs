//! Telegram's limits held by several instances together, through Redis (`BOTLINE_REDIS_URL`):
//! two `serve` instances on one Postgres reply to the same chats, and the Bot API stand-in,
//! enforcing Telegram's flood limits, records every call. Needs the local Postgres
//! (127.0.0.1:5432) and Redis (127.0.0.1:6379); fails without them.

mod common;

use botline_standin::{Call, Settings as StandInSettings, StandIn};
use common::{PgDb, Server, deliver, get, register, wait_until};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const REDIS: &str = "127.0.0.1:6379";

/// A bot token whose id no other test run uses, so that runs never share Redis keys.
fn fresh_token() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "9{}{:03}:AAshared-limits",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The two tests take turns: each runs four processes that time their calls, and on a small
/// machine two such runs at once would measure each other.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn redis_must_run() {
    assert!(
        TcpStream::connect(REDIS).is_ok(),
        "these tests need Redis on {REDIS} (redis-server)"
    );
}

fn standin(token: &str) -> StandIn {
    StandIn::start(StandInSettings {
        token: token.to_owned(),
        username: "limits_bot".into(),
        enforce_limits: true,
        ..StandInSettings::default()
    })
}

/// A `serve` instance on `db`, replying through `standin`, sharing limits through `redis`.
fn instance(db: &PgDb, standin: &StandIn, token: &str, redis: Option<&str>) -> Server {
    let (url, api) = (db.url(), standin.base_url());
    let mut env = vec![
        ("BOTLINE_BACKEND", "postgres"),
        ("BOTLINE_DATABASE_URL", url.as_str()),
        ("BOTLINE_TELEGRAM_API_URL", api.as_str()),
        ("BOTLINE_BOT_TOKEN", token),
        ("BOTLINE_BOT_USERNAME", "limits_bot"),
    ];
    if let Some(redis) = redis {
        env.push(("BOTLINE_REDIS_URL", redis));
    }
    Server::start(&env)
}

/// `/register` alone in `chats` private chats, `per_chat` times each, delivered to `servers`
/// in turn: each is answered with the command's usage, one reply per update.
fn deliver_commands(servers: &[&Server], chats: i64, per_chat: i64, first_id: i64) {
    for n in 0..per_chat {
        for chat in 0..chats {
            let id = first_id + n * chats + chat;
            let target = servers[(id as usize) % servers.len()];
            deliver(
                &target.url("/telegram/webhook"),
                None,
                &register(id, 50_000 + chat, "/register"),
                Duration::from_secs(30),
            );
        }
    }
}

fn sent(standin: &StandIn) -> Vec<Call> {
    standin.calls_of("sendMessage")
}

/// The most messages that arrived within any one second.
fn busiest_second(calls: &[Call]) -> usize {
    let mut at: Vec<Duration> = calls.iter().map(|c| c.at).collect();
    at.sort();
    (0..at.len())
        .map(|i| {
            at[i..]
                .iter()
                .take_while(|&&later| later - at[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// The shortest time between two messages to one chat.
fn closest_in_a_chat(calls: &[Call]) -> Option<Duration> {
    let mut by_chat: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    for call in calls {
        by_chat
            .entry(call.params["chat_id"].to_string())
            .or_default()
            .push(call.at);
    }
    by_chat
        .values_mut()
        .flat_map(|at| {
            at.sort();
            at.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>()
        })
        .min()
}

fn refused(calls: &[Call]) -> usize {
    calls.iter().filter(|c| c.status == Some(429)).count()
}

/// Every chat got exactly `per_chat` accepted replies.
fn assert_each_answered(calls: &[Call], chats: i64, per_chat: usize) {
    let mut by_chat: BTreeMap<i64, usize> = BTreeMap::new();
    for call in calls.iter().filter(|c| c.succeeded()) {
        let chat = call.params["chat_id"]
            .as_i64()
            .or_else(|| call.params["chat_id"].as_str()?.parse().ok())
            .expect("chat_id");
        *by_chat.entry(chat).or_default() += 1;
    }
    assert_eq!(by_chat.len() as i64, chats, "{by_chat:?}");
    assert!(
        by_chat.values().all(|&n| n == per_chat),
        "each update answered once: {by_chat:?}"
    );
}

#[test]
fn two_instances_sharing_redis_stay_within_telegrams_limits_and_without_it_they_do_not() {
    let _turn = one_at_a_time();
    redis_must_run();
    const CHATS: i64 = 100;
    const PER_CHAT: i64 = 2;
    let total = (CHATS * PER_CHAT) as usize;

    // With Redis: both instances take their tokens from the same buckets.
    let token = fresh_token();
    let telegram = standin(&token);
    let db = PgDb::new("botline_limits_shared");
    let redis = format!("redis://{REDIS}/0");
    let a = instance(&db, &telegram, &token, Some(&redis));
    let b = instance(&db, &telegram, &token, Some(&redis));
    deliver_commands(&[&a, &b], CHATS, PER_CHAT, 1);
    wait_until("every reply accepted", Duration::from_secs(120), || {
        sent(&telegram).iter().filter(|c| c.succeeded()).count() >= total
    });
    let calls = sent(&telegram);
    assert_each_answered(&calls, CHATS, PER_CHAT as usize);
    assert_eq!(refused(&calls), 0, "no 429 with shared limits");
    assert!(
        busiest_second(&calls) <= 30,
        "{} messages in one second",
        busiest_second(&calls)
    );
    let closest = closest_in_a_chat(&calls).expect("two messages per chat");
    assert!(closest >= Duration::from_secs(1), "{closest:?} in one chat");
    eprintln!(
        "with Redis: {} calls, busiest second {}, closest in a chat {closest:?}, 429s {}",
        calls.len(),
        busiest_second(&calls),
        refused(&calls)
    );
    // Both instances sent: the limits were shared, not one instance doing all the work.
    for server in [&a, &b] {
        let (_, metrics) = get(&server.url("/metrics"));
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("botline_telegram_calls_total") && l.contains("sent")),
            "{metrics}"
        );
    }
    drop((a, b));

    // Without: each instance keeps Telegram's limits alone, and together they break them.
    let token = fresh_token();
    let telegram = standin(&token);
    let db = PgDb::new("botline_limits_alone");
    let a = instance(&db, &telegram, &token, None);
    let b = instance(&db, &telegram, &token, None);
    deliver_commands(&[&a, &b], CHATS, PER_CHAT, 1);
    wait_until("every reply accepted", Duration::from_secs(120), || {
        sent(&telegram).iter().filter(|c| c.succeeded()).count() >= total
    });
    let calls = sent(&telegram);
    assert_each_answered(&calls, CHATS, PER_CHAT as usize);
    eprintln!(
        "without Redis: {} calls, busiest second {}, closest in a chat {:?}, 429s {}",
        calls.len(),
        busiest_second(&calls),
        closest_in_a_chat(&calls),
        refused(&calls)
    );
    assert!(
        refused(&calls) > 0,
        "two instances limiting alone were never refused (busiest second {})",
        busiest_second(&calls)
    );
}

/// A TCP forwarder to Redis that can be cut (every connection closed, new ones refused) and
/// restored.
struct Forwarder {
    port: u16,
    open: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Forwarder {
    fn start(to: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (on, live) = (Arc::clone(&open), Arc::clone(&streams));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !on.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                {
                    let mut live = live.lock().unwrap();
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self {
            port,
            open,
            streams,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// `botline_shared_limiter_errors_total{limiter="telegram"}` of a server.
fn limiter_errors(server: &Server) -> u64 {
    let (_, metrics) = get(&server.url("/metrics"));
    metrics
        .lines()
        .find(|l| l.starts_with("botline_shared_limiter_errors_total") && l.contains("telegram"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn while_redis_is_cut_nothing_goes_out_past_the_limits_and_nothing_is_lost() {
    let _turn = one_at_a_time();
    redis_must_run();
    const CHATS: i64 = 60;
    let token = fresh_token();
    let telegram = standin(&token);
    let db = PgDb::new("botline_limits_cut");
    let redis = Forwarder::start(REDIS);
    let a = instance(&db, &telegram, &token, Some(&redis.url()));
    let b = instance(&db, &telegram, &token, Some(&redis.url()));

    deliver_commands(&[&a, &b], CHATS, 1, 1);
    wait_until("the first replies", Duration::from_secs(60), || {
        sent(&telegram).len() >= 10
    });
    redis.cut();
    // Acknowledging does not need Redis: a second round is taken while it is away.
    deliver_commands(&[&a, &b], CHATS, 1, 1_000);
    wait_until(
        "the senders to find Redis away",
        Duration::from_secs(60),
        || limiter_errors(&a) > 0 && limiter_errors(&b) > 0,
    );
    let sent_while_cut = sent(&telegram).len();
    eprintln!("sent when the cut was felt: {sent_while_cut}");
    assert!(
        sent_while_cut < 2 * CHATS as usize,
        "everything went out although Redis was away"
    );
    redis.restore();

    wait_until("every reply accepted", Duration::from_secs(120), || {
        sent(&telegram).iter().filter(|c| c.succeeded()).count() >= 2 * CHATS as usize
    });
    let calls = sent(&telegram);
    assert_each_answered(&calls, CHATS, 2);
    assert_eq!(refused(&calls), 0, "nothing past the limits: {calls:?}");
    assert!(busiest_second(&calls) <= 30);
    let closest = closest_in_a_chat(&calls).expect("two messages per chat");
    assert!(closest >= Duration::from_secs(1), "{closest:?} in one chat");
    for server in [&a, &b] {
        let logs = server.logs();
        assert!(
            logs.contains("cannot reach the shared rate limits"),
            "the outage is logged"
        );
        assert!(!logs.contains(&token), "the token stays out of the logs");
    }
}

/// An embedded instance with the edge's address limiter on (3 at once, 1 a second), sharing
/// its buckets through `redis` under the bot `token`'s id.
fn guarded(redis: &str, telegram: &StandIn, token: &str) -> Server {
    Server::start(&[
        ("BOTLINE_TELEGRAM_API_URL", &telegram.base_url()),
        ("BOTLINE_BOT_TOKEN", token),
        ("BOTLINE_WEBHOOK_SECRET", "edge-secret"),
        ("BOTLINE_EDGE_RATE_LIMIT_ENABLED", "true"),
        ("BOTLINE_EDGE_RATE_LIMIT_RATE", "1"),
        ("BOTLINE_EDGE_RATE_LIMIT_BURST", "3"),
        ("BOTLINE_REDIS_URL", redis),
    ])
}

/// Statuses of `n` posts without the webhook secret, to `servers` in turn.
fn unauthenticated_posts(servers: &[&Server], n: usize) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let url = servers[i % servers.len()].url("/telegram/webhook");
            common::post(&url, None, &register(i as i64 + 1, 1, "/register")).status
        })
        .collect()
}

#[test]
fn the_edge_limits_an_address_across_instances_and_alone_while_redis_is_cut() {
    let _turn = one_at_a_time();
    redis_must_run();
    let redis = Forwarder::start(REDIS);
    // A bot of its own: its buckets in Redis are new, whatever earlier runs counted.
    let token = fresh_token();
    let telegram = StandIn::start(StandInSettings {
        token: token.clone(),
        username: "limits_bot".into(),
        ..StandInSettings::default()
    });
    let a = guarded(&redis.url(), &telegram, &token);
    let b = guarded(&redis.url(), &telegram, &token);
    let statuses = unauthenticated_posts(&[&a, &b], 8);
    let passed = statuses.iter().filter(|&&s| s == 401).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    // Three at once and one a second between both: a second instance is no second bucket.
    assert!(
        (3..=4).contains(&passed) && passed + limited == 8,
        "{statuses:?}"
    );

    // Each instance's own buckets were never drawn on: full.
    redis.cut();
    let alone = unauthenticated_posts(&[&a, &b], 8);
    assert!(
        alone.iter().filter(|&&s| s == 401).count() >= 6,
        "each instance counts alone while Redis is away: {alone:?}"
    );
    // Telegram's own deliveries carry the secret and are never limited.
    for n in 0..4 {
        let answer = common::post(
            &a.url("/telegram/webhook"),
            Some("edge-secret"),
            &register(100 + n, 2, "/register"),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let (_, metrics) = get(&a.url("/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("botline_shared_limiter_errors_total") && l.contains("edge")),
        "{metrics}"
    );
}
