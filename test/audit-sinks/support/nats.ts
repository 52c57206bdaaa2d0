import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { type Daemon, startDaemon } from "./daemon.ts";

export interface NatsServer {
  readonly port: number;
  readonly url: string;
  start(): Promise<void>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Debian's nats-server with JetStream on loopback, its store under `dir` so a restart keeps it. */
export const natsServer = async (
  dir: string,
  port: number,
  extraArgs: readonly string[] = [],
): Promise<NatsServer> => {
  const store = join(dir, "jetstream");
  await mkdir(store, { recursive: true });
  let daemon: Daemon | undefined;
  return {
    port,
    url: `nats://127.0.0.1:${port}`,
    start: async () => {
      daemon = await startDaemon(
        "nats-server",
        ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", store, ...extraArgs],
        { host: "127.0.0.1", port },
      );
    },
    stop: async (signal) => {
      await daemon?.stop(signal);
      daemon = undefined;
    },
  };
};
