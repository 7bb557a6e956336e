//! The publish hook (spec §5): the main application approves, rewrites or
//! refuses each client `pub` — and a slow application never holds up the
//! event loop.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// What the test application saw of one hook call.
struct Call {
    authorization: String,
    body: Value,
}

/// A small main application: answers by the message's `text`:
/// `refuse` → 403, `fail` → 500, `redirect` → 302, `slow` → waits 3 s (30 s
/// under emulation: three times the longest hook timeout used here),
/// anything else → 200 with the text upper-cased. Serves many calls at once.
fn application() -> (String, mpsc::Receiver<Call>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(sock);
                let (mut line, mut len, mut authorization) = (String::new(), 0, String::new());
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if lower.starts_with("authorization:") {
                        authorization = line["authorization:".len()..].trim().to_string();
                    }
                }
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap();
                let text = body["data"]["text"].as_str().unwrap_or("").to_string();
                let _ = tx.send(Call { authorization, body: body.clone() });
                let answer = match text.as_str() {
                    "refuse" => "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".to_string(),
                    "fail" => "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_string(),
                    "redirect" => "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n".to_string(),
                    "keep" => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
                    t => {
                        if t == "slow" {
                            thread::sleep(within(Duration::from_secs(3)));
                        }
                        let out = json!({"data": {"text": t.to_uppercase()}}).to_string();
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{out}", out.len())
                    }
                };
                let _ = reader.get_mut().write_all(answer.as_bytes());
            });
        }
    });
    (url, rx)
}

#[test]
fn the_application_approves_rewrites_and_refuses() {
    let (url, calls) = application();
    let server = TestServer::start(&["--publish-hook", &url, "--publish-hook-timeout", "1s"]);
    let token = token("alice", &["*"], &["*"]);
    let mut publisher = server.ws(&token);
    let mut subscriber = server.ws(&token_all("bob"));
    subscriber.sub("room:1");

    let ack = publisher.request(json!({"op":"pub","ch":"room:1","data":{"text":"hi"},"id":"m1"}));
    assert_eq!((ack["op"].clone(), ack["seq"].clone()), (json!("ack"), json!(1)), "{ack}");
    let msg = subscriber.recv_msg();
    assert_eq!(msg["data"], json!({"text":"HI"}), "the application's data replaces the client's");
    let call = calls.recv_timeout(io_timeout()).unwrap();
    assert_eq!(call.authorization, format!("Bearer {token}"), "the hook gets the client's own token");
    assert_eq!(call.body, json!({"ch":"room:1","from":"alice","data":{"text":"hi"},"id":"m1"}));

    // 2xx without a body keeps the data.
    publisher.request(json!({"op":"pub","ch":"room:1","data":{"text":"keep"}}));
    assert_eq!(subscriber.recv_msg()["data"], json!({"text":"keep"}));

    for (text, code) in [("refuse", "forbidden"), ("fail", "unavailable"), ("redirect", "unavailable")] {
        let r = publisher.request(json!({"op":"pub","ch":"room:1","data":{"text":text},"id":text}));
        assert_eq!((r["op"].clone(), r["code"].clone(), r["id"].clone()), (json!("err"), json!(code), json!(text)));
    }
    // Nothing refused was stored.
    let hist = publisher.request(json!({"op":"hist","ch":"room:1"}));
    assert_eq!(hist["msgs"].as_array().unwrap().len(), 2, "{hist}");
}

#[test]
fn the_applications_own_http_publishes_skip_the_hook() {
    let (url, calls) = application();
    let server = TestServer::start(&["--publish-hook", &url]);
    let body = r#"{"text":"refuse"}"#;
    let req = format!(
        "POST /api/channels/c/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
        api_token("app"),
        body.len()
    );
    assert_eq!(server.http(&req).status, 201);
    assert!(calls.recv_timeout(within(Duration::from_millis(300))).is_err(), "the hook was called");
}

#[test]
fn a_slow_application_times_out_without_delaying_anyone_else() {
    let (url, _calls) = application();
    // 1 s natively; under emulation longer, so that the round trips below
    // still all happen while the hook hangs.
    let timeout = within(Duration::from_secs(1));
    let server =
        TestServer::start(&["--publish-hook", &url, "--publish-hook-timeout", &format!("{}ms", timeout.as_millis())]);
    let mut slow = server.ws(&token_all("slow"));
    let mut other = server.ws(&token_all("other"));
    let started = Instant::now();
    slow.send_json(json!({"op":"pub","ch":"a","data":{"text":"slow"},"id":1}));
    // While the hook call hangs, another client's round trips stay fast.
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        let r = other.request(json!({"op":"hist","ch":"b","id":i}));
        assert_eq!(r["op"], "hist");
        worst = worst.max(t.elapsed());
    }
    let round_trips_done = started.elapsed();
    let r = slow.reply();
    assert_eq!((r["code"].clone(), r["id"].clone()), (json!("unavailable"), json!(1)), "{r}");
    let waited = started.elapsed();
    assert!(waited >= timeout * 9 / 10, "answered before the timeout of {timeout:?}: {waited:?}");
    assert!(round_trips_done < waited, "the round trips waited for the hook ({round_trips_done:?})");
    assert!(worst < within(Duration::from_millis(500)), "a round trip took {worst:?} while the hook hung");
}

#[test]
fn a_connections_publishes_stay_in_order_through_the_hook() {
    let (url, _calls) = application();
    let server = TestServer::start(&["--publish-hook", &url]);
    let mut publisher = server.ws(&token_all("p"));
    let mut subscriber = server.ws(&token_all("s"));
    subscriber.sub("order");
    for i in 0..30 {
        publisher.send_json(json!({"op":"pub","ch":"order","data":{"text":format!("m{i}")},"id":i}));
    }
    for i in 0..30 {
        let ack = publisher.reply();
        assert_eq!((ack["id"].clone(), ack["seq"].clone()), (json!(i), json!(i + 1)), "{ack}");
        assert_eq!(subscriber.recv_msg()["data"]["text"], format!("M{i}"));
    }
}

#[test]
fn a_hook_url_that_is_not_http_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out =
        run_roostd(&["serve", "--listen", "127.0.0.1:0", "--data", data, "--publish-hook", "https://app/hook"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));
}

/// Reads one hook call (head and `Content-Length` body); false if the
/// connection ended first.
fn read_call(reader: &mut BufReader<std::net::TcpStream>) -> bool {
    let (mut line, mut len) = (String::new(), 0usize);
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).is_ok()
}

/// An application that reads each hook call whole and then holds its answer
/// (204) until `open` is sent; `calls` counts the calls it has seen.
fn held_application() -> (String, mpsc::Sender<()>, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
    let (open_tx, open_rx) = mpsc::channel::<()>();
    let (call_tx, call_rx) = mpsc::channel();
    let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let opener = gate.clone();
    thread::spawn(move || {
        if open_rx.recv().is_ok() {
            *opener.0.lock().unwrap() = true;
            opener.1.notify_all();
        }
    });
    thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(sock) = sock else { return };
            let (gate, call_tx) = (gate.clone(), call_tx.clone());
            thread::spawn(move || {
                let mut reader = BufReader::new(sock);
                if !read_call(&mut reader) {
                    return;
                }
                let _ = call_tx.send(());
                let mut open = gate.0.lock().unwrap();
                while !*open {
                    open = gate.1.wait(open).unwrap();
                }
                drop(open);
                let _ = reader.get_mut().write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            });
        }
    });
    (url, open_tx, call_rx)
}

/// Bytes waiting for the hook count against one global budget (16 MiB):
/// with the application holding its answers, publishes of about 1 MB queue
/// up to it, the rest get `err unavailable` at once (each connection alone
/// would allow 64), and the budget comes back once the application answers.
#[test]
fn publishes_waiting_for_the_hook_share_one_global_budget() {
    let (url, open, calls) = held_application();
    let server = TestServer::start(&[
        "--publish-hook",
        &url,
        "--publish-hook-timeout",
        "10m",
        "--max-message-bytes",
        "1048576",
        "--max-send-buffer-bytes",
        "4194304",
    ]);
    let mut client = server.ws(&token_all("big"));
    let big = "x".repeat(1_000_000);
    let n = 12;
    for i in 1..=n {
        client.send_json(json!({"op":"pub","ch":"big","data":big,"id":i}));
    }
    // Each waits as itself and as the hook's request body: about 2 MB, so
    // 8 fit into 16 MiB and the other 4 are refused without a hook call.
    let mut refused = Vec::new();
    for _ in 0..4 {
        let r = client.reply();
        assert_eq!((r["op"].as_str(), r["code"].as_str()), (Some("err"), Some("unavailable")), "{r}");
        assert!(r["msg"].as_str().unwrap().contains("waiting for the application"), "{r}");
        refused.push(r["id"].as_u64().unwrap());
    }
    assert_eq!(refused, [9, 10, 11, 12]);
    calls.recv_timeout(io_timeout()).expect("the first publish reaches the application");

    // The application answers: the 8 that waited are committed in order,
    // and their bytes are given back: the next publish waits again.
    open.send(()).unwrap();
    for i in 1..=8u64 {
        let ack = client.reply();
        assert_eq!(
            (ack["op"].as_str(), ack["id"].as_u64(), ack["seq"].as_u64()),
            (Some("ack"), Some(i), Some(i)),
            "{ack}"
        );
    }
    for i in 13..=20u64 {
        let ack = client.request(json!({"op":"pub","ch":"big","data":big,"id":i}));
        assert_eq!((ack["op"].as_str(), ack["id"].as_u64()), (Some("ack"), Some(i)), "{ack}");
    }
}

/// Fail closed, end to end: a 2xx the application garbles refuses the
/// publish with `unavailable` and stores nothing.
#[test]
fn a_2xx_answer_that_cannot_be_read_refuses_the_publish() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://127.0.0.1:{}/hook", listener.local_addr().unwrap().port());
    let answers = [
        // Not JSON, cut short, badly chunked, and one good (chunked) approval.
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{nope".to_string(),
        "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"data\":\"REWRITTEN\"}".to_string(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"data\":1}\r\n0\r\n\r\n".to_string(),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n{\"data\":\"REWRITTEN\"}\r\n0\r\n\r\n".to_string(),
    ];
    thread::spawn(move || {
        for answer in answers {
            let Ok((sock, _)) = listener.accept() else { return };
            let mut reader = BufReader::new(sock);
            read_call(&mut reader);
            let _ = reader.get_mut().write_all(answer.as_bytes());
        }
    });
    let server = TestServer::start(&["--publish-hook", &url, "--publish-hook-timeout", "5s"]);
    let mut client = server.ws(&token_all("c"));
    for id in 1..=3 {
        let r = client.request(json!({"op":"pub","ch":"c","data":"original","id":id}));
        assert_eq!((r["code"].as_str(), r["id"].as_u64()), (Some("unavailable"), Some(id)), "answer {id}: {r}");
    }
    let ack = client.request(json!({"op":"pub","ch":"c","data":"original","id":4}));
    assert_eq!((ack["op"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some(1)), "{ack}");
    let hist = client.request(json!({"op":"hist","ch":"c"}));
    assert_eq!(hist["msgs"].as_array().unwrap().len(), 1, "{hist}");
    assert_eq!(hist["msgs"][0]["data"], "REWRITTEN", "{hist}");
}
