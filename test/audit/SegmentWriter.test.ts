import { spawn } from "node:child_process";
import { chmod, mkdtemp, readdir, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { isAuditError } from "../../src/audit/AuditError.ts";
import type { ChainedLine } from "../../src/audit/Chain.ts";
import { loadHmacKey } from "../../src/audit/HmacKey.ts";
import { readSegmentRecords } from "../../src/audit/SegmentReader.ts";
import { trustedKeyFromPem } from "../../src/audit/Signer.ts";
import { verifyDirectory } from "../../src/audit/verify.ts";
import {
  cli,
  expectSchemaValid,
  type Keys,
  makeKeys,
  ok,
  openWriter,
  readLines,
  transition,
} from "./support/auditLog.ts";

let keys: Keys;
beforeAll(async () => {
  keys = await makeKeys("writer");
});
const tmp = () => mkdtemp(join(tmpdir(), "pgw-audit-writer-"));
const trusted = async (k: Keys) => ok(trustedKeyFromPem(await readFile(k.publicKeyFile, "utf8"), "pub"));

describe("SegmentWriter", () => {
  it("writes a burst of events in one batch with one fsync and reports it durable", async () => {
    const dir = await tmp();
    const batches: (readonly ChainedLine[])[] = [];
    const w = await openWriter(dir, keys, { fsyncBatchMs: 20, onDurable: (l) => batches.push(l) });
    for (let i = 0; i < 100; i++) w.append(transition(i));
    expect(w.durableSeq).toBe(0);
    expect(await w.flush()).toBeUndefined();
    expect(batches.map((b) => b.length)).toEqual([100]);
    expect(w.durableSeq).toBe(100);
    await w.close();
    expect(
      (await verifyDirectory(dir, { hmacKeys: [keys.hmacKey], trustedKeys: [await trusted(keys)] })).status,
    ).toBe("intact");
  });

  it("rotates by size, and by age on its own timer", async () => {
    const dir = await tmp();
    const w = await openWriter(dir, keys, { segmentMaxBytes: 4096 });
    for (let i = 0; i < 60; i++) w.append(transition(i));
    await w.flush();
    const sized = (await readdir(dir)).length;
    expect(sized).toBeGreaterThanOrEqual(3);
    await w.close();
    const lastLines = await readLines(dir, 1);
    expect(JSON.parse(lastLines.at(-1)!)).toMatchObject({ kind: "checkpoint", reason: "size" });

    const dir2 = await tmp();
    const w2 = await openWriter(dir2, keys, { segmentMaxAgeMs: 150 });
    w2.append(transition(1));
    await w2.flush();
    await new Promise((r) => setTimeout(r, 600));
    const seg1 = await readLines(dir2, 1);
    expect(JSON.parse(seg1.at(-1)!)).toMatchObject({ kind: "checkpoint", reason: "age", count: 1 });
    await w2.close();
    expect(
      (await verifyDirectory(dir2, { hmacKeys: [keys.hmacKey], trustedKeys: [await trusted(keys)] })).status,
    ).toBe("intact");
  });

  it("records HMAC and signing key rotations so the old keys vouch for the new", async () => {
    const dir = await tmp();
    const next = await makeKeys("next", "secp384r1");
    const w = await openWriter(dir, keys);
    w.append(transition(1));
    expect(await w.rotateHmacKey(next.hmacKey)).toBeUndefined();
    w.append(transition(2));
    expect(await w.rotateSigner(next.signer)).toBeUndefined();
    w.append(transition(3));
    await w.close();
    await expectSchemaValid(dir, 3);
    // Only the first public key is trusted up front; the ES384 key is trusted through the signed rotation.
    const both = await verifyDirectory(dir, {
      hmacKeys: [keys.hmacKey, next.hmacKey],
      trustedKeys: [await trusted(keys)],
    });
    expect(both.status).toBe("intact");
    const cps = (await readLines(dir, 3)).map((l) => JSON.parse(l)).filter((r) => r.kind === "checkpoint");
    expect(cps[0]).toMatchObject({ alg: "ES384", signKey: next.signer.keyId });
    const oldOnly = await verifyDirectory(dir, {
      hmacKeys: [keys.hmacKey],
      trustedKeys: [await trusted(keys)],
    });
    expect(oldOnly.status).toBe("incomplete");
    expect(oldOnly.instances[0]!.findings[0]).toMatchObject({
      check: "no-hmac-key",
      message: expect.stringContaining(next.hmacKey.id),
    });
  });

  it("survives kill -9: verify flags the unsealed tail (exit 2), the next start seals it (exit 0)", async () => {
    /** Runs a writer and kills it; the kill lands at a random point, rarely right after a seal. */
    const killWriter = async () => {
      const dir = await tmp();
      const child = spawn(
        process.execPath,
        ["test/audit/support/writeUntilKilled.ts", dir, keys.hmacKeyFile, keys.signingKeyFile],
        { stdio: ["ignore", "pipe", "inherit"] },
      );
      let durable = 0;
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("child wrote nothing durable in time")), 20_000);
        child.stdout.on("data", (d: Buffer) => {
          durable = Math.max(durable, ...d.toString().trim().split("\n").map(Number));
          if (durable >= 400) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.on("exit", (code) => reject(new Error(`child exited ${code}`)));
      });
      child.removeAllListeners("exit");
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await exited;
      const r = await verifyDirectory(dir, { hmacKeys: [keys.hmacKey], trustedKeys: [await trusted(keys)] });
      return { dir, durable, r };
    };
    // A kill that lands exactly between a seal and the next line leaves no tail to flag: try again.
    let run = await killWriter();
    for (let attempt = 1; attempt < 5 && run.r.status === "intact"; attempt++) run = await killWriter();
    const { dir, durable, r } = run;

    const inst = r.instances[0]!;
    expect(r.status).toBe("incomplete");
    expect(inst.findings.filter((f) => f.class === "tampered")).toEqual([]);
    expect(inst.findings.map((f) => f.check)).toContain("unsealed-tail");
    expect(inst.sealedSegments).toBeGreaterThanOrEqual(1);
    // Everything reported durable before the kill is there and chain-checked.
    expect(inst.lastSeq).toBeGreaterThanOrEqual(durable);
    expect(
      cli(["audit", "verify", dir, "--key", keys.hmacKeyFile, "--pubkey", keys.publicKeyFile]).code,
    ).toBe(2);

    const w = await openWriter(dir, keys, { boot: "boot-2" });
    w.append(transition(0));
    await w.close();
    const after = await verifyDirectory(dir, {
      hmacKeys: [keys.hmacKey],
      trustedKeys: [await trusted(keys)],
    });
    expect(after.status).toBe("intact");
    const recovery = [];
    for await (const s of readSegmentRecords(dir))
      if (s.record.reason === "recovery") recovery.push(s.record);
    expect(recovery).toHaveLength(1);
    expect(recovery[0]!.lastSeq).toBe(inst.lastSeq);
  });

  it("recovers a tail torn inside a character by cutting exactly its bytes", async () => {
    const dir = await tmp();
    const w = await openWriter(dir, keys);
    for (let i = 0; i < 5; i++) w.append(transition(i));
    await w.flush();
    // The log as a crash would leave it: the open segment, then a record cut inside "€" (3 bytes).
    const crashed = await tmp();
    const name = (await readdir(dir)).find((f) => f.endsWith(".jsonl"))!;
    const whole = await readFile(join(dir, name));
    await w.close();
    const torn = Buffer.from('{"kind":"transition","text":"€').subarray(0, -2);
    await writeFile(join(crashed, name), Buffer.concat([whole, torn]));
    const again = await openWriter(crashed, keys, { boot: "boot-2" });
    await again.close();
    const after = await readFile(join(crashed, name));
    // Everything that was whole is kept byte for byte; the recovery checkpoint follows it.
    expect(after.subarray(0, whole.length).equals(whole)).toBe(true);
    expect(after.subarray(whole.length).toString()).toMatch(/^\{[^\n]*"reason":"recovery"[^\n]*\}\n$/);
    const r = await verifyDirectory(crashed, {
      hmacKeys: [keys.hmacKey],
      trustedKeys: [await trusted(keys)],
    });
    expect(r.status).toBe("intact");
  });

  it("refuses to continue a log whose open segment was tampered with", async () => {
    const dir = await tmp();
    const w = await openWriter(dir, keys);
    for (let i = 0; i < 5; i++) w.append(transition(i));
    await w.flush();
    const lines = await readLines(dir, 1);
    lines[2] = lines[2]!.replace("Query#2", "Query#X");
    await writeFile(join(dir, "audit-pgw-test-00000001.jsonl"), lines.map((l) => `${l}\n`).join(""));
    const again = await openWriter(dir, keys).catch((e: Error) => e.message);
    expect(again).toContain("line 3: HMAC mismatch");
  });

  it("reads records back in order from a given seq (sink catch-up)", async () => {
    const dir = await tmp();
    const w = await openWriter(dir, keys, { segmentMaxBytes: 2048 });
    for (let i = 0; i < 40; i++) w.append(transition(i));
    await w.close();
    const seqs: number[] = [];
    for await (const s of readSegmentRecords(dir, { fromSeq: 20 })) seqs.push(s.seq);
    expect(seqs[0]).toBe(20);
    expect(seqs).toEqual(seqs.map((_, i) => 20 + i));
  });
});

describe("loadHmacKey", () => {
  it("accepts a private hex key file and refuses others, short, or non-hex ones without echoing them", async () => {
    const dir = await tmp();
    const f = join(dir, "k");
    await writeFile(f, "ab".repeat(32), { mode: 0o600 });
    expect(isAuditError(await loadHmacKey(f))).toBe(false);
    await chmod(f, 0o644);
    expect(await loadHmacKey(f)).toMatchObject({
      code: "PGW_AUDIT_KEY",
      message: expect.stringContaining("o-rwx"),
    });
    await writeFile(f, "ab".repeat(16), { mode: 0o600 });
    await chmod(f, 0o600);
    expect(await loadHmacKey(f)).toMatchObject({ message: expect.stringContaining("at least 32") });
    await writeFile(f, "not hex secret value");
    const e = await loadHmacKey(f);
    expect(isAuditError(e) && e.message).toContain("hex");
    expect(JSON.stringify(e)).not.toContain("secret value");
  });
});
