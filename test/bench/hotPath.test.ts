import { describe, expect, it } from "vitest";
import { EXCHANGES, measure, standInLink } from "../../bench/hotPath.ts";

describe("the hot-path micro-benchmark measures a working relay", () => {
  it.each(["simple", "extended"] as const)(
    "%s: every byte crosses, one write each way, the session stays ready",
    (mode) => {
      const { clientSocket, serverSocket, machine, violations } = standInLink();
      const { client, server } = EXCHANGES[mode];
      for (let i = 0; i < 100; i++) {
        clientSocket.emit("data", client);
        serverSocket.emit("data", server);
      }
      expect(violations).toEqual([]);
      expect(machine.state).toBe("ready.idle");
      expect([serverSocket.writes, serverSocket.bytes]).toEqual([100, 100 * client.length]);
      expect([clientSocket.writes, clientSocket.bytes]).toEqual([100, 100 * server.length]);
      expect(measure(mode, 1000)).toBeGreaterThan(0);
    },
  );
});
