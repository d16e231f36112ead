// The client in headless Chromium, through the demo app (examples/todo),
// against a real relay: convergence, 100 offline edits across a reload,
// a SIGKILL of the relay mid-stream, and three tabs on one socket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Relay, until } from '../relay.mjs';
import { launch, serveRepo, shot } from './harness.mjs';

let browser, site;
before(async () => {
  site = await serveRepo();
  browser = await launch();
});
after(async () => {
  await browser?.close();
  await site?.close();
});

async function withRelay(fn) {
  const relay = await new Relay().start();
  const contexts = [];
  const context = async () => {
    const c = await browser.newContext({ viewport: { width: 640, height: 560 } });
    contexts.push(c);
    return c;
  };
  try {
    await fn(relay, context);
  } finally {
    for (const c of contexts) await c.close().catch(() => {});
    await relay.destroy();
  }
}

/** Open the demo in a new page of `ctx`; waits for the store to load (and, if `online`, the sync). */
async function openTodo(ctx, relay, { online = true } = {}) {
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  await page.goto(`${site.url}/examples/todo/?relay=${encodeURIComponent(relay.url)}`);
  await page.waitForFunction(() => window.todo);
  await page.evaluate(() => todo.client.ready);
  if (online) await page.waitForFunction(() => todo.client.state === 'online' && todo.space.synced, null, { timeout: 15000 });
  return page;
}

const items = (page) =>
  page.evaluate(() => todo.space.list('items').map((d) => ({ id: d.id, title: d.data.title, done: d.data.done, pending: d.pending })));
const strip = (list) => list.map(({ pending, ...rest }) => rest);

test('two browsers converge through the relay', { timeout: 90_000 }, () =>
  withRelay(async (relay, context) => {
    const a = await openTodo(await context(), relay);
    const b = await openTodo(await context(), relay);
    for (const t of ['Buy milk', 'Call the plumber', 'Water the plants', 'Book train tickets']) {
      await a.fill('#title', t);
      await a.press('#title', 'Enter');
    }
    await b.waitForFunction(() => todo.space.list('items').length === 4);
    // B ticks one in its UI; A renames one in its UI.
    await b.locator('li', { hasText: 'Call the plumber' }).locator('input[type=checkbox]').check();
    await a.locator('li', { hasText: 'Water the plants' }).locator('.title').dblclick();
    await a.fill('li .edit', 'Water the plants (balcony too)');
    await a.press('li .edit', 'Enter');
    await until(async () => {
      const [x, y] = [await items(a), await items(b)];
      return JSON.stringify(strip(x)) === JSON.stringify(strip(y)) && x.some((d) => d.done) && x.some((d) => /balcony/.test(d.title)) && x.every((d) => !d.pending);
    }, 10000, 'both lists equal and settled');
    const list = await items(a);
    assert.equal(list.length, 4);
    assert.equal(list.find((d) => d.title === 'Call the plumber').done, true);
    await b.waitForFunction(() => document.querySelectorAll('li.done').length === 1 && /balcony/.test(document.body.textContent));
    await shot(a, 'two-browsers-a');
    await shot(b, 'two-browsers-b');
  }));

test('100 edits offline, a reload, then back: the other browser sees each edit exactly once', { timeout: 90_000 }, () =>
  withRelay(async (relay, context) => {
    const a = await openTodo(await context(), relay);
    const b = await openTodo(await context(), relay);
    await relay.stop();
    await a.waitForFunction(() => todo.client.state !== 'online');
    // 100 edits: 60 new items, 30 ticked, 10 renamed.
    await a.evaluate(async () => {
      const ids = [];
      const orig = todo.add;
      for (let i = 0; i < 60; i++) {
        const before = new Set(todo.space.list('items').map((d) => d.id));
        orig(`Offline item ${i + 1}`);
        ids.push(todo.space.list('items').find((d) => !before.has(d.id)).id);
      }
      for (let i = 0; i < 30; i++) todo.toggle(ids[2 * i], true);
      for (let i = 0; i < 10; i++) todo.rename(ids[2 * i + 1], `Renamed offline ${i + 1}`);
    });
    assert.equal(await a.evaluate(() => todo.client.pending), 100);
    // Wait until the queue is in IndexedDB, then reload (the relay is still down).
    const stored = () =>
      a.evaluate(
        (name) =>
          new Promise((ok) => {
            const r = indexedDB.open(name);
            r.onsuccess = () => {
              const q = r.result.transaction('queue').objectStore('queue').count();
              q.onsuccess = () => {
                r.result.close();
                ok(q.result);
              };
            };
          }),
        'outpost-todo:' + relay.url,
      );
    await until(async () => (await stored()) === 100, 5000, 'queue stored');
    await shot(a, 'offline');
    await a.reload();
    await a.waitForFunction(() => window.todo);
    await a.evaluate(() => todo.client.ready);
    assert.equal(await a.evaluate(() => todo.client.pending), 100, 'the queue survived the reload');
    assert.equal((await items(a)).length, 60, 'so did the optimistic view');
    assert.equal(await a.locator('li .pending').count(), 60);
    await shot(a, 'offline-reloaded');

    await relay.start();
    await a.waitForFunction(() => todo.client.pending === 0 && todo.client.state === 'online', null, { timeout: 20000 });
    await until(async () => (await b.evaluate(() => todo.changes.length)) >= 100, 20000, 'B received the edits');
    await new Promise((r) => setTimeout(r, 500));
    const changes = await b.evaluate(() => todo.changes);
    assert.equal(changes.length, 100, 'each edit delivered once');
    assert.equal(new Set(changes.map((c) => c.origin + ':' + c.origin_seq)).size, 100);
    const bl = await items(b);
    assert.equal(bl.length, 60);
    assert.equal(bl.filter((d) => d.done).length, 30);
    assert.equal(bl.filter((d) => d.title.startsWith('Renamed offline')).length, 10);
    assert.deepEqual(strip(bl), strip(await items(a)));
    await a.waitForFunction(() => document.querySelectorAll('li .pending').length === 0);
    await shot(b, 'back-online');
  }));

test('relay SIGKILLed and restarted mid-stream: the browser resumes without a gap or a duplicate', { timeout: 90_000 }, () =>
  withRelay(async (relay, context) => {
    const a = await openTodo(await context(), relay);
    const b = await openTodo(await context(), relay);
    const N = 300;
    // A streams N writes, two per 5 ms, without waiting for acks; halfway it
    // waits for the test, so the kill lands inside the stream by construction.
    await a.evaluate(() => {
      window.half = new Promise((r) => (window.goOn = r));
    });
    const writing = a.evaluate(async (n) => {
      for (let i = 0; i < n; i++) {
        if (i === n / 2) await window.half;
        todo.space.put('stream', 'n' + String(i).padStart(4, '0'), { i });
        if (i % 2 === 1) await new Promise((r) => setTimeout(r, 5));
      }
    }, N);
    await until(async () => (await b.evaluate(() => todo.changes.length)) >= 80, 15000, 'stream under way');
    await relay.stop('SIGKILL');
    const atKill = await b.evaluate(() => todo.changes.length);
    assert.ok(atKill < N, `killed mid-stream (${atKill} of ${N} delivered)`);
    await a.evaluate(() => window.goOn());
    await relay.start();
    await writing;
    await a.waitForFunction(() => todo.client.pending === 0, null, { timeout: 30000 });
    await until(async () => (await b.evaluate(() => todo.space.list('stream').length)) === N, 20000, 'B has the whole stream');
    await new Promise((r) => setTimeout(r, 500));
    const seqs = (await b.evaluate(() => todo.changes)).map((c) => c.seq);
    assert.equal(seqs.length, N, 'no duplicate delivery');
    for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], 'in log order');
    const values = await b.evaluate(() => todo.space.list('stream').map((d) => d.data.i));
    assert.deepEqual(values, Array.from({ length: N }, (_, i) => i), 'no gap');
  }));

test('three tabs share one socket and survive the leader tab closing', { timeout: 90_000 }, () =>
  withRelay(async (relay, context) => {
    const ctx = await context();
    const tabs = [];
    for (let i = 0; i < 3; i++) tabs.push(await openTodo(ctx, relay, { online: false }));
    for (const t of tabs) await t.waitForFunction(() => todo.client.state === 'online', null, { timeout: 15000 });
    const leaders = await Promise.all(tabs.map((t) => t.evaluate(() => todo.client.leader)));
    assert.deepEqual(leaders, [true, false, false]);
    assert.equal(await relay.metric('outpost_connections'), 1, 'one WebSocket for three tabs');

    // A follower writes: every tab shows it, the leader sends it, all settle.
    await tabs[2].fill('#title', 'Written in tab 3');
    await tabs[2].press('#title', 'Enter');
    for (const t of tabs)
      await t.waitForFunction(() => todo.space.list('items').some((d) => d.data.title === 'Written in tab 3' && !d.pending), null, { timeout: 10000 });
    await shot(tabs[1], 'follower-tab');

    // The leader goes; one of the others takes over the connection.
    await tabs[0].close();
    const rest = tabs.slice(1);
    await until(async () => (await Promise.all(rest.map((t) => t.evaluate(() => todo.client.leader)))).filter(Boolean).length === 1, 10000, 'a new leader');
    for (const t of rest) await t.waitForFunction(() => todo.client.state === 'online', null, { timeout: 15000 });
    await until(async () => (await relay.metric('outpost_connections')) === 1, 10000, 'one socket again');
    const follower = (await rest[0].evaluate(() => todo.client.leader)) ? rest[1] : rest[0];
    await follower.evaluate(() => todo.add('Written after the leader left'));
    for (const t of rest)
      await t.waitForFunction(() => todo.space.list('items').some((d) => d.data.title === 'Written after the leader left' && !d.pending), null, { timeout: 10000 });
    // And the relay has both, once each.
    const check = await openTodo(await context(), relay);
    const titles = (await items(check)).map((d) => d.title).sort();
    assert.deepEqual(titles, ['Written after the leader left', 'Written in tab 3']);
    assert.equal(await check.evaluate(() => todo.changes.length), 2);
  }));

test('without Web Locks every tab syncs, and replaying the shared queue stays exactly once', { timeout: 90_000 }, () =>
  withRelay(async (relay, context) => {
    const observer = await openTodo(await context(), relay);
    const ctx = await context();
    await ctx.addInitScript(() => Object.defineProperty(Navigator.prototype, 'locks', { get: () => undefined }));
    await relay.stop();
    const t1 = await openTodo(ctx, relay, { online: false });
    await t1.evaluate(() => {
      for (let i = 0; i < 20; i++) todo.add(`Queued in tab 1, #${i + 1}`);
    });
    await until(async () => (await t1.evaluate(() => todo.client.pending)) === 20);
    await new Promise((r) => setTimeout(r, 300));
    // A second tab loads the same queue from IndexedDB: both will send it.
    const t2 = await openTodo(ctx, relay, { online: false });
    assert.equal(await t2.evaluate(() => todo.client.pending), 20);
    assert.deepEqual(await Promise.all([t1, t2].map((t) => t.evaluate(() => todo.client.leader))), [true, true]);
    await relay.start();
    for (const t of [t1, t2]) await t.waitForFunction(() => todo.client.pending === 0 && todo.client.state === 'online', null, { timeout: 20000 });
    // Each tab has its own socket (and the observer one, once its backoff ends).
    await until(async () => (await relay.metric('outpost_connections')) === 3, 15000, 'three sockets');
    await t2.evaluate(() => todo.add('Written in tab 2'));
    await until(async () => (await items(t1)).length === 21 && (await items(observer)).length === 21, 10000, 'all converge');
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(await observer.evaluate(() => todo.changes.length), 21, 'each write applied once');
    assert.deepEqual(strip(await items(t1)), strip(await items(observer)));
    assert.deepEqual(strip(await items(t2)), strip(await items(observer)));
  }));
