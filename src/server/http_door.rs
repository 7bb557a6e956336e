//! The HTTP front door: requests on the shared port that are not a
//! WebSocket (the API, `/healthz`, `/metrics`, the demo page), pipelined
//! one answer at a time, and the publish bodies they carry to the writer.

use super::*;
use commits::MAX_INFLIGHT_BYTES;

/// HTTP requests handled on one connection per turn before others get a go.
const REQUEST_BUDGET: usize = 16;

/// The store cannot take or give this now: retry (with the same key).
pub(super) const UNAVAILABLE: Refusal = Refusal::new(503, "unavailable");

/// An HTTP request in progress on a kept-alive connection.
#[derive(Clone, Copy)]
pub(super) struct HttpRequest {
    /// Buffered bytes the request takes (head and body).
    pub(super) consumed: usize,
    pub(super) keep_alive: bool,
}

/// A publish over HTTP whose body is still arriving.
pub(super) struct PendingBody {
    pub(super) head: Box<Head>,
    pub(super) ch: String,
    pub(super) claims: Box<crate::auth::Claims>,
    pub(super) len: usize,
    /// Set for a request of the Pusher API: the route its body is for.
    pub(super) pusher: Option<crate::proto::pusher_api::Route>,
}

impl PendingBody {
    /// A Pusher API request's body: it carries a signature, not a token.
    pub(super) fn pusher(head: Head, route: crate::proto::pusher_api::Route, len: usize) -> PendingBody {
        let claims = crate::auth::Claims {
            sub: String::new(),
            exp: 0,
            read: crate::auth::Patterns::new(Vec::new()),
            write: crate::auth::Patterns::new(Vec::new()),
            api: false,
            info: None,
        };
        PendingBody { head: Box::new(head), ch: String::new(), claims: Box::new(claims), len, pusher: Some(route) }
    }
}

impl Server {
    /// Reads HTTP requests until one needs to wait (for bytes or a
    /// commit), the connection upgrades, or it ends. Kept-alive connections
    /// may have several pipelined requests buffered: each is read only once
    /// the answer to the one before is on the wire (else reading stops until
    /// the socket takes it, see `flush_dirty`), and at most `REQUEST_BUDGET`
    /// per turn, so a client that pipelines without reading costs one
    /// answer of memory and cannot hold the loop.
    pub(super) fn read_requests(&mut self, id: ConnId, now: Instant) {
        for _ in 0..REQUEST_BUDGET {
            let Some(slot) = self.slots.get_mut(&id) else { return };
            if slot.conn.phase() == Phase::Head && slot.conn.answer_pending() {
                slot.conn.flush();
                if slot.conn.answer_pending() {
                    slot.conn.block_reads();
                    self.schedule(id);
                    return;
                }
            }
            let more = match slot.conn.phase() {
                Phase::Head => match slot.conn.read_head(self.cfg.max_header_bytes) {
                    HeadStatus::Pending => false,
                    HeadStatus::Gone => {
                        // The peer may have half-closed after its request:
                        // answers already queued still go out.
                        slot.conn.refuse(Vec::new(), now);
                        false
                    }
                    HeadStatus::Refuse(refusal) => {
                        self.metrics.refuse(refusal.code);
                        slot.conn.refuse(refusal.response(true), now);
                        false
                    }
                    HeadStatus::Ready(head) => self.on_head(id, *head, now),
                },
                Phase::Body => self.on_body(id, now),
                _ => false,
            };
            if !more {
                self.schedule(id);
                return;
            }
        }
        // Budget spent: more requests may be buffered, and no readiness
        // event will say so.
        self.schedule(id);
        self.again.push(id);
    }

    /// Acts on a complete request head; true when the next request may be
    /// read at once.
    pub(super) fn on_head(&mut self, id: ConnId, head: Head, now: Instant) -> bool {
        if !http::host_allowed(head.host.as_deref(), &self.cfg.allowed_hosts) {
            let req = HttpRequest { consumed: head.len, keep_alive: false };
            return self.http_refuse(id, req, Refusal::new(403, "host_forbidden"), true, now);
        }
        let decision = api::decide(&head, &self.verifier, self.now_unix(), self.cfg.max_message_bytes, self.cfg.demo);
        // Only a publish reads its body. Any other request's body is unread
        // bytes in front of the next request: answer it, then close, so a
        // body can never be taken for a request of its own (smuggling).
        let has_body =
            head.transfer_encoding.is_some() || head.content_length.as_deref().is_some_and(|l| l.trim() != "0");
        let req = HttpRequest { consumed: head.len, keep_alive: keep_alive(&head) && !has_body };
        match decision {
            Decision::WebSocket => {
                self.open_websocket(id, head, now);
                false
            }
            Decision::PusherSocket if self.pusher.is_some() => {
                self.open_pusher(id, head, now);
                false
            }
            Decision::PusherSocket => self.http_refuse(id, req, Refusal::new(404, "not_found"), false, now),
            Decision::PusherApi => self.pusher_api_head(id, head, req, now),
            Decision::Reply { status, body, content_type, close } => {
                self.http_reply(id, req, status, content_type, &body, close, now)
            }
            Decision::Refuse(refusal) => {
                if refusal.status == 401 {
                    self.metrics.auth_failure(refusal.code);
                }
                self.http_refuse(id, req, refusal, false, now)
            }
            Decision::Health => {
                let (status, body): (u16, &[u8]) = if self.fatal.is_some() {
                    (503, b"store unavailable")
                } else if self.store_full {
                    (503, b"store full: writes are refused until retention frees space")
                } else if let Some(why) = self.cluster_unready() {
                    (503, why)
                } else {
                    (200, b"ok")
                };
                self.http_reply(id, req, status, "text/plain", body, false, now)
            }
            Decision::Metrics => {
                let text = self.metrics.render(self.gauges());
                self.http_reply(id, req, 200, "text/plain; version=0.0.4", text.as_bytes(), false, now)
            }
            Decision::Channels { after, limit } => match self.store.channels(&after, limit) {
                Ok(list) => self.http_reply(id, req, 200, "application/json", &api::channels(&list), false, now),
                Err(e) => self.store_unavailable(id, req, e, now),
            },
            Decision::History { ch, since, limit } => {
                match api::history(&self.store, &ch, since, limit, self.cfg.max_send_buffer_bytes / 2) {
                    Ok(body) => self.http_reply(id, req, 200, "application/json", &body, false, now),
                    Err(e) => self.store_unavailable(id, req, e, now),
                }
            }
            Decision::Presence { ch } => {
                let body = api::presence(&ch, &self.hub.members_of(&ch, None));
                self.http_reply(id, req, 200, "application/json", &body, false, now)
            }
            Decision::State { ch, after, limit } if self.cfg.is_compacted(&ch) => {
                match api::state(&self.store, &ch, &after, limit) {
                    Ok(body) => self.http_reply(id, req, 200, "application/json", &body, false, now),
                    Err(e) => self.store_unavailable(id, req, e, now),
                }
            }
            Decision::State { .. } => self.http_refuse(id, req, Refusal::new(400, "bad_request"), false, now),
            Decision::Publish { ch, claims, len } => {
                let Some(slot) = self.slots.get_mut(&id) else { return false };
                slot.body = Some(Box::new(PendingBody { head: Box::new(head), ch, claims, len, pusher: None }));
                slot.conn.expect_body();
                true
            }
        }
    }

    /// Reads a publish body; once complete, hands it to the writer.
    pub(super) fn on_body(&mut self, id: ConnId, now: Instant) -> bool {
        let Some(slot) = self.slots.get_mut(&id) else { return false };
        let Some(pending) = slot.body.take() else { return false };
        let total = pending.head.len + pending.len;
        let req = HttpRequest { consumed: total, keep_alive: keep_alive(&pending.head) };
        let body = match slot.conn.read_body(total) {
            BodyStatus::Gone => {
                slot.conn.refuse(Vec::new(), now);
                return false;
            }
            BodyStatus::Pending => {
                slot.body = Some(pending);
                return false;
            }
            BodyStatus::Ready(all) => &all[pending.head.len..],
        };
        if let Some(route) = pending.pusher {
            let body = body.to_vec();
            return self.pusher_api_body(id, req, &pending.head, route, &body, now);
        }
        let key = pending.head.idempotency_key.as_deref();
        let message_key = api::message_key(&pending.head).unwrap_or_default();
        match api::publish(pending.ch, &pending.claims, body, key, message_key) {
            Ok(append) => {
                let bytes = append.data.len() + append.ch.len() + append.from.len();
                if self.inflight_bytes + bytes > MAX_INFLIGHT_BYTES {
                    return self.http_refuse(id, req, UNAVAILABLE, false, now);
                }
                slot.conn.wait_commit();
                self.inflight_bytes += bytes;
                let id_json = append.id.clone();
                self.queue_publish(Ticket::publish(id, id_json, bytes, Some(req)), append);
                false
            }
            Err(refusal) => self.http_refuse(id, req, refusal, false, now),
        }
    }

    /// The HTTP answer to a publish whose commit came back: `201`/`200`
    /// with its seq, or the refusal of the one item the store refused. A
    /// pipelined request may be waiting behind it: read on next turn.
    pub(super) fn answer_publish(&mut self, conn: ConnId, req: HttpRequest, ch: &str, outcome: &Outcome, now: Instant) {
        let answer = match outcome {
            Outcome::Stored { seq, ts } => api::published(ch, *seq, *ts, true),
            Outcome::Duplicate { ch, seq, ts } => api::published(ch, *seq, *ts, false),
            Outcome::Invalid(_) => Decision::Refuse(Refusal::new(400, "bad_request")),
            Outcome::OverLimit(limit) => Decision::Refuse(api::over_limit(*limit)),
            Outcome::Written => Decision::Refuse(Refusal::new(400, "bad_request")),
        };
        match answer {
            Decision::Reply { status, body, content_type, .. } => {
                self.http_reply(conn, req, status, content_type, &body, false, now)
            }
            Decision::Refuse(refusal) => self.http_refuse(conn, req, refusal, false, now),
            _ => false,
        };
        self.again.push(conn);
    }

    pub(super) fn store_unavailable(&mut self, id: ConnId, req: HttpRequest, e: StoreError, now: Instant) -> bool {
        log::warn!("reading the store failed: {e}");
        self.http_refuse(id, req, UNAVAILABLE, false, now)
    }

    /// Queues a refusal and counts it by its code; `close` ends the
    /// connection after it (as some refusals always do).
    pub(super) fn http_refuse(
        &mut self,
        id: ConnId,
        req: HttpRequest,
        refusal: Refusal,
        close: bool,
        now: Instant,
    ) -> bool {
        self.metrics.refuse(refusal.code);
        let close = close || refusal.ends_connection();
        self.http_reply(id, req, refusal.status, "application/json", &refusal.body(), close, now)
    }

    /// Queues an HTTP answer; true when the connection stays open for the
    /// next request.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn http_reply(
        &mut self,
        id: ConnId,
        req: HttpRequest,
        status: u16,
        content_type: &str,
        body: &[u8],
        close: bool,
        now: Instant,
    ) -> bool {
        let Some(slot) = self.slots.get_mut(&id) else { return false };
        let keep = req.keep_alive && !close && self.stopping.is_none();
        self.metrics.http_requests += 1;
        slot.conn.respond(http::response(status, content_type, body, !keep), req.consumed, keep, now);
        self.mark_dirty(id);
        keep
    }
}

/// HTTP/1.1 keeps connections open unless told otherwise; 1.0 only when asked.
pub(super) fn keep_alive(head: &Head) -> bool {
    let conn = head.connection.as_deref();
    if head.minor >= 1 {
        !http::has_token(conn, "close")
    } else {
        http::has_token(conn, "keep-alive")
    }
}

impl Server {
    /// What `/metrics` shows beside the counters: the state right now.
    pub(super) fn gauges(&self) -> Gauges {
        let (store_bytes, map_bytes) = self.store.usage();
        Gauges {
            connections: self.slots.len(),
            websockets: self.slots.values().filter(|s| s.joined).count(),
            subscriptions: self.hub.subscription_count(),
            presence_members: self.hub.member_count(),
            webhook: self.webhook.as_ref().map(|w| {
                let c = w.counters();
                [&c.delivered, &c.failed, &c.dropped, &c.pending].map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
            }),
            store_bytes,
            map_bytes,
        }
    }
}
