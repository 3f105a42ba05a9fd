//! The holes of the security review (issue 21), each reproduced against the real binary as an
//! attacker or a careless operator would: slow clients holding connections, tokens kept in dead
//! letters, store files readable by others and a symlinked lock, no warning without a secret,
//! forged log lines.

mod common;

use common::{BIN, Server, free_port, get, message, post, register, temp_dir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Long enough for any loaded machine: only a server that never closes waits this out.
const GIVE_UP: Duration = Duration::from_secs(60);

/// Whether the server closed `stream`: a read returns end of file or a reset, rather than
/// blocking until [`GIVE_UP`].
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(GIVE_UP)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // An answer (a 408, say) before the close: read on.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", server.port)).expect("connect")
}

fn metric(server: &Server, line_start: &str) -> f64 {
    let (_, text) = get(&server.url("/metrics"));
    text.lines()
        .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Item 2: 300 connections with half-sent headers (and some that send nothing) are closed after
/// the read timeout, and Telegram's requests go through meanwhile; a body that stalls is
/// answered 408.
#[test]
fn slow_clients_are_cut_off_and_do_not_hold_the_server() {
    let server = Server::start(&[
        ("BOTLINE_READ_TIMEOUT", "1s"),
        ("BOTLINE_MAX_CONNECTIONS", "400"),
    ]);
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|n| {
            let mut stream = connect(&server);
            if n % 10 != 0 {
                stream
                    .write_all(b"POST /telegram/webhook HTTP/1.1\r\nHost: botline\r\nX-Slow: ")
                    .unwrap();
            }
            stream
        })
        .collect();
    // Telegram, meanwhile, is answered.
    let url = server.url("/telegram/webhook");
    assert_eq!(post(&url, None, &message(1, 5, 1, "hello")).status, 200);
    for (n, stream) in slow.iter_mut().enumerate() {
        assert!(
            closed_by_server(stream),
            "slow connection {n} still open after {GIVE_UP:?}"
        );
    }

    let mut stalled = connect(&server);
    stalled
        .write_all(
            b"POST /telegram/webhook HTTP/1.1\r\nHost: botline\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"update_id\":",
        )
        .unwrap();
    stalled.set_read_timeout(Some(GIVE_UP)).unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");

    assert!(metric(&server, r#"botline_http_timeouts_total{phase="headers"}"#) >= 300.0);
    assert_eq!(
        metric(&server, r#"botline_http_timeouts_total{phase="body"}"#),
        1.0
    );
    assert_eq!(server.wait_drained()["done"], 1);
}

/// Item 2: beyond `max_connections`, a connection is closed on arrival and counted, and once
/// the idle ones time out the server answers again.
#[test]
fn connections_beyond_the_cap_are_closed_and_counted() {
    let server = Server::start(&[
        ("BOTLINE_READ_TIMEOUT", "2s"),
        ("BOTLINE_MAX_CONNECTIONS", "4"),
    ]);
    // Four idle connections take every slot (the server accepts in the order they arrived, so
    // they are accepted before the probe); then a fifth is closed at once, unread. On a loaded
    // machine an idle one can time out before the probe arrives: then the probe is answered
    // (and closed, as it asks), and the attempt starts over with four fresh idle connections.
    let deadline = Instant::now() + GIVE_UP;
    let (mut idle, mut beyond) = loop {
        let idle: Vec<TcpStream> = (0..4).map(|_| connect(&server)).collect();
        let mut probe = connect(&server);
        probe
            .write_all(b"GET /health HTTP/1.1\r\nHost: botline\r\nConnection: close\r\n\r\n")
            .unwrap();
        probe.set_read_timeout(Some(GIVE_UP)).unwrap();
        let mut answer = String::new();
        let _ = probe.read_to_string(&mut answer);
        if answer.is_empty() {
            break (idle, probe);
        }
        assert!(Instant::now() < deadline, "the cap never applied");
        drop(idle);
    };
    assert!(closed_by_server(&mut beyond));
    for stream in &mut idle {
        assert!(closed_by_server(stream), "an idle connection stayed open");
    }
    let deadline = Instant::now() + GIVE_UP;
    while get(&server.url("/health")).0 != 200 {
        assert!(Instant::now() < deadline, "the server never answered again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&server, "botline_http_connections_refused_total") >= 1.0);
}

/// Item 3: a `/register` whose registration database is unreachable fails every attempt; its
/// dead letter, `dlq show`, `dlq list`, the log and the store's files after a clean stop hold no
/// token; redriven, it is answered with seed 002's failure reply (the user types it again).
#[test]
fn a_dead_lettered_registration_keeps_no_token() {
    let token = "s3cr3t-T0ken-of-alice-9f1c";
    let mut server = Server::start(&[
        ("BOTLINE_REGISTRATION", "postgres"),
        // Nothing listens on port 9 here: every attempt fails to reach the database.
        (
            "BOTLINE_REGISTRATION_DATABASE_URL",
            "postgres://botline@127.0.0.1:9/registrations",
        ),
        ("BOTLINE_MAX_ATTEMPTS", "2"),
        ("BOTLINE_BACKOFF_BASE", "50ms"),
        ("BOTLINE_BACKOFF_MAX", "100ms"),
    ]);
    let url = server.url("/telegram/webhook");
    let body = register(700, 77, &format!("/register alice {token}"));
    assert_eq!(post(&url, None, &body).status, 200);
    let stats = server.wait_drained();
    assert_eq!(stats["dead"], 1, "{stats}");

    let show = server.cli(&["dlq", "show", "700"]);
    assert!(show.status.success());
    let shown = String::from_utf8(show.stdout).unwrap();
    assert!(!shown.contains(token), "dlq show prints the token: {shown}");
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        shown["raw"]["message"]["text"],
        "/register alice [redacted]"
    );
    let list = String::from_utf8(server.cli(&["dlq", "list"]).stdout).unwrap();
    assert!(list.contains("700") && !list.contains(token), "{list}");

    // Redriven, the token is gone: the answer is the failure reply, without asking the database.
    assert!(server.cli(&["dlq", "redrive", "700"]).status.success());
    let stats = server.wait_drained();
    assert_eq!(
        (stats["dead"].as_u64(), stats["done"].as_u64()),
        (Some(0), Some(1)),
        "{stats}"
    );
    let db = rusqlite::Connection::open(server.data_dir.join("botline.db")).unwrap();
    let reply: String = db
        .query_row("SELECT action FROM outbox", [], |row| row.get(0))
        .unwrap();
    assert!(
        reply.contains("Registration failed. Please check your credentials and try again."),
        "{reply}"
    );
    drop(db);

    assert!(server.terminate().success());
    assert!(!server.logs().contains(token), "the token reached the log");
    for path in common::stored_files(&server.data_dir) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{} holds the token after a clean stop",
            path.display()
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Starts `botline serve` on `data_dir` expecting it to refuse; its stderr.
fn refused_start(data_dir: &Path) -> String {
    let out = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("BOTLINE_BOT_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "serve started on {}",
        data_dir.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Item 4: the data directory is created 0700 and the store's files 0600; a store an older
/// build left 0644 is narrowed; a directory others can write to and a symlinked lock are refused,
/// and the link's target is left as it was.
#[test]
fn the_store_is_private_and_its_lock_follows_no_link() {
    let data_dir = temp_dir().join("fresh");
    let mut server = Server::start_in(&data_dir, free_port(), &[]);
    let url = server.url("/telegram/webhook");
    assert_eq!(post(&url, None, &message(1, 5, 1, "private")).status, 200);
    server.wait_drained();
    assert_eq!(mode(&data_dir), 0o700);
    for file in [
        "botline.db",
        "botline.db-wal",
        "botline.db-shm",
        "serve.lock",
    ] {
        assert_eq!(mode(&data_dir.join(file)), 0o600, "{file}");
    }
    assert_eq!(mode(&data_dir.join("journal")), 0o700);
    let segments = common::stored_files(&data_dir.join("journal"));
    assert!(!segments.is_empty(), "the journal has its segment");
    for segment in segments {
        assert_eq!(mode(&segment), 0o600, "{}", segment.display());
    }
    assert!(server.terminate().success());

    // A store an older build created 0644 in a 0755 directory.
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = data_dir.join("botline.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut server = Server::start_in(&data_dir, free_port(), &[]);
    assert_eq!(mode(&db), 0o600, "narrowed at start");
    assert!(server.terminate().success());

    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = refused_start(&data_dir);
    assert!(
        refused.contains("other users can write") && refused.contains("chmod o-w"),
        "{refused}"
    );
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let victim = temp_dir().join("victim.txt");
    std::fs::write(&victim, "an operator's precious file").unwrap();
    let lock = data_dir.join("serve.lock");
    std::fs::remove_file(&lock).unwrap();
    std::os::unix::fs::symlink(&victim, &lock).unwrap();
    let refused = refused_start(&data_dir);
    assert!(refused.contains("symbolic link"), "{refused}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "an operator's precious file",
        "the link's target was truncated"
    );
}

/// Item 5: without a secret, `serve` says at start that anyone who can reach it can forge
/// updates (and indeed accepts one); with a secret it says nothing of the kind and refuses a
/// request without it.
#[test]
fn serving_without_a_secret_is_warned_about() {
    let mut open = Server::start(&[]);
    let url = open.url("/telegram/webhook");
    assert_eq!(post(&url, None, &message(1, 5, 1, "forged")).status, 200);
    assert!(open.terminate().success());
    assert!(
        open.logs().contains("no webhook secret") && open.logs().contains("WARN"),
        "{}",
        open.logs()
    );

    let mut guarded = Server::start(&[("BOTLINE_WEBHOOK_SECRET", "s3cret_value")]);
    let url = guarded.url("/telegram/webhook");
    assert_eq!(post(&url, None, &message(1, 5, 1, "forged")).status, 401);
    assert_eq!(
        post(&url, Some("s3cret_value"), &message(2, 5, 2, "real")).status,
        200
    );
    assert!(guarded.terminate().success());
    assert!(!guarded.logs().contains("no webhook secret"));
}

/// Item 7: an update kind is chosen by the sender (the body's first key); in the text log it
/// cannot start a line of its own.
#[test]
fn an_update_kind_cannot_forge_a_log_line() {
    let mut server = Server::start(&[("BOTLINE_LOG_FORMAT", "text")]);
    let url = server.url("/telegram/webhook");
    let forged = br#"{"update_id":9,"x\n2026-12-06T00:00:00.000000Z  INFO botline: forged=1":{}}"#;
    assert_eq!(post(&url, None, forged).status, 200);
    server.wait_drained();
    assert!(server.terminate().success());
    let logs = server.logs();
    assert!(
        logs.contains(r"x\u{a}2026-12-06T00:00:00"),
        "the kind is logged, escaped: {logs}"
    );
    assert!(
        !logs
            .lines()
            .any(|line| line.starts_with("2026-12-06T00:00:00")),
        "a forged line: {logs}"
    );
}
