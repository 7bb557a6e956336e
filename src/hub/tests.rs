//! Hub tests: plain values in, actions out. Most run over `Fake`, an
//! in-memory history that can be told to fail; the ones about the store
//! itself (dedupe, key sizes, retention) run over a real store in a temp
//! folder, and the central scenarios run over both. Commits are simulated
//! the way the server does them: commit the batch, then `on_commit` for
//! each publish.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;
use crate::auth::{Claims, Patterns};
use crate::proto::roost;
use crate::store::{Append, ChannelInfo, Outcome, Record, Retention, Store, StoreError};

const KEEP_ALL: Retention = Retention { messages: u64::MAX, age_ms: u64::MAX };

/// What a test world reads from and commits to.
trait Backend {
    type H: History;
    fn history(&self) -> &Self::H;
    fn epoch(&self) -> &str;
    /// Commits a batch: one outcome per publish, in order.
    fn commit(&mut self, batch: &[Publish]) -> Vec<Outcome>;
}

/// The real store in a temp folder.
struct Real {
    _dir: tempfile::TempDir,
    store: Store,
}

impl Real {
    fn new() -> Real {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24).unwrap();
        Real { _dir: dir, store }
    }
}

impl Backend for Real {
    type H = Store;

    fn history(&self) -> &Store {
        &self.store
    }

    fn epoch(&self) -> &str {
        self.store.epoch()
    }

    fn commit(&mut self, batch: &[Publish]) -> Vec<Outcome> {
        let appends: Vec<Append> = batch
            .iter()
            .map(|p| Append {
                ch: p.ch.clone(),
                from: p.from.clone(),
                data: p.data.clone(),
                id: p.id.clone(),
                key: None,
                event: None,
            })
            .collect();
        self.store.append_batch(&appends, 1000, 60_000, &|_| KEEP_ALL).unwrap()
    }
}

/// `(seq, from, data, key)`.
type Stored = (Seq, String, String, Option<String>);

/// An in-memory history: seqs from 1 per channel, `ts` = seq, no dedupe.
#[derive(Default)]
struct Fake {
    /// Each channel's state and its stored `(seq, from, data)`, oldest first.
    channels: HashMap<String, (ChannelInfo, Vec<Stored>)>,
    /// `Some(n)`: reads fail after giving `n` messages (`Some(0)`: at once,
    /// and `channel` fails too), as LMDB may on a broken environment.
    fail: Option<usize>,
}

impl Fake {
    fn error() -> StoreError {
        StoreError::Fatal("the fake was told to fail".into())
    }

    /// Drops all but the newest `keep` messages, as retention does.
    fn trim(&mut self, ch: &str, keep: usize) {
        let (info, msgs) = self.channels.get_mut(ch).unwrap();
        let cut = msgs.len().saturating_sub(keep);
        msgs.drain(..cut);
        info.first = msgs.first().map_or(info.last + 1, |m| m.0);
    }
}

impl History for Fake {
    fn channel(&self, ch: &str) -> Result<ChannelInfo, StoreError> {
        if self.fail == Some(0) {
            return Err(Fake::error());
        }
        Ok(self.channels.get(ch).map_or(ChannelInfo::EMPTY, |(info, _)| *info))
    }

    fn read(
        &self,
        ch: &str,
        after: Seq,
        limit: usize,
        mut each: impl FnMut(Record<'_>) -> bool,
    ) -> Result<ChannelInfo, StoreError> {
        let Some((info, msgs)) = self.channels.get(ch) else { return Ok(ChannelInfo::EMPTY) };
        for (given, (seq, from, data, key)) in msgs.iter().filter(|m| m.0 > after).take(limit).enumerate() {
            if self.fail == Some(given) {
                return Err(Fake::error());
            }
            let record = Record { seq: *seq, ts: *seq, from, data, key: key.as_deref(), event: None };
            if !each(record) {
                break;
            }
        }
        if self.fail == Some(0) {
            return Err(Fake::error());
        }
        Ok(*info)
    }
}

impl Backend for Fake {
    type H = Fake;

    fn history(&self) -> &Fake {
        self
    }

    fn epoch(&self) -> &str {
        "fake-epoch"
    }

    fn commit(&mut self, batch: &[Publish]) -> Vec<Outcome> {
        let mut out = Vec::new();
        for p in batch {
            let (info, msgs) = self.channels.entry(p.ch.clone()).or_insert((ChannelInfo::EMPTY, Vec::new()));
            info.last += 1;
            // Channels named `kv…` are compacted here: a key's new message
            // removes its previous one (holes in the seqs, as in the store).
            if p.ch.starts_with("kv") && p.key.is_some() {
                msgs.retain(|m| m.3 != p.key);
            }
            msgs.push((info.last, p.from.clone(), p.data.clone(), p.key.clone()));
            info.first = msgs[0].0;
            out.push(Outcome::Stored { seq: info.last, ts: info.last });
        }
        out
    }
}

struct World<B> {
    b: B,
    hub: Hub,
    now: Instant,
    /// Everything each connection was sent, as JSON.
    inbox: HashMap<ConnId, Vec<Value>>,
    closed: Vec<(ConnId, u16)>,
}

fn claims(sub: &str, read: &[&str], write: &[&str]) -> Claims {
    let p = |v: &[&str]| Patterns::new(v.iter().map(|s| s.to_string()).collect());
    Claims { sub: sub.into(), exp: u64::MAX, read: p(read), write: p(write), api: false, info: None }
}

const LIMITS: Limits = Limits { max_subscriptions: 4, publish_rate: 0, max_reply_bytes: 1 << 20 };

impl World<Fake> {
    fn new() -> World<Fake> {
        World::over(Fake::default(), LIMITS)
    }
}

impl World<Real> {
    fn real() -> World<Real> {
        World::over(Real::new(), LIMITS)
    }
}

impl<B: Backend> World<B> {
    fn over(b: B, limits: Limits) -> World<B> {
        let hub = Hub::new(b.epoch(), limits);
        World { b, hub, now: Instant::now(), inbox: HashMap::new(), closed: Vec::new() }
    }

    fn epoch(&self) -> String {
        self.b.epoch().to_string()
    }

    fn join(&mut self, conn: ConnId, c: Claims) {
        self.hub.join(conn, c, roost::ROOST, self.now);
    }

    /// Sends one request; publishes are committed at once.
    fn req(&mut self, conn: ConnId, v: Value) {
        let mut out = Vec::new();
        let text = v.to_string();
        match roost::parse(&text) {
            Ok(p) => self.hub.handle(conn, p.id, p.req, self.now, self.b.history(), &mut out),
            Err(e) => out.push(Action::Reply(roost::err(e.code, e.msg, e.id))),
        }
        self.act(conn, out);
    }

    fn act(&mut self, conn: ConnId, out: Vec<Action>) {
        let mut publishes = Vec::new();
        for a in out {
            match a {
                Action::Reply(t) => self.deliver(conn, &t),
                Action::Publish(p) => publishes.push(p),
                Action::Close(code, _) => self.closed.push((conn, code)),
            }
        }
        if !publishes.is_empty() {
            self.commit(conn, publishes);
        }
    }

    fn commit(&mut self, conn: ConnId, publishes: Vec<Publish>) {
        let outcomes = self.b.commit(&publishes);
        for (p, o) in publishes.into_iter().zip(outcomes) {
            let committed = self.hub.on_commit(&p, &o, Some(conn));
            if let Some(reply) = committed.reply {
                self.deliver(conn, &reply);
            }
            for (text, to) in committed.deliveries {
                for c in to {
                    self.deliver(c, &text);
                }
            }
        }
    }

    /// Stores a message behind the hub's back (as if committed, result not
    /// yet collected).
    fn store_only(&mut self, ch: &str, data: &str) -> Seq {
        let p = Publish { ch: ch.into(), from: "x".into(), data: data.into(), id: None, key: None, event: None };
        match self.b.commit(&[p])[0] {
            Outcome::Stored { seq, .. } => seq,
            ref o => panic!("{o:?}"),
        }
    }

    fn pump(&mut self, room: usize) {
        for conn in self.hub.replaying().collect::<Vec<_>>() {
            let mut texts = Vec::new();
            self.hub.pump(conn, self.b.history(), room, &mut texts);
            for t in texts {
                self.deliver(conn, &t);
            }
        }
    }

    fn deliver(&mut self, conn: ConnId, text: &str) {
        self.inbox.entry(conn).or_default().push(serde_json::from_str(text).unwrap());
    }

    fn take(&mut self, conn: ConnId) -> Vec<Value> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    /// Seqs of the `msg`s a connection got, in order.
    fn seqs(&mut self, conn: ConnId) -> Vec<u64> {
        self.take(conn).iter().filter(|v| v["op"] == "msg").map(|v| v["seq"].as_u64().unwrap()).collect()
    }
}

/// Publishes `n` messages in one commit, as one loop turn's worth would be.
fn publish<B: Backend>(w: &mut World<B>, conn: ConnId, ch: &str, n: usize) {
    let mut out = Vec::new();
    for i in 0..n {
        let text = json!({"op":"pub","ch":ch,"data":{"i":i}}).to_string();
        let p = roost::parse(&text).unwrap();
        w.hub.handle(conn, p.id, p.req, w.now, w.b.history(), &mut out);
    }
    w.act(conn, out);
}

#[test]
fn publish_acks_and_fans_out() {
    acks_and_fans_out(World::new());
    acks_and_fans_out(World::real());
}

fn acks_and_fans_out<B: Backend>(mut w: World<B>) {
    w.join(1, claims("alice", &["*"], &["*"]));
    w.join(2, claims("bob", &["room:*"], &[]));
    w.req(2, json!({"op":"sub","ch":"room:1","id":"s"}));
    let epoch = w.epoch();
    assert_eq!(w.take(2), vec![json!({"op":"subok","ch":"room:1","seq":0,"epoch":epoch,"id":"s"})]);
    w.req(1, json!({"op":"pub","ch":"room:1","data":{"t":"hi"},"id":7}));
    assert_eq!(w.take(1), vec![json!({"op":"ack","id":7,"ch":"room:1","seq":1})]);
    let got = w.take(2);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0]["from"].clone(), got[0]["data"].clone()), (json!("alice"), json!({"t":"hi"})));
}

#[test]
fn permissions_and_limits_answer_with_errors() {
    let mut w = World::new();
    w.join(1, claims("u", &["room:*"], &["room:1"]));
    let err_code = |w: &mut World<Fake>| w.take(1).pop().unwrap()["code"].clone();
    w.req(1, json!({"op":"sub","ch":"other","id":1}));
    assert_eq!(err_code(&mut w), "forbidden");
    w.req(1, json!({"op":"hist","ch":"other"}));
    assert_eq!(err_code(&mut w), "forbidden");
    w.req(1, json!({"op":"pub","ch":"room:2","data":1}));
    assert_eq!(err_code(&mut w), "forbidden");
    for i in 0..4 {
        w.req(1, json!({"op":"sub","ch":format!("room:{i}")}));
    }
    w.take(1);
    w.req(1, json!({"op":"sub","ch":"room:9"}));
    assert_eq!(err_code(&mut w), "too_many_subscriptions");
    // Re-subscribing to a held channel is not a new subscription.
    w.req(1, json!({"op":"sub","ch":"room:0"}));
    assert_eq!(w.take(1)[0]["op"], "subok");
    w.req(1, json!({"op":"nope"}));
    assert_eq!(err_code(&mut w), "unknown_op");
}

#[test]
fn resume_replays_exactly_what_was_missed() {
    resumes_exactly(World::new());
    resumes_exactly(World::real());
}

fn resumes_exactly<B: Backend>(mut w: World<B>) {
    w.join(1, claims("p", &[], &["*"]));
    publish(&mut w, 1, "c", 5);
    w.join(2, claims("s", &["*"], &[]));
    let epoch = w.epoch();
    w.req(2, json!({"op":"sub","ch":"c","since":2,"epoch":epoch}));
    assert_eq!(w.take(2)[0]["seq"], 5, "subok carries the last seq");
    // Live messages published before the replay ran must not jump the queue.
    publish(&mut w, 1, "c", 2);
    assert_eq!(w.seqs(2), Vec::<u64>::new());
    w.pump(1 << 20);
    assert_eq!(w.seqs(2), vec![3, 4, 5, 6, 7]);
    publish(&mut w, 1, "c", 1);
    assert_eq!(w.seqs(2), vec![8]);
}

/// Connection 1 published `n` messages to `c`; connection 2 subscribed
/// with `since: 0` (its `subok` taken) and has all of them to replay.
fn replaying_from_start(n: usize) -> World<Fake> {
    let mut w = World::new();
    w.join(1, claims("p", &[], &["*"]));
    publish(&mut w, 1, "c", n);
    w.join(2, claims("s", &["*"], &[]));
    w.req(2, json!({"op":"sub","ch":"c","since":0}));
    assert_eq!(w.take(2)[0]["op"], "subok");
    w
}

#[test]
fn replay_is_bounded_by_room_and_has_no_gap_or_duplicate() {
    let mut w = replaying_from_start(600);
    let mut seen = Vec::new();
    let mut rounds = 0;
    while w.hub.replaying().next().is_some() {
        w.pump(2000);
        let got = w.seqs(2);
        assert!(got.len() <= 40, "a pump of 2000 bytes sent {} messages", got.len());
        seen.extend(got);
        // Interleave live publishes with the replay.
        if rounds % 5 == 0 {
            publish(&mut w, 1, "c", 1);
            seen.extend(w.seqs(2));
        }
        rounds += 1;
        assert!(rounds < 10_000);
    }
    publish(&mut w, 1, "c", 1);
    seen.extend(w.seqs(2));
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(seen, expected);
    assert!(seen.len() > 600);
}

#[test]
fn a_commit_seen_by_replay_before_its_result_is_not_sent_twice() {
    let mut w = World::new();
    w.join(2, claims("s", &["*"], &[]));
    w.store_only("c", "1");
    w.req(2, json!({"op":"sub","ch":"c","since":0}));
    // Message 2 is committed, but its result has not reached the hub yet.
    let seq = w.store_only("c", "2");
    w.pump(1 << 20);
    assert_eq!(w.seqs(2), vec![1, 2]);
    // Now the result arrives: the cursor is already past it.
    let msg = Msg { ch: "c", seq, ts: seq, from: "x", data: "2", key: None, event: None };
    assert_eq!(w.hub.committed(&msg, None), Vec::new());
}

#[test]
fn gaps_are_reported() {
    reports_gaps(World::new());
    reports_gaps(World::real());
}

fn reports_gaps<B: Backend>(mut w: World<B>) {
    w.join(1, claims("p", &["*"], &["*"]));
    publish(&mut w, 1, "c", 3);
    w.take(1);
    let epoch = w.epoch();
    let cases = [
        (json!({"op":"sub","ch":"c","since":1,"epoch":"another"}), true, vec![1, 2, 3]),
        (json!({"op":"sub","ch":"c","since":9,"epoch":epoch}), true, vec![1, 2, 3]),
        (json!({"op":"sub","ch":"c","since":0,"epoch":"ignored"}), false, vec![1, 2, 3]),
        (json!({"op":"sub","ch":"c","since":2,"epoch":epoch}), false, vec![3]),
        (json!({"op":"sub","ch":"c","since":3,"epoch":epoch}), false, vec![]),
        (json!({"op":"sub","ch":"c"}), false, vec![]),
    ];
    for (req, gap, replay) in cases {
        w.req(1, req.clone());
        let subok = w.take(1).remove(0);
        assert_eq!(subok["gap"].as_bool().unwrap_or(false), gap, "{req}");
        w.pump(1 << 20);
        assert_eq!(w.seqs(1), replay, "{req}");
    }
}

#[test]
fn trimmed_history_is_a_gap() {
    trimmed_is_a_gap(World::new(), |fake| fake.trim("c", 2));
    trimmed_is_a_gap(World::real(), |real| {
        // A lowered count limit, as after a restart with new settings.
        let keep2 = |_: &str| Retention { messages: 2, age_ms: u64::MAX };
        real.store.index_retention("keep 2", &keep2).unwrap();
        real.store.maintain(1_000_000, 100, &keep2).unwrap();
    });
}

/// `trim` keeps the newest 2 messages of channel `c`.
fn trimmed_is_a_gap<B: Backend>(mut w: World<B>, trim: impl FnOnce(&mut B)) {
    w.join(1, claims("p", &["*"], &["*"]));
    publish(&mut w, 1, "c", 5);
    w.take(1);
    trim(&mut w.b);
    let epoch = w.epoch();
    w.req(1, json!({"op":"sub","ch":"c","since":1,"epoch":epoch}));
    assert_eq!(w.take(1)[0]["gap"], true);
    w.pump(1 << 20);
    assert_eq!(w.seqs(1), vec![4, 5]);
    w.req(1, json!({"op":"hist","ch":"c","since":1}));
    let h = w.take(1).remove(0);
    assert_eq!((h["gap"].clone(), h["msgs"].as_array().unwrap().len()), (json!(true), 2));
    w.req(1, json!({"op":"hist","ch":"c","since":3}));
    assert_eq!(w.take(1)[0].get("gap"), None);
}

#[test]
fn hist_pages_by_limit_and_bytes() {
    let mut w = World::over(Fake::default(), Limits { max_reply_bytes: 1000, ..LIMITS });
    w.join(1, claims("p", &["*"], &["*"]));
    publish(&mut w, 1, "c", 50);
    w.take(1);
    w.req(1, json!({"op":"hist","ch":"c","limit":10,"id":"h"}));
    let h = w.take(1).remove(0);
    assert_eq!(
        (h["msgs"].as_array().unwrap().len(), h["more"].clone(), h["id"].clone()),
        (10, json!(true), json!("h"))
    );
    w.req(1, json!({"op":"hist","ch":"c","since":45,"limit":10}));
    let h = w.take(1).remove(0);
    assert_eq!((h["msgs"][0]["seq"].clone(), h["more"].clone()), (json!(46), json!(false)));
    // A reply is cut near max_reply_bytes; `more` tells the client to page on.
    w.req(1, json!({"op":"hist","ch":"c","limit":1000}));
    let h = w.take(1).remove(0);
    let n = h["msgs"].as_array().unwrap().len();
    assert!(n < 50 && n > 5, "{n}");
    assert_eq!(h["more"], true);
}

#[test]
fn with_no_room_left_for_output_a_hist_page_is_one_message_and_says_more() {
    let mut w = World::new();
    w.join(1, claims("p", &["*"], &["*"]));
    publish(&mut w, 1, "c", 5);
    w.take(1);
    w.hub.set_reply_room(0);
    w.req(1, json!({"op":"hist","ch":"c","since":2,"limit":100}));
    let h = w.take(1).remove(0);
    assert_eq!(
        (h["msgs"].as_array().unwrap().len(), h["msgs"][0]["seq"].clone(), h["more"].clone()),
        (1, json!(3), json!(true))
    );
    w.hub.set_reply_room(usize::MAX);
    w.req(1, json!({"op":"hist","ch":"c","since":3,"limit":100}));
    let h = w.take(1).remove(0);
    assert_eq!((h["msgs"].as_array().unwrap().len(), h["more"].clone()), (2, json!(false)), "room again: whole pages");
}

#[test]
fn unsubscribe_stops_delivery_and_leave_forgets() {
    let mut w = World::new();
    w.join(1, claims("p", &["*"], &["*"]));
    w.join(2, claims("s", &["*"], &[]));
    w.req(2, json!({"op":"sub","ch":"c"}));
    w.req(2, json!({"op":"unsub","ch":"c","id":3}));
    assert_eq!(w.take(2)[1], json!({"op":"unsubok","ch":"c","id":3}));
    publish(&mut w, 1, "c", 1);
    assert!(w.seqs(2).is_empty());
    w.req(2, json!({"op":"sub","ch":"c"}));
    w.hub.leave(2, w.now);
    publish(&mut w, 1, "c", 1);
    assert!(w.take(2).iter().all(|v| v["op"] != "msg"));
    assert_eq!(w.hub.subscription_count(), 0);
}

#[test]
fn publish_rate_is_limited_then_closed_on_sustained_abuse() {
    let mut w = World::over(Fake::default(), Limits { publish_rate: 10, ..LIMITS });
    w.join(1, claims("p", &[], &["*"]));
    publish(&mut w, 1, "c", 20);
    assert_eq!(w.take(1).iter().filter(|v| v["op"] == "ack").count(), 20, "burst is 2x the rate");
    publish(&mut w, 1, "c", 1);
    assert_eq!(w.take(1)[0]["code"], "rate_limited");
    // Half a second refills five.
    w.now += Duration::from_millis(500);
    publish(&mut w, 1, "c", 6);
    let got = w.take(1);
    assert_eq!(got.iter().filter(|v| v["op"] == "ack").count(), 5);
    publish(&mut w, 1, "c", 30);
    assert_eq!(w.closed.first(), Some(&(1, 1008)));
}

#[test]
fn sub_and_unsub_share_the_publish_rate_and_a_storm_is_closed() {
    let mut w = World::over(Fake::default(), Limits { publish_rate: 5, max_subscriptions: 1000, ..LIMITS });
    w.join(1, claims("p", &["*"], &["*"]));
    for i in 0..10 {
        let op = if i % 2 == 0 { "sub" } else { "unsub" };
        w.req(1, json!({"op": op, "ch": "c", "id": i}));
    }
    let got = w.take(1);
    assert!(got.iter().all(|v| v["op"] == "subok" || v["op"] == "unsubok"), "a burst of 2x the rate: {got:?}");
    w.req(1, json!({"op":"sub","ch":"d","id":"x"}));
    assert_eq!(w.take(1)[0]["code"], "rate_limited");
    publish(&mut w, 1, "c", 1);
    assert_eq!(w.take(1)[0]["code"], "rate_limited", "one bucket for all three");
    for i in 0..20 {
        w.req(1, json!({"op":"unsub","ch":"c","id":i}));
    }
    assert_eq!(w.closed.first(), Some(&(1, 1008)), "a sustained storm closes the connection");
}

#[test]
fn duplicate_ids_ack_the_original() {
    let mut w = World::real();
    w.join(1, claims("p", &[], &["*"]));
    w.req(1, json!({"op":"pub","ch":"c","data":1,"id":"a"}));
    w.req(1, json!({"op":"pub","ch":"c","data":2,"id":"a"}));
    w.req(1, json!({"op":"pub","ch":"c","data":3,"id":"b"}));
    let acks: Vec<u64> = w.take(1).iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(acks, vec![1, 1, 2]);
}

#[test]
fn the_longest_sub_and_id_publish_and_one_byte_more_is_a_bad_request() {
    use crate::store::MAX_DEDUPE_SUB_AND_ID_BYTES;
    let mut w = World::real();
    // The id "k" is 3 bytes of JSON text; the longest id (128 bytes) leaves the least room.
    let long_id = format!("\"{}\"", "i".repeat(crate::proto::roost::MAX_ID_BYTES - 2));
    for (id, id_text) in [(json!("k"), "\"k\"".to_string()), (json!(long_id[1..long_id.len() - 1]), long_id.clone())] {
        let room = MAX_DEDUPE_SUB_AND_ID_BYTES - id_text.len();
        w.join(1, claims(&"s".repeat(room), &["*"], &["*"]));
        w.join(2, claims(&"s".repeat(room + 1), &["*"], &["*"]));
        w.req(1, json!({"op":"pub","ch":"a","data":1,"id":id}));
        assert_eq!(w.take(1)[0]["op"], "ack", "a sub of {room} bytes with a {}-byte id commits", id_text.len());
        w.req(2, json!({"op":"pub","ch":"a","data":1,"id":id}));
        let got = w.take(2);
        assert_eq!((&got[0]["op"], &got[0]["code"], &got[0]["id"]), (&json!("err"), &json!("bad_request"), &id));
        // Without an id nothing keys the dedupe tables: the same sub publishes.
        w.req(2, json!({"op":"pub","ch":"a","data":1}));
        assert_eq!(w.take(2)[0]["op"], "ack");
        w.hub.leave(1, w.now);
        w.hub.leave(2, w.now);
    }
    // The longest dedupe records also expire (their expiry keys are the longest keys).
    assert_eq!(w.b.store.maintain(1000 + 60_001, 100, &|_| KEEP_ALL).unwrap(), 2);
}

#[test]
fn a_failed_channel_read_refuses_the_sub_and_holds_nothing() {
    let mut w = World::new();
    w.join(1, claims("p", &[], &["*"]));
    w.join(2, claims("s", &["*"], &[]));
    publish(&mut w, 1, "c", 2);
    w.b.fail = Some(0);
    w.req(2, json!({"op":"sub","ch":"c","since":0,"id":"s"}));
    let got = w.take(2);
    assert_eq!(
        got,
        vec![json!({"op":"err","code":"unavailable","msg":"the store cannot be read; try again","id":"s"})]
    );
    assert_eq!((w.hub.subscription_count(), w.hub.replaying().count()), (0, 0));
    publish(&mut w, 1, "c", 1);
    assert!(w.seqs(2).is_empty(), "a refused sub receives nothing");
    // Once the store reads again, the same request works and loses nothing.
    w.b.fail = None;
    w.req(2, json!({"op":"sub","ch":"c","since":0,"id":"s"}));
    assert_eq!(w.take(2)[0]["op"], "subok");
    w.pump(1 << 20);
    assert_eq!(w.seqs(2), vec![1, 2, 3]);
}

#[test]
fn a_failed_hist_read_answers_unavailable_and_no_partial_page() {
    let mut w = World::new();
    w.join(1, claims("p", &["*"], &["*"]));
    publish(&mut w, 1, "c", 5);
    w.take(1);
    // At once, and after two messages were read.
    for fail in [0, 2] {
        w.b.fail = Some(fail);
        w.req(1, json!({"op":"hist","ch":"c","id":"h"}));
        assert_eq!(
            w.take(1),
            vec![json!({"op":"err","code":"unavailable","msg":"the store cannot be read; try again","id":"h"})],
            "failing after {fail}"
        );
    }
    w.b.fail = None;
    w.req(1, json!({"op":"hist","ch":"c","id":"h"}));
    assert_eq!(w.take(1)[0]["msgs"].as_array().unwrap().len(), 5);
}

#[test]
fn a_failed_replay_read_keeps_the_cursor_and_retries() {
    let mut w = replaying_from_start(3);
    w.b.fail = Some(0);
    w.pump(1 << 20);
    assert!(w.take(2).is_empty(), "a failed read sends nothing, not even an error");
    assert_eq!(w.hub.replaying().collect::<Vec<_>>(), vec![2], "the subscription still has replay work");
    // A live message meanwhile is not sent ahead of the ones still unread.
    publish(&mut w, 1, "c", 1);
    assert!(w.seqs(2).is_empty());
    w.b.fail = None;
    w.pump(1 << 20);
    assert_eq!(w.seqs(2), vec![1, 2, 3, 4]);
    assert_eq!(w.hub.replaying().count(), 0);
    publish(&mut w, 1, "c", 1);
    assert_eq!(w.seqs(2), vec![5]);
}

#[test]
fn a_replay_read_failing_midway_sends_no_message_twice() {
    let mut w = replaying_from_start(5);
    // The read gives two messages, then fails: those two are sent.
    w.b.fail = Some(2);
    w.pump(1 << 20);
    assert_eq!(w.seqs(2), vec![1, 2]);
    w.b.fail = None;
    w.pump(1 << 20);
    assert_eq!(w.seqs(2), vec![3, 4, 5], "the cursor moved past what was sent");
}

#[test]
fn a_commit_result_is_one_reply_and_one_encoded_message() {
    let mut w = World::new();
    w.join(1, claims("alice", &["*"], &["*"]));
    w.join(2, claims("bob", &["*"], &[]));
    w.req(2, json!({"op": "sub", "ch": "c"}));
    w.take(2);
    let p = Publish {
        ch: "c".into(),
        from: "alice".into(),
        data: "7".into(),
        id: Some("\"m1\"".into()),
        key: None,
        event: None,
    };
    let stored = w.hub.on_commit(&p, &Outcome::Stored { seq: 1, ts: 5 }, Some(1));
    let reply: Value = serde_json::from_str(stored.reply.as_deref().unwrap()).unwrap();
    assert_eq!(reply, json!({"op": "ack", "id": "m1", "ch": "c", "seq": 1}));
    let [(text, to)] = &stored.deliveries[..] else { panic!("one dialect, one text: {stored:?}") };
    assert_eq!(to, &vec![2], "the live subscriber, once");
    let msg: Value = serde_json::from_str(text).unwrap();
    assert_eq!(msg, json!({"op": "msg", "ch": "c", "seq": 1, "ts": 5, "from": "alice", "data": 7}));
    // The same message again is not sent twice (the cursor moved on).
    assert_eq!(w.hub.on_commit(&p, &Outcome::Stored { seq: 1, ts: 5 }, Some(1)).deliveries, Vec::new());
    // A publisher answered over HTTP gets no WebSocket reply.
    assert_eq!(w.hub.on_commit(&p, &Outcome::Stored { seq: 2, ts: 6 }, None).reply, None);
    let over = w.hub.on_commit(&p, &Outcome::OverLimit(Limit::Channels), Some(1));
    let err: Value = serde_json::from_str(over.reply.as_deref().unwrap()).unwrap();
    assert_eq!((err["code"].clone(), err["id"].clone()), (json!("too_many_channels"), json!("m1")));
    assert!(over.deliveries.is_empty());
    let dup = w.hub.on_commit(&p, &Outcome::Duplicate { ch: "c".into(), seq: 1, ts: 5 }, Some(1));
    assert_eq!((dup.reply.is_some(), dup.deliveries), (true, Vec::new()));
}

/// A second front door's language, as the Pusher protocol will be: the hub
/// decides, each dialect writes.
struct Shout;

static SHOUT_DIALECT: &dyn Dialect = &Shout;
static SHOUT: Door = Door::new(&SHOUT_DIALECT);

impl Dialect for Shout {
    fn name(&self) -> &'static str {
        "shout"
    }

    fn write(&self, out: &mut String, event: &Event<'_>, id: Option<&str>) {
        match event {
            Event::Message(m) => out.push_str(&format!("MSG {} {} {}", m.ch, m.seq, m.data)),
            Event::Acked { seq, .. } => out.push_str(&format!("ACK {seq} {}", id.unwrap_or("-"))),
            other => out.push_str(&format!("{other:?}")),
        }
    }
}

#[test]
fn one_commit_is_written_once_per_dialect_and_each_subscriber_gets_its_own() {
    let mut w = World::new();
    w.join(1, claims("alice", &["*"], &["*"]));
    w.hub.join(2, claims("bob", &["*"], &[]), SHOUT, w.now);
    w.hub.join(3, claims("carol", &["*"], &[]), SHOUT, w.now);
    w.join(4, claims("dave", &["*"], &[]));
    for conn in [2, 3, 4] {
        let mut out = Vec::new();
        let req = Request::Sub { ch: "c", start: Start::Now, state: false };
        w.hub.handle(conn, None, req, w.now, w.b.history(), &mut out);
        assert_eq!(out.len(), 1, "one subok each");
    }
    let mut out = Vec::new();
    let req = Request::Pub { ch: "c", data: "7", key: None, event: None };
    w.hub.handle(1, Some("9"), req, w.now, w.b.history(), &mut out);
    let [Action::Publish(p)] = &out[..] else { panic!("{out:?}") };
    let committed = w.hub.on_commit(p, &Outcome::Stored { seq: 1, ts: 5 }, Some(1));
    let mut got = committed.deliveries.clone();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("MSG c 1 7".to_string(), vec![2, 3]),
            (r#"{"op":"msg","ch":"c","seq":1,"ts":5,"from":"alice","data":7}"#.to_string(), vec![4]),
        ]
    );
    // A Shout publisher is answered in its own dialect.
    let again = w.hub.on_commit(p, &Outcome::Duplicate { ch: "c".into(), seq: 1, ts: 5 }, Some(2));
    assert_eq!(again.reply.as_deref(), Some("ACK 1 9"));
}

// Presence (spec §7), state and last (spec §8).

fn kv_rules() -> Rules {
    Rules { compact: vec!["kv*".into()], max_presence_members: 2, occupancy: true, ..Rules::default() }
}

impl World<Fake> {
    fn with_rules(rules: Rules) -> World<Fake> {
        let mut w = World::new();
        w.hub = Hub::with_rules("fake-epoch", LIMITS, rules);
        w
    }

    /// Commits (or fails) the presence and occupancy writes the hub asked
    /// for, delivering what others are told; returns the writes.
    fn write_changes(&mut self, ok: bool) -> Vec<Change> {
        let changes = self.hub.take_changes();
        for c in &changes {
            for (text, to) in self.hub.on_written(c, ok, self.now) {
                for conn in to {
                    self.deliver(conn, &text);
                }
            }
        }
        changes
    }

    fn ops(&mut self, conn: ConnId) -> Vec<String> {
        self.take(conn).iter().map(|v| v["op"].as_str().unwrap().to_string()).collect()
    }
}

fn member(sub: &str, info: Option<&str>) -> Claims {
    Claims { info: info.map(Box::from), ..claims(sub, &["*"], &["*"]) }
}

fn member_changes(changes: &[Change]) -> Vec<(String, bool)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::Member { user, present, .. } => Some((user.to_string(), *present)),
            Change::Occupancy { .. } => None,
        })
        .collect()
}

#[test]
fn a_presence_subscription_gets_the_member_list_and_others_hear_one_join_per_user() {
    let mut w = World::with_rules(kv_rules());
    w.join(1, member("alice", Some(r#"{"name":"Alice"}"#)));
    w.join(2, member("bob", None));
    w.join(3, member("bob", None));
    w.req(1, json!({"op":"sub","ch":"presence-r","id":1}));
    let got = w.take(1);
    assert_eq!(got[0]["op"], "subok");
    assert_eq!(
        got[1],
        json!({"op":"presence","ch":"presence-r","members":[{"user":"alice","info":{"name":"Alice"}}],"count":1})
    );
    assert_eq!(member_changes(&w.write_changes(true)), vec![("alice".to_string(), true)]);
    assert_eq!(w.ops(1), Vec::<String>::new(), "a member never gets its own join");
    w.req(2, json!({"op":"sub","ch":"presence-r"}));
    let list = w.take(2);
    assert_eq!(list[1]["members"], json!([{"user":"alice","info":{"name":"Alice"}},{"user":"bob"}]));
    w.write_changes(true);
    assert_eq!(w.take(1), vec![json!({"op":"join","ch":"presence-r","user":"bob"})]);
    w.req(3, json!({"op":"sub","ch":"presence-r"}));
    assert!(w.write_changes(true).is_empty(), "bob's second connection is not a new member");
    assert_eq!(w.ops(1), Vec::<String>::new());
}

#[test]
fn a_reload_within_the_grace_is_silent_and_a_real_leave_comes_after_it() {
    let mut w = World::with_rules(kv_rules());
    w.join(1, member("alice", None));
    w.join(2, member("bob", None));
    for c in [1, 2] {
        w.req(c, json!({"op":"sub","ch":"presence-r"}));
    }
    w.write_changes(true);
    w.take(1);
    // bob reloads: the old connection goes, a new one comes within 3 s.
    w.hub.leave(2, w.now);
    w.now += Duration::from_secs(1);
    w.hub.tick(w.now);
    assert!(w.write_changes(true).is_empty());
    w.join(3, member("bob", None));
    w.req(3, json!({"op":"sub","ch":"presence-r"}));
    w.now += Duration::from_secs(10);
    w.hub.tick(w.now);
    assert!(w.write_changes(true).is_empty(), "no flicker");
    assert_eq!(w.ops(1), Vec::<String>::new());
    // Now bob really goes: one leave, once the grace ran out.
    w.hub.leave(3, w.now);
    w.hub.tick(w.now + Duration::from_millis(2900));
    assert!(w.write_changes(true).is_empty(), "still within the grace");
    assert_eq!(w.hub.next_deadline(), Some(w.now + Duration::from_secs(3)));
    w.now += Duration::from_secs(3);
    w.hub.tick(w.now);
    assert_eq!(member_changes(&w.write_changes(true)), vec![("bob".to_string(), false)]);
    assert_eq!(w.take(1), vec![json!({"op":"leave","ch":"presence-r","user":"bob"})]);
    assert_eq!(w.hub.member_count(), 1);
}

#[test]
fn nobody_hears_of_a_member_whose_write_failed_until_it_is_committed() {
    let mut w = World::with_rules(kv_rules());
    w.join(1, member("alice", None));
    w.join(2, member("bob", None));
    w.req(1, json!({"op":"sub","ch":"presence-r"}));
    w.write_changes(true);
    w.req(2, json!({"op":"sub","ch":"presence-r"}));
    w.take(1);
    assert_eq!(member_changes(&w.write_changes(false)), vec![("bob".to_string(), true)]);
    assert_eq!(w.ops(1), Vec::<String>::new(), "the store refused it: no join");
    w.req(1, json!({"op":"presence","ch":"presence-r","id":"q"}));
    assert_eq!(w.take(1)[0]["members"], json!([{"user":"alice"}]), "others do not see bob yet");
    w.now += Duration::from_secs(1);
    w.hub.tick(w.now);
    assert_eq!(member_changes(&w.write_changes(true)), vec![("bob".to_string(), true)], "asked for again");
    assert_eq!(w.ops(1), vec!["join"]);
}

#[test]
fn members_restored_after_a_restart_leave_unless_they_come_back_in_the_restart_grace() {
    let mut w = World::with_rules(kv_rules());
    w.hub.restore_member("presence-r", "alice", Some(r#"{"n":1}"#), w.now);
    w.hub.restore_member("presence-r", "bob", None, w.now);
    w.join(1, member("alice", Some(r#"{"n":1}"#)));
    w.req(1, json!({"op":"sub","ch":"presence-r"}));
    assert_eq!(w.take(1)[1]["members"], json!([{"user":"alice","info":{"n":1}},{"user":"bob"}]));
    assert!(w.write_changes(true).iter().all(|c| matches!(c, Change::Occupancy { .. })), "alice is back: no event");
    w.now += Duration::from_secs(30);
    w.hub.tick(w.now);
    assert_eq!(member_changes(&w.write_changes(true)), vec![("bob".to_string(), false)]);
    assert_eq!(w.take(1), vec![json!({"op":"leave","ch":"presence-r","user":"bob"})]);
}

#[test]
fn presence_refuses_long_users_bad_info_and_new_members_past_the_limit() {
    let mut w = World::with_rules(kv_rules());
    let long = "u".repeat(129);
    w.join(1, member(&long, None));
    w.req(1, json!({"op":"sub","ch":"presence-r","id":1}));
    assert_eq!(w.take(1)[0]["code"], "bad_request");
    w.join(2, member("ok", Some("[1,2]")));
    w.req(2, json!({"op":"sub","ch":"presence-r"}));
    assert_eq!(w.take(2)[0]["code"], "bad_request", "info must be an object");
    let big = format!(r#"{{"x":"{}"}}"#, "i".repeat(1024));
    w.join(3, member("big", Some(&big)));
    w.req(3, json!({"op":"sub","ch":"presence-r"}));
    assert_eq!(w.take(3)[0]["code"], "bad_request", "info over 1 KiB");
    // A long sub is fine where there is no presence.
    w.req(1, json!({"op":"sub","ch":"room"}));
    assert_eq!(w.take(1)[0]["op"], "subok");
    for (c, u) in [(4, "a"), (5, "b"), (6, "c"), (7, "a")] {
        w.join(c, member(u, None));
        w.req(c, json!({"op":"sub","ch":"presence-r"}));
    }
    assert_eq!(w.take(6)[0]["code"], "too_many_members");
    assert_eq!(w.take(7)[0]["op"], "subok", "another connection of a member is not a new member");
    w.req(4, json!({"op":"presence","ch":"room","id":2}));
    assert_eq!(w.take(4).last().unwrap()["code"], "bad_request", "not a presence channel");
}

#[test]
fn occupancy_is_one_write_when_the_first_subscriber_comes_and_one_when_the_last_is_gone() {
    let mut w = World::with_rules(kv_rules());
    w.join(1, claims("a", &["*"], &[]));
    w.join(2, claims("b", &["*"], &[]));
    w.req(1, json!({"op":"sub","ch":"room"}));
    w.req(2, json!({"op":"sub","ch":"room"}));
    let occupied = |cs: &[Change]| cs.iter().filter(|c| matches!(c, Change::Occupancy { .. })).count();
    assert_eq!(occupied(&w.write_changes(true)), 1);
    w.req(1, json!({"op":"unsub","ch":"room"}));
    w.hub.leave(2, w.now);
    w.now += Duration::from_secs(3);
    w.hub.tick(w.now);
    let vacated = w.write_changes(true);
    assert_eq!(vacated, vec![Change::Occupancy { ch: "room".into(), occupied: false }]);
}

/// A compacted channel `kv` over the fake: `(key, data)` in commit order.
fn keyed<B: Backend>(w: &mut World<B>, items: &[(&str, &str)]) {
    let batch: Vec<Publish> = items
        .iter()
        .map(|(k, d)| Publish {
            ch: "kv".into(),
            from: "dev".into(),
            data: d.to_string(),
            id: None,
            key: Some(k.to_string()),
            event: None,
        })
        .collect();
    w.b.commit(&batch);
}

#[test]
fn a_state_subscription_is_every_keys_latest_message_then_the_state_marker_then_live() {
    let mut w = World::with_rules(kv_rules());
    keyed(&mut w, &[("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("b", "null")]);
    w.store_only("kv", "\"unkeyed\"");
    w.join(1, claims("s", &["*"], &["*"]));
    w.req(1, json!({"op":"sub","ch":"kv","state":true}));
    w.pump(1 << 20);
    let got = w.take(1);
    assert_eq!(got[0]["op"], "subok");
    let snapshot: Vec<(Value, Value)> =
        got[1..got.len() - 1].iter().map(|v| (v["key"].clone(), v["data"].clone())).collect();
    assert_eq!(snapshot, vec![(json!("a"), json!(3)), (json!("c"), json!(4)), (json!("b"), Value::Null)]);
    assert_eq!(got.last().unwrap(), &json!({"op":"state","ch":"kv","seq":6}));
    // Live from seq 7, with no gap.
    publish(&mut w, 1, "kv", 1);
    assert_eq!(w.seqs(1), vec![7]);
}

#[test]
fn a_resume_whose_next_seq_was_compacted_away_gets_gap_and_a_snapshot() {
    let mut w = World::with_rules(kv_rules());
    keyed(&mut w, &[("a", "1"), ("b", "2"), ("a", "3")]);
    w.join(1, claims("s", &["*"], &[]));
    // The client had seq 0..; seq 1 (a=1) was compacted away by seq 3.
    w.req(1, json!({"op":"sub","ch":"kv","since":0}));
    w.pump(1 << 20);
    let got = w.take(1);
    assert_eq!(got[0]["gap"], true);
    assert_eq!(got.last().unwrap()["op"], "state");
    // Resuming after seq 1 finds seq 2 stored: an ordinary replay.
    w.join(2, claims("s", &["*"], &[]));
    w.req(2, json!({"op":"sub","ch":"kv","since":1,"epoch":"fake-epoch"}));
    w.pump(1 << 20);
    let got = w.take(2);
    assert_eq!(got[0].get("gap"), None);
    assert_eq!(got[1..].iter().map(|v| v["seq"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 3]);
}

#[test]
fn state_on_an_ordinary_channel_is_refused_and_last_replays_the_newest() {
    let mut w = World::with_rules(kv_rules());
    w.join(1, claims("p", &["*"], &["*"]));
    publish(&mut w, 1, "room", 5);
    w.take(1);
    w.req(1, json!({"op":"sub","ch":"room","state":true,"id":1}));
    assert_eq!(w.take(1)[0]["code"], "bad_request");
    w.req(1, json!({"op":"sub","ch":"room","last":2}));
    w.pump(1 << 20);
    assert_eq!(w.seqs(1), vec![4, 5]);
    w.join(2, claims("q", &["*"], &[]));
    w.req(2, json!({"op":"sub","ch":"room","last":100}));
    w.pump(1 << 20);
    assert_eq!(w.seqs(2), vec![1, 2, 3, 4, 5], "fewer if fewer are stored");
}

#[test]
fn a_member_named_per_subscription_is_one_member_with_the_same_user_on_the_native_protocol() {
    let mut w = World::with_rules(kv_rules());
    // A Pusher connection: its token-like claims name the socket, its
    // channel_data names the user.
    w.join(1, member("socket-1", None));
    w.hub.name_member(1, "presence-r", "alice", Some(r#"{"name":"Alice"}"#));
    w.req(1, json!({"op":"sub","ch":"presence-r"}));
    assert_eq!(w.take(1)[1]["members"], json!([{"user":"alice","info":{"name":"Alice"}}]));
    assert_eq!(member_changes(&w.write_changes(true)), vec![("alice".to_string(), true)]);
    // alice's native tab is the same member: no second join, and she is not
    // told of herself.
    w.join(2, member("alice", None));
    w.req(2, json!({"op":"sub","ch":"presence-r"}));
    assert!(w.write_changes(true).is_empty(), "one user is one member, whichever protocol");
    assert_eq!(w.ops(1), Vec::<String>::new());
    // The named member leaves with its subscription: alice stays while her
    // native tab does.
    w.req(1, json!({"op":"unsub","ch":"presence-r"}));
    w.now += Duration::from_secs(10);
    w.hub.tick(w.now);
    assert!(w.write_changes(true).is_empty());
    assert_eq!(w.hub.member_user(1, "presence-r"), Some("socket-1"), "the name went with the subscription");
    w.hub.leave(2, w.now);
    w.now += Duration::from_secs(10);
    w.hub.tick(w.now);
    assert_eq!(member_changes(&w.write_changes(true)), vec![("alice".to_string(), false)]);
}

#[test]
fn a_name_is_ignored_while_subscribed_and_forgotten_after_a_refused_sub() {
    let mut w = World::with_rules(kv_rules());
    w.join(1, member("socket-1", None));
    w.hub.name_member(1, "presence-r", "alice", None);
    w.req(1, json!({"op":"sub","ch":"presence-r"}));
    w.hub.name_member(1, "presence-r", "mallory", None);
    assert_eq!(w.hub.member_user(1, "presence-r"), Some("alice"), "a member changes only by leaving");
    // A user over 128 bytes is refused by the hub: the name goes with it.
    w.hub.name_member(1, "presence-s", &"u".repeat(129), None);
    w.req(1, json!({"op":"sub","ch":"presence-s"}));
    assert!(!w.hub.is_subscribed(1, "presence-s"));
    w.hub.forget_member(1, "presence-s");
    assert_eq!(w.hub.member_user(1, "presence-s"), Some("socket-1"));
}

#[test]
fn the_connection_left_out_of_a_delivery_is_not_sent_it_later_either() {
    let mut w = World::new();
    w.join(1, claims("app", &["*"], &["*"]));
    w.join(2, claims("alice", &["*"], &[]));
    w.join(3, claims("bob", &["*"], &[]));
    for c in [2, 3] {
        w.req(c, json!({"op":"sub","ch":"c"}));
        w.take(c);
    }
    let p = |data: &str| Publish {
        ch: "c".into(),
        from: "app".into(),
        data: data.into(),
        id: None,
        key: None,
        event: None,
    };
    let first = p("1");
    let outcome = w.b.commit(std::slice::from_ref(&first)).remove(0);
    let committed = w.hub.on_commit_except(&first, &outcome, None, Some(2));
    assert_eq!(committed.deliveries.len(), 1);
    assert_eq!(committed.deliveries[0].1, vec![3], "alice is left out");
    // The next message reaches both, with no replay of the first to alice.
    w.commit(1, vec![p("2")]);
    w.pump(1 << 20);
    assert_eq!(w.seqs(2), vec![2]);
    assert_eq!(w.seqs(3), vec![2]);
}

// Cluster mode (docs/cluster.md): presence from every node's records.

impl World<Fake> {
    /// A holding record applied here; what the subscribers here are told.
    fn held(&mut self, user: &str, node: &str, on: bool) {
        let own = node == "me";
        for (text, to) in self.hub.applied_held("presence-r", Some(user), own, node, None, on, self.now) {
            for conn in to {
                self.deliver(conn, &text);
            }
        }
    }
}

#[test]
fn in_a_cluster_a_member_is_listed_while_any_node_holds_it_and_a_silent_nodes_members_leave() {
    let mut w = World::with_rules(kv_rules());
    w.hub.replicate_presence();
    w.join(1, member("alice", None));
    w.req(1, json!({"op":"sub","ch":"presence-r"}));
    w.take(1);
    assert_eq!(member_changes(&w.hub.take_changes()), vec![("alice".to_string(), true)], "published");
    w.held("alice", "me", true);
    w.held("bob", "b", true);
    assert_eq!(w.take(1), vec![json!({"op":"join","ch":"presence-r","user":"bob"})]);
    w.held("bob", "c", true);
    w.held("bob", "c", true);
    w.held("bob", "b", false);
    assert_eq!(w.ops(1), Vec::<String>::new(), "node c still holds bob; a record twice is nothing new");
    w.req(1, json!({"op":"presence","ch":"presence-r","id":"q"}));
    assert_eq!(w.take(1)[0]["members"], json!([{"user":"alice"},{"user":"bob"}]));
    for (text, to) in w.hub.applied_gone("c", false, w.now) {
        to.into_iter().for_each(|conn| w.deliver(conn, &text));
    }
    assert_eq!(w.take(1), vec![json!({"op":"leave","ch":"presence-r","user":"bob"})]);
    // This node was thought silent: alice, still connected, is published again.
    assert!(w.hub.applied_gone("me", true, w.now).is_empty(), "a member never hears its own leave");
    w.hub.tick(w.now);
    assert_eq!(member_changes(&w.hub.take_changes()), vec![("alice".to_string(), true)]);
}

#[test]
fn in_a_cluster_a_presence_sub_waits_for_the_log_and_an_ordinary_one_does_not() {
    let mut w = World::with_rules(kv_rules());
    w.hub.replicate_presence();
    w.hub.set_presence_cut(true);
    w.join(1, member("alice", None));
    w.req(1, json!({"op":"sub","ch":"presence-r","id":1}));
    let r = w.take(1);
    assert_eq!((r[0]["op"].as_str(), r[0]["code"].as_str()), (Some("err"), Some("unavailable")), "{r:?}");
    w.req(1, json!({"op":"sub","ch":"room","id":2}));
    assert_eq!(w.ops(1), vec!["subok"]);
    w.hub.set_presence_cut(false);
    w.req(1, json!({"op":"sub","ch":"presence-r","id":3}));
    assert_eq!(w.ops(1), vec!["subok", "presence"]);
}

/// Every connection keeps a `Peer` (B1 in docs/benchmarks.md): a field
/// added to it is paid ten thousand times over. 64-bit targets only: the
/// sizes differ on 32-bit ones.
#[test]
#[cfg(target_pointer_width = "64")]
fn a_peer_record_stays_within_its_budget_of_168_bytes() {
    assert!(std::mem::size_of::<super::Peer>() <= 168, "Peer is {} bytes", std::mem::size_of::<super::Peer>());
}
