// The relay's merge rules (docs/protocol.md, "Data model and merge rules"),
// mirrored so a replica can fold `change` frames into the same state the
// relay holds: per-field last-writer-wins by write key, put/delete resets,
// tombstones. Pure: no IO, no clock.

/** A stamp as the relay sends it. */
export interface Stamp {
  ms: number;
  counter: number;
  node: string;
}

/** Write key: [ms, counter, node, origin_seq]; orders writes totally. */
export type Key = [number, number, string, number];

/** Lower than every real key: fields known only from a snapshot frame. */
export const SNAPSHOT_KEY: Key = [0, 0, '', 0];

export function cmp(a: Key | null, b: Key | null): number {
  if (a === b) return 0;
  if (!a) return -1;
  if (!b) return 1;
  for (let i = 0; i < 4; i++) {
    if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  }
  return 0;
}

const max = (a: Key | null, b: Key | null): Key | null => (cmp(a, b) >= 0 ? a : b);

export type Fields = Record<string, unknown>;
export type Op = 'put' | 'patch' | 'delete';

/** A change frame's content that the merge needs. */
export interface ChangeIn {
  op: Op;
  fields: Fields;
  stamp: Stamp;
  origin_seq: number;
}

/** Merged state of one entity (what the relay stores, minus the version). */
export interface EntityState {
  /** Newest put or delete. */
  r: Key | null;
  /** Newest delete. */
  t: Key | null;
  /** Newest put or patch. */
  l: Key | null;
  /** field -> [value (null = removed), key] */
  f: Record<string, [unknown, Key]>;
  /** Changes with a local seq at or below this are already in the state (snapshot). */
  s?: number;
}

export const empty = (): EntityState => ({ r: null, t: null, l: null, f: {} });

export const exists = (e: EntityState): boolean => !!e.l && cmp(e.l, e.t) > 0;

export function visible(e: EntityState): Fields | null {
  if (!exists(e)) return null;
  const out: Fields = {};
  for (const k in e.f) {
    const v = e.f[k][0];
    if (v !== null) out[k] = v;
  }
  return out;
}

export const keyOf = (c: ChangeIn): Key => [c.stamp.ms, c.stamp.counter, c.stamp.node, c.origin_seq];

/** Fold one change into `e` (in place), as the relay's EntityState::apply. */
export function apply(e: EntityState, c: ChangeIn): void {
  const key = keyOf(c);
  if (c.op === 'delete') {
    e.t = max(e.t, key);
    e.r = max(e.r, key);
  } else {
    if (c.op === 'put') e.r = max(e.r, key);
    e.l = max(e.l, key);
    for (const name in c.fields) {
      if (e.r && cmp(key, e.r) < 0) continue;
      const cell = e.f[name];
      if (cell && cmp(cell[1], key) >= 0) continue;
      e.f[name] = [c.fields[name] ?? null, key];
    }
  }
  prune(e);
}

/** A state known only from a snapshot `entity` frame (no stamps). */
export function fromSnapshot(fields: Fields | null, deleted: boolean, seq: number): EntityState {
  const e = empty();
  e.s = seq;
  if (deleted) {
    e.t = SNAPSHOT_KEY;
    e.r = SNAPSHOT_KEY;
    return e;
  }
  e.l = SNAPSHOT_KEY;
  for (const k in fields || {}) e.f[k] = [(fields as Fields)[k], SNAPSHOT_KEY];
  return e;
}

/** The CRDT join of two states (used when tabs without a leader share one store). */
export function join(a: EntityState, b: EntityState): EntityState {
  const out: EntityState = { r: max(a.r, b.r), t: max(a.t, b.t), l: max(a.l, b.l), f: { ...a.f } };
  for (const k in b.f) if (!out.f[k] || cmp(out.f[k][1], b.f[k][1]) < 0) out.f[k] = b.f[k];
  const s = Math.max(a.s || 0, b.s || 0);
  if (s) out.s = s;
  prune(out);
  return out;
}

function prune(e: EntityState): void {
  if (!e.r) return;
  for (const k in e.f) if (cmp(e.f[k][1], e.r) < 0) delete e.f[k];
}

/** A local write not yet seen back from the relay, applied on top of the merged state. */
export function overlay(base: Fields | null, op: Op, fields: Fields): Fields | null {
  if (op === 'delete') return null;
  const out: Fields = op === 'put' ? {} : { ...(base || {}) };
  for (const k in fields) {
    if (fields[k] === null) delete out[k];
    else out[k] = fields[k];
  }
  return out;
}
