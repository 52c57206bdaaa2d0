import { createInbox, headers, type Msg, type NatsConnection } from "@nats-io/transport-node";
import type { AuditLine } from "./AuditSink.ts";
import { SinkError } from "./AuditSink.ts";

/**
 * Publishes a batch to JetStream and gathers the PubAcks on one wildcard inbox, with one timer
 * per batch. The client library's request path builds a request object, a timer and two Error
 * values per message, which cost more CPU than the publish itself.
 */

export interface PubAck {
  readonly stream: string;
  readonly seq: number;
  readonly duplicate: boolean;
}

export interface PubAckCollector {
  /** False from a disconnect until the client reconnected: anything sent meanwhile would only be buffered. */
  readonly connected: boolean;
  /** Publishes every line in one synchronous pass (so in order, on one connection) and resolves with their PubAcks. */
  publish(subject: string, batch: readonly AuditLine[], timeoutMs: number): Promise<PubAck[]>;
  close(): void;
}

/** Header with the record's seq, so a consumer can order and check continuity without parsing. */
export const seqHeader = "Pgwarden-Seq";

interface AckBody {
  readonly stream?: string;
  readonly seq?: number;
  readonly duplicate?: boolean;
  readonly error?: { readonly code?: number; readonly err_code?: number; readonly description?: string };
}

export const makePubAckCollector = (nc: NatsConnection, sink: string): PubAckCollector => {
  const inbox = createInbox();
  const waiting = new Map<string, (m: Msg) => void>();
  const sub = nc.subscribe(`${inbox}.*`, {
    callback: (err, m) => {
      if (err !== null) return;
      const token = m.subject.slice(inbox.length + 1);
      const handler = waiting.get(token);
      if (handler === undefined) return; // an ack that came after its batch had given up
      waiting.delete(token);
      handler(m);
    },
  });
  let next = 0;
  const fail = (
    code: "PGW_AUDIT_SINK_CONNECT" | "PGW_AUDIT_SINK_REJECTED" | "PGW_AUDIT_SINK_TIMEOUT",
    message: string,
  ) => new SinkError({ code, sink, message });
  /** Batches waiting for acks, so a lost connection fails them at once instead of at their deadline. */
  const inFlight = new Set<(error: SinkError) => void>();
  const lost = () => fail("PGW_AUDIT_SINK_CONNECT", "not connected to a NATS server (reconnecting)");
  // While the client reconnects it would only buffer publishes; failing fast lets the queue back off.
  let reconnecting = false;
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "reconnect") reconnecting = false;
      if (status.type !== "disconnect") continue;
      reconnecting = true;
      for (const abort of [...inFlight]) abort(lost());
    }
  })();
  return {
    get connected() {
      return !reconnecting;
    },
    publish: (subject, batch, timeoutMs) =>
      new Promise<PubAck[]>((resolve, reject) => {
        if (batch.length === 0) return resolve([]);
        if (reconnecting) return reject(lost());
        const acks: PubAck[] = new Array(batch.length);
        const tokens: string[] = [];
        let remaining = batch.length;
        let settled = false;
        const finish = (error?: SinkError) => {
          if (settled) return;
          settled = true;
          clearTimeout(deadline);
          inFlight.delete(finish);
          for (const t of tokens) waiting.delete(t);
          if (error === undefined) resolve(acks);
          else reject(error);
        };
        const deadline = setTimeout(
          () => finish(fail("PGW_AUDIT_SINK_TIMEOUT", `${remaining} PubAcks missing after ${timeoutMs} ms`)),
          timeoutMs,
        );
        inFlight.add(finish);
        const onAck = (i: number) => (m: Msg) => {
          if (m.headers?.code === 503)
            return finish(fail("PGW_AUDIT_SINK_CONNECT", `no JetStream stream answers on ${subject}`));
          let body: AckBody;
          try {
            body = m.json<AckBody>();
          } catch {
            return finish(fail("PGW_AUDIT_SINK_REJECTED", "PubAck is not JSON"));
          }
          if (body.error !== undefined || typeof body.stream !== "string" || typeof body.seq !== "number")
            return finish(
              fail(
                "PGW_AUDIT_SINK_REJECTED",
                body.error?.description ?? "PubAck without stream and sequence",
              ),
            );
          acks[i] = { stream: body.stream, seq: body.seq, duplicate: body.duplicate === true };
          if (--remaining === 0) finish();
        };
        try {
          batch.forEach((line, i) => {
            const token = String(next++);
            tokens.push(token);
            waiting.set(token, onAck(i));
            const h = headers();
            h.set("Nats-Msg-Id", line.id);
            h.set(seqHeader, String(line.seq));
            nc.publish(subject, line.text, { reply: `${inbox}.${token}`, headers: h });
          });
        } catch (e) {
          finish(fail("PGW_AUDIT_SINK_CONNECT", e instanceof Error ? e.message : String(e)));
        }
      }),
    close: () => {
      sub.unsubscribe();
      waiting.clear();
    },
  };
};
