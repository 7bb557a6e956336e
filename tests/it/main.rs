//! The integration suite: the real `roostd` binary, driven over real sockets.
//!
//! Every test starts its own server (a child process on 127.0.0.1 with a
//! fresh data folder), so tests run in parallel and independently. Set
//! `ROOSTD_TEST_SCALE=small` to scale the big tests down (under emulation).

#[path = "../support/mod.rs"]
mod support;

mod api;
mod backup;
mod bad_input;
mod channels;
mod cli;
mod clock;
mod cluster;
mod handshake;
mod hook;
mod http;
mod lifecycle;
mod limits;
mod presence;
mod pusher;
mod state;
mod store_limits;
mod sync;
mod tidy;
mod tls;
mod webhooks;
