//! The publish hook's queue on the loop's side: each WebSocket's publishes
//! wait in order, one at a time with the main application, within the
//! hook's global byte budget; verdicts come back as commits or refusals.

use super::*;

/// A connection's side of the publish hook.
pub(super) struct HookState {
    /// The client's token, for the hook's Authorization header.
    pub(super) token: Box<str>,
    /// Publishes waiting for the hook, each with its bytes held against the
    /// hook's global budget; the front one is in flight when `busy`.
    pub(super) queue: VecDeque<(Append, Option<String>, hook::Held)>,
    pub(super) busy: bool,
}

/// A publish the hook is deciding on.
pub(super) struct HookTicket {
    pub(super) conn: ConnId,
    pub(super) append: Append,
    pub(super) id: Option<String>,
    /// Given back to the budget when the ticket is dropped: after the
    /// verdict, or with a job the full queue refused.
    pub(super) held: hook::Held,
}

/// Publishes one connection may have waiting for the hook. Memory is
/// bounded by the hook's global budget (`hook::MAX_WAITING_BYTES`); this
/// only keeps one connection's backlog (and its wait) sane, and leaves room
/// for a client that pipelines a hundred small publishes.
pub(super) const MAX_HOOK_QUEUE: usize = 256;

impl Server {
    /// Sends a connection's next waiting publish to the hook, one at a time
    /// so its publishes stay in order.
    pub(super) fn hook_next(&mut self, id: ConnId) {
        let Some(hook) = &self.hook else { return };
        let Some(slot) = self.slots.get_mut(&id) else { return };
        let Some(state) = &mut slot.hook else { return };
        while !state.busy {
            let Some((append, req_id, held)) = state.queue.pop_front() else { return };
            let body = hook::request_body(
                &append.ch,
                &append.from,
                &append.data,
                req_id.as_deref(),
                append.key.as_deref(),
                append.event.as_deref(),
            );
            let token = state.token.to_string();
            let job = hook::Job { ticket: HookTicket { conn: id, append, id: req_id, held }, token, body };
            match hook.submit(job) {
                Ok(()) => state.busy = true,
                Err(job) => {
                    let e = self.hub.tell(
                        id,
                        Event::Refused {
                            code: ErrCode::Unavailable,
                            msg: "the publish hook is overloaded; retry with the same id",
                        },
                        job.ticket.id.as_deref(),
                    );
                    if !slot.conn.send(e.unwrap_or_default().into(), self.cfg.max_send_buffer_bytes) {
                        slot.conn.discard_queue();
                    }
                    if !slot.dirty {
                        slot.dirty = true;
                        self.dirty.push(id);
                    }
                }
            }
        }
    }

    /// Acts on the main application's answers.
    pub(super) fn collect_hook_verdicts(&mut self) {
        let Some(hook) = &self.hook else { return };
        let verdicts: Vec<(HookTicket, Verdict)> = hook.results().collect();
        for (HookTicket { conn, mut append, id, held }, verdict) in verdicts {
            // The publish is decided: its bytes no longer wait for the hook
            // (an approved one is counted by `commit_later` from here on).
            drop(held);
            let Some(slot) = self.slots.get_mut(&conn) else { continue };
            if let Some(state) = &mut slot.hook {
                state.busy = false;
            }
            match verdict {
                Verdict::Approve(data) => {
                    if let Some(data) = data {
                        append.data = data;
                    }
                    self.commit_later(conn, append, id);
                }
                Verdict::Refuse => {
                    self.refuse(conn, ErrCode::Forbidden, "the application refused this message", id.as_deref());
                }
                Verdict::Unavailable => {
                    self.refuse(
                        conn,
                        ErrCode::Unavailable,
                        "the application did not answer; retry with the same id",
                        id.as_deref(),
                    );
                }
            }
            self.hook_next(conn);
        }
    }
}
