import { execFileSync } from "node:child_process";
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import {
  findExecutable,
  freePort,
  spawnChild,
  stopChild,
  unprivilegedIds,
  waitForPort,
} from "../../bench/util.ts";
import { postgresInfo } from "./postgres.ts";

/**
 * A real PgBouncer in front of the test PostgreSQL, as the reference the pooling tests are checked
 * against (`PGW_TXPOOL_TARGET=pgbouncer`). As root it runs as the `postgres` user, which refuses
 * nothing PgBouncer needs and which the global setup's embedded PostgreSQL created.
 */

export interface PgbouncerUser {
  readonly name: string;
  /** Used for the client's login (auth_type) and for PgBouncer's own login to PostgreSQL. */
  readonly password: string;
}

export interface PgbouncerOptions {
  readonly users: readonly PgbouncerUser[];
  /** `[pgbouncer]` settings beyond the fixed ones (listen address, auth, logging). */
  readonly settings: Readonly<Record<string, string | number>>;
  readonly authType?: "trust" | "scram-sha-256" | "plain";
}

export interface RunningPgbouncer {
  readonly port: number;
  readonly pid: number;
  /** e.g. [1, 18, 0] */
  readonly version: readonly number[];
  output(): string;
  stop(): Promise<void>;
}

export const pgbouncerBinary = (): string | undefined => findExecutable("pgbouncer");

/** PgBouncer's version as numbers, or undefined when it is not installed. */
export const pgbouncerVersion = (): number[] | undefined => {
  const binary = pgbouncerBinary();
  if (binary === undefined) return undefined;
  const text = execFileSync(binary, ["--version"], { encoding: "utf8" });
  const m = /PgBouncer (\d+)\.(\d+)\.(\d+)/.exec(text);
  return m === null ? undefined : [Number(m[1]), Number(m[2]), Number(m[3])];
};

const quote = (v: string) => `"${v.replaceAll('"', '""')}"`;

export const startPgbouncer = async (options: PgbouncerOptions): Promise<RunningPgbouncer> => {
  const binary = pgbouncerBinary();
  const version = pgbouncerVersion();
  if (binary === undefined || version === undefined)
    throw new Error("PgBouncer not installed: apt-get install pgbouncer");
  const ids = userInfo().uid === 0 ? unprivilegedIds("postgres") : undefined;
  const dir = mkdtempSync(join(tmpdir(), "pgw-pgbouncer-"));
  chmodSync(dir, 0o700);
  const port = await freePort();
  const pg = postgresInfo();
  const userlist = join(dir, "userlist.txt");
  const ini = join(dir, "pgbouncer.ini");
  writeFileSync(userlist, options.users.map((u) => `${quote(u.name)} ${quote(u.password)}\n`).join(""), {
    mode: 0o600,
  });
  const settings: Record<string, string | number> = {
    listen_addr: "127.0.0.1",
    listen_port: port,
    unix_socket_dir: "",
    auth_type: options.authType ?? "trust",
    auth_file: userlist,
    server_tls_sslmode: "disable",
    ignore_startup_parameters: "extra_float_digits,options",
    log_connections: 0,
    log_disconnections: 0,
    ...options.settings,
  };
  writeFileSync(
    ini,
    [
      "[databases]",
      `* = host=${pg.host} port=${pg.port}`,
      "[pgbouncer]",
      ...Object.entries(settings).map(([k, v]) => `${k} = ${v}`),
      "",
    ].join("\n"),
    { mode: 0o600 },
  );
  if (ids !== undefined) for (const f of [dir, userlist, ini]) chownSync(f, ids.uid, ids.gid);
  // The soft open-files limit is raised to the hard one for the 10,000-client test.
  const child = spawnChild(
    "/bin/sh",
    ["-c", 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"', binary, ini],
    { cwd: dir, ...(ids ?? {}) },
  );
  const problem = await waitForPort("127.0.0.1", port, 15_000, child.process);
  const stop = async () => {
    await stopChild(child);
    rmSync(dir, { recursive: true, force: true });
  };
  if (problem !== undefined) {
    await stop();
    throw new Error(`PgBouncer ${problem}:\n${child.output()}`);
  }
  return { port, pid: child.process.pid!, version, output: child.output, stop };
};
