//! What the AWS tests share: one moto server per test binary, and fresh queues and tables per
//! test.
//!
//! The server is moto's server mode (`scripts/moto.sh` installs it into `target/moto-venv`),
//! run by `scripts/moto_server.py`, which handles DynamoDB requests one at a time; or set
//! `BOTLINE_MOTO_SERVER` to a `moto_server` executable. Without it the tests fail, saying
//! so; they never skip. It runs on a free port of 127.0.0.1 behind a small shell that kills it
//! when this process's end of its stdin closes, so no server outlives the test binary, however
//! the binary ends.
#![allow(dead_code)]

use aws_sdk_sqs::config::Credentials;
use botline_aws::{AwsBackend, AwsClients, AwsSettings, ClientOptions, provision};
use botline_core::{QueueConfig, RetryPolicy};
use std::cell::RefCell;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub const REGION: &str = "eu-north-1";

/// The running server.
#[derive(Debug)]
pub struct Moto {
    pub endpoint: String,
    /// Held for its stdin: when this process ends, the pipe closes and the shell kills moto.
    _guard: Mutex<Child>,
}

static MOTO: OnceLock<Moto> = OnceLock::new();

/// The program that runs the server, and the script it runs if any: `BOTLINE_MOTO_SERVER`, or
/// the venv's Python with `scripts/moto_server.py` (moto's server, DynamoDB requests one at a
/// time as DynamoDB applies a conditional write: see that file).
fn moto_server() -> (PathBuf, Option<PathBuf>) {
    if let Some(path) = std::env::var_os("BOTLINE_MOTO_SERVER") {
        return (PathBuf::from(path), None);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    (
        root.join("target/moto-venv/bin/python"),
        Some(root.join("scripts/moto_server.py")),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The moto server of this test binary, started on first use.
pub fn moto() -> &'static Moto {
    MOTO.get_or_init(start_moto)
}

fn start_moto() -> Moto {
    let (server, script_arg) = moto_server();
    if !server.exists() {
        panic!(
            "moto is not installed at {}: run scripts/moto.sh (or set BOTLINE_MOTO_SERVER to a \
             moto_server executable)",
            server.display()
        );
    }
    let port = free_port();
    let log = std::env::temp_dir().join(format!("botline-moto-{port}.log"));
    // `read` returns when this process's end of the pipe closes (however it ends); then the
    // server is killed. The server itself does not hold the pipe (stdin from /dev/null).
    let script = r#"
        "$0" ${3:+"$3"} -H 127.0.0.1 -p "$1" </dev/null >"$2" 2>&1 &
        server=$!
        stop() {
            kill "$server" 2>/dev/null
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$server" 2>/dev/null || return 0
                sleep 0.5
            done
            kill -9 "$server" 2>/dev/null
        }
        trap stop EXIT
        trap 'exit 1' INT TERM HUP
        while read -r _; do :; done
    "#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&server)
        .arg(port.to_string())
        .arg(&log)
        .args(&script_arg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}: run scripts/moto.sh",
                server.display()
            )
        });
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if answers(port) {
            break;
        }
        if Instant::now() > deadline {
            let mut output = String::new();
            let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut output));
            panic!(
                "moto ({}) did not answer on {endpoint} within 60 s: run scripts/moto.sh to \
                 (re)install it. Its output:\n{output}",
                server.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto {
        endpoint,
        _guard: Mutex::new(child),
    }
}

/// Whether moto answers an HTTP request on `port`.
fn answers(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// Options for clients of `endpoint`, with short timeouts.
pub fn options(endpoint: &str) -> ClientOptions {
    ClientOptions {
        endpoint_url: Some(endpoint.to_owned()),
        default_region: REGION.into(),
        ..ClientOptions::default()
    }
}

/// The SDK configuration for `options`, with moto's dummy credentials.
pub async fn sdk_config(options: &ClientOptions) -> aws_config::SdkConfig {
    options
        .loader()
        .region(aws_config::Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .load()
        .await
}

pub async fn clients_for(options: &ClientOptions) -> AwsClients {
    AwsClients::new(&sdk_config(options).await)
}

/// Clients of the moto server.
pub async fn clients() -> AwsClients {
    clients_for(&options(&moto().endpoint)).await
}

/// Names no other test uses: `bl-<id>-updates[.fifo]`, `bl-<id>-dlq[.fifo]`, prefix `bl<id>-`.
pub fn unique_settings(fifo: bool) -> AwsSettings {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let suffix = if fifo { ".fifo" } else { "" };
    let base = format!("{}/123456789012", moto().endpoint);
    AwsSettings::new(
        format!("{base}/bl-{id}-updates{suffix}"),
        format!("{base}/bl-{id}-dlq{suffix}"),
        format!("bl{id}-"),
    )
}

/// The tests of this binary share one moto server, which serves one request at a time (Python).
/// The shared suite's load test (many updates against a 30 s deadline that was set for local
/// stores) gets it to itself: it takes this lock to write, every other test to read, each for as
/// long as its thread lives.
static EMULATOR: RwLock<()> = RwLock::new(());

/// The test names that need the emulator to themselves: the shared suite's load test, and the
/// Lambda functions' end-to-end runs, whose 2 s leases (SQS counts in whole seconds) and
/// partial batches assume an emulator that answers at once, not one queued behind other tests'
/// calls (and their Node processes) on a loaded machine.
const LOAD_TESTS: &[&str] = &[
    "per_chat_order_holds_under_concurrency",
    "end_to_end_on_a_fifo_queue",
    "end_to_end_on_a_standard_queue",
];

enum Share {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

thread_local! {
    /// This test's share of the emulator, released when the test's thread ends.
    static SHARE: RefCell<Option<Share>> = const { RefCell::new(None) };
}

/// Takes this test's share of the emulator, once per test (libtest runs each on its own thread,
/// named after the test).
fn take_share() {
    if SHARE.with(|share| share.borrow().is_some()) {
        return;
    }
    let alone = std::thread::current()
        .name()
        .is_some_and(|name| LOAD_TESTS.iter().any(|test| name.ends_with(test)));
    let share = if alone {
        Share::Alone(EMULATOR.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Share::Shared(EMULATOR.read().unwrap_or_else(|e| e.into_inner()))
    };
    SHARE.with(|slot| *slot.borrow_mut() = Some(share));
}

/// A backend on fresh queues and tables of the moto server.
pub async fn backend_with(settings: AwsSettings, config: QueueConfig) -> AwsBackend {
    take_share();
    let clients = clients().await;
    let settings = provision(&clients, &settings).await.expect("provision");
    AwsBackend::new(clients, settings, config)
}

pub async fn fifo_backend(config: QueueConfig) -> AwsBackend {
    backend_with(unique_settings(true), config).await
}

pub async fn standard_backend(config: QueueConfig) -> AwsBackend {
    backend_with(unique_settings(false), config).await
}

/// The shared suite's settings in whole seconds, as SQS counts visibility timeouts and delays:
/// a 2 s lease, 1 s backoffs.
pub fn whole_seconds() -> QueueConfig {
    QueueConfig {
        lease: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(1),
        },
        dedupe_window: QueueConfig::MIN_DEDUPE_WINDOW,
    }
}

/// The tables as the seed documents lay them out, named by `settings`: `messages`, `users`,
/// `events`, `sessions` and `updates` with their keys only (no `PendingIndex`, no
/// `UserIdIndex`), no `outbox` and no `tokens` table; no queues.
pub async fn seed_tables(clients: &AwsClients, settings: &AwsSettings) -> botline_aws::Tables {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    take_share();
    let tables = botline_aws::Tables::with_prefix(&settings.table_prefix);
    for (table, key, kind) in [
        (&tables.messages, "chatId", ScalarAttributeType::S),
        (&tables.users, "userId", ScalarAttributeType::S),
        (&tables.events, "eventId", ScalarAttributeType::S),
        (&tables.sessions, "sessionId", ScalarAttributeType::S),
        (&tables.updates, "updateId", ScalarAttributeType::N),
    ] {
        let mut create = clients
            .dynamodb
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(key)
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(key)
                    .attribute_type(kind)
                    .build()
                    .unwrap(),
            );
        if table == &tables.messages {
            create = create
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name("messageId")
                        .key_type(KeyType::Range)
                        .build()
                        .unwrap(),
                )
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name("messageId")
                        .attribute_type(ScalarAttributeType::N)
                        .build()
                        .unwrap(),
                );
        }
        create.send().await.expect("a seed table");
    }
    tables
}

/// The seed tables ([`seed_tables`]) and both queues, made as plain queues (no redrive
/// policy): what an operator who followed the seed documents has. The settings carry the
/// queues' URLs as SQS answered them.
pub async fn seed_layout(clients: &AwsClients, settings: &AwsSettings) -> AwsSettings {
    seed_tables(clients, settings).await;
    let mut urls = Vec::new();
    for url in [&settings.queue_url, &settings.dlq_url] {
        let name = url.rsplit('/').next().unwrap();
        let created = clients
            .sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("a seed queue");
        urls.push(created.queue_url.expect("a queue URL"));
    }
    AwsSettings::new(
        urls[0].clone(),
        urls[1].clone(),
        settings.table_prefix.clone(),
    )
}
