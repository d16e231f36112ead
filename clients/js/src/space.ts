// One space's local replica: merged entity states from the relay, with the
// client's own unacknowledged writes laid on top (optimistic), plus
// watchers. No IO: the client feeds it frames and writes.

import { Emitter } from './emitter';
import * as M from './merge';
import type { EntityState, Fields, Op, Stamp } from './merge';
import type { Cursor, QueuedWrite } from './store';

/** An entity as the app sees it. */
export interface Doc {
  id: string;
  collection: string;
  /** Visible fields, local writes included. Treat as read-only. */
  data: Fields;
  /** True while a local write to it awaits the relay. */
  pending: boolean;
}

/** What to watch: a collection, or one entity, optionally filtered. */
export type Query = string | { collection: string; id?: string; where?: (d: Doc) => boolean };

/** A `change` frame of the native protocol. */
export interface ChangeFrame {
  type: 'change';
  space: string;
  seq: number;
  collection: string;
  id: string;
  op: Op;
  fields: Fields;
  stamp: Stamp;
  origin: string;
  origin_seq: number;
  actor: string;
  version: number;
}

export interface EventFrame {
  topic: string;
  payload: unknown;
  from: string;
}

export interface Presence {
  /** The peer's client id. */
  id: string;
  state: unknown;
  /** When we last heard from it (ms since the epoch, local clock). */
  at: number;
}

export interface SpaceEvents extends Record<string, unknown> {
  /** Every relay change folded into the replica (catch-up and live). */
  change: ChangeFrame;
  /** An ephemeral event from another connection. */
  event: EventFrame;
  /** The set of present peers changed. */
  presence: Presence[];
  /** Catch-up finished: the replica holds everything up to `seq`. */
  synced: { seq: number };
}

/** Writes the space hands to its client. */
export interface SpaceHost {
  write(space: string, op: Op, collection: string, id: string, fields: Fields): Promise<WriteResult>;
  publish(space: string, topic: string, payload: unknown): void;
  clientId(): string;
}

/** The relay's answer to one write. */
export interface WriteResult {
  wid: string;
  seq: number;
  /** A replay of a write the relay already held (applied once). */
  duplicate: boolean;
  /** Fields of this write that lost to newer values (see the `conflict` event). */
  conflicts: Conflict[];
}

export interface Conflict {
  field: string;
  attempted: unknown;
  current: unknown;
  current_stamp: Stamp;
}

interface Pending {
  wid: string;
  op: Op;
  fields: Fields;
  /** Relay seq once acked: the overlay goes when the replica reaches it. */
  seq?: number;
}

interface Watcher {
  collection: string;
  id?: string;
  where?: (d: Doc) => boolean;
  fn: (v: any) => void;
}

const PRESENCE_TOPIC = '$presence';
const PRESENCE_TTL = 30_000;

const key = (c: string, id: string) => c + '\u0000' + id;

export class Space extends Emitter<SpaceEvents> {
  /** Position of the replica in the relay's log. */
  cursor: Cursor | null = null;
  /** Whether the current subscription's catch-up has finished. */
  synced = false;
  private states = new Map<string, EntityState>();
  private pend = new Map<string, Pending[]>();
  private views = new Map<string, Doc | null>();
  private cols = new Map<string, Set<string>>();
  private watchers = new Set<Watcher>();
  private touched = new Set<string>();
  private notifying = false;
  private peers = new Map<string, Presence>();
  /** Keys whose merged state changed since the store last saw them. */
  dirty = new Set<string>();

  constructor(readonly name: string, private host: SpaceHost) {
    super();
  }

  // ---- reading ------------------------------------------------------------

  /** The entity's visible fields (local writes included), or undefined. */
  get(collection: string, id: string): Fields | undefined {
    return this.doc(collection, id)?.data;
  }

  /** The entity with its pending flag, or undefined. */
  doc(collection: string, id: string): Doc | undefined {
    return this.view(key(collection, id), collection, id) || undefined;
  }

  /** Every visible entity of a collection, ordered by id. */
  list(collection: string, where?: (d: Doc) => boolean): Doc[] {
    const out: Doc[] = [];
    for (const id of this.cols.get(collection) || []) {
      const d = this.view(key(collection, id), collection, id);
      if (d && (!where || where(d))) out.push(d);
    }
    return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Whether any local write of this space awaits the relay. */
  get pendingCount(): number {
    let n = 0;
    for (const p of this.pend.values()) n += p.length;
    return n;
  }

  /**
   * Call `fn` now and after every local or remote change of what `query`
   * selects: with a Doc (or undefined) for a query with `id`, else with the
   * list. Changes are delivered once per task, however many arrived.
   * Returns the function that stops watching.
   */
  watch(query: Query, fn: (v: any) => void): () => void {
    const q = typeof query === 'string' ? { collection: query } : query;
    const w: Watcher = { ...q, fn };
    this.watchers.add(w);
    this.fire(w);
    return () => this.watchers.delete(w);
  }

  // ---- writing ------------------------------------------------------------

  /** Replace the entity with these fields. Resolves on the relay's ack, rejects if refused. */
  put(collection: string, id: string, fields: Fields): Promise<WriteResult> {
    return this.host.write(this.name, 'put', collection, id, fields);
  }

  /** Set these fields (null removes one), keep the others. */
  patch(collection: string, id: string, fields: Fields): Promise<WriteResult> {
    return this.host.write(this.name, 'patch', collection, id, fields);
  }

  delete(collection: string, id: string): Promise<WriteResult> {
    return this.host.write(this.name, 'delete', collection, id, {});
  }

  /** Send an ephemeral event to the space's other subscribers (best effort, not stored). */
  publish(topic: string, payload: unknown): void {
    this.host.publish(this.name, topic, payload);
  }

  /**
   * Announce this client's presence state to the space (null leaves). It is
   * repeated while connected, so peers that join later see it.
   */
  setPresence(state: unknown): void {
    this.presenceState = state;
    this.host.publish(this.name, PRESENCE_TOPIC, { id: this.host.clientId(), state });
  }
  presenceState: unknown = undefined;

  /** Peers present in the space (other clients that called setPresence). */
  present(): Presence[] {
    const now = Date.now();
    for (const [id, p] of this.peers) if (now - p.at > PRESENCE_TTL) this.peers.delete(id);
    return [...this.peers.values()];
  }

  // ---- fed by the client --------------------------------------------------

  /** @internal Fold a relay `change` frame in. */
  _change(f: ChangeFrame): void {
    const k = key(f.collection, f.id);
    let st = this.states.get(k);
    if (st && st.s && f.seq <= st.s) {
      // Already in the snapshot this state came from.
    } else {
      if (!st) this.states.set(k, (st = M.empty()));
      M.apply(st, f);
      this.dirty.add(k);
      this.index(f.collection, f.id);
      this.touch(k);
    }
    this.advance(f.seq);
    this.emit('change', f);
  }

  /** @internal A snapshot `entity` frame (catch-up behind the log horizon). */
  _entity(f: { collection: string; id: string; fields: Fields | null; deleted: boolean; seq: number }): void {
    const k = key(f.collection, f.id);
    this.states.set(k, M.fromSnapshot(f.fields, f.deleted, f.seq));
    this.dirty.add(k);
    this.index(f.collection, f.id);
    this.touch(k);
  }

  /** @internal The catch-up reached `seq`. */
  _synced(seq: number, node: string): void {
    // The relay's word: after a wipe of its data it may be below ours.
    this.cursor = { seq, node };
    this.synced = true;
    this.settle();
    this.emit('synced', { seq });
  }

  /** @internal Set the cursor's relay (a new relay's seqs start over). */
  _node(node: string): void {
    if (this.cursor?.node !== node) this.cursor = { seq: 0, node };
  }

  /** @internal Load stored states. */
  _load(rows: Array<[string, string, EntityState]>, cursor: Cursor | undefined): void {
    for (const [c, id, st] of rows) {
      const k = key(c, id);
      this.states.set(k, st);
      this.index(c, id);
      this.touch(k);
    }
    if (cursor) this.cursor = cursor;
  }

  /** @internal Drop everything (another user, or a wipe). */
  _clear(): void {
    for (const k of [...this.states.keys(), ...this.pend.keys()]) this.touch(k);
    this.states.clear();
    this.pend.clear();
    this.cols.clear();
    this.dirty.clear();
    this.cursor = null;
    this.synced = false;
  }

  /** @internal A local write, shown at once. */
  _pending(w: QueuedWrite): void {
    const k = key(w.collection, w.id);
    const list = this.pend.get(k) || [];
    if (list.some((p) => p.wid === w.wid)) return;
    list.push({ wid: w.wid, op: w.op, fields: w.fields });
    this.pend.set(k, list);
    this.index(w.collection, w.id);
    this.touch(k);
  }

  /** @internal The relay acked a write as `seq`. */
  _acked(w: { wid: string; collection: string; id: string }, seq: number): void {
    const p = this.pend.get(key(w.collection, w.id))?.find((p) => p.wid === w.wid);
    if (p) p.seq = seq;
    this.settle();
  }

  /** @internal The relay refused a write: undo it. */
  _rejected(w: { wid: string; collection: string; id: string }): void {
    const k = key(w.collection, w.id);
    const list = (this.pend.get(k) || []).filter((p) => p.wid !== w.wid);
    if (list.length) this.pend.set(k, list);
    else this.pend.delete(k);
    this.touch(k);
  }

  /** @internal A state to persist. */
  _state(k: string): [string, string, EntityState] | null {
    const st = this.states.get(k);
    if (!st) return null;
    const i = k.indexOf('\u0000');
    return [k.slice(0, i), k.slice(i + 1), st];
  }

  /** @internal An event frame arrived. */
  _event(e: EventFrame): void {
    if (e.topic === PRESENCE_TOPIC) {
      const p = e.payload as { id?: string; state?: unknown } | null;
      if (!p || typeof p.id !== 'string') return;
      if (p.state === null || p.state === undefined) this.peers.delete(p.id);
      else {
        // A peer we did not know: tell it about us now, not at our next beat.
        if (!this.peers.has(p.id) && this.presenceState != null) this.setPresence(this.presenceState);
        this.peers.set(p.id, { id: p.id, state: p.state, at: Date.now() });
      }
      this.emit('presence', this.present());
      return;
    }
    this.emit('event', e);
  }

  // ---- internals ----------------------------------------------------------

  private advance(seq: number): void {
    if (this.cursor && seq > this.cursor.seq) this.cursor = { seq, node: this.cursor.node };
    this.settle();
  }

  /** Drop acked overlays whose change the replica now holds. */
  private settle(): void {
    const at = this.cursor?.seq ?? 0;
    for (const [k, list] of this.pend) {
      const keep = list.filter((p) => p.seq === undefined || p.seq > at);
      if (keep.length === list.length) continue;
      if (keep.length) this.pend.set(k, keep);
      else this.pend.delete(k);
      this.touch(k);
    }
  }

  private index(c: string, id: string): void {
    let s = this.cols.get(c);
    if (!s) this.cols.set(c, (s = new Set()));
    s.add(id);
  }

  private view(k: string, collection: string, id: string): Doc | null {
    let d = this.views.get(k);
    if (d !== undefined) return d;
    const st = this.states.get(k);
    let data = st ? M.visible(st) : null;
    const list = this.pend.get(k);
    for (const p of list || []) data = M.overlay(data, p.op, p.fields);
    d = data ? { id, collection, data, pending: !!list } : null;
    this.views.set(k, d);
    return d;
  }

  private touch(k: string): void {
    this.views.delete(k);
    this.touched.add(k);
    if (!this.notifying) {
      this.notifying = true;
      queueMicrotask(() => this.notify());
    }
  }

  private notify(): void {
    this.notifying = false;
    const cols = new Set<string>();
    const keys = this.touched;
    this.touched = new Set();
    for (const k of keys) cols.add(k.slice(0, k.indexOf('\u0000')));
    for (const w of this.watchers) {
      if (!cols.has(w.collection)) continue;
      if (w.id !== undefined && !keys.has(key(w.collection, w.id))) continue;
      this.fire(w);
    }
  }

  private fire(w: Watcher): void {
    try {
      if (w.id !== undefined) {
        const d = this.doc(w.collection, w.id);
        w.fn(d && (!w.where || w.where(d)) ? d : undefined);
      } else w.fn(this.list(w.collection, w.where));
    } catch (e) {
      setTimeout(() => {
        throw e;
      });
    }
  }
}
