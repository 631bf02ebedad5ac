/**
 * Runs a rendered agent script under `sh` against fake `aws`, `curl` and `ip` executables that
 * log their argv and play back scripted answers, so the AWS branches run without AWS.
 */
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type AgentScript, agentScript, agentScriptPaths } from "../../src/render/agent.js";

export const MY_ENI = "eni-0mine";
const MAC = "0a:1b:2c:3d:4e:5f";

/**
 * Logs "AWS_MAX_ATTEMPTS=<value> <argv>"; answers from answers/<op>.<n>, else answers/<op>. A
 * `lambda invoke` also writes the answer's payload to its outfile (the last argument).
 */
const fakeAws = (dir: string) => `#!/bin/sh
prev= op= last=
for a in "$@"; do
  case $prev in ec2 | lambda) [ -n "$op" ] || op=$a ;; esac
  prev=$a last=$a
done
echo "AWS_MAX_ATTEMPTS=\${AWS_MAX_ATTEMPTS:-} $*" >>'${dir}/aws.log'
n=$(($(cat '${dir}/'"$op.count" 2>/dev/null || echo 0) + 1))
echo "$n" >'${dir}/'"$op.count"
if [ -f '${dir}/answers/'"$op.$n" ]; then f='${dir}/answers/'"$op.$n"
elif [ -f '${dir}/answers/'"$op" ]; then f='${dir}/answers/'"$op"
else echo "fake aws: nothing scripted for $op" >&2; exit 255; fi
status=$(head -n 1 "$f")
tail -n +2 "$f"
[ "$op" != invoke ] || [ "$status" != 0 ] || cat "$f.payload" >"$last" 2>/dev/null || : >"$last"
if [ "$status" != 0 ]; then
  if [ -f "$f.stderr" ]; then cat "$f.stderr" >&2; else echo "An error occurred (Fake) when calling the $op operation" >&2; fi
fi
exit "$status"
`;

/** IMDSv2: a token, then this node's MAC and its interface id; down while imds-down exists. */
const fakeCurl = (dir: string) => `#!/bin/sh
echo "$*" >>'${dir}/curl.log'
[ -e '${dir}/imds-down' ] && exit 7
# The first <imds-flaky> calls time out.
if [ -s '${dir}/imds-flaky' ] && [ "$(wc -l <'${dir}/curl.log')" -le "$(cat '${dir}/imds-flaky')" ]; then exit 28; fi
for a in "$@"; do case $a in http://*) url=$a ;; esac; done
case $url in
  */api/token) echo AQAEAFakeToken ;;
  */meta-data/mac) echo '${MAC}' ;;
  */meta-data/network/interfaces/macs/${MAC}/interface-id) cat '${dir}/imds-eni' 2>/dev/null || echo '${MY_ENI}' ;;
  *) exit 22 ;;
esac
`;

/** Records pauses instead of taking them, for tests that do not measure time. */
const fakeSleep = (dir: string) => `#!/bin/sh
echo "$*" >>'${dir}/sleep.log'
`;

/** Never touches the host's interfaces: logs, and reports no addresses. */
/** Logs every call and keeps the addresses added to each device, so `addr show` reflects them. */
const fakeIp = (dir: string) => `#!/bin/sh
echo "$*" >>'${dir}/ip.log'
state='${dir}/ip.addrs'
touch "$state"
case "$*" in
  "addr add "*) echo "$5 $3" >>"$state" ;;
  "addr del "*) grep -v "^$5 $3$" "$state" >"$state.new" || true; mv "$state.new" "$state" ;;
  "-o addr show dev "*) grep "^$5 " "$state" | while read -r dev a; do echo "1: $dev    inet $a scope global $dev"; done ;;
esac
`;

export interface Run {
  status: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

export interface FakeCloud {
  /** Scripts the answers of one operation: the nth call gets answers[n-1], later calls the last. */
  answer(
    op: string,
    ...answers: { status?: number; stdout?: string; stderr?: string; payload?: string }[]
  ): void;
  imdsDown(): void;
  /** The first `calls` IMDS requests time out. */
  imdsFlaky(calls: number): void;
  /** What IMDS reports as this node's interface id. */
  imdsInterfaceId(value: string): void;
  /** Writes the shipped script, its library line pointing at this directory's copy; returns its path. */
  script(name: AgentScript): string;
  /** Puts another fake executable first on PATH. */
  install(name: string, text: string): void;
  run(script: AgentScript, args: string[], env?: Record<string, string>): Run;
  /** PATH with the fakes first. */
  readonly path: string;
  readonly dir: string;
  /** The pauses the script asked for (in seconds), when sleep is faked. */
  sleeps(): number[];
  /** The aws calls made, as "AWS_MAX_ATTEMPTS=<v> <argv>". */
  awsCalls(op?: string): string[];
  curlCalls(): string[];
  ipCalls(): string[];
  cleanup(): void;
}

/** An agent script in DIR, sourcing DIR's copy of the library. */
function installScript(dir: string, name: AgentScript): string {
  const text = agentScript(name)
    .split("\n")
    .map((l) => (l.startsWith("PYPI_LIB=") ? `PYPI_LIB='${join(dir, "lib.sh")}'` : l))
    .join("\n");
  const path = join(dir, name);
  writeFileSync(path, text);
  chmodSync(path, 0o755);
  return path;
}

/** With `realSleep`, pauses really happen, so a test can measure the wall time. */
export function fakeCloud(nodeEnv: string, { realSleep = false } = {}): FakeCloud {
  const dir = mkdtempSync(join(tmpdir(), "pypi-fake-cloud-"));
  const bin = join(dir, "bin");
  mkdirSync(bin);
  mkdirSync(join(dir, "answers"));
  for (const [name, text] of [
    ["aws", fakeAws(dir)],
    ["curl", fakeCurl(dir)],
    ["ip", fakeIp(dir)],
    ...(realSleep ? [] : [["sleep", fakeSleep(dir)] as const]),
  ] as const) {
    writeFileSync(join(bin, name), text);
    chmodSync(join(bin, name), 0o755);
  }
  writeFileSync(join(dir, "lib.sh"), agentScript("lib"));
  // The node's tools and resource scripts as node.env names them, pointed at this directory's copies.
  const toolVars = [...nodeEnv.matchAll(/^(PYPI_\w+)='([^']*)'$/gm)].flatMap(([, key, value]) => {
    const name = (Object.keys(agentScriptPaths) as AgentScript[]).find((n) => agentScriptPaths[n] === value);
    return name === undefined || name === "lib" ? [] : [`${key}='${installScript(dir, name)}'`];
  });
  writeFileSync(join(dir, "node.env"), [nodeEnv.trimEnd(), ...toolVars, ""].join("\n"));
  const PATH = `${bin}:/usr/sbin:/usr/bin:/sbin:/bin`;
  const lines = (file: string) =>
    existsSync(join(dir, file)) ? readFileSync(join(dir, file), "utf8").split("\n").filter(Boolean) : [];

  return {
    answer(op, ...answers) {
      answers.forEach((a, i) => {
        const text = `${a.status ?? 0}\n${a.stdout ?? ""}`;
        const last = i === answers.length - 1;
        const file = join(dir, "answers", last ? op : `${op}.${i + 1}`);
        writeFileSync(file, text);
        if (a.payload !== undefined) writeFileSync(`${file}.payload`, a.payload);
        if (a.stderr !== undefined) writeFileSync(`${file}.stderr`, a.stderr);
      });
    },
    imdsDown() {
      writeFileSync(join(dir, "imds-down"), "");
    },
    imdsFlaky(calls) {
      writeFileSync(join(dir, "imds-flaky"), `${calls}\n`);
    },
    imdsInterfaceId(value) {
      writeFileSync(join(dir, "imds-eni"), `${value}\n`);
    },
    dir,
    path: PATH,
    script: (name) => installScript(dir, name),
    install(name, text) {
      writeFileSync(join(bin, name), text);
      chmodSync(join(bin, name), 0o755);
    },
    run(script, args, env = {}) {
      const path = this.script(script);
      const started = process.hrtime.bigint();
      const r = spawnSync("sh", [path, ...args], {
        encoding: "utf8",
        env: { PATH, PYPI_NODE_CONFIG: join(dir, "node.env"), ...env },
        timeout: 120_000,
      });
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, seconds };
    },
    awsCalls(op) {
      return lines("aws.log").filter(
        (l) => op === undefined || l.includes(` ec2 ${op} `) || l.includes(` lambda ${op} `),
      );
    },
    curlCalls: () => lines("curl.log"),
    ipCalls: () => lines("ip.log"),
    sleeps: () => lines("sleep.log").map(Number),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
