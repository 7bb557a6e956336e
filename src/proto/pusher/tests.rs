//! Tests of the Pusher frames, channel kinds and signatures; the signed
//! vectors come from the real `pusher` library (tests/pusher/vectors.json,
//! made by tests/pusher/gen-vectors.mjs).

use super::*;

pub(crate) fn vectors() -> Value {
    serde_json::from_str(include_str!("../../../tests/pusher/vectors.json")).unwrap()
}

pub(crate) fn app() -> App {
    let v = vectors();
    App {
        id: v["app"]["appId"].as_str().unwrap().into(),
        key: v["app"]["key"].as_str().unwrap().into(),
        secret: v["app"]["secret"].as_str().unwrap().as_bytes().to_vec(),
        public: vec!["news".into(), "public-*".into()],
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// A server frame as JSON, with its `data` string parsed too.
fn decoded(frame: &str) -> (Value, Value) {
    let v = json(frame);
    let data = v.get("data").map(|d| json(d.as_str().expect("data is a JSON string"))).unwrap_or(Value::Null);
    (v, data)
}

fn sub(channel: &str, auth: Option<&str>, channel_data: Option<&str>) -> Subscribe {
    Subscribe { channel: channel.into(), auth: auth.map(Into::into), channel_data: channel_data.map(Into::into) }
}

#[test]
fn signatures_made_by_the_pusher_library_are_accepted() {
    let app = app();
    for v in vectors()["auth"].as_array().unwrap() {
        let what = v["what"].as_str().unwrap();
        let socket = v["socket_id"].as_str().unwrap();
        let auth = v["auth"].as_str().unwrap();
        if v["signin"] == true {
            let user_data = v["user_data"].as_str().unwrap();
            let got = signin(&app, socket, auth, user_data).unwrap();
            assert_eq!(got.user_id, "user-9", "{what}");
            assert!(signin(&app, "1234.5679", auth, user_data).is_err(), "{what}: another socket");
            continue;
        }
        let s = sub(v["channel"].as_str().unwrap(), Some(auth), v["channel_data"].as_str());
        let grant = authorize(&app, socket, None, &s).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        match grant {
            Grant::Private => assert!(s.channel.starts_with("private-")),
            Grant::Presence(m) => assert!(m.user_id == "42" || m.user_id == "u-1", "{what}: {m:?}"),
            other => panic!("{what}: {other:?}"),
        }
        // The same signature on another socket is refused with 401.
        assert_eq!(authorize(&app, "1234.5679", None, &s).unwrap_err().status, 401, "{what}");
    }
}

#[test]
fn a_presence_user_id_is_compared_as_text_and_info_kept_as_sent() {
    let app = app();
    let v = vectors();
    let presence = &v["auth"][1];
    let s = sub("presence-room.1", presence["auth"].as_str(), presence["channel_data"].as_str());
    let Grant::Presence(m) = authorize(&app, "1234.5678", None, &s).unwrap() else { panic!() };
    assert_eq!(m.user_id, "42", "the number 42 is the user \"42\"");
    assert_eq!(m.user_info.as_deref(), Some("{\"name\":\"Ann é\"}"));
}

#[test]
fn channel_data_over_2_kib_or_of_the_wrong_shape_is_a_400() {
    let app = app();
    let signed = |data: &str| {
        let auth = format!("{}:{}", app.key, app.sign(&format!("1.2:presence-r:{data}")));
        authorize(&app, "1.2", None, &sub("presence-r", Some(&auth), Some(data)))
    };
    let big = format!("{{\"user_id\":\"u\",\"user_info\":{{\"x\":\"{}\"}}}}", "a".repeat(2040));
    assert_eq!(signed(&big).unwrap_err().status, 400);
    for bad in [
        "[]",
        "{}",
        "{\"user_id\":\"\"}",
        "{\"user_id\":true}",
        "{\"user_id\":\"u\",\"user_info\":[1]}",
        "{\"user_id\":\"u\",\"user_info\":\"me\"}",
        &format!("{{\"user_id\":\"{}\"}}", "u".repeat(129)),
        &format!("{{\"user_id\":\"u\",\"user_info\":{{\"x\":\"{}\"}}}}", "a".repeat(1020)),
    ] {
        assert_eq!(signed(bad).unwrap_err().status, 400, "{bad}");
    }
    assert!(signed(&format!("{{\"user_id\":\"{}\"}}", "u".repeat(128))).is_ok());
    assert!(signed("{\"user_id\":7,\"user_info\":null}").is_ok());
    // Unsigned and malformed: the signature is checked first (401).
    assert_eq!(authorize(&app, "1.2", None, &sub("presence-r", None, Some("[]"))).unwrap_err().status, 401);
    assert_eq!(authorize(&app, "1.2", None, &sub("presence-r", Some("x"), None)).unwrap_err().status, 400);
}

#[test]
fn a_signature_must_name_the_app_key_and_the_exact_channel() {
    let app = app();
    let sig = app.sign("1.2:private-a");
    assert_eq!(
        authorize(&app, "1.2", None, &sub("private-a", Some(&format!("app-key:{sig}")), None)),
        Ok(Grant::Private)
    );
    for auth in [format!("other-key:{sig}"), sig.clone(), format!("app-key:{}", sig.to_uppercase()), String::new()] {
        assert_eq!(
            authorize(&app, "1.2", None, &sub("private-a", Some(&auth), None)).unwrap_err().status,
            401,
            "{auth}"
        );
    }
    assert_eq!(
        authorize(&app, "1.2", None, &sub("private-b", Some(&format!("app-key:{sig}")), None)).unwrap_err().status,
        401
    );
    assert_eq!(authorize(&app, "1.2", None, &sub("private-a", None, None)).unwrap_err().status, 401);
    let enc = format!("app-key:{}", app.sign("1.2:private-encrypted-x"));
    assert_eq!(authorize(&app, "1.2", None, &sub("private-encrypted-x", Some(&enc), None)), Ok(Grant::Private));
}

#[test]
fn public_channels_are_open_only_when_a_pattern_allows_them() {
    let app = app();
    assert_eq!(authorize(&app, "1.2", None, &sub("news", None, None)), Ok(Grant::Public));
    assert_eq!(authorize(&app, "1.2", None, &sub("public-x", None, None)), Ok(Grant::Public));
    let e = authorize(&app, "1.2", None, &sub("orders", None, None)).unwrap_err();
    assert_eq!(e.status, 403);
    assert!(e.message.contains("--pusher-public"), "{}", e.message);
    let closed = App { public: vec![], ..app };
    assert_eq!(authorize(&closed, "1.2", None, &sub("news", None, None)).unwrap_err().status, 403);
}

#[test]
fn only_the_signed_in_user_may_subscribe_to_its_server_to_user_channel() {
    let app = app();
    let s = sub("#server-to-user-user-9", None, None);
    assert_eq!(authorize(&app, "1.2", Some("user-9"), &s), Ok(Grant::User));
    assert_eq!(authorize(&app, "1.2", Some("user-1"), &s).unwrap_err().status, 403);
    assert_eq!(authorize(&app, "1.2", None, &s).unwrap_err().status, 403);
    assert_eq!(authorize(&app, "1.2", Some(""), &sub("#server-to-user-", None, None)).unwrap_err().status, 400);
}

#[test]
fn signin_needs_the_signature_and_an_id() {
    let app = app();
    let sign = |data: &str| format!("app-key:{}", app.sign(&format!("1.2::user::{data}")));
    assert_eq!(signin(&app, "1.2", &sign("{\"id\":5}"), "{\"id\":5}").unwrap().user_id, "5");
    assert!(signin(&app, "1.2", &sign("{\"name\":\"x\"}"), "{\"name\":\"x\"}").unwrap_err().contains("\"id\""));
    assert!(signin(&app, "1.2", &sign("{\"id\":5}"), "{\"id\":6}").unwrap_err().contains("signature"));
    let big = format!("{{\"id\":\"{}\"}}", "x".repeat(2100));
    assert!(signin(&app, "1.2", &sign(&big), &big).unwrap_err().contains("2 KiB"));
    let (v, data) = decoded(&signin_error("no"));
    assert_eq!((v["event"].as_str(), data["code"].as_u64()), (Some("pusher:error"), Some(4009)));
}

#[test]
fn channel_kinds_follow_the_prefixes() {
    let k = |ch: &str| kind(ch).map(|k| (k.kind, k.cache));
    assert_eq!(k("orders"), Some((Kind::Public, false)));
    assert_eq!(k("cache-prices"), Some((Kind::Public, true)));
    assert_eq!(k("private-a"), Some((Kind::Private, false)));
    assert_eq!(k("private-cache-a"), Some((Kind::Private, true)));
    assert_eq!(k("private-encrypted-a"), Some((Kind::Encrypted, false)));
    assert_eq!(k("private-encrypted-cache-a"), Some((Kind::Encrypted, true)));
    assert_eq!(k("presence-room.1"), Some((Kind::Presence, false)));
    assert_eq!(k("presence-cache-room"), Some((Kind::Presence, true)));
    assert_eq!(k("#server-to-user-42"), Some((Kind::User, false)));
    assert_eq!(server_to_user("#server-to-user-42"), Some("42"));
    for bad in ["", "a b", "#other", "#server-to-user-", &"x".repeat(165)] {
        assert_eq!(kind(bad), None, "{bad:?}");
    }
}

#[test]
fn client_frames_parse_into_the_enum() {
    let f = parse(
        r#"{"event":"pusher:subscribe","data":{"auth":"k:s","channel":"presence-a","channel_data":"{\"user_id\":1}"}}"#,
    );
    assert_eq!(f, Ok(ClientFrame::Subscribe(sub("presence-a", Some("k:s"), Some("{\"user_id\":1}")))));
    // Some clients send data as a string holding the object.
    let f = parse(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"news\"}"}"#);
    assert_eq!(f, Ok(ClientFrame::Subscribe(sub("news", None, None))));
    assert_eq!(
        parse(r#"{"event":"pusher:unsubscribe","data":{"channel":"news"}}"#),
        Ok(ClientFrame::Unsubscribe { channel: "news".into() })
    );
    assert_eq!(parse(r#"{"event":"pusher:ping","data":{}}"#), Ok(ClientFrame::Ping));
    assert_eq!(parse(r#"{"event":"pusher:pong"}"#), Ok(ClientFrame::Pong));
    assert_eq!(
        parse(r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"1\"}"}}"#),
        Ok(ClientFrame::Signin { auth: "k:s".into(), user_data: "{\"id\":\"1\"}".into() })
    );
    let ev = |data: &str| {
        ClientFrame::ClientEvent(ClientEvent {
            event: "client-typing".into(),
            channel: "private-a".into(),
            data: data.into(),
        })
    };
    assert_eq!(parse(r#"{"event":"client-typing","channel":"private-a","data":{"who": 1}}"#), Ok(ev(r#"{"who": 1}"#)));
    assert_eq!(parse(r#"{"event":"client-typing","channel":"private-a","data":"hi \"x\""}"#), Ok(ev("hi \"x\"")));
}

#[test]
fn bad_client_frames_get_clear_errors() {
    assert_eq!(parse("not json"), Err(FrameError::NotJson));
    assert_eq!(parse("[1]"), Err(FrameError::NotJson));
    assert_eq!(parse(r#"{"data":{}}"#), Err(FrameError::NoEvent));
    assert_eq!(parse(r#"{"event":5}"#), Err(FrameError::NoEvent));
    assert_eq!(parse(r#"{"event":"pusher:nope"}"#), Err(FrameError::Unsupported("pusher:nope".into())));
    assert_eq!(parse(r#"{"event":"typing","channel":"private-a"}"#), Err(FrameError::Unsupported("typing".into())));
    let missing = FrameError::Field { event: "pusher:subscribe", field: "channel" };
    assert_eq!(parse(r#"{"event":"pusher:subscribe","data":{}}"#), Err(missing));
    let wrong = FrameError::Field { event: "pusher:subscribe", field: "auth" };
    assert_eq!(parse(r#"{"event":"pusher:subscribe","data":{"channel":"a","auth":1}}"#), Err(wrong));
    assert_eq!(parse(r#"{"event":"pusher:subscribe","data":{"channel":"a b"}}"#), Err(FrameError::Channel));
    assert_eq!(
        parse(r#"{"event":"pusher:subscribe","data":7}"#).unwrap_err().to_string(),
        "pusher:subscribe: \"data\" is missing or not a string"
    );
    let long = format!(r#"{{"event":"client-{}","channel":"private-a","data":1}}"#, "e".repeat(200));
    assert!(matches!(parse(&long), Err(FrameError::TooLarge(_))));
    let big = format!(r#"{{"event":"client-e","channel":"private-a","data":"{}"}}"#, "d".repeat(10 * 1024 + 1));
    assert!(matches!(parse(&big), Err(FrameError::TooLarge(_))));
    let (v, data) = decoded(&FrameError::NotJson.frame());
    assert_eq!(v["event"], "pusher:error");
    assert_eq!(data["code"], Value::Null);
    assert!(data["message"].as_str().unwrap().contains("JSON"));
}

#[test]
fn client_events_go_only_to_private_and_presence_channels_one_is_subscribed_to() {
    let ev = |ch: &str| ClientEvent { event: "client-x".into(), channel: ch.into(), data: "{}".into() };
    assert_eq!(check_client_event(&ev("private-a"), true), Ok(()));
    assert_eq!(check_client_event(&ev("presence-a"), true), Ok(()));
    assert_eq!(check_client_event(&ev("private-encrypted-a"), true), Ok(()));
    assert!(check_client_event(&ev("private-a"), false).unwrap_err().contains("subscribe"));
    assert!(check_client_event(&ev("news"), true).unwrap_err().contains("only private and presence"));
    assert!(check_client_event(&ev("#server-to-user-1"), true).is_err());
}

#[test]
fn the_client_event_rate_is_ten_per_second() {
    let mut rate = ClientEventRate::default();
    let t0 = Instant::now();
    for _ in 0..10 {
        assert!(rate.allow(t0));
    }
    assert!(!rate.allow(t0 + Duration::from_millis(999)), "the 11th within a second");
    assert!(rate.allow(t0 + Duration::from_secs(1)), "a new second");
    let (_, data) = decoded(&ClientEventRate::error_frame());
    assert_eq!(data["code"], 4301);
}

#[test]
fn opening_checks_the_key_and_the_protocol() {
    let app = app();
    assert_eq!(app_key("/app/app-key"), Some("app-key"));
    assert_eq!(app_key("/app/"), None);
    assert_eq!(app_key("/ws"), None);
    assert_eq!(check_open(&app, "app-key", "protocol=7&client=js&version=8.6.0"), Ok(()));
    assert_eq!(check_open(&app, "wrong", "protocol=7"), Err(Close::UnknownApp));
    assert_eq!(check_open(&app, "app-key", "protocol=6"), Err(Close::Protocol));
    assert_eq!(check_open(&app, "app-key", "client=js"), Err(Close::Protocol));
    let codes: Vec<u16> = [Close::UnknownApp, Close::Protocol, Close::Origin, Close::Capacity, Close::PongTimeout]
        .map(Close::code)
        .into();
    assert_eq!(codes, [4001, 4007, 4009, 4100, 4201]);
    let (v, data) = decoded(&Close::UnknownApp.frame());
    assert_eq!((v["event"].as_str(), data["code"].as_u64()), (Some("pusher:error"), Some(4001)));
    assert!(!format!("{app:?}").contains("secret-of"), "the secret is never printed");
}

#[test]
fn socket_ids_are_two_numbers() {
    assert_eq!(socket_id(123, 456), "123.456");
    assert!(valid_socket_id(&socket_id(u64::MAX, 0)));
    for bad in ["", "1", "1.", ".1", "1.2.3", "a.1", "1.-2", &format!("{}.1", "1".repeat(21))] {
        assert!(!valid_socket_id(bad), "{bad}");
    }
}

#[test]
fn server_frames_carry_data_as_a_json_string() {
    let (v, d) = decoded(&connection_established("1.2", 30));
    assert_eq!(v["event"], "pusher:connection_established");
    assert_eq!(d, json(r#"{"socket_id":"1.2","activity_timeout":30}"#));
    assert_eq!(decoded(&pong()).0["event"], "pusher:pong");
    assert_eq!(decoded(&ping()).0["event"], "pusher:ping");
    let (v, d) = decoded(&subscription_succeeded("news", None));
    assert_eq!(
        (v["event"].as_str(), v["channel"].as_str(), d),
        (Some("pusher_internal:subscription_succeeded"), Some("news"), json("{}"))
    );
    let members = [("1", Some("{\"name\":\"a\"}")), ("2", None)];
    let (_, d) = decoded(&subscription_succeeded("presence-r", Some(&members)));
    assert_eq!(d, json(r#"{"presence":{"count":2,"ids":["1","2"],"hash":{"1":{"name":"a"},"2":null}}}"#));
    let e = SubscribeError { status: 401, message: "bad".into() };
    let (v, d) = decoded(&subscription_error("private-a", &e));
    assert_eq!(v["event"], "pusher:subscription_error");
    assert_eq!(d, json(r#"{"type":"AuthError","error":"bad","status":401}"#));
    let (v, d) = decoded(&member_added("presence-r", "1", Some("{\"name\":\"a\"}")));
    assert_eq!(
        (v["event"].as_str(), d),
        (Some("pusher_internal:member_added"), json(r#"{"user_id":"1","user_info":{"name":"a"}}"#))
    );
    let (v, d) = decoded(&member_removed("presence-r", "1"));
    assert_eq!((v["event"].as_str(), d), (Some("pusher_internal:member_removed"), json(r#"{"user_id":"1"}"#)));
    assert_eq!(json(&cache_miss("cache-a")), json(r#"{"event":"pusher:cache_miss","channel":"cache-a"}"#));
    let (_, d) = decoded(&signin_success("{\"id\":\"9\"}"));
    assert_eq!(d, json(r#"{"user_data":"{\"id\":\"9\"}"}"#));
}

#[test]
fn events_carry_the_original_text_or_the_messages_json() {
    // Through the Pusher API: the text exactly as it came, spacing included.
    let original = "{ \"a\" : 1 }";
    let v = json(&event("OrderShipped", "orders", data_text(Some(original), "{\"a\":1}"), None));
    assert_eq!(v, json(r#"{"event":"OrderShipped","channel":"orders","data":"{ \"a\" : 1 }"}"#));
    // A native message: the JSON text of its data (a string stays a JSON string).
    let v = json(&event("msg", "orders", data_text(None, "\"hi\""), Some("u1")));
    assert_eq!(v, json(r#"{"event":"msg","channel":"orders","data":"\"hi\"","user_id":"u1"}"#));
    // An API event's text becomes the message's data: JSON when it is JSON, else a string.
    assert_eq!(message_data("{\"id\":7}"), "{\"id\":7}");
    assert_eq!(message_data(" 42 "), "42");
    assert_eq!(message_data("plain text"), "\"plain text\"");
    assert_eq!(message_data("{\"open\":"), "\"{\\\"open\\\":\"");
}

#[test]
fn a_webhook_body_signed_with_app_sign_is_one_the_pusher_library_accepts() {
    let v = vectors();
    let hook = &v["webhook"];
    assert_eq!(hook["library_accepts"], true, "the library checked this pair when the vectors were made");
    assert_eq!(app().sign(hook["body"].as_str().unwrap()), hook["signature"].as_str().unwrap());
}

fn pusher_frame(event: &HubEvent<'_>, id: Option<&str>) -> Option<Value> {
    let text = PusherDialect.frame(event, id);
    (!text.is_empty()).then(|| serde_json::from_str(&text).unwrap())
}

#[test]
fn a_stored_message_reaches_a_pusher_client_with_its_event_name_and_its_original_data_text() {
    let msg = |from, data, event| crate::hub::Msg { ch: "orders", seq: 3, ts: 1, from, data, key: None, event };
    let api = pusher_frame(&HubEvent::Message(msg("app", r#""plain text""#, Some(r#""Note""#))), None).unwrap();
    assert_eq!(api, json!({"event":"Note","channel":"orders","data":"plain text"}));
    let json_data = pusher_frame(&HubEvent::Message(msg("app", r#"{"id":9}"#, Some(r#""Shipped""#))), None).unwrap();
    assert_eq!(json_data["data"], r#"{"id":9}"#);
    // A native pub without an event: the default name, the data's JSON text.
    let native = pusher_frame(&HubEvent::Message(msg("alice", r#""hi""#, None)), None).unwrap();
    assert_eq!(native, json!({"event":DEFAULT_EVENT,"channel":"orders","data":r#""hi""#}));
}

#[test]
fn a_presence_subscribe_is_answered_by_its_member_list_and_a_refusal_names_the_channel() {
    let subscribed = |ch| HubEvent::Subscribed { ch, seq: 0, epoch: "e", gap: false };
    assert_eq!(pusher_frame(&subscribed("presence-r"), Some("presence-r")), None);
    let private = pusher_frame(&subscribed("private-r"), Some("private-r")).unwrap();
    assert_eq!(private["event"], "pusher_internal:subscription_succeeded");
    let members = [crate::hub::Member { user: "alice", info: Some(r#"{"name":"A"}"#) }];
    let list = pusher_frame(&HubEvent::Presence { ch: "presence-r", members: &members }, None).unwrap();
    let data: Value = serde_json::from_str(list["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"presence":{"count":1,"ids":["alice"],"hash":{"alice":{"name":"A"}}}}));
    let refused = HubEvent::Refused { code: ErrCode::TooManyMembers, msg: "full" };
    let e = pusher_frame(&refused, Some("presence-r")).unwrap();
    assert_eq!((e["event"].as_str(), e["channel"].as_str()), (Some("pusher:subscription_error"), Some("presence-r")));
    assert_eq!(serde_json::from_str::<Value>(e["data"].as_str().unwrap()).unwrap()["status"], 403);
    assert_eq!(pusher_frame(&HubEvent::Unsubscribed { ch: "private-r" }, None), None);
}
