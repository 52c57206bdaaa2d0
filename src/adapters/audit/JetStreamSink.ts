import {
  JetStreamApiCodes,
  JetStreamApiError,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import {
  connect,
  credsAuthenticator,
  errors,
  type NatsConnection,
  type NodeConnectionOptions,
} from "@nats-io/transport-node";
import { type AuditSink, SinkError, type SinkErrorCode, toSinkError } from "./AuditSink.ts";
import { makePubAckCollector, type PubAckCollector } from "./PubAckCollector.ts";

/**
 * NATS JetStream: each line is published with `Nats-Msg-Id` = record id and counts as delivered
 * once the stream's PubAck says it is stored. The stream drops a second copy of an id inside its
 * duplicate window, so the retries of the SinkQueue store nothing twice.
 */

export interface JetStreamSinkOptions {
  /** Name in counters, events and errors; "jetstream" unless set. */
  readonly name?: string;
  readonly servers: readonly string[];
  readonly stream: string;
  /** Subject this instance publishes on. */
  readonly subject: string;
  /** Subjects the stream captures when the sink has to create it. */
  readonly streamSubjects: readonly string[];
  /** Dedup window of a stream the sink creates; redeliveries later than this would be stored again. */
  readonly duplicateWindowMs: number;
  readonly replicas: number;
  readonly ackTimeoutMs: number;
  readonly connectTimeoutMs: number;
  /** Contents of a NATS `.creds` file. */
  readonly credentials?: Uint8Array;
  /** PEM contents; `ca` alone for server verification, with `cert`/`key` for mutual TLS. */
  readonly tls?: { readonly ca?: string; readonly cert?: string; readonly key?: string };
}

export interface JetStreamSink extends AuditSink {
  /** PubAcks that said the stream already held the id: each is a retry the window absorbed. */
  readonly duplicates: number;
}

const classify = (sink: string, cause: unknown): SinkError => {
  const code: SinkErrorCode =
    cause instanceof JetStreamApiError
      ? "PGW_AUDIT_SINK_REJECTED"
      : cause instanceof errors.TimeoutError
        ? "PGW_AUDIT_SINK_TIMEOUT"
        : "PGW_AUDIT_SINK_CONNECT";
  return toSinkError(sink, code, cause);
};

export const makeJetStreamSink = (options: JetStreamSinkOptions): JetStreamSink => {
  const name = options.name ?? "jetstream";
  let connection: Promise<{ nc: NatsConnection; acks: PubAckCollector }> | undefined;
  // Checked again after any failure: a restarted server may come back with an empty store.
  let streamReady = false;
  let duplicates = 0;
  let closed = false;

  const connectOptions = (): NodeConnectionOptions => ({
    servers: [...options.servers],
    name: "pgwarden-audit",
    timeout: options.connectTimeoutMs,
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    // Otherwise each API request builds Error objects just for stack traces.
    noAsyncTraces: true,
    ...(options.credentials === undefined ? {} : { authenticator: credsAuthenticator(options.credentials) }),
    ...(options.tls === undefined ? {} : { tls: { ...options.tls } }),
  });

  const open = async () => {
    const nc = await connect(connectOptions());
    return { nc, acks: makePubAckCollector(nc, name) };
  };

  const connected = () => {
    if (connection === undefined) {
      const attempt = open();
      const forget = () => {
        if (connection === attempt) connection = undefined;
      };
      connection = attempt;
      // A failed connect, or a client that gave up for good (closed, auth revoked), starts afresh next time.
      attempt.then(({ nc }) => nc.closed().then(forget), forget);
    }
    return connection;
  };

  const ensureStream = async (nc: NatsConnection) => {
    const jsm = await jetstreamManager(nc, { timeout: options.ackTimeoutMs });
    try {
      await jsm.streams.info(options.stream);
    } catch (e) {
      if (!(e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound)) throw e;
      await jsm.streams.add({
        name: options.stream,
        subjects: [...options.streamSubjects],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        num_replicas: options.replicas,
        duplicate_window: options.duplicateWindowMs * 1_000_000,
        // An audit trail is append-only: the API may neither delete single records nor purge.
        deny_delete: true,
        deny_purge: true,
      });
    }
    streamReady = true;
  };

  const deliver = async (batch: Parameters<AuditSink["deliver"]>[0]) => {
    const { nc, acks } = await connected();
    if (!acks.connected)
      throw new SinkError({ code: "PGW_AUDIT_SINK_CONNECT", sink: name, message: "reconnecting to NATS" });
    if (!streamReady) await ensureStream(nc);
    for (const ack of await acks.publish(options.subject, batch, options.ackTimeoutMs)) {
      if (ack.stream !== options.stream)
        throw new SinkError({
          code: "PGW_AUDIT_SINK_REJECTED",
          sink: name,
          message: `subject ${options.subject} is captured by stream ${ack.stream}, not ${options.stream}`,
        });
      if (ack.duplicate) duplicates++;
    }
  };

  return {
    name,
    get duplicates() {
      return duplicates;
    },
    deliver: async (batch) => {
      if (closed)
        throw new SinkError({ code: "PGW_AUDIT_SINK_CLOSED", sink: name, message: "sink is closed" });
      if (batch.length === 0) return;
      try {
        await deliver(batch);
      } catch (e) {
        streamReady = false;
        throw classify(name, e);
      }
    },
    close: async () => {
      closed = true;
      const c = await connection?.catch(() => undefined);
      connection = undefined;
      c?.acks.close();
      await c?.nc.drain().catch(() => c.nc.close());
    },
  };
};
