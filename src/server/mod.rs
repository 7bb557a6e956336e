//! The event loop: one thread, every socket, one `mio::Poll`.
//!
//! A turn of the loop: wait for readiness (or the next deadline), read the
//! clock once, then move bytes — accept, read heads and frames, hand
//! requests to the hub, queue replies — then collect commit results from the
//! writer thread (acks and fan-out), fire deadlines, stream replay into
//! connections that have room, hand this turn's publishes to the writer and
//! flush every connection that got output. Protocol decisions live in `hub`,
//! framing in `net`, storage in `store`/`writer`; this module only connects
//! them.
//!
//! Sockets are registered once for READABLE | WRITABLE (edge-triggered), so
//! the loop never re-registers: a WRITABLE edge just means "flush again".
//! Every read drains until WouldBlock — or until a per-turn budget, after
//! which the connection is revisited next turn so one flooding client
//! cannot starve the rest.
//!
//! This file is the loop: poll, accept, timers, flushing, shutdown. What a
//! connection's bytes mean is in one file per front door and concern, each
//! an `impl Server` block over the same connection table:
//! - `http_door`: HTTP requests (the API, health, metrics, the demo page),
//!   pipelined one answer at a time;
//! - `ws_door`: the native WebSocket protocol: upgrade checks, frames into
//!   the hub, the hub's actions;
//! - `hooks`: publishes waiting for the main application's verdict;
//! - `commits`: publishes to the writer, acks and fan-out, replay;
//! - `admission`: accept within the limits, and the refusal log;
//! - `lifecycle`: signals, reload, shutdown.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::protocol::WebSocketConfig;

use crate::auth::Verifier;
use crate::config::Config;
use crate::hook::{self, Hook, HookUrl, Verdict};
use crate::http::api::{self, Decision};
use crate::http::{self, Head, Refusal};
use crate::hub::{Action, ConnId, Hub, IdTable, Limits, Rules};
use crate::hub::{ErrCode, Event};
use crate::metrics::{Gauges, Metrics};
use crate::net::{self, code, BodyStatus, Conn, Frame, HeadStatus, Incoming, Ms, Phase, Settings, Stream, Tick, NEVER};
use crate::proto::roost;
use crate::store::{Append, Outcome, Retention, Store, StoreError, Write};
use crate::webhook::{self, Doorbell, Signer, Webhook};
use crate::writer::{self, Clock, Done, Policy, SyncSource, Writer};

mod admission;
mod changes;
mod cluster;
mod commits;
mod flush;
mod hooks;
mod http_door;
mod lifecycle;
mod pusher_door;
mod ws_door;

use commits::Ticket;
use hooks::{HookState, HookTicket};
use http_door::PendingBody;
use pusher_door::{ApiWait, PusherConn};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
const RELOAD: Token = Token(3);
/// The first connection's serial: every id is above the tokens above.
const FIRST_CONN: usize = 1;

/// Pause before accepting again after running out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long shutdown waits for peers to take their Close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Sockets accepted beyond `max_connections` only to answer 503.
const REFUSAL_HEADROOM: usize = 64;
/// The same for one address beyond `max_connections_per_ip`; past both,
/// its new sockets are closed at accept.
const PER_IP_REFUSAL_HEADROOM: usize = 4;

/// Connections the kernel may queue before we accept them. A reconnect
/// storm — every client of a Pi coming back at once after a Wi-Fi drop —
/// must wait in the queue, not be dropped: a dropped SYN costs its client a
/// one-second retransmit. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// Refused connections logged per second; the rest are counted.
const REFUSAL_LOGS_PER_SEC: u32 = 10;

/// The refusal log's budget for the current second.
struct RefusalLog {
    since: Instant,
    logged: u32,
    dropped: u64,
}

struct Slot {
    conn: Conn,
    /// The deadline this connection has in the timer heap (`NEVER`: none).
    timer: Ms,
    /// Set once the connection is a WebSocket known to the hub.
    joined: bool,
    /// In `Server::dirty` and not flushed since (`mark_dirty`): the list
    /// holds each connection once per flush, without a sort to dedupe it.
    dirty: bool,
    /// Boxed, like `hook`: rare, and every idle connection would carry it.
    body: Option<Box<PendingBody>>,
    /// Set on a WebSocket when a publish hook is configured.
    hook: Option<Box<HookState>>,
    /// A Pusher WebSocket (`/app/{key}`).
    speaks_pusher: bool,
    /// Its sign-in and client-event rate, made at its first sign-in or
    /// client event: an idle Pusher socket holds none.
    pusher: Option<Box<PusherConn>>,
}

impl Slot {
    /// A connection just accepted: no timer yet, not yet anyone's.
    fn new(conn: Conn) -> Slot {
        Slot {
            conn,
            timer: NEVER,
            joined: false,
            dirty: false,
            body: None,
            hook: None,
            speaks_pusher: false,
            pusher: None,
        }
    }

    /// `Server::mark_dirty` for a slot in hand (`id` is its own).
    fn mark_dirty(&mut self, id: ConnId, dirty: &mut Vec<ConnId>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(id);
        }
    }

    /// `Server::schedule` for a slot in hand (`id` is its own).
    fn schedule(&mut self, id: ConnId, timers: &mut BinaryHeap<Reverse<(Ms, ConnId)>>) {
        let next = self.conn.next_ms();
        if next < self.timer {
            self.timer = next;
            timers.push(Reverse((next, id)));
        }
    }
}

/// Why the server stopped.
#[derive(Debug)]
pub enum Stop {
    /// SIGTERM/SIGINT: everything committed, every WebSocket closed with 1001.
    Signal,
}

pub struct Server {
    /// The time this loop turn started (read once per turn).
    now: Instant,
    poll: Poll,
    listener: Option<TcpListener>,
    local: SocketAddr,
    signals: UnixStream,
    cfg: Config,
    max_connections: usize,
    conn_settings: Arc<Settings>,
    verifier: Verifier,
    store: Store,
    hub: Hub,
    writer: Writer<Ticket>,
    /// Stored inline, by place (`IdTable`).
    slots: IdTable<Slot>,
    /// The serial of the next connection's id.
    next_id: ConnId,
    per_ip: HashMap<IpAddr, usize>,
    /// Deadlines as `Ms` on the connections' clock (`Settings::epoch`).
    timers: BinaryHeap<Reverse<(Ms, ConnId)>>,
    pending: Vec<(Ticket, Write)>,
    inflight_bytes: usize,
    /// Connections with output queued this turn.
    dirty: Vec<ConnId>,
    /// Connections whose read budget ran out: read again next turn.
    again: Vec<ConnId>,
    accept_paused_until: Option<Instant>,
    stopping: Option<Instant>,
    fatal: Option<StoreError>,
    metrics: Metrics,
    refusal_log: RefusalLog,
    clock: Clock,
    hook: Option<Hook<HookTicket>>,
    /// The webhook delivery thread (`--webhook`).
    webhook: Option<Webhook>,
    tls: Option<Arc<rustls::ServerConfig>>,
    reload: UnixStream,
    /// The last commit failed for lack of space (map or disk full).
    store_full: bool,
    /// The Pusher app (pusher.md §1), when one is configured.
    pusher: Option<Arc<crate::proto::pusher::App>>,
    /// What Pusher sockets share: `conn_settings` with `pusher:ping`.
    pusher_settings: Arc<Settings>,
    /// The first part of this process's socket ids.
    pusher_seed: u64,
    /// Pusher API requests waiting for their commits, by connection.
    pusher_waits: HashMap<ConnId, ApiWait>,
    /// Cluster mode (`--cluster`): the JetStream side of publishing and applying.
    cluster: Option<cluster::ClusterSide>,
    /// Held here so the waker's descriptor lives as long as the loop: if
    /// the writer thread exits (on a fatal error) and dropped the last
    /// handle, its final wake-up would vanish with the descriptor.
    _waker: Arc<Waker>,
}

fn system_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

impl Server {
    /// Binds the listener and starts the writer thread. `max_connections`
    /// is the resolved total limit (main derives the default).
    /// `tls`: serve https:// and wss:// with this configuration (SIGHUP
    /// reloads it from `cfg.tls_cert`/`cfg.tls_key`). `clock_sync`: who
    /// says whether the clock is synchronized (spec §10).
    pub fn bind(
        cfg: Config,
        store: Store,
        verifier: Verifier,
        max_connections: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
        clock_sync: SyncSource,
        pusher: Option<crate::proto::pusher::App>,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = listen(cfg.listen)?;
        let local = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let signals = signal_pipe(&poll, SIGNALS, &[signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
        let reload = signal_pipe(&poll, RELOAD, &[signal_hook::consts::SIGHUP])?;
        let clock = start_clock(&store, clock_sync);
        let mut policy = writer_policy(&cfg, clock.clone());
        // A commit that stored webhook events wakes the delivery thread.
        let bell = Doorbell::new();
        if cfg.webhook.is_some() {
            let ring = bell.clone();
            policy.on_events = Some(Arc::new(move || ring.ring()));
        }
        let wake_with = waker.clone();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || _ = wake_with.wake());
        let hook = start_hook(&cfg, wake.clone())?;
        let wake_cluster = wake.clone();
        let cluster = cluster::ClusterSide::start(&cfg, &store, Box::new(move || wake_cluster()));
        let wake_writer = wake.clone();
        let wake = Box::new(move || wake_writer());
        let writer = Writer::start(store.clone(), policy, wake);
        let signer = || Signer {
            key: verifier.default_secret().to_vec(),
            pusher: pusher.as_ref().map(|app| (app.key.clone(), app.secret.clone())),
        };
        let webhook = cfg.webhook.as_deref();
        let webhook =
            webhook.map(|url| start_webhook(url, &cfg, signer(), &store, &writer, &clock, bell)).transpose()?;
        let mut server = Server {
            now: Instant::now(),
            poll,
            listener: Some(listener),
            local,
            signals,
            max_connections,
            conn_settings: Arc::new(conn_settings(&cfg)),
            pusher_settings: Arc::new(pusher_door::settings(conn_settings(&cfg))),
            verifier,
            hub: hub_for(&cfg, store.epoch()),
            writer,
            store,
            cfg,
            slots: IdTable::handing_out(),
            next_id: FIRST_CONN,
            per_ip: HashMap::new(),
            timers: BinaryHeap::new(),
            pending: Vec::new(),
            inflight_bytes: 0,
            dirty: Vec::new(),
            again: Vec::new(),
            accept_paused_until: None,
            stopping: None,
            fatal: None,
            metrics: Metrics::default(),
            refusal_log: RefusalLog { since: Instant::now(), logged: 0, dropped: 0 },
            clock,
            hook,
            webhook,
            tls,
            reload,
            store_full: false,
            pusher: pusher.map(Arc::new),
            pusher_seed: pusher_door::socket_seed(),
            pusher_waits: HashMap::new(),
            cluster,
            _waker: waker,
        };
        server.restore_presence(Instant::now());
        Ok(server)
    }

    /// Wall-clock seconds for token checks: the effective time (spec §10),
    /// so a Pi that boots with a stale clock does not accept tokens that
    /// expired long ago.
    fn now_unix(&self) -> u64 {
        self.clock.effective_ms() / 1000
    }

    /// The address actually bound (the port, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until a signal (Ok) or a fatal store error (Err).
    pub fn run(&mut self) -> Result<Stop, StoreError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if !interrupted(&e) {
                    return Err(StoreError::Fatal(format!("poll failed: {e}")));
                }
            }
            let now = Instant::now();
            self.now = now;
            let again = std::mem::take(&mut self.again);
            for id in again {
                self.on_readable(id, now);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    SIGNALS => self.on_signal(now),
                    RELOAD => self.on_reload(),
                    Token(id) => {
                        // A read is followed by a flush of the connection
                        // (`on_readable`), which takes the writable edge too.
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(id, now);
                        } else if event.is_writable() {
                            self.on_writable(id);
                        }
                    }
                }
            }
            self.collect_commits(now);
            self.collect_cluster(now);
            self.collect_hook_verdicts();
            self.fire_timers(now);
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
                self.accept(now);
            }
            self.pump_replays();
            self.hub.tick(now);
            self.queue_changes();
            if !self.pending.is_empty() {
                self.writer.submit(std::mem::take(&mut self.pending));
            }
            self.flush_dirty();
            if let Some(stop) = self.advance_shutdown(now) {
                return stop;
            }
        }
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.again.is_empty() || self.replay_has_room() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut next = self.timers.peek().map(|Reverse((at, _))| self.conn_settings.instant(*at));
        let soon = [self.accept_paused_until, self.stopping.map(|_| now + Duration::from_millis(50))];
        for t in soon.into_iter().chain([self.hub.next_deadline()]).flatten() {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next.map(|at| at.saturating_duration_since(now))
    }

    fn on_readable(&mut self, id: ConnId, now: Instant) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        slot.conn.readable();
        match slot.conn.phase() {
            Phase::Head | Phase::Body => self.read_requests(id, now),
            Phase::Open | Phase::Closing => self.read_frames(id, now),
            Phase::Draining => slot.conn.drain(),
            Phase::Waiting | Phase::Responding | Phase::Closed => {}
        }
        self.flush_conn(id);
    }

    /// Tells `id` its request was refused, in its front door's dialect.
    fn refuse(&mut self, id: ConnId, code: ErrCode, msg: &str, req_id: Option<&str>) {
        if let Some(text) = self.hub.tell(id, Event::Refused { code, msg }, req_id) {
            self.send(id, text.into());
        }
    }

    /// Queues text for a connection; a connection past its send-buffer
    /// limit is a slow consumer: closed with 1013, to resume with `since`.
    fn send(&mut self, id: ConnId, frame: Frame) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        if !slot.conn.send(frame, self.cfg.max_send_buffer_bytes) {
            log::info!("closing slow consumer {} ({} bytes queued)", slot.conn.peer, slot.conn.queued_bytes());
            self.metrics.close("slow_consumer");
            slot.conn.discard_queue();
            slot.conn.close(code::SLOW, "slow consumer: resume with since", Instant::now());
        }
        slot.mark_dirty(id, &mut self.dirty);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > self.conn_settings.ms(now) {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(&id) else { continue };
            if slot.timer != at {
                continue; // superseded by an earlier deadline
            }
            slot.timer = NEVER;
            match slot.conn.tick(now) {
                Tick::Nothing => {}
                Tick::Drop => log::debug!("dropping {} at a deadline", slot.conn.peer),
                Tick::NoPong => self.pusher_no_pong(id, now),
                Tick::TokenExpired => {
                    self.metrics.close("token_expired");
                    slot.conn.close(code::TOKEN_EXPIRED, "token expired: reconnect with a fresh token", now)
                }
            }
            self.mark_dirty(id);
            self.schedule(id);
        }
    }

    /// Makes sure the heap holds this connection's next deadline. Later
    /// deadlines are not pushed: the earlier entry fires, finds nothing to
    /// do, and reschedules — so each connection has about one heap entry.
    fn schedule(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        slot.schedule(id, &mut self.timers);
    }

    fn remove(&mut self, id: ConnId) {
        // No deregister: closing the socket (dropping the slot) takes it out
        // of epoll, since nothing else shares its file description, and that
        // saves a syscall per connection. Ids are never reused, so an event
        // for it still in this turn's batch finds no slot and is ignored.
        let Some(slot) = self.slots.remove(&id) else { return };
        self.pusher_waits.remove(&id);
        if slot.joined {
            self.hub.leave(id, self.now);
        }
        if let Some(n) = self.per_ip.get_mut(&slot.conn.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&slot.conn.peer);
            }
        }
    }
}

/// The publish hook's thread (`--publish-hook`), if one is set.
fn start_hook(cfg: &Config, wake: Arc<dyn Fn() + Send + Sync>) -> io::Result<Option<Hook<HookTicket>>> {
    let Some(url) = &cfg.publish_hook else { return Ok(None) };
    let url = HookUrl::parse(url).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(Some(Hook::start(url, cfg.publish_hook_timeout, wake)))
}

/// The hub with the configuration's limits and channel rules.
fn hub_for(cfg: &Config, epoch: &str) -> Hub {
    let limits = Limits {
        max_subscriptions: cfg.max_subscriptions,
        publish_rate: if cfg.echo { 0 } else { cfg.publish_rate },
        max_reply_bytes: cfg.max_send_buffer_bytes / 2,
    };
    let rules = Rules {
        presence: cfg.presence.clone(),
        compact: cfg.compact.clone(),
        presence_grace: cfg.presence_grace,
        presence_restart_grace: cfg.presence_restart_grace,
        max_presence_members: cfg.max_presence_members,
        // Occupancy is stored (and reported) only for webhooks (spec §9).
        occupancy: cfg.webhook.is_some(),
    };
    Hub::with_rules(epoch, limits, rules)
}

/// The webhook delivery thread for `url`, reading the store's outbox and
/// signing with the default key; `bell` is what the writer rings.
fn start_webhook(
    url: &str,
    cfg: &Config,
    signer: Signer,
    store: &Store,
    writer: &Writer<Ticket>,
    clock: &Clock,
    bell: Doorbell,
) -> io::Result<Webhook> {
    let outbox = changes::StoreOutbox { store: store.clone(), handle: writer.outbox_handle() };
    let settings = webhook::Settings {
        retry_for: cfg.webhook_retry_for,
        backoff_min: cfg.webhook_backoff_min,
        max_pending: cfg.webhook_max_pending,
        timeout: webhook::REQUEST_TIMEOUT,
    };
    let wall = clock.clone();
    let wall_ms = Arc::new(move || wall.effective_ms());
    Webhook::start(url, signer, outbox, settings, wall_ms, bell)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// The effective clock (spec §10), from the floor the store saved; says
/// so when the kernel cannot be asked, or the system clock is behind.
fn start_clock(store: &Store, clock_sync: SyncSource) -> Clock {
    let clock = Clock::new(store.clock_floor().unwrap_or(0), clock_sync);
    if clock_sync == SyncSource::Kernel {
        if let Err(e) = writer::kernel_synced() {
            log::warn!(
                "cannot ask the kernel whether the clock is synchronized (adjtimex: {e}); the clock floor will not move. \
                 Allow the adjtimex system call (see debian/roostd.service)"
            );
        }
    }
    let start = clock.now();
    if system_unix() < start.floor_ms / 1000 {
        log::warn!(
            "the system clock is {} s behind the last good time; using that for token checks and ts until it is synchronized (is NTP running?)",
            start.floor_ms / 1000 - system_unix()
        );
    }
    clock
}

/// A socket pair on which `signal-hook` writes a byte for each of `sigs`:
/// signals are one more event for the loop, registered as `token`, instead
/// of a flag checked between polls.
fn signal_pipe(poll: &Poll, token: Token, sigs: &[i32]) -> io::Result<UnixStream> {
    let (read_end, notify) = std::os::unix::net::UnixStream::pair()?;
    read_end.set_nonblocking(true)?;
    let mut pipe = UnixStream::from_std(read_end);
    poll.registry().register(&mut pipe, token, Interest::READABLE)?;
    for sig in sigs {
        signal_hook::low_level::pipe::register(*sig, notify.try_clone()?)?;
    }
    Ok(pipe)
}

/// What the writer thread needs of the configuration.
fn writer_policy(cfg: &Config, clock: Clock) -> Policy {
    let rules = cfg.clone();
    let retention = Arc::new(move |ch: &str| {
        let (messages, age) = rules.retention_for(ch);
        Retention { messages, age_ms: age.as_millis().min(u64::MAX as u128) as u64 }
    });
    Policy {
        dedupe_window: cfg.dedupe_window,
        retention,
        // Compaction decides what retention may remove: a change rebuilds
        // the index (a store without compaction keeps its rules as before).
        retention_rules: match cfg.compact.is_empty() {
            true => cfg.retention_rules(),
            false => format!("{} compact={:?}", cfg.retention_rules(), cfg.compact),
        },
        max_channels: cfg.max_channels,
        clock,
        compact: {
            let cfg = cfg.clone();
            Arc::new(move |ch: &str| cfg.is_compacted(ch))
        },
        max_keys: cfg.max_keys,
        on_events: None,
    }
}

/// The moment connections count their deadlines from (`Settings::epoch`).
static LOOP_EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// What every connection shares: tungstenite's limits and the timers.
fn conn_settings(cfg: &Config) -> Settings {
    let max_message = cfg.max_message_bytes;
    let ws = WebSocketConfig::default()
        // Allocated while a connection has bytes in flight (an idle one
        // has no tungstenite state at all); a big frame grows it to fit.
        .read_buffer_size(1024)
        // tungstenite writes only its own control frames (pongs, Close):
        // messages go out through the connection's queue, encoded once.
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    Settings {
        ws,
        handshake_timeout: cfg.handshake_timeout,
        ping_every: cfg.ping_interval,
        pong_within: cfg.pong_timeout,
        max_fragments: (!cfg.echo).then_some(cfg.max_fragments),
        ping_text: None,
        // One epoch for every connection of the process, whichever settings
        // it moves between (a Pusher socket's are made apart).
        epoch: *LOOP_EPOCH.get_or_init(Instant::now),
        // Above a replay's room (`commits::replay_room`), so a subscriber
        // being replayed to is still read: its pongs and its `unsub`.
        read_pause_bytes: cfg.max_send_buffer_bytes / 2,
        output_budget: cfg.max_output_bytes,
        input_budget: cfg.max_input_bytes,
    }
}

/// A listening socket like mio's `TcpListener::bind`, with our backlog
/// (mio's is fixed at 1024).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    sock.set_nonblocking(true)?;
    Ok(TcpListener::from_std(sock.into()))
}

/// Resolves the default connection limit from the open-file limit: each
/// connection is one descriptor; keep headroom for LMDB, the listener, the
/// poller, logs and the sockets accepted only to answer 503.
pub fn default_max_connections(nofile: u64) -> usize {
    let headroom = 64 + REFUSAL_HEADROOM as u64;
    nofile.saturating_sub(headroom).clamp(16, 1 << 20) as usize
}

#[cfg(test)]
mod tests {
    /// Every connection keeps a `Slot` (B1 in docs/benchmarks.md): a field
    /// added to it, or to its `Conn`, is paid ten thousand times over.
    /// 64-bit targets only: the sizes differ on 32-bit ones.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_connection_record_stays_within_its_budget_of_176_bytes() {
        assert!(std::mem::size_of::<super::Slot>() <= 176, "Slot is {} bytes", std::mem::size_of::<super::Slot>());
    }
}
