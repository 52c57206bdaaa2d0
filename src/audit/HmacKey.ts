import { createHash, createHmac, createSecretKey, hash, type KeyObject } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { type AuditError, auditError } from "./AuditError.ts";
import { appendMember, HMAC_SUFFIX_LENGTH } from "./recordLine.ts";

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
   * The verifier's hot path, from the one UTF-8 copy of `line` the HMAC needs: `mac` is the HMAC
   * of the line's body (`line` minus its last `cut` characters, all ASCII, plus `}`: the layout of
   * recordLine.ts) and `hash` the line's record hash, H(0x00 ‖ line) hex (its Merkle leaf hash).
   */
  readonly digestLine: (line: string, cut: number) => LineDigest;
  /**
   * `digestLine` of the line whose UTF-8 bytes are `bytes[start, end)`, copied rather than
   * encoded again: what the verifier's chunks use, holding the segment's bytes already.
   */
  readonly digestBytes: (bytes: Buffer, start: number, end: number, cut: number) => LineDigest;
  /**
   * The writer's hot path, from one UTF-8 copy of `body`: the sealed line (recordLine.ts: the
   * body's final `}` replaced by the hmac member) and that line's record hash.
   */
  readonly seal: (body: string) => SealedLine;
}

export interface SealedLine {
  readonly line: string;
  readonly hash: string;
  /** The line's UTF-8 bytes: a view of the key's own buffer, valid only until its next use. */
  readonly bytes: Uint8Array;
}

export interface LineDigest {
  readonly mac: string;
  readonly hash: string;
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
const oneShotHmac = (raw: Buffer): Pick<HmacKey, "mac" | "digestLine" | "digestBytes" | "seal"> => {
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
  /**
   * The record hash, H(0x00 ‖ line), of the `n` line bytes now after the padded key: the leaf
   * prefix goes in the pad's last byte, just before the line, and the pad byte is put back.
   */
  const leafOfScratch = (n: number): string => {
    scratch[block - 1] = 0;
    const h = hash("sha256", new Uint8Array(store, block - 1, n + 1), "hex");
    scratch[block - 1] = ipad[block - 1]!;
    return h;
  };
  /** The HMAC of the `n` message bytes now in the scratch buffer after the padded key. */
  const finish = (n: number): string => {
    outerBuf.write(hash("sha256", new Uint8Array(store, 0, block + n), "binary"), block, "latin1");
    return hash("sha256", outer, "hex");
  };
  /** The body HMAC and record hash of the `total` line bytes now in the scratch buffer. */
  const digestScratch = (total: number, cut: number): LineDigest => {
    const n = total - cut;
    const cutByte = scratch[block + n]!;
    scratch[block + n] = 0x7d;
    const mac = finish(n + 1);
    scratch[block + n] = cutByte;
    return { mac, hash: leafOfScratch(total) };
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
    digestLine: (line, cut) => {
      room(line.length * 3);
      return digestScratch(scratch.write(line, block), cut);
    },
    digestBytes: (bytes, start, end, cut) => {
      room(end - start);
      return digestScratch(bytes.copy(scratch, block, start, end), cut);
    },
    seal: (body) => {
      room(body.length * 3 + HMAC_SUFFIX_LENGTH);
      const n = scratch.write(body, block);
      const mac = finish(n);
      const line = appendMember(body, "hmac", mac);
      // The line's bytes are the body's with its final "}" (one byte) replaced by the member.
      const total = n - 1 + scratch.write(line.slice(-HMAC_SUFFIX_LENGTH), block + n - 1, "latin1");
      return { line, hash: leafOfScratch(total), bytes: new Uint8Array(store, block, total) };
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
