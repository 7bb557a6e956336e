//! roostd load generator: many WebSocket connections from one thread (mio),
//! frames and the HTTP upgrade written by hand, so the generator costs little
//! next to the server it measures. It also drives peer servers (`--peer`), so
//! roostd can be measured side by side with them.
//!
//! ```text
//! cargo run --release --example loadgen -- <scenario> --url ws://127.0.0.1:PORT [options]
//!
//!   idle     --conns N [--hold 5s]               server RSS per idle connection (subscribed; peers:
//!                                                `/idle`); prints `READY <n>` on stderr once set up
//!   publish  --publishers P [--channel bench]    acked durable publishes/s, pub→ack latency, server CPU
//!            [--rate R]                          per ack; closed loop or paced (roostd only)
//!   fanout   --subscribers S --publishers P      deliveries/s, pub→delivery latency, server CPU per
//!            [--rate R]                          delivery; closed loop, or R publishes/s in total
//!   echo     --conns C [--binary]                closed loop: each sends --payload bytes, waits for
//!                                                the echo (roostd: `serve --echo`; peers: `/echo`)
//!   upgrades --connectors K [--invalid-pct P]    K connectors loop connect, upgrade, drop: upgrades/s,
//!                                                refusals/s, connect→101 latency, server CPU each
//!   storm    --conns N                           N connections started at once: first connect → all
//!                                                ready, and connect → ready per connection
//!   slow     --subscribers S --slow-pct 1        fanout at --rate R (default 100) where slow-pct % of
//!            --rate R                            the subscribers never read: the others' latency,
//!                                                server RSS each second, slow ones the server closed
//!   churn    --conns N --churn-pct 10            N idle subscribers; churn-pct % of them per minute
//!            --duration 5m                       close and reconnect; server RSS and fds every 10 s
//!   replay   [--channel bench]                   one client resumes with `since: 0` and reads the
//!                                                channel's whole stored history: messages/s, server
//!                                                CPU per message (roostd only)
//!
//! common: --url ws://HOST:PORT (required)  --peer  --secret S (else $ROOSTD_SECRET; not needed with
//!         --peer)  --duration 10s  --pid PID (the server's)  --payload BYTES (default 64)
//!         --connecting N (handshakes at once during setup, default 1000)
//!         --threads T (echo, and fanout with --rate: the connections, or the subscribers, split over
//!         T threads that share the clock; counts and histograms are merged; default 1)
//!         --timed-every K --drain-every 20ms (paced fanout: one subscriber in K is read at once and
//!         times each message; the others are drained in bulk every D; all are counted and checked)
//! ```
//!
//! Defaults: `--conns` 1000 (`echo`: 100), `--publishers` 50 for `fanout`,
//! else 1, `--subscribers` 100, `--connectors` 10, `--invalid-pct` 0,
//! `--slow-pct` 1, `--churn-pct` 10, `--channel bench`, `--hold 5s`. No
//! `--rate`: closed loop (but `slow` paces at 100/s). `storm` ignores
//! `--connecting` and starts every connect at once (the OS and the server
//! queue them). `idle` prints `READY <n>` (n: connections ready) when setup
//! ends, i.e. once all are ready or after a warning line at the 60 s setup
//! timeout, then measures and holds: a script running several generators
//! may read the server's RSS itself once all of them said READY. `--pid`
//! is optional everywhere; without it the server numbers are null.
//!
//! **roostd (default).** Tokens are minted here from the shared secret (`sub`
//! = `loadgen-N`, read and write `*`) and sent as `/ws?token=`. Subscribers
//! send `sub` and are ready at `subok`. Published data is
//! `{"t":µs,"pad":"xx…"}` with `--payload` bytes of pad. Publish ids carry a
//! per-run nonce, so runs against the same store are never answered from the
//! dedupe table.
//!
//! **`--peer`.** Peer servers speak a bare protocol: any path is accepted,
//! no token. `/echo` echoes each message; `/sub` receives broadcasts; each
//! text message sent on `/pub` goes to every `/sub` connection; any other
//! path (`/idle` here) is held open. A connection is ready when upgraded.
//! Published text is `"<t> <conn> <n> "` (`t`: send time in µs since the
//! generator started) padded with `x` to `--payload` bytes (a roostd message
//! carries `--payload` bytes of pad inside its JSON envelope instead). An
//! echo message is `--payload` bytes of `x`, text or `--binary`, on either
//! server. `publish` needs acks, so it is roostd only.
//!
//! With `--pid` the generator samples the server's `/proc/PID/stat`
//! (utime + stime, all threads) and `/proc/PID/status` (VmRSS) around the
//! measured interval, and reports server CPU-µs per unit of work.
//!
//! **Publishing.** Without `--rate`, publishers keep exactly one publish in
//! flight: against roostd they send, wait for the ack and repeat; with
//! `--peer` (no acks) a publisher sends its next message once every
//! subscriber got the previous one (or after 5 s, counted as a stall). With
//! `--rate R`, R publishes per second in total are paced evenly over the
//! publishers in turn, whatever the answers (against roostd the pub→ack
//! latency of each is still measured); a generator more than 1 s behind
//! skips sends and counts them as `missed_sends`. The server's
//! per-connection publish rate (default 1000/s, burst 2000) may answer
//! `rate_limited`: closed-loop publishers then resend the same id 1 ms later
//! and count the refusal (shown under "problems"). Start the server with
//! `--publish-rate 0` for throughput runs.
//!
//! `fanout` against roostd without `--rate` also runs two probes, each a
//! round trip every 10 ms: `probe` publishes on its own channel and waits for
//! the ack (so it includes a commit), `hist` asks for history (no commit: how
//! long the event loop takes to answer while it fans out). With `--rate` or
//! `--peer` there are no probes (the paced publishes are measured instead).
//! Subscribers measure pub→delivery latency from the send time in the data.
//!
//! **Timed and drained subscribers (`--timed-every K`).** Reading every
//! frame the moment it lands costs the generator a wakeup and a read per
//! delivery (a million a second at 1,000 msg/s to 1,000 subscribers, as the
//! peers send one frame per message per subscriber). With K > 1 one
//! subscriber in K stays in the poller and times each message; the others
//! leave the poller once subscribed and are read every `--drain-every`,
//! many frames per read, parsed in place. The server writes to every
//! socket alike: a drained socket has a 1 MiB receive buffer (set before
//! connect) and its queue is read from SO_MEMINFO before each drain, so the
//! report shows it never came near full (a full one would make the
//! server's writes wait). Every subscriber, timed or not, checks that each
//! message number follows the last from its source (a jump is a lost
//! message) and counts what it got against what was published.
//!
//! `upgrades`: each connector connects, sends the upgrade (roostd: a valid
//! token, or for `--invalid-pct` % of attempts one with a bad signature;
//! peers: `/idle`), reads the status line and drops the socket, then starts
//! over (the drop is explained at `read_response`; the generator's side
//! keeps the TIME_WAIT, which Linux reuses on loopback). `slow`: the slow subscribers' sockets get a 4 KiB receive buffer and
//! are never read after `subok`/101; at the end they are read for up to 5 s
//! to see which ended in a close frame (its code) or EOF. `churn`: each
//! churned connection sends a close frame, waits for the server's (at most
//! 5 s), reconnects and resubscribes. RSS and descriptor samples (`slow`,
//! `churn`) need `--pid`.
//!
//! The generator also reports its own CPU share (near 100 % means it, not the
//! server, was the limit) and how much of the machine other processes used
//! while measuring (`other_busy_pct`: above ~10 % the numbers are noisy).
//!
//! Output: a human-readable summary, then one final line of JSON holding
//! every number. Every scenario stops by itself: after its duration, and in
//! any case after a hard cap (60 s of setup + the duration or hold + 30 s).

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use roostd::auth::{mint, Key};
use serde_json::{json, Value};

/// Handshakes under way at once while connections are set up (`--connecting`).
const MAX_CONNECTING: usize = 1000;
/// How long opening and subscribing every connection may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Beyond the scenario's own time, the generator never runs longer than this.
const HARD_CAP_SLACK: Duration = Duration::from_secs(30);
/// The probe's period in the fanout scenario.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// Wait before resending a publish the server refused as busy or rate limited.
const RETRY_AFTER: Duration = Duration::from_millis(1);
/// A closed-loop peer publisher whose message did not reach every subscriber
/// in this time sends the next one anyway (counted as a stall).
const STALL_AFTER: Duration = Duration::from_secs(5);
/// How far paced publishing may fall behind its schedule before sends are skipped.
const PACE_MAX_LAG: Duration = Duration::from_secs(1);
/// The receive buffer of a `slow` subscriber's socket (set before connect).
const SLOW_RCVBUF: libc::c_int = 4096;
/// The receive buffer of a bulk-drained subscriber (`--timed-every`), set
/// before connect (the kernel doubles it, and the window scale is agreed in
/// the handshake): room for seconds of its messages, so a drain delayed by
/// other work on the generator's core never closes the window the server
/// writes into. (At 1,000 msg/s of ~80-byte frames, each its own packet of
/// ~0.9 KB of kernel memory, a 20 ms drain leaves ~18 KB queued.)
const BULK_RCVBUF: libc::c_int = 1 << 20;
/// How long `slow` reads the slow sockets at the end to see which were closed.
const SLOW_DRAIN: Duration = Duration::from_secs(5);
/// How long a churned connection waits for the server's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Server samples (RSS, descriptors) in `slow` and `churn`.
const SLOW_SAMPLE_EVERY: Duration = Duration::from_secs(1);
const CHURN_SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The client mask. RFC 6455 wants every client frame masked, and servers
/// unmask whatever the key; an all-zero key spares the generator the XOR.
const MASK: [u8; 4] = [0; 4];

/// How often bulk-drained subscribers (`--timed-every`) are read by default.
/// At 1,000 msg/s of ~80-byte frames that is ~1.6 KB per socket per pass,
/// far below what such a socket may hold (BULK_RCVBUF).
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Above this share of its CPU budget the generator may be the limit, not
/// the server (issue 18: run.sh flags such results).
const GENERATOR_WARN_PCT: f64 = 70.0;

const SCENARIOS: [&str; 9] = ["idle", "publish", "fanout", "echo", "upgrades", "storm", "slow", "churn", "replay"];

// ---------------------------------------------------------------- options

#[derive(Clone)]
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
    peer: bool,
    binary: bool,
    /// Publishes per second in total (paced); None: closed loop.
    rate: Option<f64>,
    connectors: usize,
    invalid_pct: f64,
    slow_pct: f64,
    churn_pct: f64,
    connecting: usize,
    /// `echo`, paced `fanout` and `slow`: threads sharing the connections
    /// (fanout: the subscribers), so one core's worth of generator is never
    /// the limit.
    threads: usize,
    /// Paced `fanout`: one subscriber in this many is read as soon as data
    /// arrives and times each message; the others are drained in bulk every
    /// `drain_every` (counted and checked, not timed). 1: all are timed.
    timed_every: usize,
    drain_every: Duration,
}

fn usage(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    eprintln!(
        "usage: loadgen {} --url ws://HOST:PORT [--peer] [--secret S] [--duration 10s] [--pid PID]\n\
         \x20      [--conns N] [--hold 5s] [--publishers P] [--subscribers S] [--channel bench] [--payload BYTES]\n\
         \x20      [--rate R] [--binary] [--connectors K] [--invalid-pct P] [--slow-pct P] [--churn-pct P]\n\
         \x20      [--connecting N] [--threads T] [--timed-every K] [--drain-every 20ms]",
        SCENARIOS.join("|")
    );
    std::process::exit(2)
}

/// `10s`, `500ms`, `5m`: the server's own duration syntax.
fn parse_duration(s: &str) -> Option<Duration> {
    roostd::config::duration("duration", s).ok()
}

fn parse_opts() -> Opts {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_else(|| usage("name a scenario"));
    if !SCENARIOS.contains(&scenario.as_str()) {
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
        peer: false,
        binary: false,
        rate: None,
        connectors: 10,
        invalid_pct: 0.0,
        slow_pct: 1.0,
        churn_pct: 10.0,
        connecting: MAX_CONNECTING,
        threads: 1,
        timed_every: 1,
        drain_every: DRAIN_EVERY,
    };
    let mut url = None;
    let mut publishers = None;
    let mut conns = None;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--peer" => {
                o.peer = true;
                continue;
            }
            "--binary" => {
                o.binary = true;
                continue;
            }
            _ => {}
        }
        let v = args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: &str| v.parse::<usize>().unwrap_or_else(|_| usage(&format!("{flag} takes a number")));
        let dur = |v: &str| parse_duration(v).unwrap_or_else(|| usage(&format!("{flag} takes a duration like 10s")));
        let pct = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .unwrap_or_else(|| usage(&format!("{flag} takes a percentage from 0 to 100")))
        };
        match flag.as_str() {
            "--url" => url = Some(v),
            "--secret" => o.secret = v,
            "--duration" => o.duration = dur(&v),
            "--hold" => o.hold = dur(&v),
            "--pid" => o.pid = Some(num(&v) as u32),
            "--conns" => conns = Some(num(&v)),
            "--publishers" => publishers = Some(num(&v)),
            "--subscribers" => o.subscribers = num(&v),
            "--channel" => o.channel = v,
            "--payload" => o.payload = num(&v),
            "--rate" => {
                let r = v.parse::<f64>().ok().filter(|r| *r > 0.0);
                o.rate = Some(r.unwrap_or_else(|| usage("--rate takes a positive number (publishes/s)")));
            }
            "--connectors" => o.connectors = num(&v).max(1),
            "--invalid-pct" => o.invalid_pct = pct(&v),
            "--slow-pct" => o.slow_pct = pct(&v),
            "--churn-pct" => o.churn_pct = pct(&v),
            "--connecting" => o.connecting = num(&v).max(1),
            "--threads" => o.threads = num(&v).clamp(1, 64),
            "--timed-every" => o.timed_every = num(&v).max(1),
            "--drain-every" => o.drain_every = dur(&v).max(Duration::from_millis(1)),
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    o.publishers = publishers.unwrap_or(if o.scenario == "fanout" { 50 } else { 1 });
    o.conns = conns.unwrap_or(if o.scenario == "echo" { 100 } else { 1000 });
    if o.scenario == "slow" && o.rate.is_none() {
        o.rate = Some(100.0);
    }
    if o.threads > 1 && !(o.scenario == "echo" || o.scenario == "fanout" && o.rate.is_some()) {
        usage("--threads splits echo connections or the subscribers of a paced fanout (--rate): not this scenario");
    }
    if o.timed_every > 1 && !(o.scenario == "fanout" && o.rate.is_some()) {
        usage("--timed-every drains some subscribers in bulk: only a paced fanout (--rate) may, as the closed loop waits for every delivery");
    }
    if o.peer && (o.scenario == "publish" || o.scenario == "replay") {
        usage("publish and replay need roostd's acks and store: they have no --peer form");
    }
    if o.peer && o.scenario == "fanout" && o.rate.is_none() && o.subscribers == 0 {
        usage("fanout --peer without --rate paces publishers by deliveries: it needs --subscribers");
    }
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
    if !o.peer && o.secret.len() < 32 {
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

/// How many descriptors the server has open (entries of `/proc/PID/fd`).
fn open_fds(pid: Option<u32>) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{}/fd", pid?)).ok()?.count() as u64)
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

/// Server RSS and descriptors sampled on a period while a scenario runs.
struct Sampler {
    every: Duration,
    start: Instant,
    next: Instant,
    /// Seconds since start, VmRSS bytes, open descriptors.
    samples: Vec<(f64, u64, Option<u64>)>,
}

impl Sampler {
    fn new(every: Duration) -> Sampler {
        let now = Instant::now();
        Sampler { every, start: now, next: now, samples: Vec::new() }
    }

    fn take(&mut self, pid: Option<u32>, now: Instant) {
        if let Some(s) = sample(pid) {
            self.samples.push((now.duration_since(self.start).as_secs_f64(), s.rss_bytes, open_fds(pid)));
        }
    }

    fn json(&self) -> Value {
        let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
        self.samples.iter().map(|(t, rss, fds)| json!({"t_s": r3(*t), "rss_bytes": rss, "fds": fds})).collect()
    }

    fn max_rss(&self) -> Option<u64> {
        self.samples.iter().map(|s| s.1).max()
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

/// CPU time (user + system) the calling thread has used, in µs.
fn thread_cpu_us() -> u64 {
    rusage_cpu_us(libc::RUSAGE_THREAD)
}

/// CPUs this process may run on (its `taskset`).
fn allowed_cpus() -> usize {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return 1;
    }
    (unsafe { libc::CPU_COUNT(&set) } as usize).max(1)
}

/// CPU time (user + system) this process has used, in µs.
fn own_cpu_us() -> u64 {
    rusage_cpu_us(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of `getrusage(who)`, in µs.
fn rusage_cpu_us(who: libc::c_int) -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

// ---------------------------------------------------------------- sockets and frames

/// A non-blocking connect; with `rcvbuf`, SO_RCVBUF is set before connecting
/// (so the window the server sees is small from the start).
fn connect(addr: SocketAddr, rcvbuf: Option<libc::c_int>) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    let Some(size) = rcvbuf else { return TcpStream::connect(addr) };
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns; the stream closes it.
    let sock = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let size_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let set = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&size as *const libc::c_int).cast(), size_len)
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
            unsafe {
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            }
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            }
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let rc = unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len as libc::socklen_t) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from_std(sock))
}

/// A socket's receive queue as the kernel accounts it (SO_MEMINFO): the
/// memory its unread data holds (each packet's overhead included) and the
/// receive buffer it may fill (SO_RCVBUF), in bytes.
fn rmem_of(sock: &TcpStream) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd as _;
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1]; // SK_MEMINFO_VARS
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len)
    };
    let at = |k: libc::c_int| u64::from(info[k as usize]);
    (rc == 0).then(|| (at(libc::SK_MEMINFO_RMEM_ALLOC), at(libc::SK_MEMINFO_RCVBUF)))
}

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
    if MASK == [0; 4] {
        out.extend_from_slice(payload);
    } else {
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
    }
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
    /// Subscribes and counts deliveries (roostd `sub`; peer `/sub`).
    Subscriber,
    /// Like a subscriber, but never reads once ready (`slow`).
    Slow,
    /// Held open: subscribed (roostd) or on `/idle` (peer).
    Idle,
    /// Publishes: closed loop or paced (roostd `pub`; peer `/pub`).
    Publisher,
    /// Publishes once per PROBE_EVERY on its own channel.
    Probe,
    /// Asks for `hist` once per PROBE_EVERY: a round trip that needs no
    /// commit, so it shows how long the event loop itself takes to answer.
    HistProbe,
    /// Sends a message, waits for its echo, repeats.
    Echo,
    /// Connects, upgrades, drops the socket, repeats (`upgrades`).
    Upgrader,
}

impl Role {
    /// Roles that `sub` on roostd (and are ready only at `subok`).
    fn subscribes(self) -> bool {
        matches!(self, Role::Subscriber | Role::Slow | Role::Idle)
    }

    /// Roles with timers or work to start when measuring begins.
    fn active(self) -> bool {
        matches!(self, Role::Publisher | Role::Probe | Role::HistProbe | Role::Echo)
    }

    /// The path on a peer server.
    fn peer_path(self) -> &'static str {
        match self {
            Role::Subscriber | Role::Slow => "/sub",
            Role::Publisher => "/pub",
            Role::Echo => "/echo",
            _ => "/idle",
        }
    }
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
    /// Ready: subscribed (roostd subscriber roles) or upgraded (the rest).
    ready: bool,
    /// When connect() was called.
    started: Option<Instant>,
    /// The upgrade request (built, and its token minted, when the connection is added).
    request: Vec<u8>,
    /// Messages awaiting an answer (ack, hist, echo, or in peer mode every
    /// subscriber's delivery): id number and when first sent. Closed-loop
    /// roles keep at most one.
    inflight: VecDeque<(u64, Instant)>,
    next_id: u64,
    /// Resend the in-flight publish at this time (after a refusal); for a
    /// closed-loop peer publisher, give up waiting for deliveries then.
    retry_at: Option<Instant>,
    /// The probe's next send.
    next_probe: Option<Instant>,
    /// Closed-loop peer publisher: deliveries of the message in flight, and
    /// how many subscribers were ready when it was sent.
    got: usize,
    want: usize,
    /// Closed on purpose (churn): connect again once closed.
    reconnect: bool,
    /// How it ended: the server's close code, 1006 for EOF without one.
    ended: Option<u16>,
    /// A subscriber read in bulk by `drain_bulk` once ready (`--timed-every`).
    bulk: bool,
    /// Subscriber: messages received while measuring, and the last number
    /// seen per source (roostd: the channel's seq; peer: the publisher's
    /// message number), to find lost or reordered messages.
    received: u64,
    last: Vec<(usize, u64)>,
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
            ready: false,
            started: None,
            request: Vec::new(),
            inflight: VecDeque::new(),
            next_id: 0,
            retry_at: None,
            next_probe: None,
            got: 0,
            want: 0,
            reconnect: false,
            ended: None,
            bulk: false,
            received: 0,
            last: Vec::new(),
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
    /// The last completed unit of work (ack, echo, peer round).
    last_ack: Option<Instant>,
    delivered: u64,
    published: u64,
    missed_sends: u64,
    stalls: u64,
    echoed: u64,
    echo_mismatch: u64,
    upgrades: u64,
    upgrade_refusals: u64,
    upgrade_invalid_sent: u64,
    churned: u64,
    churn_close_timeouts: u64,
    pub_latency: Option<Histogram<u64>>,
    probe_latency: Option<Histogram<u64>>,
    hist_latency: Option<Histogram<u64>>,
    delivery_latency: Option<Histogram<u64>>,
    echo_latency: Option<Histogram<u64>>,
    upgrade_latency: Option<Histogram<u64>>,
    refusal_latency: Option<Histogram<u64>>,
    /// connect() → ready, per connection.
    ready_latency: Option<Histogram<u64>>,
    /// Messages a subscriber missed (a jump in the numbers it saw), and
    /// messages that came again or out of order.
    gaps: u64,
    disorder: u64,
    /// Bulk-drained subscribers: the most one socket held at a drain (bytes
    /// of data), and at the fullest, the receive-buffer memory its queue
    /// took (SO_MEMINFO, packet overhead included) and its SO_RCVBUF.
    bulk_max_backlog: u64,
    bulk_fullest: Option<(u64, u64)>,
    /// Received per subscriber at the end: the fewest and the most.
    sub_min: Option<u64>,
    sub_max: Option<u64>,
}

impl Stats {
    /// Keeps the fuller of two (memory used, receive buffer) readings.
    fn note_fullest(&mut self, seen: Option<(u64, u64)>) {
        let fuller = |a: (u64, u64), b: (u64, u64)| a.0 * b.1.max(1) > b.0 * a.1.max(1);
        if let Some(s) = seen.filter(|&s| self.bulk_fullest.is_none_or(|f| fuller(s, f))) {
            self.bulk_fullest = Some(s);
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

fn record(h: &mut Option<Histogram<u64>>, d: Duration) {
    let _ = h.as_mut().expect("histogram").record((d.as_micros() as u64).max(1));
}

/// Paced publishing (`--rate`): publish number `sent` is due at `start + sent / rate`.
struct Pacer {
    rate: f64,
    start: Instant,
    sent: u64,
    /// Index into `Gen::pubs` of the next publisher.
    turn: usize,
}

impl Pacer {
    fn due(&self, now: Instant) -> u64 {
        (now.duration_since(self.start).as_secs_f64() * self.rate) as u64 + 1
    }

    fn next_at(&self) -> Instant {
        self.start + Duration::from_secs_f64(self.sent as f64 / self.rate)
    }
}

/// Churn: one connection closes (and reconnects) every `every`.
struct Churn {
    every: Duration,
    next: Instant,
    cursor: usize,
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
    /// Publishers, probes, echoers and churn send while this is true.
    sending: bool,
    pad: String,
    /// Share of the machine that other processes used while measuring.
    other_busy_pct: Option<f64>,
    /// Connections waiting to connect, in order.
    waiting: VecDeque<usize>,
    /// Connections in connect or handshake, and how many may be.
    connecting: usize,
    max_connecting: usize,
    /// Connections of the `active` roles; and the publishers alone.
    active: Vec<usize>,
    pubs: Vec<usize>,
    /// Connections ready now, subscribers among them, and closed for good.
    ready: usize,
    subs_ready: usize,
    dead: usize,
    first_connect: Option<Instant>,
    last_ready: Option<Instant>,
    pacer: Option<Pacer>,
    churn: Option<Churn>,
    /// Churned connections waiting for the server's close frame, with a deadline.
    closing: Vec<(usize, Instant)>,
    sampler: Option<Sampler>,
    /// `slow`: read the slow connections again (at the end).
    draining: bool,
    /// `upgrades`: the request with a valid token, and with a bad signature.
    upgrade_reqs: Option<(Vec<u8>, Vec<u8>)>,
    invalid_acc: f64,
    /// `echo`: the message every connection sends.
    echo_msg: Vec<u8>,
    scratch: Vec<u8>,
    /// Token subjects of this generator's connections start here
    /// (`loadgen-{id_base + n}`): each thread has its own range.
    id_base: usize,
    /// CPU of the busiest generator thread over the run (µs), once known.
    busiest_thread_us: Option<u64>,
    /// Helper threads (`--threads`) and the flags they follow.
    helpers: Vec<std::thread::JoinHandle<Helped>>,
    share: Option<std::sync::Arc<Share>>,
    /// Subscribers added so far (every `timed_every`-th is timed), the ready
    /// ones read in bulk, and their next drain.
    subs_added: usize,
    bulk_subs: Vec<usize>,
    next_drain: Option<Instant>,
    /// The generator's CPU and the wall time while publishers sent (µs).
    window_cpu: Option<(u64, u64)>,
}

/// What helper threads follow: the main thread's measuring and sending.
struct Share {
    measuring: std::sync::atomic::AtomicBool,
    sending: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
    ready: std::sync::Barrier,
}

/// A helper thread's results: its stats, connections ready, and its own CPU.
struct Helped {
    stats: Stats,
    ready: usize,
    cpu_us: u64,
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
        let max_connecting = opts.connecting;
        Gen {
            opts,
            poll: Poll::new().expect("a poller"),
            conns: Vec::new(),
            stats: Stats {
                pub_latency: Some(histogram()),
                probe_latency: Some(histogram()),
                hist_latency: Some(histogram()),
                delivery_latency: Some(histogram()),
                echo_latency: Some(histogram()),
                upgrade_latency: Some(histogram()),
                refusal_latency: Some(histogram()),
                ready_latency: Some(histogram()),
                ..Stats::default()
            },
            base: Instant::now(),
            nonce,
            key,
            measuring: false,
            sending: false,
            pad,
            other_busy_pct: None,
            waiting: VecDeque::new(),
            connecting: 0,
            max_connecting,
            active: Vec::new(),
            pubs: Vec::new(),
            ready: 0,
            subs_ready: 0,
            dead: 0,
            first_connect: None,
            last_ready: None,
            pacer: None,
            churn: None,
            closing: Vec::new(),
            sampler: None,
            draining: false,
            upgrade_reqs: None,
            invalid_acc: 0.0,
            echo_msg: Vec::new(),
            scratch: vec![0; 64 * 1024],
            id_base: 0,
            busiest_thread_us: None,
            helpers: Vec::new(),
            share: None,
            subs_added: 0,
            bulk_subs: Vec::new(),
            next_drain: None,
            window_cpu: None,
        }
    }

    /// `--threads T`: T - 1 helper threads, each with its share of `count`
    /// connections of `role`; this thread keeps the rest (and whatever else
    /// it adds). Returns how many this thread keeps.
    fn spawn_helpers(&mut self, role: Role, count: usize, hard_cap: Instant) -> usize {
        use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
        let t = self.opts.threads.min(count.max(1));
        if t <= 1 {
            return count;
        }
        let share = std::sync::Arc::new(Share {
            measuring: AtomicBool::new(false),
            sending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ready: std::sync::Barrier::new(t),
        });
        for k in 1..t {
            let each = count / t + usize::from(k < count % t);
            let (opts, base, msg, share) = (self.opts.clone(), self.base, self.echo_msg.clone(), share.clone());
            self.helpers.push(std::thread::spawn(move || {
                let mut g = Gen::new(opts);
                (g.base, g.echo_msg, g.id_base) = (base, msg, k * 1_000_000);
                g.add(role, each);
                g.setup(hard_cap);
                share.ready.wait();
                let mut was = false;
                while !share.stop.load(Relaxed) && Instant::now() < hard_cap {
                    g.measuring = share.measuring.load(Relaxed);
                    let on = share.sending.load(Relaxed);
                    if on && !was {
                        g.sending = true;
                        let now = Instant::now();
                        for j in 0..g.active.len() {
                            g.kick(g.active[j], now);
                        }
                    }
                    g.sending = on;
                    was = on;
                    g.run_until(Instant::now() + Duration::from_millis(10), |_| false);
                }
                g.drain_bulk(Instant::now());
                g.tally_subscribers();
                Helped { stats: std::mem::take(&mut g.stats), ready: g.ready, cpu_us: thread_cpu_us() }
            }));
        }
        self.share = Some(share);
        count / t + usize::from(!count.is_multiple_of(t))
    }

    /// Sets measuring and sending here and in the helper threads.
    fn set_flags(&mut self, measuring: bool, sending: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.measuring, self.sending) = (measuring, sending);
        if let Some(share) = &self.share {
            share.measuring.store(measuring, Relaxed);
            share.sending.store(sending, Relaxed);
        }
    }

    /// Stops the helper threads and adds their counts and histograms to
    /// this thread's; returns the busiest thread's CPU (µs), this one's included.
    fn join_helpers(&mut self) -> u64 {
        let mut busiest = thread_cpu_us();
        let Some(share) = self.share.take() else { return busiest };
        share.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.helpers.drain(..) {
            let Ok(h) = h.join() else { continue };
            busiest = busiest.max(h.cpu_us);
            let (st, o) = (&mut self.stats, h.stats);
            self.ready += h.ready;
            st.opened += o.opened;
            st.subscribed += o.subscribed;
            st.io_errors += o.io_errors;
            for (k, v) in o.refused {
                *st.refused.entry(k).or_default() += v;
            }
            for (k, v) in o.closes {
                *st.closes.entry(k).or_default() += v;
            }
            for (k, v) in o.errors {
                *st.errors.entry(k).or_default() += v;
            }
            st.delivered += o.delivered;
            (st.gaps, st.disorder) = (st.gaps + o.gaps, st.disorder + o.disorder);
            st.bulk_max_backlog = st.bulk_max_backlog.max(o.bulk_max_backlog);
            st.note_fullest(o.bulk_fullest);
            st.sub_min = [st.sub_min, o.sub_min].into_iter().flatten().min();
            st.sub_max = st.sub_max.max(o.sub_max);
            st.echoed += o.echoed;
            st.echo_mismatch += o.echo_mismatch;
            st.last_ack = st.last_ack.max(o.last_ack);
            for (mine, theirs) in [
                (&mut st.delivery_latency, o.delivery_latency),
                (&mut st.echo_latency, o.echo_latency),
                (&mut st.ready_latency, o.ready_latency),
            ] {
                if let (Some(m), Some(t)) = (mine.as_mut(), theirs) {
                    let _ = m.add(t);
                }
            }
        }
        busiest
    }

    /// Adds connections; they connect as soon as the loop runs.
    fn add(&mut self, role: Role, count: usize) -> std::ops::Range<usize> {
        let first = self.conns.len();
        for _ in 0..count {
            let n = self.conns.len();
            let mut c = Conn::new(role, n);
            if role == Role::Subscriber {
                c.bulk = !self.subs_added.is_multiple_of(self.opts.timed_every);
                self.subs_added += 1;
            }
            c.request = match role {
                Role::Upgrader => Vec::new(), // one of `upgrade_reqs`, chosen per attempt
                _ if self.opts.peer => self.request(role.peer_path()),
                _ => self.request(&format!("/ws?token={}", self.token(&format!("loadgen-{}", self.id_base + n)))),
            };
            self.conns.push(c);
            self.waiting.push_back(n);
            if role.active() {
                self.active.push(n);
            }
            if role == Role::Publisher {
                self.pubs.push(n);
            }
        }
        first..self.conns.len()
    }

    fn token(&self, sub: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = json!({"sub": sub, "iat": now, "exp": now + 3600, "read": ["*"], "write": ["*"]});
        mint(&claims, &self.key)
    }

    fn request(&self, target: &str) -> Vec<u8> {
        format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.opts.host
        )
        .into_bytes()
    }

    fn upgrade_request(&mut self, i: usize) -> Vec<u8> {
        let c = &self.conns[i];
        let Some((valid, invalid)) = self.upgrade_reqs.as_ref().filter(|_| c.role == Role::Upgrader) else {
            return c.request.clone();
        };
        // Spread the invalid share evenly over the attempts.
        self.invalid_acc += self.opts.invalid_pct;
        if self.invalid_acc >= 100.0 {
            self.invalid_acc -= 100.0;
            if self.measuring {
                self.stats.upgrade_invalid_sent += 1;
            }
            return invalid.clone();
        }
        valid.clone()
    }

    /// Starts waiting connections, keeping at most `max_connecting` in handshake.
    fn start_connections(&mut self) {
        while self.connecting < self.max_connecting {
            let Some(i) = self.waiting.pop_front() else { return };
            let rcvbuf = match &self.conns[i] {
                c if c.role == Role::Slow => Some(SLOW_RCVBUF),
                c if c.bulk => Some(BULK_RCVBUF),
                _ => None,
            };
            let now = Instant::now();
            match connect(self.opts.addr, rcvbuf) {
                Ok(mut sock) => {
                    let registered =
                        self.poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE);
                    if registered.is_err() {
                        self.stats.io_errors += 1;
                        self.conns[i].state = State::Closed;
                        self.dead += 1;
                        continue;
                    }
                    let request = self.upgrade_request(i);
                    let c = &mut self.conns[i];
                    c.sock = Some(sock);
                    c.state = State::Connecting;
                    c.out = request;
                    c.out_pos = 0;
                    c.inbuf.clear();
                    c.ended = None;
                    c.started = Some(now);
                    self.connecting += 1;
                    self.first_connect.get_or_insert(now);
                }
                Err(e) => {
                    if self.stats.io_errors == 0 {
                        eprintln!("loadgen: connect failed: {e}");
                    }
                    self.stats.io_errors += 1;
                    if self.conns[i].role == Role::Upgrader && self.sending {
                        self.waiting.push_back(i); // try again (the loop turn paces it)
                        return;
                    }
                    self.conns[i].state = State::Closed;
                    self.dead += 1;
                }
            }
        }
    }

    fn send_text(&mut self, i: usize, text: &str) {
        push_frame(&mut self.conns[i].out, 0x1, text.as_bytes());
        self.flush(i);
    }

    fn publish(&mut self, i: usize, now: Instant) {
        let paced = self.pacer.is_some();
        let c = &mut self.conns[i];
        if c.role == Role::HistProbe {
            c.inflight.push_back((0, now));
            return self.send_text(i, r#"{"op":"hist","ch":"probe","limit":1,"id":"h"}"#);
        }
        let (id, first_sent) = match c.inflight.front() {
            Some(&pending) if !paced && !self.opts.peer => pending, // a resend keeps its id and its start time
            _ => {
                c.next_id += 1;
                if self.measuring && c.role == Role::Publisher {
                    self.stats.published += 1;
                }
                (c.next_id, now)
            }
        };
        if !paced {
            c.inflight.clear();
        }
        if !(paced && self.opts.peer) {
            c.inflight.push_back((id, first_sent)); // paced peer publishes expect no answer
        }
        c.retry_at = None;
        let t = now.duration_since(self.base).as_micros();
        let text = if self.opts.peer {
            if !paced {
                c.got = 0;
                c.want = self.subs_ready;
                c.retry_at = Some(now + STALL_AFTER);
            }
            let mut text = format!("{t} {i} {id} ");
            text.push_str(&self.pad[..self.opts.payload.saturating_sub(text.len())]);
            text
        } else {
            let ch = if c.role == Role::Probe { "probe" } else { self.opts.channel.as_str() };
            format!(
                r#"{{"op":"pub","ch":"{ch}","id":"{}-{}-{id}","data":{{"t":{t},"pad":"{}"}}}}"#,
                self.nonce, c.n, self.pad
            )
        };
        self.send_text(i, &text);
    }

    fn send_echo(&mut self, i: usize, now: Instant) {
        let opcode = if self.opts.binary { 0x2 } else { 0x1 };
        push_frame(&mut self.conns[i].out, opcode, &self.echo_msg);
        self.conns[i].inflight.push_back((0, now));
        self.flush(i);
    }

    /// Starts a role's work when measuring begins.
    fn kick(&mut self, i: usize, now: Instant) {
        if self.conns[i].state != State::Open {
            return;
        }
        match self.conns[i].role {
            Role::Publisher if self.pacer.is_none() => self.publish(i, now),
            Role::Probe | Role::HistProbe => self.conns[i].next_probe = Some(now),
            Role::Echo => self.send_echo(i, now),
            _ => {}
        }
    }

    fn set_ready(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        if c.ready {
            return;
        }
        c.ready = true;
        self.ready += 1;
        if c.role == Role::Subscriber {
            self.subs_ready += 1;
        }
        if let Some(t) = c.started {
            record(&mut self.stats.ready_latency, now.duration_since(t));
        }
        self.last_ready = Some(now);
        if c.bulk {
            // Out of the poller: read only by `drain_bulk`, so data arriving
            // on it wakes nobody and costs the generator no event.
            if let Some(sock) = c.sock.as_mut() {
                let _ = self.poll.registry().deregister(sock);
            }
            self.bulk_subs.push(i);
            self.next_drain.get_or_insert(now + self.opts.drain_every);
        }
    }

    /// Drops the socket. Upgraders (while sending) and churned connections
    /// go back to the queue; the rest are closed for good.
    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut sock) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        if matches!(c.state, State::Connecting | State::Handshake) {
            self.connecting -= 1;
        }
        if c.ready {
            self.ready -= 1;
            if c.role == Role::Subscriber {
                self.subs_ready -= 1;
            }
        }
        c.ready = false;
        c.subscribed = false;
        c.inflight.clear();
        c.retry_at = None;
        c.next_probe = None;
        let again = c.reconnect || (c.role == Role::Upgrader && self.sending);
        c.reconnect = false;
        if again {
            c.state = State::Waiting;
            self.waiting.push_back(i);
        } else if c.state != State::Closed {
            c.state = State::Closed;
            self.dead += 1;
        }
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
        if i >= self.conns.len() || matches!(self.conns[i].state, State::Closed | State::Waiting) {
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
        let mut scratch = std::mem::take(&mut self.scratch);
        self.read_with(i, now, &mut scratch, false);
        self.scratch = scratch;
    }

    /// Reads until WouldBlock, handling what came after every chunk (so a
    /// long backlog never piles up here); returns the bytes read. With
    /// `drain` (a bulk subscriber, not in the poller) a short read ends it:
    /// the socket was empty a moment ago and the next drain comes anyway,
    /// which spares the read that would say WouldBlock.
    fn read_with(&mut self, i: usize, now: Instant, scratch: &mut [u8], drain: bool) -> u64 {
        let mut total = 0;
        loop {
            let c = &mut self.conns[i];
            if c.role == Role::Slow && c.ready && !self.draining {
                return total; // a slow consumer: nothing more is read until the end
            }
            let Some(sock) = c.sock.as_mut() else { return total };
            let n = match sock.read(scratch) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return total,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            total += n as u64;
            match c.state {
                State::Handshake => {
                    c.inbuf.extend_from_slice(&scratch[..n]);
                    self.read_response(i, now);
                    if self.conns[i].state == State::Open {
                        self.read_frames(i, now);
                    }
                }
                State::Open => self.take_frames(i, &scratch[..n], now),
                _ => {}
            }
            if drain && n < scratch.len() {
                return total;
            }
        }
        // End of stream (or a read error).
        let c = &mut self.conns[i];
        match c.state {
            State::Open => {
                // Closed without a Close frame.
                *self.stats.closes.entry(1006).or_default() += 1;
                c.ended = Some(1006);
            }
            State::Connecting | State::Handshake => self.stats.io_errors += 1,
            State::Waiting | State::Closed => return total,
        }
        self.close(i);
        total
    }

    /// Reads every bulk subscriber once (see `--timed-every`), noting the
    /// most one of them held: the bound on what a server could find queued.
    fn drain_bulk(&mut self, now: Instant) {
        let mut scratch = std::mem::take(&mut self.scratch);
        for k in 0..self.bulk_subs.len() {
            let i = self.bulk_subs[k];
            if self.conns[i].state != State::Open {
                continue;
            }
            // What the unread data holds of the receive buffer (a full one
            // would close the window and make the server's writes wait).
            let seen = self.conns[i].sock.as_ref().and_then(rmem_of);
            self.stats.note_fullest(seen);
            let got = self.read_with(i, now, &mut scratch, true);
            self.stats.bulk_max_backlog = self.stats.bulk_max_backlog.max(got);
        }
        self.scratch = scratch;
    }

    /// Frames just read on an open connection: handled straight from `data`
    /// when nothing was left over, so only a partial frame is copied.
    fn take_frames(&mut self, i: usize, data: &[u8], now: Instant) {
        if !self.conns[i].inbuf.is_empty() {
            self.conns[i].inbuf.extend_from_slice(data);
            return self.read_frames(i, now);
        }
        if let Some(used) = self.handle_frames(i, data, now) {
            self.conns[i].inbuf.extend_from_slice(&data[used..]);
        }
    }

    fn read_response(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else { return };
        let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
        if c.role == Role::Upgrader {
            let took = now.duration_since(c.started.unwrap_or(now));
            if self.measuring {
                match status.as_str() {
                    "101" => {
                        self.stats.upgrades += 1;
                        record(&mut self.stats.upgrade_latency, took);
                    }
                    "401" => {
                        self.stats.upgrade_refusals += 1;
                        record(&mut self.stats.refusal_latency, took);
                    }
                    _ => *self.stats.refused.entry(status).or_default() += 1,
                }
            }
            // Drop the socket right after the status line, with no close
            // frame: the cheapest way out for both sides, and the same for
            // every server (each sees an EOF on a fresh connection and has
            // nothing to answer; a close frame would make it parse the frame
            // and write a reply we would not read). After a 401 the server
            // closes anyway. The generator's side takes the TIME_WAIT.
            return self.close(i);
        }
        if status != "101" {
            // A refusal: status and the {"error":...} body (if it came with the head).
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
        self.connecting -= 1;
        self.stats.opened += 1;
        if c.role.subscribes() && !self.opts.peer {
            let text = format!(r#"{{"op":"sub","ch":"{}","id":"s"}}"#, self.opts.channel);
            self.send_text(i, &text);
        } else {
            self.set_ready(i, now);
            if self.sending {
                self.kick(i, now);
            }
        }
    }

    /// The frames in the connection's buffer; what is left is a partial frame.
    fn read_frames(&mut self, i: usize, now: Instant) {
        // Taken out so the handlers may borrow self; put back with its capacity.
        let mut buf = std::mem::take(&mut self.conns[i].inbuf);
        let used = self.handle_frames(i, &buf, now);
        buf.drain(..used.unwrap_or(buf.len()));
        if self.conns[i].inbuf.is_empty() {
            self.conns[i].inbuf = buf;
        }
    }

    /// Handles each complete frame at the start of `buf`; returns the bytes
    /// used, or None once the connection is no longer open.
    fn handle_frames(&mut self, i: usize, buf: &[u8], now: Instant) -> Option<usize> {
        let mut at = 0;
        while let Some((opcode, range, len)) = parse_frame(&buf[at..]) {
            let payload = &buf[at + range.start..at + range.end];
            at += len;
            match opcode {
                0x1 | 0x2 => self.on_message(i, opcode, payload, now),
                0x8 => {
                    let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                    let c = &mut self.conns[i];
                    c.ended = Some(code);
                    if !c.reconnect {
                        *self.stats.closes.entry(code).or_default() += 1;
                    }
                    self.close(i);
                    return None;
                }
                0x9 => {
                    push_frame(&mut self.conns[i].out, 0xA, payload);
                    self.flush(i);
                }
                _ => {} // pong, continuation: not expected, ignored
            }
            if self.conns[i].state != State::Open {
                return None;
            }
        }
        Some(at)
    }

    fn on_message(&mut self, i: usize, opcode: u8, payload: &[u8], now: Instant) {
        if self.conns[i].role == Role::Echo {
            return self.on_echo(i, payload, now);
        }
        if opcode != 0x1 {
            return;
        }
        if self.opts.peer {
            self.on_peer_text(i, payload, now)
        } else {
            self.on_text(i, payload, now)
        }
    }

    fn on_echo(&mut self, i: usize, payload: &[u8], now: Instant) {
        let Some((_, sent)) = self.conns[i].inflight.pop_front() else { return };
        if self.measuring {
            if payload == self.echo_msg.as_slice() {
                self.stats.echoed += 1;
                self.stats.last_ack = Some(now);
                record(&mut self.stats.echo_latency, now.duration_since(sent));
            } else {
                self.stats.echo_mismatch += 1;
            }
        }
        if self.sending {
            self.send_echo(i, now);
        }
    }

    /// The time a delivered message was sent (µs since `base`) → its latency.
    fn record_delivery(&mut self, t: Option<u64>, now: Instant) {
        if !self.measuring {
            return;
        }
        self.stats.delivered += 1;
        if let Some(t) = t {
            let lat = (now.duration_since(self.base).as_micros() as u64).saturating_sub(t);
            let _ = self.stats.delivery_latency.as_mut().unwrap().record(lat.max(1));
        }
    }

    /// A subscriber's message number `n` from source `from`: counted while
    /// measuring, and checked to follow the last one from that source (a
    /// peer's publisher numbers its messages from 1; roostd's first seq is
    /// taken as given, as the store may hold older ones).
    fn check_order(&mut self, i: usize, from: usize, n: Option<u64>) {
        let c = &mut self.conns[i];
        if !self.measuring || c.role != Role::Subscriber {
            return;
        }
        c.received += 1;
        let Some(n) = n else { return };
        let st = &mut self.stats;
        match c.last.iter_mut().find(|e| e.0 == from) {
            Some(e) => {
                if n > e.1 + 1 {
                    st.gaps += n - e.1 - 1;
                } else if n <= e.1 {
                    st.disorder += 1;
                }
                e.1 = e.1.max(n);
            }
            None => {
                if self.opts.peer {
                    st.gaps += n - 1;
                }
                c.last.push((from, n));
            }
        }
    }

    /// The fewest and the most messages a subscriber received.
    fn tally_subscribers(&mut self) {
        let counts = || self.conns.iter().filter(|c| c.role == Role::Subscriber).map(|c| c.received);
        (self.stats.sub_min, self.stats.sub_max) = (counts().min(), counts().max());
    }

    /// A peer broadcast: `"<t> <conn> <n> xxx…"`.
    fn on_peer_text(&mut self, i: usize, text: &[u8], now: Instant) {
        let mut fields = text.split(|&b| b == b' ').map(parse_u64);
        let (t, from, id) = (fields.next().flatten(), fields.next().flatten(), fields.next().flatten());
        self.check_order(i, from.unwrap_or(u64::MAX) as usize, id);
        // A bulk subscriber's copy is counted, not timed: it waited for the drain.
        self.record_delivery(t.filter(|_| !self.conns[i].bulk), now);
        // Closed loop: the publisher sends again once every subscriber has it.
        let (Some(p), Some(id)) = (from, id) else { return };
        let p = p as usize;
        if self.pacer.is_some() || p >= self.conns.len() || self.conns[p].role != Role::Publisher {
            return;
        }
        let c = &mut self.conns[p];
        if c.inflight.front().map(|f| f.0) != Some(id) {
            return;
        }
        c.got += 1;
        if c.got >= c.want {
            c.inflight.clear();
            c.retry_at = None;
            if self.measuring {
                self.stats.last_ack = Some(now);
            }
            if self.sending {
                self.publish(p, now);
            }
        }
    }

    /// The in-flight entry an answer with `id` belongs to (earlier ones were
    /// answered by an error or not at all: dropped).
    fn take_inflight(&mut self, i: usize, id: Option<u64>) -> Option<(u64, Instant)> {
        let q = &mut self.conns[i].inflight;
        match id {
            Some(id) if q.iter().any(|f| f.0 == id) => {
                while let Some(f) = q.pop_front() {
                    if f.0 == id {
                        return Some(f);
                    }
                }
                None
            }
            Some(_) if self.pacer.is_some() => None,
            _ => q.pop_front(),
        }
    }

    fn on_text(&mut self, i: usize, text: &[u8], now: Instant) {
        if text.starts_with(br#"{"op":"msg""#) {
            // The hot path in fanout: counted, checked, and (unless drained
            // in bulk) timed by the `t` in the data.
            self.check_order(i, 0, msg_seq(text));
            let t = if self.conns[i].bulk { None } else { find_number(text, br#""data":{"t":"#) };
            return self.record_delivery(t, now);
        }
        if text.starts_with(br#"{"op":"ack""#) {
            let Some((_, sent)) = self.take_inflight(i, reply_id(text)) else { return };
            let lat = now.duration_since(sent);
            let role = self.conns[i].role;
            if self.measuring {
                let h = if role == Role::Probe { &mut self.stats.probe_latency } else { &mut self.stats.pub_latency };
                record(h, lat);
                if role == Role::Publisher {
                    self.stats.acked += 1;
                    self.stats.last_ack = Some(now);
                }
            }
            if role == Role::Publisher && self.sending && self.pacer.is_none() {
                self.publish(i, now);
            }
            return;
        }
        if text.starts_with(br#"{"op":"hist""#) {
            let Some((_, sent)) = self.conns[i].inflight.pop_front() else { return };
            if self.measuring {
                record(&mut self.stats.hist_latency, now.duration_since(sent));
            }
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(text) else { return };
        match v["op"].as_str() {
            Some("subok") if !self.conns[i].subscribed => {
                self.conns[i].subscribed = true;
                self.stats.subscribed += 1;
                self.set_ready(i, now);
            }
            Some("err") => {
                let code = v["code"].as_str().unwrap_or("?").to_string();
                if self.stats.errors.is_empty() {
                    eprintln!("loadgen: first error from the server: {v}");
                }
                *self.stats.errors.entry(code).or_default() += 1;
                if self.pacer.is_some() {
                    // Paced: the refused publish is not sent again.
                    let _ = self.take_inflight(i, reply_id(text));
                } else if !self.conns[i].inflight.is_empty() {
                    self.conns[i].retry_at = Some(now + RETRY_AFTER);
                }
            }
            _ => {}
        }
    }

    /// The earliest timer, if any.
    fn next_timer(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for &i in &self.active {
            let c = &self.conns[i];
            // The probe's tick counts only while it may send.
            let probe = c.next_probe.filter(|_| self.sending && c.inflight.is_empty());
            for t in [c.retry_at, probe].into_iter().flatten() {
                at(t);
            }
        }
        if let Some(p) = self.pacer.as_ref().filter(|_| self.sending) {
            at(p.next_at());
        }
        if let Some(c) = self.churn.as_ref().filter(|_| self.sending) {
            at(c.next);
        }
        for &(_, t) in &self.closing {
            at(t);
        }
        if let Some(s) = &self.sampler {
            at(s.next);
        }
        if let Some(t) = self.next_drain {
            at(t);
        }
        next
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
            let wake = self.next_timer().map_or(until, |t| t.min(until));
            let timeout = wake.saturating_duration_since(now).min(Duration::from_millis(100));
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
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
        for k in 0..self.active.len() {
            let i = self.active[k];
            let c = &mut self.conns[i];
            if c.state != State::Open {
                continue;
            }
            if c.retry_at.is_some_and(|t| t <= now) {
                c.retry_at = None;
                if self.opts.peer {
                    // Not every subscriber got it in time: go on without.
                    self.stats.stalls += 1;
                    c.inflight.clear();
                    if self.sending {
                        self.publish(i, now);
                    }
                } else if self.sending || !c.inflight.is_empty() {
                    self.publish(i, now);
                }
                continue;
            }
            if matches!(c.role, Role::Probe | Role::HistProbe)
                && self.sending
                && c.inflight.is_empty()
                && c.next_probe.is_some_and(|t| t <= now)
            {
                let next = c.next_probe.unwrap() + PROBE_EVERY;
                c.next_probe = Some(if next <= now { now + PROBE_EVERY } else { next });
                self.publish(i, now);
            }
        }
        if self.sending {
            self.pace(now);
            self.churn_tick(now);
        }
        if !self.closing.is_empty() {
            let mut closing = std::mem::take(&mut self.closing);
            closing.retain(|&(i, deadline)| {
                let c = &self.conns[i];
                if c.state != State::Open || !c.reconnect {
                    return false; // closed already, and queued to reconnect
                }
                if deadline > now {
                    return true;
                }
                self.stats.churn_close_timeouts += 1;
                self.close(i);
                false
            });
            self.closing = closing;
        }
        if let Some(s) = self.sampler.as_mut().filter(|s| s.next <= now) {
            s.take(self.opts.pid, now);
            s.next += s.every;
        }
        if let Some(t) = self.next_drain.filter(|&t| t <= now) {
            self.drain_bulk(now);
            let next = t + self.opts.drain_every;
            self.next_drain = Some(if next <= now { now + self.opts.drain_every } else { next });
        }
    }

    /// Paced publishing: sends what is due, the publishers taking turns.
    fn pace(&mut self, now: Instant) {
        let Some(p) = self.pacer.as_mut() else { return };
        let due = p.due(now);
        let lag = (p.rate * PACE_MAX_LAG.as_secs_f64()).max(1.0) as u64;
        if due > p.sent + lag {
            self.stats.missed_sends += due - p.sent - lag;
            p.sent = due - lag;
        }
        let mut closed_turns = 0;
        while let Some(p) = self.pacer.as_mut().filter(|p| p.sent < due) {
            if closed_turns >= self.pubs.len() {
                p.sent = due; // no publisher is open: nothing can be sent
                break;
            }
            let i = self.pubs[p.turn % self.pubs.len()];
            p.turn = p.turn.wrapping_add(1);
            if self.conns[i].state != State::Open {
                closed_turns += 1;
                continue;
            }
            closed_turns = 0;
            p.sent += 1;
            self.publish(i, now);
        }
    }

    /// Churn: closes the next ready connection when its time comes.
    fn churn_tick(&mut self, now: Instant) {
        let Some(mut ch) = self.churn.take() else { return };
        while ch.next <= now {
            ch.next += ch.every;
            // The next ready connection in turn (at most one full round).
            let n = self.conns.len();
            let found = (0..n).map(|k| (ch.cursor + k) % n).find(|&i| {
                let c = &self.conns[i];
                c.ready && c.state == State::Open && !c.reconnect
            });
            let Some(i) = found else { break };
            ch.cursor = i + 1;
            let c = &mut self.conns[i];
            c.reconnect = true;
            push_frame(&mut c.out, 0x8, &1000u16.to_be_bytes());
            self.closing.push((i, now + CLOSE_GRACE));
            self.stats.churned += 1;
            self.flush(i);
        }
        self.churn = Some(ch);
    }

    /// All connections ready, or closed for good.
    fn settled(&self) -> bool {
        self.ready + self.dead >= self.conns.len()
    }

    fn inflight(&self) -> usize {
        self.active
            .iter()
            .filter(|&&i| self.conns[i].state == State::Open && !self.conns[i].inflight.is_empty())
            .count()
    }

    /// Opens every connection added so far (and subscribes the subscribers).
    /// `setup`, then waits for the helper threads' setup.
    fn setup_all(&mut self, deadline: Instant) {
        self.setup(deadline);
        if let Some(share) = &self.share {
            share.ready.wait();
        }
    }

    fn setup(&mut self, deadline: Instant) {
        self.run_until(deadline.min(Instant::now() + SETUP_TIMEOUT), |g| g.settled());
        let want = self.conns.len();
        if self.ready < want {
            eprintln!(
                "loadgen: {} of {want} connections ready ({} failed; refusals {:?}, closes {:?}, io errors {})",
                self.ready, self.dead, self.stats.refused, self.stats.closes, self.stats.io_errors
            );
        }
    }

    /// The measured interval: publishers (and the probe, and echo
    /// connections) send for the duration, then the answers still in
    /// flight are collected.
    fn measure_sending(&mut self, hard_cap: Instant) -> (Duration, Option<ProcSample>, Option<ProcSample>) {
        let before = sample(self.opts.pid);
        let noise = Noise::start(self.opts.pid);
        let start = Instant::now();
        self.set_flags(true, true);
        if let Some(rate) = self.opts.rate {
            self.pacer = Some(Pacer { rate, start, sent: 0, turn: 0 });
        }
        for k in 0..self.active.len() {
            self.kick(self.active[k], start);
        }
        let end = (start + self.opts.duration).min(hard_cap);
        let cpu0 = own_cpu_us();
        self.run_until(end, |_| false);
        self.set_flags(true, false);
        let sent_for = start.elapsed();
        self.window_cpu = Some((own_cpu_us() - cpu0, sent_for.as_micros() as u64));
        // Collect what is in flight (bounded): its answers still count.
        self.run_until((Instant::now() + Duration::from_secs(5)).min(hard_cap), |g| g.inflight() == 0);
        // Let deliveries of the last commits arrive.
        if self.conns.iter().any(|c| c.role == Role::Subscriber) {
            self.run_until((Instant::now() + Duration::from_millis(500)).min(hard_cap), |_| false);
        }
        let elapsed = if self.pacer.is_some() {
            sent_for // the schedule, not the answers, set the pace
        } else {
            self.stats.last_ack.map_or(sent_for, |t| t.duration_since(start))
        };
        self.drain_bulk(Instant::now()); // what arrived since the last drain still counts
        self.set_flags(false, false);
        let after = sample(self.opts.pid);
        self.other_busy_pct = noise.other_pct(self.opts.pid);
        self.tally_subscribers();
        self.busiest_thread_us = Some(self.join_helpers());
        (elapsed.max(Duration::from_millis(1)), before, after)
    }
}

/// The unsigned integer right after `key` in `text`.
fn find_number(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    parse_u64(&text[at..at + digits])
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The number at the end of a reply's `"id":"<nonce>-<conn>-<n>"`.
fn reply_id(text: &[u8]) -> Option<u64> {
    let key = br#""id":""#;
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let len = text[at..].iter().position(|&b| b == b'"')?;
    let id = &text[at..at + len];
    parse_u64(&id[id.iter().rposition(|&b| b == b'-')? + 1..])
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    // The distribution for plots: [quantile, µs] pairs.
    let spectrum: Vec<Value> = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0]
        .iter()
        .map(|&q| json!([q, h.value_at_quantile(q)]))
        .collect();
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
        "spectrum": spectrum,
    })
}

fn ms(us: &Value, key: &str) -> String {
    us[key].as_u64().map_or("-".into(), |v| format!("{:.2} ms", v as f64 / 1000.0))
}

/// "p50 … p99 … max …" of a `percentiles` value (with p99.9 if asked).
fn summary(lat: &Value, p999: bool) -> String {
    let mid = if p999 { format!(" p99.9 {}", ms(lat, "p999_us")) } else { String::new() };
    format!("p50 {} p99 {}{mid} max {}", ms(lat, "p50_us"), ms(lat, "p99_us"), ms(lat, "max_us"))
}

fn cpu_per(before: Option<ProcSample>, after: Option<ProcSample>, units: u64) -> Value {
    match (before, after) {
        (Some(b), Some(a)) if units > 0 => json!(((a.cpu_us - b.cpu_us) as f64 / units as f64 * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

// ---------------------------------------------------------------- scenarios

fn idle(g: &mut Gen, hard_cap: Instant) -> Value {
    let n = g.opts.conns;
    let before = sample(g.opts.pid);
    g.add(Role::Idle, n);
    let t0 = Instant::now();
    g.setup(hard_cap);
    let setup_secs = t0.elapsed().as_secs_f64();
    let open = g.ready;
    // For a script that reads the server's RSS itself (several generators at once).
    eprintln!("READY {open}");
    // Let the server settle, then measure.
    let noise = Noise::start(g.opts.pid);
    g.run_until((Instant::now() + Duration::from_secs(2)).min(hard_cap), |_| false);
    g.other_busy_pct = noise.other_pct(g.opts.pid);
    let after = sample(g.opts.pid);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if open > 0 => Some(((a.rss_bytes as f64 - b.rss_bytes as f64) / open as f64).round()),
        _ => None,
    };
    let what = if g.opts.peer { "open on /idle" } else { "open and subscribed" };
    println!("idle: {open} of {n} connections {what} in {setup_secs:.2} s");
    if let (Some(b), Some(a)) = (before, after) {
        println!("  server VmRSS before: {}", mib(b.rss_bytes));
        println!("  server VmRSS after:  {}", mib(a.rss_bytes));
        println!("  per connection:      {:.0} bytes", per_conn.unwrap_or(0.0));
    }
    println!("  holding for {:?}", g.opts.hold);
    g.run_until((Instant::now() + g.opts.hold).min(hard_cap), |_| false);
    json!({
        "conns": n,
        "subscribed": open,
        "rss_before_bytes": before.map(|s| s.rss_bytes),
        "rss_after_bytes": after.map(|s| s.rss_bytes),
        "bytes_per_conn": per_conn,
        "setup_s": round3(setup_secs),
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
    let how = g.opts.rate.map_or("one publish in flight each".into(), |r| format!("{r}/s in total"));
    println!("publish: {p} publishers on {:?}, {how}, {:.1} s", g.opts.channel, elapsed.as_secs_f64());
    println!("  acked publishes: {acked} ({rate:.0}/s)");
    println!("  pub→ack latency: {}", summary(&lat, false));
    if !cpu.is_null() {
        println!("  server CPU: {cpu} µs per acked publish");
    }
    json!({
        "publishers": p,
        "rate": g.opts.rate,
        "acked": acked,
        "elapsed_s": round3(elapsed.as_secs_f64()),
        "acked_per_s": rate.round(),
        "latency": lat,
        "server_cpu_us_per_ack": cpu,
        "server_rss_after_bytes": after.map(|a| a.rss_bytes),
    })
}

/// Did every subscriber get every message, in order? Expected per
/// subscriber: each publish (peer) or each acked publish (roostd: a refused
/// one is not delivered). Lost messages show as gaps; late ones (still
/// queued at the server when the run ended) only as a count below expected.
fn delivery_check(g: &Gen) -> Value {
    let st = &g.stats;
    let expected = if g.opts.peer { st.published } else { st.acked };
    let backlog = (g.opts.timed_every > 1).then_some(st.bulk_max_backlog);
    json!({
        "expected_per_subscriber": expected,
        "min_per_subscriber": st.sub_min,
        "max_per_subscriber": st.sub_max,
        "gaps": st.gaps,
        "out_of_order": st.disorder,
        "complete": st.sub_min.map(|m| m >= expected),
        "bulk_max_backlog_bytes": backlog,
        "bulk_max_rmem_bytes": backlog.and(st.bulk_fullest.map(|f| f.0)),
        "rcvbuf_bytes": backlog.and(st.bulk_fullest.map(|f| f.1)),
    })
}

/// The fan-out part of `fanout` and `slow`: the measured interval and its numbers.
fn fanout_measure(g: &mut Gen, hard_cap: Instant) -> (f64, Value) {
    let (elapsed, before, after) = g.measure_sending(hard_cap);
    let secs = elapsed.as_secs_f64();
    let st = &g.stats;
    let delivered = st.delivered;
    let rate = delivered as f64 / secs;
    let delivery = percentiles(st.delivery_latency.as_ref().unwrap());
    let pubs = percentiles(st.pub_latency.as_ref().unwrap());
    let cpu = cpu_per(before, after, delivered);
    let check = delivery_check(g);
    let st = &g.stats;
    println!("  published:        {} ({:.0}/s)", st.published, st.published as f64 / secs);
    if st.missed_sends > 0 {
        println!("  missed sends:     {} (the generator fell more than {PACE_MAX_LAG:?} behind)", st.missed_sends);
    }
    if !g.opts.peer {
        println!("  acked publishes:  {} ({:.0}/s)", st.acked, st.acked as f64 / secs);
        println!("  pub→ack:          {}", summary(&pubs, true));
    } else if st.stalls > 0 {
        println!("  stalls:           {} (a message did not reach every subscriber in {STALL_AFTER:?})", st.stalls);
    }
    println!("  delivered:        {delivered} messages ({rate:.0}/s)");
    println!("  pub→delivery:     {}", summary(&delivery, true));
    if g.opts.timed_every > 1 {
        println!(
            "  timed: every {}th subscriber ({} deliveries); the others drained every {:?}: largest backlog {} bytes; \
             fullest receive queue {} of SO_RCVBUF {} bytes",
            g.opts.timed_every,
            delivery["count"],
            g.opts.drain_every,
            st.bulk_max_backlog,
            check["bulk_max_rmem_bytes"],
            check["rcvbuf_bytes"]
        );
    }
    println!(
        "  per subscriber:   {}–{} of {} expected; gaps {}, out of order {}",
        check["min_per_subscriber"],
        check["max_per_subscriber"],
        check["expected_per_subscriber"],
        st.gaps,
        st.disorder
    );
    if !cpu.is_null() {
        println!("  server CPU: {cpu} µs per delivered message");
    }
    let v = json!({
        "subscribers": g.opts.subscribers,
        "publishers": g.opts.publishers,
        "rate": g.opts.rate,
        "payload": g.opts.payload,
        "elapsed_s": round3(secs),
        "published": st.published,
        "published_per_s": (st.published as f64 / secs).round(),
        "missed_sends": st.missed_sends,
        "stalls": st.stalls,
        "acked": st.acked,
        "acked_per_s": (st.acked as f64 / secs).round(),
        "pub_latency": pubs,
        "delivered": delivered,
        "delivered_per_s": rate.round(),
        "delivery_latency": delivery,
        "server_cpu_us_per_delivered": cpu,
        "server_rss_after_bytes": after.map(|a| a.rss_bytes),
        "setup_latency": percentiles(st.ready_latency.as_ref().unwrap()),
        "timed_every": g.opts.timed_every,
        "drain_every_ms": (g.opts.timed_every > 1).then_some(g.opts.drain_every.as_millis() as u64),
        "delivery_check": check,
    });
    (secs, v)
}

fn fanout(g: &mut Gen, hard_cap: Instant) -> Value {
    let (s, p) = (g.opts.subscribers, g.opts.publishers);
    let mine = g.spawn_helpers(Role::Subscriber, s, hard_cap);
    g.add(Role::Subscriber, mine);
    g.add(Role::Publisher, p);
    let probes = !g.opts.peer && g.opts.rate.is_none();
    if probes {
        g.add(Role::Probe, 1);
        g.add(Role::HistProbe, 1);
    }
    let t0 = Instant::now();
    g.setup_all(hard_cap);
    let setup_s = t0.elapsed().as_secs_f64();
    let how = match g.opts.rate {
        Some(r) => format!("{r} publishes/s in total"),
        None if g.opts.peer => "closed loop (next when all subscribers have it)".into(),
        None => format!("closed loop, probes every {PROBE_EVERY:?}"),
    };
    println!("fanout: {s} subscribers and {p} publishers on {:?}, {how} (setup {setup_s:.2} s)", g.opts.channel);
    let (_, mut v) = fanout_measure(g, hard_cap);
    if probes {
        let probe = percentiles(g.stats.probe_latency.as_ref().unwrap());
        let hist = percentiles(g.stats.hist_latency.as_ref().unwrap());
        println!("  probe round trip: {}", summary(&probe, false));
        println!("  hist round trip:  {}", summary(&hist, false));
        v["probe"] = probe;
        v["hist_probe"] = hist;
    }
    v["setup_s"] = json!(round3(setup_s));
    v
}

fn echo(g: &mut Gen, hard_cap: Instant) -> Value {
    let c = g.opts.conns;
    g.echo_msg = vec![b'x'; g.opts.payload];
    let mine = g.spawn_helpers(Role::Echo, c, hard_cap);
    g.add(Role::Echo, mine);
    g.setup_all(hard_cap);
    let (elapsed, before, after) = g.measure_sending(hard_cap);
    let secs = elapsed.as_secs_f64();
    let st = &g.stats;
    let rate = st.echoed as f64 / secs;
    let lat = percentiles(st.echo_latency.as_ref().unwrap());
    let cpu = cpu_per(before, after, st.echoed);
    let kind = if g.opts.binary { "binary" } else { "text" };
    println!("echo: {c} connections, one {} byte {kind} message in flight each, {secs:.1} s", g.opts.payload);
    println!("  echoed: {} ({rate:.0}/s), mismatched: {}", st.echoed, st.echo_mismatch);
    println!("  round trip: {}", summary(&lat, false));
    if !cpu.is_null() {
        println!("  server CPU: {cpu} µs per message");
    }
    json!({
        "conns": c,
        "ready": g.ready,
        "payload": g.opts.payload,
        "binary": g.opts.binary,
        "elapsed_s": round3(secs),
        "echoed": st.echoed,
        "mismatched": st.echo_mismatch,
        "msgs_per_s": rate.round(),
        "latency": lat,
        "server_cpu_us_per_msg": cpu,
        "server_rss_after_bytes": after.map(|a| a.rss_bytes),
    })
}

fn upgrades(g: &mut Gen, hard_cap: Instant) -> Value {
    let k = g.opts.connectors;
    let (valid, invalid) = if g.opts.peer {
        let r = g.request(Role::Upgrader.peer_path());
        (r.clone(), r)
    } else {
        let token = g.token("loadgen-upgrades");
        // A bad signature: the first character of the signature changed.
        let (signed, sig) = token.rsplit_once('.').expect("a JWT has three parts");
        let other = if sig.starts_with('A') { 'B' } else { 'A' };
        let bad = format!("{signed}.{other}{}", &sig[1..]);
        (g.request(&format!("/ws?token={token}")), g.request(&format!("/ws?token={bad}")))
    };
    g.upgrade_reqs = Some((valid, invalid));
    if g.opts.peer {
        g.opts.invalid_pct = 0.0; // no tokens: every attempt is the same
    }
    let before = sample(g.opts.pid);
    let noise = Noise::start(g.opts.pid);
    let start = Instant::now();
    g.measuring = true;
    g.sending = true;
    g.add(Role::Upgrader, k);
    g.run_until((start + g.opts.duration).min(hard_cap), |_| false);
    g.measuring = false;
    g.sending = false;
    let secs = start.elapsed().as_secs_f64();
    let after = sample(g.opts.pid);
    g.other_busy_pct = noise.other_pct(g.opts.pid);
    let st = &g.stats;
    let ok = percentiles(st.upgrade_latency.as_ref().unwrap());
    let refused = percentiles(st.refusal_latency.as_ref().unwrap());
    let attempts = st.upgrades + st.upgrade_refusals;
    println!("upgrades: {k} connectors, {}% with a bad signature, {secs:.1} s", g.opts.invalid_pct);
    println!("  upgraded (101): {} ({:.0}/s)", st.upgrades, st.upgrades as f64 / secs);
    println!("  refused (401):  {} ({:.0}/s)", st.upgrade_refusals, st.upgrade_refusals as f64 / secs);
    println!("  connect→101: {}", summary(&ok, false));
    if st.upgrade_refusals > 0 {
        println!("  connect→401: {}", summary(&refused, false));
    }
    let per_attempt = cpu_per(before, after, attempts);
    if !per_attempt.is_null() {
        println!("  server CPU: {per_attempt} µs per attempt");
    }
    json!({
        "connectors": k,
        "invalid_pct": g.opts.invalid_pct,
        "elapsed_s": round3(secs),
        "invalid_sent": st.upgrade_invalid_sent,
        "upgrades": st.upgrades,
        "upgrades_per_s": (st.upgrades as f64 / secs).round(),
        "refusals": st.upgrade_refusals,
        "refusals_per_s": (st.upgrade_refusals as f64 / secs).round(),
        "upgrade_latency": ok,
        "refusal_latency": refused,
        "server_cpu_us_per_attempt": per_attempt,
        "server_cpu_us_per_upgrade": cpu_per(before, after, st.upgrades),
        "server_rss_after_bytes": after.map(|a| a.rss_bytes),
    })
}

fn storm(g: &mut Gen, hard_cap: Instant) -> Value {
    let n = g.opts.conns;
    g.max_connecting = usize::MAX; // every connect at once: the OS and the server queue them
    let before = sample(g.opts.pid);
    let noise = Noise::start(g.opts.pid);
    g.add(Role::Subscriber, n);
    g.setup(hard_cap);
    g.other_busy_pct = noise.other_pct(g.opts.pid);
    let after = sample(g.opts.pid);
    let total = match (g.first_connect, g.last_ready) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let lat = percentiles(g.stats.ready_latency.as_ref().unwrap());
    let cpu = cpu_per(before, after, g.ready as u64);
    let what = if g.opts.peer { "upgraded on /sub" } else { "subscribed" };
    println!("storm: {} of {n} connections {what}, all started at once", g.ready);
    println!("  first connect → all ready: {total:.3} s");
    println!("  per connection (connect → ready): {}", summary(&lat, false));
    if !cpu.is_null() {
        println!("  server CPU: {cpu} µs per connection");
    }
    json!({
        "conns": n,
        "ready": g.ready,
        "failed": g.dead,
        "all_ready_s": round3(total),
        "conn_latency": lat,
        "server_cpu_us_per_conn": cpu,
        "server_rss_before_bytes": before.map(|s| s.rss_bytes),
        "server_rss_after_bytes": after.map(|s| s.rss_bytes),
    })
}

fn slow(g: &mut Gen, hard_cap: Instant) -> Value {
    let s = g.opts.subscribers;
    let n_slow = ((s as f64) * g.opts.slow_pct / 100.0).round() as usize;
    g.add(Role::Subscriber, s - n_slow);
    let slow = g.add(Role::Slow, n_slow);
    g.add(Role::Publisher, g.opts.publishers);
    g.setup(hard_cap);
    println!(
        "slow: {s} subscribers ({n_slow} never read, SO_RCVBUF {SLOW_RCVBUF}), {} publishers, {} publishes/s, \
         {} byte payload",
        g.opts.publishers,
        g.opts.rate.unwrap_or(0.0),
        g.opts.payload
    );
    g.sampler = Some(Sampler::new(SLOW_SAMPLE_EVERY));
    let (_, mut v) = fanout_measure(g, hard_cap);
    let mut sampler = g.sampler.take().expect("the sampler");
    sampler.take(g.opts.pid, Instant::now());
    // Which slow connections did the server close? Read what they were sent.
    g.draining = true;
    for i in slow.clone() {
        if g.conns[i].state == State::Open {
            g.read(i, Instant::now());
        }
    }
    let all_closed = |g: &Gen| slow.clone().all(|i| g.conns[i].state == State::Closed);
    g.run_until((Instant::now() + SLOW_DRAIN).min(hard_cap), all_closed);
    let mut ended: BTreeMap<String, usize> = BTreeMap::new();
    for i in slow.clone() {
        let c = &g.conns[i];
        let how = match (c.state, c.ended) {
            (State::Open, _) => "open".to_string(),
            (_, Some(1006)) => "eof".to_string(),
            (_, Some(code)) => code.to_string(),
            _ => "failed".to_string(),
        };
        *ended.entry(how).or_default() += 1;
    }
    let closed = n_slow - ended.get("open").copied().unwrap_or(0) - ended.get("failed").copied().unwrap_or(0);
    let (max_rss, last_rss) = (sampler.max_rss(), sampler.samples.last().map(|s| s.1));
    if let (Some(m), Some(l)) = (max_rss, last_rss) {
        println!("  server VmRSS: max {}, last {}", mib(m), mib(l));
    }
    println!("  slow subscribers closed by the server: {closed} of {n_slow} {ended:?}");
    v["slow"] = json!(n_slow);
    v["slow_pct"] = json!(g.opts.slow_pct);
    v["slow_closed"] = json!(closed);
    v["slow_ended"] = json!(ended);
    v["rss_max_bytes"] = json!(max_rss);
    v["rss_last_bytes"] = json!(last_rss);
    v["rss_samples"] = sampler.json();
    v
}

fn churn(g: &mut Gen, hard_cap: Instant) -> Value {
    let n = g.opts.conns;
    g.add(Role::Subscriber, n);
    g.setup(hard_cap);
    let per_minute = (n as f64 * g.opts.churn_pct / 100.0).round() as u32;
    // Fresh numbers for the churn phase: connect → ready of each reconnect.
    g.stats.ready_latency = Some(histogram());
    let start = Instant::now();
    if per_minute > 0 {
        let every = Duration::from_secs(60) / per_minute;
        g.churn = Some(Churn { every, next: start + every / 2, cursor: 0 });
    }
    println!(
        "churn: {} of {n} connections ready; {per_minute} per minute close and reconnect, for {:?}",
        g.ready, g.opts.duration
    );
    let noise = Noise::start(g.opts.pid);
    g.sampler = Some(Sampler::new(CHURN_SAMPLE_EVERY));
    g.sending = true;
    g.run_until((start + g.opts.duration).min(hard_cap), |_| false);
    g.sending = false;
    // Reconnects under way finish (bounded).
    g.run_until((Instant::now() + CLOSE_GRACE).min(hard_cap), |g| g.closing.is_empty() && g.waiting.is_empty());
    g.run_until((Instant::now() + Duration::from_secs(5)).min(hard_cap), |g| g.settled());
    g.other_busy_pct = noise.other_pct(g.opts.pid);
    let mut sampler = g.sampler.take().expect("the sampler");
    sampler.take(g.opts.pid, Instant::now());
    let first = sampler.samples.first().copied();
    let last = sampler.samples.last().copied();
    let drift = match (first, last) {
        (Some(f), Some(l)) if f.1 > 0 => Some(((l.1 as f64 - f.1 as f64) / f.1 as f64 * 1000.0).round() / 10.0),
        _ => None,
    };
    let fd_growth = match (first.and_then(|f| f.2), last.and_then(|l| l.2)) {
        (Some(f), Some(l)) => Some(l as i64 - f as i64),
        _ => None,
    };
    let lat = percentiles(g.stats.ready_latency.as_ref().unwrap());
    for (t, rss, fds) in &sampler.samples {
        println!("  t={t:>6.1} s  VmRSS {}  fds {}", mib(*rss), fds.map_or("-".into(), |f| f.to_string()));
    }
    println!(
        "  churned: {} (close timeouts {}), ready at the end: {} of {n}",
        g.stats.churned, g.stats.churn_close_timeouts, g.ready
    );
    println!("  reconnect (connect → ready): {}", summary(&lat, false));
    if let Some(d) = drift {
        println!("  RSS drift first→last: {d} %, fd growth: {}", fd_growth.unwrap_or(0));
    }
    json!({
        "conns": n,
        "churn_pct": g.opts.churn_pct,
        "churn_per_minute": per_minute,
        "elapsed_s": round3(start.elapsed().as_secs_f64()),
        "churned": g.stats.churned,
        "close_timeouts": g.stats.churn_close_timeouts,
        "ready_at_end": g.ready,
        "reconnect_latency": lat,
        "samples": sampler.json(),
        "rss_drift_pct": drift,
        "fd_growth": fd_growth,
    })
}

/// `seq` of a roostd `msg` frame, read from the text (it comes right after
/// `ch`), so counting a replay costs no JSON parse per message.
fn msg_seq(p: &[u8]) -> Option<u64> {
    let head = &p[..p.len().min(512)];
    let at = head.windows(6).position(|w| w == b"\"seq\":")? + 6;
    let digits = head[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&head[at..at + digits]).ok()?.parse().ok()
}

/// `replay`: one client subscribes with `since: 0` and reads every stored
/// message of the channel (issue 18: replay speed to one resuming client).
/// One blocking socket: there is nothing to multiplex. Timed from the `sub`
/// sent to the message whose seq is the one `subok` named.
fn replay(g: &mut Gen, hard_cap: Instant) -> Value {
    let fail = |what: String| {
        println!("replay: {what}");
        json!({"error": what})
    };
    let mut sock = match std::net::TcpStream::connect(g.opts.addr) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot connect: {e}")),
    };
    let _ = sock.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = sock.set_nodelay(true);
    let req = g.request(&format!("/ws?token={}", g.token("loadgen-replay")));
    let (mut buf, mut scratch) = (Vec::with_capacity(1 << 20), vec![0u8; 256 << 10]);
    let mut read_more = |sock: &mut std::net::TcpStream, buf: &mut Vec<u8>| match sock.read(&mut scratch) {
        Ok(0) => Err("the server closed the connection".to_string()),
        Ok(n) => {
            buf.extend_from_slice(&scratch[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read: {e}")),
    };
    if let Err(e) = sock.write_all(&req) {
        return fail(format!("upgrade: {e}"));
    }
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if let Err(e) = read_more(&mut sock, &mut buf) {
            return fail(e);
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        return fail(format!("upgrade refused: {}", String::from_utf8_lossy(&buf[..head_end.min(80)])));
    }
    buf.drain(..head_end);
    let before = sample(g.opts.pid);
    let noise = Noise::start(g.opts.pid);
    let mut out = Vec::new();
    let sub = format!(r#"{{"op":"sub","ch":"{}","since":0,"id":"r"}}"#, g.opts.channel);
    push_frame(&mut out, 0x1, sub.as_bytes());
    let t0 = Instant::now();
    if let Err(e) = sock.write_all(&out) {
        return fail(format!("sub: {e}"));
    }
    let (mut last, mut subok_s, mut first_s) = (None::<u64>, 0.0, None::<f64>);
    let (mut msgs, mut bytes) = (0u64, 0u64);
    'read: loop {
        let mut at = 0;
        while let Some((opcode, range, len)) = parse_frame(&buf[at..]) {
            let p = &buf[at + range.start..at + range.end];
            at += len;
            if opcode == 0x8 {
                return fail("the server closed the connection during the replay".into());
            }
            if opcode != 0x1 {
                continue;
            }
            if last.is_none() {
                let v: Value = serde_json::from_slice(p).unwrap_or(Value::Null);
                if v["op"] != "subok" {
                    return fail(format!("expected subok, got {}", String::from_utf8_lossy(&p[..p.len().min(200)])));
                }
                subok_s = t0.elapsed().as_secs_f64();
                last = v["seq"].as_u64();
                if last == Some(0) {
                    break 'read;
                }
            } else if p.starts_with(br#"{"op":"msg""#) {
                msgs += 1;
                bytes += p.len() as u64;
                first_s.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                if msg_seq(p) >= last {
                    break 'read;
                }
            }
        }
        buf.drain(..at);
        if Instant::now() > hard_cap {
            return fail(format!("hard cap reached after {msgs} messages"));
        }
        if let Err(e) = read_more(&mut sock, &mut buf) {
            return fail(format!("{e} after {msgs} messages"));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    g.other_busy_pct = noise.other_pct(g.opts.pid);
    let after = sample(g.opts.pid);
    let cpu = match (before, after) {
        (Some(b), Some(a)) if msgs > 0 => json!(round3((a.cpu_us - b.cpu_us) as f64 / msgs as f64)),
        _ => Value::Null,
    };
    let rate = msgs as f64 / secs.max(1e-9);
    println!(
        "replay: {msgs} messages of {:?} ({} bytes of frames) in {secs:.3} s: {rate:.0}/s, {:.0} MB/s",
        g.opts.channel,
        bytes,
        bytes as f64 / secs.max(1e-9) / 1e6
    );
    println!("  subok after {:.2} ms, first message after {:.2} ms", subok_s * 1e3, first_s.unwrap_or(0.0) * 1e3);
    if !cpu.is_null() {
        println!("  server CPU: {cpu} µs per replayed message");
    }
    json!({
        "channel": g.opts.channel,
        "last_seq": last,
        "messages": msgs,
        "frame_bytes": bytes,
        "elapsed_s": round3(secs),
        "subok_ms": round3(subok_s * 1e3),
        "first_message_ms": first_s.map(|s| round3(s * 1e3)),
        "msgs_per_s": rate.round(),
        "mb_per_s": round3(bytes as f64 / secs.max(1e-9) / 1e6),
        "server_cpu_us_per_msg": cpu,
        "server_rss_after_bytes": after.map(|a| a.rss_bytes),
    })
}

fn main() {
    let opts = parse_opts();
    let started = Instant::now();
    raise_fd_limit();
    let hard_cap = Instant::now() + SETUP_TIMEOUT + opts.duration.max(opts.hold) + HARD_CAP_SLACK;
    let scenario = opts.scenario.clone();
    let peer = opts.peer;
    let mut g = Gen::new(opts);
    let mut result = match scenario.as_str() {
        "idle" => idle(&mut g, hard_cap),
        "publish" => publish(&mut g, hard_cap),
        "fanout" => fanout(&mut g, hard_cap),
        "echo" => echo(&mut g, hard_cap),
        "upgrades" => upgrades(&mut g, hard_cap),
        "storm" => storm(&mut g, hard_cap),
        "slow" => slow(&mut g, hard_cap),
        "replay" => replay(&mut g, hard_cap),
        _ => churn(&mut g, hard_cap),
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
    obj.insert("peer".into(), peer.into());
    // The generator's own CPU share: near 100 % means it, not the server, was the limit.
    // With threads: the busiest thread (one core at most), and the whole
    // process against the cores it may use (its taskset), the higher of the two.
    let wall = started.elapsed().as_micros().max(1) as f64;
    let own = own_cpu_us() as f64 / wall * 100.0;
    let threads = g.opts.threads.max(1);
    let busiest = g.busiest_thread_us.unwrap_or_else(thread_cpu_us) as f64 / wall * 100.0;
    let budget = threads.min(allowed_cpus());
    let mut load = (own / budget as f64).max(if threads > 1 { busiest } else { own });
    // While publishers sent (setup and the wait for the last answers left out).
    if let Some((cpu, wall)) = g.window_cpu.filter(|w| w.1 > 0) {
        let window = cpu as f64 / wall as f64 * 100.0 / budget as f64;
        println!("  generator CPU while sending: {window:.0} % of its budget");
        obj.insert("generator_window_pct".into(), json!(window.round()));
        load = load.max(window);
    }
    println!(
        "  generator CPU: {own:.0} % of one core over the whole run ({threads} thread(s), busiest {busiest:.0} %, \
         {load:.0} % of its budget of {budget} core(s))"
    );
    if load > GENERATOR_WARN_PCT {
        println!("  WARNING: the generator used {load:.0} % of its CPU budget: it may have been the limit");
    }
    obj.insert("generator_cpu_pct".into(), json!(own.round()));
    obj.insert("generator_threads".into(), json!(threads));
    obj.insert("generator_busiest_thread_pct".into(), json!(busiest.round()));
    obj.insert("generator_load_pct".into(), json!(load.round()));
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
