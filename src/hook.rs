//! The publish hook (spec §5): before a client's `pub` is committed, the
//! main application may approve, rewrite or refuse it over HTTP.
//!
//! The call is blocking HTTP/1.1 on a small pool of worker threads, so the
//! event loop never waits for the main application: the loop submits a job
//! and goes on; results come back through a channel and the loop's waker.
//! The queue to the workers is bounded; a full queue refuses the publish
//! with `unavailable` rather than buffering without limit. The loop keeps at
//! most one hook call in flight per connection, which keeps each
//! connection's publishes in order, and every byte waiting for the hook
//! (queued on a connection or submitted) is held against one global
//! [`Budget`] ([`MAX_WAITING_BYTES`]), so many connections each queueing
//! their allowance cannot add up to unbounded memory.
//!
//! The hook fails closed: an approval counts only if it can be read whole.
//! A 2xx answer whose body is cut short, badly chunked, over
//! [`MAX_ANSWER_BYTES`] or not a JSON object refuses the publish with
//! `unavailable`, exactly like a 5xx: publishing the client's data when the
//! application may have meant to rewrite it would let through what the
//! application exists to stop. An empty body approves unchanged.
//!
//! The timeout is one deadline for the whole call: name lookup, connect,
//! request and every read of the answer (an application that drips a byte
//! at a time cannot stretch it). Host names are looked up by one background
//! thread per hook ([`Lookup`]), not on the call path, because
//! `getaddrinfo` cannot be interrupted: a lookup per call on a helper
//! thread would leave one stuck thread behind per publish while DNS hangs.
//!
//! Only plain `http://` URLs: the main application runs beside roostd, on
//! the same host or LAN.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Worker threads: enough to overlap a few slow answers, few enough for a Pi.
const WORKERS: usize = 4;
/// Jobs waiting for a worker.
const QUEUE: usize = 256;
/// Largest answer body read from the main application (after chunked
/// decoding); a longer one refuses the publish.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Largest answer head (status line and headers), and separately the
/// trailer fields of a chunked answer.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Longest chunk-size line (the size and any chunk extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes of publishes waiting for the hook across all connections, counted
/// by [`Hook::hold`]. 64 publishes per connection of up to
/// `--max-message-bytes` each is fine for one connection; past this total
/// the publish gets `err unavailable`.
pub const MAX_WAITING_BYTES: usize = 16 << 20;
/// How often a host name is looked up again, after a success and after a
/// failure.
const LOOKUP_EVERY: Duration = Duration::from_secs(30);
const LOOKUP_RETRY: Duration = Duration::from_secs(1);

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HookUrl {
    pub fn parse(url: &str) -> Result<HookUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--publish-hook {url:?}: only http:// URLs are supported (the main application runs beside roostd)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p.parse().map_err(|_| format!("--publish-hook {url:?}: bad port {p:?}"))?;
                (h.trim_start_matches('[').trim_end_matches(']'), port)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("--publish-hook {url:?}: no host"));
        }
        Ok(HookUrl { host: host.to_string(), port, path: path.to_string() })
    }

    /// The `Host` header value: an IPv6 address goes in brackets.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One publish to ask about.
pub struct Job<T> {
    pub ticket: T,
    /// The client's own token, sent as Bearer so the application knows who asks.
    pub token: String,
    /// `{"ch","from","data","id"}`
    pub body: String,
}

/// The main application's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: publish; `Some(data)` (JSON text) replaces the message's data.
    Approve(Option<String>),
    /// 4xx: refused (`err forbidden`).
    Refuse,
    /// Timeout, 3xx, 5xx, no answer, or a 2xx that cannot be read whole
    /// (`err unavailable`).
    Unavailable,
}

/// The global count of bytes waiting for the hook, shared by every
/// connection. Atomic because a [`Held`] may be dropped on a worker thread
/// (a job still queued when the hook shuts down).
#[derive(Clone, Debug)]
struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget { used: Arc::new(AtomicUsize::new(0)), limit }
    }

    fn hold(&self, bytes: usize) -> Option<Held> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .ok()?;
        Some(Held { used: self.used.clone(), bytes })
    }
}

/// Bytes held against the hook's budget; given back when dropped — when the
/// publish was decided, refused, or its connection went away — so no path
/// can forget to return them.
#[derive(Debug)]
pub struct Held {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

pub struct Hook<T: Send + 'static> {
    jobs: SyncSender<Job<T>>,
    results: Receiver<(T, Verdict)>,
    budget: Budget,
}

impl<T: Send + 'static> Hook<T> {
    /// Starts the workers. `wake` is called after each result is queued.
    pub fn start(url: HookUrl, timeout: Duration, wake: Arc<dyn Fn() + Send + Sync>) -> Hook<T> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job<T>>(QUEUE);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (result_tx, results) = mpsc::channel();
        let target = Arc::new(Target::new(&url, system_lookup));
        for n in 0..WORKERS {
            let (rx, tx, url, wake) = (job_rx.clone(), result_tx.clone(), url.clone(), wake.clone());
            let target = target.clone();
            let spawned = thread::Builder::new()
                .name(format!("roostd-hook-{n}"))
                .spawn(move || work(rx, tx, &url, &target, timeout, &*wake));
            if let Err(e) = spawned {
                log::error!("cannot start a publish hook worker: {e}");
            }
        }
        Hook { jobs, results, budget: Budget::new(MAX_WAITING_BYTES) }
    }

    /// Holds `bytes` of a publish that is to wait for the hook; `None` when
    /// the global budget is spent (the publish gets `err unavailable`).
    pub fn hold(&self, bytes: usize) -> Option<Held> {
        self.budget.hold(bytes)
    }

    /// Queues a job; gives it back when the queue is full.
    pub fn submit(&self, job: Job<T>) -> Result<(), Job<T>> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }

    pub fn results(&self) -> impl Iterator<Item = (T, Verdict)> + '_ {
        self.results.try_iter()
    }
}

fn work<T>(
    jobs: Arc<Mutex<Receiver<Job<T>>>>,
    results: Sender<(T, Verdict)>,
    url: &HookUrl,
    target: &Target,
    timeout: Duration,
    wake: &(dyn Fn() + Send + Sync),
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let verdict = ask(url, target, timeout, &job.token, &job.body);
        if results.send((job.ticket, verdict)).is_err() {
            return;
        }
        wake();
    }
}

/// One hook call; anything that goes wrong is logged and is `Unavailable`.
fn ask(url: &HookUrl, target: &Target, timeout: Duration, token: &str, body: &str) -> Verdict {
    call(url, target, timeout, token, body).unwrap_or_else(|e| {
        log::warn!("publish hook http://{}{} failed: {e}", url.authority(), url.path);
        Verdict::Unavailable
    })
}

/// Where the application listens: an IP address as given, or a host name
/// whose addresses a background thread keeps looked up.
enum Target {
    Addr(SocketAddr),
    Name(Arc<Lookup>),
}

/// How a host name is looked up (a parameter so tests can make it hang).
type LookupFn = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

impl Target {
    fn new(url: &HookUrl, lookup: LookupFn) -> Target {
        match url.host.parse::<IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, url.port)),
            Err(_) => Target::Name(Lookup::start(url.host.clone(), url.port, lookup)),
        }
    }

    /// The addresses to try, waiting for the first lookup at most until `deadline`.
    fn addrs(&self, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
        match self {
            Target::Addr(a) => Ok(vec![*a]),
            Target::Name(lookup) => lookup.addrs(deadline),
        }
    }
}

/// The latest lookup of the hook's host name, refreshed by one thread.
///
/// Why a background thread rather than a lookup per call: `getaddrinfo`
/// blocks and cannot be given a deadline. Waiting for it on a short-lived
/// helper thread bounds the call, but leaves the helper stuck for the
/// resolver's own timeout (glibc: 5 s per try and server) — one more stuck
/// thread per publish while DNS hangs, without bound. One thread per hook
/// bounds that to one, and takes name lookup off the per-publish path. The
/// cost: a changed address is seen within [`LOOKUP_EVERY`], and a failed
/// refresh keeps the last good addresses (the application is beside roostd;
/// a flaky resolver should not stop its hook).
#[derive(Default)]
struct Lookup {
    state: Mutex<Option<Result<Vec<SocketAddr>, String>>>,
    ready: Condvar,
}

impl Lookup {
    fn start(host: String, port: u16, lookup: LookupFn) -> Arc<Lookup> {
        let shared = Arc::new(Lookup::default());
        // A weak handle: the thread ends once the hook's workers are gone.
        let weak = Arc::downgrade(&shared);
        let spawned = thread::Builder::new().name("roostd-hook-dns".into()).spawn(move || loop {
            let result = lookup(&host, port);
            let Some(shared) = weak.upgrade() else { return };
            let pause = shared.store(&host, result);
            drop(shared);
            thread::sleep(pause);
        });
        if let Err(e) = spawned {
            shared.store("the hook's host", Err(io::Error::other(format!("cannot start a lookup thread: {e}"))));
        }
        shared
    }

    /// Records a lookup's result; answers how long to wait before the next.
    fn store(&self, host: &str, result: io::Result<Vec<SocketAddr>>) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let pause = match result {
            Ok(addrs) if !addrs.is_empty() => {
                *state = Some(Ok(addrs));
                LOOKUP_EVERY
            }
            failed => {
                let why = failed.map_or_else(|e| e.to_string(), |_| "no address".into());
                if matches!(*state, Some(Ok(_))) {
                    log::warn!("publish hook: looking up {host} again failed ({why}); keeping its last addresses");
                } else {
                    *state = Some(Err(format!("cannot look up {host}: {why}")));
                }
                LOOKUP_RETRY
            }
        };
        self.ready.notify_all();
        pause
    }

    fn addrs(&self, deadline: Instant) -> io::Result<Vec<SocketAddr>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match &*state {
                Some(Ok(addrs)) => return Ok(addrs.clone()),
                Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::NotFound, e.clone())),
                None => {}
            }
            let left = time_left(deadline)?;
            state = self.ready.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }
}

/// What is left of the call's time; an error once it is spent.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no complete answer within --publish-hook-timeout"))
}

/// The socket with every read and write bounded by the call's one deadline.
/// A timeout set once per read would let an application that sends a byte
/// every 100 ms hold a worker for as long as it likes.
struct Deadlined {
    sock: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    /// A socket timeout shows as WouldBlock; say what it means.
    fn timed_out(e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                io::Error::new(io::ErrorKind::TimedOut, "no complete answer within --publish-hook-timeout")
            }
            _ => e,
        }
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(Some(time_left(self.deadline)?))?;
        self.sock.read(buf).map_err(Deadlined::timed_out)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(time_left(self.deadline)?))?;
        self.sock.write(buf).map_err(Deadlined::timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

fn connect(addrs: &[SocketAddr], deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    // `localhost` may give ::1 first while the application listens on
    // 127.0.0.1 only: try each address in turn, within the one deadline.
    for addr in addrs {
        match TcpStream::connect_timeout(addr, time_left(deadline)?) {
            Ok(sock) => return Ok(sock),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One POST, bounded by `timeout` from the name lookup to the end of the
/// answer. `Err` for anything that is not a complete, readable answer.
fn call(url: &HookUrl, target: &Target, timeout: Duration, token: &str, body: &str) -> io::Result<Verdict> {
    let deadline = Instant::now() + timeout;
    let addrs = target.addrs(deadline)?;
    let sock = connect(&addrs, deadline)?;
    sock.set_nodelay(true)?;
    let mut conn = BufReader::new(Deadlined { sock, deadline });
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path,
        url.authority(),
        body.len()
    );
    conn.get_mut().write_all(request.as_bytes())?;
    let head = read_head(&mut conn)?;
    match head.status {
        200..=299 => {
            let answer = read_body(&mut conn, head.framing)?;
            let data = replacement(&answer).map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
            Ok(Verdict::Approve(data))
        }
        400..=499 => Ok(Verdict::Refuse),
        _ => Ok(Verdict::Unavailable),
    }
}

/// How the answer's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// 1xx, 204, 304: no body.
    Empty,
    Length(usize),
    Chunked,
    /// Neither: the body ends when the application closes (we sent
    /// `Connection: close`).
    UntilClose,
}

struct AnswerHead {
    status: u16,
    framing: Framing,
}

fn malformed(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

fn read_head(r: &mut impl BufRead) -> io::Result<AnswerHead> {
    let mut budget = MAX_HEAD_BYTES;
    let status = status_code(&read_line(r, &mut budget)?)
        .ok_or_else(|| malformed("the answer does not start with an HTTP/1.x status line"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        let line = read_line(r, &mut budget)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed("a header line of the answer has no ':'"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = decimal(value).ok_or_else(|| malformed("the answer's Content-Length is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err(malformed("the answer has two different Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked` alone: we cannot undo gzip and the like, and a
            // body we cannot read is no approval.
            if chunked || !value.eq_ignore_ascii_case("chunked") {
                return Err(malformed("the answer's Transfer-Encoding is not just chunked"));
            }
            chunked = true;
        }
    }
    let framing = match (status, chunked, length) {
        (100..=199 | 204 | 304, _, _) => Framing::Empty,
        // Both is how responses are smuggled (RFC 9112 §6.3): refuse.
        (_, true, Some(_)) => return Err(malformed("the answer has both Content-Length and Transfer-Encoding")),
        (_, true, None) => Framing::Chunked,
        (_, false, Some(n)) => Framing::Length(n),
        (_, false, None) => Framing::UntilClose,
    };
    Ok(AnswerHead { status, framing })
}

/// `HTTP/1.x NNN reason` → NNN.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    let valid = version.starts_with("HTTP/1.") && code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit());
    valid.then(|| code.parse().ok()).flatten()
}

/// Digits only: `parse` would also take a `+`.
fn decimal(text: &str) -> Option<usize> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

/// One line without its CRLF (or LF), charged against `budget`.
fn read_line(r: &mut impl BufRead, budget: &mut usize) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r.by_ref().take(*budget as u64).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(if n == *budget {
            malformed("the answer's head is too long")
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "the answer ended in its head")
        });
    }
    *budget -= n;
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    // Header values we read are ASCII; others may be anything.
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Appends exactly `n` bytes to `out`, or fails.
fn read_exact_into(r: &mut impl BufRead, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
    let got = r.by_ref().take(n as u64).read_to_end(out)?;
    if got < n {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the answer ended before its body was complete"));
    }
    Ok(())
}

fn too_long() -> io::Error {
    malformed("the answer's body is over 1 MiB")
}

fn read_body(r: &mut impl BufRead, framing: Framing) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    match framing {
        Framing::Empty => {}
        Framing::Length(n) if n > MAX_ANSWER_BYTES => return Err(too_long()),
        Framing::Length(n) => read_exact_into(r, n, &mut body)?,
        Framing::Chunked => read_chunked(r, &mut body)?,
        Framing::UntilClose => {
            r.by_ref().take(MAX_ANSWER_BYTES as u64 + 1).read_to_end(&mut body)?;
            if body.len() > MAX_ANSWER_BYTES {
                return Err(too_long());
            }
        }
    }
    Ok(body)
}

/// Decodes a chunked body (RFC 9112 §7.1) into `body`, at most
/// [`MAX_ANSWER_BYTES`] of it; trailer fields are read and dropped.
fn read_chunked(r: &mut impl BufRead, body: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let mut limit = MAX_CHUNK_LINE;
        let line = read_line(r, &mut limit)?;
        let size = line.split(';').next().unwrap_or_default().trim();
        // 1*HEXDIG: `from_str_radix` alone would also take a sign.
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed("a chunk size of the answer is not hexadecimal"));
        }
        let size = usize::from_str_radix(size, 16).map_err(|_| too_long())?;
        if size == 0 {
            break;
        }
        if size > MAX_ANSWER_BYTES - body.len() {
            return Err(too_long());
        }
        read_exact_into(r, size, body)?;
        match read_line(r, &mut 2) {
            Ok(end) if end.is_empty() => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(e),
            _ => return Err(malformed("a chunk of the answer is longer than its size")),
        }
    }
    let mut budget = MAX_HEAD_BYTES;
    while !read_line(r, &mut budget)?.is_empty() {}
    Ok(())
}

/// The body of a 2xx answer: empty approves unchanged; a JSON object
/// approves, and its `data` (when present, `null` too) replaces the
/// message's data. Anything else is an answer we cannot understand, and
/// so no approval: `Err` says why.
fn replacement(answer: &[u8]) -> Result<Option<String>, &'static str> {
    use serde::Deserialize as _;
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        // Present, even as `null`, means "replace" (spec §5): serde's own
        // `Option` would read `null` as absent.
        #[serde(borrow, default, deserialize_with = "present")]
        data: Option<&'a RawValue>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(d).map(Some)
    }
    let text = std::str::from_utf8(answer).map_err(|_| "the answer's body is not UTF-8")?;
    let text = text.trim_matches([' ', '\t', '\r', '\n']);
    if text.is_empty() {
        return Ok(None);
    }
    // Checked first: serde would also read `[...]` into the struct.
    if !text.starts_with('{') {
        return Err("the answer's body is neither empty nor a JSON object");
    }
    let a: Answer<'_> = serde_json::from_str(text).map_err(|_| "the answer's body is not valid JSON")?;
    Ok(a.data.map(|d| d.get().to_string()))
}

/// The body sent to the hook: `{"ch","from","data","id"}` (`id` null when absent).
pub fn request_body(ch: &str, from: &str, data: &str, id: Option<&str>) -> String {
    let mut out = String::with_capacity(48 + ch.len() + from.len() + data.len());
    out.push_str("{\"ch\":");
    crate::wire::json_str(&mut out, ch);
    out.push_str(",\"from\":");
    crate::wire::json_str(&mut out, from);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push_str(",\"id\":");
    out.push_str(id.unwrap_or("null"));
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A wall-clock bound measured natively, ten times longer when the
    /// suite runs under qemu (`ROOSTD_TEST_SCALE=small`, as
    /// tests/support's `within`).
    fn within(d: Duration) -> Duration {
        if std::env::var("ROOSTD_TEST_SCALE").is_ok_and(|v| v == "small") {
            d * 10
        } else {
            d
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            HookUrl::parse("http://127.0.0.1:9000/hook").unwrap(),
            HookUrl { host: "127.0.0.1".into(), port: 9000, path: "/hook".into() }
        );
        assert_eq!(HookUrl::parse("http://app.local").unwrap().port, 80);
        assert_eq!(HookUrl::parse("http://[::1]:81/x").unwrap().host, "::1");
        assert_eq!(HookUrl::parse("http://[::1]:81/x").unwrap().authority(), "[::1]:81");
        assert!(HookUrl::parse("https://app/x").unwrap_err().contains("only http://"));
        assert!(HookUrl::parse("http://:80/").is_err());
    }

    #[test]
    fn replacements() {
        assert_eq!(replacement(br#"{"data":{"x":1}}"#), Ok(Some(r#"{"x":1}"#.into())));
        assert_eq!(replacement(br#" {"ok":true} "#), Ok(None));
        assert_eq!(replacement(br#"{"data":null}"#), Ok(Some("null".into())));
        assert_eq!(replacement(b""), Ok(None));
        assert_eq!(replacement(b" \r\n"), Ok(None));
        assert!(replacement(b"ok").is_err());
        assert!(replacement(br#"[{"data":1}]"#).is_err());
        assert!(replacement(br#"{"data":1} x"#).is_err());
        assert!(replacement(br#"{"data":1,"data":2}"#).is_err());
        assert!(replacement(b"{\"data\":\"\xff\"}").is_err());
    }

    /// A one-shot HTTP "application": reads the request, then hands the
    /// socket to `answer`; joins to the request text.
    fn app_with(answer: impl FnOnce(&mut TcpStream) + Send + 'static) -> (HookUrl, thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).unwrap_or(0);
            answer(&mut s);
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        (HookUrl { host: "127.0.0.1".into(), port, path: "/hook".into() }, t)
    }

    /// A one-shot HTTP server answering with `answer` after `delay`, then closing.
    fn app(answer: impl Into<Vec<u8>>, delay: Duration) -> (HookUrl, thread::JoinHandle<String>) {
        let answer = answer.into();
        app_with(move |s| {
            thread::sleep(delay);
            let _ = s.write_all(&answer);
        })
    }

    /// Asks the application at `url` (an IP address) with `timeout`.
    fn ask_app(url: &HookUrl, timeout: Duration) -> Verdict {
        ask(url, &Target::new(url, system_lookup), timeout, "tok", r#"{"ch":"a"}"#)
    }

    fn verdict_for(answer: impl Into<Vec<u8>>) -> Verdict {
        let (url, t) = app(answer, Duration::ZERO);
        let got = ask_app(&url, Duration::from_secs(5));
        t.join().unwrap();
        got
    }

    #[test]
    fn verdicts_by_status() {
        let cases: [(&'static str, Verdict); 5] = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{\"data\":\"HELLO\"}",
                Verdict::Approve(Some("\"HELLO\"".into())),
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Verdict::Approve(None)),
            ("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", Verdict::Refuse),
            ("HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n", Verdict::Unavailable),
            ("HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", Verdict::Unavailable),
        ];
        for (answer, want) in cases {
            let (url, t) = app(answer, Duration::ZERO);
            let got = ask_app(&url, Duration::from_secs(5));
            assert_eq!(got, want, "{answer}");
            let req = t.join().unwrap();
            assert!(req.starts_with("POST /hook HTTP/1.1\r\n"));
            assert!(req.contains("Authorization: Bearer tok\r\n"));
            assert!(req.ends_with("\r\n\r\n{\"ch\":\"a\"}"));
        }
    }

    #[test]
    fn an_empty_2xx_body_approves_unchanged() {
        for answer in [
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(verdict_for(answer), Verdict::Approve(None), "{answer:?}");
        }
    }

    #[test]
    fn a_chunked_answer_is_decoded() {
        let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n\
                      7\r\n{\"data\"\r\n\
                      A;note=1\r\n:\"HELLO\"} \r\n\
                      0\r\nX-Trailer: yes\r\n\r\n";
        assert_eq!(verdict_for(answer), Verdict::Approve(Some("\"HELLO\"".into())));
    }

    #[test]
    fn a_2xx_that_cannot_be_read_whole_is_unavailable() {
        let ok = "HTTP/1.1 200 OK\r\n";
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases: Vec<(&str, String)> = vec![
            ("chunk size not hex", format!("{chunked}zz\r\n{{}}\r\n0\r\n\r\n")),
            ("chunk size with a sign", format!("{chunked}+2\r\n{{}}\r\n0\r\n\r\n")),
            ("chunk longer than its size", format!("{chunked}2\r\n{{\"data\":1}}\r\n0\r\n\r\n")),
            ("cut inside a chunk", format!("{chunked}10\r\n{{\"data\":1")),
            ("no last chunk", format!("{chunked}2\r\n{{}}\r\n")),
            ("no end of trailers", format!("{chunked}2\r\n{{}}\r\n0\r\n")),
            ("chunked and gzip", format!("{ok}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")),
            ("both framings", format!("{ok}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
            ("bad JSON", format!("{ok}Content-Length: 5\r\n\r\n{{nope")),
            ("text", format!("{ok}Content-Length: 2\r\n\r\nok")),
            ("a JSON array", format!("{ok}Content-Length: 12\r\n\r\n[{{\"data\":1}}]")),
            ("truncated before Content-Length", format!("{ok}Content-Length: 100\r\n\r\n{{\"data\":1}}")),
            ("two Content-Lengths", format!("{ok}Content-Length: 10\r\nContent-Length: 2\r\n\r\n{{\"data\":1}}")),
            ("Content-Length with a sign", format!("{ok}Content-Length: +2\r\n\r\n{{}}")),
            ("cut in the head", format!("{ok}Content-Length: 2\r\n")),
            ("no status line", "HTTP/1.1 OK\r\n\r\n".to_string()),
            ("not HTTP", "SSH-2.0-OpenSSH\r\n\r\n".to_string()),
        ];
        for (what, answer) in cases {
            assert_eq!(verdict_for(answer), Verdict::Unavailable, "{what}");
        }
    }

    #[test]
    fn an_answer_over_1_mib_is_unavailable() {
        let mut body = format!("{{\"data\":\"{}\"}}", "x".repeat(MAX_ANSWER_BYTES)).into_bytes();
        let mut by_length = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        by_length.extend_from_slice(&body);
        assert_eq!(verdict_for(by_length), Verdict::Unavailable, "by Content-Length");
        let mut until_close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        until_close.extend_from_slice(&body);
        assert_eq!(verdict_for(until_close), Verdict::Unavailable, "until close");
        // In chunks of 64 KiB, no one of them too big: the sum is.
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in body.chunks(64 << 10) {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(verdict_for(chunked), Verdict::Unavailable, "chunked");
        // One byte less than the limit is read whole.
        body.truncate(MAX_ANSWER_BYTES - 2);
        body.extend_from_slice(b"\"}");
        let mut just_fits = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        just_fits.extend_from_slice(&body);
        assert!(matches!(verdict_for(just_fits), Verdict::Approve(Some(_))));
    }

    #[test]
    fn a_slow_application_times_out() {
        let (url, t) = app("HTTP/1.1 200 OK\r\n\r\n", within(Duration::from_millis(800)));
        let started = Instant::now();
        assert_eq!(ask_app(&url, within(Duration::from_millis(200))), Verdict::Unavailable);
        // Gave up well before the application would have answered.
        assert!(started.elapsed() < within(Duration::from_millis(700)));
        t.join().unwrap();
    }

    /// The timeout is one deadline for the whole answer, not per read: an
    /// application that sends a byte every 100 ms gets no longer.
    #[test]
    fn an_answer_dripped_a_byte_at_a_time_is_cut_off_at_the_deadline() {
        let answer = "HTTP/1.1 200 OK, but slowly\r\nContent-Length: 2\r\n\r\n{}";
        let (url, t) = app_with(move |s| {
            for b in answer.bytes() {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(within(Duration::from_millis(100)));
            }
        });
        let timeout = Duration::from_millis(500);
        let started = Instant::now();
        assert_eq!(ask_app(&url, timeout), Verdict::Unavailable);
        let took = started.elapsed();
        // The whole answer would take 5 s (50 s emulated); slack for a slow
        // (emulated) machine.
        assert!(took < timeout + within(Duration::from_millis(500)), "answered after {took:?}");
        t.join().unwrap();
    }

    fn hanging_lookup(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        thread::sleep(within(Duration::from_secs(5)));
        Err(io::Error::other("gave up"))
    }

    /// The deadline covers the name lookup: a resolver that hangs costs a
    /// call its timeout, not the resolver's own.
    #[test]
    fn a_hanging_name_lookup_is_bounded_by_the_timeout() {
        let url = HookUrl { host: "app.example".into(), port: 9, path: "/hook".into() };
        let target = Target::new(&url, hanging_lookup);
        for _ in 0..2 {
            let started = Instant::now();
            assert_eq!(ask(&url, &target, Duration::from_millis(300), "t", "{}"), Verdict::Unavailable);
            let took = started.elapsed();
            assert!(took < within(Duration::from_millis(1300)), "the call took {took:?}");
        }
    }

    #[test]
    fn a_host_name_is_looked_up_and_each_address_tried() {
        // `localhost` may give ::1 before 127.0.0.1, where the app listens.
        let (mut url, t) = app("HTTP/1.1 204 No Content\r\n\r\n", Duration::ZERO);
        url.host = "localhost".into();
        let target = Target::new(&url, system_lookup);
        assert!(matches!(target, Target::Name(_)));
        assert_eq!(ask(&url, &target, Duration::from_secs(5), "t", "{}"), Verdict::Approve(None));
        assert!(t.join().unwrap().contains("Host: localhost:"));
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_is_given_back_on_drop() {
        let budget = Budget::new(100);
        let a = budget.hold(60).unwrap();
        assert!(budget.hold(41).is_none(), "60 + 41 is past 100");
        let b = budget.hold(40).unwrap();
        assert!(budget.hold(1).is_none());
        drop(a);
        assert!(budget.hold(60).is_some(), "a's bytes came back (and this one's at once)");
        drop(b);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
        assert!(budget.hold(usize::MAX).is_none(), "no overflow");
    }

    #[test]
    fn bodies() {
        let v: serde_json::Value =
            serde_json::from_str(&request_body("room:1", "al\"ice", r#"{"t":1}"#, Some("\"x\""))).unwrap();
        assert_eq!(v, serde_json::json!({"ch":"room:1","from":"al\"ice","data":{"t":1},"id":"x"}));
        let v: serde_json::Value = serde_json::from_str(&request_body("c", "u", "null", None)).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
    }
}
