//! [`EdgeGuard`]: the allowlist and the per-address limiter, and [`EdgeLayer`], the tower layer
//! that puts them in front of a route.
//!
//! Checks run cheapest first and before the inner service sees the request: the client address
//! (400 when a trusted proxy's forwarding header does not tell it), the allowlist (403), then
//! the per-address token bucket (429), which requests carrying the correct webhook secret skip.
//! A refused request never reaches the inner service, and its body is not read.
//!
//! With a [`SharedLimiter`] ([`EdgeGuard::sharing`]), the address buckets are the shared store's,
//! so every instance counts the same requests. While the store cannot be asked, each instance
//! falls back to its own buckets (the failure is logged and counted in
//! `botline_shared_limiter_errors_total{limiter="edge"}`); requests carrying the webhook secret
//! are never limited, so Telegram's deliveries pass either way.

use crate::client::{BadForwarding, ProxyHeader, canonical, peer_addr, resolve};
use crate::config::{ConfigError, EdgeConfig, canonical_net};
use crate::limiter::KeyedLimiter;
use crate::response;
use crate::secret::Secret;
use crate::{REFUSED_METRIC, SECRET_HEADER};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use botline_core::limits::{Bucket, SHARED_LIMITER_ERRORS_METRIC, SharedLimiter, Taken};
use futures_util::future::{BoxFuture, Either, Ready, ready};
use ipnet::{IpNet, Ipv6Net};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The peer is a trusted proxy whose forwarding header does not tell who the client is
    /// ([`BadForwarding`]): 400 `{"error":"bad forwarding header"}`.
    BadForwarding,
    /// The client is not in the allowlist: 403 `{"error":"forbidden"}`.
    Forbidden,
    /// The client's bucket is empty: 429 `{"error":"rate limited"}` with `Retry-After`.
    RateLimited { retry_after: Duration },
}

impl Refusal {
    /// The `reason` label of `botline_edge_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadForwarding => "bad_forwarding",
            Self::Forbidden => "allowlist",
            Self::RateLimited { .. } => "rate_limited",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::BadForwarding => {
                response::error(StatusCode::BAD_REQUEST, "bad forwarding header")
            }
            Self::Forbidden => response::error(StatusCode::FORBIDDEN, "forbidden"),
            Self::RateLimited { retry_after } => response::rate_limited(retry_after),
        }
    }
}

/// The allowlist and the per-address limiter, shared by every clone of an [`EdgeLayer`].
#[derive(Debug)]
pub struct EdgeGuard {
    allowlist: Option<Vec<IpNet>>,
    trusted_proxies: Vec<IpNet>,
    proxy_header: ProxyHeader,
    limiter: Option<KeyedLimiter<IpAddr>>,
    /// The buckets every instance shares, when configured; `limiter` stands in while they
    /// cannot be asked.
    shared: Option<Arc<dyn SharedLimiter>>,
    rate: u32,
    burst: u32,
    ipv6_prefix: u8,
    webhook_secret: Option<Secret>,
    /// Whether the missing-peer misconfiguration was logged already.
    warned_no_peer: AtomicBool,
    /// Whether the shared store failed on the last request that asked it.
    shared_down: AtomicBool,
}

/// What the guard decided without asking anyone.
enum Admission {
    /// Let the request in.
    Pass,
    /// The client's bucket (of the shared store) decides.
    Shared(IpAddr),
}

impl EdgeGuard {
    /// A guard as `config` says. Requests whose `X-Telegram-Bot-Api-Secret-Token` matches
    /// `webhook_secret` skip the rate limit; without a secret, every request is limited,
    /// Telegram's included.
    pub fn new(config: &EdgeConfig, webhook_secret: Option<Secret>) -> Result<Self, ConfigError> {
        config.validate()?;
        let limits = &config.rate_limit;
        let limiter = limits.enabled.then(|| {
            KeyedLimiter::new(
                limits.rate,
                limits.burst,
                limits.max_keys,
                limits.cleanup_interval,
            )
        });
        if limiter.is_some() && webhook_secret.is_none() {
            tracing::warn!(
                "edge rate limit without a webhook secret: Telegram's own deliveries are limited too"
            );
        }
        let canonical_list = |nets: &[IpNet]| nets.iter().copied().map(canonical_net).collect();
        Ok(Self {
            allowlist: config.allowlist.as_deref().map(canonical_list),
            trusted_proxies: canonical_list(&config.trusted_proxies),
            proxy_header: config.proxy_header,
            limiter,
            shared: None,
            rate: limits.rate,
            burst: limits.burst,
            ipv6_prefix: limits.ipv6_prefix,
            webhook_secret,
            warned_no_peer: AtomicBool::new(false),
            shared_down: AtomicBool::new(false),
        })
    }

    /// Counts addresses in `shared`, the buckets every instance sees, instead of this
    /// process's own (which stand in while `shared` cannot be asked). No effect when rate
    /// limiting is off.
    pub fn sharing(mut self, shared: Arc<dyn SharedLimiter>) -> Self {
        if self.limiter.is_some() {
            self.shared = Some(shared);
        }
        self
    }

    /// The client's address: see [`client`](crate::client). `Ok(None)` when the request
    /// carries neither a [`ClientAddr`](crate::ClientAddr) nor a `ConnectInfo<SocketAddr>`; an
    /// error when the peer is a trusted proxy whose forwarding header does not tell who the
    /// client is.
    pub fn client_addr<B>(&self, request: &Request<B>) -> Result<Option<IpAddr>, BadForwarding> {
        let Some(peer) = peer_addr(request) else {
            return Ok(None);
        };
        resolve(
            peer,
            request.headers(),
            &self.trusted_proxies,
            self.proxy_header,
        )
        .map(Some)
    }

    /// Whether `request` may pass, by this process's own buckets; a refusal is counted in
    /// `botline_edge_refused_total`. With a shared store, [`EdgeService`] asks it instead.
    pub fn check<B>(&self, request: &Request<B>) -> Result<(), Refusal> {
        match self.admit(request)? {
            Admission::Pass => Ok(()),
            Admission::Shared(key) => self.check_locally(key).inspect_err(count),
        }
    }

    /// Everything but the shared store: the address, the allowlist, the local bucket.
    fn admit<B>(&self, request: &Request<B>) -> Result<Admission, Refusal> {
        let client = self.client_addr(request);
        if client == Ok(None) && !self.warned_no_peer.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "edge guard: request without a client address; serve with \
                 into_make_service_with_connect_info::<SocketAddr>() or insert a ClientAddr"
            );
        }
        let outcome = match client {
            Ok(client) => self.decide(request, client),
            Err(_) => Err(Refusal::BadForwarding),
        };
        let outcome = match outcome {
            Ok(Admission::Shared(key)) if self.shared.is_none() => {
                self.check_locally(key).map(|()| Admission::Pass)
            }
            other => other,
        };
        if let Err(refusal) = &outcome {
            count(refusal);
            // `client` is `Err(..)` with the cause when the forwarding header was bad.
            tracing::debug!(client = ?client, reason = refusal.reason(), "edge refused a request");
        }
        outcome
    }

    fn check_locally(&self, key: IpAddr) -> Result<(), Refusal> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check(&key)
            .map_err(|retry_after| Refusal::RateLimited { retry_after })
    }

    /// Asks the shared store for `key`'s token; its own bucket decides while the store cannot
    /// be asked.
    async fn check_shared(&self, key: IpAddr) -> Result<(), Refusal> {
        let Some(shared) = &self.shared else {
            return self.check_locally(key);
        };
        let bucket = Bucket::per_second(format!("edge:addr:{key}"), self.rate, self.burst);
        let outcome = match shared.take(std::slice::from_ref(&bucket)).await {
            Ok(taken) => {
                if self.shared_down.swap(false, Ordering::Relaxed) {
                    tracing::info!("edge: the shared rate limits answer again");
                }
                match taken {
                    Taken::Yes => Ok(()),
                    Taken::NotBefore(retry_after) => Err(Refusal::RateLimited { retry_after }),
                }
            }
            Err(error) => {
                metrics::counter!(SHARED_LIMITER_ERRORS_METRIC, "limiter" => "edge").increment(1);
                if !self.shared_down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "edge: cannot reach the shared rate limits; each instance limits addresses on its own until they answer");
                }
                self.check_locally(key)
            }
        };
        if let Err(refusal) = &outcome {
            count(refusal);
        }
        outcome
    }

    fn decide<B>(
        &self,
        request: &Request<B>,
        client: Option<IpAddr>,
    ) -> Result<Admission, Refusal> {
        if let Some(allowlist) = &self.allowlist {
            let allowed =
                client.is_some_and(|addr| allowlist.iter().any(|net| net.contains(&addr)));
            if !allowed {
                return Err(Refusal::Forbidden);
            }
        }
        if self.limiter.is_none() {
            return Ok(Admission::Pass);
        }
        // Without an address (a wiring mistake, logged above) nothing is limited: one shared
        // bucket would turn the mistake into an outage.
        let Some(client) = client else {
            return Ok(Admission::Pass);
        };
        if self.carries_webhook_secret(request) {
            return Ok(Admission::Pass);
        }
        Ok(Admission::Shared(limiter_key(client, self.ipv6_prefix)))
    }

    fn carries_webhook_secret<B>(&self, request: &Request<B>) -> bool {
        let Some(secret) = &self.webhook_secret else {
            return false;
        };
        request
            .headers()
            .get(SECRET_HEADER)
            .is_some_and(|given| secret.matches(given.as_bytes()))
    }

    /// Client addresses (IPv6 prefixes) with a bucket of their own; 0 when limiting is off.
    pub fn tracked_clients(&self) -> usize {
        self.limiter.as_ref().map_or(0, KeyedLimiter::len)
    }

    /// A layer that puts this guard in front of a service.
    pub fn layer(self: &Arc<Self>) -> EdgeLayer {
        EdgeLayer {
            guard: Arc::clone(self),
        }
    }
}

fn count(refusal: &Refusal) {
    metrics::counter!(REFUSED_METRIC, "reason" => refusal.reason()).increment(1);
}

/// What an address is counted as: an IPv4 address itself, an IPv6 address its prefix.
fn limiter_key(addr: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match canonical(addr) {
        IpAddr::V6(v6) => Ipv6Net::new(v6, ipv6_prefix)
            .map_or(IpAddr::V6(v6), |net| IpAddr::V6(net.trunc().network())),
        v4 => v4,
    }
}

/// The tower layer: wraps a service in an [`EdgeService`].
///
/// ```no_run
/// # use botline_edge::{EdgeConfig, EdgeLayer, Secret};
/// # use axum::{Router, routing::post};
/// let edge = EdgeLayer::new(&EdgeConfig::telegram_default(), Some(Secret::new("s3cret"))).unwrap();
/// let app: Router = Router::new().route("/telegram/webhook", post(|| async { "ok" }).layer(edge));
/// ```
#[derive(Debug, Clone)]
pub struct EdgeLayer {
    guard: Arc<EdgeGuard>,
}

impl EdgeLayer {
    pub fn new(config: &EdgeConfig, webhook_secret: Option<Secret>) -> Result<Self, ConfigError> {
        Ok(Arc::new(EdgeGuard::new(config, webhook_secret)?).layer())
    }

    pub fn guard(&self) -> &Arc<EdgeGuard> {
        &self.guard
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            guard: Arc::clone(&self.guard),
        }
    }
}

/// A service behind the edge guard: refused requests are answered here.
#[derive(Debug, Clone)]
pub struct EdgeService<S> {
    inner: S,
    guard: Arc<EdgeGuard>,
}

impl<S, B> Service<Request<B>> for EdgeService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<
        Either<Ready<Result<Response, S::Error>>, S::Future>,
        BoxFuture<'static, Result<Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.guard.admit(&request) {
            Ok(Admission::Pass) => Either::Left(Either::Right(self.inner.call(request))),
            Err(refusal) => Either::Left(Either::Left(ready(Ok(refusal.into_response())))),
            Ok(Admission::Shared(key)) => {
                // The service that was made ready is the one that takes the request.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let guard = Arc::clone(&self.guard);
                Either::Right(Box::pin(async move {
                    match guard.check_shared(key).await {
                        Ok(()) => inner.call(request).await,
                        Err(refusal) => Ok(refusal.into_response()),
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientAddr;
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn request_from(addr: &str) -> Request<()> {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(ClientAddr(addr.parse().unwrap()));
        request
    }

    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        let a = limiter_key("2001:db8:1:2:aaaa::1".parse().unwrap(), 64);
        let b = limiter_key("2001:db8:1:2:bbbb::2".parse().unwrap(), 64);
        let c = limiter_key("2001:db8:1:3::1".parse().unwrap(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let v4 = limiter_key("::ffff:192.0.2.7".parse().unwrap(), 64);
        assert_eq!(v4, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_flood_from_one_ipv6_prefix_is_one_key() {
        let mut config = EdgeConfig::default();
        config.rate_limit.enabled = true;
        config.rate_limit.burst = 5;
        let guard = EdgeGuard::new(&config, None).unwrap();
        for n in 0..10_000u32 {
            let _ = guard.check(&request_from(&format!(
                "2001:db8::{:x}:{:x}",
                n >> 16,
                n & 0xffff
            )));
        }
        assert_eq!(guard.tracked_clients(), 1);
    }

    #[test]
    fn without_an_address_nothing_is_limited() {
        let mut config = EdgeConfig::default();
        config.rate_limit.enabled = true;
        config.rate_limit.burst = 1;
        let guard = EdgeGuard::new(&config, None).unwrap();
        for _ in 0..10 {
            assert_eq!(guard.check(&Request::new(())), Ok(()));
        }
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut config = EdgeConfig::telegram_default();
            config.rate_limit.enabled = true;
            config.rate_limit.burst = 1;
            config.rate_limit.rate = 1;
            let guard = EdgeGuard::new(&config, None).unwrap();
            assert_eq!(
                guard.check(&request_from("6.6.6.6")),
                Err(Refusal::Forbidden)
            );
            assert_eq!(guard.check(&request_from("149.154.167.1")), Ok(()));
            assert!(matches!(
                guard.check(&request_from("149.154.167.1")),
                Err(Refusal::RateLimited { .. })
            ));
            // No address at all: refused by the allowlist, not let through.
            assert_eq!(guard.check(&Request::new(())), Err(Refusal::Forbidden));
        });
        let text = handle.render();
        assert!(
            text.contains(r#"botline_edge_refused_total{reason="allowlist"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"botline_edge_refused_total{reason="rate_limited"} 1"#),
            "{text}"
        );
    }

    fn proxied(header: &'static str, value: &str) -> Request<()> {
        let mut request = request_from("127.0.0.1");
        request.headers_mut().append(header, value.parse().unwrap());
        request
    }

    #[test]
    fn a_bad_forwarding_header_from_a_trusted_proxy_is_refused_and_counted() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut config = EdgeConfig::telegram_default();
            config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            config.proxy_header = ProxyHeader::Forwarded;
            let guard = EdgeGuard::new(&config, None).unwrap();
            let attack = proxied("forwarded", r#"for=149.154.167.1;x=", for=6.6.6.6"#);
            assert_eq!(guard.client_addr(&attack), Err(BadForwarding::Malformed));
            assert_eq!(guard.check(&attack), Err(Refusal::BadForwarding));
            let hidden = proxied("forwarded", "for=_hidden");
            assert_eq!(guard.client_addr(&hidden), Err(BadForwarding::Unidentified));
            assert_eq!(guard.check(&hidden), Err(Refusal::BadForwarding));
            assert_eq!(
                guard.check(&proxied("forwarded", "for=149.154.167.1")),
                Ok(())
            );
            assert_eq!(
                guard.check(&proxied("forwarded", "for=6.6.6.6")),
                Err(Refusal::Forbidden)
            );
            // Without a forwarding header the proxy is the client, and it is not Telegram.
            assert_eq!(
                guard.check(&request_from("127.0.0.1")),
                Err(Refusal::Forbidden)
            );
            // A peer that is not a trusted proxy is the client, whatever it sent.
            let mut untrusted = request_from("149.154.167.1");
            untrusted
                .headers_mut()
                .append("forwarded", r#"for=6.6.6.6;x=""#.parse().unwrap());
            assert_eq!(guard.check(&untrusted), Ok(()));
        });
        let text = handle.render();
        assert!(
            text.contains(r#"botline_edge_refused_total{reason="bad_forwarding"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"botline_edge_refused_total{reason="allowlist"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn a_bad_forwarding_refusal_is_a_400() {
        let response = Refusal::BadForwarding.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(Refusal::BadForwarding.reason(), "bad_forwarding");
    }
}
