//! Writing out: a connection just read is flushed at once, the others that
//! got output at the end of the turn.
//!
//! At once, because what a read makes (the 101 and its buffers, a reply's
//! frame and queue) is freed as soon as it is written: a thousand
//! handshakes read in one turn then reuse the same few blocks one after
//! another, where holding each until the end of the turn left a thousand
//! answers' worth of holes between the long-lived records (B1 in
//! docs/benchmarks.md). The syscalls are the same: a connection's replies
//! to what it sent still go out in one write.

use super::*;

impl Server {
    /// Queues `id` for the flush at the end of the turn, once.
    pub(super) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.mark_dirty(id, &mut self.dirty);
        }
    }

    /// A writable edge: flushed when output waits for it. A socket that
    /// got its ACKs with nothing queued (every subscriber after its
    /// delivery) is not visited again.
    pub(super) fn on_writable(&mut self, id: ConnId) {
        if self.slots.get(&id).is_some_and(|slot| slot.conn.wants_write() || slot.conn.buffers_own_output()) {
            self.mark_dirty(id);
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        while !dirty.is_empty() {
            for &id in &dirty {
                // Not dirty any more: flushed this turn already, just after its read.
                if self.slots.get(&id).is_some_and(|slot| slot.dirty) {
                    self.flush_conn(id);
                }
            }
            // Then those marked while flushing, if any.
            dirty.clear();
            std::mem::swap(&mut dirty, &mut self.dirty);
        }
        self.dirty = dirty;
    }

    /// Writes what `id` has queued; removes it once closed.
    pub(super) fn flush_conn(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        slot.dirty = false;
        slot.conn.flush();
        if slot.conn.phase() == Phase::Closed {
            self.remove(id);
        } else {
            if slot.conn.take_unblocked() {
                self.again.push(id);
            }
            slot.schedule(id, &mut self.timers);
        }
    }
}
