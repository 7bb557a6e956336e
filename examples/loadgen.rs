//! roostd load generator: many WebSocket connections from one thread (mio),
//! frames and the HTTP upgrade written by hand, so the generator costs little
//! next to the server it measures.
//!
//! ```text
//! cargo run --release --example loadgen -- <scenario> --url ws://127.0.0.1:PORT [options]
//!
//!   idle    --conns N [--hold 5s]                 RSS per idle, subscribed connection
//!   publish --publishers P [--channel bench]      acked durable publishes/s, pub→ack latency
//!   fanout  --subscribers S --publishers P        delivered msg/s, probe round trip under load
//!
//! common: --secret S (else $ROOSTD_SECRET)  --duration 10s  --pid PID (the server's)
//!         --payload BYTES (pad of each published data, default 64)
//! ```
//!
//! Tokens are minted here from the shared secret (`sub` = `loadgen-N`, read
//! and write `*`). Publish ids carry a per-run nonce, so runs against the
//! same store are never answered from the dedupe table.
//!
//! With `--pid` the generator samples the server's `/proc/PID/stat`
//! (utime + stime, all threads) and `/proc/PID/status` (VmRSS) around the
//! measured interval, and reports server CPU-µs per unit of work.
//!
//! Publishers keep exactly one publish in flight (send, wait for the ack,
//! repeat). The server's per-connection publish rate (default 1000/s, burst
//! 2000) may answer `rate_limited` when one publisher's commits are faster
//! than 1 ms: the generator then resends the same id 1 ms later and counts
//! the refusal (shown under "problems"). On such a disk, start the server
//! with `--publish-rate 0` for throughput runs.
//!
//! `fanout` also runs two probes, each a round trip every 10 ms: `probe`
//! publishes on its own channel and waits for the ack (so it includes a
//! commit), `hist` asks for history (no commit: how long the event loop
//! takes to answer while it fans out). Published data carries the send time,
//! so subscribers also measure pub→delivery latency.
//!
//! The generator also reports its own CPU share (near 100 % means it, not the
//! server, was the limit) and how much of the machine other processes used
//! while measuring (`other_busy_pct`: above ~10 % the numbers are noisy).
//!
//! Output: a human-readable summary, then one final line of JSON holding
//! every number. Every scenario stops by itself: after its duration, and in
//! any case after a hard cap (setup + duration + 30 s).

use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use roostd::auth::{mint, Key};
use serde_json::{json, Value};

/// Handshakes under way at once (the rest wait their turn).
const MAX_CONNECTING: usize = 200;
/// How long opening and subscribing every connection may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Beyond the scenario's own time, the generator never runs longer than this.
const HARD_CAP_SLACK: Duration = Duration::from_secs(30);
/// The probe's period in the fanout scenario.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// Wait before resending a publish the server refused as busy or rate limited.
const RETRY_AFTER: Duration = Duration::from_millis(1);
/// The fixed client mask (RFC 6455 wants one; its value does not matter here).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

// ---------------------------------------------------------------- options

struct Opts {
    scenario: String,
    addr: SocketAddr,
    host: String,
    secret: String,
    duration: Duration,
    hold: Duration,
    pid: Option<u32>,
    conns: usize,
    publishers: usize,
    subscribers: usize,
    channel: String,
    payload: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    eprintln!(
        "usage: loadgen idle|publish|fanout --url ws://HOST:PORT [--secret S] [--duration 10s] [--pid PID]\n\
         \x20      [--conns N] [--hold 5s] [--publishers P] [--subscribers S] [--channel bench] [--payload BYTES]"
    );
    std::process::exit(2)
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let n: f64 = s[..split].parse().ok()?;
    let unit = match &s[split..] {
        "ms" => 0.001,
        "s" | "" => 1.0,
        "m" => 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(n * unit))
}

fn parse_opts() -> Opts {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| usage("name a scenario"));
    if !matches!(scenario.as_str(), "idle" | "publish" | "fanout") {
        usage(&format!("unknown scenario {scenario:?}"));
    }
    let mut o = Opts {
        scenario,
        addr: "127.0.0.1:0".parse().unwrap(),
        host: String::new(),
        secret: std::env::var("ROOSTD_SECRET").unwrap_or_default(),
        duration: Duration::from_secs(10),
        hold: Duration::from_secs(5),
        pid: None,
        conns: 1000,
        publishers: 1,
        subscribers: 100,
        channel: "bench".into(),
        payload: 64,
    };
    let mut url = None;
    let mut publishers = None;
    while let Some(flag) = args.next() {
        let v = args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: &str| v.parse::<usize>().unwrap_or_else(|_| usage(&format!("{flag} takes a number")));
        let dur = |v: &str| parse_duration(v).unwrap_or_else(|| usage(&format!("{flag} takes a duration like 10s")));
        match flag.as_str() {
            "--url" => url = Some(v),
            "--secret" => o.secret = v,
            "--duration" => o.duration = dur(&v),
            "--hold" => o.hold = dur(&v),
            "--pid" => o.pid = Some(num(&v) as u32),
            "--conns" => o.conns = num(&v),
            "--publishers" => publishers = Some(num(&v)),
            "--subscribers" => o.subscribers = num(&v),
            "--channel" => o.channel = v,
            "--payload" => o.payload = num(&v),
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    o.publishers = publishers.unwrap_or(if o.scenario == "fanout" { 50 } else { 1 });
    let url = url.unwrap_or_else(|| usage("--url is required"));
    let authority = url
        .strip_prefix("ws://")
        .unwrap_or_else(|| usage("--url must start with ws://"))
        .split('/')
        .next()
        .unwrap_or("");
    o.host = authority.to_string();
    o.addr = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| usage(&format!("cannot resolve {authority}")));
    if o.secret.len() < 32 {
        usage("give the server's secret with --secret or ROOSTD_SECRET (at least 32 bytes)");
    }
    o
}

// ---------------------------------------------------------------- /proc

/// One sample of the server process.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    cpu_us: u64,
    rss_bytes: u64,
}

fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(ProcSample { cpu_us: ticks * 1_000_000 / hz, rss_bytes: rss_kb * 1024 })
}

/// Busy and total CPU time of the whole machine (all cores), in µs.
fn machine_cpu_us() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(((total - idle) * 1_000_000 / hz, total * 1_000_000 / hz))
}

/// Measures how busy the machine was with *other* work (neither the server
/// nor this generator) over an interval: a benchmark taken while, say, a
/// compiler runs on the same cores is noise, and this number says so.
struct Noise {
    machine: Option<(u64, u64)>,
    server: Option<ProcSample>,
    own: u64,
}

impl Noise {
    fn start(pid: Option<u32>) -> Noise {
        Noise { machine: machine_cpu_us(), server: sample(pid), own: own_cpu_us() }
    }

    /// Percent of all cores' time used by other processes since `start`.
    fn other_pct(&self, pid: Option<u32>) -> Option<f64> {
        let (b0, t0) = self.machine?;
        let (b1, t1) = machine_cpu_us()?;
        let server = match (self.server, sample(pid)) {
            (Some(a), Some(b)) => b.cpu_us.saturating_sub(a.cpu_us),
            _ => 0,
        };
        let others = (b1 - b0).saturating_sub(server + own_cpu_us().saturating_sub(self.own));
        (t1 > t0).then(|| (others as f64 / (t1 - t0) as f64 * 1000.0).round() / 10.0)
    }
}

/// Each connection is a descriptor: lift the soft limit to the hard one.
fn raise_fd_limit() {
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// CPU time (user + system) this process has used, in µs.
fn own_cpu_us() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

// ---------------------------------------------------------------- frames

/// Appends one masked client frame.
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
}

/// One complete server frame at the start of `buf`: (opcode, payload range, length).
fn parse_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at): (usize, usize) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    if masked {
        at += 4; // servers do not mask; tolerated, not unmasked
    }
    let end = at.checked_add(len)?;
    (buf.len() >= end).then_some((opcode, at..end, end))
}

// ---------------------------------------------------------------- connections

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// Subscribes and holds (idle) or subscribes and counts (fanout).
    Subscriber,
    /// Publishes as fast as acks come back.
    Publisher,
    /// Publishes once per PROBE_EVERY on its own channel.
    Probe,
    /// Asks for `hist` once per PROBE_EVERY: a round trip that needs no
    /// commit, so it shows how long the event loop itself takes to answer.
    HistProbe,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Waiting,
    Connecting,
    Handshake,
    Open,
    Closed,
}

struct Conn {
    role: Role,
    n: usize,
    state: State,
    sock: Option<TcpStream>,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    subscribed: bool,
    /// The publish awaiting its ack: its id number and when it was first sent.
    inflight: Option<(u64, Instant)>,
    next_id: u64,
    /// Resend the in-flight publish at this time (after a refusal).
    retry_at: Option<Instant>,
    /// The probe's next send.
    next_probe: Option<Instant>,
}

impl Conn {
    fn new(role: Role, n: usize) -> Conn {
        Conn {
            role,
            n,
            state: State::Waiting,
            sock: None,
            out: Vec::new(),
            out_pos: 0,
            inbuf: Vec::new(),
            subscribed: false,
            inflight: None,
            next_id: 0,
            retry_at: None,
            next_probe: None,
        }
    }
}

#[derive(Default)]
struct Stats {
    opened: usize,
    subscribed: usize,
    refused: BTreeMap<String, usize>,
    closes: BTreeMap<u16, usize>,
    errors: BTreeMap<String, usize>,
    io_errors: usize,
    /// Counted only while the measured interval runs (or drains).
    acked: u64,
    last_ack: Option<Instant>,
    delivered: u64,
    pub_latency: Option<Histogram<u64>>,
    probe_latency: Option<Histogram<u64>>,
    hist_latency: Option<Histogram<u64>>,
    delivery_latency: Option<Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

struct Gen {
    opts: Opts,
    poll: Poll,
    conns: Vec<Conn>,
    stats: Stats,
    /// The clock that publish timestamps (`data.t`, µs) are counted from.
    base: Instant,
    nonce: String,
    key: Key,
    measuring: bool,
    /// Publishers and the probe send while this is true.
    sending: bool,
    pad: String,
    /// Share of the machine that other processes used while measuring.
    other_busy_pct: Option<f64>,
}

impl Gen {
    fn new(opts: Opts) -> Gen {
        let nonce = format!(
            "{:x}{:x}",
            std::process::id(),
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() & 0xffff_ffff
        );
        let key = Key::new(None, opts.secret.clone().into_bytes());
        let pad = "x".repeat(opts.payload);
        Gen {
            opts,
            poll: Poll::new().expect("a poller"),
            conns: Vec::new(),
            stats: Stats {
                pub_latency: Some(histogram()),
                probe_latency: Some(histogram()),
                hist_latency: Some(histogram()),

                delivery_latency: Some(histogram()),
                ..Stats::default()
            },
            base: Instant::now(),
            nonce,
            key,
            measuring: false,
            sending: false,
            pad,
            other_busy_pct: None,
        }
    }

    fn add(&mut self, role: Role, count: usize) {
        for _ in 0..count {
            let n = self.conns.len();
            self.conns.push(Conn::new(role, n));
        }
    }

    fn upgrade_request(&self, n: usize) -> Vec<u8> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims =
            json!({"sub": format!("loadgen-{n}"), "iat": now, "exp": now + 3600, "read": ["*"], "write": ["*"]});
        let token = mint(&claims, &self.key);
        format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.opts.host
        )
        .into_bytes()
    }

    /// Starts connections that wait, keeping at most MAX_CONNECTING in handshake.
    fn start_connections(&mut self) {
        let busy = self.conns.iter().filter(|c| matches!(c.state, State::Connecting | State::Handshake)).count();
        let mut room = MAX_CONNECTING.saturating_sub(busy);
        for i in 0..self.conns.len() {
            if room == 0 {
                break;
            }
            if self.conns[i].state != State::Waiting {
                continue;
            }
            room -= 1;
            match TcpStream::connect(self.opts.addr) {
                Ok(mut sock) => {
                    let registered =
                        self.poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE);
                    if registered.is_err() {
                        self.stats.io_errors += 1;
                        self.conns[i].state = State::Closed;
                        continue;
                    }
                    let request = self.upgrade_request(self.conns[i].n);
                    let c = &mut self.conns[i];
                    c.sock = Some(sock);
                    c.state = State::Connecting;
                    c.out = request;
                }
                Err(e) => {
                    if self.stats.io_errors == 0 {
                        eprintln!("loadgen: connect failed: {e}");
                    }
                    self.stats.io_errors += 1;
                    self.conns[i].state = State::Closed;
                }
            }
        }
    }

    fn send_text(&mut self, i: usize, text: &str) {
        push_frame(&mut self.conns[i].out, 0x1, text.as_bytes());
        self.flush(i);
    }

    fn publish(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        if c.role == Role::HistProbe {
            c.inflight = Some((0, now));
            return self.send_text(i, r#"{"op":"hist","ch":"probe","limit":1,"id":"h"}"#);
        }
        let (id, first_sent) = match c.inflight {
            Some(pending) => pending, // a resend keeps its id and its start time
            None => {
                c.next_id += 1;
                (c.next_id, now)
            }
        };
        c.inflight = Some((id, first_sent));
        c.retry_at = None;
        let ch = if c.role == Role::Probe { "probe" } else { self.opts.channel.as_str() };
        let t = now.duration_since(self.base).as_micros();
        let text = format!(
            r#"{{"op":"pub","ch":"{ch}","id":"{}-{}-{id}","data":{{"t":{t},"pad":"{}"}}}}"#,
            self.nonce, c.n, self.pad
        );
        self.send_text(i, &text);
    }

    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut sock) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        c.state = State::Closed;
        c.inflight = None;
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.state == State::Connecting {
            return; // the request goes out once the socket is connected
        }
        let Some(sock) = c.sock.as_mut() else { return };
        while c.out_pos < c.out.len() {
            match sock.write(&c.out[c.out_pos..]) {
                Ok(0) => break,
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.stats.io_errors += 1;
                    return self.close(i);
                }
            }
        }
        c.out.clear();
        c.out_pos = 0;
    }

    fn on_event(&mut self, i: usize, now: Instant) {
        if i >= self.conns.len() || self.conns[i].state == State::Closed {
            return;
        }
        if self.conns[i].state == State::Connecting {
            let sock = self.conns[i].sock.as_ref().expect("connecting has a socket");
            if let Ok(Some(_)) | Err(_) = sock.take_error() {
                self.stats.io_errors += 1;
                return self.close(i);
            }
            match sock.peer_addr() {
                Ok(_) => self.conns[i].state = State::Handshake,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => {
                    self.stats.io_errors += 1;
                    return self.close(i);
                }
            }
        }
        self.flush(i);
        self.read(i, now);
    }

    fn read(&mut self, i: usize, now: Instant) {
        let mut scratch = [0u8; 64 * 1024];
        let mut eof = false;
        loop {
            let c = &mut self.conns[i];
            let Some(sock) = c.sock.as_mut() else { return };
            match sock.read(&mut scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => c.inbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if self.conns[i].state == State::Handshake {
            self.read_response(i);
        }
        if self.conns[i].state == State::Open {
            self.read_frames(i, now);
        }
        if eof && self.conns[i].state != State::Closed {
            if self.conns[i].state == State::Open {
                // Closed without a Close frame.
                *self.stats.closes.entry(1006).or_default() += 1;
            } else {
                self.stats.io_errors += 1;
            }
            self.close(i);
        }
    }

    fn read_response(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else { return };
        let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            // A refusal: status and the {"error":...} body (if it came with the head).
            let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
            let body = String::from_utf8_lossy(&c.inbuf[end + 4..]).into_owned();
            let code = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_default();
            *self.stats.refused.entry(format!("{status} {code}")).or_default() += 1;
            return self.close(i);
        }
        c.inbuf.drain(..end + 4);
        c.state = State::Open;
        self.stats.opened += 1;
        if c.role == Role::Subscriber {
            let text = format!(r#"{{"op":"sub","ch":"{}","id":"s"}}"#, self.opts.channel);
            self.send_text(i, &text);
        }
    }

    fn read_frames(&mut self, i: usize, now: Instant) {
        let mut at = 0;
        while let Some((opcode, range, len)) = parse_frame(&self.conns[i].inbuf[at..]) {
            let payload = (range.start + at)..(range.end + at);
            at += len;
            match opcode {
                0x1 => {
                    // Text: the payload is taken out so the handler may borrow self.
                    let text = std::mem::take(&mut self.conns[i].inbuf);
                    self.on_text(i, &text[payload], now);
                    self.conns[i].inbuf = text;
                }
                0x8 => {
                    let p = &self.conns[i].inbuf[payload];
                    let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
                    *self.stats.closes.entry(code).or_default() += 1;
                    return self.close(i);
                }
                0x9 => {
                    let ping = self.conns[i].inbuf[payload].to_vec();
                    push_frame(&mut self.conns[i].out, 0xA, &ping);
                    self.flush(i);
                }
                _ => {} // pong, binary, continuation: not expected, ignored
            }
            if self.conns[i].state == State::Closed {
                return;
            }
        }
        self.conns[i].inbuf.drain(..at);
    }

    fn on_text(&mut self, i: usize, text: &[u8], now: Instant) {
        if text.starts_with(br#"{"op":"msg""#) {
            // The hot path in fanout: counted, and timed by the `t` in the data.
            if self.measuring {
                self.stats.delivered += 1;
                if let Some(t) = find_number(text, br#""data":{"t":"#) {
                    let lat = (now.duration_since(self.base).as_micros() as u64).saturating_sub(t);
                    let _ = self.stats.delivery_latency.as_mut().unwrap().record(lat.max(1));
                }
            }
            return;
        }
        if text.starts_with(br#"{"op":"ack""#) {
            let c = &mut self.conns[i];
            let Some((_, sent)) = c.inflight.take() else { return };
            let lat = now.duration_since(sent).as_micros() as u64;
            let role = c.role;
            if self.measuring {
                let h = if role == Role::Probe { &mut self.stats.probe_latency } else { &mut self.stats.pub_latency };
                let _ = h.as_mut().unwrap().record(lat.max(1));
                if role == Role::Publisher {
                    self.stats.acked += 1;
                    self.stats.last_ack = Some(now);
                }
            }
            if role == Role::Publisher && self.sending {
                self.publish(i, now);
            }
            return;
        }
        if text.starts_with(br#"{"op":"hist""#) {
            let Some((_, sent)) = self.conns[i].inflight.take() else { return };
            if self.measuring {
                let lat = now.duration_since(sent).as_micros() as u64;
                let _ = self.stats.hist_latency.as_mut().unwrap().record(lat.max(1));
            }
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(text) else { return };
        match v["op"].as_str() {
            Some("subok") if !self.conns[i].subscribed => {
                self.conns[i].subscribed = true;
                self.stats.subscribed += 1;
            }
            Some("err") => {
                let code = v["code"].as_str().unwrap_or("?").to_string();
                if self.stats.errors.is_empty() {
                    eprintln!("loadgen: first error from the server: {v}");
                }
                *self.stats.errors.entry(code).or_default() += 1;
                if self.conns[i].inflight.is_some() {
                    self.conns[i].retry_at = Some(now + RETRY_AFTER);
                }
            }
            _ => {}
        }
    }

    /// Runs the loop until `done` says so or `until` passes; timers included.
    fn run_until(&mut self, until: Instant, done: impl Fn(&Gen) -> bool) {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if now >= until || done(self) {
                return;
            }
            self.start_connections();
            let mut timeout = until - now;
            for c in &self.conns {
                // The probe's tick counts only while it may send.
                let probe = c.next_probe.filter(|_| self.sending && c.inflight.is_none());
                for t in [c.retry_at, probe].into_iter().flatten() {
                    timeout = timeout.min(t.saturating_duration_since(now));
                }
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout.min(Duration::from_millis(100)))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    panic!("poll failed: {e}");
                }
            }
            let now = Instant::now();
            for ev in events.iter() {
                self.on_event(ev.token().0, now);
            }
            self.fire_timers(now);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.state != State::Open {
                continue;
            }
            if c.retry_at.is_some_and(|t| t <= now) {
                c.retry_at = None;
                if self.sending || c.inflight.is_some() {
                    self.publish(i, now);
                }
                continue;
            }
            if matches!(c.role, Role::Probe | Role::HistProbe)
                && self.sending
                && c.inflight.is_none()
                && c.next_probe.is_some_and(|t| t <= now)
            {
                let next = c.next_probe.unwrap() + PROBE_EVERY;
                c.next_probe = Some(if next <= now { now + PROBE_EVERY } else { next });
                self.publish(i, now);
            }
        }
    }

    fn all_open(&self) -> bool {
        self.conns.iter().all(|c| matches!(c.state, State::Open | State::Closed))
    }

    fn subscribers_ready(&self) -> bool {
        self.conns.iter().filter(|c| c.role == Role::Subscriber).all(|c| c.subscribed || c.state == State::Closed)
    }

    fn inflight(&self) -> usize {
        self.conns.iter().filter(|c| c.state == State::Open && c.inflight.is_some()).count()
    }

    /// Opens every connection added so far (and subscribes the subscribers).
    fn setup(&mut self, deadline: Instant) {
        self.run_until(deadline.min(Instant::now() + SETUP_TIMEOUT), |g| g.all_open() && g.subscribers_ready());
        let want = self.conns.len();
        let closed = self.conns.iter().filter(|c| c.state == State::Closed).count();
        if closed > 0 || !self.all_open() {
            eprintln!(
                "loadgen: {} of {want} connections open ({closed} failed; refusals {:?}, closes {:?}, io errors {})",
                self.stats.opened, self.stats.refused, self.stats.closes, self.stats.io_errors
            );
        }
    }

    /// The measured interval: publishers (and the probe) send for the
    /// duration, then the acks still in flight are collected.
    fn measure_sending(&mut self, hard_cap: Instant) -> (Duration, Option<ProcSample>, Option<ProcSample>) {
        let before = sample(self.opts.pid);
        let noise = Noise::start(self.opts.pid);
        let start = Instant::now();
        self.measuring = true;
        self.sending = true;
        for i in 0..self.conns.len() {
            if self.conns[i].state != State::Open {
                continue;
            }
            match self.conns[i].role {
                Role::Publisher => self.publish(i, start),
                Role::Probe | Role::HistProbe => self.conns[i].next_probe = Some(start),
                Role::Subscriber => {}
            }
        }
        let end = (start + self.opts.duration).min(hard_cap);
        self.run_until(end, |_| false);
        self.sending = false;
        // Collect what is in flight (bounded): its acks still count.
        self.run_until((Instant::now() + Duration::from_secs(5)).min(hard_cap), |g| g.inflight() == 0);
        // Let deliveries of the last commits arrive.
        if self.conns.iter().any(|c| c.role == Role::Subscriber) {
            self.run_until((Instant::now() + Duration::from_millis(500)).min(hard_cap), |_| false);
        }
        let elapsed =
            self.stats.last_ack.map_or(start.elapsed(), |t| t.duration_since(start)).max(Duration::from_millis(1));
        self.measuring = false;
        let after = sample(self.opts.pid);
        self.other_busy_pct = noise.other_pct(self.opts.pid);
        (elapsed, before, after)
    }
}

/// The unsigned integer right after `key` in `text`.
fn find_number(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
    })
}

fn ms(us: &Value, key: &str) -> String {
    us[key].as_u64().map_or("-".into(), |v| format!("{:.2} ms", v as f64 / 1000.0))
}

fn cpu_per(before: Option<ProcSample>, after: Option<ProcSample>, units: u64) -> Value {
    match (before, after) {
        (Some(b), Some(a)) if units > 0 => json!(((a.cpu_us - b.cpu_us) as f64 / units as f64 * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

// ---------------------------------------------------------------- scenarios

fn idle(g: &mut Gen, hard_cap: Instant) -> Value {
    let n = g.opts.conns;
    let before = sample(g.opts.pid);
    if before.is_none() {
        usage("idle needs --pid PID of the server (for its VmRSS)");
    }
    g.add(Role::Subscriber, n);
    let t0 = Instant::now();
    g.setup(hard_cap);
    let setup_secs = t0.elapsed().as_secs_f64();
    // Let the server settle, then measure.
    let noise = Noise::start(g.opts.pid);
    g.run_until((Instant::now() + Duration::from_secs(2)).min(hard_cap), |_| false);
    g.other_busy_pct = noise.other_pct(g.opts.pid);
    let after = sample(g.opts.pid);
    let (b, a) = (before.unwrap(), after.unwrap_or_default());
    let open = g.stats.subscribed;
    let per_conn = if open > 0 { (a.rss_bytes as f64 - b.rss_bytes as f64) / open as f64 } else { 0.0 };
    println!("idle: {open} of {n} connections open and subscribed to {:?} in {setup_secs:.2} s", g.opts.channel);
    println!("  server VmRSS before: {:.1} MiB", b.rss_bytes as f64 / 1048576.0);
    println!("  server VmRSS after:  {:.1} MiB", a.rss_bytes as f64 / 1048576.0);
    println!("  per connection:      {per_conn:.0} bytes");
    println!("  holding for {:?}", g.opts.hold);
    g.run_until((Instant::now() + g.opts.hold).min(hard_cap), |_| false);
    json!({
        "conns": n,
        "subscribed": open,
        "rss_before_bytes": b.rss_bytes,
        "rss_after_bytes": a.rss_bytes,
        "bytes_per_conn": per_conn.round(),
        "setup_s": (setup_secs * 1000.0).round() / 1000.0,
    })
}

fn publish(g: &mut Gen, hard_cap: Instant) -> Value {
    let p = g.opts.publishers;
    g.add(Role::Publisher, p);
    g.setup(hard_cap);
    let (elapsed, before, after) = g.measure_sending(hard_cap);
    let acked = g.stats.acked;
    let rate = acked as f64 / elapsed.as_secs_f64();
    let lat = percentiles(g.stats.pub_latency.as_ref().unwrap());
    let cpu = cpu_per(before, after, acked);
    println!(
        "publish: {p} publishers on {:?}, one publish in flight each, {:.1} s",
        g.opts.channel,
        elapsed.as_secs_f64()
    );
    println!("  acked publishes: {acked} ({rate:.0}/s)");
    println!("  pub→ack latency: p50 {} p99 {} max {}", ms(&lat, "p50_us"), ms(&lat, "p99_us"), ms(&lat, "max_us"));
    if !cpu.is_null() {
        println!("  server CPU: {cpu} µs per acked publish");
    }
    json!({
        "publishers": p,
        "acked": acked,
        "elapsed_s": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "acked_per_s": rate.round(),
        "latency": lat,
        "server_cpu_us_per_ack": cpu,
        "server_rss_after_bytes": after.map(|a| a.rss_bytes),
    })
}

fn fanout(g: &mut Gen, hard_cap: Instant) -> Value {
    let (s, p) = (g.opts.subscribers, g.opts.publishers);
    g.add(Role::Subscriber, s);
    g.add(Role::Publisher, p);
    g.add(Role::Probe, 1);
    g.add(Role::HistProbe, 1);
    g.setup(hard_cap);
    let (elapsed, before, after) = g.measure_sending(hard_cap);
    let secs = elapsed.as_secs_f64();
    let delivered = g.stats.delivered;
    let rate = delivered as f64 / secs;
    let probe = percentiles(g.stats.probe_latency.as_ref().unwrap());
    let hist = percentiles(g.stats.hist_latency.as_ref().unwrap());
    let pubs = percentiles(g.stats.pub_latency.as_ref().unwrap());
    let delivery = percentiles(g.stats.delivery_latency.as_ref().unwrap());
    let cpu = cpu_per(before, after, delivered);
    println!(
        "fanout: {s} subscribers and {p} publishers on {:?}, probes on \"probe\" every {PROBE_EVERY:?}, {secs:.1} s",
        g.opts.channel
    );
    println!("  acked publishes:  {} ({:.0}/s)", g.stats.acked, g.stats.acked as f64 / secs);
    println!("  delivered:        {delivered} messages ({rate:.0}/s)");
    println!(
        "  probe round trip: p50 {} p99 {} max {}",
        ms(&probe, "p50_us"),
        ms(&probe, "p99_us"),
        ms(&probe, "max_us")
    );
    println!("  hist round trip:  p50 {} p99 {} max {}", ms(&hist, "p50_us"), ms(&hist, "p99_us"), ms(&hist, "max_us"));
    println!("  pub→ack:          p50 {} p99 {} max {}", ms(&pubs, "p50_us"), ms(&pubs, "p99_us"), ms(&pubs, "max_us"));
    println!(
        "  pub→delivery:     p50 {} p99 {} max {}",
        ms(&delivery, "p50_us"),
        ms(&delivery, "p99_us"),
        ms(&delivery, "max_us")
    );
    if !cpu.is_null() {
        println!("  server CPU: {cpu} µs per delivered message");
    }
    json!({
        "subscribers": s,
        "publishers": p,
        "elapsed_s": (secs * 1000.0).round() / 1000.0,
        "acked": g.stats.acked,
        "acked_per_s": (g.stats.acked as f64 / secs).round(),
        "delivered": delivered,
        "delivered_per_s": rate.round(),
                "probe": probe,
        "hist_probe": hist,

        "pub_latency": pubs,
        "delivery_latency": delivery,
        "server_cpu_us_per_delivered": cpu,
        "server_rss_after_bytes": after.map(|a| a.rss_bytes),
    })
}

fn main() {
    let opts = parse_opts();
    let started = Instant::now();
    raise_fd_limit();
    let hard_cap = Instant::now() + SETUP_TIMEOUT + opts.duration.max(opts.hold) + HARD_CAP_SLACK;
    let scenario = opts.scenario.clone();
    let mut g = Gen::new(opts);
    let mut result = match scenario.as_str() {
        "idle" => idle(&mut g, hard_cap),
        "publish" => publish(&mut g, hard_cap),
        _ => fanout(&mut g, hard_cap),
    };
    let st = &g.stats;
    if !st.refused.is_empty() || !st.closes.is_empty() || !st.errors.is_empty() || st.io_errors > 0 {
        println!(
            "  problems: refusals {:?}, closes {:?}, errors {:?}, io errors {}",
            st.refused, st.closes, st.errors, st.io_errors
        );
    }
    let obj = result.as_object_mut().unwrap();
    obj.insert("scenario".into(), scenario.into());
    // The generator's own CPU share: near 100 % means it, not the server, was the limit.
    let own = own_cpu_us() as f64 / started.elapsed().as_micros().max(1) as f64 * 100.0;
    println!("  generator CPU: {own:.0} % of one core over the whole run");
    obj.insert("generator_cpu_pct".into(), json!(own.round()));
    if let Some(other) = g.other_busy_pct {
        let note = if other > 10.0 { " (other work competed for the CPU: treat these numbers as noisy)" } else { "" };
        println!("  other processes: {other:.1} % of the machine's CPU while measuring{note}");
        obj.insert("other_busy_pct".into(), json!(other));
    }
    obj.insert("opened".into(), st.opened.into());
    obj.insert("refused".into(), json!(st.refused));
    obj.insert("closes".into(), json!(st.closes.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>()));
    obj.insert("errors".into(), json!(st.errors));
    obj.insert("io_errors".into(), st.io_errors.into());
    println!("{result}");
}
