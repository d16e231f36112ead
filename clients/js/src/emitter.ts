/** A minimal typed event emitter: `on` returns the function that removes the listener. */
export class Emitter<E extends Record<string, unknown>> {
  private l: { [K in keyof E]?: Set<(v: E[K]) => void> } = {};

  on<K extends keyof E>(event: K, fn: (v: E[K]) => void): () => void {
    (this.l[event] ||= new Set()).add(fn);
    return () => this.l[event]!.delete(fn);
  }

  /** Whether anyone listens (so 'error' can fall back to the console). */
  has(event: keyof E): boolean {
    return !!this.l[event]?.size;
  }

  emit<K extends keyof E>(event: K, v: E[K]): void {
    for (const fn of [...(this.l[event] || [])]) {
      try {
        fn(v);
      } catch (e) {
        // A listener's bug must not break the sync loop.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}
