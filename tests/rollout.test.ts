import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { type ApplyTiming, renderApplyScript } from "../src/components/rollout.js";
import { requireTools } from "./support/tools.js";

/**
 * A stand-in `aws` first on PATH. `get-command-invocation --query Status` plays back `status`
 * one line per call (`<exit code> <stdout>|<stderr>`, the last line repeating); the other calls
 * answer from fixed files. Every call is logged to `calls`.
 */
const FAKE_AWS = `#!/bin/sh
dir="$FAKE_AWS_DIR"
echo "$*" >>"$dir/calls"
case "$*" in
  *describe-instance-information*) echo Online ;;
  *send-command*) echo 0a1b2c3d-cmd ;;
  *" --query Status")
    n=$(($(cat "$dir/n" 2>/dev/null || echo 0) + 1))
    echo "$n" >"$dir/n"
    line=$(sed -n "\${n}p" "$dir/status")
    [ -n "$line" ] || line=$(tail -n 1 "$dir/status")
    rc=\${line%% *}
    rest=\${line#* }
    out=\${rest%%|*}
    err=\${rest#*|}
    [ -z "$out" ] || echo "$out"
    [ -z "$err" ] || echo "$err" >&2
    exit "$rc" ;;
  *StandardErrorContent*) cat "$dir/stderr-content" ;;
  *StandardOutputContent*) printf 'apply: checking files\\napply: reloading nginx\\n' ;;
  *StatusDetails*) printf 'Failed\\t1\\n' ;;
  *) echo "fake aws: unexpected call: $*" >&2; exit 2 ;;
esac
`;

/**
 * The script's clock, first on PATH too: `date +%s` reads the fake epoch and `sleep N` moves it
 * on by N, so a wait of minutes runs in no time and its length is exact. Any other use of
 * `date` or `sleep` is refused, so the script cannot reach past the fake clock unnoticed.
 */
const FAKE_DATE = `#!/bin/sh
[ "$*" = "+%s" ] || { echo "fake date: unexpected call: $*" >&2; exit 2; }
cat "$FAKE_AWS_DIR/now"
`;
const FAKE_SLEEP = `#!/bin/sh
case "$*" in
  ''|*[!0-9]*) echo "fake sleep: unexpected call: $*" >&2; exit 2 ;;
esac
echo "$1" >>"$FAKE_AWS_DIR/sleeps"
echo $(($(cat "$FAKE_AWS_DIR/now") + $1)) >"$FAKE_AWS_DIR/now"
`;
/** The fake clock's start: any fixed epoch. */
const EPOCH = 1_700_000_000;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const FAST: ApplyTiming = {
  pollSeconds: 0,
  deadlineSeconds: 30,
  executionTimeoutSeconds: 60,
  notFoundGraceSeconds: 5,
};
const NGINX_ERROR = 'nginx: [emerg] unknown directive "bogus" in /etc/nginx/nginx.conf:12';
const EXPIRED =
  "An error occurred (ExpiredTokenException) when calling the GetCommandInvocation operation: The security token included in the request is expired";

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly seconds: number;
  /** Seconds that passed on the script's own (fake) clock: the sum of its sleeps. */
  readonly clock: number;
  /** How many times the script asked for the invocation's status. */
  readonly polls: number;
}

function run(shell: string, answers: readonly string[], timing: Partial<ApplyTiming> = {}): Run {
  const dir = mkdtempSync(join(tmpdir(), "pypi-rollout-"));
  dirs.push(dir);
  for (const [name, script] of [
    ["aws", FAKE_AWS],
    ["date", FAKE_DATE],
    ["sleep", FAKE_SLEEP],
  ] as const) {
    writeFileSync(join(dir, name), script);
    chmodSync(join(dir, name), 0o755);
  }
  writeFileSync(join(dir, "now"), `${EPOCH}\n`);
  writeFileSync(join(dir, "status"), `${answers.join("\n")}\n`);
  writeFileSync(
    join(dir, "stderr-content"),
    `${NGINX_ERROR}\npypi-node: nginx -t failed; kept the previous config\n`,
  );
  const started = Date.now();
  const r = spawnSync(shell, ["-c", renderApplyScript({ ...FAST, ...timing })], {
    encoding: "utf8",
    // No stdin: on a socket (a piped stdin from node is one) bash reads ~/.bashrc as under sshd.
    stdio: ["ignore", "pipe", "pipe"],
    // A script that never gives up fails here instead of hanging the suite.
    timeout: 20_000,
    env: {
      PATH: `${dir}:${process.env.PATH ?? "/usr/bin:/bin"}`,
      FAKE_AWS_DIR: dir,
      PYPI_REGION: "us-east-1",
      PYPI_NODE: "lb-a",
      PYPI_INSTANCE_ID: "i-0123456789abcdef0",
      PYPI_BUNDLE_SHA256: "f".repeat(64),
    },
  });
  const calls = readFileSync(join(dir, "calls"), "utf8");
  return {
    code: r.status,
    stdout: r.stdout,
    stderr: r.stderr,
    seconds: (Date.now() - started) / 1000,
    clock: Number(readFileSync(join(dir, "now"), "utf8")) - EPOCH,
    polls: calls.split("\n").filter((c) => c.endsWith(" --query Status")).length,
  };
}

// The command runs the script with /bin/sh (dash on Debian); bash is the other common sh.
describe.each(["bash", "/bin/sh"])("rollout apply script under %s", (shell) => {
  it("reports success only after the invocation says Success", () => {
    const r = run(shell, ["0 Pending|", "0 InProgress|", "0 Delayed|", "0 InProgress|", "0 Success|"]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`lb-a applied bundle ${"f".repeat(64)}`);
    expect(r.polls).toBe(5);
  });

  it("fails with the node's own stderr when the invocation Failed", () => {
    const r = run(shell, ["0 InProgress|", "0 Failed|"]);
    expect(r.code).not.toBe(0);
    expect(r.stdout).not.toContain("applied bundle");
    expect(r.stderr).toContain(NGINX_ERROR);
    expect(r.stderr).toContain("lb-a (i-0123456789abcdef0): Failed (Failed\t1), command 0a1b2c3d-cmd");
    expect(r.stderr).toContain("apply: reloading nginx");
  });

  it.each(["Cancelled", "TimedOut", "Cancelling", "Undeliverable", "Terminated", "SomethingNew"])(
    "stops at once on the terminal state %s",
    (state) => {
      const r = run(shell, [`0 ${state}|`, "0 Success|"]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain(`: ${state} (`);
      expect(r.polls).toBe(1);
    },
  );

  it("fails at once on an expired token instead of taking it for Pending", () => {
    const r = run(shell, ["0 InProgress|", `254 |${EXPIRED}`, "0 Success|"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("aws get-command-invocation failed");
    expect(r.stderr).toContain("ExpiredTokenException");
    expect(r.stderr).toContain("command 0a1b2c3d-cmd may still be running");
    expect(r.polls).toBe(2);
    expect(r.clock).toBe(0);
    expect(r.seconds).toBeLessThan(10);
  });

  it.each([
    "An error occurred (InvalidClientTokenId) when calling the GetCommandInvocation operation: The security token included in the request is invalid.",
    "An error occurred (AccessDeniedException) when calling the GetCommandInvocation operation: User is not authorized",
  ])("fails at once on other CLI errors: %s", (error) => {
    const r = run(shell, [`255 |${error}`]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(error);
    expect(r.polls).toBe(1);
  });

  it("waits out InvocationDoesNotExist right after send-command, then follows the invocation", () => {
    const missing =
      "An error occurred (InvocationDoesNotExist) when calling the GetCommandInvocation operation: ";
    const r = run(shell, [`254 |${missing}`, `254 |${missing}`, "0 InProgress|", "0 Success|"], {
      pollSeconds: 1,
      notFoundGraceSeconds: 5,
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("applied bundle");
    expect(r.polls).toBe(4);
    expect(r.clock).toBe(3);
  });

  it("fails on InvocationDoesNotExist once the grace is over", () => {
    const missing =
      "An error occurred (InvocationDoesNotExist) when calling the GetCommandInvocation operation: ";
    const r = run(shell, [`254 |${missing}`], { pollSeconds: 2, notFoundGraceSeconds: 5 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("aws get-command-invocation failed");
    expect(r.stderr).toContain("InvocationDoesNotExist");
    // Asked at 0, 2 and 4 s (inside the grace), then at 6 s: over it.
    expect(r.polls).toBe(4);
    expect(r.clock).toBe(6);
    expect(r.seconds).toBeLessThan(10);
  });

  it("gives up at the deadline while the invocation stays Pending", () => {
    const r = run(shell, ["0 Pending|"], { pollSeconds: 5, deadlineSeconds: 60 });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("still Pending after 60s, command 0a1b2c3d-cmd");
    // One poll every 5 s from 0 to the deadline, and not one poll more.
    expect(r.polls).toBe(13);
    expect(r.clock).toBe(60);
    expect(r.seconds).toBeLessThan(10);
  });
});

describe("rendered apply script", () => {
  it.runIf(requireTools("rollout shellcheck", ["shellcheck"], false))("passes shellcheck as POSIX sh", () => {
    const check = spawnSync("shellcheck", ["-s", "sh", "-"], {
      input: renderApplyScript(),
      encoding: "utf8",
    });
    expect(check.status, check.stdout).toBe(0);
  });

  it("rejects timings it cannot honour", () => {
    expect(() => renderApplyScript({ ...FAST, deadlineSeconds: 0 })).toThrow(
      "ConfigRollout: timing.deadlineSeconds 0 is not valid",
    );
    expect(() => renderApplyScript({ ...FAST, pollSeconds: 1.5 })).toThrow(
      "ConfigRollout: timing.pollSeconds 1.5 is not valid",
    );
  });
});
