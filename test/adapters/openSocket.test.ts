import { createServer, type Server } from "node:net";
import { afterAll, beforeAll, expect, it } from "vitest";
import { openSocket, type UpstreamTarget } from "../../src/adapters/upstream.ts";
import { isPgwardenError } from "../../src/errors.ts";

let server: Server;
let port: number;
beforeAll(async () => {
  server = createServer((s) => s.on("error", () => {}));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  port = (server.address() as { port: number }).port;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

const target = (p: number): UpstreamTarget => ({ host: "127.0.0.1", port: p, connectTimeoutMs: 2000 });

it("a connected socket keeps no connect-phase listener, and its listener table keeps its slots", async () => {
  const socket = await openSocket(target(port));
  if (isPgwardenError(socket)) throw new Error(socket.message);
  try {
    expect(socket.listenerCount("error")).toBe(0);
    expect(socket.listenerCount("connect")).toBe(0);
    // Node empties a slot on `off`; removeAllListeners deletes it, which turns the table into a
    // dictionary that costs every idle server connection 448 bytes more (docs/benchmarks.md).
    const events = (socket as unknown as { _events: Record<string, unknown> })._events;
    expect(Object.hasOwn(events, "error")).toBe(true);
  } finally {
    socket.destroy();
  }
});

it("a refused connection is an error value naming the address", async () => {
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
  const p = (closed.address() as { port: number }).port;
  await new Promise<void>((r) => closed.close(() => r()));
  const result = await openSocket(target(p));
  expect(isPgwardenError(result) && result.message).toMatch(`127.0.0.1:${p}`);
});
