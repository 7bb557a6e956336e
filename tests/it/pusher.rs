//! The Pusher door (pusher.md §2) over real sockets, in Rust so it runs with
//! `cargo test` and under qemu; tests/pusher/run.sh checks the same door
//! with the real pusher-js, laravel-echo and `pusher` libraries.

use std::io::{Read, Write};

use serde_json::{json, Value};
use tungstenite::ClientRequestBuilder;

use crate::support::*;

const PUSHER: &[&str] = &["--pusher-app-id", "42", "--pusher-key", "app-key", "--pusher-public", "news"];

/// A Pusher connection to `/app/{key}?protocol=7`.
fn pusher(server: &TestServer, key: &str) -> Client {
    let url = server.url(&format!("/app/{key}?protocol=7&client=js&version=8.4.0"));
    server.ws_request(ClientRequestBuilder::new(url.parse().unwrap())).expect("the upgrade is always accepted")
}

/// The next frame, with its `data` string parsed.
fn frame(c: &mut Client) -> (String, Value) {
    match c.next_answer() {
        Answer::Reply(v) => {
            let data = v["data"].as_str().map_or(Value::Null, |d| serde_json::from_str(d).unwrap_or(json!(d)));
            (v["event"].as_str().unwrap().to_string(), data)
        }
        Answer::Closed(code) => panic!("closed with {code:?}"),
    }
}

fn socket_id(c: &mut Client) -> String {
    let (event, data) = frame(c);
    assert_eq!(event, "pusher:connection_established");
    data["socket_id"].as_str().unwrap().to_string()
}

fn sign(text: &str) -> String {
    format!("app-key:{}", roostd::auth::hmac_sha256_hex(SECRET.as_bytes(), text.as_bytes()))
}

#[test]
fn a_pusher_socket_with_a_wrong_key_is_told_4001_and_closed_with_it() {
    let server = TestServer::start(PUSHER);
    let mut c = pusher(&server, "not-the-key");
    let (event, data) = frame(&mut c);
    assert_eq!((event.as_str(), &data["code"]), ("pusher:error", &json!(4001)));
    assert!(matches!(c.next_answer(), Answer::Closed(Some(4001))));
}

#[test]
fn bad_subscribe_signatures_are_refused_one_by_one_and_the_socket_stays_usable() {
    let server = TestServer::start(PUSHER);
    let mut c = pusher(&server, "app-key");
    let id = socket_id(&mut c);
    let n = scale(10_000, 1_000);
    for i in 0..n {
        let bad = format!("app-key:{}", "0".repeat(64));
        c.write_json(json!({"event":"pusher:subscribe","data":{"channel":format!("private-x{}", i % 50),"auth":bad}}));
    }
    c.flush();
    for _ in 0..n {
        let (event, data) = frame(&mut c);
        assert_eq!((event.as_str(), &data["status"]), ("pusher:subscription_error", &json!(401)));
    }
    // A good signature still works, and a client event on a public channel
    // is refused without closing anything.
    let ch = "private-x1";
    c.send_json(json!({"event":"pusher:subscribe","data":{"channel":ch,"auth":sign(&format!("{id}:{ch}"))}}));
    assert_eq!(frame(&mut c).0, "pusher_internal:subscription_succeeded");
    c.send_json(json!({"event":"pusher:subscribe","data":{"channel":"news"}}));
    assert_eq!(frame(&mut c).0, "pusher_internal:subscription_succeeded");
    c.send_json(json!({"event":"client-typing","channel":"news","data":{}}));
    let (event, data) = frame(&mut c);
    assert_eq!(event, "pusher:error");
    assert!(data["message"].as_str().unwrap().contains("private and presence"), "{data}");
    c.send_json(json!({"event":"pusher:ping","data":{}}));
    assert_eq!(frame(&mut c).0, "pusher:pong");
    // Nothing was stored by any of it.
    let list = server.api_get("/api/channels", &api_token("app"));
    assert_eq!(list.status, 200);
    let body: Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(body, json!([]), "{}", list.body);
}

#[test]
fn client_events_are_relayed_to_other_subscribers_only_and_rated() {
    let server = TestServer::start(PUSHER);
    let (mut a, mut b) = (pusher(&server, "app-key"), pusher(&server, "app-key"));
    let ch = "private-chat";
    for c in [&mut a, &mut b] {
        let id = socket_id(c);
        c.send_json(json!({"event":"pusher:subscribe","data":{"channel":ch,"auth":sign(&format!("{id}:{ch}"))}}));
        assert_eq!(frame(c).0, "pusher_internal:subscription_succeeded");
    }
    for i in 0..11 {
        a.write_json(json!({"event":"client-typing","channel":ch,"data":{"i":i}}));
    }
    a.flush();
    for i in 0..10 {
        assert_eq!(frame(&mut b), ("client-typing".to_string(), json!({"i":i})));
    }
    // The 11th within the second: 4301 to the sender, who never gets its own.
    let (event, data) = frame(&mut a);
    assert_eq!((event.as_str(), &data["code"]), ("pusher:error", &json!(4301)));
    a.send_json(json!({"event":"pusher:ping","data":{}}));
    assert_eq!(frame(&mut a).0, "pusher:pong");
}

#[test]
fn a_silent_pusher_socket_gets_pusher_ping_and_is_closed_4201_without_a_pong() {
    let args = [PUSHER, &["--ping-interval", "1s", "--pong-timeout", "1s"]].concat();
    let server = TestServer::start(&args);
    let mut quiet = pusher(&server, "app-key");
    let (_, data) = frame(&mut quiet);
    assert_eq!(data["activity_timeout"], 1, "the client is told the server's interval");
    assert_eq!(frame(&mut quiet).0, "pusher:ping");
    let (event, data) = frame(&mut quiet);
    assert_eq!((event.as_str(), &data["code"]), ("pusher:error", &json!(4201)));
    assert!(matches!(quiet.next_answer(), Answer::Closed(Some(4201))));
}

/// A request to the Pusher HTTP API signed as the `pusher` libraries sign it.
fn signed_post(server: &TestServer, path: &str, body: &str) -> HttpResponse {
    signed_post_with(server, SECRET, path, body)
}

/// A signed GET with `params` (already sorted by name, as signed).
fn signed_get(server: &TestServer, path: &str, params: &str) -> HttpResponse {
    let query = format!("auth_key=app-key&auth_timestamp={}&auth_version=1.0&{params}", now_secs());
    let signature = roostd::auth::hmac_sha256_hex(SECRET.as_bytes(), format!("GET\n{path}\n{query}").as_bytes());
    server.http(&format!("GET {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: roostd.test\r\n\r\n"))
}

fn signed_post_with(server: &TestServer, secret: &str, path: &str, body: &str) -> HttpResponse {
    let md5 = roostd::auth::md5_hex(body.as_bytes());
    let query = format!("auth_key=app-key&auth_timestamp={}&auth_version=1.0&body_md5={md5}", now_secs());
    let signature = roostd::auth::hmac_sha256_hex(secret.as_bytes(), format!("POST\n{path}\n{query}").as_bytes());
    server.http(&format!(
        "POST {path}?{query}&auth_signature={signature} HTTP/1.1\r\nHost: roostd.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

#[test]
fn an_api_event_is_answered_after_its_commit_with_its_info_and_leaves_out_its_socket_id() {
    let server = TestServer::start(PUSHER);
    let (mut a, mut b) = (pusher(&server, "app-key"), pusher(&server, "app-key"));
    let id_a = socket_id(&mut a);
    socket_id(&mut b);
    for c in [&mut a, &mut b] {
        c.send_json(json!({"event":"pusher:subscribe","data":{"channel":"news"}}));
        assert_eq!(frame(c).0, "pusher_internal:subscription_succeeded");
    }
    let body =
        json!({"name":"Edited","channels":["news"],"data":"{\"n\":1}","socket_id":id_a,"info":"subscription_count"});
    let answer = signed_post(&server, "/apps/42/events", &body.to_string());
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        serde_json::from_str::<Value>(&answer.body).unwrap(),
        json!({"channels":{"news":{"subscription_count":2}}})
    );
    assert_eq!(frame(&mut b), ("Edited".to_string(), json!({"n":1})));
    // a was left out: the next event is the first it hears.
    let marker = json!({"name":"Marker","channel":"news","data":"plain"});
    assert_eq!(signed_post(&server, "/apps/42/events", &marker.to_string()).status, 200);
    assert_eq!(frame(&mut a), ("Marker".to_string(), json!("plain")));
    // Both are on the channel's history, from "app", with their event names.
    let hist = server.api_get("/api/channels/news/messages?since=0", &api_token("app"));
    let msgs: Value = serde_json::from_str(&hist.body).unwrap();
    let got: Vec<Value> =
        msgs["msgs"].as_array().unwrap().iter().map(|m| json!([m["seq"], m["from"], m["event"], m["data"]])).collect();
    assert_eq!(got, [json!([1, "app", "Edited", {"n":1}]), json!([2, "app", "Marker", "plain"])]);
    // A signature made with another secret is refused and stores nothing.
    let forged = signed_post_with(&server, "not-the-secret", "/apps/42/events", &marker.to_string());
    assert_eq!(forged.status, 401, "{}", forged.body);
    let hist = server.api_get("/api/channels/news/messages?since=2", &api_token("app"));
    assert_eq!(serde_json::from_str::<Value>(&hist.body).unwrap()["msgs"], json!([]), "{}", hist.body);
}

#[test]
fn client_events_and_cache_misses_reach_the_webhook_with_pusher_signature_headers() {
    let endpoint = Endpoint::start(Mode::Status(200));
    let args = [PUSHER, &["--pusher-public", "cache-*", "--webhook", &endpoint.url]].concat();
    let server = TestServer::start(&args);
    let (mut a, mut b) = (pusher(&server, "app-key"), pusher(&server, "app-key"));
    let id_a = socket_id(&mut a);
    let id_b = socket_id(&mut b);
    let ch = "private-chat";
    for (c, id) in [(&mut a, &id_a), (&mut b, &id_b)] {
        c.send_json(json!({"event":"pusher:subscribe","data":{"channel":ch,"auth":sign(&format!("{id}:{ch}"))}}));
        assert_eq!(frame(c).0, "pusher_internal:subscription_succeeded");
    }
    a.send_json(json!({"event":"client-typing","channel":ch,"data":{"who":"a"}}));
    assert_eq!(frame(&mut b).0, "client-typing");
    a.send_json(json!({"event":"pusher:subscribe","data":{"channel":"cache-empty"}}));
    assert_eq!(frame(&mut a).0, "pusher_internal:subscription_succeeded");
    assert_eq!(frame(&mut a).0, "pusher:cache_miss");
    let has = |events: &[Value], name: &str| events.iter().any(|e| e["name"] == name);
    let events = endpoint.wait_for(io_timeout(), |e| has(e, "client_event") && has(e, "cache_miss"));
    let typed = events.iter().find(|e| e["name"] == "client_event").unwrap();
    assert_eq!(
        (&typed["channel"], &typed["event"], &typed["data"], &typed["socket_id"]),
        (&json!(ch), &json!("client-typing"), &json!(r#"{"who":"a"}"#), &json!(id_a))
    );
    let missed = events.iter().find(|e| e["name"] == "cache_miss").unwrap();
    assert_eq!(missed["channel"], "cache-empty");
    for d in endpoint.received() {
        assert_eq!(d.header("X-Pusher-Key"), Some("app-key"));
        let expected = roostd::auth::hmac_sha256_hex(SECRET.as_bytes(), d.body.as_bytes());
        assert_eq!(d.header("X-Pusher-Signature"), Some(expected.as_str()), "signed with the app secret");
    }
    // Client events are still not stored.
    let list = server.api_get("/api/channels", &api_token("app"));
    assert_eq!(serde_json::from_str::<Value>(&list.body).unwrap(), json!([]), "{}", list.body);
}

#[test]
fn channel_info_counts_subscribers_and_gives_a_cache_channels_last_event() {
    let server = TestServer::start(&[PUSHER, &["--pusher-public", "cache-*"]].concat());
    let mut c = pusher(&server, "app-key");
    socket_id(&mut c);
    c.send_json(json!({"event":"pusher:subscribe","data":{"channel":"cache-prices"}}));
    assert_eq!(frame(&mut c).0, "pusher_internal:subscription_succeeded");
    assert_eq!(frame(&mut c).0, "pusher:cache_miss");
    for n in [1, 2] {
        let ev = json!({"name":"price","channel":"cache-prices","data":format!("{{\"eur\":{n}}}")});
        assert_eq!(signed_post(&server, "/apps/42/events", &ev.to_string()).status, 200);
        assert_eq!(frame(&mut c), ("price".to_string(), json!({"eur":n})));
    }
    let info = signed_get(&server, "/apps/42/channels/cache-prices", "info=subscription_count,cache");
    assert_eq!(info.status, 200, "{}", info.body);
    let info: Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!((&info["occupied"], &info["subscription_count"]), (&json!(true), &json!(1)));
    assert_eq!(info["cache"]["data"], r#"{"eur":2}"#);
    assert!(info["cache"]["ttl"].as_u64().unwrap() > 6 * 24 * 3600, "the default 7 days' retention: {info}");
    let empty: Value =
        serde_json::from_str(&signed_get(&server, "/apps/42/channels/cache-none", "info=cache").body).unwrap();
    assert_eq!(empty, json!({"occupied": false}));
}

#[test]
fn a_native_presence_channel_with_a_plain_name_is_refused_to_pusher_with_a_403_and_counts_nobody() {
    let server = TestServer::start(&[PUSHER, &["--presence", "room:*", "--pusher-public", "room:*"]].concat());
    let mut c = pusher(&server, "app-key");
    socket_id(&mut c);
    c.send_json(json!({"event":"pusher:subscribe","data":{"channel":"room:1"}}));
    let (event, data) = frame(&mut c);
    assert_eq!((event.as_str(), &data["status"]), ("pusher:subscription_error", &json!(403)));
    let mut native = server.ws(&token_all("alice"));
    let members = native.request(json!({"op":"presence","ch":"room:1"}));
    assert_eq!(members["members"], json!([]), "no nameless member: {members}");
}

#[test]
fn in_cluster_mode_a_pusher_api_event_goes_through_the_log_and_every_node_stores_it() {
    let Some(nats) = NatsServer::start() else { return };
    let node = || {
        let cluster = ["--cluster", &nats.url(), "--cluster-name", "pusherlog"];
        TestServer::start(&[PUSHER, &cluster[..]].concat())
    };
    let (a, b) = (node(), node());
    let mut reader = b.ws(&token_all("reader"));
    assert_eq!(reader.sub("news")["op"], "subok");
    let body = json!({"name":"Shipped","channel":"news","data":"{\"order\":7}"}).to_string();
    // `unavailable` (503) until node a's link to NATS is up: retried.
    let deadline = std::time::Instant::now() + io_timeout();
    let answer = loop {
        let answer = signed_post(&a, "/apps/42/events", &body);
        if answer.status != 503 || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Node b never saw the request: it has the event only from the log.
    let msg = reader.recv_msg();
    assert_eq!((msg["seq"].as_u64(), msg["event"].as_str()), (Some(1), Some("Shipped")), "{msg}");
    assert_eq!(msg["data"], json!({"order": 7}));
}

/// Client events are ephemeral, but each becomes a webhook event in the
/// store's outbox (up to 60 KiB once its data is escaped). While the
/// endpoint fails they wait there, so one signed-in user sending client
/// events could fill `--max-store-bytes` and every publish after it would
/// be refused: the outbox's client events are held to a share of the store.
#[test]
fn client_events_cannot_fill_the_store_through_the_webhook_outbox() {
    let endpoint = Endpoint::start(Mode::Status(500));
    let args = [PUSHER, &["--webhook", &endpoint.url, "--max-store-bytes", "8388608"]].concat();
    let server = TestServer::start(&args);
    let ch = "private-chat";
    let data = "\u{1}".repeat(10 * 1024);
    let mut socks = Vec::new();
    for _ in 0..30 {
        let mut c = pusher(&server, "app-key");
        let id = socket_id(&mut c);
        c.send_json(json!({"event":"pusher:subscribe","data":{"channel":ch,"auth":sign(&format!("{id}:{ch}"))}}));
        assert_eq!(frame(&mut c).0, "pusher_internal:subscription_succeeded");
        for _ in 0..10 {
            c.write_json(json!({"event":"client-x","channel":ch,"data":data}));
        }
        c.flush();
        socks.push(c);
    }
    // Each socket's ten were answered (relayed, or refused with an error).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let mut writer = server.ws(&token_all("w"));
    writer.publish_many("room", 200, |i| json!(format!("{i:01024}")));
    assert_eq!(server.log_count("the store is full"), 0, "{}", server.log_tail(5));
}

/// The signed API's POST bodies (up to 256 KiB, four times a WebSocket
/// message) were read before the signature was looked at: anyone could make
/// each of their connections hold one. The query's signature (which covers
/// `body_md5`) is checked on the head now; an unsigned POST is answered 401
/// without its body being read.
#[test]
fn an_unsigned_api_post_is_refused_before_its_body_is_read() {
    let server = TestServer::start(PUSHER);
    let mut sock = server.tcp();
    let head = format!(
        "POST /apps/42/events?auth_key=app-key HTTP/1.1\r\nHost: {}\r\nContent-Length: 262144\r\n\r\n",
        server.addr
    );
    sock.write_all(head.as_bytes()).unwrap();
    sock.write_all(&[b'{'; 1000]).unwrap();
    let mut answer = [0u8; 12];
    sock.read_exact(&mut answer).expect("answered without the body");
    assert_eq!(&answer, b"HTTP/1.1 401");
}

/// Anyone may subscribe to a public cache channel with nothing in it, and
/// each subscription is a `cache_miss` webhook event. While the endpoint
/// fails they wait in the store: subscribing again and again must not fill
/// it. The subscriber is still told of the miss each time.
#[test]
fn cache_misses_cannot_fill_the_store_through_the_webhook_outbox() {
    let endpoint = Endpoint::start(Mode::Status(500));
    let args = [
        PUSHER,
        &[
            "--pusher-public",
            "cache-*",
            "--webhook",
            &endpoint.url,
            "--max-store-bytes",
            "4194304",
            "--publish-rate",
            "0",
        ],
    ]
    .concat();
    let server = TestServer::start(&args);
    let ch = "cache-".to_string() + &"e".repeat(150);
    let mut socks = Vec::new();
    for _ in 0..20 {
        let mut c = pusher(&server, "app-key");
        socket_id(&mut c);
        socks.push(c);
    }
    for _ in 0..40 {
        for c in &mut socks {
            for _ in 0..50 {
                c.write_json(json!({"event":"pusher:subscribe","data":{"channel":ch}}));
                c.write_json(json!({"event":"pusher:unsubscribe","data":{"channel":ch}}));
            }
            c.flush();
        }
        for c in &mut socks {
            for _ in 0..50 {
                let (event, data) = frame(c);
                assert_eq!(event, "pusher_internal:subscription_succeeded", "{data}");
                assert_eq!(frame(c).0, "pusher:cache_miss");
            }
        }
    }
    let mut writer = server.ws(&token_all("w"));
    writer.publish_many("room", 200, |i| json!(format!("{i:01024}")));
    assert_eq!(server.log_count("the store is full"), 0, "{}", server.log_tail(5));
}
