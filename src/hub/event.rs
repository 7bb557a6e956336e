//! What the hub says, before any protocol writes it down: the requests it
//! takes, the events it emits, and `Dialect`, the one trait a front door
//! implements to turn an event into its own frame.
//!
//! The hub decides *what* a connection is told (subscribed at seq 41 with a
//! gap; refused as forbidden; message 42 of `room:1`); the connection's
//! dialect decides *how* (`{"op":"subok",...}` on `/ws`,
//! `pusher_internal:subscription_succeeded` on `/app/`). So the sync rules
//! live once, and a second protocol is a second dialect, not a second hub.

use std::borrow::Cow;

use crate::channel::Seq;

/// A connection's request, as every front door translates it.
#[derive(Debug, Clone, PartialEq)]
pub enum Request<'a> {
    /// `state`: the client keeps the channel's state (spec §8; the channel
    /// must be compacted): with `Start::Now` it starts with a snapshot.
    Sub {
        ch: &'a str,
        start: Start<'a>,
        state: bool,
    },
    Unsub {
        ch: &'a str,
    },
    Pub {
        ch: &'a str,
        data: &'a str,
        key: Option<&'a str>,
        event: Option<&'a str>,
    },
    Hist {
        ch: &'a str,
        since: Seq,
        limit: u32,
    },
    /// Who is on a presence channel now (spec §7).
    Presence {
        ch: &'a str,
    },
}

impl Request<'_> {
    pub fn channel(&self) -> &str {
        match self {
            Request::Sub { ch, .. }
            | Request::Unsub { ch }
            | Request::Pub { ch, .. }
            | Request::Hist { ch, .. }
            | Request::Presence { ch } => ch,
        }
    }
}

/// Where a new subscription starts (spec §4, §8).
#[derive(Debug, Clone, PartialEq)]
pub enum Start<'a> {
    /// With the next message committed.
    Now,
    /// After `since`, counted in `epoch` (`None` only with `since` 0).
    Since { since: Seq, epoch: Option<Cow<'a, str>> },
    /// With the channel's last `n` stored messages (1 to [`MAX_LAST`]).
    Last(u32),
}

/// The most messages `Start::Last` replays.
pub const MAX_LAST: u32 = 100;
/// The longest event name a message may carry (pusher.md §4).
pub const MAX_EVENT_BYTES: usize = 200;

/// The error codes of the contract: why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrCode {
    BadRequest,
    Forbidden,
    TooLarge,
    RateLimited,
    UnknownOp,
    BadChannel,
    TooManySubscriptions,
    Unavailable,
    TooManyChannels,
    TooManyMembers,
    TooManyKeys,
}

impl ErrCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrCode::BadRequest => "bad_request",
            ErrCode::Forbidden => "forbidden",
            ErrCode::TooLarge => "too_large",
            ErrCode::RateLimited => "rate_limited",
            ErrCode::UnknownOp => "unknown_op",
            ErrCode::BadChannel => "bad_channel",
            ErrCode::TooManySubscriptions => "too_many_subscriptions",
            ErrCode::Unavailable => "unavailable",
            ErrCode::TooManyChannels => "too_many_channels",
            ErrCode::TooManyMembers => "too_many_members",
            ErrCode::TooManyKeys => "too_many_keys",
        }
    }
}

impl std::fmt::Display for ErrCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored message, as it travels to subscribers and into history pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    pub ch: &'a str,
    pub seq: Seq,
    pub ts: u64,
    pub from: &'a str,
    /// JSON text.
    pub data: &'a str,
    /// The message's key (spec §8), if any.
    pub key: Option<&'a str>,
    /// The message's event name (pusher.md §4), if any, as a JSON string
    /// literal (quotes included): it travels as written, like `data`.
    pub event: Option<&'a str>,
}

/// One member of a presence channel: its user (the token's `sub`) and the
/// token's `info` object as JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub user: &'a str,
    pub info: Option<&'a str>,
}

/// Whether a page of history is the whole story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Higher seqs exist than the page holds.
    pub more: bool,
    /// Seq `since + 1` was trimmed, or `since` is past the end.
    pub gap: bool,
}

/// What the hub tells one connection. `id` (the request's, as the client
/// wrote it) travels beside the event, since only answers have one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event<'a> {
    /// A `sub` took effect: the channel's last seq, the store's epoch, and
    /// whether the client missed messages it cannot get back.
    Subscribed {
        ch: &'a str,
        seq: Seq,
        epoch: &'a str,
        gap: bool,
    },
    Unsubscribed {
        ch: &'a str,
    },
    /// A publish is committed under `seq`.
    Acked {
        ch: &'a str,
        seq: Seq,
    },
    Refused {
        code: ErrCode,
        msg: &'a str,
    },
    Message(Msg<'a>),
    /// A page of history: `msgs` holds its messages, each written by the
    /// same dialect as `Event::Message`, comma-separated.
    History {
        ch: &'a str,
        msgs: &'a str,
        page: Page,
    },
    /// Everyone on a presence channel now, sorted by user.
    Presence {
        ch: &'a str,
        members: &'a [Member<'a>],
    },
    /// A user's first connection joined a presence channel.
    Joined {
        ch: &'a str,
        member: Member<'a>,
    },
    /// A user's last connection left and did not come back within the grace.
    Left {
        ch: &'a str,
        user: &'a str,
    },
    /// A state snapshot is complete as of `seq`; live messages follow from `seq + 1`.
    StateEnd {
        ch: &'a str,
        seq: Seq,
    },
}

/// A front door's dialect as a connection holds it: a thin reference to the
/// protocol's one `static` (8 bytes a connection, not a 16-byte trait
/// object), compared by that static's address, so a fan-out groups its
/// recipients by dialect with one pointer compare each. Make one with
/// `static D: &dyn Dialect = &MyDialect; Door::new(&D)`.
#[derive(Clone, Copy)]
pub struct Door(&'static &'static dyn Dialect);

impl Door {
    pub const fn new(dialect: &'static &'static dyn Dialect) -> Door {
        Door(dialect)
    }

    /// The same front door's dialect (distinct statics have distinct addresses).
    pub fn same(self, other: Door) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl std::ops::Deref for Door {
    type Target = dyn Dialect;

    fn deref(&self) -> &(dyn Dialect + 'static) {
        *self.0
    }
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A front door's way of writing the hub's events as frames (one frame per
/// event, appended to `out`). Implemented in `proto/`; a connection's
/// dialect is fixed when it joins the hub.
pub trait Dialect: Sync {
    /// The protocol's name, for logs.
    fn name(&self) -> &'static str;

    fn write(&self, out: &mut String, event: &Event<'_>, id: Option<&str>);

    /// One event as a new frame.
    fn frame(&self, event: &Event<'_>, id: Option<&str>) -> String {
        let mut out = String::with_capacity(96);
        self.write(&mut out, event, id);
        out
    }
}
