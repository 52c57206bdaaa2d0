import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createScramVerifier, parseScramVerifier, type ScramVerifier } from "../../src/auth/scramVerifier.ts";
import { isPgwardenError } from "../../src/errors.ts";
import { encodeSASLInitialResponse } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

const verifier = (password: string): ScramVerifier => {
  const v = parseScramVerifier(createScramVerifier(password));
  if (isPgwardenError(v)) throw new Error(v.message);
  return v;
};

const connect = async (proxy: TestProxy, user: string, password?: string) => {
  const c = new pg.Client({ ...proxy.connection(user), ...(password === undefined ? {} : { password }) });
  c.on("error", () => {});
  await c.connect();
  return c;
};

const errorOf = async (p: Promise<unknown>): Promise<{ code?: string; message: string }> => {
  try {
    await p;
  } catch (e) {
    return e as { code?: string; message: string };
  }
  throw new Error("expected a failure");
};

describe("client authentication: SCRAM-SHA-256 against the users file", () => {
  let proxy: TestProxy;
  const clientPassword = "client-side-secret-1";
  beforeAll(async () => {
    proxy = await startProxy(
      { auth: { method: "scram-sha-256" } },
      new Map([["postgres", verifier(clientPassword)]]),
    );
  });
  afterAll(() => proxy.close());

  it("lets a client in with the right password, and the client never holds the database password", async () => {
    expect(clientPassword).not.toBe(postgresInfo().password);
    const c = await connect(proxy, "postgres", clientPassword);
    // The client's identity is pgwarden's business; PostgreSQL sees the granted, non-superuser role.
    expect(
      (await c.query("SELECT current_user AS u, rolsuper FROM pg_roles WHERE rolname = current_user")).rows,
    ).toEqual([{ u: "pgw_app", rolsuper: false }]);
    await c.end();
  });

  it("refuses a wrong password with 28P01", async () => {
    const e = await errorOf(connect(proxy, "postgres", "wrong"));
    expect(e.code).toBe("28P01");
    expect(e.message).toBe('password authentication failed for user "postgres"');
  });

  it("answers an unknown user exactly like a wrong password", async () => {
    const e = await errorOf(connect(proxy, "nobody", "whatever"));
    expect(e.code).toBe("28P01");
    expect(e.message).toBe('password authentication failed for user "nobody"');
  });

  it("decides grants only after the identity is proven: before that, nothing about them shows", async () => {
    const granted = await startProxy(
      {
        auth: { method: "scram-sha-256" },
        access: { grants: [{ identity: "postgres", databases: ["postgres"] }] },
      },
      new Map([["postgres", verifier(clientPassword)]]),
    );
    try {
      const ask = (user: string, password: string, database: string) =>
        errorOf(new pg.Client({ ...granted.connection(user), password, database }).connect());
      // A wrong password looks the same whether or not the database is granted, and so does an unknown user.
      for (const [user, database] of [
        ["postgres", "postgres"],
        ["postgres", "template1"],
        ["nobody", "template1"],
      ] as const) {
        const e = await ask(user, "wrong", database);
        expect([e.code, e.message]).toEqual(["28P01", `password authentication failed for user "${user}"`]);
      }
      // Once authenticated, an ungranted database is 28000.
      expect((await ask("postgres", clientPassword, "template1")).code).toBe("28000");
    } finally {
      await granted.close();
    }
  });

  it("never writes a password to the log", () => {
    const text = JSON.stringify(proxy.logs);
    expect(text).not.toContain(clientPassword);
    expect(text).not.toContain(postgresInfo().password);
    expect(proxy.logs.some((l) => l.msg === "client authentication failed")).toBe(true);
  });
});

describe("upstream login: pgwarden as a client of every PostgreSQL method", () => {
  const cases = [
    ["u_trust", "trust"],
    ["u_password", "cleartext password"],
    ["u_md5", "md5"],
    ["u_scram", "SCRAM-SHA-256"],
  ] as const;
  for (const [role, method] of cases) {
    it(`logs in with ${method}`, async () => {
      const proxy = await startProxy({ upstream: { user: role, password: postgresInfo().rolePassword } });
      try {
        const c = await connect(proxy, "postgres");
        expect((await c.query("SELECT current_user AS u, session_user AS s")).rows).toEqual([
          { u: role, s: role },
        ]);
        await c.end();
      } finally {
        await proxy.close();
      }
    });
  }

  it("passes on PostgreSQL's SQLSTATE when the configured password is wrong, but not its words", async () => {
    const proxy = await startProxy({ upstream: { user: "u_scram", password: "not-it" } });
    try {
      const e = await errorOf(connect(proxy, "postgres"));
      expect(e.code).toBe("28P01");
      expect(e.message).toBe("the database server refused the connection (SQLSTATE 28P01)");
      expect(proxy.logs.some((l) => String(l.reason).includes('"u_scram"'))).toBe(true);
    } finally {
      await proxy.close();
    }
  });

  it("says which setting is missing when PostgreSQL wants a password and none is configured", async () => {
    const proxy = await startProxy({ upstream: { user: "u_scram", password: undefined } });
    try {
      const e = await errorOf(connect(proxy, "postgres"));
      expect(e.code).toBe("28000");
      expect(e.message).toContain("upstream.password is not set");
    } finally {
      await proxy.close();
    }
  });

  it("reports an unreachable server as 08006 without hanging", async () => {
    const proxy = await startProxy({ upstream: { port: 1, connectTimeoutMs: 2000 } });
    try {
      const e = await errorOf(connect(proxy, "postgres"));
      expect(e.code).toBe("08006");
      expect(e.message).toContain("cannot connect to PostgreSQL");
    } finally {
      await proxy.close();
    }
  });

  it("relays the server's own error for a database that does not exist", async () => {
    const proxy = await startProxy();
    try {
      const c = new pg.Client({ ...proxy.connection(), database: "no_such_db" });
      const e = await errorOf(c.connect());
      expect(e.code).toBe("3D000");
    } finally {
      await proxy.close();
    }
  });
});

describe("transition log", () => {
  it("logs every transition at debug level, in order", async () => {
    const proxy = await startProxy({ log: { level: "debug" } });
    try {
      const c = await connect(proxy, "postgres");
      await c.query("SELECT 1");
      await c.end();
      for (let i = 0; i < 40 && !proxy.transitions.some((t) => t.to === "closed"); i++) {
        await new Promise((r) => setTimeout(r, 25));
      }
      const logged = proxy.logs
        .filter((l) => l.msg === "transition")
        .map((l) => `${l.machine}:${l.from}>${l.to}:${l.cause}`);
      expect(logged).toEqual(proxy.transitions.map((t) => `${t.machine}:${t.from}>${t.to}:${t.cause}`));
      // Both halves' machines, interleaved as they happened.
      expect(logged.slice(0, 9)).toEqual([
        "client:startup.fresh>authenticating.client:Startup",
        "client:authenticating.client>authenticating.upstream:ClientAuthOk",
        "server:connecting>authenticating:Connected",
        "server:authenticating>idle:LoggedIn",
        "client:authenticating.upstream>ready.idle:UpstreamReady",
        "client:ready.idle>busy.simpleQuery:Query",
        "server:idle>active:Request",
        "server:active>idle:ReadyForQuery",
        "client:busy.simpleQuery>ready.idle:ReadyForQuery",
      ]);
    } finally {
      await proxy.close();
    }
  });
});

describe("unknown users across restarts", () => {
  it("see the same mock salt from a restarted proxy with the same upstream password", async () => {
    const saltFrom = async () => {
      const proxy = await startProxy({ auth: { method: "scram-sha-256" } });
      try {
        const c = await WireClient.open(proxy.port);
        c.send(
          encodeStartup(
            new Map([
              ["user", "ghost"],
              ["database", "postgres"],
            ]),
          ),
        );
        await c.until((x) => x.messages().some((m) => m.type === "R"), 3000, "SASL request");
        c.send(encodeSASLInitialResponse("SCRAM-SHA-256", Buffer.from("n,,n=,r=abcdefghijklmnop")));
        await c.until((x) => x.messages().filter((m) => m.type === "R").length === 2, 3000, "server-first");
        const serverFirst = c
          .messages()
          .filter((m) => m.type === "R")[1]!
          .msg.subarray(9)
          .toString();
        c.close();
        return /,s=([^,]+),/.exec(serverFirst)![1];
      } finally {
        await proxy.close();
      }
    };
    const a = await saltFrom();
    const b = await saltFrom();
    expect(a).toMatch(/^[A-Za-z0-9+/]+=*$/);
    expect(b).toBe(a);
  });
});
