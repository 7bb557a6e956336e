//! Webhook tests: `Delivery`'s decisions over an in-memory outbox with plain
//! `Instant`s and wall times; then the thread against a real HTTP endpoint
//! on 127.0.0.1 (a small server thread that answers from a script).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use super::*;
use crate::auth::hex_eq;

/// An outbox in memory; removals take effect at once and are recorded.
#[derive(Clone, Default)]
struct Mem(Arc<MemInner>);

#[derive(Default)]
struct MemInner {
    events: Mutex<BTreeMap<u64, (u64, String)>>,
    removals: Mutex<Vec<Vec<u64>>>,
}

impl Mem {
    /// Adds event `n`, created at `created_ms`.
    fn add(&self, n: u64, created_ms: u64) {
        let json = format!(r#"{{"id":"e-{n}","name":"member_added","channel":"presence-a","user_id":"u{n}"}}"#);
        self.0.events.lock().unwrap().insert(n, (created_ms, json));
    }

    fn ns(&self) -> Vec<u64> {
        self.0.events.lock().unwrap().keys().copied().collect()
    }

    fn removals(&self) -> Vec<Vec<u64>> {
        self.0.removals.lock().unwrap().clone()
    }
}

impl Outbox for Mem {
    fn pending(
        &self,
        after: u64,
        limit: usize,
        each: &mut dyn FnMut(u64, u64, &str, &str) -> bool,
    ) -> Result<(), String> {
        let events = self.0.events.lock().unwrap();
        for (&n, (created, json)) in events.range(after + 1..).take(limit) {
            if !each(n, *created, "presence-a", json) {
                break;
            }
        }
        Ok(())
    }

    fn len_after(&self, after: u64) -> Result<u64, String> {
        Ok(self.0.events.lock().unwrap().range(after + 1..).count() as u64)
    }

    fn remove(&self, ns: Vec<u64>) {
        let mut events = self.0.events.lock().unwrap();
        for n in &ns {
            events.remove(n);
        }
        self.0.removals.lock().unwrap().push(ns);
    }
}

fn settings() -> Settings {
    Settings {
        retry_for: Duration::from_secs(10),
        backoff_min: Duration::from_secs(1),
        max_pending: 100_000,
        timeout: Duration::from_millis(500),
    }
}

fn delivery(settings: Settings) -> Delivery {
    Delivery::new(settings, Arc::new(Counters::default()))
}

fn batch_ns(d: &Delivery) -> Vec<u64> {
    d.batch().iter().map(|e| e.n).collect()
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_lone_event_waits_250_ms_for_its_batch_to_fill_then_goes() {
    let (mem, mut d, t0) = (Mem::default(), delivery(settings()), Instant::now());
    assert_eq!(d.next(t0, 0, &mem), Ok(Next::Wait(None)), "nothing to send");
    mem.add(1, 0);
    assert_eq!(d.next(t0, 0, &mem), Ok(Next::Wait(Some(t0 + FILL_WAIT))));
    mem.add(2, 0);
    assert_eq!(
        d.next(t0 + 100 * MS, 0, &mem),
        Ok(Next::Wait(Some(t0 + FILL_WAIT))),
        "the wait runs from the first event"
    );
    assert!(matches!(d.next(t0, 0, &mem), Ok(Next::Wait(_))));
    assert_eq!(d.next(t0 + FILL_WAIT, 0, &mem), Ok(Next::Send));
    assert_eq!(batch_ns(&d), [1, 2]);
}

#[test]
fn a_batch_holds_at_most_100_events_and_a_full_one_goes_at_once() {
    let (mem, mut d, t0) = (Mem::default(), delivery(settings()), Instant::now());
    for n in 1..=250 {
        mem.add(n, 0);
    }
    for first in [1, 101] {
        assert_eq!(d.next(t0, 0, &mem), Ok(Next::Send));
        assert_eq!(batch_ns(&d), (first..first + 100).collect::<Vec<_>>());
        d.on_answer(t0, 0, true, &mem);
    }
    assert_eq!(d.next(t0, 0, &mem), Ok(Next::Wait(Some(t0 + FILL_WAIT))), "50 left: a batch that is not full waits");
    assert_eq!(batch_ns(&d), (201..=250).collect::<Vec<_>>());
    assert_eq!(mem.removals(), [(1..=100).collect::<Vec<_>>(), (101..=200).collect()]);
    assert_eq!(d.counters.delivered.load(Ordering::Relaxed), 200);
    assert_eq!(d.counters.pending.load(Ordering::Relaxed), 50);
}

#[test]
fn a_failed_batch_is_retried_unchanged_after_a_backoff_doubling_to_a_minute() {
    let (mem, mut d, t0) = (Mem::default(), delivery(settings()), Instant::now());
    for n in 1..=3 {
        mem.add(n, 0);
    }
    assert!(matches!(d.next(t0, 0, &mem), Ok(Next::Wait(_))));
    assert_eq!(d.next(t0 + FILL_WAIT, 0, &mem), Ok(Next::Send));
    let mut now = t0 + FILL_WAIT;
    let mut waits = Vec::new();
    for _ in 0..8 {
        d.on_answer(now, 0, false, &mem);
        let Ok(Next::Wait(Some(at))) = d.next(now, 0, &mem) else { panic!("a failed batch waits") };
        waits.push((at - now).as_secs());
        assert_eq!(d.next(at - MS, 0, &mem), Ok(Next::Wait(Some(at))), "not before its time");
        mem.add(10 + waits.len() as u64, 0);
        now = at;
        assert_eq!(d.next(now, 0, &mem), Ok(Next::Send));
        assert_eq!(batch_ns(&d), [1, 2, 3], "the same batch, not refilled");
    }
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(d.counters.failed.load(Ordering::Relaxed), 8);
    assert!(mem.removals().is_empty(), "nothing removed before a 2xx");
    d.on_answer(now, 0, true, &mem);
    assert_eq!(mem.removals(), [vec![1, 2, 3]]);
    assert_eq!(d.next(now, 0, &mem), Ok(Next::Wait(Some(now + FILL_WAIT))), "a new batch, filling");
    assert_eq!(batch_ns(&d), (11..=18).collect::<Vec<_>>());
}

#[test]
fn after_a_delivery_the_backoff_starts_again_from_the_minimum() {
    let (mem, mut d, t0) = (Mem::default(), delivery(settings()), Instant::now());
    mem.add(1, 0);
    let _ = d.next(t0, 0, &mem);
    let _ = d.next(t0 + FILL_WAIT, 0, &mem);
    d.on_answer(t0, 0, false, &mem);
    d.on_answer(t0, 0, false, &mem);
    d.on_answer(t0, 0, true, &mem);
    mem.add(2, 0);
    assert_eq!(d.next(t0, 0, &mem), Ok(Next::Wait(Some(t0 + FILL_WAIT))), "no backoff left over");
    let _ = d.next(t0 + FILL_WAIT, 0, &mem);
    d.on_answer(t0, 0, false, &mem);
    assert_eq!(d.next(t0, 0, &mem), Ok(Next::Wait(Some(t0 + Duration::from_secs(1)))));
}

#[test]
fn events_past_retry_for_are_dropped_while_the_endpoint_fails() {
    let (mem, mut d, t0) = (Mem::default(), delivery(settings()), Instant::now());
    for (n, created) in [(1, 1_000), (2, 2_000), (3, 15_000)] {
        mem.add(n, created);
    }
    assert!(matches!(d.next(t0, 3_000, &mem), Ok(Next::Wait(_))));
    assert_eq!(d.next(t0 + FILL_WAIT, 3_000, &mem), Ok(Next::Send));
    d.on_answer(t0, 3_000, false, &mem);
    assert_eq!(d.counters.dropped.load(Ordering::Relaxed), 0, "young enough to retry");
    // At 12 s, events 1 and 2 are 11 s and 10 s old: past --webhook-retry-for (10 s).
    let later = t0 + Duration::from_secs(5);
    assert_eq!(d.next(later, 12_000, &mem), Ok(Next::Send));
    assert_eq!(batch_ns(&d), [3], "the rest of the batch is retried");
    assert_eq!(mem.ns(), [3]);
    assert_eq!(d.counters.dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn a_whole_backlog_past_retry_for_is_dropped_in_one_go_while_failing() {
    let (mem, mut d, t0) = (Mem::default(), delivery(settings()), Instant::now());
    for n in 1..=450 {
        mem.add(n, 1_000);
    }
    mem.add(451, 55_000);
    assert_eq!(d.next(t0, 5_000, &mem), Ok(Next::Send));
    d.on_answer(t0, 60_000, false, &mem);
    assert_eq!(mem.ns(), [451], "every event older than 10 s went at the failure");
    assert_eq!(d.counters.dropped.load(Ordering::Relaxed), 450);
    assert_eq!(d.next(t0 + Duration::from_secs(1), 60_000, &mem), Ok(Next::Send));
    assert_eq!(batch_ns(&d), [451]);
}

#[test]
fn old_events_are_delivered_when_the_endpoint_answers() {
    let (mem, mut d, t0) = (Mem::default(), delivery(settings()), Instant::now());
    mem.add(1, 0);
    mem.add(2, 0);
    // A day later (roostd was stopped), but the application is up.
    assert!(matches!(d.next(t0, 86_400_000, &mem), Ok(Next::Wait(_))));
    assert_eq!(d.next(t0 + FILL_WAIT, 86_400_000, &mem), Ok(Next::Send));
    assert_eq!(batch_ns(&d), [1, 2]);
    d.on_answer(t0, 86_400_000, true, &mem);
    assert_eq!(d.counters.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(d.counters.delivered.load(Ordering::Relaxed), 2);
}

#[test]
fn the_oldest_events_past_max_pending_are_dropped() {
    let (mem, mut d, t0) = (Mem::default(), delivery(Settings { max_pending: 5, ..settings() }), Instant::now());
    for n in 1..=8 {
        mem.add(n, 0);
    }
    assert!(matches!(d.next(t0, 0, &mem), Ok(Next::Wait(_))));
    assert_eq!(d.next(t0 + FILL_WAIT, 0, &mem), Ok(Next::Send));
    assert_eq!(batch_ns(&d), [4, 5, 6, 7, 8]);
    assert_eq!(mem.removals(), [vec![1, 2, 3]]);
    assert_eq!(d.counters.dropped.load(Ordering::Relaxed), 3);
    assert_eq!(d.counters.pending.load(Ordering::Relaxed), 5);
    // While that batch fails, three more come: the batch's oldest go.
    d.on_answer(t0, 0, false, &mem);
    for n in 9..=11 {
        mem.add(n, 0);
    }
    assert_eq!(d.next(t0 + Duration::from_secs(1), 0, &mem), Ok(Next::Send));
    assert_eq!(batch_ns(&d), [7, 8]);
    assert_eq!(mem.ns(), [7, 8, 9, 10, 11]);
    assert_eq!(d.counters.dropped.load(Ordering::Relaxed), 6);
}

#[test]
fn the_body_is_the_stored_events_in_order_and_both_signatures_verify() {
    let events: Vec<Event> = (1..=2)
        .map(|n| Event {
            n,
            created_ms: 0,
            json: format!(r#"{{"id":"e-{n}","name":"channel_occupied","channel":"c"}}"#),
        })
        .collect();
    let text = body(1_700_000_000_123, &events);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["time_ms"], 1_700_000_000_123u64);
    assert_eq!(v["events"][0]["id"], "e-1");
    assert_eq!(v["events"][1]["id"], "e-2");
    let signer = Signer { key: b"default key".to_vec(), pusher: Some(("app-key".into(), b"app secret".to_vec())) };
    let headers = signer.headers(text.as_bytes());
    let get = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap();
    assert!(hex_eq(&get("X-Roost-Signature"), &hmac_sha256_hex(b"default key", text.as_bytes())));
    assert_eq!(get("X-Pusher-Key"), "app-key");
    assert!(hex_eq(&get("X-Pusher-Signature"), &hmac_sha256_hex(b"app secret", text.as_bytes())));
    let plain = Signer { key: b"default key".to_vec(), pusher: None }.headers(text.as_bytes());
    assert!(plain.iter().all(|(n, _)| !n.starts_with("X-Pusher")), "no Pusher app, no Pusher headers");
}

// The thread against a real endpoint.

/// What the test application answers, one request after another; after
/// the script, 200.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Reads the request and never answers (until the test ends).
    Hang,
}

struct Request {
    head: String,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn ids(&self) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        v["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
    }
}

struct App {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl App {
    fn start(script: Vec<Answer>) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hooks/roost", listener.local_addr().unwrap());
        let (requests, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (reqs, stopped) = (requests.clone(), stop.clone());
        thread::spawn(move || {
            let mut script = script.into_iter();
            while !stopped.load(Ordering::Relaxed) {
                let sock = match listener.accept() {
                    Ok((sock, _)) => sock,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let answer = script.next().unwrap_or(Answer::Status(200));
                let (reqs, stopped) = (reqs.clone(), stopped.clone());
                thread::spawn(move || serve(sock, answer, &reqs, &stopped));
            }
        });
        App { url, requests, stop }
    }

    fn requests(&self) -> std::sync::MutexGuard<'_, Vec<Request>> {
        self.requests.lock().unwrap()
    }
}

fn serve(mut sock: TcpStream, answer: Answer, requests: &Mutex<Vec<Request>>, stop: &AtomicBool) {
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, length) = loop {
        let n = sock.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map_or(0, |v| v.parse().unwrap());
            got.drain(..end + 4);
            break (head, length);
        }
    };
    while got.len() < length {
        let n = sock.read(&mut buf).unwrap_or(0);
        if n == 0 {
            return;
        }
        got.extend_from_slice(&buf[..n]);
    }
    requests.lock().unwrap().push(Request { head, body: String::from_utf8(got).unwrap() });
    match answer {
        Answer::Status(status) => {
            let _ = write!(sock, "HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n");
        }
        Answer::Hang => {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Waits for `done`, giving up (and failing) after a minute: no test here
/// asserts how long delivery takes.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < give_up, "gave up waiting: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

const NOW_MS: u64 = 1_700_000_000_123;

fn start(app: &App, mem: &Mem, settings: Settings) -> Webhook {
    let signer = Signer { key: b"the default key".to_vec(), pusher: Some(("app-key".into(), b"app secret".to_vec())) };
    Webhook::start(&app.url, signer, mem.clone(), settings, Arc::new(|| NOW_MS), Doorbell::new()).unwrap()
}

fn fast() -> Settings {
    Settings { backoff_min: Duration::from_millis(20), ..settings() }
}

#[test]
fn events_are_delivered_in_order_in_batches_of_at_most_100_and_removed() {
    let (app, mem) = (App::start(Vec::new()), Mem::default());
    for n in 1..=250 {
        mem.add(n, NOW_MS);
    }
    let hook = start(&app, &mem, fast());
    eventually("the backlog delivered", || mem.ns().is_empty());
    for n in 251..=255 {
        mem.add(n, NOW_MS);
    }
    hook.poke();
    eventually("the new events delivered", || mem.ns().is_empty());
    let requests = app.requests();
    let ids: Vec<String> = requests.iter().flat_map(Request::ids).collect();
    assert_eq!(ids, (1..=255).map(|n| format!("e-{n}")).collect::<Vec<_>>(), "each once, in order");
    assert!(requests.iter().all(|r| r.ids().len() <= MAX_BATCH));
    assert_eq!(requests[0].ids().len(), 100, "a backlog goes in full batches");
    assert!(requests[0].head.starts_with("POST /hooks/roost HTTP/1.1\r\n"));
    assert_eq!(hook.counters().delivered.load(Ordering::Relaxed), 255);
    assert_eq!(hook.counters().failed.load(Ordering::Relaxed), 0);
}

#[test]
fn a_500_is_retried_with_the_same_ids_and_removed_after_the_200() {
    let (app, mem) = (App::start(vec![Answer::Status(500), Answer::Status(200)]), Mem::default());
    for n in 1..=3 {
        mem.add(n, NOW_MS);
    }
    let hook = start(&app, &mem, fast());
    eventually("delivered after the retry", || mem.ns().is_empty());
    let requests = app.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].ids(), ["e-1", "e-2", "e-3"]);
    assert_eq!(requests[1].ids(), requests[0].ids(), "the same batch again");
    assert_eq!(mem.removals(), [vec![1, 2, 3]], "removed once, after the 200");
    assert_eq!(hook.counters().failed.load(Ordering::Relaxed), 1);
    assert_eq!(hook.counters().delivered.load(Ordering::Relaxed), 3);
}

#[test]
fn the_signatures_verify_with_the_default_key_and_the_pusher_secret() {
    let (app, mem) = (App::start(Vec::new()), Mem::default());
    mem.add(1, NOW_MS);
    let _hook = start(&app, &mem, fast());
    eventually("delivered", || mem.ns().is_empty());
    let requests = app.requests();
    let r = &requests[0];
    let body = r.body.as_bytes();
    assert!(hex_eq(r.header("X-Roost-Signature").unwrap(), &hmac_sha256_hex(b"the default key", body)));
    assert!(!hex_eq(r.header("X-Roost-Signature").unwrap(), &hmac_sha256_hex(b"another key", body)));
    assert_eq!(r.header("X-Pusher-Key"), Some("app-key"));
    assert!(hex_eq(r.header("X-Pusher-Signature").unwrap(), &hmac_sha256_hex(b"app secret", body)));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["time_ms"], NOW_MS, "the effective wall time from the clock given");
    assert_eq!(v["events"][0]["user_id"], "u1");
}

#[test]
fn a_hanging_endpoint_times_out_and_the_batch_is_retried() {
    let (app, mem) = (App::start(vec![Answer::Hang, Answer::Status(200)]), Mem::default());
    mem.add(1, NOW_MS);
    mem.add(2, NOW_MS);
    let hook = start(&app, &mem, Settings { timeout: Duration::from_millis(300), ..fast() });
    eventually("delivered past the hanging try", || mem.ns().is_empty());
    let requests = app.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].ids(), ["e-1", "e-2"]);
    assert_eq!(requests[1].ids(), requests[0].ids());
    assert_eq!(hook.counters().failed.load(Ordering::Relaxed), 1);
}
