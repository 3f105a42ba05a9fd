//! Criterion benchmark of `receive` with one chat's long backlog, on the embedded store and on
//! Postgres (`BOTLINE_BENCH_POSTGRES`, default `postgres://postgres@127.0.0.1:5432`: a fresh
//! database is created for each backlog and dropped after; the bench fails without it): the time
//! to hand out and finish one update while BACKLOG more of the chat wait behind it, for a
//! backlog of 1,000 and of 100,000. As the worker does it: `receive` hands out the chat's head;
//! while the head is in flight the worker asks for more (its other slots, woken by each new
//! update), and `receive` must find nothing; then the head is finished (`ack`). A queue that drains a
//! backlog in linear time takes about as long per update with either (issue 17: at least 0.8×
//! the speed per update with 100,000 as with 1,000).
//!
//! Each measured update is replaced by a new one at the tail of the chat, untimed, so the backlog
//! stays as long while criterion samples. Filling the store is not timed either (100,000
//! updates, enqueued 512 at a time: some seconds).
//!
//! `cargo bench -p botline-bench --bench backlog` (add `-- --quick` for a short run).

use botline_core::{InboundUpdate, Queue, QueueConfig};
use botline_postgres::PostgresBackend;
use botline_sqlite::SqliteBackend;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// The chat whose backlog is drained.
const CHAT: i64 = -100_777;

fn update(id: i64) -> InboundUpdate {
    let body = serde_json::json!({
        "update_id": id,
        "message": {
            "message_id": id, "date": 1_714_564_800,
            "chat": {"id": CHAT, "type": "supergroup"},
            "from": {"id": 7, "is_bot": false, "first_name": "Ann"},
            "text": "a message in a busy group",
        }
    });
    InboundUpdate::parse(body.to_string().as_bytes()).expect("a valid update")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Enqueues updates `from..to` of the chat, 512 at a time.
async fn fill<B: Queue + 'static>(backend: &Arc<B>, from: i64, to: i64) {
    let mut id = from;
    while id < to {
        let mut tasks = tokio::task::JoinSet::new();
        for id in id..(id + 512).min(to) {
            let backend = Arc::clone(backend);
            tasks.spawn(async move { backend.enqueue(&update(id)).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("the task ran").expect("enqueued");
        }
        id += 512;
    }
}

/// The measured loop on `backend`, whose chat holds `backlog` updates `1..=backlog`.
fn bench_drain<B: Queue + 'static>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    backend: &Arc<B>,
    backlog: i64,
) {
    let next = Arc::new(AtomicI64::new(backlog + 1));
    group.bench_with_input(BenchmarkId::new(name, backlog), &backlog, |b, _| {
        b.to_async(rt).iter_custom(|iters| {
            let backend = Arc::clone(backend);
            let next = Arc::clone(&next);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let head = backend.receive(1).await.expect("receive");
                    let [delivery] = head.as_slice() else {
                        panic!("one head expected, got {}", head.len());
                    };
                    let more = backend.receive(10).await.expect("receive");
                    assert!(more.is_empty(), "the chat's head is in flight");
                    backend.ack(delivery).await.expect("ack");
                    total += started.elapsed();
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    backend.enqueue(&update(id)).await.expect("enqueued");
                }
                total
            }
        });
    });
}

fn psql(sql: &str) {
    let out = std::process::Command::new("psql")
        .arg(postgres_url() + "/postgres")
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .expect("psql runs: this bench needs the Postgres client and server");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn postgres_url() -> String {
    std::env::var("BOTLINE_BENCH_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

fn drain(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("receive_one_chat");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    for backlog in [1_000_i64, 100_000] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let backend =
            Arc::new(SqliteBackend::open(dir.path(), QueueConfig::default()).expect("the store"));
        rt.block_on(fill(&backend, 1, backlog + 1));
        bench_drain(&mut group, &rt, "embedded", &backend, backlog);
    }
    for backlog in [1_000_i64, 100_000] {
        let database = format!("botline_bench_backlog_{}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
        psql(&format!("CREATE DATABASE {database}"));
        let url = format!("{}/{database}", postgres_url());
        let backend = Arc::new(
            rt.block_on(PostgresBackend::connect(&url, QueueConfig::default()))
                .expect("Postgres"),
        );
        rt.block_on(fill(&backend, 1, backlog + 1));
        bench_drain(&mut group, &rt, "postgres", &backend, backlog);
        drop(backend);
        psql(&format!("DROP DATABASE {database} WITH (FORCE)"));
    }
    group.finish();
}

criterion_group!(benches, drain);
criterion_main!(benches);
