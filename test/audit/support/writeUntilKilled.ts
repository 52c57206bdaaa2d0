// Child process for the kill -9 test: appends events forever, printing each durable seq.
import { loadHmacKey } from "../../../src/audit/HmacKey.ts";
import { SegmentWriter } from "../../../src/audit/SegmentWriter.ts";
import { loadPemSigner } from "../../../src/audit/Signer.ts";
import { transition } from "./auditLog.ts";

const [dir, hmacKeyFile, signingKeyFile] = process.argv.slice(2) as [string, string, string];
const hmacKey = await loadHmacKey(hmacKeyFile);
const signer = await loadPemSigner(signingKeyFile);
if ("_tag" in hmacKey || "_tag" in signer) process.exit(3);
const w = await SegmentWriter.open({
  dir,
  instance: "pgw-test",
  boot: "boot-killed",
  hmacKey,
  signer,
  segmentMaxBytes: 16 * 1024,
  segmentMaxAgeMs: 3_600_000,
  fsyncBatchMs: 1,
  onDurable: (lines) => process.stdout.write(`${lines.at(-1)!.seq}\n`),
});
if ("_tag" in w) process.exit(4);
let i = 0;
setInterval(() => {
  for (let k = 0; k < 20; k++) w.append(transition(i++));
}, 1);
