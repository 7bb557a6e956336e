//! The outbound HTTP/1.1 client shared by the publish hook and webhook
//! delivery: one POST under one deadline, on the caller's (blocking) thread.
//!
//! The timeout is one deadline for the whole call: name lookup, connect,
//! TLS handshake, request and every read of the answer (a peer that drips a
//! byte at a time cannot stretch it). Host names are looked up by one
//! background thread per [`Target`] ([`Lookup`]), not on the call path,
//! because `getaddrinfo` cannot be interrupted: a lookup per call on a helper
//! thread would leave one stuck thread behind per call while DNS hangs.
//!
//! Answers are read strictly (RFC 9112 §6.3): a head over [`MAX_HEAD_BYTES`],
//! a body over [`MAX_ANSWER_BYTES`], both framings at once, or a body cut
//! short is an error, never a guess.
//!
//! `https://` uses rustls with the system's CA certificates
//! (`rustls-native-certs`: `/etc/ssl/certs` and friends, the ones
//! `update-ca-certificates` manages, so an operator adds a private CA the
//! usual way).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Largest answer body read (after chunked decoding); a longer one is an error.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Largest answer head (status line and headers), and separately the
/// trailer fields of a chunked answer.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Longest chunk-size line (the size and any chunk extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// How often a host name is looked up again, after a success and after a
/// failure.
const LOOKUP_EVERY: Duration = Duration::from_secs(30);
const LOOKUP_RETRY: Duration = Duration::from_secs(1);

/// A parsed `http://host:port/path` or `https://...` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    /// Errors name the URL, not the flag: the caller says which flag it was.
    pub fn parse(url: &str) -> Result<Url, String> {
        let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(format!("{url:?}: not an http:// or https:// URL")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?;
                (h.trim_start_matches('[').trim_end_matches(']'), port)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Url { https, host: host.to_string(), port, path: path.to_string() })
    }

    /// The `Host` header value: an IPv6 address goes in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// The client side of TLS: which certificate authorities are trusted.
#[derive(Clone)]
pub struct Tls(Arc<ClientConfig>);

impl Tls {
    /// The system's CA certificates. Fails when none can be read (then no
    /// `https://` call could ever succeed: better said at start).
    pub fn system() -> Result<Tls, String> {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            log::warn!("reading the system's CA certificates: {e}");
        }
        let tls = Tls::with_roots(found.certs)?;
        Ok(tls)
    }

    /// Only these certificate authorities (a private CA; tests).
    pub fn with_roots(certs: Vec<CertificateDer<'static>>) -> Result<Tls, String> {
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err("no usable CA certificate found (install ca-certificates) for https:// URLs".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls(Arc::new(config)))
    }
}

/// Where the peer listens: an IP address as given, or a host name whose
/// addresses a background thread keeps looked up.
pub enum Target {
    Addr(SocketAddr),
    Name(Arc<Lookup>),
}

/// How a host name is looked up (a parameter so tests can make it hang).
pub type LookupFn = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

pub fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

impl Target {
    /// `what` names the caller in log lines ("publish hook", "webhook").
    pub fn new(url: &Url, lookup: LookupFn, what: &'static str) -> Target {
        match url.host.parse::<IpAddr>() {
            Ok(ip) => Target::Addr(SocketAddr::new(ip, url.port)),
            Err(_) => Target::Name(Lookup::start(url.host.clone(), url.port, lookup, what)),
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

/// The latest lookup of a host name, refreshed by one thread.
///
/// Why a background thread rather than a lookup per call: `getaddrinfo`
/// blocks and cannot be given a deadline. Waiting for it on a short-lived
/// helper thread bounds the call, but leaves the helper stuck for the
/// resolver's own timeout (glibc: 5 s per try and server) — one more stuck
/// thread per call while DNS hangs, without bound. One thread per target
/// bounds that to one, and takes name lookup off the per-call path. The
/// cost: a changed address is seen within [`LOOKUP_EVERY`], and a failed
/// refresh keeps the last good addresses (the application is beside roostd;
/// a flaky resolver should not stop its calls).
#[derive(Default)]
pub struct Lookup {
    state: Mutex<Option<Result<Vec<SocketAddr>, String>>>,
    ready: Condvar,
}

impl Lookup {
    fn start(host: String, port: u16, lookup: LookupFn, what: &'static str) -> Arc<Lookup> {
        let shared = Arc::new(Lookup::default());
        // A weak handle: the thread ends once the target's users are gone.
        let weak = Arc::downgrade(&shared);
        let spawned = thread::Builder::new().name("roostd-dns".into()).spawn(move || loop {
            let result = lookup(&host, port);
            let Some(shared) = weak.upgrade() else { return };
            let pause = shared.store(what, &host, result);
            drop(shared);
            thread::sleep(pause);
        });
        if let Err(e) = spawned {
            let e = io::Error::other(format!("cannot start a lookup thread: {e}"));
            shared.store(what, "the host", Err(e));
        }
        shared
    }

    /// Records a lookup's result; answers how long to wait before the next.
    fn store(&self, what: &str, host: &str, result: io::Result<Vec<SocketAddr>>) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let pause = match result {
            Ok(addrs) if !addrs.is_empty() => {
                *state = Some(Ok(addrs));
                LOOKUP_EVERY
            }
            failed => {
                let why = failed.map_or_else(|e| e.to_string(), |_| "no address".into());
                if matches!(*state, Some(Ok(_))) {
                    log::warn!("{what}: looking up {host} again failed ({why}); keeping its last addresses");
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
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no complete answer within the timeout"))
}

/// The socket with every read and write bounded by the call's one deadline.
/// A timeout set once per read would let a peer that sends a byte every
/// 100 ms hold the calling thread for as long as it likes.
struct Deadlined {
    sock: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    /// A socket timeout shows as WouldBlock; say what it means.
    fn timed_out(e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                io::Error::new(io::ErrorKind::TimedOut, "no complete answer within the timeout")
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

/// Plain TCP or TLS over it, both under the deadline.
enum Wire {
    Plain(Deadlined),
    Tls(Box<StreamOwned<ClientConnection, Deadlined>>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
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

/// A complete answer: its status, and its body when the caller asked for it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One POST of `body` with `headers` (besides Host, Content-Length and
/// `Connection: close`), bounded by `timeout` from the name lookup to the
/// end of the answer. The body is read when `read_body(status)` says so
/// (else only the head). `tls` is needed for an `https://` URL. `Err` for
/// anything that is not a complete, readable answer.
pub fn post(
    url: &Url,
    target: &Target,
    tls: Option<&Tls>,
    timeout: Duration,
    headers: &[(&str, &str)],
    body: &[u8],
    read_body: impl Fn(u16) -> bool,
) -> io::Result<Answer> {
    let deadline = Instant::now() + timeout;
    let addrs = target.addrs(deadline)?;
    let sock = connect(&addrs, deadline)?;
    sock.set_nodelay(true)?;
    let sock = Deadlined { sock, deadline };
    let wire = if url.https {
        let Some(Tls(config)) = tls else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "https:// without a TLS client setup"));
        };
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the URL's host is not a valid TLS name"))?;
        let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
        Wire::Tls(Box::new(StreamOwned::new(conn, sock)))
    } else {
        Wire::Plain(sock)
    };
    let mut conn = BufReader::new(wire);
    let mut request = format!("POST {} HTTP/1.1\r\nHost: {}\r\n", url.path, url.authority());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    conn.get_mut().write_all(&bytes)?;
    conn.get_mut().flush()?;
    let head = read_head(&mut conn)?;
    let body = if read_body(head.status) { self::read_body(&mut conn, head.framing)? } else { Vec::new() };
    Ok(Answer { status: head.status, body })
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject as _;
    use std::net::TcpListener;

    #[test]
    fn urls_of_both_schemes_are_parsed() {
        let u = Url::parse("https://app.local/hooks").unwrap();
        assert_eq!((u.https, u.host.as_str(), u.port, u.path.as_str()), (true, "app.local", 443, "/hooks"));
        assert_eq!(Url::parse("http://app.local").unwrap().port, 80);
        assert_eq!(Url::parse("https://[::1]:8443").unwrap().to_string(), "https://[::1]:8443/");
        assert!(Url::parse("ftp://app/x").unwrap_err().contains("not an http:// or https:// URL"));
        assert!(Url::parse("https://:443/").unwrap_err().contains("no host"));
        assert!(Url::parse("http://app:x/").unwrap_err().contains("bad port"));
    }

    /// A self-signed certificate for 127.0.0.1, its PEM and a server config.
    fn cert() -> (CertificateDer<'static>, Arc<rustls::ServerConfig>) {
        let made = crate::tls::self_signed(&["localhost".into()], &["127.0.0.1".parse().unwrap()], 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, &made.cert_pem).unwrap();
        std::fs::write(&k, &made.key_pem).unwrap();
        let der = CertificateDer::from_pem_slice(made.cert_pem.as_bytes()).unwrap();
        (der, crate::tls::load(&c, &k).unwrap())
    }

    /// A one-shot HTTPS server answering 204; joins to the request it read.
    fn tls_app(config: Arc<rustls::ServerConfig>) -> (Url, thread::JoinHandle<io::Result<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = thread::spawn(move || {
            let (sock, _) = l.accept()?;
            sock.set_read_timeout(Some(Duration::from_secs(10)))?;
            let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
            let mut tls = StreamOwned::new(conn, sock);
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.ends_with(b"{}") {
                let n = tls.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
            tls.conn.send_close_notify();
            tls.flush()?;
            Ok(String::from_utf8_lossy(&got).into_owned())
        });
        (Url { https: true, host: "127.0.0.1".into(), port, path: "/hooks".into() }, t)
    }

    fn post_to(url: &Url, tls: &Tls) -> io::Result<Answer> {
        let target = Target::new(url, system_lookup, "test");
        post(url, &target, Some(tls), Duration::from_secs(10), &[("X-Test", "1")], b"{}", |_| true)
    }

    #[test]
    fn an_https_post_goes_over_tls_to_a_trusted_server() {
        let (der, config) = cert();
        let (url, t) = tls_app(config);
        let answer = post_to(&url, &Tls::with_roots(vec![der]).unwrap()).unwrap();
        assert_eq!(answer.status, 204);
        let request = t.join().unwrap().unwrap();
        assert!(request.starts_with("POST /hooks HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("X-Test: 1\r\n"));
    }

    #[test]
    fn a_server_whose_certificate_is_not_trusted_is_refused() {
        let (_, config) = cert();
        let (other, _) = cert();
        let (url, t) = tls_app(config);
        let err = post_to(&url, &Tls::with_roots(vec![other]).unwrap()).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
        assert!(t.join().unwrap().is_err(), "the server saw no request");
    }
}
