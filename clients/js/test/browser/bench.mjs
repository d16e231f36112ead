// Benchmark (not part of the test suite): initial sync of 10,000 entities
// into a browser replica, the warm start from IndexedDB, and 1,000 writes
// acknowledged, in headless Chromium against a real relay. Prints a
// markdown table; the figures go to docs/performance.md.
//   node test/browser/bench.mjs [entities=10000] [writes=1000]
import os from 'node:os';
import { BIN, Relay } from '../relay.mjs';
const BIN_NAME = BIN.includes('/release/') ? 'release build' : 'debug build';
import { launch, serveRepo } from './harness.mjs';

const E = +(process.argv[2] || 10000);
const W = +(process.argv[3] || 1000);
const relay = await new Relay().start();
const site = await serveRepo();
const browser = await launch();
const rows = [];
try {
  // Seed the relay: E entities of 4 fields (~120 bytes of JSON each), 1000 per push.
  const t = performance.now();
  const ws = new WebSocket(relay.url);
  await new Promise((r) => (ws.onopen = r));
  let acked = 0;
  ws.onmessage = (e) => JSON.parse(e.data).type === 'ack' && acked++;
  const pushes = Math.ceil(E / 1000);
  for (let p = 0; p < pushes; p++) {
    const changes = [];
    for (let i = p * 1000; i < Math.min(E, (p + 1) * 1000); i++)
      changes.push({ collection: 'items', id: 'e' + String(i).padStart(6, '0'), op: 'put', fields: { title: 'Item number ' + i, done: i % 3 === 0, at: 1767225600000 + i, tags: ['bench', 'x' + (i % 10)] } });
    ws.send(JSON.stringify({ type: 'push', rid: p, space: 'bench', changes }));
  }
  while (acked < pushes) await new Promise((r) => setTimeout(r, 10));
  ws.close();
  rows.push(['seed the relay (not the client)', `${E} entities in ${pushes} pushes`, ms(performance.now() - t)]);

  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('Performance.enable');
  const heap = async () => {
    await cdp.send('HeapProfiler.collectGarbage');
    const { metrics } = await cdp.send('Performance.getMetrics');
    return metrics.find((m) => m.name === 'JSHeapUsedSize').value;
  };
  await page.goto(`${site.url}/clients/js/test/browser/bench.html`);
  await page.waitForFunction(() => window.connect);
  const heap0 = await heap();
  const url = relay.url;
  const cold = await page.evaluate(async ({ url, E }) => {
    const t0 = performance.now();
    const c = (window.c = connect(url, { spaces: ['bench'], name: 'bench', tabs: !window.NOTABS }));
    await c.ready;
    const s = c.space('bench');
    let first = 0;
    s.on('change', () => (first ||= performance.now() - t0));
    await new Promise((r) => s.on('synced', r));
    window.firstChange = first;
    const synced = performance.now() - t0;
    const n = s.list('items').length;
    await c.flush();
    return { synced, stored: performance.now() - t0, n, E };
  }, { url, E });
  if (cold.n !== E) throw new Error(`replica has ${cold.n} of ${E}`);
  const heap1 = await heap();
  rows.push([`initial sync, ${E} entities`, 'connect → first change frame applied', ms(await page.evaluate(() => window.firstChange))]);
  rows.push(['', 'connect → synced (catch-up received, replica built)', ms(cold.synced)]);
  rows.push(['', 'connect → also written to IndexedDB', ms(cold.stored)]);
  rows.push(['', 'JS heap after GC, replica loaded (page baseline subtracted)', mb(heap1 - heap0)]);

  // Warm start: a reload reads the replica from IndexedDB and resumes from its cursor.
  await page.evaluate(() => window.c.close());
  await page.reload();
  await page.waitForFunction(() => window.connect);
  const warm = await page.evaluate(async ({ url }) => {
    const t0 = performance.now();
    const c = (window.c = connect(url, { spaces: ['bench'], name: 'bench' }));
    await c.ready;
    const loaded = performance.now() - t0;
    const s = c.space('bench');
    let changes = 0;
    s.on('change', () => changes++);
    await new Promise((r) => s.on('synced', r));
    return { loaded, synced: performance.now() - t0, n: s.list('items').length, changes };
  }, { url });
  rows.push(['reload (warm start)', `IndexedDB → replica of ${warm.n}`, ms(warm.loaded)]);
  rows.push(['', `→ resumed and synced (${warm.changes} changes re-sent)`, ms(warm.synced)]);

  // W writes in one burst, each acknowledged (fsynced) by the relay.
  const writes = await page.evaluate(async ({ W }) => {
    const s = window.c.space('bench');
    const t0 = performance.now();
    const lat = [];
    const all = [];
    for (let i = 0; i < W; i++) {
      const t = performance.now();
      all.push(s.patch('items', 'e' + String(i).padStart(6, '0'), { done: true, n: i }).then((r) => (lat.push(performance.now() - t), r)));
    }
    const applied = performance.now() - t0;
    const res = await Promise.all(all);
    const total = performance.now() - t0;
    lat.sort((a, b) => a - b);
    return { applied, total, dup: res.filter((r) => r.duplicate).length, p50: lat[lat.length >> 1], p99: lat[Math.floor(lat.length * 0.99)] };
  }, { W });
  rows.push([`${W} writes, one burst`, 'all applied to the replica (optimistic)', ms(writes.applied)]);
  rows.push(['', 'all acked by the relay (durable)', ms(writes.total) + ` (${Math.round((W / writes.total) * 1000)} writes/s)`]);
  rows.push(['', 'ack latency p50 / p99 from the put call', `${ms(writes.p50)} / ${ms(writes.p99)}`]);
  rows.push(['', 'JS heap after GC', mb((await heap()) - heap0)]);
  await ctx.close();
} finally {
  await browser.close();
  await site.close();
  await relay.destroy();
}
const cpu = os.cpus()[0]?.model || '?';
console.log(`machine: ${os.cpus().length} × ${cpu}, ${Math.round(os.totalmem() / 2 ** 30)} GiB; Node ${process.version}; relay: ${BIN_NAME}, durability immediate\n`);
console.log('| step | what | figure |\n|---|---|---|');
for (const r of rows) console.log(`| ${r.join(' | ')} |`);

function ms(x) {
  return x >= 1000 ? (x / 1000).toFixed(2) + ' s' : Math.round(x) + ' ms';
}
function mb(b) {
  return (b / 2 ** 20).toFixed(1) + ' MB';
}
