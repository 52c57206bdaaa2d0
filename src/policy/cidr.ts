/**
 * IPv4 and IPv6 addresses and CIDR blocks, parsed once and matched with 32-bit word compares so a
 * per-connection check allocates nothing. IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, as Node
 * reports IPv4 peers on a dual-stack socket) are IPv4 addresses here.
 */

export type IpFamily = 4 | 6;

export interface IpAddress {
  readonly family: IpFamily;
  /** Big-endian unsigned 32-bit words: one for IPv4, four for IPv6. */
  readonly words: readonly number[];
}

export interface Cidr {
  readonly family: IpFamily;
  /** The network address, host bits zero. */
  readonly words: readonly number[];
  readonly masks: readonly number[];
  readonly prefix: number;
  /** Canonical text, e.g. `10.0.0.0/8` or `2001:db8::/32`. */
  readonly text: string;
}

/** Why a CIDR did not parse; said to the operator in a configuration error. */
export interface CidrError {
  readonly _tag: "CidrError";
  readonly message: string;
}

const cidrError = (message: string): CidrError => ({ _tag: "CidrError", message });
export const isCidrError = (u: unknown): u is CidrError =>
  typeof u === "object" && u !== null && (u as { _tag?: unknown })._tag === "CidrError";

const DECIMAL_OCTET = /^(?:0|[1-9]\d{0,2})$/;
const HEX_GROUP = /^[0-9a-fA-F]{1,4}$/;

/** Strict dotted quad: leading zeros are refused because some parsers read them as octal. */
const parseIpv4Word = (text: string): number | undefined => {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  let word = 0;
  for (const part of parts) {
    if (!DECIMAL_OCTET.test(part)) return undefined;
    const octet = Number(part);
    if (octet > 255) return undefined;
    word = word * 256 + octet;
  }
  return word;
};

const hexGroups = (text: string): number[] | undefined => {
  if (text === "") return [];
  const out: number[] = [];
  for (const g of text.split(":")) {
    if (!HEX_GROUP.test(g)) return undefined;
    out.push(Number.parseInt(g, 16));
  }
  return out;
};

/** Eight 16-bit groups packed into four words, or undefined. */
const parseIpv6Words = (text: string): number[] | undefined => {
  let head = text;
  let tail: number[] = [];
  const lastColon = text.lastIndexOf(":");
  if (text.indexOf(".", lastColon) !== -1) {
    const v4 = parseIpv4Word(text.slice(lastColon + 1));
    if (v4 === undefined) return undefined;
    tail = [v4 >>> 16, v4 & 0xffff];
    // Keep the colon before the IPv4 part so "::1.2.3.4" still splits on "::" below.
    head = text.slice(0, lastColon + 1);
    if (!head.endsWith("::")) head = head.slice(0, -1);
  }
  const halves = head.split("::");
  let groups: number[];
  if (halves.length === 1) {
    const all = hexGroups(halves[0]!);
    if (all === undefined) return undefined;
    groups = [...all, ...tail];
    if (groups.length !== 8) return undefined;
  } else if (halves.length === 2) {
    const left = hexGroups(halves[0]!);
    const right = hexGroups(halves[1]!);
    if (left === undefined || right === undefined) return undefined;
    const present = left.length + right.length + tail.length;
    if (present > 7) return undefined;
    groups = [...left, ...new Array<number>(8 - present).fill(0), ...right, ...tail];
  } else return undefined;
  return [0, 1, 2, 3].map((i) => ((groups[2 * i]! << 16) | groups[2 * i + 1]!) >>> 0);
};

const isMapped = (w: readonly number[]): boolean => w[0] === 0 && w[1] === 0 && w[2] === 0xffff;

/** What Node accepts after `%` in an IPv6 address: one or more of these. */
const ZONE = /^[0-9A-Za-z.:-]+$/;

/**
 * Parses an address as a socket reports it. A zone (`fe80::1%eth0`) is dropped: it names an
 * interface, not address bits. IPv4-mapped IPv6 becomes IPv4.
 */
export const parseIp = (text: string): IpAddress | undefined => {
  if (text.includes(":")) {
    const zone = text.indexOf("%");
    if (zone !== -1 && !ZONE.test(text.slice(zone + 1))) return undefined;
    const words = parseIpv6Words(zone === -1 ? text : text.slice(0, zone));
    if (words === undefined) return undefined;
    return isMapped(words) ? { family: 4, words: [words[3]!] } : { family: 6, words };
  }
  const word = parseIpv4Word(text);
  return word === undefined ? undefined : { family: 4, words: [word] };
};

const maskWords = (family: IpFamily, prefix: number): number[] => {
  const out: number[] = [];
  for (let i = 0; i < (family === 4 ? 1 : 4); i++) {
    const bits = Math.min(32, Math.max(0, prefix - 32 * i));
    out.push(bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0);
  }
  return out;
};

/** Canonical text: dotted quad, or RFC 5952 (lower case, longest zero run of 2+ groups as `::`). */
export const formatIp = (ip: IpAddress): string => {
  if (ip.family === 4) {
    const w = ip.words[0]!;
    return `${w >>> 24}.${(w >>> 16) & 255}.${(w >>> 8) & 255}.${w & 255}`;
  }
  const groups = ip.words.flatMap((w) => [w >>> 16, w & 0xffff]);
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(":");
  if (bestStart === -1) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
};

/** Canonical text of a socket address, or undefined when it is not an IP address. */
export const canonicalIp = (text: string): string | undefined => {
  const ip = parseIp(text);
  return ip === undefined ? undefined : formatIp(ip);
};

/**
 * Parses `address/prefix` or a bare address (a single host). Host bits set beyond the prefix are
 * refused since `10.0.0.1/8` more likely means a typo than `10.0.0.0/8`. IPv4-mapped IPv6 blocks
 * are refused in favour of their IPv4 spelling, because mapped peers are matched as IPv4.
 */
export const parseCidr = (text: string): Cidr | CidrError => {
  const slash = text.indexOf("/");
  const addressText = slash === -1 ? text : text.slice(0, slash);
  if (addressText.includes("%")) return cidrError(`"${text}": a zone index is not allowed in a CIDR`);
  const family: IpFamily = addressText.includes(":") ? 6 : 4;
  const words = family === 6 ? parseIpv6Words(addressText) : [parseIpv4Word(addressText)];
  if (words === undefined || words[0] === undefined)
    return cidrError(`"${text}": not an IPv${family} address`);
  const max = family === 4 ? 32 : 128;
  let prefix = max;
  if (slash !== -1) {
    const p = text.slice(slash + 1);
    if (!/^(?:0|[1-9]\d{0,2})$/.test(p) || Number(p) > max)
      return cidrError(`"${text}": prefix length must be 0 to ${max}`);
    prefix = Number(p);
  }
  const w = words as number[];
  const masks = maskWords(family, prefix);
  const network = w.map((x, i) => (x & masks[i]!) >>> 0);
  if (network.some((x, i) => x !== w[i])) {
    const suggestion = formatIp({ family, words: network });
    return cidrError(
      `"${text}": address has bits set beyond /${prefix}; did you mean ${suggestion}/${prefix}?`,
    );
  }
  if (family === 6 && prefix >= 96 && isMapped(w)) {
    const v4 = formatIp({ family: 4, words: [w[3]!] });
    return cidrError(`"${text}": IPv4-mapped addresses are matched as IPv4; write ${v4}/${prefix - 96}`);
  }
  return { family, words: network, masks, prefix, text: `${formatIp({ family, words: network })}/${prefix}` };
};

export const cidrContains = (cidr: Cidr, ip: IpAddress): boolean => {
  if (cidr.family !== ip.family) return false;
  for (let i = 0; i < cidr.words.length; i++) {
    if ((ip.words[i]! & cidr.masks[i]!) >>> 0 !== cidr.words[i]) return false;
  }
  return true;
};
