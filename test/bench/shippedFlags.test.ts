import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { PGWARDEN_ENTRY, SHIPPED_NODE_FLAGS, shebangFlags } from "../../bench/targets.ts";

describe("the node flags the bench starts pgwarden with", () => {
  it("reads the flags of an env -S shebang, and none from any other first line", () => {
    expect(shebangFlags("#!/usr/bin/env -S node --max-semi-space-size=1")).toEqual([
      "--max-semi-space-size=1",
    ]);
    expect(shebangFlags("#!/usr/bin/env -S node --a=1 --b ")).toEqual(["--a=1", "--b"]);
    expect(shebangFlags("#!/usr/bin/env node")).toEqual([]);
    expect(shebangFlags("// not a shebang")).toEqual([]);
  });

  it("are the entry's shebang flags, and `npm start` passes the same ones", () => {
    const first = readFileSync(PGWARDEN_ENTRY, "utf8").split("\n", 1)[0]!;
    expect(SHIPPED_NODE_FLAGS).toEqual(shebangFlags(first));
    expect(SHIPPED_NODE_FLAGS.length).toBeGreaterThan(0);
    const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as {
      scripts: { start: string };
    };
    expect(pkg.scripts.start).toBe(`node ${SHIPPED_NODE_FLAGS.join(" ")} bin/pgwarden.js serve`);
  });
});
