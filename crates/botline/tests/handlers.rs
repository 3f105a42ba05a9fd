//! A bot's handlers run by the worker on the embedded store: effects written once with the
//! done mark; a handler that panics or fails is retried and dead-lettered with none of its
//! effects, while its chat's next update goes on and the worker lives.

use botline::handler::{Bot, Context, HandlerResult};
use botline::worker::{Processor, Worker};
use botline_core::{
    Backend, Handling, InboundUpdate, OutboxAction, QueueConfig, RetryPolicy, UpdateId,
};
use botline_sqlite::SqliteBackend;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

static BOOMS: AtomicU32 = AtomicU32::new(0);

async fn boom(cx: Context) -> HandlerResult {
    BOOMS.fetch_add(1, Ordering::SeqCst);
    cx.reply("never sent: the attempt fails");
    panic!("a bug in the handler");
}

async fn fails(cx: Context) -> HandlerResult {
    cx.reply("never sent either");
    Err("the model is down".into())
}

async fn echo(cx: Context) -> HandlerResult {
    cx.reply(format!("echo: {}", cx.args()));
    Ok(())
}

fn message(update_id: i64, chat: i64, text: &str) -> InboundUpdate {
    let body = serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id, "date": 1,
            "chat": {"id": chat, "type": "private"},
            "from": {"id": chat, "is_bot": false, "first_name": "Ann"},
            "text": text,
        }
    });
    InboundUpdate::parse(body.to_string().as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_is_dead_lettered_with_no_effect_and_its_chat_goes_on() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = QueueConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(100),
        },
        ..QueueConfig::default()
    };
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(dir.path(), config).unwrap());
    for update in [
        message(1, 10, "/boom"),
        message(2, 10, "/echo after the panic"),
        message(3, 11, "/fail"),
        message(4, 11, "/echo after the error"),
    ] {
        backend.enqueue(&update).await.unwrap();
    }
    let (_known, handling) = watch::channel(Some(Handling::default()));
    let stop = CancellationToken::new();
    let worker = tokio::spawn(
        worker(
            &backend,
            Bot::new()
                .command("boom", boom)
                .command("fail", fails)
                .command("echo", echo),
            handling,
            config.lease,
            Duration::from_secs(30),
        )
        .run(stop.clone()),
    );
    drained(backend.as_ref()).await;
    stop.cancel();
    worker.await.expect("the worker did not die of the panic");

    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.dead, stats.done), (2, 2), "{stats:?}");
    assert_eq!(
        BOOMS.load(Ordering::SeqCst),
        3,
        "retried up to the last attempt"
    );
    let dead = backend.show(UpdateId(1)).await.unwrap().unwrap();
    assert_eq!(dead.attempts, 3);
    assert!(
        dead.last_error.unwrap_or_default().contains("panicked"),
        "the panic is the reason"
    );
    let dead = backend.show(UpdateId(3)).await.unwrap().unwrap();
    assert!(
        dead.last_error
            .unwrap_or_default()
            .contains("the model is down")
    );

    // Only the echoes are in the outbox: a failed attempt leaves no effect.
    assert_eq!(
        sent_texts(backend.as_ref()).await,
        ["echo: after the error", "echo: after the panic"]
    );
}

fn worker(
    backend: &Arc<dyn Backend>,
    bot: Bot,
    handling: watch::Receiver<Option<Handling>>,
    lease: Duration,
    handler_timeout: Duration,
) -> Worker {
    Worker {
        processor: Processor {
            backend: Arc::clone(backend),
            registrar: None,
            bot,
            lease,
            handler_timeout,
        },
        concurrency: 4,
        new_update: Arc::new(Notify::new()),
        handling,
        new_calls: Arc::new(Notify::new()),
    }
}

/// Waits until nothing is pending or in flight.
async fn drained(backend: &dyn Backend) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = backend.stats().await.unwrap();
        if stats.pending == 0 && stats.in_flight == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "never drained: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The texts of the outbox's sendMessage calls, sorted, each marked sent.
async fn sent_texts(backend: &dyn Backend) -> Vec<String> {
    let mut texts = Vec::new();
    loop {
        let calls = backend
            .due_calls(10, Duration::from_secs(60))
            .await
            .unwrap();
        if calls.is_empty() {
            break;
        }
        for call in calls {
            if let OutboxAction::SendMessage { text, .. } = &call.call.action {
                texts.push(text.clone());
            }
            backend.call_done(&call.call.outbox_id, None).await.unwrap();
        }
    }
    texts.sort();
    texts
}

static SLOW_RUNS: AtomicU32 = AtomicU32::new(0);
static HANGS_STOPPED: AtomicU32 = AtomicU32::new(0);

/// Takes three leases' time (the test's lease is 1 s).
async fn slow(cx: Context) -> HandlerResult {
    SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    cx.reply(format!("slow, attempt of update {}", cx.update_id()));
    Ok(())
}

/// Never finishes; counts being stopped.
async fn hangs(_cx: Context) -> HandlerResult {
    struct Stopped;
    impl Drop for Stopped {
        fn drop(&mut self) {
            HANGS_STOPPED.fetch_add(1, Ordering::SeqCst);
        }
    }
    let _stopped = Stopped;
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_keeps_its_lease_and_a_hung_one_is_stopped_at_the_timeout() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = QueueConfig {
        lease: Duration::from_secs(1),
        retry: RetryPolicy {
            max_attempts: 2,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(100),
        },
        ..QueueConfig::default()
    };
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(dir.path(), config).unwrap());
    for update in [
        message(1, 20, "/slow"),
        message(2, 21, "/hang"),
        message(3, 21, "/echo after the hang"),
    ] {
        backend.enqueue(&update).await.unwrap();
    }
    let (_known, handling) = watch::channel(Some(Handling::default()));
    let stop = CancellationToken::new();
    let bot = Bot::new()
        .command("slow", slow)
        .command("hang", hangs)
        .command("echo", echo);
    // The timeout is above the slow handler's time and far below forever.
    let worker = tokio::spawn(
        worker(
            &backend,
            bot,
            handling,
            config.lease,
            Duration::from_secs(6),
        )
        .run(stop.clone()),
    );
    drained(backend.as_ref()).await;
    stop.cancel();
    worker.await.unwrap();

    // The slow handler ran once, on its first attempt: its lease never ran out under it.
    assert_eq!(SLOW_RUNS.load(Ordering::SeqCst), 1);
    let stats = backend.stats().await.unwrap();
    assert_eq!((stats.dead, stats.done), (1, 2), "{stats:?}");
    // The hung handler was stopped at each of its two attempts, then dead-lettered.
    let dead = backend.show(UpdateId(2)).await.unwrap().unwrap();
    assert_eq!(dead.attempts, 2);
    assert_eq!(
        dead.last_error.as_deref(),
        Some("the handler did not finish within 6s")
    );
    assert_eq!(HANGS_STOPPED.load(Ordering::SeqCst), 2);
    assert_eq!(
        sent_texts(backend.as_ref()).await,
        ["echo: after the hang", "slow, attempt of update 1"]
    );
}
