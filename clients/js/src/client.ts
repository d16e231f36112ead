// The client: one WebSocket to one relay (native protocol, docs/protocol.md),
// the replicas of its spaces, the durable queue of unacknowledged writes,
// reconnects, and the sharing of all that between tabs.

import { Emitter } from './emitter';
import { claims } from './jwt';
import type { Fields, Op } from './merge';
import { ChangeFrame, Conflict, Space, SpaceHost, WriteResult } from './space';
import { Batch, MemoryStore, Meta, QueuedWrite, SCHEMA, Store, openStore } from './store';
import { IdbStore } from './idb';
import { TabLink, TabMsg, canShare, joinTabs } from './tabs';

/** Connection state: `connecting` (dialing or waiting to redial), `online` (welcome received), `offline` (no network, or waiting for the next try), `closed` (close() was called). */
export type ConnectionState = 'connecting' | 'online' | 'offline' | 'closed';

export interface ConnectOptions {
  /** A JWT for the relay (sent as `?token=`). */
  token?: string;
  /**
   * Called before every connection attempt and before the token expires;
   * `refresh` is true when the last token was refused or is about to expire.
   * Return null for an anonymous connection.
   */
  getToken?: (o: { refresh: boolean }) => string | null | undefined | Promise<string | null | undefined>;
  /** The spaces to replicate (more can be added with `client.space(name)`). */
  spaces?: string[];
  space?: string;
  /**
   * Where the replica, cursors and queue live. Default: IndexedDB in a
   * browser (database `name`), memory elsewhere; Node apps pass a
   * `FileStore` (from `outpost-client/node`) to survive restarts.
   */
  store?: Store;
  /** Name of the IndexedDB database, the tab lock and the channel. Default `outpost:` + url. */
  name?: string;
  /** Share one connection between the tabs of one browser (Web Locks + BroadcastChannel). Default true. */
  tabs?: boolean;
  /** A WebSocket constructor, where there is no global one. */
  WebSocket?: any;
  /** Backoff bounds in ms (default 250 to 30000), with full jitter. */
  minDelay?: number;
  maxDelay?: number;
  /** Ping interval in ms (default 15000); a connection silent for two is dropped. */
  heartbeat?: number;
  /** Most changes in one push (default 200) and most pushes awaiting acks (default 8). */
  batch?: number;
  window?: number;
}

export interface ClientError {
  /** The relay's `reason` (e.g. `forbidden`, `invalid_field`), or a client code (`unauthorized`, `storage`). */
  reason: string;
  code?: number;
  message: string;
  /** The writes it concerns, if any (rolled back). */
  writes?: QueuedWrite[];
}

export interface ConflictEvent extends Conflict {
  space: string;
  collection: string;
  id: string;
  wid: string;
}

export interface ClientEvents extends Record<string, unknown> {
  state: ConnectionState;
  error: ClientError;
  /** A write was refused by the relay and rolled back. */
  reject: ClientError;
  /** Acked writes that lost fields to newer values. */
  conflict: ConflictEvent;
  /** The token's subject changed: replica and queue of the old one were dropped. */
  user: { from: string | null; to: string };
  /** This tab now owns the connection. */
  leader: boolean;
  /** The stored data was upgraded or wiped (schema change) when opening. */
  store: { action: string; from?: number };
}

interface Waiter {
  resolve: (r: WriteResult) => void;
  reject: (e: ClientError) => void;
}

const PERMANENT = new Set(['invalid_field', 'forbidden', 'too_large', 'invalid_json', 'invalid_message', 'unknown_type']);
const FLUSH_MS = 40;

const rand = () =>
  typeof crypto !== 'undefined' && crypto.randomUUID
    ? crypto.randomUUID()
    : Math.random().toString(36).slice(2) + Date.now().toString(36) + Math.random().toString(36).slice(2);

export class Client extends Emitter<ClientEvents> implements SpaceHost {
  /** Resolves once the local store is loaded (reads before it see nothing). */
  readonly ready: Promise<void>;
  private st: ConnectionState = 'connecting';
  private spaces = new Map<string, Space>();
  private store: Store;
  private meta: Meta = { schema: SCHEMA, subject: null, clientId: rand() };
  private queue = new Map<string, QueuedWrite>();
  private waiters = new Map<string, Waiter>();
  private sent = new Set<string>();
  private inflight = new Map<string, QueuedWrite[]>();
  private rid = 0;
  private lastN = 0;
  private ws: any = null;
  private node: string | null = null;
  private attempt = 0;
  private retry: any = null;
  private handshake: any = null;
  private refresh = false;
  private token: string | null = null;
  private tokenTimer: any = null;
  private heard = 0;
  private pinger: any = null;
  private flushTimer: any = null;
  private flushing: Promise<void> = Promise.resolve();
  private qPut: QueuedWrite[] = [];
  private qDel: string[] = [];
  private dirtyCursors = new Set<string>();
  private tabs: TabLink | null = null;
  private isLeader = true;
  /** Several tabs write the store (no leader election): merge rows on write. */
  private shared = false;
  private tabId = rand();
  private outbox: TabMsg[] = [];
  private frameBox: any[] = [];
  private retrySend: any = null;
  private onOnline = () => this.online();
  private onOffline = () => this.offline();
  private presenceTimer: any = null;

  constructor(readonly url: string, private opts: ConnectOptions = {}) {
    super();
    const name = opts.name || 'outpost:' + url;
    this.store = opts.store || (typeof indexedDB !== 'undefined' ? new IdbStore(name) : new MemoryStore());
    for (const s of [...(opts.spaces || []), ...(opts.space ? [opts.space] : [])]) this.space(s);
    this.ready = this.open(name);
    this.ready.catch((e) => this.fail('storage', String(e)));
  }

  /** The connection state (this tab's, or the leader tab's for a follower). */
  get state(): ConnectionState {
    return this.st;
  }

  /** Whether this tab owns the connection. */
  get leader(): boolean {
    return this.isLeader;
  }

  /** Writes not yet acknowledged by the relay (all spaces, all tabs known here). */
  get pending(): number {
    return this.queue.size;
  }

  /** The subject owning the replica (JWT `sub`, or "anonymous"). */
  get subject(): string | null {
    return this.meta.subject;
  }

  /** Watch the connection state: called now and on every change. */
  watchState(fn: (s: ConnectionState) => void): () => void {
    fn(this.st);
    return this.on('state', fn);
  }

  /** The replica of a space (subscribed on first use). */
  space(name: string): Space {
    let s = this.spaces.get(name);
    if (!s) {
      this.spaces.set(name, (s = new Space(name, this)));
      if (this.ws && this.node) this.subscribe(s);
      this.tabs?.post({ t: 'spaces', names: [name] });
    }
    return s;
  }

  /** Resolves when every queued write is acknowledged (or rejected). */
  async flush(): Promise<void> {
    await this.ready;
    await Promise.all([...this.waiters.values()].map((w: any) => w.p?.catch(() => {})));
    while (this.queue.size) await new Promise((r) => setTimeout(r, 20));
    await this.persist();
  }

  /** Drop the connection now and dial again (skips the backoff wait). */
  reconnect(): void {
    if (this.st === 'closed' || !this.isLeader) return;
    this.attempt = 0;
    if (this.ws) this.ws.close();
    else this.dial();
  }

  /** Close the socket, stop retrying, persist, and leave the tab group. */
  async close(): Promise<void> {
    if (this.st === 'closed') return;
    this.setState('closed');
    for (const s of this.spaces.values()) if (s.presenceState != null) this.publish(s.name, '$presence', { id: this.meta.clientId, state: null });
    clearTimeout(this.retry);
    clearTimeout(this.handshake);
    clearTimeout(this.tokenTimer);
    clearTimeout(this.retrySend);
    clearInterval(this.pinger);
    clearInterval(this.presenceTimer);
    if (typeof removeEventListener !== 'undefined') {
      removeEventListener('online', this.onOnline);
      removeEventListener('offline', this.onOffline);
    }
    const ws = this.ws;
    this.ws = null;
    try {
      ws?.close(1000);
    } catch {}
    await this.ready.catch(() => {});
    await this.persist();
    this.tabs?.close();
    this.store.close();
  }

  // ---- SpaceHost ------------------------------------------------------------

  clientId(): string {
    return this.meta.clientId;
  }

  write(space: string, op: Op, collection: string, id: string, fields: Fields): Promise<WriteResult> {
    const now = Date.now();
    // Strictly increasing edit times: the relay orders this client's writes
    // by them even when pipelined pushes commit out of order.
    const ts = (this.lastN = Math.max(now, this.lastN + 1));
    const w: QueuedWrite = { wid: rand(), n: ts, space, collection, id, op, fields: { ...fields }, ts };
    let waiter!: Waiter;
    const p = new Promise<WriteResult>((resolve, reject) => (waiter = { resolve, reject }));
    (waiter as any).p = p;
    p.catch(() => {}); // a refusal is also an `reject` event: never an unhandled rejection
    this.waiters.set(w.wid, waiter);
    this.space(space)._pending(w);
    this.queue.set(w.wid, w);
    this.ready.then(() => {
      if (!this.queue.has(w.wid)) return;
      this.qPut.push(w);
      // Persist the queued write before anyone else hears of it (writes of
      // one task share one store batch).
      this.persistSoon().then(() => {
        if (this.isLeader) this.pumpSoon();
        else this.tabs?.post({ t: 'w', w });
      });
    });
    return p;
  }

  publish(space: string, topic: string, payload: unknown): void {
    if (!this.isLeader) return this.tabs?.post({ t: 'pub', space, topic, payload });
    this.send({ type: 'publish', space, topic, payload });
  }

  // ---- opening --------------------------------------------------------------

  private async open(name: string): Promise<void> {
    const opened = await openStore(this.store);
    if (opened.action === 'upgraded' || opened.action === 'wiped') this.emit('store', { action: opened.action, from: opened.from });
    this.load(opened.loaded);
    this.token = this.opts.getToken ? (await this.opts.getToken({ refresh: false })) || null : this.opts.token || null;
    this.claimSubject();
    await this.persist({ meta: this.meta });
    if (this.opts.tabs !== false && canShare()) {
      const { link, leader } = await joinTabs(name, this.tabId, (m) => this.tabMsg(m), () => this.takeOver());
      this.tabs = link;
      this.isLeader = leader;
      if (!leader) {
        this.emit('leader', false);
        // Ask the leader to flush, so this tab loads an up-to-date store;
        // messages that arrive meanwhile wait in the outbox.
        this.outbox = [];
        await new Promise<void>((res) => {
          const t = setTimeout(res, 500);
          this.flushedWait = () => {
            clearTimeout(t);
            res();
          };
          link.post({ t: 'hello', spaces: [...this.spaces.keys()] });
        });
        this.flushedWait = null;
        this.load(await this.store.load());
        const box = this.outbox;
        this.outbox = [];
        this.loading = false;
        for (const m of box) this.tabMsg(m);
        return;
      }
    } else if (this.opts.tabs !== false && typeof BroadcastChannel !== 'undefined' && typeof indexedDB !== 'undefined') {
      // No Web Locks: every tab syncs on its own and they share the store.
      this.shared = true;
    }
    this.loading = false;
    const box = this.outbox;
    this.outbox = [];
    for (const m of box) this.tabMsg(m);
    this.start();
  }
  private loading = true;
  private flushedWait: (() => void) | null = null;

  private load(l: import('./store').Loaded): void {
    if (l.meta) this.meta = { ...l.meta, schema: SCHEMA };
    const rows = new Map<string, Array<[string, string, any]>>();
    for (const [s, c, id, st] of l.entities) {
      if (!rows.has(s)) rows.set(s, []);
      rows.get(s)!.push([c, id, st]);
    }
    for (const name of new Set([...rows.keys(), ...Object.keys(l.cursors)])) this.space(name)._load(rows.get(name) || [], l.cursors[name]);
    for (const w of l.queue) this.adopt(w);
  }

  /** Take a stored or broadcast write into the queue (once). */
  private adopt(w: QueuedWrite): void {
    if (this.queue.has(w.wid)) return;
    this.queue.set(w.wid, w);
    this.lastN = Math.max(this.lastN, w.n);
    this.space(w.space)._pending(w);
  }

  /** The queue and replica belong to the token's subject: another user starts empty. */
  private claimSubject(): boolean {
    const sub = claims(this.token).sub;
    const from = this.meta.subject;
    this.meta.subject = sub;
    if (from === null || from === sub) return false;
    for (const w of this.queue.values()) this.waiters.get(w.wid)?.reject({ reason: 'user_changed', message: 'the signed-in user changed' });
    this.queue.clear();
    this.waiters.clear();
    this.sent.clear();
    this.inflight.clear();
    this.qPut = [];
    this.qDel = [];
    for (const s of this.spaces.values()) s._clear();
    this.persist({ clear: 'all', meta: this.meta });
    this.emit('user', { from, to: sub });
    this.tabs?.post({ t: 'wipe' });
    return true;
  }

  private start(): void {
    if (this.st === 'closed') return;
    this.isLeader = true;
    this.emit('leader', true);
    if (typeof addEventListener !== 'undefined') {
      addEventListener('online', this.onOnline);
      addEventListener('offline', this.onOffline);
    }
    this.presenceTimer = setInterval(() => {
      for (const s of this.spaces.values()) if (s.presenceState != null) s.setPresence(s.presenceState);
    }, 10_000);
    this.dial();
  }

  /** The leader tab went away: this one takes the connection over. */
  private async takeOver(): Promise<void> {
    await this.ready.catch(() => {});
    if (this.st === 'closed') return;
    // The store is the truth for the queue and cursors; states this tab got
    // from broadcasts stay (the catch-up from the stored cursor re-delivers
    // and persists them).
    const l = await this.store.load();
    for (const w of l.queue) this.adopt(w);
    for (const s of this.spaces.values()) s.cursor = l.cursors[s.name] || null;
    this.start();
  }

  // ---- the connection -------------------------------------------------------

  private setState(s: ConnectionState): void {
    if (this.st === s || this.st === 'closed') return;
    this.st = s;
    this.emit('state', s);
    if (this.isLeader) this.tabs?.post({ t: 'st', s });
  }

  private async dial(): Promise<void> {
    if (this.st === 'closed' || !this.isLeader || this.ws) return;
    this.setState('connecting');
    if (this.opts.getToken) {
      try {
        const t = (await this.opts.getToken({ refresh: this.refresh })) || null;
        this.refresh = false;
        if (t !== this.token) {
          this.token = t;
          if (this.claimSubject()) this.persist({ meta: this.meta });
        }
      } catch (e) {
        // Offline token endpoints must not stop the client: keep the old token.
        this.fail('unauthorized', 'getToken failed: ' + e);
      }
    }
    if ((this.st as ConnectionState) === 'closed' || this.ws) return;
    const WS = this.opts.WebSocket || (globalThis as any).WebSocket;
    const url = this.token ? this.url + (this.url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(this.token) : this.url;
    let ws: any;
    try {
      ws = new WS(url);
    } catch (e) {
      this.fail('connect', String(e));
      return this.later();
    }
    this.ws = ws;
    let welcomed = false;
    ws.onmessage = (e: any) => {
      if (this.ws !== ws) return;
      this.heard = Date.now();
      let m: any;
      try {
        m = JSON.parse(typeof e.data === 'string' ? e.data : String(e.data));
      } catch {
        return;
      }
      if (m.type === 'welcome') welcomed = true;
      this.frame(m);
    };
    const gone = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearTimeout(timer);
      try {
        ws.close();
      } catch {}
      // Refused before the welcome: maybe the token expired; ask for a fresh one.
      this.refresh = this.refresh || !welcomed;
      this.dropped();
    };
    // Some WebSocket implementations report a refused connection with an
    // error and no close; a handshake that hangs is given up on too.
    const timer = (this.handshake = setTimeout(() => welcomed || gone(), 10_000));
    ws.onclose = gone;
    ws.onerror = () => ws.readyState !== 1 && gone();
  }

  private dropped(): void {
    clearInterval(this.pinger);
    this.node = null;
    for (const s of this.spaces.values()) s.synced = false;
    // Unacked pushes go back to the queue: they are replayed (same wids).
    this.sent.clear();
    this.inflight.clear();
    if (this.st === 'closed') return;
    this.later();
  }

  private later(): void {
    const min = this.opts.minDelay ?? 250;
    const max = this.opts.maxDelay ?? 30_000;
    const cap = Math.min(max, min * 2 ** Math.min(this.attempt++, 20));
    const delay = cap / 2 + Math.random() * (cap / 2);
    this.setState(typeof navigator !== 'undefined' && navigator.onLine === false ? 'offline' : 'connecting');
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.dial(), delay);
  }

  private online(): void {
    if (this.st !== 'closed' && this.isLeader && !this.ws) {
      this.attempt = 0;
      clearTimeout(this.retry);
      this.dial();
    }
  }

  private offline(): void {
    if (this.isLeader && this.ws) this.ws.close();
  }

  private send(m: object): boolean {
    if (!this.ws || !this.node) return false;
    try {
      this.ws.send(JSON.stringify(m));
      return true;
    } catch {
      return false;
    }
  }

  private subscribe(s: Space): void {
    s._node(this.node!);
    s.synced = false;
    this.send({ type: 'subscribe', rid: 's:' + s.name, space: s.name, since: s.cursor!.seq });
  }

  private frame(m: any): void {
    switch (m.type) {
      case 'welcome': {
        this.node = m.node;
        this.attempt = 0;
        this.send({ type: 'hello', rid: 'hello', client_id: this.meta.clientId });
        for (const s of this.spaces.values()) this.subscribe(s);
        this.setState('online');
        this.scheduleTokenRefresh();
        clearInterval(this.pinger);
        const every = this.opts.heartbeat ?? 15_000;
        this.pinger = setInterval(() => {
          if (Date.now() - this.heard > 2 * every) this.ws?.close();
          else this.send({ type: 'ping' });
        }, every);
        for (const s of this.spaces.values()) if (s.presenceState != null) s.setPresence(s.presenceState);
        this.pump();
        return;
      }
      case 'change':
      case 'entity':
      case 'synced':
        if (m.type === 'entity' && m.rid != null) return;
        this.applyFrame(m);
        this.relay(m);
        if (m.type === 'synced' && this.node) this.space(m.space)._synced(m.seq, this.node);
        return;
      case 'ack':
        return this.acked(m);
      case 'resync': {
        const s = this.spaces.get(m.space);
        if (s && this.node) this.subscribe(s);
        return;
      }
      case 'event': {
        const s = this.spaces.get(m.space);
        s?._event(m);
        this.tabs?.post({ t: 'ev', space: m.space, e: m });
        return;
      }
      case 'error':
        return this.error(m);
    }
  }

  /** Fold a replica frame in (leader: from the socket; follower: broadcast). */
  private applyFrame(m: any): void {
    const s = this.space(m.space);
    if (m.type === 'change') s._change(m as ChangeFrame);
    else if (m.type === 'entity') s._entity(m);
    else if (m.type === 'synced' && !this.isLeader) s._synced(m.seq, m.node);
    if (this.isLeader) {
      this.dirtyCursors.add(s.name);
      this.later_flush();
    }
  }

  /** Queue a frame for the other tabs (sent in one message per task). */
  private relay(m: any): void {
    if (!this.tabs) return;
    if (m.type === 'synced') m = { ...m, node: this.node };
    this.frameBox.push(m);
    if (this.frameBox.length === 1)
      setTimeout(() => {
        const frames = this.frameBox;
        this.frameBox = [];
        this.tabs?.post({ t: 'frames', frames });
      });
  }

  private error(m: any): void {
    const rid = typeof m.rid === 'string' ? m.rid : '';
    const batch = this.inflight.get(rid);
    if (batch) {
      this.inflight.delete(rid);
      for (const w of batch) this.sent.delete(w.wid);
      if (!PERMANENT.has(m.reason)) {
        // disk_full, unavailable, storage_failed: the writes stay queued.
        this.fail(m.reason, m.message, m.code);
        clearTimeout(this.retrySend);
        this.retrySend = setTimeout(() => this.pump(), 1000 + Math.random() * 1000);
        return;
      }
      const at = /^changes\[(\d+)\]/.exec(m.message || '');
      let bad = batch;
      if (at && batch[+at[1]]) bad = [batch[+at[1]]];
      else if (m.reason === 'too_large' && batch.length > 1) {
        // Resend them one at a time: only a write too large on its own fails.
        this.oneByOne = new Set(batch.map((w) => w.wid));
        bad = [];
      }
      for (const w of bad) this.rejected(w, { reason: m.reason, code: m.code, message: m.message, writes: [w] });
      this.pump();
      return;
    }
    if (rid === 'hello' && m.reason === 'unauthorized') {
      this.refresh = true;
      this.fail('unauthorized', m.message, m.code);
      this.ws?.close();
      return;
    }
    if (rid.startsWith('s:') && m.reason === 'storage_failed') {
      const s = this.spaces.get(rid.slice(2));
      if (s) setTimeout(() => this.node && this.subscribe(s), 1000);
    }
    this.fail(m.reason || 'error', m.message || 'error', m.code);
  }
  private oneByOne = new Set<string>();

  private fail(reason: string, message: string, code?: number, writes?: QueuedWrite[]): void {
    const e: ClientError = { reason, message, code, writes };
    if (this.has('error')) this.emit('error', e);
  }

  // ---- the queue --------------------------------------------------------------

  private pumping = false;
  /** One pump for all the writes of a task. */
  private pumpSoon(): void {
    if (this.pumping) return;
    this.pumping = true;
    queueMicrotask(() => {
      this.pumping = false;
      this.pump();
    });
  }

  /** Send queued writes, in order, batched per space, up to the window. */
  private pump(): void {
    if (!this.ws || !this.node || !this.isLeader) return;
    const window = this.opts.window ?? 8;
    const max = this.opts.batch ?? 200;
    let batch: QueuedWrite[] = [];
    const flushBatch = () => {
      if (!batch.length) return;
      const rid = 'p' + ++this.rid;
      const changes = batch.map((w) => ({ collection: w.collection, id: w.id, op: w.op, fields: w.fields, ts: w.ts, wid: w.wid }));
      if (!this.send({ type: 'push', rid, space: batch[0].space, changes })) return;
      this.inflight.set(rid, batch);
      for (const w of batch) this.sent.add(w.wid);
      batch = [];
    };
    const order = [...this.queue.values()].sort((a, b) => a.n - b.n);
    for (const w of order) {
      if (this.inflight.size >= window) break;
      if (this.sent.has(w.wid)) continue;
      if (batch.length && (batch[0].space !== w.space || batch.length >= max || this.oneByOne.has(w.wid))) flushBatch();
      batch.push(w);
      if (this.oneByOne.has(w.wid)) flushBatch();
    }
    if (this.inflight.size < window) flushBatch();
  }

  private acked(m: any): void {
    const batch = this.inflight.get(m.rid);
    if (!batch) return;
    this.inflight.delete(m.rid);
    batch.forEach((w, i) => {
      const r = m.results[i] || {};
      const res: WriteResult = { wid: w.wid, seq: r.seq, duplicate: !!r.duplicate, conflicts: r.conflicts || [] };
      this.settled(w, res);
      this.tabs?.post({ t: 'ack', w, r: res });
      this.qDel.push(w.wid);
    });
    this.later_flush();
    this.pump();
  }

  private settled(w: QueuedWrite, r: WriteResult): void {
    this.queue.delete(w.wid);
    this.sent.delete(w.wid);
    this.oneByOne.delete(w.wid);
    this.space(w.space)._acked(w, r.seq);
    for (const c of r.conflicts) this.emit('conflict', { ...c, space: w.space, collection: w.collection, id: w.id, wid: w.wid });
    this.waiters.get(w.wid)?.resolve(r);
    this.waiters.delete(w.wid);
  }

  private rejected(w: QueuedWrite, e: ClientError): void {
    this.queue.delete(w.wid);
    this.sent.delete(w.wid);
    this.oneByOne.delete(w.wid);
    this.space(w.space)._rejected(w);
    if (this.isLeader) {
      this.qDel.push(w.wid);
      this.later_flush();
      this.tabs?.post({ t: 'rej', w, e });
    }
    this.emit('reject', e);
    this.fail(e.reason, e.message, e.code, e.writes);
    this.waiters.get(w.wid)?.reject(e);
    this.waiters.delete(w.wid);
  }

  // ---- tokens -------------------------------------------------------------

  private scheduleTokenRefresh(): void {
    clearTimeout(this.tokenTimer);
    const exp = claims(this.token).exp;
    if (!this.opts.getToken || !exp) return;
    const wait = Math.max(1000, exp * 1000 - Date.now() - 30_000);
    this.tokenTimer = setTimeout(async () => {
      try {
        const t = (await this.opts.getToken!({ refresh: true })) || null;
        if (!t || t === this.token) return;
        this.token = t;
        if (this.claimSubject()) {
          this.persist({ meta: this.meta });
          for (const s of this.spaces.values()) if (this.node) this.subscribe(s);
        } else this.send({ type: 'hello', rid: 'hello', token: t });
        this.scheduleTokenRefresh();
      } catch (e) {
        this.fail('unauthorized', 'getToken failed: ' + e);
      }
    }, wait);
  }

  // ---- persistence ----------------------------------------------------------

  private soon: Promise<void> | null = null;
  private persistSoon(): Promise<void> {
    return (this.soon ||= new Promise<void>((r) => queueMicrotask(r)).then(() => {
      this.soon = null;
      return this.persist();
    }));
  }

  private later_flush(): void {
    if (!this.flushTimer) this.flushTimer = setTimeout(() => this.persist(), FLUSH_MS);
  }

  /** Write what changed (and `extra`) in one store batch; batches are serial. */
  private persist(extra: Batch = {}): Promise<void> {
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    const b: Batch = { ...extra, queuePut: this.qPut, queueDel: this.qDel };
    this.qPut = [];
    this.qDel = [];
    if (this.isLeader) {
      const entities: NonNullable<Batch['entities']> = [];
      const cursors: NonNullable<Batch['cursors']> = {};
      for (const s of this.spaces.values()) {
        for (const k of s.dirty) {
          const row = s._state(k);
          if (row) entities.push([s.name, ...row]);
        }
        s.dirty.clear();
        if (this.dirtyCursors.has(s.name) && s.cursor) cursors[s.name] = s.cursor;
      }
      this.dirtyCursors.clear();
      b.entities = entities;
      b.cursors = cursors;
    }
    const run = () => this.store.commit(b, this.shared);
    this.flushing = this.flushing.then(run, run);
    return this.flushing.catch((e) => this.fail('storage', 'store write failed: ' + e));
  }

  // ---- other tabs -----------------------------------------------------------

  private tabMsg(m: TabMsg): void {
    if (this.st === 'closed') return;
    if (this.loading && m.t !== 'flushed') {
      this.outbox.push(m);
      return;
    }
    switch (m.t) {
      case 'hello':
        if (!this.isLeader) return;
        for (const n of m.spaces || []) this.space(n);
        this.persist().then(() =>
          this.tabs?.post({ t: 'flushed', to: m.from, s: this.st, synced: [...this.spaces.values()].filter((s) => s.synced).map((s) => s.name) }),
        );
        return;
      case 'flushed':
        if (m.to === this.tabId && this.flushedWait) {
          this.setState(m.s);
          for (const n of m.synced || []) this.space(n).synced = true;
          this.flushedWait();
        }
        return;
      case 'spaces':
        if (this.isLeader) for (const n of m.names) this.space(n);
        return;
      case 'w':
        this.adopt(m.w);
        if (this.isLeader) this.pumpSoon();
        return;
      case 'ack':
        if (!this.isLeader) this.settled(m.w, m.r);
        return;
      case 'rej':
        if (!this.isLeader) this.rejected(m.w, m.e);
        return;
      case 'frames':
        if (!this.isLeader) for (const f of m.frames) this.applyFrame(f);
        return;
      case 'st':
        if (!this.isLeader) this.setState(m.s);
        return;
      case 'ev':
        this.spaces.get(m.space)?._event(m.e);
        return;
      case 'pub':
        if (this.isLeader) this.publish(m.space, m.topic, m.payload);
        return;
      case 'wipe':
        if (this.isLeader) return;
        this.queue.clear();
        for (const s of this.spaces.values()) s._clear();
        return;
    }
  }
}

/** Connect to a relay's native endpoint, e.g. `connect('ws://127.0.0.1:7070/ws', {spaces: ['home']})`. */
export function connect(url: string, opts: ConnectOptions = {}): Client {
  return new Client(url, opts);
}
