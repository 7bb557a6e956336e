//! No single request can stop the server (issue 13, item 2): every size
//! that reaches LMDB is checked at the edge with the real key layout, and
//! a publish the store cannot hold fails alone with `bad_request`.

use serde_json::json;

use crate::support::*;

#[test]
fn a_sub_and_key_too_long_for_the_store_are_refused_and_the_server_keeps_serving() {
    let server = TestServer::start(&[]);
    // 499 + the key "k" (3 bytes of JSON) makes a 512-byte expiry key: one
    // byte over LMDB's limit. This request used to stop the whole server,
    // and a client resending it crash-looped the service.
    let long = api_token(&"s".repeat(499));
    for attempt in 0..3 {
        let resp = server.post("room:1", &long, r#"{"n":1}"#, "Idempotency-Key: k\r\n");
        assert_eq!(resp.status, 400, "attempt {attempt}: {resp:?}; log:\n{}", server.log_tail(10));
        resp.assert_refusal(400, "bad_request");
    }
    // The same over the WebSocket.
    let mut ws = server.ws(&long);
    let r = ws.request(json!({"op": "pub", "ch": "room:1", "data": 1, "id": "k"}));
    assert_eq!((&r["op"], &r["code"], &r["id"]), (&json!("err"), &json!("bad_request"), &json!("k")), "{r}");
    // Without a key the same sub publishes: nothing of it keys the dedupe tables.
    assert_eq!(ws.publish("room:1", json!("no id")), 1);
    assert_eq!(server.post("room:1", &long, "2", "").status, 201);

    // Still serving: health, other publishers, the long sub with a short enough pair.
    let health = server.http("GET /healthz HTTP/1.1\r\nHost: roostd.test\r\n\r\n");
    assert_eq!(health.status, 200, "{health:?}");
    let other = server.post("room:1", &api_token("app"), "3", "Idempotency-Key: k\r\n");
    assert_eq!(other.status, 201, "{other:?}");
    let fits = api_token(&"s".repeat(498));
    assert_eq!(server.post("room:1", &fits, "4", "Idempotency-Key: k\r\n").status, 201);
    assert_eq!(server.post("room:1", &fits, "4", "Idempotency-Key: k\r\n").status, 200, "and is deduped");
    assert_eq!(ws.publish("room:1", json!("after")), 5);
    assert!(!server.log().contains("stopping"), "log:\n{}", server.log_tail(20));
}
