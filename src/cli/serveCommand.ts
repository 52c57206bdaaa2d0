import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { EmbeddedInstance } from "../adapters/embeddedPostgres.ts";
import { createScramVerifier, type ScramVerifier } from "../auth/scramVerifier.ts";
import { isPgwardenError } from "../errors.ts";
import { applyEnv, decodeConfig, type PgwardenConfig, parseConfigText, setPath } from "../runtime/config.ts";
import type { FipsStatus } from "../runtime/fips.ts";
import { createLogger } from "../runtime/logger.ts";
import { startServer } from "../runtime/Server.ts";
import { ensureUser, loadUsers } from "../runtime/users.ts";
import { pgwardenVersion } from "../version.ts";

export const serveOptions = {
  config: { type: "string" },
  listen: { type: "string" },
  upstream: { type: "string" },
  auth: { type: "string" },
  "users-file": { type: "string" },
  "log-level": { type: "string" },
  "data-dir": { type: "string" },
  fips: { type: "boolean" },
} as const;

export type ServeFlags = { [K in Exclude<keyof typeof serveOptions, "fips">]?: string } & { fips?: boolean };

const fail = (message: string, code = 2): number => {
  process.stderr.write(`pgwarden: ${message}\n`);
  return code;
};

/** Flags are the last layer over file and environment; `--listen` and `--upstream` take HOST:PORT. */
const applyFlags = (base: Record<string, unknown>, flags: ServeFlags): Record<string, unknown> | string => {
  const out = structuredClone(base);
  for (const [flag, key] of [
    ["listen", "listen"],
    ["upstream", "upstream"],
  ] as const) {
    const v = flags[flag];
    if (v === undefined) continue;
    const m = /^(.*):(\d+)$/.exec(v);
    if (m === null) return `--${flag} expects HOST:PORT, got '${v}'`;
    setPath(out, `${key}.host`, m[1]!.replace(/^\[(.*)\]$/, "$1"));
    setPath(out, `${key}.port`, m[2]!);
  }
  if (flags.auth !== undefined) setPath(out, "auth.method", flags.auth);
  if (flags["users-file"] !== undefined) setPath(out, "auth.usersFile", flags["users-file"]);
  if (flags["log-level"] !== undefined) setPath(out, "log.level", flags["log-level"]);
  if (flags.fips === true) out.fips = true;
  return out;
};

export const runServe = async (flags: ServeFlags): Promise<number> => {
  const configPath = flags.config ?? process.env.PGWARDEN_CONFIG;
  let input: Record<string, unknown> = {};
  if (configPath !== undefined && configPath !== "") {
    const text = await readFile(configPath, "utf8").catch((e: NodeJS.ErrnoException) => e);
    if (text instanceof Error)
      return fail(`cannot read config file ${configPath}: ${text.code ?? text.message}`);
    const parsed = await parseConfigText(text, configPath);
    if (isPgwardenError(parsed)) return fail(parsed.message);
    input = parsed;
  }
  const layered = applyFlags(applyEnv(input, process.env), flags);
  if (typeof layered === "string") return fail(layered);

  let embedded: EmbeddedInstance | undefined;
  let clientLogin: { user: string; password: string; database: string; ca: string } | undefined;
  let auditKeys: { hmacKeyFile: string; publicKeyFile: string } | undefined;
  if (configPath === undefined || configPath === "") {
    // Embedded mode: a private PostgreSQL, its own generated secrets, SCRAM over required TLS for
    // clients, and an application role that is no superuser and owns its database.
    // Loaded only here: the package is heavy and installs exit hooks.
    const { defaultDataHome, ensureAppRole, persistentSecret, startEmbeddedPostgres } = await import(
      "../adapters/embeddedPostgres.ts"
    );
    const home = flags["data-dir"] ?? defaultDataHome();
    process.stderr.write(`pgwarden: no --config given; starting an embedded PostgreSQL in ${home}\n`);
    let app: { role: string; database: string; password: string };
    try {
      embedded = await startEmbeddedPostgres(home, () => {});
      app = await ensureAppRole(embedded, home);
    } catch (e) {
      await embedded?.stop().catch(() => {});
      return fail(`embedded PostgreSQL failed to start: ${(e as Error).message}`, 1);
    }
    const clientPassword = await persistentSecret(join(home, "client-password"));
    const usersFile = join(home, "users.txt");
    const ensured = await ensureUser(usersFile, app.role, () => createScramVerifier(clientPassword));
    if (isPgwardenError(ensured)) {
      await embedded.stop();
      return fail(ensured.message, 1);
    }
    setPath(layered, "upstream.host", embedded.host);
    setPath(layered, "upstream.port", String(embedded.port));
    setPath(layered, "upstream.user", app.role);
    setPath(layered, "upstream.password", app.password);
    (layered as { access?: unknown }).access = {
      grants: [{ identity: app.role, databases: [app.database], role: app.role }],
    };
    if (flags["users-file"] === undefined) setPath(layered, "auth.usersFile", usersFile);
    // TLS required, with certificates of its own made on first run; clients verify the server.
    const { ensureLocalCertificates } = await import("../adapters/tls/localCa.ts");
    const local = await ensureLocalCertificates(join(home, "tls"));
    if (isPgwardenError(local)) {
      await embedded.stop();
      return fail(local.message, 1);
    }
    clientLogin = { user: app.role, password: clientPassword, database: app.database, ca: local.ca };
    (layered as { tls?: unknown }).tls = { mode: "require", cert: local.cert, key: local.key };
    if ((layered as { audit?: unknown }).audit === undefined) {
      // The embedded default audits into its data directory, with keys made on first run.
      const { ensureEmbeddedAuditKeys } = await import("../audit/openPipeline.ts");
      const keys = await ensureEmbeddedAuditKeys(join(home, "audit-keys"));
      auditKeys = keys;
      (layered as { audit?: unknown }).audit = {
        dir: join(home, "audit"),
        hmacKeyFile: keys.hmacKeyFile,
        signing: { pemFile: keys.signingKeyFile },
      };
    }
  }

  const config = decodeConfig(layered);
  if (isPgwardenError(config)) {
    await embedded?.stop();
    return fail(config.message);
  }
  // SIGHUP re-reads the file (with the same environment and flags) for the access rules.
  const reread =
    configPath === undefined || configPath === ""
      ? undefined
      : async (): Promise<PgwardenConfig | string> => {
          const text = await readFile(configPath, "utf8").catch((e: NodeJS.ErrnoException) => e);
          if (text instanceof Error)
            return `cannot read config file ${configPath}: ${text.code ?? text.message}`;
          const parsed = await parseConfigText(text, configPath);
          if (isPgwardenError(parsed)) return parsed.message;
          const again = applyFlags(applyEnv(parsed, process.env), flags);
          if (typeof again === "string") return again;
          const decoded = decodeConfig(again);
          return isPgwardenError(decoded) ? decoded.message : decoded;
        };
  return serveWith(config, embedded, clientLogin, auditKeys, reread);
};

const serveWith = async (
  config: PgwardenConfig,
  embedded: EmbeddedInstance | undefined,
  clientLogin: { user: string; password: string; database: string; ca: string } | undefined,
  auditKeys: { hmacKeyFile: string; publicKeyFile: string } | undefined,
  reread: (() => Promise<PgwardenConfig | string>) | undefined,
): Promise<number> => {
  const log = createLogger(config.log.level);
  let fipsStatus: FipsStatus | undefined;
  if (config.fips) {
    // Before the users file or any TLS context is used: every later primitive runs in FIPS mode.
    const checked = await startInFipsMode(config);
    if (typeof checked === "string") {
      log.fatal({ reason: checked }, "FIPS mode self-test failed; not starting");
      await embedded?.stop();
      return fail(checked, 1);
    }
    fipsStatus = checked;
    log.info(
      {
        provider: checked.providers?.find((p) => p.id === "fips")?.name,
        version: checked.providers?.find((p) => p.id === "fips")?.version,
        probes: checked.probes.map((p) => `${p.ok ? "pass" : "FAIL"} ${p.name}`),
      },
      "FIPS mode on: every self-test passed",
    );
  }
  let users: ReadonlyMap<string, ScramVerifier> = new Map();
  if (config.auth.method === "trust") {
    const banner =
      "client authentication is 'trust': anyone who can reach the listener gets in. Use only for local development.";
    log.warn(banner);
    process.stderr.write(`\n  WARNING: ${banner}\n\n`);
  } else {
    const loaded = await loadUsers(config.auth.usersFile);
    if (isPgwardenError(loaded)) {
      await embedded?.stop();
      return fail(
        `${loaded.message}\n  create entries with: pgwarden users add NAME --file ${config.auth.usersFile}`,
      );
    }
    users = loaded;
  }

  let audit: import("../audit/openPipeline.ts").RunningAudit | undefined;
  if (config.audit === undefined) {
    const banner = "audit is off: no audit section in the configuration. Nothing will be recorded.";
    log.warn(banner);
    process.stderr.write(`\n  WARNING: ${banner}\n\n`);
  } else {
    // The pipeline runs on its own thread: chaining, hashing and fsync stay off the relay's loop.
    const { startAuditWorker } = await import("../audit/AuditWorker.ts");
    const { isAuditError } = await import("../audit/AuditError.ts");
    const started = await startAuditWorker(config.audit, log, pgwardenVersion());
    if (isAuditError(started)) {
      await embedded?.stop();
      return fail(`audit: ${started.message}`, 1);
    }
    audit = started;
    const verify =
      auditKeys === undefined
        ? `pgwarden audit verify ${config.audit.dir} --key HMACKEYFILE --pubkey PUBLICKEY`
        : `pgwarden audit verify ${config.audit.dir} --key ${auditKeys.hmacKeyFile} --pubkey ${auditKeys.publicKeyFile}`;
    log.info({ dir: config.audit.dir, onFailure: config.audit.onFailure }, "audit trail on");
    process.stderr.write(`pgwarden: audit trail in ${config.audit.dir}\n  verify with: ${verify}\n`);
  }

  let server: Awaited<ReturnType<typeof startServer>>;
  try {
    server = await startServer({
      config,
      log,
      users: () => users,
      ...(audit === undefined ? {} : { events: audit.pipeline.sink }),
      ...(fipsStatus === undefined ? {} : { fipsStatus }),
    });
  } catch (e) {
    await audit?.stop(0);
    await embedded?.stop();
    return fail((e as Error).message, 1);
  }

  // Every connection catches its own failures; anything that still escapes is logged, not fatal.
  process.on("unhandledRejection", (e) => {
    log.error({ err: e instanceof Error ? e.stack : String(e) }, "unhandled rejection");
  });

  let signals = 0;
  const onSignal = (name: string) => {
    signals++;
    if (signals === 1) {
      log.info({ signal: name }, "draining; send the signal again to stop at once");
      void server.drain();
    } else void server.stop();
  };
  process.on("SIGINT", () => onSignal("SIGINT"));
  process.on("SIGTERM", () => onSignal("SIGTERM"));
  process.on("SIGHUP", () => {
    // Certificates and rules reload in place; sessions already open are not dropped.
    if (reread === undefined) server.reload();
    else
      void reread().then((next) => {
        if (typeof next === "string") {
          log.error({ reason: next }, "configuration reload failed; keeping the running rules");
          server.reload();
        } else server.reload(next);
      });
    if (config.auth.method === "trust") return;
    void loadUsers(config.auth.usersFile).then((u) => {
      if (isPgwardenError(u))
        log.error({ reason: u.message }, "users file reload failed; keeping the old one");
      else {
        users = u;
        log.info({ users: u.size }, "users file reloaded");
      }
    });
  });

  // Said only once the signal handlers are in place: a supervisor that signals on seeing this line
  // must not meet the default action (an abrupt exit).
  const where = `${server.host.includes(":") ? `[${server.host}]` : server.host}:${server.port}`;
  if (embedded !== undefined && clientLogin !== undefined) {
    const { user, password, database, ca } = clientLogin;
    // verify-full: the client checks pgwarden's certificate against the local CA, not just encrypts.
    const verify = `sslmode=verify-full&sslrootcert=${encodeURIComponent(ca)}`;
    process.stdout.write(
      `\npgwarden is listening on ${where} (TLS required), in front of an embedded PostgreSQL.\nConnect with:\n\n` +
        `  psql "postgresql://${user}:${encodeURIComponent(password)}@${where}/${database}?${verify}"\n\nCtrl-C stops both.\n`,
    );
  } else {
    process.stdout.write(
      `pgwarden is listening on ${where} (upstream ${config.upstream.host}:${config.upstream.port})\n`,
    );
  }

  const result = await server.stopped;
  if (audit !== undefined && config.audit !== undefined) {
    // Sessions are over: drain every queue, seal the open segment, let the sinks catch up.
    const err = await audit.stop(config.audit.drainTimeoutMs);
    if (err !== undefined)
      log.error({ code: err.code, reason: err.message }, "audit trail not closed cleanly");
    else log.info({ status: audit.pipeline.status() }, "audit trail sealed");
  }
  if (embedded !== undefined) {
    await embedded.stop().catch(() => {});
    process.stderr.write("pgwarden: embedded PostgreSQL stopped\n");
  }
  if (!result.ok) {
    log.fatal({ cause: result.cause }, "pgwarden failed");
    return fail(`pgwarden failed: ${result.cause}`, 1);
  }
  return 0;
};

/**
 * `fips: true`: FIPS mode on, then the self-test with the configured TLS policies and the client
 * leg's real context (loopback handshakes). A string says why pgwarden must not start.
 */
const startInFipsMode = async (config: PgwardenConfig): Promise<FipsStatus | string> => {
  const { enableFips, fipsSelfTest, formatFipsStatus } = await import("../runtime/fips.ts");
  const { buildSecureContext, clientLegContextOptions, cipherPolicyOptions } = await import(
    "../adapters/tls/policy.ts"
  );
  const enabled = enableFips();
  if (isPgwardenError(enabled)) return enabled.message;
  const policies = [{ name: "upstream.tls", options: cipherPolicyOptions(config.upstream.tls) }];
  const contexts: { name: string; context: import("node:tls").SecureContext }[] = [];
  let contextError: string | undefined;
  if (config.tls.mode !== "disable") {
    const options = clientLegContextOptions(config.tls);
    if (isPgwardenError(options)) return options.message;
    policies.push({ name: "tls", options });
    // Without a working provider no context builds: the report still says what is missing.
    const context = buildSecureContext(options);
    if (isPgwardenError(context)) contextError = context.message;
    else contexts.push({ name: "tls", context });
  }
  const status = await fipsSelfTest({ policies, contexts });
  if (status.ok && contextError === undefined) return status;
  const why = contextError === undefined ? "" : ` (tls: ${contextError})`;
  return `FIPS mode requested, but the self-test failed${why}:\n${formatFipsStatus(status)}`;
};
