//! Cluster mode (cluster.md): every node a deterministic replica of one
//! NATS JetStream stream.
//!
//! `nats` is the client protocol and `js` the JetStream API, both sans-I/O.
//! [`Cluster`] is the thread that speaks them over a blocking `TcpStream`,
//! so the event loop never waits on the network: the loop hands it
//! publishes through a bounded queue (`try_publish`, refused at once when
//! full or disconnected) and collects [`Event`]s after a wake-up, the same
//! way it collects the writer's results. A second, small thread only reads
//! the socket and parses; the cluster thread owns every write to it, the
//! request/reply bookkeeping, the ordered consumer and the reconnects.

pub mod js;
pub mod nats;

use std::collections::HashMap;
use std::io::{Read, Write as _};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::config::NatsUrl;
use crate::store::Append;
use nats::{Credentials, ServerOp};

/// Publishes waiting for the cluster thread: past it `try_publish` refuses.
pub const MAX_QUEUED: usize = 1024;
/// Events waiting for the loop; the thread then waits, and TCP and
/// JetStream's flow control hold the rest back.
const MAX_EVENTS: usize = 4096;
/// Largest payload accepted from the server (a message is at most
/// `--max-message-bytes` plus its envelope; NATS's own default is 1 MiB).
const MAX_PAYLOAD: usize = 8 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Shorter: a consumer that does not come is asked for again at once.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How often this node says it is alive (cluster.md: presence).
const NODE_HEARTBEAT: Duration = Duration::from_secs(1);
/// The subscription of every node's heartbeat; 1 is the inbox's, and the
/// consumers' deliver subjects count up from 3.
const HEARTBEAT_SID: u64 = 2;
const PING_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    pub urls: Vec<NatsUrl>,
    pub name: String,
    pub replicas: u8,
    pub dedupe_window: Duration,
    pub credentials: Option<Credentials>,
    /// This node's name in NATS (`CONNECT name`, its heartbeats). Kept
    /// across restarts, so it is not the inbox prefix alone: see `Thread::inbox`.
    pub node: String,
    /// The epoch of the stream this store replicates, when it is a
    /// replica already: another stream (deleted and made again) is refused.
    pub epoch: Option<String>,
}

impl Settings {
    /// The settings of `--cluster`; `epoch` as in [`Settings::epoch`].
    pub fn new(cfg: &crate::config::Config, credentials: Option<Credentials>, epoch: Option<String>) -> Settings {
        Settings {
            urls: cfg.cluster_urls.clone(),
            name: cfg.cluster_name.clone().unwrap_or_default(),
            replicas: cfg.cluster_replicas,
            dedupe_window: cfg.dedupe_window,
            credentials,
            node: node_name(),
            epoch,
        }
    }
}

/// `--cluster-credentials`: the file's `user:password` or token.
pub fn credentials(cfg: &crate::config::Config) -> Result<Option<Credentials>, String> {
    let Some(path) = &cfg.cluster_credentials else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --cluster-credentials {}: {e}", path.display()))?;
    match Credentials::parse(&text) {
        Some(c) => Ok(Some(c)),
        None => Err(format!("--cluster-credentials {}: write one line, user:password or a token", path.display())),
    }
}

/// A name for this node's inboxes, unique among the nodes: random.
pub fn node_name() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The prefix of this process's reply and deliver subjects: the node's
/// name and a random part of this start's own. The node's name alone is the
/// same after a restart, and a consumer the killed process made lives on
/// in JetStream (`inactive_threshold`) ahead of what this node committed:
/// on the same deliver subject it would resume sending from its own place,
/// and the restarted node would take that for its new consumer's first
/// messages and skip the ones between. Late replies to the killed process's
/// requests would likewise answer this one's.
pub fn inbox(node: &str) -> String {
    format!("_INBOX.roostd.{node}.{}", node_name())
}

/// What the cluster thread tells the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connected, the stream exists: its epoch and last sequence now.
    Up { epoch: String, last_seq: u64 },
    /// The connection is gone; publishes are refused until `Up`.
    Down(String),
    /// JetStream's answer to `try_publish(token, …)`: the stream sequence,
    /// or why the message is not in the log.
    Published { token: u64, result: Result<js::PubAck, String> },
    /// The next message of the stream, in stream order, each once.
    Message { stream_seq: u64, ts_ms: u64, append: Append },
    /// The next presence record of the stream, in the same order.
    Presence { stream_seq: u64, record: js::Presence },
    /// A node's heartbeat (core NATS, each node about once a second,
    /// this one's included).
    Heard(String),
    /// A stream message that is not roostd's (published by something
    /// else on our subjects): not applied, logged; it still counts as read.
    Skipped(u64),
    /// The stream no longer holds what this node has not applied (it
    /// starts at `first_seq`): the node cannot catch up from it; seed it
    /// from a peer's backup. The thread keeps trying (the answer may change
    /// only if the stream is made again, which the epoch check refuses).
    Trimmed { first_seq: u64 },
    /// Answers `rewind`: every `Message` before this one is stale, the
    /// ones after start right after the sequence given.
    Rewound,
}

/// What the loop asks the cluster thread to publish to the stream.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Message(Append),
    /// A presence record, with its `Nats-Msg-Id` when it has one.
    Presence(js::Presence, Option<String>),
}

impl Outgoing {
    /// Subject, body and `Nats-Msg-Id`.
    fn encode(self, names: &js::Names) -> (String, Vec<u8>, Option<String>) {
        match self {
            Outgoing::Message(a) => {
                let (subject, body) = js::encode(names, &a);
                (subject, body, a.id.as_ref().map(|id| js::msg_id(&a.from, id)))
            }
            Outgoing::Presence(p, id) => {
                let (subject, body) = js::encode_presence(names, &p);
                (subject, body, id)
            }
        }
    }
}

enum Input {
    Publish(u64, Outgoing),
    Rewind(u64),
    Op(ServerOp),
    Closed(String),
    Stop,
}

/// The handle the loop holds.
pub struct Cluster {
    to: SyncSender<Input>,
    events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

/// Why `try_publish` refused: answer the client `unavailable`.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

impl Cluster {
    /// Starts the thread; it consumes the stream from `applied + 1`.
    /// `wake` is called after each event is queued.
    pub fn start(settings: Settings, applied: u64, wake: Box<dyn Fn() + Send>) -> Cluster {
        let (to, inputs) = mpsc::sync_channel(MAX_QUEUED);
        let (events_tx, events) = mpsc::sync_channel(MAX_EVENTS);
        let loop_to = to.clone();
        let inbox = inbox(&settings.node);
        let thread = thread::Builder::new()
            .name("roostd-cluster".into())
            .spawn(move || {
                let mut t = Thread {
                    s: settings,
                    inputs,
                    to_self: loop_to,
                    events: events_tx,
                    wake,
                    inbox,
                    delivered: applied,
                    pending: HashMap::new(),
                    stopping: false,
                    consumers: 0,
                    requests: 0,
                };
                t.run();
            })
            .expect("spawn the cluster thread");
        Cluster { to, events, thread: Some(thread) }
    }

    /// Queues a publish; never blocks. The answer comes as `Event::Published`.
    pub fn try_publish(&self, token: u64, append: Append) -> Result<(), Busy> {
        self.try_send(token, Outgoing::Message(append))
    }

    /// Queues a presence record (`id`: its `Nats-Msg-Id`); the answer
    /// comes as `Event::Published`, and the record itself as
    /// `Event::Presence` once the stream delivers it.
    pub fn try_presence(&self, token: u64, record: js::Presence, id: Option<String>) -> Result<(), Busy> {
        self.try_send(token, Outgoing::Presence(record, id))
    }

    fn try_send(&self, token: u64, out: Outgoing) -> Result<(), Busy> {
        match self.to.try_send(Input::Publish(token, out)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    /// Consume again from `applied + 1` (a commit of applied messages
    /// failed); answered with `Event::Rewound`.
    pub fn rewind(&self, applied: u64) -> Result<(), Busy> {
        self.to.try_send(Input::Rewind(applied)).map_err(|_| Busy)
    }

    /// Every event queued so far.
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.events.try_iter()
    }

    /// Waits up to `timeout` for the next event (tests and shutdown).
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The thread may be blocked handing us an event, or its queue may
        // be full: drain events while asking it to stop.
        let mut asked = false;
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                asked = asked || !matches!(self.to.try_send(Input::Stop), Err(TrySendError::Full(_)));
                while self.events.try_recv().is_ok() {}
                thread::sleep(Duration::from_millis(5));
            }
            let _ = t.join();
        }
    }
}

/// What an outstanding request is for.
enum Waiting {
    Publish(u64),
    StreamInfo,
    StreamCreate,
    Consumer,
}

struct Conn {
    sock: TcpStream,
    reader: JoinHandle<()>,
    /// The consumer's next expected consumer sequence (0: none yet).
    next_cseq: u64,
    /// The subscription of the current consumer's deliver subject: each
    /// consumer gets its own, so a replaced consumer's late messages are
    /// told apart and dropped.
    consumer_sid: u64,
    /// The current consumer's name, deleted when it is replaced.
    consumer: Option<String>,
    last_delivery: Instant,
    pings_out: u32,
    next_ping: Instant,
    /// When this node next says it is alive.
    next_beat: Instant,
    ready: bool,
}

struct Thread {
    s: Settings,
    inputs: Receiver<Input>,
    to_self: SyncSender<Input>,
    events: SyncSender<Event>,
    wake: Box<dyn Fn() + Send>,
    /// This process's reply and deliver subjects' prefix ([`inbox`]).
    inbox: String,
    /// The last stream sequence handed to the loop: a new consumer starts after it.
    delivered: u64,
    pending: HashMap<u64, (Waiting, Instant)>,
    /// `Stop` arrived while a lost connection was wound down.
    stopping: bool,
    /// Consumers made so far: each gets its own deliver subject.
    consumers: u64,
    /// Requests made so far: each gets its own reply subject, also across
    /// connections, so a late answer to a lost connection's request is
    /// never taken for the answer to another.
    requests: u64,
}

enum Stop {
    Stopped,
    Lost(String),
}

impl Thread {
    fn run(&mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut url = 0;
        loop {
            let target = self.s.urls[url % self.s.urls.len()].clone();
            url += 1;
            let started = Instant::now();
            let why = match self.session(&target) {
                Ok(Stop::Stopped) => return,
                Ok(Stop::Lost(why)) => why,
                Err(e) => format!("{target}: {e}"),
            };
            self.fail_pending(&why);
            self.emit(Event::Down(why.clone()));
            log::warn!("cluster: {why}; trying again in {} ms", backoff.as_millis());
            if started.elapsed() > BACKOFF_MAX * 2 {
                backoff = BACKOFF_MIN; // it worked for a while: start over
            }
            // Wait out the backoff, refusing publishes meanwhile.
            let until = Instant::now() + backoff;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match self.inputs.recv_timeout(left) {
                    Ok(Input::Publish(token, _)) => self.refuse(token, "the cluster is unreachable"),
                    Ok(Input::Rewind(applied)) => {
                        self.delivered = applied;
                        self.emit(Event::Rewound);
                    }
                    Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn emit(&self, e: Event) {
        if self.events.send(e).is_ok() {
            (self.wake)();
        }
    }

    fn refuse(&self, token: u64, why: &str) {
        self.emit(Event::Published { token, result: Err(why.to_string()) });
    }

    fn fail_pending(&mut self, why: &str) {
        let tokens: Vec<u64> = self
            .pending
            .drain()
            .filter_map(|(_, (w, _))| if let Waiting::Publish(t) = w { Some(t) } else { None })
            .collect();
        for t in tokens {
            self.refuse(t, why);
        }
    }

    /// One connection, from connect to loss (or stop).
    fn session(&mut self, url: &NatsUrl) -> std::io::Result<Stop> {
        let addr = (url.host.as_str(), url.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("the name has no address"))?;
        let sock = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
        sock.set_nodelay(true)?;
        sock.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let mut read_half = sock.try_clone()?;
        let feed = self.to_self.clone();
        // The reader only parses and forwards; it ends when the socket closes.
        let reader = thread::Builder::new().name("roostd-nats-read".into()).spawn(move || {
            let mut parser = nats::Parser::new(MAX_PAYLOAD);
            let mut buf = vec![0u8; 64 * 1024];
            let why = loop {
                match read_half.read(&mut buf) {
                    Ok(0) => break "the server closed the connection".to_string(),
                    Ok(n) => parser.push(&buf[..n]),
                    Err(e) => break format!("read: {e}"),
                }
                loop {
                    match parser.next_op() {
                        Ok(Some(op)) => {
                            if feed.send(Input::Op(op)).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = feed.send(Input::Closed(e.to_string()));
                            return;
                        }
                    }
                }
            };
            let _ = feed.send(Input::Closed(why));
        })?;
        let now = Instant::now();
        let mut c = Conn {
            sock,
            reader,
            next_cseq: 0,
            consumer_sid: 0,
            consumer: None,
            last_delivery: now,
            pings_out: 0,
            next_ping: now + PING_EVERY,
            next_beat: now,
            ready: false,
        };
        let stop = self.serve(&mut c);
        let stop = if self.stopping { Ok(Stop::Stopped) } else { stop };
        let _ = c.sock.shutdown(Shutdown::Both);
        // The reader sends `Closed` and ends, perhaps blocked on a full
        // queue: drain it meanwhile, refusing the publishes in it.
        while !c.reader.is_finished() {
            while let Ok(i) = self.inputs.try_recv() {
                match i {
                    Input::Publish(token, _) => self.refuse(token, "the cluster connection was lost"),
                    Input::Stop => self.stopping = true,
                    Input::Rewind(applied) => {
                        self.delivered = applied;
                        self.emit(Event::Rewound);
                    }
                    _ => {}
                }
            }
            thread::sleep(Duration::from_millis(1));
        }
        let _ = c.reader.join();
        stop
    }

    fn send(&self, c: &mut Conn, bytes: &[u8]) -> std::io::Result<()> {
        c.sock.write_all(bytes)
    }

    fn request(
        &mut self,
        c: &mut Conn,
        subject: &str,
        body: &[u8],
        headers: &[(&str, &str)],
        w: Waiting,
    ) -> std::io::Result<()> {
        self.requests += 1;
        let n = self.requests;
        let reply = format!("{}.r.{n}", self.inbox);
        let mut out = Vec::new();
        nats::publish(&mut out, subject, Some(&reply), headers, body);
        let timeout = if matches!(w, Waiting::Consumer) { CONSUMER_TIMEOUT } else { REQUEST_TIMEOUT };
        self.pending.insert(n, (w, Instant::now() + timeout));
        self.send(c, &out)
    }

    fn new_consumer(&mut self, c: &mut Conn) -> std::io::Result<()> {
        let names = js::Names::new(&self.s.name);
        let mut out = Vec::new();
        if c.consumer_sid != 0 {
            nats::unsubscribe(&mut out, c.consumer_sid);
        }
        if let Some(old) = c.consumer.take() {
            // Fire and forget: an ephemeral consumer also goes by itself
            // once nobody listens (`inactive_threshold`).
            nats::publish(&mut out, &names.consumer_delete(&old), None, &[], b"");
        }
        c.consumer_sid = c.consumer_sid.max(HEARTBEAT_SID) + 1;
        // Unique across connections: a consumer made on an earlier one may
        // live on in the cluster and must not reach this subscription.
        self.consumers += 1;
        let deliver = format!("{}.d.{}", self.inbox, self.consumers);
        nats::subscribe(&mut out, &deliver, c.consumer_sid);
        self.send(c, &out)?;
        let body = names.consumer_config(&deliver, self.delivered + 1, HEARTBEAT.as_millis() as u64);
        // A new consumer's first message is its sequence 1: a lost first
        // message, or another consumer's on this subject, shows as a gap.
        c.next_cseq = 1;
        c.last_delivery = Instant::now();
        self.request(c, &names.consumer_create(), body.as_bytes(), &[], Waiting::Consumer)
    }

    fn serve(&mut self, c: &mut Conn) -> std::io::Result<Stop> {
        let names = js::Names::new(&self.s.name);
        let mut out = Vec::new();
        nats::connect(&mut out, &format!("roostd {}", self.s.node), self.s.credentials.as_ref());
        nats::subscribe(&mut out, &format!("{}.r.*", self.inbox), 1);
        nats::subscribe(&mut out, &format!("{}*", names.heartbeats), HEARTBEAT_SID);
        nats::ping(&mut out);
        self.send(c, &out)?;
        c.pings_out = 1;
        self.request(c, &names.stream_info(), b"", &[], Waiting::StreamInfo)?;
        loop {
            let input = match self.inputs.recv_timeout(Duration::from_millis(250)) {
                Ok(i) => Some(i),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(Stop::Stopped),
            };
            match input {
                Some(Input::Stop) => return Ok(Stop::Stopped),
                Some(Input::Closed(why)) => return Ok(Stop::Lost(why)),
                Some(Input::Publish(token, out)) if c.ready => {
                    let (subject, body, id) = out.encode(&names);
                    let headers: Vec<(&str, &str)> = id.iter().map(|id| ("Nats-Msg-Id", id.as_str())).collect();
                    self.request(c, &subject, &body, &headers, Waiting::Publish(token))?;
                }
                Some(Input::Publish(token, _)) => self.refuse(token, "the cluster is not ready"),
                Some(Input::Rewind(applied)) => {
                    self.delivered = applied;
                    self.emit(Event::Rewound);
                    if c.ready {
                        self.new_consumer(c)?;
                    }
                }
                Some(Input::Op(op)) => {
                    if let Some(stop) = self.on_op(c, &names, op)? {
                        return Ok(stop);
                    }
                }
                None => {}
            }
            let now = Instant::now();
            let late: Vec<u64> = self.pending.iter().filter(|(_, (_, t))| *t <= now).map(|(n, _)| *n).collect();
            for n in late {
                match self.pending.remove(&n) {
                    Some((Waiting::Publish(token), _)) => self.refuse(token, "JetStream did not answer in time"),
                    // While the cluster recovers from a lost server (a
                    // leader election, a consumer placed on the lost one)
                    // creation can time out: ask again on this connection.
                    Some((Waiting::Consumer, _)) => {
                        log::warn!("cluster: making the consumer timed out; asking again");
                        self.new_consumer(c)?;
                    }
                    _ => return Ok(Stop::Lost("a JetStream request timed out".into())),
                }
            }
            self.beat(c, &names, now)?;
            if now >= c.next_ping {
                if c.pings_out >= 2 {
                    return Ok(Stop::Lost("the server stopped answering pings".into()));
                }
                let mut out = Vec::new();
                nats::ping(&mut out);
                self.send(c, &out)?;
                c.pings_out += 1;
                c.next_ping = now + PING_EVERY;
            }
            if c.ready && now.duration_since(c.last_delivery) > HEARTBEAT * 3 {
                log::warn!("cluster: no heartbeat from the consumer; making it again after {}", self.delivered);
                self.new_consumer(c)?;
            }
        }
    }

    /// This node's heartbeat, once a second while the stream is there.
    fn beat(&self, c: &mut Conn, names: &js::Names, now: Instant) -> std::io::Result<()> {
        if c.ready && now >= c.next_beat {
            let mut out = Vec::new();
            nats::publish(&mut out, &format!("{}{}", names.heartbeats, self.s.node), None, &[], b"");
            self.send(c, &out)?;
            c.next_beat = now + NODE_HEARTBEAT;
        }
        Ok(())
    }

    /// The stream is there (`info`): this node can follow it, unless it
    /// was trimmed past what this node applied or is another stream.
    fn on_stream(&mut self, c: &mut Conn, names: &js::Names, info: js::StreamInfo) -> std::io::Result<Option<Stop>> {
        if info.first_seq > self.delivered + 1 && info.last_seq > self.delivered {
            // What this node misses was trimmed from the stream.
            self.emit(Event::Trimmed { first_seq: info.first_seq });
            return Ok(Some(Stop::Lost(format!(
                "the stream starts at {} but this node applied only up to {}; seed it from a peer's backup",
                info.first_seq, self.delivered
            ))));
        }
        if let Some(cfg) = names.upgrade(&info) {
            // Made by a build without cluster-wide presence: its subjects too.
            log::info!("cluster: adding the presence subjects to the stream {}", names.stream);
            return self.request(c, &names.stream_update(), cfg.as_bytes(), &[], Waiting::StreamCreate).map(|()| None);
        }
        let epoch = info.epoch(names);
        if self.s.epoch.as_ref().is_some_and(|e| *e != epoch) {
            return Ok(Some(Stop::Lost(format!(
                "the stream {} is not the one this node's store replicates (it was made again); \
                     start this node from an empty data folder",
                names.stream
            ))));
        }
        self.emit(Event::Up { epoch, last_seq: info.last_seq });
        c.ready = true;
        self.new_consumer(c)?;
        Ok(None)
    }

    fn on_op(&mut self, c: &mut Conn, names: &js::Names, op: ServerOp) -> std::io::Result<Option<Stop>> {
        match op {
            ServerOp::Ping => {
                let mut out = Vec::new();
                nats::pong(&mut out);
                self.send(c, &out)?;
            }
            ServerOp::Pong => c.pings_out = c.pings_out.saturating_sub(1),
            ServerOp::Ok | ServerOp::Info(_) => {}
            ServerOp::Err(e) => return Ok(Some(Stop::Lost(format!("the server said: {e}")))),
            ServerOp::Msg(m) if m.sid == c.consumer_sid => self.on_delivery(c, names, m)?,
            ServerOp::Msg(m) if m.sid == HEARTBEAT_SID => {
                // Its own too: the loop's once-a-second look for silent nodes.
                let node = m.subject.strip_prefix(&names.heartbeats).unwrap_or("");
                if js::valid_node(node) {
                    self.emit(Event::Heard(node.to_string()));
                }
            }
            ServerOp::Msg(m) if m.sid != 1 => {} // a replaced consumer's
            ServerOp::Msg(m) => {
                let n = m.subject.rsplit('.').next().and_then(|n| n.parse::<u64>().ok());
                let Some((w, _)) = n.and_then(|n| self.pending.remove(&n)) else { return Ok(None) };
                let status = m.headers.as_ref().and_then(|h| h.status);
                if status == Some(503) {
                    let why = "JetStream is not available (no responders)".to_string();
                    return match w {
                        Waiting::Publish(token) => {
                            self.refuse(token, &why);
                            Ok(None)
                        }
                        _ => Ok(Some(Stop::Lost(why))),
                    };
                }
                match w {
                    Waiting::Publish(token) => {
                        let result = js::parse_pub_ack(&m.payload).map_err(|e| e.to_string());
                        self.emit(Event::Published { token, result });
                    }
                    Waiting::StreamInfo | Waiting::StreamCreate => match js::parse_stream_info(&m.payload) {
                        Ok(info) => return self.on_stream(c, names, info),
                        Err(e) if e.err_code == js::STREAM_NOT_FOUND && matches!(w, Waiting::StreamInfo) => {
                            let cfg = names.stream_config(self.s.replicas, self.s.dedupe_window.as_millis() as u64);
                            self.request(c, &names.stream_create(), cfg.as_bytes(), &[], Waiting::StreamCreate)?;
                        }
                        Err(e) => return Ok(Some(Stop::Lost(format!("the stream {}: {e}", names.stream)))),
                    },
                    Waiting::Consumer => match js::parse_consumer_created(&m.payload) {
                        Ok(name) => c.consumer = Some(name).filter(|n| nats::valid_subject(n) && !n.contains('.')),
                        Err(e) => return Ok(Some(Stop::Lost(format!("the consumer: {e}")))),
                    },
                }
            }
        }
        Ok(None)
    }

    fn on_delivery(&mut self, c: &mut Conn, names: &js::Names, m: nats::Msg) -> std::io::Result<()> {
        c.last_delivery = Instant::now();
        if let Some(h) = &m.headers {
            if h.status == Some(100) {
                // Flow control asks for an empty reply; a heartbeat carries
                // the last consumer sequence sent, which shows a lost tail.
                if let Some(reply) = &m.reply {
                    let mut out = Vec::new();
                    nats::publish(&mut out, reply, None, &[], b"");
                    self.send(c, &out)?;
                }
                let last = h.get("Nats-Last-Consumer").and_then(|v| v.parse::<u64>().ok());
                if let Some(last) = last.filter(|l| c.next_cseq > 0 && *l >= c.next_cseq) {
                    log::warn!("cluster: consumer at {last}, this node at {}; making it again", c.next_cseq - 1);
                    self.new_consumer(c)?;
                }
                return Ok(());
            }
        }
        let Some(meta) = m.reply.as_deref().and_then(js::parse_meta) else { return Ok(()) };
        if c.next_cseq != 0 && meta.consumer_seq != c.next_cseq {
            // A gap: the ordered consumer is made again after what we have.
            log::warn!("cluster: consumer sequence {} after {}; making it again", meta.consumer_seq, c.next_cseq - 1);
            return self.new_consumer(c);
        }
        c.next_cseq = meta.consumer_seq + 1;
        if meta.stream_seq <= self.delivered {
            return Ok(()); // an old consumer's late message
        }
        self.delivered = meta.stream_seq;
        if let Some(record) = js::decode_presence(names, &m.subject, &m.payload) {
            self.emit(Event::Presence { stream_seq: meta.stream_seq, record });
            return Ok(());
        }
        match js::decode(names, &m.subject, &m.payload) {
            Some(append) => self.emit(Event::Message { stream_seq: meta.stream_seq, ts_ms: meta.ts_ms, append }),
            None => {
                log::warn!("cluster: stream message {} is not roostd's; skipped", meta.stream_seq);
                self.emit(Event::Skipped(meta.stream_seq));
            }
        }
        Ok(())
    }
}
