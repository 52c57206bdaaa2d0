import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditLine } from "../../src/adapters/audit/AuditSink.ts";
import type { SinkQueueEvent } from "../../src/adapters/audit/SinkQueue.ts";
import { makeSyslogTlsSink, type SyslogTlsSinkOptions } from "../../src/adapters/audit/SyslogTlsSink.ts";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { clientMaterial, makePki, type Pki } from "./support/pki.ts";
import { eventually, startQueue } from "./support/queue.ts";
import { records } from "./support/records.ts";
import { type Received, type Rsyslog, rsyslogCollector } from "./support/rsyslog.ts";

let dir: string;
let pki: Pki;
let rogue: Pki;
let collector: Rsyslog;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgwarden-syslog-"));
  pki = await makePki(dir);
  rogue = await makePki(dir, "rogue-");
  collector = await rsyslogCollector(dir, pki, await freePort());
  await collector.start();
});

afterAll(async () => {
  await collector?.stop();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

const sinkOptions = async (over: Partial<SyslogTlsSinkOptions> = {}): Promise<SyslogTlsSinkOptions> => ({
  host: "127.0.0.1",
  port: collector.port,
  servername: "localhost",
  ...(await clientMaterial(pki)),
  appName: "pgwarden",
  facility: "authpriv",
  sdId: "pgwarden@32473",
  connectTimeoutMs: 3000,
  writeTimeoutMs: 3000,
  settleMs: 100,
  ...over,
});

const settings = { maxQueued: 10_000, batchMax: 64, batchMs: 20, backoffMinMs: 50, backoffMaxMs: 400 };

const receivedFor = async (lines: readonly AuditLine[]): Promise<Received[]> => {
  const ids = new Set(lines.map((l) => l.id));
  return (await collector.received()).filter((r) => ids.has(r.id));
};

const expectExactlyOnceInOrder = (got: readonly Received[], sent: readonly AuditLine[]) => {
  expect(got.map((r) => r.seq)).toEqual(sent.map((l) => l.seq));
  expect(got.map((r) => r.id)).toEqual(sent.map((l) => l.id));
  expect(got.map((r) => r.msg)).toEqual(sent.map((l) => l.text));
};

describe("SyslogTlsSink against rsyslogd (gtls, mutual TLS)", () => {
  it("delivers records exactly once, in order and intact, large and non-ASCII ones included", async () => {
    const { queue, shutdown } = await startQueue(makeSyslogTlsSink(await sinkOptions()), settings);
    const sent = records(1, 300, 50);
    for (const l of sent) expect(queue.offer(l)).toBe(true);
    expect(await shutdown(10_000)).toBe(true);
    expect(queue.counters()).toMatchObject({ sent: 300, failed: 0, queued: 0 });
    await eventually("collector to write 300 records", async () => (await receivedFor(sent)).length >= 300);
    const got = await receivedFor(sent);
    expectExactlyOnceInOrder(got, sent);
    expect(got[0]?.sd).toMatch(/^\[pgwarden@32473 seq="1" id="[0-9a-f-]{36}"\]$/);
  });

  it("is refused by the collector with a client certificate from another CA", async () => {
    const sink = makeSyslogTlsSink(
      await sinkOptions({ ...(await clientMaterial(rogue)), ca: (await clientMaterial(pki)).ca }),
    );
    const line = records(1, 1);
    await expect(sink.deliver(line)).rejects.toMatchObject({ _tag: "SinkError", code: "PGW_AUDIT_SINK_TLS" });
    await sink.close();
    await new Promise((r) => setTimeout(r, 300));
    expect(await receivedFor(line)).toEqual([]);
  });

  it("refuses a collector whose certificate is not for the expected name, or not from the CA", async () => {
    const wrongName = makeSyslogTlsSink(await sinkOptions({ servername: "collector.invalid" }));
    await expect(wrongName.deliver(records(1, 1))).rejects.toMatchObject({ code: "PGW_AUDIT_SINK_TLS" });
    const wrongCa = makeSyslogTlsSink(await sinkOptions({ ca: (await clientMaterial(rogue)).ca }));
    await expect(wrongCa.deliver(records(1, 1))).rejects.toMatchObject({ code: "PGW_AUDIT_SINK_TLS" });
  });

  it("reports down while the collector is stopped, queues and retries, then catches up", async () => {
    const events: SinkQueueEvent[] = [];
    const { queue, shutdown } = await startQueue(makeSyslogTlsSink(await sinkOptions()), settings, (e) =>
      events.push(e),
    );
    const before = records(1, 50);
    for (const l of before) queue.offer(l);
    await eventually("first records acknowledged", () => queue.counters().sent === 50);
    await eventually("collector to write them", async () => (await receivedFor(before)).length === 50);

    await collector.stop();
    await new Promise((r) => setTimeout(r, 200)); // the sink sees the hang-up before it writes again
    const during = records(51, 100);
    for (const l of during) expect(queue.offer(l)).toBe(true);
    await eventually("sink reported down", () => !queue.healthy);
    await eventually("a few retries", () => queue.counters().retried >= 3);
    expect(queue.counters()).toMatchObject({ sent: 50, queued: 100 });
    expect(queue.counters().lastError).toMatch(/^PGW_AUDIT_SINK_CONNECT: .*ECONNREFUSED/);
    expect(events.map((e) => e._tag)).toEqual(["SinkDown"]);

    await collector.start();
    await eventually("catch-up", () => queue.healthy && queue.counters().queued === 0);
    expect(events.map((e) => e._tag)).toEqual(["SinkDown", "SinkUp"]);
    expect(await shutdown(5000)).toBe(true);
    const all = [...before, ...during];
    await eventually("collector to write 150 records", async () => (await receivedFor(all)).length >= 150);
    expectExactlyOnceInOrder(await receivedFor(all), all);
  });
});
