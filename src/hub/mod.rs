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

mod event;
mod history;
mod presence;
mod remote;
mod table;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use smallvec::SmallVec;
use std::time::{Duration, Instant};

use crate::auth::Claims;
pub use crate::channel::Seq;
use crate::store::{self, Limit, Outcome, Record, StoreError};
pub use event::{Dialect, Door, ErrCode, Event, Member, Msg, Page, Request, Start, MAX_EVENT_BYTES, MAX_LAST};
pub use history::{msg as history_msg, page, History};
pub use presence::Change;
use presence::Tally;
pub use table::IdTable;

/// A connection, as the hub knows it: the server's token for it.
pub type ConnId = usize;

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

/// Which channels are special, and how (spec §7, §8, §9).
#[derive(Debug, Clone)]
pub struct Rules {
    /// Presence patterns besides `presence-*` (which always is one).
    pub presence: Vec<String>,
    pub compact: Vec<String>,
    pub presence_grace: Duration,
    pub presence_restart_grace: Duration,
    pub max_presence_members: usize,
    /// Track occupancy (channel_occupied / channel_vacated webhooks).
    pub occupancy: bool,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            presence: Vec::new(),
            compact: Vec::new(),
            presence_grace: Duration::from_secs(3),
            presence_restart_grace: Duration::from_secs(30),
            max_presence_members: 1000,
            occupancy: false,
        }
    }
}

impl Rules {
    pub fn is_presence(&self, ch: &str) -> bool {
        ch.starts_with("presence-") || self.presence.iter().any(|p| crate::channel::matches(p, ch))
    }

    pub fn is_compacted(&self, ch: &str) -> bool {
        self.compact.iter().any(|p| crate::channel::matches(p, ch))
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
    /// The message's key (spec §8) and event name (pusher.md §4).
    pub key: Option<String>,
    pub event: Option<String>,
}

/// What a commit result means for the connections (`Hub::on_commit`).
#[derive(Debug, Default, PartialEq)]
pub struct Committed {
    /// The publisher's `ack` or `err`, when it is answered on its WebSocket.
    pub reply: Option<String>,
    /// A stored message, written once per dialect, and who gets each now.
    pub deliveries: Vec<(String, Vec<ConnId>)>,
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
    /// Replaying a state snapshot (spec §8): only keyed messages, then the
    /// `state` marker, then live.
    snapshot: bool,
}

impl Cursor {
    fn live_from(next: Seq) -> Cursor {
        Cursor { next, live: true, snapshot: false }
    }
}

/// Token bucket for the publish rate.
#[derive(Debug)]
struct Bucket {
    /// f32: every connection keeps one, and a burst is at most 2 × the rate.
    tokens: f32,
    refused: u32,
    at: Instant,
}

struct Peer {
    claims: Claims,
    /// How this connection's front door writes events.
    dialect: Door,
    /// A list, not a map: a connection holds a few subscriptions, and an
    /// idle one should cost little; the first is stored in the record
    /// itself. The channel's name is shared with `Hub::channels`.
    subs: SmallVec<[(Arc<str>, Cursor); 1]>,
    bucket: Bucket,
    /// The member this connection is on some presence channels, when its
    /// front door names one per subscription (Pusher's `channel_data`)
    /// instead of the token's `sub` and `info`. None for native peers.
    /// Boxed on purpose: 8 bytes in every peer where an empty `Vec` takes 24.
    #[allow(clippy::box_collection)]
    named: Option<Box<Vec<Named>>>,
}

/// A member named for one presence channel: the channel, the user, its info.
type Named = (Arc<str>, Box<str>, Option<Box<str>>);

impl Peer {
    /// The member this connection is (or would be) on presence channel
    /// `ch`: the one its front door named, else its token's `sub` and `info`.
    /// So one user is one member, whichever protocol each connection speaks.
    fn member(&self, ch: &str) -> (&str, Option<&str>) {
        match self.named.iter().flat_map(|n| n.iter()).find(|(c, ..)| &**c == ch) {
            Some((_, user, info)) => (user, info.as_deref()),
            None => (&self.claims.sub, self.claims.info.as_deref()),
        }
    }

    /// Forgets the member named for `ch`.
    fn unname(&mut self, ch: &str) {
        if let Some(named) = &mut self.named {
            named.retain(|(c, ..)| &**c != ch);
            if named.is_empty() {
                self.named = None;
            }
        }
    }

    fn cursor(&mut self, ch: &str) -> Option<&mut Cursor> {
        self.subs.iter_mut().find(|(c, _)| &**c == ch).map(|(_, cursor)| cursor)
    }

    /// `cursor` by the channel table's own name: a subscription shares
    /// it, so a pointer comparison finds it without comparing the text.
    fn cursor_of(&mut self, name: &Arc<str>) -> Option<&mut Cursor> {
        self.subs.iter_mut().find(|(c, _)| Arc::ptr_eq(c, name) || c == name).map(|(_, cursor)| cursor)
    }

    /// An answer to a request, in this connection's dialect.
    fn say(&self, event: Event<'_>, id: Option<&str>) -> Option<Action> {
        Some(Action::Reply(self.dialect.frame(&event, id)))
    }

    /// The `err` answer to a request.
    fn refuse(&self, code: ErrCode, msg: &str, id: Option<&str>) -> Option<Action> {
        self.say(Event::Refused { code, msg }, id)
    }

    /// The publish rate, which `pub`, `sub` and `unsub` share (spec §4):
    /// `Some(answer)` when this request is over it (`rate_limited`, or a
    /// close for sustained abuse).
    fn over_rate(&mut self, now: Instant, rate: u32, id: Option<&str>) -> Option<Option<Action>> {
        if self.bucket.take(now, rate) {
            return None;
        }
        if self.bucket.refused > 2 * rate.max(1) {
            return Some(Some(Action::Close(1008, "request rate exceeded")));
        }
        Some(self.refuse(ErrCode::RateLimited, "too many requests; slow down", id))
    }
}

pub struct Hub {
    epoch: String,
    limits: Limits,
    rules: Rules,
    /// Members of each presence channel, by user.
    members: HashMap<Arc<str>, Tally<Box<str>>>,
    /// Occupied channels, while webhooks want to hear of it.
    occupancy: HashMap<Arc<str>, Tally<()>>,
    /// Presence and occupancy writes for the server to commit.
    changes: Vec<Change>,
    /// The earliest grace that may run out: `tick` has work then.
    next_grace: Option<Instant>,
    /// Stored inline by the connection's place (`IdTable`).
    peers: IdTable<Peer>,
    /// Live and replaying subscribers of each channel.
    channels: HashMap<Arc<str>, Vec<ConnId>>,
    /// Connections with at least one replaying subscription.
    replaying: BTreeSet<ConnId>,
    /// Cluster mode: what other nodes hold (presence across the cluster).
    remote: Option<Box<remote::Remote>>,
    /// What the server's output budget has left (`set_reply_room`).
    reply_room: usize,
}

impl Hub {
    pub fn new(epoch: &str, limits: Limits) -> Hub {
        Hub::with_rules(epoch, limits, Rules::default())
    }

    pub fn with_rules(epoch: &str, limits: Limits, rules: Rules) -> Hub {
        Hub {
            epoch: epoch.to_string(),
            limits,
            rules,
            members: HashMap::new(),
            occupancy: HashMap::new(),
            changes: Vec::new(),
            next_grace: None,
            peers: IdTable::default(),
            channels: HashMap::new(),
            replaying: BTreeSet::new(),
            remote: None,
            reply_room: usize::MAX,
        }
    }

    /// How much more output the server can hold now: a `hist` page is cut
    /// there (after one message at least, so paging goes on) when it is
    /// below `Limits::max_reply_bytes`. `more` tells the client to page on.
    pub fn set_reply_room(&mut self, bytes: usize) {
        self.reply_room = bytes;
    }

    /// A connection passed authentication; its front door speaks `dialect`.
    pub fn join(&mut self, conn: ConnId, claims: Claims, dialect: Door, now: Instant) {
        let tokens = 2.0 * self.limits.publish_rate as f32;
        let bucket = Bucket { tokens, refused: 0, at: now };
        self.peers.insert(conn, Peer { claims, dialect, subs: SmallVec::new(), bucket, named: None });
    }

    /// Names the member `conn` is on presence channel `ch` for its next
    /// `sub` there (a Pusher subscribe's `channel_data`). Ignored while it is
    /// subscribed: a member changes only by leaving. The server calls
    /// [`Hub::forget_member`] when that `sub` was refused.
    pub fn name_member(&mut self, conn: ConnId, ch: &str, user: &str, info: Option<&str>) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        if peer.subs.iter().any(|(c, _)| &**c == ch) {
            return;
        }
        let named = peer.named.get_or_insert_with(Box::default);
        named.retain(|(c, ..)| &**c != ch);
        named.push((Arc::from(ch), user.into(), info.map(Box::from)));
    }

    /// Drops a member named for `ch` unless `conn` is subscribed to it.
    pub fn forget_member(&mut self, conn: ConnId, ch: &str) {
        let Some(peer) = self.peers.get_mut(&conn) else { return };
        if !peer.subs.iter().any(|(c, _)| &**c == ch) {
            peer.unname(ch);
        }
    }

    /// The user `conn` is on channel `ch` (Pusher puts it on client events).
    pub fn member_user(&self, conn: ConnId, ch: &str) -> Option<&str> {
        self.peers.get(&conn).map(|p| p.member(ch).0)
    }

    /// Whether `conn` holds a subscription to `ch`.
    pub fn is_subscribed(&self, conn: ConnId, ch: &str) -> bool {
        self.peers.get(&conn).is_some_and(|p| p.subs.iter().any(|(c, _)| &**c == ch))
    }

    /// The connections subscribed to `ch` (live or replaying).
    pub fn subscribers(&self, ch: &str) -> &[ConnId] {
        self.channels.get(ch).map_or(&[], Vec::as_slice)
    }

    /// Every channel with a subscriber, and how many it has.
    pub fn occupied(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.channels.iter().map(|(ch, list)| (&**ch, list.len()))
    }

    /// One event for `conn` in its dialect (the server's own refusals, such
    /// as a busy writer); `None` for a connection the hub does not know.
    pub fn tell(&self, conn: ConnId, event: Event<'_>, id: Option<&str>) -> Option<String> {
        self.peers.get(&conn).map(|p| p.dialect.frame(&event, id))
    }

    /// A connection is gone: forget its subscriptions.
    pub fn leave(&mut self, conn: ConnId, now: Instant) {
        if let Some(peer) = self.peers.remove(&conn) {
            for (ch, _) in &peer.subs {
                self.drop_subscriber(ch, conn);
                self.depart(ch, peer.member(ch).0, now);
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

    /// Handles one request from `conn` (its `id` as the client wrote it),
    /// pushing what to do into `out`.
    pub fn handle(
        &mut self,
        conn: ConnId,
        id: Option<&str>,
        req: Request<'_>,
        now: Instant,
        store: &impl History,
        out: &mut Vec<Action>,
    ) {
        // Each request gets one answer (none for an unknown connection); a
        // presence subscription also gets the member list, before anything
        // replayed.
        let answer = match req {
            Request::Sub { ch, start, state } => match self.on_sub(conn, ch, start, state, id, store, now) {
                // Only a subscription that was made gets the member list: a refused one gets its `err` alone.
                Some(Ok(subok)) => {
                    out.push(subok);
                    if self.rules.is_presence(ch) {
                        self.on_presence(conn, ch, None)
                    } else {
                        None
                    }
                }
                Some(Err(refused)) => Some(refused),
                None => None,
            },
            Request::Unsub { ch } => self.on_unsub(conn, ch, id, now),
            Request::Pub { ch, data, key, event } => self.on_pub(conn, ch, data, key, event, id, now),
            Request::Hist { ch, since, limit } => self.on_hist(conn, ch, since, limit, id, store),
            Request::Presence { ch } => self.on_presence(conn, ch, id),
        };
        out.extend(answer);
    }

    /// `sub`: checks, replies `subok`, then holds (or moves) the cursor.
    /// `Ok(subok)`, or `Err(refusal)` when nothing was subscribed.
    #[allow(clippy::too_many_arguments)] // a request's fields, as they came
    fn on_sub(
        &mut self,
        conn: ConnId,
        ch: &str,
        start: Start<'_>,
        state: bool,
        id: Option<&str>,
        store: &impl History,
        now: Instant,
    ) -> Option<Result<Action, Action>> {
        let peer = self.peers.get_mut(&conn)?;
        if let Some(refused) = peer.over_rate(now, self.limits.publish_rate, id) {
            return refused.map(Err);
        }
        if !peer.claims.read.allows(ch) {
            return peer.refuse(ErrCode::Forbidden, "this token may not read that channel", id).map(Err);
        }
        let resub = peer.cursor(ch).is_some();
        if !resub && peer.subs.len() >= self.limits.max_subscriptions {
            return peer.refuse(ErrCode::TooManySubscriptions, "unsubscribe from a channel first", id).map(Err);
        }
        let compacted = self.rules.is_compacted(ch);
        if state && !compacted {
            let msg = "state:true needs a compacted channel (--compact); use since or last";
            return peer.refuse(ErrCode::BadRequest, msg, id).map(Err);
        }
        let (cursor, gap) = match start_cursor(store, ch, start, state, &self.epoch, compacted) {
            Ok(start) => start,
            Err(e) => {
                log::warn!("reading channel state failed: {e}");
                return peer.refuse(ErrCode::Unavailable, "the store cannot be read; try again", id).map(Err);
            }
        };
        if !resub {
            if let Err((code, msg)) = self.arrive(conn, ch, now) {
                return self.peers.get(&conn)?.refuse(code, msg, id).map(Err);
            }
        }
        let peer = self.peers.get_mut(&conn)?;
        let subok = peer.say(Event::Subscribed { ch, seq: cursor.seen, epoch: &self.epoch, gap }, id)?;
        let cursor = cursor.cursor;
        if let Some(held) = peer.cursor(ch) {
            *held = cursor;
        } else {
            let name = match self.channels.get_key_value(ch) {
                Some((name, _)) => name.clone(),
                None => Arc::from(ch),
            };
            peer.subs.push((name.clone(), cursor));
            self.channels.entry(name).or_default().push(conn);
        }
        if !cursor.live {
            self.replaying.insert(conn);
        }
        Some(Ok(subok))
    }

    /// `unsub`: always `unsubok`, subscribed or not.
    fn on_unsub(&mut self, conn: ConnId, ch: &str, id: Option<&str>, now: Instant) -> Option<Action> {
        let peer = self.peers.get_mut(&conn)?;
        if let Some(refused) = peer.over_rate(now, self.limits.publish_rate, id) {
            return refused;
        }
        let answer = peer.say(Event::Unsubscribed { ch }, id);
        if let Some(at) = peer.subs.iter().position(|(c, _)| &**c == ch) {
            peer.subs.swap_remove(at);
            let user = peer.member(ch).0.to_string();
            peer.unname(ch);
            self.drop_subscriber(ch, conn);
            self.depart(ch, &user, now);
        }
        answer
    }

    /// `pub`: checks the token, the id's size and the publish rate, then
    /// asks the server to commit.
    #[allow(clippy::too_many_arguments)] // a request's fields, as they came
    fn on_pub(
        &mut self,
        conn: ConnId,
        ch: &str,
        data: &str,
        key: Option<&str>,
        event: Option<&str>,
        id: Option<&str>,
        now: Instant,
    ) -> Option<Action> {
        let peer = self.peers.get_mut(&conn)?;
        if !peer.claims.write.allows(ch) {
            return peer.refuse(ErrCode::Forbidden, "this token may not publish to that channel", id);
        }
        if id.is_some_and(|id| !store::dedupe_fits(&peer.claims.sub, id)) {
            return peer.refuse(
                ErrCode::BadRequest,
                "the token's sub and this id are over 501 bytes together; use a shorter id or sub",
                id,
            );
        }
        if let Some(refused) = peer.over_rate(now, self.limits.publish_rate, id) {
            return refused;
        }
        Some(Action::Publish(Publish {
            ch: ch.to_string(),
            from: peer.claims.sub.clone(),
            data: data.to_string(),
            id: id.map(str::to_string),
            key: key.map(str::to_string),
            event: event.map(str::to_string),
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
            return peer.refuse(ErrCode::Forbidden, "this token may not read that channel", id);
        }
        let mut msgs = String::with_capacity(256);
        let max_bytes = self.limits.max_reply_bytes.min(self.reply_room);
        match page(store, ch, since, limit as usize, max_bytes, &*peer.dialect, &mut msgs) {
            Ok(page) => peer.say(Event::History { ch, msgs: &msgs, page }, id),
            Err(e) => {
                log::warn!("reading history failed: {e}");
                peer.refuse(ErrCode::Unavailable, "the store cannot be read; try again", id)
            }
        }
    }

    /// One publish's commit result, in one place: the publisher's reply
    /// (`ack`, or `err` when the store refused the item) and, for a stored
    /// message, the message written once per dialect with the connections
    /// whose cursor it is. `publisher` is the connection answered here;
    /// `None` for a publisher answered elsewhere (an HTTP publish).
    pub fn on_commit(&mut self, publish: &Publish, outcome: &Outcome, publisher: Option<ConnId>) -> Committed {
        self.on_commit_except(publish, outcome, publisher, None)
    }

    /// [`Hub::on_commit`], leaving connection `except` out of the delivery
    /// (Pusher's `socket_id`, Laravel's `toOthers()`): its cursor moves on
    /// as if it had been sent, so the message is not replayed to it either.
    pub fn on_commit_except(
        &mut self,
        publish: &Publish,
        outcome: &Outcome,
        publisher: Option<ConnId>,
        except: Option<ConnId>,
    ) -> Committed {
        let id = publish.id.as_deref();
        let dialect = publisher.and_then(|c| self.peers.get(&c)).map(|p| p.dialect);
        let answer = |event: Event<'_>| dialect.map(|d| d.frame(&event, id));
        match outcome {
            Outcome::Stored { seq, ts } => {
                let msg = Msg {
                    ch: &publish.ch,
                    seq: *seq,
                    ts: *ts,
                    from: &publish.from,
                    data: &publish.data,
                    key: publish.key.as_deref(),
                    event: publish.event.as_deref(),
                };
                let reply = answer(Event::Acked { ch: &publish.ch, seq: *seq });
                Committed { reply, deliveries: self.committed(&msg, except) }
            }
            Outcome::Duplicate { ch, seq, .. } => {
                Committed { reply: answer(Event::Acked { ch, seq: *seq }), deliveries: Vec::new() }
            }
            Outcome::Invalid(_) => Committed {
                reply: answer(Event::Refused { code: ErrCode::BadRequest, msg: "the store cannot hold this message" }),
                deliveries: Vec::new(),
            },
            Outcome::OverLimit(Limit::Channels) => Committed {
                reply: answer(Event::Refused {
                    code: ErrCode::TooManyChannels,
                    msg: "the store holds --max-channels channels; publish to an existing one",
                }),
                deliveries: Vec::new(),
            },
            Outcome::OverLimit(Limit::Keys) => Committed {
                reply: answer(Event::Refused {
                    code: ErrCode::TooManyKeys,
                    msg: "the channel holds --max-keys live keys; reuse a key or delete one (data null)",
                }),
                deliveries: Vec::new(),
            },
            // Not a publish's outcome.
            Outcome::Written => Committed::default(),
        }
    }

    /// A message was committed: the connections that must receive it now,
    /// with the message written once in each of their dialects. Replaying
    /// subscribers read it from the store later.
    fn committed(&mut self, msg: &Msg<'_>, except: Option<ConnId>) -> Vec<(String, Vec<ConnId>)> {
        let mut deliveries: Vec<(Door, String, Vec<ConnId>)> = Vec::new();
        let Some((name, list)) = self.channels.get_key_value(msg.ch) else { return Vec::new() };
        for &conn in list {
            let Some(peer) = self.peers.get_mut(&conn) else { continue };
            let dialect = peer.dialect;
            let Some(cursor) = peer.cursor_of(name) else { continue };
            if !cursor.live || msg.seq < cursor.next {
                continue;
            }
            if msg.seq == cursor.next {
                cursor.next += 1;
                if except == Some(conn) {
                    continue;
                }
                match deliveries.iter_mut().find(|(d, ..)| d.same(dialect)) {
                    Some((.., to)) => to.push(conn),
                    None => deliveries.push((dialect, dialect.frame(&Event::Message(*msg), None), vec![conn])),
                }
            } else {
                // A hole between what was sent and this message: read it
                // from the store rather than skip it.
                cursor.live = false;
                self.replaying.insert(conn);
            }
        }
        deliveries.into_iter().map(|(_, text, to)| (text, to)).collect()
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
            let dialect = peer.dialect;
            let snapshot = cursor.snapshot;
            let res = store.read(ch, next - 1, REPLAY_BATCH, |r: Record<'_>| {
                read += 1;
                next = r.seq + 1;
                // A snapshot is the latest message of every key: on a
                // compacted channel exactly the keyed messages still stored.
                if snapshot && r.key.is_none() {
                    return true;
                }
                let text = dialect.frame(&Event::Message(history::msg(ch, &r)), None);
                used += text.len();
                out.push(text);
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
                        if cursor.snapshot {
                            cursor.snapshot = false;
                            let end = Event::StateEnd { ch, seq: cursor.next - 1 };
                            out.push(dialect.frame(&end, None));
                        }
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
        let cap = 2.0 * rate as f32;
        let elapsed = now.saturating_duration_since(self.at).min(Duration::from_secs(60));
        self.tokens = (self.tokens + elapsed.as_secs_f32() * rate as f32).min(cap);
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

/// A new subscription's cursor, and the channel's last seq as its `subok` says.
struct Begin {
    cursor: Cursor,
    seen: Seq,
}

/// Where a new subscription starts, and whether the client missed messages
/// it cannot get back (spec §4: other epoch, trimmed, or `since` past the
/// end). On a compacted channel a resume that missed messages starts with a
/// state snapshot instead (spec §8): the client is whole again in one step.
fn start_cursor(
    store: &impl History,
    ch: &str,
    start: Start<'_>,
    state: bool,
    ours: &str,
    compacted: bool,
) -> Result<(Begin, bool), StoreError> {
    let info = store.channel(ch)?;
    let begin = |cursor| Begin { cursor, seen: info.last };
    let replay_from = |next: Seq| Cursor { next, live: next > info.last, snapshot: false };
    let snapshot = Cursor { next: info.first, live: false, snapshot: true };
    let gap = |cursor| Ok((begin(if compacted { snapshot } else { cursor }), true));
    match start {
        Start::Now if state => Ok((begin(snapshot), false)),
        Start::Now => Ok((begin(Cursor::live_from(info.last + 1)), false)),
        Start::Last(n) => Ok((begin(replay_from(store.tail(ch, n)? + 1)), false)),
        Start::Since { since: 0, .. } if info.first > 1 => gap(replay_from(info.first)),
        Start::Since { since: 0, .. } => Ok((begin(replay_from(info.first)), false)),
        Start::Since { since, epoch } if epoch.as_deref() != Some(ours) || since > info.last => {
            gap(replay_from(info.first))
        }
        Start::Since { since, .. } if since + 1 < info.first => gap(replay_from(info.first)),
        Start::Since { since, .. } if compacted && since < info.last && !store.holds(ch, since + 1)? => {
            gap(replay_from(info.first))
        }
        Start::Since { since, .. } => Ok((begin(replay_from(since + 1)), false)),
    }
}

#[cfg(test)]
mod tests;
