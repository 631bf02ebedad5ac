/** The whole drill run's duration, measured from the first drill's start. */
import { cpus } from "node:os";
import type { Drill } from "./index.js";

let startedAt = 0;

export const markStart: Drill = {
  id: "start",
  title: "start of the drill run",
  async run() {
    startedAt = Date.now();
  },
};

export const drillRunTotal: Drill = {
  id: "total",
  title: "duration of the drill run",
  async run(_lab, report) {
    const s = Math.round((Date.now() - startedAt) / 100) / 10;
    report.figure("drills", `full drill run on ${cpus().length} cores [goal <= 300 s]`, s, "s");
  },
};
