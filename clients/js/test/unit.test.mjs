// Client logic against a scripted socket (no relay): what it sends on a
// resync, a token about to expire, a refused hello and a transient error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, MemoryStore } from '../dist/node.mjs';
import { until } from './relay.mjs';

/** A WebSocket stand-in: records what the client sends; the test plays the relay. */
function fakeSockets() {
  const all = [];
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0;
      all.push(this);
      setTimeout(() => {
        this.readyState = 1;
        this.recv({ type: 'welcome', node: 'aaaaaaaaaaaaaaaa', protocol: 1 });
      });
    }
    send(s) {
      this.sent.push(JSON.parse(s));
    }
    close() {
      if (this.readyState === 3) return;
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code: 1000 }));
    }
    recv(m) {
      this.onmessage?.({ data: JSON.stringify(m) });
    }
    of(type) {
      return this.sent.filter((m) => m.type === type);
    }
  }
  return { FakeWS, all };
}

const jwt = (claims) => 'e30.' + Buffer.from(JSON.stringify(claims)).toString('base64url') + '.sig';

test('a resync resubscribes from the seq it names', async () => {
  const { FakeWS, all } = fakeSockets();
  const c = connect('ws://relay/ws', { WebSocket: FakeWS, store: new MemoryStore(), tabs: false, spaces: ['s'] });
  await until(() => all[0]?.of('subscribe').length === 1);
  const ws = all[0];
  assert.equal(ws.of('subscribe')[0].since, 0);
  ws.recv({ type: 'synced', rid: 's:s', space: 's', seq: 3 });
  ws.recv({ type: 'change', space: 's', seq: 5, collection: 'c', id: 'x', op: 'put', fields: { v: 1 }, stamp: { ms: 1, counter: 0, node: 'aaaaaaaaaaaaaaaa' }, origin: 'aaaaaaaaaaaaaaaa', origin_seq: 5, actor: 'a', version: 1 });
  ws.recv({ type: 'resync', space: 's', since: 5, reason: 'queue_full' });
  assert.deepEqual(ws.of('subscribe').map((m) => m.since), [0, 5]);
  assert.equal(c.space('s').get('c', 'x').v, 1);
  await c.close();
});

test('a token about to expire is refreshed and presented in hello; a refused hello redials with refresh', async () => {
  const { FakeWS, all } = fakeSockets();
  const asked = [];
  let n = 0;
  const getToken = ({ refresh }) => {
    asked.push(refresh);
    // Expires in 31 s: the client refreshes 30 s early (at least 1 s from now).
    return jwt({ sub: 'ann', exp: Math.floor(Date.now() / 1000) + 31, n: n++ });
  };
  const c = connect('ws://relay/ws', { WebSocket: FakeWS, store: new MemoryStore(), tabs: false, spaces: ['s'], getToken, minDelay: 10, maxDelay: 20 });
  await until(() => all.length === 1 && all[0].of('hello').length === 1);
  assert.match(all[0].url, /\?token=/);
  await until(() => all[0].of('hello').some((h) => h.token), 5000, 'hello with a fresh token');
  assert.deepEqual(asked, [false, false, true]);
  assert.equal(c.subject, 'ann');
  // The relay refuses a token in hello: the client drops and redials asking for a refresh.
  all[0].recv({ type: 'error', rid: 'hello', code: 401, reason: 'unauthorized', message: 'expired' });
  await until(() => all.length === 2, 5000, 'redial');
  assert.equal(asked.at(-1), true);
  await c.close();
});

test('a transient refusal (503) keeps the write queued and sends it again', async () => {
  const { FakeWS, all } = fakeSockets();
  const c = connect('ws://relay/ws', { WebSocket: FakeWS, store: new MemoryStore(), tabs: false, spaces: ['s'] });
  await until(() => all[0]?.of('subscribe').length === 1);
  const p = c.space('s').put('c', 'x', { v: 1 });
  await until(() => all[0].of('push').length === 1);
  const push = all[0].of('push')[0];
  all[0].recv({ type: 'error', rid: push.rid, code: 503, reason: 'unavailable', message: 'shutting down' });
  assert.equal(c.pending, 1);
  assert.ok(c.space('s').get('c', 'x'), 'still shown');
  await until(() => all[0].of('push').length === 2, 5000, 'sent again');
  const again = all[0].of('push')[1];
  assert.equal(again.changes[0].wid, push.changes[0].wid, 'same write id');
  all[0].recv({ type: 'ack', rid: again.rid, space: 's', results: [{ seq: 1, duplicate: false, conflicts: [] }] });
  assert.equal((await p).seq, 1);
  assert.equal(c.pending, 0);
  await c.close();
});
