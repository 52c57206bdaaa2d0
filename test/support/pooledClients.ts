import { afterAll, afterEach, beforeAll, beforeEach } from "vitest";
import {
  createFixture,
  type Fixture,
  type PooledTarget,
  type StartOptions,
  startTarget,
} from "../txpool/target.ts";
import type { PgSession } from "./pgSession.ts";

/**
 * Clients of a pgwarden pool in front of a fixture database of their own, for one describe block:
 * one pooler for the whole block, or (`perTest`) a fresh one per test, so that a connection one
 * case left held or dirty cannot decide the next. Every session opened vanishes at the end.
 */
export const pooledClients = (
  tag: string,
  options: StartOptions,
  lifetime: "perBlock" | "perTest" = "perBlock",
): (() => Promise<PgSession>) => {
  let fixture: Fixture;
  let target: PooledTarget | undefined;
  const open: PgSession[] = [];
  const start = async () => {
    target = await startTarget(fixture, options);
  };
  const stop = async () => {
    for (const s of open.splice(0)) s.vanish();
    await target?.stop();
    target = undefined;
  };
  beforeAll(async () => {
    fixture = await createFixture(tag);
    if (lifetime === "perBlock") await start();
  });
  if (lifetime === "perTest") {
    beforeEach(start);
    afterEach(stop);
  } else afterAll(stop);
  return async () => {
    const s = await target!.session(fixture.roles[0]!);
    open.push(s);
    return s;
  };
};
