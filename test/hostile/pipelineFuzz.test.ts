import { fc } from "@fast-check/vitest";
import type pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  encodeBind,
  encodeClose,
  encodeCopyData,
  encodeCopyDone,
  encodeCopyFail,
  encodeDescribe,
  encodeExecute,
  encodeFlush,
  encodeFunctionCall,
  encodeParse,
  encodeQuery,
  encodeSync,
  encodeTerminate,
} from "../../src/protocol/frontend.ts";
import { fieldsOf, frame, header, sleep } from "../support/hostile.ts";
import { dataRow, type PgSession } from "../support/pgSession.ts";
import { splitMessages } from "../support/wire.ts";
import {
  createFixture,
  type Fixture,
  type PooledTarget,
  type PoolMode,
  startTarget,
  superuserIn,
} from "../txpool/target.ts";

/**
 * Random frontend pipelines after login, written in random pieces (down to one byte per write).
 * Whatever a client sends, pgwarden answers as PostgreSQL would or ends it with an ErrorResponse
 * carrying a SQLSTATE, and the one server connection the next client gets carries nothing of it:
 * no transaction, no settings, no SQL-level prepared statements, cursors, locks, LISTEN, temp tables.
 */

/**
 * Statements that pin a transaction-mode backend (LISTEN, advisory locks, temp tables, WITH HOLD,
 * SQL PREPARE) are left out: that they outlive their client is pinnedStateOutlivesClient.test.ts;
 * so is set_config, which an Execute with a row limit leaks (suspendedSetConfigLeaks.test.ts).
 */
const SQL = [
  "SELECT 1",
  "SELECT 1/0",
  "BEGIN",
  "COMMIT",
  "ROLLBACK",
  "SAVEPOINT s",
  "SET search_path TO fuzz_evil",
  "SET LOCAL statement_timeout = 1234",
  "SET application_name = 'fuzz_evil'",
  "RESET ALL",
  "DISCARD ALL",
  "DEALLOCATE ALL",
  "COPY (SELECT generate_series(1, 3)) TO STDOUT",
  "COPY fuzz_sink FROM STDIN",
  "SELECT 1; SELECT 2",
  "",
  "SELECT pg_sleep(0.01)",
] as const;

const NAMES = ["", "s1", "s2"] as const;
const PORTALS = ["", "p1"] as const;

/** One whole frontend message. */
const message: fc.Arbitrary<Buffer> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...SQL).map(encodeQuery) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.constantFrom(...NAMES), fc.constantFrom(...SQL, "SELECT $1::int"))
      .map(([name, query]) => encodeParse({ name, query, paramTypes: [] })),
  },
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.constantFrom(...PORTALS), fc.constantFrom(...NAMES), fc.boolean())
      .map(([portal, statement, param]) =>
        encodeBind({
          portal,
          statement,
          paramFormats: [],
          params: param ? [Buffer.from("7")] : [],
          resultFormats: [],
        }),
      ),
  },
  {
    weight: 2,
    arbitrary: fc
      .tuple(fc.constantFrom("S", "P"), fc.constantFrom(...NAMES, ...PORTALS))
      .map(([target, name]) => encodeDescribe({ target: target as "S" | "P", name })),
  },
  {
    weight: 3,
    arbitrary: fc
      .tuple(fc.constantFrom(...PORTALS), fc.constantFrom(0, 1))
      .map(([portal, maxRows]) => encodeExecute({ portal, maxRows })),
  },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.constantFrom("S", "P"), fc.constantFrom(...NAMES, ...PORTALS))
      .map(([target, name]) => encodeClose({ target: target as "S" | "P", name })),
  },
  { weight: 4, arbitrary: fc.constant(encodeSync()) },
  { weight: 1, arbitrary: fc.constant(encodeFlush()) },
  { weight: 1, arbitrary: fc.constant(encodeCopyData(Buffer.from("1\n"))) },
  { weight: 1, arbitrary: fc.constant(encodeCopyDone()) },
  { weight: 1, arbitrary: fc.constant(encodeCopyFail("fuzz")) },
  {
    weight: 1,
    // pg_backend_pid() by OID, or an OID that names nothing.
    arbitrary: fc
      .constantFrom(2026, 999_999)
      .map((functionOid) => encodeFunctionCall({ functionOid, argFormats: [], args: [], resultFormat: 0 })),
  },
  {
    weight: 1,
    // A known type with a body of random bytes: malformed Bind, Parse, Describe, Close, Execute.
    arbitrary: fc
      .tuple(fc.constantFrom(0x42, 0x50, 0x44, 0x43, 0x45, 0x46, 0x51), fc.uint8Array({ maxLength: 24 }))
      .map(([type, body]) => frame(type, Buffer.from(body))),
  },
  {
    weight: 1,
    // What PostgreSQL refuses outright: a length under 4, a type it does not know.
    arbitrary: fc.oneof(
      fc.integer({ min: -5, max: 3 }).map((len) => header(0x51, len)),
      fc.constantFrom(0x00, 0x01, 0x70, 0x7a, 0xff).map((type) => frame(type)),
    ),
  },
  { weight: 1, arbitrary: fc.constant(encodeTerminate()) },
);

/** Cuts `bytes` at the given fractions: one write per piece. */
const cut = (bytes: Buffer, cuts: readonly number[], byteByByte: boolean): Buffer[] => {
  if (byteByByte) return Array.from(bytes, (b) => Buffer.from([b]));
  const at = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let prev = 0;
  for (const p of [...at, bytes.length]) {
    if (p > prev) out.push(bytes.subarray(prev, p));
    prev = Math.max(prev, p);
  }
  return out;
};

const ALIVE = "fuzz-alive";

/** What the next client must find on the server connection: PostgreSQL's state after login. */
const STATE_SQL =
  "SELECT current_setting('search_path'), current_setting('application_name'), current_setting('work_mem'), " +
  "current_setting('statement_timeout'), (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::text, " +
  "(SELECT count(*) FROM pg_cursors)::text, (SELECT count(*) FROM pg_listening_channels())::text, " +
  "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::text, " +
  "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::text";

interface Case {
  readonly messages: readonly Buffer[];
  readonly cuts: readonly number[];
  readonly byteByByte: boolean;
}

const caseArb: fc.Arbitrary<Case> = fc.record({
  messages: fc.array(message, { minLength: 1, maxLength: 12 }),
  cuts: fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 6 }),
  byteByByte: fc.boolean(),
});

const describeCase = (c: Case): string =>
  c.messages.map((m) => `${String.fromCharCode(m[0]!)}:${m.subarray(5).toString("latin1")}`).join(" | ");

for (const mode of ["session", "transaction"] as const satisfies readonly PoolMode[]) {
  describe(`random pipelines after login (${mode} mode)`, () => {
    let fixture: Fixture;
    let target: PooledTarget;
    let admin: pg.Client;
    let baseline: (string | null)[];

    beforeAll(async () => {
      fixture = await createFixture(`hfuzz_${mode.slice(0, 4)}`);
      admin = await superuserIn(fixture.database);
      await admin.query("CREATE TABLE fuzz_sink (a text)");
      target = await startTarget(fixture, { pool: { mode, size: 1, queryWaitTimeoutMs: 5000 } });
      const first = await target.session();
      baseline = (await first.query(STATE_SQL)).rows[0]!;
      first.terminate();
    });
    afterAll(async () => {
      await target?.stop();
      await admin?.end();
    });

    /** Runs one case; returns what was wrong, or undefined. */
    const run = async (c: Case): Promise<string | undefined> => {
      const hostile: PgSession = await target.session();
      const bytes = Buffer.concat(c.messages as Buffer[]);
      for (const piece of cut(bytes, c.cuts, c.byteByByte)) {
        if (hostile.closed) break;
        hostile.send(piece);
        if (c.byteByByte) await new Promise((r) => setImmediate(r));
      }
      const wholeFrames = !c.messages.some((m) => m.length >= 5 && m.readInt32BE(1) < 4);
      const terminated = c.messages.some((m) => m[0] === 0x58 && m.length === 5);
      // The probe: end any pipeline and transaction, then a row that shows the session is alive.
      if (!hostile.closed)
        hostile.send(encodeSync(), encodeQuery("ROLLBACK"), encodeQuery(`SELECT '${ALIVE}'`));
      const w = hostile.wire;
      const alive = () => w.messages().some((m) => m.type === "D" && dataRow(m)[0] === ALIVE);
      const deadline = Date.now() + 4000;
      while (!w.closed && !alive() && Date.now() < deadline) await sleep(20);
      const problems: string[] = [];
      if (w.closed) {
        let msgs: { type: string; msg: Buffer }[] = [];
        try {
          msgs = splitMessages(w.received);
        } catch (e) {
          problems.push(`hostile client got a torn stream: ${(e as Error).message}`);
        }
        const last = msgs.at(-1);
        if (!terminated && !alive() && (last?.type !== "E" || fieldsOf(last.msg).get("C") === undefined))
          problems.push(`closed without an ErrorResponse (last ${last?.type ?? "nothing"})`);
      } else if (!alive() && wholeFrames && !terminated) {
        problems.push(
          `no answer to the probe within 4 s; got ${w
            .messages()
            .map((m) => m.type)
            .join("")}`,
        );
      }
      hostile.vanish();
      // The next client: logs in, and finds the server connection as a fresh login leaves it.
      let next: PgSession | undefined;
      try {
        next = await target.session();
        const r = await next.query(STATE_SQL, 8000);
        if (r.error !== undefined) problems.push(`next client: ${r.error.code} ${r.error.message}`);
        else if (r.status !== "I") problems.push(`next client's first query ended in status ${r.status}`);
        else if (JSON.stringify(r.rows[0]) !== JSON.stringify(baseline))
          problems.push(
            `next client found ${JSON.stringify(r.rows[0])}, expected ${JSON.stringify(baseline)}`,
          );
      } catch (e) {
        problems.push(`next client could not log in: ${(e as Error).message}`);
      } finally {
        next?.terminate();
      }
      return problems.length === 0 ? undefined : problems.join("; ");
    };

    it(
      "every pipeline ends as PostgreSQL's would or with an ErrorResponse, and leaves nothing behind",
      async () => {
        const seed = Number(process.env.PGW_FUZZ_SEED ?? Date.now() % 1_000_000);
        await fc.assert(
          fc.asyncProperty(caseArb, async (c) => {
            const wrong = await run(c);
            expect(wrong, `${wrong}\n  case: ${describeCase(c)}`).toBeUndefined();
          }),
          {
            seed,
            numRuns: Number(process.env.PGW_FUZZ_RUNS ?? 40),
            interruptAfterTimeLimit: Number(process.env.PGW_FUZZ_MS ?? 15_000),
            markInterruptAsFailure: false,
            endOnFailure: true,
          },
        );
      },
      Number(process.env.PGW_FUZZ_MS ?? 15_000) + 10_000,
    );
  });
}
