import { loadSqlParser } from "../src/sql/parser.ts";
import { classifySessionEffects, mayHaveSessionEffects } from "../src/sql/sessionEffects.ts";

/** Microseconds per call of each parser entry point, for an OLTP statement and a 10 KB one. */

const SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = 81244;";
const OLTP = "UPDATE pgbench_accounts SET abalance = abalance + -4211 WHERE aid = 81244;";
const rows = Array.from({ length: 400 }, (_, i) => `(${i}, 'name-${i}', ${i * 1.5})`);
const BIG =
  `INSERT INTO items (id, name, price) VALUES ${rows.join(", ")} ON CONFLICT (id) DO UPDATE SET price = excluded.price`.slice(
    0,
    10_240,
  );
const BIG_SQL = BIG.slice(0, BIG.lastIndexOf("),") + 1);

const timeIt = (f: () => unknown, minMillis = 800): number => {
  for (let i = 0; i < 50; i++) f();
  let n = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0n;
  while (elapsed < BigInt(minMillis) * 1_000_000n) {
    for (let i = 0; i < 20; i++) f();
    n += 20;
    elapsed = process.hrtime.bigint() - start;
  }
  return Number(elapsed) / 1000 / n;
};

const parser = await loadSqlParser();
const results: Record<string, Record<string, string>> = {};
for (const [label, sql] of [
  ["oltp select", SELECT],
  ["oltp update", OLTP],
  [`${(Buffer.byteLength(BIG_SQL) / 1024).toFixed(1)} KB`, BIG_SQL],
] as const) {
  const ok = parser.parse(sql);
  if (!ok.ok) throw new Error(ok.error.message);
  results[label] = Object.fromEntries(
    (
      [
        ["parse", () => parser.parse(sql)],
        ["normalize", () => parser.normalize(sql)],
        ["fingerprint", () => parser.fingerprint(sql)],
        ["sessionEffects", () => classifySessionEffects(parser, sql)],
        ["preFilter", () => mayHaveSessionEffects(sql)],
      ] as const
    ).map(([name, f]) => [name, `${timeIt(f).toFixed(1)} µs`]),
  );
}
console.log(
  `libpg-query grammar ${parser.parserVersion.text} (${parser.parserVersion.num}), node ${process.version}`,
);
console.table(results);
