import { randomBytes, timingSafeEqual } from "node:crypto";
import type { BackendKeyData } from "../protocol/backend.ts";

/**
 * A client connection, as a cancel reaches it: it cancels whatever its link's server connection
 * runs at that moment, and resolves once PostgreSQL has closed the cancel connection.
 */
export interface Cancellable {
  cancel(): Promise<void>;
}

/**
 * Maps the keys pgwarden hands to clients onto client connections — not onto backends, so a
 * pooled client's key follows it from server connection to server connection. In session mode
 * the PID a client sees is its backend's real PID, so tools that join it with pg_stat_activity
 * stay correct; the secret is pgwarden's own random one, so a cancel must come through pgwarden
 * to count. Pooled modes will issue pgwarden-chosen PIDs; protocol 3.2's 32-byte secret leaves
 * room for an instance id so that instances can forward each other's cancels.
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

  /**
   * A key for a pooled client, whose work moves between backends: the PID is pgwarden's own.
   * Bits 30–21 carry `instanceId`, so instances can tell whose key a cancel holds and forward it;
   * bits 20–0 count, skipping 0 (libpq treats a zero PID as "no key").
   */
  issuePooled(minor: number, target: Cancellable): BackendKeyData {
    for (;;) {
      this.counter = (this.counter + 1) & 0x1fffff;
      const pid = ((this.instanceId & 0x3ff) << 21) | this.counter;
      if (pid !== 0 && !this.byPid.has(pid)) return this.issue(pid, minor, target);
    }
  }

  private counter = 0;
  /** Which pgwarden instance issued a pooled key (0 for a single instance). */
  instanceId = 0;

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
