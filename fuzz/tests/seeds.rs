//! The seed corpus in `fuzz/seeds/<target>/`, generated from the repo's own bodies: the update
//! fixtures in `tests/data/` (valid and `invalid/`), and a few bodies of the load generator
//! (`botline_bench::body`, plain and escaped the way the Bot API escapes).
//!
//! `BOTLINE_FUZZ_WRITE_SEEDS=1 cargo test --test seeds` (in `fuzz/`) rewrites the seeds; without
//! it the test checks that the committed seeds are exactly what would be written, and that each
//! passes its target's checks.

use arbitrary::{Arbitrary, Unstructured};
use axum::http::{Method, StatusCode};
use botline_bench::body::{Composer, MessageKind, Population};
use botline_fuzz::{SecretCase, WebhookRequest, check_update_parser, check_webhook_request};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target)
}

/// The files of a directory (not `README.md`), by name.
fn files_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && path.file_name().is_some_and(|n| n != "README.md"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

/// Every body the seeds start from, by seed name; the flag says whether it is a valid update.
fn bodies() -> BTreeMap<String, (Vec<u8>, bool)> {
    let data = repo().join("tests/data");
    let mut bodies = BTreeMap::new();
    for (name, body) in files_in(&data) {
        bodies.insert(format!("fixture-{name}"), (body, true));
    }
    for (name, body) in files_in(&data.join("invalid")) {
        bodies.insert(format!("invalid-{name}"), (body, false));
    }
    // The load generator's bodies: each kind of message, escaped and plain.
    let mut population = Population::generate(6, 10);
    let mut composer = Composer::new(6);
    let mut wanted: Vec<(MessageKind, bool)> = Vec::new();
    for k in 0..10_000u64 {
        let chat = population.chat_mut((k % 10) as usize).unwrap();
        let update = composer.compose(chat, 900_000_001 + k, 1_714_564_800);
        let escaped = update.body.windows(2).any(|w| w == b"\\u");
        if !wanted.contains(&(update.kind, escaped)) {
            wanted.push((update.kind, escaped));
            let kind = format!("{:?}", update.kind).to_lowercase();
            let form = if escaped { "escaped" } else { "plain" };
            bodies.insert(
                format!("bench-{kind}-{form}.json"),
                (update.body.to_vec(), true),
            );
        }
        if wanted.len() == 6 {
            break;
        }
    }
    assert_eq!(
        wanted.len(),
        6,
        "every kind of bench body, escaped and plain"
    );
    bodies
}

fn update_parser_seeds() -> BTreeMap<String, Vec<u8>> {
    bodies()
        .into_iter()
        .map(|(name, (body, _))| (name, body))
        .collect()
}

fn with_prefix(prefix: [u8; WebhookRequest::PREFIX_LEN], body: &[u8]) -> Vec<u8> {
    let mut seed = prefix.to_vec();
    seed.extend_from_slice(body);
    seed
}

fn webhook_request_seeds() -> BTreeMap<String, Vec<u8>> {
    let mut seeds: BTreeMap<String, Vec<u8>> = bodies()
        .into_iter()
        .map(|(name, (body, _))| (name, with_prefix(WebhookRequest::seed_prefix(), &body)))
        .collect();
    // The other rules of the router, each on one valid body.
    let body = std::fs::read(repo().join("tests/data/message-private-text.json")).unwrap();
    let variants: [(&str, [u8; WebhookRequest::PREFIX_LEN]); 9] = [
        ("variant-no-secret-router", [0, 0, 0, 0, 0, 0]),
        ("variant-secret-missing", [0, 0, 5, 0, 0, 0]),
        ("variant-secret-wrong", [0, 0, 6, 0, 0, 0]),
        ("variant-get", [5, 0, 2, 0, 0, 0]),
        ("variant-health", [5, 7, 0, 1, 0, 0]),
        ("variant-declared-too-large", [0, 0, 2, 0, 5, 0]),
        ("variant-declared-exact-no-type", [0, 0, 2, 1, 3, 0]),
        ("variant-chunked-7", [0, 0, 2, 3, 0, 7]),
        ("variant-chunked-garbage-length", [0, 5, 2, 2, 7, 64]),
    ];
    for (name, prefix) in variants {
        seeds.insert(format!("{name}.bin"), with_prefix(prefix, &body));
    }
    seeds
}

fn check_or_write(target: &str, expected: &BTreeMap<String, Vec<u8>>) {
    let dir = seeds_dir(target);
    if std::env::var_os("BOTLINE_FUZZ_WRITE_SEEDS").is_some_and(|v| v == "1") {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in expected {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let committed = files_in(&dir);
    assert_eq!(
        committed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "seeds of {target} (BOTLINE_FUZZ_WRITE_SEEDS=1 rewrites them)"
    );
    for (name, bytes) in expected {
        assert!(committed[name] == *bytes, "seed {target}/{name} is stale");
    }
}

#[test]
fn update_parser_seeds_are_generated_from_the_fixtures_and_pass() {
    let seeds = update_parser_seeds();
    check_or_write("update_parser", &seeds);
    let bodies = bodies();
    for (name, bytes) in &seeds {
        check_update_parser(bytes);
        let valid = bodies[name].1;
        assert_eq!(
            botline_core::InboundUpdate::parse(bytes).is_ok(),
            valid,
            "{name}"
        );
    }
}

#[test]
fn webhook_request_seeds_decode_as_intended_and_pass() {
    let seeds = webhook_request_seeds();
    check_or_write("webhook_request", &seeds);
    let bodies = bodies();
    for (name, bytes) in &seeds {
        let request = WebhookRequest::arbitrary_take_rest(Unstructured::new(bytes)).unwrap();
        assert_eq!(&request.body[..], &bytes[WebhookRequest::PREFIX_LEN..]);
        let status = check_webhook_request(&request).expect("a valid request");
        if let Some((_, valid)) = bodies.get(name) {
            assert_eq!(request.method(), Method::POST);
            assert_eq!(request.path(), "/telegram/webhook");
            assert!(matches!(
                request.secret_case(),
                SecretCase::WithSecret(Some(_))
            ));
            let want = if *valid {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            assert_eq!(status, want, "{name}");
        }
    }
    // The variants reach each rule of the router.
    let status_of = |name: &str| {
        let request = WebhookRequest::arbitrary_take_rest(Unstructured::new(&seeds[name])).unwrap();
        check_webhook_request(&request).unwrap()
    };
    assert_eq!(status_of("variant-no-secret-router.bin"), StatusCode::OK);
    assert_eq!(
        status_of("variant-secret-missing.bin"),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status_of("variant-secret-wrong.bin"),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status_of("variant-get.bin"), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(status_of("variant-health.bin"), StatusCode::OK);
    assert_eq!(
        status_of("variant-declared-too-large.bin"),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        status_of("variant-declared-exact-no-type.bin"),
        StatusCode::OK
    );
    assert_eq!(status_of("variant-chunked-7.bin"), StatusCode::OK);
    assert_eq!(
        status_of("variant-chunked-garbage-length.bin"),
        StatusCode::OK
    );
}
