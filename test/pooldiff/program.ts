import { fc } from "@fast-check/vitest";
import type { PgSession } from "../support/pgSession.ts";
import { exchange, msg } from "./harness.ts";

/**
 * Random client programs for the differential tests. A program is a list of steps, each one
 * client's unit of work that starts and ends outside a transaction (so that a pool smaller than
 * the number of clients never deadlocks the sequential runner); inside a unit anything goes.
 */

/** Statement texts the extended-protocol steps prepare, with the parameters their Binds carry. */
export const TEXTS = [
  { text: "SELECT $1::int + 1", types: [] as number[], params: ["41"] },
  { text: "SELECT $1::text || 'x'", types: [], params: ["a"] },
  { text: "SELECT current_setting('work_mem')", types: [], params: [] },
  { text: "SELECT 1/0", types: [], params: [] },
  { text: "SELEC 1", types: [], params: [] },
  { text: "SELECT $1", types: [23], params: ["7"] },
  { text: "SELECT $1", types: [25], params: ["7"] },
] as const;

export const PROBE =
  "SELECT current_setting('work_mem'), current_setting('search_path'), current_setting('application_name')," +
  " current_setting('TimeZone'), current_setting('DateStyle'), current_setting('statement_timeout')," +
  " current_setting('default_transaction_isolation'), coalesce(current_setting('myapp.x', true), '')";

/** Simple-query units; each leaves the client idle (a failed block is ended by the next query). */
export const SIMPLE_UNITS: readonly (readonly string[])[] = [
  [PROBE],
  ["SET work_mem = '2MB'"],
  ["SET work_mem = '3MB'; SELECT 1/0"],
  ["SET search_path = pg_catalog, public"],
  ['SET search_path = "$user", public'],
  ["SET search_path = 'a b', public"],
  ["SET application_name = 'app-one'"],
  ["SET TIME ZONE 'UTC'"],
  ["SET TimeZone = 'Europe/Paris'"],
  ["SET DateStyle = 'German'"],
  ["SET statement_timeout = '5s'"],
  ["SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ"],
  ["SET myapp.x = 'v1'"],
  ["SELECT set_config('work_mem', '11MB', false)"],
  ["RESET work_mem"],
  ["RESET application_name"],
  ["RESET ALL"],
  ["DISCARD ALL"],
  ["BEGIN; SET work_mem = '7MB'; ROLLBACK"],
  ["BEGIN; SET work_mem = '8MB'; SET application_name = 'in-txn'; COMMIT"],
  ["BEGIN; SET LOCAL work_mem = '9MB'; SELECT current_setting('work_mem'); COMMIT"],
  ["BEGIN; SET work_mem = '5MB'; SELECT 1/0", "COMMIT"],
  ["BEGIN", "SET work_mem = '12MB'", "SELECT 1/0", "ROLLBACK"],
  ["BEGIN; SET work_mem = '6MB'; SAVEPOINT s; SET work_mem = '10MB'; ROLLBACK TO s; COMMIT"],
  ["BEGIN", "SAVEPOINT s", "SET application_name = 'sp'", "SELECT 1/0", "ROLLBACK TO SAVEPOINT s", "COMMIT"],
  ["BEGIN; SET search_path = public; RELEASE SAVEPOINT nope", "ROLLBACK"],
  ["START TRANSACTION; SET DateStyle = 'SQL, DMY'", "END"],
  ["SET work_mem = '4MB'; COMMIT; SELECT 1/0"],
];

export type ExtOp =
  | { readonly op: "parse"; readonly name: string; readonly t: number }
  | { readonly op: "exec"; readonly name: string; readonly t: number }
  | { readonly op: "describe"; readonly name: string }
  | { readonly op: "close"; readonly name: string }
  | { readonly op: "unnamed"; readonly t: number };

export type Unit =
  | { readonly kind: "simple"; readonly queries: readonly string[] }
  /** One extended-protocol batch ended by a single Sync, optionally inside BEGIN…COMMIT. */
  | { readonly kind: "batch"; readonly ops: readonly ExtOp[]; readonly inTxn: boolean };

export interface Step {
  readonly client: number;
  readonly unit: Unit;
  /** Runs at the same time as the step before it (for another client). */
  readonly together: boolean;
}

const names = fc.constantFrom("s0", "s1", "s2");
const texts = fc.nat({ max: TEXTS.length - 1 });

export const extOp = (allow: { errors: boolean }): fc.Arbitrary<ExtOp> => {
  const t = allow.errors ? texts : fc.constantFrom(0, 1, 2, 5, 6);
  return fc.oneof(
    fc.record({ op: fc.constant("parse" as const), name: names, t }),
    fc.record({ op: fc.constant("exec" as const), name: names, t }),
    fc.record({ op: fc.constant("describe" as const), name: names }),
    fc.record({ op: fc.constant("close" as const), name: names }),
    fc.record({ op: fc.constant("unnamed" as const), t }),
  );
};

export const unit = (o: { errors: boolean; transactions: boolean }): fc.Arbitrary<Unit> =>
  fc.oneof(
    fc.record({
      kind: fc.constant("simple" as const),
      queries: fc.constantFrom(
        ...SIMPLE_UNITS.filter((u) => o.transactions || !u.some((q) => /BEGIN|START/.test(q))),
      ),
    }),
    fc.record({
      kind: fc.constant("batch" as const),
      ops: fc.array(extOp(o), { minLength: 1, maxLength: 5 }),
      inTxn: o.transactions ? fc.boolean() : fc.constant(false),
    }),
  );

export const program = (
  clients: number,
  o: { errors: boolean; transactions: boolean; maxSteps?: number },
): fc.Arbitrary<Step[]> =>
  fc.array(fc.record({ client: fc.nat({ max: clients - 1 }), unit: unit(o), together: fc.boolean() }), {
    minLength: 1,
    maxLength: o.maxSteps ?? 12,
  });

/** Frontend messages of one extended-protocol operation. */
const extMessages = (e: ExtOp): Buffer[] => {
  switch (e.op) {
    case "parse": {
      const x = TEXTS[e.t]!;
      return [msg.parse(e.name, x.text, x.types)];
    }
    case "exec":
      return [msg.bind(e.name, [...TEXTS[e.t]!.params]), msg.execute()];
    case "describe":
      return [msg.describeStatement(e.name)];
    case "close":
      return [msg.closeStatement(e.name)];
    case "unnamed": {
      const x = TEXTS[e.t]!;
      return [
        msg.parse("", x.text, x.types),
        msg.bind("", [...x.params]),
        msg.describePortal(),
        msg.execute(),
      ];
    }
  }
};

/** What a client has prepared, as PostgreSQL would have it: name → index in TEXTS. */
export type Prepared = Map<string, number>;

/**
 * Rewrites a batch so that it avoids the shapes of the defects reported in this folder's fixed
 * tests (a Bind/Describe of a name the client does not have, a Parse of one it has, a Parse or
 * Close after an error in the same batch), keeping `prepared` as PostgreSQL would, so that the
 * property looks for other defects. Binds carry the parameters of the text the name holds.
 */
export const sanitize = <O extends { readonly op: string } = ExtOp>(
  ops: readonly O[],
  prepared: Prepared,
  /** For op kinds a caller adds beyond ExtOp: pushes what of `e` goes, `out` so far. */
  other: (e: O, out: O[]) => void = () => {},
): O[] => {
  const out: O[] = [];
  let failed = false;
  for (const o of ops) {
    const e = o as unknown as ExtOp;
    switch (e.op) {
      case "parse":
        if (failed || prepared.has(e.name)) continue;
        out.push(o);
        if (e.t === 4) failed = true;
        else prepared.set(e.name, e.t);
        break;
      case "exec": {
        const t = prepared.get(e.name);
        if (t === undefined) continue;
        out.push({ ...e, t } as unknown as O);
        if (t === 3) failed = true;
        break;
      }
      case "describe":
        if (prepared.has(e.name)) out.push(o);
        break;
      case "close":
        if (failed) continue;
        out.push(o);
        prepared.delete(e.name);
        break;
      case "unnamed":
        out.push(o);
        if (e.t === 3 || e.t === 4) failed = true;
        break;
      default:
        other(o, out);
    }
  }
  return out;
};

/** Runs one unit and returns what the client saw, one trace per sync point. */
export const runUnit = async (s: PgSession, u: Unit): Promise<string[][]> => {
  const out: string[][] = [];
  if (u.kind === "simple") {
    for (const q of u.queries) out.push(await exchange(s, [msg.query(q)]));
    return out;
  }
  if (u.inTxn) out.push(await exchange(s, [msg.query("BEGIN")]));
  out.push(await exchange(s, [...u.ops.flatMap(extMessages), msg.sync()]));
  // COMMIT of a failed block answers ROLLBACK: the status it ends in is part of the comparison.
  if (u.inTxn) out.push(await exchange(s, [msg.query("COMMIT")]));
  return out;
};

/** Runs a program over `sessions` (one per client) and returns each step's traces. */
export const runProgram = async (sessions: readonly PgSession[], steps: readonly Step[]) => {
  const out: { client: number; unit: Unit; seen: string[][] }[] = [];
  // Steps marked `together` with earlier ones of other clients run concurrently; a client's own
  // steps stay in order, so what each client sees is independent of the interleaving.
  let group: Step[] = [];
  const flush = async () => {
    const seen = await Promise.all(group.map((st) => runUnit(sessions[st.client]!, st.unit)));
    for (const [i, st] of group.entries()) out.push({ client: st.client, unit: st.unit, seen: seen[i]! });
    group = [];
  };
  for (const st of steps) {
    if (!st.together || group.some((g) => g.client === st.client)) await flush();
    group.push(st);
  }
  await flush();
  return out;
};

/** The program with every batch sanitized (see `sanitize`), per client, in order. */
export const sanitizeProgram = (steps: readonly Step[], clients: number): Step[] => {
  const prepared = Array.from({ length: clients }, (): Prepared => new Map());
  return steps.map((st) => {
    const mine = prepared[st.client]!;
    if (st.unit.kind === "simple") {
      if (st.unit.queries.some((q) => /DISCARD ALL|DEALLOCATE ALL/.test(q))) mine.clear();
      return st;
    }
    return { ...st, unit: { ...st.unit, ops: sanitize(st.unit.ops, mine) } };
  });
};
