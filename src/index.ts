import { program } from "./program.js";

// Pulumi calls an exported function, awaits it and publishes what it returns as the stack outputs.
export = program;
