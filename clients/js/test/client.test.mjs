// The client in Node against a real relay: replica, optimistic writes,
// queue, cursor, replay, reconnects, tokens, stored schema.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, MemoryStore, FileStore, SCHEMA } from '../dist/node.mjs';
import { Relay, mint, until } from './relay.mjs';

const tmp = mkdtempSync(join(tmpdir(), 'outpost-js-files-'));
after(() => rmSync(tmp, { recursive: true, force: true }));
const fast = { minDelay: 50, maxDelay: 400, tabs: false };

async function withRelay(opts, fn) {
  const relay = await new Relay(opts).start();
  const clients = [];
  const open = (o = {}) => {
    const c = connect(relay.url, { store: new MemoryStore(), ...fast, ...o });
    clients.push(c);
    return c;
  };
  try {
    await fn(relay, open);
  } finally {
    for (const c of clients) await c.close();
    await relay.destroy();
  }
}

const online = (c) => until(() => c.state === 'online', 10000, 'online');
const synced = (c, s) => until(() => c.space(s).synced, 10000, 'synced');

test('two clients converge: optimistic put, pending until acked, watch fires', { timeout: 60_000 }, () =>
  withRelay({}, async (relay, open) => {
    const a = open({ spaces: ['home'] });
    const b = open({ spaces: ['home'] });
    await Promise.all([synced(a, 'home'), synced(b, 'home')]);
    const seen = [];
    b.space('home').watch('todos', (list) => seen.push(list.map((d) => d.data.title)));
    const p = a.space('home').put('todos', 't1', { title: 'milk', done: false });
    // Applied at once, marked pending.
    assert.deepEqual(a.space('home').get('todos', 't1'), { title: 'milk', done: false });
    assert.equal(a.space('home').doc('todos', 't1').pending, true);
    const r = await p;
    assert.equal(r.duplicate, false);
    assert.ok(r.seq > 0);
    await until(() => b.space('home').get('todos', 't1'));
    await until(() => !a.space('home').doc('todos', 't1').pending, 5000, 'settled');
    await a.space('home').patch('todos', 't1', { done: true, note: 'x' });
    await a.space('home').patch('todos', 't1', { note: null });
    await until(() => b.space('home').get('todos', 't1')?.done === true && !('note' in b.space('home').get('todos', 't1')));
    await b.space('home').put('todos', 't2', { title: 'eggs' });
    await b.space('home').delete('todos', 't1');
    await until(() => a.space('home').list('todos').length === 1);
    assert.deepEqual(a.space('home').list('todos').map((d) => [d.id, d.data]), [['t2', { title: 'eggs' }]]);
    assert.deepEqual(seen[0], []);
    assert.deepEqual(seen.at(-1), ['eggs']);
  }));

test('a refused write rolls back and raises reject; the rest of its push goes through', { timeout: 60_000 }, () =>
  withRelay({}, async (relay, open) => {
    const a = open({ spaces: ['s'] });
    await synced(a, 's');
    const rejects = [];
    a.on('reject', (e) => rejects.push(e));
    // Queue both in one task: one push, one bad id (control character).
    const ok = a.space('s').put('c', 'good', { v: 1 });
    const bad = a.space('s').put('c', 'bad\u0001id', { v: 2 });
    assert.ok(a.space('s').get('c', 'bad\u0001id'), 'shown optimistically');
    await assert.rejects(bad, (e) => e.reason === 'invalid_field' && e.code === 400);
    assert.equal(a.space('s').get('c', 'bad\u0001id'), undefined, 'rolled back');
    assert.equal((await ok).seq > 0, true);
    assert.equal(rejects.length, 1);
    assert.equal(rejects[0].writes[0].id, 'bad\u0001id');
    assert.equal(a.pending, 0);
  }));

test('a write that loses to a newer value raises a conflict event with both values', { timeout: 60_000 }, () =>
  withRelay({}, async (relay, open) => {
    const a = open({ spaces: ['s'] });
    await synced(a, 's');
    // Another device with a clock 20 s ahead writes the field first.
    const raw = new WebSocket(relay.url);
    await new Promise((r) => (raw.onopen = r));
    raw.send(JSON.stringify({ type: 'push', rid: 1, space: 's', changes: [{ collection: 'c', id: 'x', fields: { v: 'future' }, ts: Date.now() + 20000 }] }));
    await new Promise((r) => (raw.onmessage = (e) => JSON.parse(e.data).type === 'ack' && r()));
    raw.close();
    await until(() => a.space('s').get('c', 'x'));
    const conflicts = [];
    a.on('conflict', (c) => conflicts.push(c));
    const r = await a.space('s').patch('c', 'x', { v: 'mine' });
    assert.equal(r.conflicts.length, 1);
    assert.equal(conflicts.length, 1);
    assert.deepEqual([conflicts[0].field, conflicts[0].attempted, conflicts[0].current], ['v', 'mine', 'future']);
    assert.equal(conflicts[0].id, 'x');
    // The replica shows what the relay kept.
    await until(() => !a.space('s').doc('c', 'x').pending);
    assert.equal(a.space('s').get('c', 'x').v, 'future');
  }));

test('offline writes survive a restart (file store) and are each applied exactly once', { timeout: 60_000 }, () =>
  withRelay({}, async (relay, open) => {
    const file = join(tmp, 'offline.json');
    const watcher = open({ spaces: ['s'] });
    await synced(watcher, 's');
    const changes = [];
    watcher.space('s').on('change', (f) => changes.push(f.id));
    await relay.stop();
    const a = connect(relay.url, { ...fast, store: new FileStore(file), spaces: ['s'] });
    await a.ready;
    for (let i = 0; i < 50; i++) a.space('s').put('c', 'k' + i, { i });
    await until(() => JSON.parse(readFileSync(file, 'utf8')).queue.length === 50, 5000, 'queue on disk');
    assert.equal(a.state === 'online', false);
    await a.close();
    // A new process opens the same file: the queue and the optimistic view are back.
    const b = open({ store: new FileStore(file), spaces: ['s'] });
    await b.ready;
    assert.equal(b.pending, 50);
    assert.equal(b.space('s').list('c').length, 50);
    await relay.start();
    await until(() => b.pending === 0, 15000, 'queue drained');
    await until(() => changes.length >= 50, 15000, 'watcher saw them');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(changes.length, 50);
    assert.equal(new Set(changes).size, 50);
    assert.equal(watcher.space('s').list('c').length, 50);
  }));

test('acks lost with the connection: the replay is deduplicated by write id', { timeout: 60_000 }, () =>
  withRelay({}, async (relay, open) => {
    // A socket that swallows acks and drops after the first pushes, as a
    // network that fails between the relay's commit and the client.
    let drops = 0;
    class Lossy extends WebSocket {
      set onmessage(fn) {
        super.onmessage = (e) => {
          if (drops < 2 && JSON.parse(e.data).type === 'ack') {
            drops++;
            this.close();
            return;
          }
          fn(e);
        };
      }
    }
    const watcher = open({ spaces: ['s'] });
    await synced(watcher, 's');
    const seen = [];
    watcher.space('s').on('change', (f) => seen.push(f.id));
    const a = open({ spaces: ['s'], WebSocket: Lossy, window: 1, batch: 5 });
    await synced(a, 's');
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => a.space('s').put('c', 'w' + i, { i })));
    assert.equal(drops, 2);
    assert.ok(results.filter((r) => r.duplicate).length >= 5, 'replayed writes came back as duplicates');
    await until(() => seen.length >= 20);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(seen.sort(), Array.from({ length: 20 }, (_, i) => 'w' + i).sort());
  }));

test('relay SIGKILLed and restarted mid-stream: no acked write lost, no gap, no duplicate', { timeout: 60_000 }, () =>
  withRelay({}, async (relay, open) => {
    const reader = open({ spaces: ['s'] });
    const writer = open({ spaces: ['s'] });
    await Promise.all([synced(reader, 's'), synced(writer, 's')]);
    const seen = [];
    reader.space('s').on('change', (f) => seen.push(f.seq));
    const N = 300;
    const done = [];
    for (let i = 0; i < N; i++) {
      done.push(writer.space('s').put('c', 'n' + i, { i }));
      if (i === 100) {
        await relay.stop('SIGKILL');
        relay.start();
      }
      if (i % 20 === 0) await new Promise((r) => setTimeout(r, 5));
    }
    await Promise.all(done);
    await until(() => reader.space('s').list('c').length === N, 20000, 'reader has all');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(seen.length, N, 'each change delivered once');
    assert.equal(new Set(seen).size, N);
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i] > seen[i - 1], 'in seq order');
  }));

test('a reader resumes from its cursor: only the missed changes come again', { timeout: 60_000 }, () =>
  withRelay({}, async (relay, open) => {
    const file = join(tmp, 'cursor.json');
    const w = open({ spaces: ['s'] });
    for (let i = 0; i < 10; i++) await w.space('s').put('c', 'a' + i, { i });
    let r = connect(relay.url, { ...fast, store: new FileStore(file), spaces: ['s'] });
    await synced(r, 's');
    assert.equal(r.space('s').list('c').length, 10);
    await r.close();
    for (let i = 0; i < 3; i++) await w.space('s').put('c', 'b' + i, { i });
    r = open({ store: new FileStore(file), spaces: ['s'] });
    const got = [];
    r.space('s').on('change', (f) => got.push(f.id));
    await synced(r, 's');
    assert.deepEqual(got, ['b0', 'b1', 'b2']);
    assert.equal(r.space('s').list('c').length, 13);
  }));

test('behind the trimmed log horizon the replica is rebuilt from the snapshot', { timeout: 60_000 }, () =>
  withRelay({ retention: '1s' }, async (relay, open) => {
    const file = join(tmp, 'snapshot.json');
    const w = open({ spaces: ['s'] });
    for (let i = 0; i < 5; i++) await w.space('s').put('c', 'a' + i, { i, keep: true });
    let r = connect(relay.url, { ...fast, store: new FileStore(file), spaces: ['s'] });
    await synced(r, 's');
    await r.close();
    await w.space('s').delete('c', 'a0');
    await w.space('s').patch('c', 'a1', { i: 10, keep: null });
    await w.space('s').put('c', 'b0', { new: true });
    // A restart runs a retention pass (1 s): the log is trimmed past the reader's cursor.
    await new Promise((r) => setTimeout(r, 1200));
    await relay.stop();
    await relay.start();
    // The pass runs in the background right after the start.
    await until(async () => (await relay.metric('outpost_log_entries')) === 0, 10000, 'log trimmed');
    r = open({ store: new FileStore(file), spaces: ['s'] });
    const changes = [];
    r.space('s').on('change', (f) => changes.push(f.id));
    await synced(r, 's');
    assert.deepEqual(changes, [], 'nothing left in the log: entity frames only');
    const docs = r.space('s').list('c').map((d) => [d.id, d.data]);
    assert.deepEqual(docs, [
      ['a1', { i: 10 }],
      ['a2', { i: 2, keep: true }],
      ['a3', { i: 3, keep: true }],
      ['a4', { i: 4, keep: true }],
      ['b0', { new: true }],
    ]);
    // Live changes continue on top of the snapshot states.
    await w.space('s').patch('c', 'a2', { i: 20 });
    await until(() => r.space('s').get('c', 'a2').i === 20);
    assert.equal(r.space('s').get('c', 'a2').keep, true);
  }));

test('connection state is observable and reconnects with backoff', { timeout: 60_000 }, () =>
  withRelay({}, async (relay, open) => {
    const a = open({ spaces: ['s'] });
    const states = [];
    a.watchState((s) => states.push(s));
    await online(a);
    await relay.stop();
    await until(() => a.state !== 'online');
    await new Promise((r) => setTimeout(r, 500));
    await relay.start();
    await online(a);
    await synced(a, 's');
    assert.deepEqual(states.slice(0, 2), ['connecting', 'online']);
    assert.ok(states.lastIndexOf('connecting') > 1);
    assert.equal(states.at(-1), 'online');
  }));

test('events and presence reach the other clients of the space', { timeout: 60_000 }, () =>
  withRelay({}, async (relay, open) => {
    const a = open({ spaces: ['room'] });
    const b = open({ spaces: ['room'] });
    await Promise.all([synced(a, 'room'), synced(b, 'room')]);
    const events = [];
    b.space('room').on('event', (e) => events.push(e));
    a.space('room').publish('cursor', { x: 1 });
    a.space('room').setPresence({ name: 'ann' });
    await until(() => events.length === 1 && b.space('room').present().length === 1);
    assert.deepEqual([events[0].topic, events[0].payload], ['cursor', { x: 1 }]);
    assert.deepEqual(b.space('room').present()[0].state, { name: 'ann' });
    assert.equal(b.space('room').present()[0].id, a.clientId());
    a.space('room').setPresence(null);
    await until(() => b.space('room').present().length === 0);
  }));

test('token refresh while offline keeps the queue; another user clears it', { timeout: 60_000 }, () =>
  withRelay({ auth: true }, async (relay, open) => {
    const file = join(tmp, 'tokens.json');
    let token = mint('ann', { exp: Math.floor(Date.now() / 1000) + 3600 });
    const calls = [];
    const getToken = ({ refresh }) => {
      calls.push(refresh);
      return token;
    };
    const watcher = open({ token: mint('watcher', { scope: 'read' }), spaces: ['s'] });
    await synced(watcher, 's');
    await relay.stop();
    let a = connect(relay.url, { ...fast, store: new FileStore(file), getToken, spaces: ['s'] });
    for (let i = 0; i < 5; i++) a.space('s').put('c', 'q' + i, { i });
    await a.ready;
    await a.close();
    // The old token expired meanwhile; the app gets a new one for the same user.
    token = mint('ann', { exp: Math.floor(Date.now() / 1000) + 7200 });
    await relay.start();
    a = open({ store: new FileStore(file), getToken, spaces: ['s'] });
    await until(() => a.pending === 0 && a.state === 'online', 10000, 'queue sent');
    await until(() => watcher.space('s').list('c').length === 5);
    assert.equal(a.subject, 'ann');
    // Now offline writes, then someone else signs in on this device.
    await relay.stop();
    a.space('s').put('c', 'private', { v: 1 });
    await new Promise((r) => setTimeout(r, 100));
    await a.close();
    token = mint('bob');
    const users = [];
    const b = open({ store: new FileStore(file), getToken, spaces: ['s'] });
    b.on('user', (u) => users.push(u));
    await b.ready;
    assert.deepEqual(users, [{ from: 'ann', to: 'bob' }]);
    assert.equal(b.pending, 0);
    assert.equal(b.space('s').list('c').length, 0, "ann's replica is gone");
    await relay.start();
    await synced(b, 's');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(watcher.space('s').get('c', 'private'), undefined, "ann's queued write was not sent as bob");
    assert.equal(b.space('s').list('c').length, 5);
  }));

test('stored data of an older schema is upgraded; one that cannot be is wiped but keeps the queue', { timeout: 60_000 }, async () => {
  const { openStore, MIGRATIONS } = await import('../dist/node.mjs');
  const w = { wid: 'w1', n: 1, space: 's', collection: 'c', id: 'x', op: 'put', fields: { v: 1 }, ts: 1 };
  const seed = async (schema) => {
    const s = new MemoryStore();
    await s.commit({
      meta: { schema, subject: 'ann', clientId: 'c1' },
      entities: [['s', 'c', 'x', { r: null, t: null, l: [1, 0, 'a', 1], f: { v: [1, [1, 0, 'a', 1]] } }]],
      cursors: { s: { seq: 7, node: 'n' } },
      queuePut: [w],
    });
    return s;
  };
  // An upgrade path: kept and rewritten at the current version.
  const up = await openStore(await seed(SCHEMA - 1), { ...MIGRATIONS, [SCHEMA - 1]: (l) => l });
  assert.equal(up.action, 'upgraded');
  assert.equal(up.loaded.entities.length, 1);
  assert.equal(up.loaded.cursors.s.seq, 7);
  // No path (or a newer version): replica and cursors wiped, queue kept.
  for (const v of [SCHEMA - 1, SCHEMA + 1]) {
    const store = await seed(v);
    const o = await openStore(store, {});
    assert.equal(o.action, 'wiped');
    const l = await store.load();
    assert.deepEqual([l.entities.length, Object.keys(l.cursors).length, l.queue.length, l.meta.schema], [0, 0, 1, SCHEMA]);
  }
  const same = await openStore(await seed(SCHEMA));
  assert.equal(same.action, 'kept');
});

test('package: ESM, CJS and types, no runtime dependencies, within the size budget', { timeout: 60_000 }, async () => {
  const { gzipSync } = await import('node:zlib');
  const { createRequire } = await import('node:module');
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url)));
  assert.equal(pkg.dependencies, undefined);
  const min = readFileSync(new URL('../dist/outpost.min.mjs', import.meta.url));
  const gz = gzipSync(min, { level: 9 }).length;
  assert.ok(gz <= 15 * 1024, `min+gzip ${gz} bytes > 15 KB`);
  const cjs = createRequire(import.meta.url)('../dist/index.cjs');
  assert.equal(typeof cjs.connect, 'function');
  const dts = readFileSync(new URL('../dist/index.d.ts', import.meta.url), 'utf8');
  assert.match(dts, /connect/);
  // The browser bundle reaches no Node module.
  assert.doesNotMatch(min.toString(), /node:fs/);
  console.log(`# size: ${min.length} bytes minified, ${gz} bytes min+gzip`);
});
