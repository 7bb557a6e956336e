//! Commits and fan-out: publishes handed to the writer (within a global
//! byte budget), and what comes back — the ack, the message encoded once
//! and queued on every subscriber whose cursor it is, the HTTP answer —
//! plus replay streamed into connections with room.

use super::*;
use crate::hub::{Change, Publish};
use crate::store::Limit;
use http_door::{HttpRequest, UNAVAILABLE};

/// Bytes of publishes waiting for the writer, over all connections; past it
/// publishes are refused with `unavailable` instead of queueing without bound.
pub(super) const MAX_INFLIGHT_BYTES: usize = 64 << 20;

/// A write waiting for its commit: a publish (whose connection and id the
/// answer needs), a presence or occupancy change, or a webhook event.
pub(super) struct Ticket {
    pub(super) conn: ConnId,
    pub(super) id: Option<String>,
    pub(super) bytes: usize,
    /// Set for an HTTP publish: what to answer on.
    pub(super) http: Option<HttpRequest>,
    /// Set for a presence or occupancy write: the hub hears its result.
    pub(super) change: Option<Box<Change>>,
    /// Set for an event of the Pusher API: `conn` is its HTTP request,
    /// answered once all its events are committed.
    pub(super) pusher: bool,
    /// A connection left out of the delivery (the event's `socket_id`).
    pub(super) except: Option<ConnId>,
}

impl Ticket {
    pub(super) fn publish(conn: ConnId, id: Option<String>, bytes: usize, http: Option<HttpRequest>) -> Ticket {
        Ticket { conn, id, bytes, http, change: None, pusher: false, except: None }
    }

    pub(super) fn change(change: Change) -> Ticket {
        Ticket { change: Some(Box::new(change)), ..Ticket::event() }
    }

    pub(super) fn pusher(conn: ConnId, bytes: usize, except: Option<ConnId>) -> Ticket {
        Ticket { conn, bytes, pusher: true, except, ..Ticket::event() }
    }

    /// A webhook event: it commits with the write before it.
    pub(super) fn event() -> Ticket {
        Ticket::event_of(0)
    }

    /// A webhook event whose `bytes` count against `MAX_INFLIGHT_BYTES`
    /// until it is committed (a client event's).
    pub(super) fn event_of(bytes: usize) -> Ticket {
        Ticket { conn: 0, id: None, bytes, http: None, change: None, pusher: false, except: None }
    }
}

impl Server {
    /// Queues a publish for the writer, unless too much already waits.
    pub(super) fn commit_later(&mut self, id: ConnId, append: Append, req_id: Option<String>) {
        let bytes = append.data.len() + append.ch.len() + append.from.len();
        if self.inflight_bytes + bytes > MAX_INFLIGHT_BYTES {
            let msg = "the server is busy writing; retry with the same id";
            return self.refuse(id, ErrCode::Unavailable, msg, req_id.as_deref());
        }
        self.inflight_bytes += bytes;
        self.queue_publish(Ticket::publish(id, req_id, bytes, None), append);
    }

    pub(super) fn collect_commits(&mut self, now: Instant) {
        let done: Vec<Done<Ticket>> = self.writer.results().collect();
        for Done { items, result, took } in done {
            match result {
                Ok(outcomes) => {
                    self.store_full = false;
                    self.metrics.commit(took, items.len());
                    for ((ticket, write), outcome) in items.into_iter().zip(outcomes) {
                        if let Write::Message(append) = write {
                            self.on_committed(ticket, append, outcome, now);
                        } else if let Write::Applied { append, stream_seq, .. } = write {
                            self.on_applied(stream_seq, append, outcome, now);
                        } else if write.is_applied() {
                            self.on_presence_applied(write, &outcome, now);
                        } else if let Write::Event(_) = write {
                            self.inflight_bytes -= ticket.bytes;
                        } else if let Some(change) = ticket.change {
                            self.on_change_written(&change, outcome == Outcome::Written, now);
                        }
                    }
                }
                Err(e) => self.on_commit_failed(items, e, now),
            }
        }
    }

    /// One publish of a committed batch: the publisher's answer (on its
    /// WebSocket, or its HTTP response), then the message to every
    /// subscriber whose cursor it is — decided by `Hub::on_commit`.
    pub(super) fn on_committed(&mut self, ticket: Ticket, append: Append, outcome: Outcome, now: Instant) {
        self.inflight_bytes -= ticket.bytes;
        match &outcome {
            Outcome::Stored { .. } => self.metrics.published += 1,
            Outcome::Duplicate { .. } => self.metrics.duplicates += 1,
            Outcome::Invalid(why) => log::warn!("refused one publish: {why}"),
            Outcome::OverLimit(Limit::Channels) => self.metrics.refuse(ErrCode::TooManyChannels.as_str()),
            Outcome::OverLimit(Limit::Keys) => self.metrics.refuse(ErrCode::TooManyKeys.as_str()),
            Outcome::Written => {}
        }
        if let Some(req) = ticket.http {
            self.answer_publish(ticket.conn, req, &append.ch, &outcome, now);
        }
        if ticket.pusher {
            let ok = matches!(outcome, Outcome::Stored { .. } | Outcome::Duplicate { .. });
            self.pusher_committed(ticket.conn, ok, now);
        }
        let publish = Publish {
            ch: append.ch,
            from: append.from,
            data: append.data,
            id: ticket.id,
            key: append.key,
            event: append.event,
        };
        let publisher = (ticket.http.is_none() && !ticket.pusher).then_some(ticket.conn);
        let committed = self.hub.on_commit_except(&publish, &outcome, publisher, ticket.except);
        if let Some(reply) = committed.reply {
            self.send(ticket.conn, reply.into());
        }
        for (text, to) in committed.deliveries {
            self.metrics.delivered += to.len() as u64;
            let frame = Frame::from(text);
            for conn in to {
                self.send(conn, frame.clone());
            }
        }
    }

    /// A batch that did not commit: its publishers are told to retry, and a
    /// broken environment stops the server.
    fn on_commit_failed(&mut self, items: Vec<(Ticket, Write)>, e: StoreError, now: Instant) {
        self.on_apply_failed(&items);
        let transient = e.is_transient();
        self.store_full = transient;
        self.metrics.commit_failures += !items.is_empty() as u64;
        for (ticket, write) in items {
            self.inflight_bytes -= ticket.bytes;
            if let Some(change) = ticket.change {
                self.on_change_written(&change, false, now);
            } else if !matches!(write, Write::Message(_)) {
                // A webhook event: it is asked for again with its cause.
            } else if ticket.pusher {
                self.pusher_committed(ticket.conn, false, now);
            } else if let Some(req) = ticket.http {
                self.http_refuse(ticket.conn, req, UNAVAILABLE, true, now);
            } else if transient {
                let msg = "the store is full; retry later with the same id";
                self.refuse(ticket.conn, ErrCode::Unavailable, msg, ticket.id.as_deref());
            }
        }
        if e.is_fatal() && self.fatal.is_none() {
            log::error!("{e}; closing every connection and stopping");
            self.fatal = Some(e);
            self.close_all(code::INTERNAL, "store failure", now);
        }
    }

    /// True when a replaying connection has room in its send queue. Then
    /// the loop must not sleep: no socket event would wake it, since the
    /// queue may have drained without ever filling the socket.
    pub(super) fn replay_has_room(&self) -> bool {
        self.hub.replaying().any(|id| self.slots.get(&id).is_some_and(|s| self.replay_room(&s.conn) > 0))
    }

    /// What a replay may add to `conn`'s queue now: up to a quarter of its
    /// send buffer (below `Settings::read_pause_bytes`, so the subscriber is
    /// still read while it is replayed to), and nothing while all
    /// connections together hold the output budget: many subscribers that
    /// replay and never read then hold the budget, not a send buffer each.
    fn replay_room(&self, conn: &Conn) -> usize {
        if conn.phase() != Phase::Open {
            return 0;
        }
        let own = (self.cfg.max_send_buffer_bytes / 4).saturating_sub(conn.queued_bytes());
        own.min(self.cfg.max_output_bytes.saturating_sub(net::queued_total()))
    }

    /// Streams stored messages to replaying subscribers with room in their
    /// send queue. A turn sends at most a batch per subscription, so a long
    /// replay is spread over turns and never holds up other connections.
    pub(super) fn pump_replays(&mut self) {
        let mut texts = Vec::new();
        for id in self.hub.replaying().collect::<Vec<_>>() {
            let Some(slot) = self.slots.get(&id) else {
                self.hub.leave(id, self.now);
                continue;
            };
            let room = self.replay_room(&slot.conn);
            if room == 0 {
                continue;
            }
            self.hub.pump(id, &self.store, room, &mut texts);
            self.metrics.replayed += texts.len() as u64;
            for t in texts.drain(..) {
                self.send(id, t.into());
            }
        }
    }
}
