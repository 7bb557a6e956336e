// The README's step 5, checked in Debian's Chromium (through playwright-core):
// the address the README prints opens a live board on the channel of steps
// 3-4 showing exactly the messages those steps stored, with no error on the
// page or in the console; then that a channel the token may not read, and an
// empty one, tell the user what to do; and (issue 15, needs the server's
// presence) that "online now" lists the token's user. Run by .ci/readme-test:
//
//   node tests/browser/readme-board.mjs URL EXPECTED.json [SCREENSHOT.png]
//
// EXPECTED.json: [{"ch","seq","from","text"}...], the `msg` lines the
// walkthrough printed. Only 127.0.0.1 is contacted.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { launchChromium, tempDir, removeDir, sleep, waitFor } from './server.mjs';

const [url, expectedFile, shot] = process.argv.slice(2);
const expected = JSON.parse(readFileSync(expectedFile, 'utf8'));

async function main() {
  assert.ok(url && url.startsWith('http://127.0.0.1:'), `a loopback URL from the README, got ${url}`);
  assert.ok(expected.length > 0, 'the walkthrough printed messages');
  const channel = expected[0].ch;
  assert.ok(expected.every((m) => m.ch === channel), 'steps 3-4 use one channel');

  const profile = tempDir('roost-readme-chromium-');
  const context = await launchChromium(profile);
  try {
    const page = await context.newPage();
    const problems = [];
    page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
    page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
    page.on('response', (r) => r.status() >= 400 && problems.push(`HTTP ${r.status()} for ${r.url()}`));
    await page.goto(url);

    await waitFor('the badge to say live', () => page.evaluate(() => document.getElementById('badge').dataset.state === 'open'));
    const active = await waitFor('a channel to be open', () =>
      page.evaluate(() => document.querySelector('#channels li.active')?.dataset.ch),
    );
    assert.equal(active, channel, `the page opens the channel of steps 3-4`);
    const rows = () =>
      page.evaluate((ch) => {
        const list = document.querySelector(`ol.msgs[data-ch="${CSS.escape(ch)}"]`);
        return [...(list?.querySelectorAll('li[data-seq]') ?? [])].map((li) => ({
          seq: Number(li.dataset.seq),
          from: li.querySelector('.from').textContent,
          text: li.querySelector('.text').textContent,
        }));
      }, channel);
    await waitFor(`${expected.length} messages on the board`, async () => (await rows()).length >= expected.length);
    await sleep(300); // a duplicate would show up now
    assert.deepEqual(
      await rows(),
      expected.map(({ seq, from, text }) => ({ seq, from, text })),
      'the board shows the messages of steps 3-4, once each, in order',
    );
    assert.equal(await page.textContent('#status'), '', 'no error or refusal shown on the page');
    // Issue 15 (needs the server's presence): the README's token reads
    // presence-room:1, so "online now" lists alice, the one on the page.
    const online = () => page.evaluate(() => [...document.querySelectorAll('#members li[data-user]')].map((li) => li.dataset.user));
    await waitFor('"online now" to list alice', async () => (await online()).join() === 'alice');
    assert.ok(await page.isHidden('#empty'), 'no empty-state hint over a board with messages');
    assert.equal(await page.evaluate(() => document.getElementById('badge').dataset.state), 'open', 'still live');
    assert.deepEqual(problems, [], 'no errors in the browser console');
    if (shot) await page.screenshot({ path: shot });

    // The forbidden and the empty state say what to do next.
    const other = await context.newPage();
    await other.goto(`${url}&ch=lobby`);
    const refusal = await waitFor('the refusal of lobby', async () => {
      const t = await other.textContent('#status');
      return t.includes('lobby') && t;
    });
    assert.match(refusal, /lobby: this token may not read that channel \(it reads 'room:\*', 'presence-room:\*'\)\. Open room:1 on the left, or mint a token with --read 'lobby'/);
    await other.fill('#joininput', 'room:2');
    await other.press('#joininput', 'Enter');
    await waitFor('the empty-channel hint', () => other.isVisible('#empty'));
    assert.equal(await other.textContent('#empty'), 'No messages in room:2 yet: write the first one below.');
    console.log(`ok - readme step 5: ${url.replace(/token=[^&]+/, 'token=…')} shows a live board of ${channel} with seqs ${expected.map((m) => m.seq).join(', ')}`);
  } finally {
    await context.close();
    removeDir(profile);
  }
}

try {
  await main();
} catch (e) {
  console.log(`not ok - readme step 5\n${e && e.stack ? e.stack : e}`);
  process.exit(1);
}
