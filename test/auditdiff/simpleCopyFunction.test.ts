import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  encodeCopyData,
  encodeCopyDone,
  encodeCopyFail,
  encodeFunctionCall,
} from "../../src/protocol/frontend.ts";
import type { AuditedProxy } from "../auditwire/support.ts";
import { errorOf, msg, type PgSession, typesOf } from "../support/pgSession.ts";
import { auditedProxy, brief, closeAndRead, direct, type Rec, statementsOf, viaProxy } from "./support.ts";

/**
 * Simple-protocol oddities a client may send, raw: several statements in one Query with an error
 * in the middle, empty queries, COPY FROM STDIN with its data pipelined behind the Query (ended
 * by CopyDone, by CopyFail, by bad data), COPY TO STDOUT alone and inside a multi-statement
 * Query, COPY through the extended protocol, FunctionCall (ok and failing), and a pg_sleep
 * cancelled by CancelRequest. Each step goes straight to PostgreSQL and through the proxy; the
 * records must match what the client was told (error SQLSTATE, last command tag) once each, in order.
 */

const d = (s: string) => encodeCopyData(Buffer.from(s));
const fcall = (oid: number, args: string[]) =>
  encodeFunctionCall({
    functionOid: oid,
    argFormats: [0],
    args: args.map((a) => Buffer.from(a)),
    resultFormat: 0,
  });

/** int4abs and int4div, whose oids are fixed in pg_proc. */
const INT4ABS = 1251;
const INT4DIV = 154;

const STEPS: readonly (readonly [readonly Buffer[], number])[] = [
  [[msg.query("SELECT 'multi-marker'; SELECT 2; SELECT 1/0; SELECT 3")], 1],
  [[msg.query("")], 1],
  [[msg.query(";")], 1],
  [[msg.query("CREATE TEMP TABLE cp (a int)")], 1],
  [
    [
      msg.query("COPY cp FROM STDIN"),
      d("1\n"),
      d("2\n"),
      encodeCopyDone(),
      msg.query("SELECT count(*) FROM cp"),
    ],
    2,
  ],
  [[msg.query("COPY cp FROM STDIN"), d("3\n"), encodeCopyFail("client gave up")], 1],
  [[msg.query("COPY cp FROM STDIN"), d("x\n"), encodeCopyDone()], 1],
  [[msg.query("COPY cp TO STDOUT")], 1],
  [[msg.query("SELECT 1; COPY cp TO STDOUT; SELECT 2")], 1],
  [[fcall(INT4ABS, ["-5"])], 1],
  [
    [
      encodeFunctionCall({
        functionOid: INT4DIV,
        argFormats: [0],
        args: [Buffer.from("1"), Buffer.from("0")],
        resultFormat: 0,
      }),
    ],
    1,
  ],
  [[msg.parse("", "COPY cp TO STDOUT"), msg.bind(""), msg.execute(""), msg.sync()], 1],
];

/** Per step: reply types, then the SQLSTATE if any. */
const run = async (s: PgSession): Promise<string[]> => {
  const out: string[] = [];
  try {
    for (const [step, syncs] of STEPS) {
      const r = await s.exchange(step, syncs, 5000);
      const e = r.find((m) => m.type === "E");
      out.push(`${typesOf(r)}${e === undefined ? "" : ` ${errorOf(e).code}`}`);
    }
    // A pg_sleep cancelled by a CancelRequest on another connection.
    s.send(msg.query("SELECT pg_sleep(5), 'sleep-marker'"));
    await new Promise((r) => setTimeout(r, 300));
    await s.cancel();
    const r = await s.untilReady(5000);
    const e = r.find((m) => m.type === "E");
    out.push(`${typesOf(r)}${e === undefined ? "" : ` ${errorOf(e).code}`}`);
  } finally {
    s.terminate();
  }
  return out;
};

for (const mode of ["session", "transaction"] as const)
  describe(`${mode} mode: simple queries, COPY, FunctionCall and cancel recorded as PostgreSQL answered them`, () => {
    let proxy: AuditedProxy;
    let records: Rec[];
    let directView: string[] = [];
    let proxiedView: string[] = [];

    beforeAll(async () => {
      proxy = await auditedProxy({ statements: "full" }, { pool: { mode, size: 2 } });
      directView = await run(await direct());
      proxiedView = await run(await viaProxy(proxy));
      records = await closeAndRead(proxy);
    }, 30_000);
    afterAll(async () => {
      await proxy?.close().catch(() => {});
    });

    it("the client sees PostgreSQL's answers", () => {
      expect(directView).toEqual([
        "T D C T D C E Z 22012",
        "I Z",
        "I Z",
        "C Z",
        "G C Z T D C Z",
        "G E Z 57014",
        "G E Z 22P02",
        "H d d c C Z",
        "T D C H d d c C T D C Z",
        "V Z",
        "E Z 22012",
        "1 2 H d d c C Z",
        "T E Z 57014",
      ]);
      expect(proxiedView).toEqual(directView);
    });

    it("one record per request, in order, with the error and last command tag the client got", () => {
      const st = statementsOf(records, "multi-marker");
      expect(brief(st)).toEqual([
        "Query:error:22012:SELECT 1",
        "Query:ok:-:-",
        "Query:ok:-:-",
        "Query:ok:-:CREATE TABLE",
        "Copy:ok:-:COPY 2",
        "Query:ok:-:SELECT 1",
        "Copy:cancelled:57014:-",
        "Copy:error:22P02:-",
        "Copy:ok:-:COPY 2",
        "Copy:ok:-:SELECT 1",
        "FunctionCall:ok:-:-",
        "FunctionCall:error:22012:-",
        "Parse:ok:-:-",
        "Bind:ok:-:-",
        "Execute:ok:-:COPY 2",
        "Query:cancelled:57014:-",
      ]);
      expect(st.find((r) => r.message === "Copy")).toMatchObject({ rows: 2 });
    });
  });
