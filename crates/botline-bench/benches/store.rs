//! Criterion micro-benchmarks of the embedded store's write path (`botline-sqlite`, WAL,
//! `synchronous = FULL`, one writer thread with group commit), in a temporary directory:
//!
//! - `enqueue/sequential`: one update made durable at a time, as one webhook request alone sees
//!   it (a commit and an fsync each);
//! - `enqueue/concurrent_64`: 64 updates enqueued at once, as 64 connections send them (group
//!   commit); the time is per batch of 64;
//! - `apply/one_update`: the records of one leased update written with its done mark (one
//!   transaction each), the worker's write.
//!
//! Disk latency dominates, so the figures depend on the machine's disk as much as on the code.
//! `cargo bench -p botline-bench --bench store` (add `-- --quick` for a short run).

use botline_bench::body::{Composer, Population};
use botline_core::{Delivery, Handling, InboundUpdate, Queue, QueueConfig, Store};
use botline_sqlite::SqliteBackend;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Writes realistic message updates with ids that never repeat within a process, each in a chat
/// of its own (so a receive hands all of them out at once).
struct Updates {
    next_id: AtomicU64,
    template: Vec<u8>,
}

impl Updates {
    fn new() -> Self {
        let mut population = Population::generate(3, 1);
        let chat = population.chat_mut(0).expect("one chat");
        let body = Composer::new(3).compose(chat, 1, 1_714_564_800).body;
        Self {
            next_id: AtomicU64::new(1),
            template: body.to_vec(),
        }
    }

    /// The next update: the template with a new `update_id` and chat id.
    fn next(&self) -> InboundUpdate {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut value: serde_json::Value =
            serde_json::from_slice(&self.template).expect("the template is JSON");
        value["update_id"] = id.into();
        value["message"]["chat"]["id"] = (1_000_000 + id).into();
        InboundUpdate::parse(value.to_string().as_bytes()).expect("a valid update")
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn open(dir: &tempfile::TempDir) -> Arc<SqliteBackend> {
    Arc::new(SqliteBackend::open(dir.path(), QueueConfig::default()).expect("the store"))
}

fn enqueue(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let backend = open(&dir);
    let updates = Arc::new(Updates::new());
    let mut group = c.benchmark_group("enqueue");
    group.sample_size(20);

    group.throughput(Throughput::Elements(1));
    group.bench_function("sequential", |b| {
        b.to_async(&rt).iter(|| {
            let update = updates.next();
            let backend = Arc::clone(&backend);
            async move { backend.enqueue(&update).await.expect("enqueued") }
        });
    });

    group.throughput(Throughput::Elements(64));
    group.bench_function("concurrent_64", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let backend = Arc::clone(&backend);
            let updates = Arc::clone(&updates);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch: Vec<InboundUpdate> = (0..64).map(|_| updates.next()).collect();
                    let started = Instant::now();
                    let mut tasks = tokio::task::JoinSet::new();
                    for update in batch {
                        let backend = Arc::clone(&backend);
                        tasks.spawn(async move { backend.enqueue(&update).await });
                    }
                    while let Some(done) = tasks.join_next().await {
                        done.expect("the task ran").expect("enqueued");
                    }
                    total += started.elapsed();
                }
                total
            }
        });
    });
    group.finish();
}

fn apply(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let backend = open(&dir);
    let updates = Updates::new();
    let handling = Handling::default();
    let mut group = c.benchmark_group("apply");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_update", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let backend = Arc::clone(&backend);
            // Not timed: enqueue `iters` updates, lease them and build their records.
            let batch: Vec<InboundUpdate> = (0..iters).map(|_| updates.next()).collect();
            let handling = handling.clone();
            async move {
                for update in &batch {
                    backend.enqueue(update).await.expect("enqueued");
                }
                let mut deliveries: Vec<Delivery> = Vec::new();
                while deliveries.len() < batch.len() {
                    let got = backend
                        .receive(batch.len() - deliveries.len())
                        .await
                        .expect("leased");
                    assert!(!got.is_empty(), "every enqueued update can be leased");
                    deliveries.extend(got);
                }
                let work: Vec<_> = deliveries
                    .into_iter()
                    .map(|delivery| {
                        let records = handling
                            .records(&delivery.update, 1_714_564_801_000)
                            .expect("records");
                        (delivery, records)
                    })
                    .collect();
                let started = Instant::now();
                for (delivery, records) in &work {
                    backend.apply(delivery, records).await.expect("applied");
                }
                started.elapsed()
            }
        });
    });
    group.finish();
}

criterion_group!(benches, enqueue, apply);
criterion_main!(benches);
