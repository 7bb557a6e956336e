//! The sync protocol: subscriptions, cursors, permissions, replay and
//! fan-out. No sockets, no clock, no writes: the server feeds it requests,
//! commit results and the current time, and carries out what it answers.
//!
//! The one idea that makes resume exact is the **cursor**: for every
//! subscription the hub remembers `next`, the seq this connection must see
//! next on that channel. A subscription is either *replaying* (reading the
//! store from `next` in bounded batches, when the connection has room) or
//! *live* (taking committed messages as they are fanned out). A live
//! delivery is made only when its seq equals `next`, so a message that
//! replay already sent is never sent twice, and a message that arrives while
//! replay is behind is simply read from the store later: no gap, no
//! duplicate, whatever order the store and the commit results are seen in.
//!
//! Reads go to the store directly, through the small `History` trait as a
//! context parameter: LMDB reads are short, never block on the writer, and
//! keeping them here keeps the replay logic in one place. `Store` implements
//! it; the tests also use an in-memory fake that can be told to fail. Writes
//! leave as `Publish` requests, which the server turns into the store's
//! `Append`s, so the hub names no write type of the store.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Claims;
use crate::store::{self, ChannelInfo, Limit, Outcome, Record, Store, StoreError};
use crate::wire::{self, ErrCode, Msg, Request, Seq};

/// A connection, as the hub knows it: the server's token for it.
pub type ConnId = usize;

/// A map keyed by connection. Ids are handed out by the server, never by a
/// client, so they need no defence against chosen collisions: a multiply
/// spreads them, where SipHash would cost more than the lookup itself on
/// every event.
pub type IdMap<V> = HashMap<ConnId, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, id: usize) {
        // Fibonacci hashing: consecutive ids land far apart, top bits included.
        self.0 = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Messages read from the store per replay step of one subscription.
const REPLAY_BATCH: usize = 256;

/// The limits the hub enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_subscriptions: usize,
    /// Publishes per second per connection (burst 2×); 0 = unlimited.
    pub publish_rate: u32,
    /// Largest `hist` reply; past it `more` is set and the client pages on.
    pub max_reply_bytes: usize,
}

/// The stored history as the hub reads it: where a channel stands and its
/// messages in seq order. Generic (`&impl History`), so the server's reads
/// of the real `Store` are direct calls.
pub trait History {
    /// Where a channel stands; `ChannelInfo::EMPTY` for one never published to.
    fn channel(&self, ch: &str) -> Result<ChannelInfo, StoreError>;

    /// Calls `each` for stored messages of `ch` with seq > `after`, in order,
    /// until it returns false or `limit` messages were given. Returns the
    /// channel's state as of this read. An error may come after some
    /// messages were given.
    fn read(
        &self,
        ch: &str,
        after: Seq,
        limit: usize,
        each: impl FnMut(Record<'_>) -> bool,
    ) -> Result<ChannelInfo, StoreError>;
}

impl History for Store {
    fn channel(&self, ch: &str) -> Result<ChannelInfo, StoreError> {
        Store::channel(self, ch)
    }

    fn read(
        &self,
        ch: &str,
        after: Seq,
        limit: usize,
        each: impl FnMut(Record<'_>) -> bool,
    ) -> Result<ChannelInfo, StoreError> {
        Store::read(self, ch, after, limit, each)
    }
}

/// A message the hub accepted for publishing: the server commits it (as a
/// `store::Append`), then acks and fans it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub ch: String,
    /// The publisher's token `sub`.
    pub from: String,
    /// The message's `data`, as JSON text.
    pub data: String,
    /// The request id as JSON text, when the publisher gave one: the ack
    /// carries it, and the store publishes `(from, id)` at most once.
    pub id: Option<String>,
}

/// What a commit result means for the native protocol (`Hub::on_commit`).
#[derive(Debug, PartialEq)]
pub struct Committed {
    /// The publisher's `ack` or `err`, when it is answered on its WebSocket.
    pub reply: Option<String>,
    /// A stored message: the `msg` text, and who gets it now.
    pub msg: Option<(String, Vec<ConnId>)>,
}

/// What the server must do for one request.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this text to the connection.
    Reply(String),
    /// Commit this message, then ack with its `id` and fan it out.
    Publish(Publish),
    /// Close the connection with this code (1008 for sustained abuse).
    Close(u16, &'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    /// The seq this connection sees next on this channel.
    next: Seq,
    live: bool,
}

/// Token bucket for the publish rate.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    refused: u32,
}

struct Peer {
    claims: Claims,
    /// A list, not a map: a connection holds a few subscriptions, and an
    /// idle one should cost little. The channel's name is shared with
    /// `Hub::channels`.
    subs: Vec<(Arc<str>, Cursor)>,
    bucket: Bucket,
}

impl Peer {
    fn cursor(&mut self, ch: &str) -> Option<&mut Cursor> {
        self.subs.iter_mut().find(|(c, _)| &**c == ch).map(|(_, cursor)| cursor)
    }
}

pub struct Hub {
    epoch: String,
    limits: Limits,
    /// Boxed, so the table's spare capacity costs a pointer per entry.
    peers: IdMap<Box<Peer>>,
    /// Live and replaying subscribers of each channel.
    channels: HashMap<Arc<str>, Vec<ConnId>>,
    /// Connections with at least one replaying subscription.
    replaying: BTreeSet<ConnId>,
}

impl Hub {
    pub fn new(epoch: &str, limits: Limits) -> Hub {
        Hub {
            epoch: epoch.to_string(),
            limits,
            peers: IdMap::default(),
            channels: HashMap::new(),
            replaying: BTreeSet::new(),
        }
    }

    /// A connection passed authentication.
    pub fn join(&mut self, conn: ConnId, claims: Claims, now: Instant) {
        let tokens = 2.0 * self.limits.publish_rate as f64;
        let bucket = Bucket { tokens, at: now, refused: 0 };
        self.peers.insert(conn, Box::new(Peer { claims, subs: Vec::new(), bucket }));
    }

    /// A connection is gone: forget its subscriptions.
    pub fn leave(&mut self, conn: ConnId) {
        if let Some(peer) = self.peers.remove(&conn) {
            for (ch, _) in &peer.subs {
                self.drop_subscriber(ch, conn);
            }
        }
        self.replaying.remove(&conn);
    }

    /// Subscriptions held now, over all connections.
    pub fn subscription_count(&self) -> usize {
        self.peers.values().map(|p| p.subs.len()).sum()
    }

    fn drop_subscriber(&mut self, ch: &str, conn: ConnId) {
        if let Some(list) = self.channels.get_mut(ch) {
            list.retain(|c| *c != conn);
            if list.is_empty() {
                self.channels.remove(ch);
            }
        }
    }

    /// Handles one text frame from `conn`, pushing what to do into `out`.
    pub fn handle(&mut self, conn: ConnId, text: &str, now: Instant, store: &impl History, out: &mut Vec<Action>) {
        let frame = match wire::parse(text) {
            Ok(f) => f,
            Err(e) => return out.push(Action::Reply(wire::err(e.code, e.msg, e.id))),
        };
        let id = frame.id;
        // Each request gets one answer (none for an unknown connection).
        let answer = match frame.req {
            Request::Sub { ch, since, epoch } => self.on_sub(conn, ch, since, epoch.as_deref(), id, store),
            Request::Unsub { ch } => self.on_unsub(conn, ch, id),
            Request::Pub { ch, data } => self.on_pub(conn, ch, data, id, now),
            Request::Hist { ch, since, limit } => self.on_hist(conn, ch, since, limit, id, store),
        };
        out.extend(answer);
    }

    /// `sub`: checks, replies `subok`, then holds (or moves) the cursor.
    fn on_sub(
        &mut self,
        conn: ConnId,
        ch: &str,
        since: Option<Seq>,
        epoch: Option<&str>,
        id: Option<&str>,
        store: &impl History,
    ) -> Option<Action> {
        let peer = self.peers.get_mut(&conn)?;
        if !peer.claims.read.allows(ch) {
            return refuse(ErrCode::Forbidden, "this token may not read that channel", id);
        }
        let resub = peer.cursor(ch).is_some();
        if !resub && peer.subs.len() >= self.limits.max_subscriptions {
            return refuse(ErrCode::TooManySubscriptions, "unsubscribe from a channel first", id);
        }
        let info = match store.channel(ch) {
            Ok(info) => info,
            Err(e) => {
                log::warn!("reading channel state failed: {e}");
                return refuse(ErrCode::Unavailable, "the store cannot be read; try again", id);
            }
        };
        let (cursor, gap) = start_cursor(info, since, epoch, &self.epoch);
        let subok = Action::Reply(wire::subok(ch, info.last, &self.epoch, gap, id));
        if let Some(held) = peer.cursor(ch) {
            *held = cursor;
        } else {
            let name = match self.channels.get_key_value(ch) {
                Some((name, _)) => name.clone(),
                None => Arc::from(ch),
            };
            if peer.subs.len() == peer.subs.capacity() {
                // Grow from one, not four: most connections hold one.
                peer.subs.reserve_exact(peer.subs.len().max(1));
            }
            peer.subs.push((name.clone(), cursor));
            self.channels.entry(name).or_default().push(conn);
        }
        if !cursor.live {
            self.replaying.insert(conn);
        }
        Some(subok)
    }

    /// `unsub`: always `unsubok`, subscribed or not.
    fn on_unsub(&mut self, conn: ConnId, ch: &str, id: Option<&str>) -> Option<Action> {
        let peer = self.peers.get_mut(&conn)?;
        if let Some(at) = peer.subs.iter().position(|(c, _)| &**c == ch) {
            peer.subs.swap_remove(at);
            self.drop_subscriber(ch, conn);
        }
        Some(Action::Reply(wire::unsubok(ch, id)))
    }

    /// `pub`: checks the token, the id's size and the publish rate, then
    /// asks the server to commit.
    fn on_pub(&mut self, conn: ConnId, ch: &str, data: &str, id: Option<&str>, now: Instant) -> Option<Action> {
        let peer = self.peers.get_mut(&conn)?;
        if !peer.claims.write.allows(ch) {
            return refuse(ErrCode::Forbidden, "this token may not publish to that channel", id);
        }
        if id.is_some_and(|id| !store::dedupe_fits(&peer.claims.sub, id)) {
            return refuse(
                ErrCode::BadRequest,
                "the token's sub and this id are over 501 bytes together; use a shorter id or sub",
                id,
            );
        }
        if !peer.bucket.take(now, self.limits.publish_rate) {
            if peer.bucket.refused > 2 * self.limits.publish_rate.max(1) {
                return Some(Action::Close(1008, "publish rate exceeded"));
            }
            return refuse(ErrCode::RateLimited, "too many publishes; slow down", id);
        }
        Some(Action::Publish(Publish {
            ch: ch.to_string(),
            from: peer.claims.sub.clone(),
            data: data.to_string(),
            id: id.map(str::to_string),
        }))
    }

    /// `hist`: one page of history, read now.
    fn on_hist(
        &self,
        conn: ConnId,
        ch: &str,
        since: Seq,
        limit: u32,
        id: Option<&str>,
        store: &impl History,
    ) -> Option<Action> {
        let peer = self.peers.get(&conn)?;
        if !peer.claims.read.allows(ch) {
            return refuse(ErrCode::Forbidden, "this token may not read that channel", id);
        }
        match history(store, ch, since, limit as usize, self.limits.max_reply_bytes, id) {
            Ok(text) => Some(Action::Reply(text)),
            Err(e) => {
                log::warn!("reading history failed: {e}");
                refuse(ErrCode::Unavailable, "the store cannot be read; try again", id)
            }
        }
    }

    /// One publish's commit result, in one place: the publisher's reply
    /// (`ack`, or `err` when the store refused the item) and, for a stored
    /// message, the `msg` encoded once with the connections whose cursor it
    /// is. `id` is the publisher's request id; `reply` is false for a
    /// publisher that is answered elsewhere (an HTTP publish).
    pub fn on_commit(&mut self, publish: &Publish, outcome: &Outcome, reply: bool) -> Committed {
        let id = publish.id.as_deref();
        let answer = |text: String| reply.then_some(text);
        match outcome {
            Outcome::Stored { seq, ts } => {
                let msg = Msg { ch: &publish.ch, seq: *seq, ts: *ts, from: &publish.from, data: &publish.data };
                let mut to = Vec::new();
                self.committed(&publish.ch, *seq, &mut to);
                Committed { reply: answer(wire::ack(id, &publish.ch, *seq)), msg: Some((wire::msg(&msg), to)) }
            }
            Outcome::Duplicate { ch, seq, .. } => Committed { reply: answer(wire::ack(id, ch, *seq)), msg: None },
            Outcome::Invalid(_) => Committed {
                reply: answer(wire::err(ErrCode::BadRequest, "the store cannot hold this message", id)),
                msg: None,
            },
            Outcome::OverLimit(Limit::Channels) => Committed {
                reply: answer(wire::err(
                    ErrCode::TooManyChannels,
                    "the store holds --max-channels channels; publish to an existing one",
                    id,
                )),
                msg: None,
            },
            Outcome::OverLimit(Limit::Keys) => Committed {
                reply: answer(wire::err(ErrCode::BadRequest, "the channel holds --max-keys keys", id)),
                msg: None,
            },
            // Not a publish's outcome.
            Outcome::Written => Committed { reply: None, msg: None },
        }
    }

    /// A message was committed: pushes the connections that must receive it
    /// now into `to`. Replaying subscribers read it from the store later.
    fn committed(&mut self, ch: &str, seq: Seq, to: &mut Vec<ConnId>) {
        let Some(list) = self.channels.get(ch) else { return };
        for &conn in list {
            let Some(cursor) = self.peers.get_mut(&conn).and_then(|p| p.cursor(ch)) else { continue };
            if !cursor.live || seq < cursor.next {
                continue;
            }
            if seq == cursor.next {
                cursor.next += 1;
                to.push(conn);
            } else {
                // A hole between what was sent and this message: read it
                // from the store rather than skip it.
                cursor.live = false;
                self.replaying.insert(conn);
            }
        }
    }

    /// Connections with replay work left.
    pub fn replaying(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.replaying.iter().copied()
    }

    /// Replays stored messages to `conn`, at most `room` bytes, into `out`.
    /// A subscription that reaches the end of its channel becomes live.
    pub fn pump(&mut self, conn: ConnId, store: &impl History, room: usize, out: &mut Vec<String>) {
        let Some(peer) = self.peers.get_mut(&conn) else {
            self.replaying.remove(&conn);
            return;
        };
        let mut used = 0;
        let mut pending = false;
        for (ch, cursor) in peer.subs.iter_mut().filter(|(_, c)| !c.live) {
            if used >= room {
                pending = true;
                break;
            }
            let mut read = 0;
            let mut next = cursor.next;
            let res = store.read(ch, next - 1, REPLAY_BATCH, |r: Record<'_>| {
                let text = wire::msg(&Msg { ch, seq: r.seq, ts: r.ts, from: r.from, data: r.data });
                used += text.len();
                out.push(text);
                read += 1;
                next = r.seq + 1;
                used < room
            });
            // What the read gave is in `out` and will be sent, even when the
            // read then failed: the cursor moves past it either way.
            cursor.next = next;
            match res {
                Ok(info) => {
                    if read < REPLAY_BATCH && used < room {
                        // Reached the end of what is stored. Anything committed
                        // later is fanned out live; `next` guards against the
                        // commits this read already saw.
                        cursor.live = true;
                        cursor.next = cursor.next.max(info.last + 1);
                    } else {
                        pending = true;
                    }
                }
                Err(e) => {
                    log::warn!("replay read failed: {e}");
                    pending = true;
                }
            }
        }
        if !pending {
            self.replaying.remove(&conn);
        }
    }
}

impl Bucket {
    fn take(&mut self, now: Instant, rate: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let cap = 2.0 * rate as f64;
        let elapsed = now.saturating_duration_since(self.at).min(Duration::from_secs(60));
        self.tokens = (self.tokens + elapsed.as_secs_f64() * rate as f64).min(cap);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

/// The `err` answer to a request.
fn refuse(code: ErrCode, msg: &str, id: Option<&str>) -> Option<Action> {
    Some(Action::Reply(wire::err(code, msg, id)))
}

/// Where a new subscription starts, and whether the client missed messages
/// it cannot get back (spec §4: other epoch, trimmed, or `since` past the end).
fn start_cursor(info: ChannelInfo, since: Option<Seq>, epoch: Option<&str>, ours: &str) -> (Cursor, bool) {
    let replay_from = |next: Seq, gap| (Cursor { next, live: next > info.last }, gap);
    match since {
        None => (Cursor { next: info.last + 1, live: true }, false),
        Some(0) => replay_from(info.first, info.first > 1),
        Some(s) if epoch != Some(ours) || s > info.last => replay_from(info.first, true),
        Some(s) if s + 1 < info.first => replay_from(info.first, true),
        Some(s) => replay_from(s + 1, false),
    }
}

/// Whether a page of history is the whole story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Higher seqs exist than the page holds.
    pub more: bool,
    /// Seq `since + 1` was trimmed, or `since` is past the end.
    pub gap: bool,
}

/// Appends `msg` objects after `since` to `out`, comma-separated: at most
/// `limit` of them, and stopping once `out` passes `max_bytes`. Shared by
/// the `hist` op and the HTTP API.
pub fn page(
    store: &impl History,
    ch: &str,
    since: Seq,
    limit: usize,
    max_bytes: usize,
    out: &mut String,
) -> Result<Page, StoreError> {
    let mut last_sent = since;
    let mut first = true;
    let info = store.read(ch, since, limit, |r| {
        if !first {
            out.push(',');
        }
        first = false;
        wire::msg_into(out, &Msg { ch, seq: r.seq, ts: r.ts, from: r.from, data: r.data });
        last_sent = r.seq;
        out.len() < max_bytes
    })?;
    // Past trimmed seqs nothing is left to page through: `more` counts from
    // the oldest stored message.
    let seen = last_sent.max(info.first.saturating_sub(1));
    Ok(Page { more: seen < info.last, gap: since.saturating_add(1) < info.first || since > info.last })
}

/// Builds a `hist` reply.
fn history(
    store: &impl History,
    ch: &str,
    since: Seq,
    limit: usize,
    max_bytes: usize,
    id: Option<&str>,
) -> Result<String, StoreError> {
    let mut out = String::with_capacity(256);
    out.push_str("{\"op\":\"hist\",\"ch\":");
    wire::json_str(&mut out, ch);
    out.push_str(",\"msgs\":[");
    let page = page(store, ch, since, limit, max_bytes, &mut out)?;
    let _ = write!(out, "],\"more\":{}", page.more);
    if page.gap {
        out.push_str(",\"gap\":true");
    }
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(id);
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests;
