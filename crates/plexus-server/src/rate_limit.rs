//! Flood protection (`[server.rate_limits]`): token buckets for the HTTP API per app and per
//! client IP, and for new WebSocket connections per client IP. Every limit is off (0) by default.
//!
//! This module owns the buckets and the HTTP answer to an exhausted one (`429` with
//! `Retry-After` and a JSON `{"error": …}` body). The per-IP bucket is spent before
//! authentication ([`limit_api`]); the per-app bucket only after the request's signature is
//! verified, so an anonymous client cannot spend an app's allowance. The WebSocket endpoint asks
//! [`RateLimits::allow_connection`] before it upgrades and refuses in-band, like every other
//! refusal (`pusher:error` 4100 then close 4100, which makes pusher-js back off and retry). Each
//! refusal is counted in `plexus_rate_limited_total{limit}`.
//!
//! A bucket holds up to `burst` tokens and gains `per_sec` tokens a second; a request takes one.
//! The maps of per-IP buckets forget full buckets (a full bucket is the same as none) whenever
//! they grow past twice their last pruned size, so memory follows the number of recent clients.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ServerState;

/// `[server.rate_limits]`. A `*_per_sec` of 0 turns that limit off; a `*_burst` of 0 means
/// "the same as the rate".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Signed HTTP API requests per second, per app (whoever sends them).
    pub api_per_app_per_sec: u32,
    pub api_per_app_burst: u32,
    /// HTTP API requests per second, per client IP address (counted before authentication).
    pub api_per_ip_per_sec: u32,
    pub api_per_ip_burst: u32,
    /// New WebSocket connections per second, per client IP address.
    pub ws_connections_per_ip_per_sec: u32,
    pub ws_connections_per_ip_burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Token buckets by key, all with one rate and capacity.
#[derive(Debug)]
pub struct Buckets<K> {
    per_sec: f64,
    burst: f64,
    state: Mutex<(HashMap<K, Bucket>, usize)>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// `None` when the limit is off.
    pub fn new(per_sec: u32, burst: u32) -> Option<Buckets<K>> {
        (per_sec > 0).then(|| Buckets {
            per_sec: f64::from(per_sec),
            burst: f64::from(if burst == 0 { per_sec } else { burst }),
            state: Mutex::new((HashMap::new(), 1024)),
        })
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (map, prune_at) = &mut *guard;
        if map.len() >= *prune_at {
            let (per_sec, burst) = (self.per_sec, self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.refilled).as_secs_f64() * per_sec < burst);
            *prune_at = (map.len() * 2).max(1024);
        }
        let bucket = map.entry(key.clone()).or_insert(Bucket { tokens: self.burst, refilled: now });
        let gained = now.saturating_duration_since(bucket.refilled).as_secs_f64() * self.per_sec;
        bucket.tokens = (bucket.tokens + gained).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_sec))
        }
    }

    /// Keys currently remembered (for tests of the pruning).
    pub fn tracked(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.len()
    }
}

/// Every configured limit of one server.
#[derive(Debug)]
pub struct RateLimits {
    api_per_app: Option<Buckets<Arc<str>>>,
    api_per_ip: Option<Buckets<IpAddr>>,
    ws_per_ip: Option<Buckets<IpAddr>>,
}

fn refused(limit: &'static str) {
    metrics::counter!("plexus_rate_limited_total", "limit" => limit).increment(1);
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig) -> RateLimits {
        RateLimits {
            api_per_app: Buckets::new(config.api_per_app_per_sec, config.api_per_app_burst),
            api_per_ip: Buckets::new(config.api_per_ip_per_sec, config.api_per_ip_burst),
            ws_per_ip: Buckets::new(config.ws_connections_per_ip_per_sec, config.ws_connections_per_ip_burst),
        }
    }

    /// Whether `ip` may open another WebSocket connection now.
    pub fn allow_connection(&self, ip: Option<IpAddr>) -> bool {
        let (Some(buckets), Some(ip)) = (&self.ws_per_ip, ip) else { return true };
        let allowed = buckets.take(&ip, Instant::now()).is_ok();
        if !allowed {
            refused("ws_connections_per_ip");
        }
        allowed
    }

    /// Checks an API request from `ip`, before anything about it is known: this bucket guards
    /// the server itself.
    fn check_ip(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        if let (Some(buckets), Some(ip)) = (&self.api_per_ip, ip) {
            buckets.take(&ip, Instant::now()).map_err(|wait| {
                refused("api_per_ip");
                Limited { wait, message: format!("too many requests from {ip}; retry later"), close: true }
            })?;
        }
        Ok(())
    }

    /// Checks a request that has proven it speaks for `app_id` (its signature verified): only
    /// then may it spend the app's bucket, so nobody without the secret can exhaust it.
    pub fn check_app(&self, app_id: &str) -> Result<(), Limited> {
        if let Some(buckets) = &self.api_per_app {
            buckets.take(&Arc::from(app_id), Instant::now()).map_err(|wait| {
                refused("api_per_app");
                Limited {
                    wait,
                    message: format!("too many requests for app {app_id:?}; retry later"),
                    close: false,
                }
            })?;
        }
        Ok(())
    }
}

/// An exhausted bucket: how long until a token is back, and what to tell the client.
#[derive(Debug)]
pub struct Limited {
    wait: Duration,
    message: String,
    /// Ends the connection after the answer. An address over its limit has not shown who it is,
    /// and a flood pipelines many requests per connection: closing makes it pay a new connection
    /// per refusal instead of having the rest of its burst parsed and refused one by one. An app
    /// over its own limit keeps its connection (its backend's pool is honest).
    close: bool,
}

impl IntoResponse for Limited {
    /// `429` with `Retry-After` (whole seconds until a token is back) and `{"error": …}`.
    fn into_response(self) -> Response {
        let seconds = self.wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut response =
            (StatusCode::TOO_MANY_REQUESTS, Json(json!({ "error": self.message }))).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        if self.close {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The client's address, as the accept loop recorded it.
pub fn peer_ip<B>(request: &axum::http::Request<B>) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// Middleware for the HTTP API routes (`/apps/…` and the unprefixed `/users/…`): the per-IP
/// bucket, before authentication. Other paths (health, the WebSocket endpoint) pass untouched;
/// the per-app bucket is spent by [`crate::http_api::Signed`] once the signature checks out.
pub async fn limit_api(State(state): State<Arc<ServerState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !path.starts_with("/apps/") && !path.starts_with("/users/") {
        return next.run(request).await;
    }
    if let Err(limited) = state.rate_limits.check_ip(peer_ip(&request)) {
        return limited.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refills_at_its_rate() {
        let buckets = Buckets::new(2, 3).unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(buckets.take(&"k", start).is_ok());
        }
        let wait = buckets.take(&"k", start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(buckets.take(&"k", start + Duration::from_millis(500)).is_ok());
        assert!(buckets.take(&"other", start).is_ok(), "buckets are per key");
    }

    #[test]
    fn zero_turns_a_limit_off_and_zero_burst_means_the_rate() {
        assert!(Buckets::<u8>::new(0, 10).is_none());
        let buckets = Buckets::new(5, 0).unwrap();
        let now = Instant::now();
        assert_eq!((0..10).filter(|_| buckets.take(&1u8, now).is_ok()).count(), 5);
    }

    #[test]
    fn full_buckets_are_forgotten_when_the_map_grows() {
        let buckets = Buckets::new(1000, 1).unwrap();
        let start = Instant::now();
        for key in 0..1024u32 {
            buckets.take(&key, start).unwrap();
        }
        // A second later every bucket is full again; the next insert prunes them.
        buckets.take(&5000, start + Duration::from_secs(1)).unwrap();
        assert_eq!(buckets.tracked(), 1);
    }
}
