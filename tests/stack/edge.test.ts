/**
 * DNS and CDN in front of the balancers: the three serving modes (direct, DNS with health checks,
 * CDN), their records, health checks and cache behaviours, and that neither DNS nor CDN is
 * created when the config leaves them out.
 */
import type * as pulumi from "@pulumi/pulumi";
import { beforeAll, describe, expect, test } from "vitest";
import { parseEnvFile } from "../../src/app/config.js";
import {
  type CdnOutput,
  type DnsOutput,
  MANAGED_ALL_VIEWER,
  MANAGED_CACHING_DISABLED,
} from "../../src/components/edge.js";
import { parseConfig } from "../../src/config.js";
import { CACHE_BEHAVIOURS, cacheClassOf, edgeRecords, INDEX_TTL_SECONDS } from "../../src/edge.js";
import { bundleEntriesOf } from "../../src/plan.js";
import { ConfigError } from "../../src/schema.js";
import {
  type Built,
  buildStack,
  type Recorded,
  rawConfig,
  resolve,
  withCheapStackTraces,
} from "./harness.js";
import { covers, type RoleGroup, roleGroups } from "./iam.js";

const T = {
  record: "aws:route53/record:Record",
  healthCheck: "aws:route53/healthCheck:HealthCheck",
  distribution: "aws:cloudfront/distribution:Distribution",
  cachePolicy: "aws:cloudfront/cachePolicy:CachePolicy",
  originRequestPolicy: "aws:cloudfront/originRequestPolicy:OriginRequestPolicy",
  certificate: "aws:acm/certificate:Certificate",
  certificateValidation: "aws:acm/certificateValidation:CertificateValidation",
  provider: "pulumi:providers:aws",
  bucket: "aws:s3/bucket:Bucket",
} as const;

const DOMAIN = "pypi.example.org";
const ZONE_ID = "Z0123456789ABCDEFGHIJ";
const CERT_ARN = "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012";
const EDGE_TYPES = Object.values(T).filter((t) => t !== T.provider && t !== T.bucket);

type EdgeBuilt = Built & {
  readonly dns: DnsOutput;
  readonly cdn?: CdnOutput;
  /** Resource name -> the provider it was created with (undefined: the default provider). */
  readonly providers: Record<string, string | undefined>;
};

async function buildEdge(
  overrides: Record<string, unknown>,
  stack: "prod" | "staging" = "prod",
): Promise<EdgeBuilt> {
  return withCheapStackTraces(async () => {
    const providers: Record<string, string | undefined> = {};
    const record: pulumi.ResourceTransformation = ({ name, opts }) => {
      const provider = (opts as pulumi.CustomResourceOptions).provider as unknown as
        | { __name?: string }
        | undefined;
      providers[name] = provider?.__name;
      return undefined;
    };
    const b = await buildStack(stack, overrides, { transformations: [record] });
    const dns = await resolve(b.pypi.dns);
    const cdn = b.pypi.cdn ? await resolve(b.pypi.cdn) : undefined;
    return { ...b, dns, cdn, providers };
  });
}

describe("direct: no zone, no CDN (the prod stack file)", () => {
  let b: EdgeBuilt;
  beforeAll(async () => {
    b = await buildEdge({});
  }, 120_000);

  test("creates no Route 53, CloudFront or ACM resource", () => {
    for (const type of EDGE_TYPES) expect(b.ofType(type), type).toEqual([]);
  });

  test("no purge: no role may touch CloudFront, and no bundle queues or sends a purge", () => {
    for (const g of roleGroups(b))
      for (const s of g.statements)
        for (const a of s.Action) expect(a, g.nodes.join(",")).not.toMatch(/^cloudfront:/i);
    const t = b.outputs.topology;
    expect(t.cdnInvalidations).toBeUndefined();
    for (const [node, files] of Object.entries(bundleEntriesOf(t))) {
      expect(
        Object.keys(files).filter((f) => f.includes("pypi-cdn-purge")),
        node,
      ).toEqual([]);
      expect(files["files/etc/pypi-index/env"] ?? "", node).not.toContain("PYPI_CDN_INVALIDATIONS");
    }
  });

  test("outputs the records to create by hand: the domain and the upload name on every floating IP", () => {
    const fips = b.outputs.floatingIps.map((f) => f.address);
    expect(fips.length).toBeGreaterThan(1);
    expect(b.dns).toEqual({
      mode: "direct",
      byHand: true,
      records: [
        { name: DOMAIN, type: "A", values: fips, purpose: expect.stringContaining("HTTPS") },
        { name: `upload.${DOMAIN}`, type: "A", values: fips, purpose: expect.stringContaining("SFTP") },
      ],
    });
    expect(b.pypi.endpoints.upload).toBe(`upload.${DOMAIN}:22`);
  });
});

describe("dns: a hosted zone, no CDN", () => {
  let b: EdgeBuilt;
  beforeAll(async () => {
    b = await buildEdge({ "pypi-infra:dnsZone": ZONE_ID });
  }, 120_000);

  test("one multivalue A record per floating IP, for the domain and the upload name, each health-checked", () => {
    const fips = b.outputs.floatingIps.map((f) => f.address);
    const records = b.ofType(T.record);
    for (const name of [DOMAIN, `upload.${DOMAIN}`]) {
      const mine = records.filter((r) => r.inputs.name === name);
      expect(mine.map((r) => r.inputs.records)).toEqual(fips.map((ip) => [ip]));
      for (const r of mine)
        expect(r.inputs).toMatchObject({
          zoneId: ZONE_ID,
          type: "A",
          ttl: 60,
          multivalueAnswerRoutingPolicy: true,
        });
      expect(new Set(mine.map((r) => r.inputs.setIdentifier)).size).toBe(fips.length);
      expect(mine.every((r) => typeof r.inputs.healthCheckId === "string")).toBe(true);
    }
    expect(b.ofType(T.distribution)).toEqual([]);
    expect(b.ofType(T.certificate)).toEqual([]);
  });

  test("each record's health check probes its own address: HTTPS /_health for the domain, TCP 22 for uploads", () => {
    const checks = new Map(b.ofType(T.healthCheck).map((h) => [h.id, h]));
    const checkOf = (r: Recorded) => checks.get(String(r.inputs.healthCheckId));
    for (const r of b.ofType(T.record).filter((x) => x.inputs.name === DOMAIN))
      expect(checkOf(r)?.inputs).toMatchObject({
        type: "HTTPS",
        ipAddress: (r.inputs.records as string[])[0],
        port: 443,
        resourcePath: "/_health",
        fqdn: DOMAIN,
        enableSni: true,
        requestInterval: 10,
        failureThreshold: 3,
      });
    for (const r of b.ofType(T.record).filter((x) => x.inputs.name === `upload.${DOMAIN}`))
      expect(checkOf(r)?.inputs).toMatchObject({
        type: "TCP",
        ipAddress: (r.inputs.records as string[])[0],
        port: 22,
      });
    // One check per address and probe.
    expect(checks.size).toBe(2 * b.outputs.floatingIps.length);
  });

  test("the dns output says what Route 53 answers and how it checks", () => {
    expect(b.dns).toMatchObject({ mode: "dns", byHand: false, zoneId: ZONE_ID });
    const out = b.dns;
    expect(out.records.map((r) => r.name)).toEqual([DOMAIN, `upload.${DOMAIN}`]);
    expect(out.records[0]?.healthCheck).toMatch(/^HTTPS GET https:\/\/pypi\.example\.org\/_health/);
  });
});

describe("cdn: CloudFront with a zone", () => {
  let b: EdgeBuilt;
  let dist: Recorded;
  beforeAll(async () => {
    b = await buildEdge({ "pypi-infra:dnsZone": "example.org", "pypi-infra:cdn": true });
    dist = b.ofType(T.distribution)[0] as Recorded;
  }, 120_000);

  test("one distribution for the domain, its origin the origin-only name over HTTPS with TLS 1.2", () => {
    expect(b.ofType(T.distribution)).toHaveLength(1);
    expect(dist.inputs.aliases).toEqual([DOMAIN]);
    expect(dist.inputs.origins).toEqual([
      expect.objectContaining({
        domainName: `origin.${DOMAIN}`,
        customOriginConfig: expect.objectContaining({
          originProtocolPolicy: "https-only",
          originSslProtocols: ["TLSv1.2"],
          httpsPort: 443,
        }),
      }),
    ]);
    expect(dist.inputs.viewerCertificate).toMatchObject({
      sslSupportMethod: "sni-only",
      minimumProtocolVersion: "TLSv1.2_2021",
    });
    expect(dist.inputs.loggingConfig).toMatchObject({ prefix: "cloudfront/" });
    expect(String((dist.inputs.loggingConfig as { bucket: string }).bucket)).toMatch(/cdn-logs/);
  });

  test("cache behaviours: packages immutable, index pages short and keyed on Accept, uploads and health uncached", () => {
    const policies = new Map(b.ofType(T.cachePolicy).map((p) => [p.id, p]));
    const origin = new Map(b.ofType(T.originRequestPolicy).map((p) => [p.id, p]));
    const behaviours = dist.inputs.orderedCacheBehaviors as Record<string, unknown>[];
    expect(behaviours.map((x) => x.pathPattern)).toEqual(CACHE_BEHAVIOURS.map((x) => x.pathPattern));
    const byPattern = (p: string) => behaviours.find((x) => x.pathPattern === p) as Record<string, unknown>;

    const packages = policies.get(String(byPattern("/packages/*").cachePolicyId))?.inputs;
    expect(packages).toMatchObject({ defaultTtl: 31_536_000, maxTtl: 31_536_000 });
    expect(packages?.parametersInCacheKeyAndForwardedToOrigin).toMatchObject({
      cookiesConfig: { cookieBehavior: "none" },
      headersConfig: { headerBehavior: "none" },
      queryStringsConfig: { queryStringBehavior: "none" },
    });

    for (const p of ["/simple/*", "/pypi/*/json"]) {
      const index = policies.get(String(byPattern(p).cachePolicyId))?.inputs;
      expect(index, p).toMatchObject({ defaultTtl: INDEX_TTL_SECONDS, minTtl: 0 });
      // PEP 691: the negotiated form must be part of the key, or one client's JSON reaches another's HTML.
      expect(index?.parametersInCacheKeyAndForwardedToOrigin).toMatchObject({
        headersConfig: { headerBehavior: "whitelist", headers: { items: ["Accept"] } },
        queryStringsConfig: { queryStringBehavior: "whitelist", queryStrings: { items: ["format"] } },
      });
      expect(byPattern(p).allowedMethods).toEqual(["GET", "HEAD"]);
    }
    // The default behaviour is the index class too.
    const def = dist.inputs.defaultCacheBehavior as Record<string, unknown>;
    expect(def.cachePolicyId).toBe(byPattern("/simple/*").cachePolicyId);

    const legacy = byPattern("/legacy/*");
    expect(legacy).toMatchObject({
      cachePolicyId: MANAGED_CACHING_DISABLED,
      originRequestPolicyId: MANAGED_ALL_VIEWER,
    });
    expect(legacy.allowedMethods).toContain("POST");
    expect(byPattern("/_health")).toMatchObject({ cachePolicyId: MANAGED_CACHING_DISABLED });
    // Every cached behaviour forwards Host: the origin's certificate names the domain.
    for (const x of [def, ...behaviours].filter((x) => x.cachePolicyId !== MANAGED_CACHING_DISABLED))
      expect(origin.get(String(x.originRequestPolicyId))?.inputs.headersConfig).toEqual({
        headerBehavior: "whitelist",
        headers: { items: ["Host"] },
      });
    for (const x of [def, ...behaviours]) expect(x.viewerProtocolPolicy).toBe("redirect-to-https");
  });

  test("the purge: app servers may CreateInvalidation on this distribution only; no other role, no other action", () => {
    const arn = String(dist.state.arn);
    expect(arn).toMatch(/^arn:aws:cloudfront::\d{12}:distribution\/E[0-9A-Z]+$/);
    const groups = roleGroups(b);
    expect(groups.length).toBeGreaterThan(2);
    const t = b.outputs.topology;
    const appNames = t.nodes.filter((n) => n.role === "app").map((n) => n.name);
    const cloudFront = (g: RoleGroup) =>
      g.statements.filter((s) =>
        s.Action.some((a) => covers(a, "cloudfront:CreateInvalidation") || /^cloudfront:/i.test(a)),
      );
    for (const g of groups) {
      const isApp = g.nodes.length > 0 && g.nodes.every((n) => appNames.includes(n));
      if (!isApp) {
        expect(cloudFront(g), g.nodes.join(",")).toEqual([]);
        continue;
      }
      expect(cloudFront(g), g.nodes.join(",")).toEqual([
        { Sid: "CdnPurge", Effect: "Allow", Action: ["cloudfront:CreateInvalidation"], Resource: [arn] },
      ]);
    }
    // Every app server's role has it: a purge is sent by whichever app server registered.
    const granted = groups.filter((g) => cloudFront(g).length > 0).flatMap((g) => g.nodes);
    expect(granted.sort()).toEqual([...appNames].sort());
  });

  test("the app servers' bundles name the distribution and run the purge job; no other node's do", () => {
    const t = b.outputs.topology;
    expect(t.cdnInvalidations).toBe(`cloudfront:${dist.id}`);
    const entries = bundleEntriesOf(t);
    for (const node of t.nodes) {
      const files = entries[node.name] ?? {};
      const units = Object.keys(files).filter((f) => f.includes("pypi-cdn-purge"));
      if (node.role !== "app") {
        expect(units, node.name).toEqual([]);
        continue;
      }
      expect(parseEnvFile(files["files/etc/pypi-index/env"] ?? "").PYPI_CDN_INVALIDATIONS).toBe(
        `cloudfront:${dist.id}`,
      );
      expect(units.sort()).toEqual([
        "files/etc/systemd/system/pypi-cdn-purge.path",
        "files/etc/systemd/system/pypi-cdn-purge.service",
        "files/etc/systemd/system/pypi-cdn-purge.timer",
      ]);
      expect(files["files/etc/systemd/system/pypi-cdn-purge.service"]).toContain("cdn-purge");
    }
  });

  test("the certificate is requested in us-east-1 and validated through the zone", () => {
    const [cert] = b.ofType(T.certificate);
    expect(cert?.inputs).toMatchObject({ domainName: DOMAIN, validationMethod: "DNS" });
    const provider = b.ofType(T.provider).find((p) => p.name === b.providers[cert?.name ?? ""]);
    expect(provider?.inputs.region).toBe("us-east-1");
    const validation = b.ofType(T.record).find((r) => String(r.inputs.name).includes("_"));
    expect(validation?.inputs).toMatchObject({ zoneId: "Z0MOCKZONE01", type: "CNAME" });
    expect(b.ofType(T.certificateValidation)).toHaveLength(1);
    expect(b.cdn).toMatchObject({ certificate: "dns-validated", distributionId: dist.id });
  });

  test("the domain is an alias of the distribution; the origin and upload names are health-checked A records", () => {
    const records = b.ofType(T.record);
    const aliases = records.filter((r) => r.inputs.name === DOMAIN);
    expect(aliases.map((r) => r.inputs.type).sort()).toEqual(["A", "AAAA"]);
    for (const a of aliases)
      expect(a.inputs.aliases).toEqual([
        { name: dist.state.domainName, zoneId: "Z2FDTNDATAQYW2", evaluateTargetHealth: false },
      ]);
    const fips = b.outputs.floatingIps.map((f) => f.address);
    for (const name of [`origin.${DOMAIN}`, `upload.${DOMAIN}`]) {
      const mine = records.filter((r) => r.inputs.name === name);
      expect(mine.map((r) => r.inputs.records)).toEqual(fips.map((ip) => [ip]));
      expect(mine.every((r) => r.inputs.multivalueAnswerRoutingPolicy === true)).toBe(true);
    }
  });
});

describe("cdn: CloudFront with an imported certificate and no zone", () => {
  let b: EdgeBuilt;
  beforeAll(async () => {
    b = await buildEdge({ "pypi-infra:cdn": true, "pypi-infra:cdnCertificateArn": CERT_ARN });
  }, 120_000);

  test("uses the given certificate, requests none, and outputs every record by hand", () => {
    expect(b.ofType(T.certificate)).toEqual([]);
    expect(b.ofType(T.record)).toEqual([]);
    expect(b.ofType(T.healthCheck)).toEqual([]);
    const [dist] = b.ofType(T.distribution);
    expect(dist?.inputs.viewerCertificate).toMatchObject({ acmCertificateArn: CERT_ARN });
    expect(b.cdn).toMatchObject({ certificate: "imported", certificateArn: CERT_ARN });
    expect(b.dns).toMatchObject({ mode: "cdn", byHand: true });
    const records = b.dns.records;
    expect(records.map((r) => [r.name, r.type])).toEqual([
      [DOMAIN, "ALIAS"],
      [`origin.${DOMAIN}`, "A"],
      [`upload.${DOMAIN}`, "A"],
    ]);
    expect(records[0]?.values).toEqual([dist?.state.domainName]);
  });
});

describe("the staging stack builds with DNS and a CDN too", () => {
  test("one distribution; its one floating IP behind the origin and upload names", async () => {
    const b = await buildEdge({ "pypi-infra:dnsZone": "example.org", "pypi-infra:cdn": true }, "staging");
    expect(b.ofType(T.distribution)).toHaveLength(1);
    const fips = b.outputs.floatingIps.map((f) => f.address);
    expect(fips).toHaveLength(1);
    const names = b.ofType(T.record).map((r) => `${r.inputs.name} ${r.inputs.type}`);
    for (const n of [
      `origin.staging.${DOMAIN} A`,
      `upload.staging.${DOMAIN} A`,
      `staging.${DOMAIN} A`,
      `staging.${DOMAIN} AAAA`,
    ])
      expect(names).toContain(n);
    expect(b.dns).toMatchObject({ mode: "cdn", byHand: false });
  }, 120_000);
});

describe("edge config errors name the key, the value and what is allowed", () => {
  const problems = (overrides: Record<string, unknown>): string[] => {
    try {
      parseConfig(rawConfig("prod", overrides), "prod");
    } catch (e) {
      if (e instanceof ConfigError) return [...e.problems];
      throw e;
    }
    return [];
  };

  test("a CDN needs a zone or a certificate", () => {
    expect(problems({ "pypi-infra:cdn": true })).toEqual([
      expect.stringMatching(
        /^pypi-infra:cdn: true needs pypi-infra:dnsZone .* or pypi-infra:cdnCertificateArn/,
      ),
    ]);
  });

  test("names must lie in a named zone, and differ", () => {
    expect(problems({ "pypi-infra:dnsZone": "example.com" })).toEqual([
      'pypi-infra:domain: "pypi.example.org" is not valid; expected a name in pypi-infra:dnsZone "example.com" (example.com or *.example.com)',
      'pypi-infra:uploadHostname: "upload.pypi.example.org" is not valid; expected a name in pypi-infra:dnsZone "example.com" (example.com or *.example.com)',
    ]);
    expect(problems({ "pypi-infra:uploadHostname": DOMAIN })).toEqual([
      `pypi-infra:uploadHostname: "${DOMAIN}" is not valid; expected a name of its own: pypi-infra:domain is "${DOMAIN}" already`,
    ]);
  });

  test("a malformed zone or certificate, or a certificate without a CDN", () => {
    expect(problems({ "pypi-infra:dnsZone": "z123" })[0]).toMatch(
      /^pypi-infra:dnsZone: "z123" is not valid; expected a Route 53/,
    );
    expect(
      problems({
        "pypi-infra:cdn": true,
        "pypi-infra:cdnCertificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/x",
      })[0],
    ).toMatch(/^pypi-infra:cdnCertificateArn: .* expected an ACM certificate ARN in us-east-1/);
    expect(problems({ "pypi-infra:cdnCertificateArn": CERT_ARN })).toEqual([
      "pypi-infra:cdnCertificateArn: is set but pypi-infra:cdn is false; set cdn: true or remove it",
    ]);
  });
});

describe("pure parts", () => {
  test("CloudFront's first matching behaviour decides a path's cache class", () => {
    expect(cacheClassOf("/packages/ab/cd/demo-1.0.tar.gz")).toBe("immutable");
    expect(cacheClassOf("/simple/demo/")).toBe("index");
    expect(cacheClassOf("/simple/")).toBe("index");
    expect(cacheClassOf("/pypi/demo/json")).toBe("index");
    expect(cacheClassOf("/legacy/")).toBe("uncached");
    expect(cacheClassOf("/_health")).toBe("uncached");
    expect(cacheClassOf("/")).toBe("index");
  });

  test("records per mode", () => {
    const edge = {
      uploadHostname: "u.example.org",
      cdn: { enabled: false, originHostname: "o.example.org" },
    };
    expect(edgeRecords("p.example.org", edge, ["192.0.2.1"]).map((r) => r.name)).toEqual([
      "p.example.org",
      "u.example.org",
    ]);
    expect(
      edgeRecords(
        "p.example.org",
        { ...edge, cdn: { ...edge.cdn, enabled: true } },
        ["192.0.2.1"],
        "d1.cloudfront.net",
      ),
    ).toEqual([
      expect.objectContaining({ name: "p.example.org", kind: "cdn-alias", targets: ["d1.cloudfront.net"] }),
      expect.objectContaining({ name: "o.example.org", kind: "multivalue-a", probe: "https" }),
      expect.objectContaining({ name: "u.example.org", kind: "multivalue-a", probe: "ssh" }),
    ]);
  });
});
