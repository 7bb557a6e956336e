//! Raw heed/LMDB group-commit microbenchmark: the ceiling for roostd's
//! durable publish path on a given disk.
//!
//! ```text
//! cargo run --release --example heedbench -- [options]
//!
//!   --dir PATH            where the LMDB environments go (default: a temp dir under /tmp);
//!                         the disk under test matters: every commit fsyncs
//!   --payload BYTES       pad of each message's data, as loadgen's --payload (default 64)
//!   --batch K             messages per write transaction (default 100)
//!   --batches 1,10,100    run each batch size in turn (overrides --batch)
//!   --duration 5s         how long each batch size runs (default 5s) ...
//!   --messages N          ... or stop after N messages
//!   --like-roostd         commit through roostd's own `Store::append_batch`
//!   --keep                leave the environments on disk afterwards
//!
//! what-ifs (not what roostd does; to price a change before making it):
//!   --no-id               like-roostd: publishes without an id (no dedupe lookup, no idlog record)
//!   --retention N         like-roostd: keep N messages per channel (default roostd's 10000; 0 = all)
//!   --flags F,...         plain: extra LMDB flags: writemap, nometasync (one device flush per
//!                         commit instead of two; the meta page is then flushed by the next commit)
//! ```
//!
//! roostd acks a publish only after the LMDB write transaction holding it has
//! committed (fsync), and its writer thread merges every publish queued while
//! the last commit ran into the next transaction (group commit, `writer.rs`).
//! So its acked publishes/s can never beat what LMDB alone does for the same
//! messages at the same batch size on the same disk. This program measures
//! that number with nothing else in the way: one thread, a loop of
//! `write_txn`, K puts, `commit`.
//!
//! Two modes, to split roostd's cost in two:
//!
//! - plain (default): per message one `put` into a `messages` database, key
//!   `chan id u64 | seq u64` big-endian, value `ts u64 | from len u16 | from |
//!   data`: the shape `store.rs` writes, with `data` the JSON text loadgen
//!   publishes (`{"t":N,"pad":"xx…"}`) and `from` a loadgen token's `sub`. The
//!   environment is opened as `Store::open` opens it: default flags (so a
//!   full, durable sync on every commit, and TLS read slots), map size
//!   `Config::default().max_store_bytes`, `max_dbs(8)`, `max_readers(126)`.
//! - `--like-roostd`: each batch goes through `roostd::store::Store::append_batch`
//!   itself, with roostd's default retention (10 000 messages per channel: once
//!   past it every append also deletes the oldest) and dedupe window (every
//!   publish carries an id, as loadgen's do: a lookup in the in-memory dedupe
//!   index and the commit's one `idlog` record), plus the channel record. This
//!   is exactly the LMDB work roostd's writer thread does per publish, so
//!   `roostd server CPU per ack - like-roostd CPU per message` is what the
//!   rest of the server (sockets, WebSocket framing, JSON, the loop, acks)
//!   costs.
//!
//! Each batch size gets a fresh environment (as a benchmark's fresh server
//! gets a fresh store), removed afterwards unless `--keep`.
//!
//! Reported per batch size: messages/s, commits/s, the latency of a whole
//! write transaction (begin to commit returned, what roostd's writer reports
//! as a commit's `took`) and, in plain mode, of the `commit` call alone
//! (where the fsync happens), p50/p99; this process's CPU per message, user
//! and kernel (`getrusage`); and from `/proc/self/io` the bytes sent to the
//! disk and the write syscalls per commit. Output: a human summary, then one
//! final line of JSON with every number (as loadgen prints).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use heed::types::Bytes;
use heed::{Database, EnvFlags, EnvOpenOptions};
use roostd::config::Config;
use roostd::store::{Append, Store};
use serde_json::{json, Value};

/// Distinct publishers whose `sub`s the messages carry (loadgen's publish50).
const PUBLISHERS: u64 = 50;
/// The channel every message goes to (loadgen's default).
const CHANNEL: &str = "bench";
/// The channel id `store.rs` gives the first channel of a fresh store.
const CHANNEL_ID: u64 = 1;

struct Opts {
    dir: Option<PathBuf>,
    payload: usize,
    batches: Vec<usize>,
    duration: Duration,
    messages: Option<u64>,
    like_roostd: bool,
    keep: bool,
    no_id: bool,
    retention: Option<u64>,
    flags: Vec<String>,
}

fn usage(msg: &str) -> ! {
    eprintln!("heedbench: {msg}");
    eprintln!(
        "usage: heedbench [--dir PATH] [--payload BYTES] [--batch K | --batches 1,10,100,1000]\n\
         \x20                [--duration 5s | --messages N] [--like-roostd] [--keep]\n\
         \x20                [--no-id] [--retention N] [--flags writemap,nometasync]"
    );
    std::process::exit(2)
}

/// `10s`, `500ms`, `5m`: the server's own duration syntax.
fn parse_duration(s: &str) -> Option<Duration> {
    roostd::config::duration("duration", s).ok()
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        dir: None,
        payload: 64,
        batches: vec![100],
        duration: Duration::from_secs(5),
        messages: None,
        like_roostd: false,
        keep: false,
        no_id: false,
        retention: None,
        flags: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--like-roostd" => o.like_roostd = true,
            "--keep" => o.keep = true,
            "--no-id" => o.no_id = true,
            "-h" | "--help" => usage("a raw heed group-commit benchmark"),
            _ => {
                let v = args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
                let num = |v: &str| v.parse::<usize>().unwrap_or_else(|_| usage(&format!("{flag} takes a number")));
                match flag.as_str() {
                    "--dir" => o.dir = Some(PathBuf::from(v)),
                    "--payload" => o.payload = num(&v),
                    "--batch" => o.batches = vec![num(&v)],
                    "--batches" => o.batches = v.split(',').map(|b| num(b.trim())).collect(),
                    "--duration" => {
                        o.duration = parse_duration(&v).unwrap_or_else(|| usage("--duration takes a duration like 5s"))
                    }
                    "--messages" => o.messages = Some(num(&v) as u64),
                    "--retention" => o.retention = Some(num(&v) as u64),
                    "--flags" => {
                        o.flags = v.split(',').map(|f| f.trim().to_string()).filter(|f| !f.is_empty()).collect()
                    }
                    _ => usage(&format!("unknown option {flag}")),
                }
            }
        }
    }
    if o.batches.is_empty() || o.batches.contains(&0) {
        usage("batch sizes must be at least 1");
    }
    if o.like_roostd && !o.flags.is_empty() {
        usage("--flags applies to plain mode only (--like-roostd opens the store as roostd does)");
    }
    if !o.like_roostd && (o.no_id || o.retention.is_some()) {
        usage("--no-id and --retention apply to --like-roostd only");
    }
    if let Some(f) = o.flags.iter().find(|f| !matches!(f.as_str(), "writemap" | "nometasync")) {
        usage(&format!("unknown flag {f:?} (writemap, nometasync)"));
    }
    o
}

// ---------------------------------------------------------------- measuring

/// CPU time this process has used: (user, kernel), in µs.
fn cpu_us() -> (u64, u64) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0, 0);
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

/// From `/proc/self/io`: (bytes sent to the storage layer, write syscalls).
fn proc_io() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/io").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok())
    };
    Some((field("write_bytes:")?, field("syscw:")?))
}

/// The file system type of `dir`, by name when it is a common one.
fn fs_type(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return "?".into() };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "?".into();
    }
    match st.f_type as u64 {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794c_7630 => "overlayfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0x6573_5546 => "fuse".into(),
        t => format!("0x{t:x}"),
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The JSON text loadgen publishes as `data`.
fn data_text(t: u64, pad: &str) -> String {
    format!(r#"{{"t":{t},"pad":"{pad}"}}"#)
}

fn msg_key(chan: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&chan.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// What one batch size measured.
struct Run {
    batch: usize,
    messages: u64,
    commits: u64,
    elapsed: Duration,
    txn: Histogram<u64>,
    /// The `commit` call alone (plain mode only).
    commit: Option<Histogram<u64>>,
    user_us: u64,
    sys_us: u64,
    io: Option<(u64, u64)>,
    value_bytes: usize,
}

impl Run {
    fn new(batch: usize, plain: bool) -> Run {
        Run {
            batch,
            messages: 0,
            commits: 0,
            elapsed: Duration::ZERO,
            txn: histogram(),
            commit: plain.then(histogram),
            user_us: 0,
            sys_us: 0,
            io: None,
            value_bytes: 0,
        }
    }

    fn json(&self) -> Value {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let per_msg = |us: u64| (us as f64 / self.messages.max(1) as f64 * 100.0).round() / 100.0;
        let q = |h: &Histogram<u64>, p: f64| if h.is_empty() { Value::Null } else { json!(h.value_at_quantile(p)) };
        let (commit_p50, commit_p99) = match &self.commit {
            Some(h) => (q(h, 0.5), q(h, 0.99)),
            None => (Value::Null, Value::Null),
        };
        let per_commit = |n: u64| (n as f64 / self.commits.max(1) as f64 * 10.0).round() / 10.0;
        json!({
            "batch": self.batch,
            "messages": self.messages,
            "commits": self.commits,
            "elapsed_s": (secs * 1000.0).round() / 1000.0,
            "msgs_per_s": (self.messages as f64 / secs).round(),
            "commits_per_s": (self.commits as f64 / secs * 10.0).round() / 10.0,
            "txn_p50_us": q(&self.txn, 0.5),
            "txn_p99_us": q(&self.txn, 0.99),
            "txn_max_us": if self.txn.is_empty() { Value::Null } else { json!(self.txn.max()) },
            "commit_p50_us": commit_p50,
            "commit_p99_us": commit_p99,
            "cpu_us_per_msg": per_msg(self.user_us + self.sys_us),
            "cpu_user_us_per_msg": per_msg(self.user_us),
            "cpu_sys_us_per_msg": per_msg(self.sys_us),
            "cpu_pct": ((self.user_us + self.sys_us) as f64 / (secs * 1e6) * 1000.0).round() / 10.0,
            "disk_bytes_per_commit": self.io.map(|(b, _)| per_commit(b)),
            "write_syscalls_per_commit": self.io.map(|(_, w)| per_commit(w)),
            "value_bytes": self.value_bytes,
        })
    }
}

/// The stop condition shared by both modes.
struct Until {
    deadline: Instant,
    messages: Option<u64>,
}

impl Until {
    fn more(&self, done: u64) -> bool {
        match self.messages {
            Some(n) => done < n,
            None => Instant::now() < self.deadline,
        }
    }

    /// Messages in the next batch: `batch`, or what is left of `--messages`.
    fn next(&self, done: u64, batch: usize) -> usize {
        match self.messages {
            Some(n) => (n - done).min(batch as u64) as usize,
            None => batch,
        }
    }
}

// ---------------------------------------------------------------- the two modes

/// Plain heed: one put per message, a commit per batch.
fn run_plain(
    dir: &Path,
    batch: usize,
    pad: &str,
    flags: &[String],
    until_of: impl Fn() -> Until,
) -> Result<Run, heed::Error> {
    let cfg = Config::default();
    let mut opts = EnvOpenOptions::new();
    opts.map_size(cfg.max_store_bytes as usize).max_dbs(8).max_readers(126);
    let mut extra = EnvFlags::empty();
    for f in flags {
        extra |= if f == "writemap" { EnvFlags::WRITE_MAP } else { EnvFlags::NO_META_SYNC };
    }
    if !extra.is_empty() {
        // SAFETY: NO_META_SYNC only weakens durability (the last commit may
        // roll back after a crash), which this benchmark does not rely on.
        unsafe { opts.flags(extra) };
    }
    // SAFETY: a fresh directory of our own, opened once by this process.
    let env = unsafe { opts.open(dir) }?;
    let mut wtxn = env.write_txn()?;
    let messages: Database<Bytes, Bytes> = env.create_database(&mut wtxn, Some("messages"))?;
    wtxn.commit()?;

    let mut run = Run::new(batch, true);
    let froms: Vec<String> = (0..PUBLISHERS).map(|p| format!("loadgen-{p}")).collect();
    let mut value = Vec::with_capacity(64 + pad.len());
    let (io0, (u0, s0)) = (proc_io(), cpu_us());
    let start = Instant::now();
    let until = until_of();
    let mut seq = 0u64;
    while until.more(run.messages) {
        let n = until.next(run.messages, batch);
        let t0 = Instant::now();
        let ts = now_ms();
        let mut wtxn = env.write_txn()?;
        for _ in 0..n {
            seq += 1;
            let from = froms[(seq % PUBLISHERS) as usize].as_bytes();
            value.clear();
            value.extend_from_slice(&ts.to_be_bytes());
            value.extend_from_slice(&(from.len() as u16).to_be_bytes());
            value.extend_from_slice(from);
            value.extend_from_slice(data_text(seq, pad).as_bytes());
            messages.put(&mut wtxn, &msg_key(CHANNEL_ID, seq), &value)?;
        }
        let t1 = Instant::now();
        wtxn.commit()?;
        let t2 = Instant::now();
        let _ = run.txn.record((t2 - t0).as_micros().max(1) as u64);
        if let Some(h) = run.commit.as_mut() {
            let _ = h.record((t2 - t1).as_micros().max(1) as u64);
        }
        run.messages += n as u64;
        run.commits += 1;
        run.value_bytes = value.len();
    }
    run.elapsed = start.elapsed();
    let (u1, s1) = cpu_us();
    (run.user_us, run.sys_us) = (u1 - u0, s1 - s0);
    run.io = io0.zip(proc_io()).map(|((b0, w0), (b1, w1))| (b1 - b0, w1 - w0));
    Ok(run)
}

/// roostd's own append path: `Store::append_batch` with the default policy.
fn run_like_roostd(
    dir: &Path,
    batch: usize,
    pad: &str,
    opts: &Opts,
    until_of: impl Fn() -> Until,
) -> Result<Run, String> {
    let cfg = Config::default();
    let store = Store::open(dir, cfg.max_store_bytes).map_err(|e| e.to_string())?;
    let retention = |ch: &str| {
        let (messages, age) = cfg.retention_for(ch);
        let messages = match opts.retention {
            Some(0) => u64::MAX,
            Some(n) => n,
            None => messages,
        };
        roostd::store::Retention { messages, age_ms: age.as_millis().min(u64::MAX as u128) as u64 }
    };
    let window_ms = cfg.dedupe_window.as_millis() as u64;
    let nonce = format!("{:x}{:x}", std::process::id(), now_ms() & 0xffff_ffff);

    let mut run = Run::new(batch, false);
    let mut appends: Vec<Append> = Vec::with_capacity(batch);
    let (io0, (u0, s0)) = (proc_io(), cpu_us());
    let start = Instant::now();
    let until = until_of();
    let mut seq = 0u64;
    while until.more(run.messages) {
        let n = until.next(run.messages, batch);
        // What the hub builds for each publish (`hub.rs`): owned strings.
        appends.clear();
        for _ in 0..n {
            seq += 1;
            let p = seq % PUBLISHERS;
            appends.push(Append {
                ch: CHANNEL.to_string(),
                from: format!("loadgen-{p}"),
                data: data_text(seq, pad),
                id: (!opts.no_id).then(|| format!("\"{nonce}-{p}-{seq}\"")),
                key: None,
                event: None,
            });
        }
        let t0 = Instant::now();
        let outcomes = store.append_batch(&appends, now_ms(), window_ms, &retention).map_err(|e| e.to_string())?;
        let _ = run.txn.record(t0.elapsed().as_micros().max(1) as u64);
        debug_assert_eq!(outcomes.len(), n);
        run.messages += n as u64;
        run.commits += 1;
        if let Some(a) = appends.first() {
            run.value_bytes = 10 + a.from.len() + a.data.len();
        }
    }
    run.elapsed = start.elapsed();
    let (u1, s1) = cpu_us();
    (run.user_us, run.sys_us) = (u1 - u0, s1 - s0);
    run.io = io0.zip(proc_io()).map(|((b0, w0), (b1, w1))| (b1 - b0, w1 - w0));
    Ok(run)
}

fn fmt_us(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |us| {
        if us >= 10_000 {
            format!("{:.1} ms", us as f64 / 1000.0)
        } else {
            format!("{us} µs")
        }
    })
}

fn main() {
    let opts = parse_opts();
    let (tmp, base) = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).unwrap_or_else(|e| usage(&format!("cannot create {}: {e}", d.display())));
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("heedbench.")
                .tempdir_in("/tmp")
                .unwrap_or_else(|e| usage(&format!("cannot make a temp dir: {e}")));
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let fs = fs_type(&base);
    let mut mode = String::from(if opts.like_roostd { "like-roostd" } else { "plain" });
    if opts.no_id {
        mode.push_str("+no-id");
    }
    if let Some(n) = opts.retention {
        mode.push_str(&format!("+retention-{n}"));
    }
    for f in &opts.flags {
        mode.push_str(&format!("+{f}"));
    }
    let pad = "x".repeat(opts.payload);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let stop = match opts.messages {
        Some(n) => format!("{n} messages"),
        None => format!("{:?}", opts.duration),
    };
    println!(
        "heedbench: {mode}, payload {} B, {stop} per batch size, in {} ({fs}); loadavg {load}",
        opts.payload,
        base.display()
    );
    if opts.keep && opts.dir.is_none() {
        println!("  (--keep: the temp dir stays)");
    }
    let mut runs = Vec::new();
    for &batch in &opts.batches {
        let dir = base.join(format!("heedbench-{}-{mode}-b{batch}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            usage(&format!("cannot create {}: {e}", dir.display()));
        }
        let until = || Until { deadline: Instant::now() + opts.duration, messages: opts.messages };
        let result = if opts.like_roostd {
            run_like_roostd(&dir, batch, &pad, &opts, until)
        } else {
            run_plain(&dir, batch, &pad, &opts.flags, until).map_err(|e| e.to_string())
        };
        if !opts.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let run = match result {
            Ok(r) => r.json(),
            Err(e) => {
                eprintln!("heedbench: batch {batch} failed: {e}");
                std::process::exit(1);
            }
        };
        println!(
            "  batch {batch:>5}: {:>9} msgs/s {:>8} commits/s  txn p50 {} p99 {}{}  CPU {} µs/msg (user {} sys {})  \
             disk {} B/commit, {} write syscalls/commit",
            run["msgs_per_s"],
            run["commits_per_s"],
            fmt_us(&run["txn_p50_us"]),
            fmt_us(&run["txn_p99_us"]),
            if run["commit_p50_us"].is_null() {
                String::new()
            } else {
                format!(" (commit call p50 {} p99 {})", fmt_us(&run["commit_p50_us"]), fmt_us(&run["commit_p99_us"]))
            },
            run["cpu_us_per_msg"],
            run["cpu_user_us_per_msg"],
            run["cpu_sys_us_per_msg"],
            run["disk_bytes_per_commit"],
            run["write_syscalls_per_commit"],
        );
        let _ = std::io::stdout().flush();
        runs.push(run);
    }
    let out = json!({
        "bench": "heedbench",
        "mode": mode,
        "payload": opts.payload,
        "dir": base.display().to_string(),
        "fs": fs,
        "loadavg": load,
        "runs": runs,
    });
    println!("{out}");
    if opts.keep {
        if let Some(t) = tmp {
            let _ = t.keep();
        }
    }
}
