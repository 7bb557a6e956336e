//! The writer thread: group commit and maintenance, off the event loop.
//!
//! An fsync on an SD card can take tens of milliseconds. If the loop
//! committed, every socket would stall for that long on every turn. Instead
//! the loop hands each turn's publishes to this thread and goes on serving;
//! while one commit is in flight the next turns' publishes queue up, and the
//! thread takes all of them into its next transaction. So the more
//! publishers, the more messages share one fsync (group commit), and the loop
//! never waits for the disk.
//!
//! Results come back in commit order through a channel, and `wake` (a
//! `mio::Waker` in the server) tells the loop to collect them. Between
//! batches the thread runs retention and dedupe expiry in small bounded
//! transactions, so trimming never holds the write lock for long; a pass
//! that is due runs before the next batch is taken, so publishers that never
//! pause cannot starve it.
//!
//! This thread reads the wall clock itself: `ts` is the commit time, and only
//! the thread that commits knows it. The time it reads is `Clock`'s
//! effective time (spec §10), which the loop shares for token checks.
//!
//! A batch whose content LMDB refuses (`StoreError::Content`) is committed
//! again with each item in its own nested transaction, so only the item at
//! fault fails (`Outcome::Invalid`); only a broken environment stops the
//! thread.
//!
//! A job (one `submit`) is never split across commits, and a refused job
//! fails whole: webhook events are committed with the change that caused
//! them (spec §9), or not at all. Outbox removals (`OutboxHandle::remove`)
//! ride along with the next commit, or commit alone when nothing else comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::clock;
use crate::store::{Commit, Outcome, Retention, Store, StoreError, Write};

/// Most items merged into one transaction (more only when one job alone is
/// bigger: a job is never split): bounds the transaction's dirty pages and
/// the latency of the first publisher in it.
pub const MAX_BATCH: usize = 4096;
/// Deletions per maintenance transaction.
const MAINTAIN_BUDGET: usize = 2000;
/// Retention must take effect within 1 s of the commit that passes a limit.
const MAINTAIN_EVERY: Duration = Duration::from_millis(400);
/// While no publish carries it, a floor that rose is saved this often (a
/// floor that fell is saved at once): a small commit an hour, not an SD
/// card write every maintenance pass.
const SAVE_RISEN_FLOOR_EVERY_MS: u64 = 3_600_000;

/// One commit's results: the items as sent, in order, with their outcomes.
pub struct Done<T> {
    pub items: Vec<(T, Write)>,
    /// One outcome per item, or the reason the whole batch was not stored.
    pub result: Result<Vec<Outcome>, StoreError>,
    /// From the start of the write transaction to the return of its commit.
    pub took: Duration,
}

enum Job<T> {
    Write(Vec<(T, Write)>),
    /// Delivered webhook events to remove from the outbox.
    Remove(Vec<u64>),
    Stop,
}

/// Removes delivered webhook events from the outbox through the writer
/// thread, which owns every write transaction. Cheap to clone; any thread.
#[derive(Clone)]
pub struct OutboxHandle {
    send: Arc<dyn Fn(Vec<u64>) + Send + Sync>,
}

impl OutboxHandle {
    /// Queues the removal of these events; the writer commits it with its
    /// next transaction, or alone when idle. Lost only if the writer has
    /// stopped: then the events are delivered again after a restart (at
    /// least once, the same ids).
    pub fn remove(&self, ns: Vec<u64>) {
        if !ns.is_empty() {
            (self.send)(ns);
        }
    }
}

/// Handle to the writer thread. `T` is the caller's ticket for each append
/// (the server uses it to find the connection to ack).
pub struct Writer<T: Send + 'static> {
    jobs: Sender<Job<T>>,
    done: Receiver<Done<T>>,
    thread: Option<JoinHandle<()>>,
}

/// What the writer needs to know about policy.
pub struct Policy {
    pub dedupe_window: Duration,
    pub retention: Arc<dyn Fn(&str) -> Retention + Send + Sync>,
    /// A description of the retention settings: when it differs from the
    /// one the store's retention index was built for, the index is rebuilt.
    pub retention_rules: String,
    /// A publish that would create a channel past this many is refused.
    pub max_channels: u64,
    pub clock: Clock,
    /// Which channels are compacted (spec §8).
    pub compact: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// Live keys per compacted channel (`--max-keys`).
    pub max_keys: u64,
    /// Called after a commit that stored webhook events: the delivery
    /// thread's wake-up.
    pub on_events: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Who says whether the system clock is synchronized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncSource {
    /// The kernel (`adjtimex`).
    Kernel,
    /// A fixed answer (`ROOSTD_TEST_CLOCK_SYNCED`, for tests).
    Fixed(bool),
}

/// The effective wall-clock time (spec §10), shared by the loop (token
/// checks) and the writer (`ts`): the system time, never below a floor
/// that only a synchronized clock moves (`clock::next_floor`).
#[derive(Clone)]
pub struct Clock {
    floor_ms: Arc<AtomicU64>,
    sync: SyncSource,
}

/// One reading of the `Clock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The effective time, ms since the epoch.
    pub ms: u64,
    /// The floor after this reading.
    pub floor_ms: u64,
    /// The clock was synchronized: the floor may be saved.
    pub synced: bool,
}

impl Clock {
    /// A clock starting from the floor saved in the store.
    pub fn new(floor_ms: u64, sync: SyncSource) -> Clock {
        Clock { floor_ms: Arc::new(AtomicU64::new(floor_ms)), sync }
    }

    /// The effective time in ms, for the loop's token checks: the system
    /// time against the floor as the writer last moved it. No system call
    /// beyond the time itself: the writer asks the kernel, at every commit
    /// and maintenance turn (at least every `MAINTAIN_EVERY`), not the loop
    /// at every upgrade and API request.
    pub fn effective_ms(&self) -> u64 {
        clock::effective(self.floor_ms.load(Ordering::Relaxed), system_ms())
    }

    /// Reads the system clock, asks whether it is synchronized, and moves
    /// the floor by the rule. The writer's reading.
    pub fn now(&self) -> Now {
        let system = system_ms();
        let synced = match self.sync {
            SyncSource::Fixed(synced) => synced,
            SyncSource::Kernel => kernel_synced().unwrap_or(false),
        };
        let mut floor = self.floor_ms.load(Ordering::Relaxed);
        loop {
            let next = clock::next_floor(floor, system, synced);
            if next == floor {
                break;
            }
            match self.floor_ms.compare_exchange(floor, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => floor = next,
                Err(seen) => floor = seen,
            }
        }
        Now { ms: clock::effective(floor, system), floor_ms: floor, synced }
    }
}

fn system_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whether the kernel reports the system clock synchronized (NTP or PTP
/// disciplining it): `adjtimex` in read-only mode answers not `TIME_ERROR`
/// and `STA_UNSYNC` is clear. `Err` when the call is refused (a sandbox
/// that filters it, such as systemd's `ProtectClock=`).
pub fn kernel_synced() -> Result<bool, std::io::Error> {
    // SAFETY: `timex` is a C struct of integers, for which all-zero bytes
    // are a valid value; with `modes` 0 `adjtimex` changes nothing and only
    // writes the kernel's clock state into the struct we own.
    #[allow(unsafe_code)]
    let (state, status) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        (libc::adjtimex(&mut tx), tx.status)
    };
    if state == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0)
}

impl<T: Send + 'static> Writer<T> {
    /// Starts the thread. `wake` is called after each batch's results are queued.
    pub fn start(store: Store, policy: Policy, wake: Box<dyn Fn() + Send>) -> Writer<T> {
        let (jobs, job_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("roostd-writer".into())
            .spawn(move || run(store, policy, job_rx, done_tx, wake))
            .expect("spawning the writer thread");
        Writer { jobs, done, thread: Some(thread) }
    }

    /// Queues items for the next commit. Each item is a job with the
    /// `Write::Event`s right behind it: those commit with it or not at all
    /// (an event never without its cause), while an item LMDB refuses fails
    /// alone, so one bad publish never fails another's.
    pub fn submit(&self, items: Vec<(T, Write)>) {
        if !items.is_empty() {
            // A send fails only after the thread has exited on a fatal
            // error, which the loop learns from `results`.
            let _ = self.jobs.send(Job::Write(items));
        }
    }

    /// A handle to remove delivered webhook events (`Store::outbox`).
    pub fn outbox_handle(&self) -> OutboxHandle {
        let jobs = self.jobs.clone();
        OutboxHandle {
            send: Arc::new(move |ns| {
                let _ = jobs.send(Job::Remove(ns));
            }),
        }
    }

    /// Results ready now, without waiting.
    pub fn results(&self) -> impl Iterator<Item = Done<T>> + '_ {
        self.done.try_iter()
    }

    /// Commits what is queued, then stops the thread and waits for it.
    pub fn stop(&mut self) -> Vec<Done<T>> {
        let _ = self.jobs.send(Job::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.done.try_iter().collect()
    }
}

impl<T: Send + 'static> Drop for Writer<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run<T>(store: Store, policy: Policy, jobs: Receiver<Job<T>>, done: Sender<Done<T>>, wake: Box<dyn Fn() + Send>) {
    let store = store.with_max_channels(policy.max_channels).with_compaction(policy.compact.clone(), policy.max_keys);
    // The floor as saved in the store: it is saved again only while the
    // clock is synchronized (spec §10).
    let mut saved_floor = store.clock_floor().unwrap_or(0);
    // The first turn builds the retention index if the store needs it.
    let mut next_maintenance = Instant::now();
    let mut indexed = false;
    let mut stopping = false;
    while !stopping {
        // Due maintenance runs before the next batch is taken: under a
        // steady stream of publishes the queue is never empty, and waiting
        // for a quiet moment would let retention fall behind for good.
        if Instant::now() >= next_maintenance {
            match maintenance_turn(&store, &policy, &mut saved_floor, &mut indexed) {
                Ok(next) => next_maintenance = next,
                Err(e) => {
                    // The environment is broken (an I/O error, a panic
                    // after a failed meta write): report it like a failed
                    // commit, so the server stops instead of limping on.
                    log::error!("retention pass failed: {e}");
                    let _ = done.send(Done { items: Vec::new(), result: Err(e), took: Duration::ZERO });
                    wake();
                    break;
                }
            }
        }
        let wait = next_maintenance.saturating_duration_since(Instant::now());
        let Batch { items, jobs: lens, removed, then_stop } = match take_batch(&jobs, wait) {
            Taken::Batch(batch) => batch,
            Taken::Idle => continue,
            Taken::Stop => break,
        };
        stopping = then_stop;
        let started = Instant::now();
        let result = commit_batch(&store, &policy, &mut saved_floor, &items, &lens, &removed);
        let took = started.elapsed();
        let fatal = matches!(&result, Err(e) if e.is_fatal());
        if let Err(e) = &result {
            log::error!("commit of {} items failed: {e}", items.len());
        }
        let events = result.as_ref().is_ok_and(|outcomes| {
            items.iter().zip(outcomes).any(|((_, w), o)| matches!((w, o), (Write::Event(_), Outcome::Written)))
        });
        if items.is_empty() {
            // Only removals: nobody waits for their result.
            if let Err(e) = result {
                if fatal {
                    let _ = done.send(Done { items, result: Err(e), took });
                    wake();
                    break;
                }
            }
            continue;
        }
        if done.send(Done { items, result, took }).is_err() {
            break;
        }
        wake();
        if let (true, Some(on_events)) = (events, &policy.on_events) {
            on_events();
        }
        if fatal {
            // Never retry on an environment whose sync failed: the pages it
            // holds may not be what is on disk.
            break;
        }
    }
}

/// One commit's worth of jobs.
struct Batch<T> {
    items: Vec<(T, Write)>,
    /// The length of each job in `items`, in order.
    jobs: Vec<usize>,
    /// Outbox events to remove with it.
    removed: Vec<u64>,
    /// A stop was queued behind them.
    then_stop: bool,
}

/// What [`take_batch`] found on the queue.
enum Taken<T> {
    /// Items (or only removals) to commit.
    Batch(Batch<T>),
    /// Nothing came before maintenance is due.
    Idle,
    /// Stop now: asked to, or the server dropped its handle.
    Stop,
}

/// Waits up to `wait` for appends, then takes everything queued behind
/// them, up to [`MAX_BATCH`] (group commit: everything queued while the
/// last commit ran).
fn take_batch<T>(jobs: &Receiver<Job<T>>, wait: Duration) -> Taken<T> {
    let mut batch = Batch { items: Vec::new(), jobs: Vec::new(), removed: Vec::new(), then_stop: false };
    let add = |batch: &mut Batch<T>, job| match job {
        Job::Write(items) => {
            // A job is an item and the events after it: an event commits
            // (or fails) with its cause, and an item LMDB refuses fails alone.
            for (_, write) in &items {
                match (write, batch.jobs.last_mut()) {
                    (Write::Event(_), Some(len)) => *len += 1,
                    _ => batch.jobs.push(1),
                }
            }
            batch.items.extend(items);
        }
        Job::Remove(ns) => batch.removed.extend(ns),
        Job::Stop => batch.then_stop = true,
    };
    match jobs.recv_timeout(wait) {
        Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => return Taken::Stop,
        Err(RecvTimeoutError::Timeout) => return Taken::Idle,
        Ok(job) => add(&mut batch, job),
    }
    // Whole jobs only: a job's events commit with their cause.
    while batch.items.len() < MAX_BATCH && batch.removed.len() < MAX_BATCH && !batch.then_stop {
        match jobs.try_recv() {
            Ok(job) => add(&mut batch, job),
            Err(_) => break,
        }
    }
    Taken::Batch(batch)
}

/// Commits one batch at the clock's time, saving the clock floor with it
/// while the clock is synchronized (`saved_floor` follows what was saved).
fn commit_batch<T>(
    store: &Store,
    policy: &Policy,
    saved_floor: &mut u64,
    items: &[(T, Write)],
    jobs: &[usize],
    removed: &[u64],
) -> Result<Vec<Outcome>, StoreError> {
    let retention = &*policy.retention;
    let window_ms = policy.dedupe_window.as_millis() as u64;
    let now = policy.clock.now();
    let floor = (now.synced && now.floor_ms != *saved_floor).then_some(now.floor_ms);
    let opts = Commit { floor, isolate: false, jobs, removed };
    let writes = || items.iter().map(|(_, w)| w);
    let mut result = store.commit(writes(), now.ms, window_ms, retention, opts);
    if let Err(StoreError::Content(why)) = &result {
        // One job is at fault, not the store: find it without failing
        // the others (still one commit).
        log::warn!("LMDB refused part of a batch of {} ({why}); committing each job on its own", items.len());
        result = match store.commit(writes(), now.ms, window_ms, retention, Commit { isolate: true, ..opts }) {
            // Only if the commit itself refused: fail the batch, not the server.
            Err(StoreError::Content(why)) => Ok(vec![Outcome::Invalid(why); items.len()]),
            other => other,
        };
    }
    if let (Ok(_), Some(floor)) = (&result, opts.floor) {
        *saved_floor = floor;
    }
    result
}

/// A due maintenance turn: saves a clock floor that a synchronized clock
/// moved, then [`maintain`]. Returns when the next turn is due; an error is
/// fatal.
fn maintenance_turn(
    store: &Store,
    policy: &Policy,
    saved_floor: &mut u64,
    indexed: &mut bool,
) -> Result<Instant, StoreError> {
    let now = policy.clock.now();
    // A floor that a synchronized clock moved is saved even while
    // nobody publishes (lowered at once; raised once an hour).
    let fell = now.floor_ms < *saved_floor;
    let rose = now.floor_ms >= saved_floor.saturating_add(SAVE_RISEN_FLOOR_EVERY_MS);
    if now.synced && (fell || rose) {
        store.save_clock_floor(now.floor_ms)?;
        *saved_floor = now.floor_ms;
    }
    maintain(store, policy, indexed, now.ms)
}

/// One maintenance turn: builds the retention index first if it is not
/// built yet, then one bounded pass. Returns when the next turn is due; an
/// error is fatal (transient ones are logged and retried).
fn maintain(store: &Store, policy: &Policy, indexed: &mut bool, now_ms: u64) -> Result<Instant, StoreError> {
    let retention = &*policy.retention;
    let later = Instant::now() + MAINTAIN_EVERY;
    if !*indexed {
        // The dedupe index before the first batch, so start-up pays for it.
        let window_ms = policy.dedupe_window.as_millis() as u64;
        let started = Instant::now();
        match store.load_dedupe(now_ms, window_ms) {
            Ok(()) => log::debug!("dedupe index loaded in {:?}", started.elapsed()),
            Err(e) if !e.is_fatal() => log::warn!("loading the dedupe index failed: {e}; the first commit retries"),
            Err(e) => return Err(e),
        }
        match store.index_retention(&policy.retention_rules, retention) {
            Ok(0) => {}
            Ok(n) => log::info!("indexed {n} channels for the retention settings"),
            Err(e) if !e.is_fatal() => {
                log::warn!("building the retention index failed: {e}; retrying");
                return Ok(later);
            }
            Err(e) => return Err(e),
        }
        *indexed = true;
    }
    match store.maintain(now_ms, MAINTAIN_BUDGET, retention) {
        // More to trim: come back right after the next waiting batch.
        Ok(n) if n == MAINTAIN_BUDGET => Ok(Instant::now()),
        Ok(_) => Ok(later),
        Err(e) if !e.is_fatal() => {
            log::warn!("retention pass failed: {e}");
            Ok(later)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::{Append, HookEvent};

    fn append(from: &str, data: &str, id: Option<&str>) -> Write {
        Write::Message(Append {
            ch: "a".into(),
            from: from.into(),
            data: data.into(),
            id: id.map(Into::into),
            key: None,
            event: None,
        })
    }

    fn keep_all() -> Policy {
        let keep = Retention { messages: u64::MAX, age_ms: u64::MAX };
        Policy {
            dedupe_window: Duration::from_secs(60),
            retention: Arc::new(move |_| keep),
            retention_rules: String::new(),
            max_channels: u64::MAX,
            clock: Clock::new(0, SyncSource::Fixed(true)),
            compact: Arc::new(|_| false),
            max_keys: u64::MAX,
            on_events: None,
        }
    }

    /// A writer whose wake-ups arrive on the receiver.
    fn start(store: &Store, policy: Policy) -> (Writer<i32>, Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let wake = Box::new(move || {
            let _ = tx.send(());
        });
        (Writer::start(store.clone(), policy, wake), rx)
    }

    /// Results until `n` items came back, by ticket.
    fn collect(writer: &Writer<i32>, wakes: &Receiver<()>, n: usize) -> Vec<(i32, Result<Outcome, String>)> {
        let mut got = Vec::new();
        while got.len() < n {
            wakes.recv_timeout(Duration::from_secs(30)).expect("a result");
            for done in writer.results() {
                for (i, (ticket, _)) in done.items.iter().enumerate() {
                    let outcome = done.result.as_ref().map(|o| o[i].clone()).map_err(|e| e.to_string());
                    got.push((*ticket, outcome));
                }
            }
        }
        got.sort_by_key(|(ticket, _)| *ticket);
        got
    }

    fn member(ch: &str, user: &str) -> Write {
        Write::Member { ch: ch.into(), user: user.into(), info: Some("{}".into()), joined: true }
    }

    fn event(ch: &str, user: &str) -> Write {
        let user_id = Some(user.into());
        Write::Event(HookEvent { name: "member_added".into(), channel: ch.into(), user_id, extra: String::new() })
    }

    #[test]
    fn a_job_lmdb_refuses_fails_whole_and_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24).unwrap();
        let (mut writer, wakes) = start(&store, keep_all());
        // As if an edge check were missing: a sub and id too long for an LMDB key.
        let long = "s".repeat(crate::store::MAX_DEDUPE_SUB_AND_ID_BYTES);
        writer.submit(vec![(1, append("u", "1", Some("1"))), (2, member("p", "ann")), (3, event("p", "ann"))]);
        // One submit, three jobs: bob's member row, the refused append with
        // the event behind it, and a good append.
        writer.submit(vec![
            (4, member("p", "bob")),
            (5, append(&long, "2", Some("22"))),
            (6, event("p", "bob")),
            (7, append("u", "3", None)),
        ]);
        let got = collect(&writer, &wakes, 7);
        let outcomes: Vec<Outcome> = got.into_iter().map(|(_, o)| o.expect("the batch commits")).collect();
        assert!(matches!(outcomes[0], Outcome::Stored { seq: 1, .. }), "{outcomes:?}");
        assert_eq!(outcomes[1..4], [Outcome::Written, Outcome::Written, Outcome::Written]);
        assert!(outcomes[4..6].iter().all(|o| matches!(o, Outcome::Invalid(_))), "with its event: {outcomes:?}");
        assert!(matches!(outcomes[6], Outcome::Stored { seq: 2, .. }), "alone: {outcomes:?}");
        let mut members = Vec::new();
        store.members(|_, user, _| members.push(user.to_string())).unwrap();
        members.sort();
        let want = (vec!["ann".to_string(), "bob".to_string()], 1);
        assert_eq!((members, store.outbox_len().unwrap()), want, "the refused append's event went with it");
        // The thread is still there and commits the next batch.
        writer.submit(vec![(8, append("u", "4", None))]);
        let done = writer.stop();
        assert!(matches!(done[0].result.as_deref(), Ok([Outcome::Stored { seq: 3, .. }])));
        assert!(store.clock_floor().unwrap() > 0, "a synchronized clock's floor is saved with the commit");
    }

    #[test]
    fn stored_events_wake_the_webhook_and_removals_commit_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24).unwrap();
        let (poke, poked) = mpsc::channel();
        let poke = std::sync::Mutex::new(poke);
        let policy = Policy { on_events: Some(Arc::new(move || _ = poke.lock().unwrap().send(()))), ..keep_all() };
        let (writer, wakes) = start(&store, policy);
        writer.submit(vec![(1, append("u", "1", None))]);
        collect(&writer, &wakes, 1);
        assert!(poked.try_recv().is_err(), "no event, no wake-up");
        writer.submit(vec![(2, member("p", "ann")), (3, event("p", "ann"))]);
        collect(&writer, &wakes, 2);
        poked.recv_timeout(Duration::from_secs(30)).expect("a commit with events pokes the webhook");
        let mut ns = Vec::new();
        store
            .outbox(0, 10, |e| {
                ns.push(e.n);
                true
            })
            .unwrap();
        assert_eq!(ns, [1]);
        // Nothing else comes: the removal commits on its own.
        writer.outbox_handle().remove(ns);
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.outbox_len().unwrap() > 0 {
            assert!(Instant::now() < deadline, "the removal was never committed");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(writer.results().next().is_none(), "a removal alone reports nothing");
    }

    /// Kill-free crash order (spec §9): across commits that succeed, fail
    /// whole (the map is full) or refuse one job, a job's event is in the
    /// outbox exactly when its cause (the member) is stored.
    #[test]
    fn an_event_is_in_the_outbox_iff_its_cause_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (writer, wakes) = start(&store, keep_all());
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut got = Vec::new();
        for job in 0..400 {
            let user = match rand(10) {
                // Too long for an LMDB key: LMDB refuses this job.
                0 => format!("{job}-{}", "x".repeat(600)),
                _ => format!("{job}"),
            };
            // Big infos fill the 1 MiB map, so some commits fail whole.
            let info = format!("{{\"pad\":\"{}\"}}", "p".repeat(rand(8000) as usize));
            let join = Write::Member { ch: "presence-r".into(), user: user.clone(), info: Some(info), joined: true };
            writer.submit(vec![(2 * job, join), (2 * job + 1, event("presence-r", &user))]);
            // In waves of a few jobs, so commits are of a few jobs too.
            if job % 8 == 7 {
                got.extend(collect(&writer, &wakes, 16));
            }
        }
        got.sort_by_key(|(ticket, _)| *ticket);
        let mut members = std::collections::HashSet::new();
        store.members(|_, user, _| _ = members.insert(user.to_string())).unwrap();
        let mut events = std::collections::HashSet::new();
        store
            .outbox(0, usize::MAX, |e| {
                let user = e.json.split("\"user_id\":\"").nth(1).unwrap().trim_end_matches("\"}");
                events.insert(user.to_string());
                true
            })
            .unwrap();
        let (mut stored, mut failed, mut refused) = (0, 0, 0);
        for pair in got.chunks(2) {
            let user = (pair[0].0 / 2).to_string();
            let user = members.iter().chain(events.iter()).find(|u| u.split('-').next() == Some(&user)).cloned();
            match (&pair[0].1, &pair[1].1) {
                (Ok(Outcome::Written), Ok(Outcome::Written)) => {
                    stored += 1;
                    let user = user.expect("a committed job is stored");
                    assert!(members.contains(&user) && events.contains(&user), "{user}");
                }
                (Err(_), Err(_)) => failed += 1,
                (Ok(Outcome::Invalid(_)), Ok(Outcome::Invalid(_))) => refused += 1,
                other => panic!("a job's items came back apart: {other:?}"),
            }
        }
        assert_eq!(members, events, "every stored member has its event and no event is without its member");
        assert_eq!(members.len(), stored);
        assert!(stored > 0 && failed > 0 && refused > 0, "each case happened: {stored} {failed} {refused}");
    }

    #[test]
    fn the_writer_compacts_the_channels_the_policy_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24).unwrap();
        let policy = Policy { compact: Arc::new(|ch: &str| ch == "a"), max_keys: 1, ..keep_all() };
        let (writer, wakes) = start(&store, policy);
        let keyed = |key: &str, data: &str| {
            let (ch, from, data, key) = ("a".into(), "u".into(), data.into(), Some(key.into()));
            Write::Message(Append { ch, from, data, id: None, key, event: None })
        };
        writer.submit(vec![(1, keyed("k", "1")), (2, keyed("k", "2")), (3, keyed("other", "3"))]);
        let got = collect(&writer, &wakes, 3);
        assert_eq!(got[2].1, Ok(Outcome::OverLimit(crate::store::Limit::Keys)), "--max-keys 1");
        assert_eq!(store.channel("a").unwrap().count(), 1, "the key's first message went in the same commit");
    }

    #[test]
    fn retention_keeps_up_while_the_queue_is_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 28).unwrap();
        let policy = Policy {
            dedupe_window: Duration::ZERO,
            retention: Arc::new(|_: &str| Retention { messages: u64::MAX, age_ms: 300 }),
            retention_rules: "300 ms".into(),
            max_channels: u64::MAX,
            clock: Clock::new(0, SyncSource::Fixed(false)),
            compact: Arc::new(|_| false),
            max_keys: u64::MAX,
            on_events: None,
        };
        // Each commit takes 5 ms more (as one does on an SD card): with an
        // append submitted every millisecond, the writer's queue is never
        // empty when it looks.
        let slow = Box::new(|| thread::sleep(Duration::from_millis(5)));
        let writer = Writer::<()>::start(store.clone(), policy, slow);
        let append = Write::Message(Append {
            ch: "t".into(),
            from: "u".into(),
            data: "1".into(),
            id: None,
            key: None,
            event: None,
        });
        let started = Instant::now();
        // Under emulation (ROOSTD_TEST_SCALE=small) everything is ten times slower.
        let small = std::env::var("ROOSTD_TEST_SCALE").is_ok_and(|v| v == "small");
        let (limit_ms, run_ms) = if small { (5000, 8000) } else { (1300, 2500) };
        let mut next_look = started + Duration::from_millis(limit_ms);
        let mut lags = Vec::new();
        let mut next = started;
        while started.elapsed() < Duration::from_millis(run_ms) {
            writer.submit(vec![((), append.clone())]);
            for done in writer.results() {
                done.result.unwrap();
            }
            next += Duration::from_millis(1);
            while Instant::now() < next {
                std::hint::spin_loop();
            }
            if Instant::now() >= next_look {
                next_look += Duration::from_millis(100);
                // Stored ts are commit times: the newest against the oldest.
                let info = store.channel("t").unwrap();
                let ts = |seq: u64| {
                    let mut ts = 0;
                    store
                        .read("t", seq - 1, 1, |r| {
                            ts = r.ts;
                            false
                        })
                        .unwrap();
                    ts
                };
                lags.push(ts(info.last) - ts(info.first));
            }
        }
        // 300 ms old, plus 1 s to take effect.
        assert!(lags.len() > 5 && lags.iter().all(|&lag| lag <= limit_ms), "retention fell behind: {lags:?}");
    }
}
