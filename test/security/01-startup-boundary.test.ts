import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeQuery } from "../../src/protocol/frontend.ts";
import { boundary, rawStartup } from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { runClient } from "../support/run.ts";
import { WireClient } from "../support/wire.ts";

/**
 * Finding 1: startup parameters went upstream unfiltered, `replication` and any database were
 * let through, and the upstream role fell back to the client's own name. Only an allowlist may
 * pass, `options` is refused or filtered, and grants decide database and role.
 */

const pgi = () => postgresInfo();

const grantAlice = () => ({
  grants: [{ identity: "alice", databases: [pgi().appDatabase], role: pgi().appRole }],
});

const connectError = async (options: pg.ClientConfig): Promise<{ code?: string; message: string }> => {
  const c = client(options);
  try {
    await c.connect();
  } catch (e) {
    return e as { code?: string; message: string };
  }
  await c.end();
  throw new Error("expected the connection to be refused");
};

/** A pg client whose late errors (a test failing half-way) cannot crash the worker. */
const client = (options: pg.ClientConfig): pg.Client => {
  const c = new pg.Client(options);
  c.on("error", () => {});
  return c;
};

/** A raw connection with exactly these startup parameters, once ReadyForQuery arrived. */
const rawSession = async (port: number, params: [string, string][]): Promise<WireClient> => {
  const c = await WireClient.open(port);
  c.send(rawStartup(params));
  await c.until((x) => x.messages().some((m) => m.type === "Z" || m.type === "E"), 5000, "ReadyForQuery");
  const code = c.errorCode();
  if (code !== undefined) throw new Error(`startup refused with ${code}`);
  return c;
};

/** The first column of the first row of a simple query. */
const queryValue = async (c: WireClient, sql: string): Promise<string> => {
  const offset = c.received.length;
  c.send(encodeQuery(sql));
  await c.until((x) => x.messages(offset).some((m) => m.type === "Z"), 5000, `result of ${sql}`);
  const err = c.errorCode(offset);
  if (err !== undefined) throw new Error(`${sql} failed with ${err}`);
  const row = c.messages(offset).find((m) => m.type === "D")!.msg;
  return row.toString("utf8", 11, 11 + row.readInt32BE(7));
};

describe("startup boundary", () => {
  let refuse: TestProxy;
  let filter: TestProxy;
  beforeAll(async () => {
    refuse = await startProxy({ ...boundary(), access: grantAlice(), auth: { method: "trust" } });
    filter = await startProxy({
      ...boundary(),
      startup: { parameters: ["application_name", "search_path"], options: "filter" },
      access: grantAlice(),
      auth: { method: "trust" },
    });
  });
  afterAll(async () => {
    await refuse?.close();
    await filter?.close();
  });

  const alice = (p: TestProxy) => ({
    host: "127.0.0.1",
    port: p.port,
    user: "alice",
    database: pgi().appDatabase,
  });

  it("refuses `options` with 28000 when startup.options is refuse (pg and psql)", async () => {
    const e = await connectError({ ...alice(refuse), options: "-c session_replication_role=replica" });
    expect(e.code).toBe("28000");
    const r = await runClient("psql", [
      `host=127.0.0.1 port=${refuse.port} user=alice dbname=${pgi().appDatabase} options='-c session_replication_role=replica -c log_statement=none'`,
      "-XAtc",
      "SHOW session_replication_role",
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stdout).not.toContain("replica");
  });

  it("with startup.options filter keeps only allowlisted -c settings", async () => {
    const r = await runClient("psql", [
      `host=127.0.0.1 port=${filter.port} user=alice dbname=${pgi().appDatabase} options='-c search_path=x -c session_replication_role=replica'`,
      "-XAtc",
      "SHOW session_replication_role",
      "-c",
      "SHOW search_path",
    ]);
    expect(r.stderr).toBe("");
    expect(r.stdout.trim().split("\n")).toEqual(["origin", "x"]);
  });

  it("does not forward a non-allowlisted top-level parameter, whatever its case", async () => {
    for (const name of ["session_replication_role", "SeSsIoN_rEpLiCaTiOn_RoLe"]) {
      const c = await rawSession(refuse.port, [
        ["user", "alice"],
        ["database", pgi().appDatabase],
        [name, "replica"],
        ["statement_timeout", "1"],
      ]);
      expect(await queryValue(c, "SHOW session_replication_role")).toBe("origin");
      expect(await queryValue(c, "SHOW statement_timeout")).toBe("0");
      c.close();
    }
  });

  it("forwards an allowlisted parameter whatever the case of its name", async () => {
    const c = await rawSession(refuse.port, [
      ["user", "alice"],
      ["database", pgi().appDatabase],
      ["APPLICATION_NAME", "boundary-check"],
    ]);
    expect(await queryValue(c, "SHOW application_name")).toBe("boundary-check");
    c.close();
  });

  it("refuses replication=database with 28000, even when the granted role could replicate", async () => {
    const i = pgi();
    // A superuser grant: PostgreSQL itself would open the replication connection.
    const su = await startProxy({
      ...boundary(),
      access: { grants: [{ identity: "alice", databases: ["*"], role: i.user }] },
      upstream: { user: i.user, password: i.password },
      auth: { method: "trust" },
    });
    try {
      const e = await connectError({ ...alice(su), replication: "database" } as pg.ClientConfig);
      expect(e.code).toBe("28000");
    } finally {
      await su.close();
    }
  });

  it("refuses a database the identity is not granted with 28000 naming neither role nor upstream", async () => {
    const i = pgi();
    for (const [user, database] of [
      ["alice", "template1"],
      ["alice", "postgres"],
      ["mallory", i.appDatabase],
    ]) {
      const e = await connectError({ host: "127.0.0.1", port: refuse.port, user, database });
      expect(e.code).toBe("28000");
      expect(e.message).not.toContain(i.appRole);
      expect(e.message).not.toContain(i.host);
      expect(e.message).not.toContain(String(i.port));
    }
  });

  it("logs in as the grant's role, which is no superuser", async () => {
    const i = pgi();
    // upstream.user differs from the grant's role: the grant must win.
    const p = await startProxy({
      ...boundary(),
      access: grantAlice(),
      upstream: { user: "u_scram", password: i.rolePassword },
      auth: { method: "trust" },
    });
    try {
      const c = client(alice(p));
      await c.connect();
      const { rows } = await c.query(
        "SELECT current_user AS u, session_user AS s, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS su",
      );
      await c.end();
      expect(rows).toEqual([{ u: i.appRole, s: i.appRole, su: false }]);
    } finally {
      await p.close();
    }
  });

  it("uses the client's own name upstream only when fallbackToClientUser is true", async () => {
    const i = pgi();
    const anyDb = { grants: [{ identity: "*", databases: ["*"] }] };
    const strict = await startProxy({
      ...boundary(),
      access: anyDb,
      upstream: { user: undefined, password: i.rolePassword, fallbackToClientUser: false },
      auth: { method: "trust" },
    });
    try {
      const e = await connectError({
        host: "127.0.0.1",
        port: strict.port,
        user: "u_trust",
        database: "postgres",
      });
      expect(e.code).toBe("28000");
    } finally {
      await strict.close();
    }
    const loose = await startProxy({
      ...boundary(),
      access: anyDb,
      upstream: { user: undefined, password: i.rolePassword, fallbackToClientUser: true },
      auth: { method: "trust" },
    });
    try {
      const c = client({ host: "127.0.0.1", port: loose.port, user: "u_trust", database: "postgres" });
      await c.connect();
      expect((await c.query("SELECT current_user AS u")).rows).toEqual([{ u: "u_trust" }]);
      await c.end();
    } finally {
      await loose.close();
    }
  });
});
