//! Credentials at the upgrade, and for as long as a connection lives.
//!
//! An app that lists `[[apps.api_keys]]` or accepts tokens (`enable_tokens`, `token_keys`) is
//! only reachable with a credential: an API key (`?api_key=…` or `Authorization: Bearer …`) or
//! a signed token (`?token=…`, or a bearer value that is not one of the app's keys and has a
//! JWT's shape; see [`crate::tokens`]). Failures are answered over HTTP before the upgrade, with
//! a JSON reason: 401 (missing, unknown, invalid or expired), 403 (a key without any read
//! scope), 429 (the key's connection limit). What a credential may subscribe to is its
//! [`Grant`], checked per subscription by the session.
//!
//! After the upgrade the registry keeps every live credentialed connection, so that:
//! - a token's connection is closed with 4009 ("token expired") the moment its `exp` passes;
//! - when an app's settings change (the config file re-read on SIGHUP, the PostgreSQL store's
//!   refresh), [`Credentials::recheck`] closes the connections whose key was removed (4009,
//!   "API key revoked") or whose token no longer verifies (4009), and asks those whose key's
//!   grants changed to reconnect (4200), so they come back under the new grants.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderMap, Response, StatusCode};
use plexus_core::access::{find_key, Grant};
use plexus_core::{App, Connection};
use plexus_protocol::CloseCode;

use crate::tokens;

/// The longest single wait of a token's expiry timer (see [`Admission::attach`]).
const LONGEST_SLEEP: Duration = Duration::from_secs(24 * 60 * 60);

/// Every live connection that was admitted with a credential, and the per-key counts.
#[derive(Debug, Default)]
pub struct Credentials {
    /// Live connections per (app id, key).
    counts: Mutex<HashMap<(String, String), u32>>,
    live: Mutex<HashMap<u64, Live>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Live {
    app_id: String,
    presented: Presented,
    grant: Grant,
    connection: Weak<Connection>,
}

#[derive(Debug, Clone)]
enum Presented {
    Key(String),
    Token(String),
}

/// One connection's credential: its grant, and its hold on the key's connection allowance.
/// Registered for revocation by [`Admission::attach`]; everything is released on drop.
#[derive(Debug)]
pub struct Admission {
    registry: Arc<Credentials>,
    id: u64,
    presented: Presented,
    app_id: String,
    /// What the connection may subscribe to.
    pub grant: Grant,
    /// The token's `sub`, when the credential is a token that names a user.
    pub user_id: Option<String>,
    expires_at: Option<SystemTime>,
    expiry: Option<tokio::task::AbortHandle>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(expiry) = &self.expiry {
            expiry.abort();
        }
        self.registry.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        if let Presented::Key(key) = &self.presented {
            let slot = (self.app_id.clone(), key.clone());
            let mut counts = self.registry.counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = counts.get_mut(&slot) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&slot);
                }
            }
        }
    }
}

impl Admission {
    /// Ties the credential to the connection it admitted: revocation and token expiry close it.
    /// Must be called from within the runtime.
    pub fn attach(&mut self, connection: &Arc<Connection>) {
        let live = Live {
            app_id: self.app_id.clone(),
            presented: self.presented.clone(),
            grant: self.grant.clone(),
            connection: Arc::downgrade(connection),
        };
        self.registry.live.lock().unwrap_or_else(|p| p.into_inner()).insert(self.id, live);
        if let Some(expires_at) = self.expires_at {
            let connection = Arc::downgrade(connection);
            let task = tokio::spawn(async move {
                // `exp` may be up to the year 9999 (tokens::LATEST_SECS), and `Instant::now()`
                // plus centuries overflows on some platforms; so sleep at most a day at a time
                // and look at the wall clock (which `exp` is in) again on waking.
                while let Ok(remaining) = expires_at.duration_since(SystemTime::now()) {
                    if remaining.is_zero() {
                        break;
                    }
                    tokio::time::sleep(remaining.min(LONGEST_SLEEP)).await;
                }
                if let Some(connection) = connection.upgrade() {
                    tracing::info!(socket_id = %connection.socket_id, "closing a connection whose token expired");
                    connection.outbound.close(CloseCode::Unauthorized, "token expired");
                }
            });
            self.expiry = Some(task.abort_handle());
        }
    }

    /// Whether the credential is a token (the heartbeat defaults treat both kinds alike).
    pub fn is_token(&self) -> bool {
        matches!(self.presented, Presented::Token(_))
    }
}

impl Credentials {
    /// Re-checks every live connection of `app` against its current settings (see the module
    /// docs); returns how many were closed or asked to reconnect.
    pub fn recheck(&self, app: &App) -> usize {
        let now = SystemTime::now();
        let mut verdicts = Vec::new();
        {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            for entry in live.values().filter(|entry| entry.app_id == app.id) {
                let verdict = match &entry.presented {
                    Presented::Key(key) => match find_key(app, key) {
                        None => Some((CloseCode::Unauthorized, "API key revoked".to_owned())),
                        Some(current) if current.grant() != entry.grant || !current.can_read() => Some((
                            CloseCode::ReconnectImmediately,
                            "the API key's grants changed; reconnect".to_owned(),
                        )),
                        Some(_) => None,
                    },
                    Presented::Token(token) => match tokens::verify(app, token, now) {
                        Err(reason) => {
                            Some((CloseCode::Unauthorized, format!("token no longer accepted: {reason}")))
                        }
                        Ok(_) => None,
                    },
                };
                if let (Some(verdict), Some(connection)) = (verdict, entry.connection.upgrade()) {
                    verdicts.push((connection, verdict));
                }
            }
        }
        for (connection, (code, message)) in &verdicts {
            tracing::info!(app_id = %app.id, socket_id = %connection.socket_id, %message, "credential no longer valid");
            connection.outbound.close(*code, message);
        }
        verdicts.len()
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
        let body = serde_json::json!({ "error": self.reason }).to_string();
        Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("static response is valid")
    }
}

/// What a request presents: `?token=`, `?api_key=`, or `Authorization: Bearer …`.
fn presented(query: Option<&str>, headers: &HeaderMap) -> Option<(bool, String)> {
    let mut from_query = None;
    for (name, value) in query.into_iter().flat_map(|q| form_urlencoded::parse(q.as_bytes())) {
        match &*name {
            "token" => return Some((true, value.into_owned())),
            "api_key" => from_query = Some((false, value.into_owned())),
            _ => {}
        }
    }
    from_query.or_else(|| {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| (false, token.trim().to_owned()))
    })
}

/// Checks the request's credential against `app`. `Ok(None)` when the app needs none.
pub fn admit(
    registry: &Arc<Credentials>,
    app: &App,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Option<Admission>, Refusal> {
    if !app.requires_credentials() {
        return Ok(None);
    }
    let refused = |status: StatusCode, reason: String| {
        metrics::counter!("plexus_api_key_refusals_total", "status" => status.as_u16().to_string())
            .increment(1);
        Refusal { status, reason }
    };
    let Some((is_token, text)) = presented(query, headers) else {
        let how = if app.api_keys.is_empty() {
            "a token is required: pass ?token=… or Authorization: Bearer …"
        } else {
            "an API key is required: pass ?api_key=… or Authorization: Bearer …"
        };
        return Err(refused(StatusCode::UNAUTHORIZED, how.to_owned()));
    };
    let id = registry.next_id.fetch_add(1, Ordering::Relaxed);
    let admission = |presented, grant, user_id, expires_at| Admission {
        registry: registry.clone(),
        id,
        presented,
        app_id: app.id.clone(),
        grant,
        user_id,
        expires_at,
        expiry: None,
    };
    let key = if is_token { None } else { find_key(app, &text) };
    let Some(key) = key else {
        if is_token || (app.accepts_tokens() && tokens::looks_like_token(&text)) {
            let verified = tokens::verify(app, &text, SystemTime::now())
                .map_err(|reason| refused(StatusCode::UNAUTHORIZED, reason.to_string()))?;
            return Ok(Some(admission(
                Presented::Token(text),
                verified.grant,
                verified.user_id,
                Some(verified.expires_at),
            )));
        }
        return Err(refused(StatusCode::UNAUTHORIZED, "invalid API key".to_owned()));
    };
    if !key.can_read() {
        return Err(refused(
            StatusCode::FORBIDDEN,
            "the API key has no read scope (e.g. events:read)".to_owned(),
        ));
    }
    let slot = (app.id.clone(), key.key.clone());
    let mut counts = registry.counts.lock().unwrap_or_else(|p| p.into_inner());
    let count = counts.entry(slot).or_insert(0);
    if *count >= key.max_connections {
        let limit = key.max_connections;
        drop(counts);
        return Err(refused(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the API key is at its limit of {limit} concurrent connections"),
        ));
    }
    *count += 1;
    drop(counts);
    Ok(Some(admission(Presented::Key(key.key.clone()), key.grant(), None, None)))
}
