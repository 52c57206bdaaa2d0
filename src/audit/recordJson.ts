import { canonicalJson, quoteKey } from "./canonicalJson.ts";

/**
 * A record's canonical text (canonicalJson.ts) for the writer's hot path, written directly from
 * the event and the envelope: members in the sorted order a plan made once per event shape
 * (kind and member list) gives, nested objects as they come when their members are already in
 * sorted order (the builders make them so), and strings of printable ASCII without a quote or
 * backslash, which JSON leaves as they are, without a call to JSON.stringify. Anything else (a
 * nested object out of order, a value canonicalJson would refuse, a member name JS would
 * reorder) goes to canonicalJson itself, which stays the definition: the output is the same.
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
  const plan: Plan = { keys, order, names, fromEnvelope };
  if (list === undefined) {
    if (plans.size < 256) plans.set(kind, [plan]);
  } else if (list.length < MAX_PLANS_PER_KIND) list.push(plan);
  return plan;
};

/** Needs no escaping in JSON: printable ASCII other than `"` and `\\`. */
const PLAIN = /^[\x20\x21\x23-\x5b\x5d-\x7e]*$/;

const quote = (s: string): string => (PLAIN.test(s) ? `"${s}"` : JSON.stringify(s));

/**
 * canonicalJson's text for `value` when its objects' members are already in sorted order;
 * undefined for anything to leave to canonicalJson (which sorts, or refuses what it must).
 */
const write = (value: unknown): string | undefined => {
  switch (typeof value) {
    case "string":
      return quote(value);
    case "number":
      return Number.isFinite(value) ? `${value}` : undefined;
    case "boolean":
      return value ? "true" : "false";
    case "object": {
      if (value === null) return "null";
      if (Array.isArray(value)) {
        let out = "[";
        for (let i = 0; i < value.length; i++) {
          const v: unknown = value[i];
          const text = write(v === undefined ? null : v);
          if (text === undefined) return undefined;
          out += i === 0 ? text : `,${text}`;
        }
        return `${out}]`;
      }
      const proto = Object.getPrototypeOf(value) as unknown;
      if (proto !== Object.prototype && proto !== null) return undefined;
      let out = "{";
      let prev: string | undefined;
      for (const k in value) {
        if ((prev !== undefined && !(prev < k)) || unorderable(k)) return undefined;
        prev = k;
        const v = (value as Record<string, unknown>)[k];
        // Absent and undefined mean the same, as in canonicalJson.
        if (v === undefined) continue;
        const text = write(v);
        if (text === undefined) return undefined;
        out += `${out.length === 1 ? "" : ","}${quoteKey(k)}:${text}`;
      }
      return `${out}}`;
    }
    default:
      return undefined;
  }
};

/** for…in also walks inherited members, which canonicalJson (Object.keys) does not: none, normally. */
const prototypePolluted = (): boolean => {
  for (const _ in Object.prototype) return true;
  return false;
};

/** canonicalJson of the event with the envelope's members added. */
export const recordJson = (event: Record<string, unknown>, envelope: Envelope): string => {
  const plan = prototypePolluted() ? undefined : planFor(event);
  if (plan !== undefined) {
    const { order, names, fromEnvelope } = plan;
    let out = "{";
    let i = 0;
    for (; i < order.length; i++) {
      const k = order[i]!;
      const v = fromEnvelope[i] === 1 ? envelope[k as keyof Envelope] : event[k];
      if (v === undefined) continue;
      const text = write(v);
      if (text === undefined) break;
      out += `${out.length === 1 ? "" : ","}${names[i]!}${text}`;
    }
    if (i === order.length) return `${out}}`;
  }
  return canonicalJson({ ...event, ...envelope });
};
