import { randomBytes, timingSafeEqual } from "node:crypto";
import type { BackendKeyData } from "../protocol/backend.ts";

/** Something that can cancel the query its client is running. */
export interface Cancellable {
  cancel(): void;
}

/**
 * Maps the keys pgwarden hands to clients onto sessions. The PID a client sees is its backend's
 * real PID (session mode), so tools that join it with pg_stat_activity stay correct; the secret is
 * pgwarden's own random one, so a cancel must come through pgwarden to count.
 */
export class CancelRegistry {
  private readonly byPid = new Map<number, { secret: Buffer; target: Cancellable }[]>();

  /** Issues a client key for a session: 4-byte secret for protocol 3.0, 32 bytes for 3.2. */
  issue(processId: number, minor: number, target: Cancellable): BackendKeyData {
    const secret = randomBytes(minor >= 2 ? 32 : 4);
    const list = this.byPid.get(processId);
    const entry = { secret, target };
    if (list === undefined) this.byPid.set(processId, [entry]);
    else list.push(entry);
    return { processId, secret };
  }

  revoke(key: BackendKeyData): void {
    const list = this.byPid.get(key.processId);
    if (list === undefined) return;
    const rest = list.filter((e) => e.secret !== key.secret);
    if (rest.length === 0) this.byPid.delete(key.processId);
    else this.byPid.set(key.processId, rest);
  }

  /** The session a cancel key belongs to; compared in constant time. */
  find(processId: number, secret: Buffer): Cancellable | undefined {
    for (const e of this.byPid.get(processId) ?? []) {
      if (e.secret.length === secret.length && timingSafeEqual(e.secret, secret)) return e.target;
    }
    return undefined;
  }

  get size(): number {
    let n = 0;
    for (const l of this.byPid.values()) n += l.length;
    return n;
  }
}
