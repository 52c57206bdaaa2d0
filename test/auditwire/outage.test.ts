import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { type NatsServer, natsServer } from "../audit-sinks/support/nats.ts";
import { makePki, type Pki } from "../audit-sinks/support/pki.ts";
import { type Received, type Rsyslog, rsyslogCollector } from "../audit-sinks/support/rsyslog.ts";
import { readStream } from "../audit-sinks/support/streamReader.ts";
import {
  type AuditedProxy,
  eventually,
  expectAllValid,
  readRecords,
  startAuditedProxy,
  verifyCli,
} from "./support.ts";

let dir: string;
let pki: Pki;
let collector: Rsyslog;
let nats: NatsServer;
let proxy: AuditedProxy | undefined;

const queue = {
  maxQueued: 24,
  batchMax: 16,
  batchMs: 5,
  backoffMinMs: 50,
  backoffMaxMs: 300,
  attemptTimeoutMs: 3000,
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgw-auditwire-outage-"));
  pki = await makePki(dir);
  collector = await rsyslogCollector(dir, pki, await freePort());
  await collector.start();
  nats = await natsServer(dir, await freePort());
  await nats.start();
}, 60_000);

afterAll(async () => {
  await proxy?.close().catch(() => {});
  await collector?.stop();
  await nats?.stop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** What a collector keeping the first copy of each id holds. */
const firstCopies = (got: readonly Received[]): Received[] => {
  const seen = new Set<string>();
  return got.filter((r) => !seen.has(r.id) && seen.add(r.id) !== undefined);
};

describe("sink outage under audit.onFailure: block", () => {
  it("refuses statements and connections while the required syslog collector is down, recovers, catches up, loses and duplicates nothing", async () => {
    proxy = await startAuditedProxy({
      onFailure: "block",
      statements: "normalized",
      sinks: {
        syslog: {
          host: "127.0.0.1",
          port: collector.port,
          servername: "localhost",
          ca: pki.ca,
          cert: pki.clientCert,
          key: pki.clientKey,
          required: true,
          settleMs: 100,
          connectTimeoutMs: 2000,
          writeTimeoutMs: 2000,
          queue,
        },
        jetstream: { servers: [nats.url], stream: "PGW_WIRE", subject: "pgw.wire", queue },
      },
    });
    const p = proxy;
    const syslog = () => p.audit.pipeline.status().sinks.find((s) => s.name === "syslog")!;
    const client = new pg.Client(p.connection());
    await client.connect();
    await client.query("SELECT 'before the outage'");
    await eventually(
      "syslog to take everything so far",
      () => syslog().sent > 5 && syslog().lastAckedSeq === p.audit.pipeline.status().durableSeq,
    );

    await collector.stop();
    await new Promise((r) => setTimeout(r, 300));
    // The outage is noticed when the next records are delivered.
    await client.query("SELECT 'noticed the outage'").catch(() => {});
    await eventually("the pipeline to block", () => p.audit.pipeline.status().blocked !== undefined);
    expect(p.audit.pipeline.status().blocked).toMatch(/required audit sink syslog is down/);

    // Statements: a clear 53000, the session stays usable; many, so the sink's queue overflows.
    for (let i = 0; i < 30; i++) {
      const e = (await client.query(`SELECT ${i}`).catch((x: unknown) => x)) as pg.DatabaseError;
      expect(e.code).toBe("53000");
      expect(e.message).toMatch(/audit trail cannot record it/);
      expect(e.detail).toMatch(/syslog is down/);
    }
    // Connections: refused with the same SQLSTATE.
    const late = new pg.Client(p.connection());
    const refused = (await late.connect().catch((x: unknown) => x)) as pg.DatabaseError;
    expect(refused.code).toBe("53000");
    await eventually("catch-up mode", () => syslog().catchingUp);

    await collector.start();
    await eventually(
      "the pipeline to unblock",
      () => p.audit.pipeline.status().blocked === undefined,
      20_000,
    );
    const back = await client.query("SELECT 'after the outage' AS m");
    expect(back.rows[0].m).toBe("after the outage");
    await client.end();
    await eventually("catch-up to finish", () => !syslog().catchingUp && syslog().queued === 0, 20_000);
    expect(syslog().caughtUp).toBeGreaterThan(0);

    await p.close();
    proxy = undefined;
    const records = await readRecords(p.dir);
    expectAllValid(records);
    const ids = records.map((r) => String(r.id));
    expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => i + 1));
    expect(records.some((r) => r.kind === "sink.failure" && r.sink === "syslog")).toBe(true);
    expect(records.some((r) => r.kind === "sink.recovery" && r.sink === "syslog")).toBe(true);
    const refusedStatements = records.filter((r) => r.kind === "statement" && r.sqlstate === "53000");
    expect(refusedStatements.length).toBe(30);
    expect(records.some((r) => r.kind === "access.decision" && r.rule === "audit.onFailure: block")).toBe(
      true,
    );

    // The collector: every record, in order, once (copies only from the replay of a broken connection).
    await eventually(
      "collector to hold every record",
      async () => {
        const got = firstCopies(await collector.received()).filter((r) => r.id.startsWith("pgw-wire-"));
        return got.length >= ids.length;
      },
      20_000,
    );
    const got = firstCopies(await collector.received()).filter((r) => r.id.startsWith("pgw-wire-"));
    expect(got.map((r) => r.id)).toEqual(ids);
    // JetStream: every record exactly once.
    const js = await readStream(nats.url, "PGW_WIRE");
    expect(js.stored.map((s) => s.id)).toEqual(ids);
    expect(js.messages).toBe(ids.length);

    const v = verifyCli(p.dir, p.keys);
    expect(v.code, v.stdout).toBe(0);
  }, 120_000);
});
