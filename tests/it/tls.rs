//! TLS over real sockets: `roostd serve --tls-cert/--tls-key` against
//! hostile bytes (garbage, a truncated ClientHello, a hundred half-open
//! handshakes), good clients that must keep working meanwhile, and the
//! command line (`serve` refusing bad certificate files, `roostd cert`).
//!
//! The good client is rustls (already the server's dependency, here as a
//! client with its own verifier and nothing shared with the server) and,
//! where the machine has one, an independent one: Python's `ssl` module or
//! `openssl s_client`. Hostile input is raw `std::net::TcpStream`.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tungstenite::{Message, WebSocket};

use crate::support::*;

// ---------------------------------------------------------------------------
// Certificates and servers.

/// A certificate made by `roostd cert` in its own folder.
struct Cert {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    /// What `roostd cert` printed.
    fingerprint: String,
}

impl Cert {
    fn new() -> Cert {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = roostd_cert(&cert, &key);
        assert_eq!(out.status.code(), Some(0), "roostd cert: {}", String::from_utf8_lossy(&out.stderr));
        let fingerprint = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Cert { dir, cert, key, fingerprint }
    }

    fn cert_str(&self) -> &str {
        self.cert.to_str().unwrap()
    }

    fn key_str(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

fn roostd_cert(cert: &Path, key: &Path) -> Output {
    run_roostd(
        &[
            "cert",
            "--name",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &[],
    )
}

/// A TLS server with a fresh certificate and `args`.
fn tls_server(args: &[&str]) -> (TestServer, Cert) {
    let cert = Cert::new();
    let server = TestServer::start(&[&["--tls-cert", cert.cert_str(), "--tls-key", cert.key_str()], args].concat());
    // The log line is stored just after the address is announced: wait for it.
    let deadline = Instant::now() + io_timeout();
    while !server.log().contains("connections, TLS)") {
        assert!(Instant::now() < deadline, "the startup line should say TLS:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    (server, cert)
}

fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Handshake timeout in these tests: short, but longer under emulation.
fn handshake_timeout() -> Duration {
    if small() {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(1)
    }
}

fn handshake_timeout_arg() -> String {
    format!("{}ms", handshake_timeout().as_millis())
}

// ---------------------------------------------------------------------------
// The good client: rustls, trusting exactly the server's certificate.

fn client_config(cert: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects and completes the TLS handshake (so errors show up here).
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Result<Tls, std::io::Error> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(io_timeout()))?;
    sock.set_write_timeout(Some(io_timeout()))?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(config.clone(), name).unwrap(), sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// One HTTP request over TLS; the answer (head and Content-Length body).
fn tls_http(tls: &mut Tls, request: &str) -> HttpResponse {
    tls.write_all(request.as_bytes()).expect("writing the request");
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match tls.read(&mut byte) {
            Ok(0) => panic!("EOF in the response head: {:?}", String::from_utf8_lossy(&raw)),
            Ok(_) => raw.push(byte[0]),
            Err(e) => panic!("reading the response head: {e} (got {:?})", String::from_utf8_lossy(&raw)),
        }
    }
    let mut resp = HttpResponse::parse(&raw);
    let len: usize = resp.header("Content-Length").expect("a Content-Length").parse().unwrap();
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).expect("reading the body");
    resp.body = String::from_utf8(body).unwrap();
    resp
}

/// `GET path` over a fresh TLS connection.
fn tls_get(server: &TestServer, config: &Arc<ClientConfig>, path: &str) -> HttpResponse {
    let mut tls = tls_connect(server.addr, config).unwrap_or_else(|e| {
        panic!("a good TLS client could not connect: {e}; the server log ends with:\n{}", server.log_tail(20))
    });
    tls_http(&mut tls, &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
}

#[track_caller]
fn assert_healthy(server: &TestServer, config: &Arc<ClientConfig>) {
    let resp = tls_get(server, config, "/healthz");
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok"), "{resp:?}");
}

/// A WebSocket over TLS (wss://) with `?token=`.
fn wss(server: &TestServer, config: &Arc<ClientConfig>, token: &str) -> WebSocket<Tls> {
    let tls = tls_connect(server.addr, config).expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws?token={token}", server.port());
    let (ws, resp) = tungstenite::client::client_with_config(url, tls, None).expect("WebSocket handshake over TLS");
    assert_eq!(resp.status(), 101);
    ws
}

fn ws_request(ws: &mut WebSocket<Tls>, v: Value) -> Value {
    ws.send(Message::text(v.to_string())).unwrap();
    ws_next(ws)
}

fn ws_next(ws: &mut WebSocket<Tls>) -> Value {
    loop {
        match ws.read().expect("reading a frame") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// A full wss:// round trip: two clients, a subscription, a publish, the delivery.
fn assert_wss_pub_sub(server: &TestServer, config: &Arc<ClientConfig>, ch: &str) {
    let mut alice = wss(server, config, &token_all("alice"));
    let mut bob = wss(server, config, &token_all("bob"));
    let ok = ws_request(&mut alice, json!({"op": "sub", "ch": ch}));
    assert_eq!(ok["op"], "subok", "{ok}");
    let ack = ws_request(&mut bob, json!({"op": "pub", "ch": ch, "data": {"over": "tls"}, "id": "t"}));
    assert_eq!(ack["op"], "ack", "{ack}");
    let msg = ws_next(&mut alice);
    assert_eq!(
        (&msg["op"], &msg["seq"], &msg["from"], &msg["data"]),
        (&json!("msg"), &ack["seq"], &json!("bob"), &json!({"over": "tls"}))
    );
    let _ = alice.close(None);
    let _ = bob.close(None);
}

/// The bytes of a real ClientHello (one TLS record), as rustls sends it.
fn client_hello(config: &Arc<ClientConfig>) -> Vec<u8> {
    let mut conn = ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    assert_eq!(out[0], 0x16, "a handshake record");
    assert!(out.len() > 100, "{} bytes", out.len());
    out
}

// ---------------------------------------------------------------------------
// An independent client: Python's ssl module, or openssl s_client.

const PY_CLIENT: &str = r#"
import hashlib, socket, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        der, version = s.getpeercert(binary_form=True), s.version()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
print(data.split(b"\r\n")[0].decode())
print(version)
print(":".join("%02X" % b for b in hashlib.sha256(der).digest()))
"#;

/// `GET /healthz` with a TLS stack nobody here wrote, verifying the
/// certificate against `cafile`: the status line and, where the tool tells
/// it, the fingerprint of the certificate it saw. None: no such tool here.
fn independent_healthz(port: u16, cafile: &Path) -> Option<(String, Option<String>)> {
    // Runs a client, killing it (by its handle) if it hangs for a minute.
    let run = |cmd: &mut Command, stdin: &[u8]| -> Option<Output> {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let out = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let err = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Some(Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() })
    };
    let port_s = port.to_string();
    if let Some(out) = run(Command::new("python3").args(["-c", PY_CLIENT, &port_s]).arg(cafile), b"") {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "python3 ssl client failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1] == "TLSv1.3" || lines[1] == "TLSv1.2", "{text}");
        return Some((lines[0].to_string(), Some(lines[2].to_string())));
    }
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let out = run(
        Command::new("openssl")
            .args(["s_client", "-quiet", "-ign_eof", "-verify_return_error", "-verify_hostname", "localhost"])
            .args(["-servername", "localhost", "-connect", &format!("127.0.0.1:{port}"), "-CAfile"])
            .arg(cafile),
        request,
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    assert!(!status.is_empty(), "openssl s_client got nothing: {}", String::from_utf8_lossy(&out.stderr));
    Some((status, None))
}

#[track_caller]
fn assert_independent_client_works(server: &TestServer, cert: &Cert) {
    match independent_healthz(server.port(), &cert.cert) {
        Some((status, fp)) => {
            assert_eq!(status, "HTTP/1.1 200 OK", "the log ends with:\n{}", server.log_tail(20));
            if let Some(fp) = fp {
                assert_eq!(fp, cert.fingerprint, "the certificate served is the one `roostd cert` made");
            }
        }
        // No silent pass: the check is that a client nobody here wrote gets through.
        None => panic!("neither python3 nor openssl could be run: apt-get install python3 (or openssl)"),
    }
}

// ---------------------------------------------------------------------------
// Raw sockets.

/// Reads until the server closes the connection (EOF or reset). Panics if
/// it is still open after `within`. Returns what was read and how long it took.
#[track_caller]
fn read_until_closed(sock: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(start.elapsed());
        assert!(!left.is_zero(), "still open after {within:?} (read {got:?})");
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.read(&mut buf) {
            Ok(0) => return (got, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("still open after {within:?} (read {got:?})")
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return (got, start.elapsed()), // reset: closed too
        }
    }
}

/// True when the server has not closed this socket (nothing to read, no EOF).
fn still_open(sock: &TcpStream) -> bool {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let open = matches!((&mut &*sock).read(&mut buf), Err(e) if e.kind() == ErrorKind::WouldBlock);
    sock.set_nonblocking(false).unwrap();
    open
}

/// Whatever came back is no HTTP answer: nothing, or TLS alert records only.
#[track_caller]
fn assert_no_http(got: &[u8]) {
    assert!(!got.windows(5).any(|w| w == b"HTTP/"), "an HTTP answer on a TLS port: {:?}", String::from_utf8_lossy(got));
    let mut rest = got;
    while !rest.is_empty() {
        assert!(rest.len() >= 5 && rest[0] == 0x15, "not a TLS alert record: {got:?}");
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        rest = &rest[(5 + len).min(rest.len())..];
    }
}

/// The `roostd_connections` gauge, read over TLS (this request counts as one).
fn open_connections(server: &TestServer, config: &Arc<ClientConfig>) -> u64 {
    let metrics = tls_get(server, config, "/metrics");
    let line = metrics.body.lines().find(|l| l.starts_with("roostd_connections ")).expect("roostd_connections");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits (bounded) until only the asking connection is left.
#[track_caller]
fn assert_connections_drain(server: &TestServer, config: &Arc<ClientConfig>) {
    let deadline = Instant::now() + io_timeout();
    loop {
        let n = open_connections(server, config);
        if n == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{n} connections still open; log:\n{}", server.log_tail(20));
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Hostile input.

#[test]
fn tls_clients_work_rustls_and_an_independent_one() {
    let (server, cert) = tls_server(&[]);
    let config = client_config(&cert.cert);
    let tls = tls_connect(server.addr, &config).unwrap();
    let served = tls.conn.peer_certificates().unwrap()[0].as_ref().to_vec();
    assert_eq!(fingerprint(&served), cert.fingerprint, "`roostd cert` printed the served certificate's SHA-256");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(tls);
    assert_healthy(&server, &config);
    assert_wss_pub_sub(&server, &config, "room:tls");
    assert_independent_client_works(&server, &cert);
}

#[test]
fn garbage_instead_of_a_client_hello_is_closed_and_good_clients_still_work() {
    let (server, cert) = tls_server(&["--handshake-timeout", &handshake_timeout_arg()]);
    let config = client_config(&cert.cert);
    let limit = handshake_timeout() + Duration::from_secs(2);
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("zero bytes", vec![0u8; 100]),
        ("plain HTTP", b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec()),
        (
            "a plain WebSocket upgrade",
            server.upgrade_request(&format!("/ws?token={}", token_all("plain")), "").into_bytes(),
        ),
        ("pseudo-random bytes", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()),
        ("an SSLv2 ClientHello", b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10\x07\x00\xc0\x05\x00\x80".to_vec()),
        ("a record over 16 KiB", b"\x16\x03\x01\xff\xff\x01\x00\xff\xfb\x03\x03".to_vec()),
        ("an alert before any hello", b"\x15\x03\x03\x00\x02\x02\x28".to_vec()),
        ("application data before any hello", b"\x17\x03\x03\x00\x05hello".to_vec()),
        ("a ChangeCipherSpec first", b"\x14\x03\x03\x00\x01\x01".to_vec()),
    ];
    for (what, bytes) in &garbage {
        let mut sock = server.tcp();
        let _ = sock.write_all(bytes);
        let (got, took) = read_until_closed(&mut sock, limit);
        assert_no_http(&got);
        eprintln!("{what}: closed after {took:?} with {} bytes back", got.len());
        // A good client right after each.
        assert_healthy(&server, &config);
    }
    // A real ClientHello followed by garbage where the next record should be.
    let mut hello = client_hello(&config);
    hello.extend_from_slice(&[0xde; 64]);
    let mut sock = server.tcp();
    sock.write_all(&hello).unwrap();
    let (got, _) = read_until_closed(&mut sock, limit);
    assert!(!got.windows(5).any(|w| w == b"HTTP/"), "{got:?}");
    assert_wss_pub_sub(&server, &config, "after-garbage");
    assert_independent_client_works(&server, &cert);
    assert_connections_drain(&server, &config);
}

#[test]
fn a_truncated_client_hello_is_dropped_at_the_handshake_timeout() {
    let (server, cert) = tls_server(&["--handshake-timeout", &handshake_timeout_arg()]);
    let config = client_config(&cert.cert);
    let hello = client_hello(&config);
    let mut sock = server.tcp();
    sock.write_all(&hello[..20]).unwrap();
    let (got, took) = read_until_closed(&mut sock, handshake_timeout() * 3 + Duration::from_secs(2));
    assert_no_http(&got);
    assert!(took >= handshake_timeout() - Duration::from_millis(100), "dropped early, after {took:?}");
    eprintln!("a truncated ClientHello was dropped after {took:?} (handshake timeout {:?})", handshake_timeout());

    // TLS done, but no request head: the same deadline, which counts from
    // the connection's accept (the handshake is part of the head's time;
    // under emulation it takes a good part of a second).
    let start = Instant::now();
    let mut idle = tls_connect(server.addr, &config).unwrap();
    let mut buf = [0u8; 64];
    match idle.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected plaintext: {:?}", &buf[..n]),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("an idle TLS connection was not dropped within {:?}", io_timeout())
        }
        Err(_) => {} // closed without close_notify: also dropped
    }
    let took = start.elapsed();
    assert!(took >= handshake_timeout() - Duration::from_millis(100), "dropped early, after {took:?}");
    assert!(took < handshake_timeout() * 3 + Duration::from_secs(2), "dropped late, after {took:?}");
    assert_healthy(&server, &config);
    assert_connections_drain(&server, &config);
}

#[test]
fn a_hundred_half_open_tls_handshakes_do_not_stop_a_good_client() {
    // Long enough that the half-open sockets are all still there while the
    // good client is served.
    let timeout = if small() { 20 } else { 5 };
    let (server, cert) = tls_server(&["--handshake-timeout", &format!("{timeout}s")]);
    let config = client_config(&cert.cert);
    let hello = client_hello(&config);
    let opened = Instant::now();
    let mut half_open: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut sock = server.tcp();
            sock.write_all(&hello[..20]).unwrap();
            sock
        })
        .collect();
    // Every one of them is held by the server (the gauge counts them, plus
    // the request asking).
    let deadline = Instant::now() + io_timeout();
    while open_connections(&server, &config) < 101 {
        assert!(Instant::now() < deadline, "the half-open sockets never showed up in roostd_connections");
        std::thread::sleep(Duration::from_millis(20));
    }
    let served = Instant::now();
    assert_healthy(&server, &config);
    assert_wss_pub_sub(&server, &config, "beside-half-open");
    assert_independent_client_works(&server, &cert);
    let took = served.elapsed();
    assert!(opened.elapsed() < Duration::from_secs(timeout), "too slow to prove anything: {:?}", opened.elapsed());
    let open = half_open.iter().filter(|s| still_open(s)).count();
    assert_eq!(open, 100, "the half-open sockets were dropped before the good client finished");
    eprintln!("good clients served in {took:?} beside 100 half-open TLS handshakes");
    // And then all of them go at the deadline.
    let limit = Duration::from_secs(timeout * 2 + 5);
    for sock in &mut half_open {
        let (got, _) = read_until_closed(sock, limit.saturating_sub(opened.elapsed()).max(Duration::from_secs(1)));
        assert_no_http(&got);
    }
    assert_connections_drain(&server, &config);
    assert_healthy(&server, &config);
}

// ---------------------------------------------------------------------------
// The command line.

/// Exit code 2 and a one-line reason on stderr, which is returned.
#[track_caller]
fn assert_exit_2(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "a one-line reason, got: {err:?}");
    lines[0].to_string()
}

fn serve_once(data: &Path, cert: &str, key: &str) -> Output {
    run_roostd(
        &["serve", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap(), "--tls-cert", cert, "--tls-key", key],
        &[("ROOSTD_SECRET", SECRET)],
    )
}

#[test]
fn serve_refuses_missing_or_mismatched_certificate_files_with_exit_2() {
    let good = Cert::new();
    let other = Cert::new();
    let data = tempfile::tempdir().unwrap();
    let missing = good.dir.path().join("nope.pem");
    let missing = missing.to_str().unwrap();

    let line = assert_exit_2(&serve_once(data.path(), missing, good.key_str()));
    assert!(line.contains("certificate") && line.contains(missing), "{line}");
    let line = assert_exit_2(&serve_once(data.path(), good.cert_str(), missing));
    assert!(line.contains("private key") && line.contains(missing), "{line}");
    let line = assert_exit_2(&serve_once(data.path(), good.cert_str(), other.key_str()));
    assert!(line.contains("do not go together"), "{line}");
    // The certificate where the key should be, and the other way round.
    let line = assert_exit_2(&serve_once(data.path(), good.cert_str(), good.cert_str()));
    assert!(line.contains("private key"), "{line}");
    let line = assert_exit_2(&serve_once(data.path(), good.key_str(), good.key_str()));
    assert!(line.contains("certificate"), "{line}");
    // Not PEM at all.
    let junk = good.dir.path().join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let line = assert_exit_2(&serve_once(data.path(), junk.to_str().unwrap(), good.key_str()));
    assert!(line.contains("certificate"), "{line}");
    // One without the other.
    let out = run_roostd(
        &["serve", "--listen", "127.0.0.1:0", "--data", data.path().to_str().unwrap(), "--tls-cert", good.cert_str()],
        &[("ROOSTD_SECRET", SECRET)],
    );
    assert!(assert_exit_2(&out).contains("--tls-key"));
    // None of these left a store behind, nor listened.
    assert!(!data.path().join("data.mdb").exists());
}

#[test]
fn cert_writes_a_0600_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    let out = roostd_cert(&cert, &key);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let fp = String::from_utf8(out.stdout.clone()).unwrap();
    let fp = fp.trim();
    assert_eq!(fp.len(), 95, "SHA-256 as AB:CD:…: {fp:?}");
    assert!(fp.split(':').all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit())), "{fp}");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "the key is private");
    let der = CertificateDer::from_pem_file(&cert).unwrap();
    assert_eq!(fingerprint(&der), fp, "the fingerprint printed is the certificate's");
    let (cert_before, key_before) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());

    // Both exist, only the certificate, only the key: exit 2, nothing changed.
    let line = assert_exit_2(&roostd_cert(&cert, &key));
    assert!(line.contains("exists"), "{line}");
    let fresh_key = dir.path().join("k2.pem");
    assert!(assert_exit_2(&roostd_cert(&cert, &fresh_key)).contains(cert.to_str().unwrap()));
    assert!(!fresh_key.exists(), "no key written when the certificate exists");
    let fresh_cert = dir.path().join("c2.pem");
    assert!(assert_exit_2(&roostd_cert(&fresh_cert, &key)).contains(key.to_str().unwrap()));
    assert!(!fresh_cert.exists(), "no certificate written when the key exists");
    assert_eq!(std::fs::read(&cert).unwrap(), cert_before);
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    // Usage errors.
    assert!(assert_exit_2(&run_roostd(&["cert"], &[])).contains("--name"));
    assert!(assert_exit_2(&run_roostd(&["cert", "--name", "x", "--ip", "pi.local"], &[])).contains("--ip"));
    // Each run makes a new key: a second certificate differs.
    let (c3, k3) = (dir.path().join("c3.pem"), dir.path().join("k3.pem"));
    let out = roostd_cert(&c3, &k3);
    assert_eq!(out.status.code(), Some(0));
    assert_ne!(String::from_utf8(out.stdout).unwrap().trim(), fp);
}

// ---------------------------------------------------------------------------
// A request that arrives with the client's Finished.

/// One client: ClientHello when `start` opens, then the client's Finished and
/// `GET /healthz` in one write (as OpenSSL sends them), then the answer's
/// status line — or None when none came within `wait`.
fn hello_then_finished_with_request(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    start: Arc<std::sync::Barrier>,
    wait: Duration,
) -> Option<String> {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    start.wait();
    while conn.wants_write() {
        conn.write_tls(&mut sock).unwrap();
    }
    // Read the server's flight until our side is done; hold our Finished back.
    while conn.is_handshaking() {
        if conn.read_tls(&mut sock).ok()? == 0 {
            return None;
        }
        conn.process_new_packets().unwrap();
    }
    conn.writer().write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    sock.write_all(&out).unwrap(); // Finished and the request in one segment
    let deadline = Instant::now() + wait;
    let mut plain = Vec::new();
    while !plain.windows(2).any(|w| w == b"\r\n") && Instant::now() < deadline {
        match conn.read_tls(&mut sock) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        conn.process_new_packets().ok()?;
        let mut buf = [0u8; 1024];
        while let Ok(n) = conn.reader().read(&mut buf) {
            if n == 0 {
                break;
            }
            plain.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&plain).into_owned();
    text.lines().next().filter(|l| l.starts_with("HTTP/")).map(str::to_string)
}

#[test]
fn a_request_sent_with_the_client_finished_is_answered() {
    // Many handshakes in one burst keep the event loop busy between reading a
    // ClientHello and flushing its answer, so clients' Finished + request
    // arrive while the server still counts the connection as handshaking.
    // The server's handshake deadline (10 s by default) stretched too: under
    // emulation 40 TLS handshakes at once can take longer than that, and a
    // connection closed at the deadline would count as unanswered here.
    let deadline = format!("{}ms", within(Duration::from_secs(10)).as_millis());
    let (server, cert) = tls_server(&["--handshake-timeout", &deadline]);
    let config = client_config(&cert.cert);
    let clients = 40;
    let wait = within(Duration::from_secs(3));
    for round in 0..3 {
        let start = Arc::new(std::sync::Barrier::new(clients));
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (config, start, addr) = (config.clone(), start.clone(), server.addr);
                std::thread::spawn(move || hello_then_finished_with_request(addr, config, start, wait))
            })
            .collect();
        let answers: Vec<Option<String>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let unanswered = answers.iter().filter(|a| a.is_none()).count();
        assert!(answers.iter().flatten().all(|a| a == "HTTP/1.1 200 OK"), "round {round}: {answers:?}");
        assert_eq!(
            unanswered, 0,
            "round {round}: {unanswered} of {clients} TLS clients that sent their request together with their \
             Finished got no answer within {wait:?} (the request sits read and decrypted in rustls, and no \
             readable event comes for it)"
        );
    }
    assert_healthy(&server, &config);
}

#[test]
fn the_pusher_door_speaks_over_wss_on_the_same_port() {
    let (server, cert) = tls_server(&["--pusher-app-id", "42", "--pusher-key", "app-key", "--pusher-public", "news"]);
    let config = client_config(&cert.cert);
    let tls = tls_connect(server.addr, &config).expect("TLS handshake");
    let url = format!("wss://localhost:{}/app/app-key?protocol=7", server.port());
    let (mut ws, resp) = tungstenite::client::client_with_config(url, tls, None).expect("WebSocket handshake over TLS");
    assert_eq!(resp.status(), 101);
    assert_eq!(ws_next(&mut ws)["event"], "pusher:connection_established");
    let ok = ws_request(&mut ws, json!({"event":"pusher:subscribe","data":{"channel":"news"}}));
    assert_eq!((&ok["event"], &ok["channel"]), (&json!("pusher_internal:subscription_succeeded"), &json!("news")));
    // A native wss:// client on the same port publishes; the Pusher socket hears it.
    let mut native = wss(&server, &config, &token_all("alice"));
    ws_request(&mut native, json!({"op":"pub","ch":"news","event":"Headline","data":{"t":1},"id":"p1"}));
    let heard = ws_next(&mut ws);
    assert_eq!((&heard["event"], &heard["data"]), (&json!("Headline"), &json!(r#"{"t":1}"#)));
}

// ---------------------------------------------------------------------------
// Records that do not line up with reads or writes.

#[test]
fn a_megabyte_message_over_wss_arrives_whole_at_a_subscriber() {
    let (server, cert) = tls_server(&["--max-message-bytes", "2097152", "--max-send-buffer-bytes", "4194304"]);
    let config = client_config(&cert.cert);
    let mut alice = wss(&server, &config, &token_all("alice"));
    let mut bob = wss(&server, &config, &token_all("bob"));
    assert_eq!(ws_request(&mut alice, json!({"op": "sub", "ch": "big"}))["op"], "subok");
    // Sixty-odd records each way; the subscriber's copy waits in the
    // server while it is not reading.
    let pad: String = (0..1024 * 1024).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let ack = ws_request(&mut bob, json!({"op": "pub", "ch": "big", "data": {"pad": pad}, "id": "m"}));
    assert_eq!(ack["op"], "ack", "{ack}");
    std::thread::sleep(Duration::from_millis(100));
    let msg = ws_next(&mut alice);
    assert_eq!((&msg["op"], &msg["seq"]), (&json!("msg"), &ack["seq"]));
    assert!(msg["data"]["pad"] == json!(pad), "the megabyte came back different");
    assert_healthy(&server, &config);
}

#[test]
fn a_tls_subscriber_that_reads_nothing_is_closed_with_1013() {
    let (server, cert) = tls_server(&["--max-send-buffer-bytes", "262144", "--max-message-bytes", "65536"]);
    let config = client_config(&cert.cert);
    let mut slow = wss(&server, &config, &token_all("slow"));
    assert_eq!(ws_request(&mut slow, json!({"op": "sub", "ch": "firehose"}))["op"], "subok");
    // 10 MiB while it reads nothing: more than its send buffer and the
    // kernel's buffers on loopback.
    let mut publisher = wss(&server, &config, &token_all("alice"));
    let pad = "z".repeat(32 * 1024);
    for i in 0..320 {
        let ack = ws_request(&mut publisher, json!({"op": "pub", "ch": "firehose", "data": {"i": i, "pad": pad}}));
        assert_eq!(ack["op"], "ack", "{ack}");
    }
    let mut got = 0;
    let code = loop {
        match slow.read() {
            Ok(Message::Text(_)) => got += 1,
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("reading after {got} messages: {e}"),
        }
    };
    assert_eq!(code, Some(1013), "after {got} messages");
    assert!(got < 320, "the subscriber got everything: the limit was not reached");
    assert_healthy(&server, &config);
}

/// A TCP stream that sends at most 7 bytes a write, with a pause after
/// each: TLS records (the ClientHello too) reach the server in pieces.
struct Trickle(TcpStream);

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(&buf[..buf.len().min(7)])?;
        std::thread::sleep(Duration::from_micros(300));
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[test]
fn tls_records_that_arrive_seven_bytes_at_a_time_make_a_handshake_and_a_message() {
    let (server, cert) = tls_server(&[]);
    let config = client_config(&cert.cert);
    let mut alice = wss(&server, &config, &token_all("alice"));
    assert_eq!(ws_request(&mut alice, json!({"op": "sub", "ch": "slowly"}))["op"], "subok");

    let sock = TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(io_timeout())).unwrap();
    sock.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = StreamOwned::new(ClientConnection::new(config.clone(), name).unwrap(), Trickle(sock));
    let url = format!("wss://localhost:{}/ws?token={}", server.port(), token_all("bob"));
    let (mut bob, resp) = tungstenite::client::client_with_config(url, tls, None).expect("WebSocket over TLS");
    assert_eq!(resp.status(), 101);
    let pad = "p".repeat(4000);
    bob.send(Message::text(json!({"op": "pub", "ch": "slowly", "data": {"pad": pad}, "id": "s"}).to_string())).unwrap();
    let ack = loop {
        if let Message::Text(t) = bob.read().expect("the ack") {
            break serde_json::from_str::<Value>(&t).unwrap();
        }
    };
    assert_eq!(ack["op"], "ack", "{ack}");
    let msg = ws_next(&mut alice);
    assert_eq!((&msg["seq"], &msg["data"]["pad"]), (&ack["seq"], &json!(pad)));
}
