//! Bad input on the paths of spec §7 and §8: token `info`, long users,
//! `last`/`state` misuse, keys, and a sub/unsub storm — each answered with
//! a clear error, and the server goes on serving everyone else.

use serde_json::{json, Value};

use crate::presence::{join, member_token, wait_members};
use crate::support::*;

/// Sends `req` (with an `id`) and asserts the answer is `err` `code` for that id.
#[track_caller]
fn refused(client: &mut Client, mut req: Value, code: &str) {
    req["id"] = json!("bad");
    let r = client.request(req.clone());
    assert_eq!(
        (r["op"].as_str(), r["code"].as_str(), r["id"].as_str()),
        (Some("err"), Some(code), Some("bad")),
        "{req} got {r}"
    );
    assert!(r["msg"].as_str().is_some_and(|m| !m.is_empty()), "an error says why: {r}");
}

/// The server still serves a good client: a member joins, publishes, is acked.
#[track_caller]
fn still_serves(server: &TestServer, ch: &str, members: &[&str]) {
    wait_members(server, ch, members.len());
    let mut good = server.ws(&member_token("good", json!({"ok": true})));
    let mut expected: Vec<&str> = members.iter().copied().chain(["good"]).collect();
    expected.sort_unstable();
    assert_eq!(join(&mut good, ch), expected, "no refused subscriber became a member");
    assert_eq!(good.publish("plain", json!("still here")), 1);
}

#[test]
fn a_token_info_over_1_kib_or_not_an_object_is_refused_at_a_presence_subscribe() {
    let server = TestServer::start(&[]);
    let ch = "presence-room:1";
    let big = json!({"bio": "x".repeat(1100)});
    for info in [big, json!("admin"), json!([1, 2]), json!(7)] {
        let mut c = server.ws(&member_token("mallory", info.clone()));
        refused(&mut c, json!({"op": "sub", "ch": ch}), "bad_request");
        // Only presence looks at info: the same token subscribes elsewhere.
        assert_eq!(c.sub("plain")["op"], "subok", "{info}");
    }
    let mut fits = server.ws(&member_token("ok-user", json!({"bio": "x".repeat(900)})));
    join(&mut fits, ch);
    still_serves(&server, ch, &["ok-user"]);
}

#[test]
fn a_user_over_128_bytes_is_refused_on_a_presence_channel_only() {
    let server = TestServer::start(&[]);
    let ch = "presence-room:2";
    let long = "u".repeat(129);
    let mut c = server.ws(&token_all(&long));
    refused(&mut c, json!({"op": "sub", "ch": ch}), "bad_request");
    assert_eq!(c.sub("plain")["op"], "subok");
    let max = "u".repeat(128);
    let mut ok = server.ws(&token_all(&max));
    assert_eq!(join(&mut ok, ch), [max.as_str()]);
    still_serves(&server, ch, &[max.as_str()]);
}

#[test]
fn last_with_since_or_state_out_of_range_and_state_on_an_ordinary_channel_are_bad_requests() {
    let server = TestServer::start(&["--compact", "kv:*"]);
    let mut c = server.ws(&token_all("alice"));
    let epoch = c.sub("warmup")["epoch"].clone();
    let bad = [
        json!({"op": "sub", "ch": "a", "last": 5, "since": 0}),
        json!({"op": "sub", "ch": "a", "last": 5, "since": 3, "epoch": epoch}),
        json!({"op": "sub", "ch": "kv:1", "last": 5, "state": true}),
        json!({"op": "sub", "ch": "a", "last": 0}),
        json!({"op": "sub", "ch": "a", "last": 101}),
        json!({"op": "sub", "ch": "a", "last": "5"}),
        json!({"op": "sub", "ch": "a", "state": true}),
        json!({"op": "sub", "ch": "a", "state": "yes"}),
        json!({"op": "presence", "ch": "a"}),
        json!({"op": "pub", "ch": "kv:1", "key": "k".repeat(129), "data": 1}),
        json!({"op": "pub", "ch": "kv:1", "key": "", "data": 1}),
        json!({"op": "pub", "ch": "kv:1", "key": "a b", "data": 1}),
        json!({"op": "pub", "ch": "kv:1", "key": 5, "data": 1}),
    ];
    for req in bad {
        refused(&mut c, req, "bad_request");
    }
    // None of them subscribed or stored anything.
    assert_eq!(c.publish("a", json!(1)), 1);
    assert_eq!(c.publish_keyed("kv:1", "ok", json!(1)), 1);
    let api = api_token("app");
    for key in ["k".repeat(129), "a%20b".into(), String::new()] {
        let r = server.http(&format!(
            "POST /api/channels/kv:1/messages?key={key} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api}\r\nContent-Length: 1\r\n\r\n2"
        ));
        r.assert_refusal(400, "bad_request");
    }
    let hist = c.request(json!({"op": "hist", "ch": "kv:1"}));
    assert_eq!(hist["msgs"].as_array().unwrap().len(), 1, "{hist}");
    assert!(c.request(json!({"op": "sub", "ch": "a", "last": 100}))["op"] == "subok");
    assert_eq!(c.recv_msg()["data"], 1);
}

#[test]
fn a_sub_unsub_storm_past_the_publish_rate_is_limited_then_closed_1008() {
    let server = TestServer::start(&["--publish-rate", "5"]);
    let mut storm = server.ws(&member_token("storm", json!({})));
    for i in 0..200 {
        let op = if i % 2 == 0 { "sub" } else { "unsub" };
        storm.write_json(json!({"op": op, "ch": "presence-storm", "id": i}));
    }
    storm.flush();
    let (replies, code) = storm.recv_until_close();
    assert_eq!(code, Some(1008), "after {} replies", replies.len());
    assert!(replies.iter().any(|r| r["code"] == "rate_limited"), "warned before being closed: {replies:?}");
    let served = replies.iter().filter(|r| r["op"] == "subok" || r["op"] == "unsubok").count();
    assert!(served <= 20, "the rate held: {served} of the storm's requests were served");
    // The storm's own membership ends (after the grace); others are served at once.
    let mut good = server.ws(&member_token("good", json!({})));
    let members = join(&mut good, "presence-storm");
    assert!(members.iter().all(|u| u == "good" || u == "storm"), "{members:?}");
    assert_eq!(server.ws(&token_all("other")).publish("plain", json!(1)), 1);
}

#[test]
fn a_refused_presence_subscribe_gets_its_error_alone_and_never_the_member_list() {
    let server = TestServer::start(&["--max-presence-members", "1"]);
    let ch = "presence-vip";
    let mut alice = server.ws(&member_token("alice", json!({"secret": "who is here"})));
    join(&mut alice, ch);
    wait_members(&server, ch, 1);
    let mut full = server.ws(&member_token("bob", json!({})));
    refused(&mut full, json!({"op": "sub", "ch": ch}), "too_many_members");
    let mut outsider = server.ws(&mint_claims(&json!({"sub": "eve", "exp": now_secs() + 60, "read": ["room:*"]})));
    refused(&mut outsider, json!({"op": "sub", "ch": ch}), "forbidden");
    // The next frame each gets answers its next request: nothing came in between.
    for c in [&mut full, &mut outsider] {
        let r = c.request(json!({"op": "hist", "ch": "room:1", "id": "next"}));
        assert_eq!((r["op"].as_str(), r["id"].as_str()), (Some("hist"), Some("next")), "{r}");
    }
    // Another connection of a member is not a new member.
    let mut again = server.ws(&member_token("alice", json!({})));
    assert_eq!(join(&mut again, ch), ["alice"]);
}
