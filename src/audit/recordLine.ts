import type { HmacKey } from "./HmacKey.ts";
import { leafHex } from "./Merkle.ts";

/**
 * Byte layout of a record line (docs/audit-format.md): the canonical JSON of the record without
 * `hmac`, with `,"hmac":"<64 hex>"` inserted before the final `}`. Verifiers strip that fixed-size
 * suffix and never re-serialize, so any JSON library can check a line.
 */

/** The record format's version (docs/audit-format.md), every record's `schema`. */
export const AUDIT_SCHEMA_VERSION = 2;

export const GENESIS_HASH = "0".repeat(64);
export const HMAC_PREFIX = ',"hmac":"';
/** `,"hmac":"` + 64 hex digits + `"}` */
export const HMAC_SUFFIX_LENGTH = HMAC_PREFIX.length + 64 + 2;
const SIG_PREFIX = ',"sig":"';

/** Appends a member to canonical object text: `{...}` → `{...,"name":"value"}`. */
export const appendMember = (objectText: string, name: string, value: string): string =>
  `${objectText.slice(0, -1)},${JSON.stringify(name)}:${JSON.stringify(value)}}`;

export const sealLine = (body: string, key: HmacKey): string => appendMember(body, "hmac", key.mac(body));

/** The authenticated body of a line and its HMAC, or undefined if the line is not laid out so. */
export const splitHmac = (line: string): { body: string; hmac: string } | undefined => {
  const at = line.length - HMAC_SUFFIX_LENGTH;
  if (at < 1 || !line.startsWith(HMAC_PREFIX, at) || !line.endsWith('"}')) return undefined;
  return { body: `${line.slice(0, at)}}`, hmac: line.slice(at + HMAC_PREFIX.length, -2) };
};

/** A checkpoint body's signed part and its base64 signature. */
export const splitSignature = (body: string): { signed: string; sig: string } | undefined => {
  const at = body.lastIndexOf(SIG_PREFIX);
  if (at < 1 || !body.endsWith('"}')) return undefined;
  const sig = body.slice(at + SIG_PREFIX.length, -2);
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(sig)) return undefined;
  return { signed: `${body.slice(0, at)}}`, sig };
};

/**
 * A line's record hash, hex: what the next record's `prev` holds. It is the line's RFC 6962 leaf
 * hash, H(0x00 ‖ line), so one hash per record serves both the chain and the segment's Merkle tree.
 */
export const lineHash = (line: string | Uint8Array): string => leafHex(line);
