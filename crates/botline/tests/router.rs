//! The webhook router in process, on a real SQLite store: every bad input, secrets, limits,
//! every fixture, and arbitrary bodies.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use botline::http::{App, SECRET_HEADER, router};
use botline::secret::WebhookSecret;
use botline_core::{Backend, QueueConfig};
use botline_sqlite::SqliteBackend;
use http_body_util::BodyExt;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower::ServiceExt;

const SECRET: &str = "s3cret_Token-value";
const LIMIT: usize = 4096;

struct Harness {
    router: Router,
    backend: Arc<dyn Backend>,
    _dir: tempfile::TempDir,
}

fn harness(secret: Option<&str>) -> Harness {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(SqliteBackend::open(dir.path(), QueueConfig::default()).unwrap());
    let mut app = App::new(Arc::clone(&backend))
        .with_secret(secret.map(|s| WebhookSecret::new(s.to_owned()).unwrap()));
    app.max_body_bytes = LIMIT;
    Harness {
        router: router(Arc::new(app)),
        backend,
        _dir: dir,
    }
}

async fn post(harness: &Harness, secret: Option<&str>, body: Vec<u8>) -> (StatusCode, String) {
    let mut request =
        Request::post("/telegram/webhook").header(header::CONTENT_TYPE, "application/json");
    if let Some(secret) = secret {
        request = request.header(SECRET_HEADER, secret);
    }
    let response = harness
        .router
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn assert_json_error(body: &str) {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert!(value["error"].is_string(), "{body}");
    assert!(body.len() < 200, "short: {body}");
}

#[tokio::test]
async fn every_fixture_is_accepted_once() {
    let harness = harness(None);
    let files = files_in(&data_dir());
    for path in &files {
        let body = std::fs::read(path).unwrap();
        let (status, _) = post(&harness, None, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{}", path.display());
        let (status, _) = post(&harness, None, body).await;
        assert_eq!(status, StatusCode::OK, "redelivery of {}", path.display());
    }
    let stats = harness.backend.stats().await.unwrap();
    assert_eq!(stats.pending as usize, files.len(), "one copy each");
}

#[tokio::test]
async fn every_invalid_body_is_a_400_with_a_short_json_error() {
    let harness = harness(None);
    for path in files_in(&data_dir().join("invalid")) {
        let (status, body) = post(&harness, None, std::fs::read(&path).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}", path.display());
        assert_json_error(&body);
    }
    assert_eq!(
        harness.backend.stats().await.unwrap().pending,
        0,
        "nothing stored"
    );
}

#[tokio::test]
async fn the_secret_is_required_and_never_echoed() {
    let harness = harness(Some(SECRET));
    let body = br#"{"update_id":1,"message":{"message_id":1,"date":1,"chat":{"id":1},"text":"x"}}"#
        .to_vec();
    for wrong in [
        None,
        Some(""),
        Some("s3cret_Token-valuE"),
        Some("s3cret_Token-value-longer"),
    ] {
        let (status, text) = post(&harness, wrong, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{wrong:?}");
        assert_json_error(&text);
        assert!(!text.contains(SECRET));
    }
    assert_eq!(harness.backend.stats().await.unwrap().pending, 0);
    let (status, _) = post(&harness, Some(SECRET), body).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_secret_is_checked_before_the_size() {
    let harness = harness(Some(SECRET));
    let (status, _) = post(&harness, None, vec![b' '; LIMIT * 2]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bodies_over_the_limit_are_a_413() {
    let harness = harness(None);
    let padding = "x".repeat(LIMIT);
    let body = format!(r#"{{"update_id":1,"message":{{"text":"{padding}"}}}}"#);
    let (status, text) = post(&harness, None, body.into_bytes()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_json_error(&text);

    // Without a Content-Length, the limit holds while reading.
    let chunks = futures_stream(vec![
        vec![b'{'; LIMIT / 2],
        vec![b'{'; LIMIT / 2],
        vec![b'{'; 10],
    ]);
    let response = harness
        .router
        .clone()
        .oneshot(Request::post("/telegram/webhook").body(chunks).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let at_limit = format!(r#"{{"update_id":2,"x":"{}"}}"#, "y".repeat(LIMIT - 22));
    assert_eq!(at_limit.len(), LIMIT);
    assert_eq!(
        post(&harness, None, at_limit.into_bytes()).await.0,
        StatusCode::OK
    );
    assert_eq!(harness.backend.stats().await.unwrap().pending, 1);
}

/// A body that arrives in chunks, with no Content-Length.
fn futures_stream(chunks: Vec<Vec<u8>>) -> Body {
    Body::from_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::io::Error>),
    ))
}

#[tokio::test]
async fn health_names_the_version_and_unknown_paths_are_404() {
    let harness = harness(None);
    let response = harness
        .router
        .clone()
        .oneshot(Request::get("/health").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert!(
        health["version"]
            .as_str()
            .unwrap()
            .starts_with(env!("CARGO_PKG_VERSION"))
    );
    let response = harness
        .router
        .clone()
        .oneshot(Request::get("/nope").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = harness
        .router
        .clone()
        .oneshot(
            Request::get("/telegram/webhook")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), "[a-z_]{1,20}", json_value()).prop_map(|(id, kind, payload)| {
            serde_json::json!({"update_id": id, kind: payload})
                .to_string()
                .into_bytes()
        }),
        (any::<i64>(), "[a-z_]{1,20}", json_value()).prop_map(|(id, kind, payload)| {
            serde_json::json!({"update_id": id, kind: payload})
                .to_string()
                .into_bytes()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bodies_never_panic_and_never_answer_5xx(bodies in prop::collection::vec(body(), 1..8)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let harness = harness(None);
            for body in bodies {
                let (status, text) = post(&harness, None, body).await;
                prop_assert!(
                    status == StatusCode::OK || status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
                    "{status}: {text}"
                );
            }
            Ok(())
        })?;
    }
}
