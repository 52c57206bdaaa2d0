import { describe, expect, it } from "vitest";
import { matchesPinned, PINNED_TLS, parseSClient } from "../../bench/tls.ts";
import { pairedTlsRatio, spread, type TlsCell, type TlsResult, tlsGoalMet } from "../../bench/tlsPart.ts";

// `openssl s_client -brief -starttls postgres` as OpenSSL 3.0 prints it (stderr).
const BRIEF = `CONNECTION ESTABLISHED
Protocol version: TLSv1.3
Ciphersuite: TLS_AES_256_GCM_SHA384
Peer certificate: CN = 127.0.0.1
Hash used: SHA256
Signature type: ECDSA
Verification error: unable to verify the first certificate
Server Temp Key: ECDH, prime256v1, 256 bits
`;

describe("parseSClient", () => {
  it("reads version, suite and the NIST group under its TLS name", () => {
    const n = parseSClient(BRIEF);
    expect(n).toEqual({ protocol: "TLSv1.3", cipher: "TLS_AES_256_GCM_SHA384", group: "P-256" });
    expect(matchesPinned(n)).toBe(true);
  });
  it("reads X25519, whose line has no ECDH field, and then the pin does not match", () => {
    const n = parseSClient(BRIEF.replace("ECDH, prime256v1, 256 bits", "X25519, 253 bits"));
    expect(n.group).toBe("X25519");
    expect(matchesPinned(n)).toBe(false);
  });
  it("a failed handshake has no suite", () => {
    expect(
      parseSClient("error:0A000410:SSL routines::sslv3 alert handshake failure\n").cipher,
    ).toBeUndefined();
  });
});

const cell = (target: TlsCell["target"], workload: TlsCell["workload"], tps: number[]): TlsCell => ({
  target,
  workload,
  rounds: tps.map((t) => ({ tps: t, cpuUsPerTx: 1000 / t, connectionMs: undefined })),
});

describe("pairedTlsRatio", () => {
  it("divides within each round, then takes the median and the spread", () => {
    const cells = [cell("pgwarden", "steady", [90, 110, 100]), cell("pgbouncer", "steady", [100, 100, 80])];
    const r = pairedTlsRatio(cells, "steady", "tps");
    expect(r.rounds).toEqual([0.9, 1.1, 1.25]);
    expect(r).toMatchObject({ median: 1.1, min: 0.9, max: 1.25 });
  });
  it("has no ratio when a target is missing", () => {
    expect(pairedTlsRatio([cell("pgwarden", "connect", [5])], "connect", "tps").median).toBeUndefined();
  });
});

describe("tlsGoalMet", () => {
  const result = (bouncerConnect: number): TlsResult => ({
    pinned: PINNED_TLS,
    negotiated: {},
    skipped: {},
    cells: [
      cell("pgwarden", "steady", [100]),
      cell("pgbouncer", "steady", [100]),
      cell("pgwarden", "connect", [300]),
      cell("pgbouncer", "connect", [bouncerConnect]),
    ],
    load: { before: "", after: "" },
  });
  it("needs at least PgBouncer's rate on both workloads", () => {
    expect(tlsGoalMet(result(300))).toBe(true);
    expect(tlsGoalMet(result(301))).toBe(false);
  });
  it("is undefined without both targets", () => {
    expect(tlsGoalMet({ ...result(1), cells: [] })).toBeUndefined();
  });
});

describe("spread", () => {
  it("ignores missing rounds", () => {
    expect(spread([3, undefined, 1, 2])).toEqual({ median: 2, min: 1, max: 3 });
  });
});
