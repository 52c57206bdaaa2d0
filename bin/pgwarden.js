#!/usr/bin/env node
// Entry for `npx pgwarden`: Node >= 22.12 runs the TypeScript sources directly (type stripping).
import "../src/cli/main.ts";
