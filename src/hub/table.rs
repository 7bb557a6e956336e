//! `IdTable`: per-connection records in a slab, found by `ConnId`.
//!
//! A `ConnId` is a place in the table (its low `INDEX_BITS`) and a serial
//! above it. The server hands out places, the last freed first, so the
//! table is as long as the most connections ever held at once; the serial
//! makes each id new, so a late commit result or a stale readiness event
//! for a closed connection never finds the connection that took its place.
//! The hub's table follows the server's places. Records are stored inline,
//! in chunks that never move: no box and no hash entry per connection, and
//! no half-empty copy left behind when the table grows.

use super::ConnId;

/// The low bits of a `ConnId`: its place. On a 32-bit target 21 bits hold
/// more places than a process has descriptors, and the 11 bits of serial
/// above wrap after 2,048 connections; a place is then the same id again
/// only if it is reused at exactly that stride while a result for its old
/// connection is still on its way.
const INDEX_BITS: u32 = if usize::BITS >= 64 { 32 } else { 21 };
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
/// Records per chunk.
const CHUNK: usize = 64;

type Chunk<V> = Box<[Option<(ConnId, V)>]>;

/// Records keyed by `ConnId`, stored by place.
pub struct IdTable<V> {
    chunks: Vec<Chunk<V>>,
    len: usize,
    /// Places past every one used so far.
    end: usize,
    /// Freed places, the last freed on top; kept only by a table that hands
    /// out ids (`IdTable::handing_out`), not by one that follows them.
    free: Option<Vec<u32>>,
}

impl<V> Default for IdTable<V> {
    fn default() -> IdTable<V> {
        IdTable { chunks: Vec::new(), len: 0, end: 0, free: None }
    }
}

fn place(id: ConnId) -> usize {
    id & INDEX_MASK
}

impl<V> IdTable<V> {
    /// A table that hands out ids (`IdTable::vacant_id`).
    pub fn handing_out() -> IdTable<V> {
        IdTable { free: Some(Vec::new()), ..IdTable::default() }
    }

    /// The id the next record gets, made with `serial` (at least 1, so no
    /// id is below `1 << INDEX_BITS`): a freed place, else a new one. `None`
    /// when every place is taken.
    pub fn vacant_id(&self, serial: usize) -> Option<ConnId> {
        let at = self.free.as_ref().and_then(|f| f.last()).map_or(self.end, |&i| i as usize);
        let serial = (serial & (usize::MAX >> INDEX_BITS)).max(1);
        (at <= INDEX_MASK).then_some(serial << INDEX_BITS | at)
    }

    fn entry(&self, id: ConnId) -> Option<&Option<(ConnId, V)>> {
        let at = place(id);
        self.chunks.get(at / CHUNK).map(|c| &c[at % CHUNK])
    }

    fn entry_mut(&mut self, id: ConnId) -> Option<&mut Option<(ConnId, V)>> {
        let at = place(id);
        self.chunks.get_mut(at / CHUNK).map(|c| &mut c[at % CHUNK])
    }

    pub fn get(&self, id: &ConnId) -> Option<&V> {
        match self.entry(*id)? {
            Some((held, v)) if held == id => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, id: &ConnId) -> Option<&mut V> {
        match self.entry_mut(*id)? {
            Some((held, v)) if held == id => Some(v),
            _ => None,
        }
    }

    pub fn contains_key(&self, id: &ConnId) -> bool {
        self.get(id).is_some()
    }

    /// Stores `v` at `id`'s place (replacing what was there).
    pub fn insert(&mut self, id: ConnId, v: V) {
        let at = place(id);
        while self.chunks.len() <= at / CHUNK {
            self.chunks.push((0..CHUNK).map(|_| None).collect());
        }
        if let Some(free) = &mut self.free {
            if let Some(i) = free.iter().rposition(|&i| i as usize == at) {
                free.swap_remove(i);
            }
        }
        self.end = self.end.max(at + 1);
        let entry = &mut self.chunks[at / CHUNK][at % CHUNK];
        if entry.is_none() {
            self.len += 1;
        }
        *entry = Some((id, v));
    }

    pub fn remove(&mut self, id: &ConnId) -> Option<V> {
        let entry = self.entry_mut(*id)?;
        if entry.as_ref().is_none_or(|(held, _)| held != id) {
            return None;
        }
        let (_, v) = entry.take()?;
        self.len -= 1;
        if let Some(free) = &mut self.free {
            free.push(place(*id) as u32);
        }
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.chunks.iter().flat_map(|c| c.iter()).flatten().map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ConnId, &V)> + '_ {
        self.chunks.iter().flat_map(|c| c.iter()).flatten().map(|(id, v)| (id, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&ConnId, &mut V)> + '_ {
        self.chunks.iter_mut().flat_map(|c| c.iter_mut()).flatten().map(|(id, v)| (&*id, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_place_is_reused_under_a_new_id_that_the_old_one_does_not_find() {
        let mut t = IdTable::handing_out();
        let a = t.vacant_id(1).unwrap();
        t.insert(a, "a");
        let b = t.vacant_id(2).unwrap();
        t.insert(b, "b");
        assert_ne!(place(a), place(b));
        assert_eq!(t.remove(&a), Some("a"));
        let c = t.vacant_id(3).unwrap();
        assert_eq!(place(c), place(a), "the freed place is taken again");
        t.insert(c, "c");
        assert_eq!(t.get(&a), None, "the old id does not find the new record");
        assert_eq!(t.remove(&a), None);
        assert_eq!((t.get(&b), t.get(&c), t.len()), (Some(&"b"), Some(&"c"), 2));
        assert_eq!(t.values().count(), 2);
        assert_eq!(t.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [c, b]);
        assert!(a >= 1 << INDEX_BITS, "ids stay clear of the loop's own tokens");
    }

    #[test]
    fn a_following_table_holds_records_at_the_places_it_is_given() {
        let mut t = IdTable::default();
        for id in [3usize, 200, 1] {
            t.insert(id, id * 10);
        }
        t.insert(200, 7);
        assert_eq!((t.get(&200), t.get(&3), t.get(&2), t.len()), (Some(&7), Some(&30), None, 3));
        for (_, v) in t.iter_mut() {
            *v += 1;
        }
        assert_eq!(t.remove(&3), Some(31));
        assert!(!t.contains_key(&3) && t.contains_key(&1));
    }
}
