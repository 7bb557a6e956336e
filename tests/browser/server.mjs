// Starts, stops and restarts the real roostd binary for the end-to-end tests.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = resolve(ROOT, process.env.ROOSTD_BIN || 'target/debug/roostd');
const SECRET = 'browser-test-secret-0123456789abcdef-0123456789';
const ENV = { ...process.env, ROOSTD_SECRET: SECRET, RUST_LOG: process.env.RUST_LOG || 'info' };

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Debian's Chromium as the browser tests run it: headless, no sandbox (root in CI), nothing phoning home. */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Chromium with a fresh profile folder (Playwright's persistent context is how it takes --user-data-dir). */
export async function launchChromium(profile, options = {}) {
  const { chromium } = await import('playwright-core');
  return chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1024, height: 720 },
    timeout: 60000,
    ...options,
  });
}

/** Polls `cond` until it returns something truthy (returned), or throws after `ms`. */
export async function waitFor(what, cond, ms = 20000) {
  const start = Date.now();
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() - start > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** Rejects with "timed out after MS ms: WHAT" unless `promise` settles first. */
export function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, rej) => {
      timer = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Runs and empties `cleanups` (functions, maybe async), last first; a failing one is logged. */
export async function runCleanups(cleanups) {
  while (cleanups.length) {
    try {
      await cleanups.pop()();
    } catch (e) {
      console.log(`cleanup: ${e}`);
    }
  }
}

/**
 * A tiny TAP-like runner: `test(name, fn)` runs one test and then its
 * `cleanups` (pushed by the test, run last-first); `finish(label)` prints the
 * tally and exits 1 if any failed.
 */
export function testRunner() {
  const results = [];
  const cleanups = [];
  async function test(name, fn) {
    const t0 = Date.now();
    try {
      await fn();
      results.push({ name, ok: true });
      console.log(`ok - ${name} (${Date.now() - t0} ms)`);
    } catch (e) {
      results.push({ name, ok: false });
      console.log(`not ok - ${name}\n${e && e.stack ? e.stack : e}`);
    } finally {
      await runCleanups(cleanups);
    }
  }
  function finish(label) {
    const passed = results.filter((r) => r.ok).length;
    const failed = results.length - passed;
    console.log(`${label}: ${passed} passed, ${failed} failed`);
    process.exit(failed ? 1 : 0);
  }
  return { test, cleanups, finish };
}

export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

/** `roostd token --data DATA ARGS...`: a token signed with the test servers' key. */
export function token(data, args) {
  return execFileSync(BIN, ['token', '--data', data, ...args], {
    env: ENV,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  }).trim();
}

/** A token for `sub` that may read and write every channel. */
export function mintToken(data, sub, ttl = '1h') {
  return token(data, ['--sub', sub, '--read', '*', '--write', '*', '--ttl', ttl]);
}

/** The main application's token (`--api`): the only kind the HTTP API accepts. */
export function mintAppToken(data, sub) {
  return token(data, ['--sub', sub, '--read', '*', '--write', '*', '--api']);
}

/** One running roostd: `port`, `stop(signal)`, and its log lines in `log`. */
export class Server {
  constructor(data, args = []) {
    this.data = data;
    this.args = args;
    this.port = 0;
    this.proc = null;
    this.log = [];
  }

  /** Starts on `port` (0: any free one) and resolves once it listens (the
   *  address it writes to its `--ready-file`). */
  start(port = this.port) {
    if (this.proc) throw new Error('server already running');
    const ready = `${this.data}.ready`;
    rmSync(ready, { force: true }); // the address of the run before
    const args = ['serve', '--listen', `127.0.0.1:${port}`, '--data', this.data, '--ready-file', ready, ...this.args];
    const proc = spawn(BIN, args, { env: ENV, stdio: ['ignore', 'ignore', 'pipe'] });
    this.proc = proc;
    proc.exited = new Promise((res) => proc.on('exit', (code, signal) => res({ code, signal })));
    return new Promise((res, rej) => {
      let buf = '';
      const done = () => {
        clearTimeout(timer);
        clearInterval(poll);
      };
      const timer = setTimeout(() => {
        done();
        rej(new Error(`roostd did not listen within 15 s:\n${this.log.join('\n')}`));
      }, 15000);
      const poll = setInterval(() => {
        let text;
        try {
          text = readFileSync(ready, 'utf8');
        } catch {
          return;
        }
        done();
        this.port = Number(text.trim().split(':').pop());
        res(this.port);
      }, 20);
      proc.stderr.setEncoding('utf8');
      proc.stderr.on('data', (chunk) => {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          this.log.push(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      });
      proc.on('error', (e) => {
        done();
        rej(e);
      });
      proc.exited.then(({ code, signal }) => {
        done();
        rej(new Error(`roostd exited (${code ?? signal}) before listening:\n${this.log.join('\n')}`));
      });
    });
  }

  /** Sends `signal` and waits for the process to exit; returns its exit code or signal. */
  async stop(signal = 'SIGTERM') {
    const proc = this.proc;
    if (!proc) return null;
    this.proc = null;
    proc.kill(signal);
    const { code, signal: sig } = await proc.exited;
    return code ?? sig;
  }

  /** Stops with `signal` and starts again on the same data folder and port. */
  async restart(signal = 'SIGTERM') {
    const how = await this.stop(signal);
    await this.start(this.port);
    return how;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }
}
