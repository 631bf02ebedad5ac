import { createHash } from "node:crypto";
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import {
  CACHE_BEHAVIOURS,
  type CacheClass,
  DEFAULT_CACHE,
  type EdgeConfig,
  type EdgeProbe,
  edgeRecords,
  HEALTH_CHECK_FAILURES,
  HEALTH_CHECK_INTERVAL_SECONDS,
  IMMUTABLE_TTL_SECONDS,
  INDEX_MAX_TTL_SECONDS,
  INDEX_TTL_SECONDS,
  RECORD_TTL_SECONDS,
  type ServingMode,
  servingMode,
} from "../edge.js";
import { ports } from "../layout.js";
import { BLOCK_ALL_PUBLIC_ACCESS } from "./bundle-bucket.js";

/** AWS's managed cache and origin request policies (fixed ids, the same in every account). */
export const MANAGED_CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad";
/** Every viewer header (Authorization too, which only an uncached behaviour may forward), cookie and query string. */
export const MANAGED_ALL_VIEWER = "216adef6-5c7f-47e4-b989-5492eafa07d3";
/** Route 53's hosted zone of every CloudFront distribution (alias targets). */
export const CLOUDFRONT_ZONE_ID = "Z2FDTNDATAQYW2";
/** Days CloudFront's access logs are kept. */
export const CDN_LOG_DAYS = 90;

export interface EdgeArgs {
  readonly environment: string;
  readonly domain: string;
  readonly edge: EdgeConfig;
  /** The floating IPs' public addresses, in floating IP order. */
  readonly publicIps: readonly pulumi.Input<string>[];
  /** Delete protection of the log bucket (deletionProtection). */
  readonly retain: boolean;
  readonly tags: Readonly<Record<string, string>>;
}

/** A record as the `dns` stack output shows it: created in the zone, or to create by hand. */
export interface DnsRecordOutput {
  readonly name: string;
  readonly type: "A" | "ALIAS";
  readonly values: readonly string[];
  /** What Route 53 probes through each address before answering with it (none by hand). */
  readonly healthCheck?: string;
  readonly purpose: string;
}

export interface DnsOutput {
  readonly mode: ServingMode;
  /** true: no zone was given; create these records at your DNS provider. */
  readonly byHand: boolean;
  readonly zoneId?: string;
  readonly records: readonly DnsRecordOutput[];
}

export interface CdnOutput {
  readonly distributionId: string;
  readonly domainName: string;
  readonly certificateArn: string;
  /** `imported`: cdnCertificateArn (the TLS secret's certificate in ACM); `dns-validated`: requested and validated through the zone. */
  readonly certificate: "imported" | "dns-validated";
  readonly logBucket: string;
}

export function validateEdgeArgs(args: EdgeArgs): void {
  const mode = servingMode(args.edge);
  if (mode === "cdn" && !args.edge.dnsZone && !args.edge.cdn.certificateArn)
    throw new Error(
      "Edge: a CDN needs edge.dnsZone (to validate a new ACM certificate) or edge.cdn.certificateArn (an ACM certificate in us-east-1)",
    );
  if (args.publicIps.length === 0) throw new Error("Edge: publicIps is empty; the records need an address");
  const names = [
    args.domain,
    args.edge.uploadHostname,
    ...(mode === "cdn" ? [args.edge.cdn.originHostname] : []),
  ];
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice)
    throw new Error(`Edge: ${JSON.stringify(twice)} is used for two purposes (domain, upload, origin)`);
}

/** A short stable suffix for a name: resource names stay put when the list around them changes. */
const suffixOf = (text: string): string => createHash("sha256").update(text).digest("hex").slice(0, 8);

/**
 * DNS and CDN in front of the balancers (see edge.ts for the three serving modes). Without a zone
 * it creates nothing in Route 53 and outputs the records to create by hand; without `cdn` it
 * creates no CloudFront resource.
 */
export class Edge extends pulumi.ComponentResource {
  readonly mode: ServingMode;
  readonly dns: pulumi.Output<DnsOutput>;
  readonly cdn?: pulumi.Output<CdnOutput>;
  readonly healthChecks: aws.route53.HealthCheck[] = [];
  readonly distribution?: aws.cloudfront.Distribution;

  constructor(name: string, args: EdgeArgs, opts: pulumi.ComponentResourceOptions = {}) {
    super("pypi:infra:Edge", name, {}, opts);
    validateEdgeArgs(args);
    const parent = { parent: this };
    const { edge, domain } = args;
    this.mode = servingMode(edge);
    const tags = { ...args.tags };

    const zone = edge.dnsZone
      ? aws.route53.getZoneOutput(
          "id" in edge.dnsZone
            ? { zoneId: edge.dnsZone.id }
            : { name: edge.dnsZone.name, privateZone: false },
          parent,
        )
      : undefined;

    let cdn: { distribution: aws.cloudfront.Distribution; out: pulumi.Output<CdnOutput> } | undefined;
    if (this.mode === "cdn") cdn = this.createCdn(name, args, zone, tags);
    this.distribution = cdn?.distribution;
    this.cdn = cdn?.out;

    const planned = edgeRecords(domain, edge, args.publicIps.map(String));
    // One check per address and probe, shared by the records that point there. The HTTPS
    // check asks for the public domain (Host and SNI), as clients and CloudFront do.
    const healthChecks = new Map<string, aws.route53.HealthCheck>();
    const healthCheckOf = (
      probe: EdgeProbe,
      ip: pulumi.Input<string>,
      i: number,
    ): aws.route53.HealthCheck => {
      const key = `${probe}-${i}`;
      const known = healthChecks.get(key);
      if (known) return known;
      const check = new aws.route53.HealthCheck(
        `${name}-${key}`,
        {
          type: probe === "https" ? "HTTPS" : "TCP",
          ipAddress: ip,
          port: probe === "https" ? ports.https : ports.upload,
          ...(probe === "https" ? { resourcePath: "/_health", fqdn: domain, enableSni: true } : {}),
          requestInterval: HEALTH_CHECK_INTERVAL_SECONDS,
          failureThreshold: HEALTH_CHECK_FAILURES,
          tags: { ...tags, Name: `pypi-${args.environment}-${key}` },
        },
        parent,
      );
      healthChecks.set(key, check);
      this.healthChecks.push(check);
      return check;
    };

    const outputs: pulumi.Output<DnsRecordOutput>[] = [];
    for (const r of planned) {
      if (r.kind === "cdn-alias") {
        const target = cdn?.distribution;
        if (!target) throw new Error("Edge: a CDN alias record without a distribution");
        if (zone)
          for (const type of ["A", "AAAA"] as const)
            new aws.route53.Record(
              `${name}-${suffixOf(r.name)}-${type.toLowerCase()}`,
              {
                zoneId: zone.zoneId,
                name: r.name,
                type,
                aliases: [
                  { name: target.domainName, zoneId: target.hostedZoneId, evaluateTargetHealth: false },
                ],
              },
              parent,
            );
        outputs.push(
          target.domainName.apply((d) => ({
            name: r.name,
            type: "ALIAS" as const,
            values: [d],
            purpose: r.purpose,
          })),
        );
        continue;
      }
      const probe = r.probe as EdgeProbe;
      const checks = args.publicIps.map((ip, i) => (zone ? healthCheckOf(probe, ip, i) : undefined));
      if (zone)
        args.publicIps.forEach((ip, i) => {
          new aws.route53.Record(
            `${name}-${suffixOf(r.name)}-${i}`,
            {
              zoneId: zone.zoneId,
              name: r.name,
              type: "A",
              ttl: RECORD_TTL_SECONDS,
              records: [ip],
              setIdentifier: `${r.name}-${i}`,
              multivalueAnswerRoutingPolicy: true,
              healthCheckId: checks[i]?.id,
            },
            parent,
          );
        });
      outputs.push(
        pulumi.all(args.publicIps.map((ip) => pulumi.output(ip))).apply((values) => ({
          name: r.name,
          type: "A" as const,
          values,
          ...(zone ? { healthCheck: describeProbe(probe, domain) } : {}),
          purpose: r.purpose,
        })),
      );
    }

    this.dns = pulumi
      .all([pulumi.all(outputs), zone?.zoneId ?? pulumi.output(undefined)])
      .apply(([records, zoneId]) => ({
        mode: this.mode,
        byHand: !zone,
        ...(zoneId ? { zoneId } : {}),
        records,
      }));
    this.registerOutputs({ dns: this.dns, cdn: this.cdn });
  }

  private createCdn(
    name: string,
    args: EdgeArgs,
    zone: pulumi.Output<aws.route53.GetZoneResult> | undefined,
    tags: Record<string, string>,
  ): { distribution: aws.cloudfront.Distribution; out: pulumi.Output<CdnOutput> } {
    const parent = { parent: this };
    const { edge, domain } = args;
    // CloudFront takes certificates from us-east-1 only, whatever the stack's region.
    const useast1 = new aws.Provider(`${name}-us-east-1`, { region: "us-east-1" }, parent);

    let certificateArn: pulumi.Output<string>;
    let certificate: CdnOutput["certificate"];
    if (edge.cdn.certificateArn) {
      certificateArn = pulumi.output(edge.cdn.certificateArn);
      certificate = "imported";
    } else {
      if (!zone) throw new Error("Edge: no zone to validate the CDN certificate");
      const cert = new aws.acm.Certificate(
        `${name}-cdn-cert`,
        { domainName: domain, validationMethod: "DNS", tags },
        { parent: this, provider: useast1 },
      );
      const validation = new aws.route53.Record(
        `${name}-cdn-cert-validation`,
        {
          zoneId: zone.zoneId,
          name: cert.domainValidationOptions.apply((o) => o[0]?.resourceRecordName ?? ""),
          type: cert.domainValidationOptions.apply((o) => o[0]?.resourceRecordType ?? "CNAME"),
          records: [cert.domainValidationOptions.apply((o) => o[0]?.resourceRecordValue ?? "")],
          ttl: 300,
          allowOverwrite: true,
        },
        parent,
      );
      const validated = new aws.acm.CertificateValidation(
        `${name}-cdn-cert`,
        { certificateArn: cert.arn, validationRecordFqdns: [validation.fqdn] },
        { parent: this, provider: useast1 },
      );
      certificateArn = validated.certificateArn;
      certificate = "dns-validated";
    }

    const logs = new aws.s3.Bucket(
      `${name}-cdn-logs`,
      { bucketPrefix: `pypi-${args.environment}-cdn-logs-`.slice(0, 37), forceDestroy: !args.retain, tags },
      { parent: this, protect: args.retain, retainOnDelete: args.retain },
    );
    new aws.s3.BucketPublicAccessBlock(
      `${name}-cdn-logs`,
      { bucket: logs.id, ...BLOCK_ALL_PUBLIC_ACCESS },
      parent,
    );
    // CloudFront's standard logs are written with an ACL grant to its log delivery account.
    const ownership = new aws.s3.BucketOwnershipControls(
      `${name}-cdn-logs`,
      { bucket: logs.id, rule: { objectOwnership: "BucketOwnerPreferred" } },
      parent,
    );
    new aws.s3.BucketServerSideEncryptionConfiguration(
      `${name}-cdn-logs`,
      { bucket: logs.id, rules: [{ applyServerSideEncryptionByDefault: { sseAlgorithm: "AES256" } }] },
      parent,
    );
    new aws.s3.BucketLifecycleConfiguration(
      `${name}-cdn-logs`,
      {
        bucket: logs.id,
        rules: [{ id: "expire", status: "Enabled", filter: {}, expiration: { days: CDN_LOG_DAYS } }],
      },
      parent,
    );

    const immutable = new aws.cloudfront.CachePolicy(
      `${name}-immutable`,
      {
        name: `pypi-${args.environment}-immutable`,
        comment: "Package files: never change once uploaded; no query string, header or cookie in the key",
        minTtl: 0,
        defaultTtl: IMMUTABLE_TTL_SECONDS,
        maxTtl: IMMUTABLE_TTL_SECONDS,
        parametersInCacheKeyAndForwardedToOrigin: {
          cookiesConfig: { cookieBehavior: "none" },
          headersConfig: { headerBehavior: "none" },
          queryStringsConfig: { queryStringBehavior: "none" },
          // Archives are compressed already.
          enableAcceptEncodingGzip: false,
          enableAcceptEncodingBrotli: false,
        },
      },
      parent,
    );
    const index = new aws.cloudfront.CachePolicy(
      `${name}-index`,
      {
        name: `pypi-${args.environment}-index`,
        comment: "Index pages and JSON: the origin's short max-age; Accept and ?format= in the key (PEP 691)",
        minTtl: 0,
        defaultTtl: INDEX_TTL_SECONDS,
        maxTtl: INDEX_MAX_TTL_SECONDS,
        parametersInCacheKeyAndForwardedToOrigin: {
          cookiesConfig: { cookieBehavior: "none" },
          headersConfig: { headerBehavior: "whitelist", headers: { items: ["Accept"] } },
          queryStringsConfig: { queryStringBehavior: "whitelist", queryStrings: { items: ["format"] } },
          enableAcceptEncodingGzip: true,
          enableAcceptEncodingBrotli: true,
        },
      },
      parent,
    );
    // The balancers' certificate names `domain`, not the origin name: CloudFront checks it
    // against the Host header it forwards, so every behaviour forwards Host.
    const withHost = new aws.cloudfront.OriginRequestPolicy(
      `${name}-host`,
      {
        name: `pypi-${args.environment}-host`,
        comment: "Forward Host, so the origin's certificate and server_name match the public domain",
        cookiesConfig: { cookieBehavior: "none" },
        headersConfig: { headerBehavior: "whitelist", headers: { items: ["Host"] } },
        queryStringsConfig: { queryStringBehavior: "none" },
      },
      parent,
    );
    const policies: Record<
      CacheClass,
      { cachePolicyId: pulumi.Input<string>; originRequestPolicyId: pulumi.Input<string> }
    > = {
      immutable: { cachePolicyId: immutable.id, originRequestPolicyId: withHost.id },
      index: { cachePolicyId: index.id, originRequestPolicyId: withHost.id },
      uncached: { cachePolicyId: MANAGED_CACHING_DISABLED, originRequestPolicyId: MANAGED_ALL_VIEWER },
    };
    const READ = ["GET", "HEAD"];
    const ALL = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"];
    const originId = "balancers";
    const behaviour = (cache: CacheClass, methods: "read" | "all") => ({
      targetOriginId: originId,
      viewerProtocolPolicy: "redirect-to-https",
      allowedMethods: methods === "all" ? ALL : READ,
      cachedMethods: READ,
      compress: cache !== "immutable",
      ...policies[cache],
    });

    const distribution = new aws.cloudfront.Distribution(
      `${name}-cdn`,
      {
        enabled: true,
        isIpv6Enabled: true,
        httpVersion: "http2and3",
        comment: `pypi ${args.environment}: ${domain}`,
        aliases: [domain],
        origins: [
          {
            originId,
            domainName: edge.cdn.originHostname,
            customOriginConfig: {
              httpPort: 80,
              httpsPort: 443,
              originProtocolPolicy: "https-only",
              originSslProtocols: ["TLSv1.2"],
              // An upload's answer comes after the whole body is stored and registered.
              originReadTimeout: 60,
              originKeepaliveTimeout: 5,
            },
          },
        ],
        defaultCacheBehavior: behaviour(DEFAULT_CACHE, "read"),
        orderedCacheBehaviors: CACHE_BEHAVIOURS.map((b) => ({
          pathPattern: b.pathPattern,
          ...behaviour(b.cache, b.methods),
        })),
        // A 404 for a file not uploaded yet must not outlive its upload.
        customErrorResponses: [{ errorCode: 404, errorCachingMinTtl: 10 }],
        restrictions: { geoRestriction: { restrictionType: "none" } },
        viewerCertificate: {
          acmCertificateArn: certificateArn,
          sslSupportMethod: "sni-only",
          minimumProtocolVersion: "TLSv1.2_2021",
        },
        loggingConfig: { bucket: logs.bucketDomainName, prefix: "cloudfront/", includeCookies: false },
        // The app servers' bundles name the distribution: `up` goes on once CloudFront accepted
        // it, not after the 5-15 minutes it takes to reach every edge location.
        waitForDeployment: false,
        tags,
      },
      { parent: this, dependsOn: [ownership] },
    );
    const out = pulumi
      .all([distribution.id, distribution.domainName, certificateArn, logs.bucket])
      .apply(([distributionId, domainName, arn, logBucket]) => ({
        distributionId,
        domainName,
        certificateArn: arn,
        certificate,
        logBucket,
      }));
    return { distribution, out };
  }
}

function describeProbe(probe: EdgeProbe, domain: string): string {
  return probe === "https"
    ? `HTTPS GET https://${domain}/_health through each address every ${HEALTH_CHECK_INTERVAL_SECONDS} s, ${HEALTH_CHECK_FAILURES} failures mark it down`
    : `TCP connect to port ${ports.upload} of each address every ${HEALTH_CHECK_INTERVAL_SECONDS} s, ${HEALTH_CHECK_FAILURES} failures mark it down`;
}
