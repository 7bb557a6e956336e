//! Cluster mode (cluster.md), first slice: the NATS JetStream client thread
//! against a real `nats-server` on 127.0.0.1. Skipped when `nats-server` is
//! not installed (`.ci/cluster-test` installs it and makes the skip a failure).

use std::time::Duration;

use roostd::cluster::{Cluster, Event, Settings};
use roostd::config::NatsUrl;
use roostd::store::Append;

use crate::support::{io_timeout, NatsServer};

fn settings(nats: &NatsServer, node: &str) -> Settings {
    Settings {
        urls: vec![NatsUrl { host: "127.0.0.1".into(), port: nats.port }],
        name: "test".into(),
        replicas: 1,
        dedupe_window: Duration::from_secs(60),
        credentials: None,
        node: node.into(),
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

fn roostd_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn a_bad_cluster_name_exits_2_and_cluster_mode_is_refused_until_it_is_complete() {
    let out =
        crate::support::run_roostd(&["serve", "--cluster", "nats://127.0.0.1:4222", "--cluster-name", "a.b"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cluster-name"), "{out:?}");
    let out = crate::support::run_roostd(&["serve", "--cluster", "nats://127.0.0.1:4222"], &[]);
    assert_eq!(out.status.code(), Some(2), "a cluster needs its name");
    let out = crate::support::run_roostd(&["serve", "--cluster", "nats://127.0.0.1:4222", "--cluster-name", "a"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not complete"), "{out:?}");
}
