//! Presence across a cluster (cluster.md): the members other nodes hold,
//! as this node applied their records from the stream, beside this node's
//! own `Tally`. A member is listed while any node holds it; `join` and
//! `leave` are told when its first holder comes and its last one goes.
//! Applying is idempotent (a holding that is already so changes nothing),
//! like the store's, which this mirrors after each commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::{ConnId, Event, Hub, Member};

/// Frames for subscribers, once per dialect.
type Frames = Vec<(String, Vec<ConnId>)>;

#[derive(Default)]
pub(super) struct Remote {
    /// Members other nodes hold, per channel, by user.
    held: HashMap<Arc<str>, BTreeMap<Box<str>, Held>>,
    /// The log is unreachable (or this node is catching up): a new
    /// presence subscription is refused with `unavailable`.
    pub(super) cut: bool,
}

struct Held {
    /// The nodes holding the member.
    nodes: Vec<Box<str>>,
    info: Option<Box<str>>,
}

impl Hub {
    /// Cluster mode: presence is what the stream says every node holds.
    pub fn replicate_presence(&mut self) {
        self.remote = Some(Box::default());
    }

    /// Whether presence subscriptions are refused (the log is unreachable).
    pub fn set_presence_cut(&mut self, cut: bool) {
        if let Some(r) = self.remote.as_mut() {
            r.cut = cut;
        }
    }

    /// Members other nodes hold on `ch`, for the presence list.
    pub(super) fn remote_members<'a>(&'a self, ch: &str) -> impl Iterator<Item = Member<'a>> + 'a {
        let held = self.remote.as_ref().and_then(|r| r.held.get(ch));
        held.into_iter().flatten().map(|(user, h)| Member { user, info: h.info.as_deref() })
    }

    /// Whether `user` is a member of `ch` anywhere (others may be told of it).
    fn visible(&self, ch: &str, user: &str) -> bool {
        let mine = self.members.get(ch).and_then(|t| t.get(&Box::from(user))).is_some_and(|e| e.stored);
        mine || self.remote.as_ref().and_then(|r| r.held.get(ch)).is_some_and(|m| m.contains_key(user))
    }

    /// A holding record applied here (committed): `node` (this node when
    /// `own`) holds `user` on `ch`, or the channel's occupancy (`None`),
    /// or no longer (`on` false). Returns `join`/`leave` for the channel's
    /// other subscribers when the member appeared or disappeared.
    #[allow(clippy::too_many_arguments)] // a record's fields
    pub fn applied_held(
        &mut self,
        ch: &str,
        user: Option<&str>,
        own: bool,
        node: &str,
        info: Option<&str>,
        on: bool,
        now: Instant,
    ) -> Frames {
        let Some(user) = user else {
            if own {
                match self.occupancy.get_mut(ch) {
                    Some(t) => _ = t.written(&(), on, true),
                    None if on => self.restore_occupied(ch, now),
                    None => {}
                }
            }
            return Vec::new();
        };
        let was = self.visible(ch, user);
        if own {
            match self.members.get_mut(ch) {
                Some(t) if t.get(&Box::from(user)).is_some() => _ = t.written(&Box::from(user), on, true),
                // Held by this node's previous run: present for the
                // restart grace, then let go through the log.
                _ if on => self.restore_member(ch, user, info, now),
                _ => {}
            }
        } else if let Some(r) = self.remote.as_mut() {
            let channel = r.held.entry(Arc::from(ch)).or_default();
            match (on, channel.get_mut(user)) {
                (true, Some(h)) if !h.nodes.iter().any(|n| **n == *node) => h.nodes.push(node.into()),
                (true, None) => {
                    _ = channel.insert(user.into(), Held { nodes: vec![node.into()], info: info.map(Box::from) })
                }
                (false, Some(h)) => {
                    h.nodes.retain(|n| **n != *node);
                    if h.nodes.is_empty() {
                        channel.remove(user);
                    }
                }
                _ => {}
            }
            if channel.is_empty() {
                r.held.remove(ch);
            }
        }
        self.told(ch, user, was)
    }

    /// `join` or `leave` when `user`'s visibility on `ch` is no longer `was`.
    fn told(&self, ch: &str, user: &str, was: bool) -> Frames {
        match (was, self.visible(ch, user)) {
            (false, true) => {
                let own = self.members.get(ch).and_then(|t| t.get(&Box::from(user))).filter(|e| e.stored);
                let info = match own {
                    Some(e) => e.info.as_deref(),
                    None => self.remote_members(ch).find(|m| m.user == user).and_then(|m| m.info),
                };
                self.broadcast(ch, user, &Event::Joined { ch, member: Member { user, info } })
            }
            (true, false) => self.broadcast(ch, user, &Event::Left { ch, user }),
            _ => Vec::new(),
        }
    }

    /// Every holding of `node` released (it fell silent; `own`: this node
    /// was thought silent, so what it still holds is published again).
    pub fn applied_gone(&mut self, node: &str, own: bool, now: Instant) -> Frames {
        let mut gone: Vec<(Arc<str>, Box<str>)> = Vec::new();
        if own {
            for (ch, tally) in self.members.iter_mut() {
                for (user, e) in tally.entries_mut().filter(|(_, e)| e.stored) {
                    gone.push((ch.clone(), user.clone()));
                    e.stored = false;
                    if e.conns == 0 {
                        e.until = None; // wanted by nobody now: forgotten
                    }
                }
            }
            for (_, e) in self.occupancy.values_mut().flat_map(|t| t.entries_mut()) {
                e.stored = false;
                if e.conns == 0 {
                    e.until = None;
                }
            }
            self.next_grace = Some(now);
        } else if let Some(r) = self.remote.as_mut() {
            for (ch, channel) in r.held.iter_mut() {
                channel.retain(|user, h| {
                    h.nodes.retain(|n| **n != *node);
                    if h.nodes.is_empty() {
                        gone.push((ch.clone(), user.clone()));
                    }
                    !h.nodes.is_empty()
                });
            }
            r.held.retain(|_, channel| !channel.is_empty());
        }
        let mut frames = Vec::new();
        for (ch, user) in gone {
            frames.extend(self.told(&ch, &user, true));
        }
        frames
    }
}
