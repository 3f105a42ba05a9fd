//! Operator commands while `serve` runs under load: `botline backup`, and `botline restore` into
//! a fresh data directory (everything acknowledged before the backup began is there, exactly
//! once); `stats`, `messages export` and `dlq list` (they answer, and the export holds every
//! update processed before it began).

mod common;

use common::{Server, cli, free_port, message, post, temp_dir};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_backup_under_load_restores_everything_acknowledged_before_it_once() {
    let server = Server::start(&[]);
    let webhook = server.url("/telegram/webhook");
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Four Telegram-like senders, 50 chats each, one update after another.
    let senders: Vec<_> = (0..4i64)
        .map(|thread| {
            let (webhook, acked, stop) = (webhook.clone(), Arc::clone(&acked), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    let id = 1 + thread + 4 * n;
                    let body = message(id, 100 + thread * 50 + n % 50, id, &format!("m{id}"));
                    if post(&webhook, None, &body).status == 200 {
                        acked.lock().unwrap().push(id);
                        n += 1;
                    }
                }
            })
        })
        .collect();
    common::wait_until("some updates acknowledged", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= 2000
    });

    let backup = temp_dir().join("botline-backup.db");
    let before: Vec<i64> = acked.lock().unwrap().clone();
    let out = succeeded(&server.cli(&["backup", "--to", backup.to_str().unwrap()]));
    assert!(out.starts_with("backed up "), "{out}");
    // The load went on during the backup; it stops only now.
    let during = acked.lock().unwrap().len();
    common::wait_until(
        "more updates after the backup",
        Duration::from_secs(60),
        || acked.lock().unwrap().len() > during + 200,
    );
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.join().unwrap();
    }
    // A backup never overwrites a file.
    let again = server.cli(&["backup", "--to", backup.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    drop(server);

    let fresh = temp_dir().join("restored");
    let out = succeeded(&cli(
        &fresh,
        &["restore", "--from", backup.to_str().unwrap()],
    ));
    assert!(out.starts_with("restored "), "{out}");
    let refused = cli(&fresh, &["restore", "--from", backup.to_str().unwrap()]);
    assert!(!refused.status.success(), "a second restore into a store");

    // `serve` on the restored directory processes what was still queued, once.
    let restored = Server::start_in(&fresh, free_port(), &[]);
    restored.wait_drained();
    let mut stored: BTreeMap<i64, usize> = BTreeMap::new();
    for m in restored.messages() {
        *stored.entry(m["messageId"].as_i64().unwrap()).or_default() += 1;
    }
    assert!(stored.values().all(|&n| n == 1), "a message stored twice");
    let missing: Vec<i64> = before
        .iter()
        .filter(|id| !stored.contains_key(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged before the backup are missing: {:?}",
        missing.len(),
        before.len(),
        &missing[..missing.len().min(10)]
    );
    let all = acked.lock().unwrap().len();
    assert!(
        stored.len() < all,
        "the backup holds updates acknowledged after it ({} of {all}): not a snapshot",
        stored.len()
    );
}

#[test]
fn backup_and_restore_refuse_what_they_cannot_copy() {
    let empty = temp_dir();
    let out = cli(
        &empty,
        &["backup", "--to", empty.join("b.db").to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no store"));
    let out = std::process::Command::new(common::BIN)
        .args(["backup", "--to", "/tmp/never.db", "--backend", "postgres"])
        .env("BOTLINE_DATABASE_URL", "postgres://127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));
}

/// Sixteen Telegram-like senders, each posting its next update as soon as the last one was
/// answered, until `stop`: this machine's closed-loop peak. Returns what was acknowledged.
fn peak_load(
    webhook: &str,
    stop: &Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<i64>>>, Vec<std::thread::JoinHandle<()>>) {
    const SENDERS: i64 = 16;
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let senders = (0..SENDERS)
        .map(|thread| {
            let (webhook, acked, stop) = (webhook.to_owned(), Arc::clone(&acked), Arc::clone(stop));
            std::thread::spawn(move || {
                let mut n = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    let id = 1 + thread + SENDERS * n;
                    let body = message(id, 1_000 + thread * 50 + n % 50, id, &format!("m{id}"));
                    if post(&webhook, None, &body).status == 200 {
                        acked.lock().unwrap().push(id);
                        n += 1;
                    }
                }
            })
        })
        .collect();
    (acked, senders)
}

/// The message ids of a JSON-lines export; each message at most once.
fn exported_ids(jsonl: &str) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    for line in jsonl.lines() {
        let m: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let id = m["messageId"].as_i64().expect("a message id");
        assert!(ids.insert(id), "message {id} exported twice");
    }
    ids
}

#[test]
fn operator_commands_answer_at_peak_load_and_the_export_holds_what_was_done_before_it() {
    let server = Server::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, senders) = peak_load(&server.url("/telegram/webhook"), &stop);
    common::wait_until(
        "updates processed under load",
        Duration::from_secs(60),
        || server.stats()["done"].as_u64().unwrap_or(0) >= 1000,
    );

    // Each update of this load is one text message: at least as many messages as updates were
    // done before the export began.
    let done_before = server.stats()["done"].as_u64().expect("done");
    let acked_before = acked.lock().unwrap().len();
    let during = exported_ids(&succeeded(
        &server.cli(&["messages", "export", "--format", "jsonl"]),
    ));
    assert!(
        during.len() as u64 >= done_before,
        "{} messages exported, {done_before} updates done before the export",
        during.len()
    );
    let dlq = succeeded(&server.cli(&["dlq", "list"]));
    assert_eq!(dlq.trim(), "no dead letters");
    let stats = server.stats();
    assert!(stats["done"].as_u64() >= Some(done_before), "{stats}");
    // The commands ran while the load went on: it stops only now, having gone further.
    assert!(
        acked.lock().unwrap().len() > acked_before,
        "nothing was acknowledged while the commands ran"
    );
    stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.join().unwrap();
    }

    server.wait_drained();
    let after = exported_ids(&succeeded(
        &server.cli(&["messages", "export", "--format", "jsonl"]),
    ));
    let acked: BTreeSet<i64> = acked.lock().unwrap().iter().copied().collect();
    assert_eq!(
        after, acked,
        "every acknowledged update stored once, nothing else"
    );
    assert!(during.is_subset(&after));
}
