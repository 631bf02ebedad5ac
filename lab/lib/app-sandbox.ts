/**
 * Runs the index app as deployed, on this machine: a private network (loopback only), PID
 * and mount namespace with copy-on-write /etc, /opt, /srv, /var/lib, /var/log and an empty
 * /run; inside it a Postgres 15 primary with a streaming standby, and Apache configured by the
 * real renderers, running the bundled app as /opt/pypi-index/index.fcgi under the topology's
 * runtime: the app server started from its rendered unit, or mod_fcgid.
 * The index app test tier and the app benchmark both run it.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { cdnQueueDir } from "../../src/app/cdn.js";
import type { RegisterSummary } from "../../src/app/register.js";
import { sftpStateDir } from "../../src/app/sftp-events.js";
import { indexAppScript } from "../../src/app-artifact.js";
import { paths } from "../../src/layout.js";
import { projectRoot } from "../../src/project-files.js";
import {
  apacheModules,
  apachePortsPath,
  apacheSecurityConfPath,
  apacheSitePath,
  indexAppEnv,
  indexFcgiScript,
  renderApachePorts,
  renderApacheSecurityConf,
  renderApacheSite,
  renderRobotsTxt,
  robotsTxtPath,
} from "../../src/render/apache.js";
import { appServerUnitPath, renderAppServerService } from "../../src/render/systemd.js";
import { type AppRuntime, nodeByName, type Topology } from "../../src/topology.js";
import { loadLabTopology } from "./config.js";
import { copyOnWriteMounts, type ExecOptions, type ExecResult, NamespaceHolder } from "./holder.js";

export const PG_BIN = "/usr/lib/postgresql/15/bin";
export const APP_PASSWORD = "app-secret:with\\colon";

/** The app exactly as the bundles ship it. */
export function buildApp(outfile: string): void {
  writeFileSync(outfile, indexAppScript());
  chmodSync(outfile, 0o755);
}

/**
 * `base` with the app server's package root, database, upload limit and file copy store as the
 * sandbox has them. The store is a directory next to the package root, standing in for the bucket.
 */
export function appSandboxTopology(
  base: Topology,
  packageRoot: string,
  fileCopies = join(dirname(packageRoot), "file-copies"),
): Topology {
  return {
    ...base,
    backup: { ...base.backup, fileCopies },
    // With a CDN, a directory next to the package root stands in for CloudFront.
    ...(base.cdnInvalidations ? { cdnInvalidations: join(dirname(packageRoot), "cdn-invalidations") } : {}),
    // A plain directory stands in for the NFS mount, as in the lab.
    backend: "lab",
    bundleLocation: "/var/lib/pypi-lab",
    overlay: { ...base.overlay, dbWriter: "127.0.0.1" },
    storage: { ...base.storage, packageRoot },
    upload: { ...base.upload, maxFileBytes: 64 * 1024 },
  };
}

const OVERLAID = ["/etc", "/opt", "/srv", "/var/lib", "/var/log"];
/** The app server the sandbox plays. */
const SANDBOX_NODE = "app-a";

export interface AppSandboxOptions {
  /** Prefix of the scratch directory's name. @default "pypi-app-" */
  readonly prefix?: string;
  /** Deployment whose app-a the sandbox runs. @default the lab's (lab/topology.json) */
  readonly topology?: Topology;
  /** The app runtime. @default the topology's */
  readonly runtime?: AppRuntime;
}

/** pgpass escaping: backslash and colon. */
const pgpassEscape = (s: string): string => s.replace(/[\\:]/g, "\\$&");

export class AppSandbox {
  private constructor(
    readonly t: Topology,
    readonly scratch: string,
    private readonly holder: NamespaceHolder,
  ) {}

  get packageRoot(): string {
    return this.t.storage.packageRoot;
  }

  /** The directory standing in for the file copy bucket. */
  get fileCopies(): string {
    return this.t.backup.fileCopies;
  }

  /**
   * Environment the app gets from Apache, plus what the register job's env file adds: the one
   * app server whose writer scans the registrar waits for is this one.
   */
  appEnv(): Record<string, string> {
    return {
      ...Object.fromEntries(indexAppEnv(this.t)),
      PYPI_MAX_FILE_BYTES: String(this.t.upload.maxFileBytes),
      PYPI_UPLOAD_HOSTS: SANDBOX_NODE,
    };
  }

  static async start(opts: AppSandboxOptions = {}): Promise<AppSandbox> {
    const scratch = mkdtempSync(join(tmpdir(), opts.prefix ?? "pypi-app-"));
    chmodSync(scratch, 0o755);
    const root = join(scratch, "pypi");
    mkdirSync(root);
    const base = opts.topology ?? loadLabTopology(projectRoot());
    const t = appSandboxTopology(
      opts.runtime ? { ...base, app: { ...base.app, runtime: opts.runtime } } : base,
      root,
    );
    let holder: NamespaceHolder;
    try {
      // An anonymous network namespace: nothing to clean up if this process dies first.
      holder = await NamespaceHolder.start({
        name: "app sandbox",
        iso: { net: true, pid: true },
        setup: [
          ...copyOnWriteMounts(OVERLAID, scratch),
          "mount -t tmpfs tmpfs /run",
          "mkdir -p /run/lock /run/apache2 /run/postgresql && chown postgres:postgres /run/postgresql",
        ],
      });
    } catch (err) {
      rmSync(scratch, { recursive: true, force: true });
      throw err;
    }
    const sb = new AppSandbox(t, scratch, holder);
    try {
      sb.setupPostgres();
      sb.setupApp();
      if (t.app.runtime === "appserver") sb.startAppServer();
      sb.setupApache();
    } catch (err) {
      sb.stop();
      throw err;
    }
    return sb;
  }

  exec(argv: readonly string[], opts: ExecOptions = {}): ExecResult {
    return this.holder.exec(argv, opts);
  }

  sh(
    script: string,
    opts: { user?: string; env?: Record<string, string>; allowFail?: boolean } = {},
  ): ExecResult {
    return this.exec(["sh", "-c", script], opts);
  }

  psql(sql: string, db = "postgres", port = 5432): string {
    return this.exec(
      [
        `${PG_BIN}/psql`,
        "-X",
        "-A",
        "-t",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "/run/postgresql",
        "-p",
        String(port),
        "-d",
        db,
      ],
      { user: "postgres", input: sql },
    ).stdout;
  }

  private setupPostgres(): void {
    const data = "/var/lib/postgresql/test";
    this.sh(`mkdir -p ${data} && chown postgres:postgres ${data}`);
    this.exec(
      [
        `${PG_BIN}/initdb`,
        "-D",
        `${data}/primary`,
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--locale=C",
        "--auth-local=peer",
        "--auth-host=scram-sha-256",
        "-N",
      ],
      { user: "postgres" },
    );
    const conf = [
      "listen_addresses = '127.0.0.1'",
      "port = 5432",
      "unix_socket_directories = '/run/postgresql'",
      "wal_level = replica",
      "max_wal_senders = 10",
      "fsync = off",
      "synchronous_commit = off",
    ].join("\n");
    this.sh(
      [
        `printf '%s\\n' "$CONF" >> ${data}/primary/postgresql.conf`,
        `printf '%s\\n' 'local all postgres peer' 'host replication postgres 127.0.0.1/32 trust' 'host all all 127.0.0.1/32 scram-sha-256' > ${data}/primary/pg_hba.conf`,
        `${PG_BIN}/pg_ctl -D ${data}/primary -l ${data}/primary.log -w start >/dev/null`,
      ].join(" && "),
      { user: "postgres", env: { CONF: conf } },
    );
    const pg = this.t.postgres;
    this.psql(
      [
        `CREATE ROLE ${pg.appUser} LOGIN PASSWORD '${APP_PASSWORD.replace(/'/g, "''")}';`,
        `GRANT pg_monitor TO ${pg.appUser};`,
        `CREATE DATABASE ${pg.database} OWNER ${pg.appUser};`,
      ].join("\n"),
    );
    this.exec(
      [
        `${PG_BIN}/pg_basebackup`,
        "-h",
        "127.0.0.1",
        "-p",
        "5432",
        "-U",
        "postgres",
        "-D",
        `${data}/standby`,
        "-R",
        "-X",
        "stream",
        "-c",
        "fast",
        "-N",
      ],
      {
        user: "postgres",
      },
    );
    this.sh(
      `echo 'port = 5433' >> ${data}/standby/postgresql.conf && ${PG_BIN}/pg_ctl -D ${data}/standby -l ${data}/standby.log -w start >/dev/null`,
      { user: "postgres" },
    );
  }

  /** The app as the bundle installs it: the script, its pgpass, the package root layout. */
  private setupApp(): void {
    const built = join(this.scratch, "index-app.js");
    buildApp(built);
    const env = this.appEnv();
    const pg = this.t.postgres;
    const passLine = `${this.t.overlay.dbWriter}:${pg.port}:${pg.database}:${pg.appUser}:${pgpassEscape(APP_PASSWORD)}\n`;
    const passFile = env.PYPI_DB_PASSWORD_FILE as string;
    this.sh(
      [
        `mkdir -p ${paths.appRoot} "$(dirname ${passFile})"`,
        `install -m 0755 ${built} ${indexFcgiScript}`,
        `printf '%s' "$PASS" > ${passFile} && chown www-data:www-data ${passFile} && chmod 0400 ${passFile}`,
      ].join(" && "),
      { env: { PASS: passLine } },
    );
    const root = this.packageRoot;
    // The node's layout (the agent's ensure_package_layout): the root is root's, what the app
    // writes is www-data's, so the app workers can register uploads and write the pages.
    mkdirSync(`${root}/incoming`, { recursive: true });
    for (const dir of ["packages", ".staging", ".health", "simple", "pypi"])
      mkdirSync(`${root}/${dir}`, { recursive: true });
    this.sh(
      `cd ${root} && chown www-data:www-data packages .staging .health simple pypi && chmod 0700 .staging .health`,
    );
    this.sh(
      `install -d -o www-data -g www-data -m 0755 ${[sftpStateDir(root), this.fileCopies, cdnQueueDir(root), ...(this.t.cdnInvalidations ? [this.t.cdnInvalidations] : [])].join(" ")}`,
    );
    this.exec(["node", indexFcgiScript, "migrate"], { env });
  }

  /**
   * The app server as its unit starts it: ExecStart as User= with the unit's RuntimeDirectory=;
   * the environment is what the unit's EnvironmentFile holds. Resolves once the socket exists.
   */
  startAppServer(): void {
    const unit = renderAppServerService(this.t);
    const setting = (key: string): string => {
      const m = new RegExp(`^${key}=(.*)$`, "m").exec(unit);
      if (!m?.[1]) throw new Error(`${appServerUnitPath}: no ${key}=`);
      return m[1];
    };
    // The unit quotes only the socket path, which has no spaces.
    const argv = setting("ExecStart").replace(/"/g, "").split(" ");
    const runDir = `/run/${setting("RuntimeDirectory")}`;
    const user = setting("User");
    this.sh(
      `rm -rf ${runDir} && install -d -m ${setting("RuntimeDirectoryMode")} -o ${user} -g ${setting("Group")} ${runDir}`,
    );
    const logLines = Number(this.sh("cat /var/log/pypi-index.log 2>/dev/null | wc -l").stdout.trim() || 0);
    this.exec(
      [
        "sh",
        "-c",
        `setsid setpriv --reuid=${user} --regid=${user} --init-groups -- "$@" >>/var/log/pypi-index.log 2>&1 </dev/null & echo $! >/run/pypi-index.pid`,
        "sh",
        ...argv,
      ],
      { env: this.appEnv() },
    );
    // The primary binds the socket at once; requests are answered once workers accept, and each
    // worker says so in the log. Wait for every one of this start.
    const all = `(${this.t.app.maxProcesses} of ${this.t.app.maxProcesses})`;
    this.sh(
      `for i in $(seq 150); do tail -n +$((${logLines} + 1)) /var/log/pypi-index.log | grep -qF '${all}' && exit 0; sleep 0.1; done; cat /var/log/pypi-index.log; exit 1`,
    );
  }

  /** Pids of the app server's primary and workers (appserver runtime). */
  appServerPids(): { primary: number; workers: number[] } {
    const primary = Number(this.sh("cat /run/pypi-index.pid").stdout.trim());
    const workers = this.sh(`pgrep -P ${primary} || true`)
      .stdout.split("\n")
      .filter((l) => /^[0-9]+$/.test(l))
      .map(Number);
    return { primary, workers };
  }

  private setupApache(): void {
    const t = this.t;
    const node = nodeByName(t, SANDBOX_NODE);
    const files: Record<string, string> = {
      [apacheSitePath]: renderApacheSite(t, node),
      [apachePortsPath]: renderApachePorts(t, node),
      [apacheSecurityConfPath]: renderApacheSecurityConf(t, node),
      // The DocumentRoot exists only because the bundle ships a file into it, as on a node.
      [robotsTxtPath]: renderRobotsTxt(),
    };
    const steps = ["set -e", "cd /etc/apache2", "rm -f sites-enabled/* mods-enabled/status.*"];
    for (const [path, content] of Object.entries(files)) {
      steps.push(
        `mkdir -p "$(dirname ${path})" && printf '%s' '${content.replace(/'/g, "'\\''")}' > ${path}`,
      );
    }
    steps.push("ln -s ../sites-available/pypi.conf sites-enabled/pypi.conf");
    for (const m of apacheModules(t.app.runtime)) {
      for (const ext of ["load", "conf"]) {
        steps.push(
          `[ ! -e mods-available/${m}.${ext} ] || ln -sf ../mods-available/${m}.${ext} mods-enabled/${m}.${ext}`,
        );
      }
    }
    steps.push(
      ". /etc/apache2/envvars",
      "mkdir -p $APACHE_RUN_DIR $APACHE_LOCK_DIR $APACHE_LOG_DIR",
      "apache2 -t",
      "apache2 -k start",
    );
    this.sh(steps.join("\n"));
    // Wait until the vhost answers.
    this.sh(
      "for i in $(seq 50); do curl -s -o /dev/null http://127.0.0.1/ && exit 0; sleep 0.1; done; exit 1",
    );
  }

  /** curl inside the sandbox: status, headers and body. */
  http(path: string, accept?: string): { status: number; headers: string; body: string } {
    const r = this.exec([
      "curl",
      "-s",
      "-i",
      ...(accept ? ["-H", `Accept: ${accept}`] : []),
      `http://127.0.0.1:${this.t.app.httpPort}${path}`,
    ]);
    const split = r.stdout.indexOf("\r\n\r\n");
    const headers = r.stdout.slice(0, split);
    const status = Number(/^HTTP\/[0-9.]+ ([0-9]{3})/.exec(headers)?.[1] ?? 0);
    return { status, headers, body: r.stdout.slice(split + 4) };
  }

  register(user?: string): {
    summary: RegisterSummary;
    log: string;
  } {
    // No watcher runs here: one round of its scan (as root, as it runs) says nothing is open.
    this.exec(
      ["node", indexFcgiScript, "watch-uploads", "--once", "--host", SANDBOX_NODE, "--write-as", "www-data"],
      { env: this.appEnv() },
    );
    const r = this.exec(["node", indexFcgiScript, "register", ...(user ? [user] : [])], {
      env: this.appEnv(),
    });
    return { summary: JSON.parse(r.stdout), log: r.stderr };
  }

  pgCtl(which: "primary" | "standby", action: "start" | "stop"): void {
    const data = `/var/lib/postgresql/test/${which}`;
    this.exec([`${PG_BIN}/pg_ctl`, "-D", data, "-l", `${data}.log`, "-m", "fast", "-w", action], {
      user: "postgres",
    });
  }

  apacheErrorLog(): string {
    return this.exec(
      ["sh", "-c", "cat /var/log/apache2/pypi-error.log /var/log/apache2/error.log 2>/dev/null"],
      {
        allowFail: true,
      },
    ).stdout;
  }

  /** What the app logged: the app server's log, or Apache's error log where mod_fcgid puts it. */
  appLog(): string {
    return (
      this.exec(["sh", "-c", "cat /var/log/pypi-index.log 2>/dev/null"], { allowFail: true }).stdout +
      this.apacheErrorLog()
    );
  }

  stop(): void {
    this.holder.stop();
    rmSync(this.scratch, { recursive: true, force: true });
  }
}
