import { pbkdf2 } from "node:crypto";
import { SCRAM_KEY_LENGTH } from "./internal/scramCrypto.ts";
import { scramPasswordBytes } from "./saslprep.ts";

/**
 * SCRAM SaltedPassword values for one upstream password, by (salt, iterations). PostgreSQL keeps
 * a role's salt until its password changes, so after the first login a new one costs no PBKDF2;
 * the first one runs on libuv's thread pool, never on the event loop.
 */
export class SaltedPasswordCache {
  private readonly password: Buffer;
  private readonly entries = new Map<string, Promise<Buffer>>();
  /** A role's salt changes only with its password; a handful of entries covers every case. */
  private static readonly MAX_ENTRIES = 16;

  constructor(password: string) {
    this.password = scramPasswordBytes(password);
  }

  /** Distinct (salt, iterations) pairs computed so far. */
  get size(): number {
    return this.entries.size;
  }

  /** SaltedPassword for this salt and count, computed once off the event loop. */
  get(salt: Buffer, iterations: number): Promise<Buffer> {
    const key = `${iterations}:${salt.toString("base64")}`;
    let entry = this.entries.get(key);
    if (entry === undefined) {
      if (this.entries.size >= SaltedPasswordCache.MAX_ENTRIES) {
        this.entries.delete(this.entries.keys().next().value!);
      }
      entry = new Promise<Buffer>((resolve, reject) =>
        pbkdf2(this.password, salt, iterations, SCRAM_KEY_LENGTH, "sha256", (err, key) =>
          err === null ? resolve(key) : reject(err),
        ),
      );
      entry.catch(() => this.entries.delete(key));
      this.entries.set(key, entry);
    }
    return entry;
  }
}

/** Salt and iteration count of a server-first-message, or undefined when it has none (it then fails later). */
export const scramSaltOf = (serverFirst: string): { salt: Buffer; iterations: number } | undefined => {
  let salt: Buffer | undefined;
  let iterations: number | undefined;
  for (const attr of serverFirst.split(",")) {
    if (attr.startsWith("s=")) salt = Buffer.from(attr.slice(2), "base64");
    else if (attr.startsWith("i=") && /^\d{1,10}$/.test(attr.slice(2))) iterations = Number(attr.slice(2));
  }
  return salt === undefined || salt.length === 0 || iterations === undefined
    ? undefined
    : { salt, iterations };
};
