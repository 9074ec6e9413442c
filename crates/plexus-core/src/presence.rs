//! Who is in a presence channel.
//!
//! Membership is per **user**: a user with three tabs is one member, added when the first socket
//! joins and removed when the last one leaves. This is a plain structure with no I/O: callers ask
//! it whether a join or leave changes membership and emit the events themselves.

use std::collections::HashMap;

use plexus_protocol::codec::json_str;

#[derive(Debug)]
struct Member {
    /// `user_info` as raw JSON text, from the user's first socket.
    info: Option<Box<str>>,
    sockets: u32,
}

/// Members of one presence channel.
#[derive(Debug, Default)]
pub struct Presence {
    members: HashMap<Box<str>, Member>,
}

impl Presence {
    /// Counts one more socket for `user_id`; true when it is the user's first (a new member).
    pub fn join(&mut self, user_id: &str, info: Option<&str>) -> bool {
        match self.members.get_mut(user_id) {
            Some(member) => {
                member.sockets += 1;
                false
            }
            None => {
                self.members.insert(user_id.into(), Member { info: info.map(Into::into), sockets: 1 });
                true
            }
        }
    }

    /// Counts one socket fewer for `user_id`; true when it was the user's last (member removed).
    pub fn leave(&mut self, user_id: &str) -> bool {
        match self.members.get_mut(user_id) {
            Some(member) if member.sockets > 1 => {
                member.sockets -= 1;
                false
            }
            Some(_) => {
                self.members.remove(user_id);
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, user_id: &str) -> bool {
        self.members.contains_key(user_id)
    }

    /// Distinct users.
    pub fn count(&self) -> usize {
        self.members.len()
    }

    pub fn user_ids(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(|k| &**k)
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
        assert!(p.join("42", Some(r#"{"name":"Ann"}"#)));
        assert!(!p.join("42", Some(r#"{"name":"Ann"}"#)));
        assert_eq!(p.count(), 1);
        assert!(!p.leave("42"));
        assert!(p.contains("42"));
        assert!(p.leave("42"));
        assert_eq!(p.count(), 0);
        assert!(!p.leave("42"), "leaving twice is not a second removal");
    }

    #[test]
    fn snapshot_lists_every_id_in_hash() {
        let mut p = Presence::default();
        p.join("1", Some(r#"{"n":1}"#));
        p.join("2", None);
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
