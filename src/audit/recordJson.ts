import { canonicalJson } from "./canonicalJson.ts";

/**
 * A record's canonical text (canonicalJson.ts) for the writer's hot path. canonicalJson sorts
 * and concatenates member by member; JSON.stringify is native but writes members in insertion
 * order. So each record is built once with its members already in sorted order, following a plan
 * made once per event shape (kind and member list), and handed to JSON.stringify. A record whose
 * nested objects are out of order, or that holds anything canonicalJson would refuse or JS would
 * reorder, goes to canonicalJson itself, which stays the definition: the output is the same.
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
  /** Per member of `order`: taken from the envelope (1) or the event (0). */
  readonly fromEnvelope: Uint8Array;
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
  const plan: Plan = { keys, order, fromEnvelope };
  if (list === undefined) {
    if (plans.size < 256) plans.set(kind, [plan]);
  } else if (list.length < MAX_PLANS_PER_KIND) list.push(plan);
  return plan;
};

/**
 * True when JSON.stringify writes `value` exactly as canonicalJson would: finite numbers only,
 * plain objects whose members are in sorted insertion order, nothing JSON cannot carry.
 */
const native = (value: unknown): boolean => {
  switch (typeof value) {
    case "string":
    case "boolean":
    case "undefined":
      return true;
    case "number":
      return Number.isFinite(value);
    case "object": {
      if (value === null) return true;
      // JSON.stringify finds toJSON by lookup (own, hidden or inherited); canonicalJson ignores it.
      if (typeof (value as { toJSON?: unknown }).toJSON === "function") return false;
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) if (!native(value[i])) return false;
        return true;
      }
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) return false;
      let prev: string | undefined;
      for (const k in value) {
        if ((prev !== undefined && !(prev < k)) || unorderable(k)) return false;
        prev = k;
        if (!native((value as Record<string, unknown>)[k])) return false;
      }
      return true;
    }
    default:
      return false;
  }
};

/** canonicalJson of the event with the envelope's members added. */
export const recordJson = (event: Record<string, unknown>, envelope: Envelope): string => {
  const plan = planFor(event);
  if (plan !== undefined) {
    const { order, fromEnvelope } = plan;
    const out: Record<string, unknown> = {};
    let ok = true;
    for (let i = 0; i < order.length; i++) {
      const k = order[i]!;
      const v = fromEnvelope[i] === 1 ? envelope[k as keyof Envelope] : event[k];
      if (ok && !native(v)) ok = false;
      out[k] = v;
    }
    return ok ? JSON.stringify(out) : canonicalJson(out);
  }
  return canonicalJson({ ...event, ...envelope });
};
