// The things pgbench is pointed at: PostgreSQL itself, the bare Node relay, and pgwarden.
// (PgBouncer lives in pgbouncer.ts.)

import { existsSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import type { Postgres } from "./postgres.ts";
import { type Child, freePort, spawnChild, stopChild, waitForPort } from "./util.ts";

export const TARGET_NAMES = ["direct", "pgwarden", "relay", "pgbouncer"] as const;
export type TargetName = (typeof TARGET_NAMES)[number];

export const TARGET_LABELS: Record<TargetName, string> = {
  direct: "direct",
  pgwarden: "pgwarden",
  relay: "bare relay",
  pgbouncer: "PgBouncer",
};

export interface Target {
  readonly name: TargetName;
  readonly host: string;
  readonly port: number;
  readonly user: string;
  /** Password the client must present, when the target asks for one. */
  readonly password: string | undefined;
  /** Process whose memory the --memory mode samples (undefined for direct). */
  readonly pid: number | undefined;
  stop(): Promise<void>;
}

/** Outcome of trying to start a target: running, or skipped with a reason. */
export type Started =
  | { readonly ok: true; readonly target: Target }
  | { readonly ok: false; readonly reason: string };

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const READY_TIMEOUT_MS = 15_000;

export function directTarget(server: Postgres): Target {
  return {
    name: "direct",
    host: server.host,
    port: server.port,
    user: server.user,
    password: server.password,
    pid: undefined,
    stop: async () => {},
  };
}

function childTarget(name: TargetName, child: Child, port: number, user: string, password?: string): Target {
  return {
    name,
    host: "127.0.0.1",
    port,
    user,
    password,
    pid: child.process.pid,
    stop: () => stopChild(child),
  };
}

async function whenReady(name: TargetName, child: Child, port: number): Promise<string | undefined> {
  const problem = await waitForPort("127.0.0.1", port, READY_TIMEOUT_MS, child.process);
  if (problem === undefined) return undefined;
  await stopChild(child);
  const output = child.output().trim();
  return `${name} ${problem}${output ? `:\n${output.split("\n").slice(-15).join("\n")}` : ""}`;
}

export async function startRelay(server: Postgres): Promise<Started> {
  const port = await freePort();
  const script = path.join(REPO_ROOT, "bench", "relay.ts");
  const child = spawnChild(process.execPath, [
    script,
    "--port",
    String(port),
    "--upstream-host",
    server.host,
    "--upstream-port",
    String(server.port),
  ]);
  const problem = await whenReady("relay", child, port);
  if (problem) return { ok: false, reason: problem };
  return { ok: true, target: childTarget("relay", child, port, server.user, server.password) };
}

export const PGWARDEN_ENTRY = path.join(REPO_ROOT, "src", "cli", "main.ts");

export async function startPgwarden(
  server: Postgres,
  workDir: string,
  entry = PGWARDEN_ENTRY,
): Promise<Started> {
  if (!existsSync(entry)) return { ok: false, reason: `pgwarden not built yet (${entry} does not exist)` };
  const port = await freePort();
  const configFile = path.join(workDir, "pgwarden.yaml");
  const config = {
    listen: { host: "127.0.0.1", port },
    upstream: { host: server.host, port: server.port, user: server.user, password: server.password },
    auth: { method: "trust" },
    log: { level: "warn" },
  };
  writeFileSync(configFile, stringify(config), { mode: 0o600 });
  const child = spawnChild(process.execPath, [entry, "serve", "--config", configFile], { cwd: REPO_ROOT });
  const problem = await whenReady("pgwarden", child, port);
  if (problem) return { ok: false, reason: problem };
  return { ok: true, target: childTarget("pgwarden", child, port, server.user) };
}
