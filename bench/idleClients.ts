// Load generator for --memory, run as its own process so that the sockets it holds count against
// its own open-file limit, not the benchmark's or the proxy's. It opens --count connections
// (startup and authentication completed, no query), reports one JSON line, holds them until
// SIGTERM, closes them and reports again.
//
//   node bench/idleClients.ts --host H --port P --user U --count N [--concurrency C]
//   (the password, if any, comes from the BENCH_IDLE_PASSWORD environment variable)

import { parseArgs } from "node:util";
import pg from "pg";

/** One line on stdout per phase; the parent parses these. */
export type IdleClientsReport =
  | { readonly event: "opened"; readonly opened: number; readonly seconds: number; readonly error?: string }
  | { readonly event: "closed"; readonly closed: number };

export const IDLE_PASSWORD_ENV = "BENCH_IDLE_PASSWORD";

function report(line: IdleClientsReport): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string" },
      user: { type: "string" },
      database: { type: "string", default: "postgres" },
      count: { type: "string" },
      concurrency: { type: "string", default: "50" },
    },
  });
  const port = Number(values.port);
  const count = Number(values.count);
  const concurrency = Number(values.concurrency);
  if (![port, count, concurrency].every(Number.isInteger) || values.user === undefined) {
    process.stderr.write("usage: idleClients.ts --port P --user U --count N [--concurrency C]\n");
    process.exit(2);
  }
  const password = process.env[IDLE_PASSWORD_ENV];
  const clients: pg.Client[] = [];
  let error: string | undefined;
  let next = 0;
  const started = performance.now();
  const worker = async () => {
    while (error === undefined && next < count) {
      next++;
      const c = new pg.Client({
        host: values.host,
        port,
        user: values.user,
        password,
        database: values.database,
        connectionTimeoutMillis: 30_000,
      });
      c.on("error", () => {});
      try {
        await c.connect();
        clients.push(c);
      } catch (err) {
        error ??= err instanceof Error ? err.message : String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  const seconds = (performance.now() - started) / 1000;
  report({ event: "opened", opened: clients.length, seconds, ...(error === undefined ? {} : { error }) });

  const close = async () => {
    for (let i = 0; i < clients.length; i += concurrency) {
      await Promise.all(clients.slice(i, i + concurrency).map((c) => c.end().catch(() => {})));
    }
    report({ event: "closed", closed: clients.length });
    process.exit(0);
  };
  process.once("SIGTERM", () => void close());
  process.once("SIGINT", () => void close());
  // Keep the process alive while the connections sit idle (pg's sockets alone would too).
  setInterval(() => {}, 1 << 30);
}

if (import.meta.main) void main();
