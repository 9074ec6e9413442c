//! User sign-in, server-to-user events, termination, watchlists and the authorized-connection
//! timeout, over real loopback sockets.

mod common;

use common::{app, data_of, Ended, TestClient, TestServer};
use plexus_core::App;
use plexus_protocol::signature;
use serde_json::{json, Value};

async fn sign_in(client: &mut TestClient, app: &App, user_data: &str) -> Value {
    let sts = signature::user_string_to_sign(&client.socket_id, user_data);
    let auth = signature::auth_token(&app.key, &app.secret, &sts);
    client.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})).await;
    client.recv().await
}

#[tokio::test]
async fn signin_succeeds_with_a_valid_signature_and_echoes_user_data() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut client = server.connect("key-1").await;
    let user_data = r#"{"id":"12345","user_info":{"name":"Ann"}}"#;
    let reply = sign_in(&mut client, &a, user_data).await;
    assert_eq!(reply, json!({"event": "pusher:signin_success", "data": {"user_data": user_data}}));
    let own = client.subscribe("#server-to-user-12345").await;
    assert_eq!(own["event"], "pusher_internal:subscription_succeeded");
    let other = client.subscribe("#server-to-user-999").await;
    assert_eq!(other["event"], "pusher:subscription_error");
}

#[tokio::test]
async fn bad_signin_gets_4009_and_a_close() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let cases = [
        json!({"auth": "key-1:00", "user_data": r#"{"id":"1"}"#}),
        json!({"auth": "", "user_data": "not json"}),
    ];
    for data in cases {
        let mut client = server.connect("key-1").await;
        client.send(json!({"event": "pusher:signin", "data": data})).await;
        let (events, ended) = client.until_closed().await;
        assert_eq!(events[0]["data"]["code"], 4009);
        assert_eq!(ended, Ended::Closed(4009));
    }
    // Properly signed but without a usable id.
    for user_data in [r#"{"user_info":{}}"#, r#"{"id":""}"#, r#"{"id":7}"#, r#"{"id":"has space"}"#] {
        let mut client = server.connect("key-1").await;
        sign_in(&mut client, &a, user_data).await;
        let (_, ended) = client.until_closed().await;
        assert_eq!(ended, Ended::Closed(4009), "{user_data}");
    }
}

#[tokio::test]
async fn send_to_user_reaches_every_connection_of_that_user_only() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut tab1 = server.connect("key-1").await;
    let mut tab2 = server.connect("key-1").await;
    let mut stranger = server.connect("key-1").await;
    sign_in(&mut tab1, &a, r#"{"id":"u1"}"#).await;
    sign_in(&mut tab2, &a, r#"{"id":"u1"}"#).await;
    sign_in(&mut stranger, &a, r#"{"id":"u2"}"#).await;
    stranger.subscribe("marker").await;

    let (status, _) = server.trigger(&a, "#server-to-user-u1", "notice", r#"{"n":1}"#).await;
    assert_eq!(status, 200);
    for tab in [&mut tab1, &mut tab2] {
        let event = tab.recv().await;
        assert_eq!(event, json!({"event": "notice", "channel": "#server-to-user-u1", "data": r#"{"n":1}"#}));
    }
    server.trigger(&a, "marker", "marker", "x").await;
    assert_eq!(stranger.recv().await["event"], "marker", "another user got nothing");
}

#[tokio::test]
async fn terminate_connections_closes_the_users_sockets_with_4009() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut target = server.connect("key-1").await;
    let mut bystander = server.connect("key-1").await;
    sign_in(&mut target, &a, r#"{"id":"bad-user"}"#).await;
    sign_in(&mut bystander, &a, r#"{"id":"good-user"}"#).await;

    let (status, body) =
        server.api(&a, "POST", "/apps/app-1/users/bad-user/terminate_connections", "{}", &[]).await;
    assert_eq!((status, body), (200, json!({})));
    let (_, ended) = target.until_closed().await;
    assert_eq!(ended, Ended::Closed(4009));
    bystander.send(json!({"event": "pusher:ping"})).await;
    bystander.expect("pusher:pong").await;

    // The path without the /apps prefix (pusher-http-python) works too.
    let mut again = server.connect("key-1").await;
    sign_in(&mut again, &a, r#"{"id":"bad-user"}"#).await;
    let (status, _) = server.api(&a, "POST", "/users/bad-user/terminate_connections", "{}", &[]).await;
    assert_eq!(status, 200);
    let (_, ended) = again.until_closed().await;
    assert_eq!(ended, Ended::Closed(4009));
}

#[tokio::test]
async fn watchlist_reports_current_status_then_online_and_offline_changes() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut friend7 = server.connect("key-1").await;
    sign_in(&mut friend7, &a, r#"{"id":"7"}"#).await;

    let mut watcher = server.connect("key-1").await;
    let ok = sign_in(&mut watcher, &a, r#"{"id":"me","watchlist":["7","8"]}"#).await;
    assert_eq!(ok["event"], "pusher:signin_success");
    let initial = watcher.expect("pusher_internal:watchlist_events").await;
    assert_eq!(
        data_of(&initial),
        json!({"events": [{"name": "online", "user_ids": ["7"]}, {"name": "offline", "user_ids": ["8"]}]})
    );

    let mut friend8 = server.connect("key-1").await;
    sign_in(&mut friend8, &a, r#"{"id":"8"}"#).await;
    let online = watcher.expect("pusher_internal:watchlist_events").await;
    assert_eq!(data_of(&online), json!({"events": [{"name": "online", "user_ids": ["8"]}]}));

    // A second tab of 8 is not news; its last tab leaving is.
    let mut friend8b = server.connect("key-1").await;
    sign_in(&mut friend8b, &a, r#"{"id":"8"}"#).await;
    friend8.close().await;
    friend8b.close().await;
    let offline = watcher.expect("pusher_internal:watchlist_events").await;
    assert_eq!(data_of(&offline), json!({"events": [{"name": "offline", "user_ids": ["8"]}]}));
}

#[tokio::test]
async fn watchlist_longer_than_100_is_truncated_with_4302_but_signin_succeeds() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut client = server.connect("key-1").await;
    let ids: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let user_data = json!({"id": "me", "watchlist": ids}).to_string();
    let first = sign_in(&mut client, &a, &user_data).await;
    assert_eq!(first["data"]["code"], 4302);
    client.expect("pusher:signin_success").await;
    let status = client.expect("pusher_internal:watchlist_events").await;
    assert_eq!(data_of(&status)["events"][0]["user_ids"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn presence_accepts_a_signed_in_user_without_channel_data() {
    let a = app(1);
    let server = TestServer::start(vec![a.clone()]).await;
    let mut client = server.connect("key-1").await;
    sign_in(&mut client, &a, r#"{"id":"ann","user_info":{"name":"Ann"}}"#).await;
    let joined = client.subscribe_private(&a, "presence-lobby").await;
    assert_eq!(joined["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(data_of(&joined)["presence"]["hash"]["ann"]["name"], "Ann");
}

#[tokio::test]
async fn unauthorized_connections_are_closed_after_the_timeout_when_the_app_requires_it() {
    let mut strict = app(1);
    strict.enable_user_authentication = true;
    strict.user_authentication_timeout_secs = 1;
    let server = TestServer::start(vec![strict.clone()]).await;

    let mut idle = server.connect("key-1").await;
    let mut signed = server.connect("key-1").await;
    let mut private = server.connect("key-1").await;
    sign_in(&mut signed, &strict, r#"{"id":"ok"}"#).await;
    private.subscribe_private(&strict, "private-x").await;

    let (events, ended) = idle.until_closed().await;
    assert_eq!(events.last().unwrap()["data"]["code"], 4009);
    assert_eq!(ended, Ended::Closed(4009));
    // The others are still served after the idle one was closed.
    for client in [&mut signed, &mut private] {
        client.send(json!({"event": "pusher:ping"})).await;
        client.expect("pusher:pong").await;
    }
}
