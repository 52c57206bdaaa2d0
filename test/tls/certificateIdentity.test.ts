import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { certificateIdentity, parseAltNames } from "../../src/adapters/tls/certificateIdentity.ts";
import { testCerts } from "../support/certs.ts";

const certs = testCerts();

describe("certificate identity", () => {
  it("reads CN and every SAN kind of the test client certificate", () => {
    const id = certificateIdentity(new X509Certificate(readFileSync(certs.client.cert)).raw);
    expect(id).toMatchObject({
      subject: "CN=alice",
      commonName: "alice",
      dns: ["alice.clients.example"],
      email: ["alice@example.com"],
      uri: ["spiffe://example.org/alice"],
      ip: [],
    });
    expect(id.fingerprint256).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  });

  it("reads IP SANs of the server certificate", () => {
    const id = certificateIdentity(new X509Certificate(readFileSync(certs.server.cert)).raw);
    expect(id.dns).toEqual(["localhost"]);
    expect(id.ip).toEqual(["127.0.0.1"]);
  });

  it("keeps a quoted value whole: a comma inside cannot forge a second entry", () => {
    expect(parseAltNames('DNS:"a.example, DNS:evil.example", email:x@y')).toEqual([
      { type: "DNS", value: "a.example, DNS:evil.example" },
      { type: "email", value: "x@y" },
    ]);
  });

  test.prop([
    fc.array(fc.tuple(fc.constantFrom("DNS", "email", "URI"), fc.string({ minLength: 1, maxLength: 20 })), {
      maxLength: 5,
    }),
  ])("round-trips Node's quoting of any value", (entries) => {
    // Node quotes a value as JSON when it holds characters that could confuse a reader.
    const text = entries
      .map(([t, v]) => `${t}:${/^[A-Za-z0-9.@:/-]+$/.test(v) ? v : JSON.stringify(v)}`)
      .join(", ");
    expect(parseAltNames(text)).toEqual(entries.map(([type, value]) => ({ type, value })));
  });
});
