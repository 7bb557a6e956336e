// Node-only end-to-end test of web/roost.js (with the `ws` package) against
// the real roostd binary:
//   1. 200 publishes while the server is SIGKILLed twice and restarted: the
//      subscribers see seqs 1..200 exactly once, in order; every publish
//      promise resolves, with unique seqs matching what subscribers saw.
//      One subscriber also refreshes its short-lived token on the way.
//   2. Token expiry: a connection closed with 4001 reconnects with a fresh
//      token from getToken and loses nothing.
//   3. history(), and refusals (forbidden publish, bad channel).
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Roost, RoostError, decodeToken } from '../../web/roost.js';
import { Server, mintToken, token, tempDir, removeDir, sleep, withTimeout, testRunner } from './server.mjs';

const N = 200;
const { test, cleanups, finish } = testRunner();

async function waitFor(what, cond, ms = 30000) {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

/** Records a subscriber's deliveries. */
function collector() {
  const seen = [];
  const handler = (m) => seen.push(m);
  return { seen, handler };
}

function assertExactlyOnce(seen, n, who) {
  const seqs = seen.map((m) => m.seq);
  const expected = Array.from({ length: n }, (_, i) => i + 1);
  assert.deepEqual(seqs, expected, `${who}: seqs are 1..${n} exactly once, in order`);
}

await test('200 publishes across two SIGKILL restarts: exactly once, in order', async () => {
  const data = tempDir('roost-node-');
  const server = new Server(data);
  cleanups.push(() => removeDir(data));
  cleanups.push(() => server.stop('SIGKILL'));
  await server.start(0);
  const url = `ws://127.0.0.1:${server.port}`;

  const pubTok = mintToken(data, 'writer');
  const subTok = mintToken(data, 'reader');
  let refreshes = 0;
  const opts = { WebSocket };
  const pub = new Roost(url, { ...opts, token: pubTok });
  const sub = new Roost(url, { ...opts, token: subTok });
  // A reader with a token that lives 32 s: refreshed (reconnect with a new
  // one) 30 s before exp, i.e. about 2 s into the run.
  const short = new Roost(url, {
    ...opts,
    getToken: async () => {
      refreshes++;
      return mintToken(data, 'short-lived', '32s');
    },
  });
  cleanups.push(() => [pub, sub, short].forEach((r) => r.close()));
  const events = { catchup: 0, caughtup: 0, states: [], closes: [] };
  sub.on('catchup', () => events.catchup++);
  sub.on('caughtup', () => events.caughtup++);
  sub.on('state', (s) => events.states.push(s));
  sub.on('close', (c) => events.closes.push(c.code));
  const gaps = [];
  for (const r of [pub, sub, short]) r.on('gap', (g) => gaps.push(g));

  const a = collector();
  const b = collector();
  const ok = await withTimeout(sub.subscribe('load', a.handler), 10000, 'subscribe');
  assert.equal(ok.seq, 0);
  await withTimeout(short.subscribe('load', b.handler, { since: 0 }), 10000, 'subscribe (short)');
  assert.equal(sub.state, 'open');

  const acks = [];
  const kills = [];
  const inFlightAtKill = [];
  for (let i = 0; i < N; i++) {
    if (i === 130) {
      // The second kill should also find publishes in flight on an open
      // connection: let the writer get back and drain first.
      await withTimeout(kills[0], 30000, 'first restart');
      await waitFor('the writer to drain', () => pub.state === 'open' && pub._pubs.size === 0, 30000);
    }
    acks.push(pub.publish('load', { i, text: `message ${i}` }));
    if (i === 69 || i === 139) {
      // Kill right after a burst went out, so publishes are unacked (some
      // committed, some not); keep publishing while it is down.
      inFlightAtKill.push(pub._pubs.size);
      kills.push(
        (async () => {
          await server.stop('SIGKILL');
          await sleep(300);
          await server.start(server.port);
        })(),
      );
    }
    // Bursts of 10, then a pause.
    if (i % 10 === 9) await sleep(60);
  }
  await withTimeout(Promise.all(kills), 30000, 'restarts');
  const seqs = await withTimeout(Promise.all(acks), 60000, 'all publishes acked');
  assert.equal(new Set(seqs).size, N, 'every publish got its own seq');
  assert.deepEqual([...seqs].sort((x, y) => x - y), Array.from({ length: N }, (_, i) => i + 1), 'acked seqs are 1..N');

  await waitFor('the subscribers to see all messages', () => a.seen.length >= N && b.seen.length >= N);
  await sleep(300); // anything extra would show up now
  assertExactlyOnce(a.seen, N, 'subscriber');
  assertExactlyOnce(b.seen, N, 'short-lived subscriber');
  for (const m of a.seen) {
    assert.equal(seqs[m.data.i], m.seq, `publish ${m.data.i} was acked with the seq it was delivered at`);
    assert.equal(m.from, 'writer');
    assert.equal(m.ch, 'load');
    assert.equal(typeof m.ts, 'number');
  }
  assert.deepEqual(gaps, [], 'no gap reported');
  assert.ok(events.closes.length >= 2, `the subscriber lost its connection at each kill (${events.closes})`);
  assert.ok(events.states.filter((s) => s === 'open').length >= 2, 'and opened again');
  assert.ok(refreshes >= 2, `the short-lived token was refreshed (getToken asked ${refreshes}×)`);
  assert.equal(pub.state, 'open');
  console.log(
    `# kills: 2 (unacked publishes at each: ${inFlightAtKill}); subscriber reconnects: ${events.closes.length}; catch-ups: ${events.catchup}; ` +
      `getToken calls: ${refreshes}`,
  );

  // history() on the same data, after the restarts.
  const h = await withTimeout(sub.history('load', { since: 190 }), 5000, 'history');
  assert.deepEqual(h.msgs.map((m) => m.seq), [191, 192, 193, 194, 195, 196, 197, 198, 199, 200]);
  assert.equal(h.more, false);
  assert.equal(h.gap, false);
  const h2 = await withTimeout(sub.history('load', { limit: 5 }), 5000, 'history page');
  assert.deepEqual(h2.msgs.map((m) => m.seq), [1, 2, 3, 4, 5]);
  assert.equal(h2.more, true);

  // A second SIGTERM restart (close code 1001): resumes too.
  const c = collector();
  await sub.unsubscribe('load');
  await sub.subscribe('load', c.handler, { since: 195, epoch: ok.epoch });
  await waitFor('resume from 195', () => c.seen.length >= 5);
  await server.restart('SIGTERM');
  assert.ok(events.closes.includes(1001), `closed with 1001 on SIGTERM (${events.closes})`);
  await withTimeout(pub.publish('load', { i: N, text: 'after SIGTERM' }), 15000, 'publish after SIGTERM');
  await waitFor('the message after SIGTERM', () => c.seen.length >= 6);
  await sleep(100);
  assert.deepEqual(c.seen.map((m) => m.seq), [196, 197, 198, 199, 200, 201]);
});

await test('4001 (token expired) → fresh token from getToken, nothing lost', async () => {
  const data = tempDir('roost-node-');
  // No leeway: a 2 s token is closed with 4001 after 2 s.
  const server = new Server(data, ['--leeway', '0s']);
  cleanups.push(() => removeDir(data));
  cleanups.push(() => server.stop('SIGKILL'));
  await server.start(0);
  const url = `ws://127.0.0.1:${server.port}`;
  let minted = 0;
  const sub = new Roost(url, {
    WebSocket,
    refreshBefore: false, // let the server close it, to see 4001 handled
    getToken: async () => {
      minted++;
      return mintToken(data, 'brief', '2s');
    },
  });
  const pub = new Roost(url, { WebSocket, token: mintToken(data, 'writer') });
  cleanups.push(() => [pub, sub].forEach((r) => r.close()));
  const closes = [];
  sub.on('close', (c) => closes.push(c.code));
  const a = collector();
  await withTimeout(sub.subscribe('exp', a.handler), 5000, 'subscribe');
  const acks = [];
  const t0 = Date.now();
  let i = 0;
  while (Date.now() - t0 < 4500) {
    acks.push(pub.publish('exp', { i: i++ }));
    await sleep(50);
  }
  await withTimeout(Promise.all(acks), 10000, 'acks');
  await waitFor('all messages', () => a.seen.length >= i, 10000);
  await sleep(200);
  assertExactlyOnce(a.seen, i, 'subscriber');
  assert.ok(closes.includes(4001), `closed with 4001 (${closes})`);
  assert.ok(minted >= 2, `getToken asked again (${minted}×)`);
});

await test('refusals: forbidden publish, bad channel, fixed expired token', async () => {
  const data = tempDir('roost-node-');
  const server = new Server(data);
  cleanups.push(() => removeDir(data));
  cleanups.push(() => server.stop('SIGKILL'));
  await server.start(0);
  const url = `ws://127.0.0.1:${server.port}`;
  const ro = token(data, ['--sub', 'viewer', '--read', '*']);
  const r = new Roost(url, { WebSocket, token: ro });
  cleanups.push(() => r.close());
  const errors = [];
  r.on('error', (e) => errors.push(e));
  await assert.rejects(r.publish('room:1', 'x'), (e) => e instanceof RoostError && e.code === 'forbidden');
  await assert.rejects(r.subscribe('bad channel!', () => {}), (e) => e.code === 'bad_channel');
  assert.ok(errors.some((e) => e.code === 'bad_channel' && e.ch === 'bad channel!'));
  assert.equal(decodeToken(ro).sub, 'viewer');
  // Over the server's message limit: refused before it is sent (the server
  // would close the connection with 1009, again after every resend).
  await assert.rejects(r.publish('room:1', 'x'.repeat(70000)), (e) => e.code === 'too_large');
  assert.equal(r.state, 'open');
  r.close();
  assert.equal(r.state, 'closed');
  await assert.rejects(r.publish('room:1', 'x'), (e) => e.code === 'closed');

  // A fixed token that has expired: the client stops and says why.
  const header = Buffer.from('{"alg":"HS256","typ":"JWT"}').toString('base64url');
  const body = Buffer.from(JSON.stringify({ sub: 'old', exp: 1000 })).toString('base64url');
  const old = new Roost(url, { WebSocket, token: `${header}.${body}.sig` });
  cleanups.push(() => old.close());
  const oldErrors = [];
  old.on('error', (e) => oldErrors.push(e.code));
  await waitFor('the expired-token verdict', () => old.state === 'closed', 5000);
  assert.deepEqual(oldErrors, ['token_expired']);
});

await test('a new store (other epoch) → gap event, delivery starts over from seq 1', async () => {
  const dataA = tempDir('roost-node-');
  const dataB = tempDir('roost-node-');
  const a = new Server(dataA);
  cleanups.push(() => removeDir(dataA), () => removeDir(dataB));
  cleanups.push(() => a.stop('SIGKILL'));
  await a.start(0);
  const url = `ws://127.0.0.1:${a.port}`;
  const tok = mintToken(dataA, 'writer'); // same secret: valid on both stores
  const r = new Roost(url, { WebSocket, token: tok });
  cleanups.push(() => r.close());
  const gaps = [];
  r.on('gap', (g) => gaps.push(g));
  const seen = [];
  const ok = await r.subscribe('ep', (m) => seen.push(m.data), { since: 0 });
  for (let i = 0; i < 5; i++) await r.publish('ep', `a${i}`);
  await waitFor('5 on store A', () => seen.length === 5);
  await a.stop('SIGTERM');
  const b = new Server(dataB);
  cleanups.push(() => b.stop('SIGKILL'));
  await b.start(a.port);
  // The same channel on the new store: seqs start at 1 again.
  const seqs = [];
  await waitFor('reconnected', () => r.state === 'open', 10000);
  for (let i = 0; i < 3; i++) seqs.push(await r.publish('ep', `b${i}`));
  assert.deepEqual(seqs, [1, 2, 3]);
  await waitFor('3 on store B', () => seen.length === 8);
  assert.deepEqual(seen, ['a0', 'a1', 'a2', 'a3', 'a4', 'b0', 'b1', 'b2']);
  assert.equal(gaps.length, 1);
  assert.equal(gaps[0].ch, 'ep');
  assert.equal(gaps[0].epochChanged, true);
  assert.notEqual(gaps[0].epoch, ok.epoch);
});

await test('options: token in the query, since without epoch, history paging', async () => {
  const data = tempDir('roost-node-');
  const server = new Server(data);
  cleanups.push(() => removeDir(data));
  cleanups.push(() => server.stop('SIGKILL'));
  await server.start(0);
  const tok = mintToken(data, 'q');
  const r = new Roost(`http://127.0.0.1:${server.port}/`, { WebSocket, token: tok, tokenInQuery: true });
  cleanups.push(() => r.close());
  assert.equal(r.url, `ws://127.0.0.1:${server.port}/ws`);
  for (let i = 1; i <= 12; i++) await r.publish('opt', i);
  // since > 0 with no epoch known: replays from 0 and drops what is not after since.
  const seen = [];
  const ok = await r.subscribe('opt', (m) => seen.push(m.seq), { since: 9 });
  assert.equal(ok.seq, 12);
  await waitFor('10..12', () => seen.length >= 3);
  await sleep(100);
  assert.deepEqual(seen, [10, 11, 12]);
  // Page through history.
  const all = [];
  let since = 0;
  for (;;) {
    const h = await r.history('opt', { since, limit: 5 });
    all.push(...h.msgs.map((m) => m.data));
    if (!h.more) break;
    since = h.msgs[h.msgs.length - 1].seq;
  }
  assert.deepEqual(all, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
  // The token went in the query: the log never shows it.
  assert.ok(!server.log.some((l) => l.includes(tok)), 'the token is not logged');
});

finish('node');
