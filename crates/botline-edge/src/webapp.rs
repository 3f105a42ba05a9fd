//! `POST /telegram/webapp/auth`: trades a Mini App's initData for a session token.
//!
//! The body is the raw initData (any content type but JSON), or `{"initData": "..."}` with
//! `Content-Type: application/json`. Answers:
//!
//! | answer | when |
//! | --- | --- |
//! | 200 `{"user": {...}, "authDate": 1700000000, "sessionToken": "...", "expiresAt": 1700003600}` | valid initData with a user; `user` has Telegram's `WebAppUser` fields, times are Unix seconds |
//! | 400 `{"error":"malformed init data"}` | not initData (bad encoding, a field twice, no hash, no user...), or an unreadable body |
//! | 401 `{"error":"invalid init data"}` | the hash does not match: tampered with, or for another bot |
//! | 401 `{"error":"init data expired"}` | `auth_date` older than `max_age`, or ahead of the clock |
//! | 413 | a body over 16 KiB |
//! | 429 + `Retry-After` `{"error":"rate limited"}` | this Telegram user signed in too often |
//!
//! Users are limited after validation, by the id Telegram signed: limiting on a claimed id
//! would let anyone lock a user out. Per-address limiting of unauthenticated attempts is the
//! [`EdgeLayer`](crate::EdgeLayer)'s job: put it on this route too.

use crate::config::{ConfigError, WebAppConfig};
use crate::init_data::{InitDataError, MAX_INIT_DATA_BYTES, validate_init_data};
use crate::limiter::KeyedLimiter;
use crate::response;
use crate::secret::Secret;
use crate::session::SessionKey;
use crate::{REFUSED_METRIC, WebAppUser};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use botline_core::UserId;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The largest request body read: initData, possibly wrapped in JSON.
const MAX_BODY_BYTES: usize = MAX_INIT_DATA_BYTES;

/// What the auth route needs: the bot token, the session key, the limits.
#[derive(Debug)]
pub struct WebAppAuth {
    bot_token: Secret,
    session_key: SessionKey,
    path: String,
    max_age: Duration,
    session_ttl: Duration,
    limiter: KeyedLimiter<UserId>,
}

impl WebAppAuth {
    /// `session_key`: a configured key, or `None` to derive one from the bot token.
    pub fn new(
        config: &WebAppConfig,
        bot_token: Secret,
        session_key: Option<SessionKey>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let session_key =
            session_key.unwrap_or_else(|| SessionKey::derive_from_bot_token(bot_token.expose()));
        Ok(Self {
            bot_token,
            session_key,
            path: config.path.clone(),
            max_age: config.max_age,
            session_ttl: config.session_ttl,
            limiter: KeyedLimiter::new(
                config.rate,
                config.burst,
                config.max_keys,
                Duration::from_secs(60),
            ),
        })
    }

    /// The key session tokens are signed with, for [`verify_session_token`](crate::verify_session_token)
    /// on the routes that take them.
    pub fn session_key(&self) -> &SessionKey {
        &self.session_key
    }

    /// The configured path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

/// The auth handler as a method router, to mount at a path of the caller's choice.
pub fn route<S>(auth: Arc<WebAppAuth>) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    post(authenticate).with_state(auth)
}

/// A router with the auth handler at the configured path, to merge into the caller's.
pub fn router<S>(auth: Arc<WebAppAuth>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let path = auth.path.clone();
    Router::new().route(&path, route(auth))
}

/// The 200 answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Authenticated {
    user: WebAppUser,
    auth_date: u64,
    session_token: String,
    expires_at: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonBody {
    init_data: String,
}

async fn authenticate(State(auth): State<Arc<WebAppAuth>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body exceeds {MAX_BODY_BYTES} bytes"),
            );
        }
        Err(_) => return response::error(StatusCode::BAD_REQUEST, "body could not be read"),
    };
    let Some(init_data) = init_data_of(&parts.headers, &body) else {
        tracing::info!(outcome = "malformed", "webapp auth: body is not initData");
        return response::error(StatusCode::BAD_REQUEST, "malformed init data");
    };
    let now = SystemTime::now();
    let data = match validate_init_data(&init_data, auth.bot_token.expose(), auth.max_age, now) {
        Ok(data) => data,
        Err(e) => {
            tracing::info!(outcome = "refused", reason = %e, "webapp auth");
            return refusal(&e);
        }
    };
    let Some(user) = data.user else {
        tracing::info!(outcome = "malformed", "webapp auth: init data has no user");
        return response::error(StatusCode::BAD_REQUEST, "malformed init data");
    };
    if let Err(wait) = auth.limiter.check(&user.id) {
        metrics::counter!(REFUSED_METRIC, "reason" => "rate_limited").increment(1);
        tracing::info!(outcome = "rate_limited", user_id = user.id.0, "webapp auth");
        return response::rate_limited(wait);
    }
    let token = match auth.session_key.issue(user.id, auth.session_ttl, now) {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(error = %e, "webapp auth: cannot issue a session token");
            return response::error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    tracing::info!(
        outcome = "authenticated",
        user_id = user.id.0,
        "webapp auth"
    );
    let body = Authenticated {
        user,
        auth_date: data.auth_date,
        session_token: token.token,
        expires_at: token.expires_at,
    };
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The initData in the body: the `initData` member of a JSON body, else the body as text.
fn init_data_of(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        serde_json::from_slice::<JsonBody>(body)
            .ok()
            .map(|json| json.init_data)
    } else {
        std::str::from_utf8(body)
            .ok()
            .map(|text| text.trim().to_owned())
    }
}

fn refusal(error: &InitDataError) -> Response {
    match error {
        e if e.is_malformed() => response::error(StatusCode::BAD_REQUEST, "malformed init data"),
        InitDataError::Expired | InitDataError::FromTheFuture => {
            response::error(StatusCode::UNAUTHORIZED, "init data expired")
        }
        _ => response::error(StatusCode::UNAUTHORIZED, "invalid init data"),
    }
}
