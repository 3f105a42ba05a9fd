//! notes-bot, the real binary, against the Bot API stand-in: every reply and reminder exactly
//! once, with its exact text, through a SIGKILL, a 429 and Telegram's redeliveries, and the
//! built-in `/register` beside them; on the embedded store, Postgres and AWS (moto).

#[path = "../../../crates/botline-aws/tests/common/mod.rs"]
mod aws;

use botline_standin::{Fault, Settings as StandInSettings, StandIn};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_notes-bot");
const TOKEN: &str = "987654:TEST-secret-token_xyz";
const BOT: &str = "notes_test_bot";
/// Long enough for any loaded machine: only a bot that never answers waits this out.
const GIVE_UP: Duration = Duration::from_secs(60);

struct NotesBot {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    api: String,
    /// Settings beyond the defaults (the backend).
    env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

impl NotesBot {
    fn start(standin: &StandIn, env: &[(String, String)]) -> Self {
        let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let log = data_dir.with_extension("log");
        let (port, api) = (free_port(), standin.base_url());
        let mut bot = Self {
            child: spawn(&data_dir, port, &log, &api, env),
            port,
            data_dir,
            log,
            api,
            env: env.to_vec(),
        };
        bot.wait_healthy();
        bot
    }

    fn restart(&mut self) {
        self.child = spawn(&self.data_dir, self.port, &self.log, &self.api, &self.env);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + GIVE_UP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("notes-bot exited with {status}: {}", self.logs());
            }
            if get(&format!("http://127.0.0.1:{}/health", self.port)) == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "never healthy: {}", self.logs());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Posts an update as Telegram does, until it is answered 200.
    fn deliver(&self, body: &serde_json::Value) {
        let url = format!("http://127.0.0.1:{}/telegram/webhook", self.port);
        let deadline = Instant::now() + GIVE_UP;
        while post(&url, &body.to_string()) != 200 {
            assert!(Instant::now() < deadline, "never acknowledged");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NotesBot {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(data_dir: &Path, port: u16, log: &Path, api: &str, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .env("BOTLINE_BOT_TOKEN", TOKEN)
        .env("BOTLINE_TELEGRAM_API_URL", api)
        .env("BOTLINE_LOG", "info")
        .env_remove("BOTLINE_WEBHOOK_SECRET")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("notes-bot starts")
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn get(url: &str) -> u16 {
    agent()
        .get(url)
        .call()
        .map_or(0, |response| response.status().as_u16())
}

fn post(url: &str, body: &str) -> u16 {
    agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .map_or(0, |response| response.status().as_u16())
}

fn message(update_id: i64, chat: i64, user: i64, text: &str) -> serde_json::Value {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_714_564_800,
            "chat": {"id": chat, "type": "private"},
            "from": {"id": user, "is_bot": false, "first_name": "Ann"},
            "text": text,
        }
    })
}

/// The texts Telegram accepted in `chat`, in order.
fn replies(standin: &StandIn, chat: i64) -> Vec<String> {
    standin
        .calls_of("sendMessage")
        .into_iter()
        .filter(|call| call.status == Some(200) && call.params["chat_id"] == chat)
        .map(|call| call.params["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn wait_for_replies(standin: &StandIn, chat: i64, n: usize) -> Vec<String> {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let sent = replies(standin, chat);
        if sent.len() >= n {
            return sent;
        }
        assert!(
            Instant::now() < deadline,
            "{n} replies expected in chat {chat}, got {sent:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `stats --json` once the outbox has no call pending (the stand-in sees a call before the
/// sender marks it sent).
fn wait_for_outbox(bot: &NotesBot, env: &[(String, String)]) -> serde_json::Value {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let out = Command::new(BIN)
            .args(["stats", "--json", "--data-dir"])
            .arg(&bot.data_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stats --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        if stats["outbox"]["pending"] == 0 {
            return stats;
        }
        assert!(Instant::now() < deadline, "calls still pending: {stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn notes_and_reminders_are_answered_exactly_once() {
    notes_and_reminders(&[]);
}

/// The same on the Postgres backend (127.0.0.1:5432 runs here; the test fails without it).
#[test]
fn notes_and_reminders_on_postgres() {
    let database = format!("notes_bot_{}", std::process::id());
    psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
    );
    psql("postgres", &format!("CREATE DATABASE {database}"));
    notes_and_reminders(&[
        ("BOTLINE_BACKEND".into(), "postgres".into()),
        (
            "BOTLINE_DATABASE_URL".into(),
            format!("postgres://postgres@127.0.0.1:5432/{database}"),
        ),
    ]);
    psql(
        "postgres",
        &format!("DROP DATABASE {database} WITH (FORCE)"),
    );
}

/// The same on the AWS backend, SQS and DynamoDB on moto's server mode (`scripts/moto.sh`
/// installs it; the test fails without it).
#[test]
fn notes_and_reminders_on_aws() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backend = runtime.block_on(aws::standard_backend(aws::whole_seconds()));
    let settings = backend.settings();
    notes_and_reminders(&[
        ("BOTLINE_BACKEND".into(), "aws".into()),
        ("BOTLINE_QUEUE_URL".into(), settings.queue_url.clone()),
        ("BOTLINE_DLQ_URL".into(), settings.dlq_url.clone()),
        ("BOTLINE_TABLE_PREFIX".into(), settings.table_prefix.clone()),
        ("AWS_ENDPOINT_URL".into(), aws::moto().endpoint.clone()),
        ("AWS_REGION".into(), aws::REGION.into()),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
    ]);
}

fn psql(database: &str, sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", database])
        .args(["-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .expect("psql runs: this test needs the Postgres client and server on 127.0.0.1:5432");
    assert!(
        out.status.success(),
        "psql failed (is Postgres running on 127.0.0.1:5432?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn notes_and_reminders(env: &[(String, String)]) {
    let standin = StandIn::start(StandInSettings {
        token: TOKEN.into(),
        username: BOT.into(),
        ..StandInSettings::default()
    });
    standin.fail_next(
        Some("sendMessage"),
        1,
        Fault::TooManyRequests { retry_after: 1 },
    );
    let mut bot = NotesBot::start(&standin, env);
    let chat = 4242;
    bot.deliver(&message(1, chat, 7, "/start"));
    bot.deliver(&message(2, chat, 7, "/notes"));
    bot.deliver(&message(3, chat, 7, "/note buy milk"));
    // Telegram redelivers an update whose 200 it did not get: answered once all the same.
    bot.deliver(&message(3, chat, 7, "/note buy milk"));
    bot.deliver(&message(4, chat, 7, &format!("/note@{BOT} call mum")));
    bot.deliver(&message(5, chat, 7, "hello there"));
    bot.deliver(&message(6, chat, 7, "/notes"));
    let expected = [
        "Hi Ann! Send /note <text> to save a note, /notes to list them.",
        "No notes yet.",
        "Saved note #1.",
        "Saved note #2.",
        "1. buy milk\n2. call mum",
    ];
    assert_eq!(wait_for_replies(&standin, chat, 5), expected);

    // Killed and restarted: what was written stays, and nothing is sent twice. (Killed once the
    // replies are marked sent: a kill between a call and its mark may send it twice, the one
    // window docs/handlers.md names.)
    wait_for_outbox(&bot, env);
    bot.kill();
    bot.restart();
    bot.deliver(&message(7, chat, 7, "/remind 2 tea"));
    let before = Instant::now();
    let sent = wait_for_replies(&standin, chat, 7);
    assert!(
        before.elapsed() >= Duration::from_secs(1),
        "the reminder came too early"
    );
    assert_eq!(sent[5], "I'll remind you in 2 s.");
    assert_eq!(sent[6], "Reminder: tea");
    // Another user's notes in the same chat are their own.
    bot.deliver(&message(8, chat, 8, "/note mine"));
    let sent = wait_for_replies(&standin, chat, 8);
    assert_eq!(sent[7], "Saved note #1.");
    // Botline's built-in `/register` works beside the bot's own commands.
    let issued = Command::new(BIN)
        .args(["tokens", "issue", "alice", "--data-dir"])
        .arg(&bot.data_dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let stdout = String::from_utf8(issued.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim();
    bot.deliver(&message(9, chat, 7, &format!("/register alice {token}")));
    let sent = wait_for_replies(&standin, chat, 9);
    assert_eq!(sent[8], "Registration successful! Welcome alice");
    assert!(!bot.logs().contains(token), "the token reached the logs");
    // The reminder in the outbox, done: one of each reply, and no more calls pending.
    let stats = wait_for_outbox(&bot, env);
    assert_eq!(stats["outbox"]["pending"], 0, "{stats}");
    assert_eq!(stats["outbox"]["done"], 9, "{stats}");
    assert_eq!(replies(&standin, chat).len(), 9, "nothing sent twice");
}
