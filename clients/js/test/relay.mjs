// Starts the real relay binary (target/debug/outpost, or $OUTPOST_BIN, or
// $CARGO_TARGET_DIR/debug/outpost) on 127.0.0.1 with a temporary data dir,
// and stops it by PID. Restarts keep the port and the data.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../..');
export const BIN =
  process.env.OUTPOST_BIN || join(process.env.CARGO_TARGET_DIR || join(repo, 'target'), 'debug', 'outpost');

export const SECRET = 'js-client-tests-secret-0123456789';

/** An HS256 JWT the test relay accepts. */
export function mint(sub, { scope = 'write', spaces, exp = Math.floor(Date.now() / 1000) + 3600 } = {}) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64({ sub, exp, scope, ...(spaces ? { spaces } : {}) });
  return body + '.' + createHmac('sha256', SECRET).update(body).digest('base64url');
}

export class Relay {
  constructor({ auth = false, retention } = {}) {
    this.dir = mkdtempSync(join(tmpdir(), 'outpost-js-'));
    this.port = 0;
    this.proc = null;
    this.auth = auth;
    const lines = ['[storage]', `dir = "${join(this.dir, 'data')}"`];
    if (retention) lines.push(`retention = "${retention}"`);
    if (auth) lines.push('[auth]', `jwt_secret = "${SECRET}"`, 'anonymous = "none"');
    this.config = join(this.dir, 'outpost.toml');
    writeFileSync(this.config, lines.join('\n') + '\n');
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }
  get http() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Start (or restart on the same port); resolves once it listens. */
  async start() {
    const listen = `127.0.0.1:${this.port}`;
    const p = spawn(BIN, ['serve', '--config', this.config, '--listen', listen], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: 'warn' },
    });
    this.proc = p;
    let err = '';
    p.stderr.on('data', (d) => (err = (err + d).slice(-4000)));
    await new Promise((ok, fail) => {
      let out = '';
      const t = setTimeout(() => fail(new Error('relay did not start: ' + err)), 20000);
      p.stdout.on('data', (d) => {
        out += d;
        const m = /outpost listening on 127\.0\.0\.1:(\d+)/.exec(out);
        if (m) {
          clearTimeout(t);
          this.port = +m[1];
          ok();
        }
      });
      p.on('exit', (code) => {
        clearTimeout(t);
        fail(new Error(`relay exited (${code}) before listening: ${err}`));
      });
    });
    p.removeAllListeners('exit');
    this.exited = new Promise((r) => p.on('exit', r));
    return this;
  }

  /** SIGKILL (crash) or SIGTERM (clean stop); waits for the exit. */
  async stop(signal = 'SIGTERM') {
    if (!this.proc) return;
    const p = this.proc;
    this.proc = null;
    process.kill(p.pid, signal);
    await this.exited;
  }

  async metric(name) {
    // With anonymous = "none", /metrics needs an admin token.
    const headers = this.auth ? { authorization: 'Bearer ' + mint('ops', { scope: 'admin' }) } : {};
    const text = await (await fetch(this.http + '/metrics', { headers })).text();
    const m = new RegExp('^' + name + ' (\\S+)$', 'm').exec(text);
    return m ? Number(m[1]) : NaN;
  }

  async destroy() {
    await this.stop('SIGKILL').catch(() => {});
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Poll `fn` until it returns truthy (or throw after `ms`). */
export async function until(fn, ms = 10000, what = 'condition') {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 20));
  }
}
