//! Test support: the real `roostd` binary as a child process, tokens, a
//! blocking WebSocket client and raw HTTP — all bounded by timeouts, so a
//! broken server fails a test instead of hanging the suite.
//!
//! The one harness of every test binary (`tests/it`, `crash`, `durability`,
//! `hostile`): each includes it as `mod support`, and none uses all of it.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use roostd::auth::{mint, Key};
use serde_json::{json, Value};
use tungstenite::{ClientRequestBuilder, Message, WebSocket};

/// The HMAC secret every test server uses (40 bytes, as a deployment would).
pub const SECRET: &str = "roostd-integration-test-secret-0123456789";

/// The path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_roostd");

/// `n_full` normally, `n_small` when `ROOSTD_TEST_SCALE=small` (the suite
/// runs under qemu emulation, where everything is ten times slower).
pub fn scale(n_full: usize, n_small: usize) -> usize {
    if small() {
        n_small
    } else {
        n_full
    }
}

/// True when the suite runs scaled down (`ROOSTD_TEST_SCALE=small`).
pub fn small() -> bool {
    std::env::var("ROOSTD_TEST_SCALE").is_ok_and(|v| v == "small")
}

/// How many times slower the suite runs under qemu user emulation
/// (`ROOSTD_TEST_SCALE=small`) than natively, at worst.
pub const EMULATION_FACTOR: u32 = 10;

/// A wall-clock upper bound measured natively (`d`), stretched by
/// `EMULATION_FACTOR` under emulation: how long a test lets something take
/// before it fails. Lower bounds ("not before") need no stretching.
pub fn within(d: Duration) -> Duration {
    if small() {
        d * EMULATION_FACTOR
    } else {
        d
    }
}

/// How long any single read, write or wait may take before the test fails.
pub fn io_timeout() -> Duration {
    if small() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    }
}

/// How long a server may take to start (or stop).
fn start_timeout() -> Duration {
    if small() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(20)
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn test_key() -> Key {
    Key::new(None, SECRET.as_bytes().to_vec())
}

/// Signs arbitrary claims with the test secret.
pub fn mint_claims(claims: &Value) -> String {
    mint(claims, &test_key())
}

/// A token for `sub` with these read and write patterns, valid for an hour.
pub fn token(sub: &str, read: &[&str], write: &[&str]) -> String {
    mint_claims(&json!({"sub": sub, "exp": now_secs() + 3600, "read": read, "write": write}))
}

/// A token that may read and write every channel.
pub fn token_all(sub: &str) -> String {
    token(sub, &["*"], &["*"])
}

/// The main application's token for the HTTP API: every channel, `"api": true`.
pub fn api_token(sub: &str) -> String {
    api_token_with(sub, &["*"], &["*"])
}

/// The main application's token (`"api": true`, spec §5), the only kind the
/// HTTP API accepts, with these read and write patterns.
pub fn api_token_with(sub: &str, read: &[&str], write: &[&str]) -> String {
    mint_claims(&json!({"sub": sub, "exp": now_secs() + 3600, "read": read, "write": write, "api": true}))
}

// ---------------------------------------------------------------------------
// The server process.

/// Log lines kept per server.
const MAX_LOG_LINES: usize = 100_000;

/// How to start a server; `TestServer::start` covers the common case.
#[derive(Clone, Default)]
pub struct Options {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Do not set `ROOSTD_SECRET` (the server then generates `<data>/secret`).
    pub no_secret: bool,
    /// Serve this folder instead of a fresh temp folder.
    pub data: Option<PathBuf>,
    /// A command the server runs under (`strace -f ...`, `prlimit ...`).
    pub wrapper: Vec<String>,
}

impl Options {
    pub fn args(mut self, args: &[&str]) -> Options {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Options {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn no_secret(mut self) -> Options {
        self.no_secret = true;
        self
    }

    pub fn data(mut self, dir: &Path) -> Options {
        self.data = Some(dir.to_path_buf());
        self
    }

    pub fn wrapper(mut self, command: &[&str]) -> Options {
        self.wrapper = command.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn start(self) -> TestServer {
        TestServer::start_with(self)
    }

    /// Starts the server; when it exits before listening, gives its exit
    /// status (None: it had to be killed) and its log instead.
    pub fn try_start(self) -> Result<TestServer, (Option<ExitStatus>, String)> {
        let temp = match self.data {
            Some(_) => None,
            None => Some(tempfile::tempdir().expect("creating a temp data folder")),
        };
        let data = self.data.clone().unwrap_or_else(|| temp.as_ref().unwrap().path().to_path_buf());
        let log = Arc::new(Mutex::new(Vec::new()));
        let run = tempfile::tempdir().expect("creating a temp folder for the ready file");
        let (child, events, addr) = try_spawn(&data, run.path(), &self, &log)?;
        let events = Mutex::new(events);
        Ok(TestServer { addr, child: Some(child), events, data, _temp: temp, run, options: self, log })
    }
}

/// A running `roostd serve` on 127.0.0.1 with its own data folder.
pub struct TestServer {
    pub addr: SocketAddr,
    child: Option<Child>,
    /// Says that stderr closed: the process has exited (or is about to).
    /// In a Mutex so threads of a test can share `&TestServer` (a Receiver is not Sync).
    events: Mutex<Receiver<()>>,
    data: PathBuf,
    /// The temp folder behind `data`, unless the test gave its own.
    _temp: Option<tempfile::TempDir>,
    /// Holds the `--ready-file` the server writes its address to.
    run: tempfile::TempDir,
    options: Options,
    /// Every stderr line of every run of this server, in order.
    log: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// `roostd serve --listen 127.0.0.1:0 --data <tempdir> ARGS...` with the test secret.
    pub fn start(args: &[&str]) -> TestServer {
        Options::default().args(args).start()
    }

    pub fn options() -> Options {
        Options::default()
    }

    pub fn start_with(options: Options) -> TestServer {
        options
            .try_start()
            .unwrap_or_else(|(status, log)| panic!("roostd did not start (exit {status:?}); log:\n{log}"))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The `--ready-file` the server wrote its address to.
    pub fn ready_file(&self) -> PathBuf {
        self.run.path().join("ready")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Everything the server wrote to stderr so far (all runs).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log once a line contains `needle` (the log is read from the
    /// child's stderr by a thread, so a line printed just before the ready
    /// file may not be here yet), or as it is after `io_timeout()`.
    pub fn log_when(&self, needle: &str) -> String {
        let until = Instant::now() + io_timeout();
        while self.log_count(needle) == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.log()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }

    /// Sends a signal (`-TERM`, `-INT`, ...).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.pid().to_string()]).status().expect("running kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// SIGTERM, then waits for the process to exit; returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.wait_exit()
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        // stderr closes when the process exits.
        let closed = self.events.lock().unwrap().recv_timeout(start_timeout());
        if let Err(RecvTimeoutError::Timeout) = closed {
            panic!("the server did not exit in time; the log ends with:\n{}", self.log_tail(30))
        }
        let mut child = self.child.take().expect("server running");
        child.wait().expect("waiting for the server")
    }

    /// SIGTERM and wait; the stop must be clean (exit 0).
    pub fn stop(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "SIGTERM must stop the server cleanly, got {status}; log:\n{}", self.log_tail(60));
    }

    /// SIGTERM, wait, and start again on the same data folder (the port may change).
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "SIGTERM should stop the server cleanly, got {status}; log:\n{}", self.log_tail(30));
        self.start_again();
    }

    /// SIGKILL, wait, and start again on the same data folder.
    pub fn kill9(&mut self) {
        self.kill_and_wait();
        self.start_again();
    }

    /// SIGKILL, and wait until the process is gone (no restart).
    pub fn kill_and_wait(&mut self) {
        self.signal("-KILL");
        self.wait_exit();
    }

    /// Starts the server again on the same data folder after it stopped
    /// (the port may change); lets a test change the folder in between.
    pub fn start_again(&mut self) {
        let (child, events, addr) = try_spawn(&self.data, self.run.path(), &self.options, &self.log)
            .unwrap_or_else(|(status, log)| panic!("roostd did not start again (exit {status:?}); log:\n{log}"));
        self.child = Some(child);
        self.events = Mutex::new(events);
        self.addr = addr;
    }

    /// Opens a WebSocket with `?token=`; panics on refusal.
    pub fn ws(&self, token: &str) -> Client {
        self.try_ws(token).unwrap_or_else(|(status, body)| {
            panic!("refused with {status}: {body}; the server log ends with:\n{}", self.log_tail(20))
        })
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(n)..].join("\n")
    }

    /// Opens a WebSocket with `?token=`, or gives the refusal's status and
    /// body (status 0: no HTTP answer at all).
    pub fn try_ws(&self, token: &str) -> Result<Client, (u16, String)> {
        let uri = format!("ws://{}/ws?token={token}", self.addr);
        Client::connect(self.addr, ClientRequestBuilder::new(uri.parse().unwrap()))
    }

    /// Opens a WebSocket with a custom request (subprotocols, headers).
    pub fn ws_request(&self, request: ClientRequestBuilder) -> Result<Client, (u16, String)> {
        Client::connect(self.addr, request)
    }

    /// `ws://addr/path` for building custom requests.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends raw bytes and reads one answer: its head, then a body of
    /// `Content-Length` bytes (or up to EOF without one). Works whether the
    /// server keeps the connection alive or closes it.
    pub fn http_bytes(&self, request: &[u8]) -> HttpResponse {
        let mut sock = self.tcp();
        // The server may answer and close before reading everything (431):
        // a failed write is fine as long as the answer arrives.
        let _ = sock.write_all(request);
        read_response(&mut sock)
    }

    /// Sends a raw HTTP request and reads one answer.
    pub fn http(&self, request: &str) -> HttpResponse {
        self.http_bytes(request.as_bytes())
    }

    /// `GET target` on the HTTP API with `token` as Bearer.
    pub fn api_get(&self, target: &str, token: &str) -> HttpResponse {
        self.http(&format!("GET {target} HTTP/1.1\r\nHost: roostd.test\r\nAuthorization: Bearer {token}\r\n\r\n"))
    }

    /// `POST /api/channels/{ch}/messages` with `token`, a JSON `body` and
    /// `extra` header lines (each ending in `\r\n`).
    pub fn post(&self, ch: &str, token: &str, body: &str, extra: &str) -> HttpResponse {
        let len = body.len();
        self.http(&format!(
            "POST /api/channels/{ch}/messages HTTP/1.1\r\nHost: roostd.test\r\nAuthorization: Bearer {token}\r\nContent-Length: {len}\r\n{extra}\r\n{body}"
        ))
    }

    /// A gauge or counter from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let body = self.http("GET /metrics HTTP/1.1\r\nHost: roostd.test\r\n\r\n").body;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// A plain TCP connection to the server, with timeouts.
    pub fn tcp(&self) -> TcpStream {
        let sock = TcpStream::connect(self.addr).expect("connecting to the server");
        sock.set_read_timeout(Some(io_timeout())).unwrap();
        sock.set_write_timeout(Some(io_timeout())).unwrap();
        sock
    }

    /// Resident memory of the server process, KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Resident memory that is the process's own (`RssAnon`): the heap,
    /// without the store's pages mapped in by reads.
    pub fn anon_kib(&self) -> u64 {
        self.status_kib("RssAnon:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Sends a raw request and reads only the response head (for a 101).
    pub fn raw_upgrade(&self, request: &str) -> (HttpResponse, TcpStream) {
        let mut sock = self.tcp();
        sock.write_all(request.as_bytes()).unwrap();
        let head = read_head(&mut sock);
        (HttpResponse::parse(&head), sock)
    }

    /// A complete WebSocket upgrade request for `target` (path and query),
    /// with `extra` header lines (each ending in `\r\n`).
    pub fn upgrade_request(&self, target: &str, extra: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
            self.addr
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn server_command(data: &Path, ready: &Path, options: &Options) -> Command {
    let mut cmd = match options.wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("serve").args(["--listen", "127.0.0.1:0", "--data"]).arg(data).arg("--ready-file").arg(ready);
    cmd.args(&options.args);
    cmd.env_remove("ROOSTD_SECRET").env("RUST_LOG", "info");
    if !options.no_secret {
        cmd.env("ROOSTD_SECRET", SECRET);
    }
    for (k, v) in &options.env {
        cmd.env(k, v);
    }
    cmd
}

/// A started server: the process, the "stderr closed" signal, the address.
type Spawned = (Child, Receiver<()>, SocketAddr);

/// Spawns the server and waits for the address it writes to `run/ready`;
/// when it exits (or hangs) before that: its exit status (None: killed) and
/// its whole log.
fn try_spawn(
    data: &Path,
    run: &Path,
    options: &Options,
    log: &Arc<Mutex<Vec<String>>>,
) -> Result<Spawned, (Option<ExitStatus>, String)> {
    let ready = run.join("ready");
    // A restart must not read the address of the run before.
    let _ = std::fs::remove_file(&ready);
    let mut child = server_command(data, &ready, options)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning roostd");
    let stderr = child.stderr.take().unwrap();
    let (tx, events) = mpsc::channel();
    let sink = Arc::clone(log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut log = sink.lock().unwrap();
            // A server stuck in a loop can log millions of lines: keep the start.
            if log.len() < MAX_LOG_LINES {
                log.push(line);
            }
        }
        let _ = tx.send(());
    });
    // Poll for the file, waking early when stderr closes (the server died).
    let deadline = Instant::now() + start_timeout();
    let mut exited = false;
    while !exited && Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let addr = text.trim_end().parse().unwrap_or_else(|e| panic!("the ready file holds {text:?}: {e}"));
            return Ok((child, events, addr));
        }
        exited = !matches!(events.recv_timeout(Duration::from_millis(10)), Err(RecvTimeoutError::Timeout));
    }
    // Give a dying process a moment to be reaped before killing it.
    let mut status = child.try_wait().ok().flatten();
    if status.is_none() {
        std::thread::sleep(Duration::from_millis(200));
        status = child.try_wait().ok().flatten();
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Err((status, log.lock().unwrap().join("\n")))
}

// ---------------------------------------------------------------------------
// Running the binary for CLI tests.

/// Runs `roostd ARGS` with `env` (ROOSTD_SECRET and RUST_LOG cleared
/// first), killing it if it does not finish in time.
pub fn run_roostd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("ROOSTD_SECRET").env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning roostd");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(start_timeout()) {
        Ok(out) => out.expect("running roostd"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("`roostd {}` did not finish in time", args.join(" "));
        }
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP.

/// A masked client frame of under 126 payload bytes, built by hand: the
/// test client would refuse to send a flood, or to send before the 101.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "client_frame builds short frames only");
    let mut f = vec![if fin { 0x80 | opcode } else { opcode }, 0x80 | payload.len() as u8];
    f.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as is
    f.extend_from_slice(payload);
    f
}

/// Reads a response head, byte by byte so nothing after it is consumed.
fn read_head(sock: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match sock.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => raw.push(byte[0]),
            Err(e) => panic!("reading the response head: {e} (got {:?})", String::from_utf8_lossy(&raw)),
        }
    }
    raw
}

/// Reads one response: head, then `Content-Length` bytes or up to EOF.
pub fn read_response(sock: &mut TcpStream) -> HttpResponse {
    let head = read_head(sock);
    let mut resp = HttpResponse::parse(&head);
    let mut body = Vec::new();
    match resp.header("Content-Length").map(|n| n.parse::<usize>().expect("a numeric Content-Length")) {
        Some(n) => {
            body.resize(n, 0);
            sock.read_exact(&mut body).unwrap_or_else(|e| panic!("reading a {n}-byte body: {e}; head: {}", resp.head));
        }
        None => {
            sock.read_to_end(&mut body).unwrap_or_else(|e| panic!("reading a body to EOF: {e}; head: {}", resp.head));
        }
    }
    resp.body = String::from_utf8_lossy(&body).into_owned();
    resp
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// The head: status line and headers.
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    pub fn parse(raw: &[u8]) -> HttpResponse {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 response: {text:?}"));
        HttpResponse { status, head: head.to_string(), body: body.to_string() }
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The `error` code of a `{"error":"<code>"}` body.
    pub fn error(&self) -> String {
        let v: Value = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"));
        v["error"].as_str().unwrap_or_else(|| panic!("no error code: {self:?}")).to_string()
    }

    /// Asserts a refusal: this status and exactly `{"error":"<code>"}`.
    #[track_caller]
    pub fn assert_refusal(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "status of {self:?}");
        let body: Value =
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"));
        assert_eq!(body, json!({ "error": code }), "body of {self:?}");
        assert_eq!(self.header("Content-Type"), Some("application/json"), "{self:?}");
    }
}

// ---------------------------------------------------------------------------
// The WebSocket client.

/// A blocking WebSocket client with timeouts.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    /// `msg` frames read while waiting for a reply, handed out first by `recv_json`.
    inbox: VecDeque<Value>,
    /// Frames read so far and the last one, for failure messages.
    frames: u64,
    last: Option<Value>,
    /// Pongs read so far.
    pub pongs: usize,
    pub response: tungstenite::handshake::client::Response,
}

/// What came back for a request: a reply, or the server's Close.
#[derive(Debug)]
pub enum Answer {
    Reply(Value),
    /// Close code (None: the connection ended without a Close frame).
    Closed(Option<u16>),
}

impl Client {
    /// Opens `ws://addr/ws?token=`; panics on refusal (for threads that
    /// hold only the address).
    pub fn open(addr: SocketAddr, token: &str) -> Client {
        let uri = format!("ws://{addr}/ws?token={token}");
        Client::connect(addr, ClientRequestBuilder::new(uri.parse().unwrap()))
            .unwrap_or_else(|(status, body)| panic!("refused with {status}: {body}"))
    }

    pub fn connect(addr: SocketAddr, request: ClientRequestBuilder) -> Result<Client, (u16, String)> {
        let sock = TcpStream::connect(addr).expect("connecting to the server");
        sock.set_read_timeout(Some(io_timeout())).unwrap();
        sock.set_write_timeout(Some(io_timeout())).unwrap();
        sock.set_nodelay(true).unwrap();
        match tungstenite::client::client_with_config(request, sock, None) {
            Ok((ws, response)) => Ok(Client { ws, inbox: VecDeque::new(), frames: 0, last: None, pongs: 0, response }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                Err((resp.status().as_u16(), body.into_owned()))
            }
            Err(e) => Err((0, format!("the WebSocket handshake failed: {e}"))),
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("sending a text frame");
    }

    pub fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string());
    }

    /// Sends like `send_json`; false when the connection is gone (a test
    /// that kills the server under its clients).
    pub fn try_send_json(&mut self, v: Value) -> bool {
        self.ws.send(Message::text(v.to_string())).is_ok()
    }

    /// Queues a frame without flushing (for pipelining many requests).
    pub fn write_json(&mut self, v: Value) {
        self.ws.write(Message::text(v.to_string())).expect("queueing a text frame");
    }

    pub fn flush(&mut self) {
        self.ws.flush().expect("flushing");
    }

    pub fn send_binary(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).expect("sending a binary frame");
    }

    /// The next frame from the network as JSON (pings are answered and skipped).
    fn read_json(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"));
                    self.frames += 1;
                    self.last = Some(v.clone());
                    return v;
                }
                Ok(Message::Ping(_)) => continue,
                Ok(Message::Pong(_)) => self.pongs += 1,
                Ok(Message::Close(frame)) => panic!("the server closed the connection: {frame:?}{}", self.context()),
                Ok(other) => panic!("unexpected frame: {other:?}{}", self.context()),
                Err(e) => panic!("reading a frame: {e}{}", self.context()),
            }
        }
    }

    /// Writes bytes straight to the socket (hand-made frames).
    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.ws.get_mut().write_all(bytes)
    }

    /// The next text frame from the network, or how the connection ended
    /// (for tests where a Close is one of the expected outcomes).
    pub fn next_answer(&mut self) -> Answer {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Answer::Reply(serde_json::from_str(&t).expect("JSON from the server")),
                Ok(Message::Pong(_)) => self.pongs += 1,
                Ok(Message::Close(frame)) => {
                    let _ = self.ws.flush();
                    let _ = self.ws.get_ref().shutdown(Shutdown::Both);
                    return Answer::Closed(frame.map(|f| u16::from(f.code)));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    panic!("no frame within {:?}{}", io_timeout(), self.context())
                }
                Err(_) => return Answer::Closed(None),
            }
        }
    }

    /// The next frame that is not a `msg` (deliveries are kept), or the Close.
    pub fn answer(&mut self) -> Answer {
        loop {
            match self.next_answer() {
                Answer::Reply(v) if v["op"] == "msg" => self.inbox.push_back(v),
                other => return other,
            }
        }
    }

    /// For failure messages: how far this client got.
    fn context(&self) -> String {
        let last = self.last.as_ref().map(|v| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("data");
                m.remove("msgs");
            }
            v
        });
        format!(" (after {} frames; the last, without data: {last:?})", self.frames)
    }

    /// The next frame (buffered `msg`s first).
    pub fn recv_json(&mut self) -> Value {
        match self.inbox.pop_front() {
            Some(v) => v,
            None => self.read_json(),
        }
    }

    /// The next `msg` frame; panics on anything else.
    #[track_caller]
    pub fn recv_msg(&mut self) -> Value {
        let v = self.recv_json();
        assert_eq!(v["op"], "msg", "expected a msg, got {v}");
        v
    }

    /// Sends a request and returns its reply: the first frame that is not a
    /// `msg` (deliveries read meanwhile are kept for `recv_json`).
    pub fn request(&mut self, v: Value) -> Value {
        self.send_json(v);
        self.reply()
    }

    /// The next frame that is not a `msg`.
    pub fn reply(&mut self) -> Value {
        loop {
            let v = self.read_json();
            if v["op"] == "msg" {
                self.inbox.push_back(v);
            } else {
                return v;
            }
        }
    }

    /// Subscribes (live only); returns the `subok`.
    #[track_caller]
    pub fn sub(&mut self, ch: &str) -> Value {
        let r = self.request(json!({"op": "sub", "ch": ch}));
        assert_eq!(r["op"], "subok", "sub {ch}: {r}");
        r
    }

    /// Subscribes resuming after `since` in `epoch`; returns the `subok`.
    #[track_caller]
    pub fn resume(&mut self, ch: &str, since: u64, epoch: &Value) -> Value {
        let r = self.request(json!({"op": "sub", "ch": ch, "since": since, "epoch": epoch}));
        assert_eq!(r["op"], "subok", "resume {ch}: {r}");
        r
    }

    /// Publishes and waits for the ack; returns the seq.
    #[track_caller]
    pub fn publish(&mut self, ch: &str, data: Value) -> u64 {
        let r = self.request(json!({"op": "pub", "ch": ch, "data": data}));
        assert_eq!(r["op"], "ack", "pub {ch}: {r}");
        r["seq"].as_u64().unwrap()
    }

    /// Publishes a keyed message (spec §8) and waits for the ack; returns the seq.
    #[track_caller]
    pub fn publish_keyed(&mut self, ch: &str, key: &str, data: Value) -> u64 {
        let r = self.request(json!({"op": "pub", "ch": ch, "key": key, "data": data}));
        assert_eq!(r["op"], "ack", "pub {ch} key {key}: {r}");
        r["seq"].as_u64().unwrap()
    }

    /// Publishes `data(i)` for i in 0..n, pipelined in windows of 256;
    /// returns the seqs in order. Every pub carries a fresh unique id.
    pub fn publish_many(&mut self, ch: &str, n: usize, data: impl Fn(usize) -> Value) -> Vec<u64> {
        self.publish_frames(n, |i| json!({"op": "pub", "ch": ch, "data": data(i)}))
    }

    /// Publishes the `pub` objects `frame(i)` for i in 0..n (each given a
    /// fresh unique `id`), pipelined like `publish_many`; returns the seqs.
    pub fn publish_frames(&mut self, n: usize, frame: impl Fn(usize) -> Value) -> Vec<u64> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        const WINDOW: usize = 256;
        let mut seqs = Vec::with_capacity(n);
        let mut sent = 0;
        while sent < n {
            let end = (sent + WINDOW).min(n);
            let first_id = NEXT_ID.fetch_add((end - sent) as u64, Ordering::Relaxed);
            for i in sent..end {
                let id = format!("pm-{}", first_id + (i - sent) as u64);
                let mut pub_frame = frame(i);
                pub_frame["id"] = json!(id);
                self.write_json(pub_frame);
            }
            self.flush();
            for i in sent..end {
                let r = self.reply();
                assert_eq!(r["op"], "ack", "pub {i}: {r}");
                let id = format!("pm-{}", first_id + (i - sent) as u64);
                assert_eq!(r["id"], id, "acks come in order: {r}");
                seqs.push(r["seq"].as_u64().unwrap());
            }
            sent = end;
        }
        seqs
    }

    /// Fetches the whole history of `ch` after `since`, paging with limit 1000.
    pub fn history(&mut self, ch: &str, mut since: u64) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let r = self.request(json!({"op": "hist", "ch": ch, "since": since, "limit": 1000}));
            assert_eq!(r["op"], "hist", "hist {ch}: {r}");
            let msgs = r["msgs"].as_array().unwrap();
            if let Some(last) = msgs.last() {
                since = last["seq"].as_u64().unwrap();
            }
            all.extend(msgs.iter().cloned());
            if r["more"] != true {
                return all;
            }
            assert!(!msgs.is_empty(), "more:true with no messages: {r}");
        }
    }

    /// Reads until the server's Close frame and returns its code. Messages
    /// before it are returned too (in order).
    pub fn recv_until_close(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut msgs: Vec<Value> = self.inbox.drain(..).collect();
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => msgs.push(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(frame)) => {
                    // tungstenite has queued the answering Close; send it and
                    // hang up, as a browser does once the handshake is done.
                    let _ = self.ws.flush();
                    let _ = self.ws.get_ref().shutdown(Shutdown::Both);
                    return (msgs, frame.map(|f| u16::from(f.code)));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    panic!("no Close frame within {:?} (after {} messages)", io_timeout(), msgs.len())
                }
                Err(e) => panic!("the connection ended without a Close frame: {e} (after {} messages)", msgs.len()),
            }
        }
    }

    /// Reads until the Close frame and returns its code (frames before it are skipped).
    pub fn close_code(&mut self) -> Option<u16> {
        self.recv_until_close().1
    }

    /// Closes our side politely.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
        let _ = self.ws.get_ref().shutdown(Shutdown::Write);
    }
}

/// A data value that checks exact round-tripping: nesting, unicode, numbers.
pub fn rich_data(i: usize) -> Value {
    json!({"i": i, "text": format!("héllo \"{i}\" \u{1F600}\n"), "nested": {"list": [1, 2.5, null, true, {"k": []}]}, "neg": -7})
}

// ---------------------------------------------------------------------------
// A webhook endpoint (spec §9): the main application's receiving side.

/// How the endpoint treats the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing listens on the port: connections are refused.
    Refuse,
    /// Reads the request and answers with this status.
    Status(u16),
    /// Reads the request and never answers (until the mode changes).
    Hang,
}

/// One request the endpoint read, whatever it answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// When its body had been read.
    pub at: Instant,
    /// The status it was answered with (0: none, it hung).
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Delivery {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("a webhook body that is not JSON ({e}): {self:?}"))
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

struct EndpointState {
    mode: Mode,
    /// Answers for the next requests, before `mode` applies again.
    script: VecDeque<Mode>,
    received: Vec<Delivery>,
}

/// A tiny HTTP endpoint on 127.0.0.1 that records every request and answers
/// as told: refuse connections, a status, or hang. Lives as long as the test.
pub struct Endpoint {
    pub url: String,
    state: Arc<(Mutex<EndpointState>, std::sync::Condvar)>,
}

impl Endpoint {
    /// Starts in `mode` on a fresh port.
    pub fn start(mode: Mode) -> Endpoint {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the webhook endpoint");
        let port = listener.local_addr().unwrap().port();
        let state = EndpointState { mode, script: VecDeque::new(), received: Vec::new() };
        let state = Arc::new((Mutex::new(state), std::sync::Condvar::new()));
        let shared = Arc::clone(&state);
        // The thread ends with the test process; a weak handle would let it
        // stop earlier, but one idle thread per test costs nothing.
        std::thread::spawn(move || endpoint_accept(port, Some(listener), shared));
        Endpoint { url: format!("http://127.0.0.1:{port}/roost-events"), state }
    }

    /// Answers every later request this way (and closes or opens the port).
    pub fn set(&self, mode: Mode) {
        self.state.0.lock().unwrap().mode = mode;
        self.state.1.notify_all();
    }

    /// The next requests get these answers (statuses or hangs: a refusal
    /// is a mode of the port, not of a request), in order, then `set`'s mode again.
    pub fn script(&self, answers: &[Mode]) {
        assert!(!answers.contains(&Mode::Refuse), "refusing is for `set`");
        self.state.0.lock().unwrap().script.extend(answers.iter().copied());
    }

    /// Every request read so far.
    pub fn received(&self) -> Vec<Delivery> {
        self.state.0.lock().unwrap().received.clone()
    }

    /// The events of every request answered 2xx, in arrival order (a repeat included).
    pub fn delivered(&self) -> Vec<Value> {
        self.received()
            .iter()
            .filter(|d| (200..300).contains(&d.status))
            .flat_map(|d| d.json()["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits (bounded by `within`) until `done` holds for the delivered
    /// events; returns them. Panics with what arrived when it never does.
    #[track_caller]
    pub fn wait_for(&self, within: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let events = self.delivered();
            if done(&events) {
                return events;
            }
            if Instant::now() > deadline {
                panic!("the webhook endpoint did not get what was expected within {within:?}; it got: {events:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Accepts while the mode is not `Refuse`; drops the listener (so connects
/// are refused) while it is, and binds the same port again after.
fn endpoint_accept(
    port: u16,
    mut listener: Option<std::net::TcpListener>,
    state: Arc<(Mutex<EndpointState>, std::sync::Condvar)>,
) {
    loop {
        let s = state.0.lock().unwrap();
        if s.mode == Mode::Refuse {
            listener = None;
            drop(state.1.wait_timeout(s, Duration::from_millis(20)).unwrap());
            continue;
        }
        drop(s);
        let l = match listener.take() {
            Some(l) => l,
            None => match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => l,
                Err(e) => panic!("binding the webhook endpoint's port {port} again: {e}"),
            },
        };
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((sock, _)) => {
                let shared = Arc::clone(&state);
                std::thread::spawn(move || endpoint_serve(sock, shared));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("the webhook endpoint's accept failed: {e}"),
        }
        listener = Some(l);
    }
}

/// Serves requests on one connection (keep-alive) as the mode says.
fn endpoint_serve(sock: TcpStream, state: Arc<(Mutex<EndpointState>, std::sync::Condvar)>) {
    sock.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(sock);
    loop {
        let (mut head, mut line, mut len) = (String::new(), String::new(), 0usize);
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("a numeric Content-Length from roostd");
            }
            head.push_str(&line);
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mode = {
            let mut s = state.0.lock().unwrap();
            let mode = s.script.pop_front().unwrap_or(s.mode);
            let status = match mode {
                Mode::Status(code) => code,
                _ => 0,
            };
            let body = String::from_utf8_lossy(&body).into_owned();
            s.received.push(Delivery { at: Instant::now(), status, head: head.clone(), body });
            mode
        };
        match mode {
            Mode::Status(code) => {
                let answer = format!("HTTP/1.1 {code} Test\r\nContent-Length: 0\r\n\r\n");
                if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            // Hang: hold the connection until told otherwise, then drop it
            // unanswered (roostd will have given up on it long before).
            Mode::Hang | Mode::Refuse => {
                let mut s = state.0.lock().unwrap();
                while s.mode == Mode::Hang {
                    s = state.1.wait(s).unwrap();
                }
                return;
            }
        }
    }
}

/// A `nats-server` child with JetStream (file storage in its own temp
/// folder) on 127.0.0.1, for the cluster tests. `None` when `nats-server` is
/// not installed: the caller says it skipped (`.ci/cluster-test` installs it
/// and sets `ROOSTD_TEST_NATS=required`, which turns the skip into a failure).
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Cluster flags, for a member of `cluster_of_three`.
    extra: Vec<String>,
    /// A configuration file used instead of the flags (`with_config`).
    conf: Option<PathBuf>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl NatsServer {
    /// Three `nats-server`s routed to each other on 127.0.0.1, JetStream on
    /// each: a stream with 3 replicas survives one of them. `None` as in `start`.
    pub fn cluster_of_three() -> Option<Vec<NatsServer>> {
        if !Self::installed() {
            return None;
        }
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let all = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut nodes = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let extra = vec![
                "-n".into(),
                format!("n{i}"),
                "--cluster_name".into(),
                "roostd-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".into(),
                all.clone(),
            ];
            let mut n =
                NatsServer { child: None, port: free_port(), dir: tempfile::tempdir().unwrap(), extra, conf: None };
            n.restart();
            nodes.push(n);
        }
        Some(nodes)
    }

    /// True when `nats-server` is installed; else says the test skipped
    /// (or fails it, under `ROOSTD_TEST_NATS=required`).
    fn installed() -> bool {
        let found = Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("ROOSTD_TEST_NATS").as_deref() != Ok("required"),
                "nats-server is not installed (apt-get install nats-server)"
            );
            eprintln!("SKIPPED: nats-server is not installed (apt-get install nats-server)");
        }
        found
    }

    /// One `nats-server` with JetStream. `None` when it is not installed.
    pub fn start() -> Option<NatsServer> {
        if !Self::installed() {
            return None;
        }
        let mut n = NatsServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: Vec::new(),
            conf: None,
        };
        n.restart();
        Some(n)
    }

    /// A `nats-server` run from a configuration file: `conf` is given the
    /// port (`{port}`) and its own folder (`{dir}`), and should listen on
    /// 127.0.0.1. For topologies flags cannot say (leaf nodes). `None` as in `start`.
    pub fn with_config(conf: &str) -> Option<NatsServer> {
        if !Self::installed() {
            return None;
        }
        let (port, dir) = (free_port(), tempfile::tempdir().unwrap());
        let text = conf.replace("{port}", &port.to_string()).replace("{dir}", dir.path().to_str().unwrap());
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, text).unwrap();
        let mut n = NatsServer { child: None, port, dir, extra: Vec::new(), conf: Some(file) };
        n.restart();
        Some(n)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port and store (after `kill`).
    pub fn restart(&mut self) {
        let mut command = Command::new("nats-server");
        match &self.conf {
            Some(file) => command.arg("-c").arg(file),
            None => command.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"]).arg(self.dir.path()),
        };
        let child =
            command.args(&self.extra).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + start_timeout();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal: `-STOP` stalls it with its connections open, `-CONT` resumes it.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("nats-server running").id().to_string();
        let status = Command::new("kill").args([sig, &pid]).status().expect("running kill");
        assert!(status.success(), "kill {sig} nats-server failed");
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
