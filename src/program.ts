import { checkAwsFacts, fetchAwsFacts } from "./aws-facts.js";
import { readStackConfig } from "./config.js";
import { ConfigError } from "./schema.js";
import { PypiStack } from "./stack.js";

/**
 * The program: the config and the TLS material are checked first, then what AWS says about the
 * instance types and zones, all before the first resource is registered, so a bad setting fails
 * preview with nothing half-planned.
 */
export async function program(opts: { readonly now?: Date } = {}) {
  const { config, tls } = readStackConfig(opts.now);
  const problems = checkAwsFacts(config, await fetchAwsFacts(config));
  if (problems.length > 0) throw new ConfigError(problems);
  const stack = new PypiStack("pypi", { config, tls });
  return {
    /** Address, allocation id and home balancer of every floating IP. */
    floatingIps: stack.floatingIps,
    /** The HTTPS URL and the SFTP upload `host:port`. */
    endpoints: stack.endpoints,
    /** Node name -> instance id, private IP, role, AZ. */
    nodes: stack.nodes,
    /** Runbook id -> markdown, with the real instance ids and addresses filled in. */
    runbooks: stack.runbooks,
    /** The same runbooks as data (steps with host, command and expected result). */
    runbookData: stack.runbookData,
    /** Backup and file copy buckets, their Object Lock days and the pgBackRest / file copy locations. */
    backup: stack.backup,
    /** DLM snapshots of the DRBD volumes: count kept, interval in hours, and the policy id when on. */
    storageSnapshots: stack.storageSnapshots,
    /** Alarm name -> the runbook (an id of `runbooks`) that fixes it, and what it means. */
    alarms: stack.alarms,
    /** The SNS topic every alarm notifies: subscribe a pager or a mailbox to it. */
    alarmTopicArn: stack.alarmTopicArn,
    /** Serving mode (direct, dns, cdn) and the DNS records: in the zone, or `byHand` to create. */
    dns: stack.dns,
    /** The CloudFront distribution (id, name, certificate, log bucket); absent without `cdn`. */
    cdn: stack.cdn,
  };
}
