import path from "node:path";
import { runPgbench } from "./pgbench.ts";
import { startPgbouncer } from "./pgbouncer.ts";
import { initPgbench, startPostgres } from "./postgres.ts";
import { clockTicksPerSecond, cpuSecondsBetween, readCpuTicks } from "./proc.ts";
import { startPgwarden, startRelay } from "./targets.ts";
import { makeCertificate } from "./tls.ts";
import { makeTempDir, unprivilegedIds } from "./util.ts";

const root = makeTempDir("prof-");
const tls = makeCertificate(path.join(root, "tls"), unprivilegedIds("postgres"));
const server = await startPostgres({ rootDir: root, maxConnections: 200 });
await initPgbench(server, 1);
const workload = process.argv[2] ?? "connect";
const which = process.argv[3] ?? "pgwarden";
const flags = process.argv[4] ? process.argv[4].split(" ") : [];
const proxy = {
  maxClients: 1000,
  pool: undefined,
  tls: process.env.PLAIN === "1" ? undefined : tls,
  nodeFlags: flags,
};
const started =
  which === "pgwarden"
    ? await startPgwarden(server, root, proxy)
    : which === "relay"
      ? await startRelay(server, proxy)
      : await startPgbouncer(server, root, proxy);
if (!started.ok) throw new Error(started.reason);
const t = started.target;

import { spawn } from "node:child_process";

const tracer = process.env.TRACE
  ? spawn("sh", ["-c", `${process.env.TRACE} -p ${t.pid}`], { stdio: "inherit" })
  : undefined;
if (tracer) await new Promise((r) => setTimeout(r, 1000));
for (let i = 0; i < Number(process.argv[5] ?? 2); i++) {
  const before = readCpuTicks(t.pid!);
  const r = await runPgbench(t, {
    clients: 20,
    threads: 2,
    durationSec: 8,
    mode: "simple",
    tls: process.env.PLAIN !== "1",
    connect: workload === "connect",
  });
  const cpu = cpuSecondsBetween(before, readCpuTicks(t.pid!), clockTicksPerSecond());
  console.log(
    which,
    workload,
    r.tps?.toFixed(0),
    "tps",
    ((cpu * 1e6) / (r.transactions ?? 1)).toFixed(1),
    "us/tx",
    r.error ?? "",
  );
}
if (tracer) {
  tracer.kill("SIGINT");
  await new Promise((r) => tracer.on("exit", r));
}
await t.stop();
await server.stop();
process.exit(0);
