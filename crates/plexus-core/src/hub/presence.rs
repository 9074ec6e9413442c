//! Who is in a presence channel.
//!
//! Membership is per **user**: a user with three tabs is one member, added when the first socket
//! joins and removed when the last one leaves. In a cluster a user may also be held by other
//! nodes; a member stays until neither this node's sockets nor any other node holds the user, so
//! member events fire once per user per cluster. This is a plain structure with no I/O: callers
//! ask it whether a change alters membership and emit the events themselves.

use std::collections::HashMap;

use plexus_protocol::codec::json_str;

#[derive(Debug)]
struct Member {
    /// `user_info` as raw JSON text, from whoever brought the user in first.
    info: Option<Box<str>>,
    /// This node's sockets of the user.
    sockets: u32,
    /// Other nodes that report the user in this channel.
    nodes: u32,
}

/// What a local join changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The user was not a member anywhere in the cluster before.
    pub new_member: bool,
    /// This is the user's first socket on this node (other nodes need to hear of it).
    pub first_local: bool,
}

/// What a local leave changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// The user is no longer a member anywhere in the cluster.
    pub removed: bool,
    /// That was the user's last socket on this node.
    pub last_local: bool,
}

/// Members of one presence channel.
#[derive(Debug, Default)]
pub struct Presence {
    members: HashMap<Box<str>, Member>,
}

impl Presence {
    /// Counts one more local socket for `user_id`.
    pub fn join(&mut self, user_id: &str, info: Option<&str>) -> Joined {
        match self.members.get_mut(user_id) {
            Some(member) => {
                member.sockets += 1;
                Joined { new_member: false, first_local: member.sockets == 1 }
            }
            None => {
                let member = Member { info: info.map(Into::into), sockets: 1, nodes: 0 };
                self.members.insert(user_id.into(), member);
                Joined { new_member: true, first_local: true }
            }
        }
    }

    /// Counts one local socket fewer for `user_id` (nothing changes if it had none).
    pub fn leave(&mut self, user_id: &str) -> Left {
        let Some(member) = self.members.get_mut(user_id).filter(|m| m.sockets > 0) else {
            return Left { removed: false, last_local: false };
        };
        member.sockets -= 1;
        let last_local = member.sockets == 0;
        let removed = last_local && member.nodes == 0;
        if removed {
            self.members.remove(user_id);
        }
        Left { removed, last_local }
    }

    /// Another node now holds `user_id`; true when that makes the user a new member. Callers
    /// report each (node, user) pair once.
    pub fn remote_join(&mut self, user_id: &str, info: Option<&str>) -> bool {
        match self.members.get_mut(user_id) {
            Some(member) => {
                member.nodes += 1;
                false
            }
            None => {
                let member = Member { info: info.map(Into::into), sockets: 0, nodes: 1 };
                self.members.insert(user_id.into(), member);
                true
            }
        }
    }

    /// Another node no longer holds `user_id`; true when the user is gone from the cluster.
    pub fn remote_leave(&mut self, user_id: &str) -> bool {
        let Some(member) = self.members.get_mut(user_id).filter(|m| m.nodes > 0) else {
            return false;
        };
        member.nodes -= 1;
        let removed = member.nodes == 0 && member.sockets == 0;
        if removed {
            self.members.remove(user_id);
        }
        removed
    }

    pub fn contains(&self, user_id: &str) -> bool {
        self.members.contains_key(user_id)
    }

    /// Distinct users.
    pub fn count(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn user_ids(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(|k| &**k)
    }

    /// Users with sockets on this node, with their `user_info`: what this node tells its peers.
    pub fn local_members(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.members.iter().filter(|(_, m)| m.sockets > 0).map(|(id, m)| (&**id, m.info.as_deref()))
    }

    /// `{"presence":{"ids":[…],"hash":{id: info},"count":n}}`, the data of a presence
    /// `subscription_succeeded`. Every id appears in `hash` (null when the user has no info).
    pub fn snapshot_json(&self) -> String {
        let mut ids = String::from("[");
        let mut hash = String::from("{");
        for (i, (id, member)) in self.members.iter().enumerate() {
            if i > 0 {
                ids.push(',');
                hash.push(',');
            }
            let id = json_str(id);
            ids.push_str(&id);
            hash.push_str(&id);
            hash.push(':');
            hash.push_str(member.info.as_deref().unwrap_or("null"));
        }
        ids.push(']');
        hash.push('}');
        format!("{{\"presence\":{{\"ids\":{ids},\"hash\":{hash},\"count\":{}}}}}", self.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_removed_only_after_last_socket_of_user_leaves() {
        let mut p = Presence::default();
        assert!(p.join("42", Some(r#"{"name":"Ann"}"#)).new_member);
        assert!(!p.join("42", Some(r#"{"name":"Ann"}"#)).new_member);
        assert_eq!(p.count(), 1);
        assert!(!p.leave("42").removed);
        assert!(p.contains("42"));
        assert!(p.leave("42").removed);
        assert_eq!(p.count(), 0);
        assert!(!p.leave("42").removed, "leaving twice is not a second removal");
    }

    #[test]
    fn a_user_held_by_another_node_stays_until_both_let_go() {
        let mut p = Presence::default();
        assert!(p.remote_join("7", Some("{}")), "first sight anywhere is a new member");
        let joined = p.join("7", Some("{}"));
        assert_eq!(joined, Joined { new_member: false, first_local: true });
        assert_eq!(p.local_members().map(|(id, _)| id).collect::<Vec<_>>(), ["7"]);
        assert_eq!(p.leave("7"), Left { removed: false, last_local: true }, "the other node still holds 7");
        assert_eq!(p.local_members().count(), 0);
        assert!(p.contains("7"));
        assert!(p.remote_leave("7"));
        assert!(p.is_empty());
        assert!(!p.remote_leave("7"), "a second report of the same departure changes nothing");
    }

    #[test]
    fn two_nodes_holding_a_user_count_as_one_member() {
        let mut p = Presence::default();
        assert!(p.remote_join("u", None));
        assert!(!p.remote_join("u", None));
        assert_eq!(p.count(), 1);
        assert!(!p.remote_leave("u"));
        assert!(p.remote_leave("u"));
    }

    #[test]
    fn snapshot_lists_every_id_in_hash() {
        let mut p = Presence::default();
        p.join("1", Some(r#"{"n":1}"#));
        p.remote_join("2", None);
        let v: serde_json::Value = serde_json::from_str(&p.snapshot_json()).unwrap();
        let presence = &v["presence"];
        assert_eq!(presence["count"], 2);
        let mut ids: Vec<_> =
            presence["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(presence["hash"]["1"]["n"], 1);
        assert!(presence["hash"]["2"].is_null());
        assert!(presence["hash"].as_object().unwrap().contains_key("2"));
    }

    #[test]
    fn empty_snapshot_is_well_formed() {
        let v: serde_json::Value = serde_json::from_str(&Presence::default().snapshot_json()).unwrap();
        assert_eq!(v["presence"]["count"], 0);
        assert_eq!(v["presence"]["ids"].as_array().unwrap().len(), 0);
    }
}
