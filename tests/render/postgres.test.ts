import { describe, expect, it } from "vitest";
import { PG_DATA_MOUNT } from "../../src/layout.js";
import {
  conninfoQuote,
  hbaField,
  maxConnections,
  PGPASS_PATH,
  pgConfQuote,
  pgpassLine,
  primaryConninfo,
  renderPgHba,
  renderPostgresConf,
  renderPostgresFiles,
  renderRecoveryConf,
  renderStandbyFiles,
} from "../../src/render/postgres.js";
import { PG_MAJORS, parseTopology } from "../../src/schema.js";
import { nodeByName, pgDialect, type Topology } from "../../src/topology.js";
import { asLab, type Shape, topologyFor } from "../support/topologies.js";

const shapes: Shape[] = ["staging", "prod"];
const lines = (text: string): string[] => text.split("\n");
/** Non-comment, non-blank lines with runs of spaces collapsed. */
const rules = (text: string): string[] =>
  lines(text)
    .filter((l) => l.trim() !== "" && !l.startsWith("#"))
    .map((l) => l.replace(/\s+/g, " "));
const db = (t: Topology, name: "db-a" | "db-b") => nodeByName(t, name);
/** A topology the schema accepts: AWS runs 15 only, the lab also runs 11. */
const valid = (shape: Shape, v: number): Topology =>
  parseTopology(v === 15 ? topologyFor(shape, v) : asLab(topologyFor(shape, v)));

describe("version support (the schema's PG_MAJORS)", () => {
  it("accepts 15 everywhere and 11 in the lab only", () => {
    expect([...PG_MAJORS]).toEqual([11, 15]);
    for (const v of PG_MAJORS) expect(() => valid("staging", v)).not.toThrow();
    expect(() => parseTopology(topologyFor("staging", 11))).toThrow("postgres.version: 11 is not valid");
  });

  it("rejects any other major, naming the field", () => {
    for (const v of [9.6, 12, 17, 18])
      expect(() => parseTopology(asLab(topologyFor("staging", v)))).toThrow(
        `postgres.version: ${v} is not valid`,
      );
  });
});

describe("dialects", () => {
  it("takes the dialect from pgDialect: recovery.conf for 11, standby.signal for 15", () => {
    expect(PG_MAJORS.map(pgDialect)).toEqual(["recovery.conf", "standby.signal"]);
  });

  it.each([...PG_MAJORS])("renders the standby marker of postgres %s", (v) => {
    const t = valid("staging", v);
    const standby = renderPostgresFiles(t, db(t, "db-b"), "standby").map((f) => f.path);
    const primary = renderPostgresFiles(t, db(t, "db-a"), "primary").map((f) => f.path);
    const common = [
      `/etc/postgresql/${v}/main/postgresql.conf`,
      `/etc/postgresql/${v}/main/pg_hba.conf`,
      `/etc/postgresql/${v}/main/pg_ident.conf`,
      `/etc/postgresql/${v}/main/start.conf`,
    ];
    expect(primary).toEqual(common);
    const marker = v < 12 ? "recovery.conf" : "standby.signal";
    expect(standby).toEqual([...common, `/var/lib/postgresql/${v}/main/${marker}`]);
  });

  it("keeps Debian from starting the cluster at boot: only the agent starts it", () => {
    const t = topologyFor("staging");
    const start = renderPostgresFiles(t, db(t, "db-a"), "primary").find((f) =>
      f.path.endsWith("/start.conf"),
    );
    expect(start?.content).toBe("manual\n");
  });

  it("puts the standby settings in recovery.conf before 12", () => {
    const t = valid("staging", 11);
    const conf = renderPostgresConf(t, db(t, "db-b"));
    expect(conf).not.toMatch(/primary_conninfo|primary_slot_name|standby_mode/);
    expect(lines(renderRecoveryConf(t, db(t, "db-b")))).toEqual([
      expect.stringMatching(/^# /),
      "standby_mode = on",
      "primary_conninfo = 'host=10.40.20.10 port=5432 user=replicator passfile=/etc/pypi-node/postgres/pgpass application_name=db-b connect_timeout=5'",
      "primary_slot_name = 'standby_slot'",
      `restore_command = 'pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza=pypi archive-get %f "%p"'`,
      "recovery_target_timeline = 'latest'",
      "",
    ]);
    const modern = valid("staging", 15);
    expect(() => renderRecoveryConf(modern, db(modern, "db-b"))).toThrow(/not used by postgres 15/);
  });

  it("puts the standby settings in postgresql.conf from 12, with an empty standby.signal", () => {
    const t = valid("staging", 15);
    const conf = lines(renderPostgresConf(t, db(t, "db-a")));
    expect(conf).toContain(
      "primary_conninfo = 'host=10.40.21.10 port=5432 user=replicator passfile=/etc/pypi-node/postgres/pgpass application_name=db-a connect_timeout=5'",
    );
    expect(conf).toContain("primary_slot_name = 'standby_slot'");
    expect(conf.join("\n")).not.toMatch(/standby_mode|recovery_target_timeline|trigger_file/);
    const [signal] = renderStandbyFiles(t, db(t, "db-b"));
    expect(signal).toMatchObject({
      path: "/var/lib/postgresql/15/main/standby.signal",
      content: "",
      mode: "0600",
    });
  });

  it("names its passfile, which lies outside the data volume's mount (the postgres user's home)", () => {
    const t = topologyFor("staging", 11);
    expect(primaryConninfo(t, db(t, "db-b"))).toContain(`passfile=${PGPASS_PATH} `);
    expect(PGPASS_PATH.startsWith(`${PG_DATA_MOUNT}/`)).toBe(false);
  });
});

describe("postgresql.conf", () => {
  it.each(shapes)("uses Debian paths and replication settings (%s)", (shape) => {
    const t = topologyFor(shape, 15);
    const conf = lines(renderPostgresConf(t, db(t, "db-a")));
    for (const expected of [
      "data_directory = '/var/lib/postgresql/15/main'",
      "hba_file = '/etc/postgresql/15/main/pg_hba.conf'",
      "ident_file = '/etc/postgresql/15/main/pg_ident.conf'",
      "listen_addresses = '*'",
      "port = 5432",
      "password_encryption = 'scram-sha-256'",
      "wal_level = 'replica'",
      "max_wal_senders = 10",
      "max_replication_slots = 10",
      "wal_log_hints = on",
      "hot_standby = on",
      "hot_standby_feedback = on",
      "log_connections = on",
    ]) {
      expect(conf).toContain(expected);
    }
    expect(conf.at(-1)).toBe("");
  });

  it("switches from wal_keep_segments (12) to wal_keep_size (13)", () => {
    const t12 = topologyFor("staging", 12);
    const c12 = renderPostgresConf(t12, db(t12, "db-a"));
    expect(lines(c12)).toContain("wal_keep_segments = 64");
    expect(c12).not.toContain("wal_keep_size");
    const t13 = topologyFor("staging", 13);
    const c13 = renderPostgresConf(t13, db(t13, "db-a"));
    expect(lines(c13)).toContain("wal_keep_size = '1024MB'");
    expect(c13).not.toContain("wal_keep_segments");
    // A slot may not hold back more WAL than this (13+); 12 has no such setting.
    expect(lines(c13)).toContain("max_slot_wal_keep_size = '8192MB'");
    expect(c12).not.toContain("max_slot_wal_keep_size");
    const odd: Topology = { ...t12, postgres: { ...t12.postgres, walKeepMb: 100 } };
    expect(lines(renderPostgresConf(odd, db(odd, "db-a")))).toContain("wal_keep_segments = 7");
  });

  it("names the peer as synchronous standby only in prod", () => {
    const prod = topologyFor("prod", 15);
    expect(lines(renderPostgresConf(prod, db(prod, "db-a")))).toEqual(
      expect.arrayContaining(["synchronous_commit = on", "synchronous_standby_names = 'FIRST 1 (\"db-b\")'"]),
    );
    expect(lines(renderPostgresConf(prod, db(prod, "db-b")))).toContain(
      "synchronous_standby_names = 'FIRST 1 (\"db-a\")'",
    );
    const old = topologyFor("prod", 9.6);
    expect(lines(renderPostgresConf(old, db(old, "db-a")))).toContain(
      "synchronous_standby_names = '1 (\"db-b\")'",
    );
    const staging = topologyFor("staging", 15);
    expect(renderPostgresConf(staging, db(staging, "db-a"))).not.toMatch(
      /synchronous_standby_names|synchronous_commit/,
    );
  });

  it("uses md5 on 9.6, which has no SCRAM", () => {
    const t = topologyFor("staging", 9.6);
    expect(lines(renderPostgresConf(t, db(t, "db-a")))).toContain("password_encryption = on");
    expect(rules(renderPgHba(t, db(t, "db-a")))).toContain("host replication replicator 10.40.21.10/32 md5");
  });
});

describe("max_connections covers every app worker's pool", () => {
  it("is 100 for staging, grows with prod's workers, and is what postgresql.conf says", () => {
    expect(maxConnections(topologyFor("staging"))).toBe(100);
    // 3 app servers x 16 workers x 2 pooled connections + 20.
    expect(maxConnections(topologyFor("prod"))).toBe(116);
    const big = topologyFor("prod");
    const many = {
      ...big,
      app: { ...big.app, maxProcesses: 64 },
    };
    expect(maxConnections(many)).toBe(3 * 64 * 2 + 20);
    const conf = renderPostgresConf(many, nodeByName(many, "db-a"));
    expect(conf).toContain(`max_connections = ${3 * 64 * 2 + 20}`);
  });
});

describe("pg_hba.conf", () => {
  it("allows replication only from the peer and the app only from app servers (staging)", () => {
    const t = topologyFor("staging", 15);
    expect(rules(renderPgHba(t, db(t, "db-a")))).toEqual([
      "local all postgres peer",
      "host replication replicator 10.40.21.10/32 scram-sha-256",
      "host postgres replicator 10.40.21.10/32 scram-sha-256",
      "host pypi pypi_app 10.40.10.10/32 scram-sha-256",
      "host pypi pypi_app 10.40.11.10/32 scram-sha-256",
    ]);
  });

  it("lists every prod app server and the other peer on db-b", () => {
    const t = topologyFor("prod", 15);
    expect(rules(renderPgHba(t, db(t, "db-b")))).toEqual([
      "local all postgres peer",
      "host replication replicator 10.40.20.10/32 scram-sha-256",
      "host postgres replicator 10.40.20.10/32 scram-sha-256",
      "host pypi pypi_app 10.40.10.10/32 scram-sha-256",
      "host pypi pypi_app 10.40.11.10/32 scram-sha-256",
      "host pypi pypi_app 10.40.10.11/32 scram-sha-256",
    ]);
  });
});

describe("secrets and files", () => {
  it("never renders a password, a trust rule or an open network", () => {
    for (const shape of shapes) {
      for (const v of PG_MAJORS) {
        const t = valid(shape, v);
        for (const name of ["db-a", "db-b"] as const) {
          for (const f of renderPostgresFiles(t, db(t, name), "standby")) {
            expect(f.content).not.toMatch(/\bpassword\s*=|PGPASSWORD|\btrust\b|0\.0\.0\.0|::\/0/i);
            expect(f.content).not.toContain("replication-password");
            if (f.content !== "") expect(f.content.endsWith("\n")).toBe(true);
          }
        }
      }
    }
  });

  it("gives each file its Debian mode and owner", () => {
    const t = topologyFor("prod", 11);
    const files = renderPostgresFiles(t, db(t, "db-b"), "standby");
    expect(files.map((f) => [f.path, f.mode, f.owner, f.group, f.validator ?? null, f.reloads])).toEqual([
      ["/etc/postgresql/11/main/postgresql.conf", "0644", "postgres", "postgres", "postgres", ["postgresql"]],
      ["/etc/postgresql/11/main/pg_hba.conf", "0640", "postgres", "postgres", null, ["postgresql"]],
      ["/etc/postgresql/11/main/pg_ident.conf", "0640", "postgres", "postgres", null, ["postgresql"]],
      ["/etc/postgresql/11/main/start.conf", "0644", "postgres", "postgres", null, []],
      ["/var/lib/postgresql/11/main/recovery.conf", "0600", "postgres", "postgres", null, []],
    ]);
    expect(renderPostgresFiles(t, db(t, "db-b"), "standby")).toEqual(files);
  });

  it("escapes .pgpass fields", () => {
    const t = topologyFor("staging");
    expect(pgpassLine(t, "a:b\\c")).toBe("*:*:*:replicator:a\\:b\\\\c\n");
    expect(() => pgpassLine(t, "a\nb")).toThrow(/one line/);
  });
});

describe("quoting helpers", () => {
  it("quotes postgresql.conf strings", () => {
    expect(pgConfQuote("it's")).toBe("'it''s'");
    expect(pgConfQuote("a\\b")).toBe("'a\\\\b'");
    expect(() => pgConfQuote("a\nb")).toThrow(/one line/);
  });

  it("quotes conninfo values only when needed", () => {
    expect(conninfoQuote("10.0.0.1")).toBe("10.0.0.1");
    expect(conninfoQuote("a b")).toBe("'a b'");
    expect(conninfoQuote("o'k")).toBe("'o\\'k'");
    expect(conninfoQuote("")).toBe("''");
  });

  it("quotes pg_hba keywords used as names and rejects unsafe tokens", () => {
    expect(hbaField("pypi_app")).toBe("pypi_app");
    expect(hbaField("10.0.0.1/32")).toBe("10.0.0.1/32");
    expect(hbaField("all")).toBe('"all"');
    expect(hbaField("Replication")).toBe('"Replication"');
    expect(() => hbaField("a b")).toThrow(/pg_hba/);
    expect(() => hbaField("a,b")).toThrow(/pg_hba/);
  });
});
