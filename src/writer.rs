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
//! the thread that commits knows it.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::store::{Append, Outcome, Retention, Store, StoreError};

/// Most appends merged into one transaction: bounds the transaction's dirty
/// pages and the latency of the first publisher in it.
pub const MAX_BATCH: usize = 4096;
/// Deletions per maintenance transaction.
const MAINTAIN_BUDGET: usize = 2000;
/// Retention must take effect within 1 s of the commit that passes a limit.
const MAINTAIN_EVERY: Duration = Duration::from_millis(400);

/// One commit's results: the appends as sent, in order, with their outcomes.
pub struct Done<T> {
    pub items: Vec<(T, Append)>,
    /// One outcome per item, or the reason the whole batch was not stored.
    pub result: Result<Vec<Outcome>, StoreError>,
    /// From the start of the write transaction to the return of its commit.
    pub took: Duration,
}

enum Job<T> {
    Append(Vec<(T, Append)>),
    Stop,
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

    /// Queues appends for the next commit.
    pub fn submit(&self, items: Vec<(T, Append)>) {
        if !items.is_empty() {
            // A send fails only after the thread has exited on a fatal
            // error, which the loop learns from `results`.
            let _ = self.jobs.send(Job::Append(items));
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn run<T>(store: Store, policy: Policy, jobs: Receiver<Job<T>>, done: Sender<Done<T>>, wake: Box<dyn Fn() + Send>) {
    let store = store.with_max_channels(policy.max_channels);
    let retention = &*policy.retention;
    // `ts` never goes back, even when the system clock does (a Pi before NTP).
    let mut floor = store.clock_floor().unwrap_or(0);
    let mut now_ms = move || {
        floor = floor.max(now_ms());
        floor
    };
    let window_ms = policy.dedupe_window.as_millis() as u64;
    // The first turn builds the retention index if the store needs it.
    let mut next_maintenance = Instant::now();
    let mut indexed = false;
    let mut stopping = false;
    while !stopping {
        // Due maintenance runs before the next batch is taken: under a
        // steady stream of publishes the queue is never empty, and waiting
        // for a quiet moment would let retention fall behind for good.
        if Instant::now() >= next_maintenance {
            match maintain(&store, &policy, &mut indexed, now_ms()) {
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
        let mut items = match jobs.recv_timeout(wait) {
            Ok(Job::Append(items)) => items,
            Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => continue,
        };
        // Group commit: everything queued while the last commit ran.
        while items.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(Job::Append(more)) => items.extend(more),
                Ok(Job::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = store.append_batch(items.iter().map(|(_, a)| a), now_ms(), window_ms, retention);
        let took = started.elapsed();
        let fatal = matches!(&result, Err(e) if !e.is_transient());
        if let Err(e) = &result {
            log::error!("commit of {} messages failed: {e}", items.len());
        }
        if done.send(Done { items, result, took }).is_err() {
            break;
        }
        wake();
        if fatal {
            // Never retry on an environment whose sync failed: the pages it
            // holds may not be what is on disk.
            break;
        }
    }
}

/// One maintenance turn: builds the retention index first if it is not
/// built yet, then one bounded pass. Returns when the next turn is due; an
/// error is fatal (transient ones are logged and retried).
fn maintain(store: &Store, policy: &Policy, indexed: &mut bool, now_ms: u64) -> Result<Instant, StoreError> {
    let retention = &*policy.retention;
    let later = Instant::now() + MAINTAIN_EVERY;
    if !*indexed {
        match store.index_retention(&policy.retention_rules, retention) {
            Ok(0) => {}
            Ok(n) => log::info!("indexed {n} channels for the retention settings"),
            Err(e) if e.is_transient() => {
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
        Err(e) if e.is_transient() => {
            log::warn!("retention pass failed: {e}");
            Ok(later)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_up_while_the_queue_is_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 28).unwrap();
        let policy = Policy {
            dedupe_window: Duration::ZERO,
            retention: Arc::new(|_: &str| Retention { messages: u64::MAX, age_ms: 300 }),
            retention_rules: "300 ms".into(),
            max_channels: u64::MAX,
        };
        // Each commit takes 5 ms more (as one does on an SD card): with an
        // append submitted every millisecond, the writer's queue is never
        // empty when it looks.
        let slow = Box::new(|| thread::sleep(Duration::from_millis(5)));
        let writer = Writer::<()>::start(store.clone(), policy, slow);
        let append = Append { ch: "t".into(), from: "u".into(), data: "1".into(), id: None };
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
