//! Presence across a cluster on the loop (cluster.md): this node's
//! presence and occupancy changes go to the stream as records (on
//! `roost.<name>.p.<channel>`) instead of to the writer; every record the
//! stream delivers is applied by the writer in stream order (with the
//! webhook event it causes, when this node published it) and then told to
//! the hub, which tells the subscribers here `join` or `leave`.
//!
//! Every node says it is alive once a second; the members of a node not
//! heard for the presence grace + 5 s are removed through the stream, with
//! a `Gone` record every node that notices publishes under the same
//! `Nats-Msg-Id` (and applying it twice changes nothing).

use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::cluster::js::{self, Presence};
use crate::hub::Change;
use crate::store::{Holding, HOOK_CHANNEL_OCCUPIED, HOOK_CHANNEL_VACATED, HOOK_MEMBER_ADDED, HOOK_MEMBER_REMOVED};

/// A node not heard for the presence grace plus this is gone.
pub(crate) const SILENCE_MARGIN: Duration = Duration::from_secs(5);
/// A `Gone` record not yet applied is published again this much later.
const GONE_AGAIN: Duration = Duration::from_secs(1);

/// A node whose holdings this node has applied.
struct Watch {
    heard: Instant,
    /// The stream sequence of its last record applied here (the `Gone`
    /// record's id, so every node that notices names it alike).
    last_seq: u64,
    /// When this node last published its `Gone`.
    asked: Option<Instant>,
}

pub(crate) struct PresenceSide {
    /// This node's name in the stream (kept in the data folder).
    pub(super) node: String,
    /// Records sent, waiting for their PubAck: this node's change, or
    /// `None` for a `Gone`.
    pub(super) records: HashMap<u64, Option<Change>>,
    watched: HashMap<String, Watch>,
}

/// This node's name in presence records, kept in `<data>/cluster-node` so
/// a restart is the same node (and applies its own earlier records as its
/// own); a backup copy (the LMDB file alone) does not carry it, so a node
/// seeded from a peer's backup gets its own.
pub(crate) fn node_id(data: &Path) -> String {
    let path = data.join("cluster-node");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if js::valid_node(text.trim()) {
            return text.trim().to_string();
        }
    }
    let node = crate::cluster::node_name();
    if let Err(e) = std::fs::write(&path, format!("{node}\n")) {
        log::warn!("cannot keep this node's name in {} ({e}); a restart will be another node", path.display());
    }
    node
}

impl PresenceSide {
    pub(crate) fn new(node: String) -> PresenceSide {
        PresenceSide { node, records: HashMap::new(), watched: HashMap::new() }
    }

    /// A node said it is alive.
    pub(super) fn heard(&mut self, node: &str, now: Instant) {
        if let Some(w) = self.watched.get_mut(node) {
            w.heard = now;
        }
    }

    /// The link is back: nobody was heard while it was down, so nobody is
    /// judged on that time.
    pub(super) fn reconnected(&mut self, now: Instant) {
        for w in self.watched.values_mut() {
            w.heard = now;
        }
    }

    /// The writer's item for a presence record of the stream. Only the
    /// node that published it writes the webhook events it causes.
    pub(super) fn write(&self, record: Presence, stream_seq: u64, after: u64, cfg: &Config) -> Write {
        let origin = match &record {
            Presence::Held(h) => &h.node,
            Presence::Gone { by, .. } => by,
        };
        let mut hooks = 0;
        if *origin == self.node {
            for (bit, name) in [
                (HOOK_MEMBER_ADDED, "member_added"),
                (HOOK_MEMBER_REMOVED, "member_removed"),
                (HOOK_CHANNEL_OCCUPIED, "channel_occupied"),
                (HOOK_CHANNEL_VACATED, "channel_vacated"),
            ] {
                if cfg.webhook_sends(name) {
                    hooks |= bit;
                }
            }
        }
        match record {
            Presence::Held(hold) => Write::Held { hold, stream_seq, after, hooks },
            Presence::Gone { node, .. } => Write::Gone { node, stream_seq, after, hooks },
        }
    }
}

/// This node's change as its record.
fn holding(change: &Change, node: &str) -> Holding {
    match change {
        Change::Member { ch, user, info, present } => Holding {
            ch: ch.to_string(),
            user: Some(user.to_string()),
            node: node.into(),
            info: info.as_deref().map(str::to_string),
            on: *present,
        },
        Change::Occupancy { ch, occupied } => {
            Holding { ch: ch.to_string(), user: None, node: node.into(), info: None, on: *occupied }
        }
    }
}

impl Server {
    /// Cluster mode: the hub's presence and occupancy changes go to the
    /// stream. One that cannot (the log is unreachable) is asked for again
    /// by the hub a second later.
    pub(in crate::server) fn publish_changes(&mut self) {
        for change in self.hub.take_changes() {
            let Some(c) = self.cluster.as_mut() else { return };
            let token = c.take_token();
            let record = Presence::Held(holding(&change, &c.presence.node));
            if c.ready() && c.client.try_presence(token, record, None).is_ok() {
                c.presence.records.insert(token, Some(change));
            } else {
                self.hub.on_written(&change, false, self.now);
            }
        }
    }

    /// JetStream answered a record of ours: in the log (it is applied when
    /// the stream delivers it), or not (asked for again).
    pub(super) fn on_presence_published(&mut self, change: Option<Change>, ok: bool, now: Instant) {
        if let (Some(change), false) = (change, ok) {
            self.hub.on_written(&change, false, now);
        }
    }

    /// A presence record committed here: the hub hears it, and tells the
    /// subscribers here of a member who appeared or disappeared.
    pub(in crate::server) fn on_presence_applied(&mut self, write: Write, outcome: &Outcome, now: Instant) {
        let Some(c) = self.cluster.as_mut() else { return };
        let frames = match write {
            Write::Held { hold, stream_seq, .. } => {
                if !c.took(stream_seq, outcome) {
                    return;
                }
                let own = hold.node == c.presence.node;
                if !own {
                    let w = c.presence.watched.entry(hold.node.clone()).or_insert(Watch {
                        heard: now,
                        last_seq: 0,
                        asked: None,
                    });
                    w.last_seq = stream_seq;
                }
                let (user, info) = (hold.user.as_deref(), hold.info.as_deref());
                self.hub.applied_held(&hold.ch, user, own, &hold.node, info, hold.on, now)
            }
            Write::Gone { node, stream_seq, .. } => {
                if !c.took(stream_seq, outcome) {
                    return;
                }
                c.presence.watched.remove(&node);
                let own = node == c.presence.node;
                if own {
                    log::warn!("cluster: this node was thought silent and its members removed; they join again");
                }
                self.hub.applied_gone(&node, own, now)
            }
            _ => return,
        };
        for (text, to) in frames {
            let frame = Frame::from(text);
            for conn in to {
                self.send(conn, frame.clone());
            }
        }
    }

    /// Each turn: presence subscriptions wait for the log, and a node
    /// silent for the presence grace + 5 s has its holdings removed.
    pub(super) fn watch_presence(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_mut() else { return };
        self.hub.set_presence_cut(!c.ready());
        if !c.ready() {
            return;
        }
        let silence = self.cfg.presence_grace + SILENCE_MARGIN;
        let mut silent = Vec::new();
        let presence = &mut c.presence;
        for (node, w) in presence.watched.iter_mut() {
            let due = now.duration_since(w.heard) >= silence && w.asked.is_none_or(|t| now >= t + GONE_AGAIN);
            if due && *node != presence.node {
                w.asked = Some(now);
                silent.push((node.clone(), w.last_seq));
            }
        }
        for (node, last_seq) in silent {
            log::warn!("cluster: node {node} silent for {} s; removing its members", silence.as_secs());
            let token = c.take_token();
            let id = js::gone_id(&node, last_seq);
            if c.client.try_presence(token, Presence::Gone { node, by: c.presence.node.clone() }, Some(id)).is_ok() {
                c.presence.records.insert(token, None);
            }
        }
    }

    /// Cluster mode at start: the holdings the store has applied. This
    /// node's own come back for the restart grace (a member who reconnects
    /// in time is never reported gone); other nodes' are listed, and
    /// removed if their node is not heard from.
    pub(in crate::server) fn restore_held(&mut self, now: Instant) {
        self.hub.replicate_presence();
        let Some(c) = self.cluster.as_mut() else { return };
        let mut held = Vec::new();
        let read = self.store.held(|ch, user, node, info| {
            let info = Some(info).filter(|i| !i.is_empty());
            held.push((ch.to_string(), user.map(str::to_string), node.to_string(), info.map(str::to_string)));
        });
        if let Err(e) = read {
            log::error!("reading the stored presence members failed ({e}); they are not restored");
        }
        for (ch, user, node, info) in held {
            if node == c.presence.node {
                match &user {
                    Some(user) => self.hub.restore_member(&ch, user, info.as_deref(), now),
                    None => self.hub.restore_occupied(&ch, now),
                }
                continue;
            }
            let w = Watch { heard: now, last_seq: 0, asked: None };
            c.presence.watched.entry(node.clone()).or_insert(w);
            self.hub.applied_held(&ch, user.as_deref(), false, &node, info.as_deref(), true, now);
        }
    }
}
