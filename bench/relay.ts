// A bare TCP relay: every accepted client socket is piped to a fresh upstream socket and back.
// No parsing, no buffering beyond what streams do. This is the floor of what any Node proxy
// costs, and the yardstick pgwarden is compared against.
//
// Run as its own process:  node bench/relay.ts --port P --upstream-host H --upstream-port Q

import net from "node:net";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    "upstream-host": { type: "string", default: "127.0.0.1" },
    "upstream-port": { type: "string" },
  },
});

const port = Number(values.port);
const upstreamPort = Number(values["upstream-port"]);
if (!Number.isInteger(port) || !Number.isInteger(upstreamPort)) {
  process.stderr.write("usage: relay.ts --port P --upstream-port Q [--host H] [--upstream-host H]\n");
  process.exit(2);
}

const server = net.createServer((client) => {
  const upstream = net.connect({ host: values["upstream-host"], port: upstreamPort });
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  client.pipe(upstream);
  upstream.pipe(client);
  const close = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on("error", close);
  upstream.on("error", close);
  client.on("close", close);
  upstream.on("close", close);
});

server.on("error", (err) => {
  process.stderr.write(`relay: ${err.message}\n`);
  process.exit(1);
});
server.listen(port, values.host, () => {
  process.stdout.write(
    `relay listening on ${values.host}:${port} -> ${values["upstream-host"]}:${upstreamPort}\n`,
  );
});

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => process.exit(0));
}
