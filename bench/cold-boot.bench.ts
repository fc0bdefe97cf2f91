/**
 * Cold boot benchmark: `microagent run IMAGE -- true` (a fresh workspace and a fresh VM boot each
 * time; image, kernel and runtime already warm) with the default boot profile against the earlier
 * option set (`MICROAGENT_BOOT_PROFILE=compat`), interleaved A/B/B/A in the same run, each profile in
 * its own state directory and runtime. Then `perf boot` for each profile, interleaved the same way,
 * for agent-ready and the boot's phases. The host is shared, so the load average is sampled around
 * every pair. Targets: run ratio (fast/compat) <= 0.6, agent-ready median <= 1000 ms. Prints one JSON
 * object on stdout. BENCH_N sets the iterations (default 10), BENCH_NETWORK the network (default user).
 */
import { cleanup, cli, loadAverage, log, median, must, stateDir, summary } from "./lib.ts"

const iterations = Number(process.env.BENCH_N ?? 10)
const image = process.env.BENCH_IMAGE ?? "microagent.local/busybox:latest"
const network = process.env.BENCH_NETWORK ?? "user"
const profiles = ["fast", "compat"] as const
type Profile = (typeof profiles)[number]

const states = { fast: stateDir("cold-fast"), compat: stateDir("cold-compat") }
const env = (profile: Profile) => ({ MICROAGENT_BOOT_PROFILE: profile })

interface PerfRun {
  readonly agentReadyMs: number
  readonly phases?: Record<string, number>
}

const runOnce = async (profile: Profile) => {
  const run = await cli(
    states[profile],
    ["run", "--cold", "--network", network, image, "--", "true"],
    env(profile)
  )
  if (run.code !== 0) throw new Error(`${profile}: run exited ${run.code}: ${run.stderr}`)
  return run.ms
}

const perfOnce = async (profile: Profile): Promise<PerfRun> => {
  const out = await must(
    states[profile],
    ["perf", "boot", "--runs", "1", "--network", network, image],
    env(profile)
  )
  const [run] = JSON.parse(out.stdout).runs
  if (!run.ok) throw new Error(`${profile}: perf boot failed: ${run.error}`)
  return run
}

/** A, B on even rounds and B, A on odd ones, so drift in the host's load hits both alike. */
const pairOrder = (i: number): ReadonlyArray<Profile> => (i % 2 === 0 ? profiles : [...profiles].reverse())

const medians = (runs: ReadonlyArray<PerfRun>) => {
  const names = Object.keys(runs[0]?.phases ?? {})
  return Object.fromEntries(names.map((name) => [name, median(runs.map((r) => r.phases?.[name] ?? NaN))]))
}

try {
  const loadBefore = loadAverage()
  // Warm-up: pulls the image, installs the kernel, builds the initramfs and starts each runtime.
  for (const profile of profiles) {
    log("cold-boot", `warm-up ${profile}: ${(await runOnce(profile)).toFixed(0)} ms`)
  }
  const runMs: Record<Profile, Array<number>> = { fast: [], compat: [] }
  const loads: Array<number> = []
  for (let i = 0; i < iterations; i++) {
    for (const profile of pairOrder(i)) runMs[profile].push(await runOnce(profile))
    loads.push(loadAverage()[0]!)
    log(
      "cold-boot",
      `run #${i + 1}: fast ${runMs.fast.at(-1)!.toFixed(0)} ms, compat ${
        runMs.compat.at(-1)!.toFixed(0)
      } ms, `
        + `load ${loads.at(-1)}`
    )
  }
  const perf: Record<Profile, Array<PerfRun>> = { fast: [], compat: [] }
  for (let i = 0; i < iterations; i++) {
    for (const profile of pairOrder(i)) perf[profile].push(await perfOnce(profile))
    loads.push(loadAverage()[0]!)
    log(
      "cold-boot",
      `perf #${i + 1}: agent ready fast ${perf.fast.at(-1)!.agentReadyMs} ms, `
        + `compat ${perf.compat.at(-1)!.agentReadyMs} ms, load ${loads.at(-1)}`
    )
  }
  const agentReady = (profile: Profile) => perf[profile].map((r) => r.agentReadyMs)
  const result = {
    bench: "cold-boot",
    iterations,
    image,
    network,
    load_average: { before: loadBefore, after: loadAverage(), one_minute_samples: loads },
    run_ms: { fast: summary(runMs.fast), compat: summary(runMs.compat) },
    ratio: Number((median(runMs.fast) / median(runMs.compat)).toFixed(3)),
    target_ratio: 0.6,
    // `perf boot`: ms since `run` began until the agent answered (image ensured, rootfs made, VM booted).
    agent_ready_ms: { fast: summary(agentReady("fast")), compat: summary(agentReady("compat")) },
    agent_ready_ratio: Number((median(agentReady("fast")) / median(agentReady("compat"))).toFixed(3)),
    target_agent_ready_ms: 1000,
    phases_median_ms: { fast: medians(perf.fast), compat: medians(perf.compat) }
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
} finally {
  for (const profile of profiles) cleanup(states[profile])
}
