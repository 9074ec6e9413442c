//! One connection's protocol state machine: client frames in, replies and hub calls out.
//!
//! A `Session` knows which channels its connection holds (and as which presence user), applies
//! the subscription and client-event rules of the digest (§5–§8) and queues replies on the
//! connection's own [`Outbound`](crate::Outbound) queue. It owns no socket and reads no clock:
//! the transport passes decoded text and the current instant in, and writes out whatever the
//! queue yields. Dropping a session unsubscribes it everywhere and forgets the connection.
//!
//! The session also keeps the connection's clocks ([`Heartbeat`]): when it last heard from the
//! client, whether it has pinged, and the sign-in deadline. The transport asks
//! [`Session::next_deadline`] when to wake and calls [`Session::on_deadline`] then, so ping,
//! 4201 and 4009 are decided here, beside the rest of the protocol, not in the socket loop.

use std::collections::HashMap;
use std::sync::Arc;

use plexus_protocol::channel::SERVER_TO_USER_PREFIX;
use plexus_protocol::codec::{self, ClientFrame, Data, DecodeError, RawJson, ServerEvent, Subscribe};
use plexus_protocol::filter::FilterTooLarge;
use plexus_protocol::limits::{check_event_name, EventNameError, MAX_USER_ID_LEN};
use plexus_protocol::{signature, ChannelError, ChannelKind, ChannelName, CloseCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::{Duration, Instant};

use crate::access::{Grant, NotGranted};
use crate::app::{App, WebhookKind};
use crate::extension::ExtensionSession;
use crate::hub::{AppHub, ConnectError, Connection, JoinError, Member};
use crate::outbound::Outbound;
use crate::webhook::{wanted, WebhookEvent};

/// Why a subscription was refused. The connection stays open; the client sees
/// `pusher:subscription_error` on the channel and a `pusher:error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("invalid channel name: {0}")]
    InvalidChannel(#[from] ChannelError),
    #[error("Invalid signature: expected HMAC SHA256 hex digest of {0:?}")]
    InvalidSignature(String),
    #[error("invalid channel_data: {0}")]
    InvalidChannelData(String),
    #[error("user_info is {size} bytes; the limit is {max}")]
    MemberInfoTooLarge { size: usize, max: usize },
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("a #server-to-user- channel can only be joined by a connection signed in as that user")]
    NotSignedInAsUser,
    /// The connection's API key does not cover the channel (the message names what is missing).
    #[error(transparent)]
    NotGranted(#[from] NotGranted),
    #[error("invalid filter: {0}")]
    InvalidFilter(#[from] FilterTooLarge),
    #[error("this connection already holds {0} subscriptions, the most allowed")]
    TooMany(usize),
    #[error("subscribing too fast: at most {0} subscribes and unsubscribes per second")]
    TooFast(u32),
    /// A presence channel granted by a credential that names no user (an API key).
    #[error("presence channel {0:?} needs a user: sign with channel_data, or use a token whose sub names the user")]
    NeedsUser(String),
}

impl SubscribeError {
    /// `type` and `status` of the `pusher:subscription_error` (the shapes pusher-js and Laravel
    /// Echo surface on the channel).
    pub fn wire_type_and_status(&self) -> (&'static str, u16) {
        match self {
            SubscribeError::InvalidChannel(_) => ("InvalidChannel", 4009),
            SubscribeError::InvalidSignature(_) | SubscribeError::NotSignedInAsUser => ("AuthError", 401),
            SubscribeError::InvalidChannelData(_) => ("AuthError", 400),
            SubscribeError::MemberInfoTooLarge { .. } => ("LimitReached", 4009),
            SubscribeError::Join(JoinError::PresenceFull(_)) => ("LimitReached", 4100),
            SubscribeError::NotGranted(_) => ("AuthError", 403),
            SubscribeError::InvalidFilter(_) => ("InvalidFilter", 400),
            SubscribeError::TooMany(_) | SubscribeError::TooFast(_) => {
                ("LimitReached", CloseCode::SubscriptionLimit.code())
            }
            SubscribeError::NeedsUser(_) => ("AuthError", 403),
        }
    }
}

/// Why a client event was not relayed. Answered with `pusher:error` (code 4301) on the socket,
/// which stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientEventError {
    #[error(
        "To send client events, you must enable this feature in the app's settings (enable_client_messages)"
    )]
    Disabled,
    #[error("client event refused: {0}")]
    InvalidName(#[from] EventNameError),
    #[error("client events are only allowed on private and presence channels (not public or encrypted)")]
    WrongChannelKind,
    #[error("client event rejected: not subscribed to channel")]
    NotSubscribed,
    #[error("client event data is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("Client event rejected due to rate limit ({0} per second)")]
    RateLimited(u32),
}

#[derive(Deserialize)]
struct ChannelData {
    /// Raw, so a numeric id keeps its exact JSON text (a float would merge 2^64 and 2^64+1).
    user_id: Box<RawValue>,
    #[serde(default)]
    user_info: Option<Box<RawValue>>,
}

/// Fixed one-second windows: Pusher's "10 client events per second per connection".
#[derive(Debug)]
struct RateWindow {
    started: Instant,
    count: u32,
}

/// How long a connection may be silent before it is pinged, and how long after that ping before
/// it is given up (4201). `interval` is also the `activity_timeout` told to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval: Duration,
    pub pong_grace: Duration,
}

/// A socket's clocks: when we last heard from the client, whether we pinged, and the sign-in
/// deadline of apps that require authorization.
#[derive(Debug)]
struct Liveness {
    heartbeat: Heartbeat,
    last_heard: Instant,
    pinged_at: Option<Instant>,
    auth_deadline: Option<Instant>,
}

impl Liveness {
    fn next_deadline(&self) -> Instant {
        let liveness = match self.pinged_at {
            Some(at) => at + self.heartbeat.pong_grace,
            None => self.last_heard + self.heartbeat.interval,
        };
        self.auth_deadline.map_or(liveness, |auth| auth.min(liveness))
    }
}

/// Per-connection bounds on what a client may ask of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Bytes waiting in the outbound queue before the client is closed as too slow (4100).
    pub queue_max_bytes: usize,
    /// Channels one connection may hold; more are refused with 4303 (the socket stays).
    pub max_subscriptions: usize,
    /// Subscribes and unsubscribes per second (a burst of ten seconds' worth); over it a
    /// subscribe is refused with 4303, so subscription churn cannot flood webhooks.
    pub subscribes_per_sec: u32,
    /// Frames of any kind per second (a burst of ten seconds' worth); over it the connection is
    /// closed with 4100 and the client backs off.
    pub frames_per_sec: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            queue_max_bytes: 1 << 20,
            max_subscriptions: 1000,
            subscribes_per_sec: 100,
            frames_per_sec: 200,
        }
    }
}

/// A token bucket holding ten seconds' worth of its rate; 0 is no limit. The clock is the
/// caller's, like the rest of the session.
#[derive(Debug)]
struct Bucket {
    tokens: f32,
    refilled: Instant,
}

impl Bucket {
    const BURST_SECS: f32 = 10.0;

    fn full(per_sec: u32, now: Instant) -> Bucket {
        Bucket { tokens: per_sec as f32 * Self::BURST_SECS, refilled: now }
    }

    fn take(&mut self, per_sec: u32, now: Instant) -> bool {
        if per_sec == 0 {
            return true;
        }
        let rate = per_sec as f32;
        let gained = now.saturating_duration_since(self.refilled).as_secs_f32() * rate;
        self.tokens = (self.tokens + gained).min(rate * Self::BURST_SECS);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a sign-in was refused. Answered with `pusher:error` 4009 and a close with 4009.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigninError {
    #[error("Invalid signature: expected HMAC SHA256 hex digest of {0:?}")]
    InvalidSignature(String),
    #[error("invalid user_data: {0}")]
    InvalidUserData(String),
    #[error("user_data is {size} bytes; the limit is {max}")]
    TooLarge { size: usize, max: usize },
    #[error("this connection is already signed in as user {0:?}")]
    AlreadySignedIn(String),
}

/// Most watched users per sign-in; the rest are dropped with `pusher:error` 4302.
pub const MAX_WATCHLIST: usize = 100;

#[derive(Deserialize)]
struct UserData {
    id: serde_json::Value,
    #[serde(default)]
    user_info: Option<Box<RawValue>>,
    #[serde(default)]
    watchlist: Option<Vec<String>>,
}

/// The user a connection signed in as.
#[derive(Debug)]
struct SignedIn {
    user_id: String,
    user_info: Option<Box<RawValue>>,
    watchlist: Vec<String>,
}

/// What a credential (API key or token) grants a connection, and the user it names (a token's
/// `sub`).
#[derive(Debug)]
struct Credential {
    grant: Grant,
    user_id: Option<String>,
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    app: Arc<App>,
    hub: Arc<AppHub>,
    connection: Arc<Connection>,
    socket_id_text: String,
    /// Channel → presence user id (for presence channels).
    subscriptions: HashMap<ChannelName, Option<Box<str>>>,
    client_events: RateWindow,
    /// Boxed, like `grant`: most connections never sign in, and the session lives inside every
    /// connection's task (see BENCHMARKS.md, memory per idle connection).
    signed_in: Option<Box<SignedIn>>,
    /// Signed in, or holds a private or presence subscription (the "authorized connection" rule).
    authorized: bool,
    /// What the connection's API key or token grants, which limits what it may subscribe to.
    credential: Option<Box<Credential>>,
    limits: SessionLimits,
    frames: Bucket,
    subscribes: Bucket,
    /// Where `plexus:*` frames go, when the server runs an extension.
    extension: Option<Box<dyn ExtensionSession>>,
    /// A socket's clocks; receivers (SSE) keep their own heartbeat and have none.
    liveness: Option<Liveness>,
}

impl Session {
    /// Registers a connection with the app's hub and queues `connection_established`, telling the
    /// client `heartbeat.interval` as its activity timeout.
    pub fn start(
        app: Arc<App>,
        hub: Arc<AppHub>,
        limits: SessionLimits,
        heartbeat: Heartbeat,
        now: Instant,
    ) -> Result<Session, ConnectError> {
        let outbound = Outbound::new(limits.queue_max_bytes);
        let mut session = Session::open(app, hub, limits, now, outbound)?;
        // Apps with user authentication give a connection this long to sign in or join a private
        // or presence channel (4009).
        let auth_deadline = session
            .app
            .enable_user_authentication
            .then(|| now + Duration::from_secs(session.app.user_authentication_timeout_secs));
        session.liveness = Some(Liveness { heartbeat, last_heard: now, pinged_at: None, auth_deadline });
        let established =
            codec::connection_established(&session.socket_id_text, heartbeat.interval.as_secs());
        session.connection.outbound.push(established);
        Ok(session)
    }

    /// Registers a connection that only receives (an SSE stream): no `connection_established`,
    /// and the same admission, limits and teardown as a socket; its queue holds SSE events
    /// ([`Outbound::for_sse`]).
    pub fn start_receiver(
        app: Arc<App>,
        hub: Arc<AppHub>,
        limits: SessionLimits,
        now: Instant,
    ) -> Result<Session, ConnectError> {
        let outbound = Outbound::for_sse(limits.queue_max_bytes);
        Session::open(app, hub, limits, now, outbound)
    }

    fn open(
        app: Arc<App>,
        hub: Arc<AppHub>,
        limits: SessionLimits,
        now: Instant,
        outbound: Outbound,
    ) -> Result<Session, ConnectError> {
        let connection = hub.connect_with(&app, outbound)?;
        let socket_id_text = connection.socket_id.to_string();
        Ok(Session {
            app,
            hub,
            connection,
            socket_id_text,
            subscriptions: HashMap::new(),
            client_events: RateWindow { started: now, count: 0 },
            signed_in: None,
            authorized: false,
            credential: None,
            frames: Bucket::full(limits.frames_per_sec, now),
            subscribes: Bucket::full(limits.subscribes_per_sec, now),
            limits,
            extension: None,
            liveness: None,
        })
    }

    /// Any frame from the client proves it alive and answers an outstanding ping.
    pub fn heard(&mut self, now: Instant) {
        if let Some(liveness) = &mut self.liveness {
            liveness.last_heard = now;
            liveness.pinged_at = None;
        }
    }

    /// When the transport should next call [`Session::on_deadline`]; `None` for receivers. Hearing
    /// from the client only moves it later, so a transport may sleep until an earlier answer and
    /// ask again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.liveness.as_ref().map(Liveness::next_deadline)
    }

    /// Acts on whatever deadline has passed: the sign-in window (4009), silence (we ping), or no
    /// answer to our ping (4201).
    pub fn on_deadline(&mut self, now: Instant) {
        let authorized = self.authorized;
        let Some(liveness) = &mut self.liveness else { return };
        let outbound = &self.connection.outbound;
        if liveness.auth_deadline.is_some_and(|deadline| now >= deadline) {
            liveness.auth_deadline = None;
            if !authorized {
                outbound.close(CloseCode::Unauthorized, "Connection not authorized within timeout");
            }
        }
        match liveness.pinged_at {
            Some(at) if now >= at + liveness.heartbeat.pong_grace => {
                outbound.close(CloseCode::PongNotReceived, "Pong reply not received in time");
                // The writer ends the connection long before the next idle deadline.
                liveness.last_heard = now;
                liveness.pinged_at = None;
            }
            None if now >= liveness.last_heard + liveness.heartbeat.interval => {
                outbound.push(codec::ping());
                liveness.pinged_at = Some(now);
            }
            _ => {}
        }
    }

    /// Limits the session's subscriptions to what its credential grants; `user_id` is the user
    /// the credential names (a token's `sub`), which a granted presence channel joins as.
    pub fn restrict_to(&mut self, grant: Grant, user_id: Option<String>) {
        self.credential = Some(Box::new(Credential { grant, user_id }));
    }

    /// Hands this connection's `plexus:*` frames to `extension` from now on.
    pub fn set_extension(&mut self, extension: Box<dyn ExtensionSession>) {
        self.extension = Some(extension);
    }

    /// Whether the connection has signed in or joined a private or presence channel; apps with
    /// `enable_user_authentication` close connections that are not within the timeout.
    pub fn is_authorized(&self) -> bool {
        self.authorized
    }

    pub fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Handles one text frame from the client.
    pub fn handle_text(&mut self, text: &str, now: Instant) {
        if !self.frames.take(self.limits.frames_per_sec, now) {
            let message =
                format!("too many messages: more than {} per second; slow down", self.limits.frames_per_sec);
            tracing::debug!(socket_id = %self.socket_id_text, "closing a connection that sends too fast");
            self.connection.outbound.close(CloseCode::OverCapacity, &message);
            return;
        }
        match codec::decode_client_frame(text) {
            Ok(frame) => self.handle_frame(frame, now),
            Err(error) => self.reply_decode_error(&error),
        }
    }

    fn reply_decode_error(&self, error: &DecodeError) {
        tracing::debug!(socket_id = %self.socket_id_text, %error, "undecodable frame");
        self.connection.outbound.push(codec::error(None, &error.to_string(), None));
    }

    /// Handles one decoded client frame.
    pub fn handle_frame(&mut self, frame: ClientFrame, now: Instant) {
        match frame {
            ClientFrame::Ping => {
                self.connection.outbound.push(codec::pong());
            }
            ClientFrame::Pong | ClientFrame::Unknown { .. } => {}
            ClientFrame::Extension { event, data } => match &mut self.extension {
                Some(extension) => extension.on_event(&event, data.as_ref().map(RawJson::get)),
                None => {
                    let message = format!("{event}: this server runs no plexus extension (typed channels)");
                    self.connection.outbound.push(codec::error(None, &message, None));
                }
            },
            ClientFrame::Subscribe(request) => {
                let channel = request.channel.clone();
                if let Err(error) = self.subscribe(request, now) {
                    self.reply_subscribe_error(&channel, &error);
                }
            }
            ClientFrame::Unsubscribe { channel } => {
                // Counted so churn spends the same allowance; never refused, so the client's
                // view of what it holds cannot drift from the server's.
                self.subscribes.take(self.limits.subscribes_per_sec, now);
                self.unsubscribe(&channel);
            }
            ClientFrame::Signin { auth, user_data } => {
                if let Err(error) = self.sign_in(&auth, &user_data) {
                    tracing::debug!(socket_id = %self.socket_id_text, %error, "sign-in refused");
                    self.connection.outbound.close(CloseCode::Unauthorized, &error.to_string());
                }
            }
            ClientFrame::ClientEvent { event, channel, data } => {
                if let Err(error) = self.client_event(&event, &channel, data.as_ref(), now) {
                    let code = Some(CloseCode::ClientEventRejected.code());
                    self.connection.outbound.push(codec::error(code, &error.to_string(), Some(&channel)));
                }
            }
        }
    }

    fn reply_subscribe_error(&self, channel: &str, error: &SubscribeError) {
        let (kind, status) = error.wire_type_and_status();
        let message = error.to_string();
        tracing::debug!(socket_id = %self.socket_id_text, channel, %error, "subscription refused");
        self.connection.outbound.push(codec::subscription_error(channel, kind, &message, status));
        // Pusher itself answers a bad signature with a bare pusher:error (code null); send it too
        // so clients written against Pusher see what they expect.
        let code = if kind == "AuthError" { None } else { Some(status) };
        self.connection.outbound.push(codec::error(code, &message, Some(channel)));
    }

    /// Subscribes to one channel under the admission rule every transport shares: the channel
    /// must fit the connection's credential (if it has one), and a private, encrypted or presence
    /// channel needs either a valid channel signature, or — when the client presents none — a
    /// credential whose grant names that kind of channel explicitly (see
    /// [`Grant::names_explicitly`]); a presence channel admitted that way joins as the user the
    /// credential names, and is refused when it names none.
    pub fn subscribe(&mut self, request: Subscribe, now: Instant) -> Result<(), SubscribeError> {
        let channel = ChannelName::parse_with_limit(&request.channel, self.app.max_channel_name_length)?;
        let already = self.subscriptions.contains_key(&channel);
        if !already && self.subscriptions.len() >= self.limits.max_subscriptions {
            return Err(SubscribeError::TooMany(self.limits.max_subscriptions));
        }
        if !self.subscribes.take(self.limits.subscribes_per_sec, now) {
            return Err(SubscribeError::TooFast(self.limits.subscribes_per_sec));
        }
        if let Some(filter) = &request.filter {
            filter.validate().map_err(SubscribeError::InvalidFilter)?;
        }
        if let Some(credential) = &self.credential {
            credential.grant.permits(&self.app, channel.as_str()).map_err(SubscribeError::NotGranted)?;
        }
        let signature = request.auth.as_deref().filter(|auth| !auth.is_empty());
        let granted = signature.is_none()
            && self.credential.as_ref().is_some_and(|c| c.grant.names_explicitly(channel.as_str()));
        let auth = signature.unwrap_or("");
        let member_user: Option<(String, Option<Box<RawValue>>)> = match channel.kind() {
            ChannelKind::Public => None,
            ChannelKind::ServerToUser => {
                // Delivery goes by sign-in, not by subscription: acknowledge, register nothing.
                // A token naming the user signs the connection in as that user.
                if self.signed_in.is_none() {
                    let credential_user = self.credential.as_ref().and_then(|c| c.user_id.clone());
                    if let Some(user_id) =
                        credential_user.filter(|u| Some(u.as_str()) == channel.server_to_user_id())
                    {
                        self.hub.sign_in(&self.connection, &user_id, &[]);
                        self.signed_in =
                            Some(Box::new(SignedIn { user_id, user_info: None, watchlist: Vec::new() }));
                    }
                }
                let signed_in_as = self.signed_in.as_ref().map(|s| s.user_id.as_str());
                if signed_in_as.is_none() || signed_in_as != channel.server_to_user_id() {
                    return Err(SubscribeError::NotSignedInAsUser);
                }
                self.connection.outbound.push(codec::subscription_succeeded(channel.as_str()));
                return Ok(());
            }
            ChannelKind::Private | ChannelKind::Encrypted => {
                if !granted {
                    self.check_signature(&channel, None, auth)?;
                }
                None
            }
            ChannelKind::Presence if granted && request.channel_data.is_none() => {
                match self.credential.as_ref().and_then(|c| c.user_id.clone()) {
                    Some(user_id) if user_id.chars().count() <= MAX_USER_ID_LEN => Some((user_id, None)),
                    Some(_) => {
                        return Err(SubscribeError::InvalidChannelData(format!(
                            "the token's sub is longer than {MAX_USER_ID_LEN} characters"
                        )))
                    }
                    None => return Err(SubscribeError::NeedsUser(channel.to_string())),
                }
            }
            ChannelKind::Presence => match (request.channel_data.as_deref(), &self.signed_in) {
                (Some(data), _) => {
                    self.check_signature(&channel, Some(data), auth)?;
                    Some(self.parse_member(data)?)
                }
                // A signed-in connection may join as its user with a private-form signature.
                (None, Some(user)) => {
                    self.check_signature(&channel, None, auth)?;
                    Some((user.user_id.clone(), user.user_info.clone()))
                }
                (None, None) => {
                    return Err(SubscribeError::InvalidChannelData("missing channel_data".into()))
                }
            },
        };
        if channel.requires_auth() {
            self.authorized = true;
        }

        if let Some((user_id, info)) = &member_user {
            if let Some(Some(existing)) = self.subscriptions.get(&channel) {
                if **existing != **user_id {
                    return Err(SubscribeError::InvalidChannelData(format!(
                        "this connection is already a member as user {existing:?}"
                    )));
                }
            }
            let member = Member { user_id, info: info.as_deref().map(RawValue::get) };
            self.hub.subscribe_from(
                &self.app,
                &self.connection,
                &channel,
                Some(member),
                request.position.as_deref(),
                request.filter,
            )?;
        } else {
            self.hub.subscribe_from(
                &self.app,
                &self.connection,
                &channel,
                None,
                request.position.as_deref(),
                request.filter,
            )?;
        }
        self.subscriptions.insert(channel, member_user.map(|(id, _)| id.into_boxed_str()));
        Ok(())
    }

    fn sign_in(&mut self, auth: &str, user_data: &str) -> Result<(), SigninError> {
        let max = self.app.max_payload_bytes();
        if user_data.len() > max {
            return Err(SigninError::TooLarge { size: user_data.len(), max });
        }
        let sts = signature::user_string_to_sign(&self.socket_id_text, user_data);
        if !signature::verify_auth_token(&self.app.key, &self.app.secret, &sts, auth) {
            return Err(SigninError::InvalidSignature(sts));
        }
        let data: UserData =
            serde_json::from_str(user_data).map_err(|e| SigninError::InvalidUserData(e.to_string()))?;
        // The id names the user's `#server-to-user-{id}` channel, so it takes channel characters.
        let user_id = match data.id {
            serde_json::Value::String(id)
                if id.chars().count() <= MAX_USER_ID_LEN
                    && ChannelName::parse(&format!("{SERVER_TO_USER_PREFIX}{id}")).is_ok() =>
            {
                id
            }
            _ => {
                return Err(SigninError::InvalidUserData(format!(
                    "id must be a non-empty string of at most {MAX_USER_ID_LEN} characters from A-Z a-z 0-9 _ - = @ , . ;"
                )))
            }
        };
        if let Some(current) = &self.signed_in {
            if current.user_id != user_id {
                return Err(SigninError::AlreadySignedIn(current.user_id.clone()));
            }
        }
        let mut watchlist = data.watchlist.unwrap_or_default();
        if watchlist.len() > MAX_WATCHLIST {
            watchlist.truncate(MAX_WATCHLIST);
            let message = format!("watchlist is limited to {MAX_WATCHLIST} user ids; the rest were ignored");
            self.connection.outbound.push(codec::error(
                Some(CloseCode::WatchlistLimitExceeded.code()),
                &message,
                None,
            ));
        }
        if let Some(previous) = self.signed_in.take() {
            self.hub.sign_out(self.connection.socket_id, &previous.user_id, &previous.watchlist);
        }
        self.connection.outbound.push(codec::signin_success(user_data));
        self.hub.sign_in(&self.connection, &user_id, &watchlist);
        self.signed_in = Some(Box::new(SignedIn { user_id, user_info: data.user_info, watchlist }));
        self.authorized = true;
        Ok(())
    }

    fn check_signature(
        &self,
        channel: &ChannelName,
        channel_data: Option<&str>,
        auth: &str,
    ) -> Result<(), SubscribeError> {
        let sts = signature::channel_string_to_sign(&self.socket_id_text, channel.as_str(), channel_data);
        if signature::verify_auth_token(&self.app.key, &self.app.secret, &sts, auth) {
            Ok(())
        } else {
            Err(SubscribeError::InvalidSignature(sts))
        }
    }

    fn parse_member(&self, channel_data: &str) -> Result<(String, Option<Box<RawValue>>), SubscribeError> {
        let data: ChannelData = serde_json::from_str(channel_data)
            .map_err(|e| SubscribeError::InvalidChannelData(e.to_string()))?;
        // Pusher's own example uses a numeric id; emit every id as a string, a number by its
        // exact JSON text.
        let raw = data.user_id.get();
        let user_id = match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(serde_json::Value::String(s)) if !s.is_empty() => s,
            Ok(serde_json::Value::Number(_)) => raw.to_owned(),
            _ => {
                return Err(SubscribeError::InvalidChannelData(
                    "user_id must be a non-empty string or a number".into(),
                ))
            }
        };
        if user_id.chars().count() > MAX_USER_ID_LEN {
            return Err(SubscribeError::InvalidChannelData(format!(
                "user_id is longer than {MAX_USER_ID_LEN} characters"
            )));
        }
        if let Some(info) = &data.user_info {
            let (size, max) = (info.get().len(), self.app.max_member_info_bytes());
            if size > max {
                return Err(SubscribeError::MemberInfoTooLarge { size, max });
            }
        }
        Ok((user_id, data.user_info))
    }

    fn unsubscribe(&mut self, channel: &str) {
        if let Some((name, user_id)) = self.subscriptions.remove_entry(channel) {
            self.hub.unsubscribe(&self.app, self.connection.socket_id, &name, user_id.as_deref());
        }
    }

    fn client_event(
        &mut self,
        event: &str,
        channel: &str,
        data: Option<&RawJson>,
        now: Instant,
    ) -> Result<(), ClientEventError> {
        if !self.app.enable_client_messages {
            return Err(ClientEventError::Disabled);
        }
        check_event_name(event)?;
        let Some((name, user_id)) = self.subscriptions.get_key_value(channel) else {
            // Still tell the sender about the kind rule first: it is the more useful message.
            return match ChannelName::parse(channel) {
                Ok(name) if !name.allows_client_events() => Err(ClientEventError::WrongChannelKind),
                _ => Err(ClientEventError::NotSubscribed),
            };
        };
        if !name.allows_client_events() {
            return Err(ClientEventError::WrongChannelKind);
        }
        let raw = data.map(RawJson::get);
        let (size, max) = (raw.map_or(0, str::len), self.app.max_payload_bytes());
        if size > max {
            return Err(ClientEventError::TooLarge { size, max });
        }
        let limit = self.app.max_client_events_per_second;
        if limit > 0 {
            if now.duration_since(self.client_events.started) >= Duration::from_secs(1) {
                self.client_events = RateWindow { started: now, count: 0 };
            }
            if self.client_events.count >= limit {
                return Err(ClientEventError::RateLimited(limit));
            }
            self.client_events.count += 1;
        }

        let user_id = user_id.as_deref();
        let mut frame = ServerEvent::new(event).channel(name.as_str()).user_id(user_id);
        if let Some(raw) = raw {
            frame = frame.data(Data::Raw(raw));
        }
        self.hub.publish_frame(&self.app, name.as_str(), &frame.to_frame(), Some(self.connection.socket_id));
        if wanted(&self.app, WebhookKind::ClientEvent) {
            self.hub.submit_webhook(WebhookEvent::ClientEvent {
                channel: name.to_string(),
                event: event.to_owned(),
                data: webhook_data(raw),
                socket_id: self.socket_id_text.clone(),
                user_id: user_id.map(str::to_owned),
            });
        }
        Ok(())
    }
}

/// Webhook `data` must be a string: a JSON string is unwrapped, anything else sent as its text.
fn webhook_data(raw: Option<&str>) -> String {
    match raw {
        None => String::new(),
        Some(text) => serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_owned()),
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The extension leaves its channels while the connection is still registered.
        drop(self.extension.take());
        if let Some(user) = self.signed_in.take() {
            self.hub.sign_out(self.connection.socket_id, &user.user_id, &user.watchlist);
        }
        for (channel, user_id) in self.subscriptions.drain() {
            self.hub.unsubscribe(&self.app, self.connection.socket_id, &channel, user_id.as_deref());
        }
        self.hub.disconnect(self.connection.socket_id);
    }
}
