// roost.js: the roostd client, for browsers and Node (>= 20). No dependencies.
//
//   import { Roost } from '/roost.js';
//   const r = new Roost('ws://pi.local:8080', { token });
//   await r.subscribe('room:1', (m) => console.log(m.seq, m.from, m.data), { since: 0 });
//   const seq = await r.publish('room:1', { text: 'hi' });
//   const who = r.presence('presence-room:1');          // who is here (spec §7)
//   who.on('join', ({ user }) => console.log(user, 'came'));
//   const { state } = await r.subscribe('sensors', { state: true }); // key -> latest msg (§8)
//   await r.publish('sensors', 21.5, { key: 'kitchen' });
//
// What it guarantees, on top of roostd's protocol (docs/protocol.md):
// - reconnects by itself (backoff 0.25 s doubling to 10 s, with jitter), and
//   at once after close code 4001 (token expired) with a fresh token;
// - every subscription resumes with `since` + `epoch`, and a message whose
//   seq is not above the last one delivered is dropped: a handler sees every
//   message of its channel once, in order, across any number of reconnects;
// - every publish has a unique id; an unacked publish is resent with the
//   same id after a reconnect and the server dedupes it: never lost, never
//   doubled;
// - a presence list survives reconnects: the server's fresh list after a
//   resubscribe replaces it, and only the differences are reported as
//   join/leave (a reconnect within the grace shows no flicker);
// - a state subscription's Map survives reconnects: a resume applies what
//   was missed, and a resume the server answers with a snapshot rebuilds it.
//
// In Node 20 (no global WebSocket) pass one: `{ WebSocket }` from the `ws`
// package. Node 22 and browsers have one built in.
//
// The token is a client token (`sub`, `exp`, `read`, `write`) minted by the
// main application for this user. Never give a browser the application's
// own API token (`"api": true`): that one opens roostd's HTTP API, which
// skips the publish hook; roostd refuses client tokens there (403
// api_forbidden), and this library speaks only the WebSocket.

const OPEN = 1;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10000;
/** Refresh a token this long before its `exp`. */
const REFRESH_BEFORE_MS = 30000;
/** Error codes after which a request is retried with the same id. */
const RETRYABLE = new Set(['unavailable', 'rate_limited']);
const MAX_RETRIES = 8;
/** roostd's default --max-message-bytes. */
const MAX_MESSAGE_BYTES = 65536;

/** An error from the server (`err` reply) or from the client itself. */
export class RoostError extends Error {
  constructor(code, message, details) {
    super(message ? `${code}: ${message}` : code);
    this.name = 'RoostError';
    /** `forbidden`, `bad_channel`, … (the server's codes), or `closed`. */
    this.code = code;
    if (details) Object.assign(this, details);
  }
}

/** The payload of a JWT (not verified: only to read `exp` and `sub`). */
export function decodeToken(token) {
  try {
    const part = String(token).split('.')[1];
    if (!part) return null;
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

function randomPrefix() {
  const bytes = new Uint8Array(9);
  if (globalThis.crypto && globalThis.crypto.getRandomValues) {
    globalThis.crypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** `ws://host:port` (or http://, or a URL that already ends in /ws) → the /ws URL. */
function wsUrl(url) {
  let u = String(url).trim().replace(/^http(s?):/i, 'ws$1:');
  const hash = u.indexOf('#');
  if (hash >= 0) u = u.slice(0, hash);
  let query = '';
  const q = u.indexOf('?');
  if (q >= 0) {
    query = u.slice(q);
    u = u.slice(0, q);
  }
  u = u.replace(/\/+$/, '');
  if (!/\/ws$/.test(u)) u += '/ws';
  return u + query;
}

/** Closes a socket whose events are no longer wanted. */
function shut(ws, code, reason) {
  if (!ws) return;
  ws.onmessage = null;
  ws.onclose = null;
  ws.onerror = () => {};
  try {
    if (ws.readyState === 0) {
      // Closing while the handshake runs makes browsers log an error; let it
      // open, then close it.
      ws.onopen = () => ws.close(code, reason);
    } else {
      ws.onopen = null;
      ws.close(code, reason);
    }
  } catch {
    /* already closed */
  }
}

/** `on` / `off` / `_emit` for Roost and Presence. */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (e) {
        // A listener's bug must not break the connection; report it the
        // way an uncaught error would be.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

const byUser = (a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0);

/**
 * Who is on a presence channel (spec §7), kept current across reconnects.
 * Made by `Roost.presence(ch)`; do not construct it yourself.
 */
export class Presence extends Emitter {
  constructor(roost, ch) {
    super();
    this.ch = ch;
    this._roost = roost;
    this._members = new Map(); // user -> info
    this._count = 0;
    this._synced = false;
    this.closed = false;
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // also emitted as 'error'
  }

  /** The members, sorted by user: `[{user, info}]` (the own user included). */
  get members() {
    return [...this._members].map(([user, info]) => ({ user, info })).sort(byUser);
  }

  /** How many members (the server's count). */
  get count() {
    return this._count;
  }

  /** Whether `user` is a member. */
  has(user) {
    return this._members.has(user);
  }

  // Events (`on`): `join` ({user, info}), `leave` ({user}), `sync` ({members,
  // count}: a full list arrived, after its join/leave events), `change`
  // ({members, count}: after anything changed the list), `error` ({code, msg}:
  // the subscription was refused or closed).

  /** Asks the server for the list again; resolves with the members once it came. */
  refresh() {
    if (this.closed) return Promise.reject(new RoostError('closed', 'this presence was closed', { ch: this.ch }));
    return this._roost._request('presence', { op: 'presence', ch: this.ch }).then(() => this.members);
  }

  /** Leaves the channel (unsubscribes it): the others see this user leave once no connection of it is left. */
  close() {
    if (this.closed) return Promise.resolve();
    return this._roost.unsubscribe(this.ch);
  }

  _snapshot() {
    return { ch: this.ch, members: this.members, count: this._count };
  }

  /** A full list: replaces the members; join/leave only for the differences (none for the first list). */
  _list(members, count) {
    const next = new Map();
    if (Array.isArray(members)) {
      for (const m of members) if (m && typeof m.user === 'string') next.set(m.user, m.info ?? null);
    }
    const first = !this._synced;
    const left = [...this._members.keys()].filter((u) => !next.has(u)).sort();
    const came = [...next.keys()].filter((u) => !this._members.has(u)).sort();
    this._members = next;
    this._count = typeof count === 'number' ? count : next.size;
    this._synced = true;
    if (!first) {
      for (const user of left) this._emit('leave', { ch: this.ch, user });
      for (const user of came) this._emit('join', { ch: this.ch, user, info: next.get(user) });
    }
    this._emit('sync', this._snapshot());
    if (first || left.length || came.length) this._emit('change', this._snapshot());
    if (first) this._resolve(this);
  }

  _join(user, info) {
    if (typeof user !== 'string') return;
    const known = this._members.has(user);
    this._members.set(user, info ?? null);
    if (known) return;
    this._count++;
    this._emit('join', { ch: this.ch, user, info: info ?? null });
    this._emit('change', this._snapshot());
  }

  _leave(user) {
    if (!this._members.delete(user)) return;
    this._count = Math.max(0, this._count - 1);
    this._emit('leave', { ch: this.ch, user });
    this._emit('change', this._snapshot());
  }

  _fail(err) {
    this.closed = true;
    this._reject(err);
    this._emit('error', { ch: this.ch, code: err.code, msg: err.message });
  }
}

export class Roost extends Emitter {
  /**
   * @param {string} url `ws://host:port` (the client appends `/ws`)
   * @param {object} [options] `token` (a JWT) or `getToken` (async () => JWT, asked on
   *   every connect and `refreshBefore` seconds (default 30; false: never) before the
   *   token's `exp`), `WebSocket` (a constructor, for Node 20: the `ws` package),
   *   `tokenInQuery` (send the token as `?token=` instead of as a subprotocol),
   *   `maxMessageBytes` (the server's --max-message-bytes, default 65536: larger
   *   publishes are refused with `too_large` instead of sent)
   */
  constructor(url, options = {}) {
    super();
    this.url = wsUrl(url);
    this._opts = options;
    this._token = options.token || null;
    this._getToken = options.getToken || null;
    this._WS = options.WebSocket || globalThis.WebSocket;
    if (typeof this._WS !== 'function') {
      throw new TypeError('roost: no WebSocket here; pass one: new Roost(url, { WebSocket }) (e.g. from the ws package)');
    }
    if (!this._token && !this._getToken) throw new TypeError('roost: give a token or getToken');
    this._state = 'connecting';
    this._ws = null;
    this._gen = 0; // counts sockets; events of an older socket are ignored
    this._attempt = 0;
    this._retryTimer = null;
    this._refreshTimer = null;
    this._closed = false;
    this._epoch = null; // the store's epoch, as last seen (one per store)
    this._channels = new Map(); // ch -> subscription state
    this._requests = new Map(); // request id -> { kind, frame, resolve, reject, ch }
    this._pubs = new Map(); // publish id -> { frame, resolve, reject, tries }, in publish order
    this._rid = 0;
    this._prefix = randomPrefix();
    this._pubCount = 0;
    this._onOnline = () => {
      if (!this._ws && !this._closed && this._retryTimer) this._connectSoon(0);
    };
    if (typeof globalThis.addEventListener === 'function' && typeof globalThis.window === 'object') {
      globalThis.addEventListener('online', this._onOnline);
    }
    this._connectSoon(0);
  }

  /** `connecting` (also while waiting to retry), `open` or `closed` (after close()). */
  get state() {
    return this._state;
  }

  // Events (`on`, from Emitter): `state` (the new state), `open`, `close`
  // ({code, reason}), `gap` ({ch, epoch}), `catchup` ({ch, from, to}),
  // `caughtup` ({ch, seq}), `snapshot` ({ch, seq, state}: a state
  // subscription's Map was rebuilt from a snapshot), `error` ({code, msg,
  // ch?}), `reconnect` ({delay, attempt, code}).

  _setState(s) {
    if (this._state === s) return;
    this._state = s;
    this._emit('state', s);
  }

  /**
   * Subscribes to `ch`. `onMessage(msg)` gets `{ch, seq, ts, from, data}` (plus
   * `key` and `event` when the message has them) for every message once, in
   * seq order. Options: `since` (replay messages after this seq; 0 =
   * everything stored; none = only new ones) and `epoch` (the store's epoch
   * that `since` belongs to); or `last: N` (replay the last N stored messages,
   * 1 to 100, then live ones); or `state: true` (a compacted channel, spec §8:
   * keep a Map key → latest message, as `result.state` and `stateMap(ch)`;
   * `onMessage` then sees the messages after the snapshot, and a rebuilt
   * snapshot is announced with the `snapshot` event). `onMessage` may be left
   * out: `subscribe(ch, { state: true })`. Resolves with `{ch, seq, epoch,
   * gap}` from the first `subok` (a state subscription: `{..., state}` once the
   * snapshot is in the Map); rejects with a RoostError if refused.
   */
  subscribe(ch, onMessage, options = {}) {
    if (onMessage && typeof onMessage === 'object') {
      options = onMessage;
      onMessage = null;
    }
    if (this._closed) return Promise.reject(new RoostError('closed', 'this client was closed'));
    if (options.last != null && (options.since != null || options.state)) {
      return Promise.reject(new RoostError('bad_request', '`last` cannot be combined with `since` or `state`', { ch }));
    }
    let sub = this._channels.get(ch);
    if (sub) {
      if (onMessage) sub.handler = onMessage;
      return sub.ready;
    }
    sub = this._newSub(ch, onMessage, options);
    if (this._isOpen()) this._sendSub(sub);
    return sub.ready;
  }

  /**
   * The live Map key → latest message of a `state: true` subscription (the
   * same Map object for the subscription's life; a snapshot refills it), or
   * undefined.
   */
  stateMap(ch) {
    const sub = this._channels.get(ch);
    return sub && sub.map ? sub.map : undefined;
  }

  /**
   * Joins the presence channel `ch` (spec §7; a name matching `presence-*` or
   * the server's --presence patterns) and returns a Presence: `members` (sorted
   * by user), `count`, and `join` / `leave` / `sync` / `change` events, kept
   * right across reconnects. `ready` resolves once the first list arrived.
   * Shares the subscription with `subscribe(ch, ...)` on the same channel.
   */
  presence(ch) {
    let sub = this._channels.get(ch);
    if (sub && sub.presence && !sub.presence.closed) return sub.presence;
    const p = new Presence(this, ch);
    if (this._closed) {
      p._fail(new RoostError('closed', 'this client was closed', { ch }));
      return p;
    }
    if (!sub) {
      sub = this._newSub(ch, null, {});
      sub.presence = p;
      if (this._isOpen()) this._sendSub(sub);
    } else {
      sub.presence = p;
      // Already subscribed: the list came with that subscription; ask again.
      if (sub.started) p.refresh().catch(() => {});
    }
    return p;
  }

  _newSub(ch, onMessage, options) {
    const sub = {
      ch,
      handler: onMessage,
      // The last seq delivered (null: none yet, and no `since` asked).
      last: options.since == null ? null : Math.max(0, Number(options.since) || 0),
      epoch: options.epoch || null,
      // Whether the next sub must replay from `last` (false: live only).
      resume: options.since != null,
      subId: null,
      sentSince: null,
      catchupTo: null,
      started: false,
      tries: 0,
      // `last: N`: asked until the replay started (then resumes use since).
      wantLast: options.last != null ? options.last : null,
      sentLast: false,
      // `state: true`: the Map key -> latest message, and the snapshot being
      // received (between a subok and the `state` marker).
      map: options.state ? new Map() : null,
      sentState: false,
      snapshot: null,
      presence: null,
    };
    if (options.state) {
      // A state subscription starts from a snapshot, whatever `since` says.
      sub.last = null;
      sub.resume = false;
    }
    sub.ready = new Promise((resolve, reject) => {
      sub.resolve = resolve;
      sub.reject = reject;
    });
    sub.ready.catch(() => {}); // refusals are also emitted as 'error'
    this._channels.set(ch, sub);
    return sub;
  }

  /** Stops the subscription; resolves when the server confirmed (or at once when offline). */
  unsubscribe(ch) {
    const sub = this._channels.get(ch);
    if (!sub) return Promise.resolve();
    this._channels.delete(ch);
    if (sub.subId != null) this._requests.delete(sub.subId);
    if (!sub.started) sub.reject(new RoostError('closed', 'unsubscribed before the subscription started'));
    if (sub.presence && !sub.presence.closed) sub.presence._fail(new RoostError('closed', 'unsubscribed', { ch }));
    if (!this._isOpen()) return Promise.resolve();
    return this._request('unsub', { op: 'unsub', ch }).then(() => undefined, () => undefined);
  }

  /**
   * Publishes `data` (any JSON value) to `ch`. Options: `key` (1 to 128
   * characters like a channel name: on a compacted channel the latest message
   * of a key is kept, and `data` null deletes the key) and `event` (a name
   * delivered with the message). Resolves with the message's seq once it is
   * durably stored; rejects with a RoostError (`code`) if refused.
   */
  publish(ch, data, options = {}) {
    if (this._closed) return Promise.reject(new RoostError('closed', 'this client was closed'));
    const id = `${this._prefix}.${++this._pubCount}`;
    let frame;
    try {
      const msg = { op: 'pub', ch, data: data === undefined ? null : data, id };
      if (options.key != null) msg.key = String(options.key);
      if (options.event != null) msg.event = String(options.event);
      frame = JSON.stringify(msg);
    } catch (e) {
      return Promise.reject(new RoostError('bad_request', `data is not JSON: ${e.message}`, { ch }));
    }
    // The server closes a connection with 1009 for a message over its limit;
    // resending it after each reconnect would never end. Refuse it here.
    const max = this._opts.maxMessageBytes || MAX_MESSAGE_BYTES;
    const bytes = new TextEncoder().encode(frame).length;
    if (bytes > max) {
      return Promise.reject(new RoostError('too_large', `the message is ${bytes} bytes; the limit is ${max}`, { ch }));
    }
    return new Promise((resolve, reject) => {
      const p = { id, ch, frame, resolve, reject, tries: 0, timer: null };
      this._pubs.set(id, p);
      if (this._isOpen()) this._send(frame);
    });
  }

  /** Reads stored messages after `since` (default 0), at most `limit` (default 100, max 1000). */
  history(ch, options = {}) {
    const frame = { op: 'hist', ch };
    if (options.since != null) frame.since = options.since;
    if (options.limit != null) frame.limit = options.limit;
    return this._request('hist', frame).then((m) => ({ msgs: m.msgs || [], more: !!m.more, gap: !!m.gap }));
  }

  /** Closes for good: no reconnect; pending publishes and requests are rejected. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    this._retryTimer = this._refreshTimer = null;
    if (typeof globalThis.removeEventListener === 'function') {
      globalThis.removeEventListener('online', this._onOnline);
    }
    const ws = this._ws;
    this._ws = null;
    this._gen++;
    shut(ws, 1000, 'bye');
    const err = () => new RoostError('closed', 'this client was closed');
    for (const p of this._pubs.values()) {
      clearTimeout(p.timer);
      p.reject(err());
    }
    this._pubs.clear();
    for (const r of this._requests.values()) if (r.reject) r.reject(err());
    this._requests.clear();
    for (const s of this._channels.values()) {
      if (!s.started) s.reject(err());
      if (s.presence && !s.presence.closed) s.presence._fail(err());
    }
    this._setState('closed');
  }

  /** Replaces the token (used from the next connect on) and reconnects if the client gave up. */
  setToken(token) {
    this._token = token;
    if (this._closed) return;
    if (this._state !== 'open' && !this._ws) this._connectSoon(0);
  }

  /** Drops the connection and reconnects at once (resuming, like after any disconnect). */
  reconnect() {
    if (this._closed) return;
    this._dropSocket(1000, 'reconnect');
    this._connectSoon(0);
  }

  // ---- connection ------------------------------------------------------

  _isOpen() {
    return !!this._ws && this._state === 'open' && this._ws.readyState === OPEN;
  }

  _connectSoon(delay, token) {
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._connect(token);
    }, delay);
  }

  _backoff(code) {
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this._attempt);
    this._attempt++;
    // "Equal jitter": half fixed, half random, so clients spread out.
    const delay = Math.round(cap / 2 + (Math.random() * cap) / 2);
    this._emit('reconnect', { delay, attempt: this._attempt, code });
    this._connectSoon(delay);
  }

  /** Opens a socket with `token`, or else the one getToken() gives (asked on every connect). */
  async _connect(token) {
    if (this._closed || this._ws) return;
    this._setState('connecting');
    const gen = ++this._gen;
    try {
      if (!token) token = this._getToken ? await this._getToken() : this._token;
      if (token) this._token = token;
    } catch (e) {
      if (gen !== this._gen || this._closed) return;
      this._emit('error', { code: 'token_unavailable', msg: String((e && e.message) || e) });
      return this._backoff(null);
    }
    if (gen !== this._gen || this._closed) return;
    if (!token) {
      this._emit('error', { code: 'token_missing', msg: 'no token to connect with' });
      return this._backoff(null);
    }
    const claims = decodeToken(token);
    if (!this._getToken && claims && typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
      // A fixed token that expired: retrying cannot help. setToken() resumes.
      this._emit('error', { code: 'token_expired', msg: 'the token expired; call setToken() with a fresh one' });
      this._setState('closed');
      return;
    }
    let url = this.url;
    let protocols = ['roost.v1', `roost.token.${token}`];
    if (this._opts.tokenInQuery) {
      url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
      protocols = ['roost.v1'];
    }
    let ws;
    try {
      ws = new this._WS(url, protocols);
    } catch (e) {
      this._emit('error', { code: 'connect_failed', msg: String((e && e.message) || e) });
      return this._backoff(null);
    }
    this._ws = ws;
    this._wsToken = token;
    ws.onopen = () => {
      if (gen !== this._gen) return;
      this._onOpen();
    };
    ws.onmessage = (ev) => {
      if (gen !== this._gen) return;
      this._onMessage(ev.data);
    };
    ws.onerror = () => {
      // Always followed by a close event; handled there.
    };
    ws.onclose = (ev) => {
      if (gen !== this._gen) return;
      this._onClose(ev.code, ev.reason);
    };
  }

  _onOpen() {
    this._attempt = 0;
    this._setState('open');
    this._emit('open');
    this._scheduleRefresh();
    for (const sub of this._channels.values()) this._sendSub(sub);
    for (const r of this._requests.values()) {
      if (r.kind === 'hist' || r.kind === 'presence') this._send(JSON.stringify({ ...r.frame, id: r.id }));
    }
    for (const p of this._pubs.values()) {
      if (!p.timer) this._send(p.frame);
    }
  }

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const before = this._opts.refreshBefore == null ? REFRESH_BEFORE_MS : this._opts.refreshBefore * 1000;
    if (!this._getToken || this._opts.refreshBefore === false) return;
    const c = decodeToken(this._wsToken);
    if (!c || typeof c.exp !== 'number') return;
    const inMs = Math.max(1000, c.exp * 1000 - Date.now() - before);
    // setTimeout holds at most ~24.8 days.
    if (inMs > 2 ** 31 - 1) return;
    this._refreshTimer = setTimeout(() => this._refresh(), inMs);
  }

  /** Before the token expires: get a new one, then reconnect with it and resume. */
  async _refresh() {
    this._refreshTimer = null;
    if (this._closed) return;
    let token;
    try {
      token = await this._getToken();
    } catch (e) {
      this._emit('error', { code: 'token_unavailable', msg: String((e && e.message) || e) });
      this._refreshTimer = setTimeout(() => this._refresh(), 5000);
      return;
    }
    if (this._closed) return;
    this._token = token;
    this._dropSocket(1000, 'token refresh');
    this._emit('reconnect', { delay: 0, attempt: 0, code: 1000 });
    this._connectSoon(0, token);
  }

  /** Forgets the current socket (its events are ignored from now on) and closes it. */
  _dropSocket(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this._gen++;
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    shut(ws, code, reason);
    this._afterDisconnect();
  }

  _afterDisconnect() {
    if (this._state === 'open') this._setState('connecting');
    for (const sub of this._channels.values()) {
      if (sub.subId != null) this._requests.delete(sub.subId);
      sub.subId = null;
      // A snapshot cut off by the disconnect is thrown away; the Map keeps
      // the last complete state until the next one.
      sub.snapshot = null;
      if (sub.catchupTo != null) {
        sub.catchupTo = null;
      }
    }
    for (const [id, r] of this._requests) {
      // Unsubscribes are moot on a new connection; history is asked again.
      if (r.kind === 'unsub') {
        this._requests.delete(id);
        r.resolve({});
      }
    }
  }

  _onClose(code, reason) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    this._ws = null;
    this._afterDisconnect();
    this._emit('close', { code, reason });
    if (this._closed) return;
    this._setState('connecting');
    if (code === 4001) {
      // Token expired: a fresh one (getToken is asked on every connect), at once.
      this._emit('reconnect', { delay: 0, attempt: 0, code });
      this._connectSoon(0);
    } else {
      // 1001 (server restarting), 1013 (slow consumer), network loss, …:
      // back off and resume.
      this._backoff(code);
    }
  }

  _send(text) {
    if (!this._isOpen()) return false;
    try {
      this._ws.send(text);
      return true;
    } catch {
      return false;
    }
  }

  _request(kind, frame) {
    return new Promise((resolve, reject) => {
      const id = ++this._rid;
      this._requests.set(id, { id, kind, frame, resolve, reject, ch: frame.ch, tries: 0 });
      if (this._isOpen()) this._send(JSON.stringify({ ...frame, id }));
    });
  }

  _sendSub(sub) {
    const frame = { op: 'sub', ch: sub.ch };
    sub.snapshot = null;
    if (sub.resume && sub.last != null) {
      const epoch = sub.epoch || this._epoch;
      if (sub.last > 0 && epoch) {
        frame.since = sub.last;
        frame.epoch = epoch;
      } else {
        // No epoch known for this position: replay all, drop what was seen.
        frame.since = 0;
      }
    } else if (sub.map) {
      frame.state = true;
    } else if (sub.wantLast != null) {
      frame.last = sub.wantLast;
    }
    sub.sentSince = frame.since == null ? null : sub.last;
    sub.sentState = !!frame.state;
    sub.sentLast = frame.last != null;
    const id = ++this._rid;
    sub.subId = id;
    this._requests.set(id, { id, kind: 'sub', ch: sub.ch });
    frame.id = id;
    this._send(JSON.stringify(frame));
  }

  // ---- incoming --------------------------------------------------------

  _onMessage(text) {
    let m;
    try {
      m = JSON.parse(typeof text === 'string' ? text : String(text));
    } catch {
      return;
    }
    if (!m || typeof m !== 'object') return;
    switch (m.op) {
      case 'msg':
        return this._onMsg(m);
      case 'ack': {
        const p = this._pubs.get(m.id);
        if (p) {
          this._pubs.delete(m.id);
          p.resolve(m.seq);
        }
        return;
      }
      case 'subok':
        return this._onSubok(m);
      case 'unsubok':
      case 'hist': {
        const r = this._requests.get(m.id);
        if (r) {
          this._requests.delete(m.id);
          r.resolve(m);
        }
        return;
      }
      case 'err':
        return this._onErr(m);
      case 'state':
        return this._onStateMarker(m);
      case 'presence':
        return this._onPresence(m);
      case 'join': {
        const sub = this._channels.get(m.ch);
        if (sub && sub.presence && !sub.presence.closed) sub.presence._join(m.user, m.info);
        return;
      }
      case 'leave': {
        const sub = this._channels.get(m.ch);
        if (sub && sub.presence && !sub.presence.closed) sub.presence._leave(m.user);
        return;
      }
      default:
        return;
    }
  }

  _onMsg(m) {
    const sub = this._channels.get(m.ch);
    if (!sub || sub.subId != null) return; // not subscribed, or no subok yet
    if (sub.snapshot) {
      // Part of a snapshot (ascending seq, the latest message of each key):
      // collected apart, and swapped in whole at the `state` marker.
      if (typeof m.key === 'string') {
        if (m.data === null) sub.snapshot.delete(m.key);
        else sub.snapshot.set(m.key, m);
      }
      return;
    }
    if (sub.last != null && m.seq <= sub.last) return; // seen already
    sub.last = m.seq;
    sub.resume = true;
    if (sub.map && typeof m.key === 'string') {
      // A tombstone (data null) deletes its key.
      if (m.data === null) sub.map.delete(m.key);
      else sub.map.set(m.key, m);
    }
    try {
      if (sub.handler) sub.handler(m);
    } catch (e) {
      setTimeout(() => {
        throw e;
      });
    }
    if (sub.catchupTo != null && m.seq >= sub.catchupTo) {
      sub.catchupTo = null;
      this._emit('caughtup', { ch: sub.ch, seq: m.seq });
    }
  }

  _onSubok(m) {
    const r = this._requests.get(m.id);
    if (!r) return;
    this._requests.delete(m.id);
    const sub = this._channels.get(m.ch);
    if (!sub || sub.subId !== m.id) return;
    sub.subId = null;
    sub.tries = 0;
    const hadEpoch = sub.epoch || this._epoch;
    sub.epoch = m.epoch;
    this._epoch = m.epoch;
    const since = sub.sentSince;
    if (sub.sentState || (sub.map && m.gap)) {
      // A snapshot follows (asked for, or the answer to a resume whose next
      // seq is gone): collect it until the `state` marker.
      sub.snapshot = new Map();
      if (m.gap && since != null && sub.started) {
        this._emit('gap', { ch: sub.ch, epoch: m.epoch, since, epochChanged: !!hadEpoch && hadEpoch !== m.epoch, snapshot: true });
      }
    } else if (sub.sentLast) {
      // The last N stored messages follow (seqs unknown yet, all <= m.seq).
      sub.last = 0;
      // An empty channel: a resume replays everything from the start.
      sub.resume = m.seq === 0;
    } else if (since == null) {
      // Live only: everything after the channel's current last seq.
      sub.last = m.seq;
      sub.resume = true;
    } else if (m.gap) {
      // Messages are gone (trimmed, or another store): take the replay as it comes.
      const resumed = sub.started || since > 0;
      sub.last = 0;
      if (resumed) this._emit('gap', { ch: sub.ch, epoch: m.epoch, since, epochChanged: !!hadEpoch && hadEpoch !== m.epoch });
    }
    const first = !sub.started;
    sub.started = true;
    if (sub.snapshot) {
      // Resolved at the `state` marker, with the Map filled.
      sub.pendingResult = { ch: m.ch, seq: m.seq, epoch: m.epoch, gap: !!m.gap };
      return;
    }
    if (sub.sentLast && m.seq > 0) {
      sub.catchupTo = m.seq;
      this._emit('catchup', { ch: sub.ch, from: Math.max(1, m.seq - sub.wantLast + 1), to: m.seq });
    } else if (since != null && m.seq > sub.last) {
      sub.catchupTo = m.seq;
      this._emit('catchup', { ch: sub.ch, from: sub.last + 1, to: m.seq });
    }
    if (first) sub.resolve({ ch: m.ch, seq: m.seq, epoch: m.epoch, gap: !!m.gap });
  }

  /** `{"op":"state","ch","seq"}`: the snapshot is complete; it replaces the Map. */
  _onStateMarker(m) {
    const sub = this._channels.get(m.ch);
    if (!sub || sub.subId != null || !sub.snapshot) return;
    const snap = sub.snapshot;
    sub.snapshot = null;
    sub.map.clear();
    for (const [k, v] of snap) sub.map.set(k, v);
    sub.last = typeof m.seq === 'number' ? m.seq : 0;
    sub.resume = true;
    this._emit('snapshot', { ch: sub.ch, seq: sub.last, state: sub.map });
    const r = sub.pendingResult;
    if (r) {
      sub.pendingResult = null;
      if (!sub.resolved) {
        sub.resolved = true;
        sub.resolve({ ...r, state: sub.map });
      }
    }
  }

  /** A full member list: after a (re)subscription, or the answer to `presence`. */
  _onPresence(m) {
    if (m.id != null) {
      const r = this._requests.get(m.id);
      if (r && r.kind === 'presence') {
        this._requests.delete(m.id);
        r.resolve(m);
      }
    }
    const sub = this._channels.get(m.ch);
    if (sub && sub.presence && !sub.presence.closed) sub.presence._list(m.members, m.count);
  }

  _onErr(m) {
    const info = { code: m.code, msg: m.msg };
    if (m.id == null) {
      this._emit('error', info);
      return;
    }
    const p = this._pubs.get(m.id);
    if (p) {
      if (RETRYABLE.has(m.code) && p.tries < MAX_RETRIES) {
        p.tries++;
        p.timer = setTimeout(() => {
          p.timer = null;
          if (this._pubs.has(p.id)) this._send(p.frame);
        }, Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** p.tries));
        return;
      }
      this._pubs.delete(m.id);
      p.reject(new RoostError(m.code, m.msg, { ch: p.ch }));
      return;
    }
    const r = this._requests.get(m.id);
    if (!r) return;
    this._requests.delete(m.id);
    if (r.kind === 'sub') {
      const sub = this._channels.get(r.ch);
      if (!sub || sub.subId !== m.id) return;
      sub.subId = null;
      if (RETRYABLE.has(m.code) && sub.tries < MAX_RETRIES) {
        sub.tries++;
        setTimeout(() => {
          if (this._channels.get(sub.ch) === sub && sub.subId == null && this._isOpen()) this._sendSub(sub);
        }, Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** sub.tries));
        return;
      }
      this._channels.delete(r.ch);
      const err = new RoostError(m.code, m.msg, { ch: r.ch });
      if (!sub.started) sub.reject(err);
      if (sub.presence && !sub.presence.closed) sub.presence._fail(err);
      this._emit('error', { ...info, ch: r.ch });
      return;
    }
    if (r.kind === 'hist' && RETRYABLE.has(m.code) && r.tries < MAX_RETRIES) {
      r.tries++;
      this._requests.set(m.id, r);
      setTimeout(() => {
        if (this._requests.get(r.id) === r) this._send(JSON.stringify({ ...r.frame, id: r.id }));
      }, Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** r.tries));
      return;
    }
    r.reject(new RoostError(m.code, m.msg, { ch: r.ch }));
  }
}

export default Roost;
