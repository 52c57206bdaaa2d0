// --memory: hold N idle (authenticated, never queried) connections through a target and
// report how much its resident memory grew per connection.

import pg from "pg";
import { table } from "./report.ts";
import { TARGET_LABELS, type Target, type TargetName } from "./targets.ts";
import { sleep, treeRssKiB } from "./util.ts";

export interface MemoryResult {
  readonly target: TargetName;
  readonly requested: number;
  readonly opened: number;
  readonly baselineKiB: number;
  readonly loadedKiB: number;
  readonly perConnectionKiB: number | undefined;
  readonly openSeconds: number;
  readonly error: string | undefined;
}

const CONCURRENCY = 50;
const WARM_CONNECTIONS = 20;

function client(target: Target): pg.Client {
  const c = new pg.Client({
    host: target.host,
    port: target.port,
    user: target.user,
    password: target.password,
    database: "postgres",
    connectionTimeoutMillis: 15_000,
  });
  c.on("error", () => {});
  return c;
}

/** Opens `count` connections, at most CONCURRENCY at a time; stops at the first failure. */
async function openMany(target: Target, count: number): Promise<{ clients: pg.Client[]; error?: string }> {
  const clients: pg.Client[] = [];
  let next = 0;
  let error: string | undefined;
  const worker = async () => {
    while (error === undefined && next < count) {
      next++;
      const c = client(target);
      try {
        await c.connect();
        clients.push(c);
      } catch (err) {
        error ??= err instanceof Error ? err.message : String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, count) }, worker));
  return error === undefined ? { clients } : { clients, error };
}

async function closeAll(clients: readonly pg.Client[]): Promise<void> {
  for (let i = 0; i < clients.length; i += CONCURRENCY) {
    await Promise.all(clients.slice(i, i + CONCURRENCY).map((c) => c.end().catch(() => {})));
  }
}

export async function measureMemory(target: Target, count: number): Promise<MemoryResult> {
  const pid = target.pid;
  if (pid === undefined) throw new Error(`${target.name}: no process to measure`);
  // Warm up code paths (and any lazily created upstream state) before the baseline.
  const warm = await openMany(target, WARM_CONNECTIONS);
  await closeAll(warm.clients);
  await sleep(1000);
  const baselineKiB = treeRssKiB(pid);
  const started = performance.now();
  const { clients, error } = await openMany(target, count);
  const openSeconds = (performance.now() - started) / 1000;
  await sleep(1000);
  const loadedKiB = treeRssKiB(pid);
  await closeAll(clients);
  await sleep(500);
  return {
    target: target.name,
    requested: count,
    opened: clients.length,
    baselineKiB,
    loadedKiB,
    perConnectionKiB: clients.length > 0 ? (loadedKiB - baselineKiB) / clients.length : undefined,
    openSeconds,
    error: warm.error ?? error,
  };
}

export function formatMemory(results: readonly MemoryResult[]): string {
  const headers = ["target", "connections", "RSS before MiB", "RSS after MiB", "KiB / connection", "open s"];
  const rows = results.map((r) => [
    TARGET_LABELS[r.target],
    r.opened === r.requested ? String(r.opened) : `${r.opened}/${r.requested}`,
    (r.baselineKiB / 1024).toFixed(1),
    (r.loadedKiB / 1024).toFixed(1),
    r.perConnectionKiB === undefined ? "—" : r.perConnectionKiB.toFixed(2),
    r.openSeconds.toFixed(2),
  ]);
  const errors = results.filter((r) => r.error).map((r) => `${TARGET_LABELS[r.target]}: ${r.error}`);
  return [table(headers, rows), ...errors].join("\n");
}
