//! Signed-in users: which connections belong to which user, and who watches whom.
//!
//! A user is **online** while at least one of their connections is signed in, on this node or
//! (in a cluster) on another; the watchlist events fire on the first connection in and the last
//! one out anywhere, like presence membership but across the whole app. A plain structure: the
//! hub holds it under a lock and turns the returned transitions into frames and announcements.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use plexus_protocol::SocketId;

use super::{shrink_if_sparse, Connection};
use crate::cluster::NodeId;

/// Signed-in connections and watchers of one app.
#[derive(Debug, Default)]
pub struct UserRegistry {
    signed_in: HashMap<Box<str>, Vec<Arc<Connection>>>,
    /// Watched user id → connections whose user watches them.
    watchers: HashMap<Box<str>, Vec<Arc<Connection>>>,
    /// User id → other nodes where the user is signed in.
    remote: HashMap<Box<str>, HashSet<NodeId>>,
}

/// What a local sign-in or sign-out changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transition {
    /// The user's first connection on this node came, or its last went (peers need to know).
    pub here: bool,
    /// The user came online, or went offline, in the whole cluster (watchers need to know).
    pub cluster: bool,
}

fn remove_socket(list: &mut Vec<Arc<Connection>>, socket_id: SocketId) -> bool {
    match list.iter().position(|c| c.socket_id == socket_id) {
        Some(index) => {
            list.swap_remove(index);
            true
        }
        None => false,
    }
}

impl UserRegistry {
    /// Records `connection` as signed in as `user_id`, watching `watchlist`.
    pub fn sign_in(
        &mut self,
        user_id: &str,
        connection: &Arc<Connection>,
        watchlist: &[String],
    ) -> Transition {
        let elsewhere = self.remote.contains_key(user_id);
        let sockets = self.signed_in.entry(user_id.into()).or_default();
        let first_here = sockets.is_empty();
        if !sockets.iter().any(|c| c.socket_id == connection.socket_id) {
            sockets.push(connection.clone());
        }
        for watched in watchlist {
            let watchers = self.watchers.entry(watched.as_str().into()).or_default();
            if !watchers.iter().any(|c| c.socket_id == connection.socket_id) {
                watchers.push(connection.clone());
            }
        }
        Transition { here: first_here, cluster: first_here && !elsewhere }
    }

    /// Forgets a signed-in connection.
    pub fn sign_out(&mut self, user_id: &str, socket_id: SocketId, watchlist: &[String]) -> Transition {
        for watched in watchlist {
            if let Some(watchers) = self.watchers.get_mut(watched.as_str()) {
                remove_socket(watchers, socket_id);
                if watchers.is_empty() {
                    self.watchers.remove(watched.as_str());
                    shrink_if_sparse(&mut self.watchers);
                }
            }
        }
        let Some(sockets) = self.signed_in.get_mut(user_id) else { return Transition::default() };
        if !remove_socket(sockets, socket_id) {
            return Transition::default();
        }
        if sockets.is_empty() {
            self.signed_in.remove(user_id);
            shrink_if_sparse(&mut self.signed_in);
            return Transition { here: true, cluster: !self.remote.contains_key(user_id) };
        }
        Transition::default()
    }

    /// Another node reports `user_id` signed in there (`online`) or no longer; returns true when
    /// that brings the user online or takes them offline in the cluster.
    pub fn set_remote(&mut self, node: NodeId, user_id: &str, online: bool) -> bool {
        let here = self.signed_in.contains_key(user_id);
        if online {
            let nodes = self.remote.entry(user_id.into()).or_default();
            nodes.insert(node) && nodes.len() == 1 && !here
        } else {
            let Some(nodes) = self.remote.get_mut(user_id) else { return false };
            if !nodes.remove(&node) || !nodes.is_empty() {
                return false;
            }
            self.remote.remove(user_id);
            shrink_if_sparse(&mut self.remote);
            !here
        }
    }

    /// Users `node` reports signed in.
    pub fn remote_users_of(&self, node: NodeId) -> Vec<String> {
        self.remote.iter().filter(|(_, nodes)| nodes.contains(&node)).map(|(id, _)| id.to_string()).collect()
    }

    /// Users signed in on this node.
    pub fn local_users(&self) -> Vec<String> {
        self.signed_in.keys().map(|id| id.to_string()).collect()
    }

    pub fn is_online(&self, user_id: &str) -> bool {
        self.signed_in.contains_key(user_id) || self.remote.contains_key(user_id)
    }

    /// Connections signed in as `user_id`.
    pub fn connections_of(&self, user_id: &str) -> &[Arc<Connection>] {
        self.signed_in.get(user_id).map_or(&[], Vec::as_slice)
    }

    /// Connections watching `user_id`.
    pub fn watchers_of(&self, user_id: &str) -> &[Arc<Connection>] {
        self.watchers.get(user_id).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Outbound;

    fn conn(n: u64) -> Arc<Connection> {
        Arc::new(Connection::new(SocketId::from_random(n, n), Outbound::new(1024)))
    }

    #[test]
    fn online_on_first_connection_offline_after_last() {
        let mut users = UserRegistry::default();
        let (a, b) = (conn(1), conn(2));
        assert!(users.sign_in("u", &a, &[]).cluster);
        assert!(!users.sign_in("u", &b, &[]).cluster);
        assert!(!users.sign_in("u", &b, &[]).here, "signing in again is not a new connection");
        assert_eq!(users.connections_of("u").len(), 2);
        assert!(!users.sign_out("u", a.socket_id, &[]).cluster);
        assert!(users.is_online("u"));
        assert!(users.sign_out("u", b.socket_id, &[]).cluster);
        assert!(!users.is_online("u"));
        assert!(!users.sign_out("u", b.socket_id, &[]).here);
    }

    #[test]
    fn a_user_online_on_another_node_is_online_here_until_both_sign_out() {
        let mut users = UserRegistry::default();
        assert!(users.set_remote(9, "u", true), "first sighting anywhere brings the user online");
        assert!(!users.set_remote(9, "u", true), "a repeated report changes nothing");
        let a = conn(1);
        assert_eq!(users.sign_in("u", &a, &[]), Transition { here: true, cluster: false });
        assert_eq!(users.sign_out("u", a.socket_id, &[]), Transition { here: true, cluster: false });
        assert!(users.is_online("u"));
        assert_eq!(users.remote_users_of(9), ["u"]);
        assert!(users.set_remote(9, "u", false), "the last node letting go takes the user offline");
        assert!(!users.is_online("u"));
    }

    #[test]
    fn watchers_are_tracked_per_connection() {
        let mut users = UserRegistry::default();
        let watcher = conn(1);
        users.sign_in("w", &watcher, &["7".into(), "8".into()]);
        assert_eq!(users.watchers_of("7").len(), 1);
        assert_eq!(users.watchers_of("9").len(), 0);
        users.sign_out("w", watcher.socket_id, &["7".into(), "8".into()]);
        assert_eq!(users.watchers_of("7").len(), 0);
    }
}
