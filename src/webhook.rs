//! Webhook delivery (spec §9): lifecycle events from the store's outbox to
//! the main application, in order, at least once.
//!
//! Two parts. [`Delivery`] decides, with time passed in and the outbox read
//! through the [`Outbox`] trait: which events make the next batch (at most
//! [`MAX_BATCH`], oldest first), how long a batch may wait to fill
//! ([`FILL_WAIT`] after its first event was seen), when a failed batch is
//! tried again (the same batch, after a backoff from `--webhook-backoff-min`
//! doubling to [`MAX_BACKOFF`]), and what is dropped (with an error log and
//! the `dropped` counter): while the endpoint is failing, events older than
//! `--webhook-retry-for`; at any time, the oldest past
//! `--webhook-max-pending`. [`Webhook`] is the one thread around it: it
//! POSTs through [`crate::outbound`] under [`REQUEST_TIMEOUT`], so a hanging
//! endpoint delays delivery, never the event loop, which only calls
//! [`Webhook::poke`] and reads [`Counters`].
//!
//! One batch is in flight at a time and a batch is removed from the outbox
//! only after a 2xx answer, so events arrive in order (per channel, and
//! overall) and a crash or restart repeats a batch rather than losing it;
//! each event's `id` lets the application ignore a repeat.
//!
//! Old events are dropped only while the endpoint is failing: after a long
//! stop, a healthy application still gets what waited for it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::auth::hmac_sha256_hex;
use crate::outbound::{self, Target, Tls, Url};

/// Events in one request (spec §9).
pub const MAX_BATCH: usize = 100;
/// How long the first event of a batch waits for more (spec §9).
pub const FILL_WAIT: Duration = Duration::from_millis(250);
/// The longest pause between two tries of a failing batch (spec §9).
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// One request, from name lookup to the answer's head: a hanging endpoint
/// costs a try this long, then the batch is retried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Events dropped from the outbox per removal handed to the store, so a
/// large drop (a lowered `--webhook-max-pending`) is not one huge commit.
const DROP_CHUNK: usize = 10_000;
/// How often an idle thread looks at the outbox unpoked: a missed poke
/// delays events by this much at worst.
const IDLE_RECHECK: Duration = Duration::from_secs(5);
/// After an outbox read failed.
const READ_RETRY: Duration = Duration::from_secs(1);

/// The store's outbox as delivery sees it. Event numbers `n` start at 1 and
/// grow; `after` = 0 reads from the start.
pub trait Outbox: Send + 'static {
    /// Events with `n > after`, ascending, at most `limit`; `each` gets
    /// `(n, created_ms, channel, json)` and answers whether to go on.
    fn pending(
        &self,
        after: u64,
        limit: usize,
        each: &mut dyn FnMut(u64, u64, &str, &str) -> bool,
    ) -> Result<(), String>;
    /// How many events with `n > after` are stored.
    fn len_after(&self, after: u64) -> Result<u64, String>;
    /// Removes these events (delivered or dropped). May take effect later
    /// (the writer commits it): delivery never reads at or below an `n` it
    /// removed.
    fn remove(&self, ns: Vec<u64>);
}

/// The delivery settings (from `Config::webhook_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub retry_for: Duration,
    pub backoff_min: Duration,
    pub max_pending: u64,
    /// [`REQUEST_TIMEOUT`] in production.
    pub timeout: Duration,
}

/// For /metrics, read by the loop: events delivered, failed tries
/// (requests), events dropped, events waiting.
#[derive(Debug, Default)]
pub struct Counters {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub pending: AtomicU64,
}

/// One event of the batch: its stored JSON object text, sent as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub n: u64,
    pub created_ms: u64,
    pub json: String,
}

/// What the thread does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// POST [`Delivery::batch`], then report with [`Delivery::on_answer`].
    Send,
    /// Sleep until then, or until poked; `None`: until poked.
    Wait(Option<Instant>),
}

/// The decisions of delivery, with no I/O but the [`Outbox`] and no clock:
/// `now` for pauses, `wall_ms` (the effective wall time) for event ages.
pub struct Delivery {
    settings: Settings,
    counters: Arc<Counters>,
    /// Every event with `n <= after` was delivered or dropped.
    after: u64,
    /// The next batch, or the one in flight (all with `n > after`).
    batch: Vec<Event>,
    /// The batch was sent and failed: it is retried as it is, not refilled.
    tried: bool,
    /// When the batch's first event was seen (the fill wait runs from it).
    since: Option<Instant>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

impl Delivery {
    pub fn new(settings: Settings, counters: Arc<Counters>) -> Delivery {
        Delivery {
            settings,
            counters,
            after: 0,
            batch: Vec::new(),
            tried: false,
            since: None,
            backoff: Duration::ZERO,
            retry_at: None,
        }
    }

    /// The batch to send on [`Next::Send`].
    pub fn batch(&self) -> &[Event] {
        &self.batch
    }

    pub fn next(&mut self, now: Instant, wall_ms: u64, outbox: &dyn Outbox) -> Result<Next, String> {
        self.cap(outbox)?;
        if self.tried {
            self.expire(wall_ms, outbox)?;
        }
        if let Some(at) = self.retry_at.filter(|&at| now < at) {
            return Ok(Next::Wait(Some(at)));
        }
        if !self.tried && self.batch.len() < MAX_BATCH {
            let mut fresh = Vec::new();
            read(outbox, self.last(), MAX_BATCH - self.batch.len(), &mut fresh)?;
            self.batch.extend(fresh);
        }
        if self.batch.is_empty() {
            return Ok(Next::Wait(None));
        }
        let since = *self.since.get_or_insert(now);
        if !self.tried && self.batch.len() < MAX_BATCH && now < since + FILL_WAIT {
            return Ok(Next::Wait(Some(since + FILL_WAIT)));
        }
        Ok(Next::Send)
    }

    /// The answer to the batch just sent: `delivered` for a 2xx.
    pub fn on_answer(&mut self, now: Instant, wall_ms: u64, delivered: bool, outbox: &dyn Outbox) {
        if delivered {
            let ns: Vec<u64> = self.batch.iter().map(|e| e.n).collect();
            self.after = self.last();
            self.counters.delivered.fetch_add(ns.len() as u64, Ordering::Relaxed);
            self.counters
                .pending
                .fetch_sub((ns.len() as u64).min(self.counters.pending.load(Ordering::Relaxed)), Ordering::Relaxed);
            outbox.remove(ns);
            self.batch.clear();
            (self.tried, self.since, self.backoff, self.retry_at) = (false, None, Duration::ZERO, None);
            return;
        }
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        self.tried = true;
        self.backoff = if self.backoff.is_zero() {
            self.settings.backoff_min
        } else {
            (self.backoff * 2).min(MAX_BACKOFF).max(self.settings.backoff_min)
        };
        self.retry_at = Some(now + self.backoff);
        // Errors reading are seen again on the next `next`.
        let _ = self.expire(wall_ms, outbox);
    }

    /// The highest `n` read so far.
    fn last(&self) -> u64 {
        self.batch.last().map_or(self.after, |e| e.n)
    }

    /// Drops the oldest events past `--webhook-max-pending`.
    fn cap(&mut self, outbox: &dyn Outbox) -> Result<(), String> {
        let waiting = outbox.len_after(self.after)?;
        self.counters.pending.store(waiting, Ordering::Relaxed);
        let Some(mut excess) = waiting.checked_sub(self.settings.max_pending).filter(|&e| e > 0) else {
            return Ok(());
        };
        let mut ns = Vec::new();
        let from_batch = (excess as usize).min(self.batch.len());
        ns.extend(self.batch.drain(..from_batch).map(|e| e.n));
        excess -= from_batch as u64;
        if self.batch.is_empty() {
            (self.tried, self.since) = (false, None);
        }
        while excess > 0 {
            let mut more = Vec::new();
            read(
                outbox,
                ns.last().copied().unwrap_or(self.after).max(self.after),
                (excess as usize).min(DROP_CHUNK),
                &mut more,
            )?;
            if more.is_empty() {
                break;
            }
            excess -= more.len() as u64;
            ns.extend(more.iter().map(|e| e.n));
        }
        if ns.is_empty() {
            return Ok(());
        }
        log::error!(
            "webhook: {} events waiting, past --webhook-max-pending {}; dropping the oldest {}",
            waiting,
            self.settings.max_pending,
            ns.len()
        );
        self.drop_events(ns, outbox);
        Ok(())
    }

    /// While failing: drops the batch's events (and then the outbox's)
    /// older than `--webhook-retry-for`, oldest first.
    fn expire(&mut self, wall_ms: u64, outbox: &dyn Outbox) -> Result<(), String> {
        let limit = u64::try_from(self.settings.retry_for.as_millis()).unwrap_or(u64::MAX);
        let too_old = |e: &Event| wall_ms.saturating_sub(e.created_ms) >= limit;
        let mut ns = Vec::new();
        loop {
            let old = self.batch.iter().take_while(|e| too_old(e)).count();
            ns.extend(self.batch.drain(..old).map(|e| e.n));
            if !self.batch.is_empty() || ns.len() >= DROP_CHUNK {
                break;
            }
            // The whole batch was too old: so may the next events be.
            let mut more = Vec::new();
            read(outbox, ns.last().copied().unwrap_or(self.after).max(self.after), MAX_BATCH, &mut more)?;
            if more.is_empty() {
                break;
            }
            self.batch = more;
        }
        if !ns.is_empty() {
            log::error!(
                "webhook: dropping {} events older than --webhook-retry-for ({:?}) while the endpoint fails",
                ns.len(),
                self.settings.retry_for
            );
            self.drop_events(ns, outbox);
        }
        if self.batch.is_empty() {
            (self.tried, self.since) = (false, None);
        }
        Ok(())
    }

    fn drop_events(&mut self, ns: Vec<u64>, outbox: &dyn Outbox) {
        let Some(&top) = ns.last() else { return };
        self.after = self.after.max(top);
        let n = ns.len() as u64;
        self.counters.dropped.fetch_add(n, Ordering::Relaxed);
        self.counters.pending.fetch_sub(n.min(self.counters.pending.load(Ordering::Relaxed)), Ordering::Relaxed);
        outbox.remove(ns);
    }
}

/// Reads up to `limit` events after `after` into `out`.
fn read(outbox: &dyn Outbox, after: u64, limit: usize, out: &mut Vec<Event>) -> Result<(), String> {
    outbox.pending(after, limit, &mut |n, created_ms, _channel, json| {
        out.push(Event { n, created_ms, json: json.to_string() });
        true
    })
}

/// The request body: `{"time_ms":...,"events":[...]}`, each event its
/// stored JSON object text.
pub fn body(time_ms: u64, events: &[Event]) -> String {
    let len = events.iter().map(|e| e.json.len() + 1).sum::<usize>();
    let mut out = String::with_capacity(40 + len);
    out.push_str(&format!("{{\"time_ms\":{time_ms},\"events\":["));
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.json);
    }
    out.push_str("]}");
    out
}

/// Who signs a request: the default key, and a Pusher app when configured.
pub struct Signer {
    pub key: Vec<u8>,
    /// `(app key, app secret)`.
    pub pusher: Option<(String, Vec<u8>)>,
}

impl Signer {
    /// The request's headers: `X-Roost-Signature`, and with a Pusher app
    /// `X-Pusher-Key` and `X-Pusher-Signature` (pusher.md §4).
    pub fn headers(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        let mut out = vec![("Content-Type", "application/json".to_string())];
        out.push(("X-Roost-Signature", hmac_sha256_hex(&self.key, body)));
        if let Some((app_key, secret)) = &self.pusher {
            out.push(("X-Pusher-Key", app_key.clone()));
            out.push(("X-Pusher-Signature", hmac_sha256_hex(secret, body)));
        }
        out
    }
}

/// The delivery thread's handle. Dropping it stops the thread (after a
/// request in flight ends).
pub struct Webhook {
    bell: Doorbell,
    counters: Arc<Counters>,
}

/// Wakes the delivery thread. Made before the thread (and before the
/// writer, whose `on_events` rings it), so the two can be started in either
/// order.
#[derive(Clone, Default)]
pub struct Doorbell(Arc<Bell>);

#[derive(Default)]
struct Bell {
    rung: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Doorbell {
    pub fn new() -> Doorbell {
        Doorbell::default()
    }

    pub fn ring(&self) {
        *self.0.rung.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.0.wake.notify_one();
    }

    fn stopped(&self) -> bool {
        self.0.stop.load(Ordering::Relaxed)
    }

    /// Sleeps until `until` or a ring (or stop).
    fn wait(&self, until: Option<Instant>) {
        let until = until.unwrap_or_else(|| Instant::now() + IDLE_RECHECK);
        let mut rung = self.0.rung.lock().unwrap_or_else(PoisonError::into_inner);
        while !*rung && !self.stopped() {
            let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
            rung = self.0.wake.wait_timeout(rung, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        *rung = false;
    }
}

/// Where and how requests go.
struct Endpoint {
    url: Url,
    target: Target,
    tls: Option<Tls>,
    timeout: Duration,
    signer: Signer,
}

impl Endpoint {
    /// One POST; whether it was answered 2xx (anything else is logged).
    fn post(&self, body: &str) -> bool {
        let headers = self.signer.headers(body.as_bytes());
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        match outbound::post(
            &self.url,
            &self.target,
            self.tls.as_ref(),
            self.timeout,
            &headers,
            body.as_bytes(),
            |_| false,
        ) {
            Ok(answer) if (200..=299).contains(&answer.status) => true,
            Ok(answer) => {
                log::warn!("webhook {} answered {}; the batch is retried", self.url, answer.status);
                false
            }
            Err(e) => {
                log::warn!("webhook {} failed: {e}; the batch is retried", self.url);
                false
            }
        }
    }
}

impl Webhook {
    /// Starts the delivery thread. `url` is `--webhook` (http:// or
    /// https://); `signer` holds the default key and the Pusher app;
    /// `wall_ms` is the effective wall time (`writer::Clock`), for
    /// `time_ms` and event ages; `bell` wakes the thread (ring it after a
    /// commit that stored events). Fails on a bad URL or when `https://`
    /// has no CA certificates to trust.
    pub fn start(
        url: &str,
        signer: Signer,
        outbox: impl Outbox,
        settings: Settings,
        wall_ms: Arc<dyn Fn() -> u64 + Send + Sync>,
        bell: Doorbell,
    ) -> Result<Webhook, String> {
        let url = Url::parse(url).map_err(|e| format!("--webhook {e}"))?;
        let tls = if url.https { Some(Tls::system()?) } else { None };
        let target = Target::new(&url, outbound::system_lookup, "webhook");
        let endpoint = Endpoint { url, target, tls, timeout: settings.timeout, signer };
        let counters = Arc::new(Counters::default());
        let delivery = Delivery::new(settings, counters.clone());
        let thread_bell = bell.clone();
        thread::Builder::new()
            .name("roostd-webhook".into())
            .spawn(move || run(delivery, &endpoint, &outbox, &thread_bell, &*wall_ms))
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        Ok(Webhook { bell, counters })
    }

    /// Wakes the thread: new events were committed.
    pub fn poke(&self) {
        self.bell.ring();
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.bell.0.stop.store(true, Ordering::Relaxed);
        self.bell.ring();
    }
}

fn run(mut delivery: Delivery, endpoint: &Endpoint, outbox: &dyn Outbox, bell: &Doorbell, wall_ms: &dyn Fn() -> u64) {
    while !bell.stopped() {
        match delivery.next(Instant::now(), wall_ms(), outbox) {
            Ok(Next::Send) => {
                let body = body(wall_ms(), delivery.batch());
                let delivered = endpoint.post(&body);
                delivery.on_answer(Instant::now(), wall_ms(), delivered, outbox);
            }
            Ok(Next::Wait(until)) => bell.wait(until),
            Err(e) => {
                log::error!("webhook: cannot read the outbox: {e}; trying again");
                bell.wait(Some(Instant::now() + READ_RETRY));
            }
        }
    }
}

#[cfg(test)]
mod tests;
