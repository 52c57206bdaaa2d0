// A bare TCP relay: every accepted client socket is piped to a fresh upstream socket and back.
// No parsing, no buffering beyond what streams do. This is the floor of what any Node proxy
// costs, and the yardstick pgwarden is compared against.
//
// With --tls-cert/--tls-key it also terminates client TLS: it answers an SSLRequest with `S`,
// wraps the client socket and relays the decrypted bytes to a plain upstream socket (the
// yardstick for a TLS-terminating proxy; it still parses nothing after the first 8 bytes).
//
// Run as its own process:  node bench/relay.ts --port P --upstream-host H --upstream-port Q

import { readFileSync } from "node:fs";
import net from "node:net";
import tls from "node:tls";
import { parseArgs } from "node:util";
import { PINNED_TLS } from "./tls.ts";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    "upstream-host": { type: "string", default: "127.0.0.1" },
    "upstream-port": { type: "string" },
    "tls-cert": { type: "string" },
    "tls-key": { type: "string" },
  },
});

const port = Number(values.port);
const upstreamPort = Number(values["upstream-port"]);
if (!Number.isInteger(port) || !Number.isInteger(upstreamPort)) {
  process.stderr.write(
    "usage: relay.ts --port P --upstream-port Q [--host H] [--upstream-host H] [--tls-cert F --tls-key F]\n",
  );
  process.exit(2);
}

const secureContext =
  values["tls-cert"] && values["tls-key"]
    ? tls.createSecureContext({
        cert: readFileSync(values["tls-cert"]),
        key: readFileSync(values["tls-key"]),
        // The benchmark's pinned policy (bench/tls.ts PINNED_TLS), as on every TLS target.
        minVersion: PINNED_TLS.version,
        ciphers: PINNED_TLS.ciphersuite,
        ecdhCurve: PINNED_TLS.group,
      })
    : undefined;

/** The 8-byte SSLRequest: length 8, code 80877103. */
const isSslRequest = (b: Buffer) => b.length === 8 && b.readInt32BE(0) === 8 && b.readInt32BE(4) === 80877103;

function pipeBoth(client: net.Socket, upstream: net.Socket, first?: Buffer): void {
  client.setNoDelay(true);
  upstream.setNoDelay(true);
  if (first) upstream.write(first);
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
}

/** Reads the first 8 bytes; an SSLRequest is answered and the socket wrapped in TLS. */
function acceptTls(raw: net.Socket, context: tls.SecureContext): void {
  let head = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk]);
    if (head.length < 8) return;
    raw.off("data", onData);
    raw.pause();
    const upstream = net.connect({ host: values["upstream-host"], port: upstreamPort });
    if (head.length === 8 && isSslRequest(head)) {
      raw.write("S");
      const secure = new tls.TLSSocket(raw, { isServer: true, secureContext: context });
      pipeBoth(secure, upstream);
    } else {
      pipeBoth(raw, upstream, head);
      raw.resume();
    }
  };
  raw.on("data", onData);
  raw.on("error", () => raw.destroy());
}

const server = net.createServer((client) => {
  if (secureContext) acceptTls(client, secureContext);
  else pipeBoth(client, net.connect({ host: values["upstream-host"], port: upstreamPort }));
});

server.on("error", (err) => {
  process.stderr.write(`relay: ${err.message}\n`);
  process.exit(1);
});
server.listen(port, values.host, () => {
  process.stdout.write(
    `relay listening on ${values.host}:${port} -> ${values["upstream-host"]}:${upstreamPort}${secureContext ? " (client TLS)" : ""}\n`,
  );
});

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => process.exit(0));
}
