import { readStackConfig } from "./config.js";
import { PypiStack } from "./stack.js";

const { config, tls } = readStackConfig();
const stack = new PypiStack("pypi", { config, tls });

/** Address, allocation id and home balancer of every floating IP. */
export const floatingIps = stack.floatingIps;
/** The HTTPS URL and the SFTP upload `host:port`. */
export const endpoints = stack.endpoints;
/** Node name -> instance id, private IP, role, AZ. */
export const nodes = stack.nodes;
/** Runbook id -> markdown, with the real instance ids and addresses filled in. */
export const runbooks = stack.runbooks;
/** The same runbooks as data (steps with host, command and expected result). */
export const runbookData = stack.runbookData;
