// The demo page over https:// and wss://: Debian's Chromium loads the page
// from a roostd serving TLS with a certificate from `roostd cert`
// (--ignore-certificate-errors stands in for trusting it), connects over
// wss://, and two pages exchange messages. No console errors.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { Server, BIN, mintToken, tempDir, removeDir, sleep, CHROMIUM_ARGS, waitFor } from './server.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CH = 'room:tls';
const cleanups = [];

const seqs = (page) =>
  page.evaluate((ch) => {
    const list = document.querySelector(`ol.msgs[data-ch="${CSS.escape(ch)}"]`);
    return list ? [...list.querySelectorAll('li[data-seq]')].map((li) => li.querySelector('.text').textContent) : [];
  }, CH);

async function main() {
  const data = tempDir('roost-tls-');
  const profile = tempDir('roost-tls-chromium-');
  cleanups.push(() => removeDir(data), () => removeDir(profile));
  const cert = join(data, 'cert.pem');
  const key = join(data, 'key.pem');
  execFileSync(BIN, ['cert', '--name', 'localhost', '--ip', '127.0.0.1', '--cert', cert, '--key', key], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const server = new Server(data, ['--tls-cert', cert, '--tls-key', key]);
  cleanups.push(() => server.stop('SIGKILL'));
  await server.start(0);
  const base = `https://127.0.0.1:${server.port}`;
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    ignoreHTTPSErrors: true,
    args: [
      ...CHROMIUM_ARGS,
      '--ignore-certificate-errors',
    ],
    timeout: 60000,
  });
  cleanups.push(() => context.close());
  const problems = [];
  const pages = {};
  for (const who of ['alice', 'bob']) {
    const page = await context.newPage();
    page.on('console', (m) => m.type() === 'error' && problems.push(`${who}: ${m.text()}`));
    page.on('pageerror', (e) => problems.push(`${who}: pageerror ${e.message}`));
    await page.goto(`${base}/#token=${mintToken(data, who)}&ch=${encodeURIComponent(CH)}`);
    await waitFor(`${who} live over wss`, () => page.evaluate(() => document.getElementById('badge').dataset.state === 'open'));
    assert.ok(page.url().startsWith('https://'), page.url());
    pages[who] = page;
  }
  await pages.alice.fill('#text', 'hello over wss');
  await pages.alice.press('#text', 'Enter');
  await pages.bob.fill('#text', 'and back');
  await pages.bob.press('#text', 'Enter');
  for (const [who, page] of Object.entries(pages)) {
    await waitFor(`${who} sees both messages`, async () => (await seqs(page)).length === 2);
    assert.deepEqual((await seqs(page)).sort(), ['and back', 'hello over wss']);
  }
  assert.deepEqual(problems, [], 'no console errors');
  console.log(`tls: ok: two Chromium pages chatted over ${base} (wss://)`);
}

main()
  .then(async () => {
    for (const c of cleanups.reverse()) await c();
  })
  .catch(async (e) => {
    console.error(`tls: FAILED: ${e.stack || e}`);
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch {}
    }
    process.exit(1);
  });
