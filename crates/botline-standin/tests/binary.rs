//! The `botline-standin` binary: token handling, and its control endpoints.

mod common;

use common::{TOKEN, assert_error, delete, fixture, get, post_json};
use serde_json::json;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_botline-standin");

/// A running stand-in process, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line.trim().to_owned();
        assert!(
            base.starts_with("http://127.0.0.1:"),
            "first line: {line:?}"
        );
        Self { child, base }
    }

    fn call(&self, method: &str, params: serde_json::Value) -> common::Answer {
        common::call(&self.base, method, params)
    }

    /// Stops the process and returns all it printed after the base URL.
    fn stop(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut printed = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut printed)
            .unwrap();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut printed)
            .unwrap();
        printed
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{TOKEN}\n")).unwrap();
    file
}

fn standin_command() -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("BOTLINE_STANDIN_TOKEN");
    command
}

#[test]
fn the_binary_serves_the_bot_api_and_its_control_endpoints() {
    let token = token_file();
    let server = Server::start(
        standin_command()
            .arg("--token-file")
            .arg(token.path())
            .args(["--username", "standin_bot"]),
    );
    let control = format!("{}/_standin", server.base);

    let me = server.call("getMe", json!({}));
    assert_eq!(me.body["result"]["username"], "standin_bot");

    let fault = post_json(
        &format!("{control}/faults"),
        &json!({"method": "sendMessage", "kind": "too_many_requests", "retry_after": 5}),
    );
    assert_eq!(fault.status, 204);
    let send = || server.call("sendMessage", json!({"chat_id": 42, "text": "hi"}));
    assert_error(&send(), 429, "Too Many Requests: retry after 5");
    assert_eq!(send().status, 200);
    post_json(
        &format!("{control}/faults"),
        &json!({"kind": "server", "status": 502}),
    );
    assert_error(&server.call("getMe", json!({})), 502, "Bad Gateway");

    let pushed = post_json(
        &format!("{control}/updates"),
        &json!([fixture("message-private-text.json")]),
    );
    assert_eq!(pushed.status, 204);
    let updates = server.call("getUpdates", json!({}));
    assert_eq!(updates.body["result"][0]["update_id"], 700000001);
    let refused = post_json(&format!("{control}/updates"), &json!({"message": {}}));
    assert_eq!(refused.status, 400);
    assert_eq!(refused.body["error"], "update 0 has no integer update_id");

    assert_eq!(
        post_json(&format!("{control}/chats/77/blocked"), &json!({})).status,
        204
    );
    let blocked = server.call("sendMessage", json!({"chat_id": 77, "text": "hi"}));
    assert_error(&blocked, 403, "Forbidden: bot was blocked by the user");

    server.call(
        "setWebhook",
        json!({"url": "https://example.org/hook", "secret_token": "abc"}),
    );
    post_json(
        &format!("{control}/webhook/error"),
        &json!({"date": 1714564800, "message": "Connection refused"}),
    );
    let webhook = get(&format!("{control}/webhook")).body;
    assert_eq!(webhook["url"], "https://example.org/hook");
    assert_eq!(webhook["secret_token"], "abc");
    assert_eq!(webhook["last_error_message"], "Connection refused");

    let calls = get(&format!("{control}/calls")).body;
    let methods: Vec<_> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "getMe",
            "sendMessage",
            "sendMessage",
            "getMe",
            "getUpdates",
            "sendMessage",
            "setWebhook"
        ]
    );
    assert_eq!(calls[1]["status"], 429);
    assert_eq!(calls[1]["params"], json!({"chat_id": 42, "text": "hi"}));
    assert_eq!(calls[1]["token_ok"], true);
    assert!(calls[1]["at_ms"].is_u64());
    let sends = get(&format!("{control}/calls?method=sendmessage")).body;
    assert_eq!(sends.as_array().unwrap().len(), 3);

    assert_eq!(delete(&format!("{control}/calls")).status, 204);
    assert_eq!(get(&format!("{control}/calls")).body, json!([]));

    let printed = server.stop();
    assert!(!printed.contains("AAH-test_secret"), "{printed}");
}

#[test]
fn the_token_comes_from_a_file_or_the_environment_and_is_never_printed() {
    let from_env = Server::start(
        standin_command()
            .args(["--enforce-limits"])
            .env("BOTLINE_STANDIN_TOKEN", TOKEN),
    );
    assert_eq!(from_env.call("getMe", json!({})).status, 200);
    let send = || from_env.call("sendMessage", json!({"chat_id": 1, "text": "hi"}));
    assert_eq!(send().status, 200);
    assert_eq!(send().status, 429, "--enforce-limits");
    assert!(!from_env.stop().contains("AAH-test_secret"));

    let token = token_file();
    for (args, env, expected) in [
        (vec![], None, "--token-file or BOTLINE_STANDIN_TOKEN"),
        (
            vec!["--token-file".into(), token.path().display().to_string()],
            Some(TOKEN),
            "not both",
        ),
        (vec!["--token".into(), TOKEN.into()], None, "--token"),
        (
            vec!["--token-file".into(), "/nonexistent/token".into()],
            None,
            "cannot read the token file",
        ),
    ] {
        let mut command = standin_command();
        command.args(&args);
        if let Some(env) = env {
            command.env("BOTLINE_STANDIN_TOKEN", env);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(!stderr.contains("AAH-test_secret"), "{args:?}: {stderr}");
    }
}
