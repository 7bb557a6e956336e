// TypeScript declarations for roost.js, the roostd client (served by roostd at /roost.js).

/** Any JSON value: what `data` may be. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A message as delivered by the server. */
export interface RoostMessage<T = Json> {
  op: 'msg';
  /** Channel name. */
  ch: string;
  /** Position in the channel: 1, 2, 3, … without gaps. */
  seq: number;
  /** Server time of the commit, milliseconds since the epoch. */
  ts: number;
  /** The publisher's token `sub`. */
  from: string;
  /** The published value, exactly as sent. */
  data: T;
  /** The message's key, when it was published with one (`publish(ch, data, { key })`). */
  key?: string;
  /** The message's event name, when it was published with one. */
  event?: string;
}

/** A WebSocket constructor: the browser's, Node 22's, or the `ws` package's. */
export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[]): WebSocketLike;
}

export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
}

export interface RoostOptions {
  /** A JWT (compact form). Either this or `getToken`. */
  token?: string;
  /**
   * Returns a JWT; asked on every (re)connect, after close code 4001, and
   * `refreshBefore` seconds before the current token's `exp` (then the
   * client reconnects with the new token and resumes).
   */
  getToken?: () => string | Promise<string>;
  /** Seconds before `exp` to refresh a token from `getToken` (default 30); `false`: never ahead of time. */
  refreshBefore?: number | false;
  /** The WebSocket implementation; default `globalThis.WebSocket` (Node 20: pass the `ws` package's). */
  WebSocket?: WebSocketConstructor;
  /**
   * Send the token as `?token=` in the URL instead of as the
   * `roost.token.<jwt>` subprotocol (which keeps it out of URLs and logs).
   */
  tokenInQuery?: boolean;
  /**
   * The server's `--max-message-bytes` (default 65536). A publish whose frame
   * is larger is rejected with `too_large` rather than sent (the server would
   * close the connection with 1009).
   */
  maxMessageBytes?: number;
}

export type RoostState = 'connecting' | 'open' | 'closed';

export interface SubscribeOptions {
  /**
   * Deliver stored messages with seq > since first (0: everything stored).
   * Without it only messages published after the subscription are delivered.
   */
  since?: number;
  /** The store's epoch that `since` refers to (from an earlier `subscribe` result). */
  epoch?: string;
  /** Replay the channel's last N stored messages (1 to 100), then live ones. Not with `since` or `state`. */
  last?: number;
  /**
   * A compacted channel (the server's `--compact`): keep a Map key → latest
   * message (`SubscribeResult.state`, `Roost.stateMap(ch)`), current across
   * reconnects; a message with `data: null` deletes its key. The promise
   * resolves once the snapshot is in the Map.
   */
  state?: boolean;
}

export interface PublishOptions {
  /** 1 to 128 bytes of channel-name characters; on a compacted channel the latest message of each key is kept. */
  key?: string;
  /** An event name delivered with the message (`msg.event`). */
  event?: string;
}

/** A member of a presence channel. */
export interface Member {
  /** The token's `sub`. */
  user: string;
  /** The token's `info` claim (a JSON object), or null. */
  info: { [key: string]: Json } | null;
}

export interface PresenceEvents {
  /** A user's first connection joined (never the own user). */
  join: { ch: string; user: string; info: Member['info'] };
  /** A user's last connection left and did not come back within the grace. */
  leave: { ch: string; user: string };
  /** A full list arrived (first subscribe, a reconnect, refresh()), after its join/leave events. */
  sync: { ch: string; members: Member[]; count: number };
  /** The list changed (or arrived for the first time). */
  change: { ch: string; members: Member[]; count: number };
  /** The subscription was refused (`forbidden`, `too_many_members`, `bad_request`) or closed. */
  error: { ch: string; code: string; msg?: string };
}

/** Who is on a presence channel, kept right across reconnects (`Roost.presence`). */
export class Presence {
  readonly ch: string;
  /** Members sorted by user, the own user included. */
  readonly members: Member[];
  readonly count: number;
  /** True after close(), a refusal, or the client's close(). */
  readonly closed: boolean;
  /** Resolves once the first list arrived; rejects if the subscription is refused. */
  readonly ready: Promise<Presence>;
  has(user: string): boolean;
  on<K extends keyof PresenceEvents>(event: K, fn: (arg: PresenceEvents[K]) => void): () => void;
  off<K extends keyof PresenceEvents>(event: K, fn: (arg: PresenceEvents[K]) => void): void;
  /** Asks the server for the list again. */
  refresh(): Promise<Member[]>;
  /** Unsubscribes the channel. */
  close(): Promise<void>;
}

export interface SubscribeResult {
  ch: string;
  /** The channel's last seq when the subscription started (0 if empty). */
  seq: number;
  /** The store's epoch: remember it with the last seq you processed. */
  epoch: string;
  /** Some messages after `since` are gone (trimmed, or another store). */
  gap: boolean;
  /** A `state: true` subscription: key → latest message, kept current (the same Map object throughout). */
  state?: Map<string, RoostMessage>;
}

export interface HistoryOptions {
  /** Messages with seq > since (default 0). */
  since?: number;
  /** At most this many (default 100, max 1000). */
  limit?: number;
}

export interface HistoryResult<T = Json> {
  msgs: RoostMessage<T>[];
  /** Higher seqs exist: ask again with `since` = the last seq received. */
  more: boolean;
  /** Seq since+1 was already trimmed, or `since` is past the end. */
  gap: boolean;
}

export interface RoostEvents {
  /** The connection state changed. */
  state: RoostState;
  /** A connection is open (subscriptions are being resumed). */
  open: void;
  /** The connection closed (code 1001: server stopping, 1013: slow consumer, 4001: token expired, 1006: lost). */
  close: { code: number; reason: string };
  /** A reconnect is scheduled in `delay` ms. */
  reconnect: { delay: number; attempt: number; code: number | null };
  /** Messages of `ch` were lost for this client (trimmed by retention, or a new store); delivery continues from what is stored. */
  gap: { ch: string; epoch: string; since: number; epochChanged: boolean; snapshot?: boolean };
  /** A (re)subscription replays messages `from`..`to` (show "catching up…"). */
  catchup: { ch: string; from: number; to: number };
  /** The replay announced by `catchup` was delivered up to `seq`. */
  caughtup: { ch: string; seq: number };
  /** A state subscription's Map was (re)built from a snapshot (first subscribe, or a resume after a gap). */
  snapshot: { ch: string; seq: number; state: Map<string, RoostMessage> };
  /**
   * Something went wrong that no promise reports: a refused (re)subscription
   * (with `ch`; the subscription is dropped), `token_expired` (a fixed token
   * ran out: the client stops, call `setToken`), `token_unavailable` (getToken failed).
   */
  error: { code: string; msg?: string; ch?: string };
}

/** An `err` reply from the server (`code` is its code) or `closed`. */
export class RoostError extends Error {
  code: 'bad_request' | 'forbidden' | 'too_large' | 'rate_limited' | 'unknown_op' | 'bad_channel'
    | 'too_many_subscriptions' | 'unavailable' | 'too_many_members' | 'too_many_keys' | 'too_many_channels'
    | 'closed' | string;
  ch?: string;
}

export class Roost {
  /** @param url `ws://host:port` (or `wss://`, `http(s)://`); `/ws` is appended. */
  constructor(url: string, options: RoostOptions);
  /** The `/ws` URL connected to. */
  readonly url: string;
  readonly state: RoostState;

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof RoostEvents>(event: K, fn: (arg: RoostEvents[K]) => void): () => void;
  off<K extends keyof RoostEvents>(event: K, fn: (arg: RoostEvents[K]) => void): void;

  /**
   * Subscribes: `onMessage` sees every message of `ch` once, in seq order,
   * across reconnects. Resolves with the first `subok`; rejects with a
   * RoostError if refused. Subscribing again to the same channel replaces
   * the handler.
   */
  subscribe<T = Json>(ch: string, onMessage: (msg: RoostMessage<T>) => void, options?: SubscribeOptions): Promise<SubscribeResult>;
  subscribe(ch: string, options: SubscribeOptions): Promise<SubscribeResult>;
  unsubscribe(ch: string): Promise<void>;
  /** The Map of a `state: true` subscription, or undefined. */
  stateMap(ch: string): Map<string, RoostMessage> | undefined;
  /** Joins a presence channel (`presence-*`, or a `--presence` pattern) and tracks its members. */
  presence(ch: string): Presence;
  /** Resolves with the message's seq once it is durably stored; never lost or doubled across reconnects. */
  publish(ch: string, data: Json, options?: PublishOptions): Promise<number>;
  history<T = Json>(ch: string, options?: HistoryOptions): Promise<HistoryResult<T>>;
  /** Closes for good (no reconnect); pending publishes and requests reject with code `closed`. */
  close(): void;
  /** Uses this token from the next connect on (and connects if the client stopped for an expired token). */
  setToken(token: string): void;
  /** Drops the connection and reconnects at once, resuming. */
  reconnect(): void;
}

/** Decodes a JWT's payload without verifying it (to read `sub`, `exp`); null if malformed. */
export function decodeToken(token: string): { sub?: string; exp?: number; [claim: string]: unknown } | null;

export default Roost;
