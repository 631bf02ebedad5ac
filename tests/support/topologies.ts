import { pgBinDir, type Topology } from "../../src/topology.js";

const TEST_KEY_A =
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOSo4zAbY5A+HZv+4ykxh0PPHxpDXhjQIErpyHgcDoc2 alice@example.org";
const TEST_KEY_B =
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDyuNTHgWmMtuSXjL2pS2qfGKG0IsZnXPQap8ez2xamf bob@example.org";

export type Shape = "staging" | "prod";

/** A deployment shaped like the staging or prod stack, with mock-like AWS ids. */
export function topologyFor(shape: Shape, pgVersion = 15): Topology {
  const prod = shape === "prod";
  const fips = prod ? ["198.51.100.10", "198.51.100.11"] : ["198.51.100.20"];
  const apps = prod ? ["app-a", "app-b", "app-c"] : ["app-a", "app-b"];
  const azs = ["us-east-1a", "us-east-1b"];
  return {
    environment: shape,
    backend: "aws",
    region: "us-east-1",
    vpcCidr: "10.40.0.0/16",
    domain: prod ? "pypi.example.org" : "staging.pypi.example.org",
    nodes: [
      {
        name: "lb-a",
        role: "balancer",
        az: azs[0]!,
        privateIp: "10.40.0.10",
        secondaryIps: fips.map((_, i) => `10.40.0.${20 + i}`),
        interface: "ens5",
      },
      {
        name: "lb-b",
        role: "balancer",
        az: azs[1]!,
        privateIp: "10.40.1.10",
        secondaryIps: fips.map((_, i) => `10.40.1.${20 + i}`),
        interface: "ens5",
      },
      ...apps.map((name, i) => ({
        name,
        role: "app" as const,
        az: azs[i % 2]!,
        privateIp: `10.40.${10 + (i % 2)}.${10 + i}`,
        secondaryIps: [],
        interface: "ens5",
      })),
      {
        name: "db-a",
        role: "db",
        az: azs[0]!,
        privateIp: "10.40.20.10",
        secondaryIps: [],
        interface: "ens5",
      },
      {
        name: "db-b",
        role: "db",
        az: azs[1]!,
        privateIp: "10.40.21.10",
        secondaryIps: [],
        interface: "ens5",
      },
    ],
    floatingIps: fips.map((address, i) => ({
      address,
      allocationId: `eipalloc-0f${i}c0ffee${i}`,
      home: i % 2 === 0 ? "lb-a" : "lb-b",
    })),
    overlay: { dbWriter: "100.64.10.5", storage: "100.64.10.6", routeTableIds: ["rtb-0a1", "rtb-0b2"] },
    postgres: {
      version: pgVersion,
      synchronous: prod,
      port: 5432,
      database: "pypi",
      appUser: "pypi_app",
      replicationUser: "replicator",
      slotName: "standby_slot",
      walKeepMb: 1024,
      maxSlotWalKeepMb: 8192,
      binDir: pgBinDir(pgVersion),
    },
    heartbeat: {
      udpPort: 694,
      keepaliveMs: 500,
      warntimeMs: 1000,
      deadtimeMs: 1500,
      initdeadMs: 10000,
      autoFailback: true,
    },
    upload: {
      port: 22,
      backendPort: 22,
      users: prod
        ? [
            { name: "alice", uid: 2001, publicKey: TEST_KEY_A },
            { name: "bob", uid: 2002, publicKey: TEST_KEY_B },
          ]
        : [{ name: "alice", uid: 2001, publicKey: TEST_KEY_A }],
      maxFileBytes: 100 * 1024 * 1024,
    },
    app: { runtime: "fcgid", httpPort: 80, maxProcesses: prod ? 16 : 4, requestTimeoutSeconds: 30 },
    storage: {
      device: "/dev/nvme1n1",
      drbdPort: 7788,
      drbdMinor: 0,
      volumeMount: "/srv/pypi-volume",
      packageRoot: "/srv/pypi",
    },
    tls: { certificatePath: "/etc/pypi/tls/fullchain.pem", keyPath: "/etc/pypi/tls/privkey.pem" },
    secrets: {
      balancerAuthkey: { parameter: `/pypi/${shape}/heartbeat/balancer-authkey` },
      storageAuthkey: { parameter: `/pypi/${shape}/heartbeat/storage-authkey` },
      postgresReplicationPassword: { parameter: `/pypi/${shape}/postgres/replication-password` },
      postgresAppPassword: { parameter: `/pypi/${shape}/postgres/app-password` },
      tlsKey: { parameter: `/pypi/${shape}/tls/key` },
      tlsCertificate: { parameter: `/pypi/${shape}/tls/certificate` },
      uploadHostKey: { parameter: `/pypi/${shape}/upload/host-key` },
      drbdSecret: { parameter: `/pypi/${shape}/drbd/secret` },
    },
    bundleLocation: `s3://pypi-${shape}-bundles-0abc/bundles`,
  };
}

/** The same deployment driven by the agent's lab backend (no AWS, no systemd). */
export function asLab(t: Topology, bundleLocation = "/var/lib/pypi-lab"): Topology {
  return {
    ...t,
    backend: "lab",
    bundleLocation,
    nodes: t.nodes.map((n) => ({ ...n, interface: "eth0" })),
  };
}

/** Replace the app runtime (fcgid, wsgi, gunicorn). */
export const withRuntime = (t: Topology, runtime: Topology["app"]["runtime"]): Topology => ({
  ...t,
  app: { ...t.app, runtime },
});
