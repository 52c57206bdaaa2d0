import { spawn } from "node:child_process";
import { TEST_PASSWORD } from "./proxy.ts";

export interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a client program (psql, pgbench) without blocking: the proxy under test lives in this
 * process, so a synchronous spawn would deadlock it. Killed after `timeoutMs`.
 */
export const runClient = (
  command: string,
  args: readonly string[],
  options: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<Run> =>
  new Promise((resolve, reject) => {
    // The default test proxy's client password: psql and pgbench read it like any libpq client.
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      LANG: "C.UTF-8",
      PGCONNECT_TIMEOUT: "5",
      PGPASSWORD: TEST_PASSWORD,
      ...options.env,
    };
    const child = spawn(command, [...args], { env, cwd: options.cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
