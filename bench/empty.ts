// Imported by the start-memory breakdown to show what Node's TypeScript type stripping costs on its own.
export {};
