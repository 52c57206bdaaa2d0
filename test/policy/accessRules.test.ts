import net from "node:net";
import { fc, test } from "@fast-check/vitest";
import { Schema } from "effect";
import { describe, expect, it } from "vitest";
import { isPgwardenError } from "../../src/errors.ts";
import {
  AccessConfig,
  type AccessDecision,
  type AccessPolicy,
  type AccessRequest,
  type AccessRule,
  accessDeniedError,
  compileAccess,
  compileAccessPolicy,
  describeDecision,
  IMPLICIT_REJECT,
  isImplicitReject,
  type Transport,
} from "../../src/policy/accessRules.ts";

const policy = (
  rules: AccessRule[],
  groups: Record<string, string[]> = {},
  defaultMethod?: "scram-sha-256" | "trust",
): AccessPolicy => {
  const p = compileAccessPolicy({ rules, groups }, defaultMethod === undefined ? {} : { defaultMethod });
  if (isPgwardenError(p)) throw new Error(p.message);
  return p;
};

const req = (over: Partial<AccessRequest> = {}): AccessRequest => ({
  source: "10.1.2.3",
  transport: "tls",
  identity: "alice",
  database: "app",
  ...over,
});

const decodeError = (input: unknown): string => {
  const r = Schema.decodeUnknownExit(AccessConfig)(input, { errors: "all", onExcessProperty: "error" });
  if (r._tag === "Success") throw new Error("expected a decoding error");
  return String(r.cause);
};
const decode = (input: unknown): AccessConfig => Schema.decodeUnknownSync(AccessConfig)(input);

describe("decide", () => {
  const fedramp = policy(
    [
      { name: "no-contractors-on-prod", identities: ["@contractors"], databases: ["prod"], action: "reject" },
      {
        name: "ops-mtls",
        source: ["10.0.0.0/8", "2001:db8::/32"],
        transport: ["mtls"],
        identities: ["@ops"],
        method: "cert+scram",
        action: "allow",
      },
      { name: "services", transport: ["mtls"], identities: ["svc-batch"], method: "cert", action: "allow" },
      {
        name: "app-tls",
        source: ["10.0.0.0/8"],
        transport: ["tls", "mtls"],
        databases: ["app", "prod"],
        action: "allow",
      },
      {
        name: "local-trust",
        source: ["127.0.0.1/32", "::1"],
        identities: ["monitor"],
        databases: ["postgres"],
        method: "trust",
        action: "allow",
      },
    ],
    { ops: ["alice", "bob"], contractors: ["carol"] },
  );

  it("allows by the first matching rule and names it, with the method it requires", () => {
    expect(fedramp.decide(req({ transport: "mtls" }))).toEqual({
      action: "allow",
      rule: "ops-mtls",
      index: 1,
      method: "cert+scram",
    });
    expect(fedramp.decide(req({ transport: "tls" }))).toEqual({
      action: "allow",
      rule: "app-tls",
      index: 3,
      method: "scram-sha-256",
    });
    expect(
      fedramp.decide(req({ identity: "svc-batch", transport: "mtls", source: "192.0.2.1" })),
    ).toMatchObject({
      rule: "services",
      method: "cert",
    });
  });

  it("rejects by an explicit rule before a later allow could match", () => {
    expect(fedramp.decide(req({ identity: "carol", database: "prod" }))).toEqual({
      action: "reject",
      rule: "no-contractors-on-prod",
      index: 0,
    });
    expect(fedramp.decide(req({ identity: "carol", database: "app" }))).toMatchObject({
      action: "allow",
      rule: "app-tls",
    });
  });

  it("rejects implicitly when no rule matches", () => {
    const d = fedramp.decide(req({ source: "192.0.2.1" }));
    expect(d).toEqual({ action: "reject", rule: IMPLICIT_REJECT, index: -1 });
    expect(isImplicitReject(d)).toBe(true);
    expect(fedramp.decide(req({ transport: "plain" }))).toMatchObject({ rule: IMPLICIT_REJECT });
    expect(fedramp.decide(req({ database: "other" }))).toMatchObject({ rule: IMPLICIT_REJECT });
    expect(policy([]).decide(req())).toMatchObject({ rule: IMPLICIT_REJECT });
  });

  it("matches sources by CIDR: IPv4, IPv6, IPv4-mapped IPv6; unknown sources only match source-less rules", () => {
    expect(fedramp.decide(req({ transport: "mtls", source: "2001:db8:1::5" }))).toMatchObject({
      rule: "ops-mtls",
    });
    expect(fedramp.decide(req({ transport: "mtls", source: "2001:db9::5" }))).toMatchObject({
      rule: IMPLICIT_REJECT,
    });
    expect(fedramp.decide(req({ source: "::ffff:10.9.8.7" }))).toMatchObject({ rule: "app-tls" });
    const local = req({ identity: "monitor", database: "postgres", transport: "plain" });
    expect(fedramp.decide({ ...local, source: "127.0.0.1" })).toMatchObject({
      rule: "local-trust",
      method: "trust",
    });
    expect(fedramp.decide({ ...local, source: "::1" })).toMatchObject({ rule: "local-trust" });
    expect(fedramp.decide({ ...local, source: "127.0.0.2" })).toMatchObject({ rule: IMPLICIT_REJECT });
    expect(fedramp.decide({ ...local, source: undefined })).toMatchObject({ rule: IMPLICIT_REJECT });
    expect(fedramp.decide({ ...local, source: "not an address" })).toMatchObject({ rule: IMPLICIT_REJECT });
    const any = policy([{ name: "any", source: ["all"], action: "allow" }]);
    expect(any.decide(req({ source: undefined }))).toMatchObject({ rule: "any" });
  });

  it("matches groups from the configuration and from the request", () => {
    const p = policy(
      [
        { name: "ops", identities: ["@ops"], action: "allow" },
        { name: "dba", identities: ["@dba", "root"], action: "allow" },
      ],
      { ops: ["alice"], dba: [] },
    );
    expect(p.decide(req())).toMatchObject({ rule: "ops" });
    expect(p.decide(req({ identity: "dave" }))).toMatchObject({ rule: IMPLICIT_REJECT });
    expect(p.decide(req({ identity: "dave", groups: new Set(["dba"]) }))).toMatchObject({ rule: "dba" });
    expect(p.decide(req({ identity: "root" }))).toMatchObject({ rule: "dba" });
    // A name is not a group: identity "ops" is not in group ops.
    expect(p.decide(req({ identity: "ops" }))).toMatchObject({ rule: IMPLICIT_REJECT });
    expect([...p.groupsOf("alice")]).toEqual(["ops"]);
    expect(p.groupsOf("nobody").size).toBe(0);
  });

  it("gives allow rules without a method the configured default", () => {
    expect(policy([{ name: "d", action: "allow" }], {}, "trust").decide(req())).toMatchObject({
      method: "trust",
    });
    expect(policy([{ name: "d", action: "allow" }]).decide(req())).toMatchObject({ method: "scram-sha-256" });
  });

  const transports: Transport[] = ["plain", "tls", "mtls"];
  const ruleArb: fc.Arbitrary<AccessRule> = fc
    .record(
      {
        source: fc.subarray(["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32", "::1", "127.0.0.1", "all"], {
          minLength: 1,
        }),
        transport: fc.subarray(transports, { minLength: 1 }),
        identities: fc.subarray(["alice", "bob", "@g1", "@g2"], { minLength: 1 }),
        databases: fc.subarray(["app", "prod"], { minLength: 1 }),
        action: fc.constantFrom("allow" as const, "reject" as const),
      },
      { requiredKeys: ["action"] },
    )
    .map((r) => r as AccessRule);
  const requestArb = fc.record({
    source: fc.constantFrom(
      "10.1.2.3",
      "10.2.0.1",
      "::ffff:10.1.0.9",
      "2001:db8::7",
      "::1",
      "127.0.0.1",
      "192.0.2.1",
      undefined,
    ),
    transport: fc.constantFrom(...transports),
    identity: fc.constantFrom("alice", "bob", "carol"),
    database: fc.constantFrom("app", "prod", "other"),
    groups: fc.subarray(["g1", "g2"]).map((g) => new Set(g)),
  });

  /** The rules read literally, sources checked by node's BlockList: the model the compiled form must match. */
  const reference = (rules: AccessRule[], groups: Record<string, string[]>, r: AccessRequest): string => {
    const inGroup = (g: string) => (groups[g] ?? []).includes(r.identity) || (r.groups?.has(g) ?? false);
    const sourceOk = (cidrs: readonly string[]) => {
      if (cidrs.includes("all")) return true;
      if (r.source === undefined) return false;
      const family = net.isIP(r.source) === 6 && !r.source.startsWith("::ffff:") ? "ipv6" : "ipv4";
      const address = r.source.replace(/^::ffff:/, "");
      return cidrs.some((c) => {
        const [a, p] = c.includes("/") ? c.split("/") : [c, c.includes(":") ? "128" : "32"];
        if (net.isIP(a!) !== (family === "ipv6" ? 6 : 4)) return false;
        const b = new net.BlockList();
        b.addSubnet(a!, Number(p), family);
        return b.check(address, family);
      });
    };
    const hit = rules.find(
      (x) =>
        (x.source === undefined || sourceOk(x.source)) &&
        (x.transport === undefined || x.transport.includes(r.transport)) &&
        (x.identities === undefined ||
          x.identities.some((i) => (i.startsWith("@") ? inGroup(i.slice(1)) : i === r.identity))) &&
        (x.databases === undefined || x.databases.includes(r.database)),
    );
    return hit === undefined ? IMPLICIT_REJECT : `${hit.name}:${hit.action}`;
  };

  test.prop([
    fc.array(ruleArb, { maxLength: 8 }),
    fc.record({ g1: fc.subarray(["alice", "bob", "carol"]), g2: fc.subarray(["alice", "bob", "carol"]) }),
    fc.array(requestArb, { minLength: 1, maxLength: 10 }),
  ])("decides as a literal reading of the rules would", (raw, groups, requests) => {
    const rules = raw.map((r, i) => ({ ...r, name: `r${i}` }));
    // Rules after a catch-all are refused by validation, so cut there as an operator would.
    const cut = rules.findIndex(
      (r) =>
        r.identities === undefined &&
        r.databases === undefined &&
        (r.source === undefined || r.source.includes("all")) &&
        (r.transport === undefined || r.transport.length === 3),
    );
    const kept = cut === -1 ? rules : rules.slice(0, cut + 1);
    const p = policy(kept, groups);
    for (const r of requests) {
      const d = p.decide(r);
      expect(d.index === -1 ? d.rule : `${d.rule}:${d.action}`).toBe(reference(kept, groups, r));
    }
  });
});

describe("describeDecision", () => {
  const p = policy([
    { name: "ops", transport: ["mtls"], method: "cert", action: "allow" },
    { name: "no-prod", databases: ["prod"], action: "reject" },
  ]);

  it("names the rule, its index and method, and the request", () => {
    const r = req({ transport: "mtls", source: "::ffff:10.1.2.3" });
    expect(describeDecision(p.decide(r), r)).toBe(
      'access allow by rules[0] "ops" with method cert: identity "alice" database "app" from 10.1.2.3 over mtls',
    );
    const r2 = req({ database: "prod" });
    expect(describeDecision(p.decide(r2), r2)).toBe(
      'access reject by rules[1] "no-prod": identity "alice" database "prod" from 10.1.2.3 over tls',
    );
    const r3 = req({ source: undefined });
    expect(describeDecision(p.decide(r3), r3)).toBe(
      `access reject: no rule matched ${IMPLICIT_REJECT}: identity "alice" database "app" from "unknown" over tls`,
    );
  });

  it("cannot be split into two log lines by a crafted name", () => {
    const r = req({ identity: 'eve"\naccess allow by rules[0]', database: "x\r\ny", source: "1.2.3.4\n" });
    const line = describeDecision(
      { action: "reject", rule: IMPLICIT_REJECT, index: -1 } as AccessDecision,
      r,
    );
    expect(line).not.toMatch(/[\r\n]/);
  });
});

describe("accessDeniedError", () => {
  it("is 28000 naming host, user, database and encryption, but not the rule", () => {
    const e = accessDeniedError(req({ source: "::ffff:10.1.2.3", transport: "plain" }));
    expect(e).toMatchObject({ code: "PGW_ACCESS_DENIED", sqlstate: "28000" });
    expect(e.message).toBe(
      'no access rule allows connection for host 10.1.2.3, user "alice", database "app", no encryption',
    );
    expect(accessDeniedError(req({ transport: "mtls" })).message).toMatch(/TLS with client certificate$/);
  });
});

describe("AccessConfig", () => {
  it("defaults to one allow-all rule using the configured method, no groups and no certificate mapping", () => {
    const c = decode({});
    expect(c).toEqual({ rules: [{ name: "default", action: "allow" }], groups: {}, certMapping: [] });
    const p = compileAccessPolicy(c, { defaultMethod: "trust" });
    expect(!isPgwardenError(p) && p.decide(req({ transport: "plain" }))).toEqual({
      action: "allow",
      rule: "default",
      index: 0,
      method: "trust",
    });
  });

  it("accepts a full configuration", () => {
    const c = decode({
      rules: [
        {
          name: "ops",
          source: ["10.0.0.0/8"],
          transport: ["mtls"],
          identities: ["@ops"],
          method: "cert",
          action: "allow",
        },
        { name: "rest", action: "reject" },
      ],
      groups: { ops: ["alice"] },
      certMapping: [{ match: "cn", pattern: "(.+)", identity: "$1" }],
    });
    expect(c.rules).toHaveLength(2);
  });

  it("names the rule index and field of each mistake", () => {
    const text = decodeError({
      rules: [
        { name: "ok", action: "allow", identities: ["alice"] },
        { name: "bad-cidr", source: ["10.0.0.1/8"], action: "allow" },
        { name: "bad-transport", transport: ["ssl"], action: "allow" },
        { name: "cert-on-tls", transport: ["tls", "mtls"], method: "cert", action: "allow" },
        { name: "cert-anywhere", method: "cert+scram", action: "allow" },
        { name: "reject-method", identities: ["x"], method: "trust", action: "reject" },
        { name: "empty", identities: [], action: "allow" },
        { name: "all-db", databases: ["all"], action: "reject" },
        { name: "ok", identities: ["@nosuch"], action: "allow" },
        { name: "", databases: ["x"], action: "deny" },
        { name: "typo", identites: ["x"], action: "allow" },
      ],
      groups: { "@ops": ["a"], " dba": [] },
    });
    const at = (path: string) => path.replace(/[[\]"]/g, (c) => `\\${c}`);
    const expectAt = (what: string, path: string) =>
      expect(text).toMatch(new RegExp(`${what}[^\\n]*\\n\\s*at ${at(path)}`));
    expectAt("did you mean 10.0.0.0/8\\?", '["rules"][1]["source"][0]');
    expectAt('Expected "plain" \\| "tls" \\| "mtls"', '["rules"][2]["transport"][0]');
    expectAt("method cert needs a client certificate: use transport \\[mtls\\]", '["rules"][3]["transport"]');
    expectAt("method cert\\+scram needs a client certificate", '["rules"][4]["transport"]');
    expectAt("a reject rule has no authentication method", '["rules"][5]["method"]');
    expectAt("must not be empty; leave the key out to match any", '["rules"][6]["identities"]');
    expectAt('"all" is not a keyword here', '["rules"][7]["databases"][0]');
    expectAt("must not be empty", '["rules"][9]["name"]');
    expectAt('Expected "allow" \\| "reject"', '["rules"][9]["action"]');
    expectAt("Expected no excess property", '["rules"][10]["identites"]');
    expectAt('write the group name without "@"', '["groups"]["@ops"]');
    expectAt("must not start or end with whitespace", '["groups"][" dba"]');
    expect(decodeError({ groups: { dba: ["@ops"] } })).toMatch(
      /groups do not nest[^\n]*\n\s*at \["groups"\]\["dba"\]\[0\]/,
    );
    expect(text).not.toMatch(/at \["rules"\]\[0\]/);
  });

  it("checks across rules: duplicate names, undefined groups, rules hidden behind a catch-all", () => {
    const text = decodeError({
      rules: [
        { name: "a", identities: ["@ops", "@nosuch"], action: "allow" },
        { name: "a", action: "reject" },
        { name: "after", identities: ["bob"], action: "allow" },
        { name: "later", action: "allow" },
      ],
      groups: { ops: [] },
    });
    expect(text).toMatch(
      /group "nosuch" is not defined in groups\n\s*at \["rules"\]\[0\]\["identities"\]\[1\]/,
    );
    expect(text).toMatch(/duplicate rule name "a" \(also rules\[0\]\)\n\s*at \["rules"\]\[1\]\["name"\]/);
    expect(text).toMatch(
      /rule "after" is unreachable: rules\[1\] "a" matches every connection\n\s*at \["rules"\]\[2\]/,
    );
    expect(text).not.toMatch(/"later" is unreachable/);
  });

  it("counts a rule listing all three transports and source all as a catch-all", () => {
    expect(
      decodeError({
        rules: [
          { name: "wide", source: ["all"], transport: ["plain", "tls", "mtls"], action: "reject" },
          { name: "x", action: "allow" },
        ],
      }),
    ).toMatch(/rule "x" is unreachable/);
  });

  it("compileAccessPolicy refuses a hand-built configuration the schema would refuse", () => {
    const r = compileAccessPolicy({
      rules: [
        { name: "a", source: ["10.0.0.0/33"], action: "allow" },
        { name: "b", identities: ["@x"], method: "cert", action: "allow" },
      ],
      groups: {},
    });
    expect(isPgwardenError(r)).toBe(true);
    const m = (r as { message: string }).message;
    expect(m).toContain('access.rules[0].source[0]: "10.0.0.0/33": prefix length must be 0 to 32');
    expect(m).toContain("access.rules[1].transport: method cert needs a client certificate");
    expect(m).toContain('access.rules[1].identities[0]: group "x" is not defined in groups');
  });
});

describe("compileAccess", () => {
  it("compiles rules and certificate mapping together, or returns the first section's error", () => {
    const ok = compileAccess(
      decode({
        rules: [{ name: "m", transport: ["mtls"], method: "cert", action: "allow" }],
        certMapping: [{ match: "cn", pattern: "(.+)", identity: "$1" }],
      }),
    );
    if (isPgwardenError(ok)) throw new Error(ok.message);
    const id = ok.certs.map({ subject: { CN: "alice" } });
    expect(id?.identity).toBe("alice");
    expect(ok.policy.decide(req({ identity: id!.identity, transport: "mtls" }))).toMatchObject({
      rule: "m",
      method: "cert",
    });
    const bad = compileAccess({
      rules: [],
      groups: {},
      certMapping: [{ match: "cn", pattern: "(", identity: "x" }],
    });
    expect(isPgwardenError(bad) && bad.message).toMatch(/^access\.certMapping\[0\]\.pattern:/);
  });
});
