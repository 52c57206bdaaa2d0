import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { seqHeader } from "../../../src/adapters/audit/PubAckCollector.ts";

export interface Stored {
  readonly streamSeq: number;
  readonly seq: number;
  readonly id: string;
  readonly text: string;
}

/** Everything the stream holds, read back in order through an ordered consumer. */
export const readStream = async (
  url: string,
  stream: string,
): Promise<{ stored: Stored[]; messages: number }> => {
  const nc = await connect({ servers: url, timeout: 3000 });
  try {
    const info = await (await jetstreamManager(nc)).streams.info(stream);
    const { messages, last_seq } = info.state;
    const stored: Stored[] = [];
    if (messages === 0) return { stored, messages };
    const consumer = await jetstream(nc).consumers.get(stream);
    const iter = await consumer.consume({ max_messages: 1000 });
    const deadline = setTimeout(() => iter.stop(), 20_000);
    for await (const m of iter) {
      stored.push({
        streamSeq: m.seq,
        seq: Number(m.headers?.get(seqHeader)),
        id: m.headers?.get("Nats-Msg-Id") ?? "",
        text: m.string(),
      });
      if (m.seq >= last_seq) break;
    }
    clearTimeout(deadline);
    return { stored, messages };
  } finally {
    await nc.close();
  }
};
