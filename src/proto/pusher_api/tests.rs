//! Tests of the signed HTTP API against requests recorded from the real
//! `pusher` library (tests/pusher/vectors.json): the library signs, roostd
//! must accept exactly those and refuse every alteration.

use super::*;
use crate::proto::pusher::tests::{app, vectors};

const NOW: u64 = 1_700_000_000;

/// A recorded request: (method, path, query, body).
fn recorded(what: &str) -> (String, String, String, String) {
    let v = vectors();
    let r = v["requests"].as_array().unwrap().iter().find(|r| r["what"] == what).unwrap_or_else(|| panic!("{what}"));
    let url = r["url"].as_str().unwrap();
    let (path, query) = url.split_once('?').unwrap();
    (r["method"].as_str().unwrap().into(), path.into(), query.into(), r["body"].as_str().unwrap().into())
}

fn check(what: &str) -> Result<(Route, Params), ApiError> {
    let (method, path, query, body) = recorded(what);
    let app = app();
    let route = route(&app, &method, &path)?;
    let params = verify(&app, &method, &path, &query, body.as_bytes(), NOW)?;
    Ok((route, params))
}

#[test]
fn every_request_the_pusher_library_signs_is_accepted_and_routed() {
    let routes = [
        ("trigger one channel", Route::Events),
        ("trigger many channels, a socket to leave out, info", Route::Events),
        ("trigger batch", Route::BatchEvents),
        ("send to user", Route::Events),
        ("channels with a prefix filter", Route::Channels),
        ("one channel's info", Route::Channel("presence-room.1".into())),
        ("presence users", Route::Users("presence-room.1".into())),
        ("terminate a user's connections", Route::Terminate("user-9".into())),
    ];
    for (what, want) in routes {
        let (route, _) = check(what).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(route, want, "{what}");
    }
    let (_, params) = check("channels with a prefix filter").unwrap();
    assert_eq!(params.get("filter_by_prefix"), Some("presence-"));
    assert_eq!(params.get("auth_key"), None, "auth parameters are not the route's");
    let q = channels_query(&params).unwrap();
    assert_eq!(q, ChannelsQuery { prefix: Some("presence-".into()), user_count: true });
}

#[test]
fn a_request_signed_with_another_secret_is_a_401() {
    let e = check("signed with another secret").unwrap_err();
    assert_eq!((e.status, e.code), (401, "unauthorized"));
    assert!(e.message.contains("signature"), "{e}");
}

#[test]
fn any_change_to_a_signed_request_is_refused() {
    let app = app();
    let (method, path, query, body) = recorded("trigger many channels, a socket to leave out, info");
    let ok = |m: &str, p: &str, q: &str, b: &str, now: u64| verify(&app, m, p, q, b.as_bytes(), now);
    assert!(ok(&method, &path, &query, &body, NOW).is_ok());
    let other_body = body.replace("plain text", "plain texT");
    let changed = [
        ("body", ok(&method, &path, &query, &other_body, NOW)),
        ("method", ok("PUT", &path, &query, &body, NOW)),
        ("path", ok(&method, "/apps/4242/batch_events", &query, &body, NOW)),
        ("timestamp", ok(&method, &path, &query.replace("1700000000", "1700000001"), &body, NOW)),
        ("key", ok(&method, &path, &query.replace("auth_key=app-key", "auth_key=app-kez"), &body, NOW)),
        ("version", ok(&method, &path, &query.replace("auth_version=1.0", "auth_version=2.0"), &body, NOW)),
        ("no signature", ok(&method, &path, &query[..query.find("&auth_signature").unwrap()], &body, NOW)),
        ("extra parameter", ok(&method, &path, &format!("{query}&x=1"), &body, NOW)),
    ];
    for (what, res) in changed {
        assert_eq!(res.unwrap_err().status, 401, "{what}");
    }
    let twice = ok(&method, &path, &format!("{query}&auth_key=app-key"), &body, NOW).unwrap_err();
    assert_eq!(twice.status, 400, "a parameter given twice is ambiguous");
}

#[test]
fn the_timestamp_may_be_600_seconds_off_and_no_more() {
    let app = app();
    let (method, path, query, body) = recorded("trigger one channel");
    let at = |now| verify(&app, &method, &path, &query, body.as_bytes(), now);
    assert!(at(NOW + 600).is_ok());
    assert!(at(NOW - 600).is_ok());
    for now in [NOW + 601, NOW - 601] {
        let e = at(now).unwrap_err();
        assert_eq!(e.status, 401);
        assert!(e.message.contains("601s off"), "{e}");
    }
}

#[test]
fn a_body_without_body_md5_is_refused() {
    let app = app();
    let (_, path, query, _) = recorded("channels with a prefix filter");
    // The GET's signature is good, but a body came along that nothing signed.
    let e = verify(&app, "GET", &path, &query, b"{}", NOW).unwrap_err();
    assert_eq!((e.status, e.message.as_str()), (401, "body_md5 does not match the body"));
}

#[test]
fn percent_escapes_and_upper_case_keys_are_read_as_the_libraries_sign_them() {
    let app = app();
    let path = "/apps/4242/channels";
    let text = format!("GET\n{path}\nauth_key=app-key&auth_timestamp={NOW}&auth_version=1.0&filter_by_prefix=presence-&info=user_count");
    let sig = app.sign(&text);
    let query = format!(
        "Auth_Key=app-key&auth_timestamp={NOW}&auth_version=1.0&filter_by_prefix=presence%2D&info=user%5Fcount&auth_signature={sig}"
    );
    let params = verify(&app, "GET", path, &query, b"", NOW).unwrap();
    assert_eq!(params.get("info"), Some("user_count"));
}

#[test]
fn routes_and_methods() {
    let app = app();
    let r = |m: &str, p: &str| route(&app, m, p);
    assert_eq!(r("GET", "/apps/4242/channels/a/b/users"), Ok(Route::Users("a/b".into())));
    assert_eq!(r("GET", "/apps/4242/channels/a/b"), Ok(Route::Channel("a/b".into())));
    assert_eq!(r("GET", "/apps/4242/channels/presence-a%3A1"), Ok(Route::Channel("presence-a:1".into())));
    assert_eq!(r("GET", "/apps/4242/events").unwrap_err().status, 405);
    assert_eq!(r("POST", "/apps/1/events").unwrap_err().status, 404);
    assert_eq!(r("POST", "/apps/4242/nope").unwrap_err().status, 404);
    assert_eq!(r("GET", "/apps/4242/channels/a%20b").unwrap_err().status, 400);
    assert_eq!(r("POST", "/apps/4242/users//terminate_connections").unwrap_err().status, 400);
}

#[test]
fn events_from_the_library_parse_into_plain_structs() {
    let (_, _, _, body) = recorded("trigger one channel");
    let e = events(body.as_bytes()).unwrap();
    assert_eq!(e.name, "OrderShipped");
    assert_eq!(e.data, "{\"id\":7,\"note\":\"ü \\\"q\\\"\"}", "the data text exactly as the library sent it");
    assert_eq!(e.channels, ["orders"]);
    assert_eq!((e.socket_id, e.info), (None, Info::default()));

    let (_, _, _, body) = recorded("trigger many channels, a socket to leave out, info");
    let e = events(body.as_bytes()).unwrap();
    assert_eq!(e.data, "plain text");
    assert_eq!(e.channels, ["private-a", "presence-b", "c"]);
    assert_eq!(e.socket_id.as_deref(), Some("123.456"));
    assert_eq!(e.info, Info { subscription_count: true, user_count: true });

    let (_, _, _, body) = recorded("trigger batch");
    let b = batch_events(body.as_bytes()).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!((b[1].channels.as_slice(), b[1].data.as_str()), (&["presence-b".to_string()][..], "two"));
    assert!(b[1].info.user_count);

    let (_, _, _, body) = recorded("send to user");
    assert_eq!(events(body.as_bytes()).unwrap().channels, ["#server-to-user-user-9"]);
}

#[test]
fn event_limits_are_pushers() {
    let body = |name: &str, data: &str, channels: &str| {
        format!(r#"{{"name":{},"data":{},"channels":{channels}}}"#, Value::from(name), Value::from(data))
    };
    let status = |b: String| events(b.as_bytes()).map(|_| 200).unwrap_or_else(|e| e.status);
    assert_eq!(status(body("e", &"d".repeat(10 * 1024), r#"["a"]"#)), 200);
    assert_eq!(status(body("e", &"d".repeat(10 * 1024 + 1), r#"["a"]"#)), 413);
    assert_eq!(status(body(&"n".repeat(200), "d", r#"["a"]"#)), 200);
    assert_eq!(status(body(&"n".repeat(201), "d", r#"["a"]"#)), 413);
    let many = |n: usize| Value::from((0..n).map(|i| format!("c{i}")).collect::<Vec<_>>()).to_string();
    assert_eq!(status(body("e", "d", &many(100))), 200);
    assert_eq!(status(body("e", "d", &many(101))), 400);
    assert_eq!(status(body("e", "d", "[]")), 400);
    assert_eq!(status(body("e", "d", r#"["a b"]"#)), 400);
    assert_eq!(status(body("", "d", r#"["a"]"#)), 400);
    assert_eq!(status(r#"{"name":"e","data":"d","channels":["a"],"channel":"b"}"#.into()), 400);
    assert_eq!(status(r#"{"name":"e","data":"d","channels":["a"],"socket_id":"12"}"#.into()), 400);
    assert_eq!(status(r#"{"name":"e","data":"d","channels":["a"],"info":"occupied"}"#.into()), 400);
    assert_eq!(status(r#"{"name":"e","channels":["a"]}"#.into()), 400);
    assert_eq!(status("not json".into()), 400);
    // A non-string data is kept as its JSON text; repeated channels count once.
    let e = events(br#"{"name":"e","data":{"a":1},"channel":"a","socket_id":null}"#).unwrap();
    assert_eq!((e.data.as_str(), e.channels.as_slice()), ("{\"a\":1}", &["a".to_string()][..]));
    assert_eq!(events(br#"{"name":"e","data":"d","channels":["a","a"]}"#).unwrap().channels, ["a"]);
    let batch =
        |n: usize| format!(r#"{{"batch":[{}]}}"#, vec![r#"{"name":"e","data":"d","channel":"a"}"#; n].join(","));
    assert_eq!(batch_events(batch(10).as_bytes()).unwrap().len(), 10);
    assert_eq!(batch_events(batch(11).as_bytes()).unwrap_err().status, 400);
    let e = batch_events(br#"{"batch":[{"name":"e","data":"d","channel":"a"},{"name":"e","channel":"a"}]}"#);
    assert!(e.unwrap_err().message.contains("data"));
}

#[test]
fn channel_queries_allow_what_pusher_allows() {
    let params = |q: &[(&str, &str)]| Params(q.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
    assert_eq!(channels_query(&params(&[])).unwrap(), ChannelsQuery::default());
    assert_eq!(channels_query(&params(&[("info", "user_count")])).unwrap_err().status, 400);
    assert_eq!(channels_query(&params(&[("info", "subscription_count")])).unwrap_err().status, 400);
    let q = channel_query("presence-cache-a", &params(&[("info", "subscription_count,user_count,cache")])).unwrap();
    assert_eq!(q, ChannelQuery { subscription_count: true, user_count: true, cache: true });
    assert_eq!(channel_query("a", &params(&[("info", "user_count")])).unwrap_err().status, 400);
    assert_eq!(channel_query("a", &params(&[("info", "cache")])).unwrap_err().status, 400);
    assert_eq!(channel_query("a", &params(&[("info", "bogus")])).unwrap_err().status, 400);
    assert!(users_query("presence-a").is_ok());
    assert_eq!(users_query("private-a").unwrap_err().status, 400);
}

#[test]
fn answers_are_pushers_json() {
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    let c = Counts { subscription_count: Some(2), user_count: None };
    assert_eq!(text(events_body(None)), "{}");
    assert_eq!(text(events_body(Some(&[("a", c)]))), r#"{"channels":{"a":{"subscription_count":2}}}"#);
    assert_eq!(text(batch_body(Some(&[c, Counts::default()]))), r#"{"batch":[{"subscription_count":2},{}]}"#);
    assert_eq!(text(channels_body(&[("a", Counts::default())])), r#"{"channels":{"a":{}}}"#);
    assert_eq!(
        text(channel_body(true, c, Some(("x", 30)))),
        r#"{"cache":{"data":"x","ttl":30},"occupied":true,"subscription_count":2}"#
    );
    assert_eq!(text(users_body(&["1", "2"])), r#"{"users":[{"id":"1"},{"id":"2"}]}"#);
    let e = ApiError::bad("no");
    assert_eq!(text(e.body()), r#"{"error":"bad_request","message":"no"}"#);
}
