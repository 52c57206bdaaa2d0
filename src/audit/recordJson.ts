import { canonicalJson, canonicalValue, quoteKey } from "./canonicalJson.ts";

/**
 * A record's canonical text (canonicalJson.ts) for the writer's hot path, from the event and the
 * envelope without sorting their keys: a plan made once per event shape (kind and member list)
 * knows the sorted member order. A kept plan builds the record as one object in that order, and
 * JSON.stringify writes it when every value is one it writes exactly as canonicalJson would;
 * otherwise the members are written one by one with canonicalJson's own writer. A member name JS
 * would reorder (an array index, `__proto__`) sends the record to canonicalJson whole.
 */

/** What the chain adds to every event (Chain.ts); these win over event members of the same name. */
export interface Envelope {
  readonly boot: string;
  readonly hmacKey: string;
  readonly id: string;
  readonly instance: string;
  readonly prev: string;
  readonly schema: number;
  readonly seq: number;
}

const ENVELOPE_KEYS: readonly (keyof Envelope)[] = [
  "boot",
  "hmacKey",
  "id",
  "instance",
  "prev",
  "schema",
  "seq",
];
const ENVELOPE_SET: ReadonlySet<string> = new Set(ENVELOPE_KEYS);

interface Plan {
  /** The event's own member names, in its order: the shape this plan is for. */
  readonly keys: readonly string[];
  /** Every member of the record, sorted. */
  readonly order: readonly string[];
  /** Per member of `order`: its quoted name and a colon. */
  readonly names: readonly string[];
  /** Per member of `order`: taken from the envelope (1) or the event (0). */
  readonly fromEnvelope: Uint8Array;
  /** The record as one object with its members in `order`, for the native writer; only kept plans have one. */
  readonly build?: (event: Record<string, unknown>, envelope: Envelope) => Record<string, unknown>;
}

const MAX_PLANS_PER_KIND = 32;
const plans = new Map<unknown, Plan[]>();

const INDEX_KEY = /^(?:0|[1-9][0-9]*)$/;
/** Member names JS would not enumerate in insertion order (array indices) or would not create. */
const unorderable = (k: string): boolean => {
  const c = k.charCodeAt(0);
  return (c >= 0x30 && c <= 0x39 && INDEX_KEY.test(k) && Number(k) < 4294967295) || k === "__proto__";
};

const sameKeys = (a: readonly string[], b: readonly string[]): boolean => {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
};

const planFor = (event: Record<string, unknown>): Plan | undefined => {
  const keys = Object.keys(event);
  const kind = event.kind;
  const list = plans.get(kind);
  if (list !== undefined) for (const p of list) if (sameKeys(p.keys, keys)) return p;
  if (keys.some(unorderable)) return undefined;
  const order = [...new Set([...keys, ...ENVELOPE_KEYS])].sort();
  const fromEnvelope = Uint8Array.from(order, (k) => (ENVELOPE_SET.has(k) ? 1 : 0));
  const names = order.map((k) => `${quoteKey(k)}:`);
  const keep = list === undefined ? plans.size < 256 : list.length < MAX_PLANS_PER_KIND;
  // Only a plan that is kept is compiled: one made afresh for every record would compile each time.
  if (!keep) return { keys, order, names, fromEnvelope };
  const plan: Plan = { keys, order, names, fromEnvelope, build: builder(order, fromEnvelope) };
  if (list === undefined) plans.set(kind, [plan]);
  else list.push(plan);
  return plan;
};

/**
 * An object literal of `order`'s members, compiled once per plan: V8 makes it with one shape and
 * its members in literal order, which JSON.stringify then writes natively (about half the time
 * of writing it member by member here). The source holds only member names, each quoted by
 * JSON.stringify, which makes any name a plain string literal; `order` has no name a literal
 * would treat specially (`unorderable` sends those elsewhere), and no value enters the source.
 */
const builder = (order: readonly string[], fromEnvelope: Uint8Array): Plan["build"] => {
  const members = order.map(
    (k, i) => `${JSON.stringify(k)}: ${fromEnvelope[i] === 1 ? "n" : "e"}[${JSON.stringify(k)}]`,
  );
  return new Function("e", "n", `"use strict"; return { ${members.join(", ")} };`) as Plan["build"];
};

/**
 * Whether JSON.stringify writes `value` exactly as canonicalValue would: finite numbers, plain
 * objects whose members are already in sorted order, and nothing with a toJSON (which
 * JSON.stringify would call and canonicalJson ignores). Anything else is left to canonicalValue,
 * which orders it or refuses it.
 */
const nativeReady = (value: unknown): boolean => {
  switch (typeof value) {
    case "string":
    case "boolean":
    case "undefined":
      return true;
    case "number":
      return Number.isFinite(value);
    case "object": {
      if (value === null) return true;
      if (typeof (value as { toJSON?: unknown }).toJSON === "function") return false;
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) if (!nativeReady(value[i])) return false;
        return true;
      }
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) return false;
      // for-in gives own members in property order here: a plain object whose prototype holds
      // none. Strictly increasing names are the sorted order canonicalJson would write.
      let prev: string | undefined;
      for (const k in value) {
        if (!Object.hasOwn(value, k) || (prev !== undefined && !(prev < k))) return false;
        prev = k;
        if (!nativeReady((value as Record<string, unknown>)[k])) return false;
      }
      return true;
    }
    default:
      return false;
  }
};

/** A built record is plain and in order by construction: only its values need the check. */
const valuesReady = (record: Record<string, unknown>): boolean => {
  for (const k in record) if (!nativeReady(record[k])) return false;
  return true;
};

/** canonicalJson of the event with the envelope's members added. */
export const recordJson = (event: Record<string, unknown>, envelope: Envelope): string => {
  const plan = planFor(event);
  if (plan === undefined) return canonicalJson({ ...event, ...envelope });
  const record = plan.build?.(event, envelope);
  if (record !== undefined && valuesReady(record)) return JSON.stringify(record);
  const { order, names, fromEnvelope } = plan;
  let out = "{";
  for (let i = 0; i < order.length; i++) {
    const k = order[i]!;
    const v = fromEnvelope[i] === 1 ? envelope[k as keyof Envelope] : event[k];
    // Absent and undefined mean the same, as in canonicalJson.
    if (v === undefined) continue;
    out += `${out.length === 1 ? "" : ","}${names[i]!}${canonicalValue(v)}`;
  }
  return `${out}}`;
};
