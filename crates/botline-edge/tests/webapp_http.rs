//! `POST /telegram/webapp/auth` over real HTTP.

mod common;

use axum::Router;
use axum::http::StatusCode;
use botline_core::UserId;
use botline_edge::{
    EdgeConfig, EdgeLayer, Secret, WebAppAuth, WebAppConfig, verify_session_token, webapp,
};
use common::{post, serve, signed_init_data, unix_now};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

const BOT_TOKEN: &str = "7342037359:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";
const PATH: &str = "/telegram/webapp/auth";

async fn start(config: WebAppConfig) -> (SocketAddr, Arc<WebAppAuth>) {
    let auth = Arc::new(WebAppAuth::new(&config, Secret::new(BOT_TOKEN), None).unwrap());
    let app: Router = webapp::router(Arc::clone(&auth));
    (serve(app).await, auth)
}

fn init_data_for(user_id: i64, auth_date: u64, token: &str) -> String {
    let user =
        format!(r#"{{"id":{user_id},"first_name":"Ann","username":"ann","language_code":"en"}}"#);
    let auth_date = auth_date.to_string();
    signed_init_data(
        &[
            ("auth_date", &auth_date),
            ("query_id", "AAHdF6IQAAAAAN0XohDhrOrc"),
            ("user", &user),
        ],
        token,
    )
}

#[tokio::test]
async fn valid_init_data_gets_the_user_and_a_session_token() {
    let (addr, auth) = start(WebAppConfig::default()).await;
    let now = unix_now();
    let answer = post(addr, PATH, &[], &init_data_for(42, now, BOT_TOKEN)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.headers["cache-control"], "no-store");
    let json = answer.json();
    assert_eq!(json["user"]["id"], 42);
    assert_eq!(json["user"]["first_name"], "Ann");
    assert_eq!(json["user"]["username"], "ann");
    assert_eq!(json["authDate"], now);
    let expires_at = json["expiresAt"].as_u64().unwrap();
    assert!(
        (now + 3600..=now + 3660).contains(&expires_at),
        "{expires_at}"
    );

    let token = json["sessionToken"].as_str().unwrap();
    let session = verify_session_token(token, auth.session_key(), SystemTime::now()).unwrap();
    assert_eq!(session.user_id, UserId(42));
    assert_eq!(session.expires_at, expires_at);
}

#[tokio::test]
async fn json_bodies_are_read_too() {
    let (addr, _) = start(WebAppConfig::default()).await;
    let body = serde_json::json!({ "initData": init_data_for(7, unix_now(), BOT_TOKEN) });
    let answer = post(
        addr,
        PATH,
        &[("content-type", "application/json; charset=utf-8")],
        &body.to_string(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.json()["user"]["id"], 7);
    let answer = post(
        addr,
        PATH,
        &[("content-type", "application/json")],
        "{\"x\":1}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bad_stale_and_malformed_init_data_are_refused() {
    let (addr, _) = start(WebAppConfig::default()).await;
    let now = unix_now();
    let valid = init_data_for(42, now, BOT_TOKEN);

    let tampered = valid.replace("%3A42%2C", "%3A43%2C");
    assert_ne!(tampered, valid);
    let answer = post(addr, PATH, &[], &tampered).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.body, r#"{"error":"invalid init data"}"#);

    let other_bot = init_data_for(42, now, "1:another");
    assert_eq!(
        post(addr, PATH, &[], &other_bot).await.status,
        StatusCode::UNAUTHORIZED
    );

    let stale = init_data_for(42, now - 2 * 86400, BOT_TOKEN);
    let answer = post(addr, PATH, &[], &stale).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.body, r#"{"error":"init data expired"}"#);

    for malformed in [
        "",
        "hello",
        &valid.replace("&hash=", "&nohash="),
        &format!("{valid}&auth_date=1"),
        &valid.replace("query_id=", "query_id=%G0"),
    ] {
        let answer = post(addr, PATH, &[], malformed).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{malformed}");
        assert_eq!(answer.body, r#"{"error":"malformed init data"}"#);
    }

    // Signed, but without a user: nobody to sign in.
    let no_user = signed_init_data(&[("auth_date", &now.to_string())], BOT_TOKEN);
    assert_eq!(
        post(addr, PATH, &[], &no_user).await.status,
        StatusCode::BAD_REQUEST
    );

    let huge = "a".repeat(64 * 1024);
    assert_eq!(
        post(addr, PATH, &[], &huge).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn each_user_is_rate_limited_on_their_own() {
    let config = WebAppConfig {
        rate: 1,
        burst: 2,
        ..WebAppConfig::default()
    };
    let (addr, _) = start(config).await;
    let now = unix_now();
    let ann = init_data_for(1, now, BOT_TOKEN);
    for _ in 0..2 {
        assert_eq!(post(addr, PATH, &[], &ann).await.status, StatusCode::OK);
    }
    let answer = post(addr, PATH, &[], &ann).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.headers["retry-after"], "1");
    assert_eq!(answer.body, r#"{"error":"rate limited"}"#);
    // Another user is not affected, and failed attempts for a user do not count against them.
    let bob = init_data_for(2, now, BOT_TOKEN);
    assert_eq!(post(addr, PATH, &[], &bob).await.status, StatusCode::OK);
    let forged = init_data_for(2, now, "1:attacker");
    for _ in 0..5 {
        assert_eq!(
            post(addr, PATH, &[], &forged).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(post(addr, PATH, &[], &bob).await.status, StatusCode::OK);
}

#[tokio::test]
async fn mounted_at_a_path_of_the_callers_choice_behind_the_edge_layer() {
    let auth =
        Arc::new(WebAppAuth::new(&WebAppConfig::default(), Secret::new(BOT_TOKEN), None).unwrap());
    let mut edge = EdgeConfig::default();
    edge.rate_limit.enabled = true;
    edge.rate_limit.rate = 1;
    edge.rate_limit.burst = 1;
    let app: Router = Router::new().route(
        "/app/login",
        webapp::route(auth).layer(EdgeLayer::new(&edge, None).unwrap()),
    );
    let addr = serve(app).await;
    let body = init_data_for(9, unix_now(), BOT_TOKEN);
    assert_eq!(
        post(addr, "/app/login", &[], &body).await.status,
        StatusCode::OK
    );
    // The per-address limit applies before the body is read.
    let answer = post(addr, "/app/login", &[], "garbage").await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
}

#[test]
fn secrets_are_never_printed() {
    let auth = WebAppAuth::new(&WebAppConfig::default(), Secret::new(BOT_TOKEN), None).unwrap();
    let edge = EdgeLayer::new(&EdgeConfig::default(), Some(Secret::new("webhook_s3cret"))).unwrap();
    let printed = format!("{auth:?} {edge:?}");
    assert!(!printed.contains("AAHdq"), "{printed}");
    assert!(!printed.contains("webhook_s3cret"), "{printed}");
}
