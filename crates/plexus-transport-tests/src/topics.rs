//! The topic steps of the transport contract (`docs/cluster.md`, §3.3): [`Route::Topic`]
//! reaches only listeners, at the level they listen at; a confirmed listen misses nothing; a
//! confirmed `Listen::Nothing` stops the traffic. Absence is proven, as everywhere in this
//! crate, by a later marker that must arrive first.

use plexus_core::cluster::{Kind, Listen, Route, Topic};

use crate::{
    describe_bytes, expect_only, numbered, receive_streams, step, unique_prefix, Connector, Node, WAIT,
};

/// Messages per sender in the ordering step.
const ORDERED_ON_A_TOPIC: u32 = 10_000;

/// Topics in the many-topics step.
const MANY_TOPICS: usize = 10_000;

/// A topic no other step uses.
pub fn topic(tag: &str) -> Topic {
    Topic::new(&format!("{tag}-{:08x}", crate::random_u64() as u32)).expect("a valid topic")
}

/// Listens, failing the test when the bus does not confirm it in time.
pub async fn listen(node: &Node, topic: &Topic, level: Listen) {
    match tokio::time::timeout(WAIT, node.transport.listen(topic, level)).await {
        Ok(Ok(())) => {}
        Ok(Err(unconfirmed)) => panic!("{}: {unconfirmed}", node.name),
        Err(_) => panic!("{}: listening to {topic} at {level:?} not confirmed within {WAIT:?}", node.name),
    }
}

/// A topic's messages reach the node listening to it, and not one that is not.
pub async fn topics_reach_only_listeners(connector: &impl Connector) {
    step("topics_reach_only_listeners", async {
        let prefix = unique_prefix("topics");
        let a = Node::join(connector, &prefix, "A").await;
        let mut b = Node::join(connector, &prefix, "B").await;
        let mut c = Node::join(connector, &prefix, "C").await;
        let room = topic("room");
        listen(&b, &room, Listen::Everything).await;
        for seq in 0..100 {
            let kind = if seq % 2 == 0 { Kind::Event } else { Kind::State };
            a.send(Route::Topic(room.clone(), kind), numbered("A", "room", seq));
        }
        a.send(Route::All, numbered("A", "marker", 0));
        receive_streams(&mut b.inbox, &[("A", "room", 100), ("A", "marker", 1)], &|_, _| false).await;
        expect_only(&mut c.inbox, &numbered("A", "marker", 0), "C never listened to the topic").await;
    })
    .await;
}

/// A message sent right after `listen` resolved arrives, every time (20 fresh topics).
pub async fn a_confirmed_listen_misses_nothing(connector: &impl Connector) {
    step("a_confirmed_listen_misses_nothing", async {
        let prefix = unique_prefix("listen");
        let a = Node::join(connector, &prefix, "A").await;
        let mut b = Node::join(connector, &prefix, "B").await;
        for round in 0..20 {
            let fresh = topic("fresh");
            listen(&b, &fresh, Listen::Everything).await;
            a.send(Route::Topic(fresh, Kind::Event), numbered("A", "fresh", round));
            let message = b.inbox.message("the message sent right after the listen").await;
            assert!(
                message == numbered("A", "fresh", round),
                "B: round {round} got {}",
                describe_bytes(&message)
            );
        }
    })
    .await;
}

/// A node listening for state gets a topic's state and none of its events; raised to
/// everything, it gets both, with no state lost across the change.
pub async fn state_listeners_get_no_events(connector: &impl Connector) {
    step("state_listeners_get_no_events", async {
        let prefix = unique_prefix("state");
        let a = Node::join(connector, &prefix, "A").await;
        let mut b = Node::join(connector, &prefix, "B").await;
        let room = topic("room");
        listen(&b, &room, Listen::State).await;
        for seq in 0..200 {
            a.send(Route::Topic(room.clone(), Kind::Event), numbered("A", "event", seq));
            a.send(Route::Topic(room.clone(), Kind::State), numbered("A", "state", seq));
        }
        let no_events = |_: &str, route: &str| route == "event";
        receive_streams(&mut b.inbox, &[("A", "state", 200)], &no_events).await;

        listen(&b, &room, Listen::Everything).await;
        a.send(Route::Topic(room.clone(), Kind::Event), numbered("A", "later-event", 0));
        a.send(Route::Topic(room.clone(), Kind::State), numbered("A", "later-state", 0));
        receive_streams(&mut b.inbox, &[("A", "later-event", 1), ("A", "later-state", 1)], &no_events).await;
    })
    .await;
}

/// Two senders' messages on one topic, events and state interleaved, each arrive complete and
/// in the order sent.
pub async fn topic_order_per_sender(connector: &impl Connector) {
    step("topic_order_per_sender", async {
        let prefix = unique_prefix("topic-order");
        let a = Node::join(connector, &prefix, "A").await;
        let c = Node::join(connector, &prefix, "C").await;
        let mut b = Node::join(connector, &prefix, "B").await;
        let room = topic("room");
        listen(&b, &room, Listen::Everything).await;
        for seq in 0..ORDERED_ON_A_TOPIC {
            let kind = if seq % 3 == 0 { Kind::State } else { Kind::Event };
            a.send(Route::Topic(room.clone(), kind), numbered("A", "room", seq));
            c.send(Route::Topic(room.clone(), kind), numbered("C", "room", seq));
        }
        let expected = [("A", "room", ORDERED_ON_A_TOPIC), ("C", "room", ORDERED_ON_A_TOPIC)];
        receive_streams(&mut b.inbox, &expected, &|_, _| false).await;
    })
    .await;
}

/// Once a node listens to nothing of a topic, the topic's messages stop reaching it.
pub async fn listen_nothing_stops_traffic(connector: &impl Connector) {
    step("listen_nothing_stops_traffic", async {
        let prefix = unique_prefix("unlisten");
        let a = Node::join(connector, &prefix, "A").await;
        let mut b = Node::join(connector, &prefix, "B").await;
        let room = topic("room");
        listen(&b, &room, Listen::Everything).await;
        a.send(Route::Topic(room.clone(), Kind::Event), "while listening");
        expect_only(&mut b.inbox, b"while listening", "B listens").await;
        listen(&b, &room, Listen::Nothing).await;
        for _ in 0..100 {
            a.send(Route::Topic(room.clone(), Kind::Event), "after leaving");
            a.send(Route::Topic(room.clone(), Kind::State), "after leaving");
        }
        a.send(Route::Node(b.id), "marker");
        expect_only(&mut b.inbox, b"marker", "B no longer listens to the topic").await;
    })
    .await;
}

/// Ten thousand topics listened to, each reached once; then all dropped, and none reached.
pub async fn many_topics_listened_and_dropped(connector: &impl Connector) {
    step("many_topics_listened_and_dropped", async {
        let prefix = unique_prefix("many");
        let a = Node::join(connector, &prefix, "A").await;
        let mut b = Node::join(connector, &prefix, "B").await;
        let topics: Vec<Topic> =
            (0..MANY_TOPICS).map(|n| Topic::new(&format!("t{n}")).expect("a valid topic")).collect();
        for topic in &topics {
            listen(&b, topic, Listen::Everything).await;
        }
        for (seq, topic) in topics.iter().enumerate() {
            a.send(Route::Topic(topic.clone(), Kind::Event), numbered("A", "many", seq as u32));
        }
        // Order holds per topic, not across topics: each arrives once, in whatever order.
        let mut arrived = vec![false; MANY_TOPICS];
        for _ in 0..MANY_TOPICS {
            let message = b.inbox.message("one message per topic").await;
            let seq = match crate::parse_numbered(&message) {
                Some((sender, route, seq)) if sender == "A" && route == "many" => seq as usize,
                _ => panic!("B: unexpected message {}", describe_bytes(&message)),
            };
            assert!(!std::mem::replace(&mut arrived[seq], true), "B: topic t{seq}'s message arrived twice");
        }
        for topic in &topics {
            listen(&b, topic, Listen::Nothing).await;
        }
        for topic in &topics {
            a.send(Route::Topic(topic.clone(), Kind::Event), "after leaving");
        }
        a.send(Route::Node(b.id), "marker");
        expect_only(&mut b.inbox, b"marker", "B left every topic").await;
    })
    .await;
}
