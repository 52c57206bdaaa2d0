import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { DIST, freshBundle, sourceStamp } from "../bin/bundle.js";
import { hmacKeyBytes } from "../src/audit/HmacKey.ts";
import { GENESIS_HASH } from "../src/audit/recordLine.ts";
import { segmentFileName } from "../src/audit/segmentFiles.ts";
import { type ChunkResult, type ChunkTask, verifyChunk } from "../src/audit/verifySegment.ts";
import { INSTANCE, makeKeys, makeLog, segmentPath } from "./audit/support/auditLog.ts";
import { CLI } from "./support/cli.ts";

describe("the bundle pgwarden runs", () => {
  it("is current for the sources under test, so the spawned pgwarden runs it", () => {
    expect(freshBundle()).toBe(path.join(DIST, "main.js"));
  });

  it("gives way to the sources when PGWARDEN_SOURCES=1", () => {
    const before = process.env.PGWARDEN_SOURCES;
    process.env.PGWARDEN_SOURCES = "1";
    try {
      expect(freshBundle()).toBeUndefined();
    } finally {
      if (before === undefined) delete process.env.PGWARDEN_SOURCES;
      else process.env.PGWARDEN_SOURCES = before;
    }
  });

  it("reads the package's version from beside itself", () => {
    const { version } = JSON.parse(readFileSync("package.json", "utf8")) as { version: string };
    const r = spawnSync(process.execPath, [CLI, "--version"], { encoding: "utf8" });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(version);
  });

  it("is stale after any source is edited, added or removed", () => {
    const root = mkdtempSync(path.join(tmpdir(), "pgw-stamp-"));
    mkdirSync(path.join(root, "src", "a"), { recursive: true });
    mkdirSync(path.join(root, "scripts"));
    for (const f of ["package.json", "package-lock.json", "scripts/build.ts", "src/a/x.ts"])
      writeFileSync(path.join(root, f), "1");
    const t = new Date("2026-01-01T00:00:00Z");
    utimesSync(path.join(root, "src/a/x.ts"), t, t);
    const first = sourceStamp(root);
    expect(sourceStamp(root)).toBe(first);
    writeFileSync(path.join(root, "src/a/x.ts"), "22");
    const edited = sourceStamp(root);
    expect(edited).not.toBe(first);
    writeFileSync(path.join(root, "src/a/y.ts"), "");
    const added = sourceStamp(root);
    expect(added).not.toBe(edited);
    rmSync(path.join(root, "src/a/y.ts"));
    expect(sourceStamp(root)).toBe(edited);
    rmSync(path.join(root, "src/a/x.ts"));
    expect(sourceStamp(root)).not.toBe(edited);
  });
});

describe("the bundle's worker threads", () => {
  it("starts the verifier thread from dist/ and checks a chunk there as the sources do", async () => {
    const keys = await makeKeys("bundle");
    const dir = await makeLog(keys);
    const task = {
      instance: INSTANCE,
      file: segmentFileName(INSTANCE, 1),
      segment: 1,
      isLast: false,
      start: { expectSeq: 1, prevHash: GENESIS_HASH, prevCheckpoint: GENESIS_HASH, macKeyId: undefined },
    };
    const worker = new Worker(path.join(DIST, "verifyThread.js"), {
      workerData: {
        hmacKeys: [hmacKeyBytes(keys.hmacKey)!],
        trustedPems: [readFileSync(keys.publicKeyFile, "utf8")],
      },
    });
    const file = readFileSync(segmentPath(dir, 1));
    const bytes = new Uint8Array(new SharedArrayBuffer(file.length));
    bytes.set(file);
    const chunk: ChunkTask = { task, from: 0, to: bytes.length, prevFrom: -1, base: 0 };
    try {
      const reply = await new Promise<{ result?: ChunkResult; error?: string }>((resolve, reject) => {
        worker.once("message", resolve);
        worker.once("error", reject);
        worker.postMessage({ n: 1, buffer: bytes.buffer, chunk });
      });
      // Ten records, then the checkpoint, which only the joining thread can check.
      expect(reply.error).toBeUndefined();
      expect(reply.result?.count).toBe(10);
      expect(reply.result).toEqual(
        verifyChunk(bytes, chunk, {
          macKeys: new Map([[keys.hmacKey.id, keys.hmacKey]]),
          trusted: new Map(),
        }),
      );
    } finally {
      await worker.terminate();
    }
  });
});
