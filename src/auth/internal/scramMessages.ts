/**
 * SCRAM message grammar (RFC 5802 §7), shared by the server and the client. Parsers return a
 * `Parsed` value: the message's fields, or why it is malformed; callers pick the error to report.
 */
import { decodeBase64, SCRAM_KEY_LENGTH } from "./scramCrypto.ts";

/** Longest SCRAM message accepted in either direction. */
export const MAX_SCRAM_MESSAGE_LENGTH = 4096;
/** Bounds for each side's nonce part; PostgreSQL and libpq send 24 characters. */
export const MIN_NONCE_LENGTH = 8;
export const MAX_NONCE_LENGTH = 1024;
const MAX_SALT_BYTES = 1024;

/** Printable ASCII except ",": the only characters a nonce may hold. */
const PRINTABLE = /^[\x21-\x2B\x2D-\x7E]+$/;
const SASLNAME = /^(?:[^,=\0]|=2C|=3D)*$/u;
const CB_NAME = /^[A-Za-z0-9.-]+$/;
const ITERATIONS = /^[1-9][0-9]{0,9}$/;

export type Gs2CbindFlag =
  /** Client does not support channel binding. */
  | { readonly kind: "n" }
  /** Client supports channel binding but believes the server does not. */
  | { readonly kind: "y" }
  /** Client requires channel binding of this type (SCRAM-SHA-256-PLUS). */
  | { readonly kind: "p"; readonly name: string };

export interface Gs2Header {
  readonly cbind: Gs2CbindFlag;
  readonly authzid: string | undefined;
  /** The header exactly as sent, trailing comma included: the start of the `c=` input. */
  readonly text: string;
}

export interface ClientFirst {
  readonly gs2: Gs2Header;
  /** client-first-message-bare, part of the AuthMessage. */
  readonly bare: string;
  readonly username: string;
  readonly clientNonce: string;
}

export interface ClientFinal {
  /** Decoded `c=`: gs2 header followed by channel-binding data, if any. */
  readonly channelBinding: Buffer;
  readonly nonce: string;
  readonly proof: Buffer;
  /** client-final-message-without-proof, part of the AuthMessage. */
  readonly withoutProof: string;
}

export interface ServerFirst {
  readonly nonce: string;
  readonly salt: Buffer;
  readonly iterations: number;
}

export type ServerFinal =
  | { readonly kind: "verifier"; readonly signature: Buffer }
  | { readonly kind: "error"; readonly value: string };

/** Outcome of a parse: the value, or why the text is malformed (or unsupported). */
export type Parsed<A> =
  | { readonly ok: true; readonly value: A }
  | { readonly ok: false; readonly reason: string };

const ok = <A>(value: A): Parsed<A> => ({ ok: true, value });
const bad = <A>(reason: string): Parsed<A> => ({ ok: false, reason });

interface Attribute {
  readonly name: string;
  readonly value: string;
}

const splitAttributes = (text: string, what: string): Attribute[] | string => {
  const attributes: Attribute[] = [];
  for (const part of text.split(",")) {
    const name = part[0] ?? "";
    if (!/^[A-Za-z]$/.test(name) || part[1] !== "=") return `malformed attribute in ${what}`;
    attributes.push({ name, value: part.slice(2) });
  }
  return attributes;
};

/** Unknown optional extensions are allowed after the mandatory attributes and ignored. */
const checkExtensions = (attributes: readonly Attribute[], what: string): string | undefined => {
  for (const { name, value } of attributes) {
    if (name === "m") return `unsupported mandatory extension in ${what}`;
    if (value.length === 0) return `empty extension attribute "${name}" in ${what}`;
  }
  return undefined;
};

const checkLength = (message: string, what: string): string | undefined => {
  if (message.length === 0) return `empty ${what}`;
  if (message.length > MAX_SCRAM_MESSAGE_LENGTH) return `${what} is longer than ${MAX_SCRAM_MESSAGE_LENGTH}`;
  if (message.includes("\0")) return `${what} contains a NUL character`;
  return undefined;
};

const checkNonce = (nonce: string): string | undefined => {
  if (!PRINTABLE.test(nonce)) return "is empty or has characters outside printable ASCII";
  if (nonce.length < MIN_NONCE_LENGTH || nonce.length > MAX_NONCE_LENGTH) {
    return `length must be ${MIN_NONCE_LENGTH}..${MAX_NONCE_LENGTH}`;
  }
  return undefined;
};

const parseGs2Header = (message: string): { header: Gs2Header; rest: string } | string => {
  const first = message.indexOf(",");
  const second = first < 0 ? -1 : message.indexOf(",", first + 1);
  if (second < 0) return "malformed gs2 header in client-first-message";
  const flag = message.slice(0, first);
  let cbind: Gs2CbindFlag;
  if (flag === "n" || flag === "y") cbind = { kind: flag };
  else if (flag.startsWith("p=") && CB_NAME.test(flag.slice(2))) cbind = { kind: "p", name: flag.slice(2) };
  else return "malformed channel-binding flag in client-first-message";
  const authzidText = message.slice(first + 1, second);
  let authzid: string | undefined;
  if (authzidText !== "") {
    if (!authzidText.startsWith("a=") || authzidText.length === 2 || !SASLNAME.test(authzidText.slice(2))) {
      return "malformed authorization identity in client-first-message";
    }
    authzid = authzidText.slice(2);
  }
  return { header: { cbind, authzid, text: message.slice(0, second + 1) }, rest: message.slice(second + 1) };
};

/** `gs2-header [m=…,] n=<user>,r=<nonce>[,ext…]` */
export const parseClientFirst = (message: string): Parsed<ClientFirst> => {
  const what = "client-first-message";
  const lengthProblem = checkLength(message, what);
  if (lengthProblem !== undefined) return bad(lengthProblem);
  const gs2 = parseGs2Header(message);
  if (typeof gs2 === "string") return bad(gs2);
  const attributes = splitAttributes(gs2.rest, what);
  if (typeof attributes === "string") return bad(attributes);
  const [user, nonce, ...extensions] = attributes;
  if (user?.name === "m") return bad(`unsupported mandatory extension in ${what}`);
  if (user?.name !== "n" || !SASLNAME.test(user.value)) return bad(`expected n=<username> in ${what}`);
  if (nonce?.name !== "r") return bad(`expected r=<nonce> after the username in ${what}`);
  const nonceProblem = checkNonce(nonce.value);
  if (nonceProblem !== undefined) return bad(`client nonce ${nonceProblem}`);
  const extensionProblem = checkExtensions(extensions, what);
  if (extensionProblem !== undefined) return bad(extensionProblem);
  return ok({ gs2: gs2.header, bare: gs2.rest, username: user.value, clientNonce: nonce.value });
};

/** `c=<base64>,r=<nonce>[,ext…],p=<base64 proof>` */
export const parseClientFinal = (message: string): Parsed<ClientFinal> => {
  const what = "client-final-message";
  const lengthProblem = checkLength(message, what);
  if (lengthProblem !== undefined) return bad(lengthProblem);
  const attributes = splitAttributes(message, what);
  if (typeof attributes === "string") return bad(attributes);
  const [binding, nonce, ...tail] = attributes;
  const proof = tail.pop();
  if (binding?.name !== "c") return bad(`expected c=<channel binding> first in ${what}`);
  const channelBinding = decodeBase64(binding.value);
  if (channelBinding === undefined || channelBinding.length === 0) {
    return bad(`channel binding is not base64 in ${what}`);
  }
  if (nonce?.name !== "r") return bad(`expected r=<nonce> after c= in ${what}`);
  if (!PRINTABLE.test(nonce.value)) return bad(`nonce has characters outside printable ASCII in ${what}`);
  if (proof?.name !== "p") return bad(`expected p=<proof> last in ${what}`);
  const proofBytes = decodeBase64(proof.value);
  if (proofBytes?.length !== SCRAM_KEY_LENGTH) return bad(`proof is not 32 bytes of base64 in ${what}`);
  const extensionProblem = checkExtensions(tail, what);
  if (extensionProblem !== undefined) return bad(extensionProblem);
  return ok({
    channelBinding,
    nonce: nonce.value,
    proof: proofBytes,
    withoutProof: message.slice(0, message.length - proof.value.length - 3),
  });
};

/** `[m=…,]r=<client nonce><server nonce>,s=<salt>,i=<iterations>[,ext…]` */
export const parseServerFirst = (
  message: string,
  clientNonce: string,
  maxIterations: number,
): Parsed<ServerFirst> => {
  const what = "server-first-message";
  const lengthProblem = checkLength(message, what);
  if (lengthProblem !== undefined) return bad(lengthProblem);
  const attributes = splitAttributes(message, what);
  if (typeof attributes === "string") return bad(attributes);
  const [nonce, salt, iterations, ...extensions] = attributes;
  if (nonce?.name === "m") return bad(`unsupported mandatory extension in ${what}`);
  if (nonce?.name !== "r") return bad(`expected r=<nonce> first in ${what}`);
  if (!nonce.value.startsWith(clientNonce)) return bad(`nonce does not extend the client's in ${what}`);
  const serverPart = nonce.value.slice(clientNonce.length);
  const nonceProblem = checkNonce(serverPart);
  if (nonceProblem !== undefined) return bad(`server nonce ${nonceProblem}`);
  if (salt?.name !== "s") return bad(`expected s=<salt> after the nonce in ${what}`);
  const saltBytes = decodeBase64(salt.value);
  if (saltBytes === undefined || saltBytes.length === 0 || saltBytes.length > MAX_SALT_BYTES) {
    return bad(`salt is not base64 of 1..${MAX_SALT_BYTES} bytes in ${what}`);
  }
  if (iterations?.name !== "i") return bad(`expected i=<iterations> after the salt in ${what}`);
  const count = ITERATIONS.test(iterations.value) ? Number(iterations.value) : Number.NaN;
  if (!(count <= maxIterations)) return bad(`iteration count is not an integer in 1..${maxIterations}`);
  const extensionProblem = checkExtensions(extensions, what);
  if (extensionProblem !== undefined) return bad(extensionProblem);
  return ok({ nonce: nonce.value, salt: saltBytes, iterations: count });
};

/** `v=<base64 signature>[,ext…]` or `e=<error>[,ext…]` */
export const parseServerFinal = (message: string): Parsed<ServerFinal> => {
  const what = "server-final-message";
  const lengthProblem = checkLength(message, what);
  if (lengthProblem !== undefined) return bad(lengthProblem);
  const attributes = splitAttributes(message, what);
  if (typeof attributes === "string") return bad(attributes);
  const [first, ...extensions] = attributes;
  const extensionProblem = checkExtensions(extensions, what);
  if (extensionProblem !== undefined) return bad(extensionProblem);
  if (first?.name === "e") {
    if (first.value.length === 0) return bad(`empty e= in ${what}`);
    return ok({ kind: "error", value: first.value });
  }
  if (first?.name !== "v") return bad(`expected v=<signature> or e=<error> in ${what}`);
  const signature = decodeBase64(first.value);
  if (signature?.length !== SCRAM_KEY_LENGTH) return bad(`signature is not 32 bytes of base64 in ${what}`);
  return ok({ kind: "verifier", signature });
};

/** Whether a nonce part is acceptable: printable ASCII except ",", within the length bounds. */
export const isValidNonce = (nonce: string): boolean => checkNonce(nonce) === undefined;
