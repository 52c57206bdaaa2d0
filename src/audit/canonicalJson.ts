/**
 * Deterministic JSON: object keys sorted by UTF-16 code units (JavaScript's default string
 * order), no whitespace, JSON.stringify's escaping and number formatting. Two values that are
 * equal as data give byte-identical text, which is what hashing needs.
 */

/** Thrown for values JSON cannot represent faithfully; the audit writer never produces them. */
export class CanonicalJsonError extends Error {
  override readonly name = "CanonicalJsonError";
}

const write = (value: unknown, out: string[]): void => {
  switch (typeof value) {
    case "string":
      out.push(JSON.stringify(value));
      return;
    case "number":
      // NaN and Infinity would silently become null and change meaning.
      if (!Number.isFinite(value)) throw new CanonicalJsonError(`non-finite number ${value}`);
      out.push(JSON.stringify(value));
      return;
    case "boolean":
      out.push(value ? "true" : "false");
      return;
    case "object": {
      if (value === null) {
        out.push("null");
        return;
      }
      if (Array.isArray(value)) {
        out.push("[");
        for (let i = 0; i < value.length; i++) {
          if (i > 0) out.push(",");
          const v: unknown = value[i];
          write(v === undefined ? null : v, out);
        }
        out.push("]");
        return;
      }
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) {
        throw new CanonicalJsonError(`not a plain object: ${(value as object).constructor?.name ?? "?"}`);
      }
      const keys = Object.keys(value).sort();
      out.push("{");
      let first = true;
      for (const k of keys) {
        const v = (value as Record<string, unknown>)[k];
        // Absent and undefined mean the same, as in JSON.stringify.
        if (v === undefined) continue;
        if (!first) out.push(",");
        first = false;
        out.push(JSON.stringify(k), ":");
        write(v, out);
      }
      out.push("}");
      return;
    }
    default:
      throw new CanonicalJsonError(`cannot encode a ${typeof value}`);
  }
};

/** The canonical text of a JSON-compatible value. */
export const canonicalJson = (value: unknown): string => {
  const out: string[] = [];
  write(value, out);
  return out.join("");
};
