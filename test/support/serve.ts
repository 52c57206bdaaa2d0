import { spawn } from "node:child_process";
import { CLI } from "./cli.ts";

/** `pgwarden serve` as a real process, with its output collected. */
export const serveProcess = (args: string[], env: Record<string, string> = {}) => {
  const child = spawn(process.execPath, [CLI, "serve", ...args], {
    env: { ...process.env, ...env },
  });
  const out = { stdout: "", stderr: "" };
  child.stdout.on("data", (d) => {
    out.stdout += d;
  });
  child.stderr.on("data", (d) => {
    out.stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, out, exited };
};
