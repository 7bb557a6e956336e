//! The HTTP API for the main application (spec §5), over real sockets:
//! every endpoint's success, every error status in the contract's order,
//! keep-alive and pipelining, and the deadlines and limits that protect the
//! event loop from slow or oversize requests.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use roostd::auth::{mint, Key};
use serde_json::{json, Value};

use crate::support::*;

// ---------------------------------------------------------------------------
// Helpers.

/// A raw HTTP/1.1 request. `body` adds `Content-Length`; `extra` are more
/// header lines, each ending in `\r\n`.
fn request(method: &str, target: &str, token: Option<&str>, body: Option<&[u8]>, extra: &str) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: roostd.test\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    out
}

fn post(ch: &str, token: &str, body: &str, extra: &str) -> Vec<u8> {
    request("POST", &format!("/api/channels/{ch}/messages"), Some(token), Some(body.as_bytes()), extra)
}

fn get(target: &str, token: Option<&str>) -> Vec<u8> {
    request("GET", target, token, None, "")
}

fn json_body(resp: &HttpResponse) -> Value {
    serde_json::from_str(&resp.body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {resp:?}"))
}

/// `201 {"ch","seq","ts"}` for a new message: returns (seq, ts).
#[track_caller]
fn assert_created(resp: &HttpResponse, ch: &str) -> (u64, u64) {
    assert_eq!(resp.status, 201, "{resp:?}");
    assert_eq!(resp.header("Content-Type"), Some("application/json"), "{resp:?}");
    let v = json_body(resp);
    let obj = v.as_object().unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ch", "seq", "ts"], "{v}");
    assert_eq!(v["ch"], ch, "{v}");
    (v["seq"].as_u64().expect("seq"), v["ts"].as_u64().expect("ts"))
}

/// One `GET .../messages` answer, checked for shape: (msgs, more).
#[track_caller]
fn history(server: &TestServer, target: &str, token: &str) -> (Vec<Value>, bool) {
    let resp = server.http_bytes(&get(target, Some(token)));
    assert_eq!(resp.status, 200, "GET {target}: {resp:?}");
    assert_eq!(resp.header("Content-Type"), Some("application/json"), "{resp:?}");
    let v = json_body(&resp);
    assert!(v.get("gap").is_none(), "no gap expected: {v}");
    let more = v["more"].as_bool().unwrap_or_else(|| panic!("no more: {v}"));
    (v["msgs"].as_array().unwrap_or_else(|| panic!("no msgs: {v}")).clone(), more)
}

/// The server's panic message, if it panicked (for failure messages).
fn server_panic(server: &TestServer) -> String {
    let log = server.log();
    let lines: Vec<&str> = log.lines().collect();
    match lines.iter().position(|l| l.contains("panicked at")) {
        Some(i) => lines[i..(i + 2).min(lines.len())].join(" "),
        None => format!("no panic logged; the log ends with:\n{}", server.log_tail(10)),
    }
}

fn seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

/// `GET /api/channels` as a map ch → (seq, count).
fn channel_list(server: &TestServer) -> Vec<(String, u64, u64)> {
    let resp = server.http_bytes(&get("/api/channels", Some(&api_token("app"))));
    assert_eq!(resp.status, 200, "{resp:?}");
    let v = json_body(&resp);
    let mut list: Vec<(String, u64, u64)> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|e| {
            let obj = e.as_object().unwrap();
            assert_eq!(obj.len(), 3, "exactly ch, seq, count: {e}");
            (e["ch"].as_str().unwrap().to_string(), e["seq"].as_u64().unwrap(), e["count"].as_u64().unwrap())
        })
        .collect();
    list.sort();
    list
}

/// A kept-alive connection: write requests, read answers in order.
struct Conn {
    sock: TcpStream,
}

impl Conn {
    fn open(server: &TestServer) -> Conn {
        Conn { sock: server.tcp() }
    }

    fn send(&mut self, raw: &[u8]) {
        self.sock.write_all(raw).expect("writing a request");
    }

    fn recv(&mut self) -> HttpResponse {
        read_response(&mut self.sock)
    }

    fn call(&mut self, raw: &[u8]) -> HttpResponse {
        self.send(raw);
        self.recv()
    }

    /// Waits (bounded) for the server to end the connection; false when
    /// it sends more bytes or keeps it open past the timeout.
    fn closed_by_server(&mut self, within: Duration) -> bool {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 256];
        let result = self.sock.read(&mut buf);
        self.sock.set_read_timeout(Some(io_timeout())).unwrap();
        match result {
            Ok(0) => true,
            Ok(n) => panic!("{n} more bytes after the answer: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => true,
            Err(_) => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Publish.

#[test]
fn publish_is_201_after_commit_and_subscribers_get_the_message() {
    let server = TestServer::start(&[]);
    let mut sub = server.ws(&token("viewer", &["room:*"], &[]));
    sub.sub("room:1");

    let body = r#"{"text":"shipped","n":[1,2.5,null],"u":"h\u00e9llo \ud83d\ude00"}"#;
    let resp = server.http_bytes(&post("room:1", &api_token("app"), body, ""));
    let (seq, ts) = assert_created(&resp, "room:1");
    assert_eq!(seq, 1);
    let now_ms = now_secs() * 1000;
    assert!(ts + 60_000 > now_ms && ts < now_ms + 60_000, "ts {ts} is the server's clock in ms");

    // The subscriber gets it as if a WebSocket client had published it.
    let m = sub.recv_msg();
    assert_eq!(
        m,
        json!({"op": "msg", "ch": "room:1", "seq": seq, "ts": ts, "from": "app",
               "data": serde_json::from_str::<Value>(body).unwrap()})
    );
    // Committed before the answer: the history has it at once.
    let (msgs, more) = history(&server, "/api/channels/room:1/messages", &api_token("app"));
    assert_eq!(msgs, vec![m.clone()]);
    assert!(!more);

    // Any JSON value is data; seqs go on without gaps.
    for (i, data) in ["1", "\"text\"", "null", "[]", " {\"x\": true} "].iter().enumerate() {
        let resp = server.http_bytes(&post("room:1", &api_token("app"), data, ""));
        assert_eq!(assert_created(&resp, "room:1").0, i as u64 + 2, "{data}");
        let m = sub.recv_msg();
        assert_eq!(m["data"], serde_json::from_str::<Value>(data).unwrap());
        assert_eq!(m["from"], "app");
    }
    // The largest body allowed (65536 bytes, the default limit) is fine.
    let big = format!("\"{}\"", "b".repeat(65536 - 2));
    assert_eq!(assert_created(&server.http_bytes(&post("big", &api_token("app"), &big, "")), "big").0, 1);
}

#[test]
fn a_repeated_idempotency_key_is_200_with_the_original_seq_and_ts_and_stored_once() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    let mut sub = server.ws(&token_all("viewer"));
    sub.sub("orders:42");

    let first = server.http_bytes(&post("orders:42", &app, r#"{"text":"shipped"}"#, "Idempotency-Key: order-1234\r\n"));
    let (seq, ts) = assert_created(&first, "orders:42");
    assert_eq!(sub.recv_msg()["seq"], seq);

    std::thread::sleep(Duration::from_millis(20));
    // Same key, even with another body: the original answer, status 200.
    for body in [r#"{"text":"shipped"}"#, r#"{"text":"changed"}"#] {
        let again = server.http_bytes(&post("orders:42", &app, body, "Idempotency-Key: order-1234\r\n"));
        assert_eq!(again.status, 200, "{again:?}");
        assert_eq!(json_body(&again), json!({"ch": "orders:42", "seq": seq, "ts": ts}));
    }
    // Another key is a new message; no key at all too.
    let other = server.http_bytes(&post("orders:42", &app, "2", "Idempotency-Key: order-1235\r\n"));
    assert_eq!(assert_created(&other, "orders:42").0, seq + 1);
    assert_eq!(assert_created(&server.http_bytes(&post("orders:42", &app, "3", "")), "orders:42").0, seq + 2);

    // Stored once: the subscriber got exactly three messages, the history has three.
    assert_eq!(sub.recv_msg()["seq"], seq + 1);
    assert_eq!(sub.recv_msg()["seq"], seq + 2);
    let (msgs, _) = history(&server, "/api/channels/orders:42/messages", &app);
    assert_eq!(seqs(&msgs), [1, 2, 3]);
    assert_eq!(msgs[0]["data"], json!({"text": "shipped"}));
    assert_eq!(channel_list(&server), [("orders:42".to_string(), 3, 3)]);
    // Nothing more was delivered.
    let probe = sub.request(json!({"op": "hist", "ch": "orders:42", "since": 3, "id": "probe"}));
    assert_eq!(probe["id"], "probe", "no msg frame before the reply: {probe}");

    // The key belongs to the token's sub: another sub with the same key publishes anew.
    let other_sub = server.http_bytes(&post("orders:42", &api_token("app2"), "4", "Idempotency-Key: order-1234\r\n"));
    assert_eq!(assert_created(&other_sub, "orders:42").0, 4);
}

#[test]
fn the_idempotency_key_is_the_websocket_id_of_the_same_sub() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    let resp = server.http_bytes(&post("room:1", &app, r#"{"via":"http"}"#, "Idempotency-Key: k\r\n"));
    let (seq, ts) = assert_created(&resp, "room:1");

    // A WebSocket pub of the same sub with id "k" is acked with the original seq.
    let mut ws = server.ws(&app);
    let ack = ws.request(json!({"op": "pub", "ch": "room:1", "data": {"via": "ws"}, "id": "k"}));
    assert_eq!((ack["op"].as_str(), ack["seq"].as_u64(), &ack["id"]), (Some("ack"), Some(seq), &json!("k")), "{ack}");
    // Across channels too (the dedupe is on (sub, id)): nothing stored elsewhere.
    let ack = ws.request(json!({"op": "pub", "ch": "room:2", "data": 1, "id": "k"}));
    assert_eq!((ack["op"].as_str(), ack["seq"].as_u64()), (Some("ack"), Some(seq)), "{ack}");
    // The id is compared as JSON text: the number 7 is not the key "7".
    assert_eq!(ws.request(json!({"op": "pub", "ch": "room:1", "data": 7, "id": 7}))["seq"], 2);
    let seven = server.http_bytes(&post("room:1", &app, "7", "Idempotency-Key: 7\r\n"));
    assert_eq!(assert_created(&seven, "room:1").0, 3);

    // The other way round: a WebSocket id first, then the same key over HTTP.
    let ack = ws.request(json!({"op": "pub", "ch": "room:1", "data": {"via": "ws"}, "id": "w-1"}));
    assert_eq!(ack["seq"], 4, "{ack}");
    let again = server.http_bytes(&post("room:1", &app, r#"{"via":"http"}"#, "Idempotency-Key: w-1\r\n"));
    assert_eq!(again.status, 200, "{again:?}");
    let (msgs, _) = history(&server, "/api/channels/room:1/messages", &app);
    assert_eq!(json_body(&again), json!({"ch": "room:1", "seq": 4, "ts": msgs[3]["ts"]}));

    // Stored once each.
    assert_eq!(seqs(&msgs), [1, 2, 3, 4]);
    assert_eq!(
        msgs[0],
        json!({"op": "msg", "ch": "room:1", "seq": 1, "ts": ts, "from": "app", "data": {"via": "http"}})
    );
    assert_eq!(msgs[3]["data"], json!({"via": "ws"}));
    assert!(history(&server, "/api/channels/room:2/messages", &app).0.is_empty());
}

#[test]
fn an_idempotency_key_over_126_bytes_is_400() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    let ok = format!("Idempotency-Key: {}\r\n", "k".repeat(126));
    assert_created(&server.http_bytes(&post("c", &app, "1", &ok)), "c");
    let long = format!("Idempotency-Key: {}\r\n", "k".repeat(127));
    server.http_bytes(&post("c", &app, "2", &long)).assert_refusal(400, "bad_request");
    assert_eq!(channel_list(&server), [("c".to_string(), 1, 1)]);
}

// ---------------------------------------------------------------------------
// Errors, in the contract's order: 404 path, 405 method, 401 token, 403
// api_forbidden (a token without `"api": true`), 403 permission, 411/413
// length, 400 body.

#[test]
fn errors_come_in_the_contract_order_with_json_bodies() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    let reader = api_token_with("reader", &["room:*"], &[]);
    let writer = api_token_with("writer", &[], &["room:*"]);
    let expired =
        mint_claims(&json!({"sub": "app", "exp": now_secs() - 3600, "read": ["*"], "write": ["*"], "api": true}));
    let expired_client = mint_claims(&json!({"sub": "c", "exp": now_secs() - 3600, "read": ["*"], "write": ["*"]}));
    let client = token("client", &["room:*"], &[]);
    let forged = mint(
        &json!({"sub": "app", "exp": now_secs() + 3600, "read": ["*"], "write": ["*"], "api": true}),
        &Key::new(None, b"another-secret-of-at-least-32-bytes!!".to_vec()),
    );
    let long_name = "a".repeat(165);
    let body = Some(&b"{}"[..]);
    let msgs = |ch: &str| format!("/api/channels/{ch}/messages");

    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        // 404 path: before anything else, token or not.
        ("unknown path", get("/nope", None), 404, "not_found"),
        ("unknown api path", get("/api/nope", Some(&app)), 404, "not_found"),
        ("extra segment", get("/api/channels/a/messages/1", Some(&app)), 404, "not_found"),
        ("no channel", get("/api/channels//messages", Some(&app)), 404, "not_found"),
        ("bad channel name", request("POST", &msgs("bad%20name"), None, body, ""), 404, "not_found"),
        ("bad channel char", get(&msgs("room!1"), Some(&app)), 404, "not_found"),
        ("channel over 128 bytes", get(&msgs(&long_name), Some(&app)), 404, "not_found"),
        ("404 before 405", request("DELETE", "/nope", None, None, ""), 404, "not_found"),
        // 405 method: before the token.
        ("DELETE messages", request("DELETE", &msgs("a"), None, None, ""), 405, "method_not_allowed"),
        ("PUT messages", request("PUT", &msgs("a"), Some(&app), body, ""), 405, "method_not_allowed"),
        ("POST /api/channels", request("POST", "/api/channels", Some(&app), body, ""), 405, "method_not_allowed"),
        ("POST /api/channels, no token", request("POST", "/api/channels", None, body, ""), 405, "method_not_allowed"),
        ("POST /healthz", request("POST", "/healthz", None, body, ""), 405, "method_not_allowed"),
        // 401 token: before permissions, lengths and bodies.
        ("no token, POST", request("POST", &msgs("a"), None, body, ""), 401, "token_missing"),
        ("no token, GET", get(&msgs("a"), None), 401, "token_missing"),
        ("no token, list", get("/api/channels", None), 401, "token_missing"),
        ("empty bearer", request("GET", &msgs("a"), None, None, "Authorization: Bearer \r\n"), 401, "token_missing"),
        ("not bearer", request("GET", &msgs("a"), None, None, "Authorization: Basic YXBwOmFwcA==\r\n"), 401, "token_missing"),
        ("lowercase bearer", request("GET", "/api/channels/a/messages?since=x", None, None, &format!("Authorization: bearer {forged}\r\n")), 401, "token_invalid"),
        ("forged token", request("POST", &msgs("a"), Some(&forged), None, ""), 401, "token_invalid"),
        ("garbage token", get(&msgs("a"), Some("not.a.jwt")), 401, "token_invalid"),
        ("expired token", request("POST", &msgs("a"), Some(&expired), body, ""), 401, "token_expired"),
        ("expired, GET list", get("/api/channels", Some(&expired)), 401, "token_expired"),
        ("token in the query is not a bearer", get(&format!("{}?token={app}", msgs("a")), None), 401, "token_missing"),
        ("expired client token", get("/api/channels", Some(&expired_client)), 401, "token_expired"),
        // 403 api_forbidden: a valid client token, before permissions, lengths and bodies.
        ("client token, 405 first", request("PUT", &msgs("room:1"), Some(&client), body, ""), 405, "method_not_allowed"),
        ("client token, no write", request("POST", &msgs("room:1"), Some(&client), body, ""), 403, "api_forbidden"),
        ("client token, no length", request("POST", &msgs("room:1"), Some(&client), None, ""), 403, "api_forbidden"),
        ("client token, bad since", get(&format!("{}?since=abc", msgs("room:1")), Some(&client)), 403, "api_forbidden"),
        ("client token, list", get("/api/channels", Some(&client)), 403, "api_forbidden"),
        // 403 permission: before lengths and bodies.
        ("no write", request("POST", &msgs("room:1"), Some(&reader), body, ""), 403, "forbidden"),
        ("no write, no length", request("POST", &msgs("room:1"), Some(&reader), None, ""), 403, "forbidden"),
        ("no write, chunked", request("POST", &msgs("room:1"), Some(&reader), None, "Transfer-Encoding: chunked\r\n"), 403, "forbidden"),
        ("write elsewhere", request("POST", &msgs("other"), Some(&writer), Some(&b"{nope"[..]), ""), 403, "forbidden"),
        ("no read", get(&msgs("other"), Some(&reader)), 403, "forbidden"),
        ("no read, bad since", get(&format!("{}?since=abc", msgs("other")), Some(&reader)), 403, "forbidden"),
        ("write is not read", get(&msgs("room:1"), Some(&writer)), 403, "forbidden"),
        ("list without read *", get("/api/channels", Some(&reader)), 403, "forbidden"),
        // 411 length (the connection is closed: checked below).
        ("no Content-Length", request("POST", &msgs("a"), Some(&app), None, ""), 411, "length_required"),
        // 413 length: before the body is looked at.
        ("over the limit", request("POST", &msgs("a"), Some(&app), None, "Content-Length: 65537\r\n"), 413, "too_large"),
        // 400 body and query.
        ("not JSON", request("POST", &msgs("a"), Some(&app), Some(&b"{nope"[..]), ""), 400, "bad_request"),
        ("two JSON values", request("POST", &msgs("a"), Some(&app), Some(&b"1 2"[..]), ""), 400, "bad_request"),
        ("empty body", request("POST", &msgs("a"), Some(&app), Some(&b""[..]), ""), 400, "bad_request"),
        ("not UTF-8", request("POST", &msgs("a"), Some(&app), Some(&b"\"\xff\""[..]), ""), 400, "bad_request"),
        ("since=abc", get(&format!("{}?since=abc", msgs("a")), Some(&app)), 400, "bad_request"),
        ("since=-1", get(&format!("{}?since=-1", msgs("a")), Some(&app)), 400, "bad_request"),
        ("limit=0", get(&format!("{}?limit=0", msgs("a")), Some(&app)), 400, "bad_request"),
        ("limit=1001", get(&format!("{}?limit=1001", msgs("a")), Some(&app)), 400, "bad_request"),
        ("limit=x", get(&format!("{}?since=1&limit=x", msgs("a")), Some(&app)), 400, "bad_request"),
    ];
    for (what, raw, status, code) in cases {
        let resp = server.http_bytes(&raw);
        assert_eq!((resp.status, resp.error().as_str()), (status, code), "{what}: {resp:?}");
        resp.assert_refusal(status, code);
    }
    // No refusal stored anything.
    assert_eq!(channel_list(&server), []);
    // The boundaries that pass.
    for target in ["?limit=1", "?limit=1000", "?since=0", "?since=99", "?since=&limit="] {
        let resp = server.http_bytes(&get(&format!("{}{target}", msgs("a")), Some(&app)));
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
    }
}

/// Spec §5: the HTTP API is the main application's alone. A client token —
/// no `api` claim, or `"api": false` — is refused on every route even when
/// its read/write patterns would allow the request, so no client can skip
/// the WebSocket path's publish hook or rate limit.
#[test]
fn a_client_token_gets_403_api_forbidden_on_every_api_route() {
    let server = TestServer::start(&[]);
    let no_claim = token_all("client");
    let api_false =
        mint_claims(&json!({"sub": "client", "exp": now_secs() + 3600, "read": ["*"], "write": ["*"], "api": false}));
    for client in [&no_claim, &api_false] {
        for raw in [
            post("room:1", client, r#"{"x":1}"#, ""),
            post("room:1", client, "1", "Idempotency-Key: k\r\n"),
            get("/api/channels/room:1/messages", Some(client)),
            get("/api/channels", Some(client)),
        ] {
            server.http_bytes(&raw).assert_refusal(403, "api_forbidden");
        }
    }
    // Nothing was stored, and the same client may still use the WebSocket.
    assert_eq!(channel_list(&server), []);
    let mut ws = server.ws(&no_claim);
    assert_eq!(ws.publish("room:1", json!(1)), 1);
    // The main application's token works on every route.
    let app = api_token("app");
    assert_created(&server.http_bytes(&post("room:1", &app, "2", "")), "room:1");
    assert_eq!(history(&server, "/api/channels/room:1/messages", &app).0.len(), 2);
    assert_eq!(channel_list(&server), [("room:1".to_string(), 2, 2)]);
    // The refusals have their own metrics label.
    let metrics = server.http("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(metrics.body.contains("code=\"api_forbidden\"} 8\n"), "{}", metrics.body);
}

#[test]
fn a_post_without_content_length_is_411_and_the_connection_is_closed() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    // No Content-Length at all.
    let mut c = Conn::open(&server);
    let resp = c.call(&request("POST", "/api/channels/a/messages", Some(&app), None, ""));
    resp.assert_refusal(411, "length_required");
    assert_eq!(resp.header("Connection"), Some("close"), "{resp:?}");
    assert!(c.closed_by_server(io_timeout()), "the connection stays open after a 411");

    // Transfer-Encoding: chunked, with a body the server must not try to frame.
    let mut c = Conn::open(&server);
    let mut raw = request("POST", "/api/channels/a/messages", Some(&app), None, "Transfer-Encoding: chunked\r\n");
    raw.extend_from_slice(b"2\r\n{}\r\n0\r\n\r\n");
    let resp = c.call(&raw);
    resp.assert_refusal(411, "length_required");
    assert_eq!(resp.header("Connection"), Some("close"), "{resp:?}");
    assert!(c.closed_by_server(io_timeout()), "the connection stays open after a chunked POST");

    // Both headers: Transfer-Encoding wins (RFC 9112 §6.3), still 411.
    let mut c = Conn::open(&server);
    let raw = request("POST", "/api/channels/a/messages", Some(&app), Some(b"{}"), "Transfer-Encoding: chunked\r\n");
    c.call(&raw).assert_refusal(411, "length_required");
    assert!(c.closed_by_server(io_timeout()));
    assert_eq!(channel_list(&server), []);
}

#[test]
fn a_body_over_the_limit_is_413_and_nothing_is_stored() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    // Announced too large: refused from the head alone, even if the body is not JSON.
    let head = request("POST", "/api/channels/a/messages", Some(&app), None, "Content-Length: 70000\r\n");
    server.http_bytes(&head).assert_refusal(413, "too_large");
    let body = format!("\"{}\"", "x".repeat(65536 - 1));
    assert_eq!(body.len(), 65537);
    server.http_bytes(&post("a", &app, &body, "")).assert_refusal(413, "too_large");
    // A smaller limit applies the same way.
    let small = TestServer::start(&["--max-message-bytes", "1024"]);
    small.http_bytes(&post("a", &app, &format!("\"{}\"", "y".repeat(1023)), "")).assert_refusal(413, "too_large");
    assert_created(&small.http_bytes(&post("a", &app, &format!("\"{}\"", "y".repeat(1022)), "")), "a");
    assert_eq!(channel_list(&server), []);
}

/// After an error answer to a POST whose body the server did not read
/// (401, 403, 404, 405, 413), the body bytes are still in the stream. The
/// server must either close the connection (and say `Connection: close`) or
/// skip the body; reading it as the next request head desynchronises the
/// connection (RFC 9112 §6.3, §9.6; spec §5: keep-alive is the default).
#[test]
fn an_error_answer_before_the_body_keeps_the_connection_in_step() {
    let server = TestServer::start(&["--max-message-bytes", "1024"]);
    let app = api_token("app");
    let reader = api_token_with("reader", &["*"], &[]);
    let body = br#"{"text":"GET /healthz HTTP/1.1"}"#;
    let big = vec![b'x'; 2000];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("404", request("POST", "/api/nope/messages", Some(&app), Some(body), ""), 404),
        ("405", request("PUT", "/api/channels/a/messages", Some(&app), Some(body), ""), 405),
        ("401", request("POST", "/api/channels/a/messages", None, Some(body), ""), 401),
        ("403", request("POST", "/api/channels/a/messages", Some(&reader), Some(body), ""), 403),
        ("413", request("POST", "/api/channels/a/messages", Some(&app), Some(&big), ""), 413),
        // An invalid Content-Length: the body's end is unknown, so the
        // connection must close (RFC 9112 §6.3).
        (
            "400 invalid Content-Length",
            [request("POST", "/api/channels/a/messages", Some(&app), None, "Content-Length: 2x\r\n"), b"{}".to_vec()]
                .concat(),
            400,
        ),
    ];
    let mut failures = Vec::new();
    for (what, raw, status) in cases {
        let mut c = Conn::open(&server);
        c.send(&raw);
        let resp = c.recv();
        assert_eq!(resp.status, status, "{what}: {resp:?}");
        if resp.header("Connection") == Some("close") {
            assert!(c.closed_by_server(io_timeout()), "{what}: Connection: close, but the connection stays open");
            continue;
        }
        // Kept alive: the next request must be answered as itself.
        if c.sock.write_all(&get("/healthz", None)).is_err() {
            failures.push(format!("{what}: kept alive, but the next request could not be sent"));
            continue;
        }
        c.sock.set_read_timeout(Some(within(Duration::from_secs(2)))).unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + within(Duration::from_secs(2));
        while Instant::now() < deadline && !raw.ends_with(b"ok") {
            match c.sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&raw);
        if !(text.starts_with("HTTP/1.1 200 ") && text.ends_with("\r\n\r\nok")) {
            failures.push(format!(
                "{what}: kept alive without reading the body; the next GET /healthz got {text:?} (server answered {})",
                resp.head.lines().next().unwrap_or("")
            ));
        }
    }
    assert_eq!(channel_list(&server), []);
    assert!(failures.is_empty(), "the connection lost its framing:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Reading history and listing channels.

#[test]
fn history_pages_with_since_and_limit() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    let reader = api_token_with("reader", &["room:*"], &[]);
    // Published under a percent-encoded name: the same channel as room:1.
    for i in 1..=5u64 {
        let ch = if i % 2 == 0 { "room%3A1" } else { "room:1" };
        let resp = server.http_bytes(&post(ch, &app, &json!({"i": i}).to_string(), ""));
        assert_eq!(assert_created(&resp, "room:1").0, i);
    }
    let base = "/api/channels/room:1/messages";
    let (all, more) = history(&server, base, &reader);
    assert_eq!((seqs(&all), more), (vec![1, 2, 3, 4, 5], false));
    for (i, m) in all.iter().enumerate() {
        let obj = m.as_object().unwrap();
        assert_eq!(obj.len(), 6, "op, ch, seq, ts, from, data: {m}");
        assert_eq!(
            (&m["op"], &m["ch"], &m["from"], &m["data"]),
            (&json!("msg"), &json!("room:1"), &json!("app"), &json!({"i": i + 1}))
        );
    }
    assert!(all.windows(2).all(|w| w[0]["ts"].as_u64() <= w[1]["ts"].as_u64()), "ts never goes back");

    // Paging: since/limit, more while higher seqs exist.
    let page = |q: &str| {
        let (msgs, more) = history(&server, &format!("{base}?{q}"), &reader);
        (seqs(&msgs), more)
    };
    assert_eq!(page("since=0&limit=2"), (vec![1, 2], true));
    assert_eq!(page("since=2&limit=2"), (vec![3, 4], true));
    assert_eq!(page("since=4&limit=2"), (vec![5], false));
    assert_eq!(page("limit=5"), (vec![1, 2, 3, 4, 5], false));
    assert_eq!(page("limit=4"), (vec![1, 2, 3, 4], true));
    assert_eq!(page("since=3"), (vec![4, 5], false));
    assert_eq!(page("limit=1000&since=1"), (vec![2, 3, 4, 5], false));
    assert_eq!(page("since=5"), (vec![], false));
    // Walking the pages returns every message once.
    let mut since = 0;
    let mut walked = Vec::new();
    loop {
        let (msgs, more) = history(&server, &format!("{base}?since={since}&limit=2"), &reader);
        walked.extend(msgs.iter().cloned());
        since = msgs.last().map_or(since, |m| m["seq"].as_u64().unwrap());
        if !more {
            break;
        }
    }
    assert_eq!(walked, all);

    // The percent-encoded name reads the same channel, and answers with the decoded name.
    let resp = server.http_bytes(&get("/api/channels/room%3A1/messages?since=3&limit=1", Some(&reader)));
    assert_eq!(json_body(&resp), json!({"ch": "room:1", "msgs": [all[3]], "more": true}));
    let resp = server.http_bytes(&get("/api/channels/room%3a1/messages", Some(&reader)));
    assert_eq!(json_body(&resp)["msgs"], json!(all));
    // A channel never written: empty, no more, no gap.
    let resp = server.http_bytes(&get("/api/channels/room:none/messages", Some(&reader)));
    assert_eq!(json_body(&resp), json!({"ch": "room:none", "msgs": [], "more": false}));
    // The same history over the WebSocket.
    let mut ws = server.ws(&token_all("viewer"));
    assert_eq!(ws.history("room:1", 0), all);
}

/// `since` is any seq a client may hold, up to u64::MAX: past the end, so
/// `gap:true` and no messages (spec §4 `hist`, §5). It must not take the
/// server down (seq `since + 1` overflows).
#[test]
fn a_since_of_u64_max_is_past_the_end_not_a_crash() {
    let mut failures = Vec::new();
    // Over HTTP.
    let server = TestServer::start(&[]);
    let app = api_token("app");
    assert_created(&server.http_bytes(&post("c", &app, "1", "")), "c");
    for ch in ["c", "empty"] {
        let target = format!("/api/channels/{ch}/messages?since=18446744073709551615");
        let mut sock = server.tcp();
        sock.write_all(&request("GET", &target, Some(&app), None, "Connection: close\r\n")).unwrap();
        let mut raw = Vec::new();
        let _ = sock.read_to_end(&mut raw);
        if raw.is_empty() {
            failures.push(format!("GET {target}: no answer; the server: {}", server_panic(&server)));
            break;
        }
        let resp = HttpResponse::parse(&raw);
        assert_eq!(resp.status, 200, "{target}: {resp:?}");
        assert_eq!(json_body(&resp), json!({"ch": ch, "msgs": [], "more": false, "gap": true}));
    }
    // Over the WebSocket `hist`, on a server of its own.
    let server = TestServer::start(&[]);
    let mut ws = server.ws(&app);
    ws.publish("c", json!(1));
    ws.send_json(json!({"op": "hist", "ch": "c", "since": u64::MAX, "id": 1}));
    match ws.ws.read() {
        Ok(tungstenite::Message::Text(t)) => {
            let r: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(r, json!({"op": "hist", "ch": "c", "msgs": [], "more": false, "gap": true, "id": 1}));
        }
        other => {
            failures.push(format!("WebSocket hist since=u64::MAX: {other:?}; the server: {}", server_panic(&server)))
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_channel_list_has_seq_and_count() {
    let server = TestServer::start(&[]);
    assert_eq!(channel_list(&server), []);
    let resp = server.http_bytes(&get("/api/channels", Some(&api_token_with("all-reader", &["*"], &[]))));
    assert_eq!((resp.status, resp.body.as_str(), resp.header("Content-Type")), (200, "[]", Some("application/json")));

    let app = api_token("app");
    for _ in 0..3 {
        assert_created(&server.http_bytes(&post("room:1", &app, "1", "")), "room:1");
    }
    assert_created(&server.http_bytes(&post("orders%3A42", &app, "1", "")), "orders:42");
    let mut ws = server.ws(&app);
    ws.publish("dev/temp.1", json!(20.5));
    assert_eq!(
        channel_list(&server),
        [("dev/temp.1".to_string(), 1, 1), ("orders:42".to_string(), 1, 1), ("room:1".to_string(), 3, 3)]
    );
}

#[test]
fn the_channel_list_counts_what_retention_keeps() {
    let server = TestServer::start(&["--retention-messages", "2"]);
    let app = api_token("app");
    for _ in 0..5 {
        assert_created(&server.http_bytes(&post("r", &app, "1", "")), "r");
    }
    // Retention takes effect at most 1 s after the commit (more time under emulation).
    let deadline = Instant::now() + if small() { io_timeout() } else { Duration::from_secs(3) };
    loop {
        let list = channel_list(&server);
        if list == [("r".to_string(), 5, 2)] {
            break;
        }
        assert!(Instant::now() < deadline, "retention did not trim: {list:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let resp = server.http_bytes(&get("/api/channels/r/messages?since=3", Some(&app)));
    let v = json_body(&resp);
    assert_eq!((seqs(v["msgs"].as_array().unwrap()), &v["more"]), (vec![4, 5], &json!(false)), "{v}");
    assert!(v.get("gap").is_none(), "seq 4 is still stored: {v}");
    // Seq 1 was trimmed: `gap` says so, and the page starts at the oldest stored.
    let v = json_body(&server.http_bytes(&get("/api/channels/r/messages", Some(&app))));
    assert_eq!((seqs(v["msgs"].as_array().unwrap()), &v["gap"]), (vec![4, 5], &json!(true)), "{v}");
    // Past the end: gap too.
    let v = json_body(&server.http_bytes(&get("/api/channels/r/messages?since=9", Some(&app))));
    assert_eq!((v["msgs"].as_array().unwrap().len(), &v["gap"]), (0, &json!(true)), "{v}");
}

// ---------------------------------------------------------------------------
// Connections: keep-alive, pipelining, deadlines, oversize heads.

#[test]
fn keep_alive_serves_several_requests_on_one_connection_in_order() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    let mut c = Conn::open(&server);

    let resp = c.call(&get("/api/channels/k/messages", Some(&app)));
    assert_eq!((resp.status, resp.header("Connection")), (200, None), "{resp:?}");
    assert_eq!(json_body(&resp)["msgs"], json!([]));
    let resp = c.call(&post("k", &app, r#"{"n":1}"#, ""));
    assert_eq!(assert_created(&resp, "k").0, 1);
    let resp = c.call(&get("/api/channels/k/messages", Some(&app)));
    assert_eq!(seqs(json_body(&resp)["msgs"].as_array().unwrap()), [1]);
    assert_eq!(c.call(&get("/healthz", None)).body, "ok");
    // An error answer that needs no body keeps the connection too.
    c.call(&get("/api/channels/k/messages?limit=0", Some(&app))).assert_refusal(400, "bad_request");
    c.call(&get("/nope", None)).assert_refusal(404, "not_found");
    c.call(&post("k", &app, "{nope", "")).assert_refusal(400, "bad_request");

    // Two requests in one write: answered in order, the GET sees the POST.
    let mut both = post("k", &app, r#"{"n":2}"#, "");
    both.extend(get("/api/channels/k/messages?since=1", Some(&app)));
    c.send(&both);
    assert_eq!(assert_created(&c.recv(), "k").0, 2);
    let resp = c.recv();
    let msgs = json_body(&resp)["msgs"].clone();
    assert_eq!((resp.status, seqs(msgs.as_array().unwrap())), (200, vec![2]), "{resp:?}");
    assert_eq!(msgs[0]["data"], json!({"n": 2}));

    // Three at once, mixed: GET, POST, GET.
    let mut three = get("/api/channels", Some(&app));
    three.extend(post("k", &app, r#"{"n":3}"#, "Idempotency-Key: three\r\n"));
    three.extend(get("/api/channels/k/messages?since=2", Some(&app)));
    c.send(&three);
    assert_eq!(json_body(&c.recv()), json!([{"ch": "k", "seq": 2, "count": 2}]));
    assert_eq!(assert_created(&c.recv(), "k").0, 3);
    assert_eq!(seqs(json_body(&c.recv())["msgs"].as_array().unwrap()), [3]);

    // A request split across writes at an awkward place is still one request.
    let raw = post("k", &app, r#"{"n":4}"#, "");
    let cut = raw.len() - 3;
    c.send(&raw[..cut]);
    std::thread::sleep(Duration::from_millis(50));
    c.send(&raw[cut..]);
    assert_eq!(assert_created(&c.recv(), "k").0, 4);

    // `Connection: close` is honoured: the answer says so and the connection ends.
    let resp = c.call(&request("GET", "/healthz", None, None, "Connection: close\r\n"));
    assert_eq!((resp.status, resp.header("Connection")), (200, Some("close")), "{resp:?}");
    assert!(c.closed_by_server(io_timeout()), "Connection: close was not honoured");
}

/// A client may send its request and then half-close its side (shutdown
/// of writing, as `nc -N` or a one-shot script does): the answer must still
/// arrive before the server closes. Every request here is answered
/// immediately except the POST, which waits for its commit.
#[test]
fn a_request_followed_by_the_clients_half_close_is_still_answered() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("POST", post("hc", &app, "{}", ""), 201),
        ("GET /healthz", get("/healthz", None), 200),
        ("GET /metrics", get("/metrics", None), 200),
        ("GET messages", get("/api/channels/hc/messages", Some(&app)), 200),
        ("GET /api/channels", get("/api/channels", Some(&app)), 200),
        ("404", get("/nope", None), 404),
        ("401", get("/api/channels", None), 401),
    ];
    let mut failures = Vec::new();
    for (what, raw, status) in cases {
        let mut sock = server.tcp();
        sock.write_all(&raw).unwrap();
        sock.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = sock.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        if !text.starts_with(&format!("HTTP/1.1 {status} ")) {
            failures.push(format!("{what}: expected {status}, got {text:?}"));
        }
    }
    assert!(failures.is_empty(), "answers lost on a half-closed connection:\n{}", failures.join("\n"));
}

#[test]
fn a_trickled_body_is_cut_off_at_the_handshake_timeout_while_others_are_served() {
    let server = TestServer::start(&["--handshake-timeout", "1s"]);
    let app = api_token("app");
    let body = br#"{"text":"one byte every 100 ms, 40 bytes"}"#;
    assert!(body.len() >= 30, "longer than the timeout at 10 bytes a second");

    let mut slow = server.tcp();
    let started = Instant::now();
    slow.write_all(&request(
        "POST",
        "/api/channels/slow/messages",
        Some(&app),
        None,
        &format!("Content-Length: {}\r\n", body.len()),
    ))
    .unwrap();

    // A normal client meanwhile: served at once, several times over.
    let normal = {
        let addr = server.addr;
        let app = app.clone();
        std::thread::spawn(move || {
            let mut took = Vec::new();
            for i in 0..8 {
                let t = Instant::now();
                let mut sock = TcpStream::connect(addr).unwrap();
                sock.set_read_timeout(Some(io_timeout())).unwrap();
                sock.write_all(&post("fast", &app, &i.to_string(), "")).unwrap();
                let resp = read_response(&mut sock);
                assert_eq!(resp.status, 201, "{resp:?}");
                took.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(150));
            }
            took
        })
    };

    slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut sent = 0;
    let mut answer = Vec::new();
    let closed_after = loop {
        if started.elapsed() > io_timeout() {
            panic!("still open after {:?} with {sent} body bytes sent", started.elapsed());
        }
        if sent < body.len() {
            match slow.write_all(&body[sent..sent + 1]) {
                Ok(()) => sent += 1,
                Err(_) => break started.elapsed(),
            }
        }
        // Waits up to 100 ms: the trickle's pace.
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => break started.elapsed(),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break started.elapsed(),
        }
    };
    assert!(sent < body.len(), "the whole body got through ({sent} bytes) before the cut");
    assert!(closed_after >= Duration::from_millis(900), "cut after only {closed_after:?}");
    // An answer, if any, is not a success (a 408 would be fine).
    let text = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || !text.starts_with("HTTP/1.1 2"), "the trickled request was answered: {text:?}");

    let took = normal.join().expect("the normal client failed");
    assert!(took.iter().all(|t| *t < within(Duration::from_secs(1))), "the normal client waited: {took:?}");
    // Nothing of the trickled request was stored; the normal client's was.
    let list = channel_list(&server);
    assert_eq!(list, [("fast".to_string(), 8, 8)]);
    assert!(history(&server, "/api/channels/slow/messages", &app).0.is_empty());
}

#[test]
fn a_kept_alive_connection_gets_a_fresh_head_deadline_per_request_and_idles_out() {
    // 1 s natively: each request below comes well within it (also when
    // emulation stretches the request itself), four of them well past it.
    let timeout = within(Duration::from_secs(1));
    let server = TestServer::start(&["--handshake-timeout", &format!("{}ms", timeout.as_millis())]);
    let app = api_token("app");
    let mut c = Conn::open(&server);
    // Requests spread over more than the timeout, each well within it.
    for i in 0..4 {
        std::thread::sleep(timeout * 2 / 5);
        assert_eq!(assert_created(&c.call(&post("ka", &app, &i.to_string(), "")), "ka").0, i + 1);
    }
    // Then silence: the connection is dropped at the deadline.
    let idle = Instant::now();
    assert!(c.closed_by_server(io_timeout()), "an idle kept-alive connection stays open");
    assert!(idle.elapsed() < within(Duration::from_secs(5)), "dropped after {:?}", idle.elapsed());
}

#[test]
fn an_oversize_head_is_431() {
    let server = TestServer::start(&[]);
    let app = api_token("app");
    let pad = format!("X-Pad: {}\r\n", "p".repeat(9000));
    let raw = request("POST", "/api/channels/a/messages", Some(&app), Some(b"{}"), &pad);
    assert!(raw.len() > 9000);
    let resp = server.http_bytes(&raw);
    resp.assert_refusal(431, "headers_too_large");
    assert_eq!(resp.header("Connection"), Some("close"), "{resp:?}");
    server
        .http_bytes(&request("GET", "/api/channels", Some(&app), None, &pad))
        .assert_refusal(431, "headers_too_large");
    // An oversize head on a kept-alive connection, after a good request.
    let mut c = Conn::open(&server);
    assert_eq!(c.call(&get("/healthz", None)).status, 200);
    c.call(&request("GET", "/healthz", None, None, &pad)).assert_refusal(431, "headers_too_large");
    assert!(c.closed_by_server(io_timeout()));
    assert_eq!(channel_list(&server), []);
}

// ---------------------------------------------------------------------------
// Health and metrics.

#[test]
fn healthz_and_metrics_need_no_token() {
    let server = TestServer::start(&[]);
    let resp = server.http_bytes(&get("/healthz", None));
    assert_eq!((resp.status, resp.body.as_str()), (200, "ok"), "{resp:?}");
    assert!(resp.header("Content-Type").is_some_and(|t| t.starts_with("text/plain")), "{resp:?}");

    // Some traffic first, so the labeled families have series.
    let app = api_token("app");
    assert_created(&server.http_bytes(&post("m", &app, "1", "")), "m");
    server.http_bytes(&get("/api/channels", None)).assert_refusal(401, "token_missing");
    let _ws = server.ws(&app);

    let resp = server.http_bytes(&get("/metrics", None));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(resp.header("Content-Type").is_some_and(|t| t.starts_with("text/plain")), "{resp:?}");
    let mut samples = 0;
    for line in resp.body.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let name = rest.split_whitespace().nth(1).unwrap_or("");
            assert!(name.starts_with("roostd_"), "{line}");
            continue;
        }
        assert!(line.starts_with("roostd_"), "a sample outside roostd_: {line}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        samples += 1;
    }
    assert!(samples > 10, "{}", resp.body);
    let value = |name: &str| -> f64 {
        let line =
            resp.body.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("roostd_messages_published_total"), 1.0);
    assert!(value("roostd_websockets") >= 1.0);
    assert!(value("roostd_connections") >= 2.0, "the WebSocket and this request");
    assert!(resp.body.contains("roostd_refused_total{code=\"token_missing\"} 1\n"), "{}", resp.body);
    // The same with a token: still fine, nothing checks it.
    let resp = server.http_bytes(&request("GET", "/metrics", Some("garbage"), None, ""));
    assert_eq!(resp.status, 200, "{resp:?}");
}
