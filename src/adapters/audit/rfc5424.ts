import type { AuditLine } from "./AuditSink.ts";

/**
 * RFC 5424 syslog messages and RFC 5425 octet-counting frames, pure. The record JSON is the MSG;
 * its seq and id also go in structured data so a collector can order and deduplicate without
 * parsing the JSON.
 */

export const SyslogFacilities = [
  "kern",
  "user",
  "mail",
  "daemon",
  "auth",
  "syslog",
  "lpr",
  "news",
  "uucp",
  "cron",
  "authpriv",
  "ftp",
  "ntp",
  "audit",
  "alert",
  "clock",
  "local0",
  "local1",
  "local2",
  "local3",
  "local4",
  "local5",
  "local6",
  "local7",
] as const;
export type SyslogFacility = (typeof SyslogFacilities)[number];

/** Severity 6, informational: an audit record reports normal operation, its own content says what happened. */
const severityInfo = 6;
const bom = "\uFEFF";

export interface SyslogHeader {
  readonly facility: SyslogFacility;
  readonly hostname: string;
  readonly appName: string;
  readonly procId: string;
  readonly msgId: string;
  /** SD-ID of the element holding seq and id, `name@enterprise-number`. */
  readonly sdId: string;
}

/** RFC 5424 header fields are PRINTUSASCII (33..126) with a maximum length; NILVALUE when nothing is left. */
export const headerField = (value: string, maxLength: number): string => {
  const printable = value.replace(/[^\x21-\x7e]/g, "").slice(0, maxLength);
  return printable === "" ? "-" : printable;
};

/** SD-NAME: PRINTUSASCII without `=`, space, `]` and `"`, at most 32 characters. */
export const isSdName = (s: string): boolean => /^[\x21-\x7e]{1,32}$/.test(s) && !/[= \]"]/.test(s);

/** PARAM-VALUE escapes exactly `"`, `\` and `]`. */
export const escapeParamValue = (s: string): string => s.replace(/["\\\]]/g, (c) => `\\${c}`);

/** Normalises header fields once, so formatting each line is plain concatenation. */
export const syslogHeader = (h: SyslogHeader): SyslogHeader => {
  const sdName = h.sdId.split("@")[0] ?? "";
  if (!isSdName(h.sdId) || !isSdName(sdName)) throw new RangeError(`invalid SD-ID ${JSON.stringify(h.sdId)}`);
  return {
    facility: h.facility,
    hostname: headerField(h.hostname, 255),
    appName: headerField(h.appName, 48),
    procId: headerField(h.procId, 128),
    msgId: headerField(h.msgId, 32),
    sdId: h.sdId,
  };
};

export const priority = (facility: SyslogFacility): number =>
  SyslogFacilities.indexOf(facility) * 8 + severityInfo;

/** One RFC 5424 message; `header` must come from `syslogHeader`. The MSG is UTF-8 and so starts with a BOM. */
export const formatMessage = (header: SyslogHeader, line: AuditLine, timestamp: Date): string =>
  `<${priority(header.facility)}>1 ${timestamp.toISOString()} ${header.hostname} ${header.appName} ` +
  `${header.procId} ${header.msgId} [${header.sdId} seq="${line.seq}" id="${escapeParamValue(line.id)}"] ` +
  `${bom}${line.text}`;

/** RFC 5425 framing: `MSG-LEN SP SYSLOG-MSG`, the length counted in octets. */
export const frame = (message: string): Buffer => {
  const body = Buffer.from(message, "utf8");
  return Buffer.concat([Buffer.from(`${body.length} `, "ascii"), body]);
};
