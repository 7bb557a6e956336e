//! Issue 15's figures (docs/benchmarks.md, "Presence, state and webhooks"):
//! memory per presence member, webhook latency and throughput, and the time
//! of a state snapshot of 10,000 keys, against a real `roostd serve`.
//!
//! ```text
//! cargo build --release --bin roostd --example lifecycle_bench
//! target/release/examples/lifecycle_bench [target/release/roostd]
//! ```
//!
//! - **Memory**: 100 connections (users), each subscribed to 100 ordinary
//!   channels, then to 100 presence channels (10,000 members); the server's
//!   `RssAnon` (its heap: LMDB's file mapping left out) after each step.
//!   Users join one after the other, each connection drained by its own
//!   thread (100 users × 100 channels make about a million `join` frames,
//!   which must not pile up in send queues and count as members).
//! - **Webhook latency**: 200 subscribes to fresh channels, 20 ms apart;
//!   each `channel_occupied` event's arrival at an endpoint in this process
//!   minus the `subok` (sent before the commit: an upper bound of commit →
//!   endpoint). Batches wait up to 250 ms to fill (spec §9).
//! - **Webhook throughput**: 10,000 channels occupied at once (40
//!   connections × 250 subscribes, pipelined); events/s from the first
//!   subscribe to the last event received.
//! - **A hanging endpoint**: 1,000 `pub` → `ack` round trips while the
//!   endpoint accepts and never answers and another connection keeps making
//!   events.
//! - **State snapshot**: 10,000 keys on a `--compact` channel; `sub` with
//!   `state:true` until the `state` marker, five times.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use roostd::auth::{mint, Key};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const SECRET: &str = "roostd-lifecycle-bench-secret-0123456789";

type Ws = WebSocket<TcpStream>;

fn token(sub: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({"sub": sub, "exp": exp, "read": ["*"], "write": ["*"], "info": {"name": sub}});
    mint(&claims, &Key::new(None, SECRET.as_bytes().to_vec()))
}

fn connect(addr: SocketAddr, user: &str) -> Ws {
    let sock = TcpStream::connect(addr).expect("connecting");
    sock.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}/ws?token={}", token(user));
    tungstenite::client::client(url, sock).expect("the upgrade").0
}

fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).expect("sending");
}

/// The next text frame as JSON.
fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("reading") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads until a frame with this `op`.
fn until(ws: &mut Ws, op: &str) -> Value {
    loop {
        let v = recv(ws);
        if v["op"] == op {
            return v;
        }
    }
}

// Each caller kills and waits for the child it is given.
#[allow(clippy::zombie_processes)]
fn server(bin: &str, data: &std::path::Path, args: &[&str]) -> (Child, SocketAddr) {
    let ready = data.join("ready");
    let child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.join("store"))
        .arg("--ready-file")
        .arg(&ready)
        .args(args)
        .env("ROOSTD_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting roostd");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            if let Ok(addr) = text.trim().parse() {
                return (child, addr);
            }
        }
        if Instant::now() > deadline {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            panic!("roostd did not start");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The server's anonymous resident memory (heap and stacks), KiB.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("RssAnon:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(-1.0)
}

fn memory(bin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = server(bin, dir.path(), &["--publish-rate", "0", "--max-connections-per-ip", "5000"]);
    let pid = child.id();
    let (users, channels) = (100, 100);
    let stop = Arc::new(AtomicBool::new(false));
    let mut conns: Vec<Ws> = (0..users).map(|u| connect(addr, &format!("user-{u:03}"))).collect();
    thread::sleep(Duration::from_secs(1));
    let base = rss_anon_kib(pid);
    for ws in conns.iter_mut() {
        for c in 0..channels {
            send(ws, json!({"op": "sub", "ch": format!("plain-{c}")}));
        }
        for _ in 0..channels {
            until(ws, "subok");
        }
    }
    thread::sleep(Duration::from_secs(1));
    let plain = rss_anon_kib(pid);
    // One user at a time, so the `join`s to the others (about a million
    // frames in all) never pile up in send queues: the figure is the
    // members' own cost, not the peak of transient buffers.
    let started = Instant::now();
    let mut drains = Vec::new();
    for (u, mut ws) in conns.into_iter().enumerate() {
        let stop = Arc::clone(&stop);
        drains.push(thread::spawn(move || {
            for c in 0..channels {
                send(&mut ws, json!({"op": "sub", "ch": format!("presence-{c}")}));
            }
            ws.get_ref().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            while !stop.load(Ordering::Relaxed) {
                match ws.read() {
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("a member's connection failed: {e}"),
                }
            }
            ws
        }));
        while metric(addr, "roostd_presence_members") < ((u + 1) * channels) as f64 {
            assert!(started.elapsed() < Duration::from_secs(300), "members never all joined");
            thread::sleep(Duration::from_millis(5));
        }
    }
    let joined = started.elapsed();
    thread::sleep(Duration::from_secs(3));
    let members = rss_anon_kib(pid);
    stop.store(true, Ordering::Relaxed);
    let _conns: Vec<Ws> = drains.into_iter().map(|t| t.join().unwrap()).collect();
    let per_sub = (plain - base) as f64 * 1024.0 / (users * channels) as f64;
    let per_member = (members - plain) as f64 * 1024.0 / (users * channels) as f64;
    println!(
        "memory: {users} connections: RssAnon {base} KiB; + {} plain subscriptions: {plain} KiB ({per_sub:.0} B each)",
        users * channels
    );
    println!(
        "memory: + {} presence members ({channels} channels x {users} users, all joined in {joined:.1?}): {members} KiB \
         ({per_member:.0} B per presence subscription incl. its member; {:.2} MiB for 10k)",
        users * channels,
        (members - plain) as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A webhook endpoint that answers 200 at once and notes when each event id arrived.
/// Each event the endpoint received, with when.
type Arrivals = Arc<Mutex<Vec<(Instant, Value)>>>;

fn endpoint() -> (String, Arrivals) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&seen);
    thread::spawn(move || {
        for sock in listener.incoming() {
            let seen = Arc::clone(&shared);
            thread::spawn(move || {
                let mut r = BufReader::new(sock.unwrap());
                loop {
                    let (mut line, mut len) = (String::new(), 0);
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let now = Instant::now();
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    seen.lock().unwrap().extend(body["events"].as_array().unwrap().iter().map(|e| (now, e.clone())));
                    r.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
                }
            });
        }
    });
    (url, seen)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn webhooks(bin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = endpoint();
    let (mut child, addr) = server(bin, dir.path(), &["--webhook", &url, "--publish-rate", "0"]);
    let mut ws = connect(addr, "latency");
    let mut sent = Vec::new();
    for i in 0..200 {
        send(&mut ws, json!({"op": "sub", "ch": format!("lat-{i}")}));
        until(&mut ws, "subok");
        sent.push((format!("lat-{i}"), Instant::now()));
        thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "latency events missing");
        thread::sleep(Duration::from_millis(10));
    }
    let arrived = seen.lock().unwrap().clone();
    let mut lat: Vec<Duration> = sent
        .iter()
        .map(|(ch, at)| {
            let got = arrived.iter().find(|(_, e)| e["channel"] == **ch && e["name"] == "channel_occupied").unwrap().0;
            got.saturating_duration_since(*at)
        })
        .collect();
    lat.sort();
    println!(
        "webhook latency (subok -> endpoint, 200 events 20 ms apart): p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        percentile(&lat, 50),
        percentile(&lat, 99),
        lat[lat.len() - 1]
    );

    seen.lock().unwrap().clear();
    let (conns, per) = (40, 250);
    let started = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            thread::spawn(move || {
                let mut ws = connect(addr, &format!("burst-{c}"));
                for i in 0..per {
                    send(&mut ws, json!({"op": "sub", "ch": format!("burst-{c}-{i}")}));
                }
                for _ in 0..per {
                    until(&mut ws, "subok");
                }
                ws
            })
        })
        .collect();
    let _held: Vec<Ws> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total = conns * per;
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.lock().unwrap().len() < total {
        assert!(Instant::now() < deadline, "burst events missing: {}", seen.lock().unwrap().len());
        thread::sleep(Duration::from_millis(5));
    }
    let last = seen.lock().unwrap().iter().map(|(t, _)| *t).max().unwrap();
    let took = last - started;
    println!(
        "webhook throughput: {total} events (occupied) delivered in {took:.2?}: {:.0} events/s",
        total as f64 / took.as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn snapshot(bin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = server(bin, dir.path(), &["--compact", "kv:*", "--publish-rate", "0"]);
    let mut ws = connect(addr, "device");
    let keys = 10_000;
    for chunk in (0..keys).collect::<Vec<_>>().chunks(500) {
        for &k in chunk {
            let data = json!({"celsius": k as f64 / 10.0, "at": "2026-12-02T21:00:00Z"});
            ws.write(Message::text(
                json!({"op": "pub", "ch": "kv:sensors", "key": format!("sensor-{k:05}"), "data": data}).to_string(),
            ))
            .unwrap();
        }
        ws.flush().unwrap();
        for _ in chunk {
            let r = recv(&mut ws);
            assert_eq!(r["op"], "ack", "{r}");
        }
    }
    let mut took = Vec::new();
    for _ in 0..5 {
        let mut page = connect(addr, "page");
        let t = Instant::now();
        send(&mut page, json!({"op": "sub", "ch": "kv:sensors", "state": true}));
        let mut n = 0;
        loop {
            let v = recv(&mut page);
            match v["op"].as_str() {
                Some("msg") => n += 1,
                Some("state") => break,
                _ => {}
            }
        }
        took.push(t.elapsed());
        assert_eq!(n, keys, "a whole snapshot");
    }
    took.sort();
    println!(
        "state snapshot of {keys} keys (sub state:true -> state marker, 5 runs): median {:.1?}, min {:.1?}, max {:.1?}",
        took[2], took[0], took[4]
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// pub -> ack round trips while the webhook endpoint accepts and never answers.
fn hanging(bin: &str) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    thread::spawn(move || {
        let held: Vec<TcpStream> = listener.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) =
        server(bin, dir.path(), &["--webhook", &url, "--publish-rate", "0", "--presence-grace", "100ms"]);
    let mut busy = connect(addr, "busy");
    let mut timed = connect(addr, "timed");
    let rounds = 1000;
    let mut took = Vec::with_capacity(rounds);
    for i in 0..rounds {
        // Each round occupies a channel and leaves the one before: events pile up behind the hung request.
        send(&mut busy, json!({"op": "sub", "ch": format!("busy-{i}")}));
        send(&mut busy, json!({"op": "unsub", "ch": format!("busy-{}", i.max(1) - 1)}));
        let t = Instant::now();
        send(&mut timed, json!({"op": "pub", "ch": "timed", "data": i}));
        until(&mut timed, "ack");
        took.push(t.elapsed());
    }
    took.sort();
    println!(
        "pub -> ack with a hanging webhook endpoint ({rounds} round trips, {} events pending): p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        metric(addr, "roostd_webhook_events_pending"),
        percentile(&took, 50),
        percentile(&took, 99),
        took[rounds - 1]
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let bin = std::env::args().nth(1).unwrap_or_else(|| "target/release/roostd".into());
    // A second argument runs one part: memory, webhooks, hanging or snapshot.
    let only = std::env::args().nth(2);
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if run("memory") {
        memory(&bin);
    }
    if run("webhooks") {
        webhooks(&bin);
    }
    if run("hanging") {
        hanging(&bin);
    }
    if run("snapshot") {
        snapshot(&bin);
    }
}
