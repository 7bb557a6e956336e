//! What stands between a WebSocket's stream and tungstenite: the frame
//! counter (fragments per message), `Counted` (counted reads fed from one
//! shared bite, a gate on writes) and the spare tungstenite states.

use std::io;

use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use super::stream::Transport;

/// Counts the frames of fragmented messages as bytes pass from the socket to
/// tungstenite, which has no such limit: a message split into thousands of
/// tiny frames costs the server a frame's work each while staying under the
/// byte limit. Past `max` frames in one message the read fails and the
/// connection is closed with 1008.
///
/// Every open WebSocket keeps one, so it keeps of a frame's header only
/// what it needs: the first two bytes and the extended length.
#[derive(Debug, Clone)]
pub struct FrameCounter {
    /// Payload bytes of the current frame still to pass; while a header
    /// passes, its extended length so far.
    skip: u64,
    max: u32,
    /// Frames of the message in progress (0 when none is).
    frames: u32,
    /// The header's first two bytes, and how many of its bytes passed.
    b0: u8,
    b1: u8,
    have: u8,
    /// Bytes of the message in progress handed to tungstenite, which holds
    /// them until the message is whole (saturating: a message is at most
    /// `--max-message-bytes`)... (`Counted::count`; here, in the counter's
    /// padding, as they are the message in progress's too)
    partial: u32,
    /// ...all of which are counted in `PARTIAL_TOTAL` once this is set.
    charged: bool,
}

/// Why a read refused bytes it had: the connection is failed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadRefused {
    /// The message in progress has too many fragments.
    TooManyFragments,
    /// The message in progress would take the half-received messages of
    /// all connections past `--max-input-bytes`.
    OverInputBudget,
}

impl std::fmt::Display for ReadRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadRefused::TooManyFragments => "too many fragments in one message",
            ReadRefused::OverInputBudget => "half-received messages of all connections over --max-input-bytes",
        })
    }
}

impl std::error::Error for ReadRefused {}

thread_local! {
    /// Bytes of messages in progress handed to tungstenite by every
    /// connection of this thread (the loop's): the sum of their `partial`.
    static PARTIAL_TOTAL: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// `--max-input-bytes`: the most `PARTIAL_TOTAL` may reach. The loop's,
    /// one for all its connections, so kept beside the total rather than in
    /// every connection's record (B1: an idle connection's bytes).
    static INPUT_BUDGET: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Bytes of half-received messages over all connections of this thread:
/// what `--max-input-bytes` bounds.
fn partial_total() -> usize {
    PARTIAL_TOTAL.with(|t| t.get())
}

/// The header at the start of `bytes` when it is all there: (fin,
/// opcode, payload length, header length).
fn whole_header(bytes: &[u8]) -> Option<(bool, u8, u64, usize)> {
    let (&b0, &b1) = (bytes.first()?, bytes.get(1)?);
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let n = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
    let head = bytes.get(..n)?;
    let len = match ext {
        2 => u16::from_be_bytes([head[2], head[3]]) as u64,
        8 => u64::from_be_bytes(head[2..10].try_into().ok()?),
        _ => (b1 & 0x7f) as u64,
    };
    Some((b0 & 0x80 != 0, b0 & 0x0f, len, n))
}

impl FrameCounter {
    pub fn new(max: usize) -> FrameCounter {
        let max = u32::try_from(max).unwrap_or(u32::MAX);
        FrameCounter { skip: 0, max, frames: 0, b0: 0, b1: 0, have: 0, partial: 0, charged: false }
    }

    /// Feeds bytes as they arrive; false once a message has too many frames.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.have == 0 && self.skip > 0 {
                let n = (self.skip.min(bytes.len() as u64)) as usize;
                self.skip -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            // The common case, a whole header at the start of the bytes, is
            // read in place; a header split across reads passes byte by byte.
            let whole = if self.have == 0 { whole_header(bytes) } else { None };
            let (fin, opcode, len) = if let Some((fin, opcode, len, n)) = whole {
                bytes = &bytes[n..];
                (fin, opcode, len)
            } else {
                let byte = bytes[0];
                bytes = &bytes[1..];
                match self.have {
                    0 => self.b0 = byte,
                    1 => self.b1 = byte,
                    _ => {}
                }
                self.have += 1;
                if self.have < 2 {
                    continue;
                }
                let len7 = self.b1 & 0x7f;
                let ext: u8 = match len7 {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                if self.have > 2 && self.have <= 2 + ext {
                    // `skip` is 0 when a header starts: it collects the length.
                    self.skip = self.skip << 8 | byte as u64;
                }
                let mask = if self.b1 & 0x80 != 0 { 4 } else { 0 };
                if self.have < 2 + ext + mask {
                    continue;
                }
                let len = if ext == 0 { len7 as u64 } else { self.skip };
                (self.b0 & 0x80 != 0, self.b0 & 0x0f, len)
            };
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

    /// Bytes of `next` (what follows the bytes fed so far) up to the end of
    /// the frame in progress; at most one byte while a header gathered
    /// across reads is incomplete (its length is not known yet).
    fn to_frame_end(&self, next: &[u8]) -> usize {
        if self.have > 0 {
            return 1;
        }
        if self.skip > 0 {
            return usize::try_from(self.skip).unwrap_or(usize::MAX);
        }
        match whole_header(next) {
            Some((_, _, len, n)) => usize::try_from(len).unwrap_or(usize::MAX).saturating_add(n),
            None => next.len(),
        }
    }

    /// True when the bytes fed so far end at the end of a frame.
    pub(super) fn at_frame_end(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// Puts the message in progress at the limit: its next frame fails the
    /// read (bytes that came with the head and already held too many).
    pub(super) fn at_limit(&mut self) {
        self.frames = self.max;
    }

    /// True when the bytes fed so far end exactly at the end of a whole
    /// message: no frame, and no fragmented message, is half received.
    pub(super) fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0 && self.frames == 0
    }
}

/// The stream tungstenite reads and writes: the connection's, with the
/// frame counter on the way in and a gate on the way out.
pub struct Counted<S> {
    pub(super) stream: S,
    pub(super) counter: FrameCounter,
    /// A frame of ours is half written: tungstenite's own frames (pongs,
    /// close replies) must wait, or they would land inside it.
    pub(super) hold: bool,
    /// The last read from the TCP socket came back short: it is empty, and
    /// asking again would only cost a syscall that says WouldBlock. Bytes
    /// arriving after that read raise a new readiness event (epoll reports
    /// every arrival, even edge-triggered), and `Conn::readable` clears this.
    /// Only where `Transport::short_read_empties` (plain TCP): rustls may
    /// hold decrypted bytes a short read left.
    pub(super) empty: bool,
    /// The last read ended in WouldBlock: tungstenite holds no whole frame.
    /// (`Ws`'s, kept here beside the other flags, in bytes `Counted` pads anyway.)
    pub(super) drained: bool,
    /// tungstenite may hold more than one frame: the bytes that came with
    /// the request head went to it at once. Cleared when it next says
    /// WouldBlock; from then on it is handed one frame at most per read.
    pub(super) mixed: bool,
    /// tungstenite may have output of its own to write (a pong, a close
    /// reply): set when it read anything but a data message, cleared once
    /// its flush went through. Without it, a flush has nothing to ask it.
    pub(super) owes: bool,
    /// One socket read (see `READ_BITE`), handed to tungstenite as it asks.
    /// Held only while some of it is left: a connection between reads,
    /// idle or not, has none.
    bite: Option<Box<Bite>>,
}

impl<S> Counted<S> {
    pub(super) fn new(stream: S, counter: FrameCounter) -> Counted<S> {
        Counted { stream, counter, hold: false, empty: false, drained: false, mixed: false, owes: false, bite: None }
    }

    /// Reads past this many bytes of half-received messages over all
    /// connections fail with [`ReadRefused::OverInputBudget`].
    pub(super) fn with_budget(self, budget: usize) -> Counted<S> {
        INPUT_BUDGET.with(|b| b.set(budget));
        self
    }

    /// Counts `n` bytes just handed to tungstenite; false when they would
    /// take the messages in progress past the budget. A message that
    /// arrives whole in one socket read is never charged: only one still
    /// in progress when its read is used up, held across reads, is.
    fn count(&mut self, n: usize) -> bool {
        if self.counter.at_boundary() {
            // A message (or a control frame between messages) ended: it
            // is tungstenite's to return, and nothing is in progress.
            self.release();
            return true;
        }
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if !self.counter.charged && self.holds_bytes() {
            self.counter.partial = self.counter.partial.saturating_add(n);
            return true;
        }
        let more = if self.counter.charged { n } else { self.counter.partial.saturating_add(n) } as usize;
        let total = partial_total();
        if total.saturating_add(more) > INPUT_BUDGET.with(|b| b.get()) {
            return false;
        }
        PARTIAL_TOTAL.with(|t| t.set(total + more));
        (self.counter.partial, self.counter.charged) = (self.counter.partial.saturating_add(n), true);
        true
    }

    /// Gives back what the message in progress had counted.
    fn release(&mut self) {
        if self.counter.charged {
            PARTIAL_TOTAL.with(|t| t.set(t.get().saturating_sub(self.counter.partial as usize)));
        }
        (self.counter.partial, self.counter.charged) = (0, false);
    }

    /// True when bytes read from the socket still wait for tungstenite.
    pub(super) fn holds_bytes(&self) -> bool {
        self.bite.as_ref().is_some_and(|b| b.pos < b.end)
    }

    /// True when tungstenite, having returned a message (or a control
    /// frame), would only say WouldBlock if asked again: it holds none of
    /// the next frame's bytes (it is handed one frame at most per read),
    /// none wait here, and the socket is empty until its next readiness
    /// event. Asking it anyway costs a read's worth of its work per
    /// message: a header parse, a buffer fill, an error built and matched.
    pub(super) fn surely_blocks(&self) -> bool {
        self.empty && !self.mixed && self.counter.at_frame_end() && !self.holds_bytes()
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Bytes one read takes from a socket. tungstenite asks for its read
/// buffer's size at a time (1 KiB: it zero-fills what it offers before each
/// read, so a bigger offer costs every small message a bigger fill); reading
/// the socket in bigger bites turns a 16 KiB message into one syscall
/// instead of sixteen.
pub(super) const READ_BITE: usize = 64 * 1024;

/// One socket read and what of it is handed over: `bytes[pos..end]` wait.
pub(super) struct Bite {
    bytes: [u8; READ_BITE],
    pos: u32,
    end: u32,
}

/// Bites no connection holds, for the next read: the socket is read into
/// one of these and tungstenite takes its bytes straight from it, so the
/// bytes are copied once (bite → tungstenite) and a busy loop allocates
/// nothing per read. Few: a connection holds one only while it has bytes
/// left in it.
const SPARE_BITES: usize = 16;

thread_local! {
    // Boxed on purpose: a bite moves between a connection and this list as
    // a pointer, never as 64 KiB.
    #[allow(clippy::vec_box)]
    static BITES: std::cell::RefCell<Vec<Box<Bite>>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_bite() -> Box<Bite> {
    BITES.with_borrow_mut(Vec::pop).unwrap_or_else(|| {
        // Zeroed once, when first made: a bite is only ever read into.
        Box::new(Bite { bytes: [0; READ_BITE], pos: 0, end: 0 })
    })
}

fn give_back(bite: Box<Bite>) {
    BITES.with_borrow_mut(|spare| {
        if spare.len() < SPARE_BITES {
            spare.push(bite);
        }
    });
}

impl<S: Transport> io::Read for Counted<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.holds_bytes() {
            if self.empty {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut bite = self.bite.take().unwrap_or_else(take_bite);
            match self.stream.read(&mut bite.bytes[..]) {
                Ok(got) => {
                    self.empty = got > 0 && got < READ_BITE && self.stream.short_read_empties();
                    (bite.pos, bite.end) = (0, got as u32);
                    self.bite = Some(bite);
                }
                Err(e) => {
                    give_back(bite);
                    return Err(e);
                }
            }
        }
        let Some(bite) = &mut self.bite else { return Ok(0) };
        let left = &bite.bytes[bite.pos as usize..bite.end as usize];
        // Never past the end of the frame in progress: what tungstenite holds
        // after it returns a frame is then nothing (`surely_blocks`).
        let n = buf.len().min(left.len()).min(self.counter.to_frame_end(left));
        buf[..n].copy_from_slice(&left[..n]);
        bite.pos += n as u32;
        if !self.holds_bytes() {
            // All handed over: the bite serves the next read, of any connection.
            if let Some(bite) = self.bite.take() {
                give_back(bite);
            }
        }
        if !self.counter.feed(&buf[..n]) {
            return Err(io::Error::other(ReadRefused::TooManyFragments));
        }
        if !self.count(n) {
            return Err(io::Error::other(ReadRefused::OverInputBudget));
        }
        Ok(n)
    }
}

impl<S: Transport> io::Write for Counted<S> {
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

/// An open WebSocket. tungstenite's state — its read buffer above all —
/// exists only while bytes are in flight: an idle connection, the common
/// case by far, keeps just its socket and the frame counter.
pub(super) struct Ws<S> {
    pub(super) stream: Counted<S>,
    pub(super) ctx: Option<Box<WebSocketContext>>,
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

impl<S: Transport> Ws<S> {
    /// tungstenite's state, built if the connection was idle, and the stream.
    pub(super) fn parts(&mut self, config: WebSocketConfig) -> (&mut WebSocketContext, &mut Counted<S>) {
        let ctx = self.ctx.get_or_insert_with(|| {
            SPARE
                .with_borrow_mut(Vec::pop)
                .unwrap_or_else(|| Box::new(WebSocketContext::new(Role::Server, Some(config))))
        });
        (ctx, &mut self.stream)
    }

    /// Drops tungstenite's state when it holds nothing: no bytes of a
    /// message received, none of its own waiting to be written (`flushed`:
    /// the caller has just written them). Returns false when its output
    /// could not be written yet.
    pub(super) fn release(&mut self, flushed: bool) -> bool {
        if !self.stream.drained || !self.stream.counter.at_boundary() || self.stream.holds_bytes() {
            return true;
        }
        let Some(ctx) = &mut self.ctx else { return true };
        match if flushed { Ok(()) } else { ctx.flush(&mut self.stream) } {
            Ok(()) => {
                self.stream.owes = false;
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

    /// A socket that gives its chunks one read each, then WouldBlock;
    /// like TCP (a short read empties it) when the flag is set.
    struct Script(std::collections::VecDeque<Vec<u8>>, usize, bool);

    impl io::Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(mut chunk) = self.0.pop_front() else { return Err(io::ErrorKind::WouldBlock.into()) };
            self.1 += 1;
            let n = buf.len().min(chunk.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.push_front(chunk.split_off(n));
            }
            Ok(n)
        }
    }

    impl io::Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for Script {
        fn push(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn shutdown_write(&mut self) {}
        fn short_read_empties(&self) -> bool {
            self.2
        }
    }

    /// A client text frame (mask key 0, so the payload is as sent).
    fn text(payload: &[u8]) -> Vec<u8> {
        let mut f = frame(true, 1, payload.len());
        let at = f.len() - payload.len();
        f[at - 4..at].copy_from_slice(&[0; 4]);
        f[at..].copy_from_slice(payload);
        f
    }

    #[test]
    fn messages_of_every_size_in_one_socket_read_reach_tungstenite_whole_and_no_buffer_stays_behind() {
        let payloads: Vec<Vec<u8>> =
            [20, 16 * 1024, 1024, 70_000].iter().map(|&n| (0..n).map(|i| b'a' + (i % 26) as u8).collect()).collect();
        let wire: Vec<u8> = payloads.iter().flat_map(|p| text(p)).collect();
        // The first read gets READ_BITE bytes; the last message spans two reads.
        let script = Script(vec![wire].into(), 0, false);
        let mut stream = Counted::new(script, FrameCounter::new(4));
        let config = WebSocketConfig::default().read_buffer_size(1024).max_message_size(Some(1 << 20));
        let mut ctx = WebSocketContext::new(Role::Server, Some(config));
        for p in &payloads {
            match ctx.read(&mut stream) {
                Ok(tungstenite::Message::Text(t)) => assert_eq!(t.as_bytes(), &p[..], "a {}-byte message", p.len()),
                other => panic!("a {}-byte message: {other:?}", p.len()),
            }
        }
        assert_eq!(stream.stream.1, 2, "one socket read per READ_BITE, not one per tungstenite buffer");
        assert!(
            matches!(ctx.read(&mut stream), Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock)
        );
        assert!(!stream.holds_bytes());
        assert!(stream.bite.is_none(), "a connection with nothing left to hand over holds no read buffer");
    }

    #[test]
    fn tungstenite_gets_one_frame_at_most_per_read_so_it_holds_nothing_once_it_returns_a_message() {
        let big: Vec<u8> = (0..3000).map(|i| b'a' + (i % 26) as u8).collect();
        let payloads: [&[u8]; 4] = [b"one", b"two", &big, b"three"];
        let wire: Vec<u8> = payloads.iter().flat_map(|p| text(p)).collect();
        let mut stream = Counted::new(Script(vec![wire].into(), 0, true), FrameCounter::new(4));
        let config = WebSocketConfig::default().read_buffer_size(1024);
        let mut ctx = WebSocketContext::new(Role::Server, Some(config));
        for (i, p) in payloads.iter().enumerate() {
            match ctx.read(&mut stream) {
                Ok(tungstenite::Message::Text(t)) => assert_eq!(t.as_bytes(), *p),
                other => panic!("message {i}: {other:?}"),
            }
            // The rest waits here, not in tungstenite's buffer; after the
            // last message nothing waits anywhere.
            assert_eq!(stream.surely_blocks(), i == payloads.len() - 1, "after message {i}");
        }
        assert!(
            matches!(ctx.read(&mut stream), Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock)
        );
        assert_eq!(stream.stream.1, 1, "one socket read");
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
        // Fed whole (headers read in place) and in awkward pieces, as a
        // socket would deliver them (headers gathered across reads).
        for size in [bytes.len(), 1, 3, 7] {
            for chunk in bytes.chunks(size) {
                assert!(c.feed(chunk));
                assert!(c.frames <= 4, "chunks of {size}");
            }
            assert_eq!(c.frames, 0, "the final frame ends the message (chunks of {size})");
            assert!(c.at_boundary());
        }
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
