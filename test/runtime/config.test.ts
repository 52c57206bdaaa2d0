import { Redacted } from "effect";
import { describe, expect, it } from "vitest";
import { isPgwardenError } from "../../src/errors.ts";
import { applyEnv, configReference, decodeConfig, parseConfigText } from "../../src/runtime/config.ts";

const message = (input: unknown): string => {
  const r = decodeConfig(input);
  if (!isPgwardenError(r)) throw new Error("expected an error");
  expect(r.code).toBe("PGW_CONFIG");
  return r.message;
};

describe("configuration", () => {
  const cipherDefaults = {
    minVersion: "TLSv1.2",
    ciphers:
      "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
    ciphersuites: "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
    groups: "P-256:P-384",
    handshakeTimeoutMs: 10000,
  };

  it("fills every default from an empty document", () => {
    const c = decodeConfig({});
    expect(c).toEqual({
      listen: { host: "127.0.0.1", port: 6432 },
      upstream: {
        host: "127.0.0.1",
        port: 5432,
        fallbackToClientUser: false,
        connectTimeoutMs: 5000,
        tls: { mode: "disable", direct: false, ...cipherDefaults },
      },
      startup: {
        parameters: [
          "application_name",
          "client_encoding",
          "DateStyle",
          "TimeZone",
          "IntervalStyle",
          "extra_float_digits",
          "search_path",
        ],
        options: "refuse",
      },
      // Fail closed: with no grants, nobody gets in.
      access: { grants: [], rules: [{ name: "default", action: "allow" }], groups: {}, certMapping: [] },
      auth: {
        method: "scram-sha-256",
        usersFile: "pgwarden-users.txt",
        timeoutMs: 10000,
        allowPasswordOverPlaintext: false,
      },
      limits: {
        maxClientConnections: 1000,
        maxCancelConnections: 16,
        maxMessageBytes: 268435456,
        maxBufferedBytesPerConnection: 1048576,
        lingerMs: 500,
      },
      pool: {
        mode: "session",
        size: 20,
        minIdle: 0,
        reserveSize: 0,
        reserveAfterMs: 5000,
        maxClientsPerPool: 0,
        queryWaitTimeoutMs: 120000,
        idleInTransactionTimeoutMs: 0,
        transactionTimeoutMs: 0,
        serverLifetimeMs: 3600000,
        serverIdleTimeoutMs: 600000,
        serverConnectTimeoutMs: 15000,
        serverCheckDelayMs: 30000,
        serverCheckQuery: "",
        resetQuery: "DISCARD ALL",
        maxIdlePerKey: 20,
        preparedStatements: { enabled: true, perServerCapacity: 200 },
        pinning: { onSessionState: "pin" },
        overrides: [],
      },
      shutdown: { drainTimeoutMs: 30000 },
      log: { level: "info" },
      tls: { mode: "disable", ...cipherDefaults },
      sessions: { perIdentity: {}, idleTimeoutMs: 900000, maxLifetimeMs: 0 },
      fips: false,
      admin: { identities: [], database: "pgwarden" },
    });
  });

  it("names the key and the expected type for each bad value", () => {
    const m = message({ listen: { port: "x" }, upstream: { port: 70000 }, auth: { method: "md5" } });
    expect(m).toContain("at listen.port");
    expect(m).toContain("Expected number");
    expect(m).toContain("at upstream.port");
    expect(m).toContain("between 0 and 65535");
    expect(m).toContain("at auth.method");
    expect(m).toContain('"scram-sha-256" | "trust"');
  });

  it("rejects unknown keys, since a typo in a security setting must not pass silently", () => {
    expect(message({ auth: { metod: "trust" } })).toContain("at auth.metod");
    expect(message({ listne: {} })).toContain("at listne");
  });

  it("layers environment over the file and parses ports", () => {
    const merged = applyEnv(
      { listen: { port: 7000 }, upstream: { host: "db" } },
      { PGWARDEN_LISTEN_PORT: "7100", PGWARDEN_UPSTREAM_PASSWORD: "s3cret", PGWARDEN_LOG_LEVEL: "" },
    );
    const c = decodeConfig(merged);
    if (isPgwardenError(c)) throw new Error(c.message);
    expect(c.listen.port).toBe(7100);
    expect(c.upstream.host).toBe("db");
    // Secrets are Redacted: printing the config never shows them.
    expect(Redacted.value(c.upstream.password!)).toBe("s3cret");
    expect(String(c.upstream.password)).not.toContain("s3cret");
    expect(JSON.stringify(c)).not.toContain("s3cret");
    expect(c.log.level).toBe("info");
  });

  it("reports YAML syntax errors with the file name", async () => {
    const r = await parseConfigText("listen: [1, 2\n", "pgwarden.yaml");
    expect(isPgwardenError(r) && r.message.startsWith("pgwarden.yaml:")).toBe(true);
    expect(await parseConfigText("- a\n- b\n", "x.yaml")).toMatchObject({
      message: "x.yaml: expected a mapping at the top level",
    });
  });

  it("lists every setting in the reference, documented in docs/configuration.md", async () => {
    const { readFile } = await import("node:fs/promises");
    const doc = await readFile(new URL("../../docs/configuration.md", import.meta.url), "utf8");
    const keys = Object.keys(configReference());
    expect(keys).toContain("upstream.password");
    for (const k of keys) expect(doc, `docs/configuration.md lacks ${k}`).toContain(`\`${k}\``);
  });
});
