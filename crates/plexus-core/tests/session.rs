//! `Session`, one connection's protocol state machine, without a socket: client frames go in as
//! text with the instant they arrived, and what a client would read comes out of the
//! connection's queue (`common::drain`). Each session runs over a real `AppHub`, so what another
//! session sees (member events, client events) is the hub's real fan-out.

mod common;

use std::sync::Arc;
use std::time::Duration;

use plexus_protocol::codec::{Data, ServerEvent, Subscribe};
use plexus_protocol::signature::{auth_token, channel_string_to_sign};
use plexus_realtime_core::access::Grant;
use plexus_realtime_core::webhook::{WebhookEvent, WebhookSink};
use plexus_realtime_core::{App, AppHub, Heartbeat, Session, SessionLimits};
use serde_json::{json, Value};
use tokio::time::Instant;

use common::{drain, drain_raw, Received};

#[derive(Debug)]
struct NoWebhooks;

impl WebhookSink for NoWebhooks {
    fn submit(&self, _app_id: &str, _event: WebhookEvent) {}
}

fn heartbeat() -> Heartbeat {
    Heartbeat { interval: Duration::from_secs(120), pong_grace: Duration::from_secs(30) }
}

fn app() -> App {
    let mut app = App::new("app", "key", "secret");
    app.enable_client_messages = true;
    app
}

/// One app's hub and the clock the test hands to its sessions.
struct World {
    app: Arc<App>,
    hub: Arc<AppHub>,
    now: Instant,
}

impl World {
    fn new(app: App) -> World {
        World {
            hub: Arc::new(AppHub::new(&app.id, Arc::new(NoWebhooks))),
            app: Arc::new(app),
            now: Instant::now(),
        }
    }

    fn connect(&self) -> Client {
        self.connect_with(SessionLimits::default())
    }

    fn connect_with(&self, limits: SessionLimits) -> Client {
        let session =
            Session::start(self.app.clone(), self.hub.clone(), limits, heartbeat(), self.now).unwrap();
        let mut client = Client { session, now: self.now };
        let established = client.received();
        assert_eq!(established.events(), ["pusher:connection_established"]);
        client
    }
}

/// A session and what its client does.
struct Client {
    session: Session,
    /// When the client's next frame arrives.
    now: Instant,
}

impl Client {
    fn socket_id(&self) -> String {
        self.session.connection().socket_id.to_string()
    }

    fn send(&mut self, frame: Value) {
        self.session.handle_text(&frame.to_string(), self.now);
    }

    fn received(&mut self) -> Received {
        drain(&self.session.connection().outbound)
    }

    fn subscribe(&mut self, channel: &str, auth: Option<&str>) {
        let mut data = json!({ "channel": channel });
        if let Some(auth) = auth {
            data["auth"] = json!(auth);
        }
        self.send(json!({ "event": "pusher:subscribe", "data": data }));
    }

    /// Subscribes to a private channel with the signature the app's auth endpoint would give.
    fn subscribe_signed(&mut self, channel: &str) {
        let auth = auth_token("key", "secret", &channel_string_to_sign(&self.socket_id(), channel, None));
        self.subscribe(channel, Some(&auth));
    }

    /// Joins a presence channel as `user`, signed.
    fn join(&mut self, channel: &str, user: &str) {
        let channel_data = json!({ "user_id": user, "user_info": { "name": user } }).to_string();
        let sts = channel_string_to_sign(&self.socket_id(), channel, Some(&channel_data));
        let auth = auth_token("key", "secret", &sts);
        self.send(json!({
            "event": "pusher:subscribe",
            "data": { "channel": channel, "auth": auth, "channel_data": channel_data }
        }));
    }

    fn client_event(&mut self, channel: &str, data: Value) {
        self.send(json!({ "event": "client-typing", "channel": channel, "data": data }));
    }

    fn ping(&mut self) {
        self.send(json!({ "event": "pusher:ping", "data": {} }));
    }

    /// Whether the socket is still open and answering (a ping gets its pong).
    fn answers(&mut self) -> bool {
        self.ping();
        let received = self.received();
        received.close.is_none() && received.events() == ["pusher:pong"]
    }
}

fn succeeded(received: &Received, channel: &str) -> bool {
    received.named("pusher_internal:subscription_succeeded").iter().any(|frame| frame["channel"] == channel)
}

/// The `pusher:error` frames' `(code, message)`.
fn errors(received: &Received) -> Vec<(Value, String)> {
    received
        .named("pusher:error")
        .iter()
        .map(|f| (f["data"]["code"].clone(), f["data"]["message"].as_str().unwrap().to_owned()))
        .collect()
}

/// The one `pusher:subscription_error`'s `(type, status)`.
fn subscription_error(received: &Received) -> (String, u64) {
    let refused = received.named("pusher:subscription_error");
    assert_eq!(refused.len(), 1, "one subscription_error in {:?}", received.frames);
    (refused[0]["data"]["type"].as_str().unwrap().to_owned(), refused[0]["data"]["status"].as_u64().unwrap())
}

#[test]
fn a_new_session_is_told_its_socket_id_and_activity_timeout() {
    let world = World::new(app());
    let session = Session::start(
        world.app.clone(),
        world.hub.clone(),
        SessionLimits::default(),
        heartbeat(),
        world.now,
    )
    .unwrap();
    let received = drain(&session.connection().outbound);
    assert_eq!(received.events(), ["pusher:connection_established"]);
    assert_eq!(
        received.frames[0]["data"],
        json!({ "socket_id": session.connection().socket_id.to_string(), "activity_timeout": 120 })
    );
    assert_eq!(world.hub.connection_count(), 1);
}

#[test]
fn public_and_signed_private_subscriptions_succeed_and_a_bad_signature_is_refused_on_an_open_socket() {
    let world = World::new(app());
    let mut client = world.connect();
    client.subscribe("news", None);
    assert!(succeeded(&client.received(), "news"));
    assert!(!client.session.is_authorized(), "a public channel authorizes nothing");

    client.subscribe_signed("private-orders");
    assert!(succeeded(&client.received(), "private-orders"));
    assert!(client.session.is_authorized());

    for auth in [Some("key:00ff"), Some("other-key:00ff"), None] {
        client.subscribe("private-secret", auth);
        let received = client.received();
        assert_eq!(subscription_error(&received), ("AuthError".into(), 401), "auth {auth:?}");
        let errors = errors(&received);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, Value::Null, "Pusher sends a bad signature's error without a code");
        assert!(errors[0].1.starts_with("Invalid signature"), "{}", errors[0].1);
        assert!(client.answers(), "the socket stays open");
    }
    assert_eq!(world.hub.channel("private-secret"), None);
    assert_eq!(world.hub.channel("private-orders").unwrap().subscription_count, 1);
}

#[test]
fn presence_members_are_announced_to_the_others_once_per_user() {
    let world = World::new(app());
    let mut ann = world.connect();
    let mut bo = world.connect();
    ann.join("presence-room", "ann");
    let joined = ann.received();
    assert!(succeeded(&joined, "presence-room"));
    bo.join("presence-room", "bo");
    let joined = bo.received();
    let presence = &joined.named("pusher_internal:subscription_succeeded")[0]["data"]["presence"];
    assert_eq!(presence["count"], 2);
    assert_eq!(presence["hash"]["ann"], json!({ "name": "ann" }));
    assert_eq!(joined.named("pusher_internal:member_added"), Vec::<&Value>::new(), "not told of itself");

    let added = ann.received();
    assert_eq!(added.events(), ["pusher_internal:member_added"]);
    assert_eq!(added.frames[0]["data"], json!({ "user_id": "bo", "user_info": { "name": "bo" } }));

    // Bo's second socket adds no member, and leaving with it removes none.
    let mut bo_again = world.connect();
    bo_again.join("presence-room", "bo");
    bo_again.received();
    assert_eq!(ann.received().events(), Vec::<&str>::new());
    bo_again.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "presence-room" } }));
    assert_eq!(ann.received().events(), Vec::<&str>::new());

    bo.send(json!({ "event": "pusher:unsubscribe", "data": { "channel": "presence-room" } }));
    let removed = ann.received();
    assert_eq!(removed.events(), ["pusher_internal:member_removed"]);
    assert_eq!(removed.frames[0]["data"], json!({ "user_id": "bo" }));
    assert_eq!(world.hub.presence_user_ids("presence-room"), ["ann"]);
}

#[test]
fn client_events_reach_the_other_subscribers_and_refusals_say_why_with_4301() {
    let world = World::new(app());
    let mut ann = world.connect();
    let mut bo = world.connect();
    for (client, user) in [(&mut ann, "ann"), (&mut bo, "bo")] {
        client.subscribe_signed("private-chat");
        client.subscribe("news", None);
        client.join("presence-room", user);
    }
    ann.received();
    bo.received();

    ann.client_event("private-chat", json!({ "text": "hi" }));
    assert_eq!(ann.received().events(), Vec::<&str>::new(), "not echoed to the sender");
    let got = bo.received();
    assert_eq!(got.events(), ["client-typing"]);
    assert_eq!(got.frames[0]["channel"], "private-chat");
    assert_eq!(got.frames[0]["data"], json!({ "text": "hi" }));
    assert_eq!(got.frames[0].get("user_id"), None, "a private channel names no user");

    ann.client_event("presence-room", json!({}));
    assert_eq!(bo.received().frames[0]["user_id"], "ann", "a presence channel names the sender");

    let refusals = [
        ("news", "only allowed on private and presence channels"),
        ("private-elsewhere", "not subscribed to channel"),
    ];
    for (channel, why) in refusals {
        ann.client_event(channel, json!({}));
        let refused = ann.received();
        let errors = errors(&refused);
        assert_eq!(errors.len(), 1, "{channel}");
        assert_eq!(errors[0].0, 4301, "{channel}");
        assert!(errors[0].1.contains(why), "{channel}: {}", errors[0].1);
        assert_eq!(refused.frames[0]["channel"], channel);
        assert!(ann.answers());
    }
    assert_eq!(bo.received().events(), Vec::<&str>::new(), "nothing refused was relayed");

    let mut closed = app();
    closed.enable_client_messages = false;
    let world = World::new(closed);
    let mut cy = world.connect();
    cy.subscribe_signed("private-chat");
    cy.received();
    cy.client_event("private-chat", json!({}));
    let errors = errors(&cy.received());
    assert_eq!(errors[0].0, 4301);
    assert!(errors[0].1.contains("enable_client_messages"), "{}", errors[0].1);
}

#[test]
fn client_events_are_limited_per_second_by_the_instants_the_transport_passes_in() {
    let mut limited = app();
    limited.max_client_events_per_second = 2;
    let world = World::new(limited);
    let mut ann = world.connect();
    let mut bo = world.connect();
    ann.subscribe_signed("private-chat");
    bo.subscribe_signed("private-chat");
    ann.received();
    bo.received();

    let start = ann.now;
    let sent_at = |ann: &mut Client, bo: &mut Client, after: Duration| {
        ann.now = start + after;
        ann.client_event("private-chat", json!({}));
        let relayed = bo.received().events() == ["client-typing"];
        (relayed, errors(&ann.received()))
    };
    assert_eq!(sent_at(&mut ann, &mut bo, Duration::ZERO), (true, vec![]));
    assert_eq!(sent_at(&mut ann, &mut bo, Duration::from_millis(400)), (true, vec![]));
    let (relayed, errors) = sent_at(&mut ann, &mut bo, Duration::from_millis(999));
    assert!(!relayed);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, 4301);
    assert!(errors[0].1.contains("rate limit (2 per second)"), "{}", errors[0].1);
    assert!(ann.answers(), "refused, not closed");
    assert_eq!(sent_at(&mut ann, &mut bo, Duration::from_secs(1)), (true, vec![]), "a new second");
}

#[test]
fn too_many_subscriptions_are_refused_with_4303_on_an_open_socket() {
    let world = World::new(app());
    let mut client = world.connect_with(SessionLimits { max_subscriptions: 2, ..SessionLimits::default() });
    client.subscribe("one", None);
    client.subscribe("two", None);
    client.received();
    client.subscribe("three", None);
    let refused = client.received();
    assert_eq!(subscription_error(&refused), ("LimitReached".into(), 4303));
    assert_eq!(errors(&refused)[0].0, 4303);
    assert!(client.answers());
    client.subscribe("one", None);
    assert!(succeeded(&client.received(), "one"), "a channel already held does not count again");
    assert_eq!(world.hub.channel("three"), None);
}

#[test]
fn a_flood_of_frames_closes_the_connection_with_4100_but_a_steady_pace_does_not() {
    let world = World::new(app());
    let limits = SessionLimits { frames_per_sec: 1, ..SessionLimits::default() };
    let mut steady = world.connect_with(limits);
    for second in 0..30 {
        steady.now = world.now + Duration::from_secs(second);
        assert!(steady.answers(), "one frame a second, for {second} s");
    }

    let mut flood = world.connect_with(limits);
    // A burst of ten seconds' worth passes; the next frame in the same instant does not.
    for _ in 0..10 {
        flood.ping();
    }
    assert_eq!(flood.received().events(), ["pusher:pong"; 10]);
    flood.ping();
    let closed = flood.received();
    assert_eq!(closed.events(), ["pusher:error"]);
    let reason = closed.close.expect("the connection closes");
    assert_eq!(reason.code, 4100);
    assert!(reason.message.contains("too many messages"), "{}", reason.message);
}

fn grant(channels: &[&str]) -> Grant {
    Grant {
        source: "the API key",
        scopes: vec![],
        channels: channels.iter().map(|c| c.to_string()).collect(),
    }
}

#[test]
fn a_grant_naming_private_channels_admits_them_unsigned_and_a_blanket_grant_does_not() {
    let world = World::new(app());
    let mut named = world.connect();
    named.session.restrict_to(grant(&["private-x*"]), None);
    named.subscribe("private-x1", None);
    assert!(succeeded(&named.received(), "private-x1"));
    named.subscribe_signed("private-y");
    let refused = named.received();
    assert_eq!(subscription_error(&refused), ("AuthError".into(), 403), "outside the grant, signed or not");
    assert!(errors(&refused)[0].1.contains("grants no access"), "{:?}", errors(&refused));

    let mut blanket = world.connect();
    blanket.session.restrict_to(grant(&["*"]), None);
    blanket.subscribe("private-x1", None);
    assert_eq!(subscription_error(&blanket.received()), ("AuthError".into(), 401), "`*` names no kind");
    blanket.subscribe_signed("private-x1");
    assert!(succeeded(&blanket.received(), "private-x1"), "a signature still admits");

    // A granted presence channel joins as the user the credential names.
    let mut member = world.connect();
    member.session.restrict_to(grant(&["presence-team-*"]), Some("uid-7".into()));
    member.subscribe("presence-team-1", None);
    assert!(succeeded(&member.received(), "presence-team-1"));
    assert_eq!(world.hub.presence_user_ids("presence-team-1"), ["uid-7"]);
}

#[test]
fn dropping_a_session_unsubscribes_it_everywhere_and_the_others_see_the_member_leave() {
    let world = World::new(app());
    let mut ann = world.connect();
    let mut bo = world.connect();
    ann.join("presence-room", "ann");
    bo.join("presence-room", "bo");
    bo.subscribe("news", None);
    ann.received();
    bo.received();
    assert_eq!(world.hub.connection_count(), 2);

    drop(bo);
    let removed = ann.received();
    assert_eq!(removed.events(), ["pusher_internal:member_removed"]);
    assert_eq!(removed.frames[0]["data"]["user_id"], "bo");
    assert_eq!(world.hub.connection_count(), 1);
    assert_eq!(world.hub.channel("news"), None);
    assert_eq!(world.hub.channel("presence-room").unwrap().subscription_count, 1);
}

#[test]
fn a_silent_client_is_pinged_after_the_interval_and_closed_4201_after_the_grace() {
    let world = World::new(app());
    let mut client = world.connect();
    let start = world.now;
    assert_eq!(client.session.next_deadline(), Some(start + heartbeat().interval));

    // Woken early (the transport's timer may fire before a moved deadline): nothing happens.
    client.session.on_deadline(start + Duration::from_secs(60));
    assert!(client.received().frames.is_empty());

    let pinged = start + heartbeat().interval;
    client.session.on_deadline(pinged);
    assert_eq!(client.received().events(), ["pusher:ping"]);
    assert_eq!(client.session.next_deadline(), Some(pinged + heartbeat().pong_grace));

    client.session.on_deadline(pinged + heartbeat().pong_grace);
    let received = client.received();
    assert_eq!(received.close.map(|close| close.code), Some(4201));
}

#[test]
fn any_frame_answers_the_ping_and_moves_the_deadline() {
    let world = World::new(app());
    let mut client = world.connect();
    let pinged = world.now + heartbeat().interval;
    client.session.on_deadline(pinged);
    assert_eq!(client.received().events(), ["pusher:ping"]);

    let heard = pinged + Duration::from_secs(5);
    client.session.heard(heard);
    assert_eq!(client.session.next_deadline(), Some(heard + heartbeat().interval));
    client.session.on_deadline(pinged + heartbeat().pong_grace);
    let received = client.received();
    assert!(received.close.is_none() && received.frames.is_empty(), "{received:?}");
}

#[test]
fn an_app_requiring_sign_in_closes_4009_at_the_deadline_unless_authorized() {
    let mut required = app();
    required.enable_user_authentication = true;
    required.user_authentication_timeout_secs = 10;
    let world = World::new(required);
    let deadline = world.now + Duration::from_secs(10);

    let mut idle = world.connect();
    assert_eq!(idle.session.next_deadline(), Some(deadline));
    idle.session.on_deadline(deadline);
    assert_eq!(idle.received().close.map(|close| close.code), Some(4009));

    let mut member = world.connect();
    member.subscribe_signed("private-room");
    assert!(succeeded(&member.received(), "private-room"));
    member.session.on_deadline(deadline);
    let received = member.received();
    assert!(received.close.is_none(), "{received:?}");
    assert_eq!(member.session.next_deadline(), Some(world.now + heartbeat().interval));
}

/// An SSE stream's session queues server-sent events, not WebSocket frames: its own replies are
/// converted as they are queued, and a fanned-out event is rendered once for every stream (the
/// very same bytes in each queue) while WebSocket subscribers get the frame.
#[test]
fn streams_get_server_sent_events_and_one_rendering_of_each_event_is_shared_by_all() {
    let world = World::new(app());
    let mut socket = world.connect();
    socket.subscribe("news", None);
    assert!(succeeded(&socket.received(), "news"));
    let mut streams: Vec<Session> = (0..2)
        .map(|_| {
            Session::start_receiver(world.app.clone(), world.hub.clone(), SessionLimits::default(), world.now)
        })
        .collect::<Result<_, _>>()
        .unwrap();
    for stream in &mut streams {
        let request = Subscribe {
            channel: "news".into(),
            auth: None,
            channel_data: None,
            filter: None,
            position: None,
        };
        stream.subscribe(request, world.now).unwrap();
        let (queued, _) = drain_raw(&stream.connection().outbound);
        let text: Vec<&str> = queued.iter().map(|b| std::str::from_utf8(b).unwrap()).collect();
        assert_eq!(text.len(), 1, "{text:?}");
        assert!(text[0].starts_with("event: pusher_internal:subscription_succeeded\ndata: {"), "{text:?}");
    }

    let frame = ServerEvent::new("update").channel("news").data(Data::Str("{\"n\":1}")).to_frame();
    assert_eq!(world.hub.publish_frame(&world.app, "news", &frame, None), 3);
    let (first, _) = drain_raw(&streams[0].connection().outbound);
    let (second, _) = drain_raw(&streams[1].connection().outbound);
    assert_eq!((first.len(), second.len()), (1, 1));
    assert_eq!(first[0].as_ptr(), second[0].as_ptr(), "one rendering, shared");
    assert_eq!(
        std::str::from_utf8(&first[0]).unwrap(),
        "event: update\ndata: {\"event\":\"update\",\"channel\":\"news\",\"data\":\"{\\\"n\\\":1}\"}\n\n"
    );
    assert_eq!(socket.received().events(), ["update"]);
}
