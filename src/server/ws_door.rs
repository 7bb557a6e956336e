//! The native WebSocket front door (`/ws`, the roost protocol): the
//! upgrade checks in the contract's order, reading frames into the hub,
//! and acting on what the hub decides.

use super::*;
use crate::hub::Publish;
use crate::proto::roost::ROOST;
use hooks::MAX_HOOK_QUEUE;
use http::Upgrade;

/// Messages read from one connection per turn before others get a go.
const READ_BUDGET: usize = 64;

impl Server {
    pub(super) fn open_websocket(&mut self, id: ConnId, head: Head, now: Instant) {
        let ip = match self.slots.get(&id) {
            Some(s) => s.conn.peer,
            None => return,
        };
        let open = self.slots.len();
        let secure = self.tls.is_some();
        let refusal = |status: u16, code: &'static str, why: &'static str| Some((Refusal::new(status, code), why));
        let up = http::upgrade_request(&head);
        let verdict = match &up {
            None => refusal(400, "bad_request", "not a valid upgrade"),
            Some(_)
                if open > self.max_connections
                    || self.per_ip.get(&ip).copied().unwrap_or(0) > self.cfg.max_connections_per_ip =>
            {
                refusal(503, "server_full", "connection limit")
            }
            Some(_)
                if head.origin.as_deref().is_some_and(|o| {
                    !http::origin_allowed(o, head.host.as_deref(), secure, &self.cfg.allowed_origins)
                }) =>
            {
                refusal(403, "origin_forbidden", "origin not allowed")
            }
            Some(Upgrade { token: None, .. }) => refusal(401, "token_missing", "no token"),
            Some(_) => None,
        };
        let now_unix = self.now_unix();
        let slot = self.slots.get_mut(&id).expect("slot checked above");
        if let Some((refused, why)) = verdict {
            slot.conn.refuse(refused.response(true), now);
            self.metrics.refuse(refused.code);
            return self.log_refusal(now, ip, &why);
        }
        let up = up.expect("checked above");
        let token = up.token.as_deref().unwrap_or("");
        let claims = match self.verifier.verify(token, now_unix) {
            Ok(c) => c,
            Err(e) => {
                slot.conn.refuse(Refusal::new(401, e.code()).response(true), now);
                self.metrics.refuse(e.code());
                self.metrics.auth_failure(e.code());
                return self.log_refusal(now, ip, &e);
            }
        };
        // `sub` is the token's text: escaped, so it cannot forge log lines.
        log::debug!("open /ws?token=<redacted> from {ip} as \"{}\"", claims.sub.escape_debug());
        let until_expiry = (claims.exp.saturating_add(self.verifier.leeway_secs())).saturating_sub(now_unix);
        let expires = now.checked_add(Duration::from_secs(until_expiry));
        slot.conn.upgrade(http::switching_protocols(&up), head.len, expires, now);
        slot.joined = true;
        if self.hook.is_some() {
            slot.hook = Some(Box::new(HookState { token: token.into(), queue: VecDeque::new(), busy: false }));
        }
        self.hub.join(id, claims, ROOST, now);
        // Frames may have arrived right behind the head.
        self.read_frames(id, now);
    }

    pub(super) fn read_frames(&mut self, id: ConnId, now: Instant) {
        let mut actions = Vec::new();
        for _ in 0..READ_BUDGET {
            let Some(slot) = self.slots.get_mut(&id) else { return };
            if self.stopping.is_some() && slot.conn.phase() == Phase::Open {
                // Shutting down: take no new requests; the Close comes soon.
                return;
            }
            match slot.conn.read_message(now) {
                Incoming::Again => continue,
                // Every caller is under `on_readable`, whose flush of this
                // connection right after schedules its deadline.
                Incoming::WouldBlock | Incoming::Finished => return,
                Incoming::Binary(b) if self.cfg.echo => {
                    slot.conn.send(Frame::binary(&b), usize::MAX);
                }
                Incoming::Text(t) if self.cfg.echo => {
                    slot.conn.send(Frame::text(&t), usize::MAX);
                }
                Incoming::Binary(_) => {
                    let msg = "binary frames are not part of the protocol; send JSON text";
                    self.refuse(id, ErrCode::BadRequest, msg, None);
                }
                Incoming::Text(text) if slot.speaks_pusher => self.pusher_frame(id, &text, now),
                Incoming::Text(text) => {
                    self.hub.set_reply_room(self.cfg.max_output_bytes.saturating_sub(net::queued_total()));
                    match roost::parse(&text) {
                        Ok(p) => self.hub.handle(id, p.id, p.req, now, &self.store, &mut actions),
                        Err(e) => self.refuse(id, e.code, e.msg, e.id),
                    }
                    for action in actions.drain(..) {
                        self.act(id, action, now);
                    }
                }
            }
        }
        // Budget spent with data possibly left: edge-triggered readiness
        // will not tell us again, so come back next turn.
        self.again.push(id);
    }

    pub(super) fn act(&mut self, id: ConnId, action: Action, now: Instant) {
        match action {
            Action::Reply(text) => self.send(id, text.into()),
            Action::Publish(publish) if self.hook.is_some() => {
                let (append, req_id) = to_append(publish);
                let Some(state) = self.slots.get_mut(&id).and_then(|slot| slot.hook.as_mut()) else { return };
                if state.queue.len() >= MAX_HOOK_QUEUE {
                    let msg = "too many publishes waiting for approval";
                    return self.refuse(id, ErrCode::Unavailable, msg, req_id.as_deref());
                }
                // The message waits here, and again as the request body
                // built from it (with the token) while the call runs.
                let size = append.data.len() + append.ch.len() + append.from.len();
                let bytes = 2 * size + req_id.as_ref().map_or(0, String::len) + state.token.len();
                let Some(held) = self.hook.as_ref().and_then(|hook| hook.hold(bytes)) else {
                    let msg = "too many publishes are waiting for the application; retry with the same id";
                    return self.refuse(id, ErrCode::Unavailable, msg, req_id.as_deref());
                };
                state.queue.push_back((append, req_id, held));
                self.hook_next(id);
            }
            Action::Publish(publish) => {
                let (append, req_id) = to_append(publish);
                self.commit_later(id, append, req_id)
            }
            Action::Close(code, reason) => {
                if let Some(slot) = self.slots.get_mut(&id) {
                    slot.conn.close(code, reason, now);
                    self.mark_dirty(id);
                }
            }
        }
    }
}

/// The writer's form of a publish the hub accepted (the hub names no
/// write type of the store), and the request id its ack carries.
fn to_append(p: Publish) -> (Append, Option<String>) {
    let req_id = p.id.clone();
    (Append { ch: p.ch, from: p.from, data: p.data, id: p.id, key: p.key, event: p.event }, req_id)
}
