import { configDefaults, defineConfig } from "vitest/config";

/**
 * The in-process tiers: unit, render, stack, rollout, policy, security and CI. None of them
 * mocks a module or changes process-wide state other than Pulumi's mocks, which every stack
 * build installs afresh, so their files share workers (`isolate: false`): @pulumi/* and src/
 * load once per worker, and `builtStack` (lab/lib/stack-mocks.ts) builds each stack shape at
 * most once per worker for every file that only reads it.
 */
const IN_PROCESS = [
  "tests/*.test.ts",
  "tests/render/**/*.test.ts",
  "tests/stack/**/*.test.ts",
  "tests/policy/**/*.test.ts",
  "tests/security/**/*.test.ts",
  "tests/ci/**/*.test.ts",
];

export default defineConfig({
  test: {
    projects: [
      {
        extends: true,
        test: {
          name: "in-process",
          include: IN_PROCESS,
          isolate: false,
          // Both cores, also on a 2-core machine (vitest's default leaves one free).
          maxWorkers: 2,
          // Its own group: vitest runs a group's projects side by side only with one worker count.
          sequence: { groupOrder: 0 },
        },
      },
      {
        // Everything else (tests/real, tests/lab, tests/agent, tests/app), exactly as before:
        // one file per fresh worker, vitest's default worker count, after the in-process group.
        extends: true,
        test: {
          name: "real",
          include: configDefaults.include,
          exclude: [...configDefaults.exclude, ...IN_PROCESS],
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
