import { createHash, createHmac, createSecretKey, hash, type KeyObject } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { type AuditError, auditError } from "./AuditError.ts";

/**
 * The record HMAC key. The key file holds the key as hex (at least 32 bytes, i.e. 64 hex
 * digits; `openssl rand -hex 32`), optionally followed by a newline. Its id is a fingerprint
 * derived from the key, so a record names the key that authenticates it without revealing it.
 */
export interface HmacKey {
  readonly id: string;
  /** HMAC-SHA-256 of `data`, hex. */
  readonly mac: (data: string | Uint8Array) => string;
  /**
   * HMAC of a line's body without cutting it out: `line` minus its last `cut` characters (all
   * ASCII), plus `}` (the line layout of recordLine.ts). Optional, for the verifier's hot path.
   */
  readonly macCut?: (line: string, cut: number) => string;
}

export const MIN_HMAC_KEY_BYTES = 32;
/** The key bytes, held beside the key rather than on it so that no log or error can print them. */
const material = new WeakMap<HmacKey, Buffer>();
/** The bytes of a key, to rebuild it on another thread (the verifier's workers). */
export const hmacKeyBytes = (key: HmacKey): Buffer | undefined => material.get(key);
const ID_LABEL = "pgwarden audit hmac key id v1";

export const hmacKeyFromBytes = (bytes: Uint8Array): HmacKey | AuditError => {
  if (bytes.length < MIN_HMAC_KEY_BYTES)
    return auditError(
      "PGW_AUDIT_KEY",
      `HMAC key is ${bytes.length} bytes; at least ${MIN_HMAC_KEY_BYTES} needed`,
    );
  const key: KeyObject = createSecretKey(Buffer.from(bytes));
  const id = createHmac("sha256", key).update(ID_LABEL).digest("hex").slice(0, 32);
  const k: HmacKey = { id, ...oneShotHmac(Buffer.from(bytes)) };
  material.set(k, Buffer.from(bytes));
  return k;
};

/**
 * HMAC-SHA-256 (RFC 2104) as two one-shot hashes, the message written after the padded key in
 * a scratch buffer of its own: an Hmac object per record costs over ten times more, and every
 * record is MACed once when written and once when verified. (One-shot hashing of a view on a
 * small dedicated buffer is markedly cheaper than of a Buffer sliced from a shared pool.)
 */
const oneShotHmac = (raw: Buffer): Pick<HmacKey, "mac" | "macCut"> => {
  const block = 64;
  const k = raw.length > block ? createHash("sha256").update(raw).digest() : raw;
  const outer = new Uint8Array(block + 32);
  const outerBuf = Buffer.from(outer.buffer);
  let store = new ArrayBuffer(8192);
  let scratch = Buffer.from(store);
  const ipad = Buffer.alloc(block, 0x36);
  outer.fill(0x5c, 0, block);
  for (let i = 0; i < k.length; i++) {
    ipad[i]! ^= k[i]!;
    outer[i]! ^= k[i]!;
  }
  scratch.set(ipad);
  const room = (bytes: number) => {
    if (block + bytes <= store.byteLength) return;
    store = new ArrayBuffer(block + bytes);
    scratch = Buffer.from(store);
    scratch.set(ipad);
  };
  /** The HMAC of the `n` message bytes now in the scratch buffer after the padded key. */
  const finish = (n: number): string => {
    outerBuf.write(hash("sha256", new Uint8Array(store, 0, block + n), "binary"), block, "latin1");
    return hash("sha256", outer, "hex");
  };
  return {
    mac: (data) => {
      if (typeof data === "string") {
        room(data.length * 3);
        return finish(scratch.write(data, block));
      }
      room(data.length);
      scratch.set(data, block);
      return finish(data.length);
    },
    macCut: (line, cut) => {
      room(line.length * 3);
      const n = scratch.write(line, block) - cut;
      scratch[block + n] = 0x7d;
      return finish(n + 1);
    },
  };
};

/** Parses key-file text; the error never echoes the content. */
export const parseHmacKeyText = (text: string, source: string): HmacKey | AuditError => {
  const hex = text.replace(/\r?\n$/, "");
  if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex))
    return auditError(
      "PGW_AUDIT_KEY",
      `${source}: expected the HMAC key as hex digits (openssl rand -hex 32)`,
    );
  const key = hmacKeyFromBytes(Buffer.from(hex, "hex"));
  return "_tag" in key ? auditError("PGW_AUDIT_KEY", `${source}: ${key.message}`) : key;
};

/** Reads a key file. Refuses one that others can read or write: the key authenticates the log. */
export const loadHmacKey = async (path: string): Promise<HmacKey | AuditError> => {
  try {
    const st = await stat(path);
    if (!st.isFile()) return auditError("PGW_AUDIT_KEY", `${path}: not a regular file`);
    if ((st.mode & 0o007) !== 0)
      return auditError(
        "PGW_AUDIT_KEY",
        `${path}: accessible to others (mode ${(st.mode & 0o777).toString(8)}); chmod o-rwx`,
      );
    return parseHmacKeyText(await readFile(path, "utf8"), path);
  } catch (e) {
    return auditError("PGW_AUDIT_KEY", `${path}: ${(e as NodeJS.ErrnoException).code ?? "unreadable"}`);
  }
};
