//! The data directory fills up or turns read-only while `botline serve` runs, under a load that
//! delivers the way Telegram does: the webhook answers 503 with `Retry-After` (never 200 for an
//! update it did not store, never 500), `/health` says 503 while a write cannot commit, and once
//! the fault clears Botline recovers by itself, without a restart: every acknowledged update is
//! stored exactly once and processed. A server started on a read-only data directory exits,
//! naming the problem.
//!
//! These tests need root: the full disk is a small tmpfs in a mount namespace of the server's own
//! (`unshare`), the read-only one `chattr +i` on ext4 (a read-only remount is refused while the
//! store's files are open for writing). Without them the tests fail; they never skip.

mod common;

use botline_bench::{LoadConfig, LoadLimit, Report};
use common::{Answer, ContainedServer, Server, free_port, get, message, post};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The load runs this long, at [`RATE`] updates per second.
const LOAD_FOR: Duration = Duration::from_secs(5);
const RATE: f64 = 200.0;
/// The fault starts this long into the load...
const FAULT_AFTER: Duration = Duration::from_secs(1);
/// ...and is cleared this long after a webhook request was first refused.
const FAULT_HELD: Duration = Duration::from_millis(1500);
/// The chat of the updates the test posts itself, next to the load's.
const PROBE_CHAT: i64 = -4_242;
/// The server's lease. An update the worker leased just before the fault, and could neither
/// store nor hand back (both are writes), is processed again once its lease expires: with the
/// default of 30 s the queue would drain only that long after the fault.
const SHORT_LEASE: &[(&str, &str)] = &[("BOTLINE_LEASE", "2s")];

/// What one load through one fault saw.
#[derive(Debug)]
struct Seen {
    report: Report,
    /// The first update refused during the fault, as it was answered.
    refused: Answer,
    /// `/health` while the fault lasted, asked every 50 ms: status and body.
    health_during: Vec<(u16, String)>,
    /// `/health` once the refused update was acknowledged again.
    health_after: (u16, String),
    /// The message ids of the test's own updates, each acknowledged in the end.
    probes: Vec<i64>,
    /// From clearing the fault to the refused update being acknowledged on redelivery.
    recovered_in: Duration,
    /// When the fault was cleared.
    cleared: Instant,
}

/// Runs a load against `server` and, [`FAULT_AFTER`] into it, `inject`s a fault; posts updates of
/// its own until one is refused (the fault was felt), holds the fault [`FAULT_HELD`] longer for
/// the load to feel it too, then `clear`s it and redelivers the refused update until it is
/// acknowledged.
fn load_through_fault<F>(
    server: &Server,
    inject: impl FnOnce() -> F,
    clear: impl FnOnce(F),
) -> Seen {
    let url = server.url("/telegram/webhook");
    let config = LoadConfig {
        url: url.clone(),
        connections: 8,
        chats: 32,
        rate: Some(RATE),
        limit: LoadLimit::Duration(LOAD_FOR),
        give_up: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
        ..LoadConfig::default()
    };
    let load = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(botline_bench::run(config))
    });

    std::thread::sleep(FAULT_AFTER);
    let fault = inject();
    let felt_by = Instant::now() + Duration::from_secs(10);
    let mut probes = Vec::new();
    let (refused_id, refused) = loop {
        let id = probes.len() as i64 + 1;
        let answer = post(&url, None, &probe(id));
        match answer.status {
            200 => probes.push(id),
            503 => break (id, answer),
            0 => panic!(
                "update {id} got no answer during the fault: {}",
                server.logs()
            ),
            other => panic!("update {id} during the fault: {other} {}", answer.body),
        }
        assert!(
            Instant::now() < felt_by,
            "the fault was never felt: {} updates acknowledged after it began",
            probes.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut health_during = Vec::new();
    let held = Instant::now();
    while held.elapsed() < FAULT_HELD {
        health_during.push(get(&server.url("/health")));
        std::thread::sleep(Duration::from_millis(50));
    }

    let cleared = Instant::now();
    clear(fault);
    common::deliver(&url, None, &probe(refused_id), Duration::from_secs(20));
    let recovered_in = cleared.elapsed();
    probes.push(refused_id);
    let health_after = get(&server.url("/health"));

    let report = load.join().expect("the load thread").expect("the load ran");
    let seen = Seen {
        report,
        refused,
        health_during,
        health_after,
        probes,
        recovered_in,
        cleared,
    };
    eprintln!(
        "acknowledged {}, answers {:?}, connection errors {}, retries {}, probes {}, \
         recovered in {:?}, health during {:?}",
        seen.report.acknowledged,
        seen.report.non_2xx_by_status,
        seen.report.connection_errors,
        seen.report.retries,
        seen.probes.len(),
        seen.recovered_in,
        seen.health_during.iter().map(|h| h.0).collect::<Vec<_>>(),
    );
    seen
}

/// One of the test's own updates, in [`PROBE_CHAT`].
fn probe(id: i64) -> Vec<u8> {
    message(id, PROBE_CHAT, id, "during the fault")
}

/// Checks what the webhook answered through the fault, and that the store holds every
/// acknowledged update exactly once, processed. `fault` is what the server's log says the fault
/// was.
fn check(seen: &Seen, exported: &str, stats: &serde_json::Value, logs: &str, fault: &str) {
    let report = &seen.report;
    assert_eq!(seen.refused.status, 503);
    assert_eq!(seen.refused.retry_after.as_deref(), Some("1"), "{seen:?}");
    assert_eq!(seen.refused.body, r#"{"error":"temporarily unavailable"}"#);
    let unhealthy: Vec<&(u16, String)> = seen
        .health_during
        .iter()
        .filter(|(status, _)| *status != 200)
        .collect();
    assert!(
        !unhealthy.is_empty(),
        "/health never said 503 during the fault"
    );
    for (status, body) in unhealthy {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains(r#""status":"unavailable""#), "{body}");
    }
    assert_eq!(seen.health_after.0, 200, "{:?}", seen.health_after);

    assert!(
        report.non_2xx_by_status.get(&503).is_some_and(|&n| n > 0),
        "the load did not feel the fault: {report:#?}"
    );
    assert_eq!(
        report.non_2xx_by_status.keys().collect::<Vec<_>>(),
        vec![&503],
        "a refusal other than 503"
    );
    assert_eq!(
        report.connection_errors, 0,
        "requests went unanswered: {:?}",
        report.connection_errors_by_kind
    );
    assert_eq!(report.given_up, 0, "{:?}", report.given_up_updates);

    let verification = botline_bench::verify(report, exported);
    assert!(verification.is_ok(), "{verification}");
    assert_eq!(verification.present, report.acknowledged);
    let probe_chat = PROBE_CHAT.to_string();
    let mut probes_stored: Vec<i64> = exported
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .filter(|m| m["chatId"].as_str() == Some(probe_chat.as_str()))
        .map(|m| m["messageId"].as_i64().expect("a message id"))
        .collect();
    probes_stored.sort_unstable();
    let mut probes = seen.probes.clone();
    probes.sort_unstable();
    assert_eq!(probes_stored, probes, "the test's own updates, once each");

    let updates = report.acknowledged + seen.probes.len() as u64;
    assert_eq!(
        stats["done"], updates,
        "one queue entry per update: {stats}"
    );
    assert_eq!(stats["dead"], 0, "{stats}");
    assert!(logs.contains(fault), "the log does not say {fault:?}");
    assert!(!logs.contains("panicked"), "{logs}");
}

/// Writes `path` until its file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let mut written = 0;
    for chunk in [1 << 20, 4096] {
        let bytes = vec![0xA5_u8; chunk];
        loop {
            match file.write(&bytes) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) => panic!("writing {}: {e}", path.display()),
            }
        }
    }
    assert!(
        file.write(&[0]).is_err(),
        "{} is not full after {written} bytes",
        path.display()
    );
    written
}

/// A full disk refuses a write that needs new space, not one that fits in space the WAL already
/// holds: a transaction that failed half-way leaves it some. So a small update, or the one-page
/// write of `/health`, may still commit now and then; either is durable, and answered 200
/// truthfully.
#[test]
fn a_full_disk_is_answered_503_and_nothing_acknowledged_is_lost_once_space_is_back() {
    let contained = ContainedServer::start("16m", SHORT_LEASE);
    let server = &contained.server;
    let ballast = contained.outside_path().join("ballast");
    let seen = load_through_fault(
        server,
        || fill(&ballast),
        |_| std::fs::remove_file(&ballast).expect("the ballast goes"),
    );
    let stats = contained.wait_drained();
    eprintln!("drained {:?} after the fault", seen.cleared.elapsed());
    check(
        &seen,
        &contained.export_jsonl(),
        &stats,
        &server.logs(),
        "No space left on device",
    );
}

/// `chattr +i` on some paths while it lives: nothing can write them, not even root, and no file
/// can be created in a directory among them. Undone when dropped, also when a test panics, or the
/// paths could not be removed afterwards.
#[derive(Debug)]
struct Immutable {
    paths: Vec<PathBuf>,
}

impl Immutable {
    fn set(paths: Vec<PathBuf>) -> Self {
        // Undone even if `chattr` set some of them before it failed.
        let immutable = Self { paths };
        chattr("+i", &immutable.paths);
        immutable
    }

    fn clear(mut self) {
        chattr("-i", &self.paths);
        self.paths.clear();
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        if self.paths.is_empty() {
            return;
        }
        let _ = Command::new("chattr")
            .arg("-i")
            .args(&self.paths)
            .stdin(Stdio::null())
            .status();
    }
}

fn chattr(flag: &str, paths: &[PathBuf]) {
    let out = Command::new("chattr")
        .arg(flag)
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .expect("`chattr` runs (e2fsprogs; these tests need root and ext4)");
    assert!(
        out.status.success(),
        "chattr {flag} {paths:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A data directory and every file in it but SQLite's shared-memory index (`botline.db-shm`),
/// the ingestion journal's directory and segments included.
///
/// SQLite writes that file through a shared mapping, and on ext4 a write fault on a mapped page
/// of an immutable file is SIGBUS: the server dies. Nothing acknowledged is lost then (it was
/// committed before the answer; `crash.rs` kills at random moments), but there is no 503 to
/// test.
fn read_only_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the data directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| !path.ends_with("botline.db-shm"))
        .collect();
    let mut names: Vec<_> = paths.iter().filter_map(|p| p.file_name()).collect();
    names.sort();
    assert_eq!(
        names,
        ["botline.db", "botline.db-wal", "journal", "serve.lock"],
        "the files of a running store"
    );
    let segments = std::fs::read_dir(dir.join("journal")).expect("the journal");
    paths.extend(segments.map(|entry| entry.expect("a journal segment").path()));
    paths.push(dir.to_owned());
    paths
}

#[test]
fn a_read_only_data_dir_is_answered_503_and_nothing_acknowledged_is_lost_once_writable() {
    let server = Server::start(SHORT_LEASE);
    let seen = load_through_fault(
        &server,
        || Immutable::set(read_only_paths(&server.data_dir)),
        Immutable::clear,
    );
    assert!(
        seen.health_during.iter().all(|(status, _)| *status == 503),
        "a read-only store took a write: {:?}",
        seen.health_during
    );
    let stats = server.wait_drained();
    eprintln!("drained {:?} after the fault", seen.cleared.elapsed());
    let exported = server.cli(&["messages", "export", "--format", "jsonl"]);
    assert!(exported.status.success());
    check(
        &seen,
        &String::from_utf8(exported.stdout).expect("UTF-8"),
        &stats,
        &server.logs(),
        "disk I/O error",
    );
}

/// The exit status of `child`, or `None` if it is still running `within` from now.
fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_server_started_on_a_read_only_data_dir_exits_naming_the_problem() {
    let mut server = Server::start(&[]);
    let url = server.url("/telegram/webhook");
    assert_eq!(post(&url, None, &message(1, 7, 1, "before")).status, 200);
    server.wait_drained();
    assert!(server.terminate().success());
    let dir = server.data_dir.clone();
    assert!(
        !dir.join("botline.db-wal").exists(),
        "a clean stop leaves no WAL, so a new start must create one"
    );

    let lock = dir.join("serve.lock");
    let db = dir.join("botline.db");
    let refusal = |what: &str| format!("{what}: Operation not permitted");
    let cases = [
        // The lock file is the first thing a server creates...
        (
            false,
            vec![dir.clone()],
            refusal(&format!("cannot create {}", lock.display())),
        ),
        // ...then SQLite the WAL beside the database.
        (
            true,
            vec![dir.clone()],
            refusal(&format!("cannot create files in {}", dir.display())),
        ),
        (
            true,
            vec![dir.clone(), db.clone()],
            refusal(&format!("cannot write {}", db.display())),
        ),
    ];
    for (locked_before, paths, expected) in cases {
        if locked_before {
            std::fs::File::create(&lock).expect("the lock file");
        } else {
            std::fs::remove_file(&lock).expect("the lock file goes");
        }
        let immutable = Immutable::set(paths.clone());
        let log = dir.with_extension("refused.log");
        let mut refused = Command::new(common::BIN)
            .args(["serve", "--data-dir"])
            .arg(&dir)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .env_remove("BOTLINE_WEBHOOK_SECRET")
            .env_remove("BOTLINE_BOT_TOKEN")
            .env_remove("BOTLINE_BOT_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("botline starts");
        let exited = wait_exit(&mut refused, Duration::from_secs(20));
        immutable.clear();
        let Some(status) = exited else {
            let _ = refused.kill();
            let _ = refused.wait();
            panic!(
                "{paths:?} immutable: still running after 20 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let stderr = std::fs::read_to_string(&log).expect("the log");
        assert!(!status.success(), "{paths:?} immutable: {stderr}");
        assert!(
            status.code().is_some(),
            "{paths:?} immutable: killed by a signal"
        );
        // The JSON log line of the same error is written by the log thread, before or after.
        assert!(
            stderr
                .lines()
                .any(|line| line.starts_with("botline: ") && line.contains(&expected)),
            "{paths:?} immutable: the message does not say {expected:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    server.restart();
    assert_eq!(post(&url, None, &message(2, 7, 2, "after")).status, 200);
    server.wait_drained();
    let texts: Vec<_> = server
        .messages()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, vec!["before", "after"]);
}
