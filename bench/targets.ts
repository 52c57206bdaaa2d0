// The things pgbench is pointed at: PostgreSQL itself, the bare Node relay, and pgwarden.
// (PgBouncer lives in pgbouncer.ts.) Every proxy runs as its own child process with a known pid,
// so its CPU time and memory can be read from /proc without counting the benchmark itself.

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import type { Postgres } from "./postgres.ts";
import { type Certificate, type ClientTls, PINNED_TLS, TLS_SUPPORTED } from "./tls.ts";
import { type Child, freePort, log, spawnChild, stopChild, waitForPort } from "./util.ts";

export const TARGET_NAMES = [
  "direct",
  "pgwarden",
  "pgwarden-audit",
  "pgwarden-audit-sinks",
  "relay",
  "pgbouncer",
] as const;
export type TargetName = (typeof TARGET_NAMES)[number];

export const TARGET_LABELS: Record<TargetName, string> = {
  direct: "direct",
  pgwarden: "pgwarden",
  "pgwarden-audit": "pgwarden+audit",
  "pgwarden-audit-sinks": "pgwarden+audit+sinks",
  relay: "bare relay",
  pgbouncer: "PgBouncer",
};

export const POOL_MODES = ["session", "transaction", "statement"] as const;
export type PoolMode = (typeof POOL_MODES)[number];

export interface Pool {
  readonly mode: PoolMode;
  readonly size: number;
}

/** PgBouncer's pool when no pooled mode is asked for: session mode, large enough for pgbench. */
export const sessionPool: Pool = { mode: "session", size: 100 };

export interface Target {
  readonly name: TargetName;
  readonly host: string;
  readonly port: number;
  readonly user: string;
  /** Password the client must present, when the target asks for one. */
  readonly password: string | undefined;
  /** The proxy's own process, sampled for CPU and memory (undefined for direct). */
  readonly pid: number | undefined;
  /** Whether idle clients can outnumber PostgreSQL backends (a server connection is shared). */
  readonly pools: boolean;
  readonly clientTls: ClientTls;
  stop(): Promise<void>;
}

/** How the proxies are started; the same for every target in one run. */
export interface ProxyOptions {
  readonly maxClients: number;
  /** A pooled mode (--pool-mode); undefined means one server connection per client. */
  readonly pool: Pool | undefined;
  /** Set when pgbench runs with client TLS (--client-tls). */
  readonly tls: Certificate | undefined;
  /** Node flags for pgwarden only (--node-flags), after the shipped ones (later flags win). */
  readonly nodeFlags: readonly string[];
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
    pools: false,
    clientTls: server.tls ? TLS_SUPPORTED : { supported: false, reason: "PostgreSQL started without ssl" },
    stop: async () => {},
  };
}

function childTarget(
  fields: Pick<Target, "name" | "port" | "user" | "password" | "pools" | "clientTls">,
  child: Child,
  graceMs?: number,
): Target {
  return { ...fields, host: "127.0.0.1", pid: child.process.pid, stop: () => stopChild(child, graceMs) };
}

async function whenReady(name: TargetName, child: Child, port: number): Promise<string | undefined> {
  const problem = await waitForPort("127.0.0.1", port, READY_TIMEOUT_MS, child.process);
  if (problem === undefined) return undefined;
  await stopChild(child);
  const output = child.output().trim();
  return `${name} ${problem}${output ? `:\n${output.split("\n").slice(-15).join("\n")}` : ""}`;
}

export async function startRelay(server: Postgres, options: ProxyOptions): Promise<Started> {
  const port = await freePort();
  const script = path.join(REPO_ROOT, "bench", "relay.ts");
  const tlsArgs = options.tls ? ["--tls-cert", options.tls.certFile, "--tls-key", options.tls.keyFile] : [];
  const child = spawnChild(process.execPath, [
    script,
    "--port",
    String(port),
    "--upstream-host",
    server.host,
    "--upstream-port",
    String(server.port),
    ...tlsArgs,
  ]);
  const problem = await whenReady("relay", child, port);
  if (problem) return { ok: false, reason: problem };
  const fields = {
    name: "relay",
    port,
    user: server.user,
    password: server.password,
    pools: false,
    clientTls: TLS_SUPPORTED,
  } as const;
  return { ok: true, target: childTarget(fields, child) };
}

// What `npm start` and the installed `pgwarden` run: the entry with the compile cache.
export const PGWARDEN_ENTRY = path.join(REPO_ROOT, "bin", "pgwarden.js");

/** The node flags of a `#!/usr/bin/env -S node FLAGS` line; none for any other first line. */
export function shebangFlags(firstLine: string): string[] {
  const m = /^#!\S*env\s+-S\s+node((?:\s+--\S+)*)\s*$/.exec(firstLine);
  return m === null ? [] : m[1]!.trim().split(/\s+/).filter(Boolean);
}

/**
 * The flags pgwarden ships with (the entry's shebang, which `npm start` repeats): the bench
 * starts it with `node FLAGS entry`, as the installed command runs, so its figures are the shipped ones.
 */
export const SHIPPED_NODE_FLAGS: readonly string[] = existsSync(PGWARDEN_ENTRY)
  ? shebangFlags(readFileSync(PGWARDEN_ENTRY, "utf8").split("\n", 1)[0]!)
  : [];

/** The YAML pgwarden is started with; `pool` only when a pooled mode was asked for. */
export function pgwardenConfig(
  server: Postgres,
  port: number,
  options: ProxyOptions,
  audit?: Record<string, unknown>,
): Record<string, unknown> {
  return {
    listen: { host: "127.0.0.1", port },
    upstream: { host: server.host, port: server.port, user: server.user, password: server.password },
    access: { grants: [{ identity: "*", databases: ["*"] }] },
    auth: { method: "trust" },
    limits: { maxClientConnections: options.maxClients },
    log: { level: "warn" },
    ...(options.tls
      ? {
          tls: {
            mode: "require",
            cert: options.tls.certFile,
            key: options.tls.keyFile,
            minVersion: PINNED_TLS.version,
            ciphersuites: PINNED_TLS.ciphersuite,
            groups: PINNED_TLS.group,
          },
        }
      : {}),
    // Session mode holds a server connection per client: size the pool for every client the run opens.
    pool: options.pool
      ? { mode: options.pool.mode, size: options.pool.size }
      : { size: Math.max(100, options.maxClients) },
    ...(audit === undefined ? {} : { audit }),
  };
}

export async function startPgwarden(
  server: Postgres,
  workDir: string,
  options: ProxyOptions,
  entry = PGWARDEN_ENTRY,
  audit?: { readonly name: TargetName; readonly config: Record<string, unknown> },
): Promise<Started> {
  if (!existsSync(entry)) return { ok: false, reason: `pgwarden not built yet (${entry} does not exist)` };
  const port = await freePort();
  const configFile = path.join(workDir, `pgwarden-${port}.yaml`);
  writeFileSync(configFile, stringify(pgwardenConfig(server, port, options, audit?.config)), { mode: 0o600 });
  const flags = [...SHIPPED_NODE_FLAGS, ...options.nodeFlags];
  const child = spawnChild(process.execPath, [...flags, entry, "serve", "--config", configFile], {
    cwd: REPO_ROOT,
  });
  const problem = await whenReady(audit?.name ?? "pgwarden", child, port);
  if (problem) return { ok: false, reason: problem };
  const fields = {
    name: audit?.name ?? "pgwarden",
    port,
    user: server.user,
    password: undefined,
    pools: options.pool !== undefined,
    clientTls: TLS_SUPPORTED,
  } as const;
  // An audited pgwarden drains its backlog and seals its log on SIGTERM: give it the time its
  // drainTimeoutMs allows, so the verifier reads a complete log and the drain time is reported.
  const drainMs = audit === undefined ? undefined : Number(audit.config.drainTimeoutMs ?? 30_000) + 5_000;
  const target = childTarget(fields, child, drainMs);
  if (drainMs === undefined) return { ok: true, target };
  const stop = async () => {
    const t0 = performance.now();
    await target.stop();
    const seconds = (performance.now() - t0) / 1000;
    log(`${fields.name} drained its audit backlog, sealed its log and stopped in ${seconds.toFixed(1)} s`);
  };
  return { ok: true, target: { ...target, stop } };
}
