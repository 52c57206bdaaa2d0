/**
 * What a server connection still owes, one entry per sync point (Query, FunctionCall, Sync):
 * each ends with a ReadyForQuery. The entry says what to do with that response: forward it to
 * the linked client, skip it (pgwarden injected the request itself, e.g. a re-Parse or the reset
 * query), or answer locally. A server connection may be unlinked only when nothing is owed and
 * the last ReadyForQuery said `I`.
 *
 * A count, plus a ring of kinds only once something other than `forward` is owed: a session-mode
 * connection, which only ever forwards, carries no array at all. The ring allocates nothing once
 * it has grown to the deepest pipeline the connection has seen.
 */

export const Owed = { forward: 0, skip: 1 } as const;
export type Owed = (typeof Owed)[keyof typeof Owed];

export class OwedResponses {
  private ring: Uint8Array | undefined;
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
    let ring = this.ring;
    if (ring === undefined) {
      if (kind === Owed.forward) {
        this.count++;
        return;
      }
      // The first entry that is not `forward`: every entry before it was.
      ring = this.ring = new Uint8Array(Math.max(8, this.count * 2));
      this.head = 0;
    } else if (this.count === ring.length) {
      const bigger = new Uint8Array(ring.length * 2);
      for (let i = 0; i < this.count; i++) bigger[i] = ring[(this.head + i) % ring.length]!;
      ring = this.ring = bigger;
      this.head = 0;
    }
    ring[(this.head + this.count) % ring.length] = kind;
    this.count++;
  }

  /** The entry a ReadyForQuery just ended; undefined when the server sent one it did not owe. */
  shift(): Owed | undefined {
    if (this.count === 0) return undefined;
    this.count--;
    const ring = this.ring;
    if (ring === undefined) return Owed.forward;
    const kind = ring[this.head] as Owed;
    this.head = (this.head + 1) % ring.length;
    return kind;
  }

  /** What the oldest entry says, without consuming it. */
  peek(): Owed | undefined {
    if (this.count === 0) return undefined;
    return this.ring === undefined ? Owed.forward : (this.ring[this.head] as Owed);
  }

  clear(): void {
    this.head = 0;
    this.count = 0;
    this.unsynced = false;
  }
}
