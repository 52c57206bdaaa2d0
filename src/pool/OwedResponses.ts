/**
 * What a server connection still owes, one entry per sync point (Query, FunctionCall, Sync):
 * each ends with a ReadyForQuery. The entry says what to do with that response: forward it to
 * the linked client, skip it (pgwarden injected the request itself, e.g. a re-Parse or the reset
 * query), or answer locally. A server connection may be unlinked only when nothing is owed and
 * the last ReadyForQuery said `I`.
 *
 * A ring of small integers: pushing and shifting allocate nothing once it has grown to the
 * deepest pipeline the connection has seen.
 */

export const Owed = { forward: 0, skip: 1 } as const;
export type Owed = (typeof Owed)[keyof typeof Owed];

export class OwedResponses {
  private ring = new Uint8Array(8);
  private head = 0;
  private count = 0;
  /** Extended-protocol messages were forwarded since the last Sync: a Sync is still to come. */
  unsynced = false;

  get size(): number {
    return this.count;
  }

  /** Nothing owed and no half-sent extended batch: the safe point for unlinking. */
  get settled(): boolean {
    return this.count === 0 && !this.unsynced;
  }

  push(kind: Owed): void {
    if (this.count === this.ring.length) {
      const bigger = new Uint8Array(this.ring.length * 2);
      for (let i = 0; i < this.count; i++) bigger[i] = this.ring[(this.head + i) % this.ring.length]!;
      this.ring = bigger;
      this.head = 0;
    }
    this.ring[(this.head + this.count) % this.ring.length] = kind;
    this.count++;
  }

  /** The entry a ReadyForQuery just ended; undefined when the server sent one it did not owe. */
  shift(): Owed | undefined {
    if (this.count === 0) return undefined;
    const kind = this.ring[this.head] as Owed;
    this.head = (this.head + 1) % this.ring.length;
    this.count--;
    return kind;
  }

  /** What the oldest entry says, without consuming it. */
  peek(): Owed | undefined {
    return this.count === 0 ? undefined : (this.ring[this.head] as Owed);
  }

  clear(): void {
    this.head = 0;
    this.count = 0;
    this.unsynced = false;
  }
}
