import { createPublicKey, generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import * as Effect from "effect/Effect";
import * as Exit from "effect/Exit";
import * as Scope from "effect/Scope";
import type { Logger } from "pino";
import { makeJetStreamSink } from "../adapters/audit/JetStreamSink.ts";
import { makeSyslogTlsSink } from "../adapters/audit/SyslogTlsSink.ts";
import type { SinkQueueConfig } from "../adapters/audit/sinkConfig.ts";
import { jetStreamSinkOptions, syslogSinkOptions } from "../adapters/audit/sinkConfig.ts";
import type { EventSink } from "../runtime/EventSink.ts";
import { loadSqlParser } from "../sql/parser.ts";
import { type AuditConfig, instanceIdFrom, newBootId } from "./AuditConfig.ts";
import { type AuditError, auditError, isAuditError } from "./AuditError.ts";
import { signingSourceError } from "./AuditIntegrityConfig.ts";
import { type HmacKey, loadHmacKey } from "./HmacKey.ts";
import {
  type AuditPipeline,
  makeAuditPipeline,
  type PipelineStatus,
  type RemoteSinkSpec,
} from "./Pipeline.ts";
import { openPkcs11Signer } from "./Pkcs11Signer.ts";
import { loadPemSigner, type Signer } from "./Signer.ts";

/** Reads the keys, opens the signer and the sinks the `audit` section names, and starts the pipeline. */

const orFail = <A>(v: A | AuditError): Effect.Effect<A, AuditError> =>
  isAuditError(v) ? Effect.fail(v) : Effect.succeed(v);

const queueSettings = (q: SinkQueueConfig) => ({
  maxQueued: q.maxQueued,
  batchMax: q.batchMax,
  batchMs: q.batchMs,
  backoffMinMs: q.backoffMinMs,
  backoffMaxMs: q.backoffMaxMs,
  attemptTimeoutMs: q.attemptTimeoutMs,
});

const openSigner = (c: AuditConfig): Effect.Effect<Signer, AuditError, Scope.Scope> => {
  const p = c.signing.pkcs11;
  if (p === undefined)
    return Effect.promise(() => loadPemSigner(c.signing.pemFile!)).pipe(Effect.flatMap(orFail));
  return Effect.acquireRelease(
    Effect.promise(() =>
      openPkcs11Signer({
        module: p.module,
        keyLabel: p.keyLabel,
        ...(p.tokenLabel === undefined ? {} : { tokenLabel: p.tokenLabel }),
        ...(p.slot === undefined ? {} : { slot: p.slot }),
        ...(p.pinFile === undefined ? {} : { pinFile: p.pinFile }),
        ...(p.pinEnv === undefined ? {} : { pinEnv: p.pinEnv }),
      }),
    ).pipe(Effect.flatMap(orFail)),
    (s) => Effect.promise(async () => s.close?.()),
  );
};

export const openAuditPipeline = (
  c: AuditConfig,
  log: Pick<Logger, "info" | "warn" | "error">,
  version: string,
): Effect.Effect<AuditPipeline, AuditError, Scope.Scope> =>
  Effect.gen(function* () {
    const bad = signingSourceError(c);
    if (bad !== undefined) return yield* Effect.fail(auditError("PGW_AUDIT_SIGNER", bad));
    const hmacKey = yield* Effect.promise(() => loadHmacKey(c.hmacKeyFile)).pipe(Effect.flatMap(orFail));
    const previousHmacKeys: HmacKey[] = [];
    for (const f of c.previousHmacKeyFiles)
      previousHmacKeys.push(yield* Effect.promise(() => loadHmacKey(f)).pipe(Effect.flatMap(orFail)));
    const signer = yield* openSigner(c);
    const instance = c.instance ?? instanceIdFrom(hostname());
    const parser =
      c.statements === "normalized" || c.statements === "fingerprint"
        ? yield* Effect.promise(() => loadSqlParser())
        : undefined;
    const sinkFailed = (e: { message: string }) => auditError("PGW_AUDIT_IO", e.message);
    const sinks: RemoteSinkSpec[] = [];
    const syslog = c.sinks.syslog;
    if (syslog !== undefined) {
      const opts = yield* syslogSinkOptions(syslog).pipe(Effect.mapError(sinkFailed));
      sinks.push({
        sink: makeSyslogTlsSink(opts),
        required: syslog.required,
        queue: queueSettings(syslog.queue),
      });
    }
    const js = c.sinks.jetstream;
    if (js !== undefined) {
      const opts = yield* jetStreamSinkOptions(js, instance).pipe(Effect.mapError(sinkFailed));
      sinks.push({ sink: makeJetStreamSink(opts), required: js.required, queue: queueSettings(js.queue) });
    }
    return yield* makeAuditPipeline({
      dir: c.dir,
      instance,
      boot: newBootId(),
      hmacKey,
      previousHmacKeys,
      signer,
      segmentMaxBytes: c.segmentMaxBytes,
      segmentMaxAgeMs: c.segmentMaxAgeMs,
      fsyncBatchMs: c.fsyncBatchMs,
      onFailure: c.onFailure,
      statements: c.statements,
      queueMax: c.queueMax,
      sinks,
      log,
      ...(parser === undefined ? {} : { parser }),
      version,
    });
  });

export interface EmbeddedAuditKeys {
  readonly hmacKeyFile: string;
  readonly signingKeyFile: string;
  /** The public half, for `pgwarden audit verify --pubkey`. */
  readonly publicKeyFile: string;
}

const createOnce = async (path: string, data: string): Promise<void> => {
  try {
    await writeFile(path, data, { mode: 0o600, flag: "wx" });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
  }
};

/**
 * The embedded default's keys, made on first run in `dir` (mode 0600): an HMAC key and an ECDSA
 * P-256 signing key. Kept beside, not inside, the audit directory, so copying the log copies no key.
 */
export const ensureEmbeddedAuditKeys = async (dir: string): Promise<EmbeddedAuditKeys> => {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const keys = {
    hmacKeyFile: join(dir, "hmac.key"),
    signingKeyFile: join(dir, "signing.pem"),
    publicKeyFile: join(dir, "signing.pub.pem"),
  };
  await createOnce(keys.hmacKeyFile, `${randomBytes(32).toString("hex")}\n`);
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  await createOnce(keys.signingKeyFile, privateKey.export({ type: "pkcs8", format: "pem" }).toString());
  const pub = createPublicKey(await readFile(keys.signingKeyFile, "utf8"));
  await writeFile(keys.publicKeyFile, pub.export({ type: "spki", format: "pem" }).toString(), {
    mode: 0o644,
  });
  return keys;
};

/** What the proxy and the CLI hold of a running pipeline, in this thread or another. */
export interface AuditHandle {
  readonly sink: EventSink;
  status(): PipelineStatus;
}

/** A pipeline outside Effect, for the CLI and tests: started once, stopped once. */
export interface RunningAudit {
  readonly pipeline: AuditHandle;
  /** Drains, seals and releases everything (see AuditPipeline.close). */
  stop(timeoutMs: number): Promise<AuditError | undefined>;
}

export const startAudit = async (
  open: Effect.Effect<AuditPipeline, AuditError, Scope.Scope>,
): Promise<(RunningAudit & { readonly pipeline: AuditPipeline }) | AuditError> => {
  const scope = await Effect.runPromise(Scope.make());
  const exit = await Effect.runPromiseExit(Scope.provide(scope)(open));
  if (Exit.isFailure(exit)) {
    await Effect.runPromise(Scope.close(scope, Exit.void));
    const failure = exit.cause.reasons.find((r) => r._tag === "Fail");
    return failure?._tag === "Fail"
      ? (failure.error as AuditError)
      : auditError("PGW_AUDIT_IO", `audit pipeline failed to start: ${String(exit.cause)}`);
  }
  const pipeline = exit.value;
  let stopped: Promise<AuditError | undefined> | undefined;
  return {
    pipeline,
    stop: (timeoutMs) => {
      stopped ??= Effect.runPromise(
        pipeline.close(timeoutMs).pipe(Effect.ensuring(Scope.close(scope, Exit.void))),
      );
      return stopped;
    },
  };
};
