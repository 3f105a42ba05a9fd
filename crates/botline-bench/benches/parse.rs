//! Criterion micro-benchmarks of what the webhook does to a body before it makes it durable
//! (`InboundUpdate::parse`: validate, read id, kind and order key), and of what the worker does
//! with it afterwards (`Handling::records`), on three representative bodies:
//!
//! - `text`: a text message as the load generator writes it (Bot API escaping; 363 bytes);
//! - `callback_query`: the `callback_query` fixture of `tests/data` (pretty-printed, 1.1 KB);
//! - `large`: a message of 4,096 Cyrillic characters (Telegram's longest text), every one
//!   escaped as `\uXXXX` the way the Bot API sends it (22.5 KB).
//!
//! `cargo bench -p botline-bench --bench parse` (add `-- --quick` for a short run).

use botline_bench::body::{Composer, MessageKind, Population, escape_like_bot_api};
use botline_core::{Handling, InboundUpdate, QueuedUpdate};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;

/// The bodies, by name.
fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    let mut population = Population::generate(1, 10);
    let mut composer = Composer::new(1);
    let text = (0..1000u64)
        .map(|k| {
            let chat = population.chat_mut((k % 10) as usize).expect("ten chats");
            composer.compose(chat, 800_000_000 + k, 1_714_564_800)
        })
        .find(|update| {
            update.kind == MessageKind::Text && update.body.windows(2).any(|w| w == b"\\u")
        })
        .expect("an escaped text message among 1000");

    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/callback-query.json");
    let callback_query = std::fs::read(&fixture).expect("the callback_query fixture");

    let long_text: String = "Пример длинного сообщения "
        .chars()
        .cycle()
        .take(4096)
        .collect();
    let large = serde_json::json!({
        "update_id": 800_001_000,
        "message": {
            "message_id": 77,
            "from": {"id": 7_123_456_789_012_i64, "is_bot": false, "first_name": "Анна", "language_code": "ru"},
            "chat": {"id": -1_009_876_543_210_i64, "title": "Большая группа", "type": "supergroup"},
            "date": 1_714_564_800,
            "text": long_text,
        }
    });
    let large = escape_like_bot_api(&large.to_string()).into_bytes();

    vec![
        ("text", text.body.to_vec()),
        ("callback_query", callback_query),
        ("large", large),
    ]
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, body) in bodies() {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new(name, body.len()), &body, |b, body| {
            b.iter(|| InboundUpdate::parse(black_box(body)).expect("a valid update"));
        });
    }
    group.finish();
}

fn records(c: &mut Criterion) {
    let mut group = c.benchmark_group("records");
    let handling = Handling {
        bot_username: Some("botline_bench_bot".to_owned()),
    };
    for (name, body) in bodies() {
        let update = InboundUpdate::parse(&body).expect("a valid update");
        let queued = QueuedUpdate::new(update, "bench-entry".to_owned(), 1_714_564_800_000);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new(name, body.len()), &queued, |b, queued| {
            b.iter(|| {
                handling
                    .records(black_box(queued), 1_714_564_801_000)
                    .expect("records")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, parse, records);
criterion_main!(benches);
