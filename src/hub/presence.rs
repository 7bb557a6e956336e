//! Presence (spec §7) and occupancy (spec §9): who is on which channel, as
//! the store has it, with the grace that keeps a page reload from being
//! reported as a leave and a join.
//!
//! One `Tally` counts, per key (a user on a presence channel, or a channel
//! for occupancy), the connections that hold it now, and remembers what the
//! store holds. The two can differ: a user's first connection arrived but
//! its row is not committed yet, or its last connection went and the grace
//! has not run out. `Tally::due` finds the keys whose wanted state differs
//! from the stored one and hands out one write for each; `Tally::written`
//! takes the commit's result. Others hear `join` and `leave` only after the
//! commit, so a crash never leaves anyone told of a member the store does
//! not hold, and a restart (`Tally::restore`) brings back every stored key
//! with the restart grace: a member who reconnects in time is never
//! reported as gone.
//!
//! No clock, no store: time comes in, writes go out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Action, ConnId, Door, ErrCode, Event, Hub, Member};

/// The longest user on a presence channel, and the largest `info` (spec §7).
pub const MAX_USER_BYTES: usize = 128;
pub const MAX_INFO_BYTES: usize = 1024;
/// A write that failed is asked for again this much later.
const RETRY: Duration = Duration::from_secs(1);

/// A presence or occupancy write for the server to commit, with the webhook
/// event it causes, in one transaction; `Hub::on_written` takes the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Member { ch: Arc<str>, user: Box<str>, info: Option<Box<str>>, present: bool },
    Occupancy { ch: Arc<str>, occupied: bool },
}

impl Hub {
    /// `conn` subscribes `ch` anew: it counts for the channel's members (a
    /// presence channel) and its occupancy. Refused, changing nothing, when
    /// the token cannot be a member or the channel is full.
    pub(super) fn arrive(&mut self, conn: ConnId, ch: &str, now: Instant) -> Result<(), (ErrCode, &'static str)> {
        let Some(peer) = self.peers.get(&conn) else { return Ok(()) };
        let name = self.channel_name(ch);
        // The channel's `channel_occupied` goes before its first `member_added` (spec §9: in order per channel).
        let mut member = None;
        if self.rules.is_presence(ch) {
            if self.remote.as_ref().is_some_and(|r| r.cut) {
                return Err((
                    ErrCode::Unavailable,
                    "presence needs the cluster's log, which is unreachable; try again",
                ));
            }
            let (user, info) = peer.member(ch);
            if user.len() > MAX_USER_BYTES {
                return Err((ErrCode::BadRequest, "on a presence channel the token's sub is at most 128 bytes"));
            }
            if info.is_some_and(|i| i.len() > MAX_INFO_BYTES || !i.starts_with('{')) {
                return Err((ErrCode::BadRequest, "the token's info must be a JSON object of at most 1 KiB"));
            }
            let tally = self.members.entry(name.clone()).or_default();
            if !tally.arrive(user.into(), info, self.rules.max_presence_members) {
                return Err((ErrCode::TooManyMembers, "the channel holds --max-presence-members members"));
            }
            member = tally.due_one(&Box::from(user), now).map(|due| member_change(&name, tally, due));
        }
        if self.rules.occupancy {
            let tally = self.occupancy.entry(name.clone()).or_default();
            tally.arrive((), None, 1);
            if let Some(due) = tally.due_one(&(), now) {
                self.changes.push(Change::Occupancy { ch: name, occupied: due.present });
            }
        }
        self.changes.extend(member);
        Ok(())
    }

    /// A subscription of `user` to `ch` ended (unsubscribed or closed).
    pub(super) fn depart(&mut self, ch: &str, user: &str, now: Instant) {
        let grace_end = now + self.rules.presence_grace;
        if let Some(tally) = self.members.get_mut(ch) {
            tally.depart(&Box::from(user), grace_end);
            self.next_grace = Some(self.next_grace.map_or(grace_end, |t| t.min(grace_end)));
        }
        if let Some(tally) = self.occupancy.get_mut(ch) {
            tally.depart(&(), grace_end);
            self.next_grace = Some(self.next_grace.map_or(grace_end, |t| t.min(grace_end)));
        }
    }

    /// The name `ch` is held under (shared with the subscriber lists).
    fn channel_name(&self, ch: &str) -> Arc<str> {
        match self.channels.get_key_value(ch) {
            Some((name, _)) => name.clone(),
            None => self.members.get_key_value(ch).map_or_else(|| Arc::from(ch), |(n, _)| n.clone()),
        }
    }

    /// The `presence` answer for `conn`: every stored member (those within
    /// their grace included) and the asker's own user, sorted by user.
    pub(super) fn on_presence(&self, conn: ConnId, ch: &str, id: Option<&str>) -> Option<Action> {
        let peer = self.peers.get(&conn)?;
        if !peer.claims.read.allows(ch) {
            return peer.refuse(ErrCode::Forbidden, "this token may not read that channel", id);
        }
        if !self.rules.is_presence(ch) {
            let msg = "not a presence channel (presence-*, or one given with --presence)";
            return peer.refuse(ErrCode::BadRequest, msg, id);
        }
        let members = self.members_of(ch, Some(peer.member(ch).0));
        peer.say(Event::Presence { ch, members: &members }, id)
    }

    /// The members of `ch` others may be told of, plus `own` when present.
    pub fn members_of<'a>(&'a self, ch: &str, own: Option<&str>) -> Vec<Member<'a>> {
        let mut all: Vec<Member<'a>> = match self.members.get(ch) {
            Some(tally) => tally
                .range(&Box::from(""))
                .filter(|(user, e)| e.stored || (own == Some(&***user) && e.conns > 0))
                .map(|(user, e)| Member { user, info: e.info.as_deref() })
                .collect(),
            None => Vec::new(),
        };
        if self.remote.is_some() {
            // Members other nodes hold too (cluster mode), each user once.
            all.extend(self.remote_members(ch));
            all.sort_by(|a, b| a.user.cmp(b.user));
            all.dedup_by(|later, first| later.user == first.user);
        }
        all
    }

    /// Presence and occupancy writes whose grace ran out by `now` join the
    /// queue of changes (cheap when no grace is due).
    pub fn tick(&mut self, now: Instant) {
        if self.next_grace.is_none_or(|t| now < t) {
            return;
        }
        let mut due = Vec::new();
        self.members.retain(|_, tally| !tally.is_empty());
        for (ch, tally) in self.members.iter_mut() {
            tally.due(now, &mut due);
            for d in due.drain(..) {
                self.changes.push(member_change(ch, tally, d));
            }
        }
        let mut due = Vec::new();
        self.occupancy.retain(|_, tally| !tally.is_empty());
        for (ch, tally) in self.occupancy.iter_mut() {
            tally.due(now, &mut due);
            let occupied = due.drain(..).map(|d| Change::Occupancy { ch: ch.clone(), occupied: d.present });
            self.changes.extend(occupied);
        }
        let members = self.members.values().filter_map(Tally::next_deadline);
        self.next_grace = members.chain(self.occupancy.values().filter_map(Tally::next_deadline)).min();
    }

    /// Members over all presence channels (those within their grace included).
    pub fn member_count(&self) -> usize {
        self.members.values().map(Tally::len).sum()
    }

    /// When `tick` next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_grace
    }

    /// The presence and occupancy writes to commit now.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// A change's commit came back (`ok`: committed). Returns the `join` or
    /// `leave` frames for the channel's other subscribers, once per dialect.
    pub fn on_written(&mut self, change: &Change, ok: bool, now: Instant) -> Vec<(String, Vec<ConnId>)> {
        if !ok {
            let retry = now + RETRY;
            self.next_grace = Some(self.next_grace.map_or(retry, |t| t.min(retry)));
        }
        match change {
            Change::Occupancy { ch, occupied } => {
                if let Some(tally) = self.occupancy.get_mut(&**ch) {
                    tally.written(&(), *occupied, ok);
                }
                Vec::new()
            }
            Change::Member { ch, user, info, present } => {
                let told = self.members.get_mut(&**ch).is_some_and(|t| t.written(user, *present, ok));
                if !told {
                    return Vec::new();
                }
                let event = if *present {
                    Event::Joined { ch, member: Member { user, info: info.as_deref() } }
                } else {
                    Event::Left { ch, user }
                };
                self.broadcast(ch, user, &event)
            }
        }
    }

    /// A member the store held at start: present for the restart grace.
    pub fn restore_member(&mut self, ch: &str, user: &str, info: Option<&str>, now: Instant) {
        let grace_end = now + self.rules.presence_restart_grace;
        self.members.entry(Arc::from(ch)).or_default().restore(user.into(), info, grace_end);
        self.next_grace = Some(self.next_grace.map_or(grace_end, |t| t.min(grace_end)));
    }

    /// A channel the store held as occupied at start.
    pub fn restore_occupied(&mut self, ch: &str, now: Instant) {
        let grace_end = now + self.rules.presence_restart_grace;
        self.occupancy.entry(Arc::from(ch)).or_default().restore((), None, grace_end);
        self.next_grace = Some(self.next_grace.map_or(grace_end, |t| t.min(grace_end)));
    }

    /// `event` for every subscriber of `ch` but `user`'s own connections,
    /// written once per dialect.
    pub(super) fn broadcast(&self, ch: &str, user: &str, event: &Event<'_>) -> Vec<(String, Vec<ConnId>)> {
        let mut out: Vec<(Door, String, Vec<ConnId>)> = Vec::new();
        for &conn in self.channels.get(ch).into_iter().flatten() {
            let Some(peer) = self.peers.get(&conn) else { continue };
            if peer.member(ch).0 == user {
                continue;
            }
            match out.iter_mut().find(|(d, ..)| d.same(peer.dialect)) {
                Some((.., to)) => to.push(conn),
                None => out.push((peer.dialect, peer.dialect.frame(event, None), vec![conn])),
            }
        }
        out.into_iter().map(|(_, text, to)| (text, to)).collect()
    }
}

fn member_change(ch: &Arc<str>, tally: &Tally<Box<str>>, due: Due<Box<str>>) -> Change {
    let info = tally.get(&due.key).and_then(|e| e.info.clone());
    Change::Member { ch: ch.clone(), user: due.key, info, present: due.present }
}

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Connections holding the key now.
    pub conns: u32,
    /// The store holds the key (committed join, not yet committed leave).
    pub stored: bool,
    /// A write for this key is on its way to the store.
    pub pending: bool,
    /// With no connections: when the grace ends.
    pub until: Option<Instant>,
    /// The member's `info` (presence only), JSON text.
    pub info: Option<Box<str>>,
}

impl Entry {
    /// Whether the key should be stored now.
    fn wanted(&self, now: Instant) -> bool {
        self.conns > 0 || self.until.is_some_and(|t| now < t)
    }
}

/// A write the tally asks for: store `key` as present (or as gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due<K> {
    pub key: K,
    pub present: bool,
}

/// Keys with their connection counts, as wanted and as stored.
#[derive(Debug, Clone)]
pub struct Tally<K: Ord + Clone> {
    /// Sorted by key, exactly sized: a presence channel holds at most
    /// `--max-presence-members` entries, so a sorted `Vec` (binary search,
    /// a short memmove on insert) costs an entry's bytes and nothing more,
    /// where a B-tree leaves its nodes about half full.
    entries: Vec<(K, Entry)>,
}

impl<K: Ord + Clone> Default for Tally<K> {
    fn default() -> Self {
        Tally { entries: Vec::new() }
    }
}

impl<K: Ord + Clone> Tally<K> {
    pub fn get(&self, key: &K) -> Option<&Entry> {
        self.find(key).ok().map(|at| &self.entries[at].1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in key order, to change in place (cluster mode).
    pub fn entries_mut(&mut self) -> impl Iterator<Item = (&K, &mut Entry)> {
        self.entries.iter_mut().map(|(k, e)| (&*k, e))
    }

    /// Entries in key order, from `from` on.
    pub fn range<'a>(&'a self, from: &K) -> impl Iterator<Item = (&'a K, &'a Entry)> + 'a {
        let at = self.find(from).unwrap_or_else(|at| at);
        self.entries[at..].iter().map(|(k, e)| (k, e))
    }

    /// A connection took `key`. Returns false (and changes nothing) when the
    /// key is new and `max` keys are held already.
    pub fn arrive(&mut self, key: K, info: Option<&str>, max: usize) -> bool {
        let at = match self.find(&key) {
            Ok(at) => {
                let e = &mut self.entries[at].1;
                e.conns += 1;
                e.until = None;
                return true;
            }
            Err(at) => at,
        };
        if self.entries.len() >= max {
            return false;
        }
        let info = info.map(Box::from);
        self.insert(at, key, Entry { conns: 1, stored: false, pending: false, until: None, info });
        true
    }

    /// A connection let go of `key`; with none left, the key stays for `grace_end`.
    pub fn depart(&mut self, key: &K, grace_end: Instant) {
        if let Some(e) = self.entry_mut(key) {
            e.conns = e.conns.saturating_sub(1);
            if e.conns == 0 {
                e.until = Some(grace_end);
            }
        }
    }

    /// A key the store held at start: present until `grace_end` unless a
    /// connection takes it.
    pub fn restore(&mut self, key: K, info: Option<&str>, grace_end: Instant) {
        let info = info.map(Box::from);
        let entry = Entry { conns: 0, stored: true, pending: false, until: Some(grace_end), info };
        match self.find(&key) {
            Ok(at) => self.entries[at].1 = entry,
            Err(at) => self.insert(at, key, entry),
        }
    }

    /// The writes due now (each key at most one in flight), marked pending.
    /// A key neither wanted nor stored is forgotten here.
    pub fn due(&mut self, now: Instant, out: &mut Vec<Due<K>>) {
        self.entries.retain(|(_, e)| e.pending || e.stored || e.wanted(now));
        self.shrink();
        for (key, e) in self.entries.iter_mut() {
            let wanted = e.wanted(now);
            if !e.pending && wanted != e.stored {
                e.pending = true;
                out.push(Due { key: key.clone(), present: wanted });
            }
        }
    }

    /// The writes due for one key now (called right after `arrive`, so a
    /// join is not held back until the next timer).
    pub fn due_one(&mut self, key: &K, now: Instant) -> Option<Due<K>> {
        let e = self.entry_mut(key)?;
        let wanted = e.wanted(now);
        if e.pending || wanted == e.stored {
            return None;
        }
        e.pending = true;
        Some(Due { key: key.clone(), present: wanted })
    }

    /// A write came back. `ok`: committed, so others may be told (returns
    /// true); otherwise it is asked for again by the next `due`. A key that
    /// is stored as gone and wanted by nobody is forgotten.
    pub fn written(&mut self, key: &K, present: bool, ok: bool) -> bool {
        let Ok(at) = self.find(key) else { return false };
        let e = &mut self.entries[at].1;
        e.pending = false;
        if !ok {
            return false;
        }
        e.stored = present;
        if !present && e.conns == 0 {
            self.entries.remove(at);
            self.shrink();
        }
        true
    }

    /// The earliest grace that runs out, for the loop's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().map(|(_, e)| e).filter(|e| e.conns == 0 && !e.pending).filter_map(|e| e.until).min()
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(k, _)| k.cmp(key))
    }

    fn entry_mut(&mut self, key: &K) -> Option<&mut Entry> {
        self.find(key).ok().map(|at| &mut self.entries[at].1)
    }

    /// Grows by a quarter, not double: members come one at a time, and
    /// spare room is memory every channel pays for.
    fn insert(&mut self, at: usize, key: K, entry: Entry) {
        if self.entries.len() == self.entries.capacity() {
            self.entries.reserve_exact((self.entries.len() / 4).max(1));
        }
        self.entries.insert(at, (key, entry));
    }

    /// Gives back room once the tally is under half full.
    fn shrink(&mut self) {
        if self.entries.capacity() > 8 && self.entries.len() < self.entries.capacity() / 2 {
            self.entries.shrink_to(self.entries.len() + self.entries.len() / 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A member whose join is committed.
    fn stored_member(t: &mut Tally<&'static str>, user: &'static str, now: Instant) {
        t.arrive(user, None, 10);
        t.due_one(&user, now);
        t.written(&user, true, true);
    }

    fn due(t: &mut Tally<&'static str>, now: Instant) -> Vec<(&'static str, bool)> {
        let mut out = Vec::new();
        t.due(now, &mut out);
        out.into_iter().map(|d| (d.key, d.present)).collect()
    }

    #[test]
    fn a_first_connection_is_one_join_and_a_second_is_nothing() {
        let now = Instant::now();
        let mut t = Tally::default();
        assert!(t.arrive("alice", Some("{}"), 10));
        assert_eq!(t.due_one(&"alice", now), Some(Due { key: "alice", present: true }));
        assert!(t.arrive("alice", None, 10));
        assert_eq!(t.due_one(&"alice", now), None, "one write in flight");
        assert!(t.written(&"alice", true, true));
        assert_eq!(due(&mut t, now), vec![]);
        assert_eq!(t.get(&"alice").unwrap().info.as_deref(), Some("{}"), "the first connection's info");
    }

    #[test]
    fn a_reload_within_the_grace_writes_nothing() {
        let now = Instant::now();
        let mut t = Tally::default();
        stored_member(&mut t, "alice", now);
        t.depart(&"alice", now + secs(3));
        assert_eq!(due(&mut t, now + secs(1)), vec![]);
        t.arrive("alice", None, 10);
        assert_eq!(due(&mut t, now + secs(10)), vec![], "back in time: never reported gone");
    }

    #[test]
    fn a_leave_is_due_when_the_grace_runs_out_and_forgotten_once_written() {
        let now = Instant::now();
        let mut t = Tally::default();
        stored_member(&mut t, "alice", now);
        t.depart(&"alice", now + secs(3));
        assert_eq!(t.next_deadline(), Some(now + secs(3)));
        assert_eq!(due(&mut t, now + secs(3)), vec![("alice", false)]);
        assert_eq!(t.next_deadline(), None, "pending writes have no timer");
        assert!(t.written(&"alice", false, true));
        assert!(t.is_empty());
    }

    #[test]
    fn a_failed_write_is_asked_for_again() {
        let now = Instant::now();
        let mut t = Tally::default();
        t.arrive("alice", None, 10);
        t.due_one(&"alice", now);
        assert!(!t.written(&"alice", true, false), "nobody is told of an uncommitted join");
        assert_eq!(due(&mut t, now), vec![("alice", true)]);
    }

    #[test]
    fn a_user_who_comes_back_while_the_leave_commits_is_joined_again() {
        let now = Instant::now();
        let mut t = Tally::default();
        stored_member(&mut t, "alice", now);
        t.depart(&"alice", now);
        assert_eq!(due(&mut t, now), vec![("alice", false)]);
        t.arrive("alice", None, 10);
        assert!(t.written(&"alice", false, true));
        assert_eq!(due(&mut t, now), vec![("alice", true)]);
    }

    #[test]
    fn restored_members_leave_after_the_restart_grace_unless_they_return() {
        let now = Instant::now();
        let mut t = Tally::default();
        t.restore("alice", Some(r#"{"n":1}"#), now + secs(30));
        t.restore("bob", None, now + secs(30));
        t.arrive("alice", None, 10);
        assert_eq!(due(&mut t, now + secs(29)), vec![]);
        assert_eq!(due(&mut t, now + secs(30)), vec![("bob", false)]);
        assert_eq!(t.get(&"alice").unwrap().info.as_deref(), Some(r#"{"n":1}"#));
    }

    #[test]
    fn a_new_key_past_the_limit_is_refused_but_a_known_one_is_not() {
        let mut t = Tally::default();
        assert!(t.arrive("a", None, 2));
        assert!(t.arrive("b", None, 2));
        assert!(!t.arrive("c", None, 2));
        assert!(t.arrive("a", None, 2), "another connection of a member is not a new member");
        assert_eq!(t.len(), 2);
    }
}
