/**
 * Runs a rendered Postgres primary/standby pair on this machine: each db node is a network
 * namespace with private /etc/postgresql, /var/lib/postgresql and /run/postgresql (tmpfs in a
 * mount namespace), so the rendered Debian paths, listen addresses and pg_hba rules are used
 * exactly as rendered. Built on the lab's namespace toolkit (lab/lib/netns.ts, holder.ts).
 * Needs root, iproute2, util-linux (unshare, nsenter, runuser).
 */
import { execFileSync } from "node:child_process";
import { chmodSync, existsSync, readdirSync, readFileSync } from "node:fs";
import { asUser, type ExecOptions, type ExecResult, NamespaceHolder, runArgv } from "../../lab/lib/holder.js";
import { createBridgeNamespace, createNode, destroyNamespace, inNamespace } from "../../lab/lib/netns.js";
import type { BundleFile } from "../../src/bundle-types.js";
import { pgConfDir, pgDataDir } from "../../src/layout.js";
import {
  PGPASS_PATH,
  pgpassLine,
  primaryConninfo,
  renderPostgresFiles,
  renderStandbyFiles,
} from "../../src/render/postgres.js";
import type { NodeSpec, Topology } from "../../src/topology.js";

export type { ExecOptions, ExecResult };

/** What the pair's commands get unless they ask for more. */
const PG_TIMEOUT_MS = 30_000;

/** Anything that maps a node name to its network namespace (BridgedNetwork or the lab's own). */
export interface NamespaceOf {
  ns(host: string): string;
}

export interface NetHost {
  readonly name: string;
  readonly ip: string;
}

/**
 * Network namespaces `<prefix>-<host>` whose eth0 sits on one bridge inside `<prefix>-br`,
 * so no interface of the pair exists in the root namespace.
 */
export class BridgedNetwork {
  private constructor(
    readonly prefix: string,
    readonly hosts: readonly NetHost[],
  ) {}

  static create(prefix: string, hosts: readonly NetHost[], prefixLength = 24): BridgedNetwork {
    const net = new BridgedNetwork(prefix, hosts);
    try {
      createBridgeNamespace(net.bridgeNs);
      hosts.forEach((host, i) => {
        // Port names of hosts sharing the prefix would collide once cut to 15 characters.
        createNode({
          ns: net.ns(host.name),
          bridgeNs: net.bridgeNs,
          address: `${host.ip}/${prefixLength}`,
          port: `v${i}`,
        });
      });
    } catch (err) {
      net.destroy();
      throw err;
    }
    return net;
  }

  get bridgeNs(): string {
    return `${this.prefix}-br`;
  }

  ns(host: string): string {
    if (!this.hosts.some((h) => h.name === host))
      throw new Error(`no host "${host}" in network ${this.prefix}`);
    return `${this.prefix}-${host}`;
  }

  /** Run a command in a host's network namespace (root mount namespace). */
  exec(host: string, argv: readonly string[], opts: ExecOptions = {}): ExecResult {
    return runArgv(`${host}: ${argv.join(" ")}`, inNamespace(this.ns(host), asUser(argv, opts)), {
      timeoutMs: PG_TIMEOUT_MS,
      ...opts,
    });
  }

  /** Kill whatever still runs in the namespaces, then delete them. Safe to call twice. */
  destroy(): void {
    for (const ns of [...this.hosts.map((h) => `${this.prefix}-${h.name}`), this.bridgeNs]) {
      destroyNamespace(ns);
    }
  }
}

/** Directories each node gets privately, as the Debian package lays them out. */
const PRIVATE_DIRS = [
  "/etc/postgresql",
  // The agent's config, where the replication passfile lives.
  "/etc/pypi-node",
  "/var/lib/postgresql",
  "/run/postgresql",
  "/var/log/postgresql",
] as const;

/**
 * One db node: a holder in the node's network namespace and in mount and IPC namespaces of its
 * own, with tmpfs over PRIVATE_DIRS.
 */
export class PgHost {
  private constructor(
    readonly name: string,
    private readonly holder: NamespaceHolder,
    /** Host-side file the server logs to (outside the private mounts, readable after teardown). */
    readonly logFile: string,
  ) {}

  static async start(network: NamespaceOf, name: string, logFile: string): Promise<PgHost> {
    const ids = (flag: string): string => execFileSync("id", [flag, "postgres"], { encoding: "utf8" }).trim();
    const [uid, gid] = [ids("-u"), ids("-g")];
    const holder = await NamespaceHolder.start({
      name,
      iso: { netns: network.ns(name), ipc: true },
      setup: PRIVATE_DIRS.map(
        (d) => `mkdir -p ${d} && mount -t tmpfs -o mode=2775,uid=${uid},gid=${gid},size=512m pgtest ${d}`,
      ),
    });
    runArgv(`${name}: log file`, ["sh", "-c", 'touch "$1" && chown postgres:postgres "$1"', "sh", logFile]);
    return new PgHost(name, holder, logFile);
  }

  /** Run a command inside the node (its network and mount namespaces). */
  exec(argv: readonly string[], opts: ExecOptions = {}): ExecResult {
    return this.holder.exec(argv, { timeoutMs: PG_TIMEOUT_MS, ...opts });
  }

  /** Write one file with its mode and owner, creating missing parent directories owned by postgres. */
  writeFile(path: string, content: string, mode: string, owner = "postgres", group = "postgres"): void {
    const dir = path.slice(0, path.lastIndexOf("/")) || "/";
    this.exec(["mkdir", "-p", dir], { user: "postgres" });
    this.exec(
      [
        "sh",
        "-c",
        'umask 077 && cat > "$1" && chown "$2" "$1" && chmod "$3" "$1"',
        "sh",
        path,
        `${owner}:${group}`,
        mode,
      ],
      {
        input: content,
      },
    );
  }

  install(files: readonly BundleFile[]): void {
    for (const f of files) this.writeFile(f.path, f.content, f.mode, f.owner, f.group);
  }

  /** psql as the postgres superuser over the local socket; SQL goes on stdin (keeps passwords off argv). */
  psql(
    t: Topology,
    sql: string,
    opts: { db?: string; env?: Record<string, string>; allowFail?: boolean } = {},
  ) {
    return this.exec(
      [
        `${clientBinDir(t)}/psql`,
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "/var/run/postgresql",
        "-p",
        String(t.postgres.port),
        "-d",
        opts.db ?? "postgres",
      ],
      { user: "postgres", input: sql, env: opts.env, allowFail: opts.allowFail },
    );
  }

  pgCtl(t: Topology, action: "start" | "stop"): void {
    const v = t.postgres.version;
    const args =
      action === "start"
        ? [
            "-o",
            `-c config_file=${pgConfDir(v)}/postgresql.conf`,
            "-l",
            this.logFile,
            "-w",
            "-t",
            "30",
            "start",
          ]
        : ["-m", "fast", "-w", "-t", "20", "stop"];
    try {
      this.exec([`${t.postgres.binDir}/pg_ctl`, "-D", pgDataDir(v), ...args], {
        user: "postgres",
        timeoutMs: 40_000,
      });
    } catch (err) {
      throw new Error(
        `${this.name}: pg_ctl ${action} failed\n${String(err)}\n--- server log ---\n${this.logTail()}`,
      );
    }
  }

  logTail(lines = 40): string {
    try {
      return readFileSync(this.logFile, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }

  /** Stop the server if it runs, then end the holder; the tmpfs mounts go with the namespace. */
  stop(t: Topology): void {
    if (this.holder.running) {
      const v = t.postgres.version;
      this.exec([`${t.postgres.binDir}/pg_ctl`, "-D", pgDataDir(v), "-m", "immediate", "-w", "stop"], {
        user: "postgres",
        allowFail: true,
      });
      this.holder.stop();
    }
  }
}

/**
 * Directory of pg_basebackup/psql: the server's own when it has them, else the newest Debian
 * client (Debian's 15 clients talk to servers back to 9.x).
 */
export function clientBinDir(t: Topology): string {
  if (existsSync(`${t.postgres.binDir}/pg_basebackup`)) return t.postgres.binDir;
  const versions = readdirSync("/usr/lib/postgresql")
    .filter((v) => existsSync(`/usr/lib/postgresql/${v}/bin/pg_basebackup`))
    .sort((a, b) => Number(b) - Number(a));
  if (!versions[0]) throw new Error("no Debian postgresql client binaries under /usr/lib/postgresql");
  return `/usr/lib/postgresql/${versions[0]}/bin`;
}

/** Single-quoted SQL literal. */
export const sqlLiteral = (s: string): string => `'${s.replace(/'/g, "''")}'`;

export interface PairSecrets {
  readonly replicationPassword: string;
  readonly appPassword: string;
}

export interface PgPair {
  readonly primary: PgHost;
  readonly standby: PgHost;
  stop(): void;
}

/** Poll `check` until it returns true or `timeoutMs` passes. */
export async function waitFor(what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/**
 * Bring up `primary` from initdb and `standby` from pg_basebackup over the namespace network,
 * each with the files rendered for its role, and wait until the standby streams.
 */
export async function startPostgresPair(
  t: Topology,
  network: NamespaceOf,
  nodes: { primary: NodeSpec; standby: NodeSpec },
  secrets: PairSecrets,
  logDir: string,
): Promise<PgPair> {
  const v = t.postgres.version;
  // The servers (as postgres) append to their logs there.
  chmodSync(logDir, 0o755);
  const started: PgHost[] = [];
  const stop = (): void => {
    for (const h of started.reverse()) h.stop(t);
  };
  try {
    const primary = await PgHost.start(network, nodes.primary.name, `${logDir}/${nodes.primary.name}.log`);
    started.push(primary);
    primary.install(renderPostgresFiles(t, nodes.primary, "primary"));
    primary.writeFile(PGPASS_PATH, pgpassLine(t, secrets.replicationPassword), "0600");
    primary.exec(
      [
        `${t.postgres.binDir}/initdb`,
        "-D",
        pgDataDir(v),
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
        "--auth-local=peer",
        `--auth-host=${v >= 10 ? "scram-sha-256" : "md5"}`,
        "-N",
      ],
      { user: "postgres", timeoutMs: 60_000 },
    );
    primary.pgCtl(t, "start");
    // Before the standby exists a synchronous primary would block every commit: bootstrap locally.
    const pg = t.postgres;
    primary.psql(
      t,
      [
        `CREATE ROLE ${pg.replicationUser} WITH REPLICATION LOGIN PASSWORD ${sqlLiteral(secrets.replicationPassword)};`,
        `SELECT pg_create_physical_replication_slot(${sqlLiteral(pg.slotName)});`,
        `CREATE ROLE ${pg.appUser} WITH LOGIN PASSWORD ${sqlLiteral(secrets.appPassword)};`,
        `CREATE DATABASE ${pg.database} OWNER ${pg.appUser};`,
      ].join("\n"),
      { env: { PGOPTIONS: "-c synchronous_commit=local" } },
    );

    const standby = await PgHost.start(network, nodes.standby.name, `${logDir}/${nodes.standby.name}.log`);
    started.push(standby);
    const standbyFiles = new Set(renderStandbyFiles(t, nodes.standby).map((f) => f.path));
    const files = renderPostgresFiles(t, nodes.standby, "standby");
    standby.install(files.filter((f) => !standbyFiles.has(f.path)));
    standby.writeFile(PGPASS_PATH, pgpassLine(t, secrets.replicationPassword), "0600");
    standby.exec(["mkdir", "-p", pgDataDir(v).replace(/\/main$/, "")], { user: "postgres" });
    standby.exec(
      [
        `${clientBinDir(t)}/pg_basebackup`,
        "-d",
        primaryConninfo(t, nodes.standby),
        "-D",
        pgDataDir(v),
        "-X",
        "stream",
        "-S",
        pg.slotName,
        "-c",
        "fast",
        "-N",
      ],
      { user: "postgres", timeoutMs: 60_000 },
    );
    standby.install(files.filter((f) => standbyFiles.has(f.path)));
    standby.pgCtl(t, "start");

    // A synchronous standby shows as async until its first flush report: wait for the final state.
    const want = `${nodes.standby.name}|streaming|${pg.synchronous ? "sync" : "async"}`;
    await waitFor(`${want} in pg_stat_replication of ${nodes.primary.name}`, () =>
      primary
        .psql(t, "SELECT application_name, state, sync_state FROM pg_stat_replication;")
        .stdout.includes(want),
    );
    return { primary, standby, stop };
  } catch (err) {
    stop();
    throw err;
  }
}
