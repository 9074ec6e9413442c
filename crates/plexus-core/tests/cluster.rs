//! The cluster protocol (`plexus_realtime_core::cluster::node`) on the in-memory bus: two or three nodes,
//! each a `ClusterNode` and its `Hubs`, in one process, with tokio's clock paused.
//!
//! Nothing here waits for wall-clock time. The clock only moves when every task is idle, and then
//! only to the next timer, so [`pass`] runs each node's heartbeats, lease checks and sync retries
//! in order, and every message sent has been handled before time moves on. Clients are plain
//! hub connections; what they would read comes from their outbound queues (`common::drain`).
//! Webhooks are recorded with the node that sent them, so "once per cluster" is countable.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_protocol::ChannelName;
use plexus_realtime_core::app::{HistoryRule, WebhookKind, WebhookTarget};
use plexus_realtime_core::cluster::memory::{Delivery, Fate};
use plexus_realtime_core::cluster::wire::{self, Body};
use plexus_realtime_core::cluster::{
    ClusterLink, ClusterNode, ClusterOptions, MemoryBus, MemoryTransport, NodeId,
};
use plexus_realtime_core::history_store::{HistoryStore, MemoryHistoryStore};
use plexus_realtime_core::hub::{Event, Member};
use plexus_realtime_core::webhook::{WebhookEvent, WebhookSink};
use plexus_realtime_core::{App, AppHub, AppStore, Connection, Hubs, MemoryAppStore};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use common::{drain, Received};

const APP: &str = "app";

/// The timing the Node cluster suites run with (a 3 s lease), and the default settle time.
const OPTIONS: ClusterOptions = ClusterOptions {
    heartbeat: Duration::from_secs(1),
    lease: Duration::from_secs(3),
    settle: Duration::from_millis(2500),
    load_every: Duration::from_secs(5),
};

/// Lets the cluster run for `duration` of paused time: the clock jumps from timer to timer, and
/// at each every task runs until idle (messages in flight are handled before the clock moves).
/// With `start_paused` this takes no wall-clock time and gives the same run every time. (One
/// `tokio::time::advance` over the whole duration would not do: every node would wake once at
/// the end and find its live peers silent past their lease.)
async fn pass(duration: Duration) {
    tokio::time::sleep(duration).await;
}

/// Lets every message in flight be handled, 1 ms of cluster time.
async fn settle() {
    pass(Duration::from_millis(1)).await;
}

fn app() -> App {
    let mut app = App::new(APP, "key", "secret");
    app.webhooks = vec![WebhookTarget {
        url: "http://webhooks.invalid/".into(),
        events: vec![
            WebhookKind::ChannelOccupied,
            WebhookKind::ChannelVacated,
            WebhookKind::MemberAdded,
            WebhookKind::MemberRemoved,
        ],
        ca_file: None,
    }];
    app.history = vec![HistoryRule { prefix: "history-".into(), size: 100, ttl_secs: 300 }];
    app
}

/// Every webhook any node sent, with the node that sent it.
#[derive(Debug, Default)]
struct Webhooks(Mutex<Vec<(NodeId, WebhookEvent)>>);

impl Webhooks {
    /// What was sent since the last call, as `(node, "name:channel[:user]")`.
    fn take(&self) -> Vec<(NodeId, String)> {
        let sent = std::mem::take(&mut *self.0.lock().unwrap());
        sent.into_iter()
            .map(|(node, event)| {
                let json = event.to_json();
                let mut text = format!("{}:{}", json["name"].as_str().unwrap(), event.channel());
                if let Some(user) = json["user_id"].as_str() {
                    text = format!("{text}:{user}");
                }
                (node, text)
            })
            .collect()
    }
}

/// One node's webhook sender: records into the shared log under the node's id.
#[derive(Debug)]
struct Sender {
    node: NodeId,
    log: Arc<Webhooks>,
}

impl WebhookSink for Sender {
    fn submit(&self, _app_id: &str, event: WebhookEvent) {
        self.log.0.lock().unwrap().push((self.node, event));
    }
}

struct Node {
    id: NodeId,
    transport: Arc<MemoryTransport>,
    cluster: Arc<ClusterNode>,
    hubs: Arc<Hubs>,
    receiving: JoinHandle<()>,
}

impl Node {
    fn hub(&self) -> Arc<AppHub> {
        self.hubs.hub(APP)
    }

    /// The process dies (SIGKILL): it vanishes from the bus and stops.
    fn kill(&self) {
        self.transport.kill();
        self.receiving.abort();
    }

    /// Users in a presence channel, as this node sees the cluster.
    fn members(&self, channel: &str) -> Vec<String> {
        self.hub().presence_user_ids(channel)
    }

    /// Subscriptions to a channel across the cluster, as this node counts them.
    fn count(&self, channel: &str) -> usize {
        self.hub().channel(channel).map_or(0, |c| c.subscription_count)
    }
}

struct Cluster {
    bus: MemoryBus,
    app: Arc<App>,
    webhooks: Arc<Webhooks>,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Nodes with these ids (the lowest live one leads), settled: each has heard the others and
    /// holds their state, and the leader is chosen.
    async fn start(ids: &[NodeId]) -> Cluster {
        Cluster::start_keeping_history(ids, None).await
    }

    /// [`Cluster::start`], the nodes keeping history in `store` when given (as with
    /// `history = "bus"`) instead of their memory.
    async fn start_keeping_history(ids: &[NodeId], store: Option<Arc<dyn HistoryStore>>) -> Cluster {
        let bus = MemoryBus::new();
        let app = Arc::new(app());
        let apps: Arc<dyn AppStore> = Arc::new(MemoryAppStore::new([(*app).clone()]).unwrap());
        let webhooks = Arc::new(Webhooks::default());
        let mut nodes = Vec::new();
        for &id in ids {
            let (inbound_tx, inbound) = mpsc::unbounded_channel();
            let transport = bus.connect("test", id, inbound_tx);
            let sender = Arc::new(Sender { node: id, log: webhooks.clone() });
            let cluster = ClusterNode::new(id, transport.clone(), sender, OPTIONS);
            let hubs = Hubs::clustered(cluster.webhooks(), cluster.clone());
            let hubs = Arc::new(match &store {
                Some(store) => hubs.with_history_store(store.clone()),
                None => hubs,
            });
            let receiving = tokio::spawn(cluster.clone().run(hubs.clone(), apps.clone(), inbound));
            nodes.push(Node { id, transport, cluster, hubs, receiving });
        }
        let cluster = Cluster { bus, app, webhooks, nodes };
        pass(OPTIONS.settle + OPTIONS.heartbeat).await;
        let lowest = ids.iter().min().unwrap();
        for node in &cluster.nodes {
            assert!(*node.cluster.ready().borrow(), "node {} synced with its peers", node.id);
            assert_eq!(node.cluster.is_leader(), node.id == *lowest, "node {} leads iff lowest", node.id);
        }
        cluster
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    /// A client connected to node `id`.
    fn client(&self, id: NodeId) -> Client {
        let hub = self.node(id).hub();
        let connection = hub.connect(&self.app, 1 << 20).unwrap();
        Client { hub, app: self.app.clone(), connection }
    }

    /// Publishes `data` as event `e` on `channel` through node `id`, as the HTTP API would.
    fn publish(&self, id: NodeId, channel: &str, data: &str) {
        let channels = [channel.to_owned()];
        let event = Event { name: "e", data, channels: &channels, except: None };
        self.node(id).hub().publish_event(&self.app, &event).unwrap();
    }
}

/// A connection to one node, as a client that does not need a session (the hub's verbs direct).
struct Client {
    hub: Arc<AppHub>,
    app: Arc<App>,
    connection: Arc<Connection>,
}

impl Client {
    fn subscribe(&self, channel: &str) {
        self.subscribe_from(channel, None);
    }

    /// Subscribes resuming after `position` (a history channel's `"{epoch}:{offset}"`).
    fn subscribe_from(&self, channel: &str, position: Option<&str>) {
        let channel = ChannelName::parse(channel).unwrap();
        self.hub.subscribe_from(&self.app, &self.connection, &channel, None, position, None).unwrap();
    }

    /// Joins presence `channel` as `user`.
    fn join(&self, channel: &str, user: &str) {
        let info = format!("{{\"name\":\"{user}\"}}");
        let member = Member { user_id: user, info: Some(&info) };
        let channel = ChannelName::parse(channel).unwrap();
        self.hub.subscribe(&self.app, &self.connection, &channel, Some(member)).unwrap();
    }

    /// Leaves `channel` (joined as `user` on a presence channel).
    fn leave(&self, channel: &str, user: Option<&str>) {
        let channel = ChannelName::parse(channel).unwrap();
        assert!(self.hub.unsubscribe(&self.app, self.connection.socket_id, &channel, user));
    }

    fn received(&self) -> Received {
        drain(&self.connection.outbound)
    }
}

/// The `(event, user_id)` of each presence member event received.
fn member_events(received: &Received) -> Vec<(String, String)> {
    received
        .frames
        .iter()
        .filter(|f| f["event"].as_str().is_some_and(|e| e.starts_with("pusher_internal:member_")))
        .map(|f| (f["event"].as_str().unwrap().to_owned(), f["data"]["user_id"].as_str().unwrap().to_owned()))
        .collect()
}

fn added(user: &str) -> (String, String) {
    ("pusher_internal:member_added".into(), user.into())
}

fn removed(user: &str) -> (String, String) {
    ("pusher_internal:member_removed".into(), user.into())
}

/// The `(data, position)` of each event `e` received.
fn events(received: &Received) -> Vec<(String, String)> {
    received
        .named("e")
        .into_iter()
        .map(|f| (f["data"].as_str().unwrap().to_owned(), f["position"].as_str().unwrap_or("").to_owned()))
        .collect()
}

/// The `plexus:resume` answer: `(recovered, position)`.
fn resume(received: &Received) -> (bool, String) {
    let answers = received.named("plexus:resume");
    assert_eq!(answers.len(), 1, "one resume answer in {:?}", received.frames);
    let data = &answers[0]["data"];
    (data["recovered"].as_bool().unwrap(), data["position"].as_str().unwrap_or("").to_owned())
}

fn epoch(position: &str) -> &str {
    position.split_once(':').unwrap().0
}

fn hooks(list: &[(NodeId, &str)]) -> Vec<(NodeId, String)> {
    list.iter().map(|(node, text)| (*node, (*text).to_owned())).collect()
}

/// A history channel whose events node `by` numbers, as every node of the cluster computes it.
fn channel_numbered_by(cluster: &Cluster, by: NodeId) -> String {
    (0..)
        .map(|i| format!("history-feed-{i}"))
        .find(|channel| {
            cluster.nodes.iter().all(|node| {
                let expected = (node.id != by).then_some(by);
                node.cluster.sequencer(APP, channel) == expected
            })
        })
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn events_reach_every_node_once_in_order_and_skip_the_excluded_socket() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let readers: Vec<Client> = [1, 2, 3].map(|id| cluster.client(id)).into();
    for reader in &readers {
        reader.subscribe("news");
    }
    settle().await;
    for reader in &readers {
        reader.received();
    }
    for i in 0..20 {
        // From every node in turn, each once the one before was delivered everywhere: that is
        // the order every reader must see.
        cluster.publish(1 + i % 3, "news", &format!("n{i}"));
        settle().await;
    }
    let channels = ["news".to_owned()];
    let except = Some(readers[1].connection.socket_id);
    let event = Event { name: "e", data: "not for reader 2", channels: &channels, except };
    cluster.node(1).hub().publish_event(&cluster.app, &event).unwrap();
    settle().await;
    let expected: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    for (i, reader) in readers.iter().enumerate() {
        let got: Vec<String> = events(&reader.received()).into_iter().map(|(data, _)| data).collect();
        let mut want = expected.clone();
        if i != 1 {
            want.push("not for reader 2".into());
        }
        assert_eq!(got, want, "reader on node {}", i + 1);
    }
    assert_eq!(cluster.node(3).count("news"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_is_dropped_after_its_lease_and_its_members_leave_once() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let bob = cluster.client(1);
    let alice = cluster.client(2);
    bob.join("presence-room", "bob");
    settle().await;
    alice.join("presence-room", "alice");
    settle().await;
    assert_eq!(member_events(&bob.received()), vec![added("alice")]);
    let joined = alice.received();
    assert_eq!(joined.named("pusher_internal:subscription_succeeded")[0]["data"]["presence"]["count"], 2);
    for node in &cluster.nodes {
        assert_eq!(node.members("presence-room"), ["alice", "bob"], "node {}", node.id);
    }
    assert_eq!(
        cluster.webhooks.take(),
        hooks(&[
            (1, "channel_occupied:presence-room"),
            (1, "member_added:presence-room:bob"),
            (1, "member_added:presence-room:alice")
        ])
    );

    cluster.node(2).kill();
    // Its last heartbeat is at most one period old: the peers wait out the lease from there.
    pass(OPTIONS.lease - OPTIONS.heartbeat).await;
    for id in [1, 3] {
        assert_eq!(cluster.node(id).members("presence-room"), ["alice", "bob"], "within the lease");
    }
    assert_eq!(member_events(&bob.received()), vec![]);

    pass(OPTIONS.heartbeat + OPTIONS.heartbeat / 2).await;
    for id in [1, 3] {
        assert_eq!(cluster.node(id).members("presence-room"), ["bob"], "node {id} after the lease");
        assert_eq!(cluster.node(id).count("presence-room"), 1);
    }
    assert_eq!(member_events(&bob.received()), vec![removed("alice")]);
    assert_eq!(cluster.webhooks.take(), hooks(&[(1, "member_removed:presence-room:alice")]));
}

#[tokio::test(start_paused = true)]
async fn the_webhook_sender_moves_when_the_leader_dies_and_each_webhook_fires_once() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let carol = cluster.client(3);
    let dave = cluster.client(1);
    carol.join("presence-lobby", "carol");
    settle().await;
    dave.join("presence-lobby", "dave");
    settle().await;
    assert_eq!(
        cluster.webhooks.take(),
        hooks(&[
            (1, "channel_occupied:presence-lobby"),
            (1, "member_added:presence-lobby:carol"),
            (1, "member_added:presence-lobby:dave")
        ])
    );
    // Past the window in which a new leader re-sends what the old one may not have reported.
    pass(OPTIONS.lease + OPTIONS.heartbeat * 2).await;

    cluster.node(1).kill();
    // Carol leaves while the leader is dead but not yet known to be: nobody sends it now, and
    // the new leader must not lose it.
    carol.leave("presence-lobby", Some("carol"));
    settle().await;
    assert_eq!(cluster.webhooks.take(), vec![]);
    assert!(!cluster.node(2).cluster.is_leader());

    pass(OPTIONS.lease + OPTIONS.heartbeat).await;
    assert!(cluster.node(2).cluster.is_leader(), "the lowest live node leads");
    assert!(!cluster.node(3).cluster.is_leader());
    assert_eq!(
        cluster.webhooks.take(),
        hooks(&[
            (2, "member_removed:presence-lobby:carol"),
            (2, "member_removed:presence-lobby:dave"),
            (2, "channel_vacated:presence-lobby")
        ])
    );

    let erin = cluster.client(3);
    erin.join("presence-lobby", "erin");
    settle().await;
    assert_eq!(
        cluster.webhooks.take(),
        hooks(&[(2, "channel_occupied:presence-lobby"), (2, "member_added:presence-lobby:erin")])
    );
}

#[tokio::test(start_paused = true)]
async fn a_lost_update_is_noticed_at_the_next_sequence_number_and_healed_by_a_snapshot() {
    let cluster = Cluster::start(&[1, 2]).await;
    let dropped = Arc::new(AtomicBool::new(false));
    let once = dropped.clone();
    cluster.bus.set_filter(move |d: &Delivery<'_>| {
        let share = d.to == 2 && matches!(wire::decode(d.message).map(|e| e.body), Ok(Body::Share { .. }));
        if share && !once.swap(true, Ordering::Relaxed) {
            Fate::Drop
        } else {
            Fate::Deliver
        }
    });
    let reader = cluster.client(1);
    reader.subscribe("news");
    settle().await;
    assert!(dropped.load(Ordering::Relaxed));
    assert_eq!((cluster.node(1).count("news"), cluster.node(2).count("news")), (1, 0), "node 2 missed it");

    // Node 1's next heartbeat skips a number: node 2 asks for its state.
    pass(OPTIONS.heartbeat).await;
    assert_eq!(cluster.node(2).count("news"), 1);
    assert_eq!(cluster.webhooks.take(), hooks(&[(1, "channel_occupied:news")]));
}

#[tokio::test(start_paused = true)]
async fn a_node_cut_off_within_its_lease_resyncs_and_presence_converges_without_extra_webhooks() {
    let cluster = Cluster::start(&[1, 2]).await;
    let xavier = cluster.client(2);
    xavier.join("presence-room", "xavier");
    settle().await;
    xavier.received();
    cluster.webhooks.take();

    cluster.node(2).transport.cut();
    // Changes on both sides of the cut, each lost to the other side.
    let yvonne = cluster.client(1);
    yvonne.join("presence-room", "yvonne");
    let zed = cluster.client(1);
    zed.subscribe("news");
    let wanda = cluster.client(2);
    wanda.join("presence-room", "wanda");
    settle().await;
    assert_eq!(cluster.node(1).members("presence-room"), ["xavier", "yvonne"]);
    assert_eq!(cluster.node(2).members("presence-room"), ["wanda", "xavier"]);
    assert_eq!(member_events(&xavier.received()), vec![added("wanda")]);

    pass(OPTIONS.lease / 2).await;
    cluster.node(2).transport.reconnect();
    pass(OPTIONS.heartbeat * 2).await;
    for node in &cluster.nodes {
        assert_eq!(node.members("presence-room"), ["wanda", "xavier", "yvonne"], "node {}", node.id);
        assert_eq!(node.count("presence-room"), 3, "node {}", node.id);
        assert_eq!(node.count("news"), 1, "node {}", node.id);
    }
    assert_eq!(member_events(&xavier.received()), vec![added("yvonne")]);
    assert_eq!(member_events(&wanda.received()), vec![added("yvonne")]);
    assert_eq!(member_events(&yvonne.received()), vec![added("wanda")]);
    // Nobody was forgotten, so nobody left: one member_added each, from the leader.
    assert_eq!(
        cluster.webhooks.take(),
        hooks(&[
            (1, "member_added:presence-room:yvonne"),
            (1, "channel_occupied:news"),
            (1, "member_added:presence-room:wanda")
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_node_cut_off_past_its_lease_is_forgotten_and_rejoins_as_new() {
    let cluster = Cluster::start(&[1, 2]).await;
    let xavier = cluster.client(2);
    xavier.join("presence-room", "xavier");
    let yvonne = cluster.client(1);
    yvonne.join("presence-room", "yvonne");
    settle().await;
    yvonne.received();
    xavier.received();

    cluster.node(2).transport.cut();
    pass(OPTIONS.lease + OPTIONS.heartbeat).await;
    assert_eq!(cluster.node(1).members("presence-room"), ["yvonne"]);
    assert_eq!(cluster.node(2).members("presence-room"), ["xavier"]);
    assert_eq!(member_events(&yvonne.received()), vec![removed("xavier")]);
    assert_eq!(member_events(&xavier.received()), vec![removed("yvonne")]);

    cluster.node(2).transport.reconnect();
    pass(OPTIONS.heartbeat * 2).await;
    for node in &cluster.nodes {
        assert_eq!(node.members("presence-room"), ["xavier", "yvonne"], "node {}", node.id);
    }
    assert_eq!(member_events(&yvonne.received()), vec![added("xavier")]);
    assert_eq!(member_events(&xavier.received()), vec![added("yvonne")]);
    assert!(cluster.node(1).cluster.is_leader() && !cluster.node(2).cluster.is_leader());

    // While cut off, each side led its own part and reported the other side's members leaving
    // (and node 2 re-sent what it held from the last lease, as a new leader does). Once whole,
    // one node reports again, once.
    cluster.webhooks.take();
    let zoe = cluster.client(2);
    zoe.join("presence-room", "zoe");
    settle().await;
    assert_eq!(cluster.webhooks.take(), hooks(&[(1, "member_added:presence-room:zoe")]));
}

#[tokio::test(start_paused = true)]
async fn history_resumes_exactly_within_an_epoch_and_a_new_numbering_node_starts_a_new_one() {
    let cluster = Cluster::start(&[1, 2]).await;
    let channel = channel_numbered_by(&cluster, 2);
    let reader = cluster.client(1);
    reader.subscribe(&channel);
    settle().await;
    reader.received();
    for data in ["e1", "e2", "e3"] {
        // Published on node 1, numbered by node 2, delivered everywhere at node 2's positions.
        cluster.publish(1, &channel, data);
    }
    settle().await;
    let got = events(&reader.received());
    let first_epoch = epoch(&got[0].1).to_owned();
    let at = |offset: u64| format!("{first_epoch}:{offset}");
    assert_eq!(got, [("e1".into(), at(1)), ("e2".into(), at(2)), ("e3".into(), at(3))]);

    for id in [1, 2] {
        let late = cluster.client(id);
        late.subscribe_from(&channel, Some(&at(1)));
        let received = late.received();
        assert_eq!(events(&received), [("e2".into(), at(2)), ("e3".into(), at(3))], "on node {id}");
        assert_eq!(resume(&received), (true, at(3)), "on node {id}");
    }

    cluster.node(2).kill();
    pass(OPTIONS.lease + OPTIONS.heartbeat).await;
    assert_eq!(cluster.node(1).cluster.sequencer(APP, &channel), None, "node 1 numbers it now");
    cluster.publish(1, &channel, "e4");
    settle().await;
    let got = events(&reader.received());
    assert_eq!(got.len(), 1);
    let new_position = got[0].1.clone();
    assert_ne!(epoch(&new_position), first_epoch, "a new numbering node starts a new epoch");
    assert_eq!(new_position.split_once(':').unwrap().1, "1");

    let stale = cluster.client(1);
    stale.subscribe_from(&channel, Some(&at(3)));
    let received = stale.received();
    assert_eq!(events(&received), [], "nothing replayed across epochs");
    assert_eq!(resume(&received), (false, new_position.clone()));

    cluster.publish(1, &channel, "e5");
    let fresh = cluster.client(1);
    fresh.subscribe_from(&channel, Some(&new_position));
    let received = fresh.received();
    assert_eq!(events(&received).len(), 1);
    assert_eq!(events(&received)[0].0, "e5");
    assert!(resume(&received).0, "exact again within the new epoch");
}

#[tokio::test(start_paused = true)]
async fn a_missed_history_event_restarts_the_history_at_the_gap_until_a_snapshot_fills_it() {
    let cluster = Cluster::start(&[1, 2]).await;
    let channel = channel_numbered_by(&cluster, 2);
    let reader = cluster.client(1);
    reader.subscribe(&channel);
    settle().await;
    reader.received();
    cluster.publish(2, &channel, "e1");
    settle().await;
    let position = events(&reader.received())[0].1.clone();
    let at = |offset: u64| format!("{}:{offset}", epoch(&position));

    // Node 1 loses the event numbered 2, and its request for node 2's state is answered late.
    cluster.bus.set_filter(|d: &Delivery<'_>| match wire::decode(d.message).map(|e| e.body) {
        Ok(Body::Publish { position: Some((_, 2)), .. }) if d.to == 1 => Fate::Drop,
        Ok(Body::Snapshot { .. }) if d.to == 1 => Fate::Hold,
        _ => Fate::Deliver,
    });
    cluster.publish(2, &channel, "e2");
    cluster.publish(2, &channel, "e3");
    settle().await;
    assert_eq!(
        events(&reader.received()),
        [("e3".into(), at(3))],
        "the client sees the hole in the positions"
    );
    assert!(cluster.bus.held() > 0, "node 1 noticed the gap and asked for a snapshot");

    let across = cluster.client(1);
    across.subscribe_from(&channel, Some(&at(1)));
    let received = across.received();
    assert_eq!(events(&received), [], "no replay across the hole");
    assert_eq!(resume(&received), (false, at(3)));
    let after = cluster.client(1);
    after.subscribe_from(&channel, Some(&at(3)));
    assert_eq!(resume(&after.received()), (true, at(3)), "exact from the gap on");

    cluster.bus.clear_filter();
    cluster.bus.release_held();
    settle().await;
    let healed = cluster.client(1);
    healed.subscribe_from(&channel, Some(&at(1)));
    let received = healed.received();
    assert_eq!(
        events(&received),
        [("e2".into(), at(2)), ("e3".into(), at(3))],
        "the snapshot filled the hole"
    );
    assert_eq!(resume(&received), (true, at(3)));
}

/// Known gap, left for its owner: an event published to a history channel while the node that
/// numbers it is dead but its lease has not run out is handed to that node and lost, even for
/// subscribers on the node where it was published (the HTTP API answered 200). Other channels
/// reach local subscribers whatever the bus does.
#[tokio::test(start_paused = true)]
#[ignore = "bug: history events are lost while their numbering node is dead within its lease"]
async fn a_history_event_published_while_its_numbering_node_is_dying_still_reaches_local_subscribers() {
    let cluster = Cluster::start(&[1, 2]).await;
    let got = published_while_the_numbering_node_dies(&cluster, OPTIONS.lease + OPTIONS.heartbeat).await;
    let got: Vec<String> = got.into_iter().map(|(data, _)| data).collect();
    assert_eq!(got, ["during the lease"]);
}

/// On a cluster of nodes 1 and 2: a reader on node 1 of a history channel node 2 would number,
/// node 2 killed, an event published through node 1; what the reader has after `wait`, as
/// `(data, position)`.
async fn published_while_the_numbering_node_dies(cluster: &Cluster, wait: Duration) -> Vec<(String, String)> {
    let channel = channel_numbered_by(cluster, 2);
    let reader = cluster.client(1);
    reader.subscribe(&channel);
    settle().await;
    reader.received();
    cluster.node(2).kill();
    cluster.publish(1, &channel, "during the lease");
    pass(wait).await;
    events(&reader.received())
}

/// The same moment with history in a durable store: no node numbers for the others (the store
/// does), so the publishing node appends and delivers the event itself, and it reaches the
/// subscribers at its position though the node that would have numbered it is dead.
#[tokio::test(start_paused = true)]
async fn with_a_durable_store_a_history_event_published_while_a_node_is_dying_reaches_subscribers() {
    let store: Arc<dyn HistoryStore> = Arc::new(MemoryHistoryStore::new());
    let cluster = Cluster::start_keeping_history(&[1, 2], Some(store)).await;
    let got = published_while_the_numbering_node_dies(&cluster, OPTIONS.heartbeat).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "during the lease");
    assert!(got[0].1.ends_with(":1"), "the store's first position: {got:?}");
}

/// The dashboard's per-node subscriptions: each node's own sockets and every peer's reported
/// share, which add up to the cluster-wide count; a dead peer's share goes with its lease.
#[tokio::test(start_paused = true)]
async fn every_node_knows_each_peers_subscriptions_and_forgets_a_dead_one() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let one = cluster.client(1);
    let two = cluster.client(2);
    let three = cluster.client(3);
    one.subscribe("news");
    two.subscribe("news");
    two.subscribe("sport");
    three.subscribe("sport");
    three.subscribe("weather");
    three.subscribe("alerts");
    settle().await;
    let seen = cluster.node(1).hub().subscriptions_by_node();
    assert_eq!(seen.local, 1);
    assert_eq!(seen.remote.into_iter().collect::<Vec<_>>(), vec![(2, 2), (3, 3)]);
    let total: usize = cluster.node(1).hub().channels("").iter().map(|c| c.subscription_count).sum();
    assert_eq!(total, 6, "the per-node figures add up to the cluster's");

    cluster.node(3).kill();
    pass(OPTIONS.lease + OPTIONS.heartbeat * 2).await;
    let seen = cluster.node(1).hub().subscriptions_by_node();
    assert_eq!((seen.local, seen.remote.into_iter().collect::<Vec<_>>()), (1, vec![(2, 2)]));
}

/// The dashboard's per-node connections and rates: each node reports its own figures on a timer,
/// every peer turns two reports into rates, and a dead peer's figures go with its lease.
#[tokio::test(start_paused = true)]
async fn every_node_hears_each_peers_connections_and_rates_and_forgets_a_dead_one() {
    let cluster = Cluster::start(&[1, 2, 3]).await;
    let _one = cluster.client(1);
    let two: Vec<Client> = (0..2).map(|_| cluster.client(2)).collect();
    let three: Vec<Client> = (0..3).map(|_| cluster.client(3)).collect();
    for client in two.iter().chain(&three) {
        client.subscribe("news");
    }
    // Two reports from every node, with 10 events published on node 2 between them (each
    // reaches 2 subscribers on node 2 and 3 on node 3).
    pass(OPTIONS.load_every).await;
    for n in 0..10 {
        cluster.publish(2, "news", &format!("event {n}"));
    }
    pass(OPTIONS.load_every).await;
    let seen = cluster.node(1).cluster.peer_loads(APP);
    let by_node: Vec<(NodeId, u64)> = seen.iter().map(|l| (l.node, l.connections)).collect();
    assert_eq!(by_node, vec![(2, 2), (3, 3)], "every peer's connections, not node 1's own: {seen:?}");
    let per_sec = OPTIONS.load_every.as_secs_f64();
    assert_eq!(seen[0].events_per_sec, Some(10.0 / per_sec), "{seen:?}");
    assert_eq!(seen[0].messages_per_sec, Some(20.0 / per_sec), "{seen:?}");
    assert_eq!(seen[1].events_per_sec, Some(0.0), "node 3 published nothing: {seen:?}");
    assert_eq!(seen[1].messages_per_sec, Some(30.0 / per_sec), "{seen:?}");
    assert_eq!(received_count(&three[0]), 10);

    cluster.node(3).kill();
    pass(OPTIONS.lease + OPTIONS.heartbeat * 2).await;
    let seen = cluster.node(1).cluster.peer_loads(APP);
    assert_eq!(seen.iter().map(|l| l.node).collect::<Vec<_>>(), vec![2], "{seen:?}");
}

fn received_count(client: &Client) -> usize {
    events(&client.received()).len()
}
