//! `run()` against a small webhook server inside the test: retries, per-chat order, and a
//! server that is killed and restarted in the middle of the load.

use botline_bench::flood::FloodConfig;
use botline_bench::verify::iso8601_from_unix_ms;
use botline_bench::{LoadConfig, LoadLimit, Report, SECRET_HEADER, run, verify};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

const SECRET: &str = "bench-secret_1";

/// How the test server answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    /// 503 to the first request of each chat, 200 afterwards.
    RejectFirstOfEachChat,
    /// 200 to everything.
    AcceptAll,
}

/// One request the server answered.
#[derive(Debug, Clone)]
struct Entry {
    update_id: u64,
    chat_id: i64,
    message_id: i64,
    status: u16,
}

/// What the server saw, kept across a restart.
#[derive(Debug, Default)]
struct State {
    log: Vec<Entry>,
    seen_chats: HashSet<i64>,
    /// Export lines (as `botline messages export` writes them) of the first 200 per update.
    stored: Vec<String>,
    stored_updates: HashSet<u64>,
    bad_requests: Vec<String>,
    /// The addresses requests with a wrong or no secret came from.
    unauthorized_peers: HashSet<IpAddr>,
}

struct TestServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl TestServer {
    async fn start(addr: SocketAddr, behaviour: Behaviour, state: Arc<Mutex<State>>) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(addr).expect("bind");
        let listener = socket.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(serve(listener, behaviour, Arc::clone(&state)));
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/telegram/webhook", self.addr)
    }

    /// Like SIGKILL: the listener and every open connection go away at once.
    async fn kill(self) -> (SocketAddr, Arc<Mutex<State>>) {
        self.task.abort();
        let _ = self.task.await;
        (self.addr, self.state)
    }
}

async fn serve(listener: TcpListener, behaviour: Behaviour, state: Arc<Mutex<State>>) {
    // Dropping the JoinSet (when this task is aborted) closes every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        let service =
            service_fn(move |request| handle(request, peer.ip(), behaviour, Arc::clone(&state)));
        connections.spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    peer: IpAddr,
    behaviour: Behaviour,
    state: Arc<Mutex<State>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let headers = request.headers().clone();
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await?.to_bytes();
    let answer = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
        *response.status_mut() = status;
        Ok(response)
    };
    let mut state = state.lock().expect("state lock");
    if path != "/telegram/webhook"
        || headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json")
    {
        state.bad_requests.push(format!("{path} {headers:?}"));
        return answer(StatusCode::BAD_REQUEST);
    }
    if headers.get(SECRET_HEADER).and_then(|v| v.to_str().ok()) != Some(SECRET) {
        state.unauthorized_peers.insert(peer);
        return answer(StatusCode::UNAUTHORIZED);
    }
    let Ok(update) = serde_json::from_slice::<serde_json::Value>(&body) else {
        state.bad_requests.push("not JSON".to_owned());
        return answer(StatusCode::BAD_REQUEST);
    };
    let update_id = update["update_id"].as_u64().unwrap_or_default();
    let chat_id = update["message"]["chat"]["id"].as_i64().unwrap_or_default();
    let message_id = update["message"]["message_id"].as_i64().unwrap_or_default();
    let first_of_chat = state.seen_chats.insert(chat_id);
    let status = if behaviour == Behaviour::RejectFirstOfEachChat && first_of_chat {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    state.log.push(Entry {
        update_id,
        chat_id,
        message_id,
        status: status.as_u16(),
    });
    if status == StatusCode::OK && state.stored_updates.insert(update_id) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let line = serde_json::json!({
            "chatId": chat_id.to_string(),
            "messageId": message_id,
            "userId": update["message"]["from"]["id"],
            "userName": update["message"]["from"]["username"],
            "text": update["message"]["text"],
            "timestamp": update["message"]["date"].as_i64().unwrap_or_default() * 1000,
            "raw": String::from_utf8_lossy(&body),
            "createdAt": iso8601_from_unix_ms(now_ms),
        });
        state.stored.push(line.to_string());
    }
    answer(status)
}

/// Per chat, as the server saw the requests: a new update is sent only after the previous one
/// of its chat got a 200, and the first 200s come in increasing update and message id order.
fn assert_chat_order(log: &[Entry]) {
    // chat → (update id, message id, got a 200 yet)
    let mut current: HashMap<i64, (u64, i64, bool)> = HashMap::new();
    let mut first_acks: HashMap<i64, Vec<(u64, i64)>> = HashMap::new();
    for entry in log {
        let ok = entry.status == 200;
        match current.get_mut(&entry.chat_id) {
            Some((update_id, _, acked)) if *update_id == entry.update_id => {
                if ok && !*acked {
                    first_acks
                        .entry(entry.chat_id)
                        .or_default()
                        .push((entry.update_id, entry.message_id));
                }
                *acked |= ok;
            }
            Some((update_id, message_id, acked)) => {
                assert!(
                    *acked,
                    "chat {}: update {} sent before update {} was acknowledged",
                    entry.chat_id, entry.update_id, update_id
                );
                assert!(entry.update_id > *update_id && entry.message_id > *message_id);
                *update_id = entry.update_id;
                *message_id = entry.message_id;
                *acked = ok;
                if ok {
                    first_acks
                        .entry(entry.chat_id)
                        .or_default()
                        .push((entry.update_id, entry.message_id));
                }
            }
            None => {
                current.insert(entry.chat_id, (entry.update_id, entry.message_id, ok));
                if ok {
                    first_acks
                        .entry(entry.chat_id)
                        .or_default()
                        .push((entry.update_id, entry.message_id));
                }
            }
        }
    }
    for (chat, acks) in first_acks {
        assert!(
            acks.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "chat {chat}: first 200s out of order: {acks:?}"
        );
    }
}

fn assert_all_acknowledged(report: &Report, updates: u64, first_update_id: u64) {
    assert_eq!(report.updates_sent, updates, "{report}");
    assert_eq!(report.acknowledged, updates, "{report}");
    assert_eq!(report.given_up, 0, "{report}");
    let ids: Vec<u64> = report.acked_updates.iter().map(|a| a.update_id).collect();
    let expected: Vec<u64> = (first_update_id..first_update_id + updates).collect();
    assert_eq!(ids, expected);
    assert_eq!(report.ack_latency.count, updates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_rejected_updates_until_acknowledged_in_chat_order() {
    let state = Arc::new(Mutex::new(State::default()));
    let server = TestServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        Behaviour::RejectFirstOfEachChat,
        Arc::clone(&state),
    )
    .await;
    let updates = 300;
    let report = run(LoadConfig {
        url: server.url(),
        secret: Some(SECRET.to_owned()),
        connections: 4,
        chats: 12,
        rate: None,
        limit: LoadLimit::Updates(updates),
        first_update_id: Some(5_000_000),
        seed: Some(11),
        give_up: Duration::from_secs(20),
        ..LoadConfig::default()
    })
    .await
    .expect("run");

    assert_all_acknowledged(&report, updates, 5_000_000);
    let state = state.lock().expect("state lock");
    assert!(state.bad_requests.is_empty(), "{:?}", state.bad_requests);
    let chats = state.seen_chats.len() as u64;
    assert_eq!(chats, 12);
    assert_eq!(report.non_2xx_by_status.get(&503), Some(&chats), "{report}");
    assert_eq!(report.retries, chats);
    assert_eq!(report.connection_errors, 0);
    assert_eq!(
        report
            .acked_updates
            .iter()
            .filter(|a| a.attempts == 2)
            .count() as u64,
        chats
    );
    assert_eq!(state.log.len() as u64, updates + chats);
    assert_chat_order(&state.log);

    let verification = verify(&report, &state.stored.join("\n"));
    assert!(verification.is_ok(), "{verification}");
    assert_eq!(verification.present, updates);
    assert_eq!(verification.receipt_to_stored.count, updates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_the_server_being_killed_and_restarted() {
    let state = Arc::new(Mutex::new(State::default()));
    let server = TestServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        Behaviour::AcceptAll,
        Arc::clone(&state),
    )
    .await;
    let updates = 400;
    let load = tokio::spawn(run(LoadConfig {
        url: server.url(),
        secret: Some(SECRET.to_owned()),
        connections: 8,
        chats: 40,
        rate: Some(200.0),
        limit: LoadLimit::Updates(updates),
        first_update_id: Some(9_000_000),
        seed: Some(12),
        give_up: Duration::from_secs(30),
        ..LoadConfig::default()
    }));

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (addr, state) = server.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _server = TestServer::start(addr, Behaviour::AcceptAll, Arc::clone(&state)).await;

    let report = load.await.expect("load task").expect("run");
    assert_all_acknowledged(&report, updates, 9_000_000);
    assert!(report.connection_errors > 0, "{report}");
    assert!(report.retries > 0, "{report}");
    // Queued behind the outage: the tail latency shows it (no coordinated omission).
    assert!(report.ack_latency.max_ms >= 1000.0, "{report}");

    let state = state.lock().expect("state lock");
    assert!(state.bad_requests.is_empty(), "{:?}", state.bad_requests);
    assert_chat_order(&state.log);
    let verification = verify(&report, &state.stored.join("\n"));
    assert!(verification.is_ok(), "{verification}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_from_other_addresses_beside_the_load() {
    let state = Arc::new(Mutex::new(State::default()));
    let server = TestServer::start(
        "127.0.0.1:0".parse().expect("addr"),
        Behaviour::AcceptAll,
        Arc::clone(&state),
    )
    .await;
    let report = run(LoadConfig {
        url: server.url(),
        secret: Some(SECRET.to_owned()),
        connections: 4,
        chats: 8,
        rate: Some(100.0),
        limit: LoadLimit::Duration(Duration::from_secs(1)),
        first_update_id: Some(7_000_000),
        seed: Some(13),
        flood: Some(FloodConfig {
            rate: 200.0,
            sources: 8,
            base: Ipv4Addr::new(127, 1, 0, 1),
            secret: Some("not-the-secret".to_owned()),
        }),
        ..LoadConfig::default()
    })
    .await
    .expect("run");

    assert_all_acknowledged(&report, 100, 7_000_000);
    let flood = report.flood.as_ref().expect("a flood report");
    assert!(
        (190..=200).contains(&flood.sent),
        "about 200 requests in 1 s: {report}"
    );
    assert_eq!(flood.by_status.get(&401), Some(&flood.sent), "{report}");
    assert_eq!((flood.accepted, flood.failed, flood.skipped), (0, 0, 0));
    let state = state.lock().expect("state lock");
    assert!(state.bad_requests.is_empty(), "{:?}", state.bad_requests);
    let expected: HashSet<IpAddr> = (1..=8)
        .map(|n| IpAddr::V4(Ipv4Addr::new(127, 1, 0, n)))
        .collect();
    assert_eq!(state.unauthorized_peers, expected);
    assert!(report.to_string().contains("flood answers       401:"));
}

#[tokio::test]
async fn gives_up_when_nothing_listens() {
    // Bind and drop to find a port with nothing behind it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let report = run(LoadConfig {
        url: format!("http://{addr}/telegram/webhook"),
        connections: 2,
        chats: 4,
        limit: LoadLimit::Updates(6),
        first_update_id: Some(1),
        give_up: Duration::from_millis(300),
        ..LoadConfig::default()
    })
    .await
    .expect("run");
    assert_eq!(report.acknowledged, 0);
    assert_eq!(report.given_up, 6, "{report}");
    assert!(report.connection_errors_by_kind.contains_key("connect"));
    // After the first update of a connection gave up, the rest get one try each.
    assert!(report.given_up_updates.iter().any(|g| g.attempts == 1));
}
