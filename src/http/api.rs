//! The HTTP API for the main application (spec §5): routing, the order of
//! checks, and the JSON bodies. Pure: a request head (and later its body)
//! in, a decision out; the server does the I/O and the commit.
//!
//! The order of checks is the contract's — 404 path, 405 method, 401 token,
//! 403 `api_forbidden` (a token without `"api": true`), 403 permission,
//! 411/413 length, 400 body — so a client learns the most basic thing wrong
//! first, and an unauthenticated client learns nothing about bodies or
//! lengths.
//!
//! Only the main application's tokens (`"api": true`) get past the token
//! check: a client token is for the WebSocket, whose path runs the publish
//! hook and the publish rate; the API must not be a way around them.

use std::fmt::Write as _;

use serde_json::value::RawValue;

use crate::auth::{Claims, Verifier};
use crate::http::{self, Head, Refusal};
use crate::hub::{self, Dialect as _};
use crate::proto::roost::{self, Seq, DEFAULT_HIST_LIMIT, MAX_HIST_LIMIT, MAX_ID_BYTES};
use crate::store::{self, Append, ChannelInfo, Limit, Store, StoreError};

/// What a request head asks for, once it passed every check that needs no body.
#[derive(Debug)]
pub enum Decision {
    /// Answer now: status, content type, body; `close` ends the connection after it.
    Reply {
        status: u16,
        body: Vec<u8>,
        content_type: &'static str,
        close: bool,
    },
    /// Refuse: the status and the `error` code of the JSON body.
    Refuse(Refusal),
    /// Upgrade to a WebSocket (`/ws`): the server runs the §3 checks.
    WebSocket,
    /// The Pusher WebSocket `/app/{key}` (pusher.md §2): the server
    /// upgrades it and refuses after the upgrade, as pusher-js expects.
    PusherSocket,
    /// The Pusher HTTP API `/apps/…` (pusher.md §3): signed, not a bearer
    /// token, so the server routes and checks it with `proto::pusher_api`.
    PusherApi,
    /// Read `len` body bytes, then call [`publish`].
    Publish {
        ch: String,
        claims: Box<Claims>,
        len: usize,
    },
    History {
        ch: String,
        since: Seq,
        limit: usize,
    },
    /// A page of the channel list: up to `limit` channels named after `after`.
    Channels {
        after: String,
        limit: usize,
    },
    /// The members of a presence channel (spec §7), from the hub.
    Presence {
        ch: String,
    },
    /// A page of a compacted channel's state by key (spec §8).
    State {
        ch: String,
        after: String,
        limit: usize,
    },
    Health,
    Metrics,
}

/// The demo page and the client library, built into the binary so a Pi
/// needs no other files.
pub const DEMO_PAGE: &[u8] = include_bytes!("../../web/index.html");
pub const ROOST_JS: &[u8] = include_bytes!("../../web/roost.js");

/// Default and largest `limit` of `GET /api/channels`: a page is at most
/// about 200 KiB (names are at most 164 bytes).
pub const MAX_CHANNELS_PAGE: usize = 1000;

fn asset(body: &'static [u8], content_type: &'static str) -> Decision {
    Decision::Reply { status: 200, body: body.to_vec(), content_type, close: false }
}

fn reply(status: u16, code: &'static str) -> Decision {
    Decision::Refuse(Refusal::new(status, code))
}

/// Routes and checks a request head. `demo`: serve the demo page and `/roost.js`.
///
/// Each step below is one rung of the contract's order of checks; the
/// per-route helpers at the end take the 403 permission, 411/413 and 400
/// rungs in that order.
pub fn decide(head: &Head, verifier: &Verifier, now_unix: u64, max_body: usize, demo: bool) -> Decision {
    let method = head.method.as_str();
    // 404: the path (the WebSocket and the demo assets are answered here).
    let route = match route(&head.path, method, demo) {
        Ok(route) => route,
        Err(decision) => return decision,
    };
    // 405: the method.
    let allowed = match route {
        Route::Messages(_) => method == "GET" || method == "POST",
        _ => method == "GET",
    };
    if !allowed {
        return reply(405, "method_not_allowed");
    }
    // Health and metrics need no token.
    let route = match route {
        Route::Health => return Decision::Health,
        Route::Metrics => return Decision::Metrics,
        r => r,
    };
    // 401: the token.
    let claims = match bearer_claims(head, verifier, now_unix) {
        Ok(claims) => claims,
        Err(code) => return reply(401, code),
    };
    // 403 `api_forbidden`: a client token is for the WebSocket only.
    if !claims.api {
        return reply(403, "api_forbidden");
    }
    // 403 permission, then 411/413 length, then 400 for the query or length.
    match route {
        Route::Channels => channels_page(head, &claims),
        Route::Messages(ch) if method == "POST" => publish_head(head, ch, claims, max_body),
        Route::Messages(ch) => history_query(head, ch, &claims),
        Route::Presence(ch) if claims.read.allows(&ch) => Decision::Presence { ch },
        Route::State(ch) if claims.read.allows(&ch) => state_query(head, ch),
        Route::Presence(_) | Route::State(_) => reply(403, "forbidden"),
        Route::Health | Route::Metrics => unreachable!("answered above"),
    }
}

/// The route a path names, or the answer to give without one: the
/// WebSocket upgrade, a demo asset, or 404.
fn route(path: &str, method: &str, demo: bool) -> Result<Route, Decision> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    Ok(match segments.as_slice() {
        ["ws"] => return Err(Decision::WebSocket),
        ["app", _] => return Err(Decision::PusherSocket),
        ["apps", ..] => return Err(Decision::PusherApi),
        [""] | ["index.html"] if demo && method == "GET" => return Err(asset(DEMO_PAGE, "text/html; charset=utf-8")),
        ["roost.js"] if demo && method == "GET" => return Err(asset(ROOST_JS, "text/javascript; charset=utf-8")),
        // Browsers ask for it on every page; an empty answer keeps their console clean.
        ["favicon.ico"] if demo && method == "GET" => {
            return Err(Decision::Reply { status: 204, body: Vec::new(), content_type: "image/x-icon", close: false })
        }
        ["healthz"] => Route::Health,
        ["metrics"] => Route::Metrics,
        ["api", "channels"] => Route::Channels,
        ["api", "channels", ch, "messages"] => match channel(ch) {
            Some(ch) => Route::Messages(ch),
            None => return Err(reply(404, "not_found")),
        },
        ["api", "channels", ch, "presence"] => match channel(ch) {
            Some(ch) => Route::Presence(ch),
            None => return Err(reply(404, "not_found")),
        },
        ["api", "channels", ch, "state"] => match channel(ch) {
            Some(ch) => Route::State(ch),
            None => return Err(reply(404, "not_found")),
        },
        _ => return Err(reply(404, "not_found")),
    })
}

/// The claims of the request's `Authorization: Bearer` token; `Err` is the
/// 401 `error` code.
fn bearer_claims(head: &Head, verifier: &Verifier, now_unix: u64) -> Result<Claims, &'static str> {
    let token = head.authorization.as_deref().and_then(|a| {
        let (scheme, rest) = a.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    match token {
        None | Some("") => Err("token_missing"),
        Some(t) => verifier.verify(t, now_unix).map_err(|e| e.code()),
    }
}

/// `GET /api/channels`: 403 without read on every channel, 400 for a bad `limit`.
fn channels_page(head: &Head, claims: &Claims) -> Decision {
    if !claims.read.allows_all() {
        return reply(403, "forbidden");
    }
    let after = http::query_param(&head.query, "after").unwrap_or_default();
    match http::query_param(&head.query, "limit").filter(|s| !s.is_empty()) {
        None => Decision::Channels { after, limit: MAX_CHANNELS_PAGE },
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_CHANNELS_PAGE).contains(&n) => Decision::Channels { after, limit: n },
            _ => reply(400, "bad_request"),
        },
    }
}

/// `POST /api/channels/{ch}/messages`, before its body: 403 permission,
/// 411 without a `Content-Length` (or with `Transfer-Encoding`), 400 for a
/// bad one, 413 past `max_body`.
fn publish_head(head: &Head, ch: String, claims: Claims, max_body: usize) -> Decision {
    if !claims.write.allows(&ch) {
        return reply(403, "forbidden");
    }
    if head.transfer_encoding.is_some() {
        return reply(411, "length_required");
    }
    let len = match head.content_length.as_deref().map(str::parse::<usize>) {
        None => return reply(411, "length_required"),
        Some(Err(_)) => return reply(400, "bad_request"),
        Some(Ok(n)) => n,
    };
    if len > max_body {
        return reply(413, "too_large");
    }
    if message_key(head).is_err() {
        return reply(400, "bad_request");
    }
    Decision::Publish { ch, claims: Box::new(claims), len }
}

/// `GET /api/channels/{ch}/messages`: 403 permission, 400 for a bad `since` or `limit`.
fn history_query(head: &Head, ch: String, claims: &Claims) -> Decision {
    if !claims.read.allows(&ch) {
        return reply(403, "forbidden");
    }
    let since = match http::query_param(&head.query, "since").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match s.parse::<Seq>() {
            Ok(n) => n,
            Err(_) => return reply(400, "bad_request"),
        },
    };
    let limit = match http::query_param(&head.query, "limit").filter(|s| !s.is_empty()) {
        None => DEFAULT_HIST_LIMIT,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_HIST_LIMIT).contains(&n) => n,
            _ => return reply(400, "bad_request"),
        },
    };
    Decision::History { ch, since, limit: limit as usize }
}

enum Route {
    Health,
    Metrics,
    Channels,
    Messages(String),
    Presence(String),
    State(String),
}

/// `GET /api/channels/{ch}/state`: 400 for a bad `after` key or `limit`.
fn state_query(head: &Head, ch: String) -> Decision {
    let after = http::query_param(&head.query, "after").unwrap_or_default();
    if !after.is_empty() && !crate::channel::valid_key(&after) {
        return reply(400, "bad_request");
    }
    match http::query_param(&head.query, "limit").filter(|s| !s.is_empty()) {
        None => Decision::State { ch, after, limit: MAX_CHANNELS_PAGE },
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_CHANNELS_PAGE).contains(&n) => Decision::State { ch, after, limit: n },
            _ => reply(400, "bad_request"),
        },
    }
}

/// `200 {"ch","seq","msgs":[...]}`: the latest message of each key after
/// `after`, by key; `seq` is the channel's last seq as of the same read.
pub fn state(store: &Store, ch: &str, after: &str, limit: usize) -> Result<Vec<u8>, StoreError> {
    let mut msgs = String::with_capacity(256);
    let mut first = true;
    let info = store.state_page(ch, after, limit, |r| {
        if !first {
            msgs.push(',');
        }
        first = false;
        roost::msg_into(&mut msgs, &hub::history_msg(ch, &r));
        true
    })?;
    let mut body = String::with_capacity(msgs.len() + 64);
    body.push_str("{\"ch\":");
    roost::json_str(&mut body, ch);
    let _ = write!(body, ",\"seq\":{},\"msgs\":[{msgs}]}}", info.last);
    Ok(body.into_bytes())
}

/// `200 {"ch","members":[{"user","info"}...],"count"}`
pub fn presence(ch: &str, members: &[hub::Member<'_>]) -> Vec<u8> {
    // The native `presence` frame without its `op`: one writer of members.
    let mut frame = String::new();
    roost::Roost.write(&mut frame, &hub::Event::Presence { ch, members }, None);
    frame.replacen("{\"op\":\"presence\",", "{", 1).into_bytes()
}

/// A channel name from a path segment, percent-decoded and checked.
fn channel(segment: &str) -> Option<String> {
    let decoded = http::percent_decode_path(segment)?;
    crate::channel::valid_name(&decoded).then_some(decoded)
}

/// A publish's `?key=` (spec §8); `Err` for one that is not a valid key.
pub fn message_key(head: &Head) -> Result<Option<String>, Refusal> {
    match http::query_param(&head.query, "key") {
        None => Ok(None),
        Some(k) if crate::channel::valid_key(&k) => Ok(Some(k)),
        Some(_) => Err(Refusal::new(400, "bad_request")),
    }
}

/// Checks a publish body and builds the append. `Err` is the reply.
pub fn publish(
    ch: String,
    claims: &Claims,
    body: &[u8],
    idempotency_key: Option<&str>,
    key: Option<String>,
) -> Result<Append, Refusal> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(Refusal::new(400, "bad_request"));
    };
    let data = match serde_json::from_str::<&RawValue>(text) {
        Ok(v) => v.get().to_string(),
        Err(_) => return Err(Refusal::new(400, "bad_request")),
    };
    // An Idempotency-Key is deduped with WebSocket ids of the same sub: it
    // is the id as a JSON string.
    let id = match idempotency_key {
        None => None,
        Some(k) => {
            let json = serde_json::to_string(k).unwrap_or_default();
            // The sub and the key together key the dedupe tables: a pair
            // too long for LMDB is refused here, not by the commit.
            if k.is_empty() || json.len() > MAX_ID_BYTES || !store::dedupe_fits(&claims.sub, &json) {
                return Err(Refusal::new(400, "bad_request"));
            }
            Some(json)
        }
    };
    Ok(Append { ch, from: claims.sub.clone(), data, id, key, event: None })
}

/// `201 {"ch","seq","ts"}` for a new message, `200` for a repeated key.
pub fn published(ch: &str, seq: Seq, ts: u64, new: bool) -> Decision {
    let mut body = String::with_capacity(64);
    body.push_str("{\"ch\":");
    roost::json_str(&mut body, ch);
    let _ = write!(body, ",\"seq\":{seq},\"ts\":{ts}}}");
    Decision::Reply {
        status: if new { 201 } else { 200 },
        body: body.into_bytes(),
        content_type: "application/json",
        close: false,
    }
}

/// `200 {"ch","msgs":[...],"more"}` (plus `"gap":true` as in `hist`).
pub fn history(store: &Store, ch: &str, since: Seq, limit: usize, max_bytes: usize) -> Result<Vec<u8>, StoreError> {
    let mut body = String::with_capacity(256);
    body.push_str("{\"ch\":");
    roost::json_str(&mut body, ch);
    body.push_str(",\"msgs\":[");
    let page = hub::page(store, ch, since, limit, max_bytes, &roost::Roost, &mut body)?;
    let _ = write!(body, "],\"more\":{}", page.more);
    if page.gap {
        body.push_str(",\"gap\":true");
    }
    body.push('}');
    Ok(body.into_bytes())
}

/// The answer to an append that would pass a limit of the store.
pub fn over_limit(limit: Limit) -> Refusal {
    match limit {
        Limit::Channels => Refusal::new(507, "too_many_channels"),
        Limit::Keys => Refusal::new(507, "too_many_keys"),
    }
}

/// `200 [{"ch","seq","count"}...]`, one page: a full page means there may be more.
pub fn channels(list: &[(String, ChannelInfo)]) -> Vec<u8> {
    let mut body = String::from("[");
    for (i, (ch, info)) in list.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"ch\":");
        roost::json_str(&mut body, ch);
        let _ = write!(body, ",\"seq\":{},\"count\":{}}}", info.last, info.count());
    }
    body.push(']');
    body.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{mint, Key, KeyRing};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::new(KeyRing::new(vec![Key::new(None, SECRET.to_vec())]), 30, None)
    }

    fn head(method: &str, path: &str, token: Option<serde_json::Value>, len: Option<&str>) -> Head {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        Head {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            minor: 1,
            authorization: token.map(|c| format!("Bearer {}", mint(&c, &Key::new(None, SECRET.to_vec())))),
            content_length: len.map(Into::into),
            ..Head::default()
        }
    }

    fn status(d: &Decision) -> u16 {
        match d {
            Decision::Reply { status, .. } => *status,
            Decision::Refuse(r) => r.status,
            Decision::Publish { .. } => 1,
            Decision::History { .. } => 2,
            Decision::Channels { .. } => 3,
            _ => 0,
        }
    }

    #[test]
    fn checks_run_in_the_contract_order() {
        let v = verifier();
        let all = json!({"sub":"app","exp":2_000_000_000u64,"read":["*"],"write":["*"],"api":true});
        let reader = json!({"sub":"r","exp":2_000_000_000u64,"read":["room:*"],"api":true});
        let expired = json!({"sub":"app","exp":1000,"read":["*"],"write":["*"],"api":true});
        let client = json!({"sub":"c","exp":2_000_000_000u64,"read":["*"],"write":["*"]});
        let cases: Vec<(Head, u16)> = vec![
            (head("GET", "/nope", None, None), 404),
            (head("GET", "/api/channels/bad%20name/messages", None, None), 404),
            (head("DELETE", "/api/channels/a/messages", None, None), 405),
            (head("POST", "/api/channels", Some(all.clone()), None), 405),
            (head("POST", "/api/channels/a/messages", None, Some("5")), 401),
            (head("POST", "/api/channels/a/messages", Some(expired), Some("5")), 401),
            // A client token: 403 before permissions, lengths and bodies.
            (head("POST", "/api/channels/a/messages", Some(client.clone()), None), 403),
            (head("GET", "/api/channels/a/messages?limit=0", Some(client.clone()), None), 403),
            (head("DELETE", "/api/channels/a/messages", Some(client), None), 405),
            (head("POST", "/api/channels/room:1/messages", Some(reader.clone()), None), 403),
            (head("GET", "/api/channels/other/messages", Some(reader.clone()), None), 403),
            (head("GET", "/api/channels", Some(reader.clone()), None), 403),
            (head("POST", "/api/channels/a/messages", Some(all.clone()), None), 411),
            (head("POST", "/api/channels/a/messages", Some(all.clone()), Some("70000")), 413),
            (head("GET", "/api/channels/a/messages?limit=0", Some(all.clone()), None), 400),
            (head("GET", "/api/channels/a/messages?since=x", Some(all.clone()), None), 400),
            (head("POST", "/api/channels/a/messages", Some(all.clone()), Some("5")), 1),
            (head("GET", "/api/channels/room%3A1/messages?since=3&limit=5", Some(reader), None), 2),
            (head("GET", "/api/channels?limit=0", Some(all.clone()), None), 400),
            (head("GET", "/api/channels?limit=1001", Some(all.clone()), None), 400),
            (head("GET", "/api/channels", Some(all.clone()), None), 3),
        ];
        for (h, want) in cases {
            assert_eq!(status(&decide(&h, &v, 1_700_000_000, 65536, true)), want, "{} {}", h.method, h.path);
        }
        match decide(
            &head(
                "GET",
                "/api/channels/room%3A1/messages?since=3&limit=5",
                Some(json!({"sub":"a","exp":2_000_000_000u64,"read":["*"],"api":true})),
                None,
            ),
            &v,
            1_700_000_000,
            65536,
            true,
        ) {
            Decision::History { ch, since, limit } => assert_eq!((ch.as_str(), since, limit), ("room:1", 3, 5)),
            d => panic!("{d:?}"),
        }
        match decide(
            &head("GET", "/api/channels?after=room%3A1&limit=5", Some(all), None),
            &v,
            1_700_000_000,
            65536,
            true,
        ) {
            Decision::Channels { after, limit } => assert_eq!((after.as_str(), limit), ("room:1", 5)),
            d => panic!("{d:?}"),
        }
        let mut chunked = head(
            "POST",
            "/api/channels/a/messages",
            Some(json!({"sub":"a","exp":2_000_000_000u64,"write":["*"],"api":true})),
            Some("5"),
        );
        chunked.transfer_encoding = Some("chunked".into());
        assert!(matches!(
            decide(&chunked, &v, 1_700_000_000, 65536, true),
            Decision::Refuse(r) if r.status == 411 && r.ends_connection()
        ));
    }

    #[test]
    fn only_tokens_with_api_true_pass_the_token_check() {
        let v = verifier();
        let code = |d: Decision| match d {
            Decision::Refuse(r) => (r.status, String::from_utf8(r.body()).unwrap()),
            d => (status(&d), String::new()),
        };
        let forbidden = (403, r#"{"error":"api_forbidden"}"#.to_string());
        for api in [None, Some(false)] {
            let mut claims = json!({"sub":"c","exp":2_000_000_000u64,"read":["*"],"write":["*"]});
            if let Some(api) = api {
                claims["api"] = api.into();
            }
            for (method, path, len) in [
                ("POST", "/api/channels/a/messages", Some("5")),
                ("GET", "/api/channels/a/messages", None),
                ("GET", "/api/channels", None),
            ] {
                let d = decide(&head(method, path, Some(claims.clone()), len), &v, 1_700_000_000, 65536, true);
                assert_eq!(code(d), forbidden, "{method} {path} with api {api:?}");
            }
        }
        // Even a client token that reads nothing hears `api_forbidden`, not `forbidden`.
        let nothing = json!({"sub":"c","exp":2_000_000_000u64});
        let d = decide(&head("GET", "/api/channels", Some(nothing), None), &v, 1_700_000_000, 65536, true);
        assert_eq!(code(d), forbidden);
        let app = json!({"sub":"app","exp":2_000_000_000u64,"read":["*"],"api":true});
        assert!(matches!(
            decide(&head("GET", "/api/channels", Some(app), None), &v, 1_700_000_000, 65536, true),
            Decision::Channels { .. }
        ));
    }

    #[test]
    fn publish_bodies() {
        let claims = Claims {
            sub: "app".into(),
            exp: 0,
            read: Default::default(),
            write: Default::default(),
            api: true,
            info: None,
        };
        let a = publish("c".into(), &claims, br#" {"x": 1} "#, Some("k-1"), None).unwrap();
        assert_eq!((a.data.as_str(), a.id.as_deref(), a.from.as_str()), (r#"{"x": 1}"#, Some("\"k-1\""), "app"));
        assert!(publish("c".into(), &claims, b"{nope", None, None).is_err());
        assert!(publish("c".into(), &claims, b"", None, None).is_err());
        assert!(publish("c".into(), &claims, b"\xff", None, None).is_err());
        assert!(publish("c".into(), &claims, b"1", Some(&"k".repeat(200)), None).is_err());
        let body = match published("c", 3, 9, true) {
            Decision::Reply { status: 201, body, .. } => body,
            d => panic!("{d:?}"),
        };
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap(), json!({"ch":"c","seq":3,"ts":9}));
    }

    #[test]
    fn the_longest_sub_and_key_publish_and_one_byte_more_is_a_400() {
        use crate::store::{Outcome, MAX_DEDUPE_SUB_AND_ID_BYTES};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 22).unwrap();
        let keep = |_: &str| crate::store::Retention { messages: 100, age_ms: u64::MAX };
        let app = Claims {
            sub: "app".into(),
            exp: 0,
            read: Default::default(),
            write: Default::default(),
            api: true,
            info: None,
        };
        // The key "k" is "\"k\"" (3 bytes) as an id.
        let room = MAX_DEDUPE_SUB_AND_ID_BYTES - 3;
        let fits = Claims { sub: "s".repeat(room), ..app.clone() };
        let a = publish("c".into(), &fits, b"1", Some("k"), None).unwrap();
        let out = store.append_batch([&a], 5, 60_000, &keep).unwrap();
        assert_eq!(out, vec![Outcome::Stored { seq: 1, ts: 5 }], "the longest pair commits to a real store");
        let over = Claims { sub: "s".repeat(room + 1), ..app };
        match publish("c".into(), &over, b"1", Some("k"), None) {
            Err(r) => assert_eq!(r, Refusal::new(400, "bad_request")),
            other => panic!("expected a 400, got {other:?}"),
        }
        assert!(publish("c".into(), &over, b"1", None, None).is_ok(), "without a key the sub is no key");
    }

    #[test]
    fn bodies_are_json() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 22).unwrap();
        let a = Append { ch: "c".into(), from: "u".into(), data: "[1]".into(), id: None, key: None, event: None };
        let keep = |_: &str| crate::store::Retention { messages: 100, age_ms: u64::MAX };
        store.append_batch([&a, &a, &a], 5, 0, &keep).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&history(&store, "c", 1, 1, 1 << 20).unwrap()).unwrap();
        assert_eq!(v["msgs"][0]["seq"], 2);
        assert_eq!(v["more"], true);
        let v: serde_json::Value = serde_json::from_slice(&channels(&store.channels("", 10).unwrap())).unwrap();
        assert_eq!(v, json!([{"ch":"c","seq":3,"count":3}]));
    }
}
