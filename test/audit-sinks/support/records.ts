import { randomUUID } from "node:crypto";
import type { AuditLine } from "../../../src/adapters/audit/AuditSink.ts";

const samples = [
  "SELECT 1",
  "INSERT INTO t VALUES ($1, 'naïve café ☕')",
  'SELECT "quoted]ident" FROM s."t\\x"',
  "COPY big FROM STDIN -- 😀 𝄞",
];

/** Record-like lines: JSON with seq and id, varied content, one large record every `bigEvery`. */
export const records = (from: number, n: number, bigEvery = 0): AuditLine[] =>
  Array.from({ length: n }, (_, i) => {
    const seq = from + i;
    const id = randomUUID();
    const sql = bigEvery > 0 && seq % bigEvery === 0 ? "x".repeat(20_000) : samples[seq % samples.length];
    return {
      seq,
      id,
      text: JSON.stringify({ v: 1, seq, id, kind: "Query", sql, at: new Date(seq).toISOString() }),
    };
  });
