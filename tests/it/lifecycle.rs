//! Connection lifetimes: token expiry (4001), liveness pings, handshake
//! timeouts and graceful shutdown (1001, exit 0).

use std::io::Read as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::Message;

use crate::support::*;

/// Reads and discards until the server closes the socket; returns how long it took.
fn wait_for_eof(mut sock: TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("the server did not close the connection within {:?}: {e}", io_timeout()),
        }
    }
}

#[test]
fn a_connection_whose_token_expires_is_closed_with_4001() {
    let server = TestServer::start(&["--leeway", "0s"]);
    let t = mint_claims(&json!({"sub": "brief", "exp": now_secs() + 3, "read": ["*"], "write": ["*"]}));
    let started = Instant::now();
    let mut c = server.ws(&t);
    assert_eq!(c.publish("x", json!(1)), 1, "the token works until it expires");
    assert_eq!(c.close_code(), Some(4001));
    let took = started.elapsed();
    // exp is in whole seconds: the close comes 2 to 3 s from now.
    assert!(took >= Duration::from_millis(1500), "closed {took:?} after connecting, before exp");
    assert!(took <= within(Duration::from_secs(6)), "closed {took:?} after connecting; exp was 3 s away");
}

#[test]
fn sigterm_closes_every_websocket_with_1001_and_exits_0() {
    let mut server = TestServer::start(&[]);
    let mut a = server.ws(&token_all("alice"));
    let mut b = server.ws(&token_all("bob"));
    b.sub("room");
    assert_eq!(a.publish("room", json!("before")), 1);
    server.sigterm();
    assert_eq!(a.close_code(), Some(1001));
    let (msgs, code) = b.recv_until_close();
    assert_eq!(code, Some(1001));
    assert_eq!(msgs.len(), 1, "the message committed before the signal was delivered first: {msgs:?}");
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
}

#[test]
fn sigterm_exits_0_even_when_a_peer_ignores_the_close() {
    let mut server = TestServer::start(&[]);
    let t = token_all("alice");
    // A peer that completed the handshake and then never reads or answers.
    let (resp, _deaf) = server.raw_upgrade(&server.upgrade_request(&format!("/ws?token={t}"), ""));
    assert_eq!(resp.status, 101);
    let started = Instant::now();
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(started.elapsed() < within(Duration::from_secs(8)), "shutdown took {:?}", started.elapsed());
}

#[test]
fn a_peer_that_answers_pings_stays_connected() {
    // 300 ms natively; stretched under emulation, where the client's own
    // pong can take longer than that to go out.
    let every = within(Duration::from_millis(300));
    let every_arg = format!("{}ms", every.as_millis());
    let server = TestServer::start(&["--ping-interval", &every_arg, "--pong-timeout", &every_arg]);
    let mut c = server.ws(&token_all("alice"));
    c.sub("p");
    // Read for 2 s: tungstenite answers every ping with a pong as it reads.
    let until = Instant::now() + within(Duration::from_secs(2));
    let mut pings = 0;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        c.ws.get_ref().set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match c.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                break
            }
            Err(e) => panic!("the connection ended after {pings} pings: {e}"),
        }
    }
    assert!(pings >= 2, "pinged every {every:?}, got {pings} pings in {:?}", within(Duration::from_secs(2)));
    c.ws.get_ref().set_read_timeout(Some(io_timeout())).unwrap();
    assert_eq!(c.publish("p", json!("still here")), 1);
    assert_eq!(c.recv_msg()["data"], "still here");
}

#[test]
fn a_peer_that_never_answers_pings_is_dropped() {
    let server = TestServer::start(&["--ping-interval", "300ms", "--pong-timeout", "300ms"]);
    let t = token_all("alice");
    let (resp, sock) = server.raw_upgrade(&server.upgrade_request(&format!("/ws?token={t}"), ""));
    assert_eq!(resp.status, 101);
    let took = wait_for_eof(sock);
    assert!(took < within(Duration::from_secs(5)), "dropped after {took:?}");
    // The server is still serving.
    assert_eq!(server.http("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
}

#[test]
fn a_silent_connection_is_dropped_at_the_handshake_timeout_and_the_server_keeps_serving() {
    let server = TestServer::start(&["--handshake-timeout", "500ms"]);
    // Connects and sends nothing (or half a head) until the timeout.
    let silent = server.tcp();
    let mut half = server.tcp();
    std::io::Write::write_all(&mut half, b"GET /healthz HTTP/1.1\r\nHost:").unwrap();
    let took = wait_for_eof(silent);
    assert!(took < within(Duration::from_secs(5)), "dropped after {took:?}");
    wait_for_eof(half);
    // Everyone else is still served.
    assert_eq!(server.http("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
    let mut c = server.ws(&token_all("alice"));
    assert_eq!(c.publish("after", json!(1)), 1);
}

#[test]
fn after_the_closing_handshake_the_server_closes_the_tcp_connection() {
    // RFC 6455 §7.1.1: the server closes the TCP connection first; a client
    // waits for that after the Close frames are exchanged.
    let server = TestServer::start(&[]);
    let mut c = server.ws(&token_all("alice"));
    c.sub("bye");
    c.ws.close(None).unwrap();
    c.ws.flush().unwrap();
    loop {
        match c.ws.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
            Ok(_) => continue,
            Err(e) => panic!("no Close answer: {e}"),
        }
    }
    let started = Instant::now();
    let mut sock = c.ws.get_ref().try_clone().unwrap();
    let mut buf = [0u8; 64];
    match sock.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} bytes after the Close"),
        Err(e) => panic!("the server kept the TCP connection open for {:?}: {e}", started.elapsed()),
    }
    // Well before the 3 s grace a peer that never answers gets. Not
    // stretched under emulation: the grace is a fixed 3 s there too, and
    // the close itself takes milliseconds (tens of them emulated).
    assert!(started.elapsed() < Duration::from_millis(2500), "closed after {:?}", started.elapsed());
    assert_eq!(server.http("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").status, 200);
}

#[test]
fn under_systemd_ready_comes_once_the_port_accepts_and_stopping_at_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(io_timeout())).unwrap();
    // The listener side of systemd: on READY=1, connect at once to the
    // address the status line names; the port must already accept.
    let systemd = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("no datagram on NOTIFY_SOCKET");
        let ready = String::from_utf8_lossy(&buf[..n]).to_string();
        let addr = ready
            .lines()
            .find_map(|l| l.strip_prefix("STATUS=listening on "))
            .unwrap_or_else(|| panic!("no STATUS=listening on ADDR in {ready:?}"));
        let connected = TcpStream::connect(addr).map(|_| ()).map_err(|e| e.to_string());
        (ready, connected, sock)
    });
    let mut server = TestServer::options().env("NOTIFY_SOCKET", path.to_str().unwrap()).start();
    let (ready, connected, sock) = systemd.join().unwrap();
    assert!(ready.lines().any(|l| l == "READY=1"), "the first datagram is {ready:?}");
    assert!(ready.contains(&server.addr.to_string()), "{ready:?} names another address than {}", server.addr);
    assert_eq!(connected, Ok(()), "READY=1 came before the port accepted connections");
    server.stop();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no STOPPING=1 on NOTIFY_SOCKET after SIGTERM");
    let stopping = String::from_utf8_lossy(&buf[..n]);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "the second datagram is {stopping:?}");
}
