/**
 * Deterministic JSON: object keys sorted by UTF-16 code units (JavaScript's default string
 * order), no whitespace, JSON.stringify's escaping and number formatting. Two values that are
 * equal as data give byte-identical text, which is what hashing needs.
 */

/** Thrown for values JSON cannot represent faithfully; the audit writer never produces them. */
export class CanonicalJsonError extends Error {
  override readonly name = "CanonicalJsonError";
}

/** Record field names repeat endlessly: each is quoted once. */
const quotedKeys = new Map<string, string>();
export const quoteKey = (k: string): string => {
  let q = quotedKeys.get(k);
  if (q === undefined) {
    q = JSON.stringify(k);
    if (quotedKeys.size < 4096) quotedKeys.set(k, q);
  }
  return q;
};

/** Needs no escaping in JSON: printable ASCII other than `"` and `\\`. */
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

/** Keys as Object.keys gives them are usually in order already (the builders make them so). */
const inOrder = (keys: readonly string[]): boolean => {
  for (let i = 1; i < keys.length; i++) if (!(keys[i - 1]! < keys[i]!)) return false;
  return true;
};

/**
 * The canonical text of one value. Built by string concatenation (V8 ropes): several times
 * cheaper than pushing parts and joining, and the audit writer encodes every record with it; a
 * plain string needs no call to JSON.stringify, and keys already in order no sort.
 */
export const canonicalValue = (value: unknown): string => {
  switch (typeof value) {
    case "string":
      return PLAIN.test(value) ? `"${value}"` : JSON.stringify(value);
    case "number":
      // NaN and Infinity would silently become null and change meaning.
      if (!Number.isFinite(value)) throw new CanonicalJsonError(`non-finite number ${value}`);
      return JSON.stringify(value);
    case "boolean":
      return value ? "true" : "false";
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) {
        let out = "[";
        for (let i = 0; i < value.length; i++) {
          if (i > 0) out += ",";
          const v: unknown = value[i];
          out += canonicalValue(v === undefined ? null : v);
        }
        return `${out}]`;
      }
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) {
        throw new CanonicalJsonError(`not a plain object: ${(value as object).constructor?.name ?? "?"}`);
      }
      const keys = Object.keys(value);
      if (!inOrder(keys)) keys.sort();
      let out = "{";
      let first = true;
      for (const k of keys) {
        const v = (value as Record<string, unknown>)[k];
        // Absent and undefined mean the same, as in JSON.stringify.
        if (v === undefined) continue;
        if (!first) out += ",";
        first = false;
        out += `${quoteKey(k)}:${canonicalValue(v)}`;
      }
      return `${out}}`;
    }
    default:
      throw new CanonicalJsonError(`cannot encode a ${typeof value}`);
  }
};

/** The canonical text of a JSON-compatible value. */
export const canonicalJson = (value: unknown): string => canonicalValue(value);
