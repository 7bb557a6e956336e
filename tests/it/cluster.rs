//! Cluster mode (cluster.md), first slice: the NATS JetStream client thread
//! against a real `nats-server` on 127.0.0.1. Skipped when `nats-server` is
//! not installed (`.ci/cluster-test` installs it and makes the skip a failure).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use roostd::cluster::{Cluster, Event, Settings};
use roostd::config::NatsUrl;
use roostd::store::Append;

use serde_json::{json, Value};

use crate::presence::{distinct, join, member_token, wait_members};
use crate::support::{
    io_timeout, run_roostd, scale, token_all, within, Answer, Endpoint, Mode, NatsServer, TestServer,
};

fn settings(nats: &NatsServer, node: &str) -> Settings {
    Settings {
        urls: vec![NatsUrl { host: "127.0.0.1".into(), port: nats.port }],
        name: "test".into(),
        replicas: 1,
        dedupe_window: Duration::from_secs(60),
        credentials: None,
        node: node.into(),
        epoch: None,
    }
}

fn append(ch: &str, id: Option<&str>, data: &str) -> Append {
    Append { ch: ch.into(), from: "alice".into(), data: data.into(), id: id.map(String::from), key: None, event: None }
}

/// A cluster client and the events read but not yet asked for.
struct Node {
    c: Cluster,
    seen: std::collections::VecDeque<Event>,
}

impl std::ops::Deref for Node {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.c
    }
}

fn start(nats: &NatsServer, node: &str, applied: u64) -> Node {
    Node { c: Cluster::start(settings(nats, node), applied, Box::new(|| {})), seen: Default::default() }
}

/// The first event that `keep` accepts, in order; the others stay for
/// later waits. Fails after `io_timeout`.
fn wait_for(n: &mut Node, what: &str, mut keep: impl FnMut(&Event) -> bool) -> Event {
    if let Some(i) = n.seen.iter().position(&mut keep) {
        return n.seen.remove(i).unwrap();
    }
    let deadline = std::time::Instant::now() + io_timeout();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let e = n.c.next_event(left).unwrap_or_else(|| panic!("no {what} within {:?}", io_timeout()));
        if keep(&e) {
            return e;
        }
        n.seen.push_back(e);
    }
}

fn up(c: &mut Node) -> (String, u64) {
    match wait_for(c, "Up", |e| matches!(e, Event::Up { .. })) {
        Event::Up { epoch, last_seq } => (epoch, last_seq),
        _ => unreachable!(),
    }
}

fn published(c: &mut Node, token: u64) -> Result<roostd::cluster::js::PubAck, String> {
    match wait_for(c, "Published", |e| matches!(e, Event::Published { token: t, .. } if *t == token)) {
        Event::Published { result, .. } => result,
        _ => unreachable!(),
    }
}

fn message(c: &mut Node) -> (u64, u64, Append) {
    match wait_for(c, "Message", |e| matches!(e, Event::Message { .. })) {
        Event::Message { stream_seq, ts_ms, append } => (stream_seq, ts_ms, append),
        _ => unreachable!(),
    }
}

#[test]
fn the_cluster_client_publishes_once_per_id_and_consumes_the_stream_in_order() {
    let Some(nats) = NatsServer::start() else { return };
    let mut c = start(&nats, "n1", 0);
    let (epoch, last) = up(&mut c);
    assert_eq!(last, 0, "a new stream is empty");
    let first = append("room.1", Some("\"m-1\""), r#"{"n":1}"#);
    c.try_publish(1, first.clone()).unwrap();
    assert_eq!(published(&mut c, 1).unwrap().seq, 1);
    c.try_publish(2, append("room:2", None, "[2]")).unwrap();
    assert_eq!(published(&mut c, 2).unwrap().seq, 2);
    // The same (sub, id) again: JetStream answers with the first sequence.
    c.try_publish(3, first.clone()).unwrap();
    let again = published(&mut c, 3).unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));

    let (s1, ts1, a1) = message(&mut c);
    let (s2, ts2, a2) = message(&mut c);
    assert_eq!((s1, s2), (1, 2), "the stream in order, the duplicate not in it");
    assert_eq!((a1, a2.ch.as_str(), a2.data.as_str()), (first, "room:2", "[2]"));
    let now_ms = roostd_now_ms();
    assert!(ts1 <= ts2 && ts2 <= now_ms + 1000 && ts1 + 60_000 > now_ms, "ts is JetStream's time: {ts1} {ts2}");
    drop(c);

    // Another node that applied up to 1 starts after it, with the same epoch.
    let mut d = start(&nats, "n2", 1);
    let (epoch2, last2) = up(&mut d);
    assert_eq!((epoch2.as_str(), last2), (epoch.as_str(), 2), "every node derives the same epoch");
    let (s, _, a) = message(&mut d);
    assert_eq!((s, a.ch.as_str()), (2, "room:2"), "only what it has not applied");
}

#[test]
fn with_nats_gone_publishes_are_refused_and_resume_when_it_returns() {
    let Some(mut nats) = NatsServer::start() else { return };
    let mut c = start(&nats, "n1", 0);
    up(&mut c);
    c.try_publish(1, append("a", None, "1")).unwrap();
    assert_eq!(published(&mut c, 1).unwrap().seq, 1);
    assert_eq!(message(&mut c).0, 1);

    nats.kill();
    wait_for(&mut c, "Down", |e| matches!(e, Event::Down(_)));
    c.try_publish(2, append("a", None, "2")).unwrap();
    assert!(published(&mut c, 2).is_err(), "nothing is acked that is not in the log");

    nats.restart();
    up(&mut c);
    c.try_publish(3, append("a", None, "3")).unwrap();
    assert_eq!(published(&mut c, 3).unwrap().seq, 2, "the file store kept the stream");
    let (s, _, a) = message(&mut c);
    assert_eq!((s, a.data.as_str()), (2, "3"), "the consumer goes on after what was delivered");
}

/// Publishes `k` for each `k` of `seqs` (token `k`), which the stream
/// must put at sequence `k`.
fn publish_at(c: &mut Node, seqs: std::ops::RangeInclusive<u64>) {
    for k in seqs {
        c.try_publish(k, append("a", None, &k.to_string())).unwrap();
        assert_eq!(published(c, k).unwrap().seq, k);
    }
}

#[test]
fn a_restarted_node_takes_nothing_from_the_consumer_its_killed_process_left_in_jetstream() {
    let Some(nats) = NatsServer::start() else { return };
    // The process before the restart: its consumer sent it the stream up to
    // 5, but it committed only up to 2 (killed with the rest in flight).
    let mut before = start(&nats, "n1", 0);
    up(&mut before);
    publish_at(&mut before, 1..=5);
    assert_eq!((1..=5).map(|_| message(&mut before).0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    drop(before);
    // Published while it is down: its consumer, which lives on in
    // JetStream, holds them for whoever listens on its deliver subject.
    let mut other = start(&nats, "n2", 5);
    up(&mut other);
    publish_at(&mut other, 6..=8);
    // The restart: the same node name, from what it committed.
    let mut again = start(&nats, "n1", 2);
    up(&mut again);
    let mut got = vec![message(&mut again).0];
    while got.last() < Some(&8) {
        got.push(message(&mut again).0);
    }
    assert_eq!(got, [3, 4, 5, 6, 7, 8], "every message after the last committed one, in order, none skipped");
}

fn roostd_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn a_bad_cluster_name_exits_2_and_a_single_nodes_store_is_not_made_a_replica() {
    let out = run_roostd(&["serve", "--cluster", "nats://127.0.0.1:4222", "--cluster-name", "a.b"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster-name"), "{out:?}");
    let out = run_roostd(&["serve", "--cluster", "nats://127.0.0.1:4222"], &[]);
    assert_eq!(out.status.code(), Some(2), "a cluster needs its name");

    let mut single = TestServer::start(&[]);
    single.ws(&token_all("alice")).publish("room", json!(1));
    single.stop();
    let data = single.data_dir().display().to_string();
    // Refused before NATS is asked: no nats-server is needed (none listens on port 9).
    let out = run_roostd(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            &data,
            "--cluster",
            "nats://127.0.0.1:9",
            "--cluster-name",
            "a",
        ],
        &[("ROOSTD_SECRET", crate::support::SECRET)],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("single node's history"), "{out:?}");
}

/// A roostd node of the cluster served by `nats`.
fn node(nats: &[NatsServer]) -> TestServer {
    let urls = nats.iter().map(|n| n.url()).collect::<Vec<_>>().join(",");
    TestServer::options()
        .args(&["--cluster", &urls, "--cluster-name", "e2e", "--cluster-replicas", "3"])
        .env("RUST_LOG", "info")
        .start()
}

/// `ch`'s whole history on one node as (seq, ts, data), once it holds `n` messages.
fn history_of(server: &TestServer, ch: &str, n: usize) -> Vec<(u64, u64, Value)> {
    let mut c = server.ws(&token_all("reader"));
    let deadline = std::time::Instant::now() + io_timeout() * 3;
    loop {
        let h: Vec<(u64, u64, Value)> = c
            .history(ch, 0)
            .iter()
            .map(|m| (m["seq"].as_u64().unwrap(), m["ts"].as_u64().unwrap(), m["data"].clone()))
            .collect();
        if h.len() >= n || std::time::Instant::now() > deadline {
            return h;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nodes_on_three_nats_servers_hold_the_same_history_and_a_client_resumes_on_any() {
    let Some(mut nats) = NatsServer::cluster_of_three() else { return };
    let a = node(&nats);
    let mut b = node(&nats);
    let (mut watch_a, mut watch_b) = (a.ws(&token_all("wa")), b.ws(&token_all("wb")));
    let epoch_a = watch_a.sub("room")["epoch"].clone();
    assert_eq!(watch_b.sub("room")["epoch"], epoch_a, "every node has the stream's epoch");

    // Another channel first: stream sequences are then not channel seqs,
    // so an ack that carried JetStream's sequence would show.
    assert_eq!(a.ws(&token_all("p0")).publish("other", json!(0)), 1);
    // Publishers on both nodes at once.
    let n = scale(100, 20);
    let acked: Vec<Vec<u64>> = std::thread::scope(|s| {
        let pubs: Vec<_> = [&a, &b]
            .into_iter()
            .enumerate()
            .map(|(i, server)| {
                s.spawn(move || {
                    let mut c = server.ws(&token_all(&format!("p{i}")));
                    c.publish_many("room", n, |k| json!({"node": i, "k": k}))
                })
            })
            .collect();
        pubs.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let mut all_acked: Vec<u64> = acked.concat();
    all_acked.sort();
    all_acked.dedup();
    assert_eq!(all_acked, (1..=2 * n as u64).collect::<Vec<_>>(), "every ack has its own seq");

    let ha = history_of(&a, "room", 2 * n);
    let hb = history_of(&b, "room", 2 * n);
    assert_eq!(ha.len(), 2 * n);
    assert_eq!(ha, hb, "the same seq, ts and data on both nodes");
    for k in 0..n {
        for i in 0..2 {
            let count = ha.iter().filter(|(_, _, d)| *d == json!({"node": i, "k": k})).count();
            assert_eq!(count, 1, "message {i}/{k} is stored once");
        }
    }
    // Live subscribers on both nodes saw every message in order.
    for w in [&mut watch_a, &mut watch_b] {
        let seqs: Vec<u64> = (0..2 * n).map(|_| w.recv_msg()["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=2 * n as u64).collect::<Vec<_>>());
    }

    // A client that read up to n on A resumes on B: no gap, no duplicate.
    let mut mover = b.ws(&token_all("mover"));
    let ok = mover.resume("room", n as u64, &epoch_a);
    assert_eq!(ok["gap"], Value::Null, "{ok}");
    let rest: Vec<u64> = (0..n).map(|_| mover.recv_msg()["seq"].as_u64().unwrap()).collect();
    assert_eq!(rest, (n as u64 + 1..=2 * n as u64).collect::<Vec<_>>());

    // kill -9 of node B while A publishes; B comes back and catches up.
    b.kill_and_wait();
    a.ws(&token_all("p0")).publish_many("room", n, |k| json!({"after": k}));
    b.start_again();
    // Healthy means caught up: its history is complete as soon as /healthz says 200.
    wait_healthz(&b, 200, "the restarted node catches up");
    let hb = history_of(&b, "room", 0);
    assert_eq!(hb, history_of(&a, "room", 3 * n), "the restarted node caught up exactly");

    // kill -9 of the NATS server both nodes use: they move to another, the
    // stream (3 replicas) goes on, and a publisher that retries with the
    // same id after `unavailable` is stored once.
    nats[0].kill();
    let m = scale(20, 5);
    let mut pa = a.ws(&token_all("pa"));
    let mut pb = b.ws(&token_all("pb"));
    let _logs_on_failure = Dump(&a, &b);
    for k in 0..m {
        let c = if k % 2 == 0 { &mut pa } else { &mut pb };
        publish_retrying(c, "room", json!({"nats-down": k}), &format!("nd-{k}"));
    }
    let ha = history_of(&a, "room", 3 * n + m);
    assert_eq!(ha.len(), 3 * n + m, "every acked message, once");
    assert_eq!(ha, history_of(&b, "room", 3 * n + m));
    for k in 0..m {
        assert_eq!(ha.iter().filter(|(_, _, d)| *d == json!({"nats-down": k})).count(), 1);
    }
}

#[test]
fn a_stalled_nats_server_does_not_hold_up_reads_for_other_clients() {
    let Some(nats) = NatsServer::start() else { return };
    let server = TestServer::options().args(&["--cluster", &nats.url(), "--cluster-name", "stall"]).start();
    let mut writer = server.ws(&token_all("w"));
    let mut reader = server.ws(&token_all("r"));
    publish_retrying(&mut writer, "room", json!(1), "one");
    nats.signal("-STOP");
    let _resume = Resume(&nats);
    let started = std::time::Instant::now();
    writer.send_json(json!({"op": "pub", "ch": "room", "data": 2, "id": "two"}));
    for _ in 0..20 {
        assert_eq!(reader.history("room", 0).len(), 1);
    }
    let reads = started.elapsed();
    let r = writer.reply();
    let answered = started.elapsed();
    assert_eq!((r["op"].as_str(), r["code"].as_str()), (Some("err"), Some("unavailable")), "{r}");
    assert!(reads < answered / 2, "reads took {reads:?}, the stalled publish {answered:?}: the loop waited");
}

/// Lets a stopped nats-server go on, even when the test fails.
struct Resume<'a>(&'a NatsServer);
impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.signal("-CONT");
    }
}

/// Publishes with `id` until it is acked, again after each `unavailable`
/// (the client's side of the contract: retry with the same id).
fn publish_retrying(c: &mut crate::support::Client, ch: &str, data: Value, id: &str) -> u64 {
    let deadline = std::time::Instant::now() + io_timeout() * 3;
    loop {
        let r = c.request(json!({"op": "pub", "ch": ch, "data": data, "id": id}));
        if r["op"] == "ack" {
            return r["seq"].as_u64().unwrap();
        }
        assert_eq!(r["code"], "unavailable", "{r}");
        assert!(std::time::Instant::now() < deadline, "never acked: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn with_nats_stopped_publishes_are_unavailable_and_reads_keep_working() {
    let Some(mut nats) = NatsServer::start() else { return };
    let mut server = TestServer::options().args(&["--cluster", &nats.url(), "--cluster-name", "down"]).start();
    let mut c = server.ws(&token_all("alice"));
    // `unavailable` until the node's link to NATS is up: retried.
    assert_eq!(publish_retrying(&mut c, "room", json!(1), "first"), 1);
    assert_eq!(healthz(&server), 200);
    nats.kill();
    // Sent before or after the node noticed the loss, a publish is
    // refused, never acked.
    for id in ["x1", "x2"] {
        let r = c.request(json!({"op": "pub", "ch": "room", "data": 2, "id": id}));
        assert_eq!((r["op"].as_str(), r["code"].as_str()), (Some("err"), Some("unavailable")), "{r}");
    }
    assert_eq!(c.history("room", 0).len(), 1, "reads come from LMDB");
    let mut late = server.ws(&token_all("bob"));
    let ok = late.request(json!({"op": "sub", "ch": "room", "since": 0}));
    assert_eq!((ok["op"].as_str(), ok["seq"].as_u64()), (Some("subok"), Some(1)), "{ok}");
    assert_eq!(late.recv_msg()["data"], 1, "replay comes from LMDB");
    wait_healthz(&server, 503, "the link to NATS is down");
    nats.restart();
    assert_eq!(publish_retrying(&mut c, "room", json!(3), "y"), 2, "publishing resumes");
    assert_eq!(healthz(&server), 200);
    server.stop(); // SIGTERM: a clean exit, the cluster thread stopped too
}

fn healthz(server: &TestServer) -> u16 {
    server.http("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").status
}

/// Waits (bounded) until `/healthz` answers `status`.
fn wait_healthz(server: &TestServer, status: u16, why: &str) {
    let deadline = std::time::Instant::now() + io_timeout();
    while healthz(server) != status {
        assert!(std::time::Instant::now() < deadline, "/healthz never said {status}: {why}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Dump<'a>(&'a TestServer, &'a TestServer);
impl Drop for Dump<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("A:\n{}\nB:\n{}", self.0.log_tail(40), self.1.log_tail(40));
        }
    }
}

/// One request to NATS over a plain connection (roostd's own encoder and
/// parser): the reply's payload.
fn nats_request(nats: &NatsServer, subject: &str, body: &str) -> String {
    use roostd::cluster::nats::{self as proto, Parser, ServerOp};
    use std::io::{Read as _, Write as _};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    sock.set_read_timeout(Some(io_timeout())).unwrap();
    let mut out = Vec::new();
    proto::connect(&mut out, "test", None);
    proto::subscribe(&mut out, "_INBOX.test", 1);
    proto::publish(&mut out, subject, Some("_INBOX.test"), &[], body.as_bytes());
    sock.write_all(&out).unwrap();
    let mut parser = Parser::new(1 << 20);
    let mut buf = [0u8; 4096];
    loop {
        while let Some(op) = parser.next_op().unwrap() {
            if let ServerOp::Msg(m) = op {
                return String::from_utf8(m.payload).unwrap();
            }
        }
        let n = sock.read(&mut buf).expect("no answer from NATS");
        assert!(n > 0, "NATS closed the connection");
        parser.push(&buf[..n]);
    }
}

#[test]
fn an_empty_node_is_not_built_from_a_stream_that_lost_its_first_messages() {
    let Some(nats) = NatsServer::start() else { return };
    let mut c = start(&nats, "n1", 0);
    up(&mut c);
    for token in 1..=2 {
        c.try_publish(token, append("a", None, "1")).unwrap();
        published(&mut c, token).unwrap();
    }
    drop(c);
    let answer = nats_request(&nats, "$JS.API.STREAM.MSG.DELETE.ROOST_test", r#"{"seq":1}"#);
    assert!(answer.contains("\"success\":true"), "{answer}");

    let mut d = start(&nats, "n2", 0);
    let trimmed = wait_for(&mut d, "Trimmed", |e| matches!(e, Event::Trimmed { .. }));
    assert_eq!(trimmed, Event::Trimmed { first_seq: 2 });
    drop(d);
    let (status, log) = TestServer::options()
        .args(&["--cluster", &nats.url(), "--cluster-name", "test"])
        .try_start()
        .err()
        .expect("an empty node must not start on a trimmed stream");
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{log}");
    assert!(log.contains("peer's backup"), "{log}");
}

/// `ch`'s whole history on `server` once it is healthy (caught up).
fn caught_up_history(server: &TestServer, ch: &str) -> Vec<(u64, u64, Value)> {
    // After a NATS server was killed, JetStream may need a while to answer
    // again: longer than one io_timeout on a loaded machine.
    let deadline = std::time::Instant::now() + io_timeout() * 4;
    while healthz(server) != 200 {
        assert!(std::time::Instant::now() < deadline, "/healthz never said 200: the node catches up from the stream");
        std::thread::sleep(Duration::from_millis(50));
    }
    history_of(server, ch, 0)
}

#[test]
fn a_fourth_node_started_empty_builds_the_whole_history_from_the_stream() {
    let Some(nats) = NatsServer::cluster_of_three() else { return };
    let nodes = [node(&nats), node(&nats), node(&nats)];
    let n = scale(30, 10);
    std::thread::scope(|s| {
        for (i, server) in nodes.iter().enumerate() {
            s.spawn(move || {
                let mut c = server.ws(&token_all(&format!("p{i}")));
                c.publish_many("room", n, |k| json!({"node": i, "k": k}));
                c.publish_many(&format!("own.{i}"), n, |k| json!(k));
            });
        }
    });
    let epoch = nodes[0].ws(&token_all("r")).sub("room")["epoch"].clone();

    let fourth = node(&nats);
    let _logs_on_failure = Dump(&nodes[0], &fourth);
    let built = caught_up_history(&fourth, "room");
    assert_eq!(built.len(), 3 * n, "every message of the stream");
    assert_eq!(built, history_of(&nodes[0], "room", 3 * n), "the same seq, ts and data as a peer");
    for (i, peer) in nodes.iter().enumerate() {
        let ch = format!("own.{i}");
        assert_eq!(history_of(&fourth, &ch, n), history_of(peer, &ch, n), "{ch}");
    }
    let mut c = fourth.ws(&token_all("late"));
    assert_eq!(c.sub("room")["epoch"], epoch, "the stream's epoch, not one of its own");
    // It takes publishes, and they reach the others with the next seq.
    assert_eq!(c.publish("room", json!("from the fourth")), 3 * n as u64 + 1);
    let on_first = history_of(&nodes[0], "room", 3 * n + 1);
    assert_eq!(on_first.last().map(|m| m.2.clone()), Some(json!("from the fourth")));
}

#[test]
fn a_node_seeded_from_a_peers_backup_applies_the_rest_even_after_the_stream_lost_its_start() {
    let Some(nats) = NatsServer::start() else { return };
    let args = ["--cluster", &nats.url(), "--cluster-name", "seed"];
    let a = TestServer::options().args(&args).start();
    let mut c = a.ws(&token_all("p"));
    for k in 0..5 {
        publish_retrying(&mut c, "room", json!(k), &format!("before-{k}"));
    }
    let epoch = c.sub("room")["epoch"].clone();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("roostd.backup");
    let out = run_roostd(&["backup", copy.to_str().unwrap(), "--data", a.data_dir().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for k in 0..5 {
        publish_retrying(&mut c, "room", json!(k + 5), &format!("after-{k}"));
    }
    // The stream loses its first message: an empty node could no longer be
    // built from it (the test above), but one seeded from the backup can.
    let answer = nats_request(&nats, "$JS.API.STREAM.MSG.DELETE.ROOST_seed", r#"{"seq":1}"#);
    assert!(answer.contains("\"success\":true"), "{answer}");

    let data = tempfile::tempdir().unwrap();
    std::fs::copy(&copy, data.path().join("data.mdb")).unwrap();
    let seeded = TestServer::options().args(&args).data(data.path()).start();
    let _logs_on_failure = Dump(&a, &seeded);
    let built = caught_up_history(&seeded, "room");
    assert_eq!(built.len(), 10, "the backup's 5 and the stream's rest: {built:?}");
    assert_eq!(built, history_of(&a, "room", 10), "the same seq, ts and data as its peer");
    let mut r = seeded.ws(&token_all("r"));
    let ok = r.resume("room", 7, &epoch);
    assert_eq!((ok["epoch"].clone(), ok["gap"].clone()), (epoch.clone(), Value::Null), "{ok}");
    assert_eq!(r.recv_msg()["seq"], 8);
}

/// The first message a plain NATS subscriber to `subject` on `nats` gets:
/// (its subject, its payload). Subscribes, says so on `ready`, then waits.
fn first_message(nats: &NatsServer, subject: &str, ready: std::sync::mpsc::Sender<()>) -> (String, Vec<u8>) {
    use roostd::cluster::nats::{self as proto, Parser, ServerOp};
    use std::io::{Read as _, Write as _};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    sock.set_read_timeout(Some(io_timeout() * 3)).unwrap();
    let mut out = Vec::new();
    proto::connect(&mut out, "central watcher", None);
    proto::subscribe(&mut out, subject, 1);
    sock.write_all(&out).unwrap();
    ready.send(()).unwrap();
    let mut parser = Parser::new(1 << 20);
    let mut buf = [0u8; 4096];
    loop {
        while let Some(op) = parser.next_op().unwrap() {
            if let ServerOp::Msg(m) = op {
                return (m.subject, m.payload);
            }
        }
        let n = sock.read(&mut buf).expect("nothing reached the central NATS");
        assert!(n > 0, "the central NATS closed the connection");
        parser.push(&buf[..n]);
    }
}

/// docs/cluster.md: a site's NATS as a leaf node of a central NATS. The
/// stream stays on the site's server (JetStream domain `site`); roostd needs
/// nothing different; the central side sees the subjects `roost.<name>.>`.
#[test]
fn a_site_nats_that_is_a_leaf_node_serves_roostd_and_the_central_nats_sees_its_messages() {
    let leaf_port = crate::support::free_port();
    let central = format!("listen: 127.0.0.1:{{port}}\nleafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n");
    let Some(central) = NatsServer::with_config(&central) else { return };
    let site = format!(
        "listen: 127.0.0.1:{{port}}\nserver_name: site\njetstream {{ store_dir: \"{{dir}}\", domain: site }}\n\
         leafnodes {{ remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ] }}\n"
    );
    let site = NatsServer::with_config(&site).unwrap();
    let server = TestServer::options().args(&["--cluster", &site.url(), "--cluster-name", "leaf"]).start();
    let mut c = server.ws(&token_all("p"));
    assert_eq!(publish_retrying(&mut c, "room", json!("first"), "first"), 1);

    let (ready, subscribed) = std::sync::mpsc::channel();
    let (seen, done) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| seen.send(first_message(&central, "roost.leaf.>", ready)).unwrap());
        subscribed.recv().unwrap();
        // Interest crosses the leaf link a moment after the subscription:
        // publish until the central side has seen one.
        let mut k = 0;
        let got = loop {
            k += 1;
            publish_retrying(&mut c, "room", json!({"k": k}), &format!("k{k}"));
            if let Ok(got) = done.recv_timeout(Duration::from_millis(100)) {
                break got;
            }
            assert!(k < 300, "the central NATS never saw a message of the site's stream");
        };
        assert!(got.0.starts_with("roost.leaf.m."), "{got:?}");
        assert!(String::from_utf8_lossy(&got.1).contains("\"k\""), "{got:?}");
    });
    // The stream is on the site: its history is whole on the node.
    assert_eq!(history_of(&server, "room", 2).first().map(|m| m.2.clone()), Some(json!("first")));
}

/// Publishes `n` messages `{"who", "k"}` with ids `who-k` to `ch` on
/// `server`, again after each `unavailable`, until done or the node is
/// gone; counts each ack in `acks`. What was acked, as (seq, k).
fn publish_until_gone(server: &TestServer, who: &str, ch: &str, n: usize, acks: &AtomicUsize) -> Vec<(u64, usize)> {
    let mut c = server.ws(&token_all(who));
    // A publish JetStream took just before its server was killed is acked
    // once this node applied it, and the stream's new leader can take
    // several seconds under load to go on: the ack waits that long (it
    // must never come before the apply).
    c.ws.get_ref().set_read_timeout(Some(io_timeout() * 4)).unwrap();
    let (mut acked, mut k) = (Vec::new(), 0);
    let deadline = std::time::Instant::now() + io_timeout() * 6;
    while k < n && std::time::Instant::now() < deadline {
        let publish = json!({"op": "pub", "ch": ch, "data": {"who": who, "k": k}, "id": format!("{who}-{k}")});
        if !c.try_send_json(publish) {
            break;
        }
        match c.answer() {
            Answer::Reply(r) if r["op"] == "ack" => {
                acked.push((r["seq"].as_u64().unwrap(), k));
                acks.fetch_add(1, Ordering::Relaxed);
                k += 1;
            }
            Answer::Reply(r) => {
                assert_eq!(r["code"], "unavailable", "{r}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Answer::Closed(_) => break,
        }
    }
    acked
}

#[test]
fn publishers_on_every_node_lose_no_acked_message_when_a_roostd_and_a_nats_node_are_killed_mid_run() {
    let Some(nats) = NatsServer::cluster_of_three() else { return };
    let mut nodes = [node(&nats), node(&nats), node(&nats)];
    let n = scale(300, 60);
    let acks = AtomicUsize::new(0);
    let acked: Vec<Vec<(u64, usize)>> = std::thread::scope(|s| {
        let (nodes, acks) = (&nodes, &acks);
        let pubs: Vec<_> =
            (0..3).map(|i| s.spawn(move || publish_until_gone(&nodes[i], &format!("p{i}"), "room", n, acks))).collect();
        // Mid-run: kill -9 of the third roostd node and of the NATS server
        // every node is connected to (the first of their URLs).
        let deadline = std::time::Instant::now() + io_timeout() * 3;
        while acks.load(Ordering::Relaxed) < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        nodes[2].signal("-KILL");
        nats[0].signal("-KILL");
        pubs.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert_eq!(acked[0].len(), n, "the survivors' publishers finish");
    assert_eq!(acked[1].len(), n);
    assert!(acked[2].len() < n, "the killed node's publisher was cut off mid-run");

    nodes[2].wait_exit();
    nodes[2].start_again();
    let total: usize = acked.iter().map(Vec::len).sum();
    let histories: Vec<_> = nodes.iter().map(|node| caught_up_history(node, "room")).collect();
    let _logs_on_failure = Dump(&nodes[0], &nodes[2]);
    assert!(histories[0].len() >= total, "every acked message, and perhaps unacked ones the log took");
    for (i, h) in histories.iter().enumerate().skip(1) {
        let first_difference = h.iter().zip(&histories[0]).position(|(a, b)| a != b);
        assert!(
            h.len() == histories[0].len() && first_difference.is_none(),
            "node {i} (the third was killed) holds {} messages, the first {}; first difference at {first_difference:?}: {:?} vs {:?}",
            h.len(),
            histories[0].len(),
            first_difference.map(|d| &h[d..(d + 3).min(h.len())]),
            first_difference.map(|d| &histories[0][d..(d + 3).min(histories[0].len())]),
        );
    }
    for (i, mine) in acked.iter().enumerate() {
        for (seq, k) in mine {
            let data = json!({"who": format!("p{i}"), "k": k});
            let at: Vec<u64> = histories[0].iter().filter(|m| m.2 == data).map(|m| m.0).collect();
            assert_eq!(at, [*seq], "p{i}'s message {k}: stored once, at the seq its ack said");
        }
    }
}

/// A node of a cluster on one `nats-server` (one replica), ready: linked
/// and caught up (presence subscriptions wait for that).
fn ready_node(nats: &NatsServer, name: &str, extra: &[&str]) -> TestServer {
    let server = TestServer::options()
        .args(&["--cluster", &nats.url(), "--cluster-name", name, "--cluster-replicas", "1"])
        .args(extra)
        .env("RUST_LOG", "info")
        .start();
    wait_healthz(&server, 200, "the node links to NATS and catches up");
    server
}

/// `user` (info `{}`) subscribed to presence channel `ch` on `server`.
fn member(server: &TestServer, user: &str, ch: &str) -> crate::support::Client {
    let mut c = server.ws(&member_token(user, json!({})));
    join(&mut c, ch);
    c
}

/// The presence grace of these tests, as a flag.
fn grace() -> (Duration, String) {
    let grace = Duration::from_secs(scale(1, 3) as u64);
    (grace, format!("{}s", grace.as_secs()))
}

#[test]
fn a_member_on_one_node_is_listed_on_the_other_and_joins_and_leaves_reach_every_node() {
    let Some(nats) = NatsServer::start() else { return };
    let (_, g) = grace();
    let a = ready_node(&nats, "pres", &["--presence-grace", &g]);
    let b = ready_node(&nats, "pres", &["--presence-grace", &g]);
    let _logs_on_failure = Dump(&a, &b);
    let ch = "presence-room:1";
    let mut alice = a.ws(&member_token("alice", json!({"name": "Alice"})));
    assert_eq!(join(&mut alice, ch), ["alice"]);
    wait_members(&b, ch, 1);

    let mut bob = b.ws(&member_token("bob", json!({"name": "Bob"})));
    assert_eq!(join(&mut bob, ch), ["alice", "bob"], "a member of node A is listed on node B");
    assert_eq!(
        alice.recv_json(),
        json!({"op": "join", "ch": ch, "user": "bob", "info": {"name": "Bob"}}),
        "a join on node B reaches node A"
    );
    wait_members(&a, ch, 2);
    wait_members(&b, ch, 2);
    // Alice's second connection, on the other node, is not a new member.
    let mut alice2 = b.ws(&member_token("alice", json!({"name": "Alice"})));
    assert_eq!(join(&mut alice2, ch), ["alice", "bob"]);
    let mut carol = a.ws(&member_token("carol", json!({})));
    assert_eq!(join(&mut carol, ch), ["alice", "bob", "carol"]);
    let joined = bob.recv_json();
    assert_eq!((joined["op"].as_str(), joined["user"].as_str()), (Some("join"), Some("carol")), "{joined}");

    // Alice leaves node A but stays on node B: still a member, no leave.
    alice.close();
    carol.close();
    let left = bob.recv_json();
    assert_eq!(left, json!({"op": "leave", "ch": ch, "user": "carol"}), "only carol left: {left}");
    alice2.close();
    assert_eq!(bob.recv_json(), json!({"op": "leave", "ch": ch, "user": "alice"}), "a leave reaches node B");
    wait_members(&a, ch, 1);
}

#[test]
fn the_members_of_a_killed_node_leave_on_the_other_within_the_grace_plus_5_s() {
    let Some(nats) = NatsServer::start() else { return };
    let (grace, g) = grace();
    let mut a = ready_node(&nats, "kill", &["--presence-grace", &g]);
    let b = ready_node(&nats, "kill", &["--presence-grace", &g]);
    let ch = "presence-room:1";
    let _alice = member(&a, "alice", ch);
    wait_members(&b, ch, 1);
    let mut bob = b.ws(&member_token("bob", json!({})));
    assert_eq!(join(&mut bob, ch), ["alice", "bob"]);

    a.kill_and_wait();
    let killed = Instant::now();
    let left = bob.recv_json();
    let took = killed.elapsed();
    assert_eq!(left, json!({"op": "leave", "ch": ch, "user": "alice"}), "no ghost of a killed node: {left}");
    // Silence is judged on heartbeats once a second; then the removal
    // goes through the log.
    let limit = grace + Duration::from_secs(5) + within(Duration::from_secs(3));
    assert!(took <= limit, "the leave came {took:?} after the kill, over {limit:?}");
    assert!(took >= grace + Duration::from_secs(3), "removed after {took:?}: too early for a silent node");
    wait_members(&b, ch, 1);
}

#[test]
fn while_nats_is_unreachable_a_presence_sub_is_unavailable_and_an_ordinary_sub_works() {
    let Some(mut nats) = NatsServer::start() else { return };
    let server = ready_node(&nats, "cut", &[]);
    let mut c = server.ws(&member_token("alice", json!({})));
    nats.kill();
    wait_healthz(&server, 503, "the link to NATS is down");
    let r = c.request(json!({"op": "sub", "ch": "presence-room", "id": "p"}));
    assert_eq!((r["op"].as_str(), r["code"].as_str()), (Some("err"), Some("unavailable")), "{r}");
    let ok = c.request(json!({"op": "sub", "ch": "room", "id": "r"}));
    assert_eq!(ok["op"], "subok", "{ok}");
    nats.restart();
    wait_healthz(&server, 200, "the link is back");
    assert_eq!(join(&mut c, "presence-room"), ["alice"], "presence works again");
}

#[test]
fn each_webhook_event_is_delivered_once_per_cluster() {
    let Some(nats) = NatsServer::start() else { return };
    let (grace, g) = grace();
    let (hook_a, hook_b) = (Endpoint::start(Mode::Status(200)), Endpoint::start(Mode::Status(200)));
    let a = ready_node(&nats, "hooks", &["--presence-grace", &g, "--webhook", &hook_a.url]);
    let b = ready_node(&nats, "hooks", &["--presence-grace", &g, "--webhook", &hook_b.url]);
    let _logs_on_failure = Dump(&a, &b);
    let ch = "presence-room:1";
    // Alice on both nodes, bob on one: the channel is occupied on both.
    let alice_a = member(&a, "alice", ch);
    wait_members(&b, ch, 1);
    let alice_b = member(&b, "alice", ch);
    let bob = member(&b, "bob", ch);
    wait_members(&a, ch, 2);
    for c in [alice_a, alice_b, bob] {
        c.close();
    }
    let all = || [hook_a.delivered(), hook_b.delivered()].concat();
    let expected = [
        "channel_occupied",
        "channel_vacated",
        "member_added alice",
        "member_added bob",
        "member_removed alice",
        "member_removed bob",
    ];
    let names = |events: &[Value]| {
        let mut n: Vec<String> = events
            .iter()
            .map(|e| {
                let name = e["name"].as_str().unwrap().to_string();
                e["user_id"].as_str().map_or(name.clone(), |u| format!("{name} {u}"))
            })
            .collect();
        n.sort();
        n
    };
    let deadline = Instant::now() + io_timeout() + grace * 3;
    while names(&distinct(&all())) != expected {
        assert!(Instant::now() < deadline, "not every event arrived: {:#?}", all());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second copy, from the other node, would come about as soon.
    std::thread::sleep(within(Duration::from_secs(2)));
    let events = all();
    assert_eq!(names(&events), expected, "each event once, from one node: {events:#?}");
    assert!(!hook_a.delivered().is_empty() && !hook_b.delivered().is_empty(), "each node sent its own nodes' events");
}

#[test]
fn a_restarted_node_leaves_no_ghost_of_its_earlier_members() {
    let Some(nats) = NatsServer::start() else { return };
    let (grace, g) = grace();
    let restart = format!("{}s", 2 * grace.as_secs());
    let mut a = ready_node(&nats, "again", &["--presence-grace", &g, "--presence-restart-grace", &restart]);
    let b = ready_node(&nats, "again", &["--presence-grace", &g]);
    let ch = "presence-room:1";
    let _alice = member(&a, "alice", ch);
    let _carol = member(&a, "carol", ch);
    wait_members(&b, ch, 2);
    let mut bob = b.ws(&member_token("bob", json!({})));
    assert_eq!(join(&mut bob, ch), ["alice", "bob", "carol"]);

    // Node A comes back at once, as the same node: its members are kept
    // for the restart grace; carol reconnects in time, alice does not.
    a.kill9();
    wait_healthz(&a, 200, "the restarted node catches up");
    let mut carol = a.ws(&member_token("carol", json!({})));
    assert_eq!(join(&mut carol, ch), ["alice", "bob", "carol"], "kept for the restart grace");
    assert_eq!(bob.recv_json(), json!({"op": "leave", "ch": ch, "user": "alice"}), "alice is not a ghost");
    assert_eq!(ask_users(&mut bob, ch), ["bob", "carol"], "carol came back in time: never reported gone");
}

/// The members `client` is told of when it asks.
fn ask_users(client: &mut crate::support::Client, ch: &str) -> Vec<String> {
    let p = client.request(json!({"op": "presence", "ch": ch, "id": "ask"}));
    p["members"].as_array().unwrap().iter().map(|m| m["user"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_stream_made_without_the_presence_subjects_gets_them() {
    let Some(nats) = NatsServer::start() else { return };
    // As a build without cluster-wide presence made it.
    let old = json!({"name": "ROOST_old", "subjects": ["roost.old.m.>"], "storage": "file", "num_replicas": 1});
    let answer = nats_request(&nats, "$JS.API.STREAM.CREATE.ROOST_old", &old.to_string());
    assert!(answer.contains("\"created\""), "{answer}");
    let server = ready_node(&nats, "old", &[]);
    let _alice = member(&server, "alice", "presence-room");
    // Listed to others only once the record came back through the stream.
    wait_members(&server, "presence-room", 1);
}
