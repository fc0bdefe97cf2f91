/**
 * Soak benchmark: BENCH_SOAK_RUNS (default 500) sequential `microagent run --network isolated IMAGE --
 * true` through one runtime (the CLI's fast path, one round trip each). The runtime's RSS and open fd
 * count are sampled after a warm-up and every BENCH_SOAK_EVERY runs; growth and slope (least squares
 * over the samples) are reported against targets of <= 5 MiB and 0 fds, and the state directory's
 * files are compared with those after the warm-up: a run must leave nothing behind. The baseline is
 * the runtime's own RSS after the warm-up (growth_vs_start ratio). Prints one JSON object on stdout.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { cleanup, cli, loadAverage, log, median, stateDir } from "./lib.ts"

const runs = Number(process.env.BENCH_SOAK_RUNS ?? 500)
const every = Number(process.env.BENCH_SOAK_EVERY ?? Math.max(1, Math.floor(runs / 10)))
const image = process.env.BENCH_IMAGE ?? "microagent.local/busybox:latest"
const state = stateDir("soak")
const warmUp = 5

const runtimePid = () =>
  Number(NodeFs.readFileSync(NodePath.join(state, "run", "runtime.pid"), "utf8").split(" ")[0])

interface Sample {
  readonly run: number
  readonly rssKiB: number
  readonly fds: number
}

/** RSS of a V8 process moves with collections: the smallest of three readings 200 ms apart. */
const sample = async (pid: number, run: number): Promise<Sample> => {
  const readings: Array<number> = []
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 200))
    const status = NodeFs.readFileSync(`/proc/${pid}/status`, "utf8")
    readings.push(Number(/VmRSS:\s+(\d+)/.exec(status)![1]))
  }
  return { run, rssKiB: Math.min(...readings), fds: NodeFs.readdirSync(`/proc/${pid}/fd`).length }
}

/** Least-squares slope of y over x. */
const slope = (points: ReadonlyArray<readonly [number, number]>) => {
  const n = points.length
  const mx = points.reduce((s, [x]) => s + x, 0) / n
  const my = points.reduce((s, [, y]) => s + y, 0) / n
  const num = points.reduce((s, [x, y]) => s + (x - mx) * (y - my), 0)
  const den = points.reduce((s, [x]) => s + (x - mx) ** 2, 0)
  return den === 0 ? 0 : num / den
}

/**
 * Every file under the state directory except the runtime's log (which only grows) and the database
 * backups (written hourly by the clock, not by runs).
 */
const files = () =>
  new Set(
    NodeFs.readdirSync(state, { recursive: true, encoding: "utf8" }).filter((rel) =>
      rel !== NodePath.join("run", "runtime.log") && rel !== "backups"
      && !rel.startsWith(`backups${NodePath.sep}`)
    )
  )

/** Runs that failed with a retryable error (a guest that did not boot on a saturated host) and were retried. */
const retried: Array<string> = []

const runOnce = async (): Promise<number> => {
  const result = await cli(state, ["run", "--network", "isolated", "--memory", "256", image, "--", "true"])
  if (result.code === 75 && retried.length < 5) {
    retried.push(result.stderr.trim().split("\n").at(-1) ?? "")
    log("soak", `retrying a run that failed with a retryable error: ${retried.at(-1)}`)
    return runOnce()
  }
  if (result.code !== 0) throw new Error(`run exited ${result.code}: ${result.stderr}`)
  return result.ms
}

try {
  const loadBefore = loadAverage()
  for (let i = 0; i < warmUp; i++) await runOnce()
  const pid = runtimePid()
  const before = files()
  const samples: Array<Sample> = [await sample(pid, 0)]
  log("soak", `after ${warmUp} warm-up runs: rss ${samples[0]!.rssKiB} KiB, ${samples[0]!.fds} fds`)
  const times: Array<number> = []
  for (let i = 1; i <= runs; i++) {
    times.push(await runOnce())
    if (i % every === 0 || i === runs) {
      samples.push(await sample(pid, i))
      const last = samples.at(-1)!
      log(
        "soak",
        `${i}/${runs}: rss ${last.rssKiB} KiB, ${last.fds} fds, median run ${Math.round(median(times))} ms`
      )
    }
  }
  if (runtimePid() !== pid) throw new Error("the runtime changed during the soak")
  const after = files()
  const first = samples[0]!
  const last = samples.at(-1)!
  const growthMiB = (last.rssKiB - first.rssKiB) / 1024
  const result = {
    bench: "soak",
    load_average: { before: loadBefore, after: loadAverage() },
    runs,
    run_ms: {
      median: Math.round(median(times)),
      min: Math.round(Math.min(...times)),
      max: Math.round(Math.max(...times))
    },
    runtime_rss_kib: { start: first.rssKiB, end: last.rssKiB },
    runtime_fds: { start: first.fds, end: last.fds },
    rss_growth_mib: Number(growthMiB.toFixed(2)),
    rss_slope_kib_per_100_runs: Number((slope(samples.map((s) => [s.run, s.rssKiB])) * 100).toFixed(1)),
    fd_growth: last.fds - first.fds,
    fd_slope_per_100_runs: Number((slope(samples.map((s) => [s.run, s.fds])) * 100).toFixed(2)),
    rss_growth_vs_start: Number(((last.rssKiB - first.rssKiB) / first.rssKiB).toFixed(4)),
    target_rss_growth_mib: 5,
    target_fd_growth: 0,
    within_targets: growthMiB <= 5 && last.fds - first.fds <= 0,
    retried_runs: retried,
    files_left: [...after].filter((f) => !before.has(f)).sort(),
    files_gone: [...before].filter((f) => !after.has(f)).sort(),
    samples
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
} finally {
  cleanup(state)
}
