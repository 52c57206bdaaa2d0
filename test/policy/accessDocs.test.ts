import { readFile } from "node:fs/promises";
import { Schema } from "effect";
import { describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { isPgwardenError } from "../../src/errors.ts";
import {
  AccessConfig,
  compileAccessPolicy,
  IMPLICIT_REJECT,
  type Transport,
} from "../../src/policy/accessRules.ts";
import { compileCertMapping } from "../../src/policy/certIdentity.ts";
import { SessionControlsConfig } from "../../src/policy/sessionLimits.ts";

/** docs/access-rules.md is checked here: its YAML examples decode and its decision table holds. */

const doc = await readFile(new URL("../../docs/access-rules.md", import.meta.url), "utf8");
const yamlBlocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map(
  (m) => parseYaml(m[1]!) as Record<string, unknown>,
);
const decodeOptions = { onExcessProperty: "error", errors: "all" } as const;

describe("docs/access-rules.md", () => {
  it("has YAML examples, and each decodes against its schema", () => {
    expect(yamlBlocks.length).toBeGreaterThanOrEqual(5);
    for (const block of yamlBlocks) {
      for (const [key, value] of Object.entries(block)) {
        expect(["access", "sessions"]).toContain(key);
        const schema = key === "access" ? AccessConfig : SessionControlsConfig;
        const r = Schema.decodeUnknownExit(schema as typeof AccessConfig)(value, decodeOptions);
        expect(r._tag === "Failure" ? String(r.cause) : "ok").toBe("ok");
      }
    }
  });

  it("documents every SessionControlsConfig key with its default", () => {
    const defaults = Schema.decodeUnknownSync(SessionControlsConfig)({}) as Record<string, unknown>;
    for (const key of ["maxPerIdentity", "maxPerSource", "perIdentity", "idleTimeoutMs", "maxLifetimeMs"]) {
      const row = doc.split("\n").find((l) => l.startsWith(`| \`sessions.${key}\``));
      expect(row, key).toBeDefined();
      const shown = row!.split("|")[2]!.trim();
      expect(shown).toBe(key in defaults ? `\`${JSON.stringify(defaults[key])}\`` : "none");
    }
  });

  it("the FedRAMP example decides as its table says", () => {
    const example = yamlBlocks.at(-1)!;
    const access = Schema.decodeUnknownSync(AccessConfig)(example.access, decodeOptions);
    expect(isPgwardenError(compileCertMapping(access.certMapping))).toBe(false);
    const policy = compileAccessPolicy(access, { defaultMethod: "scram-sha-256" });
    if (isPgwardenError(policy)) throw new Error(policy.message);
    const table = doc.slice(doc.lastIndexOf("| source | transport |"));
    const rows = table
      .split("\n")
      .slice(2)
      .filter((l) => l.startsWith("|"))
      .map((l) =>
        l
          .split("|")
          .slice(1, -1)
          .map((c) => c.trim()),
      );
    expect(rows.length).toBeGreaterThanOrEqual(8);
    for (const [source, transport, identity, database, decision] of rows) {
      const d = policy.decide({
        source,
        transport: transport as Transport,
        identity: identity!,
        database: database!,
      });
      const m = /^(allow|reject) by `([^`]+)`(?:, method `([^`]+)`)?/.exec(decision!);
      if (decision === "implicit reject")
        expect(d).toMatchObject({ action: "reject", rule: IMPLICIT_REJECT });
      else if (m === null) throw new Error(`unreadable row: ${decision}`);
      else {
        expect(d).toMatchObject({ action: m[1], rule: m[2] });
        if (m[3] !== undefined) expect(d).toMatchObject({ method: m[3] });
      }
    }
  });
});
