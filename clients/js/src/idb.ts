// The browser store: one IndexedDB database per app and relay. Object
// stores: `meta` (one row), `entities` (key [space, collection, id]),
// `cursors` (key space), `queue` (key wid). A batch is one readwrite
// transaction over all of them, so a crash leaves either all or none of it.

import { Batch, EntityRow, Loaded, Store } from './store';
import { EntityState, join } from './merge';

/** IndexedDB's own version: the object stores below (not the data layout). */
const IDB_VERSION = 1;
const STORES = ['meta', 'entities', 'cursors', 'queue'];

const req = <T>(r: IDBRequest<T>): Promise<T> =>
  new Promise((ok, fail) => {
    r.onsuccess = () => ok(r.result);
    r.onerror = () => fail(r.error);
  });

const done = (tx: IDBTransaction): Promise<void> =>
  new Promise((ok, fail) => {
    tx.oncomplete = () => ok();
    tx.onerror = tx.onabort = () => fail(tx.error || new Error('IndexedDB transaction aborted'));
  });

export class IdbStore implements Store {
  private db: Promise<IDBDatabase>;

  constructor(readonly name: string, idb: IDBFactory = indexedDB) {
    const open = idb.open(name, IDB_VERSION);
    open.onupgradeneeded = () => {
      const db = open.result;
      for (const s of STORES) if (!db.objectStoreNames.contains(s)) db.createObjectStore(s);
    };
    this.db = req(open).then((db) => {
      // Another tab of a newer app version wants to upgrade: let it.
      db.onversionchange = () => db.close();
      return db;
    });
  }

  async load(): Promise<Loaded> {
    const db = await this.db;
    const tx = db.transaction(STORES, 'readonly');
    const [meta, keys, states, ckeys, cvals, queue] = await Promise.all([
      req(tx.objectStore('meta').get('meta')),
      req(tx.objectStore('entities').getAllKeys()),
      req(tx.objectStore('entities').getAll()),
      req(tx.objectStore('cursors').getAllKeys()),
      req(tx.objectStore('cursors').getAll()),
      req(tx.objectStore('queue').getAll()),
    ]);
    const entities: EntityRow[] = keys.map((k, i) => {
      const [s, c, id] = k as string[];
      return [s, c, id, states[i]];
    });
    const cursors: Loaded['cursors'] = {};
    ckeys.forEach((k, i) => (cursors[k as string] = cvals[i]));
    return { meta: meta || null, entities, cursors, queue: queue.sort((a, b) => a.n - b.n) };
  }

  async commit(b: Batch, merge?: boolean): Promise<void> {
    const db = await this.db;
    const tx = db.transaction(STORES, 'readwrite');
    const ents = tx.objectStore('entities');
    const curs = tx.objectStore('cursors');
    const queue = tx.objectStore('queue');
    if (b.clear) {
      ents.clear();
      curs.clear();
      if (b.clear === 'all') queue.clear();
    }
    if (b.meta) tx.objectStore('meta').put(b.meta, 'meta');
    for (const [s, c, i, st] of b.entities || []) {
      const key = [s, c, i];
      if (!st) ents.delete(key);
      else if (!merge) ents.put(st, key);
      else
        ents.get(key).onsuccess = (ev) => {
          const old = (ev.target as IDBRequest<EntityState | undefined>).result;
          ents.put(old ? join(old, st) : st, key);
        };
    }
    for (const s in b.cursors || {}) {
      const cur = b.cursors![s];
      if (!cur) curs.delete(s);
      else if (!merge) curs.put(cur, s);
      else
        curs.get(s).onsuccess = (ev) => {
          const old = (ev.target as IDBRequest).result;
          if (!(old && old.node === cur.node && old.seq > cur.seq)) curs.put(cur, s);
        };
    }
    for (const w of b.queuePut || []) queue.put(w, w.wid);
    for (const wid of b.queueDel || []) queue.delete(wid);
    await done(tx);
  }

  close(): void {
    this.db.then((db) => db.close(), () => {});
  }
}
