//! A flood from addresses that are not Telegram's, sent beside the Telegram-like load: what an
//! edge guard (allowlist, per-address rate limit) must turn away without slowing the real
//! updates down.
//!
//! Each flood request opens a new connection from the next of `sources` loopback addresses
//! (`base`, `base + 1`, …; on Linux the whole of 127.0.0.0/8 is the loopback), sends one
//! webhook POST with a well-formed update and a wrong (or no) secret, reads the answer and
//! closes. Requests are issued open loop at `rate` per second; at most [`MAX_IN_FLIGHT`] are
//! outstanding, and a tick that finds them all busy is counted as skipped, so the report says
//! what rate was really offered.

use crate::config::{BenchError, Target};
use crate::load::webhook_request;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use hyper::header::HeaderValue;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

/// Most flood requests outstanding at once.
pub const MAX_IN_FLIGHT: usize = 512;

/// Longest wait for one flood request.
const FLOOD_TIMEOUT: Duration = Duration::from_secs(5);

/// The flood to send beside the load.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodConfig {
    /// Requests per second.
    pub rate: f64,
    /// Distinct source addresses, used round robin.
    pub sources: u32,
    /// The first source address.
    pub base: Ipv4Addr,
    /// Sent as the secret header (a wrong one); `None` sends none.
    pub secret: Option<String>,
}

/// What the flood got back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FloodReport {
    pub target_rate: f64,
    pub sources: u32,
    /// Requests that got an answer or failed.
    pub sent: u64,
    /// `sent` over the time the flood ran.
    pub sent_per_sec: f64,
    /// Ticks that found [`MAX_IN_FLIGHT`] requests outstanding, so sent nothing.
    pub skipped: u64,
    /// Answers by status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests without an answer (connect, send or read failed, or timed out).
    pub failed: u64,
    /// Answers with a 2xx: flood requests the server accepted. Should be 0.
    pub accepted: u64,
}

impl fmt::Display for FloodReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  flood               {} requests from {} addresses at {:.1}/s (asked {}/s, {} skipped)",
            self.sent, self.sources, self.sent_per_sec, self.target_rate, self.skipped
        )?;
        let answers = if self.by_status.is_empty() {
            "none".to_owned()
        } else {
            self.by_status
                .iter()
                .map(|(status, count)| format!("{status}: {count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "  flood answers       {answers}; no answer {}; accepted (2xx) {}",
            self.failed, self.accepted
        )
    }
}

#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    by_status: BTreeMap<u16, u64>,
    failed: u64,
}

/// Sends the flood until `stop_at`, then waits for the requests still out.
pub(crate) async fn flood(
    config: FloodConfig,
    target: Arc<Target>,
    server: SocketAddr,
    stop_at: Instant,
) -> Result<FloodReport, BenchError> {
    if !(config.rate > 0.0 && config.rate.is_finite()) || config.sources == 0 {
        return Err(BenchError::Config(
            "the flood needs a rate > 0 and at least one source address".to_owned(),
        ));
    }
    let body = Bytes::from_static(
        br#"{"update_id":1,"message":{"message_id":1,"date":1714564800,"chat":{"id":1,"type":"private"},"from":{"id":1,"is_bot":false,"first_name":"Flood"},"text":"flood"}}"#,
    );
    let secret = config
        .secret
        .as_deref()
        .map(HeaderValue::from_str)
        .transpose()
        .map_err(|_| {
            BenchError::Config("the flood's secret is not a valid header value".to_owned())
        })?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut skipped = 0;
    let mut n: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(n as f64 / config.rate);
        if due >= stop_at {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let source = u32::from(config.base).wrapping_add((n % u64::from(config.sources)) as u32);
        n += 1;
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let (target, tally, body) = (Arc::clone(&target), Arc::clone(&tally), body.clone());
        let secret = secret.clone();
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(
                FLOOD_TIMEOUT,
                one(&target, server, Ipv4Addr::from(source), secret, body),
            )
            .await;
            let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
            tally.sent += 1;
            match outcome {
                Ok(Some(status)) => *tally.by_status.entry(status).or_insert(0) += 1,
                _ => tally.failed += 1,
            }
            drop(permit);
        });
    }
    let ran = start.elapsed();
    // Every permit back means every request is done.
    let _all = permits
        .acquire_many(MAX_IN_FLIGHT as u32)
        .await
        .map_err(|e| BenchError::Task(e.to_string()))?;
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(FloodReport {
        target_rate: config.rate,
        sources: config.sources,
        sent: tally.sent,
        sent_per_sec: tally.sent as f64 / ran.as_secs_f64().max(1e-9),
        skipped,
        accepted: tally
            .by_status
            .iter()
            .filter(|(status, _)| (200..300).contains(*status))
            .map(|(_, count)| count)
            .sum(),
        by_status: tally.by_status,
        failed: tally.failed,
    })
}

/// One request on a new connection from `source`; the status, or `None` without an answer.
async fn one(
    target: &Target,
    server: SocketAddr,
    source: Ipv4Addr,
    secret: Option<HeaderValue>,
    body: Bytes,
) -> Option<u16> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).ok()?;
    let stream = socket.connect(server).await.ok()?;
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = webhook_request(target, secret.as_ref(), body).ok()?;
    let answer = async {
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    }
    .await;
    driver.abort();
    answer
}
