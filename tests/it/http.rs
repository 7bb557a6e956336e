//! HTTP/1.1 on the shared port, as a stranger would use it: pipelining,
//! bodies where none belong, odd lengths, sockets held open from one
//! address, frames sent before the 101, and what the log makes of refusals.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// A TCP connection to `server` from the local address `from` (any of
/// 127.0.0.0/8 is this machine), so tests can be several addresses.
fn tcp_from(from: [u8; 4], server: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((from, 0)).into()).expect("binding a loopback address");
    sock.connect(&server.into()).expect("connecting to the server");
    let sock: TcpStream = sock.into();
    sock.set_read_timeout(Some(io_timeout())).unwrap();
    sock.set_write_timeout(Some(io_timeout())).unwrap();
    sock
}

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn pipelined_requests_are_all_answered_in_order() {
    let server = TestServer::start(&[]);
    let mut sock = server.tcp();
    let mut burst = String::new();
    for i in 0..40 {
        let path = if i % 2 == 0 { "/healthz" } else { "/nope" };
        burst.push_str(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    sock.write_all(burst.as_bytes()).unwrap();
    for i in 0..40 {
        let resp = read_response(&mut sock);
        assert_eq!(resp.status, if i % 2 == 0 { 200 } else { 404 }, "answer {i}: {resp:?}");
    }
}

/// The attack of issue 13, reproduced on a release build: one socket
/// pipelining `GET /` for seconds without reading grew the server by
/// 250 MB and stalled `/healthz`. Now it costs one answer of memory, and
/// the socket is dropped once it has not read for a handshake timeout.
#[test]
fn pipelining_without_reading_costs_one_answer_and_healthz_keeps_answering() {
    let server = TestServer::start(&["--handshake-timeout", "3s"]);
    let pid = server.pid();
    // Warm up: the paths the attack and the probes take run once first, so
    // the baseline holds their code (under qemu, its translation cache) too.
    for _ in 0..3 {
        assert_eq!(server.http("GET / HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
        assert_eq!(server.http("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
    }
    let fds_before = open_fds(pid);
    let idle = resident_kib(pid);
    let attack_for = Duration::from_secs(scale(8, 8) as u64);
    let addr = server.addr;
    let attacker = std::thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        // Short write timeouts: once the server stops reading, writes stall
        // and the loop just tries again until the time is up.
        sock.set_write_timeout(Some(Duration::from_millis(100))).unwrap();
        let burst = "GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(256);
        let (start, mut sent) = (Instant::now(), 0u64);
        while start.elapsed() < attack_for {
            match sock.write(burst.as_bytes()) {
                Ok(n) => sent += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break, // dropped by the server
            }
        }
        (sock, sent)
    });
    let start = Instant::now();
    let (mut took, mut peak) = (Vec::new(), idle);
    while start.elapsed() < attack_for {
        let t = Instant::now();
        let resp = server.http("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        took.push(t.elapsed());
        assert_eq!(resp.status, 200, "{resp:?}");
        peak = peak.max(resident_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (attack_sock, sent) = attacker.join().unwrap();
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    let worst = *took.last().unwrap();
    eprintln!(
        "pipelining attack: {sent} bytes of requests sent; /healthz p99 {p99:?}, worst {worst:?} over {} probes; RSS {idle} KiB idle, {peak} KiB peak",
        took.len()
    );
    assert!(sent > 100_000, "the attack did send requests ({sent} bytes)");
    assert!(worst < within(Duration::from_secs(1)), "a /healthz answer took {worst:?}");
    assert!(peak.saturating_sub(idle) <= 16 * 1024, "RSS grew from {idle} KiB to {peak} KiB");
    // The attacker never reads: it is dropped at the head deadline.
    let deadline = Instant::now() + Duration::from_secs(3) + io_timeout();
    while open_fds(pid) > fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(open_fds(pid) <= fds_before, "the socket that never reads is still open");
    drop(attack_sock);
}

#[test]
fn a_get_with_a_body_is_answered_then_closed_so_the_body_is_never_a_request() {
    let server = TestServer::start(&[]);
    let smuggled = "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len());
    let mut sock = server.tcp();
    sock.write_all(req.as_bytes()).unwrap();
    let resp = read_response(&mut sock);
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("Connection"), Some("close"), "{resp:?}");
    let mut rest = Vec::new();
    let _ = sock.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the body was answered as a request: {:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn a_content_length_with_a_sign_is_400_and_closes() {
    let server = TestServer::start(&[]);
    let t = api_token("app");
    for len in ["+5", "5, 5", "-1"] {
        let req = format!(
            "POST /api/channels/room:1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Length: {len}\r\n\r\n12345"
        );
        server.http(&req).assert_refusal(400, "bad_request");
    }
    let hist = server
        .http(&format!("GET /api/channels/room:1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n"));
    assert_eq!(hist.status, 200, "{hist:?}");
    let v: Value = serde_json::from_str(&hist.body).unwrap();
    assert_eq!(v["msgs"], json!([]), "nothing was published");
}

#[test]
fn frames_sent_with_the_upgrade_request_are_answered_at_once() {
    // With a ping interval of an hour, nothing else would wake the connection.
    let server = TestServer::start(&["--ping-interval", "1h"]);
    let t = token_all("alice");
    let mut bytes = server.upgrade_request(&format!("/ws?token={t}"), "").into_bytes();
    bytes.extend(client_frame(true, 1, br#"{"op":"sub","ch":"room:1","id":7}"#));
    let mut sock = server.tcp();
    sock.write_all(&bytes).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !String::from_utf8_lossy(&buf).contains("subok") {
        let n = sock.read(&mut chunk).expect("the subok arrives without another packet");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 101"));
}

#[test]
fn idle_sockets_from_one_address_cannot_take_every_slot() {
    let server = TestServer::start(&["--max-connections", "20", "--max-connections-per-ip", "2"]);
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(tcp_from([127, 0, 0, 1], server.addr));
    }
    // Give the server a moment to accept (or refuse) all thirty.
    std::thread::sleep(Duration::from_millis(300));
    let t = token_all("bob");
    let mut other = tcp_from([127, 0, 0, 2], server.addr);
    other.write_all(server.upgrade_request(&format!("/ws?token={t}"), "").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && other.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "another address was refused: {head:?}");
    // The address at its limit is told so (those refused at accept see a
    // 503 or a closed socket; none is served).
    let mut served = 0;
    for mut s in idle.drain(..) {
        let _ = s.write_all(server.upgrade_request(&format!("/ws?token={t}"), "").as_bytes());
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        served += String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 101") as usize;
    }
    assert!(served <= 2, "{served} of 30 sockets from one address were upgraded");
}

#[test]
fn refusals_are_logged_at_debug_a_few_a_second_and_sub_is_escaped() {
    let mut server = TestServer::options().env("RUST_LOG", "debug").start();
    // All sent before any answer is read, so they land within a second even
    // under emulation.
    let mut socks: Vec<TcpStream> = (0..60).map(|_| server.tcp()).collect();
    for s in &mut socks {
        s.write_all(server.upgrade_request("/ws?token=x.y.z", "").as_bytes()).unwrap();
    }
    for s in &mut socks {
        assert_eq!(read_response(s).status, 401);
    }
    let forged = "bob\n2026-01-01T00:00:00Z INFO forged line";
    let mut client = server.ws(&token(forged, &["*"], &[]));
    client.sub("room:1");
    client.close();
    assert!(server.terminate().success());
    let log = server.log();
    let refused = log.lines().filter(|l| l.contains("refused a connection")).count();
    assert!((1..60).contains(&refused), "{refused} refusals logged one by one:\n{log}");
    assert!(log.contains("counted in /metrics, not logged"), "the rest are counted:\n{log}");
    assert!(log.lines().all(|l| !l.starts_with("2026-01-01T00:00:00Z")), "a forged line:\n{log}");
    assert!(log.contains(r#"as "bob\n2026"#), "sub is escaped:\n{log}");
}

#[test]
fn refusals_are_not_logged_at_info() {
    let mut server = TestServer::start(&[]);
    assert_eq!(server.http(&server.upgrade_request("/ws?token=x.y.z", "")).status, 401);
    assert!(server.terminate().success());
    assert!(!server.log().contains("refused"), "{}", server.log());
}
