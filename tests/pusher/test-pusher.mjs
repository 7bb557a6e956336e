// roostd's Pusher door (docs: /work/shared/spec/pusher.md) against the real
// libraries a Laravel application uses: pusher-js and laravel-echo in the
// "browser", the `pusher` server library for the signed HTTP API, and an
// auth endpoint that signs with the library's authorizeChannel /
// authenticateUser, as Laravel's /broadcasting/auth does.
//
//   bash tests/pusher/run.sh          (or: cd tests/pusher && npm ci && node test-pusher.mjs)
//
// One roostd for the file, started with --pusher-app-id/--pusher-key and a
// secret file, `news` and `cache-*` public, a short presence grace. Every
// "did not arrive" is shown with a later marker on the same socket, never
// with a sleep. ROOSTD_TEST_SCALE=small stretches every wait tenfold.
import assert from 'node:assert/strict';
import http from 'node:http';
import { writeFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import PusherServer from 'pusher';
import PusherJS from 'pusher-js';
import Echo from 'laravel-echo';
import { Server, mintAppToken, tempDir, removeDir, sleep } from '../browser/server.mjs';

const SCALE = process.env.ROOSTD_TEST_SCALE === 'small' ? 10 : 1;
const APP = { appId: '4242', key: 'app-key', secret: 'pusher-test-secret-0123456789abcdef' };

let server, data, auth, api, authPort;
const clients = [];

/** Polls `cond` until it returns something truthy, or fails after `ms`. */
async function until(what, cond, ms = 10000) {
  const end = Date.now() + ms * SCALE;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** The events a channel object saw, as [event, data]. */
function recorder(ch) {
  const seen = [];
  ch.bind_global((event, d) => seen.push([event, d]));
  return seen;
}

/** pusher-js options that reach roostd on loopback over plain ws://. */
function wsOptions() {
  return { cluster: 'mt1', wsHost: '127.0.0.1', wsPort: server.port, forceTLS: false, enabledTransports: ['ws'], disableStats: true };
}

/** A pusher-js client for `user`, authorized by the test's auth endpoint. */
function client(user = 'anon', extra = {}) {
  const headers = { 'X-User': user };
  const c = new PusherJS(APP.key, {
    ...wsOptions(),
    channelAuthorization: { endpoint: `http://127.0.0.1:${authPort}/broadcasting/auth`, transport: 'ajax', headers },
    userAuthentication: { endpoint: `http://127.0.0.1:${authPort}/pusher/user-auth`, transport: 'ajax', headers },
    ...extra,
  });
  clients.push(c);
  return c;
}

async function connected(c) {
  await until('the connection', () => c.connection.state === 'connected');
  return c;
}

/** Subscribes and waits for subscription_succeeded (or fails with the subscription error). */
function subscribed(c, name) {
  const ch = c.subscribe(name);
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`no answer to subscribe ${name}`)), 10000 * SCALE);
    ch.bind('pusher:subscription_succeeded', (members) => {
      clearTimeout(timer);
      res({ ch, members });
    });
    ch.bind('pusher:subscription_error', (e) => {
      clearTimeout(timer);
      rej(Object.assign(new Error(`subscribe ${name} refused: ${JSON.stringify(e)}`), { status: e.status }));
    });
  });
}

/** The next `event` on channel object `ch`. */
function next(ch, event) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`no ${event} on ${ch.name}`)), 10000 * SCALE);
    const h = (d) => {
      clearTimeout(timer);
      ch.unbind(event, h);
      res(d);
    };
    ch.bind(event, h);
  });
}

/** The main application's auth endpoint: signs what the user may join. */
function authEndpoint() {
  const signer = new PusherServer({ ...APP, host: '127.0.0.1', port: 1, useTLS: false });
  return http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const form = new URLSearchParams(body);
      const user = req.headers['x-user'];
      const socketId = form.get('socket_id');
      let answer;
      if (req.url === '/pusher/user-auth') {
        answer = signer.authenticateUser(socketId, { id: user, name: `User ${user}` });
      } else {
        const channel = form.get('channel_name');
        if (channel.startsWith('private-forbidden')) {
          res.writeHead(403).end('{}');
          return;
        }
        const presence = channel.startsWith('presence-') ? { user_id: user, user_info: { name: `User ${user}` } } : undefined;
        answer = signer.authorizeChannel(socketId, channel, presence);
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
    });
  });
}

before(async () => {
  data = tempDir('roost-pusher-');
  const secretFile = `${data}.pusher-secret`;
  writeFileSync(secretFile, APP.secret);
  const authServer = authEndpoint();
  await new Promise((r) => authServer.listen(0, '127.0.0.1', r));
  authPort = authServer.address().port;
  auth = authServer;
  server = new Server(data, [
    '--pusher-app-id', APP.appId,
    '--pusher-key', APP.key,
    '--pusher-secret-file', secretFile,
    '--pusher-public', 'news',
    '--pusher-public', 'cache-*',
    '--presence-grace', '300ms',
  ]);
  await server.start(0);
  api = new PusherServer({ ...APP, host: '127.0.0.1', port: server.port, useTLS: false });
});

after(async () => {
  for (const c of clients) c.disconnect();
  auth?.close();
  if (server) {
    const how = await server.stop('SIGTERM');
    console.log(`roostd stopped (${how}); its last log lines:\n${server.log.slice(-30).join('\n')}`);
  }
  removeDir(data);
  removeDir(`${data}.pusher-secret`);
});

test('pusher-js connects with protocol 7 and gets a socket id', async () => {
  const c = await connected(client());
  assert.match(c.connection.socket_id, /^\d+\.\d+$/);
});

test('an unknown app key is refused with pusher:error 4001', async () => {
  const c = new PusherJS('not-the-key', wsOptions());
  clients.push(c);
  const errors = [];
  c.connection.bind('error', (e) => errors.push(e));
  // pusher-js reports the refusal as a WebSocketError wrapping the PusherError.
  await until('error 4001', () => errors.find((e) => (e?.error?.data ?? e?.data)?.code === 4001));
  await until('the connection given up', () => c.connection.state === 'disconnected');
});

test('a public channel needs --pusher-public; others are refused with 403', async () => {
  const c = await connected(client());
  const { ch } = await subscribed(c, 'news');
  const got = next(ch, 'headline');
  await api.trigger('news', 'headline', { title: 'roostd speaks Pusher' });
  assert.deepEqual(await got, { title: 'roostd speaks Pusher' });
  await assert.rejects(subscribed(c, 'gossip'), (e) => e.status === 403);
});

test('a private channel is joined with a signature from the auth endpoint, and a bad one is a 401', async () => {
  const c = await connected(client('alice'));
  const { ch } = await subscribed(c, 'private-orders.7');
  const got = next(ch, 'OrderShipped');
  await api.trigger('private-orders.7', 'OrderShipped', { id: 7 });
  assert.deepEqual(await got, { id: 7 });
  // A signature made with the wrong secret: the server refuses it, the socket stays.
  const forger = new PusherServer({ ...APP, secret: 'not-the-secret', host: '127.0.0.1', port: 1, useTLS: false });
  const bad = await connected(
    client('mallory', {
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, cb) => cb(null, forger.authorizeChannel(socketId, channelName)),
      },
    }),
  );
  await assert.rejects(subscribed(bad, 'private-orders.7'), (e) => e.status === 401);
  assert.equal(bad.connection.state, 'connected');
  await subscribed(bad, 'news');
});

test('Laravel Echo hears an event the server library triggers', async () => {
  const echo = new Echo({
    broadcaster: 'pusher',
    key: APP.key,
    ...wsOptions(),
    Pusher: PusherJS,
    authEndpoint: `http://127.0.0.1:${authPort}/broadcasting/auth`,
    auth: { headers: { 'X-User': 'erin' } },
  });
  clients.push(echo.connector.pusher);
  const heard = new Promise((res) => echo.private('invoices.1').listen('.InvoicePaid', res));
  await until('Echo subscribed', () => echo.connector.pusher.channel('private-invoices.1')?.subscribed);
  await api.trigger('private-invoices.1', 'InvoicePaid', { invoice: 1, amount: '9.50' });
  assert.deepEqual(await heard, { invoice: 1, amount: '9.50' });
});

test('presence: two users see each other join and leave', async () => {
  const a = await connected(client('alice'));
  const { ch: chA, members: before } = await subscribed(a, 'presence-room.1');
  assert.equal(before.count, 1);
  assert.deepEqual(before.me, { id: 'alice', info: { name: 'User alice' } });
  const added = next(chA, 'pusher:member_added');
  const b = await connected(client('bob'));
  const { members } = await subscribed(b, 'presence-room.1');
  assert.equal(members.count, 2);
  assert.deepEqual(members.get('alice'), { id: 'alice', info: { name: 'User alice' } });
  assert.deepEqual(await added, { id: 'bob', info: { name: 'User bob' } });
  const removed = next(chA, 'pusher:member_removed');
  b.disconnect();
  assert.equal((await removed).id, 'bob');
  assert.equal(chA.members.count, 1);
});

test('a cache channel sends its last event on subscribe, or pusher:cache_miss', async () => {
  await api.trigger('cache-prices', 'price', { eur: 1 });
  await api.trigger('cache-prices', 'price', { eur: 2 });
  const c = await connected(client());
  const ch = c.subscribe('cache-prices');
  assert.deepEqual(await next(ch, 'price'), { eur: 2 });
  const empty = c.subscribe('cache-empty');
  await next(empty, 'pusher:cache_miss');
});

test('client events reach the other subscribers and never the sender', async () => {
  const a = await connected(client('alice'));
  const b = await connected(client('bob'));
  const { ch: chA } = await subscribed(a, 'private-chat.1');
  const { ch: chB } = await subscribed(b, 'private-chat.1');
  const seenA = recorder(chA);
  const typing = next(chB, 'client-typing');
  assert.ok(chA.trigger('client-typing', { who: 'alice' }));
  assert.deepEqual(await typing, { who: 'alice' });
  // A marker sent after it, on the same channel: when the sender has the
  // marker, it would already have had its own client event.
  const marker = next(chA, 'marker');
  await api.trigger('private-chat.1', 'marker', {});
  await marker;
  assert.deepEqual(seenA.filter(([e]) => e === 'client-typing'), []);
});

test('socket_id leaves that connection out of an API event (toOthers)', async () => {
  const a = await connected(client());
  const b = await connected(client());
  const { ch: chA } = await subscribed(a, 'news');
  const { ch: chB } = await subscribed(b, 'news');
  const seenA = recorder(chA);
  const gotB = next(chB, 'edited');
  await api.trigger('news', 'edited', { n: 1 }, { socket_id: a.connection.socket_id });
  assert.deepEqual(await gotB, { n: 1 });
  const marker = next(chA, 'marker');
  await api.trigger('news', 'marker', {});
  await marker;
  assert.deepEqual(seenA.filter(([e]) => e === 'edited'), []);
});

test('batch events, channel queries and users through the server library', async () => {
  const c = await connected(client('carol'));
  const { ch } = await subscribed(c, 'presence-board');
  const one = next(ch, 'b1');
  const news = await subscribed(c, 'news');
  const two = next(news.ch, 'b2');
  await api.triggerBatch([
    { channel: 'presence-board', name: 'b1', data: { i: 1 } },
    { channel: 'news', name: 'b2', data: 'plain' },
  ]);
  assert.deepEqual(await one, { i: 1 });
  assert.equal(await two, 'plain');

  const list = await (await api.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })).json();
  assert.equal(list.channels['presence-board'].user_count, 1);
  assert.equal(list.channels.news, undefined, 'the prefix filter leaves news out');
  const info = await (await api.get({ path: '/channels/news', params: { info: 'subscription_count' } })).json();
  assert.equal(info.occupied, true);
  assert.ok(info.subscription_count >= 1);
  const users = await (await api.get({ path: '/channels/presence-board/users' })).json();
  assert.deepEqual(users.users, [{ id: 'carol' }]);
});

test('a signed-in user gets sendToUser events and is closed by terminate_connections', async () => {
  const c = await connected(client('dave'));
  const got = new Promise((res) => c.user.bind('note', res));
  c.signin();
  await until('sign-in', () => c.user.user_data?.id === 'dave');
  await until('the #server-to-user channel', () => c.user.serverToUserChannel?.subscribed);
  await api.sendToUser('dave', 'note', { hi: true });
  assert.deepEqual(await got, { hi: true });
  const states = [];
  c.connection.bind('state_change', (s) => states.push(s.current));
  await api.terminateUserConnections('dave');
  await until('the connection closed', () => states.some((s) => s !== 'connected'));
});

test('one store: an event from the Pusher API is a durable roostd message', async () => {
  await api.trigger('orders.log', 'OrderShipped', { id: 9 });
  await api.trigger('orders.log', 'Note', 'plain text');
  const res = await fetch(`${server.url}/api/channels/orders.log/messages?since=0`, {
    headers: { authorization: `Bearer ${mintAppToken(data, 'app')}` },
  });
  assert.equal(res.status, 200);
  const { msgs } = await res.json();
  assert.deepEqual(
    msgs.map((m) => [m.seq, m.event, m.from, m.data]),
    [
      [1, 'OrderShipped', 'app', { id: 9 }],
      [2, 'Note', 'app', 'plain text'],
    ],
  );
});

test('the API refuses a bad signature and a stale timestamp with 401', async () => {
  const forger = new PusherServer({ ...APP, secret: 'not-the-secret', host: '127.0.0.1', port: server.port, useTLS: false });
  await assert.rejects(forger.trigger('news', 'x', {}), (e) => e.status === 401);
  const now = Date.now;
  Date.now = () => now() - 700 * 1000;
  try {
    await assert.rejects(api.trigger('news', 'x', {}), (e) => e.status === 401);
  } finally {
    Date.now = now;
  }
  const over = await api.trigger('news', 'x', 'd'.repeat(10 * 1024 + 1)).catch((e) => e);
  assert.equal(over.status, 413, 'data over 10 KB');
});
