/**
 * The load generator the drills run under: a loop in the client namespace that fetches a URL
 * through one floating IP with curl, one request at a time, logging `code epoch-ms duration-s curl-exit`
 * per request. `stop()` ends it and summarises what the clients saw.
 */
import type { ChildProcess } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CLIENT_DIR, clientCommand, type Lab } from "./lab.js";

export interface LoadOptions {
  /** Name of the run; its log is load-<name>.log in the client directory. */
  readonly name: string;
  /** Floating IP the requests go to. */
  readonly fip: string;
  /** Path on the domain. @default "/simple/" */
  readonly path?: string;
  /** Pause between requests. @default 50 ms */
  readonly pauseMs?: number;
  /** Per-request timeout. @default 5 s */
  readonly requestTimeoutSeconds?: number;
}

export interface LoadSample {
  readonly code: number;
  /** Epoch milliseconds when the request ended. */
  readonly at: number;
  readonly seconds: number;
  /** curl's exit status: 0, or why there was no answer (28 = timed out, 7 = refused, …). */
  readonly curlExit: number;
}

export interface LoadStats {
  readonly requests: number;
  readonly failed: number;
  /** Longest run of consecutive failures, first failure to next success, in seconds. */
  readonly longestOutageSeconds: number;
  readonly samples: readonly LoadSample[];
}

export interface LoadHandle {
  /** Samples so far (the log is read each call). */
  samples(): LoadSample[];
  stop(): Promise<LoadStats>;
}

const LOOP = `
while [ ! -e "$STOP" ]; do
  out=$(curl -s -o /dev/null --max-time "$TIMEOUT" --cacert "$CA" --resolve "$DOMAIN:443:$FIP" \\
    -w '%{http_code} %{time_total}' "https://$DOMAIN$URLPATH"); rc=$?
  set -- $out
  echo "\${1:-000} $(date +%s%3N) \${2:-0} $rc" >>"$LOG"
  sleep "$PAUSE"
done
`;

export function summarise(samples: readonly LoadSample[]): LoadStats {
  let longest = 0;
  let outageStart: number | undefined;
  for (const s of samples) {
    const ok = s.code >= 200 && s.code < 400;
    if (!ok && outageStart === undefined) outageStart = s.at - s.seconds * 1000;
    if (ok && outageStart !== undefined) {
      longest = Math.max(longest, (s.at - outageStart) / 1000);
      outageStart = undefined;
    }
  }
  const last = samples.at(-1);
  if (outageStart !== undefined && last) longest = Math.max(longest, (last.at - outageStart) / 1000);
  return {
    requests: samples.length,
    failed: samples.filter((s) => s.code < 200 || s.code >= 400).length,
    longestOutageSeconds: Math.round(longest * 100) / 100,
    samples,
  };
}

export function startLoad(lab: Lab, opts: LoadOptions): LoadHandle {
  const hostLog = join(lab.dirs.client, `load-${opts.name}.log`);
  const hostStop = join(lab.dirs.client, `load-${opts.name}.stop`);
  rmSync(hostLog, { force: true });
  rmSync(hostStop, { force: true });
  const vars = {
    LOG: `${CLIENT_DIR}/load-${opts.name}.log`,
    CA: `${CLIENT_DIR}/ca.pem`,
    STOP: `${CLIENT_DIR}/load-${opts.name}.stop`,
    DOMAIN: lab.t.domain,
    FIP: opts.fip,
    URLPATH: opts.path ?? "/simple/",
    PAUSE: String((opts.pauseMs ?? 50) / 1000),
    TIMEOUT: String(opts.requestTimeoutSeconds ?? 5),
  };
  const child: ChildProcess = lab.client.spawn(
    clientCommand([...Object.entries(vars).map(([k, v]) => `${k}=${v}`), "sh", "-c", LOOP]),
  );
  child.stdout?.resume();
  child.stderr?.resume();
  const samples = (): LoadSample[] =>
    existsSync(hostLog)
      ? readFileSync(hostLog, "utf8")
          .trim()
          .split("\n")
          .filter((l) => l !== "")
          .map((l) => l.split(" "))
          .map(([code, at, seconds, curlExit]) => ({
            code: Number(code),
            at: Number(at),
            seconds: Number(seconds),
            curlExit: Number(curlExit ?? 0),
          }))
      : [];
  const stop = async (): Promise<LoadStats> => {
    await new Promise<void>((resolve) => {
      if (child.exitCode !== null) return resolve();
      const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
      child.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
      writeFileSync(hostStop, "");
    });
    return summarise(samples());
  };
  return { samples, stop };
}
