import { execFile } from "node:child_process";
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  generateKeyPairSync,
  getFips,
  pbkdf2Sync,
  randomBytes,
  setFips,
  sign,
  verify,
} from "node:crypto";
import * as net from "node:net";
import * as tls from "node:tls";
import { FIPS_GROUPS, FIPS_TLS12_CIPHERS, FIPS_TLS13_CIPHERSUITES } from "../adapters/tls/config.ts";
import { type PgwardenError, pgwardenError, SqlState } from "../errors.ts";

/**
 * FIPS mode as something to prove, not a flag to trust: `crypto.getFips()` is 1 even when no FIPS
 * provider loaded (every algorithm then fails), so the status probes each algorithm and the TLS
 * policy. This reports what the running OpenSSL does; it never claims FIPS 140 validation.
 */

/** One self-test: the algorithm either must work or must be refused. */
export interface FipsProbe {
  readonly name: string;
  readonly expect: "works" | "refused";
  readonly ok: boolean;
  /** What happened: the error code when refused, the reason when the probe failed. */
  readonly detail?: string;
}

/** A provider as `openssl list -providers` names it with the same OPENSSL_CONF/OPENSSL_MODULES. */
export interface OpensslProvider {
  readonly id: string;
  readonly name: string;
  readonly version: string | undefined;
  readonly status: string | undefined;
}

export interface FipsStatus {
  /** crypto.getFips() === 1: FIPS mode requested. Proves nothing alone. */
  readonly fipsMode: boolean;
  /** OpenSSL version Node runs with (process.versions.openssl). */
  readonly nodeOpenssl: string;
  readonly opensslConf: string | undefined;
  readonly opensslModules: string | undefined;
  /** Providers loaded by the openssl CLI from the same configuration; undefined when it cannot run. */
  readonly providers: readonly OpensslProvider[] | undefined;
  readonly probes: readonly FipsProbe[];
  /** Every probe passed. */
  readonly ok: boolean;
}

export const fipsError = (message: string): PgwardenError =>
  pgwardenError("PGW_FIPS", SqlState.internalError, message);

const errorCode = (e: unknown): string => {
  const error = e as { code?: string; message?: string };
  return error.code ?? error.message ?? String(e);
};

/** Runs `attempt`; "works" probes pass when it returns true, "refused" probes when it throws. */
const probe = (name: string, expect: FipsProbe["expect"], attempt: () => boolean): FipsProbe => {
  try {
    const worked = attempt();
    if (expect === "works")
      return worked ? { name, expect, ok: true } : { name, expect, ok: false, detail: "wrong result" };
    return { name, expect, ok: false, detail: "was not refused" };
  } catch (e) {
    return expect === "refused"
      ? { name, expect, ok: true, detail: errorCode(e) }
      : { name, expect, ok: false, detail: errorCode(e) };
  }
};

const hex = (b: Buffer) => b.toString("hex");

/** Known-answer and round-trip probes of the primitives pgwarden uses, and two it must not. */
export const algorithmProbes = (): FipsProbe[] => [
  probe("fips-mode", "works", () => getFips() === 1),
  probe(
    "sha256",
    "works",
    () =>
      hex(createHash("sha256").update("abc").digest()) ===
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  ),
  // RFC 4231 test case 2.
  probe(
    "hmac-sha256",
    "works",
    () =>
      hex(createHmac("sha256", "Jefe").update("what do ya want for nothing?").digest()) ===
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
  ),
  // SCRAM's parameters: 16-byte salt, 4096 iterations (the FIPS provider enforces lower bounds).
  probe(
    "pbkdf2-sha256",
    "works",
    () =>
      hex(pbkdf2Sync("pgwarden-fips-probe", "0123456789abcdef", 4096, 32, "sha256")) ===
      "c97e3f5a8d346316fe254b2c8f628cbf59c7fb6ebb39991284a8c65d646ee23d",
  ),
  probe("aes-256-gcm", "works", () => {
    const key = randomBytes(32);
    const iv = randomBytes(12);
    const cipher = createCipheriv("aes-256-gcm", key, iv);
    const sealed = Buffer.concat([cipher.update("probe"), cipher.final()]);
    const tag = cipher.getAuthTag();
    const open = (data: Buffer) => {
      const d = createDecipheriv("aes-256-gcm", key, iv);
      d.setAuthTag(tag);
      return Buffer.concat([d.update(data), d.final()]).toString();
    };
    const tampered = Buffer.from(sealed);
    tampered[0]! ^= 1;
    let tamperRefused = false;
    try {
      open(tampered);
    } catch {
      tamperRefused = true;
    }
    return open(sealed) === "probe" && tamperRefused;
  }),
  probe("ecdsa-p256", "works", () => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const signature = sign("sha256", Buffer.from("probe"), privateKey);
    return (
      verify("sha256", Buffer.from("probe"), publicKey, signature) &&
      !verify("sha256", Buffer.from("probe!"), publicKey, signature)
    );
  }),
  probe("md5", "refused", () => {
    createHash("md5").update("probe").digest();
    return true;
  }),
  probe("chacha20-poly1305", "refused", () => {
    createCipheriv("chacha20-poly1305", randomBytes(32), randomBytes(12), { authTagLength: 16 });
    return true;
  }),
];

const APPROVED_TLS13 = new Set(FIPS_TLS13_CIPHERSUITES.split(":"));
const APPROVED_TLS12 = new Set(FIPS_TLS12_CIPHERS.split(":"));
const APPROVED_GROUPS = new Set([
  ...FIPS_GROUPS.split(":"),
  "P-521",
  "prime256v1",
  "secp256r1",
  "secp384r1",
  "secp521r1",
]);

/**
 * Checks a TLS policy as written: every entry must be an exact approved name (no aliases such as
 * HIGH or DEFAULT, which OpenSSL expands to more), TLS 1.2 minimum, explicit NIST groups.
 */
export const tlsPolicyProbes = (name: string, options: tls.SecureContextOptions): FipsProbe[] => {
  const entries = (options.ciphers ?? "").split(":").filter((s) => s !== "");
  const unapproved = entries.filter((c) => !APPROVED_TLS13.has(c) && !APPROVED_TLS12.has(c));
  const groups = (options.ecdhCurve ?? "").split(":").filter((s) => s !== "");
  const badGroups = groups.filter((g) => !APPROVED_GROUPS.has(g));
  const check = (what: string, ok: boolean, detail: string): FipsProbe =>
    ok
      ? { name: `${name}: ${what}`, expect: "works", ok }
      : { name: `${name}: ${what}`, expect: "works", ok, detail };
  return [
    check(
      "approved cipher suites only",
      entries.length > 0 && unapproved.length === 0,
      entries.length === 0
        ? "no explicit cipher list (OpenSSL defaults)"
        : `not approved: ${unapproved.join(", ")}`,
    ),
    check(
      "NIST groups only",
      groups.length > 0 && badGroups.length === 0,
      groups.length === 0
        ? "no explicit groups (Node's default starts with X25519)"
        : `not approved: ${badGroups.join(", ")}`,
    ),
    check(
      "TLS 1.2 minimum",
      options.minVersion === "TLSv1.2" || options.minVersion === "TLSv1.3",
      `minVersion is ${options.minVersion ?? "unset"}`,
    ),
  ];
};

/** Outcome of one client handshake against the probed context. */
const handshake = (port: number, client: tls.ConnectionOptions): Promise<tls.TLSSocket | Error> =>
  new Promise((resolve) => {
    let socket: tls.TLSSocket;
    try {
      socket = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false, ...client });
    } catch (e) {
      // The client could not even offer this (e.g. no such cipher in FIPS mode): not negotiable.
      resolve(e as Error);
      return;
    }
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(new Error("timeout"));
    }, 5000);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once("error", (e) => {
      clearTimeout(timer);
      resolve(e);
    });
  });

/**
 * Probes a server SecureContext with real loopback handshakes: what a client offering everything
 * gets must be approved (suite and group), and a client offering only X25519 or only TLS 1.1
 * must be refused. Suites the FIPS provider lacks cannot even be offered, so need no probe.
 */
export const tlsContextProbes = async (name: string, context: tls.SecureContext): Promise<FipsProbe[]> => {
  const server = net.createServer((socket) => {
    socket.on("error", () => {});
    const secure = new tls.TLSSocket(socket, { isServer: true, secureContext: context });
    secure.on("error", () => {});
    secure.on("secure", () => secure.end());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  try {
    const probes: FipsProbe[] = [];
    // Clients offering everything they can (X25519 first, as Node does): what they get must be approved.
    for (const [what, client] of [
      ["TLS 1.3", { ecdhCurve: "X25519:P-256:P-384" }],
      ["TLS 1.2", { ecdhCurve: "X25519:P-256:P-384", maxVersion: "TLSv1.2", ciphers: "ALL" }],
    ] as const) {
      const outcome = await handshake(port, client);
      if (outcome instanceof Error) {
        probes.push({
          name: `${name}: ${what} handshake`,
          expect: "works",
          ok: false,
          detail: errorCode(outcome),
        });
        continue;
      }
      const suite = outcome.getCipher().name;
      const key = outcome.getEphemeralKeyInfo();
      const group = key !== null && "name" in key ? String(key.name) : "none";
      outcome.destroy();
      probes.push({
        name: `${name}: ${what} negotiated suite approved`,
        expect: "works",
        ok: APPROVED_TLS13.has(suite) || APPROVED_TLS12.has(suite),
        detail: suite,
      });
      probes.push({
        name: `${name}: ${what} negotiated group approved`,
        expect: "works",
        ok: APPROVED_GROUPS.has(group),
        detail: group,
      });
    }
    for (const [what, client] of [
      ["X25519-only client", { ecdhCurve: "X25519" }],
      ["TLS 1.1 client", { minVersion: "TLSv1", maxVersion: "TLSv1.1", ciphers: "ALL:@SECLEVEL=0" }],
    ] as const) {
      const outcome = await handshake(port, client);
      if (!(outcome instanceof Error)) outcome.destroy();
      probes.push(
        outcome instanceof Error
          ? { name: `${name}: ${what}`, expect: "refused", ok: true, detail: errorCode(outcome) }
          : { name: `${name}: ${what}`, expect: "refused", ok: false, detail: "handshake succeeded" },
      );
    }
    return probes;
  } finally {
    server.close();
  }
};

/** Parses `openssl list -providers` output. */
export const parseProviders = (text: string): OpensslProvider[] => {
  const out: OpensslProvider[] = [];
  let current: { id: string; fields: Record<string, string> } | undefined;
  const flush = () => {
    if (current === undefined) return;
    out.push({
      id: current.id,
      name: current.fields.name ?? current.id,
      version: current.fields.version,
      status: current.fields.status,
    });
  };
  for (const line of text.split("\n")) {
    const id = /^ {2}(\S+)\s*$/.exec(line);
    const field = /^ {4}(\w+): (.*)$/.exec(line);
    if (id !== null) {
      flush();
      current = { id: id[1]!, fields: {} };
    } else if (field !== null && current !== undefined) current.fields[field[1]!] = field[2]!.trim();
  }
  flush();
  return out;
};

/** Asks the openssl CLI which providers the current OPENSSL_CONF/OPENSSL_MODULES load. */
export const listProviders = (
  env: NodeJS.ProcessEnv = process.env,
  binary = env.PGWARDEN_OPENSSL ?? "openssl",
): Promise<OpensslProvider[] | undefined> =>
  new Promise((resolve) => {
    execFile(binary, ["list", "-providers"], { env, timeout: 10_000, encoding: "utf8" }, (error, stdout) =>
      resolve(error === null ? parseProviders(stdout) : undefined),
    );
  });

/**
 * Turns FIPS mode on, or confirms `--enable-fips`/`--force-fips` did. Without a loadable FIPS
 * provider Node may still report success here: run `fipsSelfTest` before trusting it.
 */
export const enableFips = (): true | PgwardenError => {
  if (getFips() === 1) return true;
  try {
    setFips(true);
  } catch (e) {
    return fipsError(
      `cannot enable FIPS mode: ${errorCode(e)} (no OpenSSL FIPS provider configured? see docs/fips.md)`,
    );
  }
  return getFips() === 1 ? true : fipsError("FIPS mode did not turn on");
};

export interface FipsSelfTestOptions {
  /** Server TLS contexts to probe with loopback handshakes (the client leg). */
  readonly contexts?: readonly { readonly name: string; readonly context: tls.SecureContext }[];
  /** TLS policies to check as written (both legs). */
  readonly policies?: readonly { readonly name: string; readonly options: tls.SecureContextOptions }[];
  readonly env?: NodeJS.ProcessEnv;
}

/** Every probe, with the provider list; `ok` only when all pass and a FIPS provider is active. */
export const fipsSelfTest = async (options: FipsSelfTestOptions = {}): Promise<FipsStatus> => {
  const env = options.env ?? process.env;
  const providers = await listProviders(env);
  const fipsProvider = providers?.find((p) => p.id === "fips" || /fips/i.test(p.name));
  const providerProbe: FipsProbe =
    fipsProvider !== undefined && fipsProvider.status === "active"
      ? {
          name: "fips-provider-active",
          expect: "works",
          ok: true,
          detail: `${fipsProvider.name} ${fipsProvider.version ?? ""}`.trim(),
        }
      : {
          name: "fips-provider-active",
          expect: "works",
          ok: false,
          detail:
            providers === undefined
              ? "cannot run `openssl list -providers` (set PGWARDEN_OPENSSL to an OpenSSL 3 binary)"
              : "no active provider named fips in the OpenSSL configuration (OPENSSL_CONF/OPENSSL_MODULES)",
        };
  const probes: FipsProbe[] = [providerProbe, ...algorithmProbes()];
  for (const p of options.policies ?? []) probes.push(...tlsPolicyProbes(p.name, p.options));
  for (const c of options.contexts ?? []) probes.push(...(await tlsContextProbes(c.name, c.context)));
  return {
    fipsMode: getFips() === 1,
    nodeOpenssl: process.versions.openssl ?? "unknown",
    opensslConf: env.OPENSSL_CONF,
    opensslModules: env.OPENSSL_MODULES,
    providers,
    probes,
    ok: probes.every((p) => p.ok),
  };
};

/** The human-readable report `pgwarden fips-status` prints (also fit for one log line per probe). */
export const formatFipsStatus = (status: FipsStatus): string => {
  const lines = [
    `FIPS mode requested: ${status.fipsMode ? "yes" : "no"} (crypto.getFips() = ${status.fipsMode ? 1 : 0})`,
    `Node OpenSSL: ${status.nodeOpenssl}`,
    `OPENSSL_CONF: ${status.opensslConf ?? "(unset)"}`,
    `OPENSSL_MODULES: ${status.opensslModules ?? "(unset)"}`,
  ];
  if (status.providers === undefined) lines.push("Providers: unknown (openssl CLI not available)");
  else
    for (const p of status.providers)
      lines.push(`Provider ${p.id}: ${p.name} ${p.version ?? "(no version)"} [${p.status ?? "unknown"}]`);
  lines.push("Self-tests:");
  for (const p of status.probes) {
    const verdict = p.ok ? "pass" : "FAIL";
    const what = p.expect === "refused" ? `${p.name} refused` : p.name;
    lines.push(`  ${verdict}  ${what}${p.detail === undefined ? "" : ` (${p.detail})`}`);
  }
  const failed = status.probes.filter((p) => !p.ok).length;
  lines.push(
    failed === 0
      ? `Result: all ${status.probes.length} checks passed`
      : `Result: ${failed} of ${status.probes.length} checks failed: FIPS mode is not in effect`,
  );
  lines.push("This reports what the running OpenSSL does; it is not a FIPS 140 validation claim.");
  return lines.join("\n");
};
