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
}

export interface SubscribeResult {
  ch: string;
  /** The channel's last seq when the subscription started (0 if empty). */
  seq: number;
  /** The store's epoch: remember it with the last seq you processed. */
  epoch: string;
  /** Some messages after `since` are gone (trimmed, or another store). */
  gap: boolean;
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
  gap: { ch: string; epoch: string; since: number; epochChanged: boolean };
  /** A (re)subscription replays messages `from`..`to` (show "catching up…"). */
  catchup: { ch: string; from: number; to: number };
  /** The replay announced by `catchup` was delivered up to `seq`. */
  caughtup: { ch: string; seq: number };
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
    | 'too_many_subscriptions' | 'unavailable' | 'closed' | string;
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
  unsubscribe(ch: string): Promise<void>;
  /** Resolves with the message's seq once it is durably stored; never lost or doubled across reconnects. */
  publish(ch: string, data: Json): Promise<number>;
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
