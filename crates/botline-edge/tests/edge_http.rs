//! The edge layer over real HTTP: a server on 127.0.0.1 whose peer is the socket's, a client
//! that sends what a proxy, Telegram or an attacker would.

mod common;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use botline_edge::{ClientAddr, EdgeConfig, EdgeLayer, ProxyHeader, SECRET_HEADER, Secret};
use common::{post as send, post_bytes as send_bytes, serve};
use ipnet::IpNet;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A guarded `/hook` that counts what reached it.
struct Hook {
    addr: SocketAddr,
    reached: Arc<AtomicUsize>,
}

impl Hook {
    async fn start(config: EdgeConfig, secret: Option<&str>) -> Self {
        Self::start_with(config, secret, None).await
    }

    /// `client`: a `ClientAddr` an entry point inserts before the router, as the Lambda does.
    async fn start_with(config: EdgeConfig, secret: Option<&str>, client: Option<&str>) -> Self {
        let reached = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&reached);
        let edge = EdgeLayer::new(&config, secret.map(Secret::new)).unwrap();
        let handler = post(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { r#"{"ok":true}"# }
        })
        .layer(edge);
        let mut app = Router::new().route("/hook", handler);
        if let Some(client) = client {
            app = app.layer(axum::Extension(ClientAddr(client.parse().unwrap())));
        }
        Self {
            addr: serve(app).await,
            reached,
        }
    }

    async fn post(&self, headers: &[(&str, &str)]) -> common::Answer {
        send(self.addr, "/hook", headers, "{}").await
    }

    /// Header values as raw bytes, each pair a header line of its own.
    async fn post_bytes(&self, headers: &[(&str, &[u8])]) -> common::Answer {
        send_bytes(self.addr, "/hook", headers, "{}").await
    }

    fn reached(&self) -> usize {
        self.reached.load(Ordering::SeqCst)
    }
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

/// Allowlist only (the rate limit is off by default), so these tests are about addresses.
fn allowlist(list: &[&str], trusted: &[&str]) -> EdgeConfig {
    EdgeConfig {
        allowlist: Some(nets(list)),
        trusted_proxies: nets(trusted),
        ..EdgeConfig::default()
    }
}

const TELEGRAM: [&str; 2] = ["149.154.160.0/20", "91.108.4.0/22"];

#[tokio::test]
async fn a_peer_outside_the_allowlist_is_refused_before_the_handler() {
    let hook = Hook::start(EdgeConfig::telegram_default(), None).await;
    let answer = hook.post(&[]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.body, r#"{"error":"forbidden"}"#);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(hook.reached(), 0);
}

#[tokio::test]
async fn a_peer_in_the_allowlist_passes() {
    let hook = Hook::start(allowlist(&["127.0.0.1/32"], &[]), None).await;
    let answer = hook.post(&[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, r#"{"ok":true}"#);
    assert_eq!(hook.reached(), 1);
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client() {
    let hook = Hook::start(allowlist(&TELEGRAM, &["127.0.0.1/32"]), None).await;
    let answer = hook.post(&[("x-forwarded-for", "149.154.167.1")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    // Without the header, the proxy itself is the client, and it is not Telegram.
    assert_eq!(hook.post(&[]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(hook.reached(), 1);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_name_a_client() {
    let hook = Hook::start(allowlist(&TELEGRAM, &["10.0.0.0/8"]), None).await;
    let answer = hook.post(&[("x-forwarded-for", "149.154.167.1")]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = hook.post(&[("forwarded", "for=149.154.167.1")]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(hook.reached(), 0);
}

#[tokio::test]
async fn a_spoofed_chain_resolves_to_the_real_client() {
    let hook = Hook::start(allowlist(&TELEGRAM, &["127.0.0.1/32"]), None).await;
    // The client sent "X-Forwarded-For: 149.154.167.1"; the proxy appended its real address.
    let answer = hook
        .post(&[("x-forwarded-for", "149.154.167.1, 6.6.6.6")])
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // The same, the client's claim on a header line of its own.
    let answer = hook
        .post(&[
            ("x-forwarded-for", "149.154.167.1"),
            ("x-forwarded-for", "6.6.6.6"),
        ])
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(hook.reached(), 0);
}

#[tokio::test]
async fn forwarded_header_with_an_ipv6_client() {
    let mut config = allowlist(&["2001:db8::/32"], &["127.0.0.1/32"]);
    config.proxy_header = ProxyHeader::Forwarded;
    let hook = Hook::start(config, None).await;
    let answer = hook
        .post(&[("forwarded", r#"for="[2001:db8::1]:1234";proto=https"#)])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = hook
        .post(&[("forwarded", r#"for="[2001:db9::1]:1234""#)])
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // Proxies that write Forwarded leave X-Forwarded-For to the client: not read.
    let answer = hook.post(&[("x-forwarded-for", "2001:db8::1")]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(hook.reached(), 1);
}

#[tokio::test]
async fn an_entry_point_supplied_client_address_wins_over_the_socket() {
    // The Lambda path: API Gateway's source IP, inserted as a request extension.
    let hook = Hook::start_with(allowlist(&TELEGRAM, &[]), None, Some("149.154.167.1")).await;
    assert_eq!(hook.post(&[]).await.status, StatusCode::OK);
    let hook = Hook::start_with(allowlist(&TELEGRAM, &[]), None, Some("6.6.6.6")).await;
    assert_eq!(hook.post(&[]).await.status, StatusCode::FORBIDDEN);
    // An IPv4-mapped source address is the IPv4 address.
    let hook = Hook::start_with(
        allowlist(&TELEGRAM, &[]),
        None,
        Some("::ffff:149.154.167.1"),
    )
    .await;
    assert_eq!(hook.post(&[]).await.status, StatusCode::OK);
}

fn limited(rate: u32, burst: u32) -> EdgeConfig {
    let mut config = EdgeConfig::default();
    config.rate_limit.enabled = true;
    config.rate_limit.rate = rate;
    config.rate_limit.burst = burst;
    config
}

#[tokio::test]
async fn a_burst_then_429_with_retry_after() {
    let hook = Hook::start(limited(1, 3), None).await;
    for _ in 0..3 {
        assert_eq!(hook.post(&[]).await.status, StatusCode::OK);
    }
    let answer = hook.post(&[]).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.body, r#"{"error":"rate limited"}"#);
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(hook.reached(), 3);
}

#[tokio::test]
async fn requests_with_the_webhook_secret_are_never_limited() {
    let hook = Hook::start(limited(1, 2), Some("s3cret_token")).await;
    for _ in 0..25 {
        let answer = hook.post(&[(SECRET_HEADER, "s3cret_token")]).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    // A wrong secret is limited like no secret: the bucket is still full, as the secret
    // requests did not draw from it.
    assert_eq!(
        hook.post(&[(SECRET_HEADER, "s3cret_tokeN")]).await.status,
        StatusCode::OK
    );
    assert_eq!(hook.post(&[]).await.status, StatusCode::OK);
    assert_eq!(
        hook.post(&[(SECRET_HEADER, "wrong")]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(hook.post(&[]).await.status, StatusCode::TOO_MANY_REQUESTS);
    // The secret still passes while the address is limited.
    assert_eq!(
        hook.post(&[(SECRET_HEADER, "s3cret_token")]).await.status,
        StatusCode::OK
    );
    assert_eq!(hook.reached(), 28);
}

#[tokio::test]
async fn limits_are_per_client_behind_a_proxy() {
    let mut config = limited(1, 1);
    config.trusted_proxies = nets(&["127.0.0.1/32"]);
    let hook = Hook::start(config, None).await;
    let from = |client| [("x-forwarded-for", client)];
    assert_eq!(hook.post(&from("192.0.2.1")).await.status, StatusCode::OK);
    assert_eq!(
        hook.post(&from("192.0.2.1")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(hook.post(&from("192.0.2.2")).await.status, StatusCode::OK);
}

/// A Prometheus recorder for this thread only. On the current-thread runtime of
/// `#[tokio::test]`, the server's connection tasks run on the test's thread, so it counts what
/// this test's guard refused and nothing another test does.
struct LocalMetrics {
    recorder: PrometheusRecorder,
}

impl LocalMetrics {
    fn new() -> Self {
        Self {
            recorder: PrometheusBuilder::new().build_recorder(),
        }
    }

    fn handle(&self) -> PrometheusHandle {
        self.recorder.handle()
    }
}

fn refused(handle: &PrometheusHandle, reason: &str) -> u64 {
    let text = handle.render();
    let prefix = format!(r#"botline_edge_refused_total{{reason="{reason}"}} "#);
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |count| count.parse().unwrap())
}

/// Allowlist `telegram`, the proxies at 127.0.0.1 writing `which`.
fn telegram_behind_a_proxy(which: ProxyHeader) -> EdgeConfig {
    EdgeConfig {
        trusted_proxies: nets(&["127.0.0.1/32"]),
        proxy_header: which,
        ..EdgeConfig::telegram_default()
    }
}

const BAD_FORWARDING: &str = r#"{"error":"bad forwarding header"}"#;

#[tokio::test(flavor = "current_thread")]
async fn an_unterminated_quote_cannot_name_telegram_through_a_forwarded_proxy() {
    let metrics = LocalMetrics::new();
    let _local = metrics::set_default_local_recorder(&metrics.recorder);
    let hook = Hook::start(telegram_behind_a_proxy(ProxyHeader::Forwarded), None).await;
    // The client sent `Forwarded: for=149.154.167.1;x="`, and the proxy joined its own element
    // as nginx's `proxy_set_header Forwarded "$http_forwarded, for=$remote_addr"` does.
    let answer = hook
        .post(&[("forwarded", r#"for=149.154.167.1;x=", for=6.6.6.6"#)])
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body, BAD_FORWARDING);
    assert_eq!(answer.headers["content-type"], "application/json");
    // The proxy passed the client's line on and added a line of its own.
    let answer = hook
        .post(&[
            ("forwarded", r#"for=149.154.167.1;x=""#),
            ("forwarded", "for=6.6.6.6"),
        ])
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    // A trusted hop that hides the client: unknown, so neither it nor the proxy is the client.
    for hidden in ["for=_hidden", "for=unknown", "proto=https"] {
        let answer = hook.post(&[("forwarded", hidden)]).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{hidden}");
        assert_eq!(answer.body, BAD_FORWARDING);
    }
    assert_eq!(hook.reached(), 0);
    assert_eq!(refused(&metrics.handle(), "bad_forwarding"), 5);

    // Well-formed headers are read as before.
    let answer = hook.post(&[("forwarded", "for=149.154.167.1")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    // What the same nginx line writes when the client sent no Forwarded: an empty element.
    let answer = hook.post(&[("forwarded", ", for=149.154.167.1")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    // A quoted comma and escaped quotes are fine, and split nothing.
    let answer = hook
        .post(&[(
            "forwarded",
            r#"for=6.6.6.6;x="\", for=1.1.1.1", for=149.154.167.1"#,
        )])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(hook.reached(), 3);
    let answer = hook.post(&[("forwarded", "for=6.6.6.6")]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    let answer = hook
        .post(&[("forwarded", r#"for=149.154.167.1;x="\"", for=6.6.6.6"#)])
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(hook.reached(), 3);
    assert_eq!(refused(&metrics.handle(), "bad_forwarding"), 5);
    assert_eq!(refused(&metrics.handle(), "allowlist"), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn an_unreadable_x_forwarded_for_is_refused_not_read_as_the_proxy() {
    let metrics = LocalMetrics::new();
    let _local = metrics::set_default_local_recorder(&metrics.recorder);
    // The proxy's own network is allowed too (its health checks, say): reading an unreadable
    // header as the proxy would let anyone through.
    let mut config = telegram_behind_a_proxy(ProxyHeader::XForwardedFor);
    config.allowlist = Some(nets(&["149.154.160.0/20", "91.108.4.0/22", "127.0.0.1/32"]));
    let hook = Hook::start(config, None).await;
    let bad: [&[(&str, &[u8])]; 6] = [
        &[("x-forwarded-for", b"6.6.6.6\xff")],
        &[("x-forwarded-for", b"149.154.167.1, 6.6.6.\xc3\xa9")],
        &[("x-forwarded-for", b"garbage")],
        &[("x-forwarded-for", b"6.6.6.6, garbage")],
        &[("x-forwarded-for", b"6.6.6.6,,")],
        &[
            ("x-forwarded-for", b"149.154.167.1"),
            ("x-forwarded-for", b"6.6.6.6 \xff"),
        ],
    ];
    for headers in bad {
        let answer = hook.post_bytes(headers).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{headers:?}");
        assert_eq!(answer.body, BAD_FORWARDING);
    }
    assert_eq!(hook.reached(), 0);
    assert_eq!(refused(&metrics.handle(), "bad_forwarding"), 6);

    // Readable headers are read as before; without one the proxy is the client.
    let answer = hook.post(&[("x-forwarded-for", "149.154.167.1")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = hook.post(&[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = hook.post(&[("x-forwarded-for", "6.6.6.6")]).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(hook.reached(), 2);
    assert_eq!(refused(&metrics.handle(), "bad_forwarding"), 6);
    assert_eq!(refused(&metrics.handle(), "allowlist"), 1);
}

#[tokio::test]
async fn an_untrusted_peer_is_never_refused_for_its_forwarding_header() {
    // The peer is the client whatever it sent: a header it cannot make anyone believe is no
    // reason to refuse it.
    let mut config = allowlist(&["127.0.0.1/32"], &["10.0.0.0/8"]);
    let hook = Hook::start(config.clone(), None).await;
    let answer = hook
        .post_bytes(&[("x-forwarded-for", b"garbage \xff")])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    config.proxy_header = ProxyHeader::Forwarded;
    let hook = Hook::start(config, None).await;
    let answer = hook
        .post(&[("forwarded", r#"for=149.154.167.1;x=", for=_x"#)])
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(hook.reached(), 1);
}
