import { randomBytes } from "node:crypto";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeCancelRequest } from "../../src/protocol/startup.ts";
import type { PgSession } from "../support/pgSession.ts";
import { createFixture, type Fixture, type PooledTarget, startTarget } from "../txpool/target.ts";

/**
 * A flood of CancelRequests with guessed keys — the victim's PID with random secrets, random
 * PIDs, secrets of the wrong length — never cancels anyone's query, every cancel connection is
 * closed, and the victim's own key still cancels afterwards (the cancel slots came back).
 */

const FLOOD = 240;

/** Sends one CancelRequest; resolves true once the proxy closed the connection, false after 3 s. */
const cancelWith = (port: number, pid: number, secret: Buffer): Promise<boolean> =>
  new Promise((resolve) => {
    const s = connect({ host: "127.0.0.1", port }, () => s.write(encodeCancelRequest(pid, secret)));
    const t = setTimeout(() => {
      s.destroy();
      resolve(false);
    }, 3000);
    s.on("error", () => {});
    s.on("close", () => {
      clearTimeout(t);
      resolve(true);
    });
  });

const guess = (victim: PgSession, i: number): { pid: number; secret: Buffer } => {
  switch (i % 4) {
    case 0:
      return { pid: victim.processId, secret: randomBytes(4) };
    case 1:
      return { pid: randomBytes(4).readInt32BE(0) & 0x7fffffff, secret: randomBytes(4) };
    case 2:
      // The right secret's first bytes, padded to protocol 3.2's length.
      return { pid: victim.processId, secret: Buffer.concat([victim.secret, randomBytes(28)]) };
    default:
      return { pid: victim.processId ^ 1, secret: victim.secret };
  }
};

for (const mode of ["session", "transaction"] as const) {
  describe(`cancel flood with guessed keys (${mode} mode)`, () => {
    let fixture: Fixture;
    let target: PooledTarget;
    const open: PgSession[] = [];
    beforeAll(async () => {
      fixture = await createFixture(`hcancel_${mode.slice(0, 4)}`);
      target = await startTarget(fixture, { pool: { mode, size: 4 } });
    });
    afterAll(async () => {
      for (const s of open) s.vanish();
      await target?.stop();
    });

    it(`${FLOOD} guessed cancels cancel nothing; the real key still works`, async () => {
      const victim = await target.session();
      const bystander = await target.session();
      open.push(victim, bystander);
      expect(victim.secret.length).toBe(4);
      const running = victim.query("SELECT pg_sleep(2)", 15_000);
      const alsoRunning = bystander.query("SELECT pg_sleep(2)", 15_000);
      const closed: boolean[] = [];
      // 48 at a time: three times the default cancel slots, so the cap itself is under attack too.
      for (let i = 0; i < FLOOD; i += 48) {
        closed.push(
          ...(await Promise.all(
            Array.from({ length: 48 }, (_, j) => {
              const g = guess(victim, i + j);
              return cancelWith(target.port, g.pid, g.secret);
            }),
          )),
        );
      }
      const [mine, theirs] = await Promise.all([running, alsoRunning]);
      expect(mine.error, "a guessed key cancelled the victim's query").toBeUndefined();
      expect(theirs.error, "a guessed key cancelled a bystander's query").toBeUndefined();
      expect(closed.filter((c) => !c).length, "cancel connections left open").toBe(0);
      // The victim's own key, once the flood is over.
      const again = victim.query("SELECT pg_sleep(10)", 15_000);
      await new Promise((r) => setTimeout(r, 200));
      expect(await cancelWith(target.port, victim.processId, victim.secret)).toBe(true);
      expect((await again).error?.code).toBe("57014");
    }, 25_000);
  });
}
