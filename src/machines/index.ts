export * from "./connectionMachine.ts";
export * from "./events.ts";
export * from "./MachineRunner.ts";
