//! The front doors' protocols: wire formats translated to and from roostd's
//! core. `pusher` is the Pusher Channels WebSocket protocol, `pusher_api`
//! its signed HTTP API; both pure (no sockets, no clock).

pub mod pusher;
pub mod pusher_api;
