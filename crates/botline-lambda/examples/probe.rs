//! Measures a Lambda function's process the way Lambda runs it: start to ready (its first
//! `GET /runtime/invocation/next`), the first invocation's duration, and the peak resident
//! memory (`VmHWM`) after it, against a stand-in of Lambda's Runtime API and moto's server mode.
//!
//! ```text
//! cargo build --release -p botline-lambda          # the functions for this machine
//! scripts/moto.sh                                  # once
//! cargo run --release -p botline-lambda --example probe -- target/release 10
//! ```
//!
//! For each function (`botline-ingest`, `botline-worker` in the given directory) it starts a
//! fresh process `runs` times (default 10). The ingest function gets the webhook fixture; the
//! worker an SQS event holding the message the ingest enqueued. The webhook secret and the bot
//! token are Secrets Manager secrets on the emulator, so the cold start includes fetching them.

#[path = "../../botline-aws/tests/common/mod.rs"]
mod common;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What the stand-in saw of one process.
#[derive(Debug, Default)]
struct Seen {
    ready: Option<Instant>,
    event: Option<String>,
    sent: Option<Instant>,
    answered: Option<(Instant, String)>,
}

#[derive(Clone)]
struct Runtime {
    seen: Arc<Mutex<Seen>>,
    answered: Arc<Notify>,
}

async fn next(State(rt): State<Runtime>) -> impl IntoResponse {
    let event = {
        let mut seen = rt.seen.lock().unwrap();
        seen.ready.get_or_insert_with(Instant::now);
        let event = seen.event.take();
        if event.is_some() {
            seen.sent = Some(Instant::now());
        }
        event
    };
    let Some(event) = event else {
        // One invocation per process: the second `next` waits until the process is killed.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 30_000;
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", "probe-1".parse().unwrap());
    headers.insert(
        "lambda-runtime-deadline-ms",
        deadline.to_string().parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:eu-north-1:123456789012:function:probe"
            .parse()
            .unwrap(),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        "Root=1-00000000-000000000000000000000000".parse().unwrap(),
    );
    (headers, event)
}

async fn response(State(rt): State<Runtime>, Path(_id): Path<String>, body: String) -> StatusCode {
    rt.seen.lock().unwrap().answered = Some((Instant::now(), body));
    rt.answered.notify_one();
    StatusCode::ACCEPTED
}

async fn error(State(rt): State<Runtime>, body: String) -> StatusCode {
    rt.seen.lock().unwrap().answered = Some((Instant::now(), format!("ERROR {body}")));
    rt.answered.notify_one();
    StatusCode::ACCEPTED
}

struct Run {
    ready_ms: f64,
    invoke_ms: f64,
    peak_kib: u64,
    answer: String,
}

async fn run_once(bootstrap: &std::path::Path, env: &[(String, String)], event: String) -> Run {
    let rt = Runtime {
        seen: Arc::new(Mutex::new(Seen {
            event: Some(event),
            ..Seen::default()
        })),
        answered: Arc::new(Notify::new()),
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
        .route("/2018-06-01/runtime/init/error", post(error))
        .with_state(rt.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let log_path = std::env::temp_dir().join(format!("botline-probe-{}.log", api.port()));
    let log = std::fs::File::create(&log_path).expect("the function's log");
    let started = Instant::now();
    let mut child = Command::new(bootstrap)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the function's log"))
        .stderr(log)
        .spawn()
        .expect("the function starts");
    if tokio::time::timeout(Duration::from_secs(30), rt.answered.notified())
        .await
        .is_err()
    {
        child.kill().ok();
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!(
            "{} did not answer within 30 s; its output:\n{output}",
            bootstrap.display()
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let peak_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    child.kill().ok();
    child.wait().ok();
    server.abort();
    let seen = rt.seen.lock().unwrap();
    let (answered, answer) = seen.answered.clone().unwrap();
    Run {
        ready_ms: (seen.ready.unwrap() - started).as_secs_f64() * 1000.0,
        invoke_ms: (answered - seen.sent.unwrap()).as_secs_f64() * 1000.0,
        peak_kib,
        answer,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "target/release".into()));
    let runs: usize = args.next().map_or(10, |n| n.parse().expect("runs"));

    let backend = common::standard_backend(common::whole_seconds()).await;
    let config = common::sdk_config(&common::options(&common::moto().endpoint)).await;
    let manager = aws_sdk_secretsmanager::Client::new(&config);
    let mut arns = Vec::new();
    for (name, value) in [("webhook", "probe-secret_1"), ("token", "4242:PROBEtoken")] {
        let created = manager
            .create_secret()
            .name(format!("probe-{name}-{}", uuid::Uuid::new_v4().simple()))
            .secret_string(value)
            .send()
            .await
            .expect("CreateSecret");
        arns.push(created.arn().unwrap().to_owned());
    }
    let settings = backend.settings();
    let env: Vec<(String, String)> = [
        ("BOTLINE_QUEUE_URL", settings.queue_url.as_str()),
        ("BOTLINE_DLQ_URL", settings.dlq_url.as_str()),
        ("BOTLINE_TABLE_PREFIX", settings.table_prefix.as_str()),
        ("BOTLINE_WEBHOOK_SECRET_ID", arns[0].as_str()),
        ("BOTLINE_BOT_TOKEN_ID", arns[1].as_str()),
        ("BOTLINE_BOT_USERNAME", "probe_bot"),
        // Replies would go nowhere: no Bot API is reachable; the probe sends no command.
        ("BOTLINE_TELEGRAM_API_URL", "http://127.0.0.1:9"),
        ("BOTLINE_STAGE", "probe"),
        ("AWS_ENDPOINT_URL", common::moto().endpoint.as_str()),
        ("AWS_REGION", common::REGION),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_LAMBDA_FUNCTION_NAME", "probe"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/probe"),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "probe"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();

    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixtures.join(name)).unwrap()).unwrap()
    };
    println!(
        "| function | runs | start to ready, median (max) | first invocation, median | peak RSS, median (max) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for function in ["botline-ingest", "botline-worker"] {
        let bootstrap = dir.join(function);
        assert!(
            bootstrap.exists(),
            "{} is missing: build it first",
            bootstrap.display()
        );
        let mut results = Vec::new();
        for run in 0..runs {
            let event = if function == "botline-ingest" {
                let mut event = read("apigw-v2-webhook.json");
                let update = serde_json::json!({
                    "update_id": 930_000 + run,
                    "message": {"message_id": run + 1, "date": 1_795_342_542, "text": "probe",
                        "from": {"id": 4_400_001, "is_bot": false, "first_name": "P"},
                        "chat": {"id": 4_400_001, "type": "private", "first_name": "P"}}
                });
                event["body"] = update.to_string().into();
                event["headers"]["x-telegram-bot-api-secret-token"] = "probe-secret_1".into();
                event.to_string()
            } else {
                sqs_event(&backend, &read("sqs-event.json")).await
            };
            let result = run_once(&bootstrap, &env, event).await;
            assert!(
                !result.answer.starts_with("ERROR"),
                "{function}: {}",
                result.answer
            );
            if function == "botline-ingest" {
                assert!(
                    result.answer.contains("\"statusCode\":200"),
                    "{function}: {}",
                    result.answer
                );
            } else {
                assert!(
                    result.answer.contains("\"batchItemFailures\":[]"),
                    "{function}: {}",
                    result.answer
                );
            }
            results.push(result);
        }
        let ready: Vec<f64> = results.iter().map(|r| r.ready_ms).collect();
        let invoke: Vec<f64> = results.iter().map(|r| r.invoke_ms).collect();
        let peak: Vec<f64> = results.iter().map(|r| r.peak_kib as f64 / 1024.0).collect();
        println!(
            "| {function} | {runs} | {:.1} ms ({:.1}) | {:.1} ms | {:.1} MiB ({:.1}) |",
            median(ready.clone()),
            ready.iter().cloned().fold(0.0, f64::max),
            median(invoke),
            median(peak.clone()),
            peak.iter().cloned().fold(0.0, f64::max),
        );
    }
}

/// An SQS event of the messages waiting on the queue (the ingest runs enqueued them), built
/// on the fixture's record.
async fn sqs_event(backend: &botline_aws::AwsBackend, fixture: &serde_json::Value) -> String {
    let received = backend
        .clients()
        .sqs
        .receive_message()
        .queue_url(&backend.settings().queue_url)
        .max_number_of_messages(1)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .expect("ReceiveMessage");
    let template = &fixture["Records"][0];
    let records: Vec<serde_json::Value> = received
        .messages()
        .iter()
        .map(|m| {
            let mut record = template.clone();
            record["messageId"] = m.message_id().unwrap().into();
            record["receiptHandle"] = m.receipt_handle().unwrap().into();
            record["body"] = m.body().unwrap().into();
            record["attributes"]["ApproximateReceiveCount"] = "1".into();
            record
        })
        .collect();
    assert!(!records.is_empty(), "no message waits for the worker");
    serde_json::json!({ "Records": records }).to_string()
}
