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

// Built by string concatenation (V8 ropes): several times cheaper than pushing parts and joining,
// and the writer encodes every record with it.
const write = (value: unknown): string => {
  switch (typeof value) {
    case "string":
      return JSON.stringify(value);
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
          out += write(v === undefined ? null : v);
        }
        return `${out}]`;
      }
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) {
        throw new CanonicalJsonError(`not a plain object: ${(value as object).constructor?.name ?? "?"}`);
      }
      const keys = Object.keys(value).sort();
      let out = "{";
      let first = true;
      for (const k of keys) {
        const v = (value as Record<string, unknown>)[k];
        // Absent and undefined mean the same, as in JSON.stringify.
        if (v === undefined) continue;
        if (!first) out += ",";
        first = false;
        out += `${quoteKey(k)}:${write(v)}`;
      }
      return `${out}}`;
    }
    default:
      throw new CanonicalJsonError(`cannot encode a ${typeof value}`);
  }
};

/** The canonical text of a JSON-compatible value. */
export const canonicalJson = (value: unknown): string => write(value);
