import { PolicyPack } from "@pulumi/policy";
import { policies } from "./policies";

// Relative imports stay extensionless: the CLI runs this pack through ts-node as CommonJS.
new PolicyPack("pypi-infra", { enforcementLevel: "mandatory", policies });
