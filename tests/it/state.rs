//! Spec §8: keyed messages on compacted channels — retention keeps the
//! latest message per key, a resume after compaction is made whole by a
//! snapshot, tombstones expire with the dedupe window, and `--max-keys`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// `GET /api/channels/{ch}/state` (one page): the server's state as key → msg, and its seq.
#[track_caller]
fn server_state(server: &TestServer, ch: &str) -> (BTreeMap<String, Value>, u64) {
    let r = server.api_get(&format!("/api/channels/{ch}/state"), &api_token("app"));
    assert_eq!(r.status, 200, "{r:?}");
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["ch"], ch, "{v}");
    let msgs = v["msgs"].as_array().unwrap();
    assert!(msgs.len() < 1000, "one page holds it all: {}", msgs.len());
    let state = msgs.iter().map(|m| (m["key"].as_str().unwrap().to_string(), m.clone())).collect();
    (state, v["seq"].as_u64().unwrap())
}

/// The channel's `count` (messages still stored) and `seq` from `GET /api/channels`.
#[track_caller]
fn stored(server: &TestServer, ch: &str) -> (u64, u64) {
    let r = server.api_get("/api/channels", &api_token("app"));
    assert_eq!(r.status, 200, "{r:?}");
    let list: Vec<Value> = serde_json::from_str(&r.body).unwrap();
    let c = list.iter().find(|c| c["ch"] == ch).unwrap_or_else(|| panic!("{ch} not listed: {list:?}"));
    (c["count"].as_u64().unwrap(), c["seq"].as_u64().unwrap())
}

/// Waits (bounded) until `GET /api/channels` counts `count` messages of `ch`.
#[track_caller]
fn wait_count(server: &TestServer, ch: &str, count: u64) {
    let deadline = Instant::now() + io_timeout();
    while stored(server, ch).0 != count {
        assert!(Instant::now() < deadline, "{ch} never came down to {count} messages: {:?}", stored(server, ch));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a snapshot: `msg`s up to the `state` marker; returns key → msg and the marker's seq.
#[track_caller]
fn read_snapshot(client: &mut Client, ch: &str) -> (BTreeMap<String, Value>, u64) {
    let mut state = BTreeMap::new();
    let mut last = 0;
    loop {
        let v = client.recv_json();
        match v["op"].as_str() {
            Some("msg") => {
                let seq = v["seq"].as_u64().unwrap();
                assert!(seq > last, "a snapshot is in ascending seq: {v} after {last}");
                last = seq;
                state.insert(v["key"].as_str().unwrap().to_string(), v);
            }
            Some("state") => {
                assert_eq!(v["ch"], ch, "{v}");
                return (state, v["seq"].as_u64().unwrap());
            }
            _ => panic!("expected a snapshot msg or the state marker, got {v}"),
        }
    }
}

#[test]
fn a_compacted_channel_keeps_the_latest_message_per_key_and_a_resume_after_compaction_ends_with_the_servers_state() {
    let server = TestServer::start(&["--compact", "kv:*", "--publish-rate", "0"]);
    let ch = "kv:sensors";
    let (n, keys) = (scale(10_000, 2_000), 100);
    let key = |i: usize| format!("k{:02}", i % keys);
    let mut publisher = server.ws(&token_all("device"));
    let mut reader = server.ws(&token_all("page"));
    let epoch = reader.sub(ch)["epoch"].clone();
    // The reader sees the first round of keys, then goes away.
    publisher.publish_frames(keys, |i| json!({"op": "pub", "ch": ch, "key": key(i), "data": {"i": i}}));
    for i in 0..keys {
        let m = reader.recv_msg();
        assert_eq!(
            (m["seq"].as_u64(), m["key"].as_str(), &m["data"]),
            (Some(i as u64 + 1), Some(&*key(i)), &json!({"i": i}))
        );
    }
    reader.close();

    let seqs = publisher
        .publish_frames(n - keys, |i| json!({"op": "pub", "ch": ch, "key": key(i + keys), "data": {"i": i + keys}}));
    assert_eq!(seqs.last(), Some(&(n as u64)));
    // Only the latest message of each key stays.
    wait_count(&server, ch, keys as u64);
    assert_eq!(stored(&server, ch), (keys as u64, n as u64));
    let (state, seq) = server_state(&server, ch);
    assert_eq!(seq, n as u64);
    assert_eq!(state.len(), keys);
    for (k, m) in &state {
        let j: usize = k[1..].parse().unwrap();
        let latest = n - keys + j;
        assert_eq!((m["seq"].as_u64(), &m["data"]), (Some(latest as u64 + 1), &json!({"i": latest})), "{k}");
    }
    let hist = publisher.history(ch, 0);
    assert_eq!(hist.len(), keys, "history holds only what is stored");

    // The reader resumes after seq 100, long compacted away: gap, snapshot, marker.
    let mut reader = server.ws(&token_all("page"));
    let ok = reader.resume(ch, keys as u64, &epoch);
    assert_eq!((ok["gap"].as_bool(), ok["seq"].as_u64()), (Some(true), Some(n as u64)), "{ok}");
    let (mut mine, at) = read_snapshot(&mut reader, ch);
    assert_eq!(at, n as u64);
    assert_eq!(mine, state, "the snapshot is the server's state");
    // Then live, from seq + 1 with no gap: a few keys change, one new key.
    let more: Vec<u64> = (0..10).map(|i| publisher.publish_keyed(ch, &key(i * 7), json!({"late": i}))).collect();
    let new_key = publisher.publish_keyed(ch, "fresh", json!("new"));
    for seq in more.iter().chain([&new_key]) {
        let m = reader.recv_msg();
        assert_eq!(m["seq"].as_u64(), Some(*seq), "{m}");
        mine.insert(m["key"].as_str().unwrap().to_string(), m);
    }
    let (state, seq) = server_state(&server, ch);
    assert_eq!(seq, new_key);
    assert_eq!(mine, state, "the resumed reader ends with exactly the server's state");
    wait_count(&server, ch, keys as u64 + 1);
}

#[test]
fn a_tombstone_is_part_of_the_state_until_the_dedupe_window_has_passed() {
    let window = Duration::from_secs(scale(2, 6) as u64);
    let server = TestServer::start(&["--compact", "kv:*", "--dedupe-window", &format!("{}s", window.as_secs())]);
    let ch = "kv:doors";
    let mut c = server.ws(&token_all("device"));
    c.publish_keyed(ch, "front", json!("open"));
    c.publish_keyed(ch, "back", json!("open"));
    c.publish_keyed(ch, "front", json!("shut"));
    let gone = c.publish_keyed(ch, "back", Value::Null);
    let written = Instant::now();
    let (state, _) = server_state(&server, ch);
    assert_eq!(state.keys().collect::<Vec<_>>(), ["back", "front"]);
    assert_eq!(state["back"]["data"], Value::Null, "the tombstone is in the state while it is young");

    // Once older than the window (maintenance runs about every second), the key is gone.
    wait_count(&server, ch, 1);
    assert!(written.elapsed() >= window, "the tombstone went after {:?}, within the window", written.elapsed());
    let (state, seq) = server_state(&server, ch);
    assert_eq!((state.keys().map(String::as_str).collect::<Vec<_>>(), seq), (vec!["front"], gone));
    let mut page = server.ws(&token_all("page"));
    let ok = page.request(json!({"op": "sub", "ch": ch, "state": true}));
    assert_eq!(ok["op"], "subok", "{ok}");
    let (snapshot, at) = read_snapshot(&mut page, ch);
    assert_eq!((snapshot, at), (state, gone), "a snapshot no longer holds the expired tombstone");
}

#[test]
fn a_new_key_past_max_keys_is_refused_over_the_websocket_and_with_507_over_http() {
    let server = TestServer::start(&["--compact", "kv:*", "--max-keys", "3"]);
    let ch = "kv:full";
    let mut c = server.ws(&token_all("device"));
    for k in ["a", "b", "c"] {
        c.publish_keyed(ch, k, json!(1));
    }
    let r = c.request(json!({"op": "pub", "ch": ch, "key": "d", "data": 1, "id": "d"}));
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str(), r["id"].as_str()),
        (Some("err"), Some("too_many_keys"), Some("d")),
        "{r}"
    );
    let api = api_token("app");
    server
        .http(&format!(
            "POST /api/channels/{ch}/messages?key=e HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api}\r\nContent-Length: 1\r\n\r\n2"
        ))
        .assert_refusal(507, "too_many_keys");
    // Existing keys still take new values, and other channels are not limited.
    c.publish_keyed(ch, "a", json!(2));
    let r = server.http(&format!(
        "POST /api/channels/{ch}/messages?key=b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api}\r\nContent-Length: 1\r\n\r\n3"
    ));
    assert_eq!(r.status, 201, "{r:?}");
    for k in ["d", "e", "f", "g"] {
        c.publish_keyed("plain", k, json!(k));
    }
    let (state, _) = server_state(&server, ch);
    let values: Vec<(&str, &Value)> = state.iter().map(|(k, m)| (k.as_str(), &m["data"])).collect();
    assert_eq!(values, [("a", &json!(2)), ("b", &json!(3)), ("c", &json!(1))]);
}

#[test]
fn sub_with_last_replays_the_last_messages_then_live() {
    let server = TestServer::start(&[]);
    let mut c = server.ws(&token_all("alice"));
    c.publish_many("feed", 20, |i| json!(i));
    let mut late = server.ws(&token_all("bob"));
    let ok = late.request(json!({"op": "sub", "ch": "feed", "last": 3}));
    assert_eq!((ok["op"].as_str(), ok["seq"].as_u64()), (Some("subok"), Some(20)), "{ok}");
    c.publish("feed", json!(20));
    let got: Vec<(u64, Value)> =
        (0..4).map(|_| late.recv_msg()).map(|m| (m["seq"].as_u64().unwrap(), m["data"].clone())).collect();
    assert_eq!(got, [(18, json!(17)), (19, json!(18)), (20, json!(19)), (21, json!(20))]);
}
