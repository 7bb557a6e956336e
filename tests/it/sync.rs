//! Spec §4: the messages on the WebSocket and the sync semantics — acks,
//! fan-out, ordering, resume (also across restarts and crashes), gaps,
//! idempotent publishing, history paging, permissions and bad input.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Asserts a `msg` frame: exactly the contract's fields, with these values.
#[track_caller]
fn assert_msg(m: &Value, ch: &str, seq: u64, from: &str, data: &Value) {
    assert_eq!(m["op"], "msg", "{m}");
    assert_eq!(m["ch"], ch, "{m}");
    assert_eq!(m["seq"], seq, "{m}");
    assert_eq!(m["from"], from, "{m}");
    assert_eq!(&m["data"], data, "{m}");
    assert!(m["ts"].is_u64(), "ts is integer milliseconds: {m}");
    let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    let mut keys = keys;
    keys.sort_unstable();
    assert_eq!(keys, ["ch", "data", "from", "op", "seq", "ts"], "{m}");
}

/// Reads `n` msgs of `ch` and asserts their seqs are `first..first+n`.
#[track_caller]
fn recv_seqs(client: &mut Client, ch: &str, first: u64, n: u64) -> Vec<Value> {
    (first..first + n)
        .map(|seq| {
            let m = client.recv_msg();
            assert_eq!((m["ch"].as_str(), m["seq"].as_u64()), (Some(ch), Some(seq)), "expected {ch} #{seq}, got {m}");
            m
        })
        .collect()
}

#[test]
fn pub_is_acked_after_commit_and_delivered_to_every_subscriber() {
    let server = TestServer::start(&[]);
    let mut alice = server.ws(&token_all("alice"));
    let mut bob = server.ws(&token_all("bob"));
    let mut carol = server.ws(&token("carol", &["room:*"], &[]));
    bob.sub("room:1");
    carol.sub("room:1");

    for (i, id) in [json!("p1"), json!(2), json!("three")].into_iter().enumerate() {
        let data = rich_data(i);
        let before = now_ms();
        let ack = alice.request(json!({"op": "pub", "ch": "room:1", "data": data, "id": id}));
        let after = now_ms();
        let seq = i as u64 + 1;
        assert_eq!(ack, json!({"op": "ack", "id": id, "ch": "room:1", "seq": seq}));
        for sub in [&mut bob, &mut carol] {
            let m = sub.recv_msg();
            assert_msg(&m, "room:1", seq, "alice", &data);
            let ts = m["ts"].as_u64().unwrap();
            assert!(before.saturating_sub(2000) <= ts && ts <= after + 2000, "ts {ts} not within [{before}, {after}]");
        }
    }
    // A request without an id gets a reply without one.
    let ack = alice.request(json!({"op": "pub", "ch": "room:1", "data": [1, "two", {"3": null}]}));
    assert_eq!(ack, json!({"op": "ack", "ch": "room:1", "seq": 4}));
    assert_msg(&bob.recv_msg(), "room:1", 4, "alice", &json!([1, "two", {"3": null}]));
}

#[test]
fn scalar_and_large_data_round_trip_exactly() {
    let server = TestServer::start(&[]);
    let mut alice = server.ws(&token_all("alice"));
    let mut bob = server.ws(&token_all("bob"));
    bob.sub("c");
    let big = "x".repeat(30_000);
    let values = [json!(0), json!(-1.5e300), json!(""), json!("\u{0}\u{1f}\\\""), json!([]), json!({}), json!(big)];
    for (i, v) in values.iter().enumerate() {
        assert_eq!(alice.publish("c", v.clone()), i as u64 + 1);
        assert_msg(&bob.recv_msg(), "c", i as u64 + 1, "alice", v);
    }
}

#[test]
fn null_is_valid_data() {
    // `data` is any JSON value (spec §4), null included.
    let server = TestServer::start(&[]);
    let mut alice = server.ws(&token_all("alice"));
    let mut bob = server.ws(&token_all("bob"));
    bob.sub("c");
    let ack = alice.request(json!({"op": "pub", "ch": "c", "data": null, "id": "n"}));
    assert_eq!(ack, json!({"op": "ack", "id": "n", "ch": "c", "seq": 1}));
    assert_msg(&bob.recv_msg(), "c", 1, "alice", &json!(null));
}

#[test]
fn one_publishers_messages_arrive_in_seq_order() {
    let server = TestServer::start(&[]);
    let mut publisher = server.ws(&token_all("alice"));
    let mut subscriber = server.ws(&token_all("bob"));
    subscriber.sub("order");
    let n = 200;
    let seqs = publisher.publish_many("order", n, |i| json!({"i": i}));
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
    for (i, m) in recv_seqs(&mut subscriber, "order", 1, n as u64).iter().enumerate() {
        assert_eq!(m["data"], json!({"i": i}), "{m}");
    }
}

#[test]
fn resume_replays_exactly_what_was_missed_then_continues_live() {
    let server = TestServer::start(&[]);
    let mut publisher = server.ws(&token_all("alice"));
    let mut subscriber = server.ws(&token_all("bob"));
    let ok = subscriber.sub("r");
    assert_eq!(ok["seq"], 0);
    let epoch = ok["epoch"].clone();
    assert!(epoch.is_string(), "epoch is a string: {ok}");

    publisher.publish_many("r", 10, |i| json!({"i": i}));
    let k = 4;
    recv_seqs(&mut subscriber, "r", 1, k);
    drop(subscriber); // Disconnect after seq k; 5..10 may be in flight and lost.

    publisher.publish_many("r", 10, |i| json!({"i": 10 + i}));
    let mut subscriber = server.ws(&token_all("bob"));
    // Resume and, at the same time, keep publishing: the replay and the
    // live messages must join without a gap or a duplicate.
    subscriber.send_json(json!({"op": "sub", "ch": "r", "since": k, "epoch": epoch, "id": "resume"}));
    publisher.publish_many("r", 30, |i| json!({"i": 20 + i}));
    let ok = subscriber.reply();
    assert_eq!(ok["op"], "subok", "{ok}");
    assert_eq!(ok["epoch"], epoch);
    assert_eq!(ok["id"], "resume");
    assert!(ok.get("gap").is_none(), "no gap on a good resume: {ok}");
    let last = ok["seq"].as_u64().unwrap();
    assert!((20..=50).contains(&last), "subok seq is the last seq at subscription time: {ok}");
    for m in recv_seqs(&mut subscriber, "r", k + 1, 50 - k) {
        assert_eq!(m["data"]["i"], m["seq"].as_u64().unwrap() - 1, "{m}");
    }
    // And live messages continue after the replay.
    let seq = publisher.publish("r", json!("live"));
    assert_eq!(seq, 51);
    assert_msg(&subscriber.recv_msg(), "r", 51, "alice", &json!("live"));
}

#[test]
fn resume_works_across_a_server_restart() {
    let mut server = TestServer::start(&[]);
    let mut alice = server.ws(&token_all("alice"));
    let epoch = alice.sub("room").get("epoch").cloned().unwrap();
    alice.publish_many("room", 10, |i| json!({"i": i}));
    drop(alice);

    server.restart();

    let mut bob = server.ws(&token_all("bob"));
    let ok = bob.resume("room", 6, &epoch);
    assert_eq!(ok["epoch"], epoch, "the epoch never changes");
    assert_eq!(ok["seq"], 10);
    assert!(ok.get("gap").is_none(), "{ok}");
    for m in recv_seqs(&mut bob, "room", 7, 4) {
        assert_eq!(m["data"]["i"], m["seq"].as_u64().unwrap() - 1);
        assert_eq!(m["from"], "alice");
    }
    let all = bob.history("room", 0);
    assert_eq!(all.iter().map(|m| m["seq"].as_u64().unwrap()).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    // Seqs continue where they were.
    assert_eq!(bob.publish("room", json!("after")), 11);
    assert_msg(&bob.recv_msg(), "room", 11, "bob", &json!("after"));
}

#[test]
fn every_acked_message_survives_kill_9() {
    let mut server = TestServer::start(&["--publish-rate", "0"]);
    let mut alice = server.ws(&token_all("alice"));
    let n = scale(2000, 400);
    // Pipeline every publish, then kill the server while acks still come in.
    for i in 0..n {
        alice.write_json(json!({"op": "pub", "ch": "durable", "data": {"i": i}, "id": i}));
    }
    alice.flush();
    let mut acked = BTreeMap::new();
    while acked.len() < n / 2 {
        let ack = alice.reply();
        assert_eq!(ack["op"], "ack", "{ack}");
        acked.insert(ack["seq"].as_u64().unwrap(), ack["id"].as_u64().unwrap());
    }
    server.kill9();

    let mut bob = server.ws(&token_all("bob"));
    let stored: BTreeMap<u64, Value> =
        bob.history("durable", 0).into_iter().map(|m| (m["seq"].as_u64().unwrap(), m["data"].clone())).collect();
    for (seq, i) in &acked {
        assert_eq!(stored.get(seq), Some(&json!({"i": i})), "acked message #{seq} (pub {i}) lost after kill -9");
    }
    // What is stored has no holes.
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), (1..=stored.len() as u64).collect::<Vec<_>>());
}

#[test]
fn a_resume_that_cannot_be_exact_says_gap_and_replays_from_the_oldest() {
    let server = TestServer::start(&[]);
    let mut alice = server.ws(&token_all("alice"));
    let epoch = alice.sub("g")["epoch"].clone();
    alice.publish_many("g", 5, |i| json!(i));

    // An epoch from another store.
    let mut c = server.ws(&token_all("bob"));
    let ok = c.resume("g", 3, &json!("some-other-epoch"));
    assert_eq!(
        (ok["gap"].clone(), ok["seq"].clone(), ok["epoch"].clone()),
        (json!(true), json!(5), epoch.clone()),
        "{ok}"
    );
    recv_seqs(&mut c, "g", 1, 5);

    // `since` above the last seq (a store restored from an older backup).
    let mut c = server.ws(&token_all("bob"));
    let ok = c.resume("g", 9, &epoch);
    assert_eq!(ok["gap"], true, "{ok}");
    recv_seqs(&mut c, "g", 1, 5);

    // `since: 0` replays everything and ignores the epoch.
    let mut c = server.ws(&token_all("bob"));
    let ok = c.resume("g", 0, &json!("whatever"));
    assert!(ok.get("gap").is_none(), "{ok}");
    recv_seqs(&mut c, "g", 1, 5);
    let mut c = server.ws(&token_all("bob"));
    let ok = c.request(json!({"op": "sub", "ch": "g", "since": 0}));
    assert_eq!(ok["op"], "subok");
    assert!(ok.get("gap").is_none(), "{ok}");
    recv_seqs(&mut c, "g", 1, 5);

    // An exact resume has no gap.
    let mut c = server.ws(&token_all("bob"));
    assert!(c.resume("g", 3, &epoch).get("gap").is_none());
    recv_seqs(&mut c, "g", 4, 2);

    // `since` > 0 without an epoch is a bad request.
    let err = c.request(json!({"op": "sub", "ch": "g2", "since": 5, "id": "s5"}));
    assert_eq!(
        (err["op"].clone(), err["code"].clone(), err["id"].clone()),
        (json!("err"), json!("bad_request"), json!("s5"))
    );

    // Every replayed message was delivered once: the next one is live.
    alice.publish("g", json!("six"));
    assert_msg(&c.recv_msg(), "g", 6, "alice", &json!("six"));
}

#[test]
fn publishing_is_idempotent_on_sub_and_id() {
    let server = TestServer::start(&[]);
    let mut alice = server.ws(&token_all("alice"));
    let mut watcher = server.ws(&token_all("watcher"));
    watcher.sub("dedupe");
    let first = alice.request(json!({"op": "pub", "ch": "dedupe", "data": "a", "id": "x"}));
    let again = alice.request(json!({"op": "pub", "ch": "dedupe", "data": "a", "id": "x"}));
    assert_eq!(first, json!({"op": "ack", "id": "x", "ch": "dedupe", "seq": 1}));
    assert_eq!(again, first);

    // A client that lost its connection before the ack simply resends.
    drop(alice);
    let mut alice = server.ws(&token_all("alice"));
    assert_eq!(alice.request(json!({"op": "pub", "ch": "dedupe", "data": "a", "id": "x"})), first);

    // Ids compare as JSON text: 1 and "1" differ. Other subs have their own ids.
    assert_eq!(alice.request(json!({"op": "pub", "ch": "dedupe", "data": "n", "id": 1}))["seq"], 2);
    assert_eq!(alice.request(json!({"op": "pub", "ch": "dedupe", "data": "s", "id": "1"}))["seq"], 3);
    let mut bob = server.ws(&token_all("bob"));
    assert_eq!(bob.request(json!({"op": "pub", "ch": "dedupe", "data": "b", "id": "x"}))["seq"], 4);

    // Stored once, delivered once.
    let hist = alice.history("dedupe", 0);
    let summary: Vec<(u64, Value, Value)> =
        hist.iter().map(|m| (m["seq"].as_u64().unwrap(), m["from"].clone(), m["data"].clone())).collect();
    assert_eq!(
        summary,
        [
            (1, json!("alice"), json!("a")),
            (2, json!("alice"), json!("n")),
            (3, json!("alice"), json!("s")),
            (4, json!("bob"), json!("b"))
        ]
    );
    recv_seqs(&mut watcher, "dedupe", 1, 4);
}

#[test]
fn an_id_is_deduplicated_after_a_restart_even_when_retention_removed_its_message() {
    let mut server = TestServer::start(&["--retention-messages", "1"]);
    let mut alice = server.ws(&token_all("alice"));
    let first = alice.request(json!({"op": "pub", "ch": "kept1", "data": "a", "id": "x"}));
    assert_eq!(first, json!({"op": "ack", "id": "x", "ch": "kept1", "seq": 1}));
    assert_eq!(alice.publish("kept1", json!("b")), 2);
    assert_eq!(alice.history("kept1", 0).len(), 1, "retention removed the first message");
    drop(alice);
    server.kill9();

    let mut alice = server.ws(&token_all("alice"));
    assert_eq!(alice.request(json!({"op": "pub", "ch": "kept1", "data": "a", "id": "x"})), first);
    assert_eq!(alice.history("kept1", 0).iter().map(|m| m["seq"].clone()).collect::<Vec<_>>(), [json!(2)]);
}

#[test]
fn hist_pages_with_limit_since_and_more() {
    let server = TestServer::start(&[]);
    let mut c = server.ws(&token_all("alice"));
    let empty = c.request(json!({"op": "hist", "ch": "h", "id": "e"}));
    assert_eq!(empty, json!({"op": "hist", "ch": "h", "msgs": [], "more": false, "id": "e"}));

    c.publish_many("h", 25, |i| json!({"i": i}));
    let page = |c: &mut Client, req: Value| -> (Vec<u64>, Value) {
        let r = c.request(req);
        assert_eq!(r["op"], "hist", "{r}");
        let seqs = r["msgs"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        (seqs, r)
    };
    let (seqs, r) = page(&mut c, json!({"op": "hist", "ch": "h", "limit": 10, "id": 1}));
    assert_eq!((seqs, r["more"].clone(), r["id"].clone()), ((1..=10).collect(), json!(true), json!(1)));
    assert_msg(&r["msgs"][0], "h", 1, "alice", &json!({"i": 0}));
    let (seqs, r) = page(&mut c, json!({"op": "hist", "ch": "h", "since": 10, "limit": 10}));
    assert_eq!((seqs, r["more"].clone()), ((11..=20).collect(), json!(true)));
    assert!(r.get("id").is_none(), "no id asked, none echoed: {r}");
    let (seqs, r) = page(&mut c, json!({"op": "hist", "ch": "h", "since": 20, "limit": 10}));
    assert_eq!((seqs, r["more"].clone()), ((21..=25).collect(), json!(false)));
    let (seqs, r) = page(&mut c, json!({"op": "hist", "ch": "h"}));
    assert_eq!((seqs, r["more"].clone()), ((1..=25).collect(), json!(false)));
    let (seqs, r) = page(&mut c, json!({"op": "hist", "ch": "h", "since": 25}));
    assert_eq!((seqs, r["more"].clone(), r.get("gap")), (vec![], json!(false), None));
    let (seqs, r) = page(&mut c, json!({"op": "hist", "ch": "h", "since": 24, "limit": 1}));
    assert_eq!((seqs, r["more"].clone()), (vec![25], json!(false)));
    // `since` above the last seq: gap.
    let (seqs, r) = page(&mut c, json!({"op": "hist", "ch": "h", "since": 40}));
    assert_eq!((seqs, r["gap"].clone()), (vec![], json!(true)), "{r}");

    for bad in [json!(1001), json!(0), json!(-1), json!("10")] {
        let err = c.request(json!({"op": "hist", "ch": "h", "limit": bad, "id": "L"}));
        assert_eq!(
            (err["op"].clone(), err["code"].clone(), err["id"].clone()),
            (json!("err"), json!("bad_request"), json!("L")),
            "limit {bad}: {err}"
        );
    }
    let (seqs, _) = page(&mut c, json!({"op": "hist", "ch": "h", "limit": 1000}));
    assert_eq!(seqs.len(), 25);
}

#[test]
fn the_token_decides_what_may_be_read_and_written() {
    let server = TestServer::start(&[]);
    let mut c = server.ws(&token("carol", &["room:*"], &["room:1"]));
    let expect_err = |c: &mut Client, req: Value, code: &str| {
        let id = req["id"].clone();
        let r = c.request(req);
        assert_eq!((r["op"].clone(), r["code"].clone(), r["id"].clone()), (json!("err"), json!(code), id), "{r}");
        assert!(r["msg"].is_string(), "err carries a human text: {r}");
    };
    assert_eq!(c.request(json!({"op": "sub", "ch": "room:1", "id": 1}))["op"], "subok");
    assert_eq!(c.request(json!({"op": "sub", "ch": "room:lobby", "id": 2}))["op"], "subok");
    expect_err(&mut c, json!({"op": "sub", "ch": "other:1", "id": 3}), "forbidden");
    expect_err(&mut c, json!({"op": "sub", "ch": "room", "id": "no-colon"}), "forbidden");
    expect_err(&mut c, json!({"op": "hist", "ch": "other:1", "id": 4}), "forbidden");
    assert_eq!(c.request(json!({"op": "pub", "ch": "room:1", "data": 1, "id": 5}))["op"], "ack");
    expect_err(&mut c, json!({"op": "pub", "ch": "room:2", "data": 1, "id": 6}), "forbidden");
    expect_err(&mut c, json!({"op": "pub", "ch": "room:10", "data": 1, "id": 7}), "forbidden");

    // No `write` claim: no publishing at all. No `read`: no subscribing.
    let mut reader = server.ws(&mint_claims(&json!({"sub": "r", "exp": now_secs() + 600, "read": ["*"]})));
    expect_err(&mut reader, json!({"op": "pub", "ch": "room:1", "data": 1, "id": "w"}), "forbidden");
    assert_eq!(reader.request(json!({"op": "sub", "ch": "anything", "id": 1}))["op"], "subok");
    let mut writer = server.ws(&mint_claims(&json!({"sub": "w", "exp": now_secs() + 600, "write": ["*"]})));
    expect_err(&mut writer, json!({"op": "sub", "ch": "room:1", "id": "r"}), "forbidden");
    expect_err(&mut writer, json!({"op": "hist", "ch": "room:1", "id": "h"}), "forbidden");
    assert_eq!(writer.request(json!({"op": "pub", "ch": "room:1", "data": 2, "id": 1}))["op"], "ack");
    // The refused publishes were not stored.
    assert_eq!(reader.history("room:1", 0).len(), 2);
}

#[test]
fn bad_input_is_answered_with_err_and_the_connection_stays_open() {
    let server = TestServer::start(&[]);
    let mut c = server.ws(&token_all("alice"));
    let long_channel = "x".repeat(165);
    let cases: Vec<(String, &str, Value)> = vec![
        ("not json".into(), "bad_request", Value::Null),
        ("[1,2,3]".into(), "bad_request", Value::Null),
        ("\"a string\"".into(), "bad_request", Value::Null),
        ("{\"op\":\"sub\",\"ch\":".into(), "bad_request", Value::Null),
        (json!({"op": "zap", "ch": "a", "id": 7}).to_string(), "unknown_op", json!(7)),
        (json!({"ch": "a", "id": "no-op"}).to_string(), "bad_request", json!("no-op")),
        (json!({"op": "sub", "id": 8}).to_string(), "bad_request", json!(8)),
        (json!({"op": "pub", "data": 1, "id": 9}).to_string(), "bad_request", json!(9)),
        (json!({"op": "pub", "ch": "a", "id": 10}).to_string(), "bad_request", json!(10)),
        (json!({"op": "sub", "ch": 5, "id": 11}).to_string(), "bad_request", json!(11)),
        (json!({"op": "sub", "ch": "bad channel", "id": 12}).to_string(), "bad_channel", json!(12)),
        (json!({"op": "sub", "ch": "", "id": 13}).to_string(), "bad_channel", json!(13)),
        (json!({"op": "pub", "ch": long_channel, "data": 1, "id": 14}).to_string(), "bad_channel", json!(14)),
        (json!({"op": "hist", "ch": "é", "id": 15}).to_string(), "bad_channel", json!(15)),
        (json!({"op": "sub", "ch": "a", "since": -1, "epoch": "e", "id": 16}).to_string(), "bad_request", json!(16)),
        (json!({"op": "unknown"}).to_string(), "unknown_op", Value::Null),
    ];
    for (text, code, id) in cases {
        c.send_text(&text);
        let r = c.reply();
        assert_eq!((r["op"].clone(), r["code"].clone()), (json!("err"), json!(code)), "{text} -> {r}");
        assert_eq!(r.get("id").cloned().unwrap_or(Value::Null), id, "{text} -> {r}");
        // The connection still works.
        let ok = c.request(json!({"op": "hist", "ch": "a", "id": "alive"}));
        assert_eq!((ok["op"].clone(), ok["id"].clone()), (json!("hist"), json!("alive")), "after {text}: {ok}");
    }
    c.send_binary(br#"{"op":"sub","ch":"a"}"#);
    let r = c.reply();
    assert_eq!((r["op"].clone(), r["code"].clone()), (json!("err"), json!("bad_request")), "binary frame -> {r}");
    assert_eq!(c.publish("a", json!("still open")), 1);
    // A valid channel name uses every allowed character.
    c.sub("AZaz09_-.:@/");
}

#[test]
fn unsub_stops_deliveries() {
    let server = TestServer::start(&[]);
    let mut alice = server.ws(&token_all("alice"));
    let mut bob = server.ws(&token_all("bob"));
    bob.sub("a");
    bob.sub("b");
    alice.publish("a", json!("a1"));
    assert_msg(&bob.recv_msg(), "a", 1, "alice", &json!("a1"));

    let ok = bob.request(json!({"op": "unsub", "ch": "a", "id": "u"}));
    assert_eq!(ok, json!({"op": "unsubok", "ch": "a", "id": "u"}));
    // Publish to `a`, then to `b`: deliveries go out in commit order, so if
    // `a2` were still delivered it would come before `b1`.
    alice.publish("a", json!("a2"));
    alice.publish("b", json!("b1"));
    assert_msg(&bob.recv_msg(), "b", 1, "alice", &json!("b1"));
    // Unsubscribing from a channel not subscribed is fine too.
    assert_eq!(bob.request(json!({"op": "unsub", "ch": "zzz"})), json!({"op": "unsubok", "ch": "zzz"}));
    // Subscribing again delivers new messages again.
    bob.sub("a");
    alice.publish("a", json!("a3"));
    assert_msg(&bob.recv_msg(), "a", 3, "alice", &json!("a3"));
}

#[test]
fn a_thousand_subscribers_all_receive_one_publish() {
    let n = scale(1000, 100);
    // A thousand sockets on this side too: lift the soft descriptor limit.
    rlimit::increase_nofile_limit(u64::MAX).expect("raising RLIMIT_NOFILE");
    let server = TestServer::start(&[]);
    let t = token("many", &["fan"], &[]);
    let mut subscribers: Vec<Client> = (0..n).map(|_| server.ws(&t)).collect();
    // Pipeline the subscriptions, then collect every subok.
    for s in &mut subscribers {
        s.send_json(json!({"op": "sub", "ch": "fan"}));
    }
    for s in &mut subscribers {
        assert_eq!(s.reply()["op"], "subok");
    }
    let mut publisher = server.ws(&token_all("alice"));
    let data = json!({"hello": "everyone"});
    assert_eq!(publisher.publish("fan", data.clone()), 1);
    for s in &mut subscribers {
        assert_msg(&s.recv_msg(), "fan", 1, "alice", &data);
    }
}

#[test]
fn a_long_resume_completes_on_an_otherwise_idle_server() {
    // Nothing else happens on the server while the replay runs: the replay
    // must not depend on other traffic to make progress.
    let n = scale(2_000, 1_000);
    let server = TestServer::start(&["--publish-rate", "0"]);
    let mut publisher = server.ws(&token_all("alice"));
    publisher.publish_many("idle", n, |i| json!(i));
    publisher.close();
    let mut c = server.ws(&token_all("bob"));
    assert_eq!(c.request(json!({"op": "sub", "ch": "idle", "since": 0}))["seq"], n as u64);
    for (i, m) in recv_seqs(&mut c, "idle", 1, n as u64).iter().enumerate() {
        assert_eq!(m["data"], i, "{m}");
    }
}

#[test]
fn replaying_a_long_history_streams_without_stalling_others() {
    let n = scale(20_000, 2_000);
    let server = TestServer::start(&["--publish-rate", "0", "--retention-messages", "1000000"]);
    let mut publisher = server.ws(&token_all("alice"));
    publisher.publish_many("long", n, |i| json!({"i": i, "pad": "p".repeat(64)}));

    let mut replayer = server.ws(&token_all("bob"));
    replayer.send_json(json!({"op": "sub", "ch": "long", "since": 0}));
    let reading = std::thread::spawn(move || {
        let ok = replayer.reply();
        assert_eq!(ok["op"], "subok", "{ok}");
        assert_eq!(ok["seq"], n as u64);
        let started = Instant::now();
        for (i, m) in recv_seqs(&mut replayer, "long", 1, n as u64).iter().enumerate() {
            assert_eq!(m["data"]["i"], i, "{m}");
        }
        started.elapsed()
    });

    // Meanwhile another client keeps doing round trips, each answered promptly.
    let mut other = server.ws(&token_all("carol"));
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t0 = Instant::now();
        assert_eq!(other.publish("elsewhere", json!(i)), i + 1);
        let h = other.request(json!({"op": "hist", "ch": "elsewhere", "since": i, "limit": 1}));
        assert_eq!(h["msgs"][0]["seq"], i + 1);
        slowest = slowest.max(t0.elapsed());
    }
    let replay_took = reading.join().expect("the replaying client got every message in order");
    let bound = within(Duration::from_secs(2));
    assert!(slowest < bound, "a round trip took {slowest:?} during a replay (replay took {replay_took:?})");
}

#[test]
fn count_retention_hides_what_passes_the_limit_in_the_commit_and_a_resume_behind_it_gets_gap() {
    // 100 kept: the messages it hides are deleted in runs of 6, so some of
    // those hidden here are still in the store when these reads run.
    let server = TestServer::start(&["--retention-messages", "100"]);
    let epoch = server.ws(&token_all("bob")).sub("kept")["epoch"].clone();
    let mut alice = server.ws(&token_all("alice"));
    for n in [103, 2] {
        alice.publish_many("kept", n, |i| json!(i));
        let seqs: Vec<u64> = alice.history("kept", 0).iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        let last = seqs.last().copied().unwrap_or(0);
        let first = last.saturating_sub(99);
        assert_eq!(seqs, (first..=last).collect::<Vec<_>>(), "hist shows exactly the 100 kept");
        let r = alice.request(json!({"op": "hist", "ch": "kept", "since": first - 2, "limit": 10}));
        assert_eq!((r["gap"].clone(), r["msgs"][0]["seq"].clone()), (json!(true), json!(first)), "{r}");
        let r = alice.request(json!({"op": "hist", "ch": "kept", "since": first - 1, "limit": 10}));
        assert!(r.get("gap").is_none(), "{r}");

        // A resume from a hidden seq: gap at once, replay from the oldest kept.
        let mut c = server.ws(&token_all("carol"));
        assert_eq!(c.resume("kept", first - 2, &epoch)["gap"], true);
        recv_seqs(&mut c, "kept", first, 100);
        let mut c = server.ws(&token_all("carol"));
        assert!(c.resume("kept", first - 1, &epoch).get("gap").is_none());
        recv_seqs(&mut c, "kept", first, 100);
    }
}

#[test]
fn after_kill_9_count_retention_still_shows_exactly_the_kept_messages() {
    let mut server = TestServer::start(&["--retention-messages", "100"]);
    let seqs_after_kill = |server: &mut TestServer, n: usize| {
        let mut alice = server.ws(&token_all("alice"));
        let acked = alice.publish_many("kept", n, |i| json!(i));
        server.kill9();
        let mut alice = server.ws(&token_all("alice"));
        let seqs: Vec<u64> = alice.history("kept", 0).iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        (acked.last().copied().unwrap_or(0), seqs)
    };
    // 103, then 105: some hidden messages are still stored at each kill.
    for n in [103, 2] {
        let (last, seqs) = seqs_after_kill(&mut server, n);
        assert_eq!(seqs, (last - 99..=last).collect::<Vec<_>>(), "the 100 newest, no hidden one back");
    }
}
