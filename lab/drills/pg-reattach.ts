/**
 * Drill: the old primary re-attached as a standby. Drill 7's runbook did it (`db-reattach`:
 * pg_rewind on 12+, a fresh pg_basebackup where the server has no pg_rewind, e.g. the lab's
 * Postgres 11); this reports that step and confirms the node streams synchronously now.
 */
import { waitFor } from "../lib/bringup.js";
import { drill } from "./common.js";
import { dbState, streams } from "./db-common.js";
import { dbHealthy } from "./db-primary-loss.js";

const OLD_PRIMARY = "db-a";
const NEW_PRIMARY = "db-b";

export const pgReattach = drill(
  "9",
  `old primary ${OLD_PRIMARY} re-attached`,
  60_000,
  async (lab, report, section) => {
    const step = dbState.reattach;
    const method = /via (\S+)/.exec(step?.stdout ?? "")?.[1];
    await report.check(section, `drill 7's runbook re-attached ${OLD_PRIMARY}`, () => {
      if (step?.status !== 0)
        throw new Error(`no successful db-reattach step recorded: ${step?.stderr ?? ""}`);
      const expected = lab.t.postgres.version >= 12 ? "pg_rewind" : "pg_basebackup";
      if (method !== expected)
        throw new Error(
          `re-attached via ${method}, expected ${expected} for postgres ${lab.t.postgres.version}; db-reattach said:\n${step.stderr.trim().split("\n").slice(-15).join("\n")}`,
        );
      return `${step.stdout.trim()} in ${step.seconds.toFixed(2)} s${expected === "pg_basebackup" ? " (no pg_rewind for 11 here)" : ""}`;
    });
    if (step)
      report.figure(
        section,
        `re-attach of ${OLD_PRIMARY} via ${method ?? "?"}`,
        Math.round(step.seconds * 100) / 100,
        "s",
      );
    const mode = lab.t.postgres.synchronous ? "sync" : "async";
    await report.check(
      section,
      `${NEW_PRIMARY}'s pg_stat_replication shows ${OLD_PRIMARY} streaming ${mode}`,
      () => waitFor("streaming", 20_000, () => streams(lab, NEW_PRIMARY, OLD_PRIMARY, mode), 300),
    );
  },
  dbHealthy,
);
