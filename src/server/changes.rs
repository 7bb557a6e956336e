//! Presence and occupancy (spec §7, §9) between the hub and the writer:
//! each `hub::Change` goes to the writer with the webhook event it causes,
//! as one job (the event commits with its cause or not at all), and its
//! result comes back to the hub, which tells the channel's other
//! subscribers `join` or `leave` only then. Also the webhook's view of the
//! store's outbox.

use super::*;
use crate::hub::Change;
use crate::store::HookEvent;
use crate::webhook::Outbox;
use crate::writer::OutboxHandle;
use commits::Ticket;

impl Server {
    /// Queues the hub's presence and occupancy changes for this turn's
    /// commit, each followed by its webhook event when one is wanted.
    pub(super) fn queue_changes(&mut self) {
        if self.cluster.is_some() {
            return self.publish_changes();
        }
        for change in self.hub.take_changes() {
            let (write, name, ch, user) = match &change {
                Change::Member { ch, user, info, present } => (
                    Write::Member {
                        ch: ch.to_string(),
                        user: user.to_string(),
                        info: info.as_deref().map(str::to_string),
                        joined: *present,
                    },
                    if *present { "member_added" } else { "member_removed" },
                    ch.to_string(),
                    Some(user.to_string()),
                ),
                Change::Occupancy { ch, occupied } => (
                    Write::Occupancy { ch: ch.to_string(), occupied: *occupied },
                    if *occupied { "channel_occupied" } else { "channel_vacated" },
                    ch.to_string(),
                    None,
                ),
            };
            self.pending.push((Ticket::change(change), write));
            if self.cfg.webhook_sends(name) {
                let event = HookEvent { name: name.into(), channel: ch, user_id: user, extra: String::new() };
                self.pending.push((Ticket::event(), Write::Event(event)));
            }
        }
    }

    /// A change's commit came back (`ok`: committed): the hub's `join` or
    /// `leave` for the channel's other subscribers.
    pub(super) fn on_change_written(&mut self, change: &Change, ok: bool, now: Instant) {
        for (text, to) in self.hub.on_written(change, ok, now) {
            let frame = Frame::from(text);
            for conn in to {
                self.send(conn, frame.clone());
            }
        }
    }

    /// Members and occupied channels the store held before this start:
    /// present for `--presence-restart-grace`, so a member who reconnects
    /// in time is never reported gone, and one who does not is, once.
    pub(super) fn restore_presence(&mut self, now: Instant) {
        if self.cluster.is_some() {
            return self.restore_held(now);
        }
        let hub = &mut self.hub;
        let restored = self.store.members(|ch, user, info| {
            hub.restore_member(ch, user, Some(info).filter(|i| !i.is_empty()), now);
        });
        if let Err(e) = restored {
            log::error!("reading the stored presence members failed ({e}); they are not restored");
        }
        if self.cfg.webhook.is_some() {
            if let Err(e) = self.store.occupied(|ch| hub.restore_occupied(ch, now)) {
                log::error!("reading the stored occupied channels failed ({e}); they are not restored");
            }
        }
        let members = self.hub.member_count();
        if members > 0 {
            log::info!("{members} presence members restored; those not back within the restart grace will leave");
        }
    }
}

/// The store's outbox as the webhook thread reads it: reads go to LMDB
/// directly, removals through the writer thread.
pub(super) struct StoreOutbox {
    pub(super) store: Store,
    pub(super) handle: OutboxHandle,
}

impl Outbox for StoreOutbox {
    fn pending(
        &self,
        after: u64,
        limit: usize,
        each: &mut dyn FnMut(u64, u64, &str, &str) -> bool,
    ) -> Result<(), String> {
        self.store.outbox(after, limit, |e| each(e.n, e.created_ms, e.channel, e.json)).map_err(|e| e.to_string())
    }

    fn len_after(&self, after: u64) -> Result<u64, String> {
        // Removals may still be queued for the writer: count what is at or
        // below `after` first, then the total, so the answer never counts
        // an event twice (too many pending would drop events early).
        let mut done = 0u64;
        self.store
            .outbox(0, usize::MAX, |e| {
                done += u64::from(e.n <= after);
                e.n <= after
            })
            .map_err(|e| e.to_string())?;
        Ok(self.store.outbox_len().map_err(|e| e.to_string())?.saturating_sub(done))
    }

    fn remove(&self, ns: Vec<u64>) {
        self.handle.remove(ns)
    }
}
