import { expect, test } from "vitest";
import { bundleEntriesOf, parametersByNode } from "../../src/plan.js";
import { NFS_SERVER_PORTS } from "../../src/render/nfs.js";
import { storagePair } from "../../src/topology.js";
import { type Built, isSecret, plain } from "./harness.js";
import { allowed, asList, roleGroups } from "./iam.js";

/** The bundle bucket (the stack has backup buckets too). */
export function bundleBucket(b: Built) {
  const bucket = b.ofType("aws:s3/bucket:Bucket").find((r) => r.name === "pypi-bundles-bucket");
  if (!bucket) throw new Error("no bundle bucket pypi-bundles-bucket");
  return bucket;
}

/** Balancers, databases, the storage pair, and the other app servers when there are any. */
const roleCount = (appServers: number): number => (appServers > 2 ? 4 : 3);

/** The designed security-group rules, written out independently of src/network.ts. */
export function designedRules(
  drbdPort: number,
  overlay: { dbWriter: string; storage: string },
  brokerCallers: readonly string[],
): string[] {
  const pair = (from: string, to: string, proto: string, port: number) => [
    `${from} egress ${proto}/${port} ${to}`,
    `${to} ingress ${proto}/${port} ${from}`,
  ];
  return [
    "balancer ingress tcp/80 0.0.0.0/0",
    "balancer ingress tcp/443 0.0.0.0/0",
    "balancer ingress tcp/22 0.0.0.0/0",
    ...pair("balancer", "balancer", "udp", 694),
    ...pair("balancer", "app", "tcp", 80),
    ...pair("balancer", "app", "tcp", 22),
    ...pair("app", "app", "udp", 694),
    ...pair("app", "app", "tcp", drbdPort),
    // App servers reach NFS and Postgres only at the overlay addresses: egress names the /32,
    // ingress matches the source group.
    ...[111, 2049, 20048].flatMap((p) => [
      `app egress tcp/${p} ${overlay.storage}/32`,
      `app ingress tcp/${p} app`,
    ]),
    `app egress tcp/5432 ${overlay.dbWriter}/32`,
    "db ingress tcp/5432 app",
    ...pair("db", "db", "tcp", 5432),
    ...["balancer", "app", "db"].flatMap((g) => [
      `${g} egress tcp/443 0.0.0.0/0`,
      `${g} egress tcp/80 0.0.0.0/0`,
      `endpoint ingress tcp/443 ${g}`,
    ]),
    // The Lambda endpoint: only the route brokers' callers, by address.
    ...brokerCallers.map((address) => `lambda ingress tcp/443 ${address}/32`),
  ].sort();
}

/** The db nodes and the storage pair (the first two app servers): the nodes that invoke a route broker. */
export function brokerCallers(b: Built): { writer: string[]; storage: string[] } {
  const t = b.outputs.topology;
  return {
    writer: t.nodes.filter((n) => n.role === "db").map((n) => n.name),
    storage: t.nodes
      .filter((n) => n.role === "app")
      .slice(0, 2)
      .map((n) => n.name),
  };
}

export function sharedStackTests(
  get: () => Built,
  shape: { floatingIps: number; appServers: number; nat: number },
) {
  const nodeCount = 4 + shape.appServers;

  test("resource counts and types", () => {
    const b = get();
    const count = (type: string) => b.ofType(type).length;
    expect(count("aws:ec2/instance:Instance")).toBe(nodeCount);
    expect(count("aws:ec2/networkInterface:NetworkInterface")).toBe(nodeCount);
    // Floating IPs, NAT gateways' and one egress address per balancer.
    expect(count("aws:ec2/eip:Eip")).toBe(shape.floatingIps + shape.nat + 2);
    expect(count("aws:ec2/natGateway:NatGateway")).toBe(shape.nat);
    expect(count("aws:ec2/eipAssociation:EipAssociation")).toBe(0);
    expect(count("aws:ebs/volume:Volume")).toBe(4);
    expect(count("aws:ec2/volumeAttachment:VolumeAttachment")).toBe(4);
    // The three node groups, the interface endpoints' and the Lambda endpoint's.
    expect(count("aws:ec2/securityGroup:SecurityGroup")).toBe(5);
    // S3 (gateway) and ssm, ssmmessages, ec2messages, ec2, sts, monitoring, lambda (interface).
    expect(count("aws:ec2/vpcEndpoint:VpcEndpoint")).toBe(8);
    expect(count("aws:ec2/subnet:Subnet")).toBe(6);
    expect(count("aws:ssm/parameter:Parameter")).toBe(8);
    expect(count("random:index/randomPassword:RandomPassword")).toBe(5);
    // The node roles and the two route brokers' execution roles.
    expect(count("aws:iam/role:Role")).toBe(roleCount(shape.appServers) + 2);
    expect(count("aws:lambda/function:Function")).toBe(2);
    expect(count("aws:cloudwatch/logGroup:LogGroup")).toBe(2);
    expect(count("command:local:Command")).toBe(nodeCount + 1);
    const files = Object.values(b.pypi.plannedFiles).flat().length;
    expect(count("aws:s3/bucketObjectv2:BucketObjectv2")).toBe(files);
    // 2 default routes + one writer and one storage route per private route table.
    expect(count("aws:ec2/route:Route")).toBe(2 + 2 + 2 + 1);
    for (const type of [
      "Stack",
      "Network",
      "BalancerPair",
      "AppServers",
      "PostgresPair",
      "DrbdVolume",
      "UploadProxy",
      "StackSecrets",
      "BundleBucket",
      "ConfigRollout",
      "HealthAlarms",
    ])
      expect(count(`pypi:infra:${type}`), type).toBe(1);
    expect(count("pypi:infra:RouteBroker")).toBe(2);
    // Children are named by role, never by a bare index.
    for (const r of b.resources)
      expect(r.name, r.type).toMatch(/^pypi(-[a-z][a-z0-9]*|-fip-[0-9]+)*(-[a-z].*)?$/);
  });

  test("pairs sit in two AZs and app servers alternate", () => {
    const { nodes } = get().outputs;
    const [az0, az1] = get().config.availabilityZones;
    expect(nodes["lb-a"]?.az).toBe(az0);
    expect(nodes["lb-b"]?.az).toBe(az1);
    expect(nodes["db-a"]?.az).toBe(az0);
    expect(nodes["db-b"]?.az).toBe(az1);
    const apps = Object.entries(nodes).filter(([, n]) => n.role === "app");
    expect(apps).toHaveLength(shape.appServers);
    apps.forEach(([, n], i) => {
      expect(n.az).toBe(i % 2 === 0 ? az0 : az1);
    });
    const instances = get().ofType("aws:ec2/instance:Instance");
    const enis = get().ofType("aws:ec2/networkInterface:NetworkInterface");
    const subnets = get().ofType("aws:ec2/subnet:Subnet");
    for (const instance of instances) {
      const eni = enis.find(
        (e) =>
          e.id ===
          (instance.inputs.primaryNetworkInterface as { networkInterfaceId: string }).networkInterfaceId,
      );
      const subnet = subnets.find((s) => s.id === eni?.inputs.subnetId);
      expect(subnet?.inputs.availabilityZone).toBe(
        nodes[String((instance.inputs.tags as Record<string, string>).Name)]?.az,
      );
    }
  });

  test("every instance: IMDSv2 only, encrypted volumes, no public address of its own", () => {
    const b = get();
    for (const i of b.ofType("aws:ec2/instance:Instance")) {
      expect(i.inputs.metadataOptions).toMatchObject({ httpTokens: "required", httpPutResponseHopLimit: 1 });
      expect(i.inputs.rootBlockDevice).toMatchObject({ encrypted: true });
      expect(i.inputs.userDataReplaceOnChange).toBe(false);
      expect(i.inputs.associatePublicIpAddress).not.toBe(true);
      expect(i.inputs.ami).toBe("ami-0debian12mock0001");
      expect(String(i.inputs.userData)).toMatch(/^#cloud-config\n/);
    }
    for (const v of b.ofType("aws:ebs/volume:Volume")) expect(v.inputs.encrypted).toBe(true);
    for (const s of b.ofType("aws:ec2/subnet:Subnet")) expect(s.inputs.mapPublicIpOnLaunch).toBe(false);
  });

  test("interfaces: fixed addresses, spares on balancers, source/dest check off where overlays land", () => {
    const b = get();
    const t = b.outputs.topology;
    const enis = b.ofType("aws:ec2/networkInterface:NetworkInterface");
    const storagePair = t.nodes
      .filter((n) => n.role === "app")
      .slice(0, 2)
      .map((n) => n.name);
    for (const node of t.nodes) {
      const eni = enis.find((e) => (e.inputs.tags as Record<string, string>).Name === node.name);
      expect(eni?.inputs.privateIpLists).toEqual([node.privateIp, ...node.secondaryIps]);
      const overlayHolder = node.role === "db" || storagePair.includes(node.name);
      expect(eni?.inputs.sourceDestCheck, node.name).toBe(!overlayHolder);
      if (node.role === "balancer") expect(node.secondaryIps).toHaveLength(shape.floatingIps);
    }
  });

  test("security-group rules are exactly the designed set, by group reference", () => {
    const b = get();
    const groupOf = new Map(
      b.ofType("aws:ec2/securityGroup:SecurityGroup").map((g) => [g.id, g.name.split("-").pop()]),
    );
    const rules = [
      ...b
        .ofType("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        .map((r) => ({ r, dir: "ingress" })),
      ...b
        .ofType("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
        .map((r) => ({ r, dir: "egress" })),
    ];
    const actual = rules
      .map(({ r, dir }) => {
        expect(r.inputs.cidrIpv6).toBeUndefined();
        expect(r.inputs.fromPort).toBe(r.inputs.toPort);
        const peer = r.inputs.cidrIpv4 ?? groupOf.get(String(r.inputs.referencedSecurityGroupId));
        return `${groupOf.get(String(r.inputs.securityGroupId))} ${dir} ${r.inputs.ipProtocol}/${r.inputs.fromPort} ${peer}`;
      })
      .sort();
    const t = b.outputs.topology;
    const callers = Object.values(brokerCallers(b))
      .flat()
      .map((n) => t.nodes.find((x) => x.name === n)?.privateIp ?? "?");
    expect(callers).toHaveLength(4);
    expect(actual).toEqual(designedRules(t.storage.drbdPort, t.overlay, callers));
    expect(NFS_SERVER_PORTS).toEqual([111, 2049, 20048]);
    const openIngress = actual.filter((a) => a.includes("ingress") && a.endsWith("0.0.0.0/0"));
    expect(openIngress.sort()).toEqual(
      [
        "balancer ingress tcp/22 0.0.0.0/0",
        "balancer ingress tcp/443 0.0.0.0/0",
        "balancer ingress tcp/80 0.0.0.0/0",
      ].sort(),
    );
    expect(
      actual
        .filter((a) => / ingress tcp\/22 /.test(a) && !a.startsWith("balancer "))
        .every((a) => a.endsWith(" balancer")),
    ).toBe(true);
    for (const g of b.ofType("aws:ec2/securityGroup:SecurityGroup")) {
      expect(g.inputs.ingress ?? []).toEqual([]);
      expect(g.inputs.egress ?? []).toEqual([]);
    }
  });

  test("overlay routes: every private route table, to the current holder's interface", () => {
    const b = get();
    const t = b.outputs.topology;
    const routes = b.ofType("aws:ec2/route:Route");
    const enis = b.ofType("aws:ec2/networkInterface:NetworkInterface");
    const eniOf = (node: string) =>
      enis.find((e) => (e.inputs.tags as Record<string, string>).Name === node)?.id;
    for (const [address, holder] of [
      [t.overlay.dbWriter, "db-a"],
      [t.overlay.storage, "app-a"],
    ] as const) {
      const r = routes.filter((x) => x.inputs.destinationCidrBlock === `${address}/32`);
      expect(r.map((x) => x.inputs.routeTableId).sort()).toEqual([...t.overlay.routeTableIds].sort());
      for (const x of r) expect(x.inputs.networkInterfaceId).toBe(eniOf(holder));
    }
    expect(t.overlay.routeTableIds).toHaveLength(2);
  });

  test("IAM: scoped to these allocations, route brokers, bundle prefixes and parameters", () => {
    const b = get();
    const t = b.outputs.topology;
    const bucketArn = String(bundleBucket(b).state.arn);
    const arnOf = (name: string) =>
      String(b.ofType("aws:s3/bucket:Bucket").find((x) => x.name === name)?.state.arn);
    // The one object each role reads beyond its bundles (tests/stack/backups.test.ts checks the rest).
    const backupReads: Record<string, string[]> = {
      balancer: [],
      app: [`${arnOf("pypi-backups-files")}/packages/*`],
      db: [`${arnOf("pypi-backups-repository")}/pgbackrest/*`],
    };
    const enis = b.ofType("aws:ec2/networkInterface:NetworkInterface");
    const params = new Map(
      b.ofType("aws:ssm/parameter:Parameter").map((p) => [String(p.inputs.name), String(p.state.arn)]),
    );
    expect(
      b.ofType("aws:iam/rolePolicyAttachment:RolePolicyAttachment").map((a) => a.inputs.policyArn),
    ).toEqual(
      Array(roleCount(shape.appServers)).fill("arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"),
    );
    const all = roleGroups(b);
    const groups = all.filter((g) => g.nodes.length > 0);
    expect(groups).toHaveLength(roleCount(shape.appServers));
    // The only roles no node runs under: the route brokers' (checked in "route brokers" below).
    expect(
      all
        .filter((g) => g.nodes.length === 0)
        .flatMap((g) => g.policies.map((p) => p.name))
        .sort(),
    ).toEqual(["pypi-route-storage-policy", "pypi-route-writer-policy"]);
    // Every node runs under exactly one role, and a role never spans node roles.
    expect(groups.flatMap((g) => g.nodes).sort()).toEqual(t.nodes.map((n) => n.name).sort());
    const roleOf = (name: string) => t.nodes.find((n) => n.name === name)?.role;
    const fetches = parametersByNode(t);
    const storage = storagePair(t).map((n) => n.name);
    for (const { statements, nodes } of groups) {
      const roles = [...new Set(nodes.map(roleOf))];
      expect(roles).toHaveLength(1);
      const role = roles[0];
      for (const s of statements) {
        if (asList(s.Resource).includes("*")) {
          // Describe calls, and PutMetricData, whose only scope is its namespace condition.
          const metrics = s.Action.includes("cloudwatch:PutMetricData");
          expect(
            s.Action.every((a) => /^ec2:Describe/.test(a)) || (metrics && s.Action.length === 1),
            s.Sid,
          ).toBe(true);
          if (metrics)
            expect(s.Condition).toEqual({
              StringEquals: { "cloudwatch:namespace": t.health.namespace },
            });
          expect(s.Effect).toBe("Allow");
        }
      }
      const may = (action: string) => allowed(statements, action);
      expect(may("s3:GetObject").sort()).toEqual(
        [...nodes.map((n) => `${bucketArn}/bundles/${n}/*`), ...(backupReads[role ?? ""] ?? ["?"])].sort(),
      );
      // Exactly what these nodes' bundles fetch.
      expect(may("ssm:GetParameter").sort()).toEqual(
        [...new Set(nodes.flatMap((n) => fetches[n] ?? []))].map((p) => params.get(p)).sort(),
      );
      const deny = statements.find((s) => s.Effect === "Deny");
      expect(deny?.Action).toContain("ssm:GetParameters");
      expect(deny?.NotResource?.sort()).toEqual(may("ssm:GetParameter").sort());
      const list = statements.find((s) => s.Action.includes("s3:ListBucket"));
      expect(list?.Resource).toBe(bucketArn);
      expect(
        list?.Condition?.StringLike?.["s3:prefix"]?.every((p) =>
          nodes.some((n) => p.startsWith(`bundles/${n}/`)),
        ),
      ).toBe(true);
      if (role === "balancer") {
        const fipArns = t.floatingIps.map(
          (f) => `arn:aws:ec2:us-east-1:123456789012:elastic-ip/${f.allocationId}`,
        );
        const eniArns = enis
          .filter((e) => String((e.inputs.tags as Record<string, string>).Name).startsWith("lb-"))
          .map((e) => `arn:aws:ec2:us-east-1:123456789012:network-interface/${e.id}`);
        expect(may("ec2:AssociateAddress").sort()).toEqual([...fipArns, ...eniArns].sort());
        expect(may("ec2:DisassociateAddress").sort()).toEqual([...fipArns, ...eniArns].sort());
      } else {
        expect(may("ec2:AssociateAddress")).toEqual([]);
      }
      // No node replaces a route: the overlay holders invoke their own address's broker.
      expect(may("ec2:ReplaceRoute"), nodes.join(",")).toEqual([]);
      const broker =
        role === "db" ? "writer" : role === "app" && nodes.every((n) => storage.includes(n)) ? "storage" : "";
      expect(may("lambda:InvokeFunction"), nodes.join(",")).toEqual(
        broker
          ? [`arn:aws:lambda:us-east-1:123456789012:function:pypi-${b.config.environment}-route-${broker}`]
          : [],
      );
      expect(may("ec2:DescribeRouteTables"), nodes.join(",")).toEqual(broker ? ["*"] : []);
    }
  });

  test("route brokers: one function per overlay address, its /32 in the private tables, to its holders only", () => {
    const b = get();
    const t = b.outputs.topology;
    const env = b.config.environment;
    expect(t.overlay.routeBrokers).toEqual({
      writer: `pypi-${env}-route-writer`,
      storage: `pypi-${env}-route-storage`,
    });
    const enis = b.ofType("aws:ec2/networkInterface:NetworkInterface");
    const eniOf = (node: string) =>
      enis.find((e) => (e.inputs.tags as Record<string, string>).Name === node)?.id ?? `?${node}`;
    const privateTables = b
      .ofType("aws:ec2/routeTable:RouteTable")
      .filter((r) => r.name.includes("-private-"))
      .map((r) => r.id);
    expect([...t.overlay.routeTableIds].sort()).toEqual(privateTables.sort());
    const tableArns = privateTables.map((id) => `arn:aws:ec2:us-east-1:123456789012:route-table/${id}`);
    const callers = brokerCallers(b);
    expect(callers).toEqual({ writer: ["db-a", "db-b"], storage: ["app-a", "app-b"] });
    const functions = b.ofType("aws:lambda/function:Function");
    expect(functions.map((f) => f.inputs.name).sort()).toEqual(
      [`pypi-${env}-route-storage`, `pypi-${env}-route-writer`].sort(),
    );
    const routes = b.ofType("aws:ec2/route:Route");
    for (const [key, address] of [
      ["writer", t.overlay.dbWriter],
      ["storage", t.overlay.storage],
    ] as const) {
      const name = `pypi-${env}-route-${key}`;
      const fn = functions.find((f) => f.inputs.name === name);
      expect(fn?.inputs, name).toMatchObject({
        runtime: "nodejs22.x",
        handler: "index.handler",
        timeout: 20,
        memorySize: 128,
        architectures: ["arm64"],
        loggingConfig: { logFormat: "Text", logGroup: `/aws/lambda/${name}` },
      });
      expect((fn?.inputs.environment as { variables?: unknown } | undefined)?.variables, name).toEqual({
        PYPI_BROKER_DESTINATION: `${address}/32`,
        PYPI_BROKER_ROUTE_TABLES: t.overlay.routeTableIds.join(" "),
        PYPI_BROKER_ALLOWED_ENIS: callers[key].map(eniOf).join(" "),
      });
      // Pulumi still creates the route, to the home holder, and leaves its target to the broker.
      const own = routes.filter((r) => r.inputs.destinationCidrBlock === `${address}/32`);
      expect(own.map((r) => r.inputs.networkInterfaceId)).toEqual(
        privateTables.map(() => eniOf(callers[key][0] ?? "")),
      );
      const logs = b
        .ofType("aws:cloudwatch/logGroup:LogGroup")
        .find((g) => g.inputs.name === `/aws/lambda/${name}`);
      expect(logs?.inputs.retentionInDays, name).toBe(90);
      // Its role: only Lambda may assume it; it replaces routes in the private tables only.
      const role = b.ofType("aws:iam/role:Role").find((r) => r.state.arn === fn?.inputs.role);
      expect(JSON.parse(String(role?.inputs.assumeRolePolicy)).Statement, name).toEqual([
        { Effect: "Allow", Principal: { Service: "lambda.amazonaws.com" }, Action: "sts:AssumeRole" },
      ]);
      const statements = roleGroups(b)
        .filter((g) => g.policies.some((p) => p.inputs.role === role?.state.name))
        .flatMap((g) => g.statements);
      expect(allowed(statements, "ec2:ReplaceRoute").sort(), name).toEqual([...tableArns].sort());
      expect(allowed(statements, "ec2:DescribeRouteTables"), name).toEqual(["*"]);
      const logArn = `arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/${name}:*`;
      expect(allowed(statements, "logs:CreateLogStream"), name).toEqual([logArn]);
      expect(allowed(statements, "logs:PutLogEvents"), name).toEqual([logArn]);
      expect(statements.flatMap((s) => s.Action).sort(), name).toEqual(
        ["ec2:DescribeRouteTables", "ec2:ReplaceRoute", "logs:CreateLogStream", "logs:PutLogEvents"].sort(),
      );
    }
  });

  test("secrets: SSM SecureString under the topology's names; no value in user data, bundles or outputs", () => {
    const b = get();
    const t = b.outputs.topology;
    const params = b.ofType("aws:ssm/parameter:Parameter");
    expect(params.map((p) => p.inputs.name).sort()).toEqual(
      Object.values(t.secrets)
        .map((s) => s.parameter)
        .sort(),
    );
    for (const p of params) {
      expect(p.inputs.type).toBe("SecureString");
      expect(isSecret(p.inputs.value), String(p.inputs.name)).toBe(true);
    }
    for (const pw of b.ofType("random:index/randomPassword:RandomPassword"))
      expect(pw.inputs.special).toBe(false);
    expect(b.secrets.length).toBeGreaterThan(5);
    const storedValues = params.map((p) => plain(p.inputs.value));
    for (const pw of b.ofType("random:index/randomPassword:RandomPassword"))
      expect(storedValues).toContain(pw.state.result);
    const visible = [
      ...b.ofType("aws:ec2/instance:Instance").map((i) => JSON.stringify(i.inputs)),
      ...b.ofType("aws:s3/bucketObjectv2:BucketObjectv2").map((o) => JSON.stringify(o.inputs)),
      ...b.ofType("aws:iam/rolePolicy:RolePolicy").map((o) => JSON.stringify(o.inputs)),
      ...b.ofType("command:local:Command").map((c) => JSON.stringify(c.inputs)),
      JSON.stringify(b.outputs),
    ].join("\n");
    for (const secret of b.secrets)
      expect(visible.includes(secret), `secret leaked: ${secret.slice(0, 12)}`).toBe(false);
  });

  test("bundles: objects under bundles/<node>/ match the resolved bundles; file list independent of ids", () => {
    const b = get();
    const entries = bundleEntriesOf(b.outputs.topology);
    const planned = b.pypi.plannedFiles;
    expect(Object.keys(planned).sort()).toEqual(Object.keys(entries).sort());
    for (const [node, files] of Object.entries(entries))
      expect([...(planned[node] ?? [])].sort()).toEqual(Object.keys(files).sort());
    const bucket = bundleBucket(b);
    const ofBucket = (type: string) => b.ofType(type).filter((r) => r.inputs.bucket === bucket.id);
    for (const o of b.ofType("aws:s3/bucketObjectv2:BucketObjectv2")) {
      expect(o.inputs.bucket).toBe(bucket.id);
      const [, node, ...rest] = String(o.inputs.key).split("/");
      expect(o.inputs.content).toBe(entries[node!]?.[rest.join("/")]);
    }
    // The agent's node.env carries the resolved ids.
    const env = entries["lb-a"]?.["files/etc/pypi-node/node.env"] ?? "";
    for (const f of b.outputs.topology.floatingIps) expect(env).toContain(`${f.address}=${f.allocationId}=`);
    expect(ofBucket("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")[0]?.inputs).toMatchObject({
      blockPublicAcls: true,
      blockPublicPolicy: true,
      ignorePublicAcls: true,
      restrictPublicBuckets: true,
    });
    expect(ofBucket("aws:s3/bucketOwnershipControls:BucketOwnershipControls")[0]?.inputs.rule).toEqual({
      objectOwnership: "BucketOwnerEnforced",
    });
    expect(ofBucket("aws:s3/bucketVersioning:BucketVersioning")[0]?.inputs.versioningConfiguration).toEqual({
      status: "Enabled",
    });
    expect(
      JSON.stringify(
        ofBucket("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")[0]
          ?.inputs,
      ),
    ).toContain("AES256");
    for (const i of b.ofType("aws:ec2/instance:Instance"))
      expect(String(i.inputs.userData)).toContain(`s3://${bucket.id}/bundles/`);
  });

  test("rollout: one command per node, chained within each pair, smoke check after the last", () => {
    const b = get();
    const steps = b.pypi.rollout.steps;
    expect(steps.find((s) => s.node === "lb-b")?.after).toBe("lb-a");
    expect(steps.find((s) => s.node === "db-b")?.after).toBe("db-a");
    expect(steps.find((s) => s.node === "app-b")?.after).toBe("app-a");
    expect(steps.filter((s) => s.after === undefined).map((s) => s.node)).toEqual(["lb-a", "app-a", "db-a"]);
    const commands = b.ofType("command:local:Command");
    const instances = b.ofType("aws:ec2/instance:Instance");
    for (const node of b.outputs.topology.nodes) {
      const c = commands.find((x) => x.name === `pypi-rollout-${node.name}`);
      const env = c?.inputs.environment as Record<string, string>;
      expect(env.PYPI_INSTANCE_ID).toBe(
        instances.find((i) => (i.inputs.tags as Record<string, string>).Name === node.name)?.id,
      );
      expect(c?.inputs.triggers).toEqual([b.outputs.digests[node.name]]);
      expect(String(c?.inputs.create)).toContain("AWS-RunShellScript");
    }
    const smoke = commands.find((x) => x.name === "pypi-smoke");
    const env = smoke?.inputs.environment as Record<string, string>;
    expect(env.PYPI_FLOATING_IPS?.split(" ")).toEqual(b.outputs.floatingIps.map((f) => f.address));
    expect(String(smoke?.inputs.create)).toContain('--resolve "$PYPI_DOMAIN:443:$ip"');
  });

  test("outputs: floating IPs with homes, nodes, runbooks with real ids and addresses", () => {
    const b = get();
    const { floatingIps, nodes, runbooks, runbookData } = b.outputs;
    const eips = b.ofType("aws:ec2/eip:Eip").filter((e) => e.name.includes("-fip-"));
    expect(floatingIps.map((f) => f.allocationId).sort()).toEqual(eips.map((e) => e.id).sort());
    floatingIps.forEach((f, i) => {
      expect(f.home).toBe(i % 2 === 0 ? "lb-a" : "lb-b");
    });
    for (const [name, n] of Object.entries(nodes)) {
      expect(n.instanceId).toMatch(/^i-[0-9a-f]{17}$/);
      expect(runbooks[`rebuild-${name}`]).toContain(n.instanceId);
      expect(runbooks[`rebuild-${name}`]).toContain("urn:pulumi:");
    }
    const balancerLoss = runbooks["balancer-loss-lb-a"] ?? "";
    for (const f of floatingIps) expect(balancerLoss).toContain(f.address);
    expect(balancerLoss).toContain(nodes["lb-b"]!.instanceId);
    expect(runbookData.map((r) => r.id).sort()).toEqual(Object.keys(runbooks).sort());
    expect(b.pypi.endpoints).toEqual({
      https: `https://${b.config.domain}/`,
      upload: `${b.config.edge.uploadHostname}:22`,
    });
  });
}
