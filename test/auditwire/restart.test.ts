import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { cursorFileName } from "../../src/audit/SinkCursor.ts";
import { type NatsServer, natsServer } from "../audit-sinks/support/nats.ts";
import { makePki, type Pki } from "../audit-sinks/support/pki.ts";
import { type Rsyslog, rsyslogCollector } from "../audit-sinks/support/rsyslog.ts";
import { readStream } from "../audit-sinks/support/streamReader.ts";
import {
  type AuditedProxy,
  eventually,
  INSTANCE,
  readRecords,
  startAuditedProxy,
  verifyCli,
} from "./support.ts";

let dir: string;
let pki: Pki;
let collector: Rsyslog;
let nats: NatsServer;
const proxies: AuditedProxy[] = [];

const queue = { batchMax: 16, batchMs: 5, backoffMinMs: 50, backoffMaxMs: 300, attemptTimeoutMs: 3000 };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgw-auditwire-restart-"));
  pki = await makePki(dir);
  collector = await rsyslogCollector(dir, pki, await freePort());
  await collector.start();
  nats = await natsServer(dir, await freePort());
  await nats.start();
}, 60_000);

afterAll(async () => {
  for (const p of proxies) await p.close().catch(() => {});
  await collector?.stop();
  await nats?.stop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

const sinks = () => ({
  syslog: {
    host: "127.0.0.1",
    port: collector.port,
    servername: "localhost",
    ca: pki.ca,
    cert: pki.clientCert,
    key: pki.clientKey,
    settleMs: 100,
    connectTimeoutMs: 2000,
    writeTimeoutMs: 2000,
    queue,
  },
  jetstream: { servers: [nats.url], stream: "PGW_RESTART", subject: "pgw.restart", queue },
});

const queries = async (p: AuditedProxy, label: string, n: number) => {
  const c = new pg.Client(p.connection());
  await c.connect();
  for (let i = 0; i < n; i++) await c.query(`SELECT '${label}', ${i}`);
  await c.end();
};

describe("sink cursors across a restart", () => {
  it("a sink down when pgwarden stopped is caught up after the restart from its saved cursor: every record once at rsyslog and in JetStream", async () => {
    const a = await startAuditedProxy({ sinks: sinks(), drainTimeoutMs: 1000 });
    proxies.push(a);
    const syslogOf = (p: AuditedProxy) => p.audit.pipeline.status().sinks.find((s) => s.name === "syslog")!;
    await queries(a, "before the outage", 3);
    await eventually(
      "syslog to take everything",
      () => syslogOf(a).lastAckedSeq === a.audit.pipeline.status().durableSeq,
    );
    await eventually(
      "rsyslogd to write it",
      async () => (await collector.received()).length >= syslogOf(a).sent,
    );

    await collector.stop();
    await new Promise((r) => setTimeout(r, 300));
    await queries(a, "while syslog is down", 5);
    await eventually("the outage to be noticed", () => !syslogOf(a).healthy);
    const ackedBeforeStop = syslogOf(a).lastAckedSeq!;
    expect(ackedBeforeStop).toBeLessThan(a.audit.pipeline.status().durableSeq);
    await a.close();
    proxies.pop();
    const cursor = JSON.parse(await readFile(join(a.dir, cursorFileName(INSTANCE, "syslog")), "utf8"));
    expect(cursor).toEqual({ instance: INSTANCE, sink: "syslog", seq: ackedBeforeStop });

    await collector.start();
    const b = await startAuditedProxy({ sinks: sinks() }, undefined, "worker", { dir: a.dir, keys: a.keys });
    proxies.push(b);
    await queries(b, "after the restart", 3);
    await eventually(
      "syslog to catch up and take everything",
      () => !syslogOf(b).catchingUp && syslogOf(b).lastAckedSeq === b.audit.pipeline.status().durableSeq,
      20_000,
    );
    expect(syslogOf(b).caughtUp).toBeGreaterThan(0);
    await b.close();
    proxies.pop();

    const records = await readRecords(a.dir);
    const ids = records.map((r) => String(r.id));
    expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => i + 1));
    // rsyslog keeps no ids: every record arrived exactly once, in order.
    await eventually(
      "rsyslogd to write everything",
      async () =>
        (await collector.received()).filter((r) => r.id.startsWith(`${INSTANCE}-`)).length >= ids.length,
      20_000,
    );
    const got = (await collector.received()).filter((r) => r.id.startsWith(`${INSTANCE}-`));
    expect(got.map((r) => r.id)).toEqual(ids);
    const js = await readStream(nats.url, "PGW_RESTART");
    expect(js.stored.map((s) => s.id)).toEqual(ids);
    expect(verifyCli(a.dir, a.keys).code).toBe(0);
  }, 90_000);
});
