//! [`EdgeGuard`]: the allowlist and the per-address limiter, and [`EdgeLayer`], the tower layer
//! that puts them in front of a route.
//!
//! Checks run cheapest first and before the inner service sees the request: the client address
//! (400 when a trusted proxy's forwarding header does not tell it), the allowlist (403), then
//! the per-address token bucket (429), which requests carrying the correct webhook secret skip.
//! A refused request never reaches the inner service, and its body is not read.

use crate::client::{BadForwarding, ProxyHeader, canonical, peer_addr, resolve};
use crate::config::{ConfigError, EdgeConfig, canonical_net};
use crate::limiter::KeyedLimiter;
use crate::response;
use crate::secret::Secret;
use crate::{REFUSED_METRIC, SECRET_HEADER};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::future::{Either, Ready, ready};
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
    ipv6_prefix: u8,
    webhook_secret: Option<Secret>,
    /// Whether the missing-peer misconfiguration was logged already.
    warned_no_peer: AtomicBool,
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
            ipv6_prefix: limits.ipv6_prefix,
            webhook_secret,
            warned_no_peer: AtomicBool::new(false),
        })
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

    /// Whether `request` may pass; a refusal is counted in `botline_edge_refused_total`.
    pub fn check<B>(&self, request: &Request<B>) -> Result<(), Refusal> {
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
        if let Err(refusal) = &outcome {
            metrics::counter!(REFUSED_METRIC, "reason" => refusal.reason()).increment(1);
            // `client` is `Err(..)` with the cause when the forwarding header was bad.
            tracing::debug!(client = ?client, reason = refusal.reason(), "edge refused a request");
        }
        outcome
    }

    fn decide<B>(&self, request: &Request<B>, client: Option<IpAddr>) -> Result<(), Refusal> {
        if let Some(allowlist) = &self.allowlist {
            let allowed =
                client.is_some_and(|addr| allowlist.iter().any(|net| net.contains(&addr)));
            if !allowed {
                return Err(Refusal::Forbidden);
            }
        }
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // Without an address (a wiring mistake, logged above) nothing is limited: one shared
        // bucket would turn the mistake into an outage.
        let Some(client) = client else {
            return Ok(());
        };
        if self.carries_webhook_secret(request) {
            return Ok(());
        }
        limiter
            .check(&limiter_key(client, self.ipv6_prefix))
            .map_err(|retry_after| Refusal::RateLimited { retry_after })
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
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.guard.check(&request) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(refusal) => Either::Left(ready(Ok(refusal.into_response()))),
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
