export * from "./backend.ts";
export * from "./frontend.ts";
export * from "./MessageScanner.ts";
export * from "./messageTypes.ts";
export * from "./policies.ts";
export * from "./startup.ts";
