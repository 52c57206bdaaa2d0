import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeQuery, encodeTerminate } from "../../src/protocol/frontend.ts";
import { encodeStartup } from "../../src/protocol/startup.ts";
import {
  boundary,
  errorResponse,
  eventually,
  type FakeUpstream,
  fakeUpstream,
  fieldsOf,
  loginOk,
  rawStartup,
  scramExchange,
  sleep,
  verifier,
} from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { startProxy, type TestProxy } from "../support/proxy.ts";
import { WireClient } from "../support/wire.ts";

/**
 * Finding 10, the smaller ones: FATAL recognised by the localised S field instead of V; auth-phase
 * bytes missing from the byte totals; the SCRAM failure reason never logged; upstream refusals
 * forwarded verbatim (naming the service role); startup strings decoded lossily.
 */

const startupFor = (user: string) =>
  encodeStartup(
    new Map([
      ["user", user],
      ["database", postgresInfo().appDatabase],
    ]),
  );

describe("FATAL from the upstream is recognised by its V field", () => {
  let fatal: Buffer = Buffer.alloc(0);
  let upstream: FakeUpstream;
  let proxy: TestProxy;
  beforeAll(async () => {
    upstream = await fakeUpstream((s) => {
      s.write(loginOk());
      s.on("data", () => {
        s.write(fatal);
        s.end();
      });
    });
    proxy = await startProxy({
      ...boundary(),
      upstream: { ...boundary().upstream, host: "127.0.0.1", port: upstream.port },
      auth: { method: "trust" },
      log: { level: "warn" },
    });
  });
  afterAll(async () => {
    await proxy?.close();
    await upstream?.close();
  });

  const cases: [string, [string, string][]][] = [
    [
      'S localised ("ERREUR FATALE"), V=FATAL',
      [
        ["S", "ERREUR FATALE"],
        ["V", "FATAL"],
        ["C", "57P01"],
        ["M", "arrêt de la connexion"],
      ],
    ],
    [
      "S=FATAL without V (servers before 9.6)",
      [
        ["S", "FATAL"],
        ["C", "57P01"],
        ["M", "terminating connection due to administrator command"],
      ],
    ],
  ];
  for (const [what, fields] of cases) {
    it(`${what}: the client sees that error once and no extra 08006`, async () => {
      fatal = errorResponse(fields);
      const c = await WireClient.open(proxy.port);
      c.send(startupFor("alice"));
      await c.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ReadyForQuery");
      const offset = c.received.length;
      c.send(encodeQuery("SELECT 1"));
      await c.waitClosed(3000);
      const errors = c.messages(offset).filter((m) => m.type === "E");
      expect(errors.map((e) => fieldsOf(e.msg).get("C"))).toEqual(["57P01"]);
    });
  }
});

describe("client authentication, counted and explained", () => {
  let proxy: TestProxy;
  const PASSWORD = "alice-password";
  beforeAll(async () => {
    proxy = await startProxy(
      { ...boundary(), auth: { method: "scram-sha-256" }, log: { level: "info" } },
      new Map([["alice", verifier(PASSWORD)]]),
    );
  });
  afterAll(() => proxy?.close());

  it("counts the startup packet and the SCRAM messages in bytesFromClient", async () => {
    const before = proxy.logs.length;
    const c = await WireClient.open(proxy.port);
    const startup = startupFor("alice");
    c.send(startup);
    let written = startup.length + (await scramExchange(c, PASSWORD));
    await c.until((x) => x.messages().some((m) => m.type === "Z"), 5000, "ReadyForQuery");
    const query = encodeQuery("SELECT 1");
    const offset = c.received.length;
    c.send(query);
    await c.until((x) => x.messages(offset).some((m) => m.type === "Z"), 5000, "query result");
    const terminate = encodeTerminate();
    c.send(terminate);
    written += query.length + terminate.length;
    await c.waitClosed(3000);
    const line = () => proxy.logs.slice(before).find((l) => l.msg === "client disconnected");
    expect(await eventually(() => line() !== undefined, 3000)).toBe(true);
    expect(line()!.bytesFromClient).toBe(written);
  });

  const attempt = async (user: string, password: string): Promise<string> => {
    const before = proxy.logs.length;
    const c = new pg.Client({ host: "127.0.0.1", port: proxy.port, user, password, database: "pgw_app" });
    c.on("error", () => {});
    await expect(c.connect()).rejects.toMatchObject({ code: "28P01" });
    await sleep(100);
    return JSON.stringify(proxy.logs.slice(before));
  };

  it("logs why SCRAM failed: a wrong proof, or an unknown user", async () => {
    const wrong = await attempt("alice", "not-the-password");
    const unknown = await attempt("nobody", "whatever");
    expect(wrong).toMatch(/proof|signature/i);
    expect(unknown).toMatch(/unknown|not in the users file|no such user|not found/i);
    expect(wrong).not.toContain("not-the-password");
  });
});

describe("upstream refusals and startup strings", () => {
  it("relays an upstream refusal as a generic error with its SQLSTATE, without the service role", async () => {
    const i = postgresInfo();
    const proxy = await startProxy({
      ...boundary(),
      upstream: { user: i.appRole, password: "not-the-role-password" },
      auth: { method: "trust" },
    });
    try {
      const c = new pg.Client({
        host: "127.0.0.1",
        port: proxy.port,
        user: "alice",
        database: i.appDatabase,
      });
      c.on("error", () => {});
      const e = await c.connect().then(
        () => undefined,
        (err: { code?: string; message: string }) => err,
      );
      await c.end().catch(() => {});
      expect(e?.code).toBe("28P01");
      expect(e!.message).not.toContain(i.appRole);
      expect(e!.message).not.toContain(String(i.port));
    } finally {
      await proxy.close();
    }
  });

  it("refuses a startup packet whose parameter value is not UTF-8, instead of decoding it lossily", async () => {
    const proxy = await startProxy({ ...boundary(), auth: { method: "trust" } });
    try {
      for (const bad of [
        Buffer.from([0xff, 0xfe]),
        Buffer.from([0x61, 0xc3]),
        Buffer.from([0xed, 0xa0, 0x80]),
      ]) {
        const c = await WireClient.open(proxy.port);
        c.send(
          rawStartup([
            ["user", "alice"],
            ["database", postgresInfo().appDatabase],
            ["application_name", bad],
          ]),
        );
        await c.waitClosed(3000);
        expect(c.messages().some((m) => m.type === "R")).toBe(false);
        expect(["08P01", "22021"]).toContain(c.errorCode());
      }
    } finally {
      await proxy.close();
    }
  });
});
