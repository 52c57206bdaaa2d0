import { parseArgs } from "node:util";
import { clientTlsConfig, upstreamTlsConfig } from "../adapters/tls/config.ts";
import { buildSecureContext, cipherPolicyOptions, clientLegContextOptions } from "../adapters/tls/policy.ts";
import { isPgwardenError } from "../errors.ts";
import { enableFips, type FipsSelfTestOptions, fipsSelfTest, formatFipsStatus } from "../runtime/fips.ts";

export interface FipsCommandIo {
  readonly stdout: { write(s: string): unknown };
  readonly stderr: { write(s: string): unknown };
  readonly env?: NodeJS.ProcessEnv;
}

const usage = `Usage: pgwarden fips-status [--json] [--tls-cert FILE --tls-key FILE]
  Turns on OpenSSL FIPS mode (as fips: true does) and runs every self-test: provider loaded,
  approved algorithms work, MD5 and ChaCha20 are refused, the TLS policy offers only approved
  suites and NIST groups. With --tls-cert/--tls-key the client-leg policy is also probed with
  loopback handshakes. Exit 0 when every check passes, 1 otherwise.`;

/** `pgwarden fips-status`: prints the FIPS status report; exit code 0 only when all checks pass. */
export const runFipsStatus = async (args: readonly string[], io: FipsCommandIo): Promise<number> => {
  let values: { json?: boolean; "tls-cert"?: string; "tls-key"?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: {
        json: { type: "boolean" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (e) {
    io.stderr.write(`pgwarden: ${(e as Error).message}\n${usage}\n`);
    return 2;
  }
  if (values.help === true) {
    io.stdout.write(`${usage}\n`);
    return 0;
  }
  const enabled = enableFips();
  if (isPgwardenError(enabled)) {
    io.stderr.write(`pgwarden: ${enabled.message}\n`);
    return 1;
  }
  // The default policies of both legs; the lead's config loader passes the configured ones.
  const options: FipsSelfTestOptions = {
    policies: [
      { name: "client-leg policy", options: cipherPolicyOptions(clientTlsConfig()) },
      { name: "upstream policy", options: cipherPolicyOptions(upstreamTlsConfig()) },
    ],
    ...(io.env === undefined ? {} : { env: io.env }),
  };
  const cert = values["tls-cert"];
  const key = values["tls-key"];
  if ((cert === undefined) !== (key === undefined)) {
    io.stderr.write("pgwarden: --tls-cert and --tls-key go together\n");
    return 2;
  }
  let contexts: FipsSelfTestOptions["contexts"] = [];
  if (cert !== undefined && key !== undefined) {
    const contextOptions = clientLegContextOptions(clientTlsConfig({ mode: "require", cert, key }));
    const context = isPgwardenError(contextOptions) ? contextOptions : buildSecureContext(contextOptions);
    if (isPgwardenError(context)) {
      io.stderr.write(`pgwarden: ${context.message}\n`);
      return 1;
    }
    contexts = [{ name: "client-leg TLS", context }];
  }
  const status = await fipsSelfTest({ ...options, contexts });
  io.stdout.write(
    values.json === true ? `${JSON.stringify(status, null, 2)}\n` : `${formatFipsStatus(status)}\n`,
  );
  if (!status.ok) {
    io.stderr.write("pgwarden: FIPS self-test failed; see docs/fips.md\n");
    return 1;
  }
  return 0;
};
