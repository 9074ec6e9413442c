//! Signed-in users: which connections belong to which user, and who watches whom.
//!
//! A user is **online** while at least one of their connections is signed in; the watchlist
//! events fire on the first connection in and the last one out, like presence membership but
//! across the whole app. A plain structure: the hub holds it under a lock and turns the returned
//! transitions into frames.

use std::collections::HashMap;
use std::sync::Arc;

use plexus_protocol::SocketId;

use crate::hub::{shrink_if_sparse, Connection};

/// Signed-in connections and watchers of one app.
#[derive(Debug, Default)]
pub struct UserRegistry {
    signed_in: HashMap<Box<str>, Vec<Arc<Connection>>>,
    /// Watched user id → connections whose user watches them.
    watchers: HashMap<Box<str>, Vec<Arc<Connection>>>,
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
    /// Records `connection` as signed in as `user_id`, watching `watchlist`. Returns true when
    /// the user just came online (first connection).
    pub fn sign_in(&mut self, user_id: &str, connection: &Arc<Connection>, watchlist: &[String]) -> bool {
        let sockets = self.signed_in.entry(user_id.into()).or_default();
        let came_online = sockets.is_empty();
        if !sockets.iter().any(|c| c.socket_id == connection.socket_id) {
            sockets.push(connection.clone());
        }
        for watched in watchlist {
            let watchers = self.watchers.entry(watched.as_str().into()).or_default();
            if !watchers.iter().any(|c| c.socket_id == connection.socket_id) {
                watchers.push(connection.clone());
            }
        }
        came_online
    }

    /// Forgets a signed-in connection. Returns true when the user just went offline.
    pub fn sign_out(&mut self, user_id: &str, socket_id: SocketId, watchlist: &[String]) -> bool {
        for watched in watchlist {
            if let Some(watchers) = self.watchers.get_mut(watched.as_str()) {
                remove_socket(watchers, socket_id);
                if watchers.is_empty() {
                    self.watchers.remove(watched.as_str());
                    shrink_if_sparse(&mut self.watchers);
                }
            }
        }
        let Some(sockets) = self.signed_in.get_mut(user_id) else { return false };
        if !remove_socket(sockets, socket_id) {
            return false;
        }
        if sockets.is_empty() {
            self.signed_in.remove(user_id);
            shrink_if_sparse(&mut self.signed_in);
            return true;
        }
        false
    }

    pub fn is_online(&self, user_id: &str) -> bool {
        self.signed_in.contains_key(user_id)
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
        Arc::new(Connection { socket_id: SocketId::from_random(n, n), outbound: Outbound::new(1024) })
    }

    #[test]
    fn online_on_first_connection_offline_after_last() {
        let mut users = UserRegistry::default();
        let (a, b) = (conn(1), conn(2));
        assert!(users.sign_in("u", &a, &[]));
        assert!(!users.sign_in("u", &b, &[]));
        assert!(!users.sign_in("u", &b, &[]), "signing in again is not a new connection");
        assert_eq!(users.connections_of("u").len(), 2);
        assert!(!users.sign_out("u", a.socket_id, &[]));
        assert!(users.is_online("u"));
        assert!(users.sign_out("u", b.socket_id, &[]));
        assert!(!users.is_online("u"));
        assert!(!users.sign_out("u", b.socket_id, &[]));
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
