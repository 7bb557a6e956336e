//! The native protocol (`/ws`, spec §4): its JSON frames parsed into the
//! hub's requests, and the hub's events written as its frames (`Roost`, the
//! dialect). Pure functions, no I/O, fuzzable.
//!
//! Parsing borrows from the frame (`RawValue`), so `data` travels from the
//! client's frame to the store and out to subscribers as the exact JSON text
//! it arrived as: it is never decoded into a tree and re-encoded. Emitting
//! writes straight into a `String`; a `msg` is encoded once per commit and
//! shared by every subscriber that receives it.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

pub use crate::channel::Seq;
use crate::channel::{valid_key, valid_name};
use crate::hub::{Dialect, Door, ErrCode, Event, Member, Msg, Page, Request, Start, MAX_EVENT_BYTES, MAX_LAST};

/// Largest `limit` a `hist` request may ask for.
pub const MAX_HIST_LIMIT: u32 = 1000;
/// `limit` of a `hist` request that gives none.
pub const DEFAULT_HIST_LIMIT: u32 = 100;
/// Longest request `id`, as JSON text. Ids key the dedupe table, and LMDB
/// keys are at most 511 bytes; with the token's `sub` the id must also pass
/// `store::dedupe_fits`, which `hub` checks.
pub const MAX_ID_BYTES: usize = 128;

/// A parsed request and the `id` to echo (its JSON text).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<'a> {
    pub id: Option<&'a str>,
    pub req: Request<'a>,
}

/// Why a frame was refused; answered with `err` and the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError<'a> {
    pub code: ErrCode,
    pub msg: &'static str,
    /// The frame's `id`, when it could be read, so the error can echo it.
    pub id: Option<&'a str>,
}

/// The fields a request may carry; others are ignored.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    ch: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    epoch: Option<&'a RawValue>,
    // `null` is valid data: without this serde reads it as "absent".
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
    #[serde(borrow)]
    last: Option<&'a RawValue>,
    #[serde(borrow)]
    state: Option<&'a RawValue>,
    #[serde(borrow)]
    key: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Parsed<'_>, WireError<'_>> {
    let bad = |msg| WireError { code: ErrCode::BadRequest, msg, id: None };
    // serde would accept a JSON array as a struct in sequence form.
    if !text.trim_start().starts_with('{') {
        return Err(bad("a frame must hold one JSON object"));
    }
    let raw: RawRequest<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(_) => return Err(bad("not a valid JSON object")),
    };
    let id = frame_id(raw.id).map_err(bad)?;
    let req = request(raw, id)?;
    Ok(Parsed { id, req })
}

/// The frame's `id` as JSON text; `Err` is the message of a bad one (which
/// the error cannot echo).
fn frame_id(v: Option<&RawValue>) -> Result<Option<&str>, &'static str> {
    let Some(v) = v else { return Ok(None) };
    let t = v.get();
    let is_string_or_number = t.starts_with('"') || t.starts_with('-') || t.as_bytes()[0].is_ascii_digit();
    if !is_string_or_number {
        return Err("id must be a string or a number");
    }
    if t.len() > MAX_ID_BYTES {
        return Err("id is longer than 128 bytes");
    }
    Ok(Some(t))
}

/// The request of a frame whose `id` was read: its errors echo the `id`.
/// The fields every op shares are checked before the op's own.
fn request<'a>(raw: RawRequest<'a>, id: Option<&'a str>) -> Result<Request<'a>, WireError<'a>> {
    let bad = |msg| WireError { code: ErrCode::BadRequest, msg, id };
    let op: &str = match raw.op.map(|v| str_of(v)) {
        None => return Err(bad("missing op")),
        Some(Some(op)) => op,
        Some(None) => return Err(bad("op must be a string")),
    };
    let ch = match raw.ch.map(str_of) {
        Some(Some(ch)) => Some(ch),
        Some(None) => return Err(bad("ch must be a string")),
        None => None,
    };
    let need_ch = || {
        let ch = ch.ok_or(bad("missing ch"))?;
        if !valid_name(ch) {
            return Err(WireError {
                code: ErrCode::BadChannel,
                msg: "channel names are 1 to 164 bytes of A-Z a-z 0-9 _ - = @ , . ; : /",
                id,
            });
        }
        Ok(ch)
    };
    let since = match raw.since.map(|v| serde_json::from_str::<Seq>(v.get())) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return Err(bad("since must be a non-negative integer")),
    };
    match op {
        "sub" => sub_request(need_ch()?, since, raw.epoch, raw.last, raw.state).map_err(bad),
        "unsub" => Ok(Request::Unsub { ch: need_ch()? }),
        "pub" => {
            let ch = need_ch()?;
            let data = raw.data.ok_or(bad("missing data"))?.get();
            let key = match raw.key.map(str_of) {
                None => None,
                Some(Some(k)) if valid_key(k) => Some(k),
                Some(_) => return Err(bad("key must be 1 to 128 bytes of A-Z a-z 0-9 _ - = @ , . ; : /")),
            };
            let event = match raw.event {
                None => None,
                Some(e) => Some(event_name(e).map_err(bad)?),
            };
            Ok(Request::Pub { ch, data, key, event })
        }
        "hist" => hist_request(need_ch()?, since, raw.limit).map_err(bad),
        "presence" => Ok(Request::Presence { ch: need_ch()? }),
        _ => Err(WireError { code: ErrCode::UnknownOp, msg: "op must be sub, unsub, pub, hist or presence", id }),
    }
}

/// A `pub`'s `event`: a string of at most 200 bytes, kept as its JSON text.
fn event_name(v: &RawValue) -> Result<&str, &'static str> {
    match serde_json::from_str::<String>(v.get()) {
        Ok(name) if !name.is_empty() && name.len() <= MAX_EVENT_BYTES => Ok(v.get()),
        _ => Err("event must be a string of 1 to 200 bytes"),
    }
}

/// A `sub` with its checked `epoch`, `last` and `state`; `Err` is the
/// message of a bad request.
fn sub_request<'a>(
    ch: &'a str,
    since: Option<Seq>,
    epoch: Option<&'a RawValue>,
    last: Option<&RawValue>,
    state: Option<&RawValue>,
) -> Result<Request<'a>, &'static str> {
    let state = match state.map(RawValue::get) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err("state must be true or false"),
    };
    if let Some(last) = last {
        let n = match serde_json::from_str::<u32>(last.get()) {
            Ok(n) if (1..=MAX_LAST).contains(&n) => n,
            _ => return Err("last must be an integer from 1 to 100"),
        };
        if since.is_some() || state {
            return Err("last goes alone: not with since or state");
        }
        return Ok(Request::Sub { ch, start: Start::Last(n), state });
    }
    let epoch = match epoch {
        None => None,
        Some(v) => match str_of(v) {
            Some(e) => Some(Cow::Borrowed(e)),
            // Escapes: decoded (an epoch is compared for equality only).
            None => match serde_json::from_str::<String>(v.get()) {
                Ok(e) => Some(Cow::Owned(e)),
                Err(_) => return Err("epoch must be a string"),
            },
        },
    };
    let start = match since {
        None => Start::Now,
        Some(s) if s > 0 && epoch.is_none() => return Err("since > 0 needs the epoch it was counted in"),
        Some(since) => Start::Since { since, epoch },
    };
    Ok(Request::Sub { ch, start, state })
}

/// A `hist` with its checked `limit`; `Err` is the message of a bad request.
fn hist_request<'a>(ch: &'a str, since: Option<Seq>, limit: Option<&RawValue>) -> Result<Request<'a>, &'static str> {
    let limit = match limit.map(|v| serde_json::from_str::<u32>(v.get())) {
        None => DEFAULT_HIST_LIMIT,
        Some(Ok(n)) if (1..=MAX_HIST_LIMIT).contains(&n) => n,
        Some(_) => return Err("limit must be an integer from 1 to 1000"),
    };
    Ok(Request::Hist { ch, since: since.unwrap_or(0), limit })
}

/// A JSON string's contents, borrowed when it has no escapes.
fn str_of(v: &RawValue) -> Option<&str> {
    let t = v.get();
    let inner = t.strip_prefix('"')?.strip_suffix('"')?;
    // Names with escapes are not valid channel names or ops anyway; refusing
    // them keeps every name borrowed from the frame.
    if inner.contains(['\\', '"']) {
        return None;
    }
    Some(inner)
}

/// Writes a JSON string literal.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn id_field(out: &mut String, id: Option<&str>) {
    if let Some(id) = id {
        out.push_str(",\"id\":");
        out.push_str(id);
    }
}

/// Appends a `msg` object to `out`.
pub fn msg_into(out: &mut String, m: &Msg<'_>) {
    out.push_str("{\"op\":\"msg\",\"ch\":");
    json_str(out, m.ch);
    let _ = write!(out, ",\"seq\":{},\"ts\":{},\"from\":", m.seq, m.ts);
    json_str(out, m.from);
    out.push_str(",\"data\":");
    out.push_str(m.data);
    if let Some(key) = m.key {
        out.push_str(",\"key\":");
        json_str(out, key);
    }
    if let Some(event) = m.event {
        out.push_str(",\"event\":");
        out.push_str(event);
    }
    out.push('}');
}

/// `{"op":"msg",...}`
pub fn msg(m: &Msg<'_>) -> String {
    let mut out = String::with_capacity(64 + m.ch.len() + m.from.len() + m.data.len());
    msg_into(&mut out, m);
    out
}

/// `{"op":"subok",...}`
pub fn subok(ch: &str, seq: Seq, epoch: &str, gap: bool, id: Option<&str>) -> String {
    let mut out = String::with_capacity(96);
    out.push_str("{\"op\":\"subok\",\"ch\":");
    json_str(&mut out, ch);
    let _ = write!(out, ",\"seq\":{seq},\"epoch\":");
    json_str(&mut out, epoch);
    if gap {
        out.push_str(",\"gap\":true");
    }
    id_field(&mut out, id);
    out.push('}');
    out
}

/// `{"op":"unsubok",...}`
pub fn unsubok(ch: &str, id: Option<&str>) -> String {
    let mut out = String::with_capacity(48);
    out.push_str("{\"op\":\"unsubok\",\"ch\":");
    json_str(&mut out, ch);
    id_field(&mut out, id);
    out.push('}');
    out
}

/// `{"op":"ack",...}`
pub fn ack(id: Option<&str>, ch: &str, seq: Seq) -> String {
    let mut out = String::with_capacity(64);
    out.push_str("{\"op\":\"ack\"");
    id_field(&mut out, id);
    out.push_str(",\"ch\":");
    json_str(&mut out, ch);
    let _ = write!(out, ",\"seq\":{seq}}}");
    out
}

/// `{"op":"err",...}`
pub fn err(code: ErrCode, msg: &str, id: Option<&str>) -> String {
    let mut out = String::with_capacity(96);
    out.push_str("{\"op\":\"err\",\"code\":\"");
    out.push_str(code.as_str());
    out.push_str("\",\"msg\":");
    json_str(&mut out, msg);
    id_field(&mut out, id);
    out.push('}');
    out
}

/// The native protocol's dialect: the hub's events as `/ws` frames (and as
/// the messages of the HTTP API's pages).
pub struct Roost;

/// The native front door, as connections join the hub with it.
pub static ROOST: Door = Door::new(&ROOST_DIALECT);
static ROOST_DIALECT: &dyn Dialect = &Roost;

impl Dialect for Roost {
    fn name(&self) -> &'static str {
        "roost"
    }

    fn write(&self, out: &mut String, event: &Event<'_>, id: Option<&str>) {
        match *event {
            Event::Subscribed { ch, seq, epoch, gap } => out.push_str(&subok(ch, seq, epoch, gap, id)),
            Event::Unsubscribed { ch } => out.push_str(&unsubok(ch, id)),
            Event::Acked { ch, seq } => out.push_str(&ack(id, ch, seq)),
            Event::Refused { code, msg } => out.push_str(&err(code, msg, id)),
            Event::Message(ref m) => msg_into(out, m),
            Event::History { ch, msgs, page } => hist_into(out, ch, msgs, page, id),
            Event::Presence { ch, members } => presence_into(out, ch, members, id),
            Event::Joined { ch, member } => {
                out.push_str("{\"op\":\"join\",\"ch\":");
                json_str(out, ch);
                member_fields(out, &member);
                out.push('}');
            }
            Event::Left { ch, user } => {
                out.push_str("{\"op\":\"leave\",\"ch\":");
                json_str(out, ch);
                out.push_str(",\"user\":");
                json_str(out, user);
                out.push('}');
            }
            Event::StateEnd { ch, seq } => {
                out.push_str("{\"op\":\"state\",\"ch\":");
                json_str(out, ch);
                let _ = write!(out, ",\"seq\":{seq}}}");
            }
        }
    }
}

/// `,"user":...,"info":{...}` (no `info` when the token has none).
fn member_fields(out: &mut String, m: &Member<'_>) {
    out.push_str(",\"user\":");
    json_str(out, m.user);
    if let Some(info) = m.info {
        out.push_str(",\"info\":");
        out.push_str(info);
    }
}

/// `{"op":"presence","ch","members":[{"user","info"}...],"count",("id")}`
fn presence_into(out: &mut String, ch: &str, members: &[Member<'_>], id: Option<&str>) {
    out.push_str("{\"op\":\"presence\",\"ch\":");
    json_str(out, ch);
    out.push_str(",\"members\":[");
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        // The member object without its leading comma.
        let at = out.len();
        member_fields(out, m);
        out.remove(at);
        out.push('}');
    }
    let _ = write!(out, "],\"count\":{}", members.len());
    id_field(out, id);
    out.push('}');
}

/// `{"op":"hist","ch","msgs":[...],"more",("gap",)"id"}`
fn hist_into(out: &mut String, ch: &str, msgs: &str, page: Page, id: Option<&str>) {
    out.push_str("{\"op\":\"hist\",\"ch\":");
    json_str(out, ch);
    out.push_str(",\"msgs\":[");
    out.push_str(msgs);
    let _ = write!(out, "],\"more\":{}", page.more);
    if page.gap {
        out.push_str(",\"gap\":true");
    }
    id_field(out, id);
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parsed(text: &str) -> Result<Parsed<'_>, (ErrCode, Option<&str>)> {
        parse(text).map_err(|e| (e.code, e.id))
    }

    #[test]
    fn requests() {
        assert_eq!(
            parsed(r#"{"op":"sub","ch":"room:1","id":7}"#),
            Ok(Parsed { id: Some("7"), req: Request::Sub { ch: "room:1", start: Start::Now, state: false } })
        );
        assert_eq!(
            parsed(r#"{"op":"sub","ch":"a","since":5,"epoch":"e1"}"#).unwrap().req,
            Request::Sub { ch: "a", start: Start::Since { since: 5, epoch: Some("e1".into()) }, state: false }
        );
        assert_eq!(
            parsed(r#" {"op":"pub","ch":"a","data":{"x": [1, 2]},"id":"p1"}"#),
            Ok(Parsed {
                id: Some("\"p1\""),
                req: Request::Pub { ch: "a", data: r#"{"x": [1, 2]}"#, key: None, event: None }
            })
        );
        assert_eq!(parsed(r#"{"op":"hist","ch":"a"}"#).unwrap().req, Request::Hist { ch: "a", since: 0, limit: 100 });
        assert_eq!(parsed(r#"{"op":"unsub","ch":"a","x":1}"#).unwrap().req, Request::Unsub { ch: "a" });
        assert_eq!(
            parsed(r#"{"op":"pub","ch":"a","data":null}"#).unwrap().req,
            Request::Pub { ch: "a", data: "null", key: None, event: None }
        );
    }

    #[test]
    fn sub_takes_last_or_state_and_pub_takes_a_key_and_an_event() {
        let req = |t| parsed(t).unwrap().req;
        assert_eq!(
            req(r#"{"op":"sub","ch":"a","last":5}"#),
            Request::Sub { ch: "a", start: Start::Last(5), state: false }
        );
        assert_eq!(
            req(r#"{"op":"sub","ch":"kv","state":true}"#),
            Request::Sub { ch: "kv", start: Start::Now, state: true }
        );
        assert_eq!(
            req(r#"{"op":"sub","ch":"kv","state":true,"since":4,"epoch":"e"}"#),
            Request::Sub { ch: "kv", start: Start::Since { since: 4, epoch: Some("e".into()) }, state: true }
        );
        assert_eq!(
            req(r#"{"op":"pub","ch":"kv","key":"temp:1","event":"App\\Reading","data":null}"#),
            Request::Pub { ch: "kv", data: "null", key: Some("temp:1"), event: Some(r#""App\\Reading""#) }
        );
        assert_eq!(req(r#"{"op":"presence","ch":"presence-r"}"#), Request::Presence { ch: "presence-r" });
        for bad in [
            r#"{"op":"sub","ch":"a","last":0}"#,
            r#"{"op":"sub","ch":"a","last":101}"#,
            r#"{"op":"sub","ch":"a","last":5,"since":0}"#,
            r#"{"op":"sub","ch":"a","last":5,"state":true}"#,
            r#"{"op":"sub","ch":"a","state":"yes"}"#,
            r#"{"op":"pub","ch":"a","data":1,"key":""}"#,
            r#"{"op":"pub","ch":"a","data":1,"key":"a b"}"#,
            r#"{"op":"pub","ch":"a","data":1,"key":7}"#,
            r#"{"op":"pub","ch":"a","data":1,"event":""}"#,
            r#"{"op":"pub","ch":"a","data":1,"event":5}"#,
        ] {
            assert_eq!(parsed(bad).err().map(|e| e.0), Some(ErrCode::BadRequest), "{bad}");
        }
        let long = format!(r#"{{"op":"pub","ch":"a","data":1,"key":"{}"}}"#, "k".repeat(129));
        assert_eq!(parsed(&long).err().map(|e| e.0), Some(ErrCode::BadRequest));
        let long = format!(r#"{{"op":"pub","ch":"a","data":1,"event":"{}"}}"#, "e".repeat(201));
        assert_eq!(parsed(&long).err().map(|e| e.0), Some(ErrCode::BadRequest));
    }

    #[test]
    fn presence_join_leave_and_state_frames_are_the_contracts() {
        let info = r#"{"name":"A"}"#;
        let members = [Member { user: "alice", info: Some(info) }, Member { user: "bob", info: None }];
        let v: Value =
            serde_json::from_str(&Roost.frame(&Event::Presence { ch: "presence-r", members: &members }, Some("3")))
                .unwrap();
        assert_eq!(
            v,
            json!({"op":"presence","ch":"presence-r","members":[{"user":"alice","info":{"name":"A"}},{"user":"bob"}],"count":2,"id":3})
        );
        let v: Value =
            serde_json::from_str(&Roost.frame(&Event::Joined { ch: "p", member: members[0] }, None)).unwrap();
        assert_eq!(v, json!({"op":"join","ch":"p","user":"alice","info":{"name":"A"}}));
        let v: Value = serde_json::from_str(&Roost.frame(&Event::Left { ch: "p", user: "bob" }, None)).unwrap();
        assert_eq!(v, json!({"op":"leave","ch":"p","user":"bob"}));
        let v: Value = serde_json::from_str(&Roost.frame(&Event::StateEnd { ch: "kv", seq: 9 }, None)).unwrap();
        assert_eq!(v, json!({"op":"state","ch":"kv","seq":9}));
        let m = Msg { ch: "kv", seq: 1, ts: 2, from: "d", data: "null", key: Some("t"), event: Some(r#""E\\x""#) };
        let v: Value = serde_json::from_str(&msg(&m)).unwrap();
        assert_eq!(v, json!({"op":"msg","ch":"kv","seq":1,"ts":2,"from":"d","data":null,"key":"t","event":"E\\x"}));
    }

    #[test]
    fn refusals_keep_the_id_when_they_can() {
        use ErrCode::*;
        let cases: &[(&str, ErrCode, Option<&str>)] = &[
            ("not json", BadRequest, None),
            ("[1,2]", BadRequest, None),
            ("\"str\"", BadRequest, None),
            (r#"{"op":"sub","ch":"a","id":{"x":1}}"#, BadRequest, None),
            (r#"{"op":"zap","id":1}"#, UnknownOp, Some("1")),
            (r#"{"id":1}"#, BadRequest, Some("1")),
            (r#"{"op":5,"id":1}"#, BadRequest, Some("1")),
            (r#"{"op":"sub","id":1}"#, BadRequest, Some("1")),
            (r#"{"op":"sub","ch":"bad channel","id":"x"}"#, BadChannel, Some("\"x\"")),
            (r#"{"op":"sub","ch":"","id":1}"#, BadChannel, Some("1")),
            (r#"{"op":"sub","ch":"a","since":3,"id":1}"#, BadRequest, Some("1")),
            (r#"{"op":"sub","ch":"a","since":-3,"epoch":"e"}"#, BadRequest, None),
            (r#"{"op":"pub","ch":"a","id":1}"#, BadRequest, Some("1")),
            (r#"{"op":"hist","ch":"a","limit":1001}"#, BadRequest, None),
            (r#"{"op":"hist","ch":"a","limit":0}"#, BadRequest, None),
            (r#"{"op":"sub","ch":"a","ch":"b"}"#, BadRequest, None),
        ];
        for (text, code, id) in cases {
            assert_eq!(parsed(text).err(), Some((*code, *id)), "{text}");
        }
    }

    #[test]
    fn emitted_json_parses_back() {
        let m = Msg {
            ch: "room:1",
            seq: 42,
            ts: 1764100000123,
            from: "al\"ice\n",
            data: r#"{"t":"hi"}"#,
            key: None,
            event: None,
        };
        let v: Value = serde_json::from_str(&msg(&m)).unwrap();
        assert_eq!(
            v,
            json!({"op":"msg","ch":"room:1","seq":42,"ts":1764100000123u64,"from":"al\"ice\n","data":{"t":"hi"}})
        );
        let v: Value = serde_json::from_str(&subok("a", 3, "ep", true, Some("\"x\""))).unwrap();
        assert_eq!(v, json!({"op":"subok","ch":"a","seq":3,"epoch":"ep","gap":true,"id":"x"}));
        let v: Value = serde_json::from_str(&subok("a", 0, "ep", false, None)).unwrap();
        assert_eq!(v, json!({"op":"subok","ch":"a","seq":0,"epoch":"ep"}));
        let v: Value = serde_json::from_str(&ack(Some("7"), "a", 9)).unwrap();
        assert_eq!(v, json!({"op":"ack","id":7,"ch":"a","seq":9}));
        let v: Value = serde_json::from_str(&err(ErrCode::Forbidden, "no \u{1} way", None)).unwrap();
        assert_eq!(v, json!({"op":"err","code":"forbidden","msg":"no \u{1} way"}));
    }

    /// Fixed-seed random bytes: the parser never panics.
    #[test]
    fn parser_survives_noise() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let alphabet = br#"{}[]":,0123456789abcdefghijklmnopqrstuvwxyz\ -.opchsubpubhistsincelimitiddataepoch"#;
        for _ in 0..20_000 {
            let len = (x % 64) as usize;
            let mut s = String::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize] as char);
            }
            let _ = parse(&s);
            let _ = parse(&format!("{{\"op\":\"pub\",\"ch\":\"a\",\"data\":{s}}}"));
        }
    }
}
