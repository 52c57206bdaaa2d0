// Which code `pgwarden` runs: the bundle in dist/ (built by scripts/build.ts on `npm install` and
// before `npm start`) when it was built from the sources as they are now, else the TypeScript
// sources. The bundle is the same code without comments and module boundaries: ~20 MB less
// resident memory at start, since V8 keeps every loaded module's source text. Kept to plain
// JavaScript and node:fs so that choosing costs nothing measurable (~150 stats).
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";

export const ROOT = path.resolve(import.meta.dirname, "..");
export const DIST = path.join(ROOT, "dist");
const STAMP = path.join(DIST, "inputs.txt");

/** What the bundle is built from: the sources, the lock file (dependencies) and the build script. */
const inputs = (root) => {
  const files = [
    path.join(root, "package.json"),
    path.join(root, "package-lock.json"),
    path.join(root, "scripts", "build.ts"),
  ];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else files.push(full);
    }
  };
  walk(path.join(root, "src"));
  return files;
};

/** Count, newest mtime and total size of the inputs: any edit, addition or removal changes it. */
export const sourceStamp = (root = ROOT) => {
  let newest = 0;
  let bytes = 0;
  const files = inputs(root);
  for (const file of files) {
    const s = statSync(file, { throwIfNoEntry: false });
    if (s === undefined) continue;
    newest = Math.max(newest, s.mtimeMs);
    bytes += s.size;
  }
  return `${files.length} ${newest} ${bytes}`;
};

export const writtenStamp = () => {
  try {
    return readFileSync(STAMP, "utf8").trim();
  } catch {
    return undefined;
  }
};

export const stampFile = STAMP;

/** dist/main.js when it is current, else undefined (run the sources). PGWARDEN_SOURCES=1 forces the sources. */
export const freshBundle = () => {
  if (process.env.PGWARDEN_SOURCES === "1") return undefined;
  const stamp = writtenStamp();
  return stamp !== undefined && stamp === sourceStamp() ? path.join(DIST, "main.js") : undefined;
};
