//! The `botline` binary on the AWS backend, as an operator runs it against moto's server mode:
//! `serve --backend aws` takes webhook updates into SQS and DynamoDB, and `stats`, `dlq list`,
//! `dlq show`, `dlq redrive` and `messages export` read and act on the same queues and tables.

#[path = "../../botline-aws/tests/common/mod.rs"]
mod aws;
mod common;

use botline_aws::AwsBackend;
use botline_core::{DeadLetters, InboundUpdate, Queue, UpdateId};
use common::{Server, get, message, post, wait_until};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "aws-cli-test-secret";

/// What points the binary at the backend's queues and tables on the emulator.
fn environment(backend: &AwsBackend) -> Vec<(&'static str, String)> {
    let settings = backend.settings();
    vec![
        ("BOTLINE_BACKEND", "aws".into()),
        ("BOTLINE_QUEUE_URL", settings.queue_url.clone()),
        ("BOTLINE_DLQ_URL", settings.dlq_url.clone()),
        ("BOTLINE_TABLE_PREFIX", settings.table_prefix.clone()),
        ("BOTLINE_LEASE", "2s".into()),
        ("BOTLINE_BACKOFF_BASE", "1s".into()),
        ("BOTLINE_BACKOFF_MAX", "1s".into()),
        ("AWS_ENDPOINT_URL", aws::moto().endpoint.clone()),
        ("AWS_REGION", aws::REGION.into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
    ]
}

fn cli(backend: &AwsBackend, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_botline"))
        .args(args)
        .envs(environment(backend))
        .env_remove("BOTLINE_BOT_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("botline runs");
    assert!(
        output.status.success(),
        "botline {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn exported(backend: &AwsBackend) -> Vec<serde_json::Value> {
    let out = cli(backend, &["messages", "export", "--format", "jsonl"]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// [`wait_until`] with the minute every wait here may take (moto answers slowly).
fn wait_for(what: &str, done: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(60), done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_the_operator_commands_work_on_aws() {
    let backend = aws::standard_backend(aws::whole_seconds()).await;

    // A dead letter, made through the backend: three failed attempts.
    let poison = InboundUpdate::parse(&message(920_001, 4_300_001, 1, "poison")).unwrap();
    backend.enqueue(&poison).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while backend.show(UpdateId(920_001)).await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the poison was not dead-lettered"
        );
        for delivery in backend.receive(10).await.unwrap() {
            backend.fail(&delivery, "the test says no").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let mut env = environment(&backend);
    env.push(("BOTLINE_WEBHOOK_SECRET", SECRET.into()));
    let server = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start(&env)
    })
    .await
    .unwrap();
    for (update_id, chat, text) in [
        (920_002, 4_300_002, "hello"),
        (920_003, 4_300_003, "hi"),
        (920_004, 4_300_002, "again"),
    ] {
        let body = message(update_id, chat, update_id - 920_000, text);
        let answer = post(&server.url("/telegram/webhook"), Some(SECRET), &body);
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let answer = post(
        &server.url("/telegram/webhook"),
        Some("wrong"),
        &message(920_005, 4_300_002, 9, "x"),
    );
    assert_eq!(answer.status, 401);

    wait_for("three messages exported", || exported(&backend).len() == 3);
    let stats: serde_json::Value =
        serde_json::from_slice(&cli(&backend, &["stats", "--json"]).stdout).unwrap();
    assert_eq!(stats["dead"], 1, "{stats}");

    let list = String::from_utf8(cli(&backend, &["dlq", "list"]).stdout).unwrap();
    assert!(list.contains("920001"), "{list}");
    let show = String::from_utf8(cli(&backend, &["dlq", "show", "920001"]).stdout).unwrap();
    assert!(show.contains("the test says no"), "{show}");
    cli(&backend, &["dlq", "redrive", "920001"]);
    // The running server's worker takes the redriven update like any other.
    wait_for("the redriven update stored", || {
        exported(&backend)
            .iter()
            .any(|m| m["chatId"] == "4300001" && m["text"] == "poison")
    });
    let messages = exported(&backend);
    assert_eq!(messages.len(), 4, "each update stored once: {messages:?}");
    let list = String::from_utf8(cli(&backend, &["dlq", "list"]).stdout).unwrap();
    assert!(!list.contains("920001"), "{list}");
    drop(server);
}

/// Issue 18: `botline provision --backend aws` from nothing creates both queues and the seven
/// tables and says so; run again, it finds them and creates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_creates_the_queues_and_tables_once() {
    let unprovisioned = AwsBackend::new(
        aws::clients().await,
        aws::unique_settings(true),
        aws::whole_seconds(),
    );
    let first = String::from_utf8(cli(&unprovisioned, &["provision"]).stdout).unwrap();
    let created = first.lines().filter(|l| l.ends_with(": created")).count();
    assert_eq!(created, 2 + 7, "both queues and seven tables:\n{first}");
    let again = String::from_utf8(cli(&unprovisioned, &["provision"]).stdout).unwrap();
    assert!(
        !again.contains("created") && !again.contains("added"),
        "{again}"
    );
    assert_eq!(
        again.lines().filter(|l| l.ends_with(": exists")).count(),
        7,
        "{again}"
    );
    let stats = cli(&unprovisioned, &["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["pending"], 0, "{stats}");
}

/// `botline <command>` (serve or poll) on `backend`'s queues and tables, run until it exits by
/// itself (within 60 s): its exit status and what it wrote to stderr.
fn run_until_exit(backend: &AwsBackend, command: &str, extra: &[(&str, &str)]) -> (bool, String) {
    let data_dir = common::temp_dir();
    let stderr = data_dir.with_extension("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_botline"))
        .args([command, "--data-dir"])
        .arg(&data_dir)
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .envs(environment(backend))
        .env_remove("BOTLINE_BOT_TOKEN")
        .env_remove("BOTLINE_TELEGRAM_API_URL")
        .envs(extra.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("botline runs");
    let status = common::wait_exit(&mut child, Duration::from_secs(60));
    (
        status.success(),
        std::fs::read_to_string(&stderr).unwrap_or_default(),
    )
}

/// Issue 18: `serve` (and `poll`) against the tables as the seed documents lay them out refuse
/// to start, naming the missing index and tables and the command that creates them, instead of
/// answering Telegram 200 with a worker that fails every claim; once `botline provision` ran,
/// `serve` starts and an update goes from the webhook to the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_the_seed_layout_until_it_is_provisioned() {
    let clients = aws::clients().await;
    let settings = aws::seed_layout(&clients, &aws::unique_settings(false)).await;
    let tables = botline_aws::Tables::with_prefix(&settings.table_prefix);
    let backend = AwsBackend::new(clients, settings, aws::whole_seconds());

    let secret = [("BOTLINE_WEBHOOK_SECRET", SECRET)];
    let (started, stderr) = run_until_exit(&backend, "serve", &secret);
    assert!(!started, "serve ran on the seed layout: {stderr}");
    for missing in [
        format!("table {} has no index PendingIndex", tables.updates),
        format!("table {} is missing", tables.outbox),
        format!("table {} is missing", tables.tokens),
        "run `botline provision --backend aws`".to_owned(),
    ] {
        assert!(stderr.contains(&missing), "{missing:?} not said: {stderr}");
    }
    assert!(
        stderr.contains("botline: the AWS backend is not provisioned: "),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
    // `poll` checks before it calls Telegram (nothing listens at this API address).
    let (started, stderr) = run_until_exit(
        &backend,
        "poll",
        &[
            ("BOTLINE_BOT_TOKEN", "4242:TESTtoken_for-the-standin"),
            ("BOTLINE_TELEGRAM_API_URL", "http://127.0.0.1:9"),
        ],
    );
    assert!(!started, "poll ran on the seed layout: {stderr}");
    assert!(
        stderr.contains(&format!(
            "table {} has no index PendingIndex",
            tables.updates
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("TESTtoken"), "{stderr}");

    let said = String::from_utf8(cli(&backend, &["provision"]).stdout).unwrap();
    assert!(
        said.contains(&format!(
            "table {}: index PendingIndex added",
            tables.updates
        )),
        "{said}"
    );

    let mut env = environment(&backend);
    env.push(("BOTLINE_WEBHOOK_SECRET", SECRET.into()));
    let server = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start(&env)
    })
    .await
    .unwrap();
    let answer = post(
        &server.url("/telegram/webhook"),
        Some(SECRET),
        &message(930_001, 4_400_001, 1, "after provisioning"),
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    wait_for("the update stored", || {
        exported(&backend)
            .iter()
            .any(|m| m["chatId"] == "4400001" && m["text"] == "after provisioning")
    });
    drop(server);
}

/// Issue 18: a table deleted while `serve` runs makes `/health` answer 503 naming it and the
/// command that creates it, and the webhook 503 with `Retry-After` (Telegram keeps the update);
/// once it is provisioned again, both answer 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_a_table_deleted_while_serving() {
    let backend = aws::standard_backend(aws::whole_seconds()).await;
    let mut env = environment(&backend);
    env.push(("BOTLINE_WEBHOOK_SECRET", SECRET.into()));
    let server = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start(&env)
    })
    .await
    .unwrap();
    let outbox = backend.tables().outbox.clone();
    backend
        .clients()
        .dynamodb
        .delete_table()
        .table_name(&outbox)
        .send()
        .await
        .unwrap();

    let health = server.url("/health");
    wait_for("/health says the outbox table is missing", || {
        get(&health).0 == 503
    });
    let (_, body) = get(&health);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "unprovisioned", "{body}");
    assert_eq!(
        body["missing"],
        serde_json::json!([format!("table {outbox} is missing")]),
        "{body}"
    );
    assert_eq!(body["fix"], "botline provision --backend aws", "{body}");
    let update = message(931_001, 4_400_101, 1, "while the outbox is gone");
    let answer = post(&server.url("/telegram/webhook"), Some(SECRET), &update);
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.retry_after.as_deref(), Some("1"));

    cli(&backend, &["provision"]);
    wait_for("/health is 200 again", || get(&health).0 == 200);
    wait_for("the webhook takes the update again", || {
        post(&server.url("/telegram/webhook"), Some(SECRET), &update).status == 200
    });
    wait_for("the update stored", || {
        exported(&backend).iter().any(|m| m["chatId"] == "4400101")
    });
    drop(server);
}
