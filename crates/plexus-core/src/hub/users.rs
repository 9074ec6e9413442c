//! Signed-in users on the hub: server-to-user delivery, termination and watchlists, over the
//! [`UserRegistry`](super::user_registry::UserRegistry).

use std::sync::Arc;

use bytes::Bytes;
use plexus_protocol::codec::{self, Data, ServerEvent};
use plexus_protocol::{CloseCode, SocketId};

use crate::cluster::{NodeId, Update};

use super::fanout::EventFrames;
use super::*;

/// `pusher_internal:watchlist_events` with one online or offline entry.
pub(super) fn watchlist_frame(online: &[&str], offline: &[&str]) -> Bytes {
    let list = |ids: &[&str]| ids.iter().map(|id| codec::json_str(id)).collect::<Vec<_>>().join(",");
    let mut events = Vec::new();
    if !online.is_empty() {
        events.push(format!("{{\"name\":\"online\",\"user_ids\":[{}]}}", list(online)));
    }
    if !offline.is_empty() {
        events.push(format!("{{\"name\":\"offline\",\"user_ids\":[{}]}}", list(offline)));
    }
    let data = format!("{{\"events\":[{}]}}", events.join(","));
    ServerEvent::new("pusher_internal:watchlist_events").data(Data::Str(&data)).to_frame()
}

impl AppHub {
    /// Records a sign-in. Tells watchers when the user comes online, and tells this connection
    /// which of its watched users are online and offline now.
    pub fn sign_in(&self, connection: &Arc<Connection>, user_id: &str, watchlist: &[String]) {
        let mut users = lock(&self.users);
        let came = users.sign_in(user_id, connection, watchlist);
        if came.here {
            self.announce(Update::User { user_id, online: true });
        }
        if came.cluster {
            let frame = watchlist_frame(&[user_id], &[]);
            let mut frames = EventFrames::new(&frame);
            for watcher in users.watchers_of(user_id) {
                frames.push_to(watcher);
            }
        }
        if !watchlist.is_empty() {
            let (online, offline): (Vec<&str>, Vec<&str>) =
                watchlist.iter().map(String::as_str).partition(|id| users.is_online(id));
            connection.outbound.push(watchlist_frame(&online, &offline));
        }
    }

    /// Forgets a signed-in connection; tells watchers when its user goes offline.
    pub fn sign_out(&self, socket_id: SocketId, user_id: &str, watchlist: &[String]) {
        let mut users = lock(&self.users);
        let went = users.sign_out(user_id, socket_id, watchlist);
        if went.here {
            self.announce(Update::User { user_id, online: false });
        }
        if went.cluster {
            let frame = watchlist_frame(&[], &[user_id]);
            let mut frames = EventFrames::new(&frame);
            for watcher in users.watchers_of(user_id) {
                frames.push_to(watcher);
            }
        }
    }

    /// Records that another node has `user_id` signed in (`online`) or no longer; watchers here
    /// hear of it when that changes the user's status in the cluster.
    pub fn set_remote_user(&self, node: NodeId, user_id: &str, online: bool) {
        let mut users = lock(&self.users);
        if users.set_remote(node, user_id, online) {
            let frame =
                if online { watchlist_frame(&[user_id], &[]) } else { watchlist_frame(&[], &[user_id]) };
            let mut frames = EventFrames::new(&frame);
            for watcher in users.watchers_of(user_id) {
                frames.push_to(watcher);
            }
        }
    }

    /// Users signed in on this node, for a peer that syncs.
    pub fn local_users(&self) -> Vec<String> {
        lock(&self.users).local_users()
    }

    /// Replaces the users `node` reports signed in (a snapshot it sent, or none when it is gone).
    pub fn replace_remote_users(&self, node: NodeId, online: &[String]) {
        let held = lock(&self.users).remote_users_of(node);
        for user in held.iter().filter(|user| !online.contains(user)) {
            self.set_remote_user(node, user, false);
        }
        for user in online {
            self.set_remote_user(node, user, true);
        }
    }

    /// Delivers a frame to every connection signed in as `user_id`; returns how many.
    pub fn send_to_user(&self, user_id: &str, frame: &Bytes) -> usize {
        self.metrics.events_published.increment(1);
        self.announce(Update::ToUser { user_id, frame });
        self.deliver_to_user(user_id, frame)
    }

    /// Delivers a frame to this node's connections of `user_id` only.
    pub fn deliver_to_user(&self, user_id: &str, frame: &Bytes) -> usize {
        let users = lock(&self.users);
        let connections = users.connections_of(user_id);
        let mut frames = EventFrames::new(frame);
        for connection in connections {
            frames.push_to(connection);
        }
        self.metrics.frames_delivered.increment(connections.len() as u64);
        connections.len()
    }

    /// Closes every connection signed in as `user_id` with 4009; returns how many.
    pub fn terminate_user(&self, user_id: &str) -> usize {
        self.announce(Update::Terminate { user_id });
        self.terminate_user_here(user_id)
    }

    /// Closes this node's connections of `user_id` only.
    pub fn terminate_user_here(&self, user_id: &str) -> usize {
        let users = lock(&self.users);
        let connections = users.connections_of(user_id);
        for connection in connections {
            connection.outbound.close(CloseCode::Unauthorized, "Connection terminated by the app");
        }
        connections.len()
    }
}
