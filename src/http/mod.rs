//! HTTP/1.1 request heads and plain responses: the part of the protocol that
//! comes before a WebSocket, and every refusal.
//!
//! roostd parses the head itself (with `httparse`) instead of letting the
//! WebSocket library do it, so that a refusal is a proper HTTP answer with a
//! status and a JSON body (spec §3), the order of checks is the contract's,
//! and the same port can serve the HTTP API. Pure functions: bytes in,
//! decisions and bytes out.
//!
//! [`api`] is the HTTP API for the main application (spec §5), the HTTP
//! front door onto the hub.

pub mod api;

use std::fmt::Write as _;

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// Most header lines a request may have.
const MAX_HEADERS: usize = 64;

/// The parts of a request head roostd looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    /// The query string, without `?`.
    pub query: String,
    /// HTTP/1.x minor version.
    pub minor: u8,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub upgrade: Option<String>,
    pub connection: Option<String>,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    /// All `Sec-WebSocket-Protocol` values, comma-joined.
    pub ws_protocols: Option<String>,
    pub authorization: Option<String>,
    pub content_length: Option<String>,
    pub transfer_encoding: Option<String>,
    pub idempotency_key: Option<String>,
    /// Bytes the head took in the buffer; what follows is body or frames.
    pub len: usize,
}

/// Why a head could not be read: each maps to a status and an error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over the size limit, or too many lines: 431.
    TooLarge,
    /// Not HTTP/1.x, or not valid text where it must be: 400.
    Malformed,
}

impl HeadError {
    /// The answer to a head that could not be read.
    pub fn refusal(self) -> Refusal {
        match self {
            HeadError::TooLarge => Refusal::new(431, "headers_too_large"),
            HeadError::Malformed => Refusal::new(400, "bad_request"),
        }
    }
}

/// Parses a request head from the bytes received so far.
/// `Ok(None)`: not complete yet, read more.
pub fn parse_head(buf: &[u8], max_bytes: usize) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_bytes { Err(HeadError::TooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => {
            return if buf.len() > max_bytes { Err(HeadError::TooLarge) } else { Err(HeadError::Malformed) };
        }
    };
    if len > max_bytes {
        return Err(HeadError::TooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = Head {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query: query.to_string(),
        minor: req.version.unwrap_or(0),
        len,
        ..Head::default()
    };
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Err(HeadError::Malformed);
        };
        let value = value.trim();
        let slot = match h.name.to_ascii_lowercase().as_str() {
            "host" => &mut head.host,
            "origin" => &mut head.origin,
            "upgrade" => &mut head.upgrade,
            "connection" => &mut head.connection,
            "sec-websocket-key" => &mut head.ws_key,
            "sec-websocket-version" => &mut head.ws_version,
            "sec-websocket-protocol" => &mut head.ws_protocols,
            "authorization" => &mut head.authorization,
            "content-length" => &mut head.content_length,
            "transfer-encoding" => &mut head.transfer_encoding,
            "idempotency-key" => &mut head.idempotency_key,
            _ => continue,
        };
        // Repeated headers are joined as a list (RFC 9110 §5.3).
        match slot {
            Some(prev) => {
                prev.push_str(", ");
                prev.push_str(value);
            }
            None => *slot = Some(value.to_string()),
        }
    }
    // Digits only (RFC 9110 §8.6). Rust's parser takes "+5", and a length
    // that a proxy in front reads differently is a request-smuggling hole;
    // repeated lengths (joined "5, 5") are refused for the same reason.
    if head.content_length.as_deref().is_some_and(|l| l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit())) {
        return Err(HeadError::Malformed);
    }
    Ok(Some(head))
}

/// Does a comma-separated header contain `token` (case-insensitive)?
pub fn has_token(list: Option<&str>, token: &str) -> bool {
    list.is_some_and(|l| l.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// A query parameter's value, percent-decoded. `None` if absent.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_bytes(s, true)).into_owned()
}

fn percent_bytes(s: &str, plus_is_space: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// A path segment, percent-decoded (`+` stays `+`); `None` if the result
/// is not UTF-8.
pub fn percent_decode_path(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    String::from_utf8(percent_bytes(s, false)).ok()
}

/// What a valid WebSocket upgrade request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
    /// The token, from `?token=` or the `roost.token.<jwt>` subprotocol.
    pub token: Option<String>,
    /// Whether the client offered `roost.v1` (then the server selects it).
    pub roost_v1: bool,
}

/// Checks the RFC 6455 §4.2.1 requirements; `None` → 400 bad_request.
pub fn upgrade_request(head: &Head) -> Option<Upgrade> {
    let valid = head.method == "GET"
        && head.minor >= 1
        && has_token(head.upgrade.as_deref(), "websocket")
        && has_token(head.connection.as_deref(), "upgrade")
        && head.ws_version.as_deref() == Some("13");
    let key = head.ws_key.as_deref()?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    if !valid || decoded.len() != 16 {
        return None;
    }
    let mut token = query_param(&head.query, "token").filter(|t| !t.is_empty());
    let mut roost_v1 = false;
    for p in head.ws_protocols.as_deref().unwrap_or("").split(',').map(str::trim) {
        if p == "roost.v1" {
            roost_v1 = true;
        } else if let Some(t) = p.strip_prefix("roost.token.") {
            token.get_or_insert_with(|| t.to_string());
        }
    }
    Some(Upgrade { key: key.to_string(), token, roost_v1 })
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(up: &Upgrade) -> Vec<u8> {
    let mut out = String::with_capacity(160);
    out.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.push_str(&accept_key(&up.key));
    if up.roost_v1 {
        out.push_str("\r\nSec-WebSocket-Protocol: roost.v1");
    }
    out.push_str("\r\n\r\n");
    out.into_bytes()
}

/// Is a browser's `Origin` allowed (spec §6)? With no allow-list, only a
/// page served from this very scheme, host and port: `secure` is whether
/// this request came over TLS. The scheme matters: a page on
/// `http://pi.local` is not the origin of `https://pi.local`, and a Host
/// without a port means the default port of the scheme actually in use,
/// not the one the origin names.
pub fn origin_allowed(origin: &str, host: Option<&str>, secure: bool, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin));
    }
    let Some(host) = host else { return false };
    let scheme = if secure { "https" } else { "http" };
    let Some((origin_scheme, authority)) = origin.split_once("://") else { return false };
    if !origin_scheme.eq_ignore_ascii_case(scheme) || authority.is_empty() {
        return false;
    }
    let default_port = if secure { "443" } else { "80" };
    match (split_port(authority), split_port(host)) {
        (Some((oname, oport)), Some((hname, hport))) => {
            oname.eq_ignore_ascii_case(hname) && oport.unwrap_or(default_port) == hport.unwrap_or(default_port)
        }
        _ => false,
    }
}

/// `name[:port]` or `[v6][:port]` → (name, port); `None` for a port that is
/// not a number.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let (name, port) = match authority.rsplit_once(':') {
        // A bare IPv6 literal's colons are inside the brackets.
        Some((name, port)) if !port.contains(']') => (name, Some(port)),
        _ => (authority, None),
    };
    match port {
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => None,
        _ => Some((name, port.map(|p| p.trim_start_matches('0')))),
    }
}

/// Does the `Host` header name one of `allowed` (port ignored)? An empty
/// list allows any.
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(host) = host else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// A complete response with a body. `close` adds `Connection: close`.
pub fn response(status: u16, content_type: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut head = String::with_capacity(128);
    let _ = write!(
        head,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        reason(status),
        body.len()
    );
    if close {
        head.push_str("Connection: close\r\n");
    }
    // The client library is public code: pages of the main application on
    // another origin may import it as a module (which needs CORS).
    if content_type.starts_with("text/javascript") {
        head.push_str("Access-Control-Allow-Origin: *\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A refused request: the status and the `error` code of its JSON body
/// `{"error":"<code>"}`. One value from the check that refuses to the bytes
/// on the wire and the metrics label, which counts `code` as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
}

impl Refusal {
    pub const fn new(status: u16, code: &'static str) -> Refusal {
        Refusal { status, code }
    }

    pub fn body(&self) -> Vec<u8> {
        format!("{{\"error\":\"{}\"}}", self.code).into_bytes()
    }

    /// The whole answer; `close` adds `Connection: close`.
    pub fn response(&self, close: bool) -> Vec<u8> {
        response(self.status, "application/json", &self.body(), close)
    }

    /// After this refusal the next request cannot be found: a request
    /// without a length (411) left its body unread.
    pub fn ends_connection(&self) -> bool {
        self.status == 411
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws?token=abc.def.ghi HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn a_complete_upgrade() {
        let head = parse_head(UPGRADE.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!((head.method.as_str(), head.path.as_str(), head.len), ("GET", "/ws", UPGRADE.len()));
        let up = upgrade_request(&head).unwrap();
        assert_eq!(up.token.as_deref(), Some("abc.def.ghi"));
        // The RFC 6455 example.
        assert_eq!(accept_key(&up.key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let resp = String::from_utf8(switching_protocols(&up)).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 ") && !resp.contains("Protocol:"));
    }

    #[test]
    fn partial_oversize_and_malformed() {
        assert_eq!(parse_head(&UPGRADE.as_bytes()[..40], 8192), Ok(None));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse_head(big.as_bytes(), 8192), Err(HeadError::TooLarge));
        assert_eq!(parse_head(&big.as_bytes()[..8500], 8192), Err(HeadError::TooLarge));
        assert_eq!(parse_head(b"\x16\x03\x01\x00garbage\r\n\r\n", 8192), Err(HeadError::Malformed));
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 8192), Err(HeadError::Malformed));
        let many: String = (0..70).map(|i| format!("X{i}: y\r\n")).collect();
        assert_eq!(parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), 8192), Err(HeadError::TooLarge));
    }

    #[test]
    fn invalid_upgrades() {
        let variants = [
            UPGRADE.replace("GET", "POST"),
            UPGRADE.replace("HTTP/1.1", "HTTP/1.0"),
            UPGRADE.replace("Upgrade: websocket\r\n", ""),
            UPGRADE.replace("keep-alive, Upgrade", "keep-alive"),
            UPGRADE.replace("Version: 13", "Version: 8"),
            UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
        ];
        for v in &variants {
            let head = parse_head(v.as_bytes(), 8192).unwrap().unwrap();
            assert_eq!(upgrade_request(&head), None, "{v}");
        }
    }

    #[test]
    fn token_as_subprotocol() {
        let req = UPGRADE.replace("?token=abc.def.ghi", "").replace(
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Protocol: roost.v1\r\nSec-WebSocket-Protocol: roost.token.x.y.z\r\nSec-WebSocket-Version",
        );
        let up = upgrade_request(&parse_head(req.as_bytes(), 8192).unwrap().unwrap()).unwrap();
        assert_eq!((up.token.as_deref(), up.roost_v1), (Some("x.y.z"), true));
        let resp = String::from_utf8(switching_protocols(&up)).unwrap();
        assert!(resp.contains("Sec-WebSocket-Protocol: roost.v1\r\n"));
        assert!(!resp.contains("x.y.z"), "the token is never echoed");
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("a=1&token=x%2Ey&b", "token").as_deref(), Some("x.y"));
        assert_eq!(query_param("b", "b").as_deref(), Some(""));
        assert_eq!(query_param("a=1", "token"), None);
        assert_eq!(query_param("t=%", "t").as_deref(), Some("%"));
        assert_eq!(query_param("t=%4", "t").as_deref(), Some("%4"));
    }

    #[test]
    fn origins() {
        let none: &[String] = &[];
        assert!(origin_allowed("http://127.0.0.1:8080", Some("127.0.0.1:8080"), false, none));
        assert!(origin_allowed("http://pi.local", Some("pi.local:80"), false, none));
        assert!(origin_allowed("http://PI.local", Some("pi.local"), false, none));
        assert!(origin_allowed("https://pi.local", Some("pi.local"), true, none));
        assert!(origin_allowed("https://pi.local:443", Some("pi.local"), true, none));
        assert!(origin_allowed("https://[::1]:8443", Some("[::1]:8443"), true, none));
        assert!(!origin_allowed("https://pi.local", Some("pi.local:80"), true, none));
        assert!(!origin_allowed("http://evil.example", Some("127.0.0.1:8080"), false, none));
        assert!(!origin_allowed("http://127.0.0.1:8080", None, false, none));
        assert!(!origin_allowed("null", Some("127.0.0.1:8080"), false, none));
        assert!(!origin_allowed("http://127.0.0.1:x", Some("127.0.0.1:x"), false, none));
        let list = vec!["http://app.example".to_string()];
        assert!(origin_allowed("http://app.example", Some("127.0.0.1:8080"), false, &list));
        assert!(!origin_allowed("http://127.0.0.1:8080", Some("127.0.0.1:8080"), false, &list));
    }

    #[test]
    fn a_content_length_that_is_not_plain_digits_is_malformed() {
        for bad in ["+5", "-0", " 5x", "5, 5", "0x10", "5 5"] {
            let req = format!("POST /api/channels/a/messages HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(parse_head(req.as_bytes(), 8192).err(), Some(HeadError::Malformed), "{bad:?}");
        }
        let ok = parse_head(b"POST / HTTP/1.1\r\nContent-Length: 05\r\n\r\n", 8192).unwrap().unwrap();
        assert_eq!(ok.content_length.as_deref(), Some("05"));
    }

    #[test]
    fn a_page_on_plain_http_is_not_the_origin_of_the_same_host_over_tls() {
        let none: &[String] = &[];
        // The same name, and no port on either side: only the scheme differs.
        assert!(!origin_allowed("http://pi.local", Some("pi.local"), true, none));
        assert!(!origin_allowed("https://pi.local", Some("pi.local"), false, none));
        // Ports spelled out that agree with each other still need the scheme.
        assert!(!origin_allowed("http://pi.local:8443", Some("pi.local:8443"), true, none));
        assert!(origin_allowed("https://pi.local:8443", Some("pi.local:8443"), true, none));
    }

    #[test]
    fn hosts() {
        let list = vec!["pi.local".to_string(), "192.168.1.20".to_string(), "::1".to_string()];
        assert!(host_allowed(Some("pi.local:8080"), &list));
        assert!(host_allowed(Some("PI.local"), &list));
        assert!(host_allowed(Some("192.168.1.20:80"), &list));
        assert!(host_allowed(Some("[::1]:8080"), &list));
        assert!(!host_allowed(Some("evil.example:8080"), &list));
        assert!(!host_allowed(None, &list));
        assert!(host_allowed(Some("anything"), &[]));
    }

    #[test]
    fn error_bodies() {
        let r = String::from_utf8(Refusal::new(401, "token_invalid").response(true)).unwrap();
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        assert!(r.ends_with("\r\n\r\n{\"error\":\"token_invalid\"}"));
        assert!(r.contains("Content-Length: 25\r\n"));
    }
}
