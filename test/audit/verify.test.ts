import { createHash, randomBytes } from "node:crypto";
import { cp, mkdtemp, readFile, rm, stat, truncate, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { validateRecord } from "../../src/audit/AuditEvent.ts";
import { Chain } from "../../src/audit/Chain.ts";
import { hmacKeyFromBytes } from "../../src/audit/HmacKey.ts";
import { GENESIS_HASH, lineHash, sealLine, splitHmac } from "../../src/audit/recordLine.ts";
import type { Signer } from "../../src/audit/Signer.ts";
import { trustedKeyFromPem } from "../../src/audit/Signer.ts";
import { type Finding, verifyDirectory, verifySegmentText } from "../../src/audit/verify.ts";
import { decodeLines, SegmentCheck, type SegmentTask, verifyChunk } from "../../src/audit/verifySegment.ts";
import {
  cli,
  expectSchemaValid,
  INSTANCE,
  type Keys,
  makeKeys,
  makeLog,
  ok,
  openWriter,
  readLines,
  segmentPath,
  transition,
  writeLines,
} from "./support/auditLog.ts";

let keys: Keys;
let attacker: Keys;
let pristine: string;

const copyLog = async () => {
  const dir = await mkdtemp(join(tmpdir(), "pgw-audit-tamper-"));
  await cp(pristine, dir, { recursive: true });
  return dir;
};
/**
 * Verifies on this thread alone and in chunks on two threads, with the default chunk size and
 * with chunks of a line or a few: each must find exactly the same.
 */
const verify = async (dir: string) => {
  const options = {
    hmacKeys: [keys.hmacKey],
    trustedKeys: [ok(trustedKeyFromPem(await readFile(keys.publicKeyFile, "utf8"), "pub"))],
  };
  const one = await verifyDirectory(dir, { ...options, threads: 1 });
  for (const chunkLines of [undefined, 1, 4]) {
    const chunked = await verifyDirectory(dir, {
      ...options,
      threads: 2,
      parallelMinBytes: 0,
      ...(chunkLines === undefined ? {} : { chunkLines }),
    });
    expect({ ...chunked, elapsedMs: 0 }, `chunks of ${chunkLines ?? "default"} lines`).toEqual({
      ...one,
      elapsedMs: 0,
    });
  }
  return one;
};
const only = (r: Awaited<ReturnType<typeof verify>>): Finding => {
  const f = r.instances[0]!.findings;
  expect(f).toHaveLength(1);
  return f[0]!;
};
const verifyCli = (dir: string) =>
  cli(["audit", "verify", dir, "--key", keys.hmacKeyFile, "--pubkey", keys.publicKeyFile]);

/** Rewrites one record's field and, like an insider holding `macKey`, re-authenticates the line. */
const editLine = (
  line: string,
  field: string,
  value: unknown,
  macKey = keys.hmacKey,
  keyId?: string,
): string => {
  const rec = JSON.parse(line) as Record<string, unknown>;
  rec[field] = value;
  if (keyId !== undefined) rec.hmacKey = keyId;
  delete rec.hmac;
  const keysSorted = Object.keys(rec).sort();
  const body = `{${keysSorted.map((k) => `${JSON.stringify(k)}:${JSON.stringify(rec[k])}`).join(",")}}`;
  return sealLine(body, macKey);
};

beforeAll(async () => {
  keys = await makeKeys("owner");
  attacker = await makeKeys("attacker");
  pristine = await makeLog(keys);
});

describe("audit verify", () => {
  it("finds a clean log intact, every record schema-valid, and says so through the CLI (exit 0)", async () => {
    await expectSchemaValid(pristine, 3);
    const r = await verify(pristine);
    expect(r.status).toBe("intact");
    expect(r.records).toBe(33);
    expect(r.instances[0]).toMatchObject({ sealedSegments: 3, firstSeq: 1, lastSeq: 33, findings: [] });
    const c = verifyCli(pristine);
    expect(c.code).toBe(0);
    expect(c.out).toContain("INTACT");
    expect(c.out).not.toContain("not checked");
  });

  it("chains each record by its RFC 6962 leaf hash, which is also what the checkpoint's root is built from", async () => {
    // Format 2 written out independently: L(x) = H(0x00 ‖ x), node = H(0x01 ‖ l ‖ r).
    const sha = (...parts: (Uint8Array | string)[]) => {
      const h = createHash("sha256");
      for (const p of parts) h.update(p);
      return h.digest();
    };
    const leaf = (line: string) => sha(Uint8Array.of(0), line);
    const mth = (d: Buffer[]): Buffer => {
      if (d.length === 1) return d[0]!;
      let k = 1;
      while (k * 2 < d.length) k *= 2;
      return sha(Uint8Array.of(1), mth(d.slice(0, k)), mth(d.slice(k)));
    };
    let prev = "0".repeat(64);
    let prevCheckpoint = prev;
    for (const segment of [1, 2, 3]) {
      const lines = await readLines(pristine, segment);
      const records = lines.slice(0, -1);
      for (const line of lines) {
        expect(JSON.parse(line) as { schema: number; prev: string }).toMatchObject({ schema: 2, prev });
        prev = leaf(line).toString("hex");
      }
      const cp = JSON.parse(lines.at(-1)!) as { root: string; prevCheckpoint: string };
      expect(cp.root).toBe(mth(records.map(leaf)).toString("hex"));
      expect(cp.prevCheckpoint).toBe(prevCheckpoint);
      prevCheckpoint = leaf(lines.at(-1)!).toString("hex");
    }
  });

  it("names bytes that are not UTF-8 even where their decoded text would authenticate", async () => {
    // A writer records U+FFFD (a client's non-UTF-8 SQL decodes to it); an attacker then puts
    // 0xFF where its three bytes were, which decodes back to U+FFFD.
    const dir = await mkdtemp(join(tmpdir(), "pgw-audit-utf8-"));
    const w = await openWriter(dir, keys);
    for (let i = 0; i < 4; i++) {
      const t = transition(i);
      w.append(i === 2 && t.kind === "transition" ? { ...t, cause: "Query \uFFFD" } : t);
    }
    expect(await w.seal("manual")).toBeUndefined();
    await w.close();
    expect((await verify(dir)).status).toBe("intact");
    const bytes = await readFile(segmentPath(dir, 1));
    const at = bytes.indexOf(Buffer.from("\uFFFD"));
    expect(at).toBeGreaterThan(0);
    await writeFile(
      segmentPath(dir, 1),
      Buffer.concat([bytes.subarray(0, at), Buffer.from([0xff]), bytes.subarray(at + 3)]),
    );
    expect(only(await verify(dir))).toMatchObject({ class: "tampered", check: "utf8", line: 3 });
    expect(verifyCli(dir).code).toBe(1);
  });

  it("names a record of format 1 as such rather than as a broken link", async () => {
    const dir = await copyLog();
    const lines = await readLines(dir, 1);
    lines[2] = editLine(lines[2]!, "schema", 1);
    await writeLines(dir, 1, lines);
    const f = only(await verify(dir));
    expect(f).toMatchObject({ class: "tampered", check: "layout", line: 3 });
    expect(f.message).toContain("format 1");
  });

  it("without keys checks links and roots but says HMACs and signatures were not checked", async () => {
    const c = cli(["audit", "verify", pristine]);
    expect(c.code).toBe(0);
    expect(c.out).toContain("not checked: HMACs");
    expect(c.out).toContain("not checked: signatures");
  });

  it("names an edited field by its HMAC (exit 1)", async () => {
    const dir = await copyLog();
    const lines = await readLines(dir, 2);
    lines[3] = lines[3]!.replace('"from":"ready.idle"', '"from":"ready.idl3"');
    await writeLines(dir, 2, lines);
    expect(only(await verify(dir))).toMatchObject({
      class: "tampered",
      check: "hmac",
      file: "audit-pgw-test-00000002.jsonl",
      line: 4,
      seq: 15,
    });
    const c = verifyCli(dir);
    expect(c.code).toBe(1);
    expect(c.out).toContain("TAMPERED audit-pgw-test-00000002.jsonl line 4 seq 15: hmac");
  });

  it("names a deleted record as a sequence gap at the record after it", async () => {
    const dir = await copyLog();
    const lines = await readLines(dir, 2);
    lines.splice(3, 1);
    await writeLines(dir, 2, lines);
    const f = only(await verify(dir));
    expect(f).toMatchObject({ check: "seq", line: 4, seq: 16 });
    expect(f.message).toContain("expected seq 15, found 16");
    expect(verifyCli(dir).code).toBe(1);
  });

  it("names an inserted copy (replay) and an inserted forgery", async () => {
    const dir = await copyLog();
    const lines = await readLines(dir, 1);
    await writeLines(dir, 1, [...lines.slice(0, 5), lines[1]!, ...lines.slice(5)]);
    expect(only(await verify(dir))).toMatchObject({ check: "seq", line: 6, seq: 2 });

    const forged = editLine(lines[5]!, "cause", "Forged", attacker.hmacKey, keys.hmacKey.id);
    await writeLines(dir, 1, [
      ...lines.slice(0, 5),
      editLine(forged, "prev", lineHash(lines[4]!), attacker.hmacKey, keys.hmacKey.id),
      ...lines.slice(5),
    ]);
    expect(only(await verify(dir))).toMatchObject({ check: "hmac", line: 6, seq: 6 });
    expect(verifyCli(dir).code).toBe(1);
  });

  it("names two swapped records", async () => {
    const dir = await copyLog();
    const lines = await readLines(dir, 3);
    [lines[2], lines[3]] = [lines[3]!, lines[2]!];
    await writeLines(dir, 3, lines);
    const f = only(await verify(dir));
    expect(f).toMatchObject({ check: "seq", file: "audit-pgw-test-00000003.jsonl", line: 3, seq: 26 });
    expect(f.message).toContain("expected seq 25");
  });

  it("names a truncated middle segment as tampered, and a missing checkpoint line too", async () => {
    const dir = await copyLog();
    const size = (await stat(segmentPath(dir, 2))).size;
    await truncate(segmentPath(dir, 2), Math.floor(size / 2));
    const f = only(await verify(dir));
    expect(f).toMatchObject({ class: "tampered", check: "torn-line", file: "audit-pgw-test-00000002.jsonl" });
    expect(verifyCli(dir).code).toBe(1);

    const dir2 = await copyLog();
    await writeLines(dir2, 2, (await readLines(dir2, 2)).slice(0, -1));
    expect(only(await verify(dir2))).toMatchObject({
      class: "tampered",
      check: "unsealed-segment",
      line: 10,
    });
  });

  it("flags a truncated last segment as incomplete (exit 2) while the records before verify", async () => {
    const dir = await copyLog();
    const lines = await readLines(dir, 3);
    // Keeps records 23..27 and half of 28, as a crash mid-write would.
    const keep =
      lines
        .slice(0, 5)
        .map((l) => `${l}\n`)
        .join("").length + 40;
    await truncate(segmentPath(dir, 3), keep);
    const r = await verify(dir);
    expect(r.status).toBe("incomplete");
    expect(r.instances[0]!.findings.map((f) => f.check)).toEqual(["torn-line", "unsealed-tail"]);
    expect(r.instances[0]!.unsealed).toMatchObject({ fromSeq: 23, toSeq: 27, count: 5 });
    expect(r.instances[0]).toMatchObject({ sealedSegments: 2, lastSeq: 27 });
    const c = verifyCli(dir);
    expect(c.code).toBe(2);
    expect(c.out).toContain("5 record(s) after the last checkpoint (seq 23..27)");
  });

  it("counts a torn tail that ends inside a character in bytes, on one thread and in chunks alike", async () => {
    const dir = await copyLog();
    const path = segmentPath(dir, 3);
    // A crash two bytes into "é…" (0xC3 0xA9 0xE2 …): decoding would make them three characters' worth.
    await writeFile(path, Buffer.concat([await readFile(path), Buffer.from([0xc3, 0xa9, 0xe2])]));
    const r = await verify(dir);
    // After the segment's checkpoint, so tampered rather than a crash's torn write.
    expect(only(r)).toMatchObject({ class: "tampered", check: "torn-line" });
    expect(only(r).message).toBe("3 byte(s) after the last complete line");
  });

  it("reports a missing segment file as incomplete", async () => {
    const dir = await copyLog();
    await unlink(segmentPath(dir, 2));
    const f = only(await verify(dir));
    expect(f).toMatchObject({
      class: "incomplete",
      check: "missing-segment",
      file: "audit-pgw-test-00000003.jsonl",
    });
    expect(verifyCli(dir).code).toBe(2);
  });

  it("names a re-signed segment: an insider with the HMAC key rebuilds it, another key signs it", async () => {
    const dir = await copyLog();
    const seg2 = await readLines(dir, 2);
    const seg3 = await readLines(dir, 3);
    const strip = (l: string) => {
      const {
        hmac: _h,
        schema: _s,
        id: _i,
        seq: _q,
        instance: _n,
        boot: _b,
        prev: _p,
        hmacKey: _k,
        ...ev
      } = JSON.parse(l);
      return ev;
    };
    const rebuild = async (signer: Signer) => {
      const cpHash = lineHash(seg2.at(-1)!);
      const chain = new Chain({
        instance: INSTANCE,
        boot: "boot-1",
        hmacKey: keys.hmacKey,
        state: { nextSeq: 23, prevHash: cpHash, segment: 3, prevCheckpoint: cpHash },
      });
      const out = seg3
        .slice(0, -1)
        .map((l, i) => chain.append({ ...strip(l), ...(i === 4 ? { cause: "Rewritten" } : {}) }).line);
      out.push((await chain.checkpoint(signer, "shutdown", JSON.parse(seg3.at(-1)!).ts)).line);
      await writeLines(dir, 3, out);
    };
    await rebuild(attacker.signer);
    const f = only(await verify(dir));
    expect(f).toMatchObject({ check: "signature", line: 11, seq: 33 });
    expect(f.message).toContain(`untrusted key ${attacker.signer.keyId}`);
    expect(verifyCli(dir).code).toBe(1);

    // Same, but claiming the owner's key id: the signature itself fails.
    await rebuild({ ...attacker.signer, keyId: keys.signer.keyId });
    expect(only(await verify(dir))).toMatchObject({
      check: "signature",
      seq: 33,
      message: "checkpoint signature is invalid",
    });
    // Without --pubkey the rebuilt segment passes every check that remains: signatures are what protect sealed segments.
    expect((await verifyDirectory(dir, { hmacKeys: [keys.hmacKey] })).status).toBe("intact");
  });

  it("names a record re-HMACed with a wrong key, under the right or a new key id", async () => {
    const dir = await copyLog();
    const lines = await readLines(dir, 1);
    const original = lines[6]!;
    lines[6] = editLine(original, "cause", "Other", attacker.hmacKey);
    await writeLines(dir, 1, lines);
    expect(only(await verify(dir))).toMatchObject({ check: "hmac", line: 7, seq: 7 });
    lines[6] = editLine(original, "cause", "Other", attacker.hmacKey, attacker.hmacKey.id);
    await writeLines(dir, 1, lines);
    expect(only(await verify(dir))).toMatchObject({ check: "hmac-key", line: 7, seq: 7 });
    expect(verifyCli(dir).code).toBe(1);
  });

  it("joins chunks checked apart into the sequential result, taking each whole up to the checkpoint", async () => {
    const bytes = new Uint8Array(await readFile(segmentPath(pristine, 1)));
    const task: SegmentTask = {
      instance: INSTANCE,
      file: "segment-1",
      segment: 1,
      isLast: false,
      start: { expectSeq: 1, prevHash: GENESIS_HASH, prevCheckpoint: GENESIS_HASH, macKeyId: undefined },
    };
    const segmentKeys = { macKeys: new Map([[keys.hmacKey.id, keys.hmacKey]]), trusted: new Map() };
    const starts = [0];
    for (let i = 0; i < bytes.length; i++) if (bytes[i] === 10) starts.push(i + 1);
    const lineCount = starts.length - 1;
    expect(lineCount).toBe(11);
    const join = new SegmentCheck(task, segmentKeys, task.start, validateRecord);
    const counts: number[] = [];
    for (let base = 0; base < lineCount; base += 4) {
      const end = Math.min(base + 4, lineCount);
      const r = verifyChunk(
        bytes,
        { task, from: starts[base]!, to: starts[end]!, prevFrom: base === 0 ? -1 : starts[base - 1]!, base },
        segmentKeys,
      );
      expect(join.absorb(r)).toBe(true);
      counts.push(r.count);
    }
    // The last chunk stops before the checkpoint, which covers the whole segment.
    expect(counts).toEqual([4, 4, 2]);
    const { lines } = decodeLines(bytes.subarray(starts[10]!));
    expect(join.lines(lines, 10)).toBe(1);
    const sequential = verifySegmentText(
      { text: Buffer.from(bytes).toString(), tornBytes: 0 },
      task,
      segmentKeys,
    );
    expect(join.finish(lineCount, 0)).toEqual(sequential);
    expect(sequential).toMatchObject({ sealed: true, records: 11, findings: [] });
    // A chunk checked from a point that is not where the lines before ended is not taken.
    const fresh = new SegmentCheck(task, segmentKeys, task.start, validateRecord);
    const second = verifyChunk(
      bytes,
      { task, from: starts[4]!, to: starts[8]!, prevFrom: starts[3]!, base: 4 },
      segmentKeys,
    );
    expect(fresh.absorb(second)).toBe(false);
  });

  it("needs the right HMAC key: another key is incomplete for unknown ids, usage errors exit 3", async () => {
    const r = await verifyDirectory(pristine, { hmacKeys: [ok(hmacKeyFromBytes(randomBytes(32)))] });
    expect(r.status).toBe("incomplete");
    expect(r.instances[0]!.findings.map((f) => f.check)).toEqual(["no-hmac-key"]);
    expect(cli(["audit", "verify"]).code).toBe(3);
    expect(cli(["audit", "verify", "/nonexistent-dir"]).code).toBe(3);
    expect(cli(["audit", "verify", pristine, "--frob"]).code).toBe(3);
    expect(cli(["audit", "verify", pristine, "--key", keys.publicKeyFile]).code).toBe(3);
  });

  it("splits the HMAC member off exactly", async () => {
    const line = (await readLines(pristine, 1))[0]!;
    const parts = splitHmac(line)!;
    expect(keys.hmacKey.mac(parts.body)).toBe(parts.hmac);
    expect(JSON.parse(parts.body).hmac).toBeUndefined();
  });
});

it("cleans up", async () => {
  await rm(pristine, { recursive: true, force: true });
});
