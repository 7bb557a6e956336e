//! The stored history as the hub reads it: the `History` trait (implemented
//! by `Store`, and in tests by an in-memory fake that can fail), and pages
//! of it, shared by the `hist` request and the HTTP API.

use super::{Dialect, Event, Msg, Page};
use crate::channel::Seq;
use crate::store::{ChannelInfo, Record, Store, StoreError};

/// Where a channel stands and its messages in seq order. Generic
/// (`&impl History`), so the server's reads of the real `Store` are direct
/// calls.
pub trait History {
    /// Where a channel stands; `ChannelInfo::EMPTY` for one never published to.
    fn channel(&self, ch: &str) -> Result<ChannelInfo, StoreError>;

    /// Calls `each` for stored messages of `ch` with seq > `after`, in order,
    /// until it returns false or `limit` messages were given. Returns the
    /// channel's state as of this read. An error may come after some
    /// messages were given.
    fn read(
        &self,
        ch: &str,
        after: Seq,
        limit: usize,
        each: impl FnMut(Record<'_>) -> bool,
    ) -> Result<ChannelInfo, StoreError>;

    /// The seq before the channel's `n`th newest stored message, so that
    /// reading after it gives the last `n` (spec §8 `last`). This default
    /// assumes no holes; a store with compacted channels answers exactly.
    fn tail(&self, ch: &str, n: u32) -> Result<Seq, StoreError> {
        let info = self.channel(ch)?;
        Ok(info.last.saturating_sub(u64::from(n)).max(info.first.saturating_sub(1)))
    }

    /// Whether message `seq` of `ch` is still stored.
    fn holds(&self, ch: &str, seq: Seq) -> Result<bool, StoreError> {
        let mut found = false;
        self.read(ch, seq.saturating_sub(1), 1, |r| {
            found = r.seq == seq;
            false
        })?;
        Ok(found)
    }
}

/// A stored record as the hub's message.
pub fn msg<'a>(ch: &'a str, r: &Record<'a>) -> Msg<'a> {
    Msg { ch, seq: r.seq, ts: r.ts, from: r.from, data: r.data, key: r.key, event: r.event }
}

impl History for Store {
    fn channel(&self, ch: &str) -> Result<ChannelInfo, StoreError> {
        Store::channel(self, ch)
    }

    fn read(
        &self,
        ch: &str,
        after: Seq,
        limit: usize,
        each: impl FnMut(Record<'_>) -> bool,
    ) -> Result<ChannelInfo, StoreError> {
        Store::read(self, ch, after, limit, each)
    }

    fn tail(&self, ch: &str, n: u32) -> Result<Seq, StoreError> {
        Store::tail(self, ch, n as usize)
    }
}

/// Appends the messages after `since`, written by `dialect`, to `out`,
/// comma-separated: at most `limit` of them, and stopping once `out` passes
/// `max_bytes`.
pub fn page(
    store: &impl History,
    ch: &str,
    since: Seq,
    limit: usize,
    max_bytes: usize,
    dialect: &dyn Dialect,
    out: &mut String,
) -> Result<Page, StoreError> {
    let mut last_sent = since;
    let mut first = true;
    let info = store.read(ch, since, limit, |r| {
        if !first {
            out.push(',');
        }
        first = false;
        dialect.write(out, &Event::Message(msg(ch, &r)), None);
        last_sent = r.seq;
        out.len() < max_bytes
    })?;
    // Past trimmed seqs nothing is left to page through: `more` counts from
    // the oldest stored message.
    let seen = last_sent.max(info.first.saturating_sub(1));
    Ok(Page { more: seen < info.last, gap: since.saturating_add(1) < info.first || since > info.last })
}
