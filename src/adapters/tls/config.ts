import * as Effect from "effect/Effect";
import * as Schema from "effect/Schema";

/**
 * Configuration of both TLS legs, as Effect Schemas the main configuration embeds
 * (`tls:` for the client leg, `upstream.tls:` for the leg to PostgreSQL). docs/tls.md explains
 * every key.
 */

const withDefault = <S extends Schema.Constraint>(schema: S, value: S["Encoded"]) =>
  Schema.withDecodingDefaultKey<S>(Effect.succeed(value))(schema);

/** TLS 1.3 suites approved for FIPS mode (SP 800-52r2): AES-GCM only. */
export const FIPS_TLS13_CIPHERSUITES = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256";
/** TLS 1.2 suites approved for FIPS mode: ECDHE key exchange with AES-GCM; no CBC, no static RSA. */
export const FIPS_TLS12_CIPHERS = [
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
].join(":");
/** NIST groups; set explicitly because Node's default list starts with X25519. */
export const FIPS_GROUPS = "P-256:P-384";

export const TlsVersion = Schema.Literals(["TLSv1.2", "TLSv1.3"]);
export type TlsVersion = typeof TlsVersion.Type;

const Millis = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1));

/** disable: answer SSLRequest with N. allow/prefer: TLS when the client asks. require: plaintext is refused. */
export const ClientTlsMode = Schema.Literals(["disable", "allow", "prefer", "require"]);
export type ClientTlsMode = typeof ClientTlsMode.Type;

export const ClientTlsConfig = Schema.Struct({
  mode: withDefault(ClientTlsMode, "disable"),
  /** Server certificate chain, PEM: leaf first. */
  cert: Schema.optionalKey(Schema.String),
  key: Schema.optionalKey(Schema.String),
  /** When set, client certificates are requested and verified against this CA bundle (PEM). */
  clientCa: Schema.optionalKey(Schema.String),
  /** CRL (PEM) checked for every client certificate; only with clientCa. */
  clientCrl: Schema.optionalKey(Schema.String),
  minVersion: withDefault(TlsVersion, "TLSv1.2"),
  /** TLS 1.2 cipher list (OpenSSL syntax). */
  ciphers: withDefault(Schema.String, FIPS_TLS12_CIPHERS),
  /** TLS 1.3 suites (OpenSSL syntax). */
  ciphersuites: withDefault(Schema.String, FIPS_TLS13_CIPHERSUITES),
  /** Key-exchange groups, colon separated, most preferred first. */
  groups: withDefault(Schema.String, FIPS_GROUPS),
  handshakeTimeoutMs: withDefault(Millis, 10_000),
});
export type ClientTlsConfig = typeof ClientTlsConfig.Type;

/** disable: plaintext. require: encrypted, server not verified. verify-ca: chain checked. verify-full: chain and host name. */
export const UpstreamTlsMode = Schema.Literals(["disable", "require", "verify-ca", "verify-full"]);
export type UpstreamTlsMode = typeof UpstreamTlsMode.Type;

export const UpstreamTlsConfig = Schema.Struct({
  mode: withDefault(UpstreamTlsMode, "disable"),
  /** CA bundle (PEM) the server's chain must lead to; without it, Node's built-in roots. */
  ca: Schema.optionalKey(Schema.String),
  /** Name checked against the server certificate and sent as SNI; default: upstream.host. */
  servername: Schema.optionalKey(Schema.String),
  /** Client certificate and key presented to PostgreSQL (PEM). */
  cert: Schema.optionalKey(Schema.String),
  key: Schema.optionalKey(Schema.String),
  /** PostgreSQL 17+ direct TLS: handshake at once with ALPN "postgresql", no SSLRequest. */
  direct: withDefault(Schema.Boolean, false),
  minVersion: withDefault(TlsVersion, "TLSv1.2"),
  ciphers: withDefault(Schema.String, FIPS_TLS12_CIPHERS),
  ciphersuites: withDefault(Schema.String, FIPS_TLS13_CIPHERSUITES),
  groups: withDefault(Schema.String, FIPS_GROUPS),
  handshakeTimeoutMs: withDefault(Millis, 10_000),
});
export type UpstreamTlsConfig = typeof UpstreamTlsConfig.Type;

/** Decodes a partial section with defaults filled in; throws on invalid input (tests, defaults). */
export const clientTlsConfig = (input: Partial<ClientTlsConfig> = {}): ClientTlsConfig =>
  Schema.decodeUnknownSync(ClientTlsConfig)(input);
export const upstreamTlsConfig = (input: Partial<UpstreamTlsConfig> = {}): UpstreamTlsConfig =>
  Schema.decodeUnknownSync(UpstreamTlsConfig)(input);
