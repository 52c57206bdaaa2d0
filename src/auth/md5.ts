import { createHash } from "node:crypto";

const md5Hex = (data: Buffer): string => createHash("md5").update(data).digest("hex");

/**
 * The PasswordMessage answer to AuthenticationMD5Password:
 * "md5" + hex(md5(hex(md5(password ‖ user)) ‖ salt)), strings as UTF-8.
 *
 * MD5 is not a FIPS-approved algorithm: in FIPS mode `createHash("md5")` throws, so check
 * `crypto.getFips()` and refuse MD5 authentication before calling this.
 *
 * @example md5PasswordMessage("postgres", "secret", Buffer.from([1, 2, 3, 4])) // "md5" + 32 hex digits
 */
export const md5PasswordMessage = (user: string, password: string, salt: Buffer): string => {
  if (salt.length !== 4) throw new RangeError("the MD5 authentication salt is 4 bytes");
  const inner = md5Hex(Buffer.from(password + user, "utf8"));
  return `md5${md5Hex(Buffer.concat([Buffer.from(inner, "ascii"), salt]))}`;
};
