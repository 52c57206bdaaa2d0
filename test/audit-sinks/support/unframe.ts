/** A receiver's reading of RFC 5425 octet-counted frames, written independently of the sender's `frame`. */
export const unframe = (data: Buffer): string[] => {
  const out: string[] = [];
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    if (space < 0) throw new Error(`no MSG-LEN at octet ${at}`);
    const len = Number(data.subarray(at, space).toString("ascii"));
    if (space + 1 + len > data.length) throw new Error(`frame at octet ${at} is cut short`);
    out.push(data.subarray(space + 1, space + 1 + len).toString("utf8"));
    at = space + 1 + len;
  }
  return out;
};
