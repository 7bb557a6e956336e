//! A small roostd client: subscribe to one channel, print every message,
//! publish each line typed on stdin.
//!
//! Run it (the server must be running, e.g. `roostd serve --listen 127.0.0.1:8080`):
//!
//! ```text
//! export ROOSTD_SECRET=...          # the server's secret: the client mints its own token
//! cargo run --example client -- ws://127.0.0.1:8080 room:1
//!
//! export ROOSTD_TOKEN=$(roostd token --sub me --read 'room:*' --write 'room:*')
//! cargo run --example client -- ws://127.0.0.1:8080 room:1      # or use a ready token
//!
//! # resume where an earlier run stopped (it prints these numbers when it ends):
//! cargo run --example client -- ws://127.0.0.1:8080 room:1 --since 42 --epoch 'EPOCH'
//! ```
//!
//! Options: `--sub NAME` (identity in a minted token, default `client`),
//! `--since N --epoch E` (resume: replay everything after seq N of that store).
//!
//! Each stdin line is published as `data`: as JSON if it parses, else as a
//! JSON string. The client waits for the `ack` of one line before sending
//! the next. End stdin (Ctrl-D) to leave; the last seq and the epoch to
//! resume with are printed then, and shown with every message.

use std::io::{self, BufRead as _};
use std::net::TcpStream;
use std::sync::mpsc::{self, TryRecvError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roostd::auth::{mint, Key};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

struct Args {
    url: String,
    channel: String,
    sub: String,
    since: Option<u64>,
    epoch: Option<String>,
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("client: {msg}");
            eprintln!("usage: client ws://HOST:PORT CHANNEL [--sub NAME] [--since N --epoch E]");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("client: {e}");
        std::process::exit(1);
    }
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let (mut sub, mut since, mut epoch) = ("client".to_string(), None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--sub" => sub = value("--sub")?,
            "--since" => since = Some(value("--since")?.parse().map_err(|_| "--since takes a number")?),
            "--epoch" => epoch = Some(value("--epoch")?),
            "-h" | "--help" => return Err("help".into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => positional.push(a),
        }
    }
    let [url, channel] = <[String; 2]>::try_from(positional).map_err(|_| "give a URL and a channel")?;
    if since.is_some_and(|s| s > 0) && epoch.is_none() {
        return Err("--since needs --epoch (the store the seq was counted in)".into());
    }
    Ok(Args { url, channel, sub, since, epoch })
}

/// A token from ROOSTD_TOKEN, or one minted from ROOSTD_SECRET that may read
/// and write this one channel for an hour.
fn token(args: &Args) -> Result<String, String> {
    if let Ok(t) = std::env::var("ROOSTD_TOKEN") {
        return Ok(t.trim().to_string());
    }
    let secret = std::env::var("ROOSTD_SECRET").map_err(|_| "set ROOSTD_SECRET (or ROOSTD_TOKEN)")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({
        "sub": args.sub,
        "iat": now,
        "exp": now + 3600,
        "read": [args.channel],
        "write": [args.channel],
    });
    // The key is the secret's UTF-8 bytes, as in every JWT library.
    Ok(mint(&claims, &Key::new(None, secret.into_bytes())))
}

fn run(args: Args) -> Result<(), String> {
    let token = token(&args)?;
    let base = args.url.trim_end_matches('/');
    let base = base.strip_suffix("/ws").unwrap_or(base);
    let url = format!("{base}/ws?token={token}");
    let authority = base.strip_prefix("ws://").ok_or("the URL must start with ws://")?;
    let stream = TcpStream::connect(authority).map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let (mut ws, _response) = tungstenite::client(url.as_str(), stream).map_err(|e| match e {
        // A refusal is a plain HTTP answer with {"error":"<code>"}.
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            format!("refused: HTTP {} {body}", resp.status())
        }
        e => format!("handshake failed: {e}"),
    })?;
    // Short read timeouts let one thread both read the socket and pick up
    // stdin lines: a timed-out read just returns WouldBlock.
    ws.get_mut().set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| e.to_string())?;
    eprintln!("connected to {base}");

    let mut sub = json!({"op": "sub", "ch": args.channel, "id": "sub"});
    if let Some(since) = args.since {
        sub["since"] = since.into();
        if let Some(epoch) = &args.epoch {
            sub["epoch"] = epoch.as_str().into();
        }
    }
    send(&mut ws, &sub)?;

    let lines = stdin_lines();
    let mut state = Position { epoch: args.epoch.clone().unwrap_or_default(), last: args.since.unwrap_or(0) };
    let mut next_id = 1u64;
    let mut awaiting: Option<u64> = None;
    let mut stdin_open = true;
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let reply: Value = serde_json::from_str(&text).map_err(|e| format!("server sent bad JSON: {e}"))?;
                let answers = show(&reply, &mut state);
                if answers.is_some() && answers == awaiting {
                    awaiting = None; // acked (or refused): the next line may go
                }
            }
            Ok(Message::Close(frame)) => {
                match frame {
                    Some(f) => eprintln!("server closed the connection: {} {}", u16::from(f.code), f.reason),
                    None => eprintln!("server closed the connection"),
                }
                break;
            }
            Ok(_) => {} // pings are answered by tungstenite itself
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => {
                eprintln!("connection lost: {e}");
                break;
            }
        }
        // One publish at a time: the next line waits for this one's ack.
        if awaiting.is_none() && stdin_open {
            match lines.try_recv() {
                Ok(line) if line.trim().is_empty() => {}
                Ok(line) => {
                    // A line that is JSON is sent as is; anything else as a string.
                    let data = serde_json::from_str::<Value>(&line).unwrap_or(Value::String(line));
                    send(&mut ws, &json!({"op": "pub", "ch": args.channel, "data": data, "id": next_id}))?;
                    awaiting = Some(next_id);
                    next_id += 1;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => stdin_open = false,
            }
        }
        if !stdin_open && awaiting.is_none() {
            let _ = ws.close(None);
            // Read until the server answers the Close (or the timeout says it
            // won't), still showing messages that were on their way.
            for _ in 0..40 {
                match ws.read() {
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                    Err(_) => break,
                    Ok(Message::Text(text)) => {
                        if let Ok(reply) = serde_json::from_str::<Value>(&text) {
                            show(&reply, &mut state);
                        }
                    }
                    Ok(_) => {}
                }
            }
            break;
        }
    }
    eprintln!(
        "resume with: cargo run --example client -- {} {} --since {} --epoch '{}'",
        args.url, args.channel, state.last, state.epoch
    );
    Ok(())
}

/// Where this client is in the channel: what to resume from.
struct Position {
    epoch: String,
    last: u64,
}

/// Prints one server message; returns the id it answers, if any.
fn show(reply: &Value, pos: &mut Position) -> Option<u64> {
    let op = reply["op"].as_str().unwrap_or("");
    match op {
        "subok" => {
            let epoch = reply["epoch"].as_str().unwrap_or("").to_string();
            let seq = reply["seq"].as_u64().unwrap_or(0);
            if reply["gap"] == true {
                // Other store, or messages trimmed: what we had is not
                // continuous with what comes; replay starts at the oldest.
                eprintln!("gap: some messages are gone; replaying from the oldest one stored");
                pos.last = 0;
            } else if pos.last == 0 || pos.epoch != epoch {
                pos.last = seq;
            }
            pos.epoch = epoch;
            eprintln!("subscribed to {} (epoch {}, last seq {seq})", reply["ch"].as_str().unwrap_or("?"), pos.epoch);
        }
        "msg" => {
            pos.last = reply["seq"].as_u64().unwrap_or(pos.last);
            println!(
                "[{} #{}] {}: {}",
                reply["ch"].as_str().unwrap_or("?"),
                pos.last,
                reply["from"].as_str().unwrap_or("?"),
                reply["data"]
            );
        }
        "ack" => eprintln!("  acked as #{}", reply["seq"]),
        "err" => {
            eprintln!("  error {}: {}", reply["code"].as_str().unwrap_or("?"), reply["msg"].as_str().unwrap_or(""))
        }
        _ => eprintln!("{reply}"),
    }
    reply["id"].as_u64()
}

fn send(ws: &mut WebSocket<TcpStream>, v: &Value) -> Result<(), String> {
    ws.send(Message::text(v.to_string())).map_err(|e| format!("cannot send: {e}"))
}

/// Reads stdin on its own thread; the channel closes at end of input.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
