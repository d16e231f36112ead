// Real relay processes for the browser tests: loopback only, temp dirs,
// stopped by PID. The binary comes from OUTPOST_BIN (scripts/test.sh sets
// it to the one cargo built).
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.OUTPOST_BIN
  || resolve(here, "../../", process.env.CARGO_TARGET_DIR || "target", "debug/outpost");
export const SECRET = "ui-test-secret-0123456789";

const started = [];
const dirs = [];

export function tempDir() {
  const d = mkdtempSync(join(tmpdir(), "outpost-ui-"));
  dirs.push(d);
  return d;
}

export class Relay {
  // Start `outpost serve --config <toml>` and wait for its address line.
  static async start(name, toml) {
    const dir = tempDir();
    const cfg = join(dir, "outpost.toml");
    writeFileSync(cfg, `[storage]\ndir = "${join(dir, "data")}"\n${toml}`);
    const child = spawn(BIN, ["serve", "--config", cfg, "--listen", "127.0.0.1:0"], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: "warn" },
    });
    const r = new Relay(name, child, cfg);
    started.push(r);
    child.stderr.on("data", (d) => { r.stderr += d; });
    const lines = createInterface({ input: child.stdout });
    const addr = await new Promise((ok, fail) => {
      const t = setTimeout(() => fail(new Error(`${name}: no address line`)), 15000);
      lines.once("line", (l) => { clearTimeout(t); ok(l.replace("outpost listening on ", "").trim()); });
      child.once("exit", (c) => fail(new Error(`${name} exited ${c}: ${r.stderr}`)));
      child.once("error", (e) => fail(new Error(`${name}: cannot start ${BIN}: ${e.message}`)));
    });
    r.addr = addr;
    r.url = `http://${addr}`;
    return r;
  }

  constructor(name, child, cfg) {
    this.name = name;
    this.child = child;
    this.cfg = cfg;
    this.stderr = "";
  }

  async status(token) {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const r = await fetch(`${this.url}/v1/status`, { headers });
    if (!r.ok) throw new Error(`${this.name} status ${r.status}`);
    return r.json();
  }

  token(scope) {
    return execFileSync(BIN, ["token", "--config", this.cfg, "--scope", scope, "--ttl", "1h"]).toString().trim();
  }

  // SIGTERM (the relay says goodbye to its peers), then wait for the exit.
  async stop() {
    await stopChild(this.child);
  }
}

// SIGTERM a child we started, SIGKILL it after 10 s, wait for its exit.
export async function stopChild(child) {
  if (child.exitCode !== null) return;
  const gone = new Promise((ok) => child.once("exit", ok));
  process.kill(child.pid, "SIGTERM");
  const t = setTimeout(() => child.exitCode === null && process.kill(child.pid, "SIGKILL"), 10000);
  await gone;
  clearTimeout(t);
}

export async function stopAll() {
  for (const r of started.splice(0)) {
    try { await r.stop(); } catch { /* already gone */ }
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

// Poll `check` until it returns a truthy value (bounded).
export async function until(what, check, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}
