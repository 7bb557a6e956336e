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
    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for id in dirty.drain(..) {
            self.flush_conn(id);
        }
        self.dirty = dirty;
    }

    /// Writes what `id` has queued; removes it once closed.
    pub(super) fn flush_conn(&mut self, id: ConnId) {
        let Some(slot) = self.slots.get_mut(&id) else { return };
        slot.conn.flush();
        if slot.conn.phase() == Phase::Closed {
            self.remove(id);
        } else {
            if slot.conn.take_unblocked() {
                self.again.push(id);
            }
            self.schedule(id);
        }
    }
}
