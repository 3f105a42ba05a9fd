//! `--backend postgres` through the real binary, on a fresh database of the local Postgres:
//! two instances sharing it under load, one SIGKILLed mid-run; and a database that is away.

mod common;

use common::{BIN, PgDb, Server, get, message, post};
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CHATS: i64 = 16;
const PER_CHAT: i64 = 25;

fn postgres_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BOTLINE_BACKEND", "postgres".to_owned()),
        ("BOTLINE_DATABASE_URL", url.to_owned()),
        ("BOTLINE_LEASE", "2s".to_owned()),
    ]
}

fn start(url: &str) -> Server {
    let env = postgres_env(url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Server::start(&env)
}

/// An operator command on the Postgres backend.
fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--backend", "postgres"])
        .env("BOTLINE_DATABASE_URL", url)
        .stdin(Stdio::null())
        .output()
        .expect("botline runs")
}

fn stats(url: &str) -> serde_json::Value {
    let out = cli(url, &["stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn two_instances_share_one_database_and_one_survives_the_other_being_killed() {
    let db = PgDb::new("botline_two");
    let url = db.url();
    let mut a = start(&url);
    let b = start(&url);
    let targets = [a.url("/telegram/webhook"), b.url("/telegram/webhook")];
    let a_dead = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicU64::new(0));

    // Telegram-like: each chat's updates one after another, each retried until it is answered
    // 200, spread over both instances, switching to the other when one does not answer.
    let senders: Vec<_> = (0..4)
        .map(|thread| {
            let (targets, a_dead, acknowledged) = (
                targets.clone(),
                Arc::clone(&a_dead),
                Arc::clone(&acknowledged),
            );
            std::thread::spawn(move || {
                for chat in (0..CHATS).filter(|c| c % 4 == thread) {
                    for n in 0..PER_CHAT {
                        let id = 1_000 + n * CHATS + chat;
                        let body = message(id, 9_000 + chat, n + 1, &format!("m{n}"));
                        let mut target = usize::from(id % 2 == 1 || a_dead.load(Ordering::SeqCst));
                        let deadline = Instant::now() + Duration::from_secs(60);
                        while post(&targets[target], None, &body).status != 200 {
                            assert!(Instant::now() < deadline, "update {id} never acknowledged");
                            target = 1 - target;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        acknowledged.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let total = (CHATS * PER_CHAT) as u64;
    while acknowledged.load(Ordering::SeqCst) < total / 2 {
        std::thread::sleep(Duration::from_millis(5));
    }
    a.kill();
    a_dead.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.join().unwrap();
    }

    // B takes over what A held once A's leases expire; nothing is left behind.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = stats(&url);
        if stats["pending"] == 0 && stats["inFlight"] == 0 {
            assert_eq!(stats["dead"], 0, "{stats}");
            break;
        }
        assert!(Instant::now() < deadline, "not drained: {stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let export = cli(&url, &["messages", "export", "--format", "jsonl"]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let messages: Vec<serde_json::Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        messages.len() as u64,
        total,
        "each acknowledged update stored once"
    );
    let mut by_chat: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for m in &messages {
        by_chat
            .entry(m["chatId"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                m["messageId"].as_i64().unwrap(),
                m["createdAt"].as_str().unwrap().to_owned(),
            ));
    }
    assert_eq!(by_chat.len() as i64, CHATS);
    for (chat, mut stored) in by_chat {
        stored.sort();
        assert_eq!(stored.len() as i64, PER_CHAT, "chat {chat}");
        assert!(
            stored.windows(2).all(|w| w[0].1 <= w[1].1),
            "chat {chat} was processed out of order: {stored:?}"
        );
    }
}

/// A TCP forwarder to the local Postgres that can be switched on later.
fn forwarder() -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = Arc::new(AtomicBool::new(false));
    let on = Arc::clone(&open);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if !on.load(Ordering::SeqCst) {
                drop(client);
                continue;
            }
            let Ok(server) = TcpStream::connect("127.0.0.1:5432") else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c_read, &mut s_write));
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || std::io::copy(&mut s_read, &mut c_write));
        }
    });
    (port, open)
}

#[test]
fn an_absent_database_gets_503_never_200_and_everything_resumes_when_it_returns() {
    let db = PgDb::new("botline_away");
    let (port, open) = forwarder();
    let url = format!(
        "postgres://postgres:pw-not-logged@127.0.0.1:{port}/{}",
        db.name
    );
    let data_dir = common::temp_dir();
    let listen = common::free_port();
    let log = data_dir.with_extension("log");
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--backend",
            "postgres",
        ])
        .env("BOTLINE_DATABASE_URL", &url)
        .env("BOTLINE_LOG", "info")
        .env_remove("BOTLINE_BOT_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{listen}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&format!("{base}/health")).0 == 0 {
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&format!("{base}/health")).0, 503);
    let update = message(1, 77, 1, "while the database is away");
    let answer = post(&format!("{base}/telegram/webhook"), None, &update);
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.retry_after.is_some());

    open.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while post(&format!("{base}/telegram/webhook"), None, &update).status != 200 {
        assert!(Instant::now() < deadline, "did not resume");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&format!("{base}/health")).0, 200);
    let direct = db.url();
    let deadline = Instant::now() + Duration::from_secs(20);
    while stats(&direct)["done"] != 1 {
        assert!(
            Instant::now() < deadline,
            "not processed: {}",
            stats(&direct)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logs.contains("pw-not-logged"),
        "the password reached the logs"
    );
}

/// Issue 18: `botline provision --backend postgres` runs the migrations and says so; the
/// schema is then there (the table a later `serve` writes first).
#[test]
fn provision_migrates_the_database() {
    let db = PgDb::new("botline_provision");
    for _ in 0..2 {
        let out = Command::new(BIN)
            .args(["provision", "--backend", "postgres"])
            .env("BOTLINE_DATABASE_URL", db.url())
            .stdin(Stdio::null())
            .output()
            .expect("botline runs");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("migrations applied, schema up to date"),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        common::psql(&db.name, "SELECT count(*) FROM updates").trim(),
        "0"
    );
}

/// Issue 18: `serve` migrates at start (a fresh database is no reason to refuse), then checks;
/// a migration whose record disappears while it runs (the database replaced or changed by
/// hand) makes `/health` answer 503 naming it and the command that applies it.
#[test]
fn health_names_a_migration_that_is_no_longer_applied() {
    let db = PgDb::new("botline_schema");
    let url = db.url();
    let server = start(&url);
    let answer = post(
        &server.url("/telegram/webhook"),
        None,
        &message(1, 9_100, 1, "migrated at start"),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);

    common::psql(&db.name, "DELETE FROM _sqlx_migrations WHERE version = 3");
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, body) = get(&server.url("/health"));
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "/health still {status}: {body}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["missing"],
        serde_json::json!(["migration 3 (park behind chat head) is not applied"]),
        "{body}"
    );
    assert_eq!(
        body["fix"], "botline provision --backend postgres",
        "{body}"
    );
    let answer = post(
        &server.url("/telegram/webhook"),
        None,
        &message(2, 9_100, 2, "while a migration is missing"),
    );
    assert_eq!(answer.status, 503, "{}", answer.body);
}

/// The stdout of a command that must succeed.
fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// JSON lines, sorted: two exports compared as sets of records.
fn sorted_lines(text: &str) -> Vec<serde_json::Value> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn an_embedded_bots_records_move_to_postgres_by_export_and_import() {
    // An embedded bot with messages from two users in three chats, and an edit (an event
    // without a message).
    let mut server = Server::start(&[]);
    let mut id = 0;
    for chat in [-100_i64, 7, 8] {
        for m in 1..=4 {
            id += 1;
            let mut body: serde_json::Value =
                serde_json::from_slice(&message(id, chat, m, &format!("hello {chat} {m}")))
                    .unwrap();
            if chat == 8 {
                body["message"]["from"] =
                    serde_json::json!({"id": 43, "is_bot": false, "first_name": "Other"});
            }
            common::deliver(
                &server.url("/telegram/webhook"),
                None,
                body.to_string().as_bytes(),
                Duration::from_secs(10),
            );
        }
    }
    let mut edit: serde_json::Value = serde_json::from_slice(&message(99, 7, 1, "edited")).unwrap();
    edit["edited_message"] = edit["message"].take();
    edit.as_object_mut().unwrap().remove("message");
    common::deliver(
        &server.url("/telegram/webhook"),
        None,
        edit.to_string().as_bytes(),
        Duration::from_secs(10),
    );
    server.wait_drained();

    // Exported while serve runs: messages and users as JSON lines, events as CSV.
    let dir = common::temp_dir();
    let messages = ok("messages export", server.cli(&["messages", "export"]));
    let users = ok("users export", server.cli(&["users", "export"]));
    let events = ok("events export", server.cli(&["events", "export"]));
    let events_csv = ok(
        "events export --format csv",
        server.cli(&["events", "export", "--format", "csv"]),
    );
    assert_eq!(messages.lines().count(), 12);
    assert_eq!(users.lines().count(), 2);
    assert_eq!(events.lines().count(), 13);
    assert!(events_csv.starts_with("eventId,userId,eventType,payload,timestamp,processed\n"));
    let edited = sorted_lines(&events)
        .into_iter()
        .filter(|e| e["eventType"] == "edited_message")
        .count();
    assert_eq!(edited, 1);
    server.terminate();
    let files = [
        ("messages.jsonl", &messages),
        ("users.jsonl", &users),
        ("events.csv", &events_csv),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }

    // Into a fresh Postgres database: every record, as it was.
    let db = PgDb::new("botline_import");
    let url = db.url();
    let import = |name: &str| {
        let path = dir.join(name);
        ok(
            &format!("import {name}"),
            cli(&url, &["import", "--from", path.to_str().unwrap()]),
        )
    };
    assert!(import("messages.jsonl").starts_with("imported 12 messages, 0 users, 0 events"));
    assert!(import("users.jsonl").starts_with("imported 0 messages, 2 users, 0 events"));
    assert!(import("events.csv").starts_with("imported 0 messages, 0 users, 13 events"));
    let moved = |what: &str| ok(&format!("{what} export"), cli(&url, &[what, "export"]));
    assert_eq!(
        moved("messages"),
        messages,
        "byte for byte, in the same order"
    );
    assert_eq!(sorted_lines(&moved("users")), sorted_lines(&users));
    assert_eq!(sorted_lines(&moved("events")), sorted_lines(&events));

    // Again: nothing written twice.
    assert!(
        import("messages.jsonl").starts_with("imported 0 messages, 0 users, 0 events"),
        "a second import writes nothing"
    );
    assert!(import("events.csv").starts_with("imported 0 messages, 0 users, 0 events"));
    assert_eq!(moved("messages"), messages);
    assert_eq!(sorted_lines(&moved("events")), sorted_lines(&events));

    // Bad input changes nothing: a broken third line is named, and no record of the file is
    // written, not even the two lines before it.
    let other = PgDb::new("botline_import_bad");
    let broken: Vec<&str> = messages.lines().take(2).chain(["{\"chatId\": "]).collect();
    let path = dir.join("broken.jsonl");
    std::fs::write(&path, broken.join("\n")).unwrap();
    let out = cli(&other.url(), &["import", "--from", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("nothing imported"), "{stderr}");
    assert_eq!(
        common::psql(&other.name, "SELECT count(*) FROM messages"),
        "0"
    );
}
