//! The Pusher front door (pusher.md): `/app/{key}` WebSockets speaking the
//! Pusher protocol v7 into the same hub as `/ws`, and the signed HTTP API
//! `/apps/{id}/…`, whose events are committed like any publish. What a
//! frame or a request means is decided in `proto::pusher` and
//! `proto::pusher_api`; this file carries it out on the connection table.
//!
//! A Pusher connection joins the hub with [`PusherDialect`] and claims that
//! read every channel: Pusher's own rules (signatures, `--pusher-public`)
//! are checked here before a `sub` reaches the hub. Its presence member is
//! the subscribe's `channel_data` user (`Hub::name_member`), so one user is
//! one member whichever protocol each of their tabs speaks. Client events
//! are ephemeral and never reach the hub: they go from here to the
//! channel's other Pusher subscribers.

use super::*;
use crate::auth::{Claims, Patterns};
use crate::hub::{Request, Start};
use crate::proto::pusher::{self, ClientEventRate, ClientFrame, Close, Grant, Kind, PUSHER};
use crate::proto::pusher_api::{self, ApiError, Counts, Route as ApiRoute};
use crate::store::HookEvent;
use commits::MAX_INFLIGHT_BYTES;
use http_door::{HttpRequest, PendingBody};

/// Why a terminated user's sockets are closed (pusher.md §3
/// `terminate_connections`): 4009, so pusher-js does not reconnect.
const TERMINATED: u16 = 4009;

/// What a Pusher connection holds beside its hub peer (boxed on its slot,
/// once it signs in or sends a client event). Its socket id is not held: it
/// is `<pusher_seed>.<connection id>`.
#[derive(Default)]
pub(super) struct PusherConn {
    /// The user it signed in as (`pusher:signin`).
    user: Option<Box<str>>,
    rate: ClientEventRate,
}

/// An `/events` or `/batch_events` request waiting for its commits: it is
/// answered once every message it stored is on disk.
pub(super) struct ApiWait {
    left: usize,
    failed: bool,
    req: HttpRequest,
    asked: Option<Box<Asked>>,
}

/// The `info` an `/events` or `/batch_events` request asked for: counted
/// when it is answered, after the commit.
struct Asked {
    batch: bool,
    /// Each event's channels and what it asked of them.
    events: Vec<(Vec<String>, pusher_api::Info)>,
}

/// A Pusher socket's connection settings: the liveness ping after
/// `--ping-interval` of silence is `pusher:ping`, and no answer within
/// `--pong-timeout` closes with 4201 (pusher.md §2).
pub(super) fn settings(native: Settings) -> Settings {
    Settings { ping_text: Some(Frame::from(pusher::ping())), ..native }
}

/// The first part of every socket id: random per process, so a socket id
/// from before a restart names no connection now.
pub(super) fn socket_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) % 1_000_000_000
}

impl Server {
    /// `GET /app/{key}`: upgrades, then refuses with Pusher's codes (pusher-js
    /// reads a close code, not an HTTP status) or joins the hub.
    pub(super) fn open_pusher(&mut self, id: ConnId, head: Head, now: Instant) {
        let Some(app) = self.pusher.clone() else { return };
        let Some(slot) = self.slots.get(&id) else { return };
        let ip = slot.conn.peer;
        let Some(up) = http::upgrade_request(&head) else {
            let slot = self.slots.get_mut(&id).expect("slot checked above");
            slot.conn.refuse(Refusal::new(400, "bad_request").response(true), now);
            self.metrics.refuse("bad_request");
            return self.log_refusal(now, ip, &"not a valid upgrade");
        };
        let secure = self.tls.is_some();
        let verdict = if self.slots.len() > self.max_connections
            || self.per_ip.get(&ip).copied().unwrap_or(0) > self.cfg.max_connections_per_ip
        {
            Err(Close::Capacity)
        } else if head
            .origin
            .as_deref()
            .is_some_and(|o| !http::origin_allowed(o, head.host.as_deref(), secure, &self.cfg.allowed_origins))
        {
            Err(Close::Origin)
        } else {
            pusher::check_open(&app, pusher::app_key(&head.path).unwrap_or(""), &head.query)
        };
        let slot = self.slots.get_mut(&id).expect("slot checked above");
        slot.conn.upgrade(http::switching_protocols(&up), head.len, None, now);
        if let Err(close) = verdict {
            slot.conn.send(Frame::from(close.frame()), usize::MAX);
            slot.conn.close(close.code(), close.message(), now);
            self.mark_dirty(id);
            self.metrics.close("pusher_refused");
            return self.log_refusal(now, ip, &close.message());
        }
        let socket_id = pusher::socket_id(self.pusher_seed, id as u64);
        log::debug!("open /app/ from {ip} as socket {socket_id}");
        let claims = Claims {
            // Never used: every presence member of a Pusher socket is named
            // by its channel_data, and it publishes nothing through the hub.
            sub: String::new(),
            exp: u64::MAX,
            read: Patterns::new(vec!["*".into()]),
            write: Patterns::new(Vec::new()),
            api: false,
            info: None,
        };
        slot.conn.use_settings(self.pusher_settings.clone());
        slot.joined = true;
        slot.speaks_pusher = true;
        self.hub.join(id, claims, PUSHER, now);
        // pusher-js pings after this much silence of its own; the server's
        // `pusher:ping` comes after the same.
        let activity_timeout = self.cfg.ping_interval.as_secs().max(1);
        self.send(id, pusher::connection_established(&socket_id, activity_timeout).into());
        self.read_frames(id, now);
    }

    /// No `pusher:pong` (nor anything else) after our `pusher:ping`: 4201,
    /// which pusher-js answers by reconnecting at once.
    pub(super) fn pusher_no_pong(&mut self, id: ConnId, now: Instant) {
        self.metrics.close("pong_timeout");
        let close = Close::PongTimeout;
        self.send(id, close.frame().into());
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.conn.close(close.code(), close.message(), now);
        }
    }

    /// One text frame from a Pusher client.
    pub(super) fn pusher_frame(&mut self, id: ConnId, text: &str, now: Instant) {
        let frame = match pusher::parse(text) {
            Ok(f) => f,
            Err(e) => return self.send(id, e.frame().into()),
        };
        match frame {
            ClientFrame::Ping => self.send(id, pusher::pong().into()),
            ClientFrame::Pong => {}
            ClientFrame::Subscribe(sub) => self.pusher_subscribe(id, sub, now),
            ClientFrame::Unsubscribe { channel } => {
                if pusher::server_to_user(&channel).is_none() {
                    let mut actions = Vec::new();
                    self.hub.handle(id, None, Request::Unsub { ch: &channel }, now, &self.store, &mut actions);
                    self.pusher_act(id, actions, now);
                }
            }
            ClientFrame::Signin { auth, user_data } => {
                let Some(app) = self.pusher.clone() else { return };
                let socket_id = pusher::socket_id(self.pusher_seed, id as u64);
                let Some(state) = self.pusher_state(id) else { return };
                let answer = match pusher::signin(&app, &socket_id, &auth, &user_data) {
                    Ok(signed) => {
                        state.user = Some(signed.user_id.into());
                        pusher::signin_success(&signed.user_data)
                    }
                    Err(why) => pusher::signin_error(&why),
                };
                self.send(id, answer.into());
            }
            ClientFrame::ClientEvent(ev) => {
                let subscribed = self.hub.is_subscribed(id, &ev.channel);
                if let Err(why) = pusher::check_client_event(&ev, subscribed) {
                    return self.send(id, pusher::error(None, why).into());
                }
                let Some(state) = self.pusher_state(id) else { return };
                if !state.rate.allow(now) {
                    return self.send(id, ClientEventRate::error_frame().into());
                }
                let presence = pusher::kind(&ev.channel).is_some_and(|k| k.kind == Kind::Presence);
                let user = if presence { self.hub.member_user(id, &ev.channel) } else { None };
                let frame = Frame::from(pusher::event(&ev.event, &ev.channel, &ev.data, user));
                if self.cfg.webhook_sends("client_event") {
                    // Reported, as Pusher does, though never stored as a message.
                    let socket_id = pusher::socket_id(self.pusher_seed, id as u64);
                    let json = |s: &str| serde_json::Value::from(s).to_string();
                    let extra = format!(
                        "\"event\":{},\"data\":{},\"socket_id\":{}",
                        json(&ev.event),
                        json(&ev.data),
                        json(&socket_id)
                    );
                    let user_id = user.map(str::to_string);
                    if !self.hook_event("client_event", &ev.channel, user_id, extra) {
                        let why = "Client event rejected: too many webhook events are waiting for the application";
                        return self.send(id, pusher::error(Some(ClientEventRate::ERROR_CODE), why).into());
                    }
                }
                // Ephemeral (pusher.md §2): to the other Pusher subscribers
                // now, never stored and never back to the sender.
                let to: Vec<ConnId> = self.hub.subscribers(&ev.channel).iter().copied().filter(|&c| c != id).collect();
                for conn in to {
                    if self.slots.get(&conn).is_some_and(|s| s.speaks_pusher) {
                        self.send(conn, frame.clone());
                    }
                }
            }
        }
    }

    /// `pusher:subscribe`: Pusher's checks here, then the hub's `sub` (a
    /// cache channel starts with its last stored event).
    fn pusher_subscribe(&mut self, id: ConnId, sub: pusher::Subscribe, now: Instant) {
        let Some(app) = self.pusher.clone() else { return };
        let Some(slot) = self.slots.get(&id) else { return };
        let user = slot.pusher.as_ref().and_then(|p| p.user.as_deref());
        let ch = sub.channel.as_str();
        let socket_id = pusher::socket_id(self.pusher_seed, id as u64);
        let grant = match pusher::authorize(&app, &socket_id, user, &sub) {
            Ok(grant) => grant,
            Err(e) => return self.send(id, pusher::subscription_error(ch, &e).into()),
        };
        if grant == Grant::User {
            // `#server-to-user-<id>` is never stored: `/events` sends to the
            // user's signed-in connections directly.
            return self.send(id, pusher::subscription_succeeded(ch, None).into());
        }
        match &grant {
            Grant::Presence(m) => self.hub.name_member(id, ch, &m.user_id, m.user_info.as_deref()),
            // A channel the operator made a presence channel (`--presence`)
            // under a name Pusher does not sign a member for: no user to
            // count, so not joinable from this door.
            _ if self.cfg.presence.iter().any(|p| crate::channel::matches(p, ch)) => {
                let e = pusher::SubscribeError {
                    status: 403,
                    message: format!("{ch} is a presence channel (--presence): use a presence- name to join it"),
                };
                return self.send(id, pusher::subscription_error(ch, &e).into());
            }
            _ => {}
        }
        let cache = pusher::kind(ch).is_some_and(|k| k.cache);
        let start = if cache { Start::Last(1) } else { Start::Now };
        let mut actions = Vec::new();
        // The channel travels as the request id: a refusal names it.
        self.hub.handle(id, Some(ch), Request::Sub { ch, start, state: false }, now, &self.store, &mut actions);
        self.pusher_act(id, actions, now);
        if !self.hub.is_subscribed(id, ch) {
            self.hub.forget_member(id, ch);
        } else if cache && self.store.channel(ch).is_ok_and(|info| info.first > info.last) {
            self.send(id, pusher::cache_miss(ch).into());
            // Anyone may subscribe to a public cache channel again and
            // again: past the outbox's room the app is not told of this miss
            // (the next subscriber's miss tells it again).
            if self.cfg.webhook_sends("cache_miss") {
                self.hook_event("cache_miss", ch, None, String::new());
            }
        }
    }

    /// A cache channel's last stored event for `info=cache`: its data as
    /// Pusher clients get it, and the seconds until retention trims it.
    fn cached(&self, ch: &str) -> Option<(String, u64)> {
        let info = self.store.channel(ch).ok().filter(|i| i.first <= i.last)?;
        let mut last = None;
        let read = self.store.read(ch, info.last - 1, 1, |r| {
            last = Some((pusher::message_text(r.from, r.data).into_owned(), r.ts));
            false
        });
        let (data, ts) = last.filter(|_| read.is_ok())?;
        let age_ms = self.clock.effective_ms().saturating_sub(ts);
        let ttl = self.cfg.retention_for(ch).1.as_millis().saturating_sub(age_ms as u128) / 1000;
        Some((data, ttl.min(u64::MAX as u128) as u64))
    }

    /// A webhook event with no stored cause that an input makes (a client
    /// event, a cache miss), committed with this turn's writes and then
    /// delivered as spec §9 says; false, and nothing queued, when there is
    /// no room for it. While the endpoint fails, events wait in the store:
    /// the outbox's pages and what is on its way to the writer are held to a
    /// quarter of `--max-store-bytes`, and the writer's queue (which this
    /// event's bytes count against until it commits) to `MAX_INFLIGHT_BYTES`.
    fn hook_event(&mut self, name: &str, ch: &str, user_id: Option<String>, extra: String) -> bool {
        let bytes = name.len() + ch.len() + user_id.as_ref().map_or(0, String::len) + extra.len();
        let stored = self.store.outbox_bytes().unwrap_or(u64::MAX);
        let after = self.inflight_bytes + bytes;
        if stored.saturating_add(after as u64) > self.cfg.max_store_bytes / 4 || after > MAX_INFLIGHT_BYTES {
            return false;
        }
        self.inflight_bytes = after;
        let event = HookEvent { name: name.into(), channel: ch.into(), user_id, extra };
        self.pending.push((Ticket::event_of(bytes), Write::Event(event)));
        true
    }

    /// The hub's answers for a Pusher connection: events Pusher has no frame
    /// for are written as nothing, and no empty frame is sent.
    fn pusher_act(&mut self, id: ConnId, actions: Vec<Action>, now: Instant) {
        for action in actions {
            match action {
                Action::Reply(text) if text.is_empty() => {}
                action => self.act(id, action, now),
            }
        }
    }

    /// The connection a `socket_id` names, if it is one of ours.
    fn pusher_socket(&self, socket_id: &str) -> Option<ConnId> {
        let (a, b) = socket_id.split_once('.')?;
        let conn = b.parse::<ConnId>().ok().filter(|_| a.parse() == Ok(self.pusher_seed))?;
        self.slots.get(&conn).is_some_and(|s| s.speaks_pusher).then_some(conn)
    }

    /// A Pusher socket's state, made on first use.
    fn pusher_state(&mut self, id: ConnId) -> Option<&mut PusherConn> {
        let slot = self.slots.get_mut(&id).filter(|s| s.speaks_pusher)?;
        Some(slot.pusher.get_or_insert_with(Box::default))
    }

    /// A request head under `/apps/`: routed, then a GET is verified and
    /// answered at once; a POST reads its body first.
    pub(super) fn pusher_api_head(&mut self, id: ConnId, head: Head, req: HttpRequest, now: Instant) -> bool {
        let Some(app) = self.pusher.clone() else {
            return self.http_refuse(id, req, Refusal::new(404, "not_found"), false, now);
        };
        let route = match pusher_api::route(&app, &head.method, &head.path) {
            Ok(route) => route,
            Err(e) => return self.api_error(id, req, e, now),
        };
        if head.method == "POST" {
            let len = match head.content_length.as_deref().map(|l| l.trim().parse::<usize>()) {
                Some(Ok(n)) if head.transfer_encoding.is_none() => n,
                _ => {
                    let e = ApiError { status: 411, code: "length_required", message: "Send a Content-Length".into() };
                    return self.api_error(id, HttpRequest { keep_alive: false, ..req }, e, now);
                }
            };
            if len > pusher_api::MAX_BODY_BYTES {
                let e =
                    ApiError { status: 413, code: "too_large", message: "A request body is at most 256 KiB".into() };
                return self.api_error(id, HttpRequest { keep_alive: false, ..req }, e, now);
            }
            // Signed before its body is buffered (the body is unread bytes:
            // the connection closes after the answer).
            if let Err(e) = pusher_api::verify_head(&app, &head.method, &head.path, &head.query, self.now_unix()) {
                return self.api_error(id, HttpRequest { keep_alive: false, ..req }, e, now);
            }
            let Some(slot) = self.slots.get_mut(&id) else { return false };
            slot.body = Some(Box::new(PendingBody::pusher(head, route, len)));
            slot.conn.expect_body();
            return true;
        }
        let params = match pusher_api::verify(&app, &head.method, &head.path, &head.query, b"", self.now_unix()) {
            Ok(p) => p,
            Err(e) => return self.api_error(id, req, e, now),
        };
        let body = match route {
            ApiRoute::Channels => pusher_api::channels_query(&params).map(|q| {
                let mut list: Vec<(&str, Counts)> = self
                    .hub
                    .occupied()
                    .filter(|(ch, _)| q.prefix.as_deref().is_none_or(|p| ch.starts_with(p)))
                    .map(|(ch, _)| {
                        let users = q.user_count.then(|| self.hub.members_of(ch, None).len() as u64);
                        (ch, Counts { subscription_count: None, user_count: users })
                    })
                    .collect();
                list.sort_by(|a, b| a.0.cmp(b.0));
                pusher_api::channels_body(&list)
            }),
            ApiRoute::Channel(ch) => pusher_api::channel_query(&ch, &params).map(|q| {
                let subs = self.hub.subscribers(&ch).len() as u64;
                let counts = Counts {
                    subscription_count: q.subscription_count.then_some(subs),
                    user_count: q.user_count.then(|| self.hub.members_of(&ch, None).len() as u64),
                };
                let cache = if q.cache { self.cached(&ch) } else { None };
                pusher_api::channel_body(subs > 0, counts, cache.as_ref().map(|(d, ttl)| (d.as_str(), *ttl)))
            }),
            ApiRoute::Users(ch) => pusher_api::users_query(&ch).map(|()| {
                let members = self.hub.members_of(&ch, None);
                let ids: Vec<&str> = members.iter().map(|m| m.user).collect();
                pusher_api::users_body(&ids)
            }),
            ApiRoute::Events | ApiRoute::BatchEvents | ApiRoute::Terminate(_) => unreachable!("POST routes"),
        };
        match body {
            Ok(body) => self.http_reply(id, req, 200, "application/json", &body, false, now),
            Err(e) => self.api_error(id, req, e, now),
        }
    }

    /// A POST under `/apps/` with its whole body.
    pub(super) fn pusher_api_body(
        &mut self,
        id: ConnId,
        req: HttpRequest,
        head: &Head,
        route: ApiRoute,
        body: &[u8],
        now: Instant,
    ) -> bool {
        let Some(app) = self.pusher.clone() else { return false };
        if let Err(e) = pusher_api::verify(&app, &head.method, &head.path, &head.query, body, self.now_unix()) {
            return self.api_error(id, req, e, now);
        }
        let batch = route == ApiRoute::BatchEvents;
        let events = match route {
            ApiRoute::Events => pusher_api::events(body).map(|e| vec![e]),
            ApiRoute::BatchEvents => pusher_api::batch_events(body),
            ApiRoute::Terminate(user) => {
                let conns: Vec<ConnId> = self
                    .slots
                    .iter()
                    .filter(|(_, s)| s.pusher.as_ref().is_some_and(|p| p.user.as_deref() == Some(user.as_str())))
                    .map(|(c, _)| *c)
                    .collect();
                for conn in conns {
                    self.send(conn, pusher::error(Some(TERMINATED), "Connection terminated by the application").into());
                    if let Some(slot) = self.slots.get_mut(&conn) {
                        slot.conn.close(TERMINATED, "terminated by the application", now);
                    }
                }
                return self.http_reply(id, req, 200, "application/json", b"{}", false, now);
            }
            ApiRoute::Channels | ApiRoute::Channel(_) | ApiRoute::Users(_) => unreachable!("GET routes"),
        };
        match events {
            Ok(events) => self.pusher_publish(id, req, events, batch, now),
            Err(e) => self.api_error(id, req, e, now),
        }
    }

    /// Stores each event on each of its channels (one writer job with the
    /// rest of this turn), answering once all are committed; a
    /// `#server-to-user-` channel is sent to that user's connections now
    /// and never stored.
    fn pusher_publish(
        &mut self,
        id: ConnId,
        req: HttpRequest,
        events: Vec<pusher_api::Event>,
        batch: bool,
        now: Instant,
    ) -> bool {
        let asked = events.iter().any(|e| e.info.any()).then(|| {
            let events = events.iter().map(|e| (e.channels.clone(), e.info)).collect();
            Box::new(Asked { batch, events })
        });
        let mut appends = Vec::new();
        for ev in &events {
            let except = ev.socket_id.as_deref().and_then(|s| self.pusher_socket(s));
            let name = serde_json::Value::from(ev.name.as_str()).to_string();
            for ch in &ev.channels {
                if let Some(user) = pusher::server_to_user(ch) {
                    let frame = Frame::from(pusher::event(&ev.name, ch, &ev.data, None));
                    let to: Vec<ConnId> = self
                        .slots
                        .iter()
                        .filter(|(c, s)| {
                            Some(**c) != except && s.pusher.as_ref().is_some_and(|p| p.user.as_deref() == Some(user))
                        })
                        .map(|(c, _)| *c)
                        .collect();
                    for conn in to {
                        self.send(conn, frame.clone());
                    }
                    continue;
                }
                let append = Append {
                    ch: ch.clone(),
                    from: pusher::API_FROM.into(),
                    data: pusher::message_data(&ev.data),
                    id: None,
                    key: None,
                    event: Some(name.clone()),
                };
                appends.push((append, except));
            }
        }
        if appends.is_empty() {
            let body = self.events_answer(asked.as_deref());
            return self.http_reply(id, req, 200, "application/json", &body, false, now);
        }
        let bytes: usize = appends.iter().map(|(a, _)| a.data.len() + a.ch.len() + a.from.len()).sum();
        if self.inflight_bytes + bytes > MAX_INFLIGHT_BYTES {
            let e = ApiError { status: 503, code: "unavailable", message: "The server is busy writing; retry".into() };
            return self.api_error(id, req, e, now);
        }
        let Some(slot) = self.slots.get_mut(&id) else { return false };
        slot.conn.wait_commit();
        self.pusher_waits.insert(id, ApiWait { left: appends.len(), failed: false, req, asked });
        for (append, except) in appends {
            let bytes = append.data.len() + append.ch.len() + append.from.len();
            self.inflight_bytes += bytes;
            // Through the cluster's log in cluster mode, like every publish.
            self.queue_publish(Ticket::pusher(id, bytes, except), append);
        }
        false
    }

    /// One message of an `/events` request committed (or not): the answer
    /// goes out with the last of them.
    pub(super) fn pusher_committed(&mut self, conn: ConnId, ok: bool, now: Instant) {
        let Some(wait) = self.pusher_waits.get_mut(&conn) else { return };
        wait.left -= 1;
        wait.failed |= !ok;
        if wait.left > 0 {
            return;
        }
        let Some(wait) = self.pusher_waits.remove(&conn) else { return };
        if wait.failed {
            let message = "The store did not take every event; retry the request".into();
            self.api_error(conn, wait.req, ApiError { status: 503, code: "unavailable", message }, now);
        } else {
            let body = self.events_answer(wait.asked.as_deref());
            self.http_reply(conn, wait.req, 200, "application/json", &body, false, now);
        }
        // A pipelined request may be waiting behind it.
        self.again.push(conn);
    }

    /// `{}`, or the counts an event asked for with `info` (pusher.md §3).
    fn events_answer(&self, asked: Option<&Asked>) -> Vec<u8> {
        let Some(asked) = asked else { return pusher_api::events_body(None) };
        let counts = |ch: &str, info: pusher_api::Info| Counts {
            subscription_count: info.subscription_count.then(|| self.hub.subscribers(ch).len() as u64),
            user_count: info.user_count.then(|| self.hub.members_of(ch, None).len() as u64),
        };
        if asked.batch {
            let list: Vec<Counts> = asked
                .events
                .iter()
                .map(|(chs, info)| chs.first().map_or_else(Counts::default, |ch| counts(ch, *info)))
                .collect();
            return pusher_api::batch_body(Some(&list));
        }
        let list: Vec<(&str, Counts)> = asked
            .events
            .iter()
            .flat_map(|(chs, info)| chs.iter().map(move |ch| (ch.as_str(), *info)))
            .map(|(ch, info)| (ch, counts(ch, info)))
            .collect();
        pusher_api::events_body(Some(&list))
    }

    fn api_error(&mut self, id: ConnId, req: HttpRequest, e: ApiError, now: Instant) -> bool {
        self.metrics.refuse(e.code);
        if e.status == 401 {
            self.metrics.auth_failure(e.code);
        }
        self.http_reply(id, req, e.status, "application/json", &e.body(), false, now)
    }
}
