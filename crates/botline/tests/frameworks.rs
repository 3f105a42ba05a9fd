//! Real bots written with other frameworks behind Botline (issue 16): `examples/grammy-handler`
//! (grammY on node:http, answering through its webhook reply, JSON) and
//! `examples/aiogram-handler` (aiogram's `SimpleRequestHandler`, answering in multipart/form-data)
//! each run as their own process, Botline forwards every update to them, and every reply reaches
//! the Bot API stand-in exactly once, in order per chat, while the bot's process is killed and
//! started again and the stand-in answers 429.
//!
//! The examples are installed by `scripts/test.sh` (`npm ci && npm run build` in
//! `examples/grammy-handler`, a venv from `requirements.txt` in `examples/aiogram-handler`);
//! these tests fail, saying so, when they were not.

mod common;

use botline_standin::{Fault, Settings as StandInSettings, StandIn};
use common::{Server, deliver, free_port, message, replies, wait_until};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SECRET_TOKEN: &str = "grammy-handler-secret";
const GIVE_UP: Duration = Duration::from_secs(90);

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// A framework's example bot, started on a port.
struct Framework {
    start: fn(port: u16, api: &str, token: &str) -> Child,
    /// Where it takes updates.
    path: &'static str,
}

/// `node dist/bot.js` of the grammY example, listening on `port`.
fn start_grammy(port: u16, api: &str, token: &str) -> Child {
    let dir = example("grammy-handler");
    assert!(
        dir.join("dist/bot.js").exists() && dir.join("node_modules/grammy").exists(),
        "examples/grammy-handler is not built: run scripts/test.sh, or `npm ci && npm run build` there"
    );
    spawn_example(
        Command::new("node").arg("dist/bot.js"),
        &dir,
        port,
        api,
        token,
    )
}

/// `python bot.py` of the aiogram example, listening on `port`.
fn start_aiogram(port: u16, api: &str, token: &str) -> Child {
    let dir = example("aiogram-handler");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "examples/aiogram-handler has no .venv: run scripts/test.sh, or `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt` there"
    );
    spawn_example(Command::new(python).arg("bot.py"), &dir, port, api, token)
}

/// Runs an example bot in `dir` with what every example reads from its environment.
fn spawn_example(command: &mut Command, dir: &Path, port: u16, api: &str, token: &str) -> Child {
    command
        .current_dir(dir)
        .env("BOT_TOKEN", token)
        .env("SECRET_TOKEN", SECRET_TOKEN)
        .env("PORT", port.to_string())
        .env("TELEGRAM_API_ROOT", api)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{} does not start: {e}", dir.display()))
}

/// `/start` as Telegram sends it, with its `bot_command` entity (grammY's `command` needs it).
fn start(update_id: i64, chat: i64) -> Vec<u8> {
    let mut body: serde_json::Value =
        serde_json::from_slice(&message(update_id, chat, update_id, "/start")).unwrap();
    body["message"]["entities"] =
        serde_json::json!([{"type": "bot_command", "offset": 0, "length": 6}]);
    body.to_string().into_bytes()
}

#[test]
fn a_grammy_bot_behind_botline_answers_each_update_once_through_its_restarts() {
    behind_botline(&Framework {
        start: start_grammy,
        path: "/",
    });
}

#[test]
fn an_aiogram_bot_behind_botline_answers_each_update_once_through_its_restarts() {
    behind_botline(&Framework {
        start: start_aiogram,
        path: "/bot",
    });
}

fn behind_botline(framework: &Framework) {
    let standin = StandIn::start(StandInSettings::default());
    standin.fail_next(
        Some("sendMessage"),
        1,
        Fault::TooManyRequests { retry_after: 1 },
    );
    let (api, token) = (standin.base_url(), StandInSettings::default().token);
    let port = free_port();
    let mut bot = (framework.start)(port, &api, &token);
    let handler_url = format!("http://127.0.0.1:{port}{}", framework.path);
    let server = Server::start(&[
        ("BOTLINE_BOT_TOKEN", &token),
        ("BOTLINE_TELEGRAM_API_URL", &api),
        ("BOTLINE_HANDLER_URL", &handler_url),
        ("BOTLINE_HANDLER_SECRET_TOKEN", SECRET_TOKEN),
        ("BOTLINE_MAX_ATTEMPTS", "20"),
        ("BOTLINE_BACKOFF_BASE", "200ms"),
        ("BOTLINE_BACKOFF_MAX", "1s"),
    ]);
    let webhook = server.url("/telegram/webhook");
    let (alice, bob) = (501, 502);
    deliver(&webhook, None, &start(1, alice), GIVE_UP);
    deliver(&webhook, None, &start(2, bob), GIVE_UP);
    wait_until("the first replies", GIVE_UP, || {
        replies(&standin, alice).len() == 1 && replies(&standin, bob).len() == 1
    });

    // The bot's process dies; updates keep coming and wait durably; it comes back.
    bot.kill().unwrap();
    bot.wait().unwrap();
    for n in 0..5 {
        let id = 10 + n;
        deliver(
            &webhook,
            None,
            &message(id, alice, id, &format!("a{n}")),
            GIVE_UP,
        );
        deliver(
            &webhook,
            None,
            &message(id + 100, bob, id, &format!("b{n}")),
            GIVE_UP,
        );
    }
    // Telegram redelivers one it did not get a 200 for: answered once all the same.
    deliver(&webhook, None, &message(12, alice, 12, "a2"), GIVE_UP);
    wait_until("an attempt refused while the bot is down", GIVE_UP, || {
        server.logs().contains("cannot reach the handler")
    });
    let mut bot = (framework.start)(port, &api, &token);

    wait_until("every reply", GIVE_UP, || {
        replies(&standin, alice).len() == 6 && replies(&standin, bob).len() == 6
    });
    let stats = server.wait_drained();
    bot.kill().unwrap();
    bot.wait().unwrap();
    assert_eq!(stats["dead"], 0, "{stats}");
    let expected = |who: char| {
        let mut texts = vec!["Hi Test!".to_owned()];
        texts.extend((0..5).map(|n| format!("echo: {who}{n}")));
        texts
    };
    assert_eq!(replies(&standin, alice), expected('a'));
    assert_eq!(replies(&standin, bob), expected('b'));
}
