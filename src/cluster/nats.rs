//! The NATS client protocol, sans-I/O: bytes from the server become
//! [`ServerOp`]s, and the client's operations are encoded into a `Vec<u8>`.
//!
//! The protocol is text, line based and documented
//! (<https://docs.nats.io/reference/reference-protocols/nats-protocol>); the
//! part a client needs is nine operations, so roostd speaks it itself rather
//! than pull in an async client (see ARCHITECTURE.md, Decisions). Nothing
//! here reads a socket or the clock, so every case is tested with captured
//! byte strings, and no input can make it panic or buffer without bound: a
//! control line is at most [`MAX_CONTROL_LINE`] bytes and a payload at most
//! the `max_payload` given to [`Parser::new`] (then the connection is
//! dropped and made again).

use std::fmt;

/// The longest control line accepted (nats-server's own default is 4 KiB).
pub const MAX_CONTROL_LINE: usize = 4096;

/// One operation from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    /// The server's `INFO` JSON, as sent.
    Info(String),
    Msg(Msg),
    Ping,
    Pong,
    Ok,
    /// `-ERR 'text'`: the text without its quotes.
    Err(String),
}

/// A `MSG` or an `HMSG`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Msg {
    pub subject: String,
    pub sid: u64,
    pub reply: Option<String>,
    /// `Some` for an `HMSG`.
    pub headers: Option<Headers>,
    pub payload: Vec<u8>,
}

/// A header block: `NATS/1.0[ code[ description]]` and its fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Headers {
    /// The status of a server-made message: 100 (idle heartbeat, flow
    /// control), 404, 408, 409, 503 (no responders).
    pub status: Option<u16>,
    pub description: String,
    pub fields: Vec<(String, String)>,
}

impl Headers {
    /// The first value of field `name` (case-insensitive, as in HTTP).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The server said something that is not the protocol: the connection is
/// dropped and made again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NATS protocol error: {}", self.0)
    }
}

fn bad<T>(why: impl Into<String>) -> Result<T, ProtoError> {
    Err(ProtoError(why.into()))
}

/// Splits the server's byte stream into operations.
pub struct Parser {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (compacted on the next `push`).
    start: usize,
    max_payload: usize,
}

impl Parser {
    pub fn new(max_payload: usize) -> Parser {
        Parser { buf: Vec::new(), start: 0, max_payload }
    }

    /// Adds bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete operation, `None` when more bytes are needed.
    /// After an error the parser is unusable: make a new connection.
    pub fn next_op(&mut self) -> Result<Option<ServerOp>, ProtoError> {
        let rest = &self.buf[self.start..];
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            if rest.len() > MAX_CONTROL_LINE {
                return bad("control line too long");
            }
            return Ok(None);
        };
        if eol > MAX_CONTROL_LINE {
            return bad("control line too long");
        }
        let line = std::str::from_utf8(&rest[..eol]).or_else(|_| bad("control line is not UTF-8"))?;
        let (verb, args) = match line.find([' ', '\t']) {
            Some(i) => (&line[..i], line[i..].trim_matches([' ', '\t'])),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        let op = match verb.as_str() {
            "PING" => ServerOp::Ping,
            "PONG" => ServerOp::Pong,
            "+OK" => ServerOp::Ok,
            "-ERR" => ServerOp::Err(args.trim_matches('\'').to_string()),
            "INFO" => ServerOp::Info(args.to_string()),
            "MSG" | "HMSG" => {
                let fields: Vec<&str> = args.split([' ', '\t']).filter(|f| !f.is_empty()).collect();
                let with_headers = verb == "HMSG";
                let counts = if with_headers { 2 } else { 1 };
                if fields.len() != 2 + counts && fields.len() != 3 + counts {
                    return bad(format!("{verb} with {} fields", fields.len()));
                }
                let sid = fields[1].parse().or_else(|_| bad("sid is not a number"))?;
                let reply = (fields.len() == 3 + counts).then(|| fields[2].to_string());
                let n = fields.len();
                let total: usize = fields[n - 1].parse().or_else(|_| bad("size is not a number"))?;
                let head: usize =
                    if with_headers { fields[n - 2].parse().or_else(|_| bad("size is not a number"))? } else { 0 };
                if total > self.max_payload || head > total {
                    return bad(format!("payload of {total} bytes over the limit of {}", self.max_payload));
                }
                let body_at = eol + 2;
                if rest.len() < body_at + total + 2 {
                    return Ok(None);
                }
                if &rest[body_at + total..body_at + total + 2] != b"\r\n" {
                    return bad("payload not followed by CRLF");
                }
                let headers = if with_headers { Some(parse_headers(&rest[body_at..body_at + head])?) } else { None };
                let msg = Msg {
                    subject: fields[0].to_string(),
                    sid,
                    reply,
                    headers,
                    payload: rest[body_at + head..body_at + total].to_vec(),
                };
                self.start += body_at + total + 2;
                return Ok(Some(ServerOp::Msg(msg)));
            }
            _ => return bad(format!("unknown operation {:?}", verb.chars().take(16).collect::<String>())),
        };
        self.start += eol + 2;
        Ok(Some(op))
    }
}

fn parse_headers(block: &[u8]) -> Result<Headers, ProtoError> {
    let text = std::str::from_utf8(block).or_else(|_| bad("headers are not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let Some(status) = first.strip_prefix("NATS/1.0") else {
        return bad("headers do not start with NATS/1.0");
    };
    let status = status.trim();
    let mut h = Headers::default();
    if !status.is_empty() {
        let (code, desc) = status.split_once(' ').unwrap_or((status, ""));
        h.status = Some(code.parse().or_else(|_| bad("header status is not a number"))?);
        h.description = desc.trim().to_string();
    }
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once(':') else {
            return bad("a header line without `:`");
        };
        h.fields.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(h)
}

/// Whether `s` can be sent as a subject (or inbox): non-empty, no
/// whitespace, no control characters. A subject built from user input that
/// fails here is a bug upstream, refused rather than sent.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= 1024 && s.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// `CONNECT {json}`: `verbose` off (no `+OK` per operation), headers on.
pub fn connect(out: &mut Vec<u8>, name: &str, credentials: Option<&Credentials>) {
    let mut opts = serde_json::json!({
        "verbose": false, "pedantic": false, "tls_required": false, "name": name,
        "lang": "rust-roostd", "version": env!("CARGO_PKG_VERSION"), "protocol": 1,
        "headers": true, "no_responders": true,
    });
    match credentials {
        Some(Credentials::UserPassword(u, p)) => {
            opts["user"] = u.as_str().into();
            opts["pass"] = p.as_str().into();
        }
        Some(Credentials::Token(t)) => opts["auth_token"] = t.as_str().into(),
        None => {}
    }
    out.extend_from_slice(format!("CONNECT {opts}\r\n").as_bytes());
}

/// What `--cluster-credentials` holds: `user:password` or a token.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    UserPassword(String, String),
    Token(String),
}

impl Credentials {
    pub fn parse(text: &str) -> Option<Credentials> {
        let t = text.trim();
        if t.is_empty() || t.contains(['\n', '\r']) {
            return None;
        }
        Some(match t.split_once(':') {
            Some((u, p)) => Credentials::UserPassword(u.to_string(), p.to_string()),
            None => Credentials::Token(t.to_string()),
        })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// `PUB` or, with headers, `HPUB`. Header names and values must not hold
/// CR, LF or (names) `:`; the caller builds them from checked parts.
pub fn publish(out: &mut Vec<u8>, subject: &str, reply: Option<&str>, headers: &[(&str, &str)], payload: &[u8]) {
    debug_assert!(valid_subject(subject));
    let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
    if headers.is_empty() {
        out.extend_from_slice(format!("PUB {subject}{reply} {}\r\n", payload.len()).as_bytes());
    } else {
        let mut block = String::from("NATS/1.0\r\n");
        for (k, v) in headers {
            debug_assert!(!k.contains([':', '\r', '\n']) && !v.contains(['\r', '\n']));
            block.push_str(&format!("{k}: {v}\r\n"));
        }
        block.push_str("\r\n");
        let total = block.len() + payload.len();
        out.extend_from_slice(format!("HPUB {subject}{reply} {} {total}\r\n", block.len()).as_bytes());
        out.extend_from_slice(block.as_bytes());
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

pub fn subscribe(out: &mut Vec<u8>, subject: &str, sid: u64) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

pub fn unsubscribe(out: &mut Vec<u8>, sid: u64) {
    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
}

pub fn ping(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PING\r\n");
}

pub fn pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PONG\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(bytes: &[u8]) -> Vec<ServerOp> {
        let mut p = Parser::new(1 << 20);
        p.push(bytes);
        let mut out = Vec::new();
        while let Some(op) = p.next_op().unwrap() {
            out.push(op);
        }
        out
    }

    #[test]
    fn a_captured_session_is_split_into_operations() {
        // Captured from nats-server 2.9.10 (INFO shortened).
        let got = ops(b"INFO {\"server_id\":\"NB\",\"version\":\"2.9.10\",\"headers\":true,\"max_payload\":1048576,\"jetstream\":true} \r\nPING\r\n+OK\r\nMSG roost.a.m.x 1 $JS.ACK.ROOST_a.c.1.7.7.1700000000000000000.0 5\r\nhello\r\nPONG\r\n-ERR 'Unknown Protocol Operation'\r\n");
        assert_eq!(got.len(), 6);
        assert!(matches!(&got[0], ServerOp::Info(j) if j.contains("\"max_payload\":1048576")));
        assert_eq!(got[1], ServerOp::Ping);
        assert_eq!(got[2], ServerOp::Ok);
        let ServerOp::Msg(m) = &got[3] else { panic!("{:?}", got[3]) };
        assert_eq!((m.subject.as_str(), m.sid, m.payload.as_slice()), ("roost.a.m.x", 1, &b"hello"[..]));
        assert_eq!(m.reply.as_deref(), Some("$JS.ACK.ROOST_a.c.1.7.7.1700000000000000000.0"));
        assert_eq!(got[4], ServerOp::Pong);
        assert_eq!(got[5], ServerOp::Err("Unknown Protocol Operation".into()));
    }

    #[test]
    fn a_heartbeat_and_a_message_with_headers_are_read() {
        let got = ops(b"HMSG _INBOX.r 2 31 31\r\nNATS/1.0 100 Idle Heartbeat\r\n\r\n\r\nHMSG _INBOX.r 2 r.1 32 37\r\nNATS/1.0\r\nNats-Msg-Id: YQ.MQ\r\n\r\nhello\r\n");
        let ServerOp::Msg(hb) = &got[0] else { panic!() };
        let h = hb.headers.as_ref().unwrap();
        assert_eq!((h.status, h.description.as_str()), (Some(100), "Idle Heartbeat"));
        assert!(hb.payload.is_empty());
        let ServerOp::Msg(m) = &got[1] else { panic!() };
        assert_eq!(m.headers.as_ref().unwrap().get("nats-msg-id"), Some("YQ.MQ"));
        assert_eq!(m.headers.as_ref().unwrap().status, None);
        assert_eq!(m.payload, b"hello");
    }

    #[test]
    fn operations_split_anywhere_are_joined() {
        let all: &[u8] = b"MSG a 1 3\r\nabc\r\nHMSG b 2 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n";
        let whole = ops(all);
        for cut in 0..all.len() {
            let mut p = Parser::new(1 << 20);
            let mut got = Vec::new();
            p.push(&all[..cut]);
            while let Some(op) = p.next_op().unwrap() {
                got.push(op);
            }
            p.push(&all[cut..]);
            while let Some(op) = p.next_op().unwrap() {
                got.push(op);
            }
            assert_eq!(got, whole, "cut at {cut}");
        }
        assert_eq!(whole.len(), 3);
    }

    #[test]
    fn bad_input_is_an_error_never_a_panic_or_a_big_buffer() {
        for bad in [
            &b"MSG a x 3\r\nabc\r\n"[..],
            b"MSG a 1 3\r\nabcd\r\n",
            b"MSG a 1 99999999999\r\n",
            b"MSG a 1 2000000\r\n",
            b"HMSG a 1 9 3\r\n",
            b"HMSG a 1 5 7\r\nHTTP/\r\n\r\n",
            b"MSG\r\n",
            b"HELLO\r\n",
            b"\xff\xfe\r\n",
        ] {
            let mut p = Parser::new(1 << 20);
            p.push(bad);
            assert!(p.next_op().is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut p = Parser::new(1 << 20);
        p.push(&vec![b'A'; MAX_CONTROL_LINE + 1]);
        assert!(p.next_op().is_err(), "a line without an end is bounded");
        // A cheap fuzz: every prefix and every byte flip of a session.
        let base: &[u8] = b"INFO {}\r\nHMSG a 1 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\nMSG b 2 1\r\nx\r\n";
        for i in 0..base.len() {
            for flip in [0u8, b' ', b'\r', b'\n', b'9', 0xff] {
                let mut v = base.to_vec();
                v[i] = flip;
                let mut p = Parser::new(64);
                p.push(&v);
                while let Ok(Some(_)) = p.next_op() {}
            }
        }
    }

    #[test]
    fn client_operations_are_encoded_as_the_protocol_says() {
        let mut out = Vec::new();
        publish(&mut out, "roost.a.m.eA", Some("_INBOX.1"), &[], b"{}");
        publish(&mut out, "s", None, &[("Nats-Msg-Id", "YQ.MQ")], b"hi");
        subscribe(&mut out, "_INBOX.x", 7);
        unsubscribe(&mut out, 7);
        ping(&mut out);
        pong(&mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "PUB roost.a.m.eA _INBOX.1 2\r\n{}\r\nHPUB s 32 34\r\nNATS/1.0\r\nNats-Msg-Id: YQ.MQ\r\n\r\nhi\r\nSUB _INBOX.x 7\r\nUNSUB 7\r\nPING\r\nPONG\r\n"
        );
        // What we send, the server's framing reads back the same way.
        let hpub = b"HMSG s 1 32 34\r\nNATS/1.0\r\nNats-Msg-Id: YQ.MQ\r\n\r\nhi\r\n";
        let ServerOp::Msg(m) = &ops(hpub)[0] else { panic!() };
        assert_eq!((m.headers.as_ref().unwrap().get("Nats-Msg-Id"), m.payload.as_slice()), (Some("YQ.MQ"), &b"hi"[..]));
    }

    #[test]
    fn connect_carries_the_credentials_and_asks_for_headers() {
        let mut out = Vec::new();
        connect(&mut out, "roostd n1", Credentials::parse("alice:s3cr:et\n").as_ref());
        let line = String::from_utf8(out).unwrap();
        let json: serde_json::Value = serde_json::from_str(line.strip_prefix("CONNECT ").unwrap().trim_end()).unwrap();
        assert_eq!((json["user"].as_str(), json["pass"].as_str()), (Some("alice"), Some("s3cr:et")));
        assert_eq!((json["headers"].as_bool(), json["verbose"].as_bool()), (Some(true), Some(false)));
        assert_eq!(Credentials::parse("tok"), Some(Credentials::Token("tok".into())));
        assert_eq!(Credentials::parse(" \n"), None);
        assert!(valid_subject("roost.a.m.x") && !valid_subject("a b") && !valid_subject(""));
    }
}
