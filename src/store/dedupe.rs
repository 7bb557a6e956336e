//! The dedupe index: where each `(sub, id)` of the window was published, in
//! memory, so a publish with an id writes no record of its own.
//!
//! Why: a dedupe record keyed by `(sub, id)` (the old `dedupe` table) lands
//! on a random B-tree page, and its expiry entry and later deletion on two
//! more, so a commit of k publishes dirtied about 2k pages where the
//! messages themselves fill a few (heedbench at batch 30: 319 KB written per
//! commit with ids, 59 KB without). Now each commit appends one record to
//! the `idlog` table (keyed by time, so always at its right edge) listing
//! the ids it stored, and this index answers lookups. At start it is rebuilt
//! from the log records still inside the window; maintenance deletes whole
//! log records once the last id in them expired, with their index entries.
//! The log does not depend on the messages, so an id stays deduplicated for
//! the whole window even after retention or compaction removed its message.
//!
//! Bounded: at most [`MAX_ENTRIES`] ids in memory (about 21 MiB). At the
//! bound nothing is lost: further ids go to the on-disk `dedupe` table as
//! before (slower, one warning in the log) until entries expire.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;

use super::Seq;

/// Ids held in memory at most: 7/8 of 2^19, the most a table of 2^19
/// buckets of 41 bytes (21 MiB) holds before it would grow again.
pub const MAX_ENTRIES: usize = 458_752;

/// A `(sub, id)` as two independent keyed 64-bit hashes of its dedupe key.
/// Two ids share one only with probability about n² / 2^129 (n ids in
/// memory): never in practice, and the keys are random per process, so
/// nobody can aim for another's id.
pub type Key = (u64, u64);

/// The key of a dedupe key (`sub len u16 | sub | id`) under these hashers.
pub fn key_with(hashers: &(RandomState, RandomState), dkey: &[u8]) -> Key {
    (hashers.0.hash_one(dkey), hashers.1.hash_one(dkey))
}

/// Where an id was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub chan: u64,
    pub seq: Seq,
    pub ts: u64,
}

/// The shared index (behind the store's mutex).
pub struct Index {
    hashers: (RandomState, RandomState),
    map: HashMap<Key, Entry>,
    /// Channel names by id, for the answer to a duplicate: bounded by the
    /// channel count (`--max-channels`).
    names: HashMap<u64, Arc<str>>,
    /// Built from the log (`Store::load_dedupe`).
    pub loaded: bool,
    cap: usize,
    /// The bound was met and said so in the log; reset below half of it.
    pub warned: bool,
}

impl Index {
    pub fn new(cap: usize) -> Index {
        Index {
            hashers: (RandomState::new(), RandomState::new()),
            map: HashMap::new(),
            names: HashMap::new(),
            loaded: false,
            cap,
            warned: false,
        }
    }

    pub fn key(&self, dkey: &[u8]) -> Key {
        key_with(&self.hashers, dkey)
    }

    /// The hash keys, to build entries away from the lock (`absorb`).
    pub fn hashers(&self) -> (RandomState, RandomState) {
        self.hashers.clone()
    }

    /// Ids that still fit under the bound.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.map.len())
    }

    /// Entries built with [`Index::hashers`] (at start, from the log).
    pub fn absorb(&mut self, map: HashMap<Key, Entry>, names: &HashMap<u64, String>) {
        if self.map.is_empty() {
            self.map = map;
        } else {
            self.map.extend(map);
        }
        for (chan, name) in names {
            self.names.entry(*chan).or_insert_with(|| name.as_str().into());
        }
    }

    pub fn get(&self, key: &Key) -> Option<(Entry, Arc<str>)> {
        let e = *self.map.get(key)?;
        Some((e, self.names.get(&e.chan)?.clone()))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Room for `more` ids beyond those held.
    pub fn has_room(&self, more: usize) -> bool {
        self.map.len() + more < self.cap
    }

    /// A committed id (or one read back from the log).
    pub fn insert(&mut self, key: Key, e: Entry, name: &str) {
        self.map.insert(key, e);
        self.names.entry(e.chan).or_insert_with(|| name.into());
    }

    /// Forgets an id whose log record is deleted, unless it was published
    /// again since (then the entry names the newer message).
    pub fn forget(&mut self, key: &Key, e: Entry) {
        if self.map.get(key) == Some(&e) {
            self.map.remove(key);
        }
    }

    /// Gives memory back after a burst (a map never shrinks by itself).
    pub fn shrink(&mut self) {
        if self.map.capacity() > 1024 && self.map.len() < self.map.capacity() / 4 {
            self.map.shrink_to(self.map.len() * 2);
        }
        if self.map.len() < self.cap / 2 {
            self.warned = false;
        }
    }
}

/// The ids one write transaction stored, not yet committed: visible to the
/// transaction's own lookups, merged into the [`Index`] only once it
/// committed, so a failed commit leaves no id behind.
#[derive(Default)]
pub struct Staged {
    pub items: Vec<(Key, Entry, Vec<u8>)>,
    pub names: Vec<(u64, String)>,
    find: HashMap<Key, usize>,
}

impl Staged {
    pub fn get(&self, key: &Key) -> Option<Entry> {
        self.find.get(key).map(|&i| self.items[i].1)
    }

    pub fn push(&mut self, key: Key, e: Entry, dkey: Vec<u8>, ch: &str) {
        self.find.insert(key, self.items.len());
        self.items.push((key, e, dkey));
        if !self.names.iter().any(|(id, _)| *id == e.chan) {
            self.names.push((e.chan, ch.to_string()));
        }
    }

    pub fn name(&self, chan: u64) -> Option<&str> {
        self.names.iter().find(|(id, _)| *id == chan).map(|(_, n)| n.as_str())
    }

    /// Drops what was staged after `mark` items (a nested job that failed).
    pub fn truncate(&mut self, mark: usize) {
        for (key, ..) in self.items.drain(mark..) {
            self.find.remove(&key);
        }
        // A channel that job created is gone with it: its id may be reused.
        let items = &self.items;
        self.names.retain(|(id, _)| items.iter().any(|(_, e, _)| e.chan == *id));
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }
}

/// One log record's value: per id `chan u64 | seq u64 | ts u64 | dedupe key
/// len u16 | dedupe key` (the key as the `dedupe` table's: `sub len u16 |
/// sub | id`).
pub fn encode(items: &[(Key, Entry, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(items.iter().map(|(_, _, d)| 26 + d.len()).sum());
    for (_, e, dkey) in items {
        for n in [e.chan, e.seq, e.ts] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(&(dkey.len() as u16).to_be_bytes());
        v.extend_from_slice(dkey);
    }
    v
}

/// Most bytes of one log record's value: records stay inside leaf pages
/// (LMDB moves a value over about half a 4 KiB page to overflow pages of
/// its own, and a commit then writes and later frees a run of them).
const RECORD_BYTES: usize = 1800;

/// The staged ids in runs that each make one log record of at most
/// `RECORD_BYTES` (or a single id).
pub fn chunks(items: &[(Key, Entry, Vec<u8>)]) -> impl Iterator<Item = &[(Key, Entry, Vec<u8>)]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0, 0);
        while n < rest.len() && (n == 0 || bytes + 26 + rest[n].2.len() <= RECORD_BYTES) {
            bytes += 26 + rest[n].2.len();
            n += 1;
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// The ids of one log record, in order; stops at a damaged tail.
pub fn decode(mut v: &[u8]) -> impl Iterator<Item = (Entry, &[u8])> {
    std::iter::from_fn(move || {
        let n = |at: usize| Some(u64::from_be_bytes(v.get(at..at + 8)?.try_into().ok()?));
        let e = Entry { chan: n(0)?, seq: n(8)?, ts: n(16)? };
        let len = u16::from_be_bytes(v.get(24..26)?.try_into().ok()?) as usize;
        let dkey = v.get(26..26 + len)?;
        v = &v[26 + len..];
        Some((e, dkey))
    })
}

/// A log record's key: `expires u64 | chan u64 | seq u64`, the latest expiry
/// of its ids and the first id's message (unique: a message is logged once).
pub fn log_key(expires: u64, first: Entry) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&expires.to_be_bytes());
    k[8..16].copy_from_slice(&first.chan.to_be_bytes());
    k[16..].copy_from_slice(&first.seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_record_reads_back_as_written_and_a_cut_tail_is_dropped() {
        let a = Entry { chan: 1, seq: 2, ts: 3 };
        let b = Entry { chan: 4, seq: 5, ts: 6 };
        let v = encode(&[((0, 0), a, b"\x00\x01ux".to_vec()), ((0, 1), b, b"\x00\x01vyy".to_vec())]);
        let back: Vec<_> = decode(&v).collect();
        assert_eq!(back, vec![(a, &b"\x00\x01ux"[..]), (b, &b"\x00\x01vyy"[..])]);
        assert_eq!(decode(&v[..v.len() - 1]).count(), 1);
    }

    #[test]
    fn staged_ids_are_logged_in_records_that_fit_a_leaf_page() {
        let item = |i: u64| ((i, i), Entry { chan: 1, seq: i, ts: 0 }, vec![b'x'; 74]);
        let items: Vec<_> = (0..50).map(item).collect();
        let sizes: Vec<usize> = chunks(&items).map(|c| encode(c).len()).collect();
        assert_eq!(sizes, vec![1800, 1800, 1400], "18 ids of 100 bytes a record");
        let huge = [((0, 0), Entry { chan: 1, seq: 1, ts: 0 }, vec![b'x'; 4000])];
        assert_eq!(chunks(&huge).count(), 1, "one id alone, whatever its size");
        assert_eq!(chunks(&[]).count(), 0);
    }

    #[test]
    fn a_forgotten_id_published_again_keeps_its_new_place() {
        let mut ix = Index::new(10);
        let k = ix.key(b"x");
        let (old, new) = (Entry { chan: 1, seq: 1, ts: 1 }, Entry { chan: 1, seq: 9, ts: 9 });
        ix.insert(k, new, "c");
        ix.forget(&k, old);
        assert_eq!(ix.get(&k).map(|(e, n)| (e, n.to_string())), Some((new, "c".to_string())));
        ix.forget(&k, new);
        assert_eq!(ix.get(&k), None);
        assert_ne!(ix.key(b"x"), ix.key(b"y"));
    }
}
