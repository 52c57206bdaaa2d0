import { describe, expect, it } from "vitest";
import { sleep } from "../support/hostile.ts";
import { msg, typesOf } from "../support/pgSession.ts";
import { pooledClients } from "../support/pooledClients.ts";

/**
 * Transaction mode, one server connection: a session-level set_config run by an Execute with a
 * row limit ends in PortalSuspended instead of CommandComplete. PostgreSQL still applies it (and
 * commits it at Sync), but pgwarden never counts it, so the server connection goes back to the
 * pool with the setting and the next client runs with the first one's settings. (search_path
 * and default_transaction_read_only, which PostgreSQL 18 reports with ParameterStatus, are caught
 * that way and pass; settings it does not report, such as statement_timeout and work_mem, leak.)
 */

const CASES: [setting: string, value: string][] = [
  ["search_path", "hostile_schema"],
  ["statement_timeout", "1"],
  ["default_transaction_read_only", "on"],
  ["work_mem", "7MB"],
];

describe("set_config through an Execute that stops at a row limit", () => {
  const session = pooledClients("hsuspend", { pool: { mode: "transaction", size: 1 } }, "perTest");

  for (const [setting, value] of CASES)
    for (const name of ["", "hostile_sc"])
      it(`${setting}, ${name === "" ? "unnamed" : "named"} statement, Execute maxRows 1: the next client keeps its own`, async () => {
        const show = `SELECT current_setting('${setting}')`;
        const victim = await session();
        const expected = await victim.value(show);
        const hostile = await session();
        const r = await hostile.exchange([
          msg.parse(name, `SELECT set_config('${setting}', '${value}', false)`),
          msg.bind(name),
          msg.execute("", 1),
          msg.sync(),
        ]);
        expect(typesOf(r).replace(" S", "")).toBe("1 2 D s Z");
        // The hostile client's own session has the setting, as PostgreSQL gives it.
        expect(await hostile.value(show)).toBe(setting === "statement_timeout" ? "1ms" : value);
        hostile.terminate();
        await sleep(100);
        // PostgreSQL (a connection of its own) or a proxy that tracked the setting: the default.
        expect(await victim.value(show)).toBe(expected);
      });
});
