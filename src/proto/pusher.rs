//! The Pusher Channels protocol, version 7 (pusher.md §2): the pure part of
//! its WebSocket door. Client frames parsed into [`ClientFrame`], every
//! server frame encoded, channel kinds, the signature and `channel_data`
//! checks of a subscribe or sign-in, socket ids, close codes and the
//! client-event rate. No sockets and no clock: the server passes the time in
//! and decides what a result means for its connection (the calls it makes
//! are listed in the module tests' order: open, frames, subscribe, events).
//!
//! Everything server→client carries `data` as a JSON *string*, as Pusher
//! does and pusher-js expects; [`event`] is where a roostd message becomes
//! one (§4: the original data text for Pusher-API events, else the JSON
//! text of the message's data).

use std::fmt;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::auth::{hex_eq, hmac_sha256_hex};
use crate::channel;
use crate::hub::{Dialect, Door, ErrCode, Event as HubEvent};

/// The protocol version spoken; clients asking for less are closed with 4007.
pub const PROTOCOL: u32 = 7;

/// Largest `channel_data` (and sign-in `user_data`) text, in bytes.
pub const MAX_CHANNEL_DATA_BYTES: usize = 2048;
/// Largest presence `user_id` (and sign-in `id`) as text, in bytes: the
/// same bound as a token's `sub` on a presence channel (spec §7).
pub const MAX_USER_ID_BYTES: usize = 128;
/// Largest presence `user_info`, as JSON text, in bytes (spec §7).
pub const MAX_USER_INFO_BYTES: usize = 1024;
/// Largest event name, in bytes (Pusher's documented limit).
pub const MAX_EVENT_NAME_BYTES: usize = 200;
/// Largest client-event data, in bytes (Pusher's 10 KB).
pub const MAX_CLIENT_EVENT_BYTES: usize = 10 * 1024;
/// Client events a connection may send per second (then `pusher:error` 4301).
pub const CLIENT_EVENTS_PER_SECOND: u32 = 10;
/// The reserved channel of one signed-in user (`sendToUser`).
pub const SERVER_TO_USER: &str = "#server-to-user-";

/// The one configured Pusher app (pusher.md §1), built by the server from
/// `Config` and the secret file.
#[derive(Clone)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: Vec<u8>,
    /// `--pusher-public` patterns: the public channels that need no signature.
    pub public: Vec<String>,
}

// The secret must never reach a log line.
impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App").field("id", &self.id).field("key", &self.key).field("public", &self.public).finish()
    }
}

impl App {
    /// `hex(HMAC-SHA256(secret, text))`: every Pusher signature, and the
    /// `X-Pusher-Signature` of a webhook body (pusher.md §4).
    pub fn sign(&self, text: &str) -> String {
        hmac_sha256_hex(&self.secret, text.as_bytes())
    }

    /// Checks an `auth` value `KEY:hex-signature` over `text`.
    fn auth_ok(&self, auth: &str, text: &str) -> bool {
        match auth.split_once(':') {
            Some((key, sig)) => key == self.key && hex_eq(sig, &self.sign(text)),
            None => false,
        }
    }
}

/// Why a Pusher socket is refused or closed: sent as `pusher:error` with the
/// code, then the close with the same code. pusher-js reads the code's
/// range: 4000–4099 never reconnect, 4100–4199 reconnect with backoff,
/// 4200–4299 reconnect at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The key in `/app/{key}` is not the app's (4001).
    UnknownApp,
    /// `protocol` absent or below 7 (4007).
    Protocol,
    /// The Origin policy refused the page (4009).
    Origin,
    /// Over a connection limit (4100): try again later.
    Capacity,
    /// No `pusher:pong` (or anything) after our ping (4201).
    PongTimeout,
}

impl Close {
    pub fn code(self) -> u16 {
        match self {
            Close::UnknownApp => 4001,
            Close::Protocol => 4007,
            Close::Origin => 4009,
            Close::Capacity => 4100,
            Close::PongTimeout => 4201,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Close::UnknownApp => "Application does not exist: check the app key",
            Close::Protocol => "Unsupported protocol version: connect with protocol=7",
            Close::Origin => "Origin not allowed: add it with --allowed-origin",
            Close::Capacity => "Over capacity: reconnect later",
            Close::PongTimeout => "Pong reply not received",
        }
    }

    /// The `pusher:error` sent just before the close.
    pub fn frame(self) -> String {
        error(Some(self.code()), self.message())
    }
}

/// The app key of a WebSocket path `/app/{key}`, or `None` for another path.
pub fn app_key(path: &str) -> Option<&str> {
    path.strip_prefix("/app/").filter(|k| !k.is_empty() && !k.contains('/'))
}

/// Checks an opened socket's key and `protocol` query parameter (§2).
/// `Ok` means: send [`connection_established`].
pub fn check_open(app: &App, key: &str, query: &str) -> Result<(), Close> {
    if key != app.key {
        return Err(Close::UnknownApp);
    }
    let version = crate::http::query_param(query, "protocol").and_then(|v| v.parse::<u32>().ok());
    match version {
        Some(v) if v >= PROTOCOL => Ok(()),
        _ => Err(Close::Protocol),
    }
}

/// A socket id, `<a>.<b>`, from two numbers the server picks (one random
/// per process and a counter keep them unique and unguessable enough: a
/// socket id is not a secret, signatures bind to it).
pub fn socket_id(a: u64, b: u64) -> String {
    format!("{a}.{b}")
}

/// Whether `s` has a socket id's shape (`\d+\.\d+`, each part at most 20
/// digits): `socket_id` in `/events` is checked with it.
pub fn valid_socket_id(s: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
    s.split_once('.').is_some_and(|(a, b)| digits(a) && digits(b))
}

// ---------------------------------------------------------------------------
// Channels

/// What a channel's name makes it (Pusher's prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No prefix: open only when a `--pusher-public` pattern matches.
    Public,
    /// `private-`: signed over `socket_id:channel`.
    Private,
    /// `private-encrypted-`: signed like `private-`; the payload is the
    /// clients' business (roostd stores and relays it as it is).
    Encrypted,
    /// `presence-`: signed over `socket_id:channel:channel_data`.
    Presence,
    /// `#server-to-user-<id>`: only connections signed in as `<id>`.
    User,
}

/// A channel's kind and whether it is a cache channel (`cache-`,
/// `private-cache-`, `private-encrypted-cache-`, `presence-cache-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelKind {
    pub kind: Kind,
    pub cache: bool,
}

/// The kind of a channel name, or `None` when it is not a valid name.
/// Names are roostd's (`channel::valid_name`, which holds every Pusher
/// name), except the reserved `#server-to-user-<id>`, which is never stored.
pub fn kind(channel: &str) -> Option<ChannelKind> {
    if let Some(user) = channel.strip_prefix(SERVER_TO_USER) {
        let ok = !user.is_empty() && user.len() <= MAX_USER_ID_BYTES && channel::valid_name(user);
        return ok.then_some(ChannelKind { kind: Kind::User, cache: false });
    }
    if !channel::valid_name(channel) {
        return None;
    }
    let (kind, rest) = if let Some(rest) = channel.strip_prefix("private-encrypted-") {
        (Kind::Encrypted, rest)
    } else if let Some(rest) = channel.strip_prefix("private-") {
        (Kind::Private, rest)
    } else if let Some(rest) = channel.strip_prefix("presence-") {
        (Kind::Presence, rest)
    } else {
        (Kind::Public, channel)
    };
    Some(ChannelKind { kind, cache: rest.starts_with("cache-") })
}

/// The user of a `#server-to-user-<id>` channel.
pub fn server_to_user(channel: &str) -> Option<&str> {
    channel.strip_prefix(SERVER_TO_USER)
}

// ---------------------------------------------------------------------------
// Client frames

/// One frame from a Pusher client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Subscribe(Subscribe),
    Unsubscribe {
        channel: String,
    },
    Ping,
    /// The answer to our `pusher:ping`.
    Pong,
    Signin {
        auth: String,
        user_data: String,
    },
    ClientEvent(ClientEvent),
}

/// `pusher:subscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub channel: String,
    pub auth: Option<String>,
    /// The presence `channel_data` exactly as sent: the signature covers this text.
    pub channel_data: Option<String>,
}

/// A `client-*` event from a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEvent {
    pub event: String,
    pub channel: String,
    /// The data as the other subscribers receive it (a string is passed on
    /// as its content, anything else as its JSON text).
    pub data: String,
}

/// A frame that could not be understood; answered with [`FrameError::frame`]
/// (`pusher:error`, no code), and the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Not a JSON object.
    NotJson,
    /// No `event` string.
    NoEvent,
    /// A `pusher:` event this server does not take, or an event that is
    /// neither `pusher:` nor `client-`.
    Unsupported(String),
    /// A field is missing or of the wrong type.
    Field { event: &'static str, field: &'static str },
    /// The channel is not a valid channel name.
    Channel,
    /// A client event's name or data is over Pusher's limits.
    TooLarge(&'static str),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::NotJson => f.write_str("Invalid message: send a JSON object with an \"event\""),
            FrameError::NoEvent => f.write_str("Invalid message: \"event\" must be a string"),
            FrameError::Unsupported(e) => {
                let e: String = e.chars().take(64).collect();
                write!(f, "Unsupported event {e:?}: client events are named client-*")
            }
            FrameError::Field { event, field } => write!(f, "{event}: \"{field}\" is missing or not a string"),
            FrameError::Channel => f.write_str(
                "Invalid channel name: 1 to 164 bytes of A-Z a-z 0-9 _ - = @ , . ; : / (or #server-to-user-<id>)",
            ),
            FrameError::TooLarge(what) => write!(f, "{what}"),
        }
    }
}

impl FrameError {
    pub fn frame(&self) -> String {
        error(None, &self.to_string())
    }
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Parses one text frame from a Pusher client.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let raw: RawFrame = serde_json::from_str(text).map_err(|_| FrameError::NotJson)?;
    let event: String = raw.event.and_then(|e| serde_json::from_str(e.get()).ok()).ok_or(FrameError::NoEvent)?;
    match event.as_str() {
        "pusher:ping" => Ok(ClientFrame::Ping),
        "pusher:pong" => Ok(ClientFrame::Pong),
        "pusher:subscribe" => {
            const E: &str = "pusher:subscribe";
            let d = object(raw.data, E)?;
            let channel = channel_field(&d, E)?;
            let auth = optional(&d, "auth", E)?;
            let channel_data = optional(&d, "channel_data", E)?;
            Ok(ClientFrame::Subscribe(Subscribe { channel, auth, channel_data }))
        }
        "pusher:unsubscribe" => {
            let d = object(raw.data, "pusher:unsubscribe")?;
            Ok(ClientFrame::Unsubscribe { channel: channel_field(&d, "pusher:unsubscribe")? })
        }
        "pusher:signin" => {
            const E: &str = "pusher:signin";
            let d = object(raw.data, E)?;
            let auth = optional(&d, "auth", E)?.ok_or(FrameError::Field { event: E, field: "auth" })?;
            let user_data = optional(&d, "user_data", E)?.ok_or(FrameError::Field { event: E, field: "user_data" })?;
            Ok(ClientFrame::Signin { auth, user_data })
        }
        e if e.starts_with("client-") => {
            if e.len() > MAX_EVENT_NAME_BYTES {
                return Err(FrameError::TooLarge("Client event name over 200 bytes"));
            }
            let channel: String = raw
                .channel
                .and_then(|c| serde_json::from_str(c.get()).ok())
                .ok_or(FrameError::Field { event: "client event", field: "channel" })?;
            if kind(&channel).is_none() {
                return Err(FrameError::Channel);
            }
            let data = match raw.data {
                None => String::new(),
                Some(d) => match serde_json::from_str::<String>(d.get()) {
                    Ok(s) => s,
                    Err(_) => d.get().to_string(),
                },
            };
            if data.len() > MAX_CLIENT_EVENT_BYTES {
                return Err(FrameError::TooLarge("Client event data over 10 KB"));
            }
            Ok(ClientFrame::ClientEvent(ClientEvent { event, channel, data }))
        }
        _ => Err(FrameError::Unsupported(event)),
    }
}

/// The `data` of a `pusher:` frame: an object, or a string holding one
/// (some clients encode it twice).
fn object(data: Option<&RawValue>, event: &'static str) -> Result<serde_json::Map<String, Value>, FrameError> {
    let bad = FrameError::Field { event, field: "data" };
    let value: Value = serde_json::from_str(data.ok_or(bad.clone())?.get()).map_err(|_| bad.clone())?;
    match value {
        Value::Object(m) => Ok(m),
        Value::String(s) => serde_json::from_str(&s).map_err(|_| bad),
        _ => Err(bad),
    }
}

fn optional(
    d: &serde_json::Map<String, Value>,
    field: &'static str,
    event: &'static str,
) -> Result<Option<String>, FrameError> {
    match d.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FrameError::Field { event, field }),
    }
}

fn channel_field(d: &serde_json::Map<String, Value>, event: &'static str) -> Result<String, FrameError> {
    let channel = optional(d, "channel", event)?.ok_or(FrameError::Field { event, field: "channel" })?;
    if kind(&channel).is_none() {
        return Err(FrameError::Channel);
    }
    Ok(channel)
}

// ---------------------------------------------------------------------------
// Subscribing and signing in

/// A presence member as `channel_data` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `user_id` as text (a number is its JSON text: `42` and `"42"` are one user).
    pub user_id: String,
    /// `user_info` as JSON object text, if given.
    pub user_info: Option<String>,
}

/// What a subscribe may go on to, once [`authorize`] said yes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A public channel matching `--pusher-public`.
    Public,
    /// A private or private-encrypted channel with a good signature.
    Private,
    /// A presence channel: join its member list as this member.
    Presence(Member),
    /// The connection's own `#server-to-user-<id>`.
    User,
}

/// A refused subscribe: sent as `pusher:subscription_error`, the socket stays open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeError {
    /// 400 bad `channel_data`, 401 bad signature, 403 not allowed.
    pub status: u16,
    pub message: String,
}

impl SubscribeError {
    fn new(status: u16, message: impl Into<String>) -> SubscribeError {
        SubscribeError { status, message: message.into() }
    }
}

/// Decides a `pusher:subscribe` on connection `socket_id`, signed in as
/// `user` (if it is). Checks in this order: the channel's kind and the
/// public patterns; the `channel_data` size (before any HMAC over it); the
/// signature; then the shape of `channel_data` (a signed but malformed one
/// is the application's mistake: 400).
pub fn authorize(app: &App, socket_id: &str, user: Option<&str>, sub: &Subscribe) -> Result<Grant, SubscribeError> {
    let ch = &sub.channel;
    let Some(k) = kind(ch) else {
        return Err(SubscribeError::new(400, FrameError::Channel.to_string()));
    };
    let signed = |text: &str| sub.auth.as_deref().is_some_and(|auth| app.auth_ok(auth, text));
    let bad_signature =
        || SubscribeError::new(401, format!("Invalid signature for {ch}: sign socket_id:channel with the app secret"));
    match k.kind {
        Kind::Public => {
            if app.public.iter().any(|p| channel::matches(p, ch)) {
                Ok(Grant::Public)
            } else {
                Err(SubscribeError::new(
                    403,
                    format!("{ch} is not public: use a private- channel, or allow it with --pusher-public"),
                ))
            }
        }
        Kind::Private | Kind::Encrypted => {
            if signed(&format!("{socket_id}:{ch}")) {
                Ok(Grant::Private)
            } else {
                Err(bad_signature())
            }
        }
        Kind::Presence => {
            let Some(data) = sub.channel_data.as_deref() else {
                return Err(SubscribeError::new(
                    400,
                    "Presence channels need channel_data {\"user_id\",\"user_info\"}",
                ));
            };
            if data.len() > MAX_CHANNEL_DATA_BYTES {
                return Err(SubscribeError::new(400, "channel_data is over 2 KiB"));
            }
            if !signed(&format!("{socket_id}:{ch}:{data}")) {
                return Err(bad_signature());
            }
            channel_data(data).map(Grant::Presence).map_err(|m| SubscribeError::new(400, m))
        }
        Kind::User => {
            if user.is_some() && user == server_to_user(ch) {
                Ok(Grant::User)
            } else {
                Err(SubscribeError::new(403, format!("Only a connection signed in as that user may subscribe to {ch}")))
            }
        }
    }
}

/// Parses presence `channel_data`: `{"user_id": string|number, "user_info"?: object}`.
pub fn channel_data(text: &str) -> Result<Member, String> {
    #[derive(Deserialize)]
    struct Data<'a> {
        user_id: Option<Value>,
        #[serde(borrow)]
        user_info: Option<&'a RawValue>,
    }
    let d: Data = serde_json::from_str(text).map_err(|_| "channel_data must be a JSON object".to_string())?;
    let user_id = user_id(d.user_id.as_ref()).ok_or_else(|| {
        "channel_data.user_id must be a non-empty string or a number of at most 128 bytes".to_string()
    })?;
    let user_info = match d.user_info.map(RawValue::get) {
        None | Some("null") => None,
        Some(info) if info.starts_with('{') && info.len() <= MAX_USER_INFO_BYTES => Some(info.to_string()),
        Some(_) => return Err("channel_data.user_info must be a JSON object of at most 1 KiB".to_string()),
    };
    Ok(Member { user_id, user_info })
}

/// A user id as text: a non-empty string or a number, at most 128 bytes.
fn user_id(v: Option<&Value>) -> Option<String> {
    let text = match v? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty() && text.len() <= MAX_USER_ID_BYTES).then_some(text)
}

/// A connection's signed-in user (`pusher:signin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// `user_data.id`, as text.
    pub user_id: String,
    /// `user_data` as sent, for `pusher:signin_success`.
    pub user_data: String,
}

/// Checks a `pusher:signin`: `auth` over `socket_id::user::user_data`, and
/// `user_data` a JSON object (at most 2 KiB) with an `id`. A refusal is
/// answered with `pusher:error` code 4009 ([`signin_error`]).
pub fn signin(app: &App, socket_id: &str, auth: &str, user_data: &str) -> Result<SignedIn, String> {
    if user_data.len() > MAX_CHANNEL_DATA_BYTES {
        return Err("user_data is over 2 KiB".to_string());
    }
    if !app.auth_ok(auth, &format!("{socket_id}::user::{user_data}")) {
        return Err("Invalid signature for pusher:signin: sign socket_id::user::user_data with the app secret".into());
    }
    let id = serde_json::from_str::<serde_json::Map<String, Value>>(user_data).ok().and_then(|d| user_id(d.get("id")));
    match id {
        Some(user_id) => Ok(SignedIn { user_id, user_data: user_data.to_string() }),
        None => Err("user_data must be a JSON object with an \"id\" (string or number, at most 128 bytes)".into()),
    }
}

/// Whether a client event may be relayed: `client-*` on a private, encrypted
/// or presence channel the connection is subscribed to (pusher.md §2).
/// The refusal is answered with [`error`] (no code); the rate is
/// [`ClientEventRate`]'s.
pub fn check_client_event(ev: &ClientEvent, subscribed: bool) -> Result<(), &'static str> {
    match kind(&ev.channel).map(|k| k.kind) {
        Some(Kind::Private | Kind::Encrypted | Kind::Presence) if subscribed => Ok(()),
        Some(Kind::Private | Kind::Encrypted | Kind::Presence) => {
            Err("Client event rejected: subscribe to the channel first")
        }
        _ => Err("Client event rejected: only private and presence channels take client events"),
    }
}

/// At most [`CLIENT_EVENTS_PER_SECOND`] client events per connection in
/// each one-second window; past it `pusher:error` 4301 and the event is
/// dropped (the connection stays).
#[derive(Debug, Clone, Default)]
pub struct ClientEventRate {
    window: Option<Instant>,
    used: u32,
}

impl ClientEventRate {
    pub const ERROR_CODE: u16 = 4301;

    /// Counts one event at `now`; false when it is over the rate.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.window {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window = Some(now);
                self.used = 0;
            }
        }
        self.used = self.used.saturating_add(1);
        self.used <= CLIENT_EVENTS_PER_SECOND
    }

    pub fn error_frame() -> String {
        error(Some(Self::ERROR_CODE), "Client event rejected: over 10 per second")
    }
}

// ---------------------------------------------------------------------------
// Server frames

/// A frame `{"event", "channel"?, "data"?: <data as a JSON string>}`.
fn frame(event: &str, channel: Option<&str>, data: Option<&str>) -> String {
    let mut m = serde_json::Map::new();
    m.insert("event".into(), event.into());
    if let Some(ch) = channel {
        m.insert("channel".into(), ch.into());
    }
    if let Some(d) = data {
        m.insert("data".into(), d.into());
    }
    Value::Object(m).to_string()
}

/// `pusher:connection_established`, the first frame of an accepted socket.
pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let data = json!({ "socket_id": socket_id, "activity_timeout": activity_timeout_secs });
    frame("pusher:connection_established", None, Some(&data.to_string()))
}

pub fn ping() -> String {
    frame("pusher:ping", None, Some("{}"))
}

pub fn pong() -> String {
    frame("pusher:pong", None, Some("{}"))
}

/// `pusher:error {code, message}`; `code` is `null` for errors that close nothing.
pub fn error(code: Option<u16>, message: &str) -> String {
    frame("pusher:error", None, Some(&json!({ "code": code, "message": message }).to_string()))
}

/// `pusher:error` 4009 for a refused `pusher:signin`.
pub fn signin_error(message: &str) -> String {
    error(Some(4009), message)
}

/// `pusher_internal:subscription_succeeded`; for a presence channel,
/// `members` is the whole list, `(user_id, user_info JSON text)`, in the
/// order roostd keeps it (sorted by user, spec §7).
pub fn subscription_succeeded(channel: &str, members: Option<&[(&str, Option<&str>)]>) -> String {
    let data = match members {
        None => "{}".to_string(),
        Some(members) => {
            let mut hash = serde_json::Map::new();
            for (id, info) in members {
                hash.insert((*id).to_string(), info_value(*info));
            }
            let ids: Vec<&str> = members.iter().map(|(id, _)| *id).collect();
            json!({ "presence": { "count": members.len(), "ids": ids, "hash": hash } }).to_string()
        }
    };
    frame("pusher_internal:subscription_succeeded", Some(channel), Some(&data))
}

/// A stored `user_info` text back as JSON (it was checked at subscribe).
fn info_value(info: Option<&str>) -> Value {
    info.and_then(|i| serde_json::from_str(i).ok()).unwrap_or(Value::Null)
}

/// `pusher:subscription_error {type, error, status}`.
pub fn subscription_error(channel: &str, e: &SubscribeError) -> String {
    let kind = if e.status == 400 { "BadRequest" } else { "AuthError" };
    let data = json!({ "type": kind, "error": e.message, "status": e.status });
    frame("pusher:subscription_error", Some(channel), Some(&data.to_string()))
}

pub fn member_added(channel: &str, user_id: &str, user_info: Option<&str>) -> String {
    let mut data = json!({ "user_id": user_id });
    if let Some(info) = user_info {
        data["user_info"] = info_value(Some(info));
    }
    frame("pusher_internal:member_added", Some(channel), Some(&data.to_string()))
}

pub fn member_removed(channel: &str, user_id: &str) -> String {
    frame("pusher_internal:member_removed", Some(channel), Some(&json!({ "user_id": user_id }).to_string()))
}

/// `pusher:cache_miss`: a cache channel with no event yet.
pub fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), None)
}

pub fn signin_success(user_data: &str) -> String {
    frame("pusher:signin_success", None, Some(&json!({ "user_data": user_data }).to_string()))
}

/// An event to a subscriber: `{event, channel, data}` with `data` the text
/// of [`data_text`]; `user_id` is set on client events of presence channels
/// (the sender's user, as Pusher does).
pub fn event(event: &str, channel: &str, data: &str, user_id: Option<&str>) -> String {
    let mut m = serde_json::Map::new();
    m.insert("event".into(), event.into());
    m.insert("channel".into(), channel.into());
    m.insert("data".into(), data.into());
    if let Some(u) = user_id {
        m.insert("user_id".into(), u.into());
    }
    Value::Object(m).to_string()
}

/// The `data` text a Pusher client receives for a roostd message (§4): the
/// original text of an event published through the Pusher API, unchanged;
/// else the JSON text of the message's `data`.
pub fn data_text<'a>(original: Option<&'a str>, data_json: &'a str) -> &'a str {
    original.unwrap_or(data_json)
}

/// The `data` of the roostd message an API event becomes (§4): its text
/// parsed as JSON when it is a JSON text, else kept as a string. Returned
/// as JSON text.
pub fn message_data(text: &str) -> String {
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => raw.get().to_string(),
        Err(_) => Value::String(text.to_string()).to_string(),
    }
}

// ---------------------------------------------------------------------------
// The hub's events as Pusher frames

/// The event name a Pusher client hears for a stored message that has none
/// (a native `pub` without `"event"`): bind to it, or set `"event"` on the
/// `pub` (docs/pusher.md).
pub const DEFAULT_EVENT: &str = "message";

/// The `from` of every event published through the Pusher HTTP API (§4).
pub const API_FROM: &str = "app";

/// How the hub's events reach a Pusher connection. The Pusher door passes
/// the channel as a subscribe's request `id`, so a refused `sub` becomes
/// that channel's `pusher:subscription_error`. Events Pusher has no frame
/// for (an unsubscribe's answer, an ack, the end of a state snapshot, a
/// presence channel's plain `Subscribed`, whose answer is the member list
/// that follows) are written as nothing: the door sends no empty frame.
pub struct PusherDialect;

/// The Pusher front door, as its connections join the hub.
pub static PUSHER: Door = Door::new(&PUSHER_DIALECT);
static PUSHER_DIALECT: &dyn Dialect = &PusherDialect;

impl Dialect for PusherDialect {
    fn name(&self) -> &'static str {
        "pusher"
    }

    fn write(&self, out: &mut String, event: &HubEvent<'_>, id: Option<&str>) {
        match *event {
            HubEvent::Subscribed { ch, .. } => {
                if kind(ch).is_none_or(|k| k.kind != Kind::Presence) {
                    out.push_str(&subscription_succeeded(ch, None));
                }
            }
            HubEvent::Presence { ch, members } => {
                let list: Vec<(&str, Option<&str>)> = members.iter().map(|m| (m.user, m.info)).collect();
                out.push_str(&subscription_succeeded(ch, Some(&list)));
            }
            HubEvent::Refused { code, msg } => match id {
                Some(ch) => {
                    let status = match code {
                        ErrCode::Forbidden | ErrCode::TooManySubscriptions | ErrCode::TooManyMembers => 403,
                        ErrCode::RateLimited => 429,
                        ErrCode::Unavailable => 503,
                        _ => 400,
                    };
                    out.push_str(&subscription_error(ch, &SubscribeError::new(status, msg)));
                }
                None => out.push_str(&error(None, msg)),
            },
            HubEvent::Message(ref m) => {
                let name: Option<String> = m.event.and_then(|e| serde_json::from_str(e).ok());
                let data = message_text(m.from, m.data);
                out.push_str(&self::event(name.as_deref().unwrap_or(DEFAULT_EVENT), m.ch, &data, None));
            }
            HubEvent::Joined { ch, member } => out.push_str(&member_added(ch, member.user, member.info)),
            HubEvent::Left { ch, user } => out.push_str(&member_removed(ch, user)),
            HubEvent::Unsubscribed { .. }
            | HubEvent::Acked { .. }
            | HubEvent::History { .. }
            | HubEvent::StateEnd { .. } => {}
        }
    }
}

/// The `data` text a Pusher client receives for a stored message (§4): an
/// event of the Pusher API whose data was not JSON was stored as a JSON
/// string and goes back as that string's content (its original text); any
/// other message as the JSON text of its data.
pub fn message_text<'a>(from: &str, data: &'a str) -> std::borrow::Cow<'a, str> {
    if from == API_FROM && data.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(data) {
            return s.into();
        }
    }
    data.into()
}

#[cfg(test)]
pub(crate) mod tests;
