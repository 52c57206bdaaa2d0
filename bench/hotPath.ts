// pgwarden's own per-transaction CPU, without sockets: a real Link between stand-in sockets that
// only record writes, fed the bytes one pgbench -S transaction exchanges (simple or extended).
// On a shared machine pgbench's CPU figures swing by ±30 %; this one repeats within a few percent,
// so it shows what a change to the relay path (Link, MessageScanner, MachineRunner) costs or saves.
// The kernel's and Node's stream costs, the same for the bare relay, are not in it.
//
//   node bench/hotPath.ts [--transactions N] [--rounds R]

import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { parseArgs } from "node:util";
import { Events, ReadyForQuery } from "../src/machines/events.ts";
import { MachineRunner, serverRunner } from "../src/machines/MachineRunner.ts";
import { ServerEvents } from "../src/machines/serverEvents.ts";
import { OwedResponses } from "../src/pool/OwedResponses.ts";
import { type ClientSide, Link } from "../src/runtime/Link.ts";
import type { ServerConnection, ServerReceiver } from "../src/runtime/ServerConnection.ts";
import { own } from "../src/runtime/socketOwner.ts";

/** A socket that takes every write at once and counts it: enough for Link and batchWrite. */
class NullSocket extends EventEmitter {
  writes = 0;
  bytes = 0;
  destroyed = false;
  writableLength = 0;
  write(b: Uint8Array): boolean {
    this.writes++;
    this.bytes += b.length;
    return true;
  }
  cork(): void {}
  uncork(): void {}
  pause(): this {
    return this;
  }
  resume(): this {
    return this;
  }
  isPaused(): boolean {
    return false;
  }
}

const message = (type: string, body: Buffer = Buffer.alloc(0)): Buffer => {
  const head = Buffer.alloc(5);
  head[0] = type.charCodeAt(0);
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
};
const cstr = (s: string) => Buffer.from(`${s}\0`);
const int16 = (n: number) => Buffer.from([n >> 8, n & 255]);
const int32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};

const SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";
const row = Buffer.concat([int16(1), int32(4), Buffer.from("1234")]);
const rowDescription = Buffer.concat([
  int16(1),
  cstr("abalance"),
  int32(16396),
  int16(3),
  int32(23),
  int16(4),
  int32(-1),
  int16(0),
]);
const commandTail = [message("D", row), message("C", cstr("SELECT 1")), message("Z", Buffer.from("I"))];

/** What pgbench -S sends and PostgreSQL answers for one transaction, in one chunk each way. */
export const EXCHANGES = {
  simple: {
    client: message("Q", cstr(SQL.replace("$1", "4242"))),
    server: Buffer.concat([message("T", rowDescription), ...commandTail]),
  },
  extended: {
    client: Buffer.concat([
      message("P", Buffer.concat([cstr(""), cstr(SQL), int16(0)])),
      message(
        "B",
        Buffer.concat([cstr(""), cstr(""), int16(0), int16(1), int32(4), Buffer.from("4242"), int16(0)]),
      ),
      message("D", Buffer.concat([Buffer.from("P"), cstr("")])),
      message("E", Buffer.concat([cstr(""), int32(0)])),
      message("S"),
    ]),
    server: Buffer.concat([message("1"), message("2"), message("T", rowDescription), ...commandTail]),
  },
} as const;

/** A Link between two null sockets, both machines in the state a logged-in idle session is in. */
export function standInLink() {
  const clientSocket = new NullSocket();
  const serverSocket = new NullSocket();
  const machine = new MachineRunner("bench");
  machine.start({ exec: () => {} });
  for (const e of [Events.Startup, Events.ClientAuthOk, Events.UpstreamReady]) machine.send(e);
  if (machine.state !== "ready.idle") throw new Error(`client machine in ${machine.state}, not ready.idle`);
  const serverMachine = serverRunner("bench");
  serverMachine.start({ exec: () => {} });
  serverMachine.send(ServerEvents.Connected);
  serverMachine.send(ServerEvents.LoggedIn);
  serverMachine.send(ReadyForQuery.I[0]);
  const violations: string[] = [];
  const client: ClientSide = {
    id: "bench",
    socket: clientSocket as unknown as Socket,
    machine,
    violation: (e) => void violations.push(e.message),
    endWith: (e) => void violations.push(e.message),
    attached: () => {},
    released: () => {},
  };
  // A server connection hands its replies to the link that holds it, as the real one does.
  let receiver: ServerReceiver | undefined;
  serverSocket.on("data", (chunk: Buffer) => receiver?.onServerData(chunk));
  const server = {
    socket: serverSocket as unknown as Socket,
    owed: new OwedResponses(),
    machine: serverMachine,
    relayTo: (r: ServerReceiver | undefined) => {
      receiver = r;
    },
  } as unknown as ServerConnection;
  const link = new Link(client, server, { maxMessageBytes: 1 << 20, maxBuffered: 1 << 24 });
  // The client socket's owner hands what it reads to its link, as ClientConnection does.
  own(clientSocket as unknown as Socket, {
    socketData: (chunk) => link.onClientData(chunk),
    socketError: () => {},
    socketClosed: () => {},
  });
  link.start({ toClient: [], serverPending: [], clientPending: [] });
  return { clientSocket, serverSocket, machine, violations };
}

/** Nanoseconds of pgwarden's code per transaction, over `transactions` transactions. */
export function measure(mode: keyof typeof EXCHANGES, transactions: number): number {
  const { clientSocket, serverSocket, machine, violations } = standInLink();
  const { client, server } = EXCHANGES[mode];
  const start = process.hrtime.bigint();
  for (let i = 0; i < transactions; i++) {
    clientSocket.emit("data", client);
    serverSocket.emit("data", server);
  }
  const ns = Number(process.hrtime.bigint() - start) / transactions;
  if (violations.length > 0 || machine.state !== "ready.idle" || serverSocket.writes !== transactions)
    throw new Error(`the stand-in session broke: ${violations[0] ?? machine.state}`);
  return ns;
}

if (import.meta.main) {
  const { values } = parseArgs({
    options: {
      transactions: { type: "string", default: "200000" },
      rounds: { type: "string", default: "7" },
    },
  });
  const n = Number(values.transactions);
  const rounds = Number(values.rounds);
  for (const mode of ["simple", "extended"] as const) {
    measure(mode, n); // warm-up: let the JIT settle
    const runs = Array.from({ length: rounds }, () => measure(mode, n)).sort((a, b) => a - b);
    const median = runs[Math.floor(rounds / 2)]!;
    process.stdout.write(
      `${mode.padEnd(8)} ${(median / 1000).toFixed(3)} µs/tx median of ${rounds} (min ${(runs[0]! / 1000).toFixed(3)}, max ${(runs.at(-1)! / 1000).toFixed(3)})\n`,
    );
  }
}
