//! API keys at the WebSocket upgrade: an app that lists `[[apps.api_keys]]` is only reachable
//! with one of them. Failures are answered over HTTP before the upgrade, with a JSON reason:
//! 401 (missing or unknown key), 403 (a key without any read scope), 429 (the key's connection
//! limit). What a key may subscribe to is checked later, per subscription, by the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, Response, StatusCode};
use plexus_core::access::{find_key, ApiKey};
use plexus_core::App;

/// Live connections per (app id, key).
#[derive(Debug, Default)]
pub struct KeyLeases {
    counts: Mutex<HashMap<(String, String), u32>>,
}

/// One connection's hold on its key's connection allowance; released on drop.
#[derive(Debug)]
pub struct KeyLease {
    leases: Arc<KeyLeases>,
    slot: (String, String),
    pub key: ApiKey,
}

impl Drop for KeyLease {
    fn drop(&mut self) {
        let mut counts = self.leases.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.slot) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.slot);
            }
        }
    }
}

/// A refused upgrade: the status and the reason for the JSON body.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    pub fn into_response(self) -> Response<Body> {
        response(self.status, &self.reason)
    }
}

fn response(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("static response is valid")
}

/// The key a request presents: `?api_key=` or `Authorization: Bearer …`.
fn presented(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "api_key")
        .map(|(_, v)| v.into_owned());
    from_query.or_else(|| {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
    })
}

/// Checks the request's key against `app`. `Ok(None)` when the app takes no keys.
pub fn admit(
    leases: &Arc<KeyLeases>,
    app: &App,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<KeyLease>, Refusal> {
    if app.api_keys.is_empty() {
        return Ok(None);
    }
    let refused = |status, reason: &str| {
        metrics::counter!("plexus_api_key_refusals_total", "status" => status_label(status)).increment(1);
        Refusal { status, reason: reason.to_owned() }
    };
    let Some(token) = presented(query, headers) else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "an API key is required: pass ?api_key=… or Authorization: Bearer …",
        ));
    };
    let Some(key) = find_key(app, &token) else {
        return Err(refused(StatusCode::UNAUTHORIZED, "invalid API key"));
    };
    if !key.can_read() {
        return Err(refused(StatusCode::FORBIDDEN, "the API key has no read scope (e.g. events:read)"));
    }
    let slot = (app.id.clone(), key.key.clone());
    let mut counts = leases.counts.lock().unwrap_or_else(|p| p.into_inner());
    let count = counts.entry(slot.clone()).or_insert(0);
    if *count >= key.max_connections {
        let limit = key.max_connections;
        drop(counts);
        return Err(refused(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("the API key is at its limit of {limit} concurrent connections"),
        ));
    }
    *count += 1;
    Ok(Some(KeyLease { leases: leases.clone(), slot, key: key.clone() }))
}

fn status_label(status: StatusCode) -> String {
    status.as_u16().to_string()
}
