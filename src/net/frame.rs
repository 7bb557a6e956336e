//! The outgoing WebSocket frame, encoded once and shared by every
//! subscriber, and the close codes the server sends.

use tungstenite::Bytes;

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
    pub(super) fn ping() -> Frame {
        Frame(Bytes::from_static(&[0x89, 0x00]))
    }

    fn encode(opcode: u8, payload: &[u8]) -> Frame {
        let n = payload.len();
        let big = n >= POOLED_MIN;
        let head = match n {
            0..126 => 2,
            126..=0xffff => 4,
            _ => 10,
        };
        // Exactly the frame's size: `Bytes::from` a `Vec` whose length is
        // its capacity takes the buffer as it is; any spare capacity costs
        // a second allocation for a shared header.
        let mut f = if big { pooled_vec(head + n) } else { Vec::with_capacity(head + n) };
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
        if big {
            return Frame(Bytes::from_owner(Pooled(f)));
        }
        Frame(Bytes::from(f))
    }

    /// Bytes on the wire, header included.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The encoded frame, as written to the socket.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Frames from this size on are encoded into a buffer that goes back to a
/// small pool when the last copy of the frame is written: a stream of big
/// messages (a 16 KiB echo, say) would otherwise allocate and free 16 KiB
/// per message, and glibc hands such frees back to the kernel and faults
/// the pages in again, a `brk` and a page fault every few messages.
const POOLED_MIN: usize = 4 * 1024;
/// Bytes kept in the pool, and the biggest buffer kept: bounded whatever
/// the traffic (64 frames of 16 KiB; frames of 50 connections each with an
/// echo queued fit).
const POOLED_BYTES: usize = 1 << 20;
const POOLED_MAX_CAPACITY: usize = 128 * 1024;

/// The pooled buffers and the sum of their capacities.
struct Pool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = const { std::cell::RefCell::new(Pool { free: Vec::new(), bytes: 0 }) };
}

fn pooled_vec(capacity: usize) -> Vec<u8> {
    let taken = POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        let v = p.free.pop()?;
        p.bytes -= v.capacity();
        Some(v)
    });
    let mut v = taken.ok().flatten().unwrap_or_default();
    v.reserve(capacity);
    v
}

/// A frame's bytes, back into the pool of the thread that drops the last
/// copy (the event loop's, in practice) when there is room.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        if v.capacity() > POOLED_MAX_CAPACITY {
            return;
        }
        v.clear();
        // Thread teardown: no pool any more, the buffer is just freed.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.bytes + v.capacity() <= POOLED_BYTES {
                p.bytes += v.capacity();
                p.free.push(v);
            }
        });
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Frame {
        Frame::text(&text)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pooled() -> usize {
        POOL.with_borrow(|p| p.free.len())
    }

    #[test]
    fn a_big_frame_s_buffer_serves_the_next_one_once_every_copy_is_written() {
        let payload = "x".repeat(16 * 1024);
        let a = Frame::text(&payload);
        assert_eq!(&a.as_bytes()[..4], &[0x81, 126, 0x40, 0x00]);
        assert_eq!(&a.as_bytes()[4..], payload.as_bytes());
        let before = pooled();
        let (b, at) = (a.clone(), a.as_bytes().as_ptr());
        drop(a);
        assert_eq!(pooled(), before, "a copy still waits to be written");
        drop(b);
        assert_eq!(pooled(), before + 1);
        let c = Frame::binary(payload.as_bytes());
        assert_eq!(c.as_bytes().as_ptr(), at, "the same buffer, not a new allocation");
        assert_eq!(c.as_bytes()[0], 0x82);
        assert_eq!(&c.as_bytes()[4..], payload.as_bytes());
        assert_eq!(pooled(), before);
    }

    #[test]
    fn the_pool_of_frame_buffers_stays_small_whatever_the_traffic() {
        let frames: Vec<Frame> =
            (0..3 * POOLED_BYTES / (16 * 1024)).map(|_| Frame::text(&"y".repeat(16 * 1024))).collect();
        drop(frames);
        let (kept, bytes) = POOL.with_borrow(|p| (p.free.len(), p.bytes));
        assert_eq!(bytes, POOL.with_borrow(|p| p.free.iter().map(Vec::capacity).sum::<usize>()));
        assert!(bytes <= POOLED_BYTES && bytes > POOLED_BYTES - 17 * 1024, "{bytes} bytes in {kept} buffers");
        // A huge frame takes a buffer and grows it past what is kept: it is freed.
        drop(Frame::binary(&vec![0; POOLED_MAX_CAPACITY + 1]));
        assert_eq!(pooled(), kept - 1);
        assert!(POOL.with_borrow(|p| p.free.iter().all(|v| v.capacity() <= POOLED_MAX_CAPACITY)));
        let small = Frame::text("small");
        assert_eq!(pooled(), kept - 1, "small frames never take from the pool");
        assert_eq!(small.as_bytes(), b"\x81\x05small");
    }
}
