//! Durability of the store, end to end on the real `roostd` binary (spec §4
//! sync semantics, §6 operating it): the store size limit, a damaged store at
//! start (`--on-corrupt fresh|refuse`), `roostd backup` while clients
//! publish, short read transactions during a long replay, and retention.
//!
//! Faults that need `strace` (EIO on fsync, ENOSPC) are in `.ci/fault-inject`;
//! SIGKILL at random moments is `tests/crash.rs`; the one-owner lock is in
//! `tests/it/cli.rs`. Everything here is bounded in time, and
//! `ROOSTD_TEST_SCALE=small` shrinks the sizes for qemu.
//!
//! Each test prints a `durability:` line with what it measured; run with
//! `cargo test --test durability -- --nocapture` to see them.

mod support;

use std::collections::VecDeque;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use support::{api_token, io_timeout, scale, token_all, within, Client, TestServer, SECRET};
use tungstenite::{Message, WebSocket};

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The server process: `roostd serve --data DIR ARGS...` (tests/support).

fn start(data: &Path, args: &[&str]) -> TestServer {
    TestServer::options().data(data).args(args).start()
}

/// Starts the server; when it exits before listening, gives its exit
/// status and log instead.
fn try_start(data: &Path, args: &[&str]) -> Result<TestServer, (Option<ExitStatus>, String)> {
    TestServer::options().data(data).args(args).try_start()
}

/// A plain HTTP/1.1 request with `Connection: close` and the API token; (status, body).
fn http(server: &TestServer, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(server, method, path, "", body)
}

/// Same, with `extra` header lines (each ending in `\r\n`).
fn http_with(server: &TestServer, method: &str, path: &str, extra: &str, body: &str) -> (u16, String) {
    let resp = server.http(&format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        server.addr,
        api_token("app"),
        body.len()
    ));
    (resp.status, resp.body)
}

/// Runs `roostd ARGS` to completion (bounded), with the test secret.
fn run_roostd(args: &[&str]) -> Output {
    support::run_roostd(args, &[("ROOSTD_SECRET", SECRET)])
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ---------------------------------------------------------------------------
// A blocking WebSocket client.

struct Ws {
    ws: WebSocket<TcpStream>,
    /// Frames read while waiting for a reply to something else.
    queued: VecDeque<Value>,
}

impl Ws {
    fn connect(addr: SocketAddr, sub: &str) -> Ws {
        Ws { ws: Client::open(addr, &token_all(sub)).ws, queued: VecDeque::new() }
    }

    fn send(&mut self, v: &Value) {
        self.ws.send(Message::text(v.to_string())).unwrap_or_else(|e| panic!("sending {v}: {e}"));
    }

    /// The next JSON frame; `Err(code)` when the server closed (0: no code).
    fn next(&mut self) -> Result<Value, u16> {
        if let Some(v) = self.queued.pop_front() {
            return Ok(v);
        }
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Ok(serde_json::from_str(t.as_str()).expect("a JSON frame")),
                Ok(Message::Close(frame)) => return Err(frame.map(|f| u16::from(f.code)).unwrap_or(0)),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    panic!("no frame from the server within {:?}", io_timeout())
                }
                Err(_) => return Err(0),
            }
        }
    }

    /// Sends `req` (which has an `id`) and returns the reply with that id;
    /// other frames are kept for `next`.
    fn request(&mut self, req: Value) -> Value {
        let id = req["id"].clone();
        self.send(&req);
        let mut skipped = VecDeque::new();
        loop {
            let v = match self.ws.read() {
                Ok(Message::Text(t)) => serde_json::from_str::<Value>(t.as_str()).expect("a JSON frame"),
                Ok(Message::Close(frame)) => panic!("closed ({frame:?}) while waiting for the reply to {req}"),
                Ok(_) => continue,
                Err(e) => panic!("no reply to {req}: {e}"),
            };
            if v.get("id") == Some(&id) {
                self.queued.extend(skipped);
                return v;
            }
            skipped.push_back(v);
        }
    }

    /// `pub` and its reply.
    fn publish(&mut self, ch: &str, data: Value, id: &str) -> Value {
        self.request(json!({"op": "pub", "ch": ch, "data": data, "id": id}))
    }

    /// Every stored message of `ch` after `since` via `hist` paging: the
    /// messages, and whether the first page reported a gap.
    fn history(&mut self, ch: &str, since: u64) -> (Vec<Value>, bool) {
        let mut out = Vec::new();
        let mut cursor = since;
        let mut gap = None;
        for page in 0.. {
            let v =
                self.request(json!({"op": "hist", "ch": ch, "since": cursor, "limit": 100, "id": format!("h{page}")}));
            assert_eq!(v["op"], "hist", "hist reply: {v}");
            gap.get_or_insert(v.get("gap") == Some(&json!(true)));
            let msgs = v["msgs"].as_array().unwrap_or_else(|| panic!("hist without msgs: {v}"));
            for m in msgs {
                cursor = cursor.max(m["seq"].as_u64().expect("seq"));
                out.push(m.clone());
            }
            match v["more"].as_bool() {
                Some(true) if !msgs.is_empty() => {}
                Some(true) => panic!(
                    "hist says more:true but gave no messages, so a client paging on with since = its last seq \
                     asks the same page forever (spec §4: `more` is true iff higher seqs exist): {v}"
                ),
                _ => break,
            }
        }
        (out, gap.unwrap_or(false))
    }

    /// `sub` with `since`; the `subok` reply.
    fn subscribe(&mut self, ch: &str, since: u64, epoch: Option<&str>) -> Value {
        let mut req = json!({"op": "sub", "ch": ch, "since": since, "id": "s"});
        if let Some(e) = epoch {
            req["epoch"] = json!(e);
        }
        let v = self.request(req);
        assert_eq!(v["op"], "subok", "sub reply: {v}");
        v
    }
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

/// Publishes `n` messages on one connection with up to `window` in flight
/// (group commit); returns `(seq, data)` of each ack in publish order.
fn publish_pipelined(
    ws: &mut Ws,
    ch: &str,
    n: usize,
    window: usize,
    make: impl Fn(usize) -> Value,
) -> Vec<(u64, Value)> {
    let mut acks: Vec<Option<(u64, Value)>> = vec![None; n];
    let (mut sent, mut got) = (0, 0);
    while got < n {
        while sent < n && sent - got < window {
            ws.send(&json!({"op": "pub", "ch": ch, "data": make(sent), "id": sent}));
            sent += 1;
        }
        let v = ws.next().unwrap_or_else(|code| panic!("closed with {code} while publishing"));
        if v["op"] == "ack" {
            let i = v["id"].as_u64().expect("numeric id") as usize;
            acks[i] = Some((v["seq"].as_u64().unwrap(), make(i)));
            got += 1;
        } else if v["op"] == "err" {
            panic!("publishing failed: {v}");
        }
    }
    acks.into_iter().map(Option::unwrap).collect()
}

// ---------------------------------------------------------------------------
// Store size: `--max-store-bytes`.

/// Publishes `size`-byte messages until the first refusal; returns the acks
/// `(seq, n)` and the refusal.
fn fill(ws: &mut Ws, ch: &str, size: usize, tag: &str, max: usize) -> (Vec<(u64, usize)>, Value) {
    let pad = "x".repeat(size);
    let mut acked = Vec::new();
    for n in 0..max {
        let v = ws.publish(ch, json!({"n": n, "tag": tag, "pad": pad}), &format!("{tag}-{n}"));
        if v["op"] != "ack" {
            return (acked, v);
        }
        acked.push((v["seq"].as_u64().unwrap(), n));
    }
    panic!("{ch}: {max} messages of {size} bytes fit in the store; it never filled up");
}

#[test]
fn a_full_store_refuses_writes_keeps_reads_and_recovers_after_retention_trims() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let limit = "1048576";
    let mut server = start(&data, &["--max-store-bytes", limit, "--publish-rate", "0"]);
    let mut ws = Ws::connect(server.addr, "filler");
    // Fill with 2 KB messages, then top up with small ones until not even a
    // small message fits (the map is as full as it gets).
    let (mut acked, refusal) = fill(&mut ws, "full:a", 2000, "big", 10_000);
    assert_eq!(refusal["op"], "err", "{refusal}");
    assert_eq!(refusal["code"], "unavailable", "a full store refuses with `unavailable`: {refusal}");
    assert_eq!(refusal["id"], json!(format!("big-{}", acked.len())), "{refusal}");
    let (more, refusal2) = fill(&mut ws, "full:a", 10, "small", 10_000);
    assert_eq!(refusal2["code"], "unavailable", "{refusal2}");
    acked.extend(more);
    let used = server.metric("roostd_store_used_bytes").unwrap_or(0.0) as u64;
    let file = file_len(&data.join("data.mdb"));
    // Reads keep working: hist, a new subscription replaying from 0, HTTP history.
    let (msgs, _) = ws.history("full:a", 0);
    let want: Vec<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(seqs(&msgs), want, "every acked message, and nothing refused, is in the history");
    let mut reader = Ws::connect(server.addr, "reader");
    let subok = reader.subscribe("full:a", 0, None);
    assert_eq!(subok["seq"].as_u64(), want.last().copied(), "{subok}");
    for &seq in &want {
        let m = reader.next().expect("replay");
        assert_eq!(m["seq"].as_u64(), Some(seq), "replay on a full store: {m}");
    }
    // Refused again and again: no ack, no delivery, the connections stay open.
    // (Larger than the refused ones: a smaller message, or one without a
    // dedupe record, may still fit into the free room of a page.)
    for i in 0..3 {
        let v = ws.publish("full:a", json!({"again": i, "pad": "x".repeat(8000)}), &format!("again-{i}"));
        assert_eq!(v["code"], "unavailable", "{v}");
    }
    let (status, body) = http_with(
        &server,
        "POST",
        "/api/channels/full:a/messages",
        "Idempotency-Key: http-1\r\n",
        &json!({"via": "http", "pad": "x".repeat(8000)}).to_string(),
    );
    assert_eq!((status, body.contains("unavailable")), (503, true), "HTTP publish on a full store: {status} {body}");
    let v = reader.request(json!({"op": "hist", "ch": "full:a", "since": want.last(), "id": "tail"}));
    assert_eq!(v["msgs"], json!([]), "nothing refused is stored: {v}");
    assert!(reader.queued.is_empty(), "nothing refused is delivered: {:?}", reader.queued);
    let (status, body) = http(&server, "GET", "/api/channels/full:a/messages?since=0&limit=5", "");
    assert_eq!(status, 200, "HTTP history on a full store: {body}");
    let (status, body) = http(&server, "GET", "/healthz", "");
    let healthz = format!("{status} {}", body.trim());
    drop((ws, reader));
    server.stop();

    // The operator lowers the retention: the first maintenance pass trims
    // the channel, and writes work again.
    let mut server = start(&data, &["--max-store-bytes", limit, "--retention-messages", "10"]);
    let mut ws = Ws::connect(server.addr, "filler");
    let deadline = Instant::now() + within(Duration::from_secs(2));
    let ack = loop {
        let v = ws.publish("full:a", json!({"after": "trim"}), "after-trim");
        if v["op"] == "ack" {
            break v;
        }
        assert_eq!(v["code"], "unavailable", "{v}");
        assert!(
            Instant::now() < deadline,
            "writes did not work again within 2 s of a restart with --retention-messages 10: {v}\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(100));
    };
    let last = *want.last().unwrap();
    assert_eq!(ack["seq"].as_u64(), Some(last + 1), "{ack}");
    let (msgs, gap) = ws.history("full:a", 0);
    assert_eq!(seqs(&msgs), ((last - 8)..=(last + 1)).collect::<Vec<_>>(), "10 kept after the trim");
    assert!(gap, "hist from 0 after a trim reports gap:true");
    // And the space is really there: many more writes fit.
    let pad = "y".repeat(2000);
    for i in 0..50 {
        let v = ws.publish("full:a", json!({"i": i, "pad": pad}), &format!("later-{i}"));
        assert_eq!(v["op"], "ack", "write {i} after the trim: {v}");
    }
    println!(
        "durability: --max-store-bytes {limit}: full after {} acks ({} used, data.mdb {}), refusals `unavailable`, \
         reads fine, /healthz while full: {healthz}; writes again after restart with --retention-messages 10 ({:.1?} in all)",
        acked.len(),
        mib(used),
        mib(file),
        t0.elapsed(),
    );
    server.stop();
}

/// Large messages: a full store of 16 KB messages must still be readable
/// with a plain `hist` (default limit 100).
#[test]
fn hist_of_large_messages_keeps_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &["--publish-rate", "0"]);
    let mut ws = Ws::connect(server.addr, "big");
    let pad = "z".repeat(16_000);
    for i in 0..40 {
        let v = ws.publish("big:a", json!({"i": i, "pad": pad}), &format!("b{i}"));
        assert_eq!(v["op"], "ack", "{v}");
    }
    // Frame by frame, so a dropped connection is an assertion, not a panic.
    ws.send(&json!({"op": "hist", "ch": "big:a", "id": "h"}));
    let reply = ws.next();
    let ok = matches!(&reply, Ok(v) if v["op"] == "hist" && !v["msgs"].as_array().unwrap().is_empty());
    assert!(
        ok,
        "`hist` on a channel of 16 KB messages (reply capped at max-send-buffer-bytes/2 = 512 KiB) must answer; \
         got {:?} (0 = the connection was dropped without a Close frame). server log:\n{}",
        reply.map(|v| v["op"].clone()),
        server.log()
    );
    server.stop();
}

#[test]
fn max_store_bytes_limits_are_refused_with_exit_2() {
    // Measure the smallest map a new store starts with (pages of 4 KiB on
    // x86-64 and most Pi kernels; Pi 5 kernels use 16 KiB pages).
    let page = 4096u64;
    let mut smallest = None;
    for pages in 1..=16u64 {
        let dir = tempfile::tempdir().unwrap();
        let size = (pages * page).to_string();
        match try_start(dir.path(), &["--max-store-bytes", &size]) {
            Ok(mut s) => {
                s.stop();
                smallest = Some(pages * page);
                break;
            }
            Err((status, log)) => {
                assert_eq!(status.and_then(|s| s.code()), Some(2), "--max-store-bytes {size}: {log}");
                assert!(log.contains("--max-store-bytes"), "the reason names the flag: {log}");
            }
        }
    }
    let smallest = smallest.expect("some map of up to 64 KiB starts");
    // Not a multiple of the page size: LMDB refuses; exit 2 with a reason.
    let dir = tempfile::tempdir().unwrap();
    let odd = try_start(dir.path(), &["--max-store-bytes", "1000000"]).err().expect("1000000 is refused");
    assert_eq!(odd.0.and_then(|s| s.code()), Some(2), "{}", odd.1);
    assert!(odd.1.contains("page size"), "the reason says what to do: {}", odd.1);
    println!("durability: smallest --max-store-bytes a new store starts with: {smallest} bytes; 1000000: {}", odd.1);
}

// ---------------------------------------------------------------------------
// A damaged store at start.

/// Makes a store with a few messages; returns its epoch and the seq of the last one.
fn make_store(data: &Path) -> (String, u64) {
    let mut server = start(data, &[]);
    let mut ws = Ws::connect(server.addr, "maker");
    let acks = publish_pipelined(&mut ws, "c:a", 300, 50, |i| json!({"i": i, "pad": "p".repeat(200)}));
    let epoch = ws.subscribe("c:a", 0, None)["epoch"].as_str().unwrap().to_string();
    drop(ws);
    server.stop();
    (epoch, acks.last().unwrap().0)
}

fn garbage(path: &Path) {
    let len = file_len(path) as usize;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(path, bytes).unwrap();
}

fn truncate_to(path: &Path, len: u64) {
    fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len).unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    Garbage,
    /// Cut to half its size: both meta pages intact, data pages missing.
    TruncatedHalf,
    /// Cut to its two meta pages (8 KiB): every data page missing.
    TruncatedToMeta,
    /// Cut to nothing.
    TruncatedToZero,
}

impl Damage {
    fn apply(self, file: &Path) {
        match self {
            Damage::Garbage => garbage(file),
            Damage::TruncatedHalf => truncate_to(file, file_len(file) / 2),
            Damage::TruncatedToMeta => truncate_to(file, 8192),
            Damage::TruncatedToZero => truncate_to(file, 0),
        }
    }
}

fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Some(s) if s.signal().is_some() => format!("killed by signal {} (7 = SIGBUS)", s.signal().unwrap()),
        Some(s) => format!("exit {}", s.code().unwrap_or(-1)),
        None => "no exit".into(),
    }
}

/// `--on-corrupt fresh` (the default): the server starts, the damaged files
/// are in `<data>/corrupt-<time>/`, an error says where, the epoch is new
/// and a client resuming with the old one gets `gap:true`.
fn fresh_case(damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (old_epoch, last) = make_store(&data);
    let file = data.join("data.mdb");
    damage.apply(&file);
    let damaged = fs::read(&file).unwrap();
    let t0 = Instant::now();
    let mut server = match try_start(&data, &[]) {
        Ok(s) => s,
        Err((status, log)) => panic!(
            "{damage:?}: with --on-corrupt fresh (the default) the server must start on a fresh store; \
             it ended with {} and the log:\n{log}",
            describe_exit(status)
        ),
    };
    let log = server.log();
    let aside: Vec<PathBuf> = fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{damage:?}: one corrupt-<time> folder in {}; log:\n{log}", data.display());
    let moved = aside[0].join("data.mdb");
    assert_eq!(
        fs::read(&moved).ok().as_deref(),
        Some(&damaged[..]),
        "{damage:?}: the damaged data.mdb is moved as it was"
    );
    let name = aside[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        log.lines().any(|l| l.contains("ERROR") && l.contains(&name)),
        "{damage:?}: an ERROR line says where the store went ({name}); log:\n{log}"
    );
    let mut ws = Ws::connect(server.addr, "resumer");
    let subok = ws.subscribe("c:a", last, Some(&old_epoch));
    assert_ne!(subok["epoch"].as_str(), Some(old_epoch.as_str()), "{damage:?}: a fresh store has a new epoch");
    assert_eq!(subok["gap"], true, "{damage:?}: resuming with the old epoch gives gap:true: {subok}");
    assert_eq!(subok["seq"], 0, "{subok}");
    let v = ws.publish("c:a", json!("new"), "n1");
    assert_eq!(v["seq"], 1, "{damage:?}: the fresh store takes writes: {v}");
    println!("durability: {damage:?} + fresh: started in {:.1?}, moved to {name}", t0.elapsed());
    server.stop();
}

/// `--on-corrupt refuse`: exit 2 with a clear one-line reason, files untouched.
fn refuse_case(damage: Damage) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    make_store(&data);
    let file = data.join("data.mdb");
    damage.apply(&file);
    let before = fs::read(&file).unwrap();
    let (status, log) = match try_start(&data, &["--on-corrupt", "refuse"]) {
        Ok(mut s) => {
            s.stop();
            panic!("{damage:?} + --on-corrupt refuse: the server started; log:\n{}", s.log())
        }
        Err(e) => e,
    };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "{damage:?} + --on-corrupt refuse: exit 2 expected, got {}; stderr:\n{log}",
        describe_exit(status)
    );
    let reasons: Vec<&str> = log.lines().filter(|l| l.starts_with("roostd: ")).collect();
    assert_eq!(reasons.len(), 1, "one reason line: {log}");
    assert!(reasons[0].contains("unreadable") && reasons[0].contains("--on-corrupt fresh"), "a clear reason: {log}");
    assert_eq!(fs::read(&file).unwrap(), before, "{damage:?}: data.mdb untouched");
    let entries: Vec<String> =
        fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!entries.iter().any(|n| n.starts_with("corrupt-")), "nothing moved: {entries:?}");
    println!("durability: {damage:?} + refuse: {}", reasons[0]);
}

#[test]
fn garbage_store_with_fresh_moves_it_aside_and_starts_a_new_epoch() {
    fresh_case(Damage::Garbage);
}

#[test]
fn garbage_store_with_refuse_exits_2_and_leaves_it() {
    refuse_case(Damage::Garbage);
}

#[test]
fn truncated_store_with_fresh_moves_it_aside_and_starts_a_new_epoch() {
    fresh_case(Damage::TruncatedHalf);
}

#[test]
fn truncated_store_with_refuse_exits_2_and_leaves_it() {
    refuse_case(Damage::TruncatedHalf);
}

#[test]
fn store_cut_to_its_meta_pages_with_fresh_moves_it_aside() {
    fresh_case(Damage::TruncatedToMeta);
}

#[test]
fn store_cut_to_its_meta_pages_with_refuse_exits_2() {
    refuse_case(Damage::TruncatedToMeta);
}

/// A data.mdb cut to 0 bytes is a store whose history is gone. LMDB takes
/// an empty file for a new environment, so without a check of its own the
/// server would start empty without saying a word, even with `refuse`.
#[test]
fn store_cut_to_zero_bytes_is_not_silently_replaced() {
    fresh_case(Damage::TruncatedToZero);
}

#[test]
fn store_cut_to_zero_bytes_with_refuse_exits_2() {
    refuse_case(Damage::TruncatedToZero);
}

// ---------------------------------------------------------------------------
// Backup and restore.

/// `(seq, data)` of each acked message.
type Acks = Vec<(u64, Value)>;

#[test]
fn backup_while_publishing_restores_the_same_history() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let mut server = start(&live, &["--publish-rate", "0", "--retention-messages", "1000000"]);
    let channels = ["bk:a", "bk:b"];
    // Two publishers, one per channel, each with a window of 20 in flight.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<[Acks; 2]>> = Arc::new(Mutex::new([Vec::new(), Vec::new()]));
    let publishers: Vec<_> = channels
        .iter()
        .enumerate()
        .map(|(c, ch)| {
            let (addr, stop, acked, ch) = (server.addr, Arc::clone(&stop), Arc::clone(&acked), ch.to_string());
            thread::spawn(move || {
                let mut ws = Ws::connect(addr, &format!("p{c}"));
                let (mut sent, mut got) = (0u64, 0u64);
                let data = |n: u64| json!({"c": c, "n": n});
                loop {
                    while !stop.load(Ordering::Relaxed) && sent - got < 20 {
                        ws.send(&json!({"op": "pub", "ch": ch, "data": data(sent), "id": sent}));
                        sent += 1;
                    }
                    if got == sent {
                        break;
                    }
                    let v = ws.next().unwrap_or_else(|code| panic!("publisher closed with {code}"));
                    assert_eq!(v["op"], "ack", "{v}");
                    let n = v["id"].as_u64().unwrap();
                    acked.lock().unwrap()[c].push((v["seq"].as_u64().unwrap(), data(n)));
                    got += 1;
                }
            })
        })
        .collect();
    let warmup = scale(2000, 300);
    let deadline = Instant::now() + io_timeout();
    while acked.lock().unwrap().iter().map(Vec::len).min().unwrap() < warmup / 2 {
        assert!(Instant::now() < deadline, "publishing too slow");
        thread::sleep(Duration::from_millis(10));
    }
    let before: Vec<usize> = acked.lock().unwrap().iter().map(Vec::len).collect();
    let file = dir.path().join("backup.mdb");
    let tb = Instant::now();
    let out = run_roostd(&["backup", file.to_str().unwrap(), "--data", live.to_str().unwrap()]);
    let backup_took = tb.elapsed();
    let after: Vec<usize> = acked.lock().unwrap().iter().map(Vec::len).collect();
    assert!(out.status.success(), "roostd backup failed: {}", stderr_of(&out));
    // Publishing goes on after the backup, then stops.
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().expect("a publisher failed");
    }
    let mut ws = Ws::connect(server.addr, "checker");
    let live_epoch = ws.subscribe("bk:a", 0, None)["epoch"].as_str().unwrap().to_string();
    drop(ws);
    let live_size = file_len(&live.join("data.mdb"));
    server.stop();

    // Restore into an empty folder.
    let restored = dir.path().join("restored");
    fs::create_dir_all(&restored).unwrap();
    fs::copy(&file, restored.join("data.mdb")).unwrap();
    let mut server = start(&restored, &["--retention-messages", "1000000"]);
    let mut ws = Ws::connect(server.addr, "checker");
    let acked = acked.lock().unwrap();
    let mut counts = Vec::new();
    for (c, ch) in channels.iter().enumerate() {
        let subok = ws.subscribe(ch, 0, None);
        assert_ne!(subok["epoch"].as_str(), Some(live_epoch.as_str()), "a restored store has a new epoch (spec §6)");
        let (msgs, gap) = ws.history(ch, 0);
        assert!(!gap, "{ch}: no gap in a restored store");
        let mut live_by_seq: Vec<(u64, Value)> = acked[c].clone();
        live_by_seq.sort_by_key(|a| a.0);
        let k = msgs.len();
        assert_eq!(seqs(&msgs), (1..=k as u64).collect::<Vec<_>>(), "{ch}: seqs 1..k without holes");
        assert!(k >= before[c], "{ch}: the backup holds every message acked before it started ({k} < {})", before[c]);
        assert!(
            k <= after[c] + 20,
            "{ch}: the backup holds {k}, more than acked by its end ({}) + in flight",
            after[c]
        );
        for (m, (seq, data)) in msgs.iter().zip(&live_by_seq) {
            assert_eq!(
                (m["seq"].as_u64().unwrap(), &m["data"]),
                (*seq, data),
                "{ch}: the same message under the same seq"
            );
        }
        let v = ws.publish(ch, json!("after restore"), &format!("r-{ch}"));
        assert_eq!(v["seq"].as_u64(), Some(k as u64 + 1), "{ch}: the restored store goes on from its last seq: {v}");
        counts.push(k);
    }
    drop(ws);
    server.stop();
    println!(
        "durability: backup while publishing: {:?} messages in the backup (acked before it started {before:?}, \
         by its end {after:?}), backup {} (compacted) vs live data.mdb {}, backup took {backup_took:.1?}, test {:.1?}",
        counts,
        mib(file_len(&file)),
        mib(live_size),
        t0.elapsed()
    );
}

#[test]
fn backup_refuses_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data, &[]);
    Ws::connect(server.addr, "w").publish("x", json!(1), "1");
    let file = dir.path().join("exists.mdb");
    fs::write(&file, b"keep me").unwrap();
    let out = run_roostd(&["backup", file.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
    server.stop();
}

// ---------------------------------------------------------------------------
// Short read transactions.

/// What one run of `replay_during_writes` measured.
struct Growth {
    before: u64,
    after: u64,
    used: u64,
    /// A compacted copy (`roostd backup`): what the data needs.
    needed: u64,
    first_took: Duration,
    writes_took: Duration,
    replay_took: Duration,
}

/// Publishes `n` messages, then `n` more with few in flight (so that many
/// small commits happen), while a subscriber replays the first `n` paced by
/// the writes (it reads history message i only once i new ones are acked,
/// so the replay spans the whole write phase), or, for the control run,
/// while a read transaction of this test process stays open instead.
fn replay_during_writes(n: usize, window: usize, hold_reader: bool) -> Growth {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = start(&data, &["--publish-rate", "0", "--retention-messages", "100000000"]);
    let ch = "replay:a";
    let make =
        |i: usize| json!({"i": i, "text": "a message of about one hundred bytes, as a chat line or a sensor reading"});
    let mut ws = Ws::connect(server.addr, "writer");
    let t0 = Instant::now();
    publish_pipelined(&mut ws, ch, n, 64, make);
    let first_took = t0.elapsed();
    let before = file_len(&data.join("data.mdb"));

    let progress = Arc::new(AtomicUsize::new(0));
    let addr = server.addr;
    let paced = Arc::clone(&progress);
    let reader = (!hold_reader).then(|| {
        thread::spawn(move || {
            let mut r = Ws::connect(addr, "reader");
            r.subscribe(ch, 0, None);
            let started = Instant::now();
            let mut replay_done = Duration::ZERO;
            for expect in 1..=(2 * n) as u64 {
                if (expect as usize) <= n {
                    let wait_until = Instant::now() + io_timeout();
                    while paced.load(Ordering::Relaxed) < expect as usize * 95 / 100 {
                        assert!(Instant::now() < wait_until, "the writer made no progress");
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                let m = r.next().unwrap_or_else(|code| panic!("reader closed with {code} at seq {expect}"));
                assert_eq!(m["seq"].as_u64(), Some(expect), "replay then live, in order, no gap, no duplicate");
                if expect as usize == n {
                    replay_done = started.elapsed();
                }
            }
            replay_done
        })
    });
    // The control: one read transaction (a snapshot) open across all writes,
    // as a replay that kept its transaction would hold one.
    let held = hold_reader.then(|| {
        // SAFETY: a second process opening the environment is what LMDB is
        // made for; this process opens it once and only reads.
        #[allow(unsafe_code)]
        let env = unsafe { heed::EnvOpenOptions::new().max_dbs(8).max_readers(126).open(&data) }.expect("opening");
        env
    });
    let snapshot = held.as_ref().map(|env| env.read_txn().expect("a read transaction"));
    let tw = Instant::now();
    let (mut sent, mut got) = (0usize, 0usize);
    let mut last_seq = 0;
    while got < n {
        while sent < n && sent - got < window {
            ws.send(&json!({"op": "pub", "ch": ch, "data": make(n + sent), "id": n + sent}));
            sent += 1;
        }
        let v = ws.next().unwrap_or_else(|code| panic!("closed with {code} while publishing"));
        assert_eq!(v["op"], "ack", "{v}");
        last_seq = v["seq"].as_u64().unwrap();
        got += 1;
        progress.store(got, Ordering::Relaxed);
    }
    let writes_took = tw.elapsed();
    let replay_took = reader.map(|r| r.join().expect("the reader failed")).unwrap_or_default();
    drop(snapshot);
    drop(held);
    assert_eq!(last_seq, 2 * n as u64);
    let after = file_len(&data.join("data.mdb"));
    let used = server.metric("roostd_store_used_bytes").unwrap_or(0.0) as u64;
    let file = dir.path().join("compact.mdb");
    let out = run_roostd(&["backup", file.to_str().unwrap(), "--data", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    drop(ws);
    server.stop();
    Growth { before, after, used, needed: file_len(&file), first_took, writes_took, replay_took }
}

/// A subscriber replays a long history while as many messages again are
/// written. If a read transaction stayed open for the whole replay, LMDB
/// could reuse no page freed meanwhile and data.mdb would grow by every
/// page written (see the control below); with short read transactions (one
/// per replay batch of 256) it stays close to what the data needs.
#[test]
fn a_long_replay_during_writes_keeps_data_mdb_bounded() {
    let n = scale(20_000, 2_000);
    let g = replay_during_writes(n, 16, false);
    println!(
        "durability: replay of {n} while writing {n} more: data.mdb {} before, {} after; in use {}; \
         compacted (what the data needs) {}; after/needed = {:.2}; the replay took {:.1?}, the {n} writes {:.1?} \
         (the first {n}: {:.1?})",
        mib(g.before),
        mib(g.after),
        mib(g.used),
        mib(g.needed),
        g.after as f64 / g.needed as f64,
        g.replay_took,
        g.writes_took,
        g.first_took,
    );
    assert!(
        g.replay_took.as_secs_f64() > g.writes_took.as_secs_f64() * 0.8,
        "the replay must span the writes for this test to mean anything (replay {:?}, writes {:?})",
        g.replay_took,
        g.writes_took
    );
    // The stated bound: data.mdb at most 1.5 times what the data needs, plus 1 MiB.
    assert!(
        g.after <= g.needed * 3 / 2 + (1 << 20),
        "data.mdb grew to {} for {} of data: a read transaction was held too long",
        mib(g.after),
        mib(g.needed)
    );
}

/// The control for the test above: the same writes with one read
/// transaction held open throughout. It shows what the bound guards
/// against; it asserts only that the growth is far past the bound.
#[test]
fn control_a_read_transaction_held_across_writes_makes_data_mdb_grow() {
    let n = scale(5_000, 1_000);
    let g = replay_during_writes(n, 16, true);
    println!(
        "durability: control, one read transaction held while writing {n} after {n}: data.mdb {} before, {} after \
         ({:.1}x what the data needs, {}); the writes took {:.1?}",
        mib(g.before),
        mib(g.after),
        g.after as f64 / g.needed as f64,
        mib(g.needed),
        g.writes_took,
    );
    assert!(g.after > g.needed * 3 / 2 + (1 << 20), "a held snapshot should have made data.mdb grow past the bound");
}

// ---------------------------------------------------------------------------
// Retention.

#[test]
fn retention_messages_5_keeps_the_last_5_within_1s() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &["--retention-messages", "5", "--publish-rate", "0"]);
    let mut ws = Ws::connect(server.addr, "r");
    for i in 1..=20 {
        let v = ws.publish("ret:n", json!(i), &format!("m{i}"));
        assert_eq!(v["seq"], i, "{v}");
    }
    let acked_at = Instant::now();
    let deadline = acked_at + within(Duration::from_secs(1));
    let (msgs, gap) = loop {
        let (msgs, gap) = ws.history("ret:n", 0);
        if seqs(&msgs) == vec![16, 17, 18, 19, 20] || Instant::now() > deadline {
            break (msgs, gap);
        }
        thread::sleep(Duration::from_millis(50));
    };
    let took = acked_at.elapsed();
    assert_eq!(seqs(&msgs), vec![16, 17, 18, 19, 20], "hist from 0, {took:?} after the 20th ack");
    assert!(gap, "hist from 0 over trimmed messages says gap:true");
    let data: Vec<Value> = msgs.iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, (16..=20).map(|i| json!(i)).collect::<Vec<_>>());
    let mut sub = Ws::connect(server.addr, "s");
    let subok = sub.subscribe("ret:n", 0, None);
    assert_eq!(subok["gap"], true, "sub since 0 over trimmed messages: {subok}");
    assert_eq!(sub.next().unwrap()["seq"], 16, "replay starts at the oldest kept");
    let (status, body) = http(&server, "GET", "/api/channels", "");
    assert!(status == 200 && body.contains("\"count\":5"), "channel count 5: {status} {body}");
    println!("durability: --retention-messages 5: 16..20 with gap:true {took:.1?} after the 20th ack");
    server.stop();
}

#[test]
fn retention_age_1s_trims_older_messages_within_2s() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &["--retention-age", "1s", "--publish-rate", "0"]);
    let mut ws = Ws::connect(server.addr, "r");
    for i in 1..=5 {
        assert_eq!(ws.publish("ret:age", json!(i), &format!("a{i}"))["op"], "ack");
    }
    let first_batch = Instant::now();
    let (msgs, _) = ws.history("ret:age", 0);
    let ts1 = msgs[0]["ts"].as_u64().unwrap();
    let ts5 = msgs[4]["ts"].as_u64().unwrap();
    // The second five 0.8 s later: the first five pass 1 s while these are
    // still young, so there is a moment when only these are stored.
    let mut second_batch = None;
    let deadline = first_batch + within(Duration::from_secs(2));
    let first_gone = loop {
        if second_batch.is_none() && first_batch.elapsed() >= Duration::from_millis(800) {
            for i in 6..=10 {
                assert_eq!(ws.publish("ret:age", json!(i), &format!("a{i}"))["op"], "ack");
            }
            second_batch = Some(Instant::now());
        }
        let (msgs, _) = ws.history("ret:age", 0);
        let answered_ms = now_ms();
        let s = seqs(&msgs);
        // Order, not a margin: an answer that arrived before ts1 + 1 s was
        // read before then (one clock, whole milliseconds), however slowly
        // the server ran; the first message must still be in it.
        if answered_ms + 1 < ts1 + 1000 {
            assert_eq!(
                s.first(),
                Some(&1),
                "trimmed before it was 1 s old (answered at ts1 + {} ms)",
                answered_ms - ts1
            );
        }
        // The first five go as each passes 1 s (under emulation they may be
        // committed far enough apart to go one by one); the younger five stay.
        if second_batch.is_some() && s == vec![6, 7, 8, 9, 10] {
            break now_ms() - ts5;
        }
        assert!(
            Instant::now() < deadline,
            "messages older than 1 s still stored {:?} after their commit: {s:?}",
            first_batch.elapsed()
        );
        thread::sleep(Duration::from_millis(50));
    };
    let second_batch = second_batch.unwrap();
    let deadline = second_batch + within(Duration::from_secs(2));
    // One raw page each time: see the end of the test for `more`.
    let (all_gone, last_page) = loop {
        let v = ws.request(json!({"op": "hist", "ch": "ret:age", "since": 0, "id": "all"}));
        if v["msgs"] == json!([]) {
            break (second_batch.elapsed(), v);
        }
        assert!(
            Instant::now() < deadline,
            "messages older than 1 s still stored {:?} after their commit: {v}",
            second_batch.elapsed(),
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(last_page["gap"], true, "hist from 0 of a fully trimmed channel says gap:true: {last_page}");
    // Seqs go on after a full trim.
    assert_eq!(ws.publish("ret:age", json!(11), "a11")["seq"], 11);
    println!(
        "durability: --retention-age 1s: the first five gone at most {first_gone} ms after the newest of them was \
         committed, the second five {all_gone:.1?} after theirs"
    );
    server.stop();
    // Spec §4: `more` is true iff higher seqs exist. Nothing is stored, so a
    // client that pages on with `since` = its last seq (0) would ask forever.
    assert_eq!(
        last_page["more"], false,
        "hist of a fully trimmed channel must not say more:true with no messages: {last_page}"
    );
}
