//! Channels as a resource (issue 13, items 6 and 7): retention keeps up
//! while publishing never pauses, `--max-channels` bounds how many a token
//! can create, and `GET /api/channels` pages by name (spec §4, §5, §6).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

fn body(resp: &HttpResponse) -> Value {
    serde_json::from_str(&resp.body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {resp:?}"))
}

/// One message of `GET /api/channels/{ch}/messages?since=&limit=1`: (seq, ts).
fn message_after(server: &TestServer, ch: &str, since: u64, token: &str) -> (u64, u64) {
    let resp = server.api_get(&format!("/api/channels/{ch}/messages?since={since}&limit=1"), token);
    assert_eq!(resp.status, 200, "{resp:?}");
    let m = &body(&resp)["msgs"][0];
    (m["seq"].as_u64().unwrap_or_else(|| panic!("no message: {resp:?}")), m["ts"].as_u64().unwrap())
}

/// One page of the channel list: (ch, seq, count) in the order given.
fn channel_page(server: &TestServer, query: &str, token: &str) -> Vec<(String, u64, u64)> {
    let resp = server.api_get(&format!("/api/channels{query}"), token);
    assert_eq!(resp.status, 200, "{resp:?}");
    let v = body(&resp);
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|e| (e["ch"].as_str().unwrap().to_string(), e["seq"].as_u64().unwrap(), e["count"].as_u64().unwrap()))
        .collect()
}

#[test]
fn retention_by_age_keeps_up_while_publishing_never_pauses() {
    // Count retention must not do the trimming here.
    let server =
        TestServer::start(&["--retention-age", "500ms", "--retention-messages", "10000000", "--publish-rate", "0"]);
    let app = api_token("app");
    let run = Duration::from_millis(scale(3000, 6000) as u64);
    let mut publisher = server.ws(&token_all("pub"));
    publisher.publish("t", json!(0));
    let started = Instant::now();
    // A publish every millisecond, acks read at the end. Where a commit
    // takes longer than that (an SD card), the writer's queue is never
    // empty; `writer::tests` covers that case on any disk.
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
        while started.elapsed() < run {
            publisher.send_json(json!({"op": "pub", "ch": "t", "data": sent}));
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        for i in 0..sent {
            let r = publisher.reply();
            assert_eq!(r["op"], "ack", "pub {i}: {r}");
        }
        sent
    });
    // While it runs: the newest message, then the oldest still stored. The
    // oldest must be at most 500 ms + 1 s older than the newest (which is
    // no later than the moment the oldest is read).
    let limit = if small() { 4000 } else { 1500 };
    let mut oldest_seqs = Vec::new();
    while started.elapsed() < run - Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(100));
        let page = channel_page(&server, "", &app);
        let last = page[0].1;
        let (_, newest_ts) = message_after(&server, "t", last - 1, &app);
        let (oldest_seq, oldest_ts) = message_after(&server, "t", 0, &app);
        if started.elapsed() < Duration::from_millis(limit + 200) {
            continue;
        }
        assert!(
            newest_ts.saturating_sub(oldest_ts) <= limit,
            "{:?} into the run, seq {oldest_seq} (ts {oldest_ts}) is still stored next to seq {last} (ts {newest_ts})",
            started.elapsed()
        );
        oldest_seqs.push(oldest_seq);
    }
    assert!(sender.join().expect("the publisher") > 100, "the publisher did not publish");
    assert!(oldest_seqs.len() >= 2, "too few looks while publishing: {oldest_seqs:?}");
    assert!(oldest_seqs.first() < oldest_seqs.last(), "the oldest stored seq never advanced: {oldest_seqs:?}");
}

#[test]
fn a_new_channel_past_max_channels_is_refused_and_the_rest_of_its_batch_is_stored() {
    // The TOML key is `max_channels`, through the same parser as the flag.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roostd.toml");
    std::fs::write(&config, "max_channels = 3\n").unwrap();
    let mut server = TestServer::start(&["--config", config.to_str().unwrap()]);
    let mut c = server.ws(&token_all("alice"));
    for ch in ["a", "b", "c"] {
        assert_eq!(c.publish(ch, json!(1)), 1);
    }
    // Written together, so they most likely share one commit: only the new
    // channel is refused.
    c.write_json(json!({"op": "pub", "ch": "d", "data": 1, "id": "new"}));
    c.write_json(json!({"op": "pub", "ch": "a", "data": 2, "id": "old"}));
    c.flush();
    let (r1, r2) = (c.reply(), c.reply());
    assert_eq!(
        (&r1["op"], &r1["code"], &r1["id"]),
        (&json!("err"), &json!("too_many_channels"), &json!("new")),
        "{r1}"
    );
    assert_eq!(r2, json!({"op": "ack", "id": "old", "ch": "a", "seq": 2}));
    // Over HTTP: 507, and an existing channel still takes messages.
    let app = api_token("app");
    server.post("e", &app, "1", "").assert_refusal(507, "too_many_channels");
    assert_eq!(server.post("b", &app, "2", "").status, 201);
    assert_eq!(channel_page(&server, "", &app).len(), 3);
    // The count is the store's, not the process's.
    server.restart();
    let mut c = server.ws(&token_all("alice"));
    let r = c.request(json!({"op": "pub", "ch": "f", "data": 1, "id": 7}));
    assert_eq!((&r["code"], &r["id"]), (&json!("too_many_channels"), &json!(7)), "{r}");
    assert_eq!(c.publish("c", json!(2)), 2);
}

#[test]
fn an_emptied_channel_keeps_its_last_seq_and_its_place() {
    let server = TestServer::start(&["--retention-age", "200ms", "--max-channels", "1"]);
    let app = api_token("app");
    let mut c = server.ws(&token_all("alice"));
    let epoch = c.sub("x")["epoch"].clone();
    c.publish_many("x", 3, |i| json!(i));
    c.recv_json();
    c.recv_json();
    c.recv_json();
    let deadline = Instant::now() + io_timeout();
    while channel_page(&server, "", &app) != [("x".to_string(), 3, 0)] {
        assert!(Instant::now() < deadline, "retention never emptied x: {:?}", channel_page(&server, "", &app));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Seqs go on: a client resuming after 3 gets 4, never a second seq 1.
    let mut late = server.ws(&token_all("bob"));
    assert_eq!(late.resume("x", 3, &epoch)["seq"], 3);
    assert_eq!(c.publish("x", json!("again")), 4);
    assert_eq!(late.recv_msg()["seq"], 4);
    // And it still counts against the limit.
    let r = c.request(json!({"op": "pub", "ch": "y", "data": 1}));
    assert_eq!(r["code"], "too_many_channels", "{r}");
}

#[test]
fn the_channel_list_pages_by_name() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    let mut c = server.ws(&token_all("alice"));
    let names = ["b", "a:2", "room:1", "a", "a:10"];
    for (i, ch) in names.iter().enumerate() {
        c.publish_many(ch, i + 1, |n| json!(n));
    }
    let all = channel_page(&server, "", &app);
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    assert_eq!(all.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), sorted, "sorted by name");
    assert_eq!(all[0], ("a".to_string(), 4, 4));
    // Pages of two: a full page means ask again after its last name.
    let mut pages = Vec::new();
    let mut query = "?limit=2".to_string();
    loop {
        let page = channel_page(&server, &query, &app);
        pages.push(page.iter().map(|e| e.0.clone()).collect::<Vec<_>>());
        if page.len() < 2 {
            break;
        }
        query = format!("?after={}&limit=2", page.last().unwrap().0);
    }
    assert_eq!(pages, [vec!["a", "a:10"], vec!["a:2", "b"], vec!["room:1"]]);
    // `after` may be percent-encoded, and need not name a channel.
    assert_eq!(channel_page(&server, "?after=a%3A2", &app).len(), 2);
    assert_eq!(channel_page(&server, "?after=a%3A3&limit=1", &app), [("b".to_string(), 1, 1)]);
    assert_eq!(channel_page(&server, "?after=zzz", &app), []);
    for bad in ["?limit=0", "?limit=1001", "?limit=x"] {
        server.api_get(&format!("/api/channels{bad}"), &app).assert_refusal(400, "bad_request");
    }
    assert_eq!(channel_page(&server, "?limit=1000", &app).len(), 5);
}
