//! The publish hook (spec §5): before a client's `pub` is committed, the
//! main application may approve, rewrite or refuse it over HTTP.
//!
//! The call is blocking HTTP/1.1 on a small pool of worker threads, so the
//! event loop never waits for the main application: the loop submits a job
//! and goes on; results come back through a channel and the loop's waker.
//! The queue to the workers is bounded; a full queue refuses the publish
//! with `unavailable` rather than buffering without limit. The loop keeps at
//! most one hook call in flight per connection, which keeps each
//! connection's publishes in order, and every byte waiting for the hook
//! (queued on a connection or submitted) is held against one global
//! [`Budget`] ([`MAX_WAITING_BYTES`]), so many connections each queueing
//! their allowance cannot add up to unbounded memory.
//!
//! The hook fails closed: an approval counts only if it can be read whole.
//! A 2xx answer whose body is cut short, badly chunked, over
//! [`MAX_ANSWER_BYTES`] or not a JSON object refuses the publish with
//! `unavailable`, exactly like a 5xx: publishing the client's data when the
//! application may have meant to rewrite it would let through what the
//! application exists to stop. An empty body approves unchanged.
//!
//! The HTTP call itself is [`crate::outbound::post`]: one deadline for the
//! whole call (name lookup, connect, request, every read of the answer),
//! and host names looked up by one background thread per hook.
//!
//! Only plain `http://` URLs: the main application runs beside roostd, on
//! the same host or LAN.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

pub use crate::outbound::MAX_ANSWER_BYTES;
use crate::outbound::{self, Target, Url};

/// Worker threads: enough to overlap a few slow answers, few enough for a Pi.
const WORKERS: usize = 4;
/// Jobs waiting for a worker.
const QUEUE: usize = 256;
/// Bytes of publishes waiting for the hook across all connections, counted
/// by [`Hook::hold`]. 64 publishes per connection of up to
/// `--max-message-bytes` each is fine for one connection; past this total
/// the publish gets `err unavailable`.
pub const MAX_WAITING_BYTES: usize = 16 << 20;
/// The hook's URL: `http://` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookUrl(pub Url);

impl HookUrl {
    pub fn parse(url: &str) -> Result<HookUrl, String> {
        let parsed = Url::parse(url).map_err(|e| format!("--publish-hook {e}"))?;
        if parsed.https {
            return Err(format!(
                "--publish-hook {url:?}: only http:// URLs are supported (the main application runs beside roostd)"
            ));
        }
        Ok(HookUrl(parsed))
    }
}

/// One publish to ask about.
pub struct Job<T> {
    pub ticket: T,
    /// The client's own token, sent as Bearer so the application knows who asks.
    pub token: String,
    /// `{"ch","from","data","id"}`
    pub body: String,
}

/// The main application's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: publish; `Some(data)` (JSON text) replaces the message's data.
    Approve(Option<String>),
    /// 4xx: refused (`err forbidden`).
    Refuse,
    /// Timeout, 3xx, 5xx, no answer, or a 2xx that cannot be read whole
    /// (`err unavailable`).
    Unavailable,
}

/// The global count of bytes waiting for the hook, shared by every
/// connection. Atomic because a [`Held`] may be dropped on a worker thread
/// (a job still queued when the hook shuts down).
#[derive(Clone, Debug)]
struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget { used: Arc::new(AtomicUsize::new(0)), limit }
    }

    fn hold(&self, bytes: usize) -> Option<Held> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .ok()?;
        Some(Held { used: self.used.clone(), bytes })
    }
}

/// Bytes held against the hook's budget; given back when dropped — when the
/// publish was decided, refused, or its connection went away — so no path
/// can forget to return them.
#[derive(Debug)]
pub struct Held {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

pub struct Hook<T: Send + 'static> {
    jobs: SyncSender<Job<T>>,
    results: Receiver<(T, Verdict)>,
    budget: Budget,
}

impl<T: Send + 'static> Hook<T> {
    /// Starts the workers. `wake` is called after each result is queued.
    pub fn start(url: HookUrl, timeout: Duration, wake: Arc<dyn Fn() + Send + Sync>) -> Hook<T> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job<T>>(QUEUE);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (result_tx, results) = mpsc::channel();
        let target = Arc::new(Target::new(&url.0, outbound::system_lookup, "publish hook"));
        for n in 0..WORKERS {
            let (rx, tx, url, wake) = (job_rx.clone(), result_tx.clone(), url.clone(), wake.clone());
            let target = target.clone();
            let spawned = thread::Builder::new()
                .name(format!("roostd-hook-{n}"))
                .spawn(move || work(rx, tx, &url, &target, timeout, &*wake));
            if let Err(e) = spawned {
                log::error!("cannot start a publish hook worker: {e}");
            }
        }
        Hook { jobs, results, budget: Budget::new(MAX_WAITING_BYTES) }
    }

    /// Holds `bytes` of a publish that is to wait for the hook; `None` when
    /// the global budget is spent (the publish gets `err unavailable`).
    pub fn hold(&self, bytes: usize) -> Option<Held> {
        self.budget.hold(bytes)
    }

    /// Queues a job; gives it back when the queue is full.
    pub fn submit(&self, job: Job<T>) -> Result<(), Job<T>> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }

    pub fn results(&self) -> impl Iterator<Item = (T, Verdict)> + '_ {
        self.results.try_iter()
    }
}

fn work<T>(
    jobs: Arc<Mutex<Receiver<Job<T>>>>,
    results: Sender<(T, Verdict)>,
    url: &HookUrl,
    target: &Target,
    timeout: Duration,
    wake: &(dyn Fn() + Send + Sync),
) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let verdict = ask(url, target, timeout, &job.token, &job.body);
        if results.send((job.ticket, verdict)).is_err() {
            return;
        }
        wake();
    }
}

/// One hook call; anything that goes wrong is logged and is `Unavailable`.
fn ask(url: &HookUrl, target: &Target, timeout: Duration, token: &str, body: &str) -> Verdict {
    call(url, target, timeout, token, body).unwrap_or_else(|e| {
        log::warn!("publish hook {} failed: {e}", url.0);
        Verdict::Unavailable
    })
}

/// One POST, bounded by `timeout` from the name lookup to the end of the
/// answer. `Err` for anything that is not a complete, readable answer.
fn call(url: &HookUrl, target: &Target, timeout: Duration, token: &str, body: &str) -> io::Result<Verdict> {
    let bearer = format!("Bearer {token}");
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let answer = outbound::post(&url.0, target, None, timeout, &headers, body.as_bytes(), |status| {
        (200..=299).contains(&status)
    })?;
    match answer.status {
        200..=299 => {
            let data = replacement(&answer.body).map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
            Ok(Verdict::Approve(data))
        }
        400..=499 => Ok(Verdict::Refuse),
        _ => Ok(Verdict::Unavailable),
    }
}

/// The body of a 2xx answer: empty approves unchanged; a JSON object
/// approves, and its `data` (when present, `null` too) replaces the
/// message's data. Anything else is an answer we cannot understand, and
/// so no approval: `Err` says why.
fn replacement(answer: &[u8]) -> Result<Option<String>, &'static str> {
    use serde::Deserialize as _;
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        // Present, even as `null`, means "replace" (spec §5): serde's own
        // `Option` would read `null` as absent.
        #[serde(borrow, default, deserialize_with = "present")]
        data: Option<&'a RawValue>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(d).map(Some)
    }
    let text = std::str::from_utf8(answer).map_err(|_| "the answer's body is not UTF-8")?;
    let text = text.trim_matches([' ', '\t', '\r', '\n']);
    if text.is_empty() {
        return Ok(None);
    }
    // Checked first: serde would also read `[...]` into the struct.
    if !text.starts_with('{') {
        return Err("the answer's body is neither empty nor a JSON object");
    }
    let a: Answer<'_> = serde_json::from_str(text).map_err(|_| "the answer's body is not valid JSON")?;
    Ok(a.data.map(|d| d.get().to_string()))
}

/// The body sent to the hook: `{"ch","from","data","id"}` (`id` null when absent).
/// `key` (spec §8) and `event` (a JSON string literal) are added when the
/// `pub` has them.
pub fn request_body(
    ch: &str,
    from: &str,
    data: &str,
    id: Option<&str>,
    key: Option<&str>,
    event: Option<&str>,
) -> String {
    let mut out = String::with_capacity(48 + ch.len() + from.len() + data.len());
    out.push_str("{\"ch\":");
    crate::proto::roost::json_str(&mut out, ch);
    out.push_str(",\"from\":");
    crate::proto::roost::json_str(&mut out, from);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push_str(",\"id\":");
    out.push_str(id.unwrap_or("null"));
    if let Some(key) = key {
        out.push_str(",\"key\":");
        crate::proto::roost::json_str(&mut out, key);
    }
    if let Some(event) = event {
        out.push_str(",\"event\":");
        out.push_str(event);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::system_lookup;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Instant;

    /// A wall-clock bound measured natively, ten times longer when the
    /// suite runs under qemu (`ROOSTD_TEST_SCALE=small`, as
    /// tests/support's `within`).
    fn within(d: Duration) -> Duration {
        if std::env::var("ROOSTD_TEST_SCALE").is_ok_and(|v| v == "small") {
            d * 10
        } else {
            d
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            HookUrl::parse("http://127.0.0.1:9000/hook").unwrap(),
            HookUrl(Url { https: false, host: "127.0.0.1".into(), port: 9000, path: "/hook".into() })
        );
        assert_eq!(HookUrl::parse("http://app.local").unwrap().0.port, 80);
        assert_eq!(HookUrl::parse("http://[::1]:81/x").unwrap().0.host, "::1");
        assert_eq!(HookUrl::parse("http://[::1]:81/x").unwrap().0.authority(), "[::1]:81");
        assert!(HookUrl::parse("https://app/x").unwrap_err().contains("only http://"));
        assert!(HookUrl::parse("http://:80/").is_err());
    }

    #[test]
    fn replacements() {
        assert_eq!(replacement(br#"{"data":{"x":1}}"#), Ok(Some(r#"{"x":1}"#.into())));
        assert_eq!(replacement(br#" {"ok":true} "#), Ok(None));
        assert_eq!(replacement(br#"{"data":null}"#), Ok(Some("null".into())));
        assert_eq!(replacement(b""), Ok(None));
        assert_eq!(replacement(b" \r\n"), Ok(None));
        assert!(replacement(b"ok").is_err());
        assert!(replacement(br#"[{"data":1}]"#).is_err());
        assert!(replacement(br#"{"data":1} x"#).is_err());
        assert!(replacement(br#"{"data":1,"data":2}"#).is_err());
        assert!(replacement(b"{\"data\":\"\xff\"}").is_err());
    }

    /// A one-shot HTTP "application": reads the request, then hands the
    /// socket to `answer`; joins to the request text.
    fn app_with(answer: impl FnOnce(&mut TcpStream) + Send + 'static) -> (HookUrl, thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).unwrap_or(0);
            answer(&mut s);
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        (HookUrl(Url { https: false, host: "127.0.0.1".into(), port, path: "/hook".into() }), t)
    }

    /// A one-shot HTTP server answering with `answer` after `delay`, then closing.
    fn app(answer: impl Into<Vec<u8>>, delay: Duration) -> (HookUrl, thread::JoinHandle<String>) {
        let answer = answer.into();
        app_with(move |s| {
            thread::sleep(delay);
            let _ = s.write_all(&answer);
        })
    }

    /// Asks the application at `url` (an IP address) with `timeout`.
    fn ask_app(url: &HookUrl, timeout: Duration) -> Verdict {
        ask(url, &Target::new(&url.0, system_lookup, "test"), timeout, "tok", r#"{"ch":"a"}"#)
    }

    fn verdict_for(answer: impl Into<Vec<u8>>) -> Verdict {
        let (url, t) = app(answer, Duration::ZERO);
        let got = ask_app(&url, Duration::from_secs(5));
        t.join().unwrap();
        got
    }

    #[test]
    fn verdicts_by_status() {
        let cases: [(&'static str, Verdict); 5] = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{\"data\":\"HELLO\"}",
                Verdict::Approve(Some("\"HELLO\"".into())),
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", Verdict::Approve(None)),
            ("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", Verdict::Refuse),
            ("HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n", Verdict::Unavailable),
            ("HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", Verdict::Unavailable),
        ];
        for (answer, want) in cases {
            let (url, t) = app(answer, Duration::ZERO);
            let got = ask_app(&url, Duration::from_secs(5));
            assert_eq!(got, want, "{answer}");
            let req = t.join().unwrap();
            assert!(req.starts_with("POST /hook HTTP/1.1\r\n"));
            assert!(req.contains("Authorization: Bearer tok\r\n"));
            assert!(req.ends_with("\r\n\r\n{\"ch\":\"a\"}"));
        }
    }

    #[test]
    fn an_empty_2xx_body_approves_unchanged() {
        for answer in [
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(verdict_for(answer), Verdict::Approve(None), "{answer:?}");
        }
    }

    #[test]
    fn a_chunked_answer_is_decoded() {
        let answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n\
                      7\r\n{\"data\"\r\n\
                      A;note=1\r\n:\"HELLO\"} \r\n\
                      0\r\nX-Trailer: yes\r\n\r\n";
        assert_eq!(verdict_for(answer), Verdict::Approve(Some("\"HELLO\"".into())));
    }

    #[test]
    fn a_2xx_that_cannot_be_read_whole_is_unavailable() {
        let ok = "HTTP/1.1 200 OK\r\n";
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases: Vec<(&str, String)> = vec![
            ("chunk size not hex", format!("{chunked}zz\r\n{{}}\r\n0\r\n\r\n")),
            ("chunk size with a sign", format!("{chunked}+2\r\n{{}}\r\n0\r\n\r\n")),
            ("chunk longer than its size", format!("{chunked}2\r\n{{\"data\":1}}\r\n0\r\n\r\n")),
            ("cut inside a chunk", format!("{chunked}10\r\n{{\"data\":1")),
            ("no last chunk", format!("{chunked}2\r\n{{}}\r\n")),
            ("no end of trailers", format!("{chunked}2\r\n{{}}\r\n0\r\n")),
            ("chunked and gzip", format!("{ok}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")),
            ("both framings", format!("{ok}Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")),
            ("bad JSON", format!("{ok}Content-Length: 5\r\n\r\n{{nope")),
            ("text", format!("{ok}Content-Length: 2\r\n\r\nok")),
            ("a JSON array", format!("{ok}Content-Length: 12\r\n\r\n[{{\"data\":1}}]")),
            ("truncated before Content-Length", format!("{ok}Content-Length: 100\r\n\r\n{{\"data\":1}}")),
            ("two Content-Lengths", format!("{ok}Content-Length: 10\r\nContent-Length: 2\r\n\r\n{{\"data\":1}}")),
            ("Content-Length with a sign", format!("{ok}Content-Length: +2\r\n\r\n{{}}")),
            ("cut in the head", format!("{ok}Content-Length: 2\r\n")),
            ("no status line", "HTTP/1.1 OK\r\n\r\n".to_string()),
            ("not HTTP", "SSH-2.0-OpenSSH\r\n\r\n".to_string()),
        ];
        for (what, answer) in cases {
            assert_eq!(verdict_for(answer), Verdict::Unavailable, "{what}");
        }
    }

    #[test]
    fn an_answer_over_1_mib_is_unavailable() {
        let mut body = format!("{{\"data\":\"{}\"}}", "x".repeat(MAX_ANSWER_BYTES)).into_bytes();
        let mut by_length = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        by_length.extend_from_slice(&body);
        assert_eq!(verdict_for(by_length), Verdict::Unavailable, "by Content-Length");
        let mut until_close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        until_close.extend_from_slice(&body);
        assert_eq!(verdict_for(until_close), Verdict::Unavailable, "until close");
        // In chunks of 64 KiB, no one of them too big: the sum is.
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in body.chunks(64 << 10) {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(verdict_for(chunked), Verdict::Unavailable, "chunked");
        // One byte less than the limit is read whole.
        body.truncate(MAX_ANSWER_BYTES - 2);
        body.extend_from_slice(b"\"}");
        let mut just_fits = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        just_fits.extend_from_slice(&body);
        assert!(matches!(verdict_for(just_fits), Verdict::Approve(Some(_))));
    }

    #[test]
    fn a_slow_application_times_out() {
        let (url, t) = app("HTTP/1.1 200 OK\r\n\r\n", within(Duration::from_millis(800)));
        let started = Instant::now();
        assert_eq!(ask_app(&url, within(Duration::from_millis(200))), Verdict::Unavailable);
        // Gave up well before the application would have answered.
        assert!(started.elapsed() < within(Duration::from_millis(700)));
        t.join().unwrap();
    }

    /// The timeout is one deadline for the whole answer, not per read: an
    /// application that sends a byte every 100 ms gets no longer.
    #[test]
    fn an_answer_dripped_a_byte_at_a_time_is_cut_off_at_the_deadline() {
        let answer = "HTTP/1.1 200 OK, but slowly\r\nContent-Length: 2\r\n\r\n{}";
        let (url, t) = app_with(move |s| {
            for b in answer.bytes() {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                thread::sleep(within(Duration::from_millis(100)));
            }
        });
        let timeout = Duration::from_millis(500);
        let started = Instant::now();
        assert_eq!(ask_app(&url, timeout), Verdict::Unavailable);
        let took = started.elapsed();
        // The whole answer would take 5 s (50 s emulated); slack for a slow
        // (emulated) machine.
        assert!(took < timeout + within(Duration::from_millis(500)), "answered after {took:?}");
        t.join().unwrap();
    }

    fn hanging_lookup(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
        thread::sleep(within(Duration::from_secs(5)));
        Err(io::Error::other("gave up"))
    }

    /// The deadline covers the name lookup: a resolver that hangs costs a
    /// call its timeout, not the resolver's own.
    #[test]
    fn a_hanging_name_lookup_is_bounded_by_the_timeout() {
        let url = HookUrl(Url { https: false, host: "app.example".into(), port: 9, path: "/hook".into() });
        let target = Target::new(&url.0, hanging_lookup, "test");
        for _ in 0..2 {
            let started = Instant::now();
            assert_eq!(ask(&url, &target, Duration::from_millis(300), "t", "{}"), Verdict::Unavailable);
            let took = started.elapsed();
            assert!(took < within(Duration::from_millis(1300)), "the call took {took:?}");
        }
    }

    #[test]
    fn a_host_name_is_looked_up_and_each_address_tried() {
        // `localhost` may give ::1 before 127.0.0.1, where the app listens.
        let (mut url, t) = app("HTTP/1.1 204 No Content\r\n\r\n", Duration::ZERO);
        url.0.host = "localhost".into();
        let target = Target::new(&url.0, system_lookup, "test");
        assert!(matches!(target, Target::Name(_)));
        assert_eq!(ask(&url, &target, Duration::from_secs(5), "t", "{}"), Verdict::Approve(None));
        assert!(t.join().unwrap().contains("Host: localhost:"));
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_is_given_back_on_drop() {
        let budget = Budget::new(100);
        let a = budget.hold(60).unwrap();
        assert!(budget.hold(41).is_none(), "60 + 41 is past 100");
        let b = budget.hold(40).unwrap();
        assert!(budget.hold(1).is_none());
        drop(a);
        assert!(budget.hold(60).is_some(), "a's bytes came back (and this one's at once)");
        drop(b);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
        assert!(budget.hold(usize::MAX).is_none(), "no overflow");
    }

    #[test]
    fn bodies() {
        let v: serde_json::Value =
            serde_json::from_str(&request_body("room:1", "al\"ice", r#"{"t":1}"#, Some("\"x\""), None, None)).unwrap();
        assert_eq!(v, serde_json::json!({"ch":"room:1","from":"al\"ice","data":{"t":1},"id":"x"}));
        let v: serde_json::Value =
            serde_json::from_str(&request_body("c", "u", "null", None, Some("t:1"), Some("\"Ev\""))).unwrap();
        assert_eq!(v, serde_json::json!({"ch":"c","from":"u","data":null,"id":null,"key":"t:1","event":"Ev"}));
    }
}
