//! `GET /apps/{app_id}/events/stream`: the same channel events as the WebSocket, as
//! `text/event-stream`, for consumers that cannot hold a WebSocket (curl, `EventSource`, proxies
//! that only pass plain HTTP).
//!
//! The stream is an ordinary hub connection: it subscribes like a socket, through the same
//! session, into the same kind of bounded queue; the queue holds SSE events
//! ([`plexus_protocol::sse`]: `event:` the Pusher event name, `data:` the Pusher message JSON),
//! each rendered once per event for every stream that gets it, as deflate is compressed once.
//! A comment line goes out every `sse_heartbeat_secs` so proxies keep the stream open. A
//! consumer that falls behind by more than `max_queued_bytes` is dropped (its queue overflows,
//! as for a socket) without slowing anyone else.
//!
//! Channels: `?channels=a,b` (public channels, or any channel the credential grants on apps with
//! API keys or tokens; the credential is checked exactly as at the WebSocket upgrade, and a
//! revoked key or an expired token ends the stream with `plexus:closed` 4009).
//!
//! On channels with a history (`[[apps.history]]`) every event carries `id:` = its position, and
//! a client reconnecting with `Last-Event-ID` gets what it missed, then `plexus:resume` with
//! `recovered` true — or false when the history no longer covers the gap.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Response, StatusCode};
use bytes::Bytes;
use plexus_core::outbound::Drained;
use plexus_core::session::SubscribeError;
use plexus_core::Session;
use plexus_protocol::codec::Subscribe;
use plexus_protocol::sse;
use tokio::time::Instant;

use crate::credentials::{self, Admission, Refusal};
use crate::ServerState;

/// Most channels one stream may follow.
const MAX_STREAM_CHANNELS: usize = 100;

fn refused(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    Refusal { status, reason: reason.into() }.into_response()
}

/// One stream's hold on the hub: a receive-only [`Session`], so a stream is admitted, limited
/// and torn down exactly like a socket (dropping it leaves every channel and forgets the
/// connection), plus the credential that admitted it.
struct Stream {
    session: Session,
    _admission: Option<Admission>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        metrics::gauge!("plexus_sse_streams").decrement(1);
    }
}

/// The HTTP answer to a channel the stream may not follow.
fn subscribe_refusal(name: &str, error: SubscribeError) -> Response<Body> {
    match error {
        SubscribeError::InvalidChannel(error) => {
            refused(StatusCode::BAD_REQUEST, format!("{name:?}: {error}"))
        }
        SubscribeError::TooMany(_) | SubscribeError::TooFast(_) => {
            refused(StatusCode::TOO_MANY_REQUESTS, format!("{name:?}: {error}"))
        }
        // A stream cannot present a channel signature (nor presence channel_data): say what it
        // needs instead.
        SubscribeError::InvalidSignature(_) | SubscribeError::InvalidChannelData(_) => refused(
            StatusCode::FORBIDDEN,
            format!(
                "{name:?} needs authorization: without a grant, streams carry public channels only; \
                 private, encrypted and presence channels need an API key or token whose grant names \
                 them (e.g. \"private-orders-*\")"
            ),
        ),
        other => refused(StatusCode::FORBIDDEN, format!("{name:?}: {other}")),
    }
}

pub async fn stream(
    State(state): State<Arc<ServerState>>,
    Path(app_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response<Body> {
    if state.is_shutting_down() {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    }
    let Some(app) = state.apps.by_id(&app_id).filter(|app| app.enabled) else {
        return refused(StatusCode::NOT_FOUND, format!("no enabled app with id {app_id:?}"));
    };
    let mut admission = match credentials::admit(&state.credentials, &app, query.as_deref(), &headers) {
        Ok(admission) => admission,
        Err(refusal) => return refusal.into_response(),
    };
    let requested: Vec<String> = query
        .iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .filter(|(k, _)| k == "channels")
        .flat_map(|(_, v)| v.split(',').map(str::to_owned).collect::<Vec<_>>())
        .filter(|c| !c.is_empty())
        .collect();
    if requested.is_empty() || requested.len() > MAX_STREAM_CHANNELS {
        return refused(
            StatusCode::BAD_REQUEST,
            format!("name 1 to {MAX_STREAM_CHANNELS} channels: ?channels=a,b"),
        );
    }
    let hub = state.hubs.hub(&app.id);
    let limits = state.config.session_limits();
    let mut session = match Session::start_receiver(app, hub, limits, Instant::now()) {
        Ok(session) => session,
        Err(error) => return refused(StatusCode::TOO_MANY_REQUESTS, error.to_string()),
    };
    if let Some(admission) = &admission {
        session.restrict_to(admission.grant.clone(), admission.user_id.clone());
    }
    // A reconnecting EventSource sends the id of the last event it saw: resume from there.
    let resume_from = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    for name in requested {
        let request = Subscribe {
            channel: name.clone(),
            auth: None,
            channel_data: None,
            filter: None,
            position: resume_from.clone(),
        };
        // Dropping the session on a refusal leaves the channels already joined.
        if let Err(error) = session.subscribe(request, Instant::now()) {
            return subscribe_refusal(&name, error);
        }
    }
    metrics::gauge!("plexus_sse_streams").increment(1);
    if let Some(admission) = &mut admission {
        admission.attach(session.connection());
    }
    let guard = Stream { session, _admission: admission };
    let heartbeat = Duration::from_secs(state.config.sse_heartbeat_secs);
    // State: the guard (dropping it leaves the hub), a reusable batch, and whether the stream
    // has said its last word.
    let body = futures_util::stream::unfold(
        (guard, Vec::new(), false),
        move |(guard, mut batch, done)| async move {
            if done {
                return None;
            }
            let waited =
                tokio::time::timeout(heartbeat, guard.session.connection().outbound.drain_into(&mut batch))
                    .await;
            let Ok(drained) = waited else {
                return Some((
                    Ok::<_, std::io::Error>(Bytes::from_static(sse::HEARTBEAT)),
                    (guard, batch, false),
                ));
            };
            // The queue holds SSE events already (rendered once per event by the fan-out).
            let mut chunk = Vec::with_capacity(batch.iter().map(Bytes::len).sum());
            for event in batch.drain(..) {
                chunk.extend_from_slice(&event);
            }
            match drained {
                Drained::Frames => Some((Ok(Bytes::from(chunk)), (guard, batch, false))),
                // Dropped as too slow, or the app was disabled: say why, then end the stream.
                Drained::Close(reason) => {
                    tracing::debug!(code = reason.code, message = %reason.message, "SSE stream closed");
                    chunk.extend_from_slice(&sse::closed(reason.code, &reason.message));
                    Some((Ok(Bytes::from(chunk)), (guard, batch, true)))
                }
                Drained::End => (!chunk.is_empty()).then(|| (Ok(Bytes::from(chunk)), (guard, batch, true))),
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .expect("stream response is valid")
}
