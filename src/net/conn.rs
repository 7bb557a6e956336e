//! One client connection: the transport state machine, from the first byte
//! of the request head to the last byte of the close handshake.
//!
//! ```text
//!   Head ──refuse──▶ Responding ──▶ Draining ──▶ Closed
//!     │
//!     └──upgrade──▶ Open ──close/fail──▶ Closing ──▶ Closed
//! ```
//!
//! Heads up, RFC 6455: §4.2 (the server's handshake answer, written here as
//! raw bytes before tungstenite takes the socket), §5.5.1 (after sending a
//! Close, keep reading until the peer's Close), §7.1.1 (the server closes
//! the TCP connection first), §7.4.1 (the codes: 1002 protocol, 1007 bad
//! UTF-8, 1009 too big).
//!
//! Output is queued here, not in tungstenite: the queue is what the
//! send-buffer limit counts, and tungstenite is handed at most one burst at
//! a time. Everything queued — and the Close frame last — is flushed before
//! the socket is dropped; a peer that stops reading is dropped at a deadline.
//!
//! `Conn` is generic over its byte stream (`Transport`): the server runs it
//! over a `Stream`, the tests below over a scripted one, with time passed in.

use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Message, Utf8Bytes};

use super::counted::{Counted, FrameCounter, ReadRefused, Ws};
use super::frame::{code, Frame};
use super::queue::Queue;
use super::stream::{Stream, Transport};
use crate::http::{self, Head, Refusal};

/// Frames handed to one `writev`.
const WRITEV_FRAMES: usize = 64;
/// How long a peer has to answer our Close, or to read a refusal.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// The same for a slow consumer (1013): its Close waits behind everything the
/// kernel already holds for it, megabytes on loopback, so it gets longer to
/// read through to it before the socket is simply dropped.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading an HTTP request head (the first, or the next on a kept-alive connection).
    Head,
    /// Reading an HTTP request body.
    Body,
    /// A request waits for its commit; nothing more is read until it is answered.
    Waiting,
    /// Writing a plain HTTP response; the connection ends after it.
    Responding,
    /// Response written and our side shut down; reading until the peer
    /// closes, so the response is not lost to a TCP reset.
    Draining,
    /// WebSocket open.
    Open,
    /// Our Close is queued or sent; waiting for the peer's.
    Closing,
    /// Nothing left to do: drop it.
    Closed,
}

/// What every connection shares: limits and timers from the configuration,
/// kept once and pointed to, not copied into each connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ws: WebSocketConfig,
    /// Time to send a complete request head (each, on a kept-alive connection).
    pub handshake_timeout: Duration,
    /// Ping a quiet WebSocket peer this often...
    pub ping_every: Duration,
    /// ...and drop it when the pong takes longer than this.
    pub pong_within: Duration,
    /// Frames allowed in one message (`None`: no limit, echo mode).
    pub max_fragments: Option<usize>,
    /// The liveness ping as a text frame of the protocol (the Pusher door's
    /// `pusher:ping`) instead of a WebSocket ping; a missing answer is then
    /// `Tick::NoPong`, for the protocol's own close, not a silent drop.
    pub ping_text: Option<Frame>,
    /// The moment a connection's deadlines count from (the loop's start):
    /// each connection keeps them as milliseconds after it (`Ms`).
    pub epoch: Instant,
    /// Requests wait while a connection has this much output queued
    /// (`Conn::may_read`).
    pub read_pause_bytes: usize,
    /// Output queued by all connections together past which a connection
    /// with output of its own queued is not read (`Conn::may_read`).
    pub output_budget: usize,
    /// Bytes of half-received messages over all connections past which the
    /// connection whose message would pass it is closed 1013.
    pub input_budget: usize,
}

/// A moment as whole milliseconds after `Settings::epoch`, rounded down;
/// `NEVER` for none. Eight bytes where an `Option<Instant>` takes sixteen,
/// and every connection keeps four. Signed, so a moment before the epoch
/// is one too. (32 bits of milliseconds would wrap after 49 days, and a
/// token may expire later than that.)
pub type Ms = i64;
pub const NEVER: Ms = Ms::MAX;

impl Settings {
    pub fn ms(&self, t: Instant) -> Ms {
        // Per message read: whole seconds and milliseconds, no 128-bit division.
        let (d, before) = match t.checked_duration_since(self.epoch) {
            Some(d) => (millis(d), false),
            None => {
                let d = self.epoch.saturating_duration_since(t);
                (millis(d).saturating_add(u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))), true)
            }
        };
        let d = d.min(NEVER as u64 - 1) as Ms;
        if before {
            -d
        } else {
            d
        }
    }

    pub fn instant(&self, ms: Ms) -> Instant {
        let d = Duration::from_millis(ms.unsigned_abs());
        match ms >= 0 {
            true => self.epoch.checked_add(d).unwrap_or_else(|| far_future(self.epoch)),
            false => self.epoch.checked_sub(d).unwrap_or(self.epoch),
        }
    }
}

/// Whole milliseconds of `d`, rounded down.
fn millis(d: Duration) -> u64 {
    d.as_secs().saturating_mul(1000).saturating_add(u64::from(d.subsec_millis()))
}

/// `d` after `at`, short of `NEVER`.
fn after(at: Ms, d: Duration) -> Ms {
    at.saturating_add(millis(d).min(NEVER as u64) as Ms).min(NEVER - 1)
}

/// What reading the head gave.
pub enum HeadStatus {
    /// Need more bytes.
    Pending,
    Ready(Box<Head>),
    /// Answer with this refusal (431, 400) and end the connection.
    Refuse(Refusal),
    /// The peer went away.
    Gone,
}

/// What reading a request body gave.
pub enum BodyStatus<'a> {
    Pending,
    /// The whole request: head and body.
    Ready(&'a [u8]),
    Gone,
}

/// What reading a WebSocket message gave.
pub enum Incoming {
    Text(Utf8Bytes),
    Binary(tungstenite::Bytes),
    /// A control frame was handled, or a read was interrupted: read again.
    Again,
    /// Nothing more to read now.
    WouldBlock,
    /// The connection is closing or closed; stop reading.
    Finished,
}

/// What a deadline that passed asks the server to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    Nothing,
    /// The token expired: close with 4001.
    TokenExpired,
    /// Too slow (head, pong, close): drop without ceremony.
    Drop,
    /// No answer to a `Settings::ping_text` ping: close as the protocol says.
    NoPong,
}

enum Io<S> {
    Raw(S),
    Ws(Ws<S>),
    /// Only between taking the socket out of `Raw` and into `Ws`.
    Moving,
}

/// What a connection holds only while it has bytes to read or to write:
/// an idle WebSocket, the common case by far, has none of it.
#[derive(Default)]
struct Buffers {
    /// Request bytes received and not yet consumed (heads, bodies, pipelined requests).
    head: Vec<u8>,
    /// Raw bytes to write before anything else (an HTTP response or the 101).
    raw: Vec<u8>,
    raw_pos: usize,
    queue: Queue,
    queued_bytes: usize,
    /// Bytes of the front frame already written.
    front_pos: usize,
    /// Close frame to send once the queue is empty.
    close_after: Option<CloseFrame>,
}

impl Buffers {
    fn answer_pending(&self) -> bool {
        self.raw_pos < self.raw.len()
    }

    /// Nothing to keep: no request bytes, no output.
    fn is_empty(&self) -> bool {
        self.head.is_empty() && !self.answer_pending() && self.queue.is_empty() && self.close_after.is_none()
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        queued_total_sub(self.queued_bytes);
    }
}

thread_local! {
    /// Bytes queued by every connection of this thread (the loop's): the sum
    /// of their `queued_bytes`, kept as each changes. A frame fanned out to
    /// many counts once per connection, as each holds it.
    static QUEUED_TOTAL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn queued_total_add(n: usize) {
    QUEUED_TOTAL.with(|t| t.set(t.get() + n));
}

fn queued_total_sub(n: usize) {
    if n > 0 {
        QUEUED_TOTAL.with(|t| t.set(t.get().saturating_sub(n)));
    }
}

/// Output queued by all connections of this thread together, not yet
/// handed to their sockets: what the loop's global output budget counts.
pub fn queued_total() -> usize {
    QUEUED_TOTAL.with(|t| t.get())
}

/// Why our own stream refused a read, if it did (`Counted`'s limits).
fn refused(e: &io::Error) -> Option<ReadRefused> {
    e.get_ref().and_then(|e| e.downcast_ref::<ReadRefused>()).copied()
}

/// The connection's buffers, made if it had none.
fn bufs(b: &mut Option<Box<Buffers>>) -> &mut Buffers {
    b.get_or_insert_with(|| SPARE_BUFFERS.try_with(|p| p.borrow_mut().pop()).ok().flatten().unwrap_or_default())
}

/// Emptied buffers kept for the next burst of any connection. A fan-out
/// hands each idle subscriber one frame, written within the same turn,
/// after which the subscriber is idle again: without these, every delivery
/// would allocate a box and free it. Bounded: at most this many (about
/// 160 KiB), enough for a fan-out to a thousand subscribers.
const SPARE_BUFFERS_MAX: usize = 1024;

thread_local! {
    #[allow(clippy::vec_box)] // a box moves between a connection and this list as a pointer
    static SPARE_BUFFERS: std::cell::RefCell<Vec<Box<Buffers>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn give_back_buffers(mut b: Box<Buffers>) {
    // As good as new, and holding no memory but the box. The common case,
    // a reply or a delivery written, leaves nothing to free but counters.
    if b.head.capacity() == 0 && b.raw.capacity() == 0 && matches!(b.queue, Queue::Empty) && b.close_after.is_none() {
        (b.raw_pos, b.queued_bytes, b.front_pos) = (0, 0, 0);
    } else {
        *b = Buffers::default();
    }
    let _ = SPARE_BUFFERS.try_with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < SPARE_BUFFERS_MAX {
            p.push(b);
        }
    });
}

/// One connection over the byte stream `S`: a `Stream` in the server.
pub struct Conn<S = Stream> {
    io: Io<S>,
    phase: Phase,
    pub peer: IpAddr,
    settings: Arc<Settings>,
    /// Made when there is something to read into or to write, dropped
    /// when an open WebSocket is idle again (`Conn::release`).
    b: Option<Box<Buffers>>,
    /// tungstenite holds bytes it could not write yet.
    unflushed: bool,
    /// Drop once everything is flushed (a failed connection: no reply awaited).
    drop_after_flush: bool,
    /// Reading waits for the pending answer to be written (`block_reads`).
    reads_blocked: bool,
    // Deadlines, `Ms` after `Settings::epoch`.
    /// For the request head while reading HTTP; for the peer's Close (or
    /// for reading our refusal) while closing.
    deadline: Ms,
    expires: Ms,
    last_heard: Ms,
    ping_sent: Ms,
}

impl<S: Transport> Conn<S> {
    pub fn new(sock: S, peer: IpAddr, now: Instant, settings: Arc<Settings>) -> Conn<S> {
        let at = settings.ms(now);
        let deadline = after(at, settings.handshake_timeout);
        Conn {
            io: Io::Raw(sock),
            phase: Phase::Head,
            peer,
            settings,
            b: None,
            unflushed: false,
            drop_after_flush: false,
            reads_blocked: false,
            deadline,
            expires: NEVER,
            last_heard: at,
            ping_sent: NEVER,
        }
    }

    /// Settings for this connection from now on (a front door with its
    /// own liveness ping, chosen once its path is known).
    pub fn use_settings(&mut self, settings: Arc<Settings>) {
        self.settings = settings;
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn stream(&mut self) -> Option<&mut S> {
        match &mut self.io {
            Io::Raw(s) => Some(s),
            Io::Ws(ws) => Some(&mut ws.stream.stream),
            Io::Moving => None,
        }
    }

    /// Reads until the request head is complete, the limit is passed, or
    /// the socket has nothing more. What is buffered is parsed before the
    /// socket is read: a pipelined request may be whole already, and
    /// reading ahead of it would only grow the buffer (a client that sends
    /// requests faster than it reads answers must meet TCP's flow control,
    /// not our memory). So the buffer never holds more than one head's
    /// limit and one read past it.
    pub fn read_head(&mut self, max_bytes: usize) -> HeadStatus {
        let Io::Raw(sock) = &mut self.io else { return HeadStatus::Gone };
        let b = bufs(&mut self.b);
        let mut chunk = [0u8; 2048];
        loop {
            match http::parse_head(&b.head, max_bytes) {
                Ok(None) => {}
                Ok(Some(head)) => return HeadStatus::Ready(Box::new(head)),
                Err(e) => return HeadStatus::Refuse(e.refusal()),
            }
            match sock.read(&mut chunk) {
                Ok(0) => return HeadStatus::Gone,
                Ok(n) => b.head.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HeadStatus::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return HeadStatus::Gone,
            }
        }
    }

    /// True while an HTTP answer (or the 101) is not yet all on the wire.
    pub fn answer_pending(&self) -> bool {
        self.b.as_ref().is_some_and(|b| b.answer_pending())
    }

    /// Reading waits until the pending answer is written: a client gets
    /// its next request read only once it took the last answer, so no
    /// connection ever holds more than one answer of output.
    pub fn block_reads(&mut self) {
        self.reads_blocked = true;
    }

    /// True once, when reading was blocked on output that is now written:
    /// the caller reads again (no readiness event will say so).
    pub fn take_unblocked(&mut self) -> bool {
        let unblocked = self.reads_blocked && !self.answer_pending() && self.may_read() && self.phase != Phase::Closed;
        if unblocked {
            self.reads_blocked = false;
        }
        unblocked
    }

    /// Whether a WebSocket's next message may be read. Its output comes
    /// first once much of it waits (`read_pause_bytes`): a client that sends
    /// requests and never reads the answers meets TCP's flow control, not
    /// our memory. And while all connections together hold more than the
    /// output budget, only one with nothing queued is read: many such
    /// clients at once cannot grow the total either (each holds at most the
    /// answer to the one request it got in).
    fn may_read(&self) -> bool {
        let queued = self.queued_bytes();
        queued == 0 || queued < self.settings.read_pause_bytes && queued_total() < self.settings.output_budget
    }

    /// Answers with a plain HTTP response and ends the connection after it.
    pub fn refuse(&mut self, response: Vec<u8>, now: Instant) {
        self.respond(response, usize::MAX, false, now);
    }

    /// Queues an HTTP response to the request that took the first
    /// `consumed` buffered bytes. Kept alive, the connection then waits for
    /// the next request head (which may already be buffered).
    pub fn respond(&mut self, response: Vec<u8>, consumed: usize, keep_alive: bool, now: Instant) {
        let b = bufs(&mut self.b);
        b.raw.extend_from_slice(&response);
        if keep_alive {
            b.head.drain(..consumed.min(b.head.len()));
            self.phase = Phase::Head;
            self.deadline = after(self.settings.ms(now), self.settings.handshake_timeout);
        } else {
            b.head = Vec::new();
            self.phase = Phase::Responding;
            self.deadline = after(self.settings.ms(now), CLOSE_GRACE);
        }
    }

    /// The request head is read; its body comes next (same deadline).
    pub fn expect_body(&mut self) {
        self.phase = Phase::Body;
    }

    /// The request waits for a commit: no deadline, nothing read meanwhile.
    pub fn wait_commit(&mut self) {
        self.phase = Phase::Waiting;
        self.deadline = NEVER;
    }

    /// Reads until `total` request bytes are buffered or the socket is
    /// empty; gives them once all are there.
    pub fn read_body(&mut self, total: usize) -> BodyStatus<'_> {
        let Io::Raw(sock) = &mut self.io else { return BodyStatus::Gone };
        let b = bufs(&mut self.b);
        let mut chunk = [0u8; 4096];
        while b.head.len() < total {
            let want = (total - b.head.len()).min(chunk.len());
            match sock.read(&mut chunk[..want]) {
                Ok(0) => return BodyStatus::Gone,
                Ok(n) => b.head.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return BodyStatus::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return BodyStatus::Gone,
            }
        }
        BodyStatus::Ready(&b.head[..total])
    }

    /// Switches to WebSocket: queues the 101 answer, hands the socket and
    /// any bytes read past the head to tungstenite. `expires`: the token's.
    pub fn upgrade(&mut self, answer: Vec<u8>, head_len: usize, expires: Option<Instant>, now: Instant) {
        let b = bufs(&mut self.b);
        let leftover = b.head.split_off(head_len.min(b.head.len()));
        b.head = Vec::new();
        b.raw = answer;
        b.raw_pos = 0;
        let Io::Raw(sock) = std::mem::replace(&mut self.io, Io::Moving) else {
            self.phase = Phase::Closed;
            return;
        };
        let mut counter = FrameCounter::new(self.settings.max_fragments.unwrap_or(usize::MAX));
        // Bytes that came with the head are frames too; an excess shows on
        // the next read.
        if !counter.feed(&leftover) {
            counter.at_limit();
        }
        let drained = leftover.is_empty();
        let config = Some(self.settings.ws);
        let ctx = (!drained).then(|| Box::new(WebSocketContext::from_partially_read(leftover, Role::Server, config)));
        let mut stream = Counted::new(sock, counter).with_budget(self.settings.input_budget);
        stream.drained = drained;
        stream.mixed = !drained;
        self.io = Io::Ws(Ws { stream, ctx });
        self.phase = Phase::Open;
        self.deadline = NEVER;
        self.expires = expires.map_or(NEVER, |t| self.settings.ms(t));
        self.last_heard = self.settings.ms(now);
    }

    /// The poller says the socket has new bytes.
    pub fn readable(&mut self) {
        if let Io::Ws(ws) = &mut self.io {
            ws.stream.empty = false;
        }
    }

    /// Reads the next WebSocket message. Protocol errors close the connection
    /// with the right code here; the caller just stops on `Finished`.
    pub fn read_message(&mut self, now: Instant) -> Incoming {
        if let Some(not_now) = self.read_gate() {
            return not_now;
        }
        let Io::Ws(ws) = &mut self.io else { return Incoming::Finished };
        if self.phase == Phase::Open && ws.stream.surely_blocks() {
            // What tungstenite's read would end in, without the read. Its
            // pongs, and its state, are left to the flush that follows
            // every read (`Server::on_readable`): it writes them and
            // releases the state once the output is out.
            ws.stream.drained = true;
            return Incoming::WouldBlock;
        }
        let (ctx, stream) = ws.parts(self.settings.ws);
        let res = ctx.read(stream);
        ws.stream.drained = false;
        ws.stream.owes |= match &res {
            Ok(Message::Text(_) | Message::Binary(_)) => false,
            Err(tungstenite::Error::Io(e)) => e.kind() != io::ErrorKind::WouldBlock,
            _ => true,
        };
        if res.is_ok() {
            self.last_heard = self.settings.ms(now);
            self.ping_sent = NEVER;
        }
        match res {
            Ok(Message::Text(t)) if self.phase == Phase::Open => Incoming::Text(t),
            Ok(Message::Binary(b)) if self.phase == Phase::Open => Incoming::Binary(b),
            Ok(Message::Close(_)) => {
                // tungstenite queued the reply; flushing it ends the connection.
                self.phase = Phase::Closing;
                self.discard_queue();
                if let Some(b) = &mut self.b {
                    b.close_after = None;
                }
                if self.deadline == NEVER {
                    self.deadline = after(self.settings.ms(now), CLOSE_GRACE);
                }
                Incoming::Finished
            }
            Ok(_) => Incoming::Again,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                ws.stream.drained = true;
                ws.stream.mixed = false;
                // Released now, even with replies queued (they never pass
                // through tungstenite): the next connection read this turn
                // takes the state from the spare list, so a thousand
                // handshakes answered in one turn share a few states
                // instead of leaving a thousand read buffers' worth of holes.
                if self.phase == Phase::Open {
                    self.release(false);
                }
                Incoming::WouldBlock
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => Incoming::Again,
            Err(tungstenite::Error::Io(e)) if refused(&e) == Some(ReadRefused::TooManyFragments) => {
                self.fail(code::POLICY, "too many fragments", now)
            }
            Err(tungstenite::Error::Io(e)) if refused(&e) == Some(ReadRefused::OverInputBudget) => {
                self.fail(code::SLOW, "server busy: send the message again later", now)
            }
            Err(tungstenite::Error::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake))
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)
            | Err(tungstenite::Error::Io(_)) => {
                self.phase = Phase::Closed;
                Incoming::Finished
            }
            Err(tungstenite::Error::Capacity(_)) => self.fail(code::TOO_BIG, "message too big", now),
            Err(tungstenite::Error::Utf8(_)) => self.fail(code::BAD_UTF8, "invalid UTF-8", now),
            Err(_) => self.fail(code::PROTOCOL, "protocol error", now),
        }
    }

    /// Why the next message is not to be read now, if it is not: the
    /// answer to return instead.
    fn read_gate(&mut self) -> Option<Incoming> {
        // The 101 must reach the wire before anything tungstenite writes
        // (a pong, say) — and so before it reads.
        if self.answer_pending() {
            // Frames that came with the head wait for the 101; the flush that
            // writes it says so (`take_unblocked`).
            self.reads_blocked = true;
            return Some(Incoming::WouldBlock);
        }
        if !matches!(self.phase, Phase::Open | Phase::Closing) {
            return Some(Incoming::WouldBlock);
        }
        if !self.may_read() {
            // The flush that writes enough of the output says when to go
            // on (`take_unblocked`); the peer's bytes wait in its socket.
            self.reads_blocked = true;
            return Some(Incoming::WouldBlock);
        }
        if self.drop_after_flush {
            // We failed the connection: tungstenite's state is past its
            // error (a frame too big leaves its header behind, and reading
            // on would take the socket for closed and drop it before our
            // Close is out). The rest is drained once the Close is written.
            return Some(Incoming::Finished);
        }
        None
    }

    /// Fails the WebSocket connection (RFC 6455 §7.1.7): a Close with
    /// `code` after what is queued, flushed, then the socket is dropped.
    fn fail(&mut self, code: u16, reason: &'static str, now: Instant) -> Incoming {
        // What is already queued answers requests the peer made before its
        // error: it goes out first, then the Close (CLOSE_GRACE bounds it).
        self.close(code, reason, now);
        self.drop_after_flush = true;
        Incoming::Finished
    }

    /// Queues a frame. Returns false when the send buffer limit is passed
    /// (the caller closes with 1013).
    pub fn send(&mut self, frame: Frame, limit: usize) -> bool {
        if self.phase != Phase::Open || self.b.as_ref().is_some_and(|b| b.close_after.is_some()) {
            return true;
        }
        let b = bufs(&mut self.b);
        b.queued_bytes += frame.len();
        queued_total_add(frame.len());
        b.queue.push_back(frame);
        b.queued_bytes <= limit
    }

    /// Bytes queued and not yet handed to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.b.as_ref().map_or(0, |b| b.queued_bytes)
    }

    /// Starts the closing handshake after what is queued. A slow consumer's
    /// queue is dropped by the caller first (`discard_queue`).
    pub fn close(&mut self, code: u16, reason: &'static str, now: Instant) {
        if self.phase != Phase::Open {
            if matches!(self.phase, Phase::Head | Phase::Body | Phase::Waiting | Phase::Responding | Phase::Draining) {
                self.phase = Phase::Closed;
            }
            return;
        }
        bufs(&mut self.b).close_after =
            Some(CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static(reason) });
        self.phase = Phase::Closing;
        self.deadline = after(self.settings.ms(now), if code == code::SLOW { SLOW_CLOSE_GRACE } else { CLOSE_GRACE });
    }

    /// Drops what is queued, but for a frame already half on the wire:
    /// the rest of it must follow, or the peer reads garbage.
    pub fn discard_queue(&mut self) {
        let Some(b) = &mut self.b else { return };
        let started = if b.front_pos > 0 { b.queue.pop_front() } else { None };
        b.queue.clear();
        queued_total_sub(b.queued_bytes);
        b.queued_bytes = 0;
        if let Some(frame) = started {
            b.queued_bytes = frame.len();
            queued_total_add(frame.len());
            b.queue.push_back(frame);
        }
    }

    /// Frees tungstenite's state of an idle WebSocket (see `Ws`);
    /// `flushed`: tungstenite's output was written just now.
    fn release(&mut self, flushed: bool) {
        if let Io::Ws(ws) = &mut self.io {
            if !ws.release(flushed) {
                self.unflushed = true;
            } else if ws.ctx.is_none() && self.b.as_ref().is_some_and(|b| b.is_empty()) {
                // The buffers go too, to the spares the next burst takes them from.
                if let Some(b) = self.b.take() {
                    give_back_buffers(b);
                }
            }
        }
    }

    /// Writes what is pending until done or the socket is full.
    pub fn flush(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        // TLS records rustls could not write yet (a handshake answer, say)
        // go first; a plain socket has nothing buffered.
        if let Some(s) = self.stream() {
            match s.push() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => return,
                Err(_) => return self.phase = Phase::Closed,
            }
        }
        if let Some(b) = &mut self.b {
            while b.answer_pending() {
                match write_raw(&mut self.io, &b.raw[b.raw_pos..]) {
                    Ok(0) => return self.phase = Phase::Closed,
                    Ok(n) => b.raw_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return self.phase = Phase::Closed,
                }
            }
            if !b.raw.is_empty() {
                b.raw = Vec::new();
                b.raw_pos = 0;
            }
        }
        match self.phase {
            Phase::Responding => {
                if let Some(s) = self.stream() {
                    s.shutdown_write();
                }
                self.phase = Phase::Draining;
                self.drain();
            }
            Phase::Open | Phase::Closing => self.flush_ws(),
            _ => {}
        }
    }

    /// Writes, in order: the rest of a half-written frame of ours,
    /// tungstenite's own frames (pongs, close replies), our queue, and last
    /// the Close we owe.
    fn flush_ws(&mut self) {
        if self.b.as_ref().is_some_and(|b| b.front_pos > 0) && !self.write_queue(true) {
            return;
        }
        let Io::Ws(ws) = &mut self.io else { return };
        if let Some(ctx) = ws.ctx.as_mut().filter(|_| ws.stream.owes || self.unflushed) {
            match ctx.flush(&mut ws.stream) {
                Ok(()) => (self.unflushed, ws.stream.owes) = (false, false),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.unflushed = true;
                    return;
                }
                Err(_) => return self.phase = Phase::Closed,
            }
        } else {
            self.unflushed = false;
        }
        if !self.write_queue(false) {
            return;
        }
        let Io::Ws(ws) = &mut self.io else { return };
        if let Some(frame) = self.b.as_mut().and_then(|b| b.close_after.take()) {
            let (ctx, stream) = ws.parts(self.settings.ws);
            match ctx.close(stream, Some(frame)).and_then(|()| ctx.flush(stream)) {
                Ok(()) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.unflushed = true;
                    return;
                }
                Err(_) => return self.phase = Phase::Closed,
            }
        }
        if self.drop_after_flush && self.phase == Phase::Closing {
            // We failed the connection: the Close is on the wire; we close
            // the TCP connection first (RFC 6455 §7.1.1). The peer may still
            // be sending (the rest of a message too big, say): dropping the
            // socket with its bytes unread would answer with a reset, and a
            // reset can reach the peer before it has read our Close. So we
            // read and discard until it closes or the grace ends (`drain`).
            ws.stream.stream.shutdown_write();
            self.phase = Phase::Draining;
            self.drain();
        } else if self.phase == Phase::Open {
            // tungstenite's output went first, above, and nothing since.
            self.release(true);
        }
    }

    /// Writes queued frames with `writev` until the queue is empty or the
    /// socket is full (false). `front_only`: stop after the front frame.
    fn write_queue(&mut self, front_only: bool) -> bool {
        let Io::Ws(ws) = &mut self.io else { return false };
        let Some(b) = &mut self.b else { return true };
        while !b.queue.is_empty() {
            let take = if front_only { 1 } else { b.queue.len().min(WRITEV_FRAMES) };
            let Some(front) = b.queue.front() else { break };
            let front = &front.as_bytes()[b.front_pos..];
            // One frame (the common case: a reply, a delivery) goes out with
            // a plain write, which costs the kernel less than a one-piece
            // writev, and us no array of slices to fill.
            let res = if take == 1 {
                ws.stream.stream.write(front)
            } else {
                let mut slices = [IoSlice::new(&[]); WRITEV_FRAMES];
                for (slot, frame) in slices.iter_mut().zip(b.queue.first(take)).skip(1) {
                    *slot = IoSlice::new(frame.as_bytes());
                }
                slices[0] = IoSlice::new(front);
                ws.stream.stream.write_vectored(&slices[..take])
            };
            let mut written = match res {
                Ok(0) => {
                    self.phase = Phase::Closed;
                    return false;
                }
                Ok(n) => n + b.front_pos,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.phase = Phase::Closed;
                    }
                    ws.stream.hold = b.front_pos > 0;
                    return false;
                }
            };
            b.front_pos = 0;
            while let Some(front) = b.queue.front() {
                if written < front.len() {
                    b.front_pos = written;
                    break;
                }
                written -= front.len();
                b.queued_bytes -= front.len();
                queued_total_sub(front.len());
                b.queue.pop_front();
            }
            ws.stream.hold = b.front_pos > 0;
            if front_only && b.front_pos == 0 {
                return true;
            }
        }
        true
    }

    /// After a refusal: read and discard until the peer closes.
    pub fn drain(&mut self) {
        let mut sink = [0u8; 1024];
        let Some(sock) = self.stream() else { return };
        loop {
            match sock.read(&mut sink) {
                Ok(0) => return self.phase = Phase::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.phase = Phase::Closed,
            }
        }
    }

    /// True while output waits for the socket to become writable.
    pub fn wants_write(&self) -> bool {
        self.unflushed
            || self.b.as_ref().is_some_and(|b| b.answer_pending() || !b.queue.is_empty() || b.close_after.is_some())
    }

    /// True when the stream may hold output of its own that `flush`
    /// pushes (TLS records rustls could not write yet): a writable edge
    /// matters then even with nothing queued here. A plain socket (the
    /// one whose short read empties it) holds none.
    pub fn buffers_own_output(&self) -> bool {
        match &self.io {
            Io::Raw(s) => !s.short_read_empties(),
            Io::Ws(ws) => !ws.stream.stream.short_read_empties(),
            Io::Moving => false,
        }
    }

    /// The next moment `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let next = self.next_ms();
        (next != NEVER).then(|| self.settings.instant(next))
    }

    /// `next_deadline` on the connections' clock (`NEVER`: none), as the
    /// loop's timer heap keeps it.
    pub fn next_ms(&self) -> Ms {
        if self.phase == Phase::Closed {
            return NEVER;
        }
        let liveness = match (self.phase, self.ping_sent) {
            (Phase::Open, NEVER) => after(self.last_heard, self.settings.ping_every),
            (Phase::Open, at) => after(at, self.settings.pong_within),
            _ => NEVER,
        };
        self.deadline.min(self.expires).min(liveness)
    }

    /// Acts on the deadlines that have passed.
    pub fn tick(&mut self, now: Instant) -> Tick {
        let now = self.settings.ms(now);
        if self.deadline <= now {
            self.phase = Phase::Closed;
            self.deadline = NEVER;
            return Tick::Drop;
        }
        if self.phase != Phase::Open {
            return Tick::Nothing;
        }
        if self.expires <= now {
            self.expires = NEVER;
            return Tick::TokenExpired;
        }
        match self.ping_sent {
            NEVER if now >= after(self.last_heard, self.settings.ping_every) => {
                self.ping_sent = now;
                let ping = self.settings.ping_text.clone().unwrap_or_else(Frame::ping);
                let b = bufs(&mut self.b);
                b.queued_bytes += ping.len();
                queued_total_add(ping.len());
                b.queue.push_back(ping);
                Tick::Nothing
            }
            at if at != NEVER && now >= after(at, self.settings.pong_within) => {
                if self.settings.ping_text.is_some() {
                    self.ping_sent = NEVER;
                    return Tick::NoPong;
                }
                // A half-open peer: nothing we send would arrive.
                self.phase = Phase::Closed;
                Tick::Drop
            }
            _ => Tick::Nothing,
        }
    }
}

/// Writes raw bytes (an HTTP answer, the 101) to the connection's stream.
fn write_raw<S: Transport>(io: &mut Io<S>, bytes: &[u8]) -> io::Result<usize> {
    match io {
        Io::Raw(s) => s.write(bytes),
        Io::Ws(ws) => ws.stream.stream.write(bytes),
        Io::Moving => Ok(0),
    }
}

fn far_future(from: Instant) -> Instant {
    from + Duration::from_secs(86400 * 365)
}

#[cfg(test)]
mod tests;
