//! The conformance endpoint: a WebSocket that sends every message back, on the same codec,
//! connection loop, limits and close handling as `/app/{key}` ([`super::socket_loop`]), so the
//! Autobahn|Testsuite run against it (`examples/ws-echo.rs`, in CI) tests what Pusher clients get.
//! It is not part of the Pusher server's routes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Response;
use axum::Router;
use plexus_core::outbound::Outbound;
use plexus_core::Connection;
use plexus_protocol::deflate;
use plexus_protocol::wsframe::{self, Opcode};
use plexus_protocol::SocketId;
use tokio::time::Instant;

use super::{handshake, offered_deflate, switching_protocols, Endpoint};

/// What the echo endpoint allows.
#[derive(Debug, Clone, Copy)]
pub struct EchoLimits {
    /// Largest message echoed; larger ones close the socket with 1009.
    pub max_message_bytes: usize,
    /// Bytes waiting to be sent before the client is closed as too slow.
    pub max_queued_bytes: usize,
    pub write_timeout: Duration,
}

/// A router that answers a WebSocket echo on every path.
pub fn router(limits: EchoLimits) -> Router {
    Router::new().fallback(upgrade).with_state(limits)
}

async fn upgrade(State(limits): State<EchoLimits>, mut request: Request) -> Response<Body> {
    let accept = match handshake(request.headers()) {
        Ok(accept) => accept,
        Err(refusal) => return refusal.into_response(),
    };
    let deflate = offered_deflate(request.headers());
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let connection =
            Arc::new(Connection::new(SocketId::from_random(0, 0), Outbound::new(limits.max_queued_bytes)));
        let compress = deflate.is_some_and(|agreement| agreement.compresses_to_client());
        let echo = Echo { connection: connection.clone(), compress };
        #[cfg(feature = "tungstenite")]
        let (reader, writer) = super::tungstenite::split(upgraded, limits.max_message_bytes).await;
        #[cfg(not(feature = "tungstenite"))]
        let (reader, writer) =
            super::shared_frames::split(upgraded, limits.max_message_bytes, deflate.is_some());
        super::socket_loop(reader, writer, connection, limits.write_timeout, echo).await;
    });
    switching_protocols(accept, deflate)
}

struct Echo {
    connection: Arc<Connection>,
    /// The client negotiated permessage-deflate (with a full window): echoes go back compressed,
    /// through the same compressor the fan-out uses.
    compress: bool,
}

impl Endpoint for Echo {
    fn heard(&mut self, _now: Instant) {}

    fn on_message(&mut self, text: bool, payload: &[u8], _now: Instant) {
        let opcode = if text { Opcode::Text } else { Opcode::Binary };
        let plain = wsframe::frame(opcode, payload);
        let frame = match self.compress {
            true => deflate::compress_frame(&plain).unwrap_or(plain),
            false => plain,
        };
        self.connection.outbound.push(frame);
    }

    fn wake_at(&self) -> Instant {
        super::far_future()
    }

    fn on_wake(&mut self, _now: Instant) {}
}
