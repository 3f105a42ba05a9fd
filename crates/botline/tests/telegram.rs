//! Botline talking back to Telegram, end to end: the real binary, a Telegram stand-in that
//! answers like the Bot API (429 with `retry_after`, 5xx, 403), and the operator's commands.

mod common;

use botline_standin::{Fault, Settings as StandInSettings, StandIn};
use common::{BIN, PgDb, Server, message, post, psql, wait_exit, wait_until};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const TOKEN: &str = "987654:TEST-secret-token_xyz";
const TOKEN_SECRET: &str = "TEST-secret-token_xyz";
const BOT: &str = "botline_test_bot";
const SECRET: &str = "webhook-secret_1";

fn standin() -> StandIn {
    StandIn::start(StandInSettings {
        token: TOKEN.into(),
        username: BOT.into(),
        ..StandInSettings::default()
    })
}

fn env(standin: &StandIn) -> Vec<(&'static str, String)> {
    vec![
        ("BOTLINE_TELEGRAM_API_URL", standin.base_url()),
        ("BOTLINE_BOT_TOKEN", TOKEN.to_owned()),
    ]
}

/// The stand-in's settings plus `extra`, as the harness takes them.
fn env_with<'a>(standin: &StandIn, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, String)> {
    let mut env = env(standin);
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

fn as_pairs<'a>(env: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn start(standin: &StandIn) -> Server {
    start_with(standin, &[])
}

fn start_with(standin: &StandIn, extra: &[(&str, &str)]) -> Server {
    Server::start(&as_pairs(&env_with(standin, extra)))
}

fn issue_token(server: &Server, username: &str) -> String {
    let issued = server.cli(&["tokens", "issue", username]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let stdout = String::from_utf8(issued.stdout).unwrap();
    stdout.lines().last().unwrap().trim().to_owned()
}

/// Sent messages that Telegram accepted, to `chat`.
fn accepted_texts(standin: &StandIn, chat: i64) -> Vec<String> {
    standin
        .calls_of("sendMessage")
        .into_iter()
        .filter(|c| c.succeeded() && c.params["chat_id"] == chat)
        .map(|c| c.params["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Whether the outbox has `done` calls made, `failed` refused for good and none that could
/// still go out (none pending, none being retried).
fn outbox_settled(server: &Server, done: u64, failed: u64) -> bool {
    let stats = server.stats();
    let outbox = &stats["outbox"];
    outbox["pending"] == 0 && outbox["done"] == done && outbox["failed"] == failed
}

/// What Botline wrote anywhere in its data directory, as text (SQLite files included).
fn everything_stored(server: &Server) -> String {
    let mut all = String::new();
    for path in common::stored_files(&server.data_dir) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        all.push_str(&format!("\n== {} ==\n", path.display()));
        all.push_str(&String::from_utf8_lossy(&bytes));
    }
    all
}

#[test]
fn a_reply_goes_out_exactly_once_through_a_429_and_a_redelivery() {
    let standin = standin();
    standin.fail_next(
        Some("sendMessage"),
        1,
        Fault::TooManyRequests { retry_after: 1 },
    );
    let server = start(&standin);
    let token = issue_token(&server, "alice");
    let url = server.url("/telegram/webhook");
    let update = message(700, 4242, 31, &format!("/register alice {token}"));
    assert_eq!(post(&url, None, &update).status, 200);

    let sent = standin.wait_for_calls("sendMessage", 1, Duration::from_secs(20));
    assert_eq!(sent.len(), 1, "{:?}", standin.calls());
    let attempts = standin.calls_of("sendMessage");
    assert_eq!(attempts.len(), 2, "one 429, then the reply: {attempts:?}");
    assert_eq!(attempts[0].status, Some(429));
    assert!(
        attempts[1].at - attempts[0].at >= Duration::from_millis(950),
        "retry_after was honoured: {:?} then {:?}",
        attempts[0].at,
        attempts[1].at
    );
    assert_eq!(
        attempts[1].params["text"],
        "Registration successful! Welcome alice"
    );
    assert_eq!(attempts[1].params["chat_id"], 4242);
    assert_eq!(attempts[1].params["reply_parameters"]["message_id"], 31);

    // Telegram redelivers the same update (its 200 was lost): stored once, answered once.
    assert_eq!(post(&url, None, &update).status, 200);
    server.wait_drained();
    // Once the outbox holds no call that could still go out, nothing more can arrive.
    wait_until("the outbox settled", Duration::from_secs(20), || {
        outbox_settled(&server, 1, 0)
    });
    assert_eq!(
        accepted_texts(&standin, 4242),
        vec!["Registration successful! Welcome alice".to_owned()]
    );
    assert_eq!(server.messages().len(), 1);
    let stats = server.stats();
    assert_eq!(stats["outbox"]["done"], 1, "{stats}");
    assert_eq!(stats["outbox"]["pending"], 0, "{stats}");
}

#[test]
fn replies_survive_telegram_errors_and_a_restart_without_doubling() {
    let standin = standin();
    standin.fail_next(Some("sendMessage"), 2, Fault::Server(502));
    let mut server = start(&standin);
    let url = server.url("/telegram/webhook");
    for (i, chat) in [5001_i64, 5002, 5003].into_iter().enumerate() {
        let update = message(800 + i as i64, chat, 1, "/register only-one-arg");
        assert_eq!(post(&url, None, &update).status, 200);
    }
    wait_until("three replies", Duration::from_secs(30), || {
        (5001..=5003).all(|chat| accepted_texts(&standin, chat).len() == 1)
    });
    assert!(
        standin
            .calls_of("sendMessage")
            .iter()
            .filter(|c| c.status == Some(502))
            .count()
            == 2
    );
    // A restart re-reads the outbox; nothing already sent goes out again. (Killed before a
    // call's done mark commits, that one call would go out again once its lease ends: the
    // window docs/telegram.md describes. So the kill waits for the three done marks.)
    wait_until(
        "the three calls marked done",
        Duration::from_secs(20),
        || outbox_settled(&server, 3, 0),
    );
    server.restart();
    let update = message(810, 5004, 1, "/register x");
    assert_eq!(post(&url, None, &update).status, 200);
    wait_until("the fourth reply", Duration::from_secs(20), || {
        accepted_texts(&standin, 5004).len() == 1
    });
    wait_until("the outbox settled", Duration::from_secs(20), || {
        outbox_settled(&server, 4, 0)
    });
    for chat in 5001..=5004 {
        assert_eq!(
            accepted_texts(&standin, chat),
            vec!["Please use format: /register [username] [token]".to_owned()],
            "chat {chat}"
        );
    }
}

#[test]
fn a_blocked_chat_fails_for_good_and_is_not_retried() {
    let standin = standin();
    standin.block_chat(6001);
    let server = start(&standin);
    let url = server.url("/telegram/webhook");
    assert_eq!(
        post(&url, None, &message(900, 6001, 1, "/register a")).status,
        200
    );
    wait_until("the refused call", Duration::from_secs(20), || {
        standin.calls_of("sendMessage").len() == 1
    });
    wait_until(
        "the failure recorded, nothing left to send",
        Duration::from_secs(10),
        || outbox_settled(&server, 0, 1),
    );
    assert_eq!(standin.calls_of("sendMessage").len(), 1, "403 is final");
    assert_eq!(standin.calls_of("sendMessage")[0].status, Some(403));
    assert!(server.logs().contains("bot was blocked by the user"));
}

#[test]
fn in_a_group_the_token_message_is_deleted_and_the_token_is_nowhere() {
    let standin = standin();
    let server = start(&standin);
    let token = issue_token(&server, "bob");
    let url = server.url("/telegram/webhook");
    let group = -1_001_234;
    // Addressed to this bot by name: its username comes from getMe.
    let update = message(1000, group, 77, &format!("/register@{BOT} bob {token}"));
    assert_eq!(post(&url, None, &update).status, 200);
    let other = message(1001, group, 78, "/register@some_other_bot bob x1234567");
    assert_eq!(post(&url, None, &other).status, 200);
    standin.wait_for_calls("deleteMessage", 1, Duration::from_secs(20));
    assert_eq!(
        accepted_texts(&standin, group),
        vec!["Registration successful! Welcome bob".to_owned()]
    );
    let deleted = standin.calls_of("deleteMessage");
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].params["chat_id"], group);
    assert_eq!(deleted[0].params["message_id"], 77);
    server.wait_drained();

    let export = server.cli(&["messages", "export", "--format", "csv"]);
    let export = String::from_utf8(export.stdout).unwrap();
    assert!(export.contains("[redacted]"), "{export}");
    assert!(!export.contains(&token), "the token is in the export");
    let logs = server.logs();
    assert!(!logs.contains(&token), "the user's token is in the logs");
    assert!(!logs.contains(TOKEN_SECRET), "the bot token is in the logs");
    // Until the store's write-ahead log is checkpointed, an older copy of the queued body may
    // sit in it (the documented window); after a clean stop, no byte of the token is left.
    let mut server = server;
    assert_eq!(server.terminate().code(), Some(0));
    let stored = everything_stored(&server);
    if let Some(at) = stored.find(&token) {
        let file = stored[..at]
            .rfind("\n== ")
            .and_then(|f| stored[f + 4..].split(" ==").next());
        panic!(
            "the user's token is in the data directory, in {file:?}: {}",
            server.logs()
        );
    }
    assert!(
        !stored.contains(TOKEN_SECRET),
        "the bot token is in the data directory"
    );
}

#[test]
fn a_failed_deletion_is_logged_and_not_fatal() {
    let standin = standin();
    standin.undeletable(-2002, 5);
    let server = start(&standin);
    let url = server.url("/telegram/webhook");
    let update = message(1100, -2002, 5, "/register carol not-a-valid-token");
    assert_eq!(post(&url, None, &update).status, 200);
    wait_until("the deletion tried", Duration::from_secs(20), || {
        !standin.calls_of("deleteMessage").is_empty()
    });
    wait_until("its failure recorded", Duration::from_secs(10), || {
        server.stats()["outbox"]["failed"] == 1
    });
    assert_eq!(
        accepted_texts(&standin, -2002),
        vec!["Registration failed. Please check your credentials and try again.".to_owned()]
    );
    assert!(server.logs().contains("message to delete not found"));
    assert_eq!(common::get(&server.url("/health")).0, 200);
}

fn botline(standin: &StandIn, args: &[&str], extra: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("BOTLINE_TELEGRAM_API_URL", standin.base_url())
        .env("BOTLINE_BOT_TOKEN", TOKEN)
        .env_remove("BOTLINE_WEBHOOK_SECRET")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("botline runs")
}

#[test]
fn webhook_set_info_and_delete() {
    let standin = standin();
    let set = botline(
        &standin,
        &[
            "webhook",
            "set",
            "--url",
            "https://bot.example.org/telegram/webhook",
            "--max-connections",
            "80",
            "--allowed-updates",
            "message,callback_query",
            "--drop-pending-updates",
        ],
        &[("BOTLINE_WEBHOOK_SECRET", SECRET)],
    );
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let webhook = standin.webhook();
    assert_eq!(webhook.url, "https://bot.example.org/telegram/webhook");
    assert_eq!(webhook.secret_token.as_deref(), Some(SECRET));
    assert_eq!(webhook.max_connections, Some(80));
    assert_eq!(
        webhook.allowed_updates,
        Some(vec!["message".to_owned(), "callback_query".to_owned()])
    );
    let printed =
        String::from_utf8_lossy(&set.stdout).to_string() + &String::from_utf8_lossy(&set.stderr);
    assert!(
        !printed.contains(SECRET),
        "the secret was printed: {printed}"
    );
    assert!(!printed.contains(TOKEN_SECRET));

    standin.set_webhook_error(
        1_763_700_000,
        "Wrong response from the webhook: 503 Service Unavailable",
    );
    let info = botline(&standin, &["webhook", "info"], &[]);
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info = String::from_utf8(info.stdout).unwrap();
    assert!(
        info.contains("https://bot.example.org/telegram/webhook"),
        "{info}"
    );
    assert!(info.contains("pending updates:  0"), "{info}");
    assert!(info.contains("max connections:  80"), "{info}");
    assert!(info.contains("message, callback_query"), "{info}");
    assert!(
        info.contains("2025-11-21T04:40:00.000Z Wrong response from the webhook"),
        "{info}"
    );
    let json = botline(&standin, &["webhook", "info", "--json"], &[]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(json["url"], "https://bot.example.org/telegram/webhook");
    assert_eq!(json["max_connections"], 80);

    let delete = botline(
        &standin,
        &["webhook", "delete", "--drop-pending-updates"],
        &[],
    );
    assert!(delete.status.success());
    assert_eq!(standin.webhook().url, "");
    let deletes = standin.calls_of("deleteWebhook");
    assert_eq!(deletes[0].params["drop_pending_updates"], true);

    // Bad input: refused before anything is sent.
    let before = standin.calls().len();
    let bad = botline(
        &standin,
        &[
            "webhook",
            "set",
            "--url",
            "https://x.org",
            "--allowed-updates",
            "bogus",
        ],
        &[],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bogus"));
    let bad = botline(
        &standin,
        &[
            "webhook",
            "set",
            "--url",
            "https://x.org",
            "--max-connections",
            "500",
        ],
        &[],
    );
    assert!(!bad.status.success());
    assert_eq!(standin.calls().len(), before);
    // A wrong token is Telegram's 401, said plainly, without the token.
    let wrong = Command::new(BIN)
        .args(["webhook", "info"])
        .env("BOTLINE_TELEGRAM_API_URL", standin.base_url())
        .env("BOTLINE_BOT_TOKEN", "987654:WRONG-token")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains("WRONG-token"), "{stderr}");
    // No token at all.
    let none = Command::new(BIN)
        .args(["webhook", "info"])
        .env_remove("BOTLINE_BOT_TOKEN")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&none.stderr).contains("BOTLINE_BOT_TOKEN"));
}

fn update(update_id: i64, chat: i64, message_id: i64, text: &str) -> serde_json::Value {
    serde_json::from_slice(&message(update_id, chat, message_id, text)).unwrap()
}

#[test]
fn polling_runs_the_whole_pipeline_and_confirms_only_durable_updates() {
    let standin = standin();
    standin.push_updates(vec![
        update(2000, 7001, 1, "hello"),
        update(2001, 7001, 2, "/register alice"),
        update(2002, 7002, 1, "hi there"),
    ]);
    let env = env_with(&standin, &[("BOTLINE_POLL_TIMEOUT", "1s")]);
    let mut server = Server::poll(&as_pairs(&env));
    wait_until("the reply", Duration::from_secs(20), || {
        accepted_texts(&standin, 7001).len() == 1
    });
    standin.push_updates(vec![update(2003, 7002, 2, "more")]);
    wait_until("all stored", Duration::from_secs(20), || {
        server.messages().len() == 4
    });
    assert_eq!(
        accepted_texts(&standin, 7001),
        vec!["Please use format: /register [username] [token]".to_owned()]
    );
    // The offset confirms what is durable, and only that.
    wait_until("confirmation", Duration::from_secs(10), || {
        standin
            .calls_of("getUpdates")
            .iter()
            .any(|c| c.params["offset"] == 2004)
    });
    assert_eq!(standin.webhook().pending_update_count, 0);
    assert_eq!(
        common::get(&server.url("/telegram/webhook")).0,
        404,
        "no webhook while polling"
    );
    assert_eq!(common::get(&server.url("/health")).0, 200);
    assert_eq!(server.terminate().code(), Some(0));
    assert!(!server.logs().contains(TOKEN_SECRET));
}

#[test]
fn polling_with_a_webhook_set_says_how_to_remove_it() {
    let standin = standin();
    let set = botline(
        &standin,
        &["webhook", "set", "--url", "https://bot.example.org/hook"],
        &[],
    );
    assert!(set.status.success());
    assert!(
        String::from_utf8_lossy(&set.stdout).contains("WITHOUT a secret"),
        "a webhook with no secret is called out"
    );
    let dir = common::temp_dir();
    let mut child = Command::new(BIN)
        .args(["poll", "--data-dir"])
        .arg(&dir)
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .env("BOTLINE_TELEGRAM_API_URL", standin.base_url())
        .env("BOTLINE_BOT_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("botline webhook delete"), "{stderr}");
    assert!(!stderr.contains(TOKEN_SECRET));
}

#[test]
fn poll_needs_a_bot_token() {
    let dir = common::temp_dir();
    let out = Command::new(BIN)
        .args(["poll", "--data-dir"])
        .arg(&dir)
        .env_remove("BOTLINE_BOT_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BOTLINE_BOT_TOKEN"));
}

/// A database of its own on the local Postgres, with the example registration function.
fn registration_db() -> PgDb {
    let db = PgDb::new("botline_e2e");
    db.run_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../botline-registrar/sql/example_postgres.sql"
    ));
    db
}

#[test]
fn a_postgres_function_decides_registrations() {
    let db = registration_db();
    psql(
        &db.name,
        "INSERT INTO party_registration_token (token_digest, username, expires_at) VALUES \
         (sha256(convert_to('pg-token-0001', 'UTF8')), 'alice', now() + interval '1 hour')",
    );
    let standin = standin();
    let url = db.url();
    let server = start_with(
        &standin,
        &[
            ("BOTLINE_REGISTRATION", "postgres"),
            ("BOTLINE_REGISTRATION_DATABASE_URL", &url),
        ],
    );
    let url = server.url("/telegram/webhook");
    assert_eq!(
        post(
            &url,
            None,
            &message(3000, 8001, 1, "/register alice pg-token-0001")
        )
        .status,
        200
    );
    assert_eq!(
        post(
            &url,
            None,
            &message(3001, 8001, 2, "/register alice wrong-token-1")
        )
        .status,
        200
    );
    wait_until("two replies", Duration::from_secs(20), || {
        accepted_texts(&standin, 8001).len() == 2
    });
    assert_eq!(
        accepted_texts(&standin, 8001),
        vec![
            "Registration successful! Welcome alice".to_owned(),
            "Registration failed. Please check your credentials and try again.".to_owned(),
        ]
    );
    assert_eq!(
        psql(
            &db.name,
            "SELECT telegram_user_id || ':' || username || ':' || chat_id FROM party_telegram_user"
        ),
        "42:alice:8001"
    );
    server.wait_drained();
    let export = String::from_utf8(server.cli(&["messages", "export"]).stdout).unwrap();
    assert!(
        !export.contains("pg-token-0001") && export.contains("[redacted]"),
        "{export}"
    );
    assert!(!server.logs().contains("pg-token-0001"));
}

#[test]
fn an_unreachable_registration_database_retries_and_dead_letters_without_answering() {
    let standin = standin();
    let closed = format!(
        "postgres://postgres:pw-never-logged@127.0.0.1:{}/x",
        common::free_port()
    );
    let server = start_with(
        &standin,
        &[
            ("BOTLINE_REGISTRATION", "postgres"),
            ("BOTLINE_REGISTRATION_DATABASE_URL", &closed),
            ("BOTLINE_BACKOFF_BASE", "100ms"),
        ],
    );
    let url = server.url("/telegram/webhook");
    assert_eq!(
        post(
            &url,
            None,
            &message(3100, 8101, 1, "/register alice some-token-1")
        )
        .status,
        200
    );
    assert_eq!(
        post(&url, None, &message(3101, 8102, 1, "just chatting")).status,
        200
    );
    wait_until("the dead letter", Duration::from_secs(30), || {
        server.stats()["dead"] == 1
    });
    assert_eq!(server.messages().len(), 1, "other chats are not held up");
    assert!(
        standin.calls_of("sendMessage").is_empty(),
        "no answer was guessed"
    );
    let logs = server.logs();
    assert!(
        !logs.contains("pw-never-logged"),
        "the database password reached the logs"
    );
    assert!(
        !logs.contains("some-token-1"),
        "the typed token reached the logs"
    );
    assert!(logs.contains("registration backend"), "{logs}");
}
