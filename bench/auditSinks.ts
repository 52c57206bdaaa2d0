// Lines per second each remote audit sink sustains on loopback, through its SinkQueue, against the
// real collectors the tests use (rsyslogd with gtls, nats-server -js). Usage:
//   node bench/auditSinks.ts [--lines N] [--rounds R] [--batch B] [--bytes S]

import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import type { AuditLine, AuditSink } from "../src/adapters/audit/AuditSink.ts";
import { makeJetStreamSink } from "../src/adapters/audit/JetStreamSink.ts";
import { makeSyslogTlsSink } from "../src/adapters/audit/SyslogTlsSink.ts";
import { freePort } from "../src/adapters/embeddedPostgres.ts";
import { natsServer } from "../test/audit-sinks/support/nats.ts";
import { clientMaterial, makePki } from "../test/audit-sinks/support/pki.ts";
import { eventually, startQueue } from "../test/audit-sinks/support/queue.ts";
import { rsyslogCollector } from "../test/audit-sinks/support/rsyslog.ts";

const { values } = parseArgs({
  options: {
    lines: { type: "string", default: "100000" },
    rounds: { type: "string", default: "3" },
    batch: { type: "string", default: "512" },
    bytes: { type: "string", default: "400" },
  },
});
const lines = Number(values.lines);
const rounds = Number(values.rounds);
const batchMax = Number(values.batch);
const bytes = Number(values.bytes);

/** Record-sized lines with fresh ids, so every round is new to JetStream's dedup window. */
const makeLines = (round: number): AuditLine[] => {
  const pad = "x".repeat(Math.max(0, bytes - 120));
  return Array.from({ length: lines }, (_, i) => {
    const seq = round * lines + i + 1;
    const id = `bench-${seq}`;
    return { seq, id, text: JSON.stringify({ v: 1, seq, id, kind: "Query", sql: `SELECT ${i}`, pad }) };
  });
};

const settings = {
  maxQueued: 100_000,
  batchMax,
  batchMs: 20,
  backoffMinMs: 100,
  backoffMaxMs: 2000,
  attemptTimeoutMs: 60_000,
};

interface Run {
  readonly linesPerSec: number;
  /** CPU time this process spent per line (the proxy's share of the cost). */
  readonly cpuMicrosPerLine: number;
}

/** Offers as fast as the queue takes lines, until the sink acknowledged all. */
const pump = async (sink: AuditSink, batch: readonly AuditLine[]): Promise<Run> => {
  const { queue, shutdown } = await startQueue(sink, settings);
  const started = performance.now();
  const cpu = process.cpuUsage();
  let i = 0;
  while (i < batch.length) {
    const line = batch[i];
    if (line !== undefined && queue.offer(line)) i++;
    else await new Promise((r) => setImmediate(r));
  }
  await eventually("all acknowledged", () => queue.counters().sent === batch.length, 300_000);
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  if (queue.counters().failed > 0) throw new Error(`${sink.name}: ${queue.counters().lastError}`);
  await shutdown(5000);
  return { linesPerSec: batch.length / seconds, cpuMicrosPerLine: (used.user + used.system) / batch.length };
};

const median = (xs: readonly number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

const main = async () => {
  const dir = await mkdtemp(join(tmpdir(), "pgwarden-bench-sinks-"));
  const pki = await makePki(dir);
  const rsyslog = await rsyslogCollector(dir, pki, await freePort());
  const nats = await natsServer(dir, await freePort());
  try {
    await rsyslog.start();
    await nats.start();
    const syslogAck: Run[] = [];
    const syslogStored: number[] = [];
    const jetstream: Run[] = [];
    for (let r = 0; r < rounds; r++) {
      const batch = makeLines(r);
      const startedAt = performance.now();
      const sink = makeSyslogTlsSink({
        host: "127.0.0.1",
        port: rsyslog.port,
        servername: "localhost",
        ...(await clientMaterial(pki)),
        appName: "pgwarden",
        facility: "authpriv",
        sdId: "pgwarden@32473",
        connectTimeoutMs: 5000,
        writeTimeoutMs: 30_000,
        settleMs: 0,
        replayMs: 2000,
        replayMaxLines: 10_000,
      });
      syslogAck.push(await pump(sink, batch));
      const expected = (r + 1) * lines;
      await eventually(
        "rsyslogd to write every line",
        async () => (await readFile(rsyslog.file, "utf8")).split("\n").length - 1 >= expected,
        300_000,
      );
      syslogStored.push(lines / ((performance.now() - startedAt) / 1000));
      jetstream.push(
        await pump(
          makeJetStreamSink({
            servers: [nats.url],
            stream: "BENCH",
            subject: "bench.audit.i1",
            streamSubjects: ["bench.audit.>"],
            duplicateWindowMs: 120_000,
            replicas: 1,
            ackTimeoutMs: 10_000,
            connectTimeoutMs: 5000,
          }),
          batch,
        ),
      );
      process.stderr.write(`round ${r + 1}/${rounds} done\n`);
    }
    const rate = (xs: readonly number[]) => `${Math.round(median(xs)).toLocaleString("en-US")} lines/s`;
    const fmt = (runs: readonly Run[]) =>
      `${rate(runs.map((r) => r.linesPerSec))}, ${median(runs.map((r) => r.cpuMicrosPerLine)).toFixed(1)} µs CPU/line`;
    console.log(
      `audit sinks, ${lines} lines of ~${bytes} B per round, batchMax ${batchMax}, median of ${rounds}`,
    );
    console.log(`  syslog (TLS, flushed to socket): ${fmt(syslogAck)}`);
    console.log(`  syslog (written by rsyslogd):    ${rate(syslogStored)}`);
    console.log(`  JetStream (PubAck, file store):  ${fmt(jetstream)}`);
  } finally {
    await rsyslog.stop();
    await nats.stop();
    await rm(dir, { recursive: true, force: true });
  }
};

await main();
