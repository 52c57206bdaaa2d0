import { X509Certificate } from "node:crypto";

/** The names in a certificate that identity mapping rules look at. */
export interface CertificateIdentity {
  /** Subject as Node prints it, one `attr=value` per line. */
  readonly subject: string;
  readonly commonName: string | undefined;
  readonly dns: readonly string[];
  readonly email: readonly string[];
  readonly uri: readonly string[];
  readonly ip: readonly string[];
  /** SHA-256 of the DER, colon-separated upper-case hex (as Node prints it). */
  readonly fingerprint256: string;
  readonly serialNumber: string;
  readonly validTo: string;
}

export interface AltName {
  readonly type: string;
  readonly value: string;
}

/**
 * Splits Node's subjectAltName text (`DNS:a, email:b, URI:c`). Node quotes a value as a JSON string
 * when it holds a comma, quote or other special character, so a value cannot forge a second entry.
 */
export const parseAltNames = (text: string | undefined): AltName[] => {
  const out: AltName[] = [];
  if (text === undefined || text === "") return out;
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(":", i);
    if (colon < 0) break;
    const type = text.slice(i, colon);
    let value: string;
    let end: number;
    if (text[colon + 1] === '"') {
      end = colon + 2;
      while (end < text.length && text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      value = JSON.parse(text.slice(colon + 1, end + 1)) as string;
      end += 1;
    } else {
      const comma = text.indexOf(", ", colon + 1);
      end = comma < 0 ? text.length : comma;
      value = text.slice(colon + 1, end);
    }
    out.push({ type, value });
    i = end + 2;
  }
  return out;
};

const commonNameOf = (subject: string): string | undefined => {
  const line = subject.split("\n").find((l) => l.startsWith("CN="));
  if (line === undefined) return undefined;
  const raw = line.slice(3);
  return raw.startsWith('"') ? (JSON.parse(raw) as string) : raw;
};

/** The identity-relevant parts of a DER certificate. */
export const certificateIdentity = (der: Buffer): CertificateIdentity => {
  const cert = new X509Certificate(der);
  const names = parseAltNames(cert.subjectAltName);
  const of = (type: string) => names.filter((n) => n.type === type).map((n) => n.value);
  return {
    subject: cert.subject,
    commonName: commonNameOf(cert.subject),
    dns: of("DNS"),
    email: of("email"),
    uri: of("URI"),
    ip: of("IP Address"),
    fingerprint256: cert.fingerprint256,
    serialNumber: cert.serialNumber,
    validTo: cert.validTo,
  };
};
