// Local persistence: the replica (merged entity states), the cursor of each
// space and the queue of unacknowledged writes. A store only keeps bytes;
// the client decides what goes in, in batches that a store applies
// atomically (IndexedDB: one transaction), so entities and the cursor that
// covers them are always written together.

import { EntityState, Fields, Op, join } from './merge';

/** Version of the data layout below; see `openStore` for upgrades. */
export const SCHEMA = 1;

export interface Meta {
  /** Data layout version ({@link SCHEMA}) that wrote this store. */
  schema: number;
  /** Subject (JWT `sub`, or "anonymous") that owns the replica and the queue. */
  subject: string | null;
  /** This replica's client id, sent in `hello` (the actor of anonymous writes). */
  clientId: string;
}

export interface Cursor {
  /** Highest relay seq folded into the replica. */
  seq: number;
  /** The relay (welcome.node) that issued `seq`. */
  node: string;
}

/** A local write waiting for the relay's ack. */
export interface QueuedWrite {
  /** Client write id: the relay dedupes a replay on it. */
  wid: string;
  /** Order of the write among all queued writes (edit time based). */
  n: number;
  space: string;
  collection: string;
  id: string;
  op: Op;
  fields: Fields;
  /** Edit time, ms since the epoch (sent as `ts`). */
  ts: number;
}

export type EntityRow = [space: string, collection: string, id: string, state: EntityState];

export interface Loaded {
  meta: Meta | null;
  entities: EntityRow[];
  cursors: Record<string, Cursor>;
  queue: QueuedWrite[];
}

export interface Batch {
  meta?: Meta;
  /** Entity states to write; null deletes the row. */
  entities?: Array<[string, string, string, EntityState | null]>;
  cursors?: Record<string, Cursor | null>;
  queuePut?: QueuedWrite[];
  queueDel?: string[];
  /** Drop replica and cursors ('replica') or everything ('all') before the rest of the batch. */
  clear?: 'replica' | 'all';
}

export interface Store {
  load(): Promise<Loaded>;
  /**
   * Apply a batch atomically. With `merge`, entity rows are joined with what
   * is stored and cursors only move up (several tabs writing one store).
   */
  commit(batch: Batch, merge?: boolean): Promise<void>;
  close(): void;
}

const ek = (s: string, c: string, i: string) => s + '\u0000' + c + '\u0000' + i;

/** Applies batches to plain maps: the memory store, and the file store's image. */
export class MapState {
  meta: Meta | null = null;
  entities = new Map<string, EntityRow>();
  cursors: Record<string, Cursor> = {};
  queue = new Map<string, QueuedWrite>();

  apply(b: Batch, merge?: boolean): void {
    if (b.clear) {
      this.entities.clear();
      this.cursors = {};
      if (b.clear === 'all') this.queue.clear();
    }
    if (b.meta) this.meta = { ...b.meta };
    for (const [s, c, i, st] of b.entities || []) {
      const k = ek(s, c, i);
      if (!st) this.entities.delete(k);
      else {
        const old = merge && this.entities.get(k);
        this.entities.set(k, [s, c, i, clone(old ? join(old[3], st) : st)]);
      }
    }
    for (const s in b.cursors || {}) {
      const cur = b.cursors![s];
      const old = this.cursors[s];
      if (!cur) delete this.cursors[s];
      else if (!(merge && old && old.node === cur.node && old.seq > cur.seq)) this.cursors[s] = { ...cur };
    }
    for (const w of b.queuePut || []) this.queue.set(w.wid, clone(w));
    for (const wid of b.queueDel || []) this.queue.delete(wid);
  }

  snapshot(): Loaded {
    return clone({
      meta: this.meta,
      entities: [...this.entities.values()],
      cursors: this.cursors,
      queue: [...this.queue.values()].sort((a, b) => a.n - b.n),
    });
  }
}

const clone = <T>(v: T): T => JSON.parse(JSON.stringify(v));

/** Keeps everything in memory: lost with the process (tests, short scripts). */
export class MemoryStore implements Store {
  private s = new MapState();
  async load(): Promise<Loaded> {
    return this.s.snapshot();
  }
  async commit(b: Batch, merge?: boolean): Promise<void> {
    this.s.apply(b, merge);
  }
  close(): void {}
}

/**
 * Upgrades of stored data, from version `v` to `v + 1`. A store whose
 * version has no path to {@link SCHEMA} (or is newer) is wiped and resynced
 * from the relay, keeping only the queue of unacknowledged writes (the one
 * thing the relay cannot give back), and only if its rows still have the
 * shape this version writes.
 */
export const MIGRATIONS: Record<number, (l: Loaded) => Loaded> = {};

export interface Opened {
  loaded: Loaded;
  /** What happened to the stored data: kept, upgraded or wiped (with why). */
  action: 'new' | 'kept' | 'upgraded' | 'wiped';
  from?: number;
}

/** Load a store and bring it to {@link SCHEMA}: upgrade, or a safe wipe. */
export async function openStore(store: Store, migrations = MIGRATIONS): Promise<Opened> {
  let loaded = await store.load();
  const from = loaded.meta?.schema;
  if (from === undefined) return { loaded, action: 'new' };
  if (from === SCHEMA) return { loaded, action: 'kept' };
  let v = from;
  if (v < SCHEMA) {
    try {
      while (v < SCHEMA && migrations[v]) loaded = migrations[v++](loaded);
    } catch {
      v = -1;
    }
  }
  if (v === SCHEMA) {
    const meta = { ...(loaded.meta as Meta), schema: SCHEMA };
    await store.commit({
      clear: 'all',
      meta,
      entities: loaded.entities,
      cursors: loaded.cursors,
      queuePut: loaded.queue,
    });
    return { loaded: { ...loaded, meta }, action: 'upgraded', from };
  }
  const queue = loaded.queue.filter(isWrite);
  const meta = { ...(loaded.meta as Meta), schema: SCHEMA };
  await store.commit({ clear: 'all', meta, queuePut: queue });
  return { loaded: { meta, entities: [], cursors: {}, queue }, action: 'wiped', from };
}

function isWrite(w: any): w is QueuedWrite {
  return (
    w &&
    typeof w.wid === 'string' &&
    typeof w.n === 'number' &&
    typeof w.space === 'string' &&
    typeof w.collection === 'string' &&
    typeof w.id === 'string' &&
    (w.op === 'put' || w.op === 'patch' || w.op === 'delete') &&
    typeof w.fields === 'object' &&
    typeof w.ts === 'number'
  );
}
