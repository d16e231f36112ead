export { connect, Client } from './client';
export type { ConnectOptions, ConnectionState, ClientError, ClientEvents, ConflictEvent } from './client';
export { Space } from './space';
export type { Doc, Query, ChangeFrame, EventFrame, Presence, WriteResult, Conflict, SpaceEvents } from './space';
export { MemoryStore, SCHEMA, MIGRATIONS, openStore } from './store';
export type { Store, Batch, Loaded, Meta, Cursor, QueuedWrite, EntityRow } from './store';
export { IdbStore } from './idb';
export type { Fields, Op, Stamp, EntityState } from './merge';
