//! Spec §3: connecting. Every refusal is checked over a real socket for its
//! status and its exact `{"error":"<code>"}` body, and the order of checks
//! is checked with requests that fail more than one of them.

use serde_json::json;
use tungstenite::ClientRequestBuilder;

use crate::support::*;

/// `Sec-WebSocket-Accept` for the RFC 6455 sample key used by `upgrade_request`.
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn a_good_token_in_the_query_upgrades_to_a_working_websocket() {
    let server = TestServer::start(&[]);
    let t = token_all("alice");
    let (resp, _sock) = server.raw_upgrade(&server.upgrade_request(&format!("/ws?token={t}"), ""));
    assert_eq!(resp.status, 101, "{resp:?}");
    assert!(resp.header("Upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")), "{resp:?}");
    assert_eq!(resp.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
    assert_eq!(resp.header("Sec-WebSocket-Protocol"), None, "no subprotocol was offered");

    let mut client = server.ws(&t);
    let ok = client.request(json!({"op": "sub", "ch": "room:1", "id": 1}));
    assert_eq!(ok["op"], "subok", "{ok}");
}

#[test]
fn a_token_as_subprotocol_upgrades_selects_roost_v1_and_is_not_echoed() {
    let server = TestServer::start(&[]);
    let t = token_all("alice");
    let offer = format!("Sec-WebSocket-Protocol: roost.v1, roost.token.{t}\r\n");
    let (resp, _sock) = server.raw_upgrade(&server.upgrade_request("/ws", &offer));
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(resp.header("Sec-WebSocket-Protocol"), Some("roost.v1"));
    assert!(!resp.head.contains(&t), "the token must not be echoed: {resp:?}");
    assert!(!resp.head.contains("roost.token"), "only roost.v1 is selected: {resp:?}");

    // The same with a real client offering both as separate values.
    let request = ClientRequestBuilder::new(server.url("/ws").parse().unwrap())
        .with_sub_protocol("roost.v1")
        .with_sub_protocol(format!("roost.token.{t}"));
    let mut client = server.ws_request(request).expect("upgrade with the token as subprotocol");
    let selected = client.response.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(selected.as_deref(), Some("roost.v1"));
    assert_eq!(client.publish("room:1", json!("hi")), 1);
}

#[test]
fn no_token_is_401_token_missing() {
    let server = TestServer::start(&[]);
    server.http(&server.upgrade_request("/ws", "")).assert_refusal(401, "token_missing");
    server.http(&server.upgrade_request("/ws?token=", "")).assert_refusal(401, "token_missing");
    server.http(&server.upgrade_request("/ws?other=1", "")).assert_refusal(401, "token_missing");
}

#[test]
fn bad_tokens_are_401_token_invalid() {
    let server = TestServer::start(&[]);
    let claims = json!({"sub": "mallory", "exp": now_secs() + 3600, "read": ["*"], "write": ["*"]});
    let wrong_key =
        roostd::auth::mint(&claims, &roostd::auth::Key::new(None, b"another-secret-of-forty-bytes-000000000".to_vec()));
    let alg_none = format!("{}.{}.", b64url(br#"{"alg":"none","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()));
    // A valid HS256 signature under a header that claims HS384.
    let hs384 = {
        let good = token_all("mallory");
        let sig = good.rsplit('.').next().unwrap().to_string();
        format!("{}.{}.{sig}", b64url(br#"{"alg":"HS384","typ":"JWT"}"#), b64url(claims.to_string().as_bytes()))
    };
    let no_exp = mint_claims(&json!({"sub": "mallory", "read": ["*"]}));
    let garbage = "not-a-jwt".to_string();
    let cases = [
        ("wrong key", wrong_key),
        ("alg none", alg_none),
        ("alg HS384", hs384),
        ("no exp", no_exp),
        ("garbage", garbage),
    ];
    for (what, t) in cases {
        let resp = server.http(&server.upgrade_request(&format!("/ws?token={t}"), ""));
        assert_eq!((resp.status, resp.error()), (401, "token_invalid".to_string()), "{what}: {resp:?}");
        resp.assert_refusal(401, "token_invalid");
    }
}

#[test]
fn an_expired_token_is_401_token_expired() {
    let server = TestServer::start(&[]);
    let expired = mint_claims(&json!({"sub": "bob", "exp": now_secs() - 7200, "read": ["*"]}));
    server.http(&server.upgrade_request(&format!("/ws?token={expired}"), "")).assert_refusal(401, "token_expired");
    // The client library sees the same refusal.
    let (status, body) = server.try_ws(&expired).err().expect("an expired token must be refused");
    assert_eq!(status, 401);
    assert!(body.is_empty() || body.contains("token_expired"), "{body}");
}

#[test]
fn an_unknown_path_is_404_not_found() {
    let server = TestServer::start(&[]);
    server.http("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").assert_refusal(404, "not_found");
    server.http(&server.upgrade_request("/wsx?token=x", "")).assert_refusal(404, "not_found");
}

#[test]
fn a_request_that_is_not_an_upgrade_is_400_bad_request() {
    let server = TestServer::start(&[]);
    let t = token_all("alice");
    let plain = format!("GET /ws?token={t} HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    server.http(&plain).assert_refusal(400, "bad_request");
    let wrong_version = server
        .upgrade_request(&format!("/ws?token={t}"), "")
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    server.http(&wrong_version).assert_refusal(400, "bad_request");
    let post = server.upgrade_request(&format!("/ws?token={t}"), "").replacen("GET", "POST", 1);
    server.http(&post).assert_refusal(400, "bad_request");
}

#[test]
fn bytes_that_are_not_http_are_400_bad_request() {
    let server = TestServer::start(&[]);
    // A TLS ClientHello start, as a client speaking https to a plain port sends.
    server
        .http_bytes(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")
        .assert_refusal(400, "bad_request");
    server.http("HELLO THERE\r\n\r\n").assert_refusal(400, "bad_request");
}

#[test]
fn an_oversize_head_is_431_headers_too_large() {
    let server = TestServer::start(&[]);
    let big = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    server.http(&big).assert_refusal(431, "headers_too_large");
}

#[test]
fn a_foreign_origin_is_403_origin_forbidden() {
    let server = TestServer::start(&[]);
    let t = token_all("alice");
    let req = server.upgrade_request(&format!("/ws?token={t}"), "Origin: http://evil.example\r\n");
    server.http(&req).assert_refusal(403, "origin_forbidden");
    // Same host, other port: another origin.
    let other_port = format!("Origin: http://127.0.0.1:{}\r\n", server.port() as u32 + 1);
    server
        .http(&server.upgrade_request(&format!("/ws?token={t}"), &other_port))
        .assert_refusal(403, "origin_forbidden");
}

#[test]
fn the_same_origin_is_accepted() {
    let server = TestServer::start(&[]);
    let t = token_all("alice");
    let origin = format!("Origin: http://127.0.0.1:{}\r\n", server.port());
    let (resp, _sock) = server.raw_upgrade(&server.upgrade_request(&format!("/ws?token={t}"), &origin));
    assert_eq!(resp.status, 101, "{resp:?}");

    let request = ClientRequestBuilder::new(server.url(&format!("/ws?token={t}")).parse().unwrap())
        .with_header("Origin", format!("http://127.0.0.1:{}", server.port()));
    let mut client = server.ws_request(request).expect("same-origin upgrade");
    assert_eq!(client.sub("room:1")["op"], "subok");
}

#[test]
fn an_allow_listed_origin_is_accepted_and_others_are_not() {
    let server = TestServer::start(&["--allowed-origin", "http://app.example"]);
    let t = token_all("alice");
    let (resp, _sock) =
        server.raw_upgrade(&server.upgrade_request(&format!("/ws?token={t}"), "Origin: http://app.example\r\n"));
    assert_eq!(resp.status, 101, "{resp:?}");
    let req = server.upgrade_request(&format!("/ws?token={t}"), "Origin: http://evil.example\r\n");
    server.http(&req).assert_refusal(403, "origin_forbidden");
}

#[test]
fn the_connection_limit_per_address_is_503_server_full() {
    let server = TestServer::start(&["--max-connections-per-ip", "2"]);
    let t = token_all("alice");
    let mut first = server.ws(&t);
    let mut second = server.ws(&t);
    server.http(&server.upgrade_request(&format!("/ws?token={t}"), "")).assert_refusal(503, "server_full");
    let (status, _) = server.try_ws(&t).err().expect("a third connection must be refused");
    assert_eq!(status, 503);
    // The two held connections are unaffected.
    assert_eq!(first.publish("room:1", json!(1)), 1);
    assert_eq!(second.publish("room:1", json!(2)), 2);
}

#[test]
fn the_total_connection_limit_is_503_server_full() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let t = token_all("alice");
    let _first = server.ws(&t);
    let _second = server.ws(&t);
    server.http(&server.upgrade_request(&format!("/ws?token={t}"), "")).assert_refusal(503, "server_full");
}

#[test]
fn checks_run_in_the_contract_order() {
    // 431, 400 (malformed), 404, 400 (not an upgrade), 503, 403, 401.
    let server = TestServer::start(&[]);
    let t = token_all("alice");
    // 404 (path) before 401 (token), with or without upgrade headers.
    server.http("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").assert_refusal(404, "not_found");
    server.http(&server.upgrade_request("/nope", "")).assert_refusal(404, "not_found");
    // 431 (head too large) before everything, even with a valid token.
    let big = server.upgrade_request(&format!("/ws?token={t}"), &format!("X-Big: {}\r\n", "a".repeat(9000)));
    server.http(&big).assert_refusal(431, "headers_too_large");
    let big_nope = format!("GET /nope HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    server.http(&big_nope).assert_refusal(431, "headers_too_large");
    // 400 (malformed) before 404.
    server.http("GET /nope HTTP/1.1\r\nBad Header Line\r\n\r\n").assert_refusal(400, "bad_request");
    // 400 (not an upgrade) before 401.
    server.http("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").assert_refusal(400, "bad_request");
    // 403 (origin) before 401.
    server
        .http(&server.upgrade_request("/ws", "Origin: http://evil.example\r\n"))
        .assert_refusal(403, "origin_forbidden");
}

#[test]
fn a_full_server_answers_503_after_path_and_upgrade_checks_and_before_origin_and_token() {
    let server = TestServer::start(&["--max-connections-per-ip", "1"]);
    // The one allowed connection, taken first.
    let _held = server.ws(&token_all("alice"));
    // 503 before 403 and 401 ...
    server.http(&server.upgrade_request("/ws", "Origin: http://evil.example\r\n")).assert_refusal(503, "server_full");
    server.http(&server.upgrade_request("/ws", "")).assert_refusal(503, "server_full");
    // ... but after 404 and 400.
    server.http(&server.upgrade_request("/nope", "")).assert_refusal(404, "not_found");
    server.http("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").assert_refusal(400, "bad_request");
}

#[test]
fn tokens_never_appear_in_the_log() {
    let mut server = TestServer::options().env("RUST_LOG", "trace").start();
    let good = token("canary-alice", &["*"], &["*"]);
    let expired = mint_claims(&json!({"sub": "canary-old", "exp": now_secs() - 7200}));
    let garbage = "canaryQWERTY.canaryASDFGH.canaryZXCVBN".to_string();
    let forged = roostd::auth::mint(
        &json!({"sub": "canary-forged", "exp": now_secs() + 60}),
        &roostd::auth::Key::new(None, b"a-different-secret-that-is-40-bytes-long".to_vec()),
    );

    // Accepted, by query and by subprotocol, with some traffic.
    let mut client = server.ws(&good);
    client.sub("room:1");
    client.publish("room:1", json!({"x": 1}));
    let offer = format!("Sec-WebSocket-Protocol: roost.v1, roost.token.{good}\r\n");
    let (resp, sock) = server.raw_upgrade(&server.upgrade_request("/ws", &offer));
    assert_eq!(resp.status, 101);
    drop(sock);
    // Refused for every reason a token can be refused, and on other paths.
    for t in [&expired, &garbage, &forged] {
        assert_eq!(server.http(&server.upgrade_request(&format!("/ws?token={t}"), "")).status, 401);
        let offer = format!("Sec-WebSocket-Protocol: roost.v1, roost.token.{t}\r\n");
        assert_eq!(server.http(&server.upgrade_request("/ws", &offer)).status, 401);
    }
    let evil = server.upgrade_request(&format!("/ws?token={good}"), "Origin: http://evil.example\r\n");
    assert_eq!(server.http(&evil).status, 403);
    assert_eq!(server.http(&server.upgrade_request(&format!("/nope?token={good}"), "")).status, 404);
    assert_eq!(server.http(&format!("GET /ws?token={good} HTTP/1.1\r\nHost: x\r\n\r\n")).status, 400);
    assert_eq!(server.http(&format!("GET /healthz?token={good} HTTP/1.1\r\nHost: x\r\n\r\n")).status, 200);
    client.close();

    // Stop the server so that every line it would write is in the log.
    assert!(server.terminate().success());
    let log = server.log();
    assert!(log.contains("listening on"), "the log was captured: {log}");
    for t in [&good, &expired, &garbage, &forged] {
        for part in t.split('.').filter(|p| p.len() > 8) {
            assert!(!log.contains(part), "a token part {part:?} is in the log:\n{log}");
        }
    }
}

#[test]
fn healthz_is_200_ok() {
    let server = TestServer::start(&[]);
    let resp = server.http("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, "ok");
}

#[test]
fn a_host_allow_list_refuses_other_names_against_dns_rebinding() {
    let server = TestServer::start(&["--allowed-host", "pi.local", "--allowed-host", "127.0.0.1"]);
    let ok = server.http(&format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n", server.port()));
    assert_eq!(ok.status, 200);
    let ok = server.http("GET /healthz HTTP/1.1\r\nHost: PI.local:8080\r\n\r\n");
    assert_eq!(ok.status, 200);
    // A rebinding page sends its own name.
    let bad = server.http("GET /healthz HTTP/1.1\r\nHost: evil.example:8080\r\n\r\n");
    assert_eq!((bad.status, bad.body.as_str()), (403, r#"{"error":"host_forbidden"}"#));
    let bad = server.http("GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(bad.status, 403, "no Host at all");
}
