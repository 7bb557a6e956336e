//! Limits of spec §4 and §6: subscriptions per connection, slow consumers,
//! message size and publish rate. Each limit is hit on purpose and the
//! client is checked to recover (or to be closed with the contract's code).

use std::io::Write;

use serde_json::{json, Value};

use crate::support::*;

#[track_caller]
fn assert_err(r: &Value, code: &str, id: Value) {
    assert_eq!((r["op"].clone(), r["code"].clone(), r["id"].clone()), (json!("err"), json!(code), id), "{r}");
}

#[test]
fn subscriptions_past_the_limit_are_too_many_subscriptions() {
    let server = TestServer::start(&["--max-subscriptions", "3"]);
    let mut c = server.ws(&token_all("alice"));
    for ch in ["a", "b", "c"] {
        c.sub(ch);
    }
    assert_err(&c.request(json!({"op": "sub", "ch": "d", "id": "4th"})), "too_many_subscriptions", json!("4th"));
    // Subscribing again to a channel already held is not a new subscription.
    c.sub("a");
    // Room again after an unsub; the refused channel was never subscribed.
    assert_eq!(c.request(json!({"op": "unsub", "ch": "b"}))["op"], "unsubok");
    c.sub("d");
    assert_err(&c.request(json!({"op": "sub", "ch": "e", "id": 5})), "too_many_subscriptions", json!(5));
    // The limit is per connection.
    let mut other = server.ws(&token_all("alice"));
    for ch in ["a", "b", "c"] {
        other.sub(ch);
    }
}

#[test]
fn a_slow_consumer_is_closed_with_1013_and_resumes_without_loss() {
    let server = TestServer::start(&["--max-send-buffer-bytes", "262144", "--max-message-bytes", "65536"]);
    let mut slow = server.ws(&token_all("slow"));
    let epoch = slow.sub("firehose")["epoch"].clone();

    // The subscriber reads nothing while 10 MiB is published: far more than
    // its send buffer plus what the kernel buffers on loopback (megabytes).
    let n = 320;
    let mut publisher = server.ws(&token_all("alice"));
    let payload = "z".repeat(32 * 1024);
    publisher.publish_many("firehose", n, |i| json!({"i": i, "pad": payload}));

    let (msgs, code) = slow.recv_until_close();
    assert_eq!(code, Some(1013), "a slow consumer is closed with 1013");
    let k = msgs.len() as u64;
    assert!(k < n as u64, "the consumer was closed before it got everything");
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(
            (m["op"].as_str(), m["seq"].as_u64()),
            (Some("msg"), Some(i as u64 + 1)),
            "in order before the close"
        );
    }

    // It resumes with `since` and gets the rest: nothing is lost.
    let mut again = server.ws(&token_all("slow"));
    let ok = again.resume("firehose", k, &epoch);
    assert!(ok.get("gap").is_none(), "{ok}");
    for seq in k + 1..=n as u64 {
        let m = again.recv_msg();
        assert_eq!(m["seq"], seq, "{}", m["op"]);
        assert_eq!(m["data"]["i"], seq - 1);
    }
}

#[test]
fn a_message_over_the_size_limit_closes_with_1009() {
    let server = TestServer::start(&["--max-message-bytes", "1024"]);
    let mut c = server.ws(&token_all("alice"));
    // Just under the limit is fine.
    let data = "y".repeat(900);
    assert_eq!(c.publish("big", json!(data)), 1);
    c.send_json(json!({"op": "pub", "ch": "big", "data": "y".repeat(2000)}));
    assert_eq!(c.close_code(), Some(1009));
    // Nothing of it was stored.
    let mut other = server.ws(&token_all("bob"));
    assert_eq!(other.history("big", 0).len(), 1);
}

#[test]
fn publishing_faster_than_the_rate_is_rate_limited() {
    let server = TestServer::start(&["--publish-rate", "2"]);
    let mut c = server.ws(&token_all("alice"));
    // Burst 2 × 2 = 4, refilled at 2 per second.
    for i in 0..7 {
        c.write_json(json!({"op": "pub", "ch": "rl", "data": i, "id": i}));
    }
    c.flush();
    let replies: Vec<Value> = (0..7).map(|_| c.reply()).collect();
    let acked = replies.iter().filter(|r| r["op"] == "ack").count();
    let limited: Vec<&Value> = replies.iter().filter(|r| r["code"] == "rate_limited").collect();
    assert_eq!(acked + limited.len(), 7, "{replies:?}");
    assert!((4..=6).contains(&acked), "the burst is 4, plus a refill if slow: {replies:?}");
    assert!(limited.iter().all(|r| r["op"] == "err" && r["id"].is_u64()), "{replies:?}");
    // The connection stays usable.
    assert_eq!(c.request(json!({"op": "hist", "ch": "rl"}))["msgs"].as_array().unwrap().len(), acked);
}

#[test]
fn a_sustained_publish_flood_is_closed_with_1008() {
    let server = TestServer::start(&["--publish-rate", "2"]);
    let mut c = server.ws(&token_all("alice"));
    for i in 0..50 {
        c.write_json(json!({"op": "pub", "ch": "flood", "data": i}));
    }
    c.flush();
    let (replies, code) = c.recv_until_close();
    assert_eq!(code, Some(1008), "after {replies:?}");
    assert!(replies.iter().any(|r| r["code"] == "rate_limited"), "warned before being closed: {replies:?}");
}

/// The server stops reading a message too big at its header, with the rest
/// of it still coming. Dropping the socket then would make the kernel answer
/// with a reset, which can destroy the Close before the client reads it (CI
/// saw exactly that once): the server drains instead.
#[test]
fn a_message_too_big_gets_its_close_even_when_the_client_reads_late() {
    use std::io::Write as _;
    let server = TestServer::start(&[]);
    let target = format!("/ws?token={}", token_all("alice"));
    let (resp, mut sock) = server.raw_upgrade(&server.upgrade_request(&target, ""));
    assert_eq!(resp.status, 101);
    let len: u64 = 200_000;
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.resize(frame.len() + len as usize, b'x');
    // The server reads the header, closes, and gets the rest unasked.
    let _ = sock.write_all(&frame);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(read_close_code(&mut sock), Some(1009), "{}", server.log_tail(30));
}

/// The close code in the first server frame read from a raw socket.
fn read_close_code(sock: &mut std::net::TcpStream) -> Option<u16> {
    use std::io::Read as _;
    let mut head = [0u8; 4];
    sock.read_exact(&mut head).ok()?;
    (head[0] & 0x0f == 0x8).then(|| u16::from_be_bytes([head[2], head[3]]))
}

#[test]
fn a_message_in_too_many_fragments_closes_with_1008() {
    use std::io::Write as _;
    let server = TestServer::start(&["--max-fragments", "16"]);
    let target = format!("/ws?token={}", token_all("alice"));
    // 16 frames in one message are allowed...
    let (resp, mut sock) = server.raw_upgrade(&server.upgrade_request(&target, ""));
    assert_eq!(resp.status, 101);
    let text = br#"{"op":"hist","ch":"frag"}"#;
    let mut msg = client_frame(false, 1, &text[..1]);
    for b in &text[1..15] {
        msg.extend(client_frame(false, 0, std::slice::from_ref(b)));
    }
    msg.extend(client_frame(true, 0, &text[15..]));
    sock.write_all(&msg).unwrap();
    let mut reply = [0u8; 2];
    std::io::Read::read_exact(&mut sock, &mut reply).unwrap();
    assert_eq!(reply[0], 0x81, "a text reply to the 16-frame message");
    // ...17 are not.
    let (_, mut sock) = server.raw_upgrade(&server.upgrade_request(&target, ""));
    let mut flood = client_frame(false, 1, b"{");
    for _ in 0..40 {
        flood.extend(client_frame(false, 0, b" "));
    }
    sock.write_all(&flood).unwrap();
    assert_eq!(read_close_code(&mut sock), Some(1008));
    // The server goes on serving.
    let mut other = server.ws(&token_all("bob"));
    assert_eq!(other.request(json!({"op": "hist", "ch": "frag"}))["op"], "hist");
}

/// The server's own memory (`RssAnon`: not the store's mapped pages) once
/// it stops growing: three readings in a row within 64 KiB, or the I/O
/// timeout.
fn settled_anon_kib(server: &TestServer) -> u64 {
    let until = std::time::Instant::now() + io_timeout();
    let (mut last, mut same) = (server.anon_kib(), 0);
    while same < 3 && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = server.anon_kib();
        same = if now.abs_diff(last) < 64 { same + 1 } else { 0 };
        last = now;
    }
    last
}

#[test]
fn many_clients_that_replay_and_ask_history_without_reading_hold_the_output_budget_not_a_buffer_each() {
    // 2 MiB for all connections together; each has the default 1 MiB send
    // buffer, so without the budget every reader below would hold about
    // 1 MiB (a replay's room and a `hist` page of 512 KiB).
    let server = TestServer::start(&["--max-output-bytes", "2097152", "--publish-rate", "0"]);
    let mut app = server.ws(&token_all("app"));
    let pad = "h".repeat(1000);
    let stored = scale(4000, 2000);
    app.publish_many("history", stored, |i| json!({"i": i, "pad": pad}));
    let mut live = server.ws(&token_all("live"));
    live.sub("news");
    let before = settled_anon_kib(&server);

    let readers = 60;
    let sub = client_frame(true, 0x1, br#"{"op":"sub","ch":"history","since":0}"#);
    let hist = client_frame(true, 0x1, br#"{"op":"hist","ch":"history","limit":1000}"#);
    let token = token_all("reader");
    let held: Vec<_> = (0..readers)
        .map(|_| {
            let (resp, mut sock) = server.raw_upgrade(&server.upgrade_request(&format!("/ws?token={token}"), ""));
            assert_eq!(resp.status, 101);
            sock.write_all(&[sub.as_slice(), &hist, &hist].concat()).unwrap();
            sock // held open, never read
        })
        .collect();
    let grown_kib = settled_anon_kib(&server).saturating_sub(before);

    // Those who read are still served: a live message, and history (a page
    // of one message at least while the budget is spent; `more` says on).
    let seq = app.publish("news", json!("still here"));
    assert_eq!(live.recv_msg()["seq"], seq);
    let page = live.request(json!({"op": "hist", "ch": "history", "limit": 1000}));
    assert_eq!(page["op"], "hist", "{page}");
    assert_eq!(page["msgs"][0]["seq"], 1);

    assert!(
        grown_kib < 6 * 1024,
        "{readers} clients that never read grew the server's heap by {grown_kib} KiB: far past the 2 MiB budget"
    );
    drop(held);
    // Once they are gone the budget is free again: a whole replay comes.
    let mut late = server.ws(&token_all("late"));
    late.request(json!({"op": "sub", "ch": "history", "since": 0}));
    for seq in 1..=stored as u64 {
        assert_eq!(late.recv_msg()["seq"], seq);
    }
}
