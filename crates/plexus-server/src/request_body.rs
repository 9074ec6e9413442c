//! Reading HTTP API request bodies: only once the request is authenticated, within a time limit,
//! and within a byte budget shared by every request in flight (and, optionally, per client
//! address), so bodies cannot be used to hold memory or connections by anyone without a key.
//!
//! The budget is counted in KiB: a request takes its declared `Content-Length` (or the whole
//! `max_request_body_kb` when it declares none) before a byte is read, and gives it back when
//! the body has been read or refused. A request that finds the budget spent is answered `503`
//! with `Retry-After`; a body larger than `max_request_body_kb` is refused `413` before it is
//! read when its length is declared; a body that does not arrive within
//! `request_body_timeout_secs` is answered `408`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ServerConfig;

/// Why a body was not read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("server busy: too many request bodies in flight; retry later")]
    Busy,
    #[error("too many request bodies in flight from your address; retry later")]
    BusyFromAddress,
    #[error("request body not received within {0} s")]
    TimedOut(u64),
    #[error("request body could not be read: {0}")]
    Broken(String),
}

/// The KiB of request bodies in flight, against `[server] request_bodies_in_flight_kb` and
/// `request_bodies_in_flight_per_ip_kb`.
#[derive(Debug)]
pub struct BodyBudget {
    global: Arc<Semaphore>,
    per_ip_kb: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_body_bytes: usize,
    timeout: Duration,
}

/// Budget held while one body is read; returned on drop.
#[derive(Debug)]
struct Held<'a> {
    budget: &'a BodyBudget,
    _global: OwnedSemaphorePermit,
    ip: Option<(IpAddr, usize)>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some((ip, kb)) = self.ip {
            let mut per_ip = self.budget.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = per_ip.get_mut(&ip) {
                *held -= kb;
                if *held == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

impl BodyBudget {
    pub fn new(config: &ServerConfig) -> BodyBudget {
        BodyBudget {
            global: Arc::new(Semaphore::new(config.request_bodies_in_flight_kb.min(Semaphore::MAX_PERMITS))),
            per_ip_kb: config.request_bodies_in_flight_per_ip_kb,
            per_ip: Mutex::new(HashMap::new()),
            max_body_bytes: config.max_request_body_kb * 1024,
            timeout: Duration::from_secs(config.request_body_timeout_secs),
        }
    }

    /// Reads `body` (whose request carried `headers`, from `ip`) within the limits.
    pub async fn read(
        &self,
        headers: &HeaderMap,
        ip: Option<IpAddr>,
        body: Body,
    ) -> Result<Bytes, BodyError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes) {
            return Err(BodyError::TooLarge(self.max_body_bytes));
        }
        if declared == Some(0) {
            return Ok(Bytes::new());
        }
        let kb = declared.unwrap_or(self.max_body_bytes).div_ceil(1024).max(1);
        let _held = self.take(kb, ip)?;
        let read = axum::body::to_bytes(body, self.max_body_bytes);
        match tokio::time::timeout(self.timeout, read).await {
            Err(_) => Err(BodyError::TimedOut(self.timeout.as_secs())),
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(error)) => {
                // axum reports a body over the limit as a length-limit error somewhere in the chain.
                let mut source: Option<&dyn std::error::Error> = Some(&error);
                while let Some(cause) = source {
                    if cause.is::<http_body_util::LengthLimitError>() {
                        return Err(BodyError::TooLarge(self.max_body_bytes));
                    }
                    source = cause.source();
                }
                Err(BodyError::Broken(error.to_string()))
            }
        }
    }

    fn take(&self, kb: usize, ip: Option<IpAddr>) -> Result<Held<'_>, BodyError> {
        let kb_permits = u32::try_from(kb).unwrap_or(u32::MAX);
        let global = self.global.clone().try_acquire_many_owned(kb_permits).map_err(|_| {
            metrics::counter!("plexus_request_bodies_refused_total", "limit" => "in_flight").increment(1);
            BodyError::Busy
        })?;
        let ip = match ip.filter(|_| self.per_ip_kb > 0) {
            None => None,
            Some(ip) => {
                let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
                let held = per_ip.entry(ip).or_insert(0);
                if *held + kb > self.per_ip_kb {
                    if *held == 0 {
                        per_ip.remove(&ip);
                    }
                    metrics::counter!("plexus_request_bodies_refused_total", "limit" => "in_flight_per_ip")
                        .increment(1);
                    return Err(BodyError::BusyFromAddress);
                }
                *held += kb;
                Some((ip, kb))
            }
        };
        Ok(Held { budget: self, _global: global, ip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(global_kb: usize, per_ip_kb: usize) -> BodyBudget {
        BodyBudget::new(&ServerConfig {
            request_bodies_in_flight_kb: global_kb,
            request_bodies_in_flight_per_ip_kb: per_ip_kb,
            max_request_body_kb: 4,
            ..ServerConfig::default()
        })
    }

    #[test]
    fn the_budget_is_shared_and_returned() {
        let budget = budget(8, 0);
        let a = budget.take(4, None).unwrap();
        let b = budget.take(4, None).unwrap();
        assert_eq!(budget.take(1, None).unwrap_err(), BodyError::Busy);
        drop(a);
        assert!(budget.take(4, None).is_ok());
        drop(b);
    }

    #[test]
    fn the_per_address_budget_counts_each_address_apart() {
        let budget = budget(100, 4);
        let one: IpAddr = [127, 0, 0, 1].into();
        let held = budget.take(4, Some(one)).unwrap();
        assert_eq!(budget.take(1, Some(one)).unwrap_err(), BodyError::BusyFromAddress);
        assert!(budget.take(4, Some([127, 0, 0, 2].into())).is_ok());
        drop(held);
        assert!(budget.take(4, Some(one)).is_ok());
        assert!(budget.per_ip.lock().unwrap().is_empty(), "nothing is remembered once returned");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_unread() {
        let budget = budget(100, 0);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "5000".parse().unwrap());
        let refused = budget.read(&headers, None, Body::from(vec![0u8; 5000])).await;
        assert_eq!(refused.unwrap_err(), BodyError::TooLarge(4096));
        let undeclared = budget.read(&HeaderMap::new(), None, Body::from(vec![0u8; 5000])).await;
        assert_eq!(undeclared.unwrap_err(), BodyError::TooLarge(4096));
        let fits = budget.read(&HeaderMap::new(), None, Body::from(vec![1u8; 10])).await;
        assert_eq!(fits.unwrap().len(), 10);
    }
}
