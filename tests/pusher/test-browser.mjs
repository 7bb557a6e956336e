// pusher-js and Laravel Echo in a real page: Debian's Chromium (through
// playwright-core) against roostd's Pusher door (pusher.md). The page loads
// the libraries' own browser bundles (pusher-js dist/web/pusher.js, Echo's
// echo.iife.js) from a tiny local "application" server, which also plays
// Laravel's /broadcasting/auth: it signs with the `pusher` server library for
// the user its `user` cookie names (each user has a browser context of its
// own, so cookies are not shared). Events are triggered with that library's
// signed HTTP API.
//
//   bash tests/pusher/run.sh   (CHROMIUM picks the browser; default /usr/bin/chromium)
//
// Every "did not arrive" is shown with a later marker on the same page, never
// with a sleep. ROOSTD_TEST_SCALE=small stretches every wait tenfold.
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import PusherServer from 'pusher';
import { Server, CHROMIUM_ARGS, tempDir, removeDir, waitFor } from '../browser/server.mjs';

const SCALE = process.env.ROOSTD_TEST_SCALE === 'small' ? 10 : 1;
const WAIT = 20000 * SCALE;
const APP = { appId: '4343', key: 'browser-key', secret: 'pusher-browser-secret-0123456789abcdef' };
// Read from node_modules by path: the packages' `exports` do not list the bundles.
const modules = (file) => readFileSync(fileURLToPath(new URL(`node_modules/${file}`, import.meta.url)));
const BUNDLES = { '/pusher.js': modules('pusher-js/dist/web/pusher.js'), '/echo.js': modules('laravel-echo/dist/echo.iife.js') };

// The page: Echo over pusher-js, pointed at roostd; everything the channels
// hear goes to window.seen as [channel, event, data], presence changes to
// window.members, connection states to window.states.
const PAGE = `<!doctype html><meta charset="utf-8"><title>roostd pusher</title>
<script src="/pusher.js"></script><script src="/echo.js"></script>
<script>
const q = new URLSearchParams(location.search);
window.seen = [];
window.members = [];
window.states = [];
window.echo = new Echo.default({
  broadcaster: 'pusher', key: q.get('key'), cluster: 'mt1',
  wsHost: '127.0.0.1', wsPort: Number(q.get('ws')), forceTLS: false,
  enabledTransports: ['ws'], disableStats: true, authEndpoint: '/broadcasting/auth',
});
echo.connector.pusher.connection.bind('state_change', (s) => states.push(s.current));
window.record = (ch, name) => ch.listen(name, (d) => seen.push([ch.name, name, d]));
</script>`;

let server, data, app, appPort, browser, api;
const pages = {};

/** The application: the page, the bundles, and /broadcasting/auth for the cookie's user. */
function application() {
  const signer = new PusherServer({ ...APP, host: '127.0.0.1', port: 1, useTLS: false });
  return http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    if (url.pathname === '/page') {
      const user = url.searchParams.get('user');
      res.writeHead(200, { 'content-type': 'text/html', 'set-cookie': `user=${user}; Path=/; HttpOnly` }).end(PAGE);
      return;
    }
    if (BUNDLES[url.pathname]) {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(BUNDLES[url.pathname]);
      return;
    }
    if (url.pathname !== '/broadcasting/auth' || req.method !== 'POST') {
      res.writeHead(404).end();
      return;
    }
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const form = new URLSearchParams(body);
      const user = /(?:^|;\s*)user=([^;]+)/.exec(req.headers.cookie || '')?.[1];
      const channel = form.get('channel_name');
      if (!user || channel.startsWith('private-forbidden')) {
        res.writeHead(403, { 'content-type': 'application/json' }).end('{}');
        return;
      }
      const presence = channel.startsWith('presence-') ? { user_id: user, user_info: { name: user.toUpperCase() } } : undefined;
      const answer = signer.authorizeChannel(form.get('socket_id'), channel, presence);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
    });
  });
}

/** A page logged in as `user`, in a browser context of its own, connected. */
async function openPage(user) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => console.log(`[${user}'s console] ${m.text()}`));
  page.errors = errors;
  await page.goto(`http://127.0.0.1:${appPort}/page?user=${user}&key=${APP.key}&ws=${server.port}`);
  await waitFor(`${user}'s page connected`, () => page.evaluate(() => echo.connectionStatus() === 'connected'), WAIT).catch(async (e) => {
    throw new Error(`${e.message}; states ${await page.evaluate(() => states.join(' '))}; errors ${errors}`);
  });
  pages[user] = page;
  return page;
}

/** What the page heard: [channel, event, data]. */
const seen = (page) => page.evaluate(() => window.seen);

/** Waits until the page heard an event matching `pred` and returns it. */
function heard(page, what, pred) {
  return waitFor(what, async () => (await seen(page)).find(pred), WAIT);
}

before(async () => {
  data = tempDir('roost-pusher-browser-');
  const secretFile = `${data}.pusher-secret`;
  writeFileSync(secretFile, APP.secret);
  app = application();
  await new Promise((r) => app.listen(0, '127.0.0.1', r));
  appPort = app.address().port;
  server = new Server(data, [
    '--pusher-app-id', APP.appId,
    '--pusher-key', APP.key,
    '--pusher-secret-file', secretFile,
    '--pusher-public', 'news',
    '--presence-grace', '300ms',
    // The page comes from the application's origin, as a Laravel page would.
    '--allowed-origin', `http://127.0.0.1:${appPort}`,
  ]);
  await server.start(0);
  api = new PusherServer({ ...APP, host: '127.0.0.1', port: server.port, useTLS: false });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60000,
  });
});

after(async () => {
  for (const page of Object.values(pages)) {
    assert.deepEqual(page.errors, [], 'no error in the page');
  }
  await browser?.close();
  app?.close();
  if (server) {
    const how = await server.stop('SIGTERM');
    console.log(`roostd stopped (${how}); its last log lines:\n${server.log.slice(-20).join('\n')}`);
  }
  removeDir(data);
  removeDir(`${data}.pusher-secret`);
});

test('a page joins a public and a private channel through the auth endpoint, and a refused one reports its error', async () => {
  const alice = await openPage('alice');
  await alice.evaluate(() => {
    window.subscribed = [];
    window.refused = [];
    record(echo.channel('news').subscribed(() => subscribed.push('news')), '.headline');
    record(echo.private('orders.1').subscribed(() => subscribed.push('private-orders.1')), '.OrderShipped');
    echo.private('forbidden.1').error((e) => refused.push(e.status));
  });
  await waitFor('both subscriptions', () => alice.evaluate(() => window.subscribed.length === 2), WAIT);
  assert.deepEqual(await waitFor('the refusal', () => alice.evaluate(() => window.refused.length && window.refused), WAIT), [403]);
  await api.trigger('news', 'headline', { title: 'in a browser' });
  await api.trigger('private-orders.1', 'OrderShipped', { id: 1 });
  await heard(alice, 'the private event', ([ch]) => ch === 'private-orders.1');
  assert.deepEqual(await seen(alice), [
    ['news', '.headline', { title: 'in a browser' }],
    ['private-orders.1', '.OrderShipped', { id: 1 }],
  ]);
});

test('a client event reaches the other page and is not echoed to its sender', async () => {
  const alice = pages.alice;
  const bob = await openPage('bob');
  const join = () => {
    window.whispers = [];
    const ch = echo.private('chat.1');
    ch.listenForWhisper('typing', (d) => whispers.push(d));
    record(ch, '.Marker');
    window.chat = ch;
    return new Promise((res) => ch.subscribed(res));
  };
  await alice.evaluate(join);
  await bob.evaluate(join);
  await bob.evaluate(() => chat.whisper('typing', { who: 'bob' }));
  await waitFor('alice hears bob typing', () => alice.evaluate(() => whispers.length === 1), WAIT);
  assert.deepEqual(await alice.evaluate(() => whispers), [{ who: 'bob' }]);
  // An echo to bob would have been queued on his socket before this marker.
  await api.trigger('private-chat.1', 'Marker', {});
  await heard(bob, 'the marker on bob', ([ch, ev]) => ch === 'private-chat.1' && ev === '.Marker');
  assert.deepEqual(await bob.evaluate(() => whispers), [], 'bob never hears his own whisper');
});

test('both pages see each other in a presence channel', async () => {
  const joinRoom = () => {
    window.members = [];
    return new Promise((res) => {
      echo
        .join('room.1')
        .here((users) => {
          members = users.map((u) => u.name);
          res();
        })
        .joining((u) => members.push(u.name))
        .leaving((u) => (members = members.filter((m) => m !== u.name)));
    });
  };
  await pages.alice.evaluate(joinRoom);
  assert.deepEqual(await pages.alice.evaluate(() => members), ['ALICE']);
  await pages.bob.evaluate(joinRoom);
  assert.deepEqual((await pages.bob.evaluate(() => members)).sort(), ['ALICE', 'BOB']);
  await waitFor('alice sees bob join', () => pages.alice.evaluate(() => members.includes('BOB')), WAIT);
  assert.deepEqual(await pages.alice.evaluate(() => members), ['ALICE', 'BOB']);
});

test('after a server restart both pages reconnect, resubscribe with fresh signatures and hear new events', async () => {
  const { alice, bob } = pages;
  const before = await alice.evaluate(() => echo.socketId());
  await server.restart('SIGTERM');
  for (const page of [alice, bob]) {
    await waitFor('a new connection', async () => {
      const id = await page.evaluate(() => echo.connectionStatus() === 'connected' && echo.socketId());
      return id && id !== before;
    }, WAIT);
  }
  assert.ok((await alice.evaluate(() => states)).includes('connecting'), 'alice went through connecting');
  // pusher-js resubscribes by itself (asking the auth endpoint again for the
  // new socket id); roostd's restored presence list cannot tell, the pages can.
  for (const page of [alice, bob]) {
    await waitFor('every channel subscribed again', () =>
      page.evaluate(() => {
        const chans = echo.connector.pusher.allChannels().filter((c) => c.name !== 'private-forbidden.1');
        return chans.length > 0 && chans.every((c) => c.subscribed);
      }), WAIT);
  }
  await api.trigger('private-orders.1', 'OrderShipped', { id: 2 });
  await api.trigger('news', 'headline', { title: 'after the restart' });
  await heard(alice, 'the news after the restart', ([, , d]) => d.title === 'after the restart');
  assert.deepEqual((await seen(alice)).slice(-2), [
    ['private-orders.1', '.OrderShipped', { id: 2 }],
    ['news', '.headline', { title: 'after the restart' }],
  ]);
  await api.trigger('private-chat.1', 'Marker', { n: 2 });
  await heard(bob, 'bob on the private channel after the restart', ([, , d]) => d.n === 2);
  assert.deepEqual((await alice.evaluate(() => members)).sort(), ['ALICE', 'BOB'], 'the member list survived the restart');
});

test('when bob closes his page, alice sees him leave', async () => {
  const bob = pages.bob;
  delete pages.bob;
  assert.deepEqual(bob.errors, []);
  await bob.context().close();
  await waitFor('bob gone from alice\'s list', () => pages.alice.evaluate(() => members.length === 1), WAIT);
  assert.deepEqual(await pages.alice.evaluate(() => members), ['ALICE']);
});
