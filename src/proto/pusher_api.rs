//! The Pusher HTTP API (pusher.md §3), its pure part: routing `/apps/{id}/…`,
//! checking a request's signature exactly as Pusher's server libraries make
//! it, and parsing `/events` and `/batch_events` bodies under Pusher's
//! documented limits into plain structs; plus the JSON answers. The server
//! reads the body, passes the time in, and does what the route asks.
//!
//! Apart from `pusher.rs` because it is a different door (an HTTP request,
//! not a socket's frames) with its own error type (a status and a message),
//! and the two share only [`App`] and channel kinds.
//!
//! The signature (pusher-http-node `requests.js`, pusher-http-php
//! `build_auth_query_params`, pusher-http-python `sign_request`):
//! `hex(HMAC-SHA256(secret, METHOD + "\n" + path + "\n" + query))` where
//! `query` is every parameter but `auth_signature`, keys lower-cased, sorted
//! by key, written `k=v` with `&`, values as decoded (the libraries sign the
//! values they put in the URL; percent escapes are decoded, `+` stays `+`,
//! as no value Pusher uses holds a space).

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::pusher::{kind, valid_socket_id, App, Kind, MAX_EVENT_NAME_BYTES};
use crate::auth::{hex_eq, md5_hex};
use crate::http::percent_decode_path;

/// Largest request body on `/apps/` (a batch of 10 events of 10 KB, with room).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest event `data`, in bytes (Pusher's default 10 KB).
pub const MAX_DATA_BYTES: usize = 10 * 1024;
/// Channels one event may name.
pub const MAX_CHANNELS: usize = 100;
/// Events in one `/batch_events`.
pub const MAX_BATCH: usize = 10;
/// How far `auth_timestamp` may be from the server's clock, in seconds.
pub const TIMESTAMP_WINDOW_SECS: u64 = 600;
/// Query parameters a request may carry (Pusher's use at most 7).
const MAX_PARAMS: usize = 32;

/// A refused API request: its status, a stable code (for metrics and
/// scripts) and a message saying what to change. Body: `{"error","message"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad_request", message)
    }

    fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(401, "unauthorized", message)
    }

    pub fn body(&self) -> Vec<u8> {
        json!({ "error": self.code, "message": self.message }).to_string().into_bytes()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

// ---------------------------------------------------------------------------
// Routing

/// What a request under `/apps/{id}/` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `POST /events`.
    Events,
    /// `POST /batch_events`.
    BatchEvents,
    /// `GET /channels`.
    Channels,
    /// `GET /channels/{channel}`.
    Channel(String),
    /// `GET /channels/{channel}/users`.
    Users(String),
    /// `POST /users/{user_id}/terminate_connections`.
    Terminate(String),
}

/// Routes `method path` (the raw path, without its query). A path ending in
/// `/users` is always the users route: channel names may hold `/`.
pub fn route(app: &App, method: &str, path: &str) -> Result<Route, ApiError> {
    let not_found = || ApiError::new(404, "not_found", "No such endpoint: the paths are /apps/{app_id}/events, …");
    let rest = path.strip_prefix("/apps/").ok_or_else(not_found)?;
    let (id, rest) = rest.split_once('/').ok_or_else(not_found)?;
    if id != app.id {
        return Err(ApiError::new(404, "unknown_app", "Unknown app id: check PUSHER_APP_ID"));
    }
    let (want, route) = if rest == "events" {
        ("POST", Route::Events)
    } else if rest == "batch_events" {
        ("POST", Route::BatchEvents)
    } else if rest == "channels" {
        ("GET", Route::Channels)
    } else if let Some(ch) = rest.strip_prefix("channels/") {
        match ch.strip_suffix("/users") {
            Some(ch) => ("GET", Route::Users(channel_segment(ch)?)),
            None => ("GET", Route::Channel(channel_segment(ch)?)),
        }
    } else if let Some(user) = rest.strip_prefix("users/").and_then(|r| r.strip_suffix("/terminate_connections")) {
        let user = percent_decode_path(user).filter(|u| !u.is_empty() && u.len() <= 128 && !u.contains('/'));
        ("POST", Route::Terminate(user.ok_or_else(|| ApiError::bad("The user id is 1 to 128 bytes"))?))
    } else {
        return Err(not_found());
    };
    if method != want {
        return Err(ApiError::new(405, "method_not_allowed", format!("Use {want} for this path")));
    }
    Ok(route)
}

fn channel_segment(raw: &str) -> Result<String, ApiError> {
    match percent_decode_path(raw) {
        Some(ch) if kind(&ch).is_some() => Ok(ch),
        _ => Err(ApiError::bad("Invalid channel name in the path")),
    }
}

// ---------------------------------------------------------------------------
// The signature

/// The parameters of a verified request, `auth_*` and `body_md5` left out,
/// keys lower-cased: what the route reads (`filter_by_prefix`, `info`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Verifies a signed request: `auth_key` is the app's, `auth_version` 1.0,
/// `auth_signature` good over `method`, the raw `path` and the other
/// parameters, `auth_timestamp` within ±600 s of `now_unix`, and
/// `body_md5` the MD5 of `body` whenever there is a body (or the parameter).
/// All of these are 401: the caller signs wrong, or its clock is off.
pub fn verify(
    app: &App,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    now_unix: u64,
) -> Result<Params, ApiError> {
    verify_query(app, method, path, query, Some(body), now_unix)
}

/// [`verify`] on a request head, before its body is read: everything but
/// `body_md5`'s match, which the signature covers. So a body (up to
/// [`MAX_BODY_BYTES`]) is buffered only for a request signed with the app
/// secret; [`verify`] on the whole request follows.
pub fn verify_head(app: &App, method: &str, path: &str, query: &str, now_unix: u64) -> Result<(), ApiError> {
    verify_query(app, method, path, query, None, now_unix).map(drop)
}

fn verify_query(
    app: &App,
    method: &str,
    path: &str,
    query: &str,
    body: Option<&[u8]>,
    now_unix: u64,
) -> Result<Params, ApiError> {
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == MAX_PARAMS {
            return Err(ApiError::bad("Too many query parameters"));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode_path(k), percent_decode_path(v)) else {
            return Err(ApiError::bad("The query is not UTF-8"));
        };
        pairs.push((k.to_ascii_lowercase(), v));
    }
    pairs.sort();
    if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(ApiError::bad("A query parameter is given twice"));
    }
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let signature = get("auth_signature").ok_or_else(|| ApiError::unauthorized("auth_signature is missing"))?;
    if get("auth_key") != Some(app.key.as_str()) {
        return Err(ApiError::unauthorized("auth_key is not this app's key"));
    }
    if get("auth_version") != Some("1.0") {
        return Err(ApiError::unauthorized("auth_version must be 1.0"));
    }
    let signed: Vec<String> =
        pairs.iter().filter(|(k, _)| k != "auth_signature").map(|(k, v)| format!("{k}={v}")).collect();
    let text = format!("{}\n{}\n{}", method.to_ascii_uppercase(), path, signed.join("&"));
    if !hex_eq(signature, &app.sign(&text)) {
        return Err(ApiError::unauthorized("Invalid signature: sign with the app secret as the Pusher libraries do"));
    }
    let ts: u64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ApiError::unauthorized("auth_timestamp must be Unix seconds"))?;
    if ts.abs_diff(now_unix) > TIMESTAMP_WINDOW_SECS {
        return Err(ApiError::unauthorized(format!(
            "auth_timestamp is {}s off the server's clock (at most 600s): check the clocks",
            ts.abs_diff(now_unix)
        )));
    }
    match (get("body_md5"), body) {
        (_, None) => {}
        (Some(md5), Some(body)) if hex_eq(&md5.to_ascii_lowercase(), &md5_hex(body)) => {}
        (None, Some([])) => {}
        _ => return Err(ApiError::unauthorized("body_md5 does not match the body")),
    }
    pairs.retain(|(k, _)| !k.starts_with("auth_") && k != "body_md5");
    Ok(Params(pairs))
}

// ---------------------------------------------------------------------------
// Events

/// One event to publish, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    /// The data text as sent (a string's content; another JSON value's
    /// text): stored so Pusher clients receive it unchanged (§4), and
    /// parsed with `pusher::message_data` for roostd's message.
    pub data: String,
    /// 1 to 100 distinct channels, in the order given.
    pub channels: Vec<String>,
    /// A connection to leave out of the delivery (Laravel's `toOthers()`).
    pub socket_id: Option<String>,
    pub info: Info,
}

/// The `info` an event asks to have back, per channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    pub subscription_count: bool,
    pub user_count: bool,
}

impl Info {
    pub fn any(self) -> bool {
        self.subscription_count || self.user_count
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    name: Option<Value>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    channels: Option<Value>,
    channel: Option<Value>,
    socket_id: Option<Value>,
    info: Option<Value>,
}

/// Parses a `POST /events` body: `{name, data, channels | channel, socket_id?, info?}`.
pub fn events(body: &[u8]) -> Result<Event, ApiError> {
    let raw: RawEvent = serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("Invalid JSON body: {e}")))?;
    event(raw)
}

/// Parses a `POST /batch_events` body: `{batch: [{name, data, channel, …}]}`, at most 10.
pub fn batch_events(body: &[u8]) -> Result<Vec<Event>, ApiError> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        batch: Vec<RawEvent<'a>>,
    }
    let raw: Batch =
        serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("Invalid JSON body {{\"batch\":[…]}}: {e}")))?;
    if raw.batch.len() > MAX_BATCH {
        return Err(ApiError::bad(format!("Batch of {} events: at most 10", raw.batch.len())));
    }
    raw.batch.into_iter().map(event).collect()
}

fn event(raw: RawEvent) -> Result<Event, ApiError> {
    let name = match raw.name {
        Some(Value::String(n)) if !n.is_empty() && n.len() <= MAX_EVENT_NAME_BYTES => n,
        Some(Value::String(n)) if !n.is_empty() => {
            return Err(ApiError::new(413, "too_large", format!("Event name of {} bytes: at most 200", n.len())))
        }
        _ => return Err(ApiError::bad("\"name\" must be a non-empty string")),
    };
    let data = match raw.data {
        None => return Err(ApiError::bad("\"data\" is missing")),
        Some(d) => serde_json::from_str::<String>(d.get()).unwrap_or_else(|_| d.get().to_string()),
    };
    if data.len() > MAX_DATA_BYTES {
        return Err(ApiError::new(413, "too_large", format!("Event data of {} bytes: at most 10240", data.len())));
    }
    let listed = match (raw.channels, raw.channel) {
        (Some(Value::Array(list)), None) => list,
        (None, Some(one)) => vec![one],
        (Some(_), Some(_)) => return Err(ApiError::bad("Give \"channels\" or \"channel\", not both")),
        _ => return Err(ApiError::bad("\"channels\" must be a list of channel names")),
    };
    if listed.is_empty() || listed.len() > MAX_CHANNELS {
        return Err(ApiError::bad(format!("An event goes to 1 to 100 channels, not {}", listed.len())));
    }
    let mut channels: Vec<String> = Vec::with_capacity(listed.len());
    for ch in listed {
        match ch {
            Value::String(ch) if kind(&ch).is_some() => {
                if !channels.contains(&ch) {
                    channels.push(ch);
                }
            }
            other => return Err(ApiError::bad(format!("Invalid channel name {other}"))),
        }
    }
    let socket_id = match raw.socket_id {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if valid_socket_id(&s) => Some(s),
        Some(_) => return Err(ApiError::bad("\"socket_id\" must look like 1234.5678")),
    };
    let info = match raw.info {
        None | Some(Value::Null) => Info::default(),
        Some(Value::String(s)) => info(&s, &["subscription_count", "user_count"])?,
        Some(_) => return Err(ApiError::bad("\"info\" is a comma-separated string")),
    };
    Ok(Event { name, data, channels, socket_id, info })
}

/// Parses a comma-separated `info` list, each word one of `allowed`.
fn info(text: &str, allowed: &[&str]) -> Result<Info, ApiError> {
    let mut info = Info::default();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if !allowed.contains(&word) {
            return Err(ApiError::bad(format!("Unknown info {word:?}: use {}", allowed.join(", "))));
        }
        match word {
            "subscription_count" => info.subscription_count = true,
            "user_count" => info.user_count = true,
            _ => {}
        }
    }
    Ok(info)
}

// ---------------------------------------------------------------------------
// Queries

/// `GET /channels?filter_by_prefix=&info=user_count`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelsQuery {
    pub prefix: Option<String>,
    /// Only with a `presence-` prefix, as Pusher requires.
    pub user_count: bool,
}

pub fn channels_query(params: &Params) -> Result<ChannelsQuery, ApiError> {
    let prefix = params.get("filter_by_prefix").filter(|p| !p.is_empty()).map(str::to_string);
    let user_count = info(params.get("info").unwrap_or(""), &["user_count"])?.user_count;
    if user_count && !prefix.as_deref().is_some_and(|p| p.starts_with("presence-")) {
        return Err(ApiError::bad("info=user_count needs filter_by_prefix=presence-"));
    }
    Ok(ChannelsQuery { prefix, user_count })
}

/// `GET /channels/{channel}?info=subscription_count,user_count,cache`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelQuery {
    pub subscription_count: bool,
    pub user_count: bool,
    pub cache: bool,
}

pub fn channel_query(channel: &str, params: &Params) -> Result<ChannelQuery, ApiError> {
    let text = params.get("info").unwrap_or("");
    let counts = info(
        &text.split(',').filter(|w| w.trim() != "cache").collect::<Vec<_>>().join(","),
        &["subscription_count", "user_count"],
    )?;
    let k = kind(channel).ok_or_else(|| ApiError::bad("Invalid channel name"))?;
    if counts.user_count && k.kind != Kind::Presence {
        return Err(ApiError::bad("info=user_count is only for presence- channels"));
    }
    let cache = text.split(',').any(|w| w.trim() == "cache");
    if cache && !k.cache {
        return Err(ApiError::bad("info=cache is only for cache channels"));
    }
    Ok(ChannelQuery { subscription_count: counts.subscription_count, user_count: counts.user_count, cache })
}

/// `GET /channels/{channel}/users` is only for presence channels.
pub fn users_query(channel: &str) -> Result<(), ApiError> {
    match kind(channel) {
        Some(k) if k.kind == Kind::Presence => Ok(()),
        _ => Err(ApiError::bad("Users are only listed for presence- channels")),
    }
}

// ---------------------------------------------------------------------------
// Answers (200, application/json)

/// What the server knows of one channel for an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub subscription_count: Option<u64>,
    pub user_count: Option<u64>,
}

fn counts_object(c: Counts) -> Map<String, Value> {
    let mut m = Map::new();
    if let Some(n) = c.subscription_count {
        m.insert("subscription_count".into(), n.into());
    }
    if let Some(n) = c.user_count {
        m.insert("user_count".into(), n.into());
    }
    m
}

fn channels_map(list: &[(&str, Counts)]) -> Value {
    Value::Object(list.iter().map(|(ch, c)| ((*ch).to_string(), Value::Object(counts_object(*c)))).collect())
}

/// The answer to `/events`: `{}`, or `{"channels":{…}}` when `info` was asked.
pub fn events_body(info: Option<&[(&str, Counts)]>) -> Vec<u8> {
    match info {
        None => b"{}".to_vec(),
        Some(list) => json!({ "channels": channels_map(list) }).to_string().into_bytes(),
    }
}

/// The answer to `/batch_events`: `{}`, or `{"batch":[{…},…]}` (one per event, in order) when any asked for `info`.
pub fn batch_body(info: Option<&[Counts]>) -> Vec<u8> {
    match info {
        None => b"{}".to_vec(),
        Some(list) => {
            let batch: Vec<Value> = list.iter().map(|c| Value::Object(counts_object(*c))).collect();
            json!({ "batch": batch }).to_string().into_bytes()
        }
    }
}

/// `GET /channels`: occupied channels (with `user_count` when asked).
pub fn channels_body(list: &[(&str, Counts)]) -> Vec<u8> {
    json!({ "channels": channels_map(list) }).to_string().into_bytes()
}

/// `GET /channels/{channel}`; `cache` is the last event's `(data, ttl)` when asked and present.
pub fn channel_body(occupied: bool, counts: Counts, cache: Option<(&str, u64)>) -> Vec<u8> {
    let mut m = counts_object(counts);
    m.insert("occupied".into(), occupied.into());
    if let Some((data, ttl)) = cache {
        m.insert("cache".into(), json!({ "data": data, "ttl": ttl }));
    }
    Value::Object(m).to_string().into_bytes()
}

/// `GET /channels/{channel}/users`.
pub fn users_body(ids: &[&str]) -> Vec<u8> {
    let users: Vec<Value> = ids.iter().map(|id| json!({ "id": id })).collect();
    json!({ "users": users }).to_string().into_bytes()
}

#[cfg(test)]
mod tests;
