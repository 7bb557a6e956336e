//! The front doors' languages: each protocol translates its frames into the
//! hub's requests and the hub's events into its frames. The hub knows
//! channels, cursors, members and commits, never a frame.
//!
//! - [`roost`]: the native protocol of `/ws` (spec §4), also the JSON of the
//!   HTTP API's messages.

pub mod roost;
