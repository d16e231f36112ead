// Node: a store in one JSON file, rewritten atomically (temp file, fsync,
// rename) on every batch, so a crash leaves the old or the new image.

import { promises as fs } from 'node:fs';
import { dirname } from 'node:path';
import { Batch, Loaded, MapState, Store } from './store';

export * from './index';

export class FileStore implements Store {
  private s: MapState | null = null;
  private chain: Promise<void> = Promise.resolve();

  constructor(readonly path: string) {}

  private async image(): Promise<MapState> {
    if (this.s) return this.s;
    const s = new MapState();
    try {
      const l: Loaded = JSON.parse(await fs.readFile(this.path, 'utf8'));
      s.apply({ meta: l.meta || undefined, entities: l.entities, cursors: l.cursors, queuePut: l.queue });
    } catch (e: any) {
      if (e.code !== 'ENOENT') throw e;
    }
    return (this.s = s);
  }

  async load(): Promise<Loaded> {
    return (await this.image()).snapshot();
  }

  commit(b: Batch, merge?: boolean): Promise<void> {
    const run = async () => {
      const s = await this.image();
      s.apply(b, merge);
      const tmp = this.path + '.tmp';
      await fs.mkdir(dirname(this.path), { recursive: true });
      const f = await fs.open(tmp, 'w');
      try {
        await f.writeFile(JSON.stringify(s.snapshot()));
        await f.sync();
      } finally {
        await f.close();
      }
      await fs.rename(tmp, this.path);
    };
    return (this.chain = this.chain.then(run, run));
  }

  close(): void {}
}
