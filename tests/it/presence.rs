//! Spec §7: presence — members per user with their token's `info`, one
//! `join`/`leave` per user, the grace that keeps a reload from flickering,
//! and membership that survives a `kill -9` (restart grace, one `leave` and
//! one `member_removed` webhook for those who do not come back).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// A client token for `user` with this presence `info`.
pub fn member_token(user: &str, info: Value) -> String {
    mint_claims(&json!({"sub": user, "exp": now_secs() + 3600, "read": ["*"], "write": ["*"], "info": info}))
}

/// Subscribes to a presence channel: `subok`, then the `presence` frame at once; returns the users it lists.
#[track_caller]
pub fn join(client: &mut Client, ch: &str) -> Vec<String> {
    client.sub(ch);
    let p = client.recv_json();
    assert_eq!((p["op"].as_str(), p["ch"].as_str()), (Some("presence"), Some(ch)), "presence right after subok: {p}");
    users(&p)
}

/// The users of a `presence` frame, checking `count` and the order by user.
#[track_caller]
fn users(p: &Value) -> Vec<String> {
    let users: Vec<String> =
        p["members"].as_array().unwrap().iter().map(|m| m["user"].as_str().unwrap().into()).collect();
    assert_eq!(p["count"], users.len(), "{p}");
    let mut sorted = users.clone();
    sorted.sort();
    assert_eq!(users, sorted, "members are sorted by user: {p}");
    users
}

/// Asks for the member list; the reply must be the very next frame, so any
/// `join` or `leave` queued before it fails the test.
#[track_caller]
fn ask(client: &mut Client, ch: &str) -> Vec<String> {
    let p = client.request(json!({"op": "presence", "ch": ch, "id": "ask"}));
    assert_eq!((p["op"].as_str(), p["id"].as_str()), (Some("presence"), Some("ask")), "expected no event before: {p}");
    users(&p)
}

#[test]
fn two_users_on_three_connections_are_two_members_and_a_reload_within_the_grace_never_flickers() {
    let grace = Duration::from_secs(scale(1, 4) as u64);
    let server = TestServer::start(&["--presence-grace", &format!("{}s", grace.as_secs())]);
    let ch = "presence-room:1";
    let mut a1 = server.ws(&member_token("alice", json!({"name": "Alice"})));
    assert_eq!(join(&mut a1, ch), ["alice"]);
    // Others are told of a member once its membership is committed.
    wait_members(&server, ch, 1);
    let mut bob = server.ws(&member_token("bob", json!({"name": "Bob"})));
    assert_eq!(join(&mut bob, ch), ["alice", "bob"]);
    assert_eq!(a1.recv_json(), json!({"op": "join", "ch": ch, "user": "bob", "info": {"name": "Bob"}}));
    // Alice's second connection is not a new member: nobody hears of it.
    let mut a2 = server.ws(&member_token("alice", json!({"name": "Alice"})));
    assert_eq!(join(&mut a2, ch), ["alice", "bob"]);
    assert_eq!(ask(&mut bob, ch), ["alice", "bob"]);
    assert_eq!(ask(&mut a1, ch), ["alice", "bob"], "a member never gets its own join");

    // A page reload: both of alice's connections go, one comes back within the grace.
    a1.close();
    a2.close();
    let mut a3 = server.ws(&member_token("alice", json!({"name": "Alice"})));
    assert_eq!(join(&mut a3, ch), ["alice", "bob"]);
    // Well past the grace (and the 1 s the spec allows after it): still no event.
    std::thread::sleep(grace + Duration::from_millis(1500));
    assert_eq!(ask(&mut bob, ch), ["alice", "bob"], "a reload within the grace made bob see alice leave");
    let info = server.api_get(&format!("/api/channels/{ch}/presence"), &api_token("app"));
    assert_eq!(info.status, 200, "{info:?}");
    let members = json!([{"user": "alice", "info": {"name": "Alice"}}, {"user": "bob", "info": {"name": "Bob"}}]);
    assert_eq!(serde_json::from_str::<Value>(&info.body).unwrap(), json!({"ch": ch, "members": members, "count": 2}));

    // A real leave: one `leave`, not before the grace is over.
    let left = Instant::now();
    a3.close();
    assert_eq!(bob.recv_json(), json!({"op": "leave", "ch": ch, "user": "alice"}));
    assert!(left.elapsed() >= grace, "the leave came {:?} after the close, within the grace", left.elapsed());
    assert_eq!(ask(&mut bob, ch), ["bob"], "exactly one leave");
    let info = server.api_get(&format!("/api/channels/{ch}/presence"), &api_token("app"));
    assert_eq!(serde_json::from_str::<Value>(&info.body).unwrap()["count"], 1, "{info:?}");
}

#[test]
fn after_a_kill_9_members_who_come_back_within_the_restart_grace_cause_no_events_and_the_others_leave_once() {
    let endpoint = Endpoint::start(Mode::Status(200));
    let restart_grace = Duration::from_secs(scale(3, 10) as u64);
    let mut server = TestServer::start(&[
        "--webhook",
        &endpoint.url,
        "--webhook-backoff-min",
        "50ms",
        "--presence-grace",
        "300ms",
        "--presence-restart-grace",
        &format!("{}s", restart_grace.as_secs()),
    ]);
    let ch = "presence-room:2";
    let mut clients: Vec<Client> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| {
            let mut c = server.ws(&member_token(u, json!({"u": u})));
            join(&mut c, ch);
            c
        })
        .collect();
    // Their membership is committed (and its webhook delivered) before the kill.
    let added = |e: &[Value]| e.iter().filter(|e| e["name"] == "member_added").count() == 3;
    endpoint.wait_for(io_timeout(), added);

    server.kill_and_wait();
    clients.clear();
    server.start_again();
    let started = Instant::now();
    let mut alice = server.ws(&member_token("alice", json!({"u": "alice"})));
    let restored = join(&mut alice, ch);
    let mut bob = server.ws(&member_token("bob", json!({"u": "bob"})));
    join(&mut bob, ch);
    assert!(started.elapsed() < restart_grace, "too slow to come back within the grace: the test proves nothing");
    assert_eq!(restored, ["alice", "bob", "carol"], "members are restored from the store, within their grace");
    assert_eq!(ask(&mut alice, ch), ["alice", "bob", "carol"], "bob coming back is no join");

    // Carol does not come back: exactly one leave to each of the others.
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.recv_json(), json!({"op": "leave", "ch": ch, "user": "carol"}));
    }
    assert!(started.elapsed() >= restart_grace - Duration::from_millis(500), "carol left before the restart grace");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ask(&mut alice, ch), ["alice", "bob"]);
    assert_eq!(ask(&mut bob, ch), ["alice", "bob"]);

    // And exactly one member_removed, for carol; alice and bob were never removed nor added again.
    let removed = |e: &[Value]| e.iter().any(|e| e["name"] == "member_removed");
    endpoint.wait_for(io_timeout(), removed);
    std::thread::sleep(Duration::from_secs(1));
    let events = distinct(&endpoint.delivered());
    let of = |name: &str| -> Vec<&str> {
        let mut users: Vec<&str> = events
            .iter()
            .filter(|e| e["name"] == name && e["channel"] == ch)
            .map(|e| e["user_id"].as_str().unwrap())
            .collect();
        users.sort_unstable();
        users
    };
    assert_eq!(of("member_removed"), ["carol"], "{events:#?}");
    assert_eq!(of("member_added"), ["alice", "bob", "carol"], "{events:#?}");
}

/// Waits (bounded) until the API lists `n` members of `ch` (others hear of
/// a member once its membership is committed).
#[track_caller]
pub fn wait_members(server: &TestServer, ch: &str, n: usize) {
    let deadline = Instant::now() + io_timeout();
    loop {
        let r = server.api_get(&format!("/api/channels/{ch}/presence"), &api_token("app"));
        assert_eq!(r.status, 200, "{r:?}");
        if serde_json::from_str::<Value>(&r.body).unwrap()["count"] == n {
            return;
        }
        assert!(Instant::now() < deadline, "{ch} never had {n} members: {r:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Events without repeats (the first copy of each `id`), checking that a
/// repeat is the same event.
pub fn distinct(events: &[Value]) -> Vec<Value> {
    let mut seen = std::collections::HashMap::new();
    let mut out = Vec::new();
    for e in events {
        let id = e["id"].as_str().unwrap_or_else(|| panic!("an event without a string id: {e}"));
        match seen.get(id) {
            Some(first) => assert_eq!(first, e, "two different events with the same id"),
            None => {
                seen.insert(id.to_string(), e.clone());
                out.push(e.clone());
            }
        }
    }
    out
}
