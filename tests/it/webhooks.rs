//! Spec §9: webhooks — lifecycle events reach the main application signed,
//! in order per channel, at least once with ids, through an endpoint that is
//! down, failing or hanging, and across a `kill -9`; and the endpoint never
//! delays a client.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use roostd::auth::hmac_sha256_hex;
use serde_json::{json, Value};

use crate::presence::{distinct, join, member_token};
use crate::support::*;

/// The events of each channel, names in order of first arrival (repeats dropped).
fn by_channel(events: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in distinct(events) {
        let name = match e["user_id"].as_str() {
            Some(user) => format!("{}:{user}", e["name"].as_str().unwrap()),
            None => e["name"].as_str().unwrap().to_string(),
        };
        out.entry(e["channel"].as_str().unwrap().to_string()).or_default().push(name);
    }
    out
}

/// Subscribes `client` to every channel, then leaves them all, and waits
/// out `grace` so each is vacated: one occupied and one vacated per channel.
fn occupy_and_leave(client: &mut Client, channels: &[String], grace: Duration) {
    for ch in channels {
        client.sub(ch);
    }
    for ch in channels {
        let r = client.request(json!({"op": "unsub", "ch": ch}));
        assert_eq!(r["op"], "unsubok", "{r}");
    }
    std::thread::sleep(grace * 3);
}

/// Every request the endpoint read carries a valid `X-Roost-Signature` and at most 100 events.
#[track_caller]
fn assert_signed(endpoint: &Endpoint) {
    let received = endpoint.received();
    assert!(!received.is_empty());
    for d in &received {
        let sig = d.header("X-Roost-Signature").unwrap_or_else(|| panic!("no signature: {d:?}"));
        assert_eq!(
            sig,
            hmac_sha256_hex(SECRET.as_bytes(), d.body.as_bytes()),
            "the signature verifies with the secret"
        );
        assert_ne!(sig, hmac_sha256_hex(b"another secret of at least 32 bytes!", d.body.as_bytes()));
        let body = d.json();
        assert!(body["time_ms"].is_u64(), "{body}");
        let n = body["events"].as_array().unwrap().len();
        assert!((1..=100).contains(&n), "a request carries 1 to 100 events, not {n}");
    }
}

#[test]
fn events_survive_an_endpoint_that_is_down_then_fails_three_times_in_order_signed_and_with_ids() {
    // Down for 2 s, not the 30 s: the backoff doubles on every failed
    // try, so after an outage of D the three 500s and the 200 come at about
    // 2D, 4D, 8D and 16D later; 2 s keeps the test near half a minute and
    // still spans several refused tries (50 ms, 100 ms, ... doubled).
    let down = Duration::from_secs(2);
    let grace = Duration::from_millis(200);
    let endpoint = Endpoint::start(Mode::Refuse);
    let server =
        TestServer::start(&["--webhook", &endpoint.url, "--webhook-backoff-min", "50ms", "--presence-grace", "200ms"]);
    let rooms: Vec<String> = (0..5).map(|i| format!("room:{i}")).collect();
    let mut client = server.ws(&token_all("watcher"));
    let started = Instant::now();
    // While the endpoint is down: two rounds on each room, members come and go.
    occupy_and_leave(&mut client, &rooms, grace);
    let mut alice = server.ws(&member_token("alice", json!({})));
    join(&mut alice, "presence-lobby");
    occupy_and_leave(&mut client, &rooms, grace);
    let mut bob = server.ws(&member_token("bob", json!({})));
    join(&mut bob, "presence-lobby");
    alice.close();
    std::thread::sleep(down.saturating_sub(started.elapsed()));
    assert!(endpoint.received().is_empty(), "nothing can arrive while the port refuses");

    // Up again, but the first three requests get 500; meanwhile more happens.
    endpoint.script(&[Mode::Status(500); 3]);
    endpoint.set(Mode::Status(200));
    occupy_and_leave(&mut client, &rooms, grace);
    bob.close();

    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ch in &rooms {
        expected.insert(
            ch.clone(),
            ["channel_occupied", "channel_vacated"].repeat(3).iter().map(|s| s.to_string()).collect(),
        );
    }
    let lobby = [
        "channel_occupied",
        "member_added:alice",
        "member_added:bob",
        "member_removed:alice",
        "member_removed:bob",
        "channel_vacated",
    ];
    expected.insert("presence-lobby".into(), lobby.iter().map(|s| s.to_string()).collect());
    let total: usize = expected.values().map(Vec::len).sum();
    let events = endpoint.wait_for(Duration::from_secs(120), |e| distinct(e).len() >= total);
    assert_eq!(by_channel(&events), expected, "every event, once, in order per channel");
    let failed = endpoint.received().iter().filter(|d| d.status == 500).count();
    assert_eq!(failed, 3, "the 500s were retried");
    // Every 500'd event came again with the same id and content (`distinct` checks the content).
    let all: Vec<Value> =
        endpoint.received().iter().flat_map(|d| d.json()["events"].as_array().cloned().unwrap()).collect();
    assert!(all.len() > total, "the failed batch was repeated");
    assert_eq!(distinct(&all).len(), total, "a repeat has the id of the first try");
    assert_signed(&endpoint);
    eprintln!("webhook outage test: {total} events delivered {:.1?} after the start", started.elapsed());
}

#[test]
fn a_kill_9_between_commit_and_delivery_loses_no_event() {
    // Refused at first: the gauge of pending events is read between tries,
    // so it is fresh while tries fail fast (a hung try would freeze it).
    let endpoint = Endpoint::start(Mode::Refuse);
    let args = [
        "--webhook",
        &endpoint.url,
        "--webhook-backoff-min",
        "50ms",
        "--presence-grace",
        "200ms",
        "--presence-restart-grace",
        "1s",
    ];
    let mut server = TestServer::start(&args);
    let rooms: Vec<String> = (0..20).map(|i| format!("room:{i}")).collect();
    let mut client = server.ws(&token_all("watcher"));
    for ch in &rooms {
        client.sub(ch);
    }
    let mut alice = server.ws(&member_token("alice", json!({})));
    join(&mut alice, "presence-x");
    // All committed (21 occupied, 1 added); then a try is in flight, unanswered.
    let deadline = Instant::now() + io_timeout();
    while server.metric("roostd_webhook_events_pending") != Some(22.0) {
        assert!(Instant::now() < deadline, "pending {:?}", server.metric("roostd_webhook_events_pending"));
        std::thread::sleep(Duration::from_millis(20));
    }
    endpoint.set(Mode::Hang);
    let deadline = Instant::now() + io_timeout();
    while endpoint.received().is_empty() {
        assert!(Instant::now() < deadline, "no try reached the hanging endpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill_and_wait();
    drop((client, alice));
    endpoint.set(Mode::Status(200));
    server.start_again();

    // Everything from before the kill, then (nobody came back) the vacated and removed ones.
    let mut expected: BTreeMap<String, Vec<String>> = rooms
        .iter()
        .map(|ch| (ch.clone(), vec!["channel_occupied".to_string(), "channel_vacated".to_string()]))
        .collect();
    let presence = ["channel_occupied", "member_added:alice", "member_removed:alice", "channel_vacated"];
    expected.insert("presence-x".into(), presence.iter().map(|s| s.to_string()).collect());
    let events = endpoint.wait_for(io_timeout() * 2, |e| distinct(e).len() >= 44);
    assert_eq!(by_channel(&events), expected);
    assert_signed(&endpoint);
    let deadline = Instant::now() + io_timeout();
    while server.metric("roostd_webhook_events_pending") != Some(0.0) {
        assert!(Instant::now() < deadline, "delivered events stay pending");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_hanging_endpoint_never_delays_a_clients_round_trip() {
    let endpoint = Endpoint::start(Mode::Hang);
    let server = TestServer::start(&["--webhook", &endpoint.url, "--presence-grace", "100ms"]);
    let mut busy = server.ws(&token_all("busy"));
    let mut timed = server.ws(&token_all("timed"));
    let rounds = scale(300, 100);
    let mut took = Vec::with_capacity(rounds);
    for i in 0..rounds {
        // Each round makes events (a channel occupied, another vacated) that wait behind the hung request.
        busy.sub(&format!("busy:{i}"));
        if i > 0 {
            busy.request(json!({"op": "unsub", "ch": format!("busy:{}", i - 1)}));
        }
        let t = Instant::now();
        let r = timed.request(json!({"op": "pub", "ch": "timed", "data": i, "id": i}));
        took.push(t.elapsed());
        assert_eq!(r["op"], "ack", "{r}");
    }
    assert!(!endpoint.received().is_empty(), "the endpoint was called (and hangs)");
    assert!(server.metric("roostd_webhook_events_pending").unwrap() > 0.0, "events are waiting");
    took.sort();
    let (p50, p99, max) = (took[rounds / 2], took[rounds * 99 / 100], took[rounds - 1]);
    eprintln!("pub->ack with a hanging webhook endpoint, {rounds} round trips: p50 {p50:?}, p99 {p99:?}, max {max:?}");
    assert!(max < Duration::from_secs(1), "a round trip took {max:?} while the endpoint hung");
}
