#!/usr/bin/env node
// Entry for an installed `pgwarden`: Node runs the TypeScript sources directly (type stripping).
import { run } from "../src/cli/main.ts";

run(process.argv.slice(2));
