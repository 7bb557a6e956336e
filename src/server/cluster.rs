//! Cluster mode on the loop (cluster.md): a publish that passed every check
//! goes to JetStream instead of the writer; the stream comes back through
//! the cluster thread as `Write::Applied` items for the writer, in stream
//! order; and a publisher is answered only once its own node has committed
//! the stream sequence JetStream gave it, with the channel seq the applier
//! assigned — through the same `on_committed` as a single node, which also
//! does the local fan-out.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::*;
use crate::cluster::{self, Cluster, Event as ClusterEvent};

mod presence;

/// Applied messages handed to the writer and not yet committed: past it the
/// loop stops taking the stream's messages (the cluster thread, then TCP
/// and JetStream's flow control, hold the rest back).
const MAX_APPLYING: usize = 8192;
/// Outcomes of the latest applied sequences, for a PubAck that comes back
/// after its message was applied.
const RECENT: usize = 4096;

pub(super) struct ClusterSide {
    client: Cluster,
    up: bool,
    next_token: u64,
    /// Sent to JetStream, waiting for its PubAck.
    sent: HashMap<u64, (Ticket, Append)>,
    /// In the log, waiting for this node to apply the sequence.
    acked: BTreeMap<u64, Vec<(Ticket, Append)>>,
    /// The last stream sequence committed here.
    applied: u64,
    /// The last stream sequence skipped (not roostd's): read, never applied.
    skipped: u64,
    /// The stream's last sequence when the link came up: until it is
    /// applied, the node is catching up (`/healthz` 503, no publishes).
    catch_up_to: u64,
    /// The last stream sequence handed to the writer.
    submitted: u64,
    applying: usize,
    /// A commit of applied messages failed: the stream's messages are
    /// dropped until the cluster thread says it consumes again (`Rewound`).
    rewinding: bool,
    /// The rewind is asked for (its queue may have been full).
    rewind_sent: bool,
    recent: VecDeque<(u64, Outcome)>,
    /// Presence across the cluster: this node's records on their way, and
    /// the nodes whose silence would remove their members.
    pub(super) presence: presence::PresenceSide,
}

impl ClusterSide {
    /// Starts the cluster thread for a replica store (main made it one).
    pub(super) fn start(cfg: &Config, store: &Store, wake: Box<dyn Fn() + Send>) -> Option<ClusterSide> {
        if cfg.cluster_urls.is_empty() {
            return None;
        }
        let applied = store.stream_seq().ok().flatten().unwrap_or(0);
        // main checked the credentials file before the start.
        let credentials = cluster::credentials(cfg).ok().flatten();
        let mut settings = cluster::Settings::new(cfg, credentials, Some(store.epoch().to_string()));
        settings.node = presence::node_id(&cfg.data);
        let node = settings.node.clone();
        Some(ClusterSide {
            client: Cluster::start(settings, applied, wake),
            up: false,
            next_token: 0,
            sent: HashMap::new(),
            acked: BTreeMap::new(),
            applied,
            skipped: 0,
            catch_up_to: u64::MAX,
            submitted: applied,
            applying: 0,
            rewinding: false,
            rewind_sent: false,
            recent: VecDeque::new(),
            presence: presence::PresenceSide::new(node),
        })
    }
}

impl Server {
    /// Where a checked publish goes: to JetStream in cluster mode, else to
    /// the writer with this turn's batch. Its bytes are already counted.
    pub(super) fn queue_publish(&mut self, ticket: Ticket, append: Append) {
        let Some(c) = self.cluster.as_mut() else {
            return self.pending.push((ticket, Write::Message(append)));
        };
        c.next_token += 1;
        let token = c.next_token;
        if !c.up || c.catching_up() || c.client.try_publish(token, append.clone()).is_err() {
            return self.cluster_refuse(ticket, &append);
        }
        c.sent.insert(token, (ticket, append));
    }

    /// Not in the log: `unavailable`, on the WebSocket or as HTTP 503.
    fn cluster_refuse(&mut self, ticket: Ticket, _append: &Append) {
        self.inflight_bytes -= ticket.bytes;
        if ticket.pusher {
            return self.pusher_committed(ticket.conn, false, self.now);
        }
        match ticket.http {
            Some(req) => _ = self.http_refuse(ticket.conn, req, http_door::UNAVAILABLE, true, self.now),
            None => {
                let msg = "the cluster's log is unreachable; retry with the same id";
                self.refuse(ticket.conn, ErrCode::Unavailable, msg, ticket.id.as_deref())
            }
        }
    }

    /// The cluster thread's news: the link's state, PubAcks, and the
    /// stream's messages for the writer (while few enough are in flight).
    pub(super) fn collect_cluster(&mut self, now: Instant) {
        loop {
            let Some(c) = self.cluster.as_mut() else { return };
            if c.rewinding && !c.rewind_sent {
                c.rewind_sent = c.client.rewind(c.applied).is_ok();
            }
            if c.applying >= MAX_APPLYING {
                break;
            }
            let Some(event) = c.client.events().next() else { break };
            self.on_cluster_event(event, now);
        }
        self.watch_presence(now);
    }

    /// One piece of the cluster thread's news.
    fn on_cluster_event(&mut self, event: ClusterEvent, now: Instant) {
        let Some(c) = self.cluster.as_mut() else { return };
        {
            match event {
                ClusterEvent::Up { last_seq, .. } => {
                    c.up = true;
                    // Once caught up, a reconnect does not make it catch up again.
                    if c.catch_up_to == u64::MAX {
                        c.catch_up_to = last_seq;
                    }
                    log::info!("cluster: connected; the stream is applied from {}", c.applied + 1);
                    c.presence.reconnected(now);
                }
                ClusterEvent::Down(why) => {
                    if c.up {
                        log::warn!("cluster: {why}; publishes answer unavailable until it is back");
                    }
                    c.up = false;
                }
                ClusterEvent::Published { token, result } => {
                    if let Some(change) = c.presence.records.remove(&token) {
                        return self.on_presence_published(change, result.is_ok(), now);
                    }
                    let Some((ticket, append)) = c.sent.remove(&token) else { return };
                    match result {
                        Err(why) => {
                            log::debug!("cluster: a publish was not taken: {why}");
                            self.cluster_refuse(ticket, &append);
                        }
                        Ok(ack) => self.on_pub_ack(ack, ticket, append, now),
                    }
                }
                ClusterEvent::Message { stream_seq, ts_ms, append } => {
                    if let Some(after) = c.next_apply(stream_seq) {
                        self.pending.push((Ticket::event(), Write::Applied { append, stream_seq, ts_ms, after }));
                    }
                }
                ClusterEvent::Presence { stream_seq, record } => {
                    if let Some(after) = c.next_apply(stream_seq) {
                        let write = c.presence.write(record, stream_seq, after, &self.cfg);
                        self.pending.push((Ticket::event(), write));
                    }
                }
                ClusterEvent::Heard(node) => c.presence.heard(&node, now),
                ClusterEvent::Skipped(seq) => c.skipped = seq,
                ClusterEvent::Trimmed { first_seq } => log::error!(
                    "cluster: the stream starts at {first_seq}, after what this node applied ({}): it cannot catch \
                     up; stop it and seed its data folder from a peer's backup",
                    c.applied
                ),
                ClusterEvent::Rewound => {
                    // Applied messages still at the writer fail as out of
                    // order and ask for another rewind: harmless.
                    c.rewinding = false;
                    c.submitted = c.applied;
                }
            }
        }
    }

    /// Why `/healthz` says 503 in cluster mode: the link to NATS is down,
    /// or the node is still applying what the stream held when it came up.
    pub(super) fn cluster_unready(&self) -> Option<&'static [u8]> {
        let c = self.cluster.as_ref()?;
        if !c.up {
            Some(b"the cluster's log (NATS) is unreachable: publishes are refused")
        } else if c.catching_up() {
            Some(b"catching up with the cluster's log")
        } else {
            None
        }
    }

    /// The message is in the log at `ack.seq`: answer now if this node has
    /// applied it, else when it does.
    fn on_pub_ack(&mut self, ack: cluster::js::PubAck, ticket: Ticket, append: Append, now: Instant) {
        let Some(c) = self.cluster.as_mut() else { return };
        if ack.seq > c.applied {
            c.acked.entry(ack.seq).or_default().push((ticket, append));
            return;
        }
        let recent = c.recent.iter().find(|(s, _)| *s == ack.seq).map(|(_, o)| o.clone());
        let outcome = match (recent, &append.id) {
            // Applied here already: that outcome, or for a publish
            // JetStream dropped as a duplicate, the first one's place.
            (Some(Outcome::Stored { seq, ts }), _) if ack.duplicate => {
                Outcome::Duplicate { ch: append.ch.clone(), seq, ts }
            }
            (Some(o), _) => o,
            (None, Some(id)) => match self.store.published(&append.from, id) {
                Ok(Some((ch, seq, ts))) => Outcome::Duplicate { ch, seq, ts },
                _ => return self.cluster_refuse(ticket, &append),
            },
            (None, None) => return self.cluster_refuse(ticket, &append),
        };
        self.on_committed(ticket, append, outcome, now);
    }

    /// An applied message committed: its publishers here are answered, and
    /// its subscribers here get it (`on_committed`).
    pub(super) fn on_applied(&mut self, stream_seq: u64, append: Append, outcome: Outcome, now: Instant) {
        let Some(c) = self.cluster.as_mut() else { return };
        if !c.took(stream_seq, &outcome) {
            return;
        }
        c.recent.push_back((stream_seq, outcome.clone()));
        if c.recent.len() > RECENT {
            c.recent.pop_front();
        }
        let waiting = c.acked.remove(&stream_seq).unwrap_or_default();
        let mut first = true;
        for (ticket, mine) in waiting {
            let o = match (&outcome, first) {
                (_, true) => outcome.clone(),
                // The same message published twice: the later ones are duplicates.
                (Outcome::Stored { seq, ts }, false) => Outcome::Duplicate { ch: mine.ch.clone(), seq: *seq, ts: *ts },
                (o, false) => o.clone(),
            };
            if first {
                first = false;
                self.on_committed(ticket, append.clone(), o, now);
            } else {
                self.on_committed(ticket, mine, o, now);
            }
        }
        if first {
            // From another node (or a publisher gone): fan-out only.
            self.on_committed(Ticket::event(), append, outcome, now);
        }
    }

    /// A commit with applied messages failed: consume again after the last
    /// applied sequence, dropping what was queued meanwhile.
    pub(super) fn on_apply_failed(&mut self, items: &[(Ticket, Write)]) {
        let Some(c) = self.cluster.as_mut() else { return };
        let failed = items.iter().filter(|(_, w)| w.is_applied()).count();
        if failed == 0 {
            return;
        }
        c.applying = c.applying.saturating_sub(failed);
        c.rewind();
    }
}

impl ClusterSide {
    fn catching_up(&self) -> bool {
        self.applied.max(self.skipped) < self.catch_up_to
    }

    /// Linked to the log and caught up: publishes (and presence) work.
    pub(super) fn ready(&self) -> bool {
        self.up && !self.catching_up()
    }

    /// A token for the cluster thread's answer.
    pub(super) fn take_token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// The stream record at `stream_seq` goes to the writer, after the
    /// returned sequence; `None` when it was seen or a rewind drops it.
    fn next_apply(&mut self, stream_seq: u64) -> Option<u64> {
        if self.rewinding || stream_seq <= self.submitted {
            return None;
        }
        self.applying += 1;
        Some(std::mem::replace(&mut self.submitted, stream_seq))
    }

    /// A stream record's commit came back: false when it was out of order
    /// (a rewind is asked for), else it is applied here.
    pub(super) fn took(&mut self, stream_seq: u64, outcome: &Outcome) -> bool {
        self.applying = self.applying.saturating_sub(1);
        if matches!(outcome, Outcome::Invalid(why) if why == crate::store::OUT_OF_ORDER) {
            self.rewind();
            return false;
        }
        self.applied = self.applied.max(stream_seq);
        true
    }

    /// Drops the stream's messages until the cluster thread consumes again
    /// after the last applied sequence (asked now, or next turn).
    fn rewind(&mut self) {
        if !self.rewinding {
            self.rewinding = true;
            self.rewind_sent = self.client.rewind(self.applied).is_ok();
        }
        self.submitted = self.applied;
    }
}
