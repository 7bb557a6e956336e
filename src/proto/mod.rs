//! The front doors' languages: each protocol translates its frames into the
//! hub's requests and the hub's events into its frames. The hub knows
//! channels, cursors, members and commits, never a frame. All pure: no
//! sockets, no clock.
//!
//! - [`roost`]: the native protocol of `/ws` (spec §4), also the JSON of the
//!   HTTP API's messages.
//! - [`pusher`]: the Pusher Channels protocol v7 (pusher.md §2); [`pusher_api`],
//!   its signed HTTP API (pusher.md §3).

pub mod pusher;
pub mod pusher_api;
pub mod roost;
