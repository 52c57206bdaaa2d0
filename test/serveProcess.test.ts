import type { ChildProcess } from "node:child_process";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { freePort } from "../src/adapters/embeddedPostgres.ts";
import { postgresInfo } from "./support/postgres.ts";
import { runClient } from "./support/run.ts";
import { serveProcess } from "./support/serve.ts";

const serve = serveProcess;

const waitFor = async (f: () => boolean, ms: number, what: string) => {
  const start = Date.now();
  while (!f()) {
    if (Date.now() - start > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
};

const stop = (child: ChildProcess) => {
  if (child.exitCode === null) child.kill("SIGKILL");
};

describe("pgwarden serve as a process", () => {
  it("drains on SIGTERM: idle sessions get 57P01 at the deadline, then it exits 0", async () => {
    const info = postgresInfo();
    const dir = await mkdtemp(join(tmpdir(), "pgw-serve-"));
    const port = await freePort();
    const config = join(dir, "pgwarden.yaml");
    await writeFile(
      config,
      `listen: { port: ${port} }\nupstream: { host: ${info.host}, port: ${info.port}, user: u_trust }\n` +
        'access: { grants: [{ identity: "*", databases: ["*"] }] }\n' +
        "auth: { method: trust }\nshutdown: { drainTimeoutMs: 800 }\nlog: { level: info }\n",
    );
    const p = serve(["--config", config]);
    try {
      await waitFor(() => p.out.stdout.includes("listening"), 20_000, "the listening line");
      expect(p.out.stderr).toContain("WARNING: client authentication is 'trust'");
      const c = new pg.Client({ host: "127.0.0.1", port, user: "anyone", database: "postgres" });
      await c.connect();
      expect((await c.query("SELECT current_user AS u")).rows).toEqual([{ u: "u_trust" }]);
      const ended = new Promise<{ code?: string }>((resolve) =>
        c.on("error", (e) => resolve(e as { code?: string })),
      );
      p.child.kill("SIGTERM");
      expect((await ended).code).toBe("57P01");
      expect(await p.exited).toBe(0);
      expect(p.out.stderr).toContain('"msg":"draining');
    } finally {
      stop(p.child);
    }
  }, 60_000);

  it("without --config starts an embedded PostgreSQL, prints a psql line that works, and stops both on SIGINT", async () => {
    const dir = await mkdtemp(join(tmpdir(), "pgw-embedded-"));
    const port = await freePort();
    const p = serve(["--data-dir", dir, "--listen", `127.0.0.1:${port}`, "--log-level", "warn"]);
    try {
      await waitFor(() => p.out.stdout.includes('psql "'), 90_000, "the psql line");
      const url = /psql "([^"]+)"/.exec(p.out.stdout)![1]!;
      // TLS required, and the line makes the client verify pgwarden against the local CA.
      expect(url).toMatch(
        new RegExp(
          `^postgresql://app:[^@]+@127\\.0\\.0\\.1:${port}/app\\?sslmode=verify-full&sslrootcert=[^&]+$`,
        ),
      );
      const ca = decodeURIComponent(/sslrootcert=([^&]+)/.exec(url)![1]!);
      expect(ca).toBe(join(dir, "tls", "ca.crt"));
      // psql itself, with the printed line as it stands.
      const viaPsql = await runClient("psql", ["-X", "-At", "-c", "select 'verified'", url], {
        env: { PGPASSWORD: "" },
      });
      expect(viaPsql.stderr).toBe("");
      expect(viaPsql.stdout.trim()).toBe("verified");
      // Plaintext is refused before any credential is read.
      const plain = new pg.Client({ connectionString: url.replace(/\?.*$/, "?sslmode=disable") });
      await expect(plain.connect()).rejects.toMatchObject({ code: "28000" });
      // node-postgres with the same CA.
      const base = url.replace(/\?.*$/, "");
      const tlsOptions = { ssl: { ca: await readFile(ca, "utf8"), servername: "localhost" } };
      const c = new pg.Client({ connectionString: base, ...tlsOptions });
      await c.connect();
      expect((await c.query("SELECT 6 * 7 AS n")).rows).toEqual([{ n: 42 }]);
      // The embedded default is no superuser: it owns its database and nothing more.
      const me = await c.query(
        "SELECT current_user AS u, rolsuper, rolreplication, rolcreaterole, (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()) AS owner FROM pg_roles WHERE rolname = current_user",
      );
      expect(me.rows).toEqual([
        { u: "app", rolsuper: false, rolreplication: false, rolcreaterole: false, owner: "app" },
      ]);
      // Other databases are not granted to the identity.
      const other = new pg.Client({ connectionString: base.replace(/\/app$/, "/postgres"), ...tlsOptions });
      await expect(other.connect()).rejects.toMatchObject({ code: "28000" });
      await c.end();
      const wrong = new pg.Client({ connectionString: base.replace(/:[^:@]+@/, ":wrong@"), ...tlsOptions });
      await expect(wrong.connect()).rejects.toMatchObject({ code: "28P01" });
      p.child.kill("SIGINT");
      expect(await p.exited).toBe(0);
      expect(p.out.stderr).toContain("embedded PostgreSQL stopped");
    } finally {
      stop(p.child);
    }
  }, 120_000);
});
