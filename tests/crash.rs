//! Durability harness: the real `roostd` binary, SIGKILLed again and again
//! under a steady publish load, must never lose an acked message, never store
//! a message twice, and never leave a gap in a channel's seqs (spec §4, sync
//! semantics: ack only after the LMDB commit returned; idempotent publishes on
//! `(sub, id)`).
//!
//! Four publishers (`pub-0`..`pub-3`) each keep one `pub` in flight on
//! `crash:a` / `crash:b`, ids `"{sub}-{n}"`, data `{"p": sub, "n": n}`. A
//! controller SIGKILLs the server after a random delay (fixed-seed xorshift),
//! restarts it on the same data folder, and the publishers reconnect and first
//! resend the message that was in flight (same id: it must be acked once, with
//! the original seq if the killed process had committed it). At the end, after
//! a clean SIGTERM restart, the whole history is read back with `hist` and
//! checked against every ack.
//!
//! Knobs (environment):
//! - `ROOSTD_CRASH_SEED`: PRNG seed (decimal or `0x` hex); a constant otherwise.
//! - `ROOSTD_CRASH_CYCLES`: kill/restart cycles (default 30, also under
//!   emulation, where a cycle takes about 0.7 s; at least 2). Fewer cycles
//!   make the "some resend was deduplicated" check below less certain: under
//!   qemu about one resend in ten is.
//! - `ROOSTD_CRASH_SECS`: wall-time budget in seconds (default 120, ten times
//!   that when `ROOSTD_TEST_SCALE=small`). Cycling stops when it runs out and
//!   the test fails: every planned cycle must run.
//!
//! The test proves what it claims, or fails: every planned cycle ran, every
//! SIGKILL landed while at least one publish was in flight (sent, its reply
//! not yet taken; the controller holds the publishers' reply gate while it
//! kills), every run acked something, and across the run some in-flight
//! publishes were resent after a kill and some of those were found already
//! stored by the killed run (deduplicated, or stored though never acked).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::{io_timeout, small, TestServer};
use tungstenite::{Message, WebSocket};

const CHANNELS: [&str; 2] = ["crash:a", "crash:b"];
const PUBLISHERS: usize = 4;
const DEFAULT_SEED: u64 = 0x5eed_c0ff_ee15_dead;
/// Random delay between a restart and the next SIGKILL.
const MIN_DELAY_MS: u64 = 20;
const MAX_DELAY_MS: u64 = 300;
/// Wall time kept for the final restart and the history check.
const CHECK_RESERVE: Duration = Duration::from_secs(25);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn token(sub: &str) -> String {
    support::token(sub, &["crash:*"], &["crash:*"])
}

/// xorshift64*: small, seedable, good enough for delays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { DEFAULT_SEED } else { seed })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

// ---------------------------------------------------------------------------
// The WebSocket side.

/// How an exchange with the server ended badly.
enum Failure {
    /// The connection broke (expected when the server was killed).
    Broken(String),
    /// Anything that must not happen: a timeout, a refusal, a wrong reply.
    Fatal(String),
}

fn classify(e: tungstenite::Error, what: &str) -> Failure {
    match e {
        tungstenite::Error::Io(io)
            if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
        {
            Failure::Fatal(format!("{what}: no answer within {:?} ({io})", io_timeout()))
        }
        e => Failure::Broken(format!("{what}: {e}")),
    }
}

fn connect(addr: SocketAddr, token: &str) -> Result<WebSocket<TcpStream>, Failure> {
    let sock = TcpStream::connect_timeout(&addr, io_timeout()).map_err(|e| Failure::Broken(format!("connect: {e}")))?;
    sock.set_read_timeout(Some(io_timeout())).unwrap();
    sock.set_write_timeout(Some(io_timeout())).unwrap();
    sock.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}/ws?token={token}");
    match tungstenite::client::client(url.as_str(), sock) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            Err(Failure::Fatal(format!("upgrade refused with {}: {body}", resp.status())))
        }
        Err(tungstenite::HandshakeError::Failure(e)) => Err(classify(e, "handshake")),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            Err(Failure::Fatal(format!("handshake: no answer within {:?}", io_timeout())))
        }
    }
}

/// Sends `request` and reads until the reply carrying `id` (other frames are
/// skipped).
fn request(ws: &mut WebSocket<TcpStream>, request: &Value, id: &str) -> Result<Value, Failure> {
    send(ws, request)?;
    reply(ws, id)
}

fn send(ws: &mut WebSocket<TcpStream>, request: &Value) -> Result<(), Failure> {
    ws.send(Message::text(request.to_string())).map_err(|e| classify(e, "send"))
}

/// Reads until the reply carrying `id` (other frames are skipped).
fn reply(ws: &mut WebSocket<TcpStream>, id: &str) -> Result<Value, Failure> {
    loop {
        match ws.read().map_err(|e| classify(e, "read"))? {
            Message::Text(text) => {
                let v: Value = serde_json::from_str(text.as_str())
                    .map_err(|e| Failure::Fatal(format!("reply is not JSON ({e}): {}", text.as_str())))?;
                if v.get("id").and_then(Value::as_str) == Some(id) {
                    return Ok(v);
                }
                if v["op"] == "err" {
                    return Err(Failure::Fatal(format!("error without our id: {v}")));
                }
            }
            Message::Close(frame) => return Err(Failure::Broken(format!("closed by the server: {frame:?}"))),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Publishers.

/// Where the current server is; changed by the controller on every restart.
struct State {
    addr: SocketAddr,
    /// Server run number, from 1.
    gen: u64,
    /// The newest run that was (or is being) killed on purpose.
    killed: u64,
    /// No new publishes; do not reconnect after a break.
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    acked: AtomicU64,
    /// Publishes sent whose reply the publisher has not taken yet. A
    /// publisher takes this lock to take a reply; the controller holds it
    /// across a SIGKILL, so the count it sees is the one at the kill.
    awaiting: Mutex<u64>,
    awaiting_cv: Condvar,
}

#[derive(Clone, Debug)]
struct Sent {
    id: String,
    ch: &'static str,
    n: u64,
    /// Broke at least once before its ack: this is a resend after a crash.
    resent: bool,
}

#[derive(Clone, Debug)]
struct Acked {
    sent: Sent,
    seq: u64,
    /// The server run that acked it.
    gen: u64,
}

#[derive(Default)]
struct Report {
    acked: Vec<Acked>,
    /// In flight when the final kill came: never acked.
    unacked: Option<Sent>,
    breaks: u64,
    errors: Vec<String>,
}

fn publisher(idx: usize, shared: Arc<Shared>) -> Report {
    let sub = format!("pub-{idx}");
    let token = token(&sub);
    let mut report = Report::default();
    let mut inflight: Option<Sent> = None;
    let mut n = 0u64;
    // The run whose connection broke last; wait for a newer one.
    let mut broken_gen = 0u64;
    'runs: loop {
        let (addr, gen) = {
            let mut st = shared.state.lock().unwrap();
            while st.gen <= broken_gen && !st.stop {
                st = shared.cv.wait(st).unwrap();
            }
            if st.stop {
                break 'runs;
            }
            (st.addr, st.gen)
        };
        let broke = |why: String, report: &mut Report, inflight: &mut Option<Sent>| {
            let st = shared.state.lock().unwrap();
            if st.killed < gen {
                report.errors.push(format!("{sub}: the connection to a live server (run {gen}) broke: {why}"));
            }
            report.breaks += 1;
            if let Some(s) = inflight {
                s.resent = true;
            }
        };
        let mut ws = match connect(addr, &token) {
            Ok(ws) => ws,
            Err(Failure::Broken(why)) => {
                broke(why, &mut report, &mut inflight);
                broken_gen = gen;
                continue 'runs;
            }
            Err(Failure::Fatal(why)) => {
                report.errors.push(format!("{sub}: run {gen}: {why}"));
                break 'runs;
            }
        };
        loop {
            let sent = match inflight.take() {
                Some(s) => s,
                None => {
                    if shared.state.lock().unwrap().stop {
                        break 'runs;
                    }
                    n += 1;
                    let id = format!("{sub}-{n}");
                    Sent { id, ch: CHANNELS[(n as usize + idx) % CHANNELS.len()], n, resent: false }
                }
            };
            inflight = Some(sent.clone());
            let pub_req = json!({"op": "pub", "ch": sent.ch, "data": {"p": sub, "n": sent.n}, "id": sent.id});
            let reply = match send(&mut ws, &pub_req) {
                Ok(()) => {
                    *shared.awaiting.lock().unwrap() += 1;
                    shared.awaiting_cv.notify_all();
                    let reply = reply(&mut ws, &sent.id);
                    *shared.awaiting.lock().unwrap() -= 1;
                    reply
                }
                Err(e) => Err(e),
            };
            match reply {
                Ok(v) if v["op"] == "ack" => {
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    if v["ch"] != sent.ch || seq == 0 {
                        report.errors.push(format!("{sub}: ack for {} on {} is wrong: {v}", sent.id, sent.ch));
                    }
                    report.acked.push(Acked { sent, seq, gen });
                    shared.acked.fetch_add(1, Ordering::Relaxed);
                    inflight = None;
                }
                Ok(v) if v["op"] == "err" && matches!(v["code"].as_str(), Some("rate_limited" | "unavailable")) => {
                    // Retry the same id; the dedupe keeps it single.
                    thread::sleep(Duration::from_millis(20));
                }
                Ok(v) => {
                    report.errors.push(format!("{sub}: unexpected reply to {}: {v}", sent.id));
                    break 'runs;
                }
                Err(Failure::Broken(why)) => {
                    broke(why, &mut report, &mut inflight);
                    broken_gen = gen;
                    continue 'runs;
                }
                Err(Failure::Fatal(why)) => {
                    report.errors.push(format!("{sub}: run {gen}, {}: {why}", sent.id));
                    break 'runs;
                }
            }
        }
    }
    report.unacked = inflight;
    report
}

// ---------------------------------------------------------------------------
// Reading the history back.

#[derive(Debug)]
struct Stored {
    ch: &'static str,
    seq: u64,
    ts: u64,
    from: String,
    data: Value,
}

/// Every stored message of `ch`, paging with `hist`; checks the paging itself.
fn read_history(ws: &mut WebSocket<TcpStream>, ch: &'static str, problems: &mut Vec<String>) -> Vec<Stored> {
    let mut out = Vec::new();
    let mut since = 0u64;
    for page in 0.. {
        let id = format!("hist-{ch}-{page}");
        let req = json!({"op": "hist", "ch": ch, "since": since, "limit": 1000, "id": id});
        let v = match request(ws, &req, &id) {
            Ok(v) => v,
            Err(Failure::Broken(e) | Failure::Fatal(e)) => panic!("reading the history of {ch}: {e}"),
        };
        assert_eq!(v["op"], "hist", "hist reply: {v}");
        if v.get("gap").is_some() {
            problems.push(format!("{ch}: hist since {since} reports a gap: {v}"));
        }
        let msgs = v["msgs"].as_array().unwrap_or_else(|| panic!("hist without msgs: {v}"));
        for m in msgs {
            let seq = m["seq"].as_u64().unwrap_or_else(|| panic!("msg without seq: {m}"));
            out.push(Stored {
                ch,
                seq,
                ts: m["ts"].as_u64().unwrap_or(0),
                from: m["from"].as_str().unwrap_or_default().to_string(),
                data: m["data"].clone(),
            });
            since = since.max(seq);
        }
        match v["more"].as_bool() {
            Some(false) => break,
            Some(true) if msgs.is_empty() => panic!("{ch}: hist says more but gave nothing: {v}"),
            Some(true) => {}
            None => panic!("hist without more: {v}"),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The test.

#[test]
fn acked_messages_survive_sigkill_exactly_once() {
    let t0 = Instant::now();
    let seed = env_u64("ROOSTD_CRASH_SEED").unwrap_or(DEFAULT_SEED);
    let cycles = env_u64("ROOSTD_CRASH_CYCLES").unwrap_or(30);
    // One cycle ends the run: a resend after a kill needs a second.
    assert!(cycles >= 2, "ROOSTD_CRASH_CYCLES={cycles}: at least 2 cycles are needed to see resends after a kill");
    let budget = Duration::from_secs(env_u64("ROOSTD_CRASH_SECS").unwrap_or(120) * if small() { 10 } else { 1 });
    let cycle_budget = budget.saturating_sub(CHECK_RESERVE);
    println!("crash: seed {seed:#x}, {cycles} cycles, budget {budget:?}");

    // Wall-clock start of each server run (index = run number), to tell a
    // resend deduplicated against the killed run from one stored anew.
    let mut run_start_ms = vec![0, now_ms()];
    // The check wants every seq from 1: nothing may be trimmed, and
    // one-in-flight publishers must never be rate limited.
    let mut server =
        TestServer::start(&["--retention-messages", "1000000000", "--retention-age", "3650d", "--publish-rate", "0"]);
    let shared = Arc::new(Shared {
        state: Mutex::new(State { addr: server.addr, gen: 1, killed: 0, stop: false }),
        cv: Condvar::new(),
        acked: AtomicU64::new(0),
        awaiting: Mutex::new(0),
        awaiting_cv: Condvar::new(),
    });
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            let shared = Arc::clone(&shared);
            thread::Builder::new().name(format!("pub-{i}")).spawn(move || publisher(i, shared)).unwrap()
        })
        .collect();

    let mut rng = Rng::new(seed);
    let mut cycles_run = 0u64;
    let mut acked_before = 0;
    let mut idle_cycles = 0u64;
    // Per kill: publishes in flight when the SIGKILL was sent.
    let mut in_flight_at_kill: Vec<u64> = Vec::new();
    while cycles_run < cycles {
        // Let this run ack something first: under emulation a restart alone
        // can take longer than the longest random delay.
        let before = shared.acked.load(Ordering::Relaxed);
        let wait_until = Instant::now() + if small() { Duration::from_secs(60) } else { Duration::from_secs(10) };
        while shared.acked.load(Ordering::Relaxed) == before && Instant::now() < wait_until {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(rng.range(MIN_DELAY_MS, MAX_DELAY_MS)));
        let last = cycles_run + 1 == cycles || t0.elapsed() >= cycle_budget;
        let acked_now = shared.acked.load(Ordering::Relaxed);
        if acked_now == acked_before {
            idle_cycles += 1;
        }
        acked_before = acked_now;
        {
            let mut st = shared.state.lock().unwrap();
            st.killed = st.gen;
            // The last kill leaves whatever is in flight unacked for good.
            st.stop = last;
        }
        shared.cv.notify_all();
        // Kill only while a publish is in flight: holding the gate keeps
        // every publisher from taking a reply until the process is gone.
        let awaiting = shared.awaiting.lock().unwrap();
        let (awaiting, _) = shared.awaiting_cv.wait_timeout_while(awaiting, io_timeout(), |n| *n == 0).unwrap();
        in_flight_at_kill.push(*awaiting);
        server.kill_and_wait();
        drop(awaiting);
        cycles_run += 1;
        run_start_ms.push(now_ms());
        server.start_again();
        {
            let mut st = shared.state.lock().unwrap();
            st.gen += 1;
            st.addr = server.addr;
        }
        shared.cv.notify_all();
        if last {
            break;
        }
    }
    let reports: Vec<Report> = publishers.into_iter().map(|h| h.join().expect("a publisher panicked")).collect();
    let publish_time = t0.elapsed();

    // A clean restart before reading back.
    server.stop();
    server.start_again();
    let mut reader = connect(server.addr, &token("checker")).unwrap_or_else(|e| match e {
        Failure::Broken(e) | Failure::Fatal(e) => panic!("checker connect: {e}"),
    });

    let mut problems: Vec<String> = reports.iter().flat_map(|r| r.errors.iter().cloned()).collect();
    // id → every place it is stored.
    let mut stored: HashMap<String, Vec<Stored>> = HashMap::new();
    let mut checked = 0usize;
    for ch in CHANNELS {
        let msgs = read_history(&mut reader, ch, &mut problems);
        for (i, m) in msgs.iter().enumerate() {
            let want = i as u64 + 1;
            if m.seq != want {
                problems.push(format!("{ch}: seq {} where {want} was expected (gap or duplicate seq)", m.seq));
                break;
            }
        }
        checked += msgs.len();
        for m in msgs {
            let p = m.data["p"].as_str().unwrap_or_default().to_string();
            let n = m.data["n"].as_u64();
            if p != m.from || n.is_none() {
                problems.push(format!("{ch} seq {}: data {} does not match from {:?}", m.seq, m.data, m.from));
                continue;
            }
            stored.entry(format!("{p}-{}", n.unwrap())).or_default().push(m);
        }
    }
    let _ = reader.close(None);

    let mut acked_total = 0usize;
    let mut resends = 0usize;
    let mut resends_deduped = 0usize;
    let mut sent_ids: HashSet<String> = HashSet::new();
    for (i, r) in reports.iter().enumerate() {
        if r.acked.is_empty() {
            problems.push(format!("pub-{i} never got an ack"));
        }
        for a in &r.acked {
            acked_total += 1;
            if !sent_ids.insert(a.sent.id.clone()) {
                problems.push(format!("{} was acked twice by its publisher's count", a.sent.id));
            }
            let places = stored.get(&a.sent.id).map(Vec::as_slice).unwrap_or_default();
            match places {
                [] => problems.push(format!(
                    "LOST: {} acked on {} seq {} (run {}{}) is not in the history",
                    a.sent.id,
                    a.sent.ch,
                    a.seq,
                    a.gen,
                    if a.sent.resent { ", a resend" } else { "" }
                )),
                [m] => {
                    if m.ch != a.sent.ch || m.seq != a.seq {
                        problems.push(format!(
                            "MOVED: {} acked on {} seq {} is stored on {} seq {}",
                            a.sent.id, a.sent.ch, a.seq, m.ch, m.seq
                        ));
                    }
                    if m.data != json!({"p": format!("pub-{i}"), "n": a.sent.n}) {
                        problems.push(format!("{}: stored data {} differs", a.sent.id, m.data));
                    }
                    if a.sent.resent {
                        resends += 1;
                        if m.ts < run_start_ms[a.gen as usize] {
                            resends_deduped += 1;
                        }
                    }
                }
                many => problems.push(format!(
                    "DUPLICATE: {} (acked {} seq {}) is stored {} times: {:?}",
                    a.sent.id,
                    a.sent.ch,
                    a.seq,
                    many.len(),
                    many.iter().map(|m| (m.ch, m.seq)).collect::<Vec<_>>()
                )),
            }
        }
    }
    let mut unacked_stored = 0usize;
    let unacked: Vec<&Sent> = reports.iter().filter_map(|r| r.unacked.as_ref()).collect();
    for s in &unacked {
        sent_ids.insert(s.id.clone());
        match stored.get(&s.id).map(Vec::len).unwrap_or(0) {
            0 => {}
            1 => unacked_stored += 1,
            k => problems.push(format!("DUPLICATE: unacked {} is stored {k} times", s.id)),
        }
    }
    let mut by_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, places) in &stored {
        if !sent_ids.contains(id) {
            problems.push(format!("UNKNOWN: {id} is stored ({} times) but was never sent", places.len()));
        }
        by_id.insert(id, places.len());
    }
    let stored_twice = by_id.values().filter(|&&k| k > 1).count();

    server.stop();
    let breaks: u64 = reports.iter().map(|r| r.breaks).sum();
    println!(
        "crash: {cycles_run} cycles (seed {seed:#x}), {acked_total} acked, {checked} checked \
         ({} on {}, {} on {}), {resends} resends after a kill ({resends_deduped} deduplicated against \
         the killed run), {} unacked at the end ({unacked_stored} of them stored), {breaks} broken \
         connections, {idle_cycles} cycles without progress, in flight at each kill {in_flight_at_kill:?}, \
         {} ids stored twice; publishing {:.1?}, total {:.1?}",
        stored.values().flatten().filter(|m| m.ch == CHANNELS[0]).count(),
        CHANNELS[0],
        stored.values().flatten().filter(|m| m.ch == CHANNELS[1]).count(),
        CHANNELS[1],
        unacked.len(),
        stored_twice,
        publish_time,
        t0.elapsed(),
    );
    for p in &problems {
        println!("crash: PROBLEM {p}");
    }
    assert!(
        problems.is_empty(),
        "{} problems (seed {seed:#x}); first: {}\nserver log tail:\n{}",
        problems.len(),
        problems[0],
        server.log_tail(40)
    );
    assert!(acked_total as u64 >= cycles_run, "too little progress: {acked_total} acks in {cycles_run} cycles");
    // What the test claims to have exercised, it must have exercised.
    assert_eq!(
        cycles_run, cycles,
        "only {cycles_run} of {cycles} planned kill cycles ran within the budget of {budget:?} \
         (raise ROOSTD_CRASH_SECS, or lower ROOSTD_CRASH_CYCLES)"
    );
    assert_eq!(idle_cycles, 0, "{idle_cycles} runs acked nothing before their SIGKILL");
    let idle_kills = in_flight_at_kill.iter().filter(|&&n| n == 0).count();
    assert_eq!(idle_kills, 0, "{idle_kills} SIGKILLs landed with no publish in flight: {in_flight_at_kill:?}");
    assert!(resends > 0, "no publish in flight at a kill was resent and acked afterwards");
    // The window between a commit and its ack is a few microseconds wide
    // natively and is hit in most runs; under qemu its odds swing with the
    // machine's load (from ~30 of 116 resends to none seen in CI), so there
    // it is reported, and the native run of this same test asserts it.
    let window_hit = resends_deduped + unacked_stored > 0;
    if small() && !window_hit {
        println!("crash: under emulation no kill landed between a commit and its ack this run (asserted natively)");
    } else {
        assert!(
            window_hit,
            "no publish was committed by a killed run before its ack went out ({resends} resends, none \
             deduplicated against the killed run; {} unacked at the end, none stored): the crash window \
             between commit and ack was never hit",
            unacked.len()
        );
    }
}
