// Node end-to-end tests of roost.js's presence, last-N, keyed and state
// features (issue 15; contract §7 and §8) against the real roostd binary.
//
// NEEDS THE SERVER SIDE OF ISSUE 15 (presence, `last`, keys, compaction and
// state sync in the native protocol): every test here fails against a roostd
// without it, by design. They do not fake the server.
//
//   1. presence: two users, three connections; a reload within the grace and
//      a server restart within the restart grace show no leave/join; the last
//      connection leaving gives one `leave`.
//   2. state: a `state: true` Map is rebuilt from a snapshot after a server
//      restart during which the key it had last seen was compacted away and
//      another key was deleted by a tombstone.
//   3. last: `last: 3` replays the last three messages, then live ones;
//      out-of-range N is refused by the server.
//   4. keyed publish: `key` and `event` come back on `msg` and in history.
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Roost, RoostError } from '../../web/roost.js';
import { Server, mintToken, mintAppToken, tempDir, removeDir, sleep, waitFor, withTimeout, testRunner } from './server.mjs';

const { test, cleanups, finish } = testRunner();
const GRACE_S = 1;

/** A roostd on a fresh data folder with `args`, stopped and removed after the test. */
async function serve(args) {
  const data = tempDir('roost-node15-');
  const server = new Server(data, args);
  cleanups.push(() => removeDir(data));
  cleanups.push(() => server.stop('SIGKILL'));
  await server.start(0);
  return server;
}

function client(server, sub) {
  const r = new Roost(`ws://127.0.0.1:${server.port}`, { WebSocket, token: mintToken(server.data, sub) });
  cleanups.push(() => r.close());
  return r;
}

const users = (p) => p.members.map((m) => m.user);

await test('presence: two users on three connections; a reload within the grace and a restart show no flicker', async () => {
  const server = await serve(['--presence-grace', `${GRACE_S}s`, '--presence-restart-grace', '30s']);
  const CH = 'presence-room:1';
  const bob = client(server, 'bob');
  const seen = []; // what bob is told about others
  const watch = bob.presence(CH);
  watch.on('join', (e) => seen.push(`join ${e.user}`));
  watch.on('leave', (e) => seen.push(`leave ${e.user}`));
  await withTimeout(watch.ready, 10000, 'bob: the first list');
  assert.deepEqual(users(watch), ['bob'], 'the list holds the subscriber itself');
  assert.equal(watch.count, 1);

  // alice on two connections: one join.
  const a1 = client(server, 'alice');
  const p1 = a1.presence(CH);
  await withTimeout(p1.ready, 10000, 'alice 1: the first list');
  assert.deepEqual(users(p1), ['alice', 'bob'], 'sorted by user');
  await waitFor('bob to see alice join', () => watch.has('alice'));
  const a2 = client(server, 'alice');
  const p2 = a2.presence(CH);
  await withTimeout(p2.ready, 10000, 'alice 2: the first list');
  assert.deepEqual(users(p2), ['alice', 'bob']);

  // One of alice's connections goes; then the other "reloads" (closes, and a
  // new connection subscribes within the grace).
  a1.close();
  a2.close();
  const a3 = client(server, 'alice');
  const p3 = a3.presence(CH);
  const aliceEvents = [];
  p3.on('join', (e) => aliceEvents.push(`join ${e.user}`));
  p3.on('leave', (e) => aliceEvents.push(`leave ${e.user}`));
  await withTimeout(p3.ready, 10000, 'alice 3: the first list');
  assert.deepEqual(users(p3), ['alice', 'bob']);
  // A leave would come at most grace + 1 s after the last connection went:
  // wait past that, then check nothing flickered.
  await sleep((GRACE_S + 1.5) * 1000);
  assert.deepEqual(seen, ['join alice'], 'bob saw alice join once, and no leave on the reload');
  assert.deepEqual(users(watch), ['alice', 'bob']);

  // A server restart (SIGTERM): both reconnect, the fresh lists replace the
  // old ones with no difference, so no event.
  const syncs = [];
  watch.on('sync', (s) => syncs.push(s.members.map((m) => m.user)));
  await server.restart('SIGTERM');
  await waitFor('bob to get a fresh list after the restart', () => syncs.length >= 1, 20000);
  await waitFor('alice back', () => a3.state === 'open', 20000);
  await sleep((GRACE_S + 1.5) * 1000);
  assert.deepEqual(syncs[0], ['alice', 'bob'], 'the list after the restart');
  assert.deepEqual(seen, ['join alice'], 'no leave/join across the restart');

  assert.deepEqual(aliceEvents, [], 'alice, reloaded and restarted, was told of no join/leave (bob stayed; she is never told of herself)');
  // alice's last connection goes: one leave, after the grace.
  a3.close();
  await waitFor('bob to see alice leave', () => seen.length === 2, 10000);
  assert.deepEqual(seen, ['join alice', 'leave alice']);
  assert.deepEqual(users(watch), ['bob']);
  assert.equal(watch.count, 1);

  // Asking again gives the same list; a member never sees itself as joined.
  assert.deepEqual((await withTimeout(watch.refresh(), 5000, 'refresh')).map((m) => m.user), ['bob']);
});

await test('presence: bob reconnecting while carol came and dave went is told exactly the differences', async () => {
  const server = await serve(['--presence-grace', `${GRACE_S}s`]);
  const CH = 'presence-lobby';
  const bob = client(server, 'bob');
  const dave = client(server, 'dave');
  const watch = bob.presence(CH);
  const pd = dave.presence(CH);
  await withTimeout(Promise.all([watch.ready, pd.ready]), 10000, 'lists');
  await waitFor('bob to see dave', () => watch.has('dave'));
  const seen = [];
  watch.on('join', (e) => seen.push(`join ${e.user}`));
  watch.on('leave', (e) => seen.push(`leave ${e.user}`));
  // bob's connection is dropped and held off while carol joins and dave leaves.
  const realOpen = bob._onOpen.bind(bob);
  let hold = true;
  bob._onOpen = () => (hold ? bob._ws.close() : realOpen());
  bob.reconnect();
  const carol = client(server, 'carol');
  await withTimeout(carol.presence(CH).ready, 10000, 'carol');
  dave.close();
  await sleep((GRACE_S + 1.5) * 1000); // dave is gone for good now
  hold = false;
  bob.reconnect();
  await waitFor('bob back with a fresh list', () => seen.length >= 2, 20000);
  await sleep(300);
  assert.deepEqual(seen.sort(), ['join carol', 'leave dave']);
  assert.deepEqual(users(watch), ['bob', 'carol']);
});

await test('state: the Map is rebuilt from a snapshot after a restart that compacted and deleted keys', async () => {
  const args = ['--compact', 'sensors:*'];
  const server = await serve(args);
  const CH = 'sensors:kitchen';
  const dev = client(server, 'device');
  const reader = client(server, 'reader');
  const snapshots = [];
  reader.on('snapshot', (s) => snapshots.push(s.seq));
  const live = [];
  const res = await withTimeout(reader.subscribe(CH, (m) => live.push(m), { state: true }), 10000, 'state subscribe');
  assert.ok(res.state instanceof Map, 'the result carries the Map');
  assert.equal(res.state.size, 0, 'an empty channel: an empty Map');
  assert.equal(reader.stateMap(CH), res.state, 'stateMap(ch) is the same Map');
  const map = res.state;
  const view = () => Object.fromEntries([...map].map(([k, m]) => [k, m.data]).sort());

  await dev.publish(CH, 20.5, { key: 'temp' }); // 1
  await dev.publish(CH, 40, { key: 'humidity' }); // 2
  await dev.publish(CH, 21, { key: 'temp' }); // 3
  await waitFor('the reader to hold seq 3', () => map.get('temp')?.seq === 3);
  assert.deepEqual(view(), { humidity: 40, temp: 21 });
  assert.deepEqual(live.map((m) => [m.seq, m.key]), [[1, 'temp'], [2, 'humidity'], [3, 'temp']]);

  // The server stops; meanwhile the store moves on: temp changes twice (its
  // seq 4 is compacted away by seq 7), humidity is deleted, door appears.
  await server.stop('SIGTERM');
  const side = new Server(server.data, args);
  await side.start(0);
  const w = new Roost(`ws://127.0.0.1:${side.port}`, { WebSocket, token: mintToken(server.data, 'device') });
  try {
    assert.equal(await w.publish(CH, 22, { key: 'temp' }), 4);
    assert.equal(await w.publish(CH, null, { key: 'humidity' }), 5);
    assert.equal(await w.publish(CH, 'open', { key: 'door' }), 6);
    assert.equal(await w.publish(CH, 23, { key: 'temp' }), 7);
    // Within 1 s, seq 4 is gone: a resume after 3 cannot be a plain replay.
    await waitFor('seq 4 compacted away', async () => (await w.history(CH, { since: 3 })).msgs[0]?.seq > 4, 10000);
  } finally {
    w.close();
    await side.stop('SIGTERM');
  }
  await server.start(server.port);
  await waitFor('the rebuilt Map', () => map.get('temp')?.seq === 7, 20000);
  assert.deepEqual(view(), { door: 'open', temp: 23 }, 'humidity deleted, door added, temp latest');
  assert.equal(snapshots.length, 2, `a snapshot at subscribe and one after the restart (${snapshots})`);
  assert.equal(snapshots[1], 7);
  assert.equal(reader.stateMap(CH), map, 'the same Map object, refilled');

  // Live messages after the snapshot apply on top; a tombstone deletes.
  await dev.publish(CH, 'closed', { key: 'door' });
  await dev.publish(CH, null, { key: 'temp' });
  await waitFor('door closed, temp deleted', () => map.get('door')?.data === 'closed' && !map.has('temp'));
  assert.deepEqual(view(), { door: 'closed' });

  // A fresh subscriber gets the same state in one step.
  const other = client(server, 'other');
  const fresh = await withTimeout(other.subscribe(CH, { state: true }), 10000, 'fresh state subscribe');
  assert.deepEqual(Object.fromEntries([...fresh.state].map(([k, m]) => [k, m.data])), { door: 'closed' });

  // state: true on a channel that is not compacted is refused.
  await assert.rejects(other.subscribe('room:1', { state: true }), (e) => e instanceof RoostError && e.code === 'bad_request');
});

await test('last: N replays the last N messages, then live ones; N out of range is refused', async () => {
  const server = await serve([]);
  const CH = 'room:last';
  const w = client(server, 'writer');
  for (let i = 1; i <= 10; i++) await w.publish(CH, i);
  const r = client(server, 'reader');
  const seen = [];
  const ok = await withTimeout(r.subscribe(CH, (m) => seen.push(m.seq), { last: 3 }), 10000, 'subscribe last');
  assert.equal(ok.seq, 10);
  await waitFor('three replayed', () => seen.length >= 3);
  await w.publish(CH, 11);
  await waitFor('the live one', () => seen.length >= 4);
  // A reconnect resumes after 11 (no replay of the last 3 again).
  r.reconnect();
  await w.publish(CH, 12);
  await waitFor('12 after the reconnect', () => seen.length >= 5);
  await sleep(200);
  assert.deepEqual(seen, [8, 9, 10, 11, 12]);
  // Fewer stored than asked: all of them.
  await w.publish('room:short', 'only');
  const few = [];
  await r.subscribe('room:short', (m) => few.push(m.data), { last: 100 });
  await waitFor('the one message', () => few.length >= 1);
  assert.deepEqual(few, ['only']);
  await assert.rejects(r.subscribe('room:x', () => {}, { last: 101 }), (e) => e.code === 'bad_request');
  await assert.rejects(r.subscribe('room:y', () => {}, { last: 0 }), (e) => e.code === 'bad_request');
  // Combined with since: refused by the client before it is sent.
  await assert.rejects(r.subscribe('room:z', () => {}, { last: 2, since: 0 }), (e) => e.code === 'bad_request');
});

await test('keyed publish: key and event come back on msg and in history; null is an ordinary value off compaction', async () => {
  const server = await serve([]);
  const CH = 'room:keys';
  const r = client(server, 'alice');
  const seen = [];
  await r.subscribe(CH, (m) => seen.push(m), { since: 0 });
  await r.publish(CH, { text: 'typing' }, { event: 'typing' });
  await r.publish(CH, null, { key: 'draft', event: 'clear' });
  await r.publish(CH, 'plain');
  await waitFor('three messages', () => seen.length >= 3);
  assert.deepEqual(
    seen.map((m) => [m.seq, m.key, m.event, m.data]),
    [
      [1, undefined, 'typing', { text: 'typing' }],
      [2, 'draft', 'clear', null],
      [3, undefined, undefined, 'plain'],
    ],
  );
  const h = await r.history(CH);
  assert.deepEqual(h.msgs.map((m) => [m.key, m.event]), [[undefined, 'typing'], ['draft', 'clear'], [undefined, undefined]]);
  await assert.rejects(r.publish(CH, 1, { key: 'bad key!' }), (e) => e.code === 'bad_request');
  // The main app sees the same over HTTP (the API token is only for the test).
  const app = mintAppToken(server.data, 'app');
  const res = await fetch(`${server.url}/api/channels/${encodeURIComponent(CH)}/messages?since=1`, {
    headers: { authorization: `Bearer ${app}` },
  });
  const body = await res.json();
  assert.equal(body.msgs[0].key, 'draft');
});

finish('node (issue 15)');
