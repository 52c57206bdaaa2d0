// Worker entry of the verifier (its other side is verify.ts): checks chunks of segments held in
// shared memory, one per message.
import { parentPort, workerData } from "node:worker_threads";
import type { HmacKey } from "./HmacKey.ts";
import { hmacKeyFromBytes } from "./HmacKey.ts";
import { type TrustedKey, trustedKeyFromPem } from "./Signer.ts";
import { type ChunkTask, type SegmentKeys, verifyChunk } from "./verifySegment.ts";

const port = parentPort!;
const data = workerData as { hmacKeys: Uint8Array[]; trustedPems: string[] };
const macKeys = new Map<string, HmacKey>();
for (const b of data.hmacKeys) {
  const k = hmacKeyFromBytes(b);
  if (!("_tag" in k)) macKeys.set(k.id, k);
}
const trusted = new Map<string, TrustedKey>();
for (const pem of data.trustedPems) {
  const k = trustedKeyFromPem(pem, "verify");
  if (!("_tag" in k)) trusted.set(k.keyId, k);
}
const keys: SegmentKeys = { macKeys, trusted };

port.on("message", (m: { n: number; buffer: SharedArrayBuffer; chunk: ChunkTask }) => {
  try {
    port.postMessage({ n: m.n, result: verifyChunk(new Uint8Array(m.buffer), m.chunk, keys) });
  } catch (e) {
    port.postMessage({ n: m.n, error: String((e as Error).message) });
  }
});
