//! roostd: a WebSocket message and sync server with durable LMDB history.
//!
//! # Layout
//!
//! Read in this order; each module's own docs say why it is shaped so.
//!
//! - [`channel`]: channel names, patterns and seqs, the one rule everything shares. A leaf.
//! - [`config`]: every knob and limit, validated once.
//! - [`auth`]: JWT HS256 tokens, verified by hand; channel patterns.
//! - [`store`]: LMDB through heed: channels, messages, dedupe, retention.
//! - [`clock`]: the clock floor rule (spec §10): effective time from the system time. Pure.
//! - [`writer`]: the writer thread: group commit off the event loop; the shared `Clock`.
//! - [`hub`]: the protocol-neutral core: subscriptions, cursors, replay, fan-out;
//!   requests in, events out. Sans-I/O.
//! - [`proto`]: the front doors' languages: `roost` (the native `/ws` protocol). Pure.
//! - [`http`]: request heads, upgrade checks, plain responses; `http::api`, the HTTP
//!   API's routing, order of checks and JSON bodies. Pure.
//! - [`net`]: one connection's transport: the state machine `Conn`, over plain TCP or
//!   TLS, outgoing frames encoded once (the only tungstenite user).
//! - [`outbound`]: the blocking HTTP/1.1 client (http and https) the hook and webhooks share.
//! - [`hook`]: the publish hook: worker threads asking the main application.
//! - [`webhook`]: webhook delivery: the outbox to the main application, batched and retried.
//! - [`metrics`]: counters and histograms, Prometheus text.
//! - [`tls`]: certificates into a rustls config; `roostd cert`.
//! - [`cluster`]: cluster mode (`--cluster`): the NATS client protocol and JetStream's API
//!   (sans-I/O), and the thread that speaks them for the loop.
//! - [`notify`]: `READY=1` and `STOPPING=1` to systemd (`Type=notify`).
//! - [`server`]: the mio event loop that connects them.
//! - [`logger`]: a small stderr logger.
//!
//! # Invariants
//!
//! - A message is acked or delivered only after the LMDB transaction that
//!   holds it has committed.
//! - One thread owns every socket; the writer thread owns every write transaction.
//! - Every buffer and queue has a configured bound.
#![forbid(unsafe_op_in_unsafe_fn)]
// Two blocks may use it, each with `#[allow(unsafe_code)]` and a SAFETY
// note: the LMDB open (`store::open_env`) and `adjtimex` (`writer`).
#![deny(unsafe_code)]

pub mod auth;
pub mod channel;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod hook;
pub mod http;
pub mod hub;
pub mod logger;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod outbound;
pub mod proto;
pub mod server;
pub mod store;
pub mod tls;
pub mod webhook;
pub mod writer;
