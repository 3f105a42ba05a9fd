//! `botline serve` as a black box: HTTP in, the operator CLI out.

mod common;

use common::{Server, cli, data_dir, free_port, get, message, post, temp_dir, wait_exit};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

const SECRET: &str = "e2e_Secret-4f9c2a";

#[test]
fn every_bad_input_is_refused_with_a_clear_status() {
    let server = Server::start(&[
        ("BOTLINE_WEBHOOK_SECRET", SECRET),
        ("BOTLINE_MAX_BODY_BYTES", "2048"),
    ]);
    let url = server.url("/telegram/webhook");
    let update = message(1, 10, 1, "hello");

    let missing = post(&url, None, &update);
    assert_eq!(missing.status, 401, "{}", missing.body);
    assert_eq!(missing.body, r#"{"error":"unauthorized"}"#);
    assert_eq!(post(&url, Some("wrong"), &update).status, 401);

    let large = message(2, 10, 2, &"x".repeat(4096));
    let too_large = post(&url, Some(SECRET), &large);
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.body, r#"{"error":"body exceeds 2048 bytes"}"#);

    for entry in std::fs::read_dir(data_dir().join("invalid")).unwrap() {
        let path = entry.unwrap().path();
        let answer = post(&url, Some(SECRET), &std::fs::read(&path).unwrap());
        assert_eq!(answer.status, 400, "{}: {}", path.display(), answer.body);
        assert!(answer.body.starts_with(r#"{"error":""#), "{}", answer.body);
    }

    assert_eq!(post(&url, Some(SECRET), &update).status, 200);
    assert_eq!(post(&url, Some(SECRET), &update).status, 200, "redelivery");

    let (status, health) = get(&server.url("/health"));
    assert_eq!(status, 200);
    assert!(
        health.starts_with(r#"{"status":"ok","version":"0.1.0"#),
        "{health}"
    );

    let (status, metrics) = get(&server.url("/metrics"));
    assert_eq!(status, 200);
    for line in [
        r#"botline_webhook_requests_total{outcome="unauthorized"} 2"#,
        r#"botline_webhook_requests_total{outcome="too_large"} 1"#,
        r#"botline_webhook_requests_total{outcome="accepted"} 1"#,
        r#"botline_webhook_requests_total{outcome="duplicate"} 1"#,
        "botline_webhook_ack_seconds_bucket",
        "botline_dlq_depth 0",
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }

    server.wait_drained();
    assert_eq!(
        server.messages().len(),
        1,
        "one copy of the redelivered update"
    );
    let logs = server.logs();
    assert!(logs.contains(r#""outcome":"unauthorized""#), "{logs}");
    assert!(!logs.contains(SECRET), "the secret leaked into the logs");
}

#[test]
fn every_fixture_is_stored_once_byte_for_byte_and_exported() {
    let server = Server::start(&[]);
    let url = server.url("/telegram/webhook");
    let mut sent_messages = BTreeSet::new();
    let mut fixtures = 0;
    for entry in std::fs::read_dir(data_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        assert_eq!(post(&url, None, &body).status, 200, "{}", path.display());
        assert_eq!(post(&url, None, &body).status, 200, "{}", path.display());
        fixtures += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("message-") && !name.starts_with("message-reaction") {
            // Byte for byte, but for a `/register` token, which is redacted (whatever bot the
            // command addresses).
            let body = String::from_utf8(body).unwrap();
            sent_messages.insert(botline_core::redact_typed_secrets(&body).unwrap_or(body));
        }
    }
    let stats = server.wait_drained();
    assert_eq!(stats["done"], fixtures, "one queue entry per update");
    assert_eq!(stats["dead"], 0);

    let messages = server.messages();
    assert_eq!(messages.len(), sent_messages.len());
    let stored: BTreeSet<String> = messages
        .iter()
        .map(|m| m["raw"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stored, sent_messages, "raw kept byte for byte");
    let fields: BTreeSet<&str> = messages[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "chatId",
            "messageId",
            "userId",
            "userName",
            "text",
            "timestamp",
            "raw",
            "createdAt"
        ])
    );

    let csv = server.cli(&["messages", "export", "--format", "csv"]);
    assert!(csv.status.success());
    let csv = String::from_utf8(csv.stdout).unwrap();
    assert!(csv.starts_with("chatId,messageId,userId,userName,text,timestamp,raw,createdAt\n"));
    let rows = csv::Reader::from_reader(csv.as_bytes()).records().count();
    assert_eq!(rows, messages.len());

    let chat = server.cli(&["messages", "export", "--chat", "-1009876543210123"]);
    let chat = String::from_utf8(chat.stdout).unwrap();
    assert_eq!(chat.lines().count(), 1, "{chat}");
    assert!(chat.contains(r#""chatId":"-1009876543210123""#));
    let future = server.cli(&["messages", "export", "--since", "2100-01-01"]);
    assert!(future.status.success() && future.stdout.is_empty());
    let bad = server.cli(&["messages", "export", "--since", "last tuesday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}

#[test]
fn sigterm_finishes_what_is_in_hand_and_exits_zero() {
    let mut server = Server::start(&[]);
    let url = server.url("/telegram/webhook");
    let sender = std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        for n in 0..2000 {
            match common::post(&url, None, &message(100 + n, 5 + n % 7, 100 + n, "bye")).status {
                200 => acknowledged.push(100 + n),
                _ => break,
            }
        }
        acknowledged
    });
    std::thread::sleep(Duration::from_millis(300));
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let acknowledged = sender.join().unwrap();
    assert!(!acknowledged.is_empty());
    let logs = server.logs();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(logs.contains(r#""message":"stopped""#), "{logs}");

    server.restart();
    server.wait_drained();
    let stored: BTreeSet<i64> = server
        .messages()
        .iter()
        .map(|m| m["messageId"].as_i64().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged update {id} was lost");
    }
}

#[test]
fn a_locked_store_answers_503_with_retry_after_then_recovers() {
    let server = Server::start(&[("BOTLINE_ACK_TIMEOUT", "300ms")]);
    let url = server.url("/telegram/webhook");
    let db = rusqlite::Connection::open(server.data_dir.join("botline.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();

    // The journal takes what arrives before the store is found locked: durable, acknowledged.
    let first = message(7, 1, 7, "while locked");
    assert_eq!(post(&url, None, &first).status, 200);
    assert_eq!(get(&server.url("/health")).0, 503);
    // Once importing into the store has failed, new updates are refused until it works again.
    let mut next = 8;
    let mut refused = None;
    common::wait_until("an update refused", Duration::from_secs(30), || {
        let answer = post(&url, None, &message(next, 1, next, "refused while locked"));
        match answer.status {
            200 => {
                next += 1;
                false
            }
            503 => {
                refused = Some(answer);
                true
            }
            other => panic!("{other}: {}", answer.body),
        }
    });
    let (refused_id, answer) = (next, refused.expect("a refusal"));
    assert_eq!(answer.retry_after.as_deref(), Some("1"));
    assert_eq!(answer.body, r#"{"error":"temporarily unavailable"}"#);
    assert_eq!(get(&server.url("/health")).0, 503);

    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    let again = message(refused_id, 1, refused_id, "refused while locked");
    common::deliver(&url, None, &again, Duration::from_secs(20));
    assert_eq!(get(&server.url("/health")).0, 200);
    server.wait_drained();
    let messages = server.messages();
    let ids: Vec<i64> = messages
        .iter()
        .map(|m| m["messageId"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        (7..=refused_id).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert_eq!(messages[0]["text"], "while locked");
    assert!(server.logs().contains(r#""outcome":"unavailable""#));
}

#[test]
fn failed_updates_are_dead_lettered_and_can_be_redriven() {
    let server = Server::start(&[
        ("BOTLINE_BACKOFF_BASE", "50ms"),
        ("BOTLINE_BACKOFF_MAX", "100ms"),
    ]);
    let url = server.url("/telegram/webhook");
    // A real failure in the real write path: the store refuses this message.
    let db = rusqlite::Connection::open(server.data_dir.join("botline.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.text = 'poison'
         BEGIN SELECT RAISE(ABORT, 'poison message refused'); END;",
    )
    .unwrap();
    assert_eq!(post(&url, None, &message(31, -77, 1, "poison")).status, 200);
    assert_eq!(
        post(&url, None, &message(32, -77, 2, "after the poison")).status,
        200
    );

    let stats = server.wait_drained();
    assert_eq!(stats["dead"], 1, "{stats}");
    let list = server.cli(&["dlq", "list"]);
    let list = String::from_utf8(list.stdout).unwrap();
    let dead: serde_json::Value = serde_json::from_str(list.trim()).expect(&list);
    assert_eq!(dead["updateId"], 31);
    assert_eq!(dead["attempts"], 3);
    assert!(
        dead["lastError"]
            .as_str()
            .unwrap()
            .contains("poison message refused")
    );
    let show = server.cli(&["dlq", "show", "31"]);
    let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(show["raw"]["message"]["text"], "poison");
    let texts: Vec<_> = server
        .messages()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(
        texts,
        vec!["after the poison"],
        "the dead letter does not block its chat"
    );

    let missing = server.cli(&["dlq", "redrive", "999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not a dead letter"));

    db.execute_batch("DROP TRIGGER poison").unwrap();
    let redrive = server.cli(&["dlq", "redrive", "31"]);
    assert!(
        redrive.status.success(),
        "{}",
        String::from_utf8_lossy(&redrive.stderr)
    );
    let stats = server.wait_drained();
    assert_eq!(stats["dead"], 0);
    assert_eq!(server.messages().len(), 2);
    let empty = server.cli(&["dlq", "list"]);
    assert_eq!(
        String::from_utf8(empty.stdout).unwrap().trim(),
        "no dead letters"
    );
    let (_, metrics) = get(&server.url("/metrics"));
    assert!(
        metrics.contains("botline_dead_lettered_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("botline_processing_failures_total 3"),
        "{metrics}"
    );
}

#[test]
fn a_public_address_without_a_secret_is_refused() {
    let dir = temp_dir();
    let port = free_port();
    let out = Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--data-dir",
        ])
        .arg(&dir)
        .env_remove("BOTLINE_WEBHOOK_SECRET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without a webhook secret") && stderr.contains("--insecure-no-secret"),
        "{stderr}"
    );

    let mut child = Command::new(common::BIN)
        .args([
            "serve",
            "--insecure-no-secret",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--data-dir",
        ])
        .arg(&dir)
        .env_remove("BOTLINE_WEBHOOK_SECRET")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let healthy = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(25));
        get(&format!("http://127.0.0.1:{port}/health")).0 == 200
    });
    common::signal(child.id(), "TERM");
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    assert!(healthy, "--insecure-no-secret serves");
}

#[test]
fn one_server_per_data_directory_and_clear_cli_errors() {
    let server = Server::start(&[]);
    let out = Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(&server.data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another `botline serve`"));

    let nowhere = cli(&temp_dir().join("missing"), &["stats"]);
    assert!(!nowhere.status.success());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("no Botline store"));
    let stats = server.cli(&["stats"]);
    assert!(String::from_utf8_lossy(&stats.stdout).contains("pending"));
}

#[test]
fn the_edge_guard_refuses_addresses_outside_the_allowlist_and_trusts_only_named_proxies() {
    // Telegram's networks only: a request from this machine is refused before the queue.
    let server = Server::start_with_config("[edge]\nallowlist = [\"telegram\"]\n", &[]);
    let url = server.url("/telegram/webhook");
    let refused = post(&url, None, &message(1, 42, 1, "hi"));
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(server.stats()["pending"], 0);
    assert_eq!(server.stats()["done"], 0, "nothing reached the queue");
    assert_eq!(
        common::get(&server.url("/health")).0,
        200,
        "health is not guarded"
    );
    drop(server);

    // Behind a trusted proxy on this machine, the proxy's X-Forwarded-For names the client; a
    // header the client wrote itself further left does not help it. (Set by BOTLINE_EDGE_*
    // variables this time, as a container would.)
    let server = Server::start(&[
        ("BOTLINE_EDGE_ALLOWLIST", "telegram"),
        ("BOTLINE_EDGE_TRUSTED_PROXIES", "127.0.0.1"),
    ]);
    let url = server.url("/telegram/webhook");
    let forwarded = |chain: &str, id: i64| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent()
            .post(&url)
            .header("content-type", "application/json")
            .header("x-forwarded-for", chain)
            .send(&message(id, 42, id, "hi")[..])
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(forwarded("149.154.167.1", 2), 200);
    assert_eq!(
        forwarded("149.154.167.1, 6.6.6.6", 3),
        403,
        "spoofed on the left"
    );
    assert_eq!(forwarded("91.108.4.10", 4), 200);
    server.wait_drained();
    assert_eq!(server.messages().len(), 2);
}

/// Issue 17, goal 6: the operator's commands (`stats`, `messages export`, `dlq list`) answer
/// while the server takes updates as fast as four senders post them. Each export is complete up
/// to its start: it holds at least every update `stats` counted done just before, never one
/// twice, and every message of the export before it. Once the load stops and the queue drains,
/// the export holds every acknowledged update exactly once.
#[test]
fn operator_commands_answer_beside_a_busy_server() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};

    let server = Server::start(&[]);
    let url = server.url("/telegram/webhook");
    let next_id = Arc::new(AtomicI64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::<i64>::new()));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (url, next_id, stop, acknowledged) = (
                url.clone(),
                Arc::clone(&next_id),
                Arc::clone(&stop),
                Arc::clone(&acknowledged),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    let body = message(id, -(id % 50) - 1, id, "busy");
                    common::deliver(&url, None, &body, Duration::from_secs(60));
                    acknowledged.lock().unwrap().insert(id);
                }
            })
        })
        .collect();
    let acknowledged_count = || acknowledged.lock().unwrap().len();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while acknowledged_count() < 1_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load never got going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let key = |m: &serde_json::Value| (m["chatId"].to_string(), m["messageId"].to_string());
    let mut previous = BTreeSet::new();
    for _ in 0..3 {
        let before = acknowledged_count();
        let done_before = server.stats()["done"].as_u64().expect("a done count");
        let exported = server.messages();
        let keys: BTreeSet<_> = exported.iter().map(key).collect();
        assert_eq!(keys.len(), exported.len(), "a message exported twice");
        assert!(
            exported.len() as u64 >= done_before,
            "the export holds {} messages, {done_before} were done before it began",
            exported.len()
        );
        assert!(
            keys.is_superset(&previous),
            "an exported message went missing"
        );
        let list = server.cli(&["dlq", "list"]);
        assert!(
            list.status.success(),
            "dlq list: {}",
            String::from_utf8_lossy(&list.stderr)
        );
        let done_after = server.stats()["done"].as_u64().expect("a done count");
        assert!(exported.len() as u64 <= done_after);
        // The server kept taking updates while the commands ran.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acknowledged_count() <= before {
            assert!(std::time::Instant::now() < deadline, "the load stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
        previous = keys;
    }
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.join().unwrap();
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let stats = loop {
        let stats = server.stats();
        if stats["pending"] == 0 && stats["inFlight"] == 0 {
            break stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never drained: {stats}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(stats["done"], acknowledged.len(), "{stats}");
    let exported: Vec<i64> = server
        .messages()
        .iter()
        .map(|m| m["messageId"].as_i64().expect("a message id"))
        .collect();
    assert_eq!(
        exported.len(),
        acknowledged.len(),
        "each update exported once"
    );
    assert_eq!(exported.into_iter().collect::<BTreeSet<_>>(), acknowledged);
}

/// `botline_oldest_pending_age_seconds` as `/metrics` shows it.
fn oldest_pending_age(server: &Server) -> f64 {
    let (_, metrics) = get(&server.url("/metrics"));
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("botline_oldest_pending_age_seconds "))
        .unwrap_or_else(|| panic!("no age in:\n{metrics}"))
        .parse()
        .unwrap()
}

/// The age of the oldest update not yet done is on `/metrics`, read at each scrape, and in
/// `botline stats`; 0 (`null` in the JSON) while nothing is pending. Here an update waits
/// because the bot's handler cannot be reached.
#[test]
fn the_oldest_pending_updates_age_is_on_metrics_and_in_stats() {
    let handler = format!("http://127.0.0.1:{}/bot", free_port());
    let server = Server::start(&[
        ("BOTLINE_HANDLER_URL", &handler),
        ("BOTLINE_MAX_ATTEMPTS", "1000"),
    ]);
    assert_eq!(oldest_pending_age(&server), 0.0, "nothing received yet");
    assert_eq!(
        server.stats()["oldestPendingAgeSeconds"],
        serde_json::Value::Null
    );
    let webhook = server.url("/telegram/webhook");
    assert_eq!(post(&webhook, None, &message(1, 10, 1, "hi")).status, 200);
    common::wait_until("the update a second old", Duration::from_secs(20), || {
        oldest_pending_age(&server) >= 1.0
    });
    let stats = server.stats();
    assert!(
        stats["oldestPendingAgeSeconds"].as_f64().unwrap() >= 1.0,
        "{stats}"
    );
    let text = server.cli(&["stats"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("oldest     received "), "{text}");
    assert!(server.logs().contains("cannot reach the handler"));
}
