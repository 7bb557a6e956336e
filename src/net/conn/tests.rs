//! `Conn` driven through a scripted stream in memory and plain `Instant`s:
//! its phases, its queue and its deadlines, with no socket and no sleep.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// The far end of the connection, as the test scripts it.
#[derive(Default)]
struct Wire {
    /// What the peer sends, one read's worth each; `None` is a WouldBlock.
    incoming: VecDeque<Option<Vec<u8>>>,
    /// Once `incoming` runs out: end of stream (true) or WouldBlock.
    peer_closed: bool,
    /// Bytes the socket still takes before it says WouldBlock.
    room: usize,
    written: Vec<u8>,
    /// Our side was shut down.
    shut: bool,
    reads: usize,
    /// Behaves as a TCP socket: a short read empties it (`Transport`).
    tcp: bool,
}

/// The test's handle and the connection's stream share one `Wire`.
#[derive(Clone, Default)]
struct Fake(Rc<RefCell<Wire>>);

impl Fake {
    fn send(&self, bytes: &[u8]) {
        self.0.borrow_mut().incoming.push_back(Some(bytes.to_vec()));
    }

    fn room(&self, n: usize) {
        self.0.borrow_mut().room = n;
    }

    fn written(&self) -> Vec<u8> {
        self.0.borrow().written.clone()
    }

    /// Forgets what was written so far (the 101, say).
    fn take_written(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.borrow_mut().written)
    }
}

impl io::Read for Fake {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.0.borrow_mut();
        w.reads += 1;
        match w.incoming.pop_front() {
            Some(Some(mut bytes)) => {
                let n = buf.len().min(bytes.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                if n < bytes.len() {
                    w.incoming.push_front(Some(bytes.split_off(n)));
                }
                Ok(n)
            }
            Some(None) => Err(io::ErrorKind::WouldBlock.into()),
            None if w.peer_closed => Ok(0),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl io::Write for Fake {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut w = self.0.borrow_mut();
        if w.room == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(w.room);
            w.written.extend_from_slice(&b[..take]);
            w.room -= take;
            n += take;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Fake {
    fn push(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn shutdown_write(&mut self) {
        self.0.borrow_mut().shut = true;
    }

    fn short_read_empties(&self) -> bool {
        self.0.borrow().tcp
    }
}

const HANDSHAKE: Duration = Duration::from_secs(5);
const PING_EVERY: Duration = Duration::from_secs(30);
const PONG_WITHIN: Duration = Duration::from_secs(10);
const PLENTY: usize = 1 << 20;
const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";

/// The settings of a connection whose deadlines count from `epoch`.
fn settings(epoch: Instant) -> Arc<Settings> {
    Arc::new(Settings {
        ws: WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0),
        handshake_timeout: HANDSHAKE,
        ping_every: PING_EVERY,
        pong_within: PONG_WITHIN,
        max_fragments: Some(100),
        ping_text: None,
        epoch,
        read_pause_bytes: PLENTY / 2,
        output_budget: usize::MAX,
        input_budget: usize::MAX,
    })
}

fn conn(now: Instant) -> (Conn<Fake>, Fake) {
    let fake = Fake::default();
    fake.room(PLENTY);
    (Conn::new(fake.clone(), IpAddr::V4(Ipv4Addr::LOCALHOST), now, settings(now)), fake)
}

/// A connection upgraded at `now` with its 101 written.
fn open(now: Instant, expires: Option<Instant>) -> (Conn<Fake>, Fake) {
    let (mut c, fake) = conn(now);
    c.upgrade(SWITCHING.to_vec(), 0, expires, now);
    c.flush();
    assert_eq!(fake.take_written(), SWITCHING);
    assert_eq!(c.phase(), Phase::Open);
    (c, fake)
}

/// A masked client frame (RFC 6455 §5.3), payload under 126 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn head(c: &mut Conn<Fake>) -> Box<Head> {
    match c.read_head(8192) {
        HeadStatus::Ready(h) => h,
        HeadStatus::Pending => panic!("head pending"),
        HeadStatus::Refuse(r) => panic!("head refused: {} {}", r.status, r.code),
        HeadStatus::Gone => panic!("peer gone"),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The connection waits until `at` and not a moment longer: its deadline is
/// `at`, a tick just before changes nothing, the tick at `at` drops it.
fn dropped_exactly_at(c: &mut Conn<Fake>, at: Instant) {
    assert_eq!(c.next_deadline(), Some(at));
    let phase = c.phase();
    assert_eq!(c.tick(at - Duration::from_millis(1)), Tick::Nothing);
    assert_eq!(c.phase(), phase);
    assert_eq!(c.tick(at), Tick::Drop);
    assert_eq!(c.phase(), Phase::Closed);
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn a_refused_request_is_answered_then_drained_until_the_peer_closes() {
    let t0 = Instant::now();
    let (mut c, fake) = conn(t0);
    fake.send(b"NOT A REQUEST\r\n\r\n");
    assert!(matches!(c.read_head(8192), HeadStatus::Refuse(r) if r == Refusal::new(400, "bad_request")));
    let answer = http::Refusal::new(400, "bad_request").response(true);
    c.refuse(answer.clone(), t0);
    assert_eq!(c.phase(), Phase::Responding);

    // The socket takes only part of the answer: still responding, not shut.
    fake.room(10);
    c.flush();
    assert_eq!(c.phase(), Phase::Responding);
    assert!(c.wants_write());
    assert!(!fake.0.borrow().shut);

    fake.room(PLENTY);
    c.flush();
    assert_eq!(fake.written(), answer);
    assert!(fake.0.borrow().shut, "our side ends after the answer");
    assert_eq!(c.phase(), Phase::Draining, "reading on, so the answer is not lost to a reset");

    fake.send(b"more bytes the peer had sent");
    c.drain();
    assert_eq!(c.phase(), Phase::Draining);
    fake.0.borrow_mut().peer_closed = true;
    c.drain();
    assert_eq!(c.phase(), Phase::Closed);
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn a_kept_alive_answer_goes_back_to_the_next_pipelined_head_without_reading_again() {
    let t0 = Instant::now();
    let (mut c, fake) = conn(t0);
    fake.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    let first = head(&mut c);
    assert_eq!(first.path, "/a");
    let answer = http::response(200, "text/plain", b"a", false);
    c.respond(answer.clone(), first.len, true, t0 + secs(1));
    assert_eq!(c.phase(), Phase::Head);
    assert_eq!(c.next_deadline(), Some(t0 + secs(1) + HANDSHAKE), "each head gets the whole timeout");

    let second = head(&mut c);
    assert_eq!(second.path, "/b");
    assert_eq!(fake.0.borrow().reads, 1, "the second head was already buffered");
    c.flush();
    assert_eq!(fake.written(), answer);
    assert_eq!(c.phase(), Phase::Head, "kept alive: not shut");
    assert!(!fake.0.borrow().shut);
}

#[test]
fn reading_waits_while_an_answer_is_unwritten() {
    let t0 = Instant::now();
    let (mut c, fake) = conn(t0);
    fake.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    let h = head(&mut c);
    fake.room(0);
    c.respond(http::response(200, "text/plain", b"a", false), h.len, true, t0);
    c.flush();
    assert!(c.answer_pending());
    c.block_reads();
    assert!(!c.take_unblocked(), "the answer is still unwritten");

    fake.room(PLENTY);
    c.flush();
    assert!(!c.answer_pending());
    assert!(c.take_unblocked(), "written: the caller reads again");
    assert!(!c.take_unblocked(), "only once");
}

#[test]
fn frames_that_came_with_the_head_wait_for_the_101() {
    let t0 = Instant::now();
    let (mut c, fake) = conn(t0);
    let request = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut bytes = request.to_vec();
    bytes.extend(client_frame(0x1, b"hi"));
    fake.send(&bytes);
    let h = head(&mut c);
    assert_eq!(h.len, request.len());
    fake.room(0);
    c.upgrade(SWITCHING.to_vec(), h.len, None, t0);
    assert!(matches!(c.read_message(t0), Incoming::WouldBlock), "nothing is read before the 101 is out");

    fake.room(PLENTY);
    c.flush();
    assert_eq!(fake.written(), SWITCHING);
    assert!(c.take_unblocked());
    match c.read_message(t0) {
        Incoming::Text(t) => assert_eq!(t.as_str(), "hi"),
        _ => panic!("expected the text frame that came with the head"),
    }
}

#[test]
fn every_frame_of_one_tcp_read_is_read_and_the_socket_is_not_asked_again() {
    let t0 = Instant::now();
    let (mut c, fake) = conn(t0);
    fake.0.borrow_mut().tcp = true;
    let request = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut bytes = request.to_vec();
    bytes.extend(client_frame(0x1, b"x"));
    bytes.extend(client_frame(0x1, b"y"));
    fake.send(&bytes);
    let h = head(&mut c);
    c.upgrade(SWITCHING.to_vec(), h.len, None, t0);
    c.flush();
    assert_eq!(fake.take_written(), SWITCHING);
    let mut texts = Vec::new();
    let read = |c: &mut Conn<Fake>, texts: &mut Vec<String>| loop {
        match c.read_message(t0) {
            Incoming::Text(t) => texts.push(t.as_str().to_string()),
            Incoming::Again => {}
            Incoming::WouldBlock => break,
            _ => panic!("the connection ended"),
        }
    };
    read(&mut c, &mut texts);
    assert_eq!(texts, ["x", "y"], "both frames that came with the head");

    // Three frames in one socket read, a ping between two texts.
    let mut frames = client_frame(0x1, b"a");
    frames.extend(client_frame(0x9, b"p"));
    frames.extend(client_frame(0x1, b"b"));
    fake.send(&frames);
    c.readable();
    let reads = fake.0.borrow().reads;
    read(&mut c, &mut texts);
    assert_eq!(texts, ["x", "y", "a", "b"]);
    assert_eq!(fake.0.borrow().reads, reads + 1, "one socket read: it came back short, so the socket is empty");
    c.flush();
    assert_eq!(fake.written(), [0x8a, 0x01, b'p'], "the ping is answered");
}

#[test]
fn discarding_the_queue_keeps_the_half_written_front_frame() {
    let t0 = Instant::now();
    let (mut c, fake) = open(t0, None);
    let frames = [Frame::text(&"a".repeat(100)), Frame::text("b"), Frame::text("c")];
    for f in &frames {
        assert!(c.send(f.clone(), PLENTY));
    }
    fake.room(50);
    c.flush();
    assert_eq!(c.queued_bytes(), frames.iter().map(Frame::len).sum::<usize>());

    c.discard_queue();
    assert_eq!(c.queued_bytes(), frames[0].len(), "the half-written frame stays");
    fake.room(PLENTY);
    c.flush();
    assert_eq!(fake.written(), frames[0].as_bytes(), "the rest of the first frame, and nothing after it");
    assert_eq!(c.queued_bytes(), 0);
    assert!(!c.wants_write());
}

#[test]
fn a_pong_waits_behind_a_half_written_frame() {
    let t0 = Instant::now();
    let (mut c, fake) = open(t0, None);
    let big = Frame::text(&"a".repeat(100));
    assert!(c.send(big.clone(), PLENTY));
    fake.room(50);
    c.flush();

    // The socket has room again, but the ping is read before the flush
    // that would finish our frame: tungstenite's pong must not go first.
    fake.room(PLENTY);
    fake.send(&client_frame(0x9, b"p"));
    c.readable();
    assert!(matches!(c.read_message(t0), Incoming::Again), "the ping is handled");
    // tungstenite tries to write its pong on the next read.
    assert!(matches!(c.read_message(t0), Incoming::WouldBlock));
    assert_eq!(fake.written().len(), 50, "no pong inside our frame");

    c.flush();
    let mut expected = big.as_bytes().to_vec();
    expected.extend_from_slice(&[0x8a, 0x01, b'p']);
    assert_eq!(fake.written(), expected, "the frame whole, then the pong");
}

#[test]
fn a_send_past_the_buffer_limit_says_so() {
    let t0 = Instant::now();
    let (mut c, fake) = open(t0, None);
    fake.room(0);
    let f = Frame::text("hello");
    let limit = 2 * f.len();
    assert!(c.send(f.clone(), limit));
    assert!(c.send(f.clone(), limit), "exactly at the limit is fine");
    assert!(!c.send(f.clone(), limit), "one frame past it asks the caller to close with 1013");
    assert_eq!(c.queued_bytes(), 3 * f.len());

    c.discard_queue();
    c.close(code::SLOW, "slow consumer", t0);
    assert!(c.send(f, limit), "nothing is queued once closing");
    assert_eq!(c.queued_bytes(), 0);
}

#[test]
fn a_head_not_complete_within_the_handshake_timeout_is_dropped() {
    let t0 = Instant::now();
    let (mut c, fake) = conn(t0);
    fake.send(b"GET / HT");
    assert!(matches!(c.read_head(8192), HeadStatus::Pending));
    assert_eq!(c.phase(), Phase::Head);
    dropped_exactly_at(&mut c, t0 + HANDSHAKE);
}

#[test]
fn a_refusal_the_peer_does_not_read_is_dropped_after_the_close_grace() {
    let t0 = Instant::now();
    let (mut c, fake) = conn(t0);
    fake.room(0);
    c.refuse(http::Refusal::new(503, "server_full").response(true), t0);
    c.flush();
    assert_eq!(c.phase(), Phase::Responding);
    dropped_exactly_at(&mut c, t0 + CLOSE_GRACE);
}

#[test]
fn a_quiet_peer_is_pinged_and_dropped_when_no_pong_comes() {
    let t0 = Instant::now();
    let (mut c, fake) = open(t0, None);
    assert_eq!(c.next_deadline(), Some(t0 + PING_EVERY));
    assert_eq!(c.tick(t0 + PING_EVERY - secs(1)), Tick::Nothing);
    assert_eq!(c.queued_bytes(), 0, "not quiet long enough for a ping");

    let pinged = t0 + PING_EVERY;
    assert_eq!(c.tick(pinged), Tick::Nothing);
    c.flush();
    assert_eq!(fake.written(), [0x89, 0x00], "a ping");
    assert_eq!(c.phase(), Phase::Open);
    dropped_exactly_at(&mut c, pinged + PONG_WITHIN);
}

#[test]
fn a_protocol_ping_is_a_text_frame_and_no_answer_asks_for_the_protocols_close() {
    let t0 = Instant::now();
    let (mut c, fake) = open(t0, None);
    c.use_settings(Arc::new(Settings { ping_text: Some(Frame::text("p")), ..(*settings(t0)).clone() }));
    let pinged = t0 + PING_EVERY;
    assert_eq!(c.tick(pinged), Tick::Nothing);
    c.flush();
    assert_eq!(fake.take_written(), [0x81, 0x01, b'p'], "the protocol's ping, as text");
    assert_eq!(c.tick(pinged + PONG_WITHIN - secs(1)), Tick::Nothing);
    assert_eq!(c.tick(pinged + PONG_WITHIN), Tick::NoPong);
    assert_eq!(c.phase(), Phase::Open, "the server closes it with the protocol's code");
    // Any frame is an answer: a text pong keeps the peer.
    c.tick(pinged + PONG_WITHIN + PING_EVERY);
    fake.send(&client_frame(0x1, b"pong"));
    c.readable();
    assert!(matches!(c.read_message(pinged + PONG_WITHIN + PING_EVERY + secs(1)), Incoming::Text(_)));
    assert_eq!(c.tick(pinged + PONG_WITHIN + PING_EVERY + PONG_WITHIN), Tick::Nothing);
}

#[test]
fn a_pong_in_time_keeps_the_peer_and_restarts_the_quiet_timer() {
    let t0 = Instant::now();
    let (mut c, fake) = open(t0, None);
    let pinged = t0 + PING_EVERY;
    c.tick(pinged);
    c.flush();

    let answered = pinged + secs(5);
    fake.send(&client_frame(0xa, b""));
    c.readable();
    assert!(matches!(c.read_message(answered), Incoming::Again));
    assert_eq!(c.next_deadline(), Some(answered + PING_EVERY));
    assert_eq!(c.tick(pinged + PONG_WITHIN), Tick::Nothing);
    assert_eq!(c.phase(), Phase::Open);
}

#[test]
fn an_expired_token_asks_for_4001_and_the_close_grace_bounds_the_wait_for_the_reply() {
    let t0 = Instant::now();
    let expires = t0 + secs(20);
    let (mut c, fake) = open(t0, Some(expires));
    assert_eq!(c.next_deadline(), Some(expires));
    assert_eq!(c.tick(expires - secs(1)), Tick::Nothing);
    assert_eq!(c.tick(expires), Tick::TokenExpired);
    assert_eq!(c.phase(), Phase::Open, "the caller closes it");

    c.close(code::TOKEN_EXPIRED, "token expired", expires);
    assert_eq!(c.phase(), Phase::Closing);
    c.flush();
    let mut close = vec![0x88, 2 + 13, 0x0f, 0xa1];
    close.extend_from_slice(b"token expired");
    assert_eq!(fake.written(), close);
    dropped_exactly_at(&mut c, expires + CLOSE_GRACE);
}

#[test]
fn a_slow_consumer_gets_the_longer_close_grace() {
    let t0 = Instant::now();
    let (mut c, _fake) = open(t0, None);
    c.close(code::SLOW, "slow consumer", t0);
    dropped_exactly_at(&mut c, t0 + SLOW_CLOSE_GRACE);
}

#[test]
fn after_our_close_the_peers_close_ends_the_connection() {
    let t0 = Instant::now();
    let (mut c, fake) = open(t0, None);
    c.close(code::NORMAL, "bye", t0);
    c.flush();
    fake.send(&client_frame(0x8, &[0x03, 0xe8]));
    c.readable();
    assert!(matches!(c.read_message(t0 + secs(1)), Incoming::Finished));
    c.flush();
    assert_eq!(c.phase(), Phase::Closed);
}

#[test]
fn a_failed_connection_sends_its_close_then_drains_so_no_reset_overtakes_it() {
    let t0 = Instant::now();
    let (mut c, fake) = open(t0, None);
    // Opcode 0x3 is reserved: the connection fails with 1002.
    let mut bad = client_frame(0x3, b"x");
    bad.extend_from_slice(b"the rest of what the peer was sending");
    fake.send(&bad);
    c.readable();
    assert!(matches!(c.read_message(t0), Incoming::Finished));
    c.flush();
    assert_eq!(&fake.written()[..4], &[0x88, 2 + 14, 0x03, 0xea], "Close 1002 on the wire");
    assert!(fake.0.borrow().shut, "our side ends after the Close");
    assert_eq!(c.phase(), Phase::Draining, "not dropped with bytes unread, which would reset");

    fake.send(b"still more bytes");
    c.drain();
    assert_eq!(c.phase(), Phase::Draining);
    dropped_exactly_at(&mut c, t0 + CLOSE_GRACE);
}

#[test]
fn a_failed_connection_ends_when_the_peer_closes_its_side() {
    let t0 = Instant::now();
    let (mut c, fake) = open(t0, None);
    fake.send(&client_frame(0x3, b"x"));
    c.readable();
    assert!(matches!(c.read_message(t0), Incoming::Finished));
    fake.0.borrow_mut().peer_closed = true;
    c.flush();
    assert_eq!(c.phase(), Phase::Closed);
}

#[test]
fn after_a_frame_too_big_nothing_more_is_read_until_the_close_is_out() {
    let t0 = Instant::now();
    let mut s = (*settings(t0)).clone();
    s.ws = s.ws.max_message_size(Some(1024)).max_frame_size(Some(1024));
    let fake = Fake::default();
    fake.room(PLENTY);
    let mut c = Conn::new(fake.clone(), IpAddr::V4(Ipv4Addr::LOCALHOST), t0, Arc::new(s));
    c.upgrade(SWITCHING.to_vec(), 0, None, t0);
    c.flush();
    fake.take_written();
    // A header for 200,000 bytes and the first of them.
    let mut big = vec![0x81, 0x80 | 127];
    big.extend_from_slice(&200_000u64.to_be_bytes());
    big.extend_from_slice(&[0; 4]);
    big.extend_from_slice(&[b'x'; 100]);
    fake.send(&big);
    c.readable();
    assert!(matches!(c.read_message(t0), Incoming::Finished));
    // More of it arrives and the loop reads again before flushing: reading
    // on would take the socket for closed and drop it, Close unsent.
    fake.send(&[b'x'; 5000]);
    c.readable();
    assert!(matches!(c.read_message(t0), Incoming::Finished));
    assert_ne!(c.phase(), Phase::Closed);
    c.flush();
    assert_eq!(&fake.written()[..4], &[0x88, 2 + 15, 0x03, 0xf1], "Close 1009 on the wire");
    assert_eq!(c.phase(), Phase::Draining);
}

/// An open connection with its own settings (`f` changes the defaults).
fn open_with(now: Instant, f: impl FnOnce(&mut Settings)) -> (Conn<Fake>, Fake) {
    let (mut c, fake) = open(now, None);
    let mut s = (*settings(now)).clone();
    f(&mut s);
    c.use_settings(Arc::new(s));
    (c, fake)
}

#[test]
fn a_websocket_with_much_output_unwritten_is_read_again_only_once_it_is_written() {
    let t0 = Instant::now();
    let (mut c, fake) = open_with(t0, |s| s.read_pause_bytes = 100);
    fake.room(0);
    c.send(Frame::text(&"a".repeat(200)), PLENTY);
    fake.send(&client_frame(0x1, b"next request"));
    assert!(matches!(c.read_message(t0), Incoming::WouldBlock), "200 bytes wait: the request is not read");
    c.flush();
    assert!(!c.take_unblocked(), "nothing was written");

    fake.room(PLENTY);
    c.flush();
    assert_eq!(c.queued_bytes(), 0);
    assert!(c.take_unblocked(), "written: the caller reads again");
    assert!(matches!(c.read_message(t0), Incoming::Text(t) if t.as_str() == "next request"));
}

#[test]
fn past_the_output_budget_only_a_connection_with_nothing_queued_is_read() {
    let t0 = Instant::now();
    let budget = |s: &mut Settings| s.output_budget = 1000;
    let (mut stuck, stuck_wire) = open_with(t0, budget);
    let (mut some, some_wire) = open_with(t0, budget);
    let (mut idle, idle_wire) = open_with(t0, budget);
    let base = queued_total();
    stuck_wire.room(0);
    stuck.send(Frame::text(&"s".repeat(1200)), PLENTY);
    some_wire.room(0);
    some.send(Frame::text("a reply"), PLENTY);
    assert!(queued_total() >= base + 1200, "the total counts every connection's queue");
    for wire in [&some_wire, &idle_wire] {
        wire.send(&client_frame(0x1, b"hist"));
    }
    assert!(matches!(some.read_message(t0), Incoming::WouldBlock), "over budget with output of its own: waits");
    assert!(matches!(idle.read_message(t0), Incoming::Text(_)), "nothing queued: read, its answer is all it adds");

    stuck.discard_queue();
    assert_eq!(queued_total(), base + some.queued_bytes(), "a discarded queue leaves the total");
    some_wire.room(PLENTY);
    some.flush();
    assert!(some.take_unblocked());
    assert!(matches!(some.read_message(t0), Incoming::Text(_)));
    drop((stuck, some, idle));
    assert_eq!(queued_total(), base, "a dropped connection's queue leaves the total");
}
