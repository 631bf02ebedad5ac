// Moved to the lab with the stack builder that reads it.
export * from "../../lab/lib/pulumi-yaml.js";
