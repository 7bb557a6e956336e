//! The publish hook (spec §5): before a client's `pub` is committed, the
//! main application may approve, rewrite or refuse it over HTTP.
//!
//! The call is blocking HTTP/1.1 on a small pool of worker threads, so the
//! event loop never waits for the main application: the loop submits a job
//! and goes on; results come back through a channel and the loop's waker.
//! The queue to the workers is bounded; a full queue refuses the publish
//! with `unavailable` rather than buffering without limit. The loop keeps at
//! most one hook call in flight per connection, which keeps each
//! connection's publishes in order.
//!
//! Only plain `http://` URLs: the main application runs beside roostd, on
//! the same host or LAN.

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Worker threads: enough to overlap a few slow answers, few enough for a Pi.
const WORKERS: usize = 4;
/// Jobs waiting for a worker.
const QUEUE: usize = 256;
/// Largest answer body read from the main application.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HookUrl {
    pub fn parse(url: &str) -> Result<HookUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("--publish-hook {url:?}: only http:// URLs are supported (the main application runs beside roostd)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p.parse().map_err(|_| format!("--publish-hook {url:?}: bad port {p:?}"))?;
                (h.trim_start_matches('[').trim_end_matches(']'), port)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(format!("--publish-hook {url:?}: no host"));
        }
        Ok(HookUrl { host: host.to_string(), port, path: path.to_string() })
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
    /// Timeout, 3xx, 5xx or no answer (`err unavailable`).
    Unavailable,
}

pub struct Hook<T: Send + 'static> {
    jobs: SyncSender<Job<T>>,
    results: Receiver<(T, Verdict)>,
}

impl<T: Send + 'static> Hook<T> {
    /// Starts the workers. `wake` is called after each result is queued.
    pub fn start(url: HookUrl, timeout: Duration, wake: Arc<dyn Fn() + Send + Sync>) -> Hook<T> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job<T>>(QUEUE);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (result_tx, results) = mpsc::channel();
        for n in 0..WORKERS {
            let (rx, tx, url, wake) = (job_rx.clone(), result_tx.clone(), url.clone(), wake.clone());
            let spawned = thread::Builder::new()
                .name(format!("roostd-hook-{n}"))
                .spawn(move || work(rx, tx, &url, timeout, &*wake));
            if let Err(e) = spawned {
                log::error!("cannot start a publish hook worker: {e}");
            }
        }
        Hook { jobs, results }
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
        let verdict = match call(url, timeout, &job.token, &job.body) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("publish hook http://{}:{}{} failed: {e}", url.host, url.port, url.path);
                Verdict::Unavailable
            }
        };
        if results.send((job.ticket, verdict)).is_err() {
            return;
        }
        wake();
    }
}

/// One POST, bounded by `timeout` from start to the end of the answer.
fn call(url: &HookUrl, timeout: Duration, token: &str, body: &str) -> io::Result<Verdict> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    };
    let addr: SocketAddr = (url.host.as_str(), url.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host has no address"))?;
    let mut sock = TcpStream::connect_timeout(&addr, left()?)?;
    sock.set_nodelay(true)?;
    sock.set_write_timeout(Some(left()?))?;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path,
        url.host,
        url.port,
        body.len()
    );
    sock.write_all(request.as_bytes())?;
    sock.set_read_timeout(Some(left()?))?;
    let mut reader = BufReader::new(sock.take(MAX_ANSWER_BYTES));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut length = None;
    loop {
        line.clear();
        reader.get_mut().get_mut().set_read_timeout(Some(left()?))?;
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<u64>().ok();
            }
        }
    }
    match status {
        200..=299 => {
            let mut answer = Vec::new();
            reader.get_mut().get_mut().set_read_timeout(Some(left()?))?;
            match length {
                Some(n) => {
                    reader.take(n).read_to_end(&mut answer)?;
                }
                None => {
                    reader.read_to_end(&mut answer)?;
                }
            }
            Ok(Verdict::Approve(replacement(&answer)))
        }
        400..=499 => Ok(Verdict::Refuse),
        _ => Ok(Verdict::Unavailable),
    }
}

/// `{"data": ...}` in a 2xx answer replaces the message's data.
fn replacement(answer: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let text = std::str::from_utf8(answer).ok()?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let a: Answer<'_> = serde_json::from_str(text).ok()?;
    a.data.map(|d| d.get().to_string())
}

/// The body sent to the hook: `{"ch","from","data","id"}` (`id` null when absent).
pub fn request_body(ch: &str, from: &str, data: &str, id: Option<&str>) -> String {
    let mut out = String::with_capacity(48 + ch.len() + from.len() + data.len());
    out.push_str("{\"ch\":");
    crate::wire::json_str(&mut out, ch);
    out.push_str(",\"from\":");
    crate::wire::json_str(&mut out, from);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push_str(",\"id\":");
    out.push_str(id.unwrap_or("null"));
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        assert_eq!(
            HookUrl::parse("http://127.0.0.1:9000/hook").unwrap(),
            HookUrl { host: "127.0.0.1".into(), port: 9000, path: "/hook".into() }
        );
        assert_eq!(HookUrl::parse("http://app.local").unwrap().port, 80);
        assert_eq!(HookUrl::parse("http://[::1]:81/x").unwrap().host, "::1");
        assert!(HookUrl::parse("https://app/x").unwrap_err().contains("only http://"));
        assert!(HookUrl::parse("http://:80/").is_err());
    }

    #[test]
    fn replacements() {
        assert_eq!(replacement(br#"{"data":{"x":1}}"#).as_deref(), Some(r#"{"x":1}"#));
        assert_eq!(replacement(br#"{"data":null}"#).as_deref(), None);
        assert_eq!(replacement(b"ok"), None);
        assert_eq!(replacement(b""), None);
    }

    /// A one-shot HTTP server answering with `answer` after `delay`.
    fn app(answer: &'static str, delay: Duration) -> (HookUrl, thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).unwrap_or(0);
            thread::sleep(delay);
            let _ = s.write_all(answer.as_bytes());
            String::from_utf8_lossy(&got[..n]).into_owned()
        });
        (HookUrl { host: "127.0.0.1".into(), port, path: "/hook".into() }, t)
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
            let got = call(&url, Duration::from_secs(5), "tok", r#"{"ch":"a"}"#).unwrap();
            assert_eq!(got, want, "{answer}");
            let req = t.join().unwrap();
            assert!(req.starts_with("POST /hook HTTP/1.1\r\n"));
            assert!(req.contains("Authorization: Bearer tok\r\n"));
            assert!(req.ends_with("\r\n\r\n{\"ch\":\"a\"}"));
        }
    }

    #[test]
    fn a_slow_application_times_out() {
        let (url, t) = app("HTTP/1.1 200 OK\r\n\r\n", Duration::from_millis(800));
        let started = Instant::now();
        assert!(call(&url, Duration::from_millis(200), "t", "{}").is_err());
        assert!(started.elapsed() < Duration::from_millis(700));
        t.join().unwrap();
    }

    #[test]
    fn bodies() {
        let v: serde_json::Value =
            serde_json::from_str(&request_body("room:1", "al\"ice", r#"{"t":1}"#, Some("\"x\""))).unwrap();
        assert_eq!(v, serde_json::json!({"ch":"room:1","from":"al\"ice","data":{"t":1},"id":"x"}));
        let v: serde_json::Value = serde_json::from_str(&request_body("c", "u", "null", None)).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
    }
}
