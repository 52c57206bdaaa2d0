import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AuditLine, type AuditSink, SinkError } from "../../src/adapters/audit/AuditSink.ts";
import { type JetStreamSinkOptions, makeJetStreamSink } from "../../src/adapters/audit/JetStreamSink.ts";
import type { SinkQueueEvent } from "../../src/adapters/audit/SinkQueue.ts";
import { freePort } from "../../src/adapters/embeddedPostgres.ts";
import { type NatsServer, natsServer } from "./support/nats.ts";
import { makePki } from "./support/pki.ts";
import { eventually, startQueue } from "./support/queue.ts";
import { records } from "./support/records.ts";
import { readStream, type Stored } from "./support/streamReader.ts";

let dir: string;
let server: NatsServer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "pgwarden-jetstream-"));
  server = await natsServer(dir, await freePort());
  await server.start();
});

afterAll(async () => {
  await server?.stop("SIGKILL");
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

const options = (stream: string, over: Partial<JetStreamSinkOptions> = {}): JetStreamSinkOptions => ({
  servers: [server.url],
  stream,
  subject: `audit.${stream}.i1`,
  streamSubjects: [`audit.${stream}.>`],
  duplicateWindowMs: 120_000,
  replicas: 1,
  ackTimeoutMs: 5000,
  connectTimeoutMs: 2000,
  ...over,
});

/** Each record stored once, in record order, in a gap-free run of stream sequence numbers. */
const expectExactlyOnce = (stored: readonly Stored[], sent: readonly AuditLine[]) => {
  expect(stored.map((s) => s.seq)).toEqual(sent.map((l) => l.seq));
  expect(stored.map((s) => s.id)).toEqual(sent.map((l) => l.id));
  expect(stored.map((s) => s.text)).toEqual(sent.map((l) => l.text));
  expect(stored.map((s) => s.streamSeq)).toEqual(sent.map((_, i) => i + 1));
};

describe("JetStreamSink against nats-server -js", () => {
  it("creates the stream, stores each record once, and absorbs an overlapping republish", async () => {
    const sink = makeJetStreamSink(options("ONCE"));
    const sent = records(1, 150, 40);
    await sink.deliver(sent.slice(0, 100));
    await sink.deliver(sent.slice(50, 150));
    expect(sink.duplicates).toBe(50);
    await sink.close();
    const { stored, messages } = await readStream(server.url, "ONCE");
    expect(messages).toBe(150);
    expectExactlyOnce(stored, sent);
  });

  it("fails with a typed error while no server answers", async () => {
    const sink = makeJetStreamSink(
      options("NOSERVER", { servers: [`nats://127.0.0.1:${await freePort()}`] }),
    );
    await expect(sink.deliver(records(1, 1))).rejects.toMatchObject({
      _tag: "SinkError",
      code: "PGW_AUDIT_SINK_CONNECT",
    });
    await sink.close();
  });

  it("refuses to count a record stored in another stream, or one no stream captures, as delivered", async () => {
    const owner = makeJetStreamSink(options("OWNER", { subject: "shared.i1", streamSubjects: ["shared.>"] }));
    await owner.deliver(records(1, 1));
    await owner.close();
    const misplaced = makeJetStreamSink(
      options("MINE", { subject: "shared.i1", streamSubjects: ["mine.>"] }),
    );
    await expect(misplaced.deliver(records(2, 1))).rejects.toMatchObject({
      code: "PGW_AUDIT_SINK_REJECTED",
      message: "subject shared.i1 is captured by stream OWNER, not MINE",
    });
    await misplaced.close();
    const uncaptured = makeJetStreamSink(
      options("LOST", { subject: "nowhere.i1", streamSubjects: ["lost.>"] }),
    );
    await expect(uncaptured.deliver(records(3, 1))).rejects.toMatchObject({
      code: "PGW_AUDIT_SINK_CONNECT",
      message: "no JetStream stream answers on nowhere.i1",
    });
    await uncaptured.close();
  });

  it("survives kill -9 of the server mid-stream: catch-up and overlap leave each record exactly once", async () => {
    const events: SinkQueueEvent[] = [];
    const sink = makeJetStreamSink(options("CRASH"));
    // Kills the server while the batch holding seq 1001 is on its way, so its PubAcks never come.
    let killed: Promise<void> | undefined;
    const killing: AuditSink = {
      name: sink.name,
      deliver: (batch) => {
        const delivering = sink.deliver(batch);
        if (killed === undefined && batch.some((l) => l.seq === 1001)) killed = server.stop("SIGKILL");
        return delivering;
      },
      close: () => sink.close(),
    };
    const settings = {
      maxQueued: 20_000,
      batchMax: 100,
      batchMs: 5,
      backoffMinMs: 50,
      backoffMaxMs: 500,
      attemptTimeoutMs: 10_000,
    };
    const { queue, shutdown } = await startQueue(killing, settings, (e) => events.push(e));
    const sent = records(1, 3000);
    for (const l of sent.slice(0, 2000)) expect(queue.offer(l)).toBe(true);
    await eventually("the server killed mid-stream", () => killed !== undefined);
    await killed;
    await eventually("sink reported down", () => !queue.healthy, 3000); // well before the 5 s ack timeout
    await eventually("retries", () => queue.counters().retried >= 2);
    await server.start();
    for (const l of sent.slice(2000)) expect(queue.offer(l)).toBe(true);
    await eventually("catch-up", () => queue.healthy && queue.counters().queued === 0, 30_000);
    expect(events.map((e) => e._tag)).toEqual(["SinkDown", "SinkUp"]);
    expect(queue.counters().sent).toBe(3000);

    // The pipeline's catch-up from local segments may resend records the stream already holds.
    const overlap = makeJetStreamSink(options("CRASH"));
    await overlap.deliver(sent.slice(2500));
    expect(overlap.duplicates).toBe(500);
    await overlap.close();
    expect(await shutdown(5000)).toBe(true);

    const { stored, messages } = await readStream(server.url, "CRASH");
    expect(messages).toBe(3000);
    expectExactlyOnce(stored, sent);
  });
});

describe("JetStreamSink over mutual TLS", () => {
  it("publishes with a client certificate and is refused without one", async () => {
    const tlsDir = join(dir, "tls");
    await mkdir(tlsDir);
    const pki = await makePki(tlsDir);
    const tlsServer = await natsServer(tlsDir, await freePort(), [
      "--tlsverify",
      "--tlscert",
      pki.serverCert,
      "--tlskey",
      pki.serverKey,
      "--tlscacert",
      pki.ca,
    ]);
    await tlsServer.start();
    try {
      const pem = async (f: string) => (await readFile(f)).toString("utf8");
      const ca = await pem(pki.ca);
      const base = { ...options("TLS"), servers: [`tls://127.0.0.1:${tlsServer.port}`] };
      const sink = makeJetStreamSink({
        ...base,
        tls: { ca, cert: await pem(pki.clientCert), key: await pem(pki.clientKey) },
      });
      const sent = records(1, 20);
      await sink.deliver(sent);
      await sink.close();
      const anonymous = makeJetStreamSink({ ...base, tls: { ca } });
      // The server ends the handshake; the client only reports that no connection came up in time.
      await expect(anonymous.deliver(records(21, 1))).rejects.toBeInstanceOf(SinkError);
      await anonymous.close();
      const reader = await connectTls(
        tlsServer.port,
        ca,
        await pem(pki.clientCert),
        await pem(pki.clientKey),
      );
      expect(reader).toBe(20);
    } finally {
      await tlsServer.stop("SIGKILL");
    }
  });
});

/** Stored message count of the TLS stream, read through its own mutual-TLS connection. */
const connectTls = async (port: number, ca: string, cert: string, key: string) => {
  const { connect } = await import("@nats-io/transport-node");
  const { jetstreamManager } = await import("@nats-io/jetstream");
  const nc = await connect({ servers: `tls://127.0.0.1:${port}`, tls: { ca, cert, key }, timeout: 3000 });
  try {
    return (await (await jetstreamManager(nc)).streams.info("TLS")).state.messages;
  } finally {
    await nc.close();
  }
};
