/**
 * Failover drills run after the end-to-end checks, on the same lab, under load (see load.ts).
 * Each records its checks and figures (failover seconds, failed requests, committed rows lost)
 * in the report.
 */
import type { Lab } from "../lib/lab.js";
import type { Report } from "../lib/report.js";
import { appLoss } from "./app-loss.js";
import { appRuntimes } from "./app-runtimes.js";
import { bothDbLost, packageFilesLost, pointInTime } from "./backups.js";
import { balancerCrash } from "./balancer-crash.js";
import { balancerStop } from "./balancer-stop.js";
import { dbPrimaryLoss } from "./db-primary-loss.js";
import {
  dbVolumeFull,
  expiredCertificateRollout,
  standbyStopsReplaying,
  standbyStopsStreaming,
} from "./health-faults.js";
import { heartbeatPartition } from "./heartbeat-partition.js";
import { nginxDeath } from "./nginx-death.js";
import { pgReattach } from "./pg-reattach.js";
import { reboots } from "./reboots.js";
import { supervision } from "./supervision.js";
import { syncStandbyDown } from "./sync-standby-down.js";
import { drillRunTotal, markStart } from "./total.js";
import { uploadBackendLoss } from "./upload-backend-loss.js";

export interface Drill {
  readonly id: string;
  readonly title: string;
  run(lab: Lab, report: Report): Promise<void>;
}

/** The drills `npm run lab` executes, in order (9 needs 7's re-attach; 8 runs on 7's new pair). */
export const drills: readonly Drill[] = [
  markStart,
  balancerCrash,
  balancerStop,
  heartbeatPartition,
  nginxDeath,
  appLoss,
  uploadBackendLoss,
  dbPrimaryLoss,
  syncStandbyDown,
  pgReattach,
  supervision,
  appRuntimes,
  reboots,
  pointInTime,
  packageFilesLost,
  bothDbLost,
  dbVolumeFull,
  standbyStopsStreaming,
  expiredCertificateRollout,
  standbyStopsReplaying,
  drillRunTotal,
];
