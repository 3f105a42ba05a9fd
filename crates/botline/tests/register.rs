//! `/register` through the real binary: tokens issued by the operator, redeemed once, the token
//! redacted from everything stored and logged, the answer written to the outbox once.

mod common;

use common::{Server, post, register};

fn outbox(server: &Server) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open(server.data_dir.join("botline.db")).unwrap();
    let mut select = db
        .prepare("SELECT outbox_id, action FROM outbox ORDER BY created_at, outbox_id")
        .unwrap();
    select
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_token_is_redeemed_once_and_never_stored_or_logged() {
    let server = Server::start(&[("BOTLINE_BOT_USERNAME", "botline_bot")]);
    let issued = server.cli(&["tokens", "issue", "alice", "--ttl", "1h"]);
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let stdout = String::from_utf8(issued.stdout).unwrap();
    let token = stdout.lines().last().unwrap().trim().to_owned();
    assert_eq!(token.len(), 48, "{stdout}");

    let url = server.url("/telegram/webhook");
    let first = register(
        500,
        -100123,
        &format!("/register@botline_bot alice {token}"),
    );
    assert_eq!(post(&url, None, &first).status, 200);
    assert_eq!(post(&url, None, &first).status, 200, "a redelivery");
    let again = register(501, -100123, &format!("/register alice {token}"));
    assert_eq!(post(&url, None, &again).status, 200);
    let other_bot = register(502, -100123, &format!("/register@other_bot alice {token}"));
    assert_eq!(post(&url, None, &other_bot).status, 200);
    server.wait_drained();

    let calls = outbox(&server);
    let texts: Vec<&str> = calls.iter().map(|(_, action)| action.as_str()).collect();
    assert_eq!(calls.len(), 4, "{texts:?}");
    assert!(
        texts[0].contains("Registration successful! Welcome alice"),
        "{texts:?}"
    );
    assert!(
        texts[1].contains(r#""method":"deleteMessage""#),
        "{texts:?}"
    );
    assert!(texts[2].contains("Registration failed. Please check your credentials and try again."));
    assert!(texts[3].contains(r#""method":"deleteMessage""#));

    let messages = server.messages();
    assert_eq!(messages.len(), 3);
    let stored = serde_json::to_string(&messages).unwrap();
    assert!(stored.contains("[redacted]"));
    let other = messages.iter().find(|m| m["messageId"] == 502).unwrap();
    assert_eq!(
        other["text"], "/register@other_bot alice [redacted]",
        "a command for another bot is not acted on, but its token is redacted all the same"
    );
    assert!(!stored.contains(&token), "token stored: {stored}");
    let db = rusqlite::Connection::open(server.data_dir.join("botline.db")).unwrap();
    let bodies: String = db
        .query_row(
            "SELECT group_concat(raw) FROM update_bodies WHERE update_id IN (500, 501, 502)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!bodies.contains(&token), "the queue's copy is redacted too");
    let payloads: String = db
        .query_row("SELECT group_concat(payload) FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(!payloads.contains(&token), "{payloads}");
    let digest: String = db
        .query_row("SELECT token_digest FROM registration_tokens", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_ne!(digest, token);
    assert!(
        !server.logs().contains(&token),
        "the token reached the logs"
    );
}

#[test]
fn a_malformed_registration_gets_the_format_answer() {
    let server = Server::start(&[]);
    let url = server.url("/telegram/webhook");
    assert_eq!(
        post(&url, None, &register(600, 42, "/register alice")).status,
        200
    );
    assert_eq!(post(&url, None, &register(601, 42, "hello")).status, 200);
    server.wait_drained();
    let calls = outbox(&server);
    assert_eq!(calls.len(), 1, "plain messages get no answer: {calls:?}");
    assert!(
        calls[0]
            .1
            .contains("Please use format: /register [username] [token]")
    );
    let bad = server.cli(&["tokens", "issue", "not a name"]);
    assert!(!bad.status.success());
}
