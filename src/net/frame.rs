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

    /// The encoded frame, as written to the socket.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.0
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
