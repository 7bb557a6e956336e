//! JetStream through its JSON API, sans-I/O: the stream's names and
//! subjects, the requests roostd sends on `$JS.API.*`, the answers it reads,
//! the message metadata in a push consumer's reply subject, and a roostd
//! message as a stream message (cluster.md).
//!
//! Pure: no socket, no clock. The cluster thread (`cluster/mod.rs`) sends
//! what these functions build and hands back what they parse.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::store::{Append, Holding};

/// The stream and subjects of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `ROOST_<name>`.
    pub stream: String,
    /// `roost.<name>.m.`: a message's subject is this and its encoded channel.
    pub messages: String,
    /// `roost.<name>.p.`: a node's presence or occupancy record, by channel.
    pub presence: String,
    /// `roost.<name>.g.`: every holding of a silent node released, by node.
    pub gone: String,
    /// `roost.<name>.h.`: a node's heartbeat (core NATS, not in the stream).
    pub heartbeats: String,
}

impl Names {
    /// `name` is a checked `--cluster-name` (a subject token).
    pub fn new(name: &str) -> Names {
        Names {
            stream: format!("ROOST_{name}"),
            messages: format!("roost.{name}.m."),
            presence: format!("roost.{name}.p."),
            gone: format!("roost.{name}.g."),
            heartbeats: format!("roost.{name}.h."),
        }
    }

    /// The subject of a channel's messages. Channel names may hold `.`,
    /// which separates subject tokens, so the name is base64url (no
    /// padding): one token of `A-Z a-z 0-9 - _`, unambiguous.
    pub fn subject(&self, ch: &str) -> String {
        format!("{}{}", self.messages, URL_SAFE_NO_PAD.encode(ch))
    }

    /// The channel of a message subject, `None` for anything else.
    pub fn channel(&self, subject: &str) -> Option<String> {
        let token = subject.strip_prefix(&self.messages)?;
        let name = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
        crate::channel::valid_name(&name).then_some(name)
    }

    /// `$JS.API.STREAM.INFO.<stream>`.
    pub fn stream_info(&self) -> String {
        format!("$JS.API.STREAM.INFO.{}", self.stream)
    }

    /// `$JS.API.STREAM.CREATE.<stream>`.
    pub fn stream_create(&self) -> String {
        format!("$JS.API.STREAM.CREATE.{}", self.stream)
    }

    /// `$JS.API.STREAM.UPDATE.<stream>`.
    pub fn stream_update(&self) -> String {
        format!("$JS.API.STREAM.UPDATE.{}", self.stream)
    }

    /// The configuration to update a stream made without the presence
    /// subjects to (by an earlier build), keeping its replicas and
    /// duplicate window; `None` when it has them.
    pub fn upgrade(&self, info: &StreamInfo) -> Option<String> {
        let has = |prefix: &str| info.subjects.iter().any(|s| *s == format!("{prefix}>"));
        if has(&self.presence) && has(&self.gone) {
            return None;
        }
        Some(self.stream_config(info.replicas, info.duplicate_window_ns / 1_000_000))
    }

    /// `$JS.API.CONSUMER.CREATE.<stream>`.
    pub fn consumer_create(&self) -> String {
        format!("$JS.API.CONSUMER.CREATE.{}", self.stream)
    }

    /// `$JS.API.CONSUMER.DELETE.<stream>.<consumer>`.
    pub fn consumer_delete(&self, consumer: &str) -> String {
        format!("$JS.API.CONSUMER.DELETE.{}.{consumer}", self.stream)
    }

    /// The stream's configuration: file storage, `replicas`, every message
    /// subject, JetStream's duplicate window = roostd's dedupe window. No
    /// age or count limit of its own: roostd's retention is per channel, and
    /// the stream must never trim tighter than it (a new node builds from it).
    pub fn stream_config(&self, replicas: u8, dedupe_window_ms: u64) -> String {
        serde_json::json!({
            "name": self.stream,
            "subjects": [format!("{}>", self.messages), format!("{}>", self.presence), format!("{}>", self.gone)],
            "retention": "limits",
            "storage": "file",
            "num_replicas": replicas,
            "discard": "old",
            "duplicate_window": dedupe_window_ms.saturating_mul(1_000_000),
            "allow_direct": false,
        })
        .to_string()
    }

    /// An ephemeral push consumer delivering the whole stream from
    /// `start_seq` in order to `deliver` (an inbox only this node listens
    /// on): ack none, flow control and idle heartbeats, so a lost message
    /// shows as a consumer-sequence gap or a missed heartbeat and the
    /// consumer is made again from the last applied sequence — an "ordered
    /// consumer" as the NATS clients build it.
    pub fn consumer_config(&self, deliver: &str, start_seq: u64, heartbeat_ms: u64) -> String {
        serde_json::json!({
            "stream_name": self.stream,
            "config": {
                "deliver_subject": deliver,
                "deliver_policy": "by_start_sequence",
                "opt_start_seq": start_seq.max(1),
                "ack_policy": "none",
                "replay_policy": "instant",
                "flow_control": true,
                "idle_heartbeat": heartbeat_ms.saturating_mul(1_000_000),
                "mem_storage": true,
                "num_replicas": 1,
                "inactive_threshold": 5u64 * 60 * 1_000_000_000,
            }
        })
        .to_string()
    }
}

/// `Nats-Msg-Id: <base64url(sub)>.<base64url(id as JSON text)>`: JetStream
/// drops a second publish with the same id within its duplicate window.
/// base64url has no `.`, so the two halves cannot be confused, and no CR or
/// LF, so no header can be injected.
pub fn msg_id(from: &str, id_json: &str) -> String {
    format!("{}.{}", URL_SAFE_NO_PAD.encode(from), URL_SAFE_NO_PAD.encode(id_json))
}

/// What JetStream answered with `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsError {
    pub code: u16,
    pub err_code: u32,
    pub description: String,
}

impl std::fmt::Display for JsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JetStream error {} ({}): {}", self.code, self.err_code, self.description)
    }
}

/// JetStream's "stream not found".
pub const STREAM_NOT_FOUND: u32 = 10059;

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct Answer<T> {
    error: Option<ErrorBody>,
    #[serde(flatten)]
    body: Option<T>,
}

fn answer<'a, T: Deserialize<'a>>(json: &'a [u8]) -> Result<T, JsError> {
    let fail = |d: String| JsError { code: 0, err_code: 0, description: d };
    let a: Answer<T> = serde_json::from_slice(json).map_err(|e| fail(format!("unreadable answer: {e}")))?;
    if let Some(e) = a.error {
        return Err(JsError { code: e.code, err_code: e.err_code, description: e.description });
    }
    a.body.ok_or_else(|| fail("an answer without its fields".into()))
}

/// The stream's identity and extent, from `STREAM.INFO` or `STREAM.CREATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream's creation time as JetStream writes it (RFC 3339).
    pub created: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// From its configuration: its subjects, replicas and duplicate window.
    pub subjects: Vec<String>,
    pub replicas: u8,
    pub duplicate_window_ns: u64,
}

impl StreamInfo {
    /// The store epoch of every node of the cluster: the stream's name and
    /// creation time, so a stream deleted and made again is another history
    /// (clients resuming with the old epoch are told `gap`), and every node
    /// derives the same text without talking to the others.
    pub fn epoch(&self, names: &Names) -> String {
        // Two FNV-1a hashes with different offsets: no cryptography is
        // needed (nobody chooses stream creation times to collide), only
        // the same text on every node and another text for another stream.
        let text = format!("{}\n{}", names.stream, self.created);
        let fnv = |mut h: u64| {
            for b in text.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            h
        };
        format!("{:016x}{:08x}", fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142) >> 32)
    }
}

pub fn parse_stream_info(json: &[u8]) -> Result<StreamInfo, JsError> {
    #[derive(Deserialize)]
    struct State {
        first_seq: u64,
        last_seq: u64,
    }
    #[derive(Deserialize, Default)]
    struct Config {
        #[serde(default)]
        subjects: Vec<String>,
        #[serde(default)]
        num_replicas: u8,
        #[serde(default)]
        duplicate_window: u64,
    }
    #[derive(Deserialize)]
    struct Info {
        created: String,
        state: State,
        #[serde(default)]
        config: Config,
    }
    let i: Info = answer(json)?;
    Ok(StreamInfo {
        created: i.created,
        first_seq: i.state.first_seq,
        last_seq: i.state.last_seq,
        subjects: i.config.subjects,
        replicas: i.config.num_replicas.max(1),
        duplicate_window_ns: i.config.duplicate_window,
    })
}

/// The consumer's name, from `CONSUMER.CREATE`.
pub fn parse_consumer_created(json: &[u8]) -> Result<String, JsError> {
    #[derive(Deserialize)]
    struct Created {
        name: String,
    }
    answer::<Created>(json).map(|c| c.name)
}

/// JetStream's PubAck: the message is in the replicated log at `seq`
/// (`duplicate`: it was already, published before with the same id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    pub seq: u64,
    pub duplicate: bool,
}

pub fn parse_pub_ack(json: &[u8]) -> Result<PubAck, JsError> {
    #[derive(Deserialize)]
    struct Ack {
        #[allow(dead_code)]
        stream: String,
        seq: u64,
        #[serde(default)]
        duplicate: bool,
    }
    answer::<Ack>(json).map(|a| PubAck { seq: a.seq, duplicate: a.duplicate })
}

/// What a push consumer's reply subject says about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub stream_seq: u64,
    pub consumer_seq: u64,
    /// JetStream's time for the message, in ms since the Unix epoch.
    pub ts_ms: u64,
    pub pending: u64,
}

/// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts ns>.<pending>`
/// or the newer form with a domain and account hash in front and a token
/// after: `$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>.<token>`.
pub fn parse_meta(reply: &str) -> Option<Meta> {
    let t: Vec<&str> = reply.strip_prefix("$JS.ACK.")?.split('.').collect();
    let at = match t.len() {
        7 => 3,
        n if n >= 9 => 5,
        _ => return None,
    };
    let n = |i: usize| t.get(at + i)?.parse::<u64>().ok();
    Some(Meta { stream_seq: n(0)?, consumer_seq: n(1)?, ts_ms: n(2)? / 1_000_000, pending: n(3)? })
}

/// A roostd message on the stream: the channel is in the subject, the rest
/// in a JSON object (`data` and `id` kept as the JSON text the publisher sent).
pub fn encode(names: &Names, a: &Append) -> (String, Vec<u8>) {
    // `data` and `id` are the publisher's JSON text, checked at the edge;
    // they go in verbatim so every node stores the same bytes.
    let text = |s: &str| serde_json::Value::from(s).to_string();
    let mut body = format!("{{\"from\":{},\"data\":{}", text(&a.from), a.data);
    if let Some(id) = &a.id {
        body.push_str(&format!(",\"id\":{id}"));
    }
    if let Some(k) = &a.key {
        body.push_str(&format!(",\"key\":{}", text(k)));
    }
    if let Some(e) = &a.event {
        body.push_str(&format!(",\"event\":{}", text(e)));
    }
    body.push('}');
    (names.subject(&a.ch), body.into_bytes())
}

/// A stream message back into the append it was, `None` when it is not
/// one roostd wrote (the applier skips it and says so in the log).
pub fn decode(names: &Names, subject: &str, payload: &[u8]) -> Option<Append> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        from: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        data: &'a RawValue,
        #[serde(borrow)]
        id: Option<&'a RawValue>,
        key: Option<String>,
        event: Option<String>,
    }
    let ch = names.channel(subject)?;
    let b: Body = serde_json::from_slice(payload).ok()?;
    Some(Append {
        ch,
        from: b.from.into_owned(),
        data: b.data.get().to_string(),
        id: b.id.map(|i| i.get().to_string()),
        key: b.key,
        event: b.event,
    })
}

/// A presence record of the stream (cluster.md): what one node holds, or
/// every holding of a silent node released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Held(Holding),
    /// Every holding of `node` released; `by` published it, and only `by`
    /// sends the webhook events it causes.
    Gone {
        node: String,
        by: String,
    },
}

/// A node's name in presence records: [`NODE_BYTES`] lowercase hex digits,
/// so a store key can end with it unambiguously.
pub fn valid_node(node: &str) -> bool {
    node.len() == crate::store::NODE_BYTES && node.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `Nats-Msg-Id` of `Gone`: every node that notices the same silence (of
/// `node`, whose last record it applied at `upto`) publishes the same id,
/// so the stream keeps one; a later silence has another `upto`.
pub fn gone_id(node: &str, upto: u64) -> String {
    format!("gone.{node}.{upto}")
}

/// A presence record as a stream message: subject and body.
pub fn encode_presence(names: &Names, p: &Presence) -> (String, Vec<u8>) {
    let text = |s: &str| serde_json::Value::from(s).to_string();
    match p {
        Presence::Held(h) => {
            let mut body = format!("{{\"node\":{},\"on\":{}", text(&h.node), h.on);
            if let Some(user) = &h.user {
                body.push_str(&format!(",\"user\":{}", text(user)));
            }
            if let Some(info) = &h.info {
                // A JSON object of at most 1 KiB, checked at subscribe.
                body.push_str(&format!(",\"info\":{info}"));
            }
            body.push('}');
            (format!("{}{}", names.presence, URL_SAFE_NO_PAD.encode(&h.ch)), body.into_bytes())
        }
        Presence::Gone { node, by } => {
            (format!("{}{node}", names.gone), format!("{{\"by\":{}}}", text(by)).into_bytes())
        }
    }
}

/// A stream message as a presence record, `None` when it is not one
/// (another subject, or not roostd's).
pub fn decode_presence(names: &Names, subject: &str, payload: &[u8]) -> Option<Presence> {
    #[derive(Deserialize)]
    struct Held<'a> {
        node: String,
        on: bool,
        user: Option<String>,
        #[serde(borrow)]
        info: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Gone {
        by: String,
    }
    if let Some(node) = subject.strip_prefix(&names.gone) {
        let g: Gone = serde_json::from_slice(payload).ok()?;
        return (valid_node(node) && valid_node(&g.by)).then(|| Presence::Gone { node: node.into(), by: g.by });
    }
    let token = subject.strip_prefix(&names.presence)?;
    let ch = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    let h: Held = serde_json::from_slice(payload).ok()?;
    let info = h.info.map(|i| i.get().to_string());
    let fits = info.as_ref().is_none_or(|i| i.starts_with('{') && i.len() <= 1024);
    let ok = crate::channel::valid_name(&ch)
        && valid_node(&h.node)
        && fits
        && h.user.as_ref().is_none_or(|u| u.len() <= 128);
    ok.then_some(Presence::Held(Holding { ch, user: h.user, node: h.node, info, on: h.on }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_name_is_one_subject_token_and_comes_back() {
        let n = Names::new("site-1");
        for ch in ["a", "room.1", "presence-x:y/z;,=@", &"w".repeat(164)] {
            let s = n.subject(ch);
            let token = s.strip_prefix("roost.site-1.m.").unwrap();
            assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{s}");
            assert_eq!(n.channel(&s).as_deref(), Some(ch));
        }
        assert_eq!(n.channel("roost.site-1.p.YQ"), None);
        assert_eq!(n.channel("roost.site-1.m.%%"), None);
        assert_eq!(n.channel(&format!("roost.site-1.m.{}", URL_SAFE_NO_PAD.encode("a b"))), None);
        assert_eq!(n.stream_info(), "$JS.API.STREAM.INFO.ROOST_site-1");
    }

    #[test]
    fn the_msg_id_cannot_be_confused_or_carry_a_header() {
        let a = msg_id("a.b", "\"c\"");
        let b = msg_id("a", "\"b.c\"");
        assert_ne!(a, b);
        let evil = msg_id("x\r\nNats-Expected-Stream: y", "1");
        assert!(!evil.contains(['\r', '\n', ' ', ':']), "{evil}");
        assert_eq!(evil.matches('.').count(), 1);
    }

    #[test]
    fn a_message_survives_the_stream_unchanged() {
        let n = Names::new("c");
        let a = Append {
            ch: "room:1".into(),
            from: "alice".into(),
            data: r#"{"t":"hi","n":[1,2.5]}"#.into(),
            id: Some(r#""m-1""#.into()),
            key: Some("k".into()),
            event: Some("client-x".into()),
        };
        let (subject, payload) = encode(&n, &a);
        assert_eq!(decode(&n, &subject, &payload), Some(a.clone()));
        let plain = Append { id: None, key: None, event: None, ..a };
        let (subject, payload) = encode(&n, &plain);
        assert_eq!(decode(&n, &subject, &payload), Some(plain));
        assert_eq!(decode(&n, &subject, b"not json"), None);
        assert_eq!(decode(&n, "other.subject", &payload), None);
    }

    #[test]
    fn jetstream_answers_are_read() {
        // Shapes captured from nats-server 2.9.10.
        let info = br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{"name":"ROOST_c"},"created":"2026-12-02T21:40:01.123456789Z","state":{"messages":3,"bytes":300,"first_seq":1,"first_ts":"2026-12-02T21:40:02Z","last_seq":3,"last_ts":"2026-12-02T21:40:03Z","consumer_count":0}}"#;
        let i = parse_stream_info(info).unwrap();
        assert_eq!((i.first_seq, i.last_seq), (1, 3));
        let n = Names::new("c");
        assert_eq!(i.epoch(&n), i.epoch(&n), "every node derives the same epoch");
        assert_eq!(i.epoch(&n).len(), 24);
        let again = StreamInfo { created: "2026-12-03T00:00:00Z".into(), ..i.clone() };
        let old = br#"{"config":{"name":"ROOST_c","subjects":["roost.c.m.>"],"num_replicas":3,"duplicate_window":120000000000},"created":"2026-12-02T21:40:01Z","state":{"first_seq":1,"last_seq":3}}"#;
        let update: serde_json::Value =
            serde_json::from_str(&n.upgrade(&parse_stream_info(old).unwrap()).unwrap()).unwrap();
        assert_eq!(update["subjects"], serde_json::json!(["roost.c.m.>", "roost.c.p.>", "roost.c.g.>"]));
        assert_eq!(
            (update["num_replicas"].as_u64(), update["duplicate_window"].as_u64()),
            (Some(3), Some(120_000_000_000))
        );
        let now: serde_json::Value = serde_json::from_str(&n.stream_config(1, 5)).unwrap();
        let current = StreamInfo { subjects: serde_json::from_value(now["subjects"].clone()).unwrap(), ..i.clone() };
        assert_eq!(n.upgrade(&current), None, "a stream with every subject is left alone");
        assert_ne!(again.epoch(&n), i.epoch(&n), "a stream made again is another history");
        let missing = br#"{"type":"io.nats.jetstream.api.v1.stream_info_response","error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        assert_eq!(parse_stream_info(missing).unwrap_err().err_code, STREAM_NOT_FOUND);
        let ack = br#"{"stream":"ROOST_c","seq":42}"#;
        assert_eq!(parse_pub_ack(ack), Ok(PubAck { seq: 42, duplicate: false }));
        let dup = br#"{"stream":"ROOST_c","seq":42,"duplicate":true}"#;
        assert!(parse_pub_ack(dup).unwrap().duplicate);
        assert!(parse_pub_ack(b"{}").is_err());
        assert!(parse_pub_ack(b"").is_err());
        let created = br#"{"type":"io.nats.jetstream.api.v1.consumer_create_response","stream_name":"ROOST_c","name":"Qx1","config":{}}"#;
        assert_eq!(parse_consumer_created(created).unwrap(), "Qx1");
    }

    #[test]
    fn the_reply_subject_gives_the_stream_sequence_and_time() {
        let m = parse_meta("$JS.ACK.ROOST_c.Qx1.1.42.7.1764711601123456789.5").unwrap();
        assert_eq!(m, Meta { stream_seq: 42, consumer_seq: 7, ts_ms: 1764711601123, pending: 5 });
        let v2 = parse_meta("$JS.ACK.hub.ACC.ROOST_c.Qx1.1.42.7.1764711601123456789.5.tok").unwrap();
        assert_eq!(v2, m);
        assert_eq!(parse_meta("$JS.ACK.a.b.c"), None);
        assert_eq!(parse_meta("_INBOX.x"), None);
        assert_eq!(parse_meta("$JS.ACK.ROOST_c.Qx1.1.x.7.1.5"), None);
    }

    #[test]
    fn the_stream_and_consumer_requests_say_what_the_spec_says() {
        let n = Names::new("c");
        let s: serde_json::Value = serde_json::from_str(&n.stream_config(3, 600_000)).unwrap();
        assert_eq!(s["subjects"][0], "roost.c.m.>");
        assert_eq!((s["storage"].as_str(), s["num_replicas"].as_u64()), (Some("file"), Some(3)));
        assert_eq!(s["duplicate_window"].as_u64(), Some(600_000_000_000));
        let c: serde_json::Value = serde_json::from_str(&n.consumer_config("_INBOX.n1", 8, 2000)).unwrap();
        assert_eq!(c["stream_name"], "ROOST_c");
        assert_eq!(
            (c["config"]["opt_start_seq"].as_u64(), c["config"]["ack_policy"].as_str()),
            (Some(8), Some("none"))
        );
        assert_eq!(c["config"]["flow_control"], true);
    }

    #[test]
    fn presence_records_survive_the_stream_and_strangers_are_refused() {
        let n = Names::new("c");
        let node = "0123456789ab".to_string();
        let held = Presence::Held(Holding {
            ch: "presence-r.1".into(),
            user: Some("al\"ice".into()),
            node: node.clone(),
            info: Some(r#"{"n":1}"#.into()),
            on: true,
        });
        let (subject, body) = encode_presence(&n, &held);
        assert!(subject.starts_with("roost.c.p."), "{subject}");
        assert_eq!(decode_presence(&n, &subject, &body), Some(held));
        let occupancy =
            Presence::Held(Holding { ch: "a".into(), user: None, node: node.clone(), info: None, on: false });
        let (subject, body) = encode_presence(&n, &occupancy);
        assert_eq!(decode_presence(&n, &subject, &body), Some(occupancy));
        let gone = Presence::Gone { node: node.clone(), by: "ba9876543210".into() };
        let (subject, body) = encode_presence(&n, &gone);
        assert_eq!(subject, "roost.c.g.0123456789ab");
        assert_eq!(decode_presence(&n, &subject, &body), Some(gone));
        assert_eq!(decode_presence(&n, "roost.c.g.n1", br#"{"by":"0123456789ab"}"#), None, "not a node name");
        let bad = br#"{"node":"0123456789ab","on":true,"info":[1]}"#;
        let good = br#"{"node":"0123456789ab","on":true,"info":{}}"#;
        let on_a = format!("roost.c.p.{}", URL_SAFE_NO_PAD.encode("a"));
        assert!(decode_presence(&n, &on_a, good).is_some());
        assert_eq!(decode_presence(&n, &on_a, bad), None, "info is a JSON object");
        assert_eq!(decode_presence(&n, "roost.c.m.YQ", &body), None);
        assert_ne!(gone_id(&node, 1), gone_id(&node, 2));
    }
}
