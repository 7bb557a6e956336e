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
//! This is the only module that knows tungstenite.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::{IpAddr, Shutdown};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Bytes, Message, Utf8Bytes};

use crate::http::{self, Head, HeadError};

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
#[derive(Debug)]
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
}

/// What reading the head gave.
pub enum HeadStatus {
    /// Need more bytes.
    Pending,
    Ready(Box<Head>),
    /// Refuse with this status and error code.
    Refuse(u16, &'static str),
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
}

/// A WebSocket frame from the server, encoded once. Server frames are
/// unmasked (RFC 6455 §5.1), so the same bytes go to every subscriber of a
/// message: a clone is a reference count, not a copy.
#[derive(Clone, Debug)]
pub struct Frame(Bytes);

impl Frame {
    pub fn text(text: &str) -> Frame {
        Frame::encode(0x1, text.as_bytes())
    }

    pub fn binary(bytes: &[u8]) -> Frame {
        Frame::encode(0x2, bytes)
    }

    /// The ping that asks a quiet peer whether it is still there.
    fn ping() -> Frame {
        Frame(Bytes::from_static(&[0x89, 0x00]))
    }

    fn encode(opcode: u8, payload: &[u8]) -> Frame {
        let n = payload.len();
        let mut f = Vec::with_capacity(n + 10);
        f.push(0x80 | opcode);
        if n < 126 {
            f.push(n as u8);
        } else if n <= 0xffff {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(payload);
        Frame(Bytes::from(f))
    }

    /// Bytes on the wire, header included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame::text(&text)
    }
}

/// The byte stream under HTTP and WebSocket: plain TCP, or TLS over it.
/// rustls runs non-blocking here: its reads and writes return WouldBlock
/// like the socket's, and `flush` pushes out TLS records it still holds.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Stream {
    pub fn tls(sock: TcpStream, config: std::sync::Arc<rustls::ServerConfig>) -> io::Result<Stream> {
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
    }

    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &mut t.sock,
        }
    }

    /// Ends our side: a TLS close_notify first, then the TCP FIN.
    fn shutdown_write(&mut self) {
        if let Stream::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = push_tls(t);
        }
        let _ = self.tcp().shutdown(Shutdown::Write);
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

/// Writes out the TLS records rustls holds, until done or WouldBlock.
///
/// Write-only on purpose: rustls' own `Stream::write`/`flush` may also read
/// from the socket (to finish a handshake), and bytes read there — a
/// request sent together with the client's Finished — would sit decrypted
/// inside rustls with no readable edge ever coming for them.
fn push_tls(t: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>) -> io::Result<()> {
    while t.conn.wants_write() {
        match t.conn.write_tls(&mut t.sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => {
                push_tls(t)?;
                // rustls buffers plaintext up to its limit (64 KiB); past it
                // the caller waits for the socket like with plain TCP.
                let n = t.conn.writer().write(buf)?;
                if n == 0 && !buf.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                match push_tls(t) {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                    _ => Ok(n),
                }
            }
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write_vectored(bufs),
            Stream::Tls(_) => {
                // rustls takes one buffer at a time; the rest waits for the next round.
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
                self.write(first)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => push_tls(t),
        }
    }
}

/// Counts the frames of fragmented messages as bytes pass from the socket to
/// tungstenite, which has no such limit: a message split into thousands of
/// tiny frames costs the server a frame's work each while staying under the
/// byte limit. Past `max` frames in one message the read fails and the
/// connection is closed with 1008.
#[derive(Debug, Clone)]
pub struct FrameCounter {
    max: usize,
    /// Frames of the message in progress (0 when none is).
    frames: usize,
    head: [u8; 14],
    have: u8,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
}

/// The error a read returns when a message has too many fragments.
#[derive(Debug)]
struct TooManyFragments;

impl std::fmt::Display for TooManyFragments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too many fragments in one message")
    }
}

impl std::error::Error for TooManyFragments {}

impl FrameCounter {
    pub fn new(max: usize) -> FrameCounter {
        FrameCounter { max, frames: 0, head: [0; 14], have: 0, skip: 0 }
    }

    /// Feeds bytes as they arrive; false once a message has too many frames.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(bytes.len() as u64)) as usize;
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.head[self.have as usize] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have < 2 {
                continue;
            }
            let len7 = self.head[1] & 0x7f;
            let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
            let need: u8 = 2
                + mask
                + if len7 == 126 {
                    2
                } else if len7 == 127 {
                    8
                } else {
                    0
                };
            if self.have < need {
                continue;
            }
            let len = match len7 {
                126 => u16::from_be_bytes([self.head[2], self.head[3]]) as u64,
                127 => u64::from_be_bytes(self.head[2..10].try_into().unwrap_or([0; 8])),
                n => n as u64,
            };
            let (fin, opcode) = (self.head[0] & 0x80 != 0, self.head[0] & 0x0f);
            // Control frames (0x8-0xf) may come between fragments and do not count.
            if opcode < 0x8 {
                self.frames += 1;
                if self.frames > self.max {
                    return false;
                }
                if fin {
                    self.frames = 0;
                }
            }
            self.skip = len;
            self.have = 0;
        }
        true
    }

    /// True when the bytes fed so far end exactly at the end of a whole
    /// message: no frame, and no fragmented message, is half received.
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0 && self.frames == 0
    }
}

/// The stream tungstenite reads and writes: the connection's, with the
/// frame counter on the way in and a gate on the way out.
pub struct Counted {
    stream: Stream,
    counter: FrameCounter,
    /// A frame of ours is half written: tungstenite's own frames (pongs,
    /// close replies) must wait, or they would land inside it.
    hold: bool,
    /// The last read from the TCP socket came back short: it is empty, and
    /// asking again would only cost a syscall that says WouldBlock. Bytes
    /// arriving after that read raise a new readiness event (epoll reports
    /// every arrival, even edge-triggered), and `Conn::readable` clears this.
    /// Plain TCP only: rustls may hold decrypted bytes a short read left.
    empty: bool,
    /// Bytes read from the socket that tungstenite has not asked for yet
    /// (see `READ_BITE`), from `spill_pos` on; without a buffer on an
    /// idle connection.
    spill: Vec<u8>,
    spill_pos: usize,
}

/// Bytes one read takes from a socket. tungstenite asks for its read
/// buffer's size at a time (1 KiB, so an idle-to-busy connection costs
/// little); reading the socket in bigger bites into one buffer the whole
/// loop shares turns a 16 KiB message into one syscall instead of sixteen.
const READ_BITE: usize = 64 * 1024;

thread_local! {
    static BITE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if self.spill_pos < self.spill.len() {
            // Left from the last bite: hand it over first, in order.
            let left = &self.spill[self.spill_pos..];
            let n = buf.len().min(left.len());
            buf[..n].copy_from_slice(&left[..n]);
            self.spill_pos += n;
            if self.spill_pos == self.spill.len() {
                // Keeps its buffer while the connection is busy; `Ws::release` frees it.
                self.spill.clear();
                self.spill_pos = 0;
            }
            n
        } else if self.empty {
            return Err(io::ErrorKind::WouldBlock.into());
        } else {
            BITE.with_borrow_mut(|bite| -> io::Result<usize> {
                bite.resize(READ_BITE, 0);
                let got = self.stream.read(bite)?;
                self.empty = got > 0 && got < READ_BITE && matches!(self.stream, Stream::Plain(_));
                let n = buf.len().min(got);
                buf[..n].copy_from_slice(&bite[..n]);
                // What tungstenite did not ask for stays with this connection.
                self.spill.extend_from_slice(&bite[n..got]);
                Ok(n)
            })?
        };
        if !self.counter.feed(&buf[..n]) {
            return Err(io::Error::other(TooManyFragments));
        }
        Ok(n)
    }
}

impl io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.hold {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

enum Io {
    Raw(Stream),
    Ws(Ws),
    /// Only between taking the socket out of `Raw` and into `Ws`.
    Moving,
}

/// An open WebSocket. tungstenite's state — its read buffer above all —
/// exists only while bytes are in flight: an idle connection, the common
/// case by far, keeps just its socket and the frame counter.
struct Ws {
    stream: Counted,
    ctx: Option<Box<WebSocketContext>>,
    /// The last read ended in WouldBlock: tungstenite holds no whole frame.
    drained: bool,
}

/// Released tungstenite states kept for reuse, so a connection that sends
/// now and then does not allocate one (and its read buffer) per message.
/// A released state is as good as new: open, nothing buffered, nothing owed.
/// Few: a read buffer a big message grew stays grown (16 × 64 KiB at most
/// with the default message limit).
const SPARE_CONTEXTS: usize = 16;

thread_local! {
    // Boxed on purpose: a state moves between a connection and this list
    // as a pointer, never as the struct.
    #[allow(clippy::vec_box)]
    static SPARE: std::cell::RefCell<Vec<Box<WebSocketContext>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Ws {
    /// tungstenite's state, built if the connection was idle, and the stream.
    fn parts(&mut self, config: WebSocketConfig) -> (&mut WebSocketContext, &mut Counted) {
        let ctx = self.ctx.get_or_insert_with(|| {
            SPARE
                .with_borrow_mut(Vec::pop)
                .unwrap_or_else(|| Box::new(WebSocketContext::new(Role::Server, Some(config))))
        });
        (ctx, &mut self.stream)
    }

    /// Drops tungstenite's state when it holds nothing: no bytes of a
    /// message received, none of its own waiting to be written. Returns
    /// false when its output could not be written yet.
    fn release(&mut self) -> bool {
        if !self.drained || !self.stream.counter.at_boundary() || !self.stream.spill.is_empty() {
            return true;
        }
        let Some(ctx) = &mut self.ctx else { return true };
        match ctx.flush(&mut self.stream) {
            Ok(()) => {
                self.stream.spill = Vec::new();
                if let Some(ctx) = self.ctx.take() {
                    SPARE.with_borrow_mut(|spare| {
                        if spare.len() < SPARE_CONTEXTS {
                            spare.push(ctx);
                        }
                    });
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// Close codes the server sends, by name.
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const BAD_UTF8: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const SLOW: u16 = 1013;
    pub const TOKEN_EXPIRED: u16 = 4001;
}

pub struct Conn {
    io: Io,
    phase: Phase,
    pub peer: IpAddr,
    settings: Arc<Settings>,
    /// Request bytes received and not yet consumed (heads, bodies, pipelined requests).
    head: Vec<u8>,
    /// Raw bytes to write before anything else (an HTTP response or the 101).
    raw: Vec<u8>,
    raw_pos: usize,
    queue: VecDeque<Frame>,
    queued_bytes: usize,
    /// Bytes of the front frame already written.
    front_pos: usize,
    /// tungstenite holds bytes it could not write yet.
    unflushed: bool,
    /// Close frame to send once the queue is empty.
    close_after: Option<Box<CloseFrame>>,
    /// Drop once everything is flushed (a failed connection: no reply awaited).
    drop_after_flush: bool,
    /// Reading waits for the pending answer to be written (`block_reads`).
    reads_blocked: bool,
    // Deadlines.
    /// For the request head while reading HTTP; for the peer's Close (or
    /// for reading our refusal) while closing.
    deadline: Option<Instant>,
    expires: Option<Instant>,
    last_heard: Instant,
    ping_sent: Option<Instant>,
}

impl Conn {
    pub fn new(sock: Stream, peer: IpAddr, now: Instant, settings: Arc<Settings>) -> Conn {
        let deadline = Some(now + settings.handshake_timeout);
        Conn {
            io: Io::Raw(sock),
            phase: Phase::Head,
            peer,
            settings,
            head: Vec::new(),
            raw: Vec::new(),
            raw_pos: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            front_pos: 0,
            unflushed: false,
            close_after: None,
            drop_after_flush: false,
            reads_blocked: false,
            deadline,
            expires: None,
            last_heard: now,
            ping_sent: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The TCP socket, for the poller.
    pub fn socket(&mut self) -> Option<&mut TcpStream> {
        self.stream().map(Stream::tcp)
    }

    fn stream(&mut self) -> Option<&mut Stream> {
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
        let mut chunk = [0u8; 2048];
        loop {
            match http::parse_head(&self.head, max_bytes) {
                Ok(None) => {}
                Ok(Some(head)) => return HeadStatus::Ready(Box::new(head)),
                Err(HeadError::TooLarge) => return HeadStatus::Refuse(431, "headers_too_large"),
                Err(HeadError::Malformed) => return HeadStatus::Refuse(400, "bad_request"),
            }
            match sock.read(&mut chunk) {
                Ok(0) => return HeadStatus::Gone,
                Ok(n) => self.head.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HeadStatus::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return HeadStatus::Gone,
            }
        }
    }

    /// True while an HTTP answer (or the 101) is not yet all on the wire.
    pub fn answer_pending(&self) -> bool {
        self.raw_pos < self.raw.len()
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
        let unblocked = self.reads_blocked && !self.answer_pending() && self.phase != Phase::Closed;
        if unblocked {
            self.reads_blocked = false;
        }
        unblocked
    }

    /// Answers with a plain HTTP response and ends the connection after it.
    pub fn refuse(&mut self, response: Vec<u8>, now: Instant) {
        self.respond(response, usize::MAX, false, now);
    }

    /// Queues an HTTP response to the request that took the first
    /// `consumed` buffered bytes. Kept alive, the connection then waits for
    /// the next request head (which may already be buffered).
    pub fn respond(&mut self, response: Vec<u8>, consumed: usize, keep_alive: bool, now: Instant) {
        self.raw.extend_from_slice(&response);
        if keep_alive {
            self.head.drain(..consumed.min(self.head.len()));
            self.phase = Phase::Head;
            self.deadline = Some(now + self.settings.handshake_timeout);
        } else {
            self.head = Vec::new();
            self.phase = Phase::Responding;
            self.deadline = Some(now + CLOSE_GRACE);
        }
    }

    /// The request head is read; its body comes next (same deadline).
    pub fn expect_body(&mut self) {
        self.phase = Phase::Body;
    }

    /// The request waits for a commit: no deadline, nothing read meanwhile.
    pub fn wait_commit(&mut self) {
        self.phase = Phase::Waiting;
        self.deadline = None;
    }

    /// Reads until `total` request bytes are buffered or the socket is
    /// empty; gives them once all are there.
    pub fn read_body(&mut self, total: usize) -> BodyStatus<'_> {
        let Io::Raw(sock) = &mut self.io else { return BodyStatus::Gone };
        let mut chunk = [0u8; 4096];
        while self.head.len() < total {
            let want = (total - self.head.len()).min(chunk.len());
            match sock.read(&mut chunk[..want]) {
                Ok(0) => return BodyStatus::Gone,
                Ok(n) => self.head.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return BodyStatus::Pending,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return BodyStatus::Gone,
            }
        }
        BodyStatus::Ready(&self.head[..total])
    }

    /// Switches to WebSocket: queues the 101 answer, hands the socket and
    /// any bytes read past the head to tungstenite. `expires`: the token's.
    pub fn upgrade(&mut self, answer: Vec<u8>, head_len: usize, expires: Option<Instant>, now: Instant) {
        let leftover = self.head.split_off(head_len.min(self.head.len()));
        self.head = Vec::new();
        self.raw = answer;
        self.raw_pos = 0;
        let Io::Raw(sock) = std::mem::replace(&mut self.io, Io::Moving) else {
            self.phase = Phase::Closed;
            return;
        };
        let mut counter = FrameCounter::new(self.settings.max_fragments.unwrap_or(usize::MAX));
        // Bytes that came with the head are frames too; an excess shows on
        // the next read.
        if !counter.feed(&leftover) {
            counter.frames = counter.max;
        }
        let drained = leftover.is_empty();
        let config = Some(self.settings.ws);
        let ctx = (!drained).then(|| Box::new(WebSocketContext::from_partially_read(leftover, Role::Server, config)));
        let stream = Counted { stream: sock, counter, hold: false, empty: false, spill: Vec::new(), spill_pos: 0 };
        self.io = Io::Ws(Ws { stream, ctx, drained });
        self.phase = Phase::Open;
        self.deadline = None;
        self.expires = expires;
        self.last_heard = now;
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
        // The 101 must reach the wire before anything tungstenite writes
        // (a pong, say) — and so before it reads.
        if self.answer_pending() {
            // Frames that came with the head wait for the 101; the flush that
            // writes it says so (`take_unblocked`).
            self.reads_blocked = true;
            return Incoming::WouldBlock;
        }
        if !matches!(self.phase, Phase::Open | Phase::Closing) {
            return Incoming::WouldBlock;
        }
        let Io::Ws(ws) = &mut self.io else { return Incoming::Finished };
        let (ctx, stream) = ws.parts(self.settings.ws);
        let res = ctx.read(stream);
        ws.drained = false;
        if res.is_ok() {
            self.last_heard = now;
            self.ping_sent = None;
        }
        match res {
            Ok(Message::Text(t)) if self.phase == Phase::Open => Incoming::Text(t),
            Ok(Message::Binary(b)) if self.phase == Phase::Open => Incoming::Binary(b),
            Ok(Message::Close(_)) => {
                // tungstenite queued the reply; flushing it ends the connection.
                self.phase = Phase::Closing;
                self.discard_queue();
                self.close_after = None;
                self.deadline.get_or_insert(now + CLOSE_GRACE);
                Incoming::Finished
            }
            Ok(_) => Incoming::Again,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                ws.drained = true;
                if self.phase == Phase::Open && !self.wants_write() {
                    self.release();
                }
                Incoming::WouldBlock
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => Incoming::Again,
            Err(tungstenite::Error::Io(e)) if e.get_ref().is_some_and(|e| e.is::<TooManyFragments>()) => {
                self.fail(code::POLICY, "too many fragments", now)
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
        if self.phase != Phase::Open || self.close_after.is_some() {
            return true;
        }
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
        self.queued_bytes <= limit
    }

    /// Bytes queued and not yet handed to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
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
        self.close_after =
            Some(Box::new(CloseFrame { code: CloseCode::from(code), reason: Utf8Bytes::from_static(reason) }));
        self.phase = Phase::Closing;
        self.deadline = Some(now + if code == code::SLOW { SLOW_CLOSE_GRACE } else { CLOSE_GRACE });
    }

    /// Drops what is queued, but for a frame already half on the wire:
    /// the rest of it must follow, or the peer reads garbage.
    pub fn discard_queue(&mut self) {
        let started = if self.front_pos > 0 { self.queue.pop_front() } else { None };
        self.queue.clear();
        self.queued_bytes = 0;
        if let Some(frame) = started {
            self.queued_bytes = frame.len();
            self.queue.push_back(frame);
        }
    }

    /// Frees tungstenite's state of an idle WebSocket (see `Ws`).
    fn release(&mut self) {
        if let Io::Ws(ws) = &mut self.io {
            if !ws.release() {
                self.unflushed = true;
            } else if ws.ctx.is_none() && self.queue.capacity() > 0 {
                // The queue's buffer goes too; the next burst allocates anew.
                self.queue = VecDeque::new();
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
        if let Some(Stream::Tls(t)) = self.stream() {
            match push_tls(t) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => return,
                Err(_) => return self.phase = Phase::Closed,
            }
        }
        while self.raw_pos < self.raw.len() {
            match self.socket_write_raw() {
                Ok(0) => return self.phase = Phase::Closed,
                Ok(n) => self.raw_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.phase = Phase::Closed,
            }
        }
        if !self.raw.is_empty() {
            self.raw = Vec::new();
            self.raw_pos = 0;
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

    fn socket_write_raw(&mut self) -> io::Result<usize> {
        let (raw, pos) = (&self.raw, self.raw_pos);
        match &mut self.io {
            Io::Raw(s) => s.write(&raw[pos..]),
            Io::Ws(ws) => ws.stream.stream.write(&raw[pos..]),
            Io::Moving => Ok(0),
        }
    }

    /// Writes, in order: the rest of a half-written frame of ours,
    /// tungstenite's own frames (pongs, close replies), our queue, and last
    /// the Close we owe.
    fn flush_ws(&mut self) {
        if self.front_pos > 0 && !self.write_queue(true) {
            return;
        }
        let Io::Ws(ws) = &mut self.io else { return };
        if let Some(ctx) = &mut ws.ctx {
            match ctx.flush(&mut ws.stream) {
                Ok(()) => self.unflushed = false,
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
        if let Some(frame) = self.close_after.take() {
            let (ctx, stream) = ws.parts(self.settings.ws);
            match ctx.close(stream, Some(*frame)).and_then(|()| ctx.flush(stream)) {
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
            // the TCP connection first (RFC 6455 §7.1.1).
            ws.stream.stream.shutdown_write();
            self.phase = Phase::Closed;
        } else if self.phase == Phase::Open {
            self.release();
        }
    }

    /// Writes queued frames with `writev` until the queue is empty or the
    /// socket is full (false). `front_only`: stop after the front frame.
    fn write_queue(&mut self, front_only: bool) -> bool {
        let Io::Ws(ws) = &mut self.io else { return false };
        while !self.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITEV_FRAMES];
            let take = if front_only { 1 } else { self.queue.len().min(WRITEV_FRAMES) };
            for (slot, frame) in slices.iter_mut().zip(self.queue.iter().take(take)) {
                *slot = IoSlice::new(&frame.0);
            }
            slices[0] = IoSlice::new(&self.queue[0].0[self.front_pos..]);
            // One frame (the common case: a reply, a delivery) goes out with
            // a plain write, which costs the kernel less than a one-piece writev.
            let res = if take == 1 {
                ws.stream.stream.write(&slices[0])
            } else {
                ws.stream.stream.write_vectored(&slices[..take])
            };
            let mut written = match res {
                Ok(0) => {
                    self.phase = Phase::Closed;
                    return false;
                }
                Ok(n) => n + self.front_pos,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.phase = Phase::Closed;
                    }
                    ws.stream.hold = self.front_pos > 0;
                    return false;
                }
            };
            self.front_pos = 0;
            while let Some(front) = self.queue.front() {
                if written < front.len() {
                    self.front_pos = written;
                    break;
                }
                written -= front.len();
                self.queued_bytes -= front.len();
                self.queue.pop_front();
            }
            ws.stream.hold = self.front_pos > 0;
            if front_only && self.front_pos == 0 {
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
        self.raw_pos < self.raw.len() || self.unflushed || !self.queue.is_empty() || self.close_after.is_some()
    }

    /// The next moment `tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        let liveness = match self.phase {
            Phase::Open => Some(match self.ping_sent {
                Some(at) => at.checked_add(self.settings.pong_within).unwrap_or(far_future(at)),
                None => self.last_heard.checked_add(self.settings.ping_every).unwrap_or(far_future(self.last_heard)),
            }),
            _ => None,
        };
        [self.deadline, self.expires, liveness].into_iter().flatten().min()
    }

    /// Acts on the deadlines that have passed.
    pub fn tick(&mut self, now: Instant) -> Tick {
        if self.deadline.is_some_and(|d| d <= now) {
            self.phase = Phase::Closed;
            self.deadline = None;
            return Tick::Drop;
        }
        if self.phase != Phase::Open {
            return Tick::Nothing;
        }
        if self.expires.is_some_and(|d| d <= now) {
            self.expires = None;
            return Tick::TokenExpired;
        }
        match self.ping_sent {
            Some(at) if now.saturating_duration_since(at) >= self.settings.pong_within => {
                // A half-open peer: nothing we send would arrive.
                self.phase = Phase::Closed;
                Tick::Drop
            }
            None if now.saturating_duration_since(self.last_heard) >= self.settings.ping_every => {
                self.ping_sent = Some(now);
                let ping = Frame::ping();
                self.queued_bytes += ping.len();
                self.queue.push_back(ping);
                Tick::Nothing
            }
            _ => Tick::Nothing,
        }
    }
}

fn far_future(from: Instant) -> Instant {
    from + Duration::from_secs(86400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `len` payload bytes.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn fragments_are_counted_per_message() {
        let mut c = FrameCounter::new(4);
        // A fragmented message of 4 frames is fine, with a ping in between.
        let mut bytes = frame(false, 1, 10);
        bytes.extend(frame(false, 0, 200));
        bytes.extend(frame(true, 9, 4));
        bytes.extend(frame(false, 0, 70_000));
        bytes.extend(frame(true, 0, 1));
        // Fed in awkward pieces, as a socket would deliver them.
        for chunk in bytes.chunks(7) {
            assert!(c.feed(chunk));
        }
        assert_eq!(c.frames, 0, "the final frame ends the message");
        // Unfragmented messages never count.
        for _ in 0..100 {
            assert!(c.feed(&frame(true, 1, 5)));
        }
        // The fifth frame of one message is too many.
        let mut flood = Vec::new();
        for _ in 0..5 {
            flood.extend(frame(false, 0, 0));
        }
        assert!(!c.feed(&flood));
    }
}
