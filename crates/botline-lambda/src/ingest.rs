//! The ingest function: API Gateway HTTP API requests through `botline serve`'s router.

use axum::Router;
use botline::aws::SecretStore;
use botline::config::{ConfigError, Settings};
use botline::http::{App, router};
use botline::schema::{SchemaWatch, Verdict};
use botline::secret::WebhookSecret;
use botline_core::Backend;
use botline_edge::ClientAddr;
use lambda_http::request::RequestContext;
use lambda_http::{RequestExt, Response};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

/// The router and the webhook secret it checks; rebuilt when the secret store's value changed.
#[derive(Debug)]
pub struct Ingest {
    settings: Settings,
    backend: Arc<dyn Backend>,
    store: Option<SecretStore>,
    /// The backend's schema, checked at the cold start and again (throttled) by `/health` and
    /// the webhook.
    schema: Arc<SchemaWatch>,
    current: Mutex<Current>,
}

#[derive(Debug, Clone)]
struct Current {
    secret: Option<WebhookSecret>,
    router: Router,
}

impl Ingest {
    /// The function's handler on `backend`. `store`, when given, holds the webhook secret (it
    /// is fetched now, then checked again on each request, from its cache).
    ///
    /// Refuses to start without a webhook secret unless `insecure_no_secret` is set: an API
    /// Gateway endpoint is public, and without the secret anyone could post updates.
    ///
    /// Checks the backend's schema ([`botline::schema`]). When a queue, table or index is
    /// missing it says so in the log and starts all the same: the webhook then answers 503 with
    /// `Retry-After` (Telegram keeps the update and tries again, never gets a 200 for an update
    /// no worker could process) and `/health` 503 naming what is missing, until
    /// `botline provision --backend aws` creates it. Refusing the cold start instead would
    /// answer Telegram API Gateway's 502 and log the same thing on every retry.
    pub async fn new(
        mut settings: Settings,
        backend: Arc<dyn Backend>,
        store: Option<SecretStore>,
    ) -> Result<Self, ConfigError> {
        if let Some(store) = &store {
            store.fill(&mut settings).await?;
        }
        let secret = settings.webhook_secret()?;
        if secret.is_none() && !settings.insecure_no_secret {
            return Err(ConfigError::Invalid(
                "the ingest function needs the webhook secret (BOTLINE_WEBHOOK_SECRET_ID, \
                 _PARAM, _FILE or the value); set BOTLINE_INSECURE_NO_SECRET=true only if \
                 something in front checks it"
                    .into(),
            ));
        }
        let schema = Arc::new(SchemaWatch::new(Arc::clone(&backend)));
        if let Verdict::Missing(missing) = schema.check().await {
            tracing::error!(error = %missing, "the webhook answers 503 until it is provisioned");
        }
        let router = build(&settings, &backend, &schema, secret.clone())?;
        Ok(Self {
            current: Mutex::new(Current { secret, router }),
            settings,
            backend,
            store,
            schema,
        })
    }

    /// Answers one request: the router's answer, with the client's address taken from API
    /// Gateway's request context.
    pub async fn handle(&self, request: lambda_http::Request) -> Response<axum::body::Body> {
        let router = self.router().await;
        let client = client_addr(&request);
        let (mut parts, body) = request.into_parts();
        if let Some(ip) = client {
            parts.extensions.insert(ClientAddr(ip));
        }
        let body = match body {
            lambda_http::Body::Empty => axum::body::Body::empty(),
            lambda_http::Body::Text(text) => axum::body::Body::from(text),
            lambda_http::Body::Binary(bytes) => axum::body::Body::from(bytes),
            // `Body` is non-exhaustive; anything else is read as its bytes.
            other => axum::body::Body::from(other.to_vec()),
        };
        let request = axum::http::Request::from_parts(parts, body);
        match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// The router for the current webhook secret. A secret store that cannot be read keeps
    /// the secret in use (the store's cache logs it).
    async fn router(&self) -> Router {
        let current = self.current();
        let Some(store) = &self.store else {
            return current.router;
        };
        let fresh = match store.webhook_secret().await {
            Ok(Some(fresh)) => fresh,
            Ok(None) => return current.router,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the webhook secret; the one in use stays");
                return current.router;
            }
        };
        if current.secret.as_ref() == Some(&fresh) {
            return current.router;
        }
        match build(
            &self.settings,
            &self.backend,
            &self.schema,
            Some(fresh.clone()),
        ) {
            Ok(router) => {
                tracing::info!("the webhook secret changed; checking requests against the new one");
                let mut slot = self.current.lock().unwrap_or_else(|e| e.into_inner());
                *slot = Current {
                    secret: Some(fresh),
                    router: router.clone(),
                };
                router
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot use the new webhook secret; the one in use stays");
                current.router
            }
        }
    }

    fn current(&self) -> Current {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// `botline serve`'s router with `secret`, on `backend`. No Prometheus endpoint: the
/// function's metrics are Embedded Metric Format lines.
fn build(
    settings: &Settings,
    backend: &Arc<dyn Backend>,
    schema: &Arc<SchemaWatch>,
    secret: Option<WebhookSecret>,
) -> Result<Router, ConfigError> {
    // Nothing in this process waits for new updates: the worker is another function.
    Ok(router(Arc::new(
        App::from_settings(settings, Arc::clone(backend), secret)?.with_schema(Arc::clone(schema)),
    )))
}

/// The client's address as API Gateway saw it (`requestContext.http.sourceIp`).
fn client_addr(request: &lambda_http::Request) -> Option<IpAddr> {
    match request.request_context_ref()? {
        RequestContext::ApiGatewayV2(context) => context.http.source_ip.as_deref()?.parse().ok(),
        #[allow(unreachable_patterns)] // other event sources, when their features are on
        _ => None,
    }
}
