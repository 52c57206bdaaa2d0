import { randomFillSync, timingSafeEqual } from "node:crypto";
import type { BackendKeyData } from "../protocol/backend.ts";

/**
 * A client connection, as a cancel reaches it: it cancels whatever its link's server connection
 * runs at that moment, and resolves once PostgreSQL has closed the cancel connection.
 */
export interface Cancellable {
  cancel(): Promise<void>;
}

/** An issued key, as its session holds it: send `keyData` of it, `revoke` it at the end. */
export interface ClientKey {
  readonly processId: number;
}

/**
 * A 4-byte secret (protocol 3.0, what nearly every client speaks) is held as a number: a Buffer
 * per session costs a hundred bytes of object, and a small one from Node's shared pool keeps a
 * 64 KiB slab alive with whatever else was cut from it. Protocol 3.2's 32 bytes get a Buffer.
 */
interface Entry extends ClientKey {
  readonly secret32: number;
  readonly secretLong: Buffer | undefined;
  readonly target: Cancellable;
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
  /** One entry per PID, an array only when two sessions share a PID (session mode, one backend). */
  private readonly byPid = new Map<number, Entry | Entry[]>();
  /** Random 32-bit secrets, drawn 256 at a time. */
  private readonly random = new Uint32Array(256);
  private nextRandom = 256;

  /** Issues a client key for a session: 4-byte secret for protocol 3.0, 32 bytes for 3.2. */
  issue(processId: number, minor: number, target: Cancellable): ClientKey {
    const long = minor >= 2;
    if (!long && this.nextRandom === this.random.length) {
      randomFillSync(this.random);
      this.nextRandom = 0;
    }
    const entry: Entry = {
      processId,
      secret32: long ? 0 : this.random[this.nextRandom++]!,
      secretLong: long ? randomFillSync(Buffer.alloc(32)) : undefined,
      target,
    };
    const had = this.byPid.get(processId);
    if (had === undefined) this.byPid.set(processId, entry);
    else if (Array.isArray(had)) had.push(entry);
    else this.byPid.set(processId, [had, entry]);
    return entry;
  }

  /** The BackendKeyData to send for a key: its bytes exist only while they are written. */
  keyData(key: ClientKey): BackendKeyData {
    const e = key as Entry;
    if (e.secretLong !== undefined) return { processId: e.processId, secret: e.secretLong };
    const secret = Buffer.allocUnsafeSlow(4);
    secret.writeUInt32BE(e.secret32, 0);
    return { processId: e.processId, secret };
  }

  /**
   * A key for a pooled client, whose work moves between backends: the PID is pgwarden's own.
   * Bits 30–21 carry `instanceId`, so instances can tell whose key a cancel holds and forward it;
   * bits 20–0 count, skipping 0 (libpq treats a zero PID as "no key").
   */
  issuePooled(minor: number, target: Cancellable): ClientKey {
    for (;;) {
      this.counter = (this.counter + 1) & 0x1fffff;
      const pid = ((this.instanceId & 0x3ff) << 21) | this.counter;
      if (pid !== 0 && !this.byPid.has(pid)) return this.issue(pid, minor, target);
    }
  }

  private counter = 0;
  /** Which pgwarden instance issued a pooled key (0 for a single instance). */
  instanceId = 0;

  revoke(key: ClientKey): void {
    const had = this.byPid.get(key.processId);
    if (had === undefined) return;
    if (!Array.isArray(had)) {
      if (had === key) this.byPid.delete(key.processId);
      return;
    }
    const rest = had.filter((e) => e !== key);
    if (rest.length === 0) this.byPid.delete(key.processId);
    else this.byPid.set(key.processId, rest.length === 1 ? rest[0]! : rest);
  }

  /** The session a cancel key belongs to; compared in constant time. */
  find(processId: number, secret: Buffer): Cancellable | undefined {
    const had = this.byPid.get(processId);
    if (had === undefined) return undefined;
    const short = secret.length === 4 ? secret.readUInt32BE(0) : undefined;
    for (const e of Array.isArray(had) ? had : [had]) {
      const match =
        e.secretLong === undefined
          ? short !== undefined && (short ^ e.secret32) === 0
          : e.secretLong.length === secret.length && timingSafeEqual(e.secretLong, secret);
      if (match) return e.target;
    }
    return undefined;
  }

  get size(): number {
    let n = 0;
    for (const l of this.byPid.values()) n += Array.isArray(l) ? l.length : 1;
    return n;
  }
}
