//! The durable store: channels, messages and dedupe records in one LMDB
//! environment, through `heed`.
//!
//! Why LMDB: a commit that has returned is on disk (`fsync`), and a crash at
//! any moment leaves the last committed state readable — copy-on-write pages
//! and a two-slot meta page, no log to replay, no repair step. That is the
//! whole durability story of roostd: nothing is acked or delivered before the
//! write transaction holding it has committed.
//!
//! Layout (all keys big-endian so LMDB's byte order is numeric order):
//! - `meta`:     `epoch` → text (new for a backup copy); `next_chan` → u64;
//!   `clock` → u64, the clock floor in ms (spec §10); `due_rules` → the
//!   retention rules the `due` index was built for.
//! - `channels`: name → `id u64 | first u64 | last u64`, plus
//!   `| holes u64 | keys u64` once a compacted channel has keys or holes (a
//!   record without them reads as 0 and 0). `first` is the oldest seq readers
//!   see (`last + 1` when everything was trimmed): messages before it are
//!   trimmed, though count retention deletes them in runs (`hidden_run`);
//!   `holes` counts the seqs between `first` and `last` whose message
//!   compaction removed. A record is
//!   never removed, so seqs never repeat under one epoch; LMDB's own entry
//!   count of this table is the channel count `--max-channels` bounds.
//! - `due`:      `due_ms u64 | chan id u64` → name: one entry per channel that
//!   stores messages, at or before the time its oldest message passes the
//!   age limit, so maintenance visits only channels with something to trim.
//! - `messages`: `chan id u64 | seq u64` → `ts u64 | from len u16 | from | data`,
//!   or, for a message with a key or an event name,
//!   `ts u64 | from len u16 | from | 0x00 | key len u8 | key | event len u16 | event | data`.
//!   `data` is JSON text, which never starts with a NUL byte, so the marker
//!   tells the two apart and a store written before keys existed reads as is;
//!   a message without key or event costs no byte more than before.
//! - `idlog`:    `expires u64 | chan id u64 | seq u64` → the ids one commit
//!   stored (`store/dedupe.rs`): one record per commit at the table's right
//!   edge, read back into the in-memory dedupe index at start, deleted whole
//!   once its last id expired.
//! - `dedupe`:   `sub len u16 | sub | id` → `seq u64 | ts u64 | expires u64 | ch`:
//!   ids of a store from before `idlog`, and ids past the in-memory bound.
//! - `expiry`:   `expires u64 | dedupe key` → empty, to expire in time order.
//! - `keys`:     `chan id u64 | key` → `seq u64`, the latest message of each
//!   live key of a compacted channel (spec §8). Only compacted channels have
//!   entries; their channel record then carries `holes` and the key count.
//! - `tombs`:    `expires u64 | chan id u64 | key` → `seq u64 | ch`: tombstones
//!   (`data` exactly `null`) in expiry order; the key goes once it passes.
//! - `members`:  `ch | 0x00 | user` → info (JSON object text, or empty): presence
//!   members (spec §7), read back at start.
//! - `occupied`: ch → empty: occupied channels, stored while `--webhook` is set (spec §9).
//! - `outbox`:   `n u64` → `created_ms u64 | ch len u16 | ch | event JSON`: webhook
//!   events, committed with their cause, removed after delivery; `meta`
//!   `outbox_next` → u64 is the next `n`.
//!
//! Reads run on the event loop thread in short read transactions (LMDB
//! readers never block and never wait for the writer); writes run on the
//! writer thread (`writer.rs`). Both share one `Store` value: `heed::Env`
//! and the database handles are cheap to clone and thread-safe.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use heed::types::Bytes;
use heed::{CompactionOption, Database, Env, EnvFlags, EnvOpenOptions, MdbError, PutFlags, RoTxn, RwTxn};

pub use crate::channel::Seq;
pub use dedupe::MAX_ENTRIES as MAX_DEDUPE_IDS_IN_MEMORY;

mod dedupe;

/// Where a channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Oldest seq readers see; `last + 1` when nothing is. Older messages
    /// may still be stored until count retention deletes them in a run.
    pub first: Seq,
    /// Seq of the newest message ever committed; 0 for a new channel.
    pub last: Seq,
    /// Seqs after `first` whose message is gone (compaction, spec §8): 0 on
    /// ordinary channels.
    pub holes: u64,
}

impl ChannelInfo {
    pub const EMPTY: ChannelInfo = ChannelInfo { first: 1, last: 0, holes: 0 };

    /// Messages still stored.
    pub fn count(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first).saturating_sub(self.holes)
    }
}

/// A stored message, borrowed from the read transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub seq: Seq,
    pub ts: u64,
    pub from: &'a str,
    pub data: &'a str,
    /// The message's key (spec §8), if it has one.
    pub key: Option<&'a str>,
    /// The event name a Pusher client gave it, if any.
    pub event: Option<&'a str>,
}

/// A message to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub ch: String,
    /// The publisher's token `sub`.
    pub from: String,
    /// The message's `data`, as JSON text.
    pub data: String,
    /// The request id as JSON text, when the publisher gave one: `(from, id)`
    /// is then published at most once within the dedupe window.
    pub id: Option<String>,
    /// The message's key (spec §8): on a compacted channel it replaces the
    /// key's previous message.
    pub key: Option<String>,
    /// An event name (the Pusher protocol's `event`), stored and delivered.
    pub event: Option<String>,
}

/// One item of a writer job: everything the group commit writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Message(Append),
    /// Presence (spec §7): `user` became a member of `ch` with `info` (JSON object text), or stopped.
    Member {
        ch: String,
        user: String,
        info: Option<String>,
        joined: bool,
    },
    /// Occupancy (spec §9), stored only while --webhook is set.
    Occupancy {
        ch: String,
        occupied: bool,
    },
    /// A webhook event, committed with its cause (same job => same commit).
    Event(HookEvent),
    /// A message of the cluster's stream (cluster.md): stored exactly as
    /// `Message`, but at JetStream's time `ts_ms` (so every node has the
    /// same `ts` and dedupe window), and `stream_seq` recorded as the last
    /// applied in the same transaction. `after` is the sequence applied
    /// before it: if the store's is another (a commit before this one
    /// failed), nothing is written and the outcome is `Outcome::Invalid`
    /// with [`OUT_OF_ORDER`], so a failed commit never leaves a hole.
    Applied {
        append: Append,
        stream_seq: u64,
        ts_ms: u64,
        after: u64,
    },
    /// A presence record of the cluster's stream (cluster.md), applied in
    /// order like `Applied`: `hold.node` holds (or no longer) a member or a
    /// channel's occupancy. When that makes the member or channel appear
    /// or disappear cluster-wide, the webhook events named in `hooks`
    /// ([`HOOK_MEMBER_ADDED`], ...) are put in the outbox in the same
    /// transaction: only the node that published the record asks for any.
    Held {
        hold: Holding,
        stream_seq: u64,
        after: u64,
        hooks: u8,
    },
    /// Every holding of `node` released (it fell silent), the same way.
    Gone {
        node: String,
        stream_seq: u64,
        after: u64,
        hooks: u8,
    },
}

impl Write {
    /// A record of the cluster's stream, applied in stream order.
    pub fn is_applied(&self) -> bool {
        matches!(self, Write::Applied { .. } | Write::Held { .. } | Write::Gone { .. })
    }
}

/// One node's holding in cluster mode (cluster.md): `user` is a member of
/// presence channel `ch` through `node` (`None`: `node` has subscribers
/// of `ch`, for occupancy), with `info` (JSON object text); `on` false
/// when it let go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub ch: String,
    pub user: Option<String>,
    pub node: String,
    pub info: Option<String>,
    pub on: bool,
}

/// The length of a cluster node's name: its holdings' keys end with it.
pub const NODE_BYTES: usize = 12;
/// Bits of `Write::Held::hooks` and `Write::Gone::hooks`.
pub const HOOK_MEMBER_ADDED: u8 = 1;
pub const HOOK_MEMBER_REMOVED: u8 = 2;
pub const HOOK_CHANNEL_OCCUPIED: u8 = 4;
pub const HOOK_CHANNEL_VACATED: u8 = 8;

/// The `Outcome::Invalid` of a `Write::Applied` that does not follow the
/// store's last applied sequence: consume the stream again from there.
pub const OUT_OF_ORDER: &str = "a stream message out of order";

/// A webhook event to put in the outbox (spec §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    pub name: String,
    pub channel: String,
    pub user_id: Option<String>,
    /// Extra members of the event object as JSON text without braces,
    /// e.g. `"event":"client-typing","data":"{}"` (Pusher's client_event), or empty.
    pub extra: String,
}

/// A webhook event waiting in the outbox, borrowed from the read transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxEvent<'a> {
    /// Its place in the outbox: events are numbered in commit order.
    pub n: u64,
    pub created_ms: u64,
    pub channel: &'a str,
    /// The complete event object: `{"id":"<epoch>-<n>","name":...,"channel":...}`.
    pub json: &'a str,
}

/// What became of one `Append` in a committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now under this seq.
    Stored { seq: Seq, ts: u64 },
    /// The `(from, id)` was already published within the window: the
    /// original channel, seq and time; nothing new was stored.
    Duplicate { ch: String, seq: Seq, ts: u64 },
    /// LMDB refused this item's content (`StoreError::Content`): nothing of
    /// it was stored, the rest of its batch was. The edge checks keep every
    /// size within LMDB's limits, so this means one of them is missing; the
    /// publisher gets `bad_request`.
    Invalid(String),
    /// Not stored: it would pass this limit. The rest of the batch is unaffected.
    OverLimit(Limit),
    /// A member, occupancy or event item was written.
    Written,
}

/// Options of `Store::commit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Commit<'a> {
    /// Save this clock floor (ms) with the batch. The writer passes one only
    /// while the kernel reports the clock synchronized (spec §10).
    pub floor: Option<u64>,
    /// One nested transaction per job (see `jobs`), so a job LMDB refuses
    /// fails alone, all of it: an event never commits without its cause.
    pub isolate: bool,
    /// The batch's items in jobs of these lengths, in order (items past
    /// their sum are one job each). Only `isolate` looks at it.
    pub jobs: &'a [usize],
    /// Outbox events to remove in the same transaction (delivered ones).
    pub removed: &'a [u64],
}

/// A limit of the store that one append of a batch would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// It would create a channel past `--max-channels`: publish to an
    /// existing channel, or raise the limit.
    Channels,
    /// It would make a key past `--max-keys` on a compacted channel: delete
    /// a key (a tombstone) or raise the limit.
    Keys,
}

/// Retention limits of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub messages: u64,
    pub age_ms: u64,
}

/// A store failure, classified by what the caller must do: space
/// (`Full`, `NoSpace`: transient), content (`Content`: one item's fault),
/// or a broken environment (`Corrupt`, `Fatal`: stop).
#[derive(Debug)]
pub enum StoreError {
    /// The map is full: refuse writes (`unavailable`), keep serving reads;
    /// writes work again once retention frees pages.
    Full,
    /// The disk is full (ENOSPC), or one commit needs more pages than a
    /// transaction may hold: same handling as `Full`.
    NoSpace,
    /// LMDB refused what a batch holds (a key over 511 bytes, an empty key,
    /// a key that must not exist): the environment is fine. Retry the
    /// batch's items one by one (`append_batch` with `isolate`) so only the
    /// offending one fails.
    Content(String),
    /// The files are not a readable LMDB store: move them aside or refuse to start.
    Corrupt(String),
    /// Another process owns the data folder.
    Locked(String),
    /// Anything else, I/O errors on sync included: the environment can no
    /// longer be trusted; the server stops (exit 1) rather than retry.
    Fatal(String),
}

impl StoreError {
    /// True when writes may work again later without restarting.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Full | StoreError::NoSpace)
    }

    /// True when the disk or the environment is broken: the server stops.
    /// Space and content errors never stop it.
    pub fn is_fatal(&self) -> bool {
        !self.is_transient() && !matches!(self, StoreError::Content(_))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full => f.write_str("the store is full (max-store-bytes reached)"),
            StoreError::NoSpace => f.write_str("the disk is full"),
            StoreError::Content(m) => write!(f, "the store refused a message: {m}"),
            StoreError::Corrupt(m) => write!(f, "the store is unreadable: {m}"),
            StoreError::Locked(m) => f.write_str(m),
            StoreError::Fatal(m) => write!(f, "store failure: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> StoreError {
        match e {
            heed::Error::Mdb(MdbError::MapFull) => StoreError::Full,
            // Too many dirty pages in one transaction: a smaller commit works.
            heed::Error::Mdb(MdbError::TxnFull) => StoreError::NoSpace,
            // What was asked is wrong, not the environment: LMDB checks these
            // before it changes a page, and the transaction is aborted anyway.
            heed::Error::Mdb(MdbError::BadValSize | MdbError::KeyExist) => StoreError::Content(e.to_string()),
            // After a failed write LMDB refuses everything on this environment.
            heed::Error::Mdb(MdbError::Panic) => StoreError::Fatal(e.to_string()),
            heed::Error::Mdb(
                MdbError::Corrupted | MdbError::Invalid | MdbError::VersionMismatch | MdbError::PageNotFound,
            ) => StoreError::Corrupt(e.to_string()),
            heed::Error::Io(ref io) if io.raw_os_error() == Some(libc::ENOSPC) => StoreError::NoSpace,
            e => StoreError::Fatal(e.to_string()),
        }
    }
}

type Db = Database<Bytes, Bytes>;

/// The store. Clone it to share between the loop and the writer thread.
#[derive(Clone)]
pub struct Store {
    env: Env,
    meta: Db,
    channels: Db,
    messages: Db,
    dedupe: Db,
    expiry: Db,
    idlog: Db,
    /// Where each id of the window was published (`store/dedupe.rs`).
    ids: Arc<Mutex<dedupe::Index>>,
    due: Db,
    keys: Db,
    tombs: Db,
    members: Db,
    occupied: Db,
    outbox: Db,
    epoch: String,
    /// A publish that would create a channel past this many is refused.
    max_channels: u64,
    /// Which channels are compacted (spec §8); none unless the writer says.
    compact: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// A keyed publish that would make a compacted channel hold more live keys is refused.
    max_keys: u64,
}

/// Holds the data folder for this process; dropping it releases the folder.
#[derive(Debug)]
pub struct Ownership {
    _file: File,
}

/// Claims the data folder so a second server cannot open the same store.
/// LMDB itself allows several writers' processes, so without this two
/// servers would interleave seqs.
pub fn claim(dir: &Path) -> Result<Ownership, StoreError> {
    let path = dir.join("roostd.pid");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(&path)
        .map_err(|e| StoreError::Fatal(format!("cannot open {}: {e}", path.display())))?;
    // An advisory lock on our own descriptor: the kernel drops it when the
    // process dies, so a SIGKILLed server never leaves the folder locked.
    if file.try_lock().is_err() {
        let holder = fs::read_to_string(&path).unwrap_or_default();
        let holder = holder.trim();
        let who = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
        return Err(StoreError::Locked(format!(
            "the data folder {} is in use by {who}; stop that server or pass another --data",
            dir.display()
        )));
    }
    file.set_len(0).ok();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(Ownership { _file: file })
}

impl Store {
    /// Opens (or creates) the store in `dir`. `max_bytes` is the LMDB map
    /// size: address space reserved up front, while the file grows with use.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::Fatal(format!("cannot create {}: {e}", dir.display())))?;
        let file = dir.join("data.mdb");
        let existed = fs::metadata(&file).map(|m| Some(m.len())).unwrap_or(None);
        if existed == Some(0) {
            // LMDB would quietly start a new store over it; an empty file
            // where a store was is damage, not a fresh start.
            return Err(StoreError::Corrupt(format!("{} is empty", file.display())));
        }
        let env = open_env(dir, max_bytes, EnvFlags::empty())?;
        // A file shorter than the pages its meta page names would fault
        // (SIGBUS) on the first read of a missing page: refuse it here.
        if existed.is_some() {
            let needed = (env.info().last_page_number as u64 + 1) * env.stat().page_size as u64;
            // Measured after reading the meta page: a live server (for
            // `backup`) writes a commit's pages before its meta page, so the
            // file is never shorter than the meta it shows.
            let len = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            if len < needed {
                return Err(StoreError::Corrupt(format!(
                    "{} is {len} bytes but its pages need {needed}: it was cut short",
                    file.display()
                )));
            }
        }
        let mut wtxn = env.write_txn()?;
        let meta: Db = env.create_database(&mut wtxn, Some("meta"))?;
        let channels: Db = env.create_database(&mut wtxn, Some("channels"))?;
        let messages: Db = env.create_database(&mut wtxn, Some("messages"))?;
        let dedupe: Db = env.create_database(&mut wtxn, Some("dedupe"))?;
        let expiry: Db = env.create_database(&mut wtxn, Some("expiry"))?;
        let idlog: Db = env.create_database(&mut wtxn, Some("idlog"))?;
        let due: Db = env.create_database(&mut wtxn, Some("due"))?;
        let keys: Db = env.create_database(&mut wtxn, Some("keys"))?;
        let tombs: Db = env.create_database(&mut wtxn, Some("tombs"))?;
        let members: Db = env.create_database(&mut wtxn, Some("members"))?;
        let occupied: Db = env.create_database(&mut wtxn, Some("occupied"))?;
        let outbox: Db = env.create_database(&mut wtxn, Some("outbox"))?;
        let epoch = match meta.get(&wtxn, b"epoch")? {
            Some(e) => String::from_utf8_lossy(e).into_owned(),
            None => {
                let e = new_epoch();
                meta.put(&mut wtxn, b"epoch", e.as_bytes())?;
                e
            }
        };
        wtxn.commit()?;
        Ok(Store {
            env,
            meta,
            channels,
            messages,
            dedupe,
            expiry,
            idlog,
            ids: Arc::new(Mutex::new(dedupe::Index::new(dedupe::MAX_ENTRIES))),
            due,
            keys,
            tombs,
            members,
            occupied,
            outbox,
            epoch,
            max_channels: u64::MAX,
            compact: Arc::new(|_| false),
            max_keys: u64::MAX,
        })
    }

    /// This handle compacts the channels `compact` names (spec §8), with at
    /// most `max_keys` live keys each. Writes only: reads need no rule.
    pub fn with_compaction(mut self, compact: Arc<dyn Fn(&str) -> bool + Send + Sync>, max_keys: u64) -> Store {
        self.compact = compact;
        self.max_keys = max_keys;
        self
    }

    /// At most `n` ids in the in-memory dedupe index (tests: the bound's
    /// behaviour without half a million publishes). Before any clone.
    pub fn with_dedupe_memory(mut self, n: usize) -> Store {
        self.ids = Arc::new(Mutex::new(dedupe::Index::new(n)));
        self
    }

    /// This handle refuses appends that would create more than `n` channels.
    pub fn with_max_channels(mut self, n: u64) -> Store {
        self.max_channels = n;
        self
    }

    /// Channels in the store, emptied ones included.
    pub fn channel_count(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(self.channels.len(&rtxn)?)
    }

    /// The store's identity: created with it, never changed (a backup copy
    /// gets its own).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The last stream sequence applied when this store is a cluster
    /// replica (cluster.md), `None` for a single node's store.
    pub fn stream_seq(&self) -> Result<Option<u64>, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(self.meta.get(&rtxn, b"stream_seq")?.and_then(be_u64))
    }

    /// Makes an empty store a replica of the stream whose identity is
    /// `epoch`: the epoch is the stream's from now on, and nothing is
    /// applied yet. `Ok(false)`, and nothing changed, when the store holds
    /// anything (channels, members, webhook events): a single node's history
    /// is never silently turned into a replica.
    pub fn become_replica(&mut self, epoch: &str) -> Result<bool, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let used = self.channels.len(&wtxn)? > 0 || self.members.len(&wtxn)? > 0 || self.outbox.len(&wtxn)? > 0;
        if used || self.meta.get(&wtxn, b"stream_seq")?.is_some() {
            return Ok(false);
        }
        self.meta.put(&mut wtxn, b"epoch", epoch.as_bytes())?;
        self.meta.put(&mut wtxn, b"stream_seq", &0u64.to_be_bytes())?;
        wtxn.commit()?;
        self.epoch = epoch.to_string();
        Ok(true)
    }

    /// Where `(from, id)` was published, while its dedupe record lasts:
    /// the answer to a publish JetStream called a duplicate.
    pub fn published(&self, from: &str, id: &str) -> Result<Option<(String, Seq, u64)>, StoreError> {
        let dkey = dedupe_key(from, id);
        let rtxn = self.env.read_txn()?;
        let loaded = {
            let ids = self.ids();
            if let Some((e, name)) = ids.get(&ids.key(&dkey)) {
                return Ok(Some((name.to_string(), e.seq, e.ts)));
            }
            ids.loaded
        };
        if !loaded {
            // Before the writer's first turn loaded the index: the log itself.
            if let Some(found) = self.logged(&rtxn, &dkey)? {
                return Ok(Some(found));
            }
        }
        let found = self.dedupe.get(&rtxn, &dkey)?.and_then(decode_dedupe);
        Ok(found.map(|(seq, ts, _, ch)| (ch.to_string(), seq, ts)))
    }

    /// The newest place of `(sub, id)` in the id log, searched record by
    /// record: only for `published` in the moment before the index is loaded.
    fn logged(&self, txn: &RoTxn, dkey: &[u8]) -> Result<Option<(String, Seq, u64)>, StoreError> {
        let mut found = None;
        for item in self.idlog.iter(txn)? {
            let (_, v) = item?;
            found = dedupe::decode(v).filter(|(_, d)| *d == dkey).map(|(e, _)| e).last().or(found);
        }
        let Some(e) = found else { return Ok(None) };
        let mut names = self.channel_names(txn, &[e.chan])?;
        Ok(names.remove(&e.chan).map(|name| (name, e.seq, e.ts)))
    }

    /// The names of these channel ids: one pass over `channels`, stopping
    /// once all are found.
    fn channel_names(&self, txn: &RoTxn, ids: &[u64]) -> Result<HashMap<u64, String>, StoreError> {
        let mut names = HashMap::new();
        for item in self.channels.iter(txn)? {
            if names.len() == ids.len() {
                break;
            }
            let (k, v) = item?;
            if let Some((id, ..)) = decode_channel(v).filter(|(id, ..)| ids.contains(id)) {
                names.insert(id, String::from_utf8_lossy(k).into_owned());
            }
        }
        Ok(names)
    }

    /// The in-memory dedupe index; a panic elsewhere while it was held left
    /// it whole (every change is one map operation), so poisoning is ignored.
    fn ids(&self) -> MutexGuard<'_, dedupe::Index> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds the in-memory dedupe index from the id log's records still
    /// inside the window at `now_ms`, once (later calls return at once). Ids
    /// past the index's bound go to the on-disk `dedupe` table instead, so
    /// none is forgotten. The writer calls it on its first turn; a commit
    /// calls it first too.
    pub fn load_dedupe(&self, now_ms: u64, window_ms: u64) -> Result<(), StoreError> {
        let (hashers, room) = {
            let ids = self.ids();
            if ids.loaded {
                return Ok(());
            }
            (ids.hashers(), ids.room())
        };
        let mut wtxn = self.env.write_txn()?;
        let from = now_ms.saturating_add(1).to_be_bytes();
        let live = |e: &dedupe::Entry| e.ts.saturating_add(window_ms) > now_ms;
        // A first pass for the channels and the count, so the table is
        // allocated once and no id is copied on the way.
        let (mut chans, mut count) = (Vec::new(), 0);
        for item in self.idlog.range(&wtxn, &(Bound::Included(&from[..]), Bound::Unbounded))? {
            for (e, _) in dedupe::decode(item?.1).filter(|(e, _)| live(e)) {
                if chans.last() != Some(&e.chan) {
                    chans.push(e.chan);
                }
                count += 1;
            }
        }
        chans.sort_unstable();
        chans.dedup();
        let names = self.channel_names(&wtxn, &chans)?;
        let mut map = HashMap::with_capacity(count.min(room));
        let mut spill = Vec::new();
        for item in self.idlog.range(&wtxn, &(Bound::Included(&from[..]), Bound::Unbounded))? {
            for (e, dkey) in dedupe::decode(item?.1).filter(|(e, _)| live(e)) {
                let Some(name) = names.get(&e.chan) else { continue };
                if map.len() < room {
                    map.insert(dedupe::key_with(&hashers, dkey), e);
                } else {
                    spill.push((e, dkey.to_vec(), name.clone()));
                }
            }
        }
        // Built outside the lock: `published` reads the log itself until
        // `loaded` is set.
        self.ids().absorb(map, &names);
        for (e, dkey, name) in &spill {
            self.put_dedupe(&mut wtxn, dkey, name, e.seq, e.ts, e.ts.saturating_add(window_ms))?;
        }
        if !spill.is_empty() {
            log::warn!("{} ids of the dedupe window are kept on disk: past the in-memory bound", spill.len());
            wtxn.commit()?;
        }
        self.ids().loaded = true;
        Ok(())
    }

    pub fn path(&self) -> PathBuf {
        self.env.path().to_path_buf()
    }

    /// Where a channel stands; `ChannelInfo::EMPTY` for one never published to.
    pub fn channel(&self, ch: &str) -> Result<ChannelInfo, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(self.channel_in(&rtxn, ch)?.map(|(_, info)| info).unwrap_or(ChannelInfo::EMPTY))
    }

    fn channel_in(&self, txn: &RoTxn, ch: &str) -> Result<Option<(u64, ChannelInfo)>, StoreError> {
        Ok(self.channel_rec(txn, ch)?.map(|(id, info, _)| (id, info)))
    }

    /// A channel's id, state and live key count.
    fn channel_rec(&self, txn: &RoTxn, ch: &str) -> Result<Option<(u64, ChannelInfo, u64)>, StoreError> {
        Ok(self.channels.get(txn, ch.as_bytes())?.and_then(decode_channel))
    }

    /// Up to `limit` channels named after `after` (from the first when
    /// empty), with their state, in name order.
    pub fn channels(&self, after: &str, limit: usize) -> Result<Vec<(String, ChannelInfo)>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        let from = if after.is_empty() { Bound::Unbounded } else { Bound::Excluded(after.as_bytes()) };
        for item in self.channels.range(&rtxn, &(from, Bound::Unbounded))?.take(limit) {
            let (k, v) = item?;
            if let Some((_, info, _)) = decode_channel(v) {
                out.push((String::from_utf8_lossy(k).into_owned(), info));
            }
        }
        Ok(out)
    }

    /// Calls `each` for stored messages of `ch` with seq > `after`, in order,
    /// until it returns false or `limit` messages were given. Returns the
    /// channel's state as of this read.
    pub fn read(
        &self,
        ch: &str,
        after: Seq,
        limit: usize,
        mut each: impl FnMut(Record<'_>) -> bool,
    ) -> Result<ChannelInfo, StoreError> {
        let rtxn = self.env.read_txn()?;
        let Some((id, info)) = self.channel_in(&rtxn, ch)? else {
            return Ok(ChannelInfo::EMPTY);
        };
        // Messages before `first` may still be stored: count retention hid them.
        let start = msg_key(id, after.saturating_add(1).max(info.first));
        let end = msg_key(id, u64::MAX);
        for item in self.messages.range(&rtxn, &(Bound::Included(&start[..]), Bound::Included(&end[..])))?.take(limit) {
            let (k, v) = item?;
            let Some(rec) = decode_message(k, v) else {
                return Err(StoreError::Corrupt(format!("undecodable message in channel {ch}")));
            };
            if !each(rec) {
                break;
            }
        }
        Ok(info)
    }

    /// The state of a compacted channel (spec §8): the latest message of
    /// every live key (unexpired tombstones included), in ascending seq, until
    /// `each` returns false. Returns the channel's state as of the same read,
    /// so its `last` is the snapshot's seq. Costs a sort of the key count's
    /// seqs (80 KiB for 10,000 keys).
    pub fn state(&self, ch: &str, mut each: impl FnMut(Record<'_>) -> bool) -> Result<ChannelInfo, StoreError> {
        let rtxn = self.env.read_txn()?;
        let Some((id, info)) = self.channel_in(&rtxn, ch)? else {
            return Ok(ChannelInfo::EMPTY);
        };
        let mut seqs = Vec::new();
        for item in self.keys.prefix_iter(&rtxn, &id.to_be_bytes())? {
            let (_, v) = item?;
            seqs.extend(be_u64(v));
        }
        seqs.sort_unstable();
        for seq in seqs {
            if let Some(rec) = self.message_in(&rtxn, ch, id, seq)? {
                if !each(rec) {
                    break;
                }
            }
        }
        Ok(info)
    }

    /// Like `state`, by key order: the latest message of up to `limit` live
    /// keys after `after_key` (from the first when empty).
    pub fn state_page(
        &self,
        ch: &str,
        after_key: &str,
        limit: usize,
        mut each: impl FnMut(Record<'_>) -> bool,
    ) -> Result<ChannelInfo, StoreError> {
        let rtxn = self.env.read_txn()?;
        let Some((id, info)) = self.channel_in(&rtxn, ch)? else {
            return Ok(ChannelInfo::EMPTY);
        };
        let after = key_key(id, after_key);
        let from = if after_key.is_empty() { Bound::Included(&after[..]) } else { Bound::Excluded(&after[..]) };
        let end = id.saturating_add(1).to_be_bytes();
        let mut given = 0;
        for item in self.keys.range(&rtxn, &(from, Bound::Excluded(&end[..])))? {
            if given >= limit {
                break;
            }
            let (_, v) = item?;
            let Some(seq) = be_u64(v) else { continue };
            if let Some(rec) = self.message_in(&rtxn, ch, id, seq)? {
                given += 1;
                if !each(rec) {
                    break;
                }
            }
        }
        Ok(info)
    }

    /// The seq just before the `n`-th newest stored message of `ch`, so that
    /// `read(ch, tail(ch, n), n, ..)` gives the last `n` (spec §8 `last`);
    /// holes are not counted. Fewer stored: just before the oldest.
    pub fn tail(&self, ch: &str, n: usize) -> Result<Seq, StoreError> {
        let rtxn = self.env.read_txn()?;
        let Some((id, info)) = self.channel_in(&rtxn, ch)? else {
            return Ok(0);
        };
        if n == 0 || info.count() == 0 {
            return Ok(info.last);
        }
        let (start, end) = (msg_key(id, info.first), msg_key(id, info.last));
        let newest = self.messages.rev_range(&rtxn, &(Bound::Included(&start[..]), Bound::Included(&end[..])))?;
        let mut before = info.first - 1;
        if let Some(item) = newest.take(n).last() {
            let (k, _) = item?;
            before = be_u64(&k[8..]).unwrap_or(info.first).saturating_sub(1);
        }
        Ok(before)
    }

    fn message_in<'t>(&self, txn: &'t RoTxn, ch: &str, id: u64, seq: Seq) -> Result<Option<Record<'t>>, StoreError> {
        let k = msg_key(id, seq);
        let Some(v) = self.messages.get(txn, &k)? else { return Ok(None) };
        match decode_message(&k, v) {
            Some(rec) => Ok(Some(rec)),
            None => Err(StoreError::Corrupt(format!("undecodable message in channel {ch}"))),
        }
    }

    /// Every presence member stored (spec §7): channel, user and info (JSON
    /// object text, empty when the token had none), for the core at start.
    pub fn members(&self, mut each: impl FnMut(&str, &str, &str)) -> Result<(), StoreError> {
        let rtxn = self.env.read_txn()?;
        for item in self.members.iter(&rtxn)? {
            let (k, v) = item?;
            let Some(split) = k.iter().position(|&b| b == 0) else { continue };
            let (ch, user) = (String::from_utf8_lossy(&k[..split]), String::from_utf8_lossy(&k[split + 1..]));
            each(&ch, &user, &String::from_utf8_lossy(v));
        }
        Ok(())
    }

    /// Every channel stored as occupied (spec §9), for the core at start.
    pub fn occupied(&self, mut each: impl FnMut(&str)) -> Result<(), StoreError> {
        let rtxn = self.env.read_txn()?;
        for item in self.occupied.iter(&rtxn)? {
            let (k, _) = item?;
            each(&String::from_utf8_lossy(k));
        }
        Ok(())
    }

    /// Webhook events waiting, numbered after `after`, oldest first, until
    /// `each` returns false or `limit` were given.
    pub fn outbox(
        &self,
        after: u64,
        limit: usize,
        mut each: impl FnMut(OutboxEvent<'_>) -> bool,
    ) -> Result<(), StoreError> {
        let rtxn = self.env.read_txn()?;
        let start = after.saturating_add(1).to_be_bytes();
        for item in self.outbox.range(&rtxn, &(Bound::Included(&start[..]), Bound::Unbounded))?.take(limit) {
            let (k, v) = item?;
            let Some(event) = decode_event(k, v) else {
                return Err(StoreError::Corrupt("undecodable webhook event".into()));
            };
            if !each(event) {
                break;
            }
        }
        Ok(())
    }

    /// Webhook events waiting (LMDB's entry count: O(1)).
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(self.outbox.len(&rtxn)?)
    }

    /// Bytes of the pages the waiting webhook events take in the store
    /// (LMDB's page counts of the outbox: O(1)).
    pub fn outbox_bytes(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        let stat = self.outbox.stat(&rtxn)?;
        let pages = stat.branch_pages + stat.leaf_pages + stat.overflow_pages;
        Ok(pages as u64 * u64::from(stat.page_size))
    }

    /// Commits a batch of messages in one write transaction: one fsync for
    /// all of it. On error nothing of the batch is stored. Leaves the clock
    /// floor alone.
    pub fn append_batch<'a>(
        &self,
        batch: impl IntoIterator<Item = &'a Append>,
        now_ms: u64,
        dedupe_window_ms: u64,
        retention: &dyn Fn(&str) -> Retention,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.commit_each(batch, Commit::default(), (now_ms, dedupe_window_ms), |txn, staged, a| {
            self.append_one(txn, staged, a, (now_ms, dedupe_window_ms), retention)
        })
    }

    /// Commits writer items in one write transaction (one fsync), with the
    /// writer's options: the clock floor to save with the batch, outbox
    /// events to remove, and whether each job runs in its own nested
    /// transaction (still one commit), so a job LMDB refuses comes back as
    /// `Outcome::Invalid` for each of its items and the others are stored.
    pub fn commit<'a>(
        &self,
        batch: impl IntoIterator<Item = &'a Write>,
        now_ms: u64,
        dedupe_window_ms: u64,
        retention: &dyn Fn(&str) -> Retention,
        opts: Commit<'_>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let clock = (now_ms, dedupe_window_ms);
        self.commit_each(batch, opts, clock, |txn, staged, w| self.write_one(txn, staged, w, clock, retention))
    }

    /// One write transaction over `batch`, writing each item with `one`,
    /// and the ids it stored as one record of the id log. Their index
    /// entries are added only once it committed.
    fn commit_each<I>(
        &self,
        batch: impl IntoIterator<Item = I>,
        opts: Commit<'_>,
        (now_ms, window_ms): (u64, u64),
        one: impl Fn(&mut RwTxn, &mut dedupe::Staged, I) -> Result<Outcome, StoreError>,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.load_dedupe(now_ms, window_ms)?;
        let mut staged = dedupe::Staged::default();
        let mut wtxn = self.env.write_txn()?;
        let out = self.write_items(&mut wtxn, &mut staged, batch, opts, one)?;
        for chunk in dedupe::chunks(&staged.items) {
            let expires = chunk.iter().map(|(_, e, _)| e.ts).max().unwrap_or(0).saturating_add(window_ms);
            self.log_ids(&mut wtxn, &dedupe::log_key(expires, chunk[0].1), &dedupe::encode(chunk))?;
        }
        for n in opts.removed {
            self.outbox.delete(&mut wtxn, &n.to_be_bytes())?;
        }
        if let Some(floor) = opts.floor {
            self.meta.put(&mut wtxn, b"clock", &floor.to_be_bytes())?;
        }
        wtxn.commit()?;
        let mut ids = self.ids();
        for (key, e, _) in &staged.items {
            if let Some(name) = staged.name(e.chan) {
                ids.insert(*key, *e, name);
            }
        }
        Ok(out)
    }

    /// One record of the id log. Its key is nearly always past the last
    /// (keyed by time): then LMDB appends it (`MDB_APPEND`), filling the
    /// last leaf page and starting a new one, instead of splitting the last
    /// page in two half-full pages at every commit.
    fn log_ids(&self, wtxn: &mut RwTxn, key: &[u8; 24], record: &[u8]) -> Result<(), StoreError> {
        let last = self.idlog.last(wtxn)?.map(|(k, _)| k < &key[..]);
        if last.unwrap_or(true) {
            self.idlog.put_with_flags(wtxn, PutFlags::APPEND, key, record)?;
        } else {
            // A clock set back, or a replica applying older times.
            self.idlog.put(wtxn, key, record)?;
        }
        Ok(())
    }

    /// The items of one transaction, each job in a nested transaction of
    /// its own when `opts.isolate` says so (then a job LMDB refuses fails
    /// whole, its staged ids with it).
    fn write_items<I>(
        &self,
        wtxn: &mut RwTxn,
        staged: &mut dedupe::Staged,
        batch: impl IntoIterator<Item = I>,
        opts: Commit<'_>,
        one: impl Fn(&mut RwTxn, &mut dedupe::Staged, I) -> Result<Outcome, StoreError>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut out = Vec::new();
        let mut items = batch.into_iter().peekable();
        let mut jobs = opts.jobs.iter();
        while items.peek().is_some() {
            if !opts.isolate {
                let w = items.next().expect("peeked");
                out.push(one(wtxn, staged, w)?);
                continue;
            }
            let len = jobs.next().copied().unwrap_or(1).max(1);
            let mut job = self.env.nested_write_txn(wtxn)?;
            let mut done = Vec::with_capacity(len);
            let mut refused = None;
            let mark = staged.len();
            for w in items.by_ref().take(len) {
                if refused.is_some() {
                    done.push(Outcome::Written);
                    continue;
                }
                match one(&mut job, staged, w) {
                    Ok(outcome) => done.push(outcome),
                    Err(StoreError::Content(why)) => {
                        refused = Some(why);
                        done.push(Outcome::Written);
                    }
                    Err(e) => return Err(e),
                }
            }
            match refused {
                None => job.commit()?,
                Some(why) => {
                    job.abort();
                    staged.truncate(mark);
                    done.fill(Outcome::Invalid(why));
                }
            }
            out.extend(done);
        }
        Ok(out)
    }

    fn write_one(
        &self,
        wtxn: &mut RwTxn,
        staged: &mut dedupe::Staged,
        w: &Write,
        (now_ms, window_ms): (u64, u64),
        retention: &dyn Fn(&str) -> Retention,
    ) -> Result<Outcome, StoreError> {
        match w {
            Write::Message(a) => return self.append_one(wtxn, staged, a, (now_ms, window_ms), retention),
            Write::Applied { append, stream_seq, ts_ms, after } => {
                if !self.next_applied(wtxn, *stream_seq, *after)? {
                    return Ok(Outcome::Invalid(OUT_OF_ORDER.into()));
                }
                return self.append_one(wtxn, staged, append, (*ts_ms, window_ms), retention);
            }
            Write::Member { ch, user, info, joined: true } => {
                self.members.put(wtxn, &member_key(ch, user), info.as_deref().unwrap_or("").as_bytes())?
            }
            Write::Member { ch, user, joined: false, .. } => _ = self.members.delete(wtxn, &member_key(ch, user))?,
            Write::Occupancy { ch, occupied: true } => self.occupied.put(wtxn, ch.as_bytes(), &[])?,
            Write::Occupancy { ch, occupied: false } => _ = self.occupied.delete(wtxn, ch.as_bytes())?,
            Write::Event(e) => self.put_event(wtxn, e, now_ms, None)?,
            Write::Held { hold, stream_seq, after, hooks } => {
                if !self.next_applied(wtxn, *stream_seq, *after)? {
                    return Ok(Outcome::Invalid(OUT_OF_ORDER.into()));
                }
                self.apply_held(wtxn, hold, *stream_seq, *hooks, now_ms)?;
            }
            Write::Gone { node, stream_seq, after, hooks } => {
                if !self.next_applied(wtxn, *stream_seq, *after)? {
                    return Ok(Outcome::Invalid(OUT_OF_ORDER.into()));
                }
                self.apply_gone(wtxn, node, *stream_seq, *hooks, now_ms)?;
            }
        }
        Ok(Outcome::Written)
    }

    /// Numbers an event from the persisted counter and stores it as its
    /// complete JSON object, so delivery only copies bytes.
    /// `id`: the event's id after the epoch, else its outbox number.
    fn put_event(&self, wtxn: &mut RwTxn, e: &HookEvent, now_ms: u64, id: Option<&str>) -> Result<(), StoreError> {
        let n = self.meta.get(wtxn, b"outbox_next")?.and_then(be_u64).unwrap_or(1);
        self.meta.put(wtxn, b"outbox_next", &(n + 1).to_be_bytes())?;
        let mut json = match id {
            Some(id) => format!("{{\"id\":\"{}-{id}\",\"name\":", self.epoch),
            None => format!("{{\"id\":\"{}-{n}\",\"name\":", self.epoch),
        };
        push_json_string(&mut json, &e.name);
        json.push_str(",\"channel\":");
        push_json_string(&mut json, &e.channel);
        if let Some(user) = &e.user_id {
            json.push_str(",\"user_id\":");
            push_json_string(&mut json, user);
        }
        if !e.extra.is_empty() {
            json.push(',');
            json.push_str(&e.extra);
        }
        json.push('}');
        let ch = &e.channel.as_bytes()[..e.channel.len().min(u16::MAX as usize)];
        let mut v = Vec::with_capacity(10 + ch.len() + json.len());
        v.extend_from_slice(&now_ms.to_be_bytes());
        v.extend_from_slice(&(ch.len() as u16).to_be_bytes());
        v.extend_from_slice(ch);
        v.extend_from_slice(json.as_bytes());
        self.outbox.put(wtxn, &n.to_be_bytes(), &v)?;
        Ok(())
    }

    /// Records `stream_seq` as the last applied stream sequence when the
    /// recorded one is `after`; false (nothing written) when it is not.
    fn next_applied(&self, wtxn: &mut RwTxn, stream_seq: u64, after: u64) -> Result<bool, StoreError> {
        if self.meta.get(wtxn, b"stream_seq")?.and_then(be_u64) != Some(after) {
            return Ok(false);
        }
        self.meta.put(wtxn, b"stream_seq", &stream_seq.to_be_bytes())?;
        Ok(true)
    }

    /// A node's holding (cluster.md). Applying a holding that is already
    /// so changes nothing, so a record applied twice (two nodes published
    /// the same) causes nothing twice. The member (or the channel's
    /// occupancy) appears or disappears cluster-wide only when its first
    /// holder comes or its last goes: then the event of `hooks` is put in
    /// the outbox, with an id every node would give it (`<epoch>-s<seq>`).
    fn apply_held(&self, wtxn: &mut RwTxn, h: &Holding, seq: u64, hooks: u8, now_ms: u64) -> Result<(), StoreError> {
        let db = if h.user.is_some() { self.members } else { self.occupied };
        let prefix = held_prefix(&h.ch, h.user.as_deref());
        let before = holders(db, wtxn, &prefix)?;
        let mut key = prefix.clone();
        key.extend_from_slice(h.node.as_bytes());
        match h.on {
            true => db.put(wtxn, &key, h.info.as_deref().unwrap_or("").as_bytes())?,
            false => _ = db.delete(wtxn, &key)?,
        }
        let after = holders(db, wtxn, &prefix)?;
        if (before == 0) != (after == 0) {
            self.held_event(wtxn, &h.ch, h.user.as_deref(), after > 0, hooks, now_ms, &format!("s{seq}"))?;
        }
        Ok(())
    }

    /// Every holding of `node` released, each as `apply_held` would.
    fn apply_gone(&self, wtxn: &mut RwTxn, node: &str, seq: u64, hooks: u8, now_ms: u64) -> Result<(), StoreError> {
        let mut n = 0;
        for db in [self.members, self.occupied] {
            let mut keys = Vec::new();
            for item in db.iter(wtxn)? {
                let (k, _) = item?;
                if split_held(k).is_some_and(|(_, _, holder)| holder == node) {
                    keys.push(k.to_vec());
                }
            }
            for k in keys {
                db.delete(wtxn, &k)?;
                let prefix = &k[..k.len() - NODE_BYTES];
                if holders(db, wtxn, prefix)? == 0 {
                    let Some((ch, user, _)) = split_held(&k) else { continue };
                    n += 1;
                    self.held_event(wtxn, &ch, user.as_deref(), false, hooks, now_ms, &format!("s{seq}.{n}"))?;
                }
            }
        }
        Ok(())
    }

    /// The webhook event of a member (or channel) that appeared (`on`) or
    /// disappeared, when `hooks` asks for it.
    #[allow(clippy::too_many_arguments)] // one event's fields
    fn held_event(
        &self,
        wtxn: &mut RwTxn,
        ch: &str,
        user: Option<&str>,
        on: bool,
        hooks: u8,
        now_ms: u64,
        id: &str,
    ) -> Result<(), StoreError> {
        let (bit, name) = match (user.is_some(), on) {
            (true, true) => (HOOK_MEMBER_ADDED, "member_added"),
            (true, false) => (HOOK_MEMBER_REMOVED, "member_removed"),
            (false, true) => (HOOK_CHANNEL_OCCUPIED, "channel_occupied"),
            (false, false) => (HOOK_CHANNEL_VACATED, "channel_vacated"),
        };
        if hooks & bit == 0 {
            return Ok(());
        }
        let event = HookEvent {
            name: name.into(),
            channel: ch.into(),
            user_id: user.map(str::to_string),
            extra: String::new(),
        };
        self.put_event(wtxn, &event, now_ms, Some(id))
    }

    /// Every holding of a cluster replica (cluster.md): channel, member
    /// (`None`: occupancy), node and info (empty when none), for the core at start.
    pub fn held(&self, mut each: impl FnMut(&str, Option<&str>, &str, &str)) -> Result<(), StoreError> {
        let rtxn = self.env.read_txn()?;
        for db in [self.members, self.occupied] {
            for item in db.iter(&rtxn)? {
                let (k, v) = item?;
                if let Some((ch, user, node)) = split_held(k) {
                    each(&ch, user.as_deref(), &node, &String::from_utf8_lossy(v));
                }
            }
        }
        Ok(())
    }

    fn append_one(
        &self,
        wtxn: &mut RwTxn,
        staged: &mut dedupe::Staged,
        a: &Append,
        (now_ms, window_ms): (u64, u64),
        retention: &dyn Fn(&str) -> Retention,
    ) -> Result<Outcome, StoreError> {
        // The edges allow 128-byte keys (`channel::valid_key`); the value
        // layout holds up to 255, and an event name up to 64 KiB.
        if a.key.as_ref().is_some_and(|k| k.len() > u8::MAX as usize)
            || a.event.as_ref().is_some_and(|e| e.len() > u16::MAX as usize)
        {
            return Err(StoreError::Content("a message key over 255 bytes or an event name over 64 KiB".into()));
        }
        // The id log takes any length, but an id past the in-memory bound
        // goes into LMDB keys: one limit, the one the edges check.
        if a.id.as_ref().is_some_and(|id| !dedupe_fits(&a.from, id)) {
            return Err(StoreError::Content(format!("a sub and id over {MAX_DEDUPE_SUB_AND_ID_BYTES} bytes together")));
        }
        let dkey = a.id.as_deref().map(|id| dedupe_key(&a.from, id));
        let known = match &dkey {
            Some(dkey) => match self.seen(wtxn, staged, dkey, (now_ms, window_ms))? {
                Ok(known) => Some(known),
                Err(duplicate) => return Ok(duplicate),
            },
            None => None,
        };
        let found = self.channel_rec(wtxn, &a.ch)?;
        // LMDB keeps the entry count: no scan, and no counter to drift.
        if found.is_none() && self.channels.len(wtxn)? >= self.max_channels {
            return Ok(Outcome::OverLimit(Limit::Channels));
        }
        let compacted = (self.compact)(&a.ch);
        // A key on a compacted channel: its previous message, if any (spec §8).
        let keyed = match (&a.key, compacted) {
            (Some(key), true) => {
                let (prev, live) = match found {
                    Some((id, _, live)) => (self.keys.get(wtxn, &key_key(id, key))?.and_then(be_u64), live),
                    None => (None, 0),
                };
                if prev.is_none() && live >= self.max_keys {
                    return Ok(Outcome::OverLimit(Limit::Keys));
                }
                Some((key, prev))
            }
            _ => None,
        };
        let (id, mut info, mut live) = match found {
            Some(found) => found,
            None => (self.next_channel_id(wtxn)?, ChannelInfo::EMPTY, 0),
        };
        let limits = retention(&a.ch);
        // The channel's one index entry, made when it starts holding a
        // message that retention may remove; maintenance moves it along. On a
        // compacted channel the latest message of a key is never removable.
        let removable = info.count().saturating_sub(live);
        if (compacted && keyed.is_none() && removable == 0) || (!compacted && info.count() == 0) {
            self.due.put(wtxn, &due_key(due_at(now_ms, limits.age_ms), id), a.ch.as_bytes())?;
        }
        let seq = info.last + 1;
        info.last = seq;
        self.messages.put(wtxn, &msg_key(id, seq), &encode_message(a, now_ms))?;
        if let Some((key, prev)) = keyed {
            // A tombstone: the key goes once it is older than the window.
            let tombstone_until = (a.data == "null").then(|| now_ms.saturating_add(window_ms));
            let at = Keyed { id, ch: &a.ch, key, prev, seq, tombstone_until };
            live += u64::from(self.keep_latest(wtxn, at, &mut info)?);
        }
        self.trim_on_append(wtxn, id, &mut info, live, limits, compacted)?;
        self.channels.put(wtxn, a.ch.as_bytes(), &encode_channel(id, info, live))?;
        if let (Some(dkey), Some(known)) = (dkey, known) {
            let e = dedupe::Entry { chan: id, seq, ts: now_ms };
            self.remember_id(wtxn, staged, dkey, known, e, &a.ch, window_ms)?;
        }
        Ok(Outcome::Stored { seq, ts: now_ms })
    }

    /// A keyed message on a compacted channel is stored: its key names it
    /// now, the key's previous message goes in the same commit, and a
    /// tombstone is filed to expire. Returns whether the key is new.
    fn keep_latest(&self, wtxn: &mut RwTxn, at: Keyed<'_>, info: &mut ChannelInfo) -> Result<bool, StoreError> {
        let kk = key_key(at.id, at.key);
        self.keys.put(wtxn, &kk, &at.seq.to_be_bytes())?;
        if let Some(until) = at.tombstone_until {
            let mut tk = until.to_be_bytes().to_vec();
            tk.extend_from_slice(&kk);
            let mut v = at.seq.to_be_bytes().to_vec();
            v.extend_from_slice(at.ch.as_bytes());
            self.tombs.put(wtxn, &tk, &v)?;
        }
        let Some(prev) = at.prev else { return Ok(true) };
        if self.messages.delete(wtxn, &msg_key(at.id, prev))? {
            info.holes += 1;
            self.skip_holes(wtxn, at.id, info)?;
        }
        Ok(false)
    }

    /// `(sub, id)` in this transaction, the in-memory index or the on-disk
    /// table: `Err(Duplicate)` within the window; else its index key and the
    /// expiry entry of an expired on-disk record, if there is one.
    fn seen(
        &self,
        wtxn: &RwTxn,
        staged: &dedupe::Staged,
        dkey: &[u8],
        (now_ms, window_ms): (u64, u64),
    ) -> Result<Result<Known, Outcome>, StoreError> {
        let key = self.ids().key(dkey);
        let live = |e: dedupe::Entry| e.ts.saturating_add(window_ms) > now_ms;
        if let Some(e) = staged.get(&key).filter(|e| live(*e)) {
            let ch = staged.name(e.chan).unwrap_or_default().to_string();
            return Ok(Err(Outcome::Duplicate { ch, seq: e.seq, ts: e.ts }));
        }
        if let Some((e, ch)) = self.ids().get(&key).filter(|(e, _)| live(*e)) {
            return Ok(Err(Outcome::Duplicate { ch: ch.to_string(), seq: e.seq, ts: e.ts }));
        }
        let Some((seq, ts, expires, ch)) = self.dedupe.get(wtxn, dkey)?.and_then(decode_dedupe) else {
            return Ok(Ok(Known { key, stale: None }));
        };
        if expires > now_ms {
            return Ok(Err(Outcome::Duplicate { ch: ch.to_string(), seq, ts }));
        }
        let mut old = expires.to_be_bytes().to_vec();
        old.extend_from_slice(dkey);
        Ok(Ok(Known { key, stale: Some(old) }))
    }

    /// Count retention in the commit that passes the limit. On an ordinary
    /// channel `first` moves at once, so no reader sees more than the
    /// limit, but the messages it hides are deleted in runs of
    /// `hidden_run(keep)`, once per run: one deletion per append dirtied the
    /// channel's oldest leaf page in every commit (half of what a commit
    /// wrote beyond the messages). A compacted channel, or one with holes,
    /// is trimmed message by message, a few per append; maintenance does the
    /// rest when a limit was lowered.
    fn trim_on_append(
        &self,
        wtxn: &mut RwTxn,
        id: u64,
        info: &mut ChannelInfo,
        live: u64,
        limits: Retention,
        compacted: bool,
    ) -> Result<(), StoreError> {
        let keep = limits.messages.max(1);
        if compacted {
            if info.count().saturating_sub(live) > keep {
                self.trim_compacted(wtxn, id, info, live, limits, None, 16)?;
            }
        } else if info.holes == 0 {
            if info.count() > keep {
                let was = info.first;
                info.first = info.last + 1 - keep;
                let run = hidden_run(keep);
                if info.first / run > was / run {
                    self.drop_hidden(wtxn, id, info.first, MAX_HIDDEN_DROP)?;
                }
            }
        } else {
            let mut budget = 16;
            while info.count() > keep && budget > 0 {
                self.messages.delete(wtxn, &msg_key(id, info.first))?;
                info.first += 1;
                self.skip_holes(wtxn, id, info)?;
                budget -= 1;
            }
        }
        Ok(())
    }

    /// Deletes up to `max` messages of channel `id` stored before `first`:
    /// those count retention hid (`trim_on_append`). Returns how many.
    fn drop_hidden(&self, wtxn: &mut RwTxn, id: u64, first: Seq, max: usize) -> Result<usize, StoreError> {
        let (lo, hi) = (msg_key(id, 0), msg_key(id, first));
        let oldest = match self.messages.range(wtxn, &(Bound::Included(&lo[..]), Bound::Excluded(&hi[..])))?.next() {
            Some(item) => be_u64(&item?.0[8..]).unwrap_or(first),
            None => return Ok(0),
        };
        let end = msg_key(id, first.min(oldest.saturating_add(max as u64)));
        Ok(self.messages.delete_range(wtxn, &(Bound::Included(&lo[..]), Bound::Excluded(&end[..])))?)
    }

    /// A stored `(sub, id)`: staged for the id log and the in-memory index,
    /// or, with the index at its bound, an on-disk dedupe record as before.
    #[allow(clippy::too_many_arguments)] // one id's facts, each used once
    fn remember_id(
        &self,
        wtxn: &mut RwTxn,
        staged: &mut dedupe::Staged,
        dkey: Vec<u8>,
        known: Known,
        e: dedupe::Entry,
        ch: &str,
        window_ms: u64,
    ) -> Result<(), StoreError> {
        {
            let mut ids = self.ids();
            if ids.has_room(staged.len()) {
                staged.push(known.key, e, dkey, ch);
                return Ok(());
            }
            if !ids.warned {
                ids.warned = true;
                log::warn!(
                    "the in-memory dedupe index holds {} ids, its bound: further ids are kept on disk \
                     (slower commits) until some expire (--dedupe-window)",
                    ids.len()
                );
            }
        }
        // An expired record's entry goes, or it would expire the new one early.
        if let Some(old) = known.stale {
            self.expiry.delete(wtxn, &old)?;
        }
        self.put_dedupe(wtxn, &dkey, ch, e.seq, e.ts, e.ts.saturating_add(window_ms))
    }

    /// An on-disk dedupe record and its expiry entry.
    fn put_dedupe(
        &self,
        wtxn: &mut RwTxn,
        dkey: &[u8],
        ch: &str,
        seq: Seq,
        now_ms: u64,
        expires: u64,
    ) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(24 + ch.len());
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&now_ms.to_be_bytes());
        v.extend_from_slice(&expires.to_be_bytes());
        v.extend_from_slice(ch.as_bytes());
        self.dedupe.put(wtxn, dkey, &v)?;
        let mut ek = expires.to_be_bytes().to_vec();
        ek.extend_from_slice(dkey);
        self.expiry.put(wtxn, &ek, &[])?;
        Ok(())
    }

    /// Moves `first` past removed messages, so it always names a stored
    /// message (or `last + 1`). Free on channels without holes.
    fn skip_holes(&self, wtxn: &RwTxn, id: u64, info: &mut ChannelInfo) -> Result<(), StoreError> {
        while info.holes > 0 && info.first <= info.last && self.messages.get(wtxn, &msg_key(id, info.first))?.is_none()
        {
            info.first += 1;
            info.holes -= 1;
        }
        if info.first > info.last {
            info.holes = 0;
        }
        Ok(())
    }

    /// Retention on a compacted channel: removes the oldest messages that
    /// are not the latest of their key while more than the count limit of
    /// them are stored, or (with `now_ms`) they are past the age limit, at
    /// most `budget`. Returns the removals and when the channel is next due
    /// (`None`: nothing removable is left). Reads past every kept message
    /// before the first removable one: at most `--max-keys` reads.
    #[allow(clippy::too_many_arguments)]
    fn trim_compacted(
        &self,
        wtxn: &mut RwTxn,
        id: u64,
        info: &mut ChannelInfo,
        live: u64,
        limits: Retention,
        now_ms: Option<u64>,
        budget: usize,
    ) -> Result<(usize, Option<u64>), StoreError> {
        let keep = limits.messages.max(1);
        let oldest_allowed = now_ms.map_or(0, |now| now.saturating_sub(limits.age_ms));
        let mut removable = info.count().saturating_sub(live);
        let mut doomed = Vec::new();
        let mut next_due = None;
        let (start, end) = (msg_key(id, info.first), msg_key(id, info.last));
        for item in self.messages.range(wtxn, &(Bound::Included(&start[..]), Bound::Included(&end[..])))? {
            let (k, v) = item?;
            let Some(rec) = decode_message(k, v) else {
                return Err(StoreError::Corrupt(format!("undecodable message in channel {id}")));
            };
            if let Some(key) = rec.key {
                if self.keys.get(wtxn, &key_key(id, key))?.and_then(be_u64) == Some(rec.seq) {
                    continue;
                }
            }
            if !(removable > keep || rec.ts < oldest_allowed) {
                next_due = Some(due_at(rec.ts, limits.age_ms));
                break;
            }
            if doomed.len() >= budget {
                // Out of budget: still due, the next pass goes on.
                next_due = Some(0);
                break;
            }
            doomed.push(rec.seq);
            removable -= 1;
        }
        for seq in &doomed {
            self.messages.delete(wtxn, &msg_key(id, *seq))?;
        }
        info.holes += doomed.len() as u64;
        self.skip_holes(wtxn, id, info)?;
        Ok((doomed.len(), next_due))
    }

    fn clock_floor_in(&self, txn: &RoTxn) -> Result<u64, StoreError> {
        Ok(self.meta.get(txn, b"clock")?.and_then(be_u64).unwrap_or(0))
    }

    /// The saved clock floor (ms): the last good time, below which the
    /// effective time never goes (spec §10); 0 when none was saved.
    pub fn clock_floor(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        self.clock_floor_in(&rtxn)
    }

    /// Saves the clock floor in a transaction of its own: for a floor that
    /// changed while no publish came to carry it.
    pub fn save_clock_floor(&self, floor_ms: u64) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        self.meta.put(&mut wtxn, b"clock", &floor_ms.to_be_bytes())?;
        wtxn.commit()?;
        Ok(())
    }

    fn next_channel_id(&self, wtxn: &mut RwTxn) -> Result<u64, StoreError> {
        let id = self.meta.get(wtxn, b"next_chan")?.and_then(be_u64).unwrap_or(1);
        self.meta.put(wtxn, b"next_chan", &(id + 1).to_be_bytes())?;
        Ok(id)
    }

    /// One bounded maintenance transaction: trims messages past their
    /// channel's count or age limit and forgets expired dedupe records, at
    /// most `budget` units of work (a deletion, or a visit to a channel
    /// that had nothing to trim yet). Returns the work done; call again
    /// while that equals `budget`.
    pub fn maintain(
        &self,
        now_ms: u64,
        budget: usize,
        retention: &dyn Fn(&str) -> Retention,
    ) -> Result<usize, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        // Dedupe expiry (the id log, then the on-disk table) takes at most
        // half the budget and tombstones a quarter, so messages are trimmed
        // on every pass.
        let done = self.expire_ids(&mut wtxn, now_ms, budget / 4)?;
        let done = done + self.expire_dedupe(&mut wtxn, now_ms, budget / 2 - done)?;
        let done = done + self.expire_tombstones(&mut wtxn, now_ms, budget / 4)?;
        let done = self.trim_due_channels(&mut wtxn, now_ms, budget, done, retention)?;
        if done == 0 {
            wtxn.abort();
        } else {
            wtxn.commit()?;
        }
        Ok(done)
    }

    /// Forgets up to `max` expired dedupe records, oldest expiry first.
    /// Returns how many.
    fn expire_dedupe(&self, wtxn: &mut RwTxn, now_ms: u64, max: usize) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for item in self.expiry.iter(wtxn)? {
            let (k, _) = item?;
            if expired.len() >= max || be_u64(&k[..8.min(k.len())]).unwrap_or(0) > now_ms {
                break;
            }
            expired.push(k.to_vec());
        }
        for k in &expired {
            self.expiry.delete(wtxn, k)?;
            // Unless the id was recorded again since, with a later expiry.
            let expires = self.dedupe.get(wtxn, &k[8..])?.and_then(decode_dedupe).map(|(_, _, x, _)| x);
            if expires.is_none_or(|x| x <= now_ms) {
                self.dedupe.delete(wtxn, &k[8..])?;
            }
        }
        Ok(expired.len())
    }

    /// Deletes up to `max` records of the id log whose last id expired,
    /// oldest first, and their ids from the in-memory index. Returns how many.
    fn expire_ids(&self, wtxn: &mut RwTxn, now_ms: u64, max: usize) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for item in self.idlog.iter(wtxn)?.take(max) {
            let (k, v) = item?;
            if be_u64(k).unwrap_or(0) > now_ms {
                break;
            }
            expired.push((k.to_vec(), v.to_vec()));
        }
        if expired.is_empty() {
            return Ok(0);
        }
        {
            // Before the commit, and safe: every id forgotten here has expired.
            let mut ids = self.ids();
            for (_, v) in &expired {
                for (e, dkey) in dedupe::decode(v) {
                    let key = ids.key(dkey);
                    ids.forget(&key, e);
                }
            }
            ids.shrink();
        }
        for (k, _) in &expired {
            self.idlog.delete(wtxn, k)?;
        }
        Ok(expired.len())
    }

    /// Removes up to `max` tombstones older than the dedupe window, with
    /// their key, oldest first (spec §8). A tombstone whose key was written
    /// again since only loses its index entry. Returns how many.
    fn expire_tombstones(&self, wtxn: &mut RwTxn, now_ms: u64, max: usize) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for item in self.tombs.iter(wtxn)?.take(max) {
            let (k, v) = item?;
            // Gone once older than the window: expiry time strictly passed.
            if be_u64(k).unwrap_or(0) >= now_ms {
                break;
            }
            expired.push((k.to_vec(), v.to_vec()));
        }
        for (k, v) in &expired {
            self.tombs.delete(wtxn, k)?;
            let (Some(seq), Some(name), Some(kk)) = (be_u64(v), v.get(8..), k.get(8..)) else { continue };
            let ch = String::from_utf8_lossy(name);
            let Some((id, mut info, live)) = self.channel_rec(wtxn, &ch)? else { continue };
            if self.keys.get(wtxn, kk)?.and_then(be_u64) != Some(seq) {
                continue;
            }
            self.keys.delete(wtxn, kk)?;
            if self.messages.delete(wtxn, &msg_key(id, seq))? {
                info.holes += 1;
                self.skip_holes(wtxn, id, &mut info)?;
            }
            self.channels.put(wtxn, name, &encode_channel(id, info, live.saturating_sub(1)))?;
        }
        Ok(expired.len())
    }

    /// Trims the channels that have come due, earliest first, until the
    /// work `done` so far reaches `budget`. Returns the work done in all.
    fn trim_due_channels(
        &self,
        wtxn: &mut RwTxn,
        now_ms: u64,
        budget: usize,
        mut done: usize,
        retention: &dyn Fn(&str) -> Retention,
    ) -> Result<usize, StoreError> {
        // Messages: only channels whose oldest message has come due (or
        // that hold more than their count), earliest first. Idle channels
        // cost nothing here, however many there are.
        let mut visits = Vec::new();
        for item in self.due.iter(wtxn)? {
            let (k, name) = item?;
            if done + visits.len() >= budget || be_u64(k).unwrap_or(0) > now_ms {
                break;
            }
            visits.push((k.to_vec(), name.to_vec()));
        }
        for (key, name) in visits {
            if done >= budget {
                break;
            }
            self.due.delete(wtxn, &key)?;
            let ch = String::from_utf8_lossy(&name).into_owned();
            let Some((id, mut info, live)) = self.channel_rec(wtxn, &ch)? else {
                done += 1;
                continue;
            };
            let limits = retention(&ch);
            let before = info;
            // What count retention hid goes with the visit, so an idle
            // channel keeps nothing past its limit for long.
            let room = budget.saturating_sub(done);
            let dropped = self.drop_hidden(wtxn, id, info.first, room)?;
            done += dropped;
            let mut next_due;
            if (self.compact)(&ch) {
                let (removed, next) =
                    self.trim_compacted(wtxn, id, &mut info, live, limits, Some(now_ms), budget.saturating_sub(done))?;
                done += removed;
                next_due = next;
            } else {
                let due_now = be_u64(&key);
                (done, next_due) = self.trim_front(wtxn, id, &mut info, limits, (now_ms, due_now), (done, budget))?;
            }
            if dropped > 0 && dropped == room {
                // Out of budget with hidden messages left: the next pass goes on.
                next_due = be_u64(&key);
            }
            if info != before {
                self.channels.put(wtxn, &name, &encode_channel(id, info, live))?;
            } else {
                // Visited early (count retention on append moved `first`
                // on): work too, so a pass stays bounded.
                done += 1;
            }
            if let Some(at) = next_due {
                self.due.put(wtxn, &due_key(at, id), &name)?;
            }
        }
        Ok(done)
    }

    /// Trims an ordinary channel from its oldest message while it is over
    /// the count limit or too old, until `done` reaches `budget`. Returns the
    /// work done in all and when the channel is next due (`due_now` when
    /// out of budget).
    fn trim_front(
        &self,
        wtxn: &mut RwTxn,
        id: u64,
        info: &mut ChannelInfo,
        limits: Retention,
        (now_ms, due_now): (u64, Option<u64>),
        (mut done, budget): (usize, usize),
    ) -> Result<(usize, Option<u64>), StoreError> {
        let oldest_allowed = now_ms.saturating_sub(limits.age_ms);
        while info.first <= info.last {
            let k = msg_key(id, info.first);
            // `None`: already gone, just advance.
            let ts = self.messages.get(wtxn, &k)?.map(|v| be_u64(v).unwrap_or(0));
            let too_many = info.count() > limits.messages.max(1);
            let too_old = ts.is_none_or(|ts| ts < oldest_allowed);
            if !(too_many || too_old) {
                return Ok((done, ts.map(|ts| due_at(ts, limits.age_ms))));
            }
            if done >= budget {
                // Out of budget: still due, the next pass goes on.
                return Ok((done, due_now));
            }
            self.messages.delete(wtxn, &k)?;
            info.first += 1;
            // A channel compacted before: its holes go as `first` passes them.
            info.holes = info.holes.saturating_sub(ts.is_none() as u64);
            done += 1;
        }
        Ok((done, None))
    }

    /// Makes the `due` index match `rules`, a description of the retention
    /// settings: each entry's time depends on them, so the index is built
    /// for a store written before it existed and rebuilt when the settings
    /// changed. A no-op when it matches. Runs in transactions of
    /// `INDEX_CHUNK` channels; until it finishes, the old rules stay unmarked
    /// and a restart builds it again. Returns the channels it visited.
    pub fn index_retention(&self, rules: &str, retention: &dyn Fn(&str) -> Retention) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        if self.meta.get(&rtxn, b"due_rules")? == Some(rules.as_bytes()) {
            return Ok(0);
        }
        drop(rtxn);
        let mut wtxn = self.env.write_txn()?;
        self.meta.delete(&mut wtxn, b"due_rules")?;
        self.due.clear(&mut wtxn)?;
        let mut after: Option<Vec<u8>> = None;
        let mut visited = 0;
        loop {
            let mut chunk = Vec::new();
            let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            for item in self.channels.range(&wtxn, &(from, Bound::Unbounded))?.take(INDEX_CHUNK) {
                let (name, v) = item?;
                chunk.push((name.to_vec(), decode_channel(v)));
            }
            for (name, record) in &chunk {
                let Some((id, info, _)) = *record else { continue };
                if info.count() == 0 {
                    continue;
                }
                let limits = retention(&String::from_utf8_lossy(name));
                let oldest = self.messages.get(&wtxn, &msg_key(id, info.first))?.and_then(be_u64);
                let at = match oldest {
                    Some(ts) if info.count() <= limits.messages.max(1) => due_at(ts, limits.age_ms),
                    // Over a lowered count limit, or a hole: trim now.
                    _ => 0,
                };
                self.due.put(&mut wtxn, &due_key(at, id), name)?;
            }
            visited += chunk.len() as u64;
            after = chunk.last().map(|(name, _)| name.clone());
            if chunk.len() < INDEX_CHUNK {
                break;
            }
            wtxn.commit()?;
            wtxn = self.env.write_txn()?;
        }
        self.meta.put(&mut wtxn, b"due_rules", rules.as_bytes())?;
        wtxn.commit()?;
        Ok(visited)
    }

    /// Writes a compacted, consistent copy of the store into `file`, a new
    /// empty file at `path` that the caller created (0600, `O_EXCL`), and
    /// gives the copy a new epoch (spec §6): the copy carries the same
    /// history, but a store restored from it will hand out seqs that
    /// clients already saw with other messages, so every resume against it
    /// must be told `gap`. Returns the copy's epoch. A cluster replica's copy
    /// keeps the stream's epoch and its last applied stream sequence: a node
    /// seeded from it applies the rest of the stream and hands out exactly
    /// the seqs every other node does (cluster.md).
    pub fn backup(&self, mut file: File, path: &Path) -> Result<String, StoreError> {
        let fail = |e: &dyn fmt::Display| StoreError::Fatal(format!("cannot write backup {}: {e}", path.display()));
        self.env.copy_to_file(&mut file, CompactionOption::Enabled).map_err(|e| fail(&e))?;
        file.sync_all().map_err(|e| fail(&e))?;
        // NO_LOCK: the copy is ours alone (just created with O_EXCL), and a
        // lock file would be one more path to create beside FILE.
        let env = open_env(path, self.env.info().map_size as u64, EnvFlags::NO_SUB_DIR | EnvFlags::NO_LOCK)?;
        let mut wtxn = env.write_txn()?;
        let meta: Db = env.create_database(&mut wtxn, Some("meta"))?;
        let epoch = match meta.get(&wtxn, b"stream_seq")? {
            Some(_) => meta.get(&wtxn, b"epoch")?.map(|e| String::from_utf8_lossy(e).into_owned()).unwrap_or_default(),
            None => new_epoch(),
        };
        meta.put(&mut wtxn, b"epoch", epoch.as_bytes())?;
        wtxn.commit()?;
        env.force_sync()?;
        Ok(epoch)
    }

    /// Bytes of the map in use, and the map size.
    pub fn usage(&self) -> (u64, u64) {
        let info = self.env.info();
        let stat = self.env.stat();
        let used = (info.last_page_number as u64 + 1) * stat.page_size as u64;
        (used, info.map_size as u64)
    }
}

/// Opens an LMDB environment: the crate's one `unsafe` call.
fn open_env(path: &Path, max_bytes: u64, flags: EnvFlags) -> Result<Env, StoreError> {
    let mut opts = EnvOpenOptions::new();
    opts.map_size(max_bytes as usize).max_dbs(16).max_readers(126);
    // SAFETY: heed requires that the environment is not opened twice in
    // this process and that nothing else truncates or maps the file in a
    // way that breaks LMDB's assumptions. `claim` (taken by `serve` before
    // `Store::open`) keeps other roostd servers out of the folder, and this
    // process opens each store once. The flags: `NO_SUB_DIR | NO_LOCK` only
    // for a backup copy, a file `backup` has just created with O_EXCL, that
    // nothing else has open, so no lock is needed.
    #[allow(unsafe_code)]
    let env = unsafe { opts.flags(flags).open(path) }?;
    Ok(env)
}

fn new_epoch() -> String {
    let mut b = [0u8; 12];
    // Without randomness two stores could share an epoch; fall back to the
    // clock and the pid, which still differ between any two creations.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b[..8].copy_from_slice(&(t as u64).to_be_bytes());
        b[8..].copy_from_slice(&std::process::id().to_be_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn msg_key(chan: u64, seq: Seq) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&chan.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Most messages hidden by count retention that one append deletes: bounds
/// a commit after a limit was lowered (later runs and maintenance do the rest).
const MAX_HIDDEN_DROP: usize = 4096;

/// Count retention deletes the messages it hid each time `first` passes a
/// multiple of this: at most 1/16 of the limit (and 1024 messages) stored
/// beyond it, in exchange for one run of deletions instead of one per append.
fn hidden_run(keep: u64) -> u64 {
    (keep / 16).clamp(1, 1024)
}

/// Channels indexed per transaction by `index_retention`: bounds its dirty pages.
const INDEX_CHUNK: usize = 10_000;

/// When a message stored at `ts` passes an age limit: maintenance trims a
/// message once `ts < now - age`, i.e. from `ts + age + 1` on.
fn due_at(ts: u64, age_ms: u64) -> u64 {
    ts.saturating_add(age_ms).saturating_add(1)
}

fn due_key(at: u64, chan: u64) -> [u8; 16] {
    msg_key(at, chan)
}

/// A channel record: 24 bytes, as before keys existed, unless the channel
/// has holes or live keys (then 40).
fn encode_channel(id: u64, info: ChannelInfo, keys: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(40);
    for n in [id, info.first, info.last] {
        v.extend_from_slice(&n.to_be_bytes());
    }
    if info.holes > 0 || keys > 0 {
        v.extend_from_slice(&info.holes.to_be_bytes());
        v.extend_from_slice(&keys.to_be_bytes());
    }
    v
}

/// A channel record: id, state and live key count.
fn decode_channel(v: &[u8]) -> Option<(u64, ChannelInfo, u64)> {
    let info = ChannelInfo {
        first: be_u64(v.get(8..)?)?,
        last: be_u64(v.get(16..)?)?,
        holes: v.get(24..).and_then(be_u64).unwrap_or(0),
    };
    Some((be_u64(v)?, info, v.get(32..).and_then(be_u64).unwrap_or(0)))
}

/// A `(sub, id)` not published within the window: its index key, and the
/// expiry entry of its expired on-disk record, if it has one.
struct Known {
    key: dedupe::Key,
    stale: Option<Vec<u8>>,
}

/// A keyed message just stored on a compacted channel (`Store::keep_latest`).
struct Keyed<'a> {
    id: u64,
    ch: &'a str,
    key: &'a str,
    /// The key's previous message, if it had one.
    prev: Option<Seq>,
    seq: Seq,
    /// A tombstone (`data` is `null`): when it expires.
    tombstone_until: Option<u64>,
}

/// A message's value: `ts u64 | from len u16 | from`, then, only when it has
/// a key or an event, `0 | key len u8 | key | event len u16 | event` (JSON
/// text never starts with NUL), then `data`.
fn encode_message(a: &Append, now_ms: u64) -> Vec<u8> {
    let (key, event) = (a.key.as_deref().map(str::as_bytes), a.event.as_deref().map(str::as_bytes));
    let from = &a.from.as_bytes()[..a.from.len().min(u16::MAX as usize)];
    let extra = if key.is_some() || event.is_some() {
        4 + key.map_or(0, <[u8]>::len) + event.map_or(0, <[u8]>::len)
    } else {
        0
    };
    let mut value = Vec::with_capacity(10 + from.len() + extra + a.data.len());
    value.extend_from_slice(&now_ms.to_be_bytes());
    value.extend_from_slice(&(from.len() as u16).to_be_bytes());
    value.extend_from_slice(from);
    if extra > 0 {
        let (key, event) = (key.unwrap_or_default(), event.unwrap_or_default());
        value.push(0);
        value.push(key.len() as u8);
        value.extend_from_slice(key);
        value.extend_from_slice(&(event.len() as u16).to_be_bytes());
        value.extend_from_slice(event);
    }
    value.extend_from_slice(a.data.as_bytes());
    value
}

fn decode_message<'a>(k: &[u8], v: &'a [u8]) -> Option<Record<'a>> {
    let text = |b: Option<&'a [u8]>| std::str::from_utf8(b?).ok();
    let seq = be_u64(k.get(8..)?)?;
    let ts = be_u64(v)?;
    let flen = u16::from_be_bytes(v.get(8..10)?.try_into().ok()?) as usize;
    let from = text(v.get(10..10 + flen))?;
    let mut rest = v.get(10 + flen..)?;
    let (mut key, mut event) = (None, None);
    // JSON text never starts with NUL: the marker of a key or event.
    if rest.first() == Some(&0) {
        let klen = *rest.get(1)? as usize;
        let elen = u16::from_be_bytes(rest.get(2 + klen..4 + klen)?.try_into().ok()?) as usize;
        key = Some(text(rest.get(2..2 + klen))?).filter(|k| !k.is_empty());
        event = Some(text(rest.get(4 + klen..4 + klen + elen))?).filter(|e| !e.is_empty());
        rest = rest.get(4 + klen + elen..)?;
    }
    Some(Record { seq, ts, from, data: text(Some(rest))?, key, event })
}

fn key_key(chan: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&chan.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// Channel names hold no NUL byte, so it ends the channel part.
fn member_key(ch: &str, user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(ch.len() + 1 + user.len());
    k.extend_from_slice(ch.as_bytes());
    k.push(0);
    k.extend_from_slice(user.as_bytes());
    k
}

/// A cluster holding's key without its node: `ch \0 user \0` for a
/// member, `ch \0` for occupancy; the node's name ([`NODE_BYTES`]) follows.
fn held_prefix(ch: &str, user: Option<&str>) -> Vec<u8> {
    let mut k = Vec::with_capacity(ch.len() + 2 + user.map_or(0, str::len) + NODE_BYTES);
    k.extend_from_slice(ch.as_bytes());
    k.push(0);
    if let Some(user) = user {
        k.extend_from_slice(user.as_bytes());
        k.push(0);
    }
    k
}

/// A holding's key back into channel, member and node. Channel names hold
/// no NUL, and the node is the key's fixed-length tail, so a user with
/// NUL in it is still read back whole.
fn split_held(k: &[u8]) -> Option<(String, Option<String>, String)> {
    let cut = k.len().checked_sub(NODE_BYTES + 1).filter(|&at| k[at] == 0)?;
    let node = String::from_utf8_lossy(&k[cut + 1..]).into_owned();
    let head = &k[..cut];
    let (ch, user) = match head.iter().position(|&b| b == 0) {
        Some(at) => (&head[..at], Some(String::from_utf8_lossy(&head[at + 1..]).into_owned())),
        None => (head, None),
    };
    Some((String::from_utf8_lossy(ch).into_owned(), user, node))
}

/// How many nodes hold the holding whose key starts with `prefix`.
fn holders(db: Db, txn: &RoTxn, prefix: &[u8]) -> Result<usize, StoreError> {
    let mut n = 0;
    for item in db.prefix_iter(txn, prefix)? {
        let (k, _) = item?;
        n += usize::from(k.len() == prefix.len() + NODE_BYTES && !k[prefix.len()..].contains(&0));
    }
    Ok(n)
}

fn decode_event<'a>(k: &[u8], v: &'a [u8]) -> Option<OutboxEvent<'a>> {
    let clen = u16::from_be_bytes(v.get(8..10)?.try_into().ok()?) as usize;
    Some(OutboxEvent {
        n: be_u64(k)?,
        created_ms: be_u64(v)?,
        channel: std::str::from_utf8(v.get(10..10 + clen)?).ok()?,
        json: std::str::from_utf8(v.get(10 + clen..)?).ok()?,
    })
}

/// Appends `s` as a JSON string (the store may not use `wire`).
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn dedupe_key(from: &str, id: &str) -> Vec<u8> {
    let from = &from.as_bytes()[..from.len().min(u16::MAX as usize)];
    let mut k = Vec::with_capacity(2 + from.len() + id.len());
    k.extend_from_slice(&(from.len() as u16).to_be_bytes());
    k.extend_from_slice(from);
    k.extend_from_slice(id.as_bytes());
    k
}

/// LMDB's largest key (its default `MDB_MAXKEYSIZE`).
const MAX_KEY_BYTES: usize = 511;

/// The most bytes a `sub` and an id (as JSON text) may have together for a
/// publish with that id: the longest key they make is the expiry key,
/// `expires u64 | sub len u16 | sub | id`, and LMDB keys are at most 511
/// bytes. A longer pair would make the commit fail, so the edges (`hub`
/// for `pub`, `api` for `Idempotency-Key`) refuse it with `bad_request`.
pub const MAX_DEDUPE_SUB_AND_ID_BYTES: usize = MAX_KEY_BYTES - 8 - 2;

/// True when a publish by `sub` with this id (JSON text) fits the store.
pub fn dedupe_fits(sub: &str, id: &str) -> bool {
    sub.len() + id.len() <= MAX_DEDUPE_SUB_AND_ID_BYTES
}

fn decode_dedupe(v: &[u8]) -> Option<(Seq, u64, u64, &str)> {
    Some((be_u64(v)?, be_u64(v.get(8..)?)?, be_u64(v.get(16..)?)?, std::str::from_utf8(v.get(24..)?).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP_ALL: Retention = Retention { messages: u64::MAX, age_ms: u64::MAX };

    fn append(ch: &str, from: &str, data: &str, id: Option<&str>) -> Append {
        Append { ch: ch.into(), from: from.into(), data: data.into(), id: id.map(Into::into), key: None, event: None }
    }

    fn msg(a: Append) -> Write {
        Write::Message(a)
    }

    fn all(store: &Store, ch: &str, after: Seq) -> Vec<(Seq, String)> {
        let mut out = Vec::new();
        store
            .read(ch, after, usize::MAX, |r| {
                out.push((r.seq, r.data.to_string()));
                true
            })
            .unwrap();
        out
    }

    #[test]
    fn seqs_are_per_channel_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let epoch;
        {
            let s = Store::open(dir.path(), 1 << 24).unwrap();
            epoch = s.epoch().to_string();
            let out = s
                .append_batch(
                    &[append("a", "u", "1", None), append("b", "u", "2", None), append("a", "u", "3", None)],
                    1000,
                    60_000,
                    &|_| KEEP_ALL,
                )
                .unwrap();
            assert_eq!(
                out,
                vec![
                    Outcome::Stored { seq: 1, ts: 1000 },
                    Outcome::Stored { seq: 1, ts: 1000 },
                    Outcome::Stored { seq: 2, ts: 1000 }
                ]
            );
        }
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        assert_eq!(s.epoch(), epoch, "the epoch never changes");
        assert_eq!(all(&s, "a", 0), vec![(1, "1".into()), (2, "3".into())]);
        assert_eq!(all(&s, "a", 1), vec![(2, "3".into())]);
        assert_eq!(s.channel("a").unwrap(), ChannelInfo { first: 1, last: 2, holes: 0 });
        assert_eq!(s.channel("zzz").unwrap(), ChannelInfo::EMPTY);
        assert_eq!(s.channels("", 10).unwrap().len(), 2);
        assert_eq!(s.clock_floor().unwrap(), 0, "append_batch saves no clock floor");
    }

    #[test]
    fn an_applied_message_keeps_the_stream_time_and_its_sequence_commits_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1 << 24).unwrap();
        assert_eq!(s.stream_seq().unwrap(), None, "a single node's store");
        assert!(s.become_replica("streamepoch").unwrap());
        assert_eq!((s.epoch(), s.stream_seq().unwrap()), ("streamepoch", Some(0)));
        let w = |after, seq, ts_ms, id: Option<&str>| Write::Applied {
            append: append("c", "alice", "1", id),
            stream_seq: seq,
            ts_ms,
            after,
        };
        let two = [w(0, 5, 1000, Some("\"a\"")), w(5, 7, 2000, None)];
        let out = s.commit(&two, 99_999, 60_000, &|_| KEEP_ALL, Commit::default());
        assert_eq!(out.unwrap(), [Outcome::Stored { seq: 1, ts: 1000 }, Outcome::Stored { seq: 2, ts: 2000 }]);
        assert_eq!(s.stream_seq().unwrap(), Some(7));
        let out = s.commit(&[w(6, 9, 3000, None)], 99_999, 60_000, &|_| KEEP_ALL, Commit::default());
        assert_eq!(out.unwrap(), [Outcome::Invalid(OUT_OF_ORDER.into())], "after a failed commit, no hole");
        assert_eq!(s.stream_seq().unwrap(), Some(7));
        assert_eq!(s.published("alice", "\"a\"").unwrap(), Some(("c".into(), 1, 1000)));
        assert_eq!(s.published("bob", "\"a\"").unwrap(), None);
        let out = s.commit(&[w(7, 8, 3000, Some("\"a\""))], 99_999, 60_000, &|_| KEEP_ALL, Commit::default());
        assert_eq!(out.unwrap(), [Outcome::Duplicate { ch: "c".into(), seq: 1, ts: 1000 }]);
        assert_eq!(s.stream_seq().unwrap(), Some(8), "a duplicate is applied too: nothing to do again");
        drop(s);
        let mut s = Store::open(dir.path(), 1 << 24).unwrap();
        assert_eq!((s.epoch(), s.stream_seq().unwrap()), ("streamepoch", Some(8)), "both survive a restart");
        assert!(!s.become_replica("other").unwrap(), "a replica does not change streams");
        assert_eq!(s.epoch(), "streamepoch");
    }

    #[test]
    fn holdings_are_idempotent_and_only_the_first_and_last_holder_make_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1 << 24).unwrap();
        s.become_replica("e").unwrap();
        let (a, b) = ("aaaaaaaaaaaa", "bbbbbbbbbbbb");
        let hold = |node: &str, user: Option<&str>, on| Holding {
            ch: "presence-r".into(),
            user: user.map(String::from),
            node: node.into(),
            info: Some("{}".into()).filter(|_| user.is_some()),
            on,
        };
        let all = HOOK_MEMBER_ADDED | HOOK_MEMBER_REMOVED | HOOK_CHANNEL_OCCUPIED | HOOK_CHANNEL_VACATED;
        let mut seq = 0;
        let mut apply = |w: &dyn Fn(u64, u64) -> Write| {
            seq += 1;
            let out = s.commit(&[w(seq, seq - 1)], 5, 10, &|_| KEEP_ALL, Commit::default()).unwrap();
            assert_eq!(out, [Outcome::Written]);
        };
        let held = |h: Holding| move |stream_seq, after| Write::Held { hold: h.clone(), stream_seq, after, hooks: all };
        apply(&held(hold(a, Some("al\0ice"), true)));
        apply(&held(hold(a, Some("al\0ice"), true))); // the same record twice: nothing new
        apply(&held(hold(b, Some("al\0ice"), true))); // a second holder: no event
        apply(&held(hold(a, None, true)));
        apply(&held(hold(b, Some("al\0ice"), false))); // one holder left: no event
        apply(&held(hold(b, Some("bob"), true)));
        apply(&|stream_seq, after| Write::Gone { node: a.into(), stream_seq, after, hooks: all });
        apply(&|stream_seq, after| Write::Gone { node: a.into(), stream_seq, after, hooks: all }); // again: nothing
        let mut events = Vec::new();
        s.outbox(0, 100, |e| {
            let v: serde_json::Value = serde_json::from_str(e.json).unwrap();
            events.push(format!("{} {} {}", v["id"].as_str().unwrap(), v["name"].as_str().unwrap(), v["user_id"]));
            true
        })
        .unwrap();
        let expected = [
            "e-s1 member_added \"al\\u0000ice\"",
            "e-s4 channel_occupied null",
            "e-s6 member_added \"bob\"",
            "e-s7.1 member_removed \"al\\u0000ice\"",
            "e-s7.2 channel_vacated null",
        ];
        assert_eq!(events, expected);
        let mut left = Vec::new();
        s.held(|ch, user, node, info| left.push(format!("{ch} {user:?} {node} {info}"))).unwrap();
        assert_eq!(left, ["presence-r Some(\"bob\") bbbbbbbbbbbb {}"]);
        assert_eq!(s.stream_seq().unwrap(), Some(8));
        let late = Write::Held { hold: hold(a, None, true), stream_seq: 20, after: 3, hooks: 0 };
        let out = s.commit(&[late], 5, 10, &|_| KEEP_ALL, Commit::default()).unwrap();
        assert_eq!(out, [Outcome::Invalid(OUT_OF_ORDER.into())], "in stream order only");
    }

    #[test]
    fn a_replicas_backup_keeps_the_streams_epoch_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1 << 24).unwrap();
        s.become_replica("streamepoch").unwrap();
        let w = Write::Applied { append: append("c", "a", "1", None), stream_seq: 4, ts_ms: 9, after: 0 };
        s.commit(&[w], 10, 10, &|_| KEEP_ALL, Commit::default()).unwrap();
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("copy.mdb");
        let file = OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
        assert_eq!(s.backup(file, &path).unwrap(), "streamepoch");
        let seed = out.path().join("seed");
        fs::create_dir(&seed).unwrap();
        fs::rename(&path, seed.join("data.mdb")).unwrap();
        let r = Store::open(&seed, 1 << 24).unwrap();
        assert_eq!((r.epoch(), r.stream_seq().unwrap()), ("streamepoch", Some(4)));
    }

    #[test]
    fn a_single_nodes_history_is_not_turned_into_a_replica() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path(), 1 << 24).unwrap();
        let epoch = s.epoch().to_string();
        s.append_batch(&[append("c", "a", "1", None)], 1, 1, &|_| KEEP_ALL).unwrap();
        assert!(!s.become_replica("streamepoch").unwrap());
        assert_eq!((s.epoch(), s.stream_seq().unwrap()), (epoch.as_str(), None));
    }

    #[test]
    fn a_new_store_gets_a_new_epoch() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let e1 = Store::open(d1.path(), 1 << 22).unwrap().epoch().to_string();
        let e2 = Store::open(d2.path(), 1 << 22).unwrap().epoch().to_string();
        assert_ne!(e1, e2);
    }

    #[test]
    fn dedupe_returns_the_original_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let batch = [append("a", "alice", "1", Some("7")), append("a", "alice", "1", Some("7"))];
        let out = s.append_batch(&batch, 1000, 500, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[1], Outcome::Duplicate { ch: "a".into(), seq: 1, ts: 1000 });
        // Another sub, or the id as a string, is another message.
        let out = s
            .append_batch(
                &[append("a", "bob", "1", Some("7")), append("a", "alice", "1", Some("\"7\""))],
                1100,
                500,
                &|_| KEEP_ALL,
            )
            .unwrap();
        assert_eq!(out, vec![Outcome::Stored { seq: 2, ts: 1100 }, Outcome::Stored { seq: 3, ts: 1100 }]);
        // Across channels, the id still names the first message.
        let out = s.append_batch(&[append("b", "alice", "x", Some("7"))], 1200, 500, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[0], Outcome::Duplicate { ch: "a".into(), seq: 1, ts: 1000 });
        // Past the window it is new again.
        let out = s.append_batch(&[append("a", "alice", "1", Some("7"))], 1600, 500, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[0], Outcome::Stored { seq: 4, ts: 1600 });
        assert_eq!(all(&s, "a", 0).len(), 4);
    }

    fn dup(out: &[Outcome]) -> Vec<bool> {
        out.iter().map(|o| matches!(o, Outcome::Duplicate { .. })).collect()
    }

    #[test]
    fn ids_are_deduplicated_after_a_restart_from_the_id_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 1 << 24).unwrap();
            s.append_batch(&[append("a", "alice", "1", Some("7"))], 1000, 500, &|_| KEEP_ALL).unwrap();
            assert_eq!(s.dedupe.len(&s.env.read_txn().unwrap()).unwrap(), 0, "no per-id record on disk");
        }
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        assert_eq!(s.published("alice", "7").unwrap(), Some(("a".into(), 1, 1000)), "read from the log before loading");
        let out = s.append_batch(&[append("b", "alice", "2", Some("7"))], 1499, 500, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[0], Outcome::Duplicate { ch: "a".into(), seq: 1, ts: 1000 });
        assert_eq!(s.published("alice", "7").unwrap(), Some(("a".into(), 1, 1000)));
        // Loaded at a time past the window, the id is new again.
        drop(s);
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let out = s.append_batch(&[append("b", "alice", "2", Some("7"))], 1500, 500, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[0], Outcome::Stored { seq: 1, ts: 1500 });
    }

    #[test]
    fn ids_logged_at_an_earlier_time_than_the_last_record_are_kept_too() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 1 << 24).unwrap();
            // The log's keys go by time: a clock set back logs before the last record.
            for (t, id) in [(5000, "late"), (1000, "early"), (3000, "middle")] {
                let out = s.append_batch(&[append("a", "alice", "1", Some(id))], t, 10_000, &|_| KEEP_ALL).unwrap();
                assert!(matches!(out[0], Outcome::Stored { .. }), "{out:?}");
            }
        }
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let again = ["late", "early", "middle"].map(|id| append("b", "alice", "2", Some(id)));
        let out = s.append_batch(&again, 6000, 10_000, &|_| KEEP_ALL).unwrap();
        assert_eq!(dup(&out), [true, true, true], "{out:?}");
    }

    #[test]
    fn an_id_stays_deduplicated_for_the_window_after_retention_removed_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let keep1 = |_: &str| Retention { messages: 1, age_ms: 10 };
        {
            let s = Store::open(dir.path(), 1 << 24).unwrap();
            s.append_batch(&[append("a", "u", "1", Some("x"))], 1000, 60_000, &keep1).unwrap();
            s.append_batch(&[append("a", "u", "2", None)], 1001, 60_000, &keep1).unwrap();
            while s.maintain(5000, 100, &keep1).unwrap() > 0 {}
            assert_eq!(s.channel("a").unwrap().count(), 0, "every message is gone");
            let out = s.append_batch(&[append("a", "u", "1", Some("x"))], 5000, 60_000, &keep1).unwrap();
            assert_eq!(out[0], Outcome::Duplicate { ch: "a".into(), seq: 1, ts: 1000 });
        }
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let out = s.append_batch(&[append("a", "u", "1", Some("x"))], 60_999, 60_000, &keep1).unwrap();
        assert_eq!(out[0], Outcome::Duplicate { ch: "a".into(), seq: 1, ts: 1000 }, "and after a restart");
    }

    #[test]
    fn ids_past_the_memory_bound_are_kept_on_disk_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let ids =
            |from: u32| -> Vec<Append> { (from..5).map(|i| append("a", "u", "1", Some(&i.to_string()))).collect() };
        let disk = |s: &Store| s.dedupe.len(&s.env.read_txn().unwrap()).unwrap();
        {
            let s = Store::open(dir.path(), 1 << 24).unwrap().with_dedupe_memory(3);
            s.append_batch(&ids(0)[..2], 1000, 60_000, &|_| KEEP_ALL).unwrap();
            s.append_batch(&ids(2), 1000, 60_000, &|_| KEEP_ALL).unwrap();
            assert_eq!((s.ids().len(), disk(&s)), (3, 2), "three in memory, the rest on disk");
            let out = s.append_batch(&ids(0), 1001, 60_000, &|_| KEEP_ALL).unwrap();
            assert_eq!(dup(&out), vec![true; 5]);
        }
        // Loaded again with room for one: the log's others go to disk too.
        let s = Store::open(dir.path(), 1 << 24).unwrap().with_dedupe_memory(1);
        let out = s.append_batch(&ids(0), 1002, 60_000, &|_| KEEP_ALL).unwrap();
        assert_eq!(dup(&out), vec![true; 5]);
        assert_eq!(s.ids().len(), 1);
        // The on-disk records expire as they always did; the index keeps its bound.
        while s.maintain(61_000, 100, &|_| KEEP_ALL).unwrap() > 0 {}
        assert_eq!((s.ids().len(), disk(&s)), (0, 0));
        let out = s.append_batch(&ids(0), 61_000, 60_000, &|_| KEEP_ALL).unwrap();
        assert_eq!(dup(&out), vec![false; 5], "past the window every id is new");
    }

    #[test]
    fn a_store_written_before_the_id_log_keeps_its_dedupe_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            // With no room in memory every id is written as before the log.
            let s = Store::open(dir.path(), 1 << 24).unwrap().with_dedupe_memory(0);
            s.append_batch(&[append("a", "u", "1", Some("old"))], 1000, 60_000, &|_| KEEP_ALL).unwrap();
            s.env.write_txn().map(|mut t| (s.idlog.clear(&mut t).unwrap(), t.commit().unwrap())).unwrap();
        }
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let out = s.append_batch(&[append("a", "u", "2", Some("old"))], 2000, 60_000, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[0], Outcome::Duplicate { ch: "a".into(), seq: 1, ts: 1000 });
        assert_eq!(s.published("u", "old").unwrap(), Some(("a".into(), 1, 1000)));
    }

    #[test]
    fn an_id_of_a_refused_job_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let mut bad = append("a", "u", "2", None);
        bad.key = Some("k".repeat(300));
        let writes = [msg(append("a", "u", "1", Some("9"))), msg(bad), msg(append("b", "u", "3", Some("8")))];
        let opts = Commit { isolate: true, jobs: &[2, 1], ..Commit::default() };
        let out = s.commit(&writes, 1000, 60_000, &|_| KEEP_ALL, opts).unwrap();
        assert!(matches!(out[0], Outcome::Invalid(_)), "{out:?}");
        assert_eq!(out[2], Outcome::Stored { seq: 1, ts: 1000 });
        let out = s
            .append_batch(&[append("a", "u", "1", Some("9")), append("c", "u", "3", Some("8"))], 1001, 60_000, &|_| {
                KEEP_ALL
            })
            .unwrap();
        assert_eq!(
            out,
            vec![Outcome::Stored { seq: 1, ts: 1001 }, Outcome::Duplicate { ch: "b".into(), seq: 1, ts: 1000 }]
        );
    }

    #[test]
    fn retention_trims_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let keep3 = |_: &str| Retention { messages: 3, age_ms: 10_000 };
        for i in 0..5u64 {
            s.append_batch(&[append("a", "u", &i.to_string(), None)], 1000 + i, 0, &keep3).unwrap();
        }
        assert_eq!(s.channel("a").unwrap(), ChannelInfo { first: 3, last: 5, holes: 0 });
        assert_eq!(all(&s, "a", 0).iter().map(|m| m.0).collect::<Vec<_>>(), vec![3, 4, 5]);
        // Age: at t = 11_003.5 messages older than 1003.5 are gone.
        assert_eq!(s.maintain(11_004, 100, &keep3).unwrap(), 2);
        assert_eq!(s.channel("a").unwrap(), ChannelInfo { first: 5, last: 5, holes: 0 });
        assert_eq!(s.maintain(11_004, 100, &keep3).unwrap(), 0);
        assert_eq!(s.maintain(99_999, 100, &keep3).unwrap(), 1);
        let info = s.channel("a").unwrap();
        assert_eq!((info, info.count()), (ChannelInfo { first: 6, last: 5, holes: 0 }, 0));
        // Seqs go on after a full trim.
        let out = s.append_batch(&[append("a", "u", "x", None)], 99_999, 0, &keep3).unwrap();
        assert_eq!(out[0], Outcome::Stored { seq: 6, ts: 99_999 });
    }

    fn stored(s: &Store, ch: &str) -> u64 {
        let rtxn = s.env.read_txn().unwrap();
        let Some((id, _)) = s.channel_in(&rtxn, ch).unwrap() else { return 0 };
        s.messages.prefix_iter(&rtxn, &id.to_be_bytes()).unwrap().count() as u64
    }

    #[test]
    fn count_retention_hides_at_once_and_deletes_in_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        // 160 kept: hidden messages go each time `first` passes a multiple of 10.
        let keep = |_: &str| Retention { messages: 160, age_ms: 10_000 };
        for n in 1..=168u64 {
            s.append_batch(&[append("a", "u", &n.to_string(), None)], 1000, 0, &keep).unwrap();
            let first = n.saturating_sub(159).max(1);
            let seqs: Vec<Seq> = all(&s, "a", 0).iter().map(|m| m.0).collect();
            assert_eq!(seqs, (first..=n).collect::<Vec<_>>(), "history never shows more than the limit");
            assert_eq!(s.channel("a").unwrap(), ChannelInfo { first, last: n, holes: 0 });
            // Reading from a hidden seq starts at the oldest kept one.
            assert_eq!(all(&s, "a", first.saturating_sub(5)).first().map(|m| m.0), Some(first));
        }
        assert_eq!(stored(&s, "a"), 168, "seqs 1..=8 hidden, not yet deleted");
        s.append_batch(&[append("a", "u", "169", None)], 1000, 0, &keep).unwrap();
        assert_eq!((stored(&s, "a"), s.channel("a").unwrap().first), (160, 10), "1..=9 in one run");
        // A lowered limit hides at once and deletes at once (up to 4096).
        let keep16 = |_: &str| Retention { messages: 16, age_ms: 10_000 };
        s.append_batch(&[append("a", "u", "170", None)], 1000, 0, &keep16).unwrap();
        assert_eq!((stored(&s, "a"), s.channel("a").unwrap().first), (16, 155));

        // Past the age limit, maintenance takes the hidden ones with the rest.
        let batch: Vec<Append> = (0..165).map(|i| append("b", "u", &i.to_string(), None)).collect();
        s.append_batch(&batch, 1000, 0, &keep).unwrap();
        assert_eq!((stored(&s, "b"), s.channel("b").unwrap().count()), (165, 160));
        while s.maintain(99_999, 100, &keep).unwrap() > 0 {}
        assert_eq!((stored(&s, "b"), s.channel("b").unwrap().count()), (0, 0));
        assert_eq!(stored(&s, "a"), 0);
    }

    #[test]
    fn maintenance_is_bounded_and_expires_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        // One commit's ids are one record of the id log: one unit of work.
        let batch: Vec<Append> = (0..50).map(|i| append("a", "u", "1", Some(&i.to_string()))).collect();
        s.append_batch(&batch, 1000, 100, &|_| KEEP_ALL).unwrap();
        for i in 50..100 {
            s.append_batch(&[append("a", "u", "1", Some(&i.to_string()))], 1000, 100, &|_| KEEP_ALL).unwrap();
        }
        assert_eq!(s.maintain(1099, 40, &|_| KEEP_ALL).unwrap(), 0, "not expired before ts + window");
        assert_eq!(s.maintain(2000, 40, &|_| KEEP_ALL).unwrap(), 10, "a quarter of the budget");
        let mut total = 10;
        loop {
            let n = s.maintain(2000, 40, &|_| KEEP_ALL).unwrap();
            total += n;
            if n == 0 {
                break;
            }
        }
        assert_eq!(total, 51);
        assert_eq!(s.ids().len(), 0, "expired ids leave memory with their record");
        // Expired ids publish anew.
        let out = s.append_batch(&[append("a", "u", "1", Some("3"))], 2000, 100, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[0], Outcome::Stored { seq: 101, ts: 2000 });
    }

    #[test]
    fn maintenance_visits_only_channels_whose_oldest_message_is_due() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 26).unwrap();
        let asked = std::cell::Cell::new(0);
        let ten_s = |_: &str| {
            asked.set(asked.get() + 1);
            Retention { messages: 100, age_ms: 10_000 }
        };
        // 1000 channels: c0000..c0004 written at 1000..1004, the rest at 2000.
        for i in 0..5u64 {
            s.append_batch(&[append(&format!("c{i:04}"), "u", "1", None)], 1000 + i, 0, &ten_s).unwrap();
        }
        let rest: Vec<Append> = (5..1000).map(|i| append(&format!("c{i:04}"), "u", "1", None)).collect();
        s.append_batch(&rest, 2000, 0, &ten_s).unwrap();
        asked.set(0);
        assert_eq!(s.maintain(5_000, 2000, &ten_s).unwrap(), 0);
        assert_eq!(asked.get(), 0, "no channel is due: none is looked at");
        // c0000..c0004 (written at 1000..1004) pass 10 s at 11_001..11_005.
        assert_eq!(s.maintain(11_005, 2000, &ten_s).unwrap(), 5);
        assert_eq!(asked.get(), 5, "only the due channels are looked at");
        assert_eq!(s.channel("c0004").unwrap(), ChannelInfo { first: 2, last: 1, holes: 0 });
        assert_eq!(s.channel("c0005").unwrap(), ChannelInfo { first: 1, last: 1, holes: 0 });
        // An emptied channel leaves the index until it stores again.
        asked.set(0);
        assert_eq!(s.maintain(11_005, 2000, &ten_s).unwrap(), 0);
        assert_eq!(asked.get(), 0);
        let out = s.append_batch(&[append("c0000", "u", "2", None)], 20_000, 0, &ten_s).unwrap();
        assert_eq!(out[0], Outcome::Stored { seq: 2, ts: 20_000 }, "seqs go on after the channel was emptied");
        assert_eq!(s.maintain(29_999, 2000, &ten_s).unwrap(), 995, "the other 995, not the new message");
        assert_eq!(s.maintain(30_001, 2000, &ten_s).unwrap(), 1);
        assert_eq!(s.channel("c0000").unwrap(), ChannelInfo { first: 3, last: 2, holes: 0 });
    }

    #[test]
    fn an_early_index_entry_costs_one_visit_and_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let keep2 = |_: &str| Retention { messages: 2, age_ms: 1000 };
        // Count retention on append moves `first` past the message the
        // index entry was made for (ts 0): the entry is early, not late.
        for t in [0, 500, 900] {
            s.append_batch(&[append("a", "u", "1", None)], t, 0, &keep2).unwrap();
        }
        assert_eq!(s.channel("a").unwrap(), ChannelInfo { first: 2, last: 3, holes: 0 });
        assert_eq!(s.maintain(1001, 100, &keep2).unwrap(), 1, "a visit that trims nothing");
        assert_eq!(s.maintain(1001, 100, &keep2).unwrap(), 0, "and then the entry is at seq 2's time");
        assert_eq!(s.maintain(1501, 100, &keep2).unwrap(), 1);
        assert_eq!(s.channel("a").unwrap(), ChannelInfo { first: 3, last: 3, holes: 0 });
    }

    #[test]
    fn a_publish_past_max_channels_is_refused_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap().with_max_channels(2);
        let short = |_: &str| Retention { messages: 10, age_ms: 100 };
        let out = s
            .append_batch(
                &[
                    append("a", "u", "1", None),
                    append("b", "u", "1", None),
                    append("c", "u", "1", Some("9")),
                    append("a", "u", "2", None),
                ],
                1000,
                60_000,
                &short,
            )
            .unwrap();
        assert_eq!(
            out,
            vec![
                Outcome::Stored { seq: 1, ts: 1000 },
                Outcome::Stored { seq: 1, ts: 1000 },
                Outcome::OverLimit(Limit::Channels),
                Outcome::Stored { seq: 2, ts: 1000 },
            ]
        );
        assert_eq!((s.channel("c").unwrap(), s.channel_count().unwrap()), (ChannelInfo::EMPTY, 2));
        // The refused id was not remembered: it can be published once there is room.
        let roomy = s.clone().with_max_channels(3);
        let out = roomy.append_batch(&[append("c", "u", "1", Some("9"))], 1001, 60_000, &short).unwrap();
        assert_eq!(out[0], Outcome::Stored { seq: 1, ts: 1001 });
        // An emptied channel keeps its record, so it still counts.
        while s.maintain(5000, 100, &short).unwrap() > 0 {}
        assert_eq!(s.channel("a").unwrap(), ChannelInfo { first: 3, last: 2, holes: 0 });
        let out =
            roomy.append_batch(&[append("d", "u", "1", None), append("a", "u", "3", None)], 5000, 0, &short).unwrap();
        assert_eq!(out, vec![Outcome::OverLimit(Limit::Channels), Outcome::Stored { seq: 3, ts: 5000 }]);
    }

    #[test]
    fn channels_come_in_pages_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let batch: Vec<Append> = ["b", "a:1", "c", "a"].iter().map(|ch| append(ch, "u", "1", None)).collect();
        s.append_batch(&batch, 1, 0, &|_| KEEP_ALL).unwrap();
        let names = |after: &str, limit: usize| -> Vec<String> {
            s.channels(after, limit).unwrap().into_iter().map(|(ch, _)| ch).collect()
        };
        assert_eq!(names("", 2), ["a", "a:1"]);
        assert_eq!(names("a:1", 2), ["b", "c"]);
        assert_eq!(names("c", 2), Vec::<String>::new());
        assert_eq!(names("a:", 10), ["a:1", "b", "c"], "after need not be a channel");
        assert_eq!(names("", 10).len(), 4);
    }

    /// Makes `s` look like a store written before the `due` index existed.
    fn forget_index(s: &Store) {
        let mut wtxn = s.env.write_txn().unwrap();
        s.due.clear(&mut wtxn).unwrap();
        s.meta.delete(&mut wtxn, b"due_rules").unwrap();
        wtxn.commit().unwrap();
    }

    #[test]
    fn an_old_store_is_indexed_on_start_and_reindexed_when_the_rules_change() {
        let dir = tempfile::tempdir().unwrap();
        let week = |_: &str| Retention { messages: 100, age_ms: 604_800_000 };
        {
            let s = Store::open(dir.path(), 1 << 26).unwrap();
            // Two messages in each of c00000..c10004; c{k}xxx written at 1000 + k.
            let names: Vec<String> = (0..INDEX_CHUNK + 5).map(|i| format!("c{i:05}")).collect();
            for (k, chunk) in names.chunks(1000).enumerate() {
                let batch: Vec<Append> =
                    chunk.iter().flat_map(|ch| [append(ch, "u", "1", None), append(ch, "u", "2", None)]).collect();
                s.append_batch(&batch, 1000 + k as u64, 0, &week).unwrap();
            }
            // One emptied channel: no index entry, but a record.
            s.append_batch(&[append("empty", "u", "1", None)], 0, 0, &week).unwrap();
            assert_eq!(s.maintain(604_800_001, 100, &week).unwrap(), 1);
            forget_index(&s);
        }
        let s = Store::open(dir.path(), 1 << 26).unwrap();
        let n = INDEX_CHUNK as u64 + 6;
        assert_eq!(s.channel_count().unwrap(), n, "counted without a counter");
        assert_eq!(s.maintain(10_000_000_000, 2000, &week).unwrap(), 0, "nothing is indexed yet");
        assert_eq!(s.index_retention("week", &week).unwrap(), n);
        assert_eq!(s.index_retention("week", &week).unwrap(), 0, "built once");
        // c00000..c00999 (ts 1000) pass a week at 604_801_001; the rest later.
        assert_eq!(s.maintain(604_801_001, 2000, &week).unwrap(), 2000);
        assert_eq!(s.maintain(604_801_001, 2000, &week).unwrap(), 0);
        assert_eq!(s.channel("c00999").unwrap(), ChannelInfo { first: 3, last: 2, holes: 0 });
        assert_eq!(s.channel("c01000").unwrap(), ChannelInfo { first: 1, last: 2, holes: 0 });
        // Lower limits take effect at once: the index is rebuilt for them.
        let one = |_: &str| Retention { messages: 1, age_ms: 604_800_000 };
        assert_eq!(s.index_retention("one", &one).unwrap(), n);
        let mut trimmed = 0;
        loop {
            let done = s.maintain(2000, 2000, &one).unwrap();
            trimmed += done;
            if done < 2000 {
                break;
            }
        }
        assert_eq!(trimmed, INDEX_CHUNK + 5 - 1000, "one message of each channel that had two");
        assert_eq!(s.channel("c01000").unwrap(), ChannelInfo { first: 2, last: 2, holes: 0 });
        assert_eq!(
            s.channel(&format!("c{:05}", INDEX_CHUNK + 4)).unwrap(),
            ChannelInfo { first: 2, last: 2, holes: 0 }
        );
    }

    #[test]
    fn a_full_map_refuses_writes_and_keeps_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        let big = format!("\"{}\"", "x".repeat(4000));
        s.append_batch(&[append("a", "u", "1", None)], 1, 0, &|_| KEEP_ALL).unwrap();
        let mut full = false;
        for _ in 0..1000 {
            match s.append_batch(&[append("a", "u", &big, None)], 1, 0, &|_| KEEP_ALL) {
                Ok(_) => {}
                Err(StoreError::Full) => {
                    full = true;
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(full);
        assert_eq!(all(&s, "a", 0)[0], (1, "1".to_string()));
    }

    #[test]
    fn backup_is_a_working_store() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("live"), 1 << 24).unwrap();
        s.append_batch(&[append("a", "u", "{\"k\":1}", None)], 5, 0, &|_| KEEP_ALL).unwrap();
        let restored = dir.path().join("restored");
        fs::create_dir_all(&restored).unwrap();
        let path = restored.join("data.mdb");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let epoch = s.backup(file, &path).unwrap();
        assert_eq!(fs::read_dir(&restored).unwrap().count(), 1, "no lock file beside the copy");
        let r = Store::open(&restored, 1 << 24).unwrap();
        assert_ne!(r.epoch(), s.epoch(), "a copy is another history: a new epoch");
        assert_eq!(r.epoch(), epoch);
        assert_eq!(all(&r, "a", 0), vec![(1, "{\"k\":1}".to_string())]);
    }

    #[test]
    fn commit_saves_the_clock_floor_only_when_given_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let opts = Commit { floor: Some(5000), ..Commit::default() };
        s.commit(&[msg(append("a", "u", "1", None))], 4000, 0, &|_| KEEP_ALL, opts).unwrap();
        assert_eq!(s.clock_floor().unwrap(), 5000);
        s.commit(&[msg(append("a", "u", "2", None))], 9000, 0, &|_| KEEP_ALL, Commit::default()).unwrap();
        assert_eq!(s.clock_floor().unwrap(), 5000);
        s.save_clock_floor(3000).unwrap();
        assert_eq!(s.clock_floor().unwrap(), 3000, "a floor can be lowered");
    }

    #[test]
    fn an_item_lmdb_refuses_fails_alone_when_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        // Past the edge checks on purpose: a sub and id too long for a key.
        let long = "s".repeat(MAX_DEDUPE_SUB_AND_ID_BYTES);
        let batch =
            [append("a", "u", "1", Some("1")), append("a", &long, "2", Some("22")), append("a", "u", "3", None)];
        match s.append_batch(&batch, 1000, 60_000, &|_| KEEP_ALL) {
            Err(e @ StoreError::Content(_)) => assert!(!e.is_fatal() && !e.is_transient(), "{e}"),
            other => panic!("expected a content error, got {other:?}"),
        }
        assert_eq!(s.channel("a").unwrap(), ChannelInfo::EMPTY, "nothing of the failed batch is stored");
        let writes: Vec<Write> = batch.iter().cloned().map(Write::Message).collect();
        let out =
            s.commit(&writes, 1000, 60_000, &|_| KEEP_ALL, Commit { isolate: true, ..Commit::default() }).unwrap();
        assert_eq!(out[0], Outcome::Stored { seq: 1, ts: 1000 });
        assert!(matches!(out[1], Outcome::Invalid(_)), "{:?}", out[1]);
        assert_eq!(out[2], Outcome::Stored { seq: 2, ts: 1000 });
        assert_eq!(all(&s, "a", 0), vec![(1, "1".into()), (2, "3".into())]);
        // The dedupe record of the first item is there, the refused one left nothing.
        let again = s.append_batch(&batch[..1], 1001, 60_000, &|_| KEEP_ALL).unwrap();
        assert_eq!(again[0], Outcome::Duplicate { ch: "a".into(), seq: 1, ts: 1000 });
    }

    #[test]
    fn the_longest_sub_and_id_commit_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let id = "\"k\"";
        let sub = "s".repeat(MAX_DEDUPE_SUB_AND_ID_BYTES - id.len());
        assert!(dedupe_fits(&sub, id));
        let out = s.append_batch(&[append("a", &sub, "1", Some(id))], 1000, 60_000, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[0], Outcome::Stored { seq: 1, ts: 1000 });
        // And it expires like any other (the expiry key is the longest key).
        assert_eq!(s.maintain(61_000, 100, &|_| KEEP_ALL).unwrap(), 1);
        let longer = format!("{sub}s");
        assert!(!dedupe_fits(&longer, id));
        assert!(matches!(
            s.append_batch(&[append("a", &longer, "1", Some(id))], 1000, 60_000, &|_| KEEP_ALL),
            Err(StoreError::Content(_))
        ));
    }

    #[test]
    fn a_second_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = claim(dir.path()).unwrap();
        // flock is per open file description, so a second claim in the same
        // process conflicts just as another process would.
        match claim(dir.path()) {
            Err(StoreError::Locked(m)) => assert!(m.contains(&std::process::id().to_string()), "{m}"),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    fn keyed(ch: &str, key: &str, data: &str) -> Append {
        Append { key: Some(key.into()), ..append(ch, "u", data, None) }
    }

    /// A store that compacts channels starting with `k`.
    fn compacting(dir: &Path, max_keys: u64) -> Store {
        Store::open(dir, 1 << 26).unwrap().with_compaction(Arc::new(|ch: &str| ch.starts_with('k')), max_keys)
    }

    fn seqs(store: &Store, ch: &str) -> Vec<Seq> {
        all(store, ch, 0).into_iter().map(|(seq, _)| seq).collect()
    }

    fn state(store: &Store, ch: &str) -> (Vec<(String, Seq, String)>, ChannelInfo) {
        let mut out = Vec::new();
        let info = store
            .state(ch, |r| {
                out.push((r.key.unwrap().to_string(), r.seq, r.data.to_string()));
                true
            })
            .unwrap();
        (out, info)
    }

    #[test]
    fn a_store_written_before_keys_existed_reads_the_same_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        // The bytes the code before keys wrote: a 24-byte channel record and
        // `ts | from len | from | data` messages.
        let mut wtxn = s.env.write_txn().unwrap();
        let mut v = 1000u64.to_be_bytes().to_vec();
        v.extend_from_slice(&5u16.to_be_bytes());
        v.extend_from_slice(b"alice{\"t\":21}");
        s.messages.put(&mut wtxn, &msg_key(7, 1), &v).unwrap();
        let mut record = 7u64.to_be_bytes().to_vec();
        record.extend_from_slice(&1u64.to_be_bytes());
        record.extend_from_slice(&1u64.to_be_bytes());
        s.channels.put(&mut wtxn, b"old", &record).unwrap();
        s.meta.put(&mut wtxn, b"next_chan", &8u64.to_be_bytes()).unwrap();
        wtxn.commit().unwrap();
        let mut got = Vec::new();
        let info = s
            .read("old", 0, 10, |r| {
                got.push((r.seq, r.ts, r.from.to_string(), r.data.to_string(), r.key.is_some(), r.event.is_some()));
                true
            })
            .unwrap();
        assert_eq!(got, vec![(1, 1000, "alice".into(), "{\"t\":21}".into(), false, false)]);
        assert_eq!((info, info.count()), (ChannelInfo { first: 1, last: 1, holes: 0 }, 1));
        // New messages go on after it; one without key or event is written
        // byte for byte as before, and so is the channel record.
        let plain = append("old", "bob", "2", None);
        let tagged = Append { event: Some("client-x".into()), ..keyed("old", "t", "null") };
        let out = s.append_batch(&[plain, tagged], 2000, 0, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[1], Outcome::Stored { seq: 3, ts: 2000 });
        let rtxn = s.env.read_txn().unwrap();
        let mut old_layout = 2000u64.to_be_bytes().to_vec();
        old_layout.extend_from_slice(&3u16.to_be_bytes());
        old_layout.extend_from_slice(b"bob2");
        assert_eq!(s.messages.get(&rtxn, &msg_key(7, 2)).unwrap(), Some(&old_layout[..]));
        assert_eq!(s.channels.get(&rtxn, b"old").unwrap().map(<[u8]>::len), Some(24));
        drop(rtxn);
        let mut got = Vec::new();
        s.read("old", 1, 10, |r| {
            got.push((r.seq, r.data.to_string(), r.key.map(String::from), r.event.map(String::from)));
            true
        })
        .unwrap();
        assert_eq!(
            got,
            vec![(2, "2".into(), None, None), (3, "null".into(), Some("t".into()), Some("client-x".into()))],
            "on an ordinary channel a key is only stored and `null` is a value"
        );
    }

    #[test]
    fn ten_thousand_keyed_messages_over_100_keys_leave_exactly_100() {
        let dir = tempfile::tempdir().unwrap();
        let s = compacting(dir.path(), 10_000);
        for round in 0..20u64 {
            let batch: Vec<Append> = (0..500u64)
                .map(|i| keyed("kv", &format!("sensor{:03}", i % 100), &(round * 500 + i).to_string()))
                .collect();
            s.append_batch(&batch, 1000 + round, 0, &|_| KEEP_ALL).unwrap();
        }
        let info = s.channel("kv").unwrap();
        assert_eq!((info.last, info.count()), (10_000, 100));
        assert_eq!(seqs(&s, "kv"), (9901..=10_000).collect::<Vec<_>>(), "the latest of each key, nothing else");
        let (snapshot, at) = state(&s, "kv");
        assert_eq!(at.last, 10_000);
        assert_eq!(snapshot.len(), 100);
        assert!(snapshot.windows(2).all(|w| w[0].1 < w[1].1), "ascending seq");
        assert_eq!(snapshot[0], ("sensor000".into(), 9901, "9900".into()));
        let rtxn = s.env.read_txn().unwrap();
        assert_eq!((s.keys.len(&rtxn).unwrap(), s.tombs.len(&rtxn).unwrap()), (100, 0));
    }

    #[test]
    fn a_new_key_past_max_keys_is_refused_and_a_known_key_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = compacting(dir.path(), 2);
        let batch = [keyed("kv", "a", "1"), keyed("kv", "b", "1"), keyed("kv", "c", "1"), keyed("kv", "a", "2")];
        let out = s.append_batch(&batch, 1000, 0, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[2], Outcome::OverLimit(Limit::Keys));
        assert_eq!(out[3], Outcome::Stored { seq: 3, ts: 1000 });
        // A key too long for the value layout fails alone (the edges allow 128 bytes).
        let long = keyed("plain", &"k".repeat(256), "1");
        let out = s.commit(&[msg(long)], 1000, 0, &|_| KEEP_ALL, Commit { isolate: true, ..Commit::default() });
        assert!(matches!(out.unwrap()[..], [Outcome::Invalid(_)]));
        // Unkeyed messages and ordinary channels have no key limit.
        let out = s.append_batch(&[append("kv", "u", "x", None), keyed("plain", "c", "1")], 1000, 0, &|_| KEEP_ALL);
        assert_eq!(out.unwrap(), vec![Outcome::Stored { seq: 4, ts: 1000 }, Outcome::Stored { seq: 1, ts: 1000 }]);
    }

    #[test]
    fn retention_never_removes_the_latest_message_of_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = compacting(dir.path(), 100);
        let two = |_: &str| Retention { messages: 2, age_ms: 1000 };
        // Keyed messages at the front, then five without a key: count
        // retention on append removes unkeyed ones behind the kept keys.
        let mut batch = vec![keyed("kv", "a", "1"), keyed("kv", "b", "1")];
        batch.extend((0..5).map(|i| append("kv", "u", &i.to_string(), None)));
        s.append_batch(&batch, 1000, 0, &two).unwrap();
        assert_eq!(seqs(&s, "kv"), [1, 2, 6, 7]);
        assert_eq!(s.channel("kv").unwrap(), ChannelInfo { first: 1, last: 7, holes: 3 });
        // Age retention takes every unkeyed message and leaves the keys.
        assert_eq!(s.maintain(5000, 100, &two).unwrap(), 2);
        assert_eq!(seqs(&s, "kv"), [1, 2]);
        assert_eq!(s.channel("kv").unwrap().count(), 2);
        assert_eq!(s.maintain(99_000, 100, &two).unwrap(), 0, "nothing removable: no visit is filed");
        // A later unkeyed message is filed and trimmed in time again.
        s.append_batch(&[append("kv", "u", "late", None)], 100_000, 0, &two).unwrap();
        assert_eq!(s.maintain(100_500, 100, &two).unwrap(), 0);
        assert_eq!(s.maintain(101_001, 100, &two).unwrap(), 1);
        assert_eq!(seqs(&s, "kv"), [1, 2]);
        // Superseding the front key moves `first` past the holes.
        s.append_batch(&[keyed("kv", "a", "2")], 101_001, 0, &two).unwrap();
        assert_eq!(s.channel("kv").unwrap(), ChannelInfo { first: 2, last: 9, holes: 6 });
        assert_eq!(s.channel("kv").unwrap().count(), 2);
    }

    #[test]
    fn count_tail_and_read_skip_the_holes_of_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = compacting(dir.path(), 100);
        let batch = [
            keyed("kv", "a", "1"),
            keyed("kv", "b", "2"),
            append("kv", "u", "3", None),
            keyed("kv", "a", "4"),
            keyed("kv", "b", "5"),
            keyed("kv", "c", "6"),
            keyed("kv", "c", "7"),
        ];
        s.append_batch(&batch, 1000, 0, &|_| KEEP_ALL).unwrap();
        let info = s.channel("kv").unwrap();
        assert_eq!((info, info.count()), (ChannelInfo { first: 3, last: 7, holes: 1 }, 4));
        assert_eq!(seqs(&s, "kv"), [3, 4, 5, 7]);
        assert_eq!(all(&s, "kv", 5), vec![(7, "7".to_string())], "read after a seq skips the hole");
        assert_eq!(s.tail("kv", 2).unwrap(), 4, "the last 2 are 5 and 7");
        assert_eq!(s.tail("kv", 3).unwrap(), 3);
        assert_eq!(s.tail("kv", 4).unwrap(), 2);
        assert_eq!(s.tail("kv", 100).unwrap(), 2, "fewer stored: before the oldest");
        assert_eq!((s.tail("kv", 0).unwrap(), s.tail("none", 5).unwrap()), (7, 0));
        let mut last2 = Vec::new();
        s.read("kv", s.tail("kv", 2).unwrap(), 2, |r| {
            last2.push(r.seq);
            true
        })
        .unwrap();
        assert_eq!(last2, [5, 7]);
        let (snapshot, _) = state(&s, "kv");
        let keys: Vec<(&str, Seq)> = snapshot.iter().map(|(k, seq, _)| (k.as_str(), *seq)).collect();
        assert_eq!(keys, [("a", 4), ("b", 5), ("c", 7)]);
    }

    #[test]
    fn state_pages_go_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = compacting(dir.path(), 100);
        let batch = [keyed("kv", "b", "1"), keyed("kv", "c", "2"), keyed("kv", "a", "3"), keyed("k2", "a0", "x")];
        s.append_batch(&batch, 1000, 0, &|_| KEEP_ALL).unwrap();
        let page = |after: &str, limit: usize| {
            let mut keys = Vec::new();
            let info = s
                .state_page("kv", after, limit, |r| {
                    keys.push(r.key.unwrap().to_string());
                    true
                })
                .unwrap();
            (keys, info.last)
        };
        assert_eq!(page("", 2), (vec!["a".to_string(), "b".into()], 3));
        assert_eq!(page("b", 2), (vec!["c".to_string()], 3), "and never another channel's keys");
        assert_eq!(page("c", 2).0, Vec::<String>::new());
        assert_eq!(page("a", 10).0, ["b", "c"]);
    }

    #[test]
    fn a_tombstone_and_its_key_go_after_the_dedupe_window() {
        let dir = tempfile::tempdir().unwrap();
        let s = compacting(dir.path(), 2);
        let batch = [keyed("kv", "a", "1"), keyed("kv", "b", "1"), keyed("kv", "a", "null")];
        s.append_batch(&batch, 1000, 500, &|_| KEEP_ALL).unwrap();
        let (snapshot, _) = state(&s, "kv");
        assert_eq!(
            snapshot,
            [("b".into(), 2, "1".into()), ("a".into(), 3, "null".into())],
            "an unexpired tombstone is state"
        );
        assert_eq!(s.maintain(1500, 100, &|_| KEEP_ALL).unwrap(), 0, "not older than the window yet");
        // A tombstone overwritten in time only loses its index entry.
        s.append_batch(&[keyed("kv", "b", "null"), keyed("kv", "b", "back")], 1100, 500, &|_| KEEP_ALL).unwrap();
        assert_eq!(s.maintain(1501, 100, &|_| KEEP_ALL).unwrap(), 1);
        assert_eq!(s.maintain(1601, 100, &|_| KEEP_ALL).unwrap(), 1);
        let (snapshot, info) = state(&s, "kv");
        assert_eq!(snapshot, [("b".into(), 5, "back".into())]);
        assert_eq!((info.count(), seqs(&s, "kv")), (1, vec![5]));
        // The key no longer counts against --max-keys.
        let out = s.append_batch(&[keyed("kv", "c", "1")], 2000, 500, &|_| KEEP_ALL).unwrap();
        assert_eq!(out[0], Outcome::Stored { seq: 6, ts: 2000 });
    }

    fn writes_for_presence() -> Vec<Write> {
        let join = |user: &str, info: Option<&str>| Write::Member {
            ch: "presence-r".into(),
            user: user.into(),
            info: info.map(Into::into),
            joined: true,
        };
        let added = HookEvent {
            name: "member_added".into(),
            channel: "presence-r".into(),
            user_id: Some("al\"ice".into()),
            extra: String::new(),
        };
        let typed = HookEvent {
            name: "client_event".into(),
            channel: "presence-r".into(),
            user_id: None,
            extra: "\"event\":\"client-typing\",\"data\":\"{}\"".into(),
        };
        vec![
            join("al\"ice", Some("{\"name\":\"A\"}")),
            join("bob", None),
            Write::Occupancy { ch: "presence-r".into(), occupied: true },
            Write::Occupancy { ch: "gone".into(), occupied: true },
            Write::Event(added),
            Write::Event(typed),
            Write::Occupancy { ch: "gone".into(), occupied: false },
            Write::Message(keyed("kv", "a", "1")),
        ]
    }

    /// Members, occupied channels and outbox events (`n`, created, channel and JSON).
    type Presence = (Vec<String>, Vec<String>, Vec<(u64, u64, String)>);

    fn presence_of(s: &Store) -> Presence {
        let (mut members, mut occupied, mut events) = (Vec::new(), Vec::new(), Vec::new());
        s.members(|ch, user, info| members.push(format!("{ch} {user} {info}"))).unwrap();
        s.occupied(|ch| occupied.push(ch.to_string())).unwrap();
        s.outbox(0, 100, |e| {
            events.push((e.n, e.created_ms, format!("{} {}", e.channel, e.json)));
            true
        })
        .unwrap();
        (members, occupied, events)
    }

    #[test]
    fn members_occupancy_and_the_outbox_survive_a_restart_and_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let epoch = {
            let s = compacting(&live, 100);
            let out = s.commit(&writes_for_presence(), 7000, 0, &|_| KEEP_ALL, Commit::default()).unwrap();
            assert!(out[..7].iter().all(|o| *o == Outcome::Written), "{out:?}");
            s.epoch().to_string()
        };
        let s = compacting(&live, 100);
        let (members, occupied, events) = presence_of(&s);
        assert_eq!(members, ["presence-r al\"ice {\"name\":\"A\"}", "presence-r bob "]);
        assert_eq!(occupied, ["presence-r"]);
        assert_eq!(
            events,
            [
                (1, 7000, format!("presence-r {{\"id\":\"{epoch}-1\",\"name\":\"member_added\",\"channel\":\"presence-r\",\"user_id\":\"al\\\"ice\"}}")),
                (2, 7000, format!("presence-r {{\"id\":\"{epoch}-2\",\"name\":\"client_event\",\"channel\":\"presence-r\",\"event\":\"client-typing\",\"data\":\"{{}}\"}}")),
            ]
        );
        assert_eq!(s.outbox_len().unwrap(), 2);
        let mut after1 = Vec::new();
        s.outbox(1, 100, |e| {
            after1.push(e.n);
            true
        })
        .unwrap();
        assert_eq!(after1, [2]);
        // A backup carries all of it, the key index too.
        let restored = dir.path().join("restored");
        fs::create_dir_all(&restored).unwrap();
        let path = restored.join("data.mdb");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        s.backup(file, &path).unwrap();
        let r = compacting(&restored, 100);
        assert_eq!(presence_of(&r), presence_of(&s));
        assert_eq!(state(&r, "kv"), state(&s, "kv"));
        // Leaving, vacating and a delivered event are written like the rest;
        // the counter goes on after a removal.
        let leave = Write::Member { ch: "presence-r".into(), user: "bob".into(), info: None, joined: false };
        let vacated = Write::Occupancy { ch: "presence-r".into(), occupied: false };
        let again = writes_for_presence().swap_remove(4);
        let opts = Commit { removed: &[1], ..Commit::default() };
        s.commit(&[leave, vacated, again], 8000, 0, &|_| KEEP_ALL, opts).unwrap();
        let (members, occupied, events) = presence_of(&s);
        assert_eq!((members.len(), occupied.len()), (1, 0));
        assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), [2, 3]);
        assert!(events[1].2.contains(&format!("\"id\":\"{epoch}-3\"")), "{events:?}");
    }

    #[test]
    fn an_isolated_job_lmdb_refuses_fails_whole_with_its_event() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 1 << 24).unwrap();
        let event = |user: &str| {
            let user_id = Some(user.into());
            Write::Event(HookEvent { name: "member_added".into(), channel: "p".into(), user_id, extra: String::new() })
        };
        let member = |user: &str| Write::Member { ch: "p".into(), user: user.into(), info: None, joined: true };
        let long = "u".repeat(600);
        let batch = [member("ann"), event("ann"), event(&long), member(&long), member("bob"), event("bob")];
        assert!(matches!(s.commit(&batch, 1, 0, &|_| KEEP_ALL, Commit::default()), Err(StoreError::Content(_))));
        assert_eq!(s.outbox_len().unwrap(), 0, "nothing of a failed commit");
        let out =
            s.commit(&batch, 1, 0, &|_| KEEP_ALL, Commit { isolate: true, jobs: &[2, 2, 2], ..Commit::default() });
        let out = out.unwrap();
        assert_eq!(out[..2], [Outcome::Written, Outcome::Written]);
        assert!(matches!(out[2..4], [Outcome::Invalid(_), Outcome::Invalid(_)]), "{out:?}");
        assert_eq!(out[4..], [Outcome::Written, Outcome::Written]);
        let (members, _, events) = presence_of(&s);
        assert_eq!(members, ["p ann ", "p bob "]);
        assert_eq!(events.len(), 2, "the refused member's event is not in the outbox");
    }
}
