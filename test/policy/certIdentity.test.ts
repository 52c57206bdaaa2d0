import { X509Certificate } from "node:crypto";
import { readFile } from "node:fs/promises";
import { fc, test } from "@fast-check/vitest";
import { Schema } from "effect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isPgwardenError } from "../../src/errors.ts";
import {
  type AltName,
  type CertMapper,
  CertMappingConfig,
  type CertMappingRule,
  compileCertMapping,
  describeCertIdentity,
  parseSubjectAltName,
} from "../../src/policy/certIdentity.ts";
import { type CertFiles, makeCerts, peerCertificates, type SeenPeer } from "./certs.ts";

let files: CertFiles;
let peers: Record<string, SeenPeer>;

beforeAll(async () => {
  files = await makeCerts({
    alice: {
      subject: "/O=Acme/CN=alice",
      san: [
        "DNS.1 = Svc.Example.COM",
        'email.1 = \\"bob\\, jr\\"@example.com',
        "URI.1 = spiffe://example.com/ns/prod/sa/app",
        'URI.2 = https://x.example/a,b\\"c\\\\d',
        "DNS.2 = weird\\'name",
        "IP.1 = 127.0.0.1",
        "IP.2 = ::1",
        "dirName.1 = dn",
        "email.2 = alice@example.com",
      ],
      extra: "[dn]\nCN = inner, with comma\nO = Org",
    },
    batch: { subject: "/O=Acme/CN=svc-batch", san: ["URI.1 = spiffe://example.com/ns/prod/sa/batch"] },
    twoCn: { subject: "/CN=alice/CN=admin" },
    noCn: { subject: "/O=Acme", san: ["email.1 = carol@Example.com"] },
    unicode: { subject: "/CN=Zoë Ünïcode" },
  });
  peers = await peerCertificates(files);
});

afterAll(async () => {
  await files?.cleanup();
});

const mapper = (rules: CertMappingRule[]): CertMapper => {
  const m = compileCertMapping(rules);
  if (isPgwardenError(m)) throw new Error(m.message);
  return m;
};

describe("the real peer certificate shape", () => {
  it("is what a verifying TLS server gets, and matches X509Certificate's SAN text", async () => {
    for (const [name, seen] of Object.entries(peers)) {
      expect(seen.authorized).toBe(true);
      const x509 = new X509Certificate(await readFile(files.certs[name]!.cert));
      expect(seen.peer.subjectaltname).toBe(x509.subjectAltName);
    }
    expect(peers.alice!.peer.subject.CN).toBe("alice");
    expect(peers.twoCn!.peer.subject.CN).toEqual(["alice", "admin"]);
    expect(peers.unicode!.peer.subject.CN).toBe("Zoë Ünïcode");
  });

  it("parses Node's subjectaltname: quoted names with commas, quotes, backslashes; IPs; DirName", () => {
    expect(parseSubjectAltName(peers.alice!.peer.subjectaltname!)).toEqual([
      { type: "DNS", value: "Svc.Example.COM" },
      { type: "email", value: '"bob, jr"@example.com' },
      { type: "URI", value: "spiffe://example.com/ns/prod/sa/app" },
      { type: "URI", value: 'https://x.example/a,b"c\\d' },
      { type: "DNS", value: "weird'name" },
      { type: "IP Address", value: "127.0.0.1" },
      { type: "IP Address", value: "0:0:0:0:0:0:0:1" },
      { type: "DirName", value: "O=Org,CN=inner\\, with comma" },
      { type: "email", value: "alice@example.com" },
    ]);
    expect(peers.twoCn!.peer.subjectaltname).toBeUndefined();
  });
});

describe("mapping rules", () => {
  it("maps CN, SAN URI, SAN email and SAN DNS with captures", () => {
    const m = mapper([
      { match: "san-uri", pattern: "spiffe://example\\.com/ns/prod/sa/(\\w+)", identity: "svc-$1" },
      { match: "cn", pattern: "svc-.*", identity: "never-reached" },
      { match: "san-email", pattern: "([a-z]+)@example\\.com", identity: "$1" },
    ]);
    expect(m.map(peers.alice!.peer)).toEqual({
      identity: "svc-app",
      rule: 0,
      field: "san-uri",
      value: "spiffe://example.com/ns/prod/sa/app",
    });
    expect(m.map(peers.batch!.peer)?.identity).toBe("svc-batch");
    expect(mapper([{ match: "cn", pattern: "(.+)", identity: "$1" }]).map(peers.alice!.peer)?.identity).toBe(
      "alice",
    );
    expect(
      mapper([{ match: "cn", pattern: "(.+)", identity: "$1" }]).map(peers.unicode!.peer)?.identity,
    ).toBe("Zoë Ünïcode");
    // The quoted email does not match [a-z]+, the next email value does: certificate order within a rule.
    expect(
      mapper([{ match: "san-email", pattern: "([a-z]+)@example\\.com", identity: "$1" }]).map(
        peers.alice!.peer,
      ),
    ).toMatchObject({ identity: "alice", value: "alice@example.com" });
    expect(
      mapper([{ match: "san-dns", pattern: "(svc)\\.example\\.com", identity: "$1-dns" }]).map(
        peers.alice!.peer,
      ),
    ).toMatchObject({ identity: "svc-dns", value: "svc.example.com" });
  });

  it("anchors patterns: a partial match is no match", () => {
    const m = mapper([{ match: "cn", pattern: "alic", identity: "x" }]);
    expect(m.map(peers.alice!.peer)).toBeUndefined();
    expect(
      mapper([{ match: "san-uri", pattern: "spiffe://example.com", identity: "x" }]).map(peers.alice!.peer),
    ).toBeUndefined();
  });

  it("first matching rule wins", () => {
    const m = mapper([
      { match: "cn", pattern: "alice", identity: "first" },
      { match: "cn", pattern: "a.*", identity: "second" },
    ]);
    expect(m.map(peers.alice!.peer)).toMatchObject({ identity: "first", rule: 0 });
  });

  it("does not map a subject with two CNs by CN, since it is ambiguous", () => {
    const m = mapper([{ match: "cn", pattern: "(.+)", identity: "$1" }]);
    expect(m.map(peers.twoCn!.peer)).toBeUndefined();
  });

  it("maps nothing when no rule matches, for an empty certificate, and for none", () => {
    const m = mapper([{ match: "cn", pattern: "(.+)", identity: "$1" }]);
    expect(m.map(peers.noCn!.peer)).toBeUndefined();
    expect(m.map({} as never)).toBeUndefined();
    expect(m.map(null)).toBeUndefined();
    expect(mapper([]).map(peers.alice!.peer)).toBeUndefined();
  });

  it("refuses when the first matching rule's identity comes out empty, rather than trying the next", () => {
    const m = mapper([
      { match: "cn", pattern: "(x)?alice", identity: "$1" },
      { match: "cn", pattern: "alice", identity: "alice" },
    ]);
    expect(m.map(peers.alice!.peer)).toBeUndefined();
  });

  it("expands $$ to a dollar sign", () => {
    expect(
      mapper([{ match: "cn", pattern: "(alice)", identity: "$$$1" }]).map(peers.alice!.peer)?.identity,
    ).toBe("$alice");
  });

  it("matches no SAN rule when the subjectaltname text is malformed", () => {
    const m = mapper([{ match: "san-dns", pattern: ".*", identity: "any" }]);
    expect(m.map({ subjectaltname: 'DNS:"unterminated' })).toBeUndefined();
    expect(m.map({ subjectaltname: "DNS:ok, garbage" })).toBeUndefined();
    expect(m.map({ subjectaltname: "DNS:ok" })?.identity).toBe("any");
  });

  it("describes a mapping for the audit line", () => {
    const m = mapper([{ match: "cn", pattern: "(.+)", identity: "$1" }]);
    expect(describeCertIdentity(m.map(peers.alice!.peer))).toBe(
      'client certificate cn "alice" mapped by certMapping[0] to identity "alice"',
    );
    expect(describeCertIdentity(undefined)).toBe("client certificate matched no mapping rule");
  });
});

/** Node's escaping, written from its observed output: unsafe names become JSON strings after the prefix. */
const nodeSpelling = (a: AltName): string => {
  const safe = !/[",\\'\u0000-\u001f\u007f-\uffff]/.test(a.value);
  if (safe) return `${a.type}:${a.value}`;
  const body = [...a.value]
    .map((ch) =>
      ch === "," || ch < " " || ch === "\u007f"
        ? `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`
        : ch === '"' || ch === "\\"
          ? `\\${ch}`
          : ch,
    )
    .join("");
  return `${a.type}:"${body}"`;
};

describe("parseSubjectAltName", () => {
  const altName = fc.record({
    type: fc.constantFrom("DNS", "email", "URI", "IP Address"),
    value: fc.string({
      unit: fc.oneof(
        fc.constantFrom(..."a.:,\"'\\ @/\u0001é"),
        fc.nat(0x2ff).map((n) => String.fromCharCode(n)),
      ),
      maxLength: 20,
    }),
  });

  test.prop([fc.array(altName, { maxLength: 6 })])("reads back any list Node could print", (names) => {
    expect(parseSubjectAltName(names.map(nodeSpelling).join(", "))).toEqual(names);
  });

  test.prop([fc.string({ maxLength: 60 })])("never throws on arbitrary text", (text) => {
    const r = parseSubjectAltName(text);
    expect(r === undefined || Array.isArray(r)).toBe(true);
  });

  it("also reads the older spelling with the prefix inside the quotes", () => {
    expect(parseSubjectAltName('"DNS:a\\u002cb", URI:c')).toEqual([
      { type: "DNS", value: "a,b" },
      { type: "URI", value: "c" },
    ]);
  });
});

describe("CertMappingConfig", () => {
  const decodeError = (input: unknown): string => {
    const r = Schema.decodeUnknownExit(CertMappingConfig)(input, { errors: "all" });
    if (r._tag === "Success") throw new Error("expected a decoding error");
    return String(r.cause);
  };

  it("names the rule index and field of each mistake", () => {
    const text = decodeError([
      { match: "cn", pattern: "(.+)", identity: "$1" },
      { match: "cn", pattern: "([a-z]+", identity: "$1" },
      { match: "san-uri", pattern: "(a)", identity: "$2" },
      { match: "san-email", pattern: "a", identity: "$x" },
      { match: "subject", pattern: "a", identity: "a" },
      { match: "cn", pattern: "a)|(b", identity: "a" },
      { match: "cn", pattern: "a", identity: "" },
    ]);
    expect(text).toMatch(/not a valid regular expression[\s\S]*at \[1\]\["pattern"\]/);
    expect(text).toMatch(/refers to \$2 but the pattern has 1 capture group[\s\S]*at \[2\]\["identity"\]/);
    expect(text).toMatch(/"\$x" is not a capture reference[\s\S]*at \[3\]\["identity"\]/);
    expect(text).toMatch(/at \[4\]\["match"\]/);
    expect(text).toMatch(/at \[5\]\["pattern"\]/);
    expect(text).toMatch(/must not be empty[\s\S]*at \[6\]\["identity"\]/);
    expect(text).not.toMatch(/at \[0\]/);
  });

  it("compileCertMapping refuses what the schema refuses, naming the rule", () => {
    const r = compileCertMapping([{ match: "cn", pattern: "(", identity: "a" }]);
    expect(isPgwardenError(r) && r.message).toMatch(
      /^access\.certMapping\[0\]\.pattern: not a valid regular expression/,
    );
  });
});
