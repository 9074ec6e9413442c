//! The contract every cluster [`Transport`] must keep, written once and run by each transport
//! crate (`plexus-nats`, `plexus-redis`) against a real bus, and by this crate's own tests
//! against `plexus-core`'s in-memory bus (which `plexus-core` cannot run itself: this crate
//! depends on it).
//!
//! This crate owns the contract checks (the steps, run as one test each by [`contract_tests!`]
//! or in turn by [`run_contract`]), the reconnect scenario ([`run_reconnect`], over any bus that
//! can have an [`Outage`]) and what those
//! need around them: unique cluster prefixes, an [`Inbox`] that awaits with a deadline and fails
//! the test when the deadline passes, free loopback ports and [`ServerProcess`], a private bus
//! server that dies with the test.
//!
//! [`history`] holds the same for history stores: the contract every
//! [`plexus_core::history_store::HistoryStore`] keeps, and its outage scenario.
//!
//! Nothing here sleeps and hopes: every expectation awaits a message or event with a bounded
//! timeout, and absence is proven by a later marker that must arrive first.

pub mod history;
pub mod topics;

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plexus_core::cluster::{Inbound, InboundSender, Kind, Listen, NodeId, Route, Transport};
use tokio::sync::mpsc::{self, error::TryRecvError};

/// How long one awaited message or event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a bus may take to notice it is gone, or to come back once its server is back (the
/// transports back off up to 5 s between attempts).
pub const RECONNECT_WAIT: Duration = Duration::from_secs(30);

/// How long one whole contract step may take.
const STEP_LIMIT: Duration = Duration::from_secs(120);

/// Messages in the ordering step (the contract asks for 10,000).
const ORDERED_MESSAGES: u32 = 10_000;

/// Connects one node of a cluster: `prefix` names the cluster, `node` the node, and the
/// transport reports what it receives into `inbound`.
///
/// Implemented for every `Fn(String, NodeId, InboundSender) -> impl Future<Output = Arc<dyn
/// Transport>>`; the closure panics (with a hint how to start the bus) if it cannot connect.
pub trait Connector {
    fn connect(
        &self,
        prefix: String,
        node: NodeId,
        inbound: InboundSender,
    ) -> impl Future<Output = Arc<dyn Transport>>;
}

impl<F, Fut> Connector for F
where
    F: Fn(String, NodeId, InboundSender) -> Fut,
    Fut: Future<Output = Arc<dyn Transport>>,
{
    fn connect(
        &self,
        prefix: String,
        node: NodeId,
        inbound: InboundSender,
    ) -> impl Future<Output = Arc<dyn Transport>> {
        self(prefix, node, inbound)
    }
}

/// A random 64-bit value from the OS.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    u64::from_le_bytes(bytes)
}

/// A cluster prefix no other test run uses, valid for every bus (letters, digits and `-`).
pub fn unique_prefix(tag: &str) -> String {
    format!("plexus-test-{tag}-{:016x}", random_u64())
}

/// Fails the test with `how_to_start` in the message unless something listens at `addr`.
pub async fn require_server(what: &str, addr: &str, how_to_start: &str) {
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => panic!("{what} is not reachable at {addr} ({err}); start it with: {how_to_start}"),
        Err(_) => panic!("{what} did not answer at {addr} within 3 s; start it with: {how_to_start}"),
    }
}

/// What one node received, awaited with deadlines.
#[derive(Debug)]
pub struct Inbox {
    name: String,
    rx: mpsc::UnboundedReceiver<Inbound>,
}

impl Inbox {
    /// The next report, or a test failure after `wait`.
    pub async fn next(&mut self, wait: Duration, what: &str) -> Inbound {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(inbound)) => inbound,
            Ok(None) => {
                panic!("{}: the transport dropped its inbound channel while awaiting {what}", self.name)
            }
            Err(_) => panic!("{}: nothing arrived within {wait:?} while awaiting {what}", self.name),
        }
    }

    /// The next message; a connection event instead fails the test, since none is expected
    /// while the bus is up.
    pub async fn message(&mut self, what: &str) -> Bytes {
        match self.next(WAIT, what).await {
            Inbound::Message(message) => message,
            other => panic!("{}: got {other:?} while awaiting {what}", self.name),
        }
    }

    /// Awaits `event` (Connected or Disconnected) and returns the messages that came before it.
    pub async fn event(&mut self, event: Inbound, wait: Duration) -> Vec<Bytes> {
        let what = format!("{event:?}");
        let deadline = tokio::time::Instant::now() + wait;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left, &what).await {
                Inbound::Message(message) => before.push(message),
                got if got == event => return before,
                other => panic!("{}: got {other:?} while awaiting {what}", self.name),
            }
        }
    }

    /// Fails the test if anything is already queued.
    pub fn assert_empty(&mut self, why: &str) {
        match self.rx.try_recv() {
            Ok(inbound) => panic!("{}: {why}, but it received {}", self.name, describe(&inbound)),
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                panic!("{}: the transport dropped its inbound channel", self.name)
            }
        }
    }
}

/// One connected node of a test cluster.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub id: NodeId,
    pub transport: Arc<dyn Transport>,
    pub inbox: Inbox,
}

impl Node {
    /// Connects a node with a random id.
    pub async fn join(connector: &impl Connector, prefix: &str, name: &str) -> Node {
        Node::join_as(connector, prefix, name, random_u64()).await
    }

    /// Connects a node with the given id.
    pub async fn join_as(connector: &impl Connector, prefix: &str, name: &str, id: NodeId) -> Node {
        let (tx, rx) = mpsc::unbounded_channel();
        let transport = connector.connect(prefix.to_owned(), id, tx).await;
        Node { name: name.to_owned(), id, transport, inbox: Inbox { name: name.to_owned(), rx } }
    }

    pub fn send(&self, route: Route, message: impl Into<Bytes>) {
        self.transport.send(route, message.into());
    }
}

/// A readable description of a report, short even for large messages.
fn describe(inbound: &Inbound) -> String {
    match inbound {
        Inbound::Message(message) => describe_bytes(message),
        other => format!("{other:?}"),
    }
}

fn describe_bytes(message: &[u8]) -> String {
    if message.len() <= 64 {
        format!("{:?} ({} bytes)", String::from_utf8_lossy(message), message.len())
    } else {
        format!("{:?}… ({} bytes)", String::from_utf8_lossy(&message[..64]), message.len())
    }
}

/// A numbered message `{sender}/{route}/{seq}`, so order can be checked per sender and route.
fn numbered(sender: &str, route: &str, seq: u32) -> Bytes {
    Bytes::from(format!("{sender}/{route}/{seq}"))
}

/// The parts of a [`numbered`] message, or `None` for anything else.
fn parse_numbered(message: &[u8]) -> Option<(String, String, u32)> {
    let text = std::str::from_utf8(message).ok()?;
    let mut parts = text.splitn(3, '/');
    let sender = parts.next()?.to_owned();
    let route = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    Some((sender, route, seq))
}

/// Receives numbered messages until `expected` (sender, route) → count are all in; each stream
/// must arrive complete and in order. Streams not listed may appear (the sender's own echoes,
/// which a transport may or may not deliver) but must be in order too; anything unparsable or
/// `forbidden(sender, route)` fails the test.
async fn receive_streams(
    inbox: &mut Inbox,
    expected: &[(&str, &str, u32)],
    forbidden: &dyn Fn(&str, &str) -> bool,
) {
    let mut next: HashMap<(String, String), u32> = HashMap::new();
    let complete = |next: &HashMap<(String, String), u32>| {
        expected.iter().all(|(s, r, n)| next.get(&((*s).to_owned(), (*r).to_owned())) == Some(n))
    };
    while !complete(&next) {
        let message = inbox.message("the rest of the numbered messages").await;
        let Some((sender, route, seq)) = parse_numbered(&message) else {
            panic!("{}: unexpected message {}", inbox.name, describe_bytes(&message));
        };
        assert!(
            !forbidden(&sender, &route),
            "{}: received {sender}/{route}/{seq}, which must never reach it",
            inbox.name
        );
        let slot = next.entry((sender.clone(), route.clone())).or_insert(0);
        assert_eq!(
            seq, *slot,
            "{}: stream {sender}/{route} out of order or incomplete (got #{seq}, expected #{})",
            inbox.name, *slot
        );
        *slot += 1;
        if let Some((_, _, n)) = expected.iter().find(|(s, r, _)| *s == sender && *r == route) {
            assert!(seq < *n, "{}: stream {sender}/{route} has more than {n} messages", inbox.name);
        }
    }
}

/// Awaits `marker` and fails the test if any other message comes first.
async fn expect_only(inbox: &mut Inbox, marker: &[u8], why: &str) {
    let message = inbox.message("the marker").await;
    assert!(
        message == marker,
        "{}: {why}, but it received {} before the marker",
        inbox.name,
        describe_bytes(&message)
    );
}

async fn step<F: Future<Output = ()>>(name: &str, body: F) {
    if tokio::time::timeout(STEP_LIMIT, body).await.is_err() {
        panic!("contract step `{name}` did not finish within {STEP_LIMIT:?}");
    }
}

/// Runs every contract step in turn, each in its own fresh cluster prefix. [`contract_tests!`]
/// runs the same steps as separate tests instead.
pub async fn run_contract(connector: &impl Connector) {
    broadcast_order(connector).await;
    direct_route(connector).await;
    prefix_isolation(connector).await;
    byte_exact(connector).await;
    interleaved_senders(connector).await;
    topics::topics_reach_only_listeners(connector).await;
    topics::a_confirmed_listen_misses_nothing(connector).await;
    topics::state_listeners_get_no_events(connector).await;
    topics::topic_order_per_sender(connector).await;
    topics::listen_nothing_stops_traffic(connector).await;
    topics::many_topics_listened_and_dropped(connector).await;
}

/// Defines one `#[tokio::test]` per contract step. `$connector` is a [`Connector`] (usually an
/// `async fn(String, NodeId, InboundSender) -> Arc<dyn Transport>`) and `$require` an `async fn()`
/// that fails with a hint when the bus is not running.
#[macro_export]
macro_rules! contract_tests {
    ($connector:path, $require:path) => {
        $crate::contract_tests!(@step broadcasts_arrive_complete_and_in_order, broadcast_order, $connector, $require);
        $crate::contract_tests!(@step direct_messages_reach_only_their_node, direct_route, $connector, $require);
        $crate::contract_tests!(@step prefixes_isolate_clusters, prefix_isolation, $connector, $require);
        $crate::contract_tests!(@step payloads_are_byte_exact, byte_exact, $connector, $require);
        $crate::contract_tests!(@step interleaved_senders_keep_their_own_order, interleaved_senders, $connector, $require);
        $crate::contract_tests!(@step topics_reach_only_listeners, topics::topics_reach_only_listeners, $connector, $require);
        $crate::contract_tests!(@step a_confirmed_listen_misses_nothing, topics::a_confirmed_listen_misses_nothing, $connector, $require);
        $crate::contract_tests!(@step state_listeners_get_no_events, topics::state_listeners_get_no_events, $connector, $require);
        $crate::contract_tests!(@step topics_keep_each_senders_order, topics::topic_order_per_sender, $connector, $require);
        $crate::contract_tests!(@step listening_to_nothing_stops_a_topics_traffic, topics::listen_nothing_stops_traffic, $connector, $require);
        $crate::contract_tests!(@step ten_thousand_topics_listened_and_dropped, topics::many_topics_listened_and_dropped, $connector, $require);
    };
    (@step $test:ident, $($step:ident)::+, $connector:path, $require:path) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            $require().await;
            $crate::$($step)::+(&$connector).await;
        }
    };
}

/// 10,000 broadcasts from A reach B and C complete and in order.
pub async fn broadcast_order(connector: &impl Connector) {
    step("broadcast_order", async {
        let prefix = unique_prefix("order");
        let a = Node::join(connector, &prefix, "A").await;
        let mut b = Node::join(connector, &prefix, "B").await;
        let mut c = Node::join(connector, &prefix, "C").await;
        for seq in 0..ORDERED_MESSAGES {
            a.send(Route::All, numbered("A", "all", seq));
        }
        for node in [&mut b, &mut c] {
            for seq in 0..ORDERED_MESSAGES {
                let message = node.inbox.message("A's broadcasts").await;
                let expected = numbered("A", "all", seq);
                assert!(
                    message == expected,
                    "{}: broadcast #{seq} should be {}, got {}",
                    node.name,
                    describe_bytes(&expected),
                    describe_bytes(&message)
                );
            }
        }
    })
    .await;
}

/// `Route::Node(B)` reaches B only: C (and a node id nobody has) get none of it, which C proves
/// by receiving a later broadcast marker as its first and only message.
pub async fn direct_route(connector: &impl Connector) {
    step("direct_route", async {
        let prefix = unique_prefix("direct");
        let a = Node::join(connector, &prefix, "A").await;
        let mut b = Node::join(connector, &prefix, "B").await;
        let mut c = Node::join(connector, &prefix, "C").await;
        let nobody = loop {
            let id = random_u64();
            if ![a.id, b.id, c.id].contains(&id) {
                break id;
            }
        };
        for seq in 0..100 {
            a.send(Route::Node(b.id), numbered("A", "direct", seq));
            a.send(Route::Node(nobody), numbered("A", "nobody", seq));
        }
        receive_streams(&mut b.inbox, &[("A", "direct", 100)], &|_, route| route == "nobody").await;
        // B has all of them, so the bus has routed every direct message before the marker is
        // even sent: anything misrouted to C is queued ahead of the marker on C's connection.
        let marker = Bytes::from_static(b"marker after the direct messages");
        a.send(Route::All, marker.clone());
        expect_only(&mut b.inbox, &marker, "B expects nothing but the marker after its messages").await;
        expect_only(&mut c.inbox, &marker, "C must see nothing addressed to B or to an unknown node").await;
        c.inbox.assert_empty("C must see nothing but the marker");
    })
    .await;
}

/// Two clusters on one bus, with the same node ids, never see each other's broadcasts or
/// direct messages.
pub async fn prefix_isolation(connector: &impl Connector) {
    step("prefix_isolation", async {
        let (p1, p2) = (unique_prefix("iso1"), unique_prefix("iso2"));
        let (ida, idb) = (random_u64(), random_u64());
        let mut x1 = Node::join_as(connector, &p1, "X1", ida).await;
        let mut y1 = Node::join_as(connector, &p1, "Y1", idb).await;
        let mut x2 = Node::join_as(connector, &p2, "X2", ida).await;
        let mut y2 = Node::join_as(connector, &p2, "Y2", idb).await;

        for seq in 0..50 {
            x2.send(Route::All, numbered("p2", "all", seq));
            x2.send(Route::Node(idb), numbered("p2", "direct", seq));
        }
        receive_streams(&mut y2.inbox, &[("p2", "all", 50), ("p2", "direct", 50)], &|sender, _| {
            sender == "p1"
        })
        .await;

        // Every p2 message has passed the bus now; one leaked into p1 would arrive before these.
        for seq in 0..50 {
            x1.send(Route::All, numbered("p1", "all", seq));
            x1.send(Route::Node(idb), numbered("p1", "direct", seq));
        }
        receive_streams(&mut y1.inbox, &[("p1", "all", 50), ("p1", "direct", 50)], &|sender, _| {
            sender == "p2"
        })
        .await;

        // Markers addressed back to the senders prove their inboxes hold nothing of the other
        // cluster either (apart from their own echoes, which a transport may deliver).
        y1.send(Route::Node(ida), numbered("marker", "p1", 0));
        y2.send(Route::Node(ida), numbered("marker", "p2", 0));
        for (node, own, other) in [(&mut x1, "p1", "p2"), (&mut x2, "p2", "p1")] {
            loop {
                let message = node.inbox.message("the marker").await;
                match parse_numbered(&message) {
                    Some((sender, route, _)) if sender == "marker" && route == own => break,
                    Some((sender, _, _)) if sender == own => {} // its own echo
                    _ => panic!("{}: received {} from cluster {other}", node.name, describe_bytes(&message)),
                }
            }
        }
    })
    .await;
}

/// The payloads of [`byte_exact`]: empty, NUL, 0xFF, invalid UTF-8, bus protocol look-alikes,
/// every byte value, 256 KiB and just under the 512 KiB the cluster layer stays below.
pub fn tricky_payloads() -> Vec<(&'static str, Bytes)> {
    let mut every_byte: Vec<u8> = (0..=255u8).collect();
    every_byte.extend((0..=255u8).rev());
    vec![
        ("empty", Bytes::new()),
        ("a NUL byte", Bytes::from_static(&[0x00])),
        ("a 0xFF byte", Bytes::from_static(&[0xFF])),
        ("NUL and 0xFF", Bytes::from_static(&[0x00, 0xFF, 0x00, 0x00, 0xFF, 0xFF])),
        ("invalid UTF-8", Bytes::from_static(b"\xC3\x28\xA0\xA1\xE2\x28\xA1\xF0\x90\x28\xBC\xFE\xFF")),
        ("CR LF", Bytes::from_static(b"\r\n")),
        ("NATS protocol", Bytes::from_static(b"PUB x 3\r\nabc\r\nMSG y 1 0\r\n\r\n")),
        ("RESP protocol", Bytes::from_static(b"*2\r\n$4\r\nPING\r\n$-1\r\n+OK\r\n-ERR\r\n")),
        ("every byte value", Bytes::from(every_byte)),
        ("256 KiB", pseudo_random(256 * 1024, 1)),
        ("just under 512 KiB", pseudo_random(512 * 1024 - 1, 2)),
    ]
}

/// `len` deterministic bytes covering every value, starting with CR LF and NUL.
pub fn pseudo_random(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&b"\r\n\x00\xFF"[..len.min(4)]);
    while out.len() < len {
        // xorshift64*: fast, and good enough to hit every byte value many times.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        let take = word.len().min(len - out.len());
        out.extend_from_slice(&word[..take]);
    }
    Bytes::from(out)
}

/// Payloads arrive byte-exact over every route.
pub async fn byte_exact(connector: &impl Connector) {
    step("byte_exact", async {
        let prefix = unique_prefix("bytes");
        let a = Node::join(connector, &prefix, "A").await;
        let mut b = Node::join(connector, &prefix, "B").await;
        let payloads = tricky_payloads();
        let room = topics::topic("bytes");
        topics::listen(&b, &room, Listen::Everything).await;
        for route in [Route::All, Route::Node(b.id), Route::Topic(room, Kind::Event)] {
            for (_, payload) in &payloads {
                a.send(route.clone(), payload.clone());
            }
            for (name, payload) in &payloads {
                let got = b.inbox.message(&format!("the {name} payload over {route:?}")).await;
                if got != *payload {
                    let first_diff = got.iter().zip(payload.iter()).position(|(x, y)| x != y);
                    panic!(
                        "B: the {name} payload over {route:?} changed: sent {} bytes, got {} \
                         ({}), first difference at {first_diff:?}",
                        payload.len(),
                        got.len(),
                        describe_bytes(&got)
                    );
                }
            }
        }
    })
    .await;
}

/// Three nodes send at once from their own threads, each broadcasting and messaging an observer
/// directly; every (sender, route) stream arrives complete and in order at the observer, and
/// each sender gets the others' broadcasts complete and in order.
pub async fn interleaved_senders(connector: &impl Connector) {
    const PER_STREAM: u32 = 2_000;
    step("interleaved_senders", async {
        let prefix = unique_prefix("interleave");
        let mut senders = vec![
            Node::join(connector, &prefix, "S1").await,
            Node::join(connector, &prefix, "S2").await,
            Node::join(connector, &prefix, "S3").await,
        ];
        let mut observer = Node::join(connector, &prefix, "O").await;
        let observer_id = observer.id;

        // Plain OS threads: `send` must work from any thread, inside a runtime or not.
        std::thread::scope(|scope| {
            for sender in &senders {
                let (name, transport) = (sender.name.clone(), Arc::clone(&sender.transport));
                scope.spawn(move || {
                    for seq in 0..PER_STREAM {
                        transport.send(Route::All, numbered(&name, "all", seq));
                        transport.send(Route::Node(observer_id), numbered(&name, "direct", seq));
                        if seq % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                });
            }
        });

        let names: Vec<String> = senders.iter().map(|s| s.name.clone()).collect();
        let mut expected: Vec<(&str, &str, u32)> = Vec::new();
        for name in &names {
            expected.push((name, "all", PER_STREAM));
            expected.push((name, "direct", PER_STREAM));
        }
        receive_streams(&mut observer.inbox, &expected, &|_, _| false).await;

        for sender in &mut senders {
            let others: Vec<(&str, &str, u32)> = names
                .iter()
                .filter(|name| **name != sender.name)
                .map(|name| (name.as_str(), "all", PER_STREAM))
                .collect();
            // Direct messages were all addressed to the observer.
            receive_streams(&mut sender.inbox, &others, &|_, route| route == "direct").await;
        }
    })
    .await;
}

/// A bus that a test can take down and bring back: a [`ServerProcess`] (killed and restarted
/// on the same port), or an in-memory bus (an outage and a restore).
pub trait Outage {
    /// The bus goes away at once, without a goodbye to its clients.
    fn go_down(&mut self);

    /// The bus is back where it was; resolves once it accepts clients again.
    fn come_back(&mut self) -> impl Future<Output = ()>;
}

impl Outage for ServerProcess {
    fn go_down(&mut self) {
        self.kill();
    }

    fn come_back(&mut self) -> impl Future<Output = ()> {
        self.restart()
    }
}

/// The reconnect scenario: two nodes on a private bus see a message, the bus goes down (both
/// report `Disconnected`), messages sent meanwhile are kept or dropped but never reordered, the
/// bus comes back (both report `Connected`), and messages flow again, complete and in order,
/// over every route, a topic B listened to before the outage included.
pub async fn run_reconnect(server: &mut impl Outage, connector: &impl Connector) {
    let prefix = unique_prefix("reconnect");
    let mut a = Node::join(connector, &prefix, "A").await;
    let mut b = Node::join(connector, &prefix, "B").await;
    let room = topics::topic("room");
    topics::listen(&b, &room, Listen::Everything).await;

    a.send(Route::All, numbered("A", "before", 0));
    receive_streams(&mut b.inbox, &[("A", "before", 1)], &|_, _| false).await;

    server.go_down();
    for node in [&mut a, &mut b] {
        node.inbox.event(Inbound::Disconnected, RECONNECT_WAIT).await;
    }

    // Sent while the bus is down: a transport may keep them for later or drop them.
    const WHILE_DOWN: u32 = 500;
    for seq in 0..WHILE_DOWN {
        a.send(Route::All, numbered("A", "down", seq));
    }

    server.come_back().await;
    let mut early = Vec::new();
    for node in [&mut a, &mut b] {
        let before = node.inbox.event(Inbound::Connected, RECONNECT_WAIT).await;
        if node.name == "B" {
            early = before;
        }
    }

    const AFTER: u32 = 500;
    for seq in 0..AFTER {
        a.send(Route::All, numbered("A", "after", seq));
        a.send(Route::Node(b.id), numbered("A", "after-direct", seq));
        a.send(Route::Topic(room.clone(), Kind::Event), numbered("A", "after-topic", seq));
    }

    // What was sent while down may arrive (in order, possibly with gaps); what was sent after
    // `Connected` must all arrive, in order.
    let mut last_down: Option<u32> = None;
    let mut next_after = 0;
    let mut next_direct = 0;
    let mut next_topic = 0;
    let mut pending = early.into_iter();
    while next_after < AFTER || next_direct < AFTER || next_topic < AFTER {
        let message = match pending.next() {
            Some(message) => message,
            None => b.inbox.message("A's messages after the reconnect").await,
        };
        let Some((sender, route, seq)) = parse_numbered(&message) else {
            panic!("B: unexpected message {}", describe_bytes(&message));
        };
        assert_eq!(sender, "A", "B: unexpected sender in {}", describe_bytes(&message));
        match route.as_str() {
            "down" => {
                assert!(
                    last_down.is_none_or(|last| seq > last),
                    "B: messages sent while down arrived out of order ({seq} after {last_down:?})"
                );
                assert!(next_after == 0, "B: a message sent while down arrived after newer ones");
                last_down = Some(seq);
            }
            "after" => {
                assert_eq!(seq, next_after, "B: broadcasts after the reconnect out of order or lost");
                next_after += 1;
            }
            "after-direct" => {
                assert_eq!(seq, next_direct, "B: direct messages after the reconnect out of order or lost");
                next_direct += 1;
            }
            "after-topic" => {
                assert_eq!(
                    seq, next_topic,
                    "B: a topic listened to before the outage lost messages after it"
                );
                next_topic += 1;
            }
            _ => panic!("B: unexpected message {}", describe_bytes(&message)),
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding an ephemeral loopback port works");
    listener.local_addr().expect("a bound socket has an address").port()
}

/// A bus server process of the test's own, on a loopback port. Killed when dropped, so it
/// dies with the test even when an assertion fails.
#[derive(Debug)]
pub struct ServerProcess {
    program: String,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `program args…` and waits until it accepts connections on `port`.
    pub async fn start(program: &str, args: Vec<String>, port: u16) -> ServerProcess {
        let mut server = ServerProcess { program: program.to_owned(), args, port, child: None };
        server.restart().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL, no goodbye to its clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine: either way it is gone after `wait`.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open but nothing is answered, like a
    /// peer lost without a goodbye.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a [`ServerProcess::pause`]d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().unwrap_or_else(|| panic!("{} is not running", self.program));
        // `kill(1)` rather than libc: this workspace denies unsafe code.
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap_or_else(|err| panic!("cannot run kill(1): {err}"));
        assert!(status.success(), "kill -{signal} {} failed: {status}", child.id());
    }

    /// Starts the server again (after [`ServerProcess::kill`]) with the same arguments and port.
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {} ({err}); is it installed?", self.program));
        self.child = Some(child);
        self.wait_listening().await;
    }

    async fn wait_listening(&mut self) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{} exited ({status}) before listening on {addr}", self.program);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} did not listen on {addr} within {WAIT:?}",
                self.program
            );
            // Nothing to await for a port opening in another process: poll, briefly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_round_trips() {
        let message = numbered("S1", "all", 42);
        assert_eq!(parse_numbered(&message), Some(("S1".into(), "all".into(), 42)));
        assert_eq!(parse_numbered(b"\xFF/x/1"), None);
        assert_eq!(parse_numbered(b"a/b/c"), None);
    }

    #[test]
    fn pseudo_random_is_deterministic_and_covers_every_byte() {
        let one = pseudo_random(64 * 1024, 7);
        assert_eq!(one, pseudo_random(64 * 1024, 7));
        assert_eq!(one.len(), 64 * 1024);
        let mut seen = [false; 256];
        for byte in one.iter() {
            seen[usize::from(*byte)] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(pseudo_random(3, 1).len(), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "start it with: run the thing")]
    async fn a_missing_server_fails_with_how_to_start_it() {
        require_server("Thing", &format!("127.0.0.1:{}", free_port()), "run the thing").await;
    }

    #[test]
    fn prefixes_are_unique_and_plain() {
        let (a, b) = (unique_prefix("x"), unique_prefix("x"));
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
