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
}

export const MIN_HMAC_KEY_BYTES = 32;
const ID_LABEL = "pgwarden audit hmac key id v1";

export const hmacKeyFromBytes = (bytes: Uint8Array): HmacKey | AuditError => {
  if (bytes.length < MIN_HMAC_KEY_BYTES)
    return auditError(
      "PGW_AUDIT_KEY",
      `HMAC key is ${bytes.length} bytes; at least ${MIN_HMAC_KEY_BYTES} needed`,
    );
  const key: KeyObject = createSecretKey(Buffer.from(bytes));
  const id = createHmac("sha256", key).update(ID_LABEL).digest("hex").slice(0, 32);
  return { id, mac: oneShotHmac(Buffer.from(bytes)) };
};

/**
 * HMAC-SHA-256 (RFC 2104) as two one-shot hashes over precomputed padded keys: an Hmac object
 * per record costs several times more, and every record is MACed once when written, once verified.
 */
const oneShotHmac = (raw: Buffer): ((data: string | Uint8Array) => string) => {
  const block = 64;
  const k = raw.length > block ? createHash("sha256").update(raw).digest() : raw;
  const ipad = Buffer.alloc(block, 0x36);
  const opad = Buffer.alloc(block, 0x5c);
  for (let i = 0; i < k.length; i++) {
    ipad[i]! ^= k[i]!;
    opad[i]! ^= k[i]!;
  }
  const outer = Buffer.alloc(block + 32);
  opad.copy(outer);
  return (data) => {
    const msg = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    const inner = Buffer.allocUnsafe(block + msg.length);
    ipad.copy(inner);
    inner.set(msg, block);
    (hash("sha256", inner, "buffer") as Buffer).copy(outer, block);
    return hash("sha256", outer, "hex");
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
