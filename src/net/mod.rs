//! The network edge: bytes in and out of one connection, from the first
//! byte of a request head to the last byte of a close handshake. The only
//! module that knows tungstenite's framing and I/O.
//!
//! One file per concept, in the order bytes meet them:
//!
//! - `stream`: `Stream`, plain TCP or TLS (rustls), and `Transport`, what
//!   `Conn` needs of a stream; the only file here that knows mio and rustls.
//! - `counted`: between the stream and tungstenite: `FrameCounter`
//!   (fragments per message), `Counted` (reads fed from one shared bite, the
//!   `hold` gate on writes) and the pool of spare tungstenite states.
//! - `frame`: `Frame`, an outgoing WebSocket frame encoded once and shared;
//!   the close codes.
//! - `queue`: `Queue`, a connection's outgoing frames: one inline, a burst
//!   spilled into a `VecDeque`.
//! - `conn`: `Conn`, one connection's transport state machine (phases,
//!   queue, deadlines), generic over its `Transport` so it is unit tested
//!   with a scripted stream and plain `Instant`s.

mod conn;
mod counted;
mod frame;
mod queue;
mod stream;

pub use conn::{queued_total, BodyStatus, Conn, HeadStatus, Incoming, Ms, Phase, Settings, Tick, NEVER};
pub use counted::FrameCounter;
pub use frame::{code, Frame};
pub use stream::{Stream, Transport};
