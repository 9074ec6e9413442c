//! `Client::realtime().events(…)` against a real `plexus serve` (see `support`): events with
//! their channel, position and typed data; filters; refusals with the server's reason; resume
//! after a dropped connection and after a restart; pings; final closes, the token function;
//! and `close()`. Connection trouble is made by a TCP proxy the test controls.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_realtime_client::{
    Client, ClientOptions, Credentials, Error, EventsOptions, Filter, Resume, Status, StreamItem,
};
use serde::Deserialize;
use serde_json::json;
use support::{is_position, options, publish, Proxy, Recorder, Server, WAIT};
use tokio::sync::Notify;

#[derive(Debug, Deserialize, PartialEq)]
struct Chat {
    id: String,
}

#[derive(Debug, Deserialize, PartialEq)]
struct MessageReceived {
    chat: Chat,
    text: String,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Item {
    i: u32,
}

fn stream_of(options: ClientOptions, events: EventsOptions) -> plexus_realtime_client::EventStream {
    Client::new(options).realtime().events(events).expect("valid options")
}

async fn connected(stream: &mut plexus_realtime_client::EventStream) {
    let result = tokio::time::timeout(WAIT, stream.connect()).await.expect("connect() in time");
    result.expect("every channel subscribed");
}

fn items(recorder: &Recorder) -> Vec<(u32, bool)> {
    recorder.events().iter().map(|e| (e.decode::<Item>().unwrap().i, e.replayed)).collect()
}

#[tokio::test]
async fn events_arrive_with_their_channel_position_and_data() {
    let server = Server::start().await;
    let mut stream = stream_of(options(server.port), EventsOptions::new(["feed-a", "feed-b"]));
    connected(&mut stream).await;
    assert!(matches!(stream.status(), Status::Open { .. }), "{:?}", stream.status());
    publish(server.port, "feed-a", "message.received", json!({"chat": {"id": "c1"}, "text": "on a"})).await;
    publish(server.port, "feed-b", "message.received", json!({"chat": {"id": "c2"}, "text": "on b"})).await;
    let mut got = Recorder::default();
    got.wait(&mut stream, "two messages", |r| r.events().len() == 2).await;

    let events = got.events();
    let seen: Vec<_> = events.iter().map(|e| (e.channel.as_str(), e.name.as_str(), e.replayed)).collect();
    assert_eq!(seen, [("feed-a", "message.received", false), ("feed-b", "message.received", false)]);
    assert_eq!(
        events[0].decode::<MessageReceived>().unwrap(),
        MessageReceived { chat: Chat { id: "c1".into() }, text: "on a".into() }
    );
    assert_eq!(events[1].data, r#"{"chat":{"id":"c2"},"text":"on b"}"#, "the data's JSON text");
    for event in &events {
        assert!(is_position(event.position.as_deref()), "{event:?}");
    }
    assert_eq!(
        got.status_names()[..2],
        ["connecting".to_owned(), "open".to_owned()],
        "statuses before the events"
    );
    stream.close().await;
}

#[tokio::test]
async fn typed_handlers_get_decoded_data_and_undecodable_data_goes_to_the_error_handlers() {
    let server = Server::start().await;
    let mut stream = stream_of(options(server.port), EventsOptions::new(["feed-typed"]));
    let received = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let poke = Arc::new(Notify::new());
    {
        let (received, errors, poke2, poke3) = (received.clone(), errors.clone(), poke.clone(), poke.clone());
        stream
            .on("message.received", move |message: MessageReceived, event| {
                received.lock().unwrap().push((message.text, event.channel.clone(), event.position.clone()));
                poke2.notify_one();
            })
            .on_error(move |error| {
                errors.lock().unwrap().push(error.clone());
                poke3.notify_one();
            });
    }
    connected(&mut stream).await;
    publish(server.port, "feed-typed", "message.received", json!({"chat": {"id": "c1"}, "text": "hello"}))
        .await;
    publish(server.port, "feed-typed", "message.received", json!({"text": 7})).await;
    publish(server.port, "feed-typed", "message.received", json!({"chat": {"id": "c1"}, "text": "again"}))
        .await;

    let done = || received.lock().unwrap().len() == 2 && errors.lock().unwrap().len() == 1;
    let waited = tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::select! {
                ended = stream.run() => panic!("the stream ended: {ended:?}"),
                _ = poke.notified() => {}
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "two messages and one decode error: {received:?} {errors:?}");

    let received = received.lock().unwrap().clone();
    let texts: Vec<_> = received.iter().map(|(text, channel, _)| (text.as_str(), channel.as_str())).collect();
    assert_eq!(texts, [("hello", "feed-typed"), ("again", "feed-typed")]);
    assert!(received.iter().all(|(_, _, position)| is_position(position.as_deref())));
    let errors = errors.lock().unwrap().clone();
    assert!(
        matches!(&errors[0], Error::Decode { event, channel, .. } if event == "message.received" && channel == "feed-typed"),
        "{errors:?}"
    );
    stream.close().await;
    // Closed by the application: run() reads what is left and reports no error.
    assert_eq!(stream.run().await, Ok(()));
}

#[tokio::test]
async fn filters_keep_only_matching_events() {
    let server = Server::start().await;
    let filter = Filter::new().events(["message.received"]).where_eq("chat.id", "c1");
    let mut stream = stream_of(options(server.port), EventsOptions::new(["feed-filtered"]).filters(filter));
    connected(&mut stream).await;
    // Published first, in order on one channel: had they passed, they would arrive first.
    publish(server.port, "feed-filtered", "typing", json!({"chat": {"id": "c1"}})).await;
    publish(
        server.port,
        "feed-filtered",
        "message.received",
        json!({"chat": {"id": "c2"}, "text": "other chat"}),
    )
    .await;
    publish(server.port, "feed-filtered", "message.received", json!({"chat": {"id": "c1"}, "text": "match"}))
        .await;
    publish(server.port, "feed-filtered", "message.received", json!({"chat": {"id": "c1"}, "text": "last"}))
        .await;
    let mut got = Recorder::default();
    got.wait(&mut stream, "the matching messages", |r| r.events().len() == 2).await;
    let texts: Vec<_> = got.events().iter().map(|e| e.decode::<MessageReceived>().unwrap().text).collect();
    assert_eq!(texts, ["match", "last"]);
    stream.close().await;
}

#[tokio::test]
async fn a_channel_outside_the_keys_grant_or_scope_is_refused_with_the_servers_reason() {
    let server = Server::start().await;
    let mut stream =
        stream_of(options(server.port), EventsOptions::new(["feed-granted", "secret-1", "news-unscoped"]));
    let refused = tokio::time::timeout(WAIT, stream.connect()).await.expect("connect() in time");
    let Err(Error::SubscriptionRefused { channel, status, .. }) = &refused else {
        panic!("connect() answered {refused:?}");
    };
    assert!(channel == "secret-1" || channel == "news-unscoped", "{refused:?}");
    assert_eq!(*status, 403);

    let mut got = Recorder::default();
    got.wait(&mut stream, "both refusals", |r| r.errors().len() >= 2).await;
    let refusal = |wanted: &str| {
        got.errors().into_iter().find_map(|e| match e {
            Error::SubscriptionRefused { channel, status, message, .. } if channel == wanted => {
                Some((*status, message.clone()))
            }
            _ => None,
        })
    };
    let (status, message) = refusal("secret-1").expect("secret-1 refused");
    assert_eq!(status, 403);
    assert!(message.contains("grants no access to channel"), "{message}");
    let (status, message) = refusal("news-unscoped").expect("news-unscoped refused");
    assert_eq!(status, 403);
    assert!(message.contains(r#"lacks scope "news:read""#), "{message}");

    // The socket stays: the granted channel still delivers, and nothing else was reported.
    publish(server.port, "feed-granted", "item", json!({"i": 1})).await;
    got.wait(&mut stream, "an event on the granted channel", |r| r.events().len() == 1).await;
    assert_eq!(got.errors().len(), 2, "only the refusals, once each: {:?}", got.errors());
    assert_eq!(got.opens(), 1);
    stream.close().await;
}

#[tokio::test]
async fn a_dropped_connection_backs_off_resumes_and_gets_the_missed_events_once_in_order() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.port).await;
    let mut stream = stream_of(options(proxy.port), EventsOptions::new(["feed-resume", "feed-quiet"]));
    let mut got = Recorder::default();
    connected(&mut stream).await;
    publish(server.port, "feed-resume", "item", json!({"i": 0})).await;
    got.wait(&mut stream, "item 0", |r| r.events().len() == 1).await;
    let seen = got.events()[0].position.clone();

    proxy.refuse(true);
    proxy.cut();
    got.wait(&mut stream, "four failed attempts", |r| r.reconnects().len() >= 4).await;
    for i in 1..=3 {
        publish(server.port, "feed-resume", "item", json!({"i": i})).await;
    }
    let first: Vec<_> =
        got.reconnects().into_iter().take(4).map(|(attempt, delay, ..)| (attempt, delay)).collect();
    let ms = Duration::from_millis;
    assert_eq!(first, [(1, ms(20)), (2, ms(40)), (3, ms(80)), (4, ms(80))]);
    assert!(got.reconnects().iter().all(|(_, _, code, _)| *code == 1006), "{:?}", got.reconnects());
    proxy.refuse(false);

    got.wait(&mut stream, "both channels resumed", |r| r.resumes().len() == 2).await;
    let resumes = got.resumes();
    let resumed = resumes.iter().find(|r| r.channel == "feed-resume").unwrap();
    assert!(resumed.recovered, "{resumed:?}");
    assert_eq!(resumed.from, seen);
    assert_eq!(items(&got), [(0, false), (1, true), (2, true), (3, true)]);
    assert_eq!(resumed.position, got.events()[3].position);
    assert!(
        matches!(got.items.iter().rev().find(|i| matches!(i, StreamItem::Resumed(_))), Some(StreamItem::Resumed(r)) if r.channel == "feed-resume"),
        "reported as Resumed"
    );
    let resumed_at = got.items.iter().position(|i| matches!(i, StreamItem::Resumed(_))).unwrap();
    let last_replay =
        got.items.iter().rposition(|i| matches!(i, StreamItem::Event(e) if e.replayed)).unwrap();
    assert!(last_replay < resumed_at, "the replayed events come before the resume");
    // Nothing had arrived on the quiet channel, so there was no position to resume from.
    let quiet = Resume { channel: "feed-quiet".into(), recovered: false, position: None, from: None };
    assert_eq!(got.gaps(), [&quiet]);

    publish(server.port, "feed-resume", "item", json!({"i": 4})).await;
    got.wait(&mut stream, "a live event after the resume", |r| r.events().len() == 5).await;
    assert_eq!(items(&got), [(0, false), (1, true), (2, true), (3, true), (4, false)], "each event once");

    // The backoff starts over after a successful connection.
    let before = got.reconnects().len();
    proxy.cut();
    got.wait(&mut stream, "reconnected again", |r| r.opens() == 3).await;
    assert_eq!(got.reconnects()[before].1, ms(20));
    stream.close().await;
}

#[tokio::test]
async fn filters_hold_for_events_replayed_after_a_reconnect() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.port).await;
    let filter = Filter::new().where_eq("chat.id", "c1");
    let mut stream = stream_of(options(proxy.port), EventsOptions::new(["feed-refiltered"]).filters(filter));
    let mut got = Recorder::default();
    connected(&mut stream).await;
    let message = |chat: &str, text: &str| json!({"chat": {"id": chat}, "text": text});
    publish(server.port, "feed-refiltered", "message.received", message("c1", "first")).await;
    got.wait(&mut stream, "the first match", |r| r.events().len() == 1).await;
    proxy.refuse(true);
    proxy.cut();
    got.wait(&mut stream, "a failed attempt", |r| !r.reconnects().is_empty()).await;
    publish(server.port, "feed-refiltered", "message.received", message("c2", "other chat")).await;
    publish(server.port, "feed-refiltered", "message.received", message("c1", "second")).await;
    proxy.refuse(false);
    got.wait(&mut stream, "the resume", |r| r.resumes().len() == 1).await;
    assert!(got.resumes()[0].recovered);
    let seen: Vec<_> =
        got.events().iter().map(|e| (e.decode::<MessageReceived>().unwrap().text, e.replayed)).collect();
    assert_eq!(seen, [("first".to_owned(), false), ("second".to_owned(), true)]);
    stream.close().await;
}

#[tokio::test]
async fn a_silent_connection_is_pinged_and_dropped_when_no_reply_comes() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.port).await;
    let options = options(proxy.port)
        .activity_timeout(Duration::from_millis(100))
        .pong_timeout(Duration::from_millis(200));
    let mut stream = stream_of(options, EventsOptions::new(["feed-pinged"]));
    let mut got = Recorder::default();
    connected(&mut stream).await;
    // The server answers our pings; the stream is not read meanwhile, so it must ping by itself.
    proxy.wait("the server to answer two of our pings", |p| p.downstream_count("pusher:pong") >= 2).await;
    got.drain_ready(&mut stream);
    assert!(got.reconnects().is_empty(), "answered pings keep the connection: {:?}", got.reconnects());

    proxy.freeze();
    got.wait(&mut stream, "the dead connection to be given up", |r| !r.reconnects().is_empty()).await;
    let (_, _, code, reason) = &got.reconnects()[0];
    assert_eq!(*code, 1006);
    assert!(reason.contains("no reply to our ping within 200 ms"), "{reason}");
    got.wait(&mut stream, "a new connection", |r| r.resumes().len() == 1).await;
    publish(server.port, "feed-pinged", "item", json!({"i": 1})).await;
    got.wait(&mut stream, "an event on it", |r| r.events().len() == 1).await;
    stream.close().await;
}

#[tokio::test]
async fn after_a_server_restart_the_stream_reconnects_at_once_and_reports_a_gap() {
    let mut server = Server::start().await;
    let port = server.port;
    let mut stream = stream_of(options(port), EventsOptions::new(["feed-restart"]));
    let mut got = Recorder::default();
    connected(&mut stream).await;
    publish(port, "feed-restart", "item", json!({"i": 0})).await;
    got.wait(&mut stream, "item 0", |r| r.events().len() == 1).await;
    let seen = got.events()[0].position.clone();

    server.stop().await;
    let server = Server::start_on(port).await;
    got.wait(&mut stream, "the resume on the new server", |r| r.resumes().len() == 1).await;
    let (_, delay, code, _) = got.reconnects()[0].clone();
    assert_eq!((code, delay), (4200, Duration::ZERO), "4200: at once");
    // The history was the old process's: the gap is reported, not hidden.
    let gaps = got.gaps();
    assert_eq!(gaps.len(), 1, "{:?}", got.resumes());
    assert!(!gaps[0].recovered);
    assert_eq!(gaps[0].from, seen);
    assert!(is_position(gaps[0].position.as_deref()), "{:?}", gaps[0]);

    publish(server.port, "feed-restart", "item", json!({"i": 1})).await;
    got.wait(&mut stream, "item 1", |r| r.events().len() == 2).await;
    let epoch = |p: &Option<String>| p.as_deref().and_then(|p| p.split_once(':')).map(|(e, _)| e.to_owned());
    assert_ne!(epoch(&got.events()[1].position), epoch(&seen), "a new epoch");
    assert!(!got.events()[1].replayed);
    stream.close().await;
}

#[tokio::test]
async fn a_bad_api_key_is_refused_with_the_servers_reason_and_not_retried() {
    let server = Server::start().await;
    let options = options(server.port).credentials(Credentials::api_key("sk_wrong"));
    let mut stream = stream_of(options, EventsOptions::new(["feed-1"]));
    let refused = tokio::time::timeout(WAIT, stream.connect()).await.expect("connect() in time");
    assert_eq!(refused, Err(Error::ConnectionRefused { status: 401, message: "invalid API key".into() }));

    let mut got = Recorder::default();
    got.until_end(&mut stream, "the stream to end").await;
    assert_eq!(got.status_names(), ["connecting", "closed 4009"], "{:?}", got.items);
    assert_eq!(got.errors(), [&Error::ConnectionRefused { status: 401, message: "invalid API key".into() }]);
    assert_eq!(stream.status(), Status::Closed { code: 4009, reason: "HTTP 401: invalid API key".into() });
    stream.close().await;
}

#[tokio::test]
async fn final_closes_end_the_stream_and_a_4009_with_a_token_function_fetches_a_new_token() {
    let server = Server::start().await;

    // 4001: no such app.
    let unknown = ClientOptions::new(server.ws_url(), "no-such-key").backoff(support::quick_backoff());
    let mut stream = stream_of(unknown, EventsOptions::new(["feed-1"]));
    let failure = tokio::time::timeout(WAIT, stream.connect()).await.expect("connect() in time");
    assert!(matches!(failure, Err(Error::Closed { code: 4001, .. })), "{failure:?}");
    let mut got = Recorder::default();
    got.until_end(&mut stream, "the stream to end").await;
    assert_eq!(got.status_names(), ["connecting", "closed 4001"]);
    stream.close().await;

    // 4009 (the signin app's authentication timeout) with a fixed token: final.
    let signin = || ClientOptions::new(server.ws_url(), "signin-key").backoff(support::quick_backoff());
    let mut stream =
        stream_of(signin().credentials(Credentials::token("static")), EventsOptions::new(["feed-1"]));
    connected(&mut stream).await;
    let mut got = Recorder::default();
    got.until_end(&mut stream, "the 4009 close").await;
    assert_eq!(got.status_names(), ["connecting", "open", "closed 4009"]);
    let ended = stream.run().await;
    assert!(matches!(ended, Err(Error::Closed { code: 4009, .. })), "run() says why it ended: {ended:?}");
    stream.close().await;

    // The same close with a token function: a fresh token, a backoff, a new connection.
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let provider = Credentials::token_fn(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, std::convert::Infallible>(format!("token-{n}")) }
    });
    let mut stream = stream_of(signin().credentials(provider), EventsOptions::new(["feed-1"]));
    connected(&mut stream).await;
    let mut got = Recorder::default();
    got.wait(&mut stream, "a second connection", |r| r.opens() == 2).await;
    let (attempt, delay, code, _) = got.reconnects()[0].clone();
    assert_eq!((attempt, delay, code), (1, Duration::from_millis(20), 4009));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the token function was asked again before reconnecting");
    stream.close().await;
}

#[tokio::test]
async fn close_ends_the_task_and_the_socket_connected_or_waiting_to_reconnect() {
    let server = Server::start().await;
    let proxy = Proxy::start(server.port).await;

    // Connected: close() shuts the socket, and the stream ends with the client's close.
    let mut stream = stream_of(options(proxy.port), EventsOptions::new(["feed-closed"]));
    connected(&mut stream).await;
    assert_eq!(proxy.live(), 1);
    tokio::time::timeout(WAIT, stream.close()).await.expect("close() in time");
    proxy.wait("the socket to be closed", |p| p.live() == 0).await;
    let mut got = Recorder::default();
    // The task has ended: it held the channel's sender, so the stream ends at once.
    got.drain_ready(&mut stream);
    assert_eq!(stream.next().await, None);
    assert_eq!(got.status_names().last().map(String::as_str), Some("closed 1000"));
    assert_eq!(stream.status(), Status::Closed { code: 1000, reason: "closed by the client".into() });

    // Waiting a minute to reconnect: close() does not wait it out.
    proxy.refuse(true);
    let slow = plexus_realtime_client::Backoff {
        initial: Duration::from_secs(60),
        max: Duration::from_secs(60),
        jitter: false,
    };
    let mut stream = stream_of(options(proxy.port), EventsOptions::new(["feed-closed"]).backoff(slow));
    let mut got = Recorder::default();
    got.wait(&mut stream, "a reconnect a minute away", |r| !r.reconnects().is_empty()).await;
    assert_eq!(got.reconnects()[0].1, Duration::from_secs(60));
    tokio::time::timeout(WAIT, stream.close()).await.expect("close() without waiting out the backoff");
    got.until_end(&mut stream, "the end").await;
    assert_eq!(
        got.statuses().last(),
        Some(&&Status::Closed { code: 1000, reason: "closed by the client".into() })
    );
    let ended = stream.connect().await;
    assert!(matches!(ended, Err(Error::Closed { code: 1000, .. })), "{ended:?}");
    assert_eq!(proxy.live(), 0);

    // Never started: close() has nothing to stop.
    let mut idle = stream_of(options(server.port), EventsOptions::new(["feed-closed"]));
    idle.close().await;
    assert!(matches!(idle.next().await, Some(StreamItem::Status(Status::Closed { code: 1000, .. }))));
    assert_eq!(idle.next().await, None);
}
