import { mkdtemp, readFile, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer, type TLSSocket } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { AuditLine } from "../../src/adapters/audit/AuditSink.ts";
import type { SinkQueueEvent } from "../../src/adapters/audit/SinkQueue.ts";
import { makeSyslogTlsSink, type SyslogTlsSinkOptions } from "../../src/adapters/audit/SyslogTlsSink.ts";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { clientMaterial, makePki, type Pki } from "./support/pki.ts";
import { eventually, startQueue } from "./support/queue.ts";
import { records } from "./support/records.ts";
import { type Received, type Rsyslog, rsyslogCollector } from "./support/rsyslog.ts";
import { unframe } from "./support/unframe.ts";

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
  replayMs: 2000,
  replayMaxLines: 10_000,
  ...over,
});

const settings = {
  maxQueued: 10_000,
  batchMax: 64,
  batchMs: 20,
  backoffMinMs: 50,
  backoffMaxMs: 400,
  attemptTimeoutMs: 10_000,
};

const receivedFor = async (lines: readonly AuditLine[]): Promise<Received[]> => {
  const ids = new Set(lines.map((l) => l.id));
  return (await collector.received()).filter((r) => ids.has(r.id));
};

/** What a collector keeping the first copy of each id holds. */
const firstCopies = (got: readonly Received[]): Received[] => {
  const seen = new Set<string>();
  return got.filter((r) => !seen.has(r.id) && seen.add(r.id) !== undefined);
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
    await eventually(
      "collector to write 150 records",
      async () => firstCopies(await receivedFor(all)).length >= 150,
    );
    // Nothing lost; the only copies are records written shortly before the hang-up and replayed.
    const got = await receivedFor(all);
    expectExactlyOnceInOrder(firstCopies(got), all);
    const beforeIds = new Set(before.map((l) => l.id));
    const firsts = new Set(firstCopies(got));
    const copies = got.filter((r) => !firsts.has(r));
    expect(copies.every((r) => beforeIds.has(r.id))).toBe(true);
  });
});

describe.runIf(process.getuid?.() === 0)("SyslogTlsSink against an unprivileged rsyslogd", () => {
  it("works the same when the collector runs as nobody", async () => {
    const nobody = { uid: 65534, gid: 65534 };
    const unprivileged = await rsyslogCollector(dir, pki, await freePort(), nobody);
    await unprivileged.start();
    try {
      const status = await readFile(`/proc/${unprivileged.pid()}/status`, "utf8");
      expect(status).toMatch(/^Uid:\s+65534\s+65534/m);
      const sink = makeSyslogTlsSink(await sinkOptions({ port: unprivileged.port }));
      const sent = records(1, 20);
      await sink.deliver(sent);
      await sink.close();
      await eventually(
        "collector to write 20 records",
        async () => (await unprivileged.received()).length >= 20,
      );
      expectExactlyOnceInOrder(await unprivileged.received(), sent);
    } finally {
      await unprivileged.stop();
    }
  });
});

/** A TLS collector that can crash: it forgets what its open connections received and hangs up. */
const crashableCollector = async (pki: Pki) => {
  const received: Buffer[][] = [];
  const sockets = new Set<TLSSocket>();
  const server = createServer(
    {
      ca: await readFile(pki.ca),
      cert: await readFile(pki.serverCert),
      key: await readFile(pki.serverKey),
      requestCert: true,
      rejectUnauthorized: true,
    },
    (socket) => {
      const chunks: Buffer[] = [];
      received.push(chunks);
      sockets.add(socket);
      socket.on("data", (d: Buffer) => chunks.push(d)).on("close", () => sockets.delete(socket));
    },
  );
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    messages: (connection: number) => unframe(Buffer.concat(received[connection] ?? [])),
    crash: () => {
      for (const s of sockets) s.destroy();
      for (const chunks of received) chunks.length = 0;
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
};

describe("SyslogTlsSink replay after a broken connection", () => {
  const idsIn = (messages: readonly string[]) => messages.map((m) => /id="([^"]+)"/.exec(m)?.[1]);

  it.each([
    [2000, true],
    [0, false],
  ])(
    "replayMs %i: records flushed just before a collector crash are written again: %s",
    async (replayMs, replays) => {
      const c = await crashableCollector(pki);
      try {
        const sink = makeSyslogTlsSink(await sinkOptions({ port: c.port, replayMs, settleMs: 0 }));
        const first = records(1, 5);
        const second = records(6, 5);
        await sink.deliver(first);
        await eventually("collector got the first batch", () => c.messages(0).length === 5);
        c.crash();
        await new Promise((r) => setTimeout(r, 100));
        await sink.deliver(second);
        await eventually("second connection got data", () => c.messages(1).length >= 5);
        const expected = replays ? [...first, ...second] : second;
        expect(idsIn(c.messages(1))).toEqual(expected.map((l) => l.id));
        await sink.close();
      } finally {
        await c.close();
      }
    },
  );
});
