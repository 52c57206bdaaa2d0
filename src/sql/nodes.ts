/** Parse-tree shapes, apart from the parser, so reading a tree never loads the WASM module. */
export type RawNode = Readonly<Record<string, unknown>>;

/** The node type and its fields of a raw statement (`["VariableSetStmt", {...}]`). */
export const nodeOf = (n: RawNode): readonly [string, Readonly<Record<string, unknown>>] => {
  for (const k in n) return [k, (n[k] ?? {}) as Readonly<Record<string, unknown>>];
  return ["", {}];
};
