// Tabs of one app in one browser share one connection: the tab holding a
// Web Lock is the leader and owns the WebSocket; the others follow over a
// BroadcastChannel. IndexedDB stays the source of truth: a follower loads
// from it, and a tab that takes over reads the queue and cursors from it.

export interface TabLink {
  /** Post to every other tab. */
  post(m: TabMsg): void;
  close(): void;
}

export type TabMsg = { t: string; from?: string; [k: string]: any };

/** Whether this browser can elect a leader tab (Web Locks + BroadcastChannel). */
export function canShare(): boolean {
  return (
    typeof BroadcastChannel !== 'undefined' &&
    typeof navigator !== 'undefined' &&
    !!(navigator as any).locks?.request
  );
}

/**
 * Join the tabs of `name`. `onMessage` gets other tabs' messages;
 * `onLeader` is called once this tab holds the lock (at once, or when the
 * leader closes or crashes). Returns the link and whether this tab leads
 * already.
 */
export async function joinTabs(
  name: string,
  tabId: string,
  onMessage: (m: TabMsg) => void,
  onLeader: () => void,
): Promise<{ link: TabLink; leader: boolean }> {
  const bc = new BroadcastChannel(name);
  bc.onmessage = (e) => onMessage(e.data);
  const locks = (navigator as any).locks;
  let release: () => void = () => {};
  let closed = false;
  const hold = () =>
    new Promise<void>((r) => {
      release = r;
    });
  // Try once without waiting: if no tab leads, this one does, and keeps
  // the lock (the callback's promise) for the tab's life.
  const leader = await new Promise<boolean>((res) =>
    locks.request(name, { ifAvailable: true }, (lock: unknown) => {
      res(!!lock);
      return lock ? hold() : undefined;
    }),
  );
  if (!leader) {
    locks.request(name, () => {
      if (closed) return;
      onLeader();
      return hold();
    });
  }
  return {
    leader,
    link: {
      post: (m) => bc.postMessage({ ...m, from: tabId }),
      close: () => {
        closed = true;
        release();
        bc.close();
      },
    },
  };
}
