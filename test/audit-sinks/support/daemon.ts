import { type ChildProcess, spawn } from "node:child_process";
import { connect } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

/** A real server process started by a test; `stop` always ends it, SIGKILL after a grace period. */
export interface Daemon {
  readonly pid: number;
  readonly output: () => string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of running) c.kill("SIGKILL");
});

const portOpen = (host: string, port: number) =>
  new Promise<boolean>((resolve) => {
    const s = connect({ host, port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });

/** Starts `command` and resolves once it accepts TCP connections on host:port. */
export const startDaemon = async (
  command: string,
  args: readonly string[],
  listen: { readonly host: string; readonly port: number },
  timeoutMs = 15_000,
): Promise<Daemon> => {
  const child = spawn(command, [...args], { stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  let output = "";
  const collect = (d: Buffer) => {
    output = (output + d.toString("utf8")).slice(-20_000);
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);
  const exited = new Promise<void>((resolve) => {
    child.once("exit", () => {
      running.delete(child);
      resolve();
    });
  });
  const stop = async (signal: NodeJS.Signals = "SIGTERM") => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const killed = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(killed);
  };
  const until = Date.now() + timeoutMs;
  while (!(await portOpen(listen.host, listen.port))) {
    if (child.exitCode !== null || Date.now() > until) {
      await stop("SIGKILL");
      throw new Error(`${command} did not listen on ${listen.port}: ${output}`);
    }
    await sleep(50);
  }
  return { pid: child.pid ?? -1, output: () => output, stop };
};
