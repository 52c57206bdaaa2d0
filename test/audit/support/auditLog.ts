import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "vitest";
import { type AuditError, isAuditError } from "../../../src/audit/AuditError.ts";
import type { AuditEvent } from "../../../src/audit/AuditEvent.ts";
import { validateRecord } from "../../../src/audit/AuditEvent.ts";
import { type HmacKey, loadHmacKey } from "../../../src/audit/HmacKey.ts";
import { SegmentWriter, type SegmentWriterOptions } from "../../../src/audit/SegmentWriter.ts";
import { loadPemSigner, type Signer } from "../../../src/audit/Signer.ts";
import { segmentFileName } from "../../../src/audit/segmentFiles.ts";
import { auditClock } from "../../../src/audit/timestamp.ts";
import { CLI } from "../../support/cli.ts";

export const INSTANCE = "pgw-test";

export const ok = <T>(v: T): Exclude<T, AuditError> => {
  if (isAuditError(v)) throw new Error(v.message);
  return v as Exclude<T, AuditError>;
};

export interface Keys {
  readonly dir: string;
  readonly hmacKeyFile: string;
  readonly hmacKey: HmacKey;
  readonly signingKeyFile: string;
  readonly publicKeyFile: string;
  readonly signer: Signer;
}

/** An HMAC key file and an ECDSA key pair made by the real openssl. */
export const makeKeys = async (
  name: string,
  curve: "prime256v1" | "secp384r1" = "prime256v1",
): Promise<Keys> => {
  const dir = await mkdtemp(join(tmpdir(), `pgw-audit-keys-${name}-`));
  const hmacKeyFile = join(dir, "hmac.key");
  await writeFile(hmacKeyFile, `${randomBytes(32).toString("hex")}\n`, { mode: 0o600 });
  await chmod(hmacKeyFile, 0o600);
  const signingKeyFile = join(dir, "signing.pem");
  const publicKeyFile = join(dir, "signing.pub.pem");
  execFileSync("openssl", ["ecparam", "-name", curve, "-genkey", "-noout", "-out", signingKeyFile], {
    timeout: 20_000,
  });
  execFileSync("openssl", ["ec", "-in", signingKeyFile, "-pubout", "-out", publicKeyFile], {
    timeout: 20_000,
    stdio: "pipe",
  });
  return {
    dir,
    hmacKeyFile,
    hmacKey: ok(await loadHmacKey(hmacKeyFile)),
    signingKeyFile,
    publicKeyFile,
    signer: ok(await loadPemSigner(signingKeyFile)),
  };
};

export const transition = (i: number, session = `s${i % 3}`): AuditEvent => ({
  kind: "transition",
  ts: auditClock.now(),
  session,
  identity: `user${i % 3}`,
  source: "127.0.0.1:5000",
  machine: "client",
  from: "ready.idle",
  to: "busy.simpleQuery",
  cause: `Query#${i}`,
});

export const openWriter = async (dir: string, keys: Keys, extra: Partial<SegmentWriterOptions> = {}) =>
  ok(
    await SegmentWriter.open({
      dir,
      instance: INSTANCE,
      boot: "boot-1",
      hmacKey: keys.hmacKey,
      signer: keys.signer,
      segmentMaxBytes: 1 << 30,
      segmentMaxAgeMs: 3_600_000,
      fsyncBatchMs: 2,
      ...extra,
    }),
  );

/** A log of three sealed segments of ten records each (seq 1..10 + checkpoint 11, 12..21 + 22, 23..32 + 33). */
export const makeLog = async (keys: Keys): Promise<string> => {
  const dir = await mkdtemp(join(tmpdir(), "pgw-audit-log-"));
  const w = await openWriter(dir, keys);
  for (let s = 0; s < 3; s++) {
    for (let i = 0; i < 10; i++) expect(w.append(transition(s * 10 + i))).toBe(true);
    expect(await w.seal(s === 2 ? "shutdown" : "manual")).toBeUndefined();
  }
  await w.close();
  return dir;
};

export const segmentPath = (dir: string, segment: number): string =>
  join(dir, segmentFileName(INSTANCE, segment));

export const readLines = async (dir: string, segment: number): Promise<string[]> =>
  (await readFile(segmentPath(dir, segment), "utf8")).split("\n").slice(0, -1);

export const writeLines = (dir: string, segment: number, lines: readonly string[]): Promise<void> =>
  writeFile(segmentPath(dir, segment), lines.map((l) => `${l}\n`).join(""));

/** Every line in the log validates against the record schema. */
export const expectSchemaValid = async (dir: string, segments: number): Promise<void> => {
  for (let s = 1; s <= segments; s++) {
    for (const line of await readLines(dir, s)) {
      const r = validateRecord(JSON.parse(line));
      expect(isAuditError(r) ? r.message : "valid").toBe("valid");
    }
  }
};

/** Runs the real CLI on the project's Node. */
export const cli = (args: string[]) => {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
};
