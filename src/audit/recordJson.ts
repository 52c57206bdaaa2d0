import { canonicalJson, canonicalValue, quoteKey } from "./canonicalJson.ts";

/**
 * A record's canonical text (canonicalJson.ts) for the writer's hot path, written directly from
 * the event and the envelope, without merging them into one object and sorting its keys: the
 * members in the sorted order a plan made once per event shape (kind and member list) gives,
 * each value by canonicalJson's own writer. A member name JS would reorder (an array index,
 * `__proto__`) sends the record to canonicalJson whole.
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

/** canonicalJson of the event with the envelope's members added. */
export const recordJson = (event: Record<string, unknown>, envelope: Envelope): string => {
  const plan = planFor(event);
  if (plan === undefined) return canonicalJson({ ...event, ...envelope });
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
