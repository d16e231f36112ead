// The status page's JetStream card in headless Chromium: a relay of the
// cloud build (feature `jetstream`) in a hub tier on a real nats-server
// (loopback, temp store, stopped by PID). Run by `npm run test:jetstream`
// after scripts/test.sh has built the relay with the feature; the default
// `npm test` relay has no JetStream link and hides the card.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Relay, stopAll, stopChild, tempDir, until } from "./relays.mjs";
import { launch, openPage } from "./browser.mjs";

const NATS = process.env.NATS_SERVER || "nats-server";

async function freePort() {
  const srv = createServer();
  await new Promise((ok) => srv.listen(0, "127.0.0.1", ok));
  const { port } = srv.address();
  await new Promise((ok) => srv.close(ok));
  return port;
}

// One nats-server with JetStream on a free loopback port; no monitoring port.
async function startNats() {
  const dir = tempDir();
  const port = await freePort();
  const conf = join(dir, "nats.conf");
  writeFileSync(conf, `listen: "127.0.0.1:${port}"\njetstream {\n  store_dir: "${join(dir, "js")}"\n  max_memory_store: 64MB\n  max_file_store: 256MB\n}\n`);
  const child = spawn(NATS, ["-c", conf], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => { stderr += d; });
  const failed = new Promise((_, fail) => {
    child.once("error", (e) => fail(new Error(`cannot start ${NATS}: ${e.message}`)));
    child.once("exit", (c) => fail(new Error(`nats-server exited ${c}: ${stderr}`)));
  });
  await Promise.race([failed, until("nats-server listening", () => new Promise((ok) => {
    const s = connect(port, "127.0.0.1", () => { s.destroy(); ok(true); });
    s.on("error", () => ok(false));
  }), 20000)]);
  failed.catch(() => {});
  return {
    url: `nats://127.0.0.1:${port}`,
    stop: () => stopChild(child),
  };
}

// Screenshots go to SCREENSHOT_DIR (docs/screenshots to refresh the
// committed ones), else to a temp dir.
const SHOTS = process.env.SCREENSHOT_DIR || join(tmpdir(), "outpost-ui-shots");
mkdirSync(SHOTS, { recursive: true });

let nats, relay, browser;

before(async () => {
  nats = await startNats();
  relay = await Relay.start("tier", `[auth]\nanonymous = "write"\n[cluster]\nnats = ["${nats.url}"]\nack_timeout = "30s"\n[cluster.stream]\nreplicas = 1\n`);
  await until("the relay's JetStream link", async () => (await relay.status()).jetstream?.connected === true);
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  await stopAll();
  if (nats) await nats.stop();
});

const text = (page, id) => page.locator(`#${id}`).textContent();

test("the JetStream card shows the stream, the position and the published changes, live", async () => {
  const page = await openPage(browser);
  await page.goto(`${relay.url}/ui`);
  await page.locator("#main").waitFor({ state: "visible" });
  await page.locator("#jetstream-card").waitFor({ state: "visible" });
  assert.equal(await text(page, "js-role"), "hub tier member");
  await until("the link shown connected", async () => (await text(page, "js-state")) === "connected");
  assert.equal(await text(page, "js-servers"), nats.url);
  assert.match(await text(page, "js-stream"), /^OUTPOST · 1 replica · seq /);

  // Ten writes through the native protocol: each is acked once the stream
  // holds it, and the card's counters follow.
  const acks = await page.evaluate(async () => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error("socket error")); });
    const out = [];
    for (let i = 0; i < 10; i++) {
      ws.send(JSON.stringify({ type: "push", rid: i, space: "site",
        changes: [{ collection: "meters", id: `m${i}`, op: "put", fields: { kwh: i } }] }));
      out.push(await new Promise((ok) => {
        ws.onmessage = (m) => { const v = JSON.parse(m.data); if (v.type === "ack" || v.type === "error") ok(v); };
      }));
    }
    ws.close();
    return out;
  });
  for (const a of acks) assert.equal(a.type, "ack", JSON.stringify(a));
  await until("10 published on the card", async () => (await text(page, "js-published")) === "10 changes");
  await until("the stream's last seq on the card", async () => /seq \d+–10$/.test(await text(page, "js-stream")));
  const st = (await relay.status()).jetstream;
  assert.equal(st.published, 10);
  assert.equal(st.stream.last_seq, 10);
  assert.equal(await text(page, "js-waiting"), "0 changes");
  await page.screenshot({ path: join(SHOTS, "status-jetstream.png"), fullPage: true });

  // The server goes away: the card says the link is down.
  await nats.stop();
  await until("the card shows the link down", async () => (await text(page, "js-state")) === "not connected", 30000);
  assert.deepEqual(page.errors, []);
  await page.close();
});
