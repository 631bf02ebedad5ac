import type * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { createRules, type Group, uploadRules } from "../network.js";

export interface UploadProxyArgs {
  /** The stack's security groups (balancer, app, db). */
  readonly securityGroups: Readonly<Record<Group, aws.ec2.SecurityGroup>>;
  /** Port HAProxy listens on at the floating IPs. */
  readonly port: number;
  /** Port of the upload sshd on the app servers. */
  readonly backendPort: number;
  /** Public host name clients upload to. */
  readonly domain: string;
}

/**
 * The SFTP upload path on the balancers: HAProxy (TCP mode, rendered into the balancer bundle)
 * at the floating IPs, proxying to the app servers' upload sshd. This component owns the
 * security rules of that path; the HAProxy config travels in the bundles like every other file.
 */
export class UploadProxy extends pulumi.ComponentResource {
  /** `host:port` clients upload to. */
  readonly endpoint: string;

  constructor(name: string, args: UploadProxyArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:UploadProxy", name, {}, opts);
    createRules(this, name, uploadRules(args.port, args.backendPort), args.securityGroups);
    this.endpoint = `${args.domain}:${args.port}`;
    this.registerOutputs({ endpoint: this.endpoint });
  }
}
