import { defineConfig } from "vitest/config"
import { LongestFirst } from "./test/support/sequencer.ts"

export default defineConfig({
  test: {
    globalSetup: ["test/support/globalSetup.ts"],
    // Longest files first (test/durations.json), so that neither lane runs a long file alone at the end.
    sequence: { sequencer: LongestFirst },
    // The real tier (the only project on forks) runs two files at a time: a TCG guest mostly waits once
    // booted, so two lanes fill both cores. Each file has its own state directory, and its checks name
    // only the VMMs under it.
    poolOptions: { forks: { minForks: 1, maxForks: 2 } },
    projects: [
      {
        test: {
          name: "fast",
          include: ["test/**/*.test.ts"],
          exclude: ["test/e2e/**"],
          // Tests and clean-up hooks run real CLI processes (a Node start each), which take several
          // times longer while the real tier's two guests hold both cores: a bound, not a speed check.
          testTimeout: 120_000,
          hookTimeout: 120_000
        }
      },
      {
        test: {
          name: "real",
          include: ["test/e2e/**/*.test.ts"],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          pool: "forks",
          // Workspaces that name no vCPU count get one: an idle guest of one vCPU runs tickless and
          // costs the host a fifth of one of two (docs/kernels.md), and two test files share two cores.
          // Guests of two vCPUs are booted where a test asks for them, and 24 times by
          // boot-reliability.test.ts.
          env: { MICROAGENT_DEFAULT_CPUS: "1" }
        }
      }
    ]
  }
})
