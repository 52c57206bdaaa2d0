import net from "node:net";
import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import {
  type Cidr,
  canonicalIp,
  cidrContains,
  formatIp,
  type IpAddress,
  isCidrError,
  parseCidr,
  parseIp,
} from "../../src/policy/cidr.ts";

// Reference model: an address is a BigInt of 32 or 128 bits; containment is a shift compare.
const bitsOf = (family: 4 | 6) => (family === 4 ? 32 : 128);
const toBig = (ip: { words: readonly number[] }): bigint =>
  ip.words.reduce((acc, w) => (acc << 32n) | BigInt(w), 0n);
const refContains = (family: 4 | 6, net: bigint, prefix: number, addr: bigint): boolean => {
  const shift = BigInt(bitsOf(family) - prefix);
  return net >> shift === addr >> shift;
};

const groupsOf = (v: bigint): number[] =>
  Array.from({ length: 8 }, (_, i) => Number((v >> BigInt(16 * (7 - i))) & 0xffffn));
const dotted = (v: bigint): string => [24n, 16n, 8n, 0n].map((s) => Number((v >> s) & 255n)).join(".");

/** Spells a 128-bit value in one of the forms a peer or operator may write. */
const spellV6 = (v: bigint, style: number, upper: boolean, pad: boolean): string => {
  const g = groupsOf(v).map((x) => {
    const h = pad ? x.toString(16).padStart(4, "0") : x.toString(16);
    return upper ? h.toUpperCase() : h;
  });
  if (style === 0) return g.join(":");
  if (style === 1) return `${g.slice(0, 6).join(":")}:${dotted(v & 0xffffffffn)}`;
  // Compress the first run of zero groups, whatever its length (1 group is legal, if unusual).
  const start = groupsOf(v).indexOf(0);
  if (start === -1) return g.join(":");
  let end = start;
  while (end < 8 && groupsOf(v)[end] === 0) end++;
  return `${g.slice(0, start).join(":")}::${g.slice(end).join(":")}`;
};

const v4 = fc.bigInt({ min: 0n, max: 2n ** 32n - 1n });
// Sparse values make zero runs (and so "::") common.
const v6 = fc
  .array(fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })), { minLength: 8, maxLength: 8 })
  .map((gs) => gs.reduce((acc, x) => (acc << 16n) | BigInt(x), 0n));
const isMappedBig = (v: bigint) => v >> 32n === 0xffffn;

const must = (c: Cidr | ReturnType<typeof parseCidr>): Cidr => {
  if (isCidrError(c)) throw new Error(c.message);
  return c;
};
const ip = (t: string): IpAddress => {
  const r = parseIp(t);
  if (r === undefined) throw new Error(`not an address: ${t}`);
  return r;
};

describe("parseIp", () => {
  test.prop([v4])("reads every IPv4 address exactly", (v) => {
    const r = ip(dotted(v));
    expect(r.family).toBe(4);
    expect(toBig(r)).toBe(v);
    expect(formatIp(r)).toBe(dotted(v));
  });

  test.prop([v6, fc.integer({ min: 0, max: 2 }), fc.boolean(), fc.boolean()])(
    "reads every spelling of an IPv6 address to the same bits",
    (v, style, upper, pad) => {
      const r = ip(spellV6(v, style, upper, pad));
      if (isMappedBig(v)) {
        expect(r).toEqual({ family: 4, words: [Number(v & 0xffffffffn)] });
      } else {
        expect(r.family).toBe(6);
        expect(toBig(r)).toBe(v);
      }
    },
  );

  test.prop([v6])("formats canonically: Node's own parser agrees and it reads back", (v) => {
    const text = formatIp({
      family: 6,
      words: [0, 1, 2, 3].map((i) => Number((v >> BigInt(96 - 32 * i)) & 0xffffffffn)),
    });
    expect(net.isIPv6(text)).toBe(true);
    expect(text).toBe(text.toLowerCase());
    expect(text).not.toMatch(/(^|:)0[0-9a-f]/);
    if (!isMappedBig(v)) expect(toBig(ip(text))).toBe(v);
  });

  test.prop([
    fc.oneof(
      fc.string({ unit: fc.constantFrom(..."0123456789abcdefABCDEF:.%/ x-"), maxLength: 45 }),
      v6.map((v) => spellV6(v, 2, false, false)).chain((s) => fc.nat(s.length).map((i) => s.slice(0, i))),
      // A valid spelling with one character inserted: the near misses a hand-written parser gets wrong.
      fc
        .tuple(
          fc.oneof(
            v4.map(dotted),
            v6.map((v) => spellV6(v, 2, false, false)),
          ),
          fc.nat(),
          fc.constantFrom(..."0fF:.%"),
        )
        .map(([s, i, c]) => s.slice(0, i % (s.length + 1)) + c + s.slice(i % (s.length + 1))),
    ),
  ])("accepts exactly what Node's net.isIP accepts, never throwing", (text) => {
    const node = net.isIP(text) !== 0;
    // Node accepts a zone on any IPv6 text; so do we.
    expect(parseIp(text) !== undefined).toBe(node);
  });

  it("takes a zone only as Node does: not empty, letters, digits and . : - only", () => {
    for (const text of ["::%", "fe80::1%", "::%%a", "::%a b", "::%a/b"])
      expect(parseIp(text)).toBeUndefined();
    for (const text of ["::%a", "fe80::1%eth0", "::%a.b-c", "::%a:b"]) expect(parseIp(text)?.family).toBe(6);
  });

  it("turns IPv4-mapped IPv6 into IPv4, in both spellings", () => {
    expect(ip("::ffff:10.1.2.3")).toEqual(ip("10.1.2.3"));
    expect(ip("::FFFF:0a01:0203")).toEqual(ip("10.1.2.3"));
    expect(canonicalIp("::ffff:127.0.0.1")).toBe("127.0.0.1");
  });

  it("keeps IPv4-compatible and other embedded-IPv4 forms as IPv6", () => {
    expect(ip("::1.2.3.4").family).toBe(6);
    expect(ip("64:ff9b::1.2.3.4").family).toBe(6);
  });

  it("drops a zone index", () => {
    expect(ip("fe80::1%eth0")).toEqual(ip("fe80::1"));
  });

  it.each([
    "",
    "1.2.3",
    "1.2.3.4.5",
    "256.1.1.1",
    "01.2.3.4",
    "1.2.3.4 ",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7::8",
    "1::2::3",
    ":::",
    "12345::",
    "::1.2.3",
    "1.2.3.4::",
    "all",
  ])("refuses %j", (text) => {
    expect(parseIp(text)).toBeUndefined();
  });
});

describe("parseCidr", () => {
  test.prop([v4, fc.integer({ min: 0, max: 32 }), v4])(
    "IPv4: contains agrees with the BigInt reference and with net.BlockList",
    (raw, prefix, addr) => {
      const netBits = (raw >> BigInt(32 - prefix)) << BigInt(32 - prefix);
      const c = must(parseCidr(`${dotted(netBits)}/${prefix}`));
      const expected = refContains(4, netBits, prefix, addr);
      expect(cidrContains(c, ip(dotted(addr)))).toBe(expected);
      expect(cidrContains(c, ip(`::ffff:${dotted(addr)}`))).toBe(expected);
      const block = new net.BlockList();
      block.addSubnet(dotted(netBits), prefix, "ipv4");
      expect(block.check(dotted(addr), "ipv4")).toBe(expected);
    },
  );

  test.prop([v6, fc.integer({ min: 0, max: 128 }), v6, fc.boolean(), fc.boolean()])(
    "IPv6: contains agrees with the BigInt reference and with net.BlockList",
    (raw, prefix, addrRaw, near, flip) => {
      const span = BigInt(128 - prefix);
      const netBits = (raw >> span) << span;
      fc.pre(!(prefix >= 96 && isMappedBig(netBits)));
      // Half the time put the address inside the block, or one network bit beside it, so both outcomes occur.
      let addr = near ? netBits | (addrRaw & ((1n << span) - 1n)) : addrRaw;
      if (near && flip && prefix > 0) addr ^= 1n << span;
      fc.pre(!isMappedBig(addr));
      const c = must(parseCidr(`${spellV6(netBits, 2, false, false)}/${prefix}`));
      const expected = refContains(6, netBits, prefix, addr);
      const text = spellV6(addr, 0, false, false);
      expect(cidrContains(c, ip(text))).toBe(expected);
      const block = new net.BlockList();
      block.addSubnet(spellV6(netBits, 0, false, false), prefix, "ipv6");
      expect(block.check(text, "ipv6")).toBe(expected);
    },
  );

  test.prop([v4, v6])("an IPv6 block never matches an IPv4 peer, nor the reverse", (a4, a6) => {
    fc.pre(!isMappedBig(a6));
    expect(cidrContains(must(parseCidr("::/0")), ip(dotted(a4)))).toBe(false);
    expect(cidrContains(must(parseCidr("0.0.0.0/0")), ip(spellV6(a6, 0, false, false)))).toBe(false);
  });

  it("reads a bare address as a single host and writes canonical text", () => {
    expect(must(parseCidr("192.0.2.7")).text).toBe("192.0.2.7/32");
    expect(must(parseCidr("2001:DB8:0:0::0/32")).text).toBe("2001:db8::/32");
    expect(must(parseCidr("::1")).text).toBe("::1/128");
  });

  it.each([
    ["10.0.0.1/8", "did you mean 10.0.0.0/8?"],
    ["2001:db8::1/32", "did you mean 2001:db8::/32?"],
    ["10.0.0.0/33", "prefix length must be 0 to 32"],
    ["::/129", "prefix length must be 0 to 128"],
    ["10.0.0.0/08", "prefix length"],
    ["10.0.0.0/", "prefix length"],
    ["10.0.0/8", "not an IPv4 address"],
    ["fe80::/64%eth0", "prefix length"],
    ["fe80::%eth0/64", "zone index"],
    ["::ffff:10.0.0.0/104", "write 10.0.0.0/8"],
    ["::ffff:0:0/96", "write 0.0.0.0/0"],
    ["all", "not an IPv4 address"],
  ])("refuses %j, saying why", (text, why) => {
    const r = parseCidr(text);
    expect(isCidrError(r)).toBe(true);
    expect((r as { message: string }).message).toContain(why);
  });
});
