import { createServer, type Socket } from "node:net";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import {
  boundary,
  eventually,
  frame,
  int32,
  type ServeChild,
  serveChild,
  type Tap,
  tcpTap,
  verifier,
  writeServeFiles,
} from "../support/hostile.ts";
import { postgresInfo } from "../support/postgres.ts";
import { FAILING_USER } from "./fixtures/failingLookup.ts";

/**
 * Finding 6: a rejection in a session's async code escaped its fiber, and an unhandled rejection
 * ends the whole process; `serve` exited 0 after the program failed.
 */

let serve: ServeChild | undefined;
let tap: Tap | undefined;
afterEach(async () => {
  serve?.kill();
  await tap?.close();
  serve = tap = undefined;
});

const PASSWORD = "alice-password";

const configFor = (port: number, upstreamPort: number) => {
  const i = postgresInfo();
  return {
    ...boundary(),
    listen: { host: "127.0.0.1", port },
    upstream: { host: "127.0.0.1", port: upstreamPort, user: i.appRole, password: i.rolePassword },
    auth: { method: "scram-sha-256", timeoutMs: 5000, allowPasswordOverPlaintext: true },
    log: { level: "info" },
  };
};

const client = (port: number, user = "alice", password = PASSWORD) => {
  const c = new pg.Client({ host: "127.0.0.1", port, user, password, database: postgresInfo().appDatabase });
  c.on("error", () => {});
  return c;
};

/** A client that must be served: one query, then a clean end. */
const served = async (port: number): Promise<unknown> => {
  const c = client(port);
  try {
    await c.connect();
    return (await c.query("SELECT 41 + 1 AS n")).rows;
  } finally {
    await c.end().catch(() => {});
  }
};

const refused = async (c: pg.Client): Promise<{ code?: string } | undefined> => {
  try {
    await c.connect();
  } catch (e) {
    return e as { code?: string };
  } finally {
    await c.end().catch(() => {});
  }
  return undefined;
};

/** A PostgreSQL stand-in for one connection: asks for SASL, then answers the client-first with garbage and hangs up. */
const garbageMidScram = (s: Socket): void => {
  let step = 0;
  s.on("data", () => {
    step++;
    if (step === 1) s.write(frame(0x52, Buffer.concat([int32(10), Buffer.from("SCRAM-SHA-256\0\0")])));
    else {
      s.write(Buffer.from([0xff, 0x00, 0x00, 0x00, 0x02, 0xde, 0xad]));
      s.destroy();
    }
  });
};

describe("failures inside one connection", () => {
  it("a connection whose code throws ends alone; the process keeps serving", async () => {
    tap = await tcpTap();
    const port = await freePort();
    const files = await writeServeFiles(configFor(port, tap.port), [["alice", verifier(PASSWORD)]]);
    const preload = fileURLToPath(new URL("./fixtures/failingLookup.ts", import.meta.url));
    serve = await serveChild(files.config, port, { nodeArgs: ["--import", preload] });
    expect(await served(port)).toEqual([{ n: 42 }]);
    for (let i = 0; i < 3; i++) {
      const e = await refused(client(port, FAILING_USER, "whatever"));
      expect(e, "the failing connection was let in").toBeDefined();
      expect(serve.out.stderr).toContain("pgw-test: injected failure");
      expect(serve.child.exitCode, `pgwarden exited:\n${serve.out.stderr}`).toBe(null);
      expect(await served(port)).toEqual([{ n: 42 }]);
    }
  });

  it("an upstream that sends garbage and hangs up mid-SCRAM fails that login only", async () => {
    tap = await tcpTap({
      intercept: (s, index) => {
        if (index !== 0) return false;
        garbageMidScram(s);
        return true;
      },
    });
    const port = await freePort();
    const files = await writeServeFiles(configFor(port, tap.port), [["alice", verifier(PASSWORD)]]);
    serve = await serveChild(files.config, port);
    const e = await refused(client(port));
    expect(e?.code).toMatch(/^08/);
    expect(serve.child.exitCode).toBe(null);
    expect(await served(port)).toEqual([{ n: 42 }]);
  });
});

describe("exit status", () => {
  it("serve exits 1 when it cannot listen", async () => {
    const holder = createServer();
    await new Promise<void>((r) => holder.listen(0, "127.0.0.1", () => r()));
    const port = (holder.address() as { port: number }).port;
    try {
      const files = await writeServeFiles(configFor(port, postgresInfo().port), [
        ["alice", verifier(PASSWORD)],
      ]);
      serve = await serveChild(files.config, port, { waitListening: false });
      expect(await eventually(() => serve!.child.exitCode !== null, 20_000)).toBe(true);
      expect(await serve.exited).toBe(1);
    } finally {
      holder.close();
    }
  });
});
