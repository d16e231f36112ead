// The status page in headless Chromium against real relays: relay A with a
// mesh peer B and an upstream hub H, and a guarded relay G (tokens only).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { Relay, SECRET, stopAll, until } from "./relays.mjs";
import { launch, openPage } from "./browser.mjs";

// Screenshots go to SCREENSHOT_DIR (docs/screenshots to refresh the
// committed ones), else to a temp dir.
const SHOTS = process.env.SCREENSHOT_DIR || join(tmpdir(), "outpost-ui-shots");
mkdirSync(SHOTS, { recursive: true });

let hub, a, b, browser;

before(async () => {
  hub = await Relay.start("hub", `[auth]\njwt_secret = "${SECRET}"\nanonymous = "write"\n`);
  const edgeToken = hub.token("admin");
  const mesh = (peers) => `[mesh]\nenabled = true\nlisten = "127.0.0.1:0"\nsecret = "${SECRET}"\nmdns = false\npeers = ${JSON.stringify(peers)}\n`;
  a = await Relay.start("a", `${mesh([])}[upstream]\nurl = "ws://${hub.addr}/ws/replicate"\ntoken = "${edgeToken}"\n`);
  const aMesh = (await a.status()).mesh.listen;
  b = await Relay.start("b", mesh([aMesh]));
  await until("A's peer and upstream links", async () => {
    const s = await a.status();
    return s.peers.some((p) => p.kind === "mesh") && s.upstream.connected;
  });
  browser = await launch();
});

after(async () => {
  if (browser) await browser.close();
  await stopAll();
});

// Write through the native protocol from inside the page (a real client).
async function write(page, space, id, fields) {
  return page.evaluate(async ([space, id, fields]) => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    const ack = await new Promise((ok, fail) => {
      ws.onerror = () => fail(new Error("socket error"));
      ws.onopen = () => ws.send(JSON.stringify({ type: "push", rid: 1, space,
        changes: [{ collection: "notes", id, op: "put", fields }] }));
      ws.onmessage = (m) => { const v = JSON.parse(m.data); if (v.type === "ack" || v.type === "error") ok(v); };
    });
    ws.close();
    return ack;
  }, [space, id, fields]);
}

test("the status page shows the relay, its peer and its upstream, live", async () => {
  const page = await openPage(browser);
  const res = await page.goto(`${a.url}/`);
  assert.equal(res.status(), 200);
  assert.ok(page.url().endsWith("/ui"), page.url());
  const st = await a.status();
  const bNode = (await b.status()).node_id;

  await page.locator("#main").waitFor({ state: "visible" });
  await page.locator("#live.on").waitFor();
  assert.equal(await page.locator("#node-id").textContent(), st.node_id);
  assert.match(await page.locator("#version").textContent(), new RegExp(st.version.replace(/\./g, "\\.")));
  // The peer: connected, found inbound (B dialled A), with a round trip.
  const peer = page.locator(`#peers tr[data-peer="${bNode}"]`);
  await peer.waitFor();
  assert.equal(await peer.getAttribute("data-connected"), "true");
  assert.match(await peer.textContent(), /inbound/);
  await until("a round trip figure", async () => /\d+(\.\d+)? ms/.test(await peer.textContent()));
  // The upstream: connected, nothing waiting.
  assert.match(await page.locator("#upstream-state").textContent(), /^connected$/);
  assert.match(await page.locator("#upstream").textContent(), new RegExp(`ws://${hub.addr}/ws/replicate`));
  // The effective config, secrets redacted.
  const cfg = await page.locator("#config").textContent();
  assert.match(cfg, /\[mesh\]/);
  assert.match(cfg, /secret = "<redacted>"/);
  assert.ok(!cfg.includes(SECRET), "the mesh secret must not be shown");
  assert.match(await page.locator("#free-bytes").textContent(), /iB/);

  // A client writes: the space appears with its entity, the rate moves,
  // the connection counts, and the hub receives it.
  for (let i = 0; i < 20; i++) {
    const ack = await write(page, "home", `n${i}`, { title: `note ${i}` });
    assert.equal(ack.type, "ack", JSON.stringify(ack));
  }
  const row = page.locator('#spaces tr[data-space="home"]');
  await row.waitFor({ timeout: 10000 });
  await until("20 entities in the row", async () => /\b20\b/.test(await row.locator("td").nth(1).textContent()));
  // The writes show in the chart (the tile shows the last 2 s only).
  await until("the writes in the chart", async () => Number(await page.locator("#chart").getAttribute("data-peak-written")) > 0, 10000);
  await until("/ws counted", async () => (await page.locator('#conns li[data-endpoint="/ws"]').count()) === 1);
  await until("the hub holds the writes", async () => (await hub.status()).spaces.some((s) => s.name === "home" && s.changes === 20));

  // A few seconds of steady traffic, a subscriber receiving it: the
  // delivery rate moves, and the screenshots show a relay at work.
  await page.evaluate(() => {
    window.sub = new WebSocket(`ws://${location.host}/ws`);
    window.sub.onopen = () => window.sub.send(JSON.stringify({ type: "subscribe", rid: 1, space: "home", since: 0 }));
  });
  await page.evaluate(() => {
    window.load = (async () => {
      const ws = new WebSocket(`ws://${location.host}/ws`);
      await new Promise((ok) => { ws.onopen = ok; });
      const end = Date.now() + 14000;
      for (let i = 0; Date.now() < end; i++) {
        ws.send(JSON.stringify({ type: "push", rid: i, space: i % 4 ? "home" : "garden",
          changes: [{ collection: "sensors", id: `s${i % 40}`, op: "patch", fields: { t: 20 + (i % 7), n: i } }] }));
        await new Promise((r) => setTimeout(r, 15 + 25 * Math.abs(Math.sin(i / 40))));
      }
      ws.close();
    })();
  });
  await until("deliveries in the chart", async () => Number(await page.locator("#chart").getAttribute("data-peak-delivered")) > 0, 10000);
  await until("/ws counts the writer and the subscriber", async () => (await page.locator('#conns li[data-endpoint="/ws"] b').textContent()) === "2");
  await page.waitForTimeout(4000);
  await page.screenshot({ path: join(SHOTS, "status-desktop.png"), fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
  await page.screenshot({ path: join(SHOTS, "status-phone.png"), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.evaluate(() => window.load);

  // The peer goes away: the page says so, with the warning A logs.
  await b.stop();
  await until("the peer shown disconnected", async () => (await peer.getAttribute("data-connected")) === "false", 15000);
  assert.match(await peer.textContent(), /disconnected/);
  assert.deepEqual(page.errors, []);
  await page.close();
});

test("a relay that wants tokens asks for one and refuses a weak one", async () => {
  const g = await Relay.start("guarded", `[auth]\njwt_secret = "${SECRET}"\nanonymous = "none"\n`);
  const page = await openPage(browser);
  await page.goto(`${g.url}/ui`);
  await page.locator("#login").waitFor({ state: "visible" });
  assert.ok(await page.locator("#main").isHidden());
  // The feed itself refuses without a token.
  const code = await page.evaluate(async () => (await fetch("/v1/status/stream")).status);
  assert.equal(code, 401);

  await page.fill("#token", g.token("read"));
  await page.click("#login-form button[type=submit]");
  await until("the scope error", async () => /admin scope/.test(await page.locator("#login-error").textContent()));
  assert.ok(await page.locator("#main").isHidden());

  await page.fill("#token", "not-a-token");
  await page.click("#login-form button[type=submit]");
  await until("the refusal", async () => /refused/.test(await page.locator("#login-error").textContent()));

  await page.fill("#token", g.token("admin"));
  await page.click("#login-form button[type=submit]");
  await page.locator("#main").waitFor({ state: "visible" });
  const st = await g.status(g.token("admin"));
  await until("the node id", async () => (await page.locator("#node-id").textContent()) === st.node_id);
  assert.equal(await page.evaluate(() => sessionStorage.getItem("outpost.token")) !== null, true);
  // Reload: the token is kept for the tab; sign out forgets it.
  await page.reload();
  await page.locator("#main").waitFor({ state: "visible" });
  await page.click("#logout");
  await page.locator("#login").waitFor({ state: "visible" });
  assert.equal(await page.evaluate(() => sessionStorage.getItem("outpost.token")), null);
  // Only the refusals we caused may show up as console errors.
  const other = page.errors.filter((e) => !/status of 40[13]/.test(e));
  assert.deepEqual(other, []);
  await page.close();
  await g.stop();
});
