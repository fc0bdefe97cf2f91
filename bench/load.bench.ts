/**
 * Load benchmark: BENCH_LOAD_EXECS (default 64) concurrent `microagent exec W -- sh -c 'echo N'` spread
 * over BENCH_LOAD_WORKSPACES (default 4) running workspaces, each as its own CLI process (the fast
 * path) against one runtime. Every result is checked (exit 0, stdout N). Latency p50/p99 are printed
 * against the baseline of one exec at a time on the same workspaces, measured in the same run
 * (p50_vs_sequential ratio). Prints one JSON object on stdout.
 */
import { cleanup, cli, loadAverage, log, median, must, percentile, stateDir } from "./lib.ts"

const execs = Number(process.env.BENCH_LOAD_EXECS ?? 64)
const workspaces = Number(process.env.BENCH_LOAD_WORKSPACES ?? 4)
const image = process.env.BENCH_IMAGE ?? "microagent.local/busybox:latest"
const state = stateDir("load")
const names = Array.from({ length: workspaces }, (_, i) => `load${i}`)

const exec = async (i: number) => {
  const name = names[i % workspaces]!
  const result = await cli(state, ["exec", name, "--", "sh", "-c", `echo ${i}`])
  const parsed = result.code === 0 ? JSON.parse(result.stdout) : undefined
  const ok = parsed?.result?.exitCode === 0 && parsed.result.stdout === `${i}\n`
  return {
    ok,
    ms: result.ms,
    detail: ok ? "" : `${name} #${i}: exit ${result.code} ${result.stdout}${result.stderr}`
  }
}

try {
  const loadBefore = loadAverage()
  for (const name of names) {
    await must(state, ["create", "--network", "isolated", "--memory", "256", "--image", image, name])
    await must(state, ["start", name])
  }
  const sequential: Array<number> = []
  for (let i = 0; i < workspaces * 4; i++) {
    const one = await exec(i)
    if (!one.ok) throw new Error(one.detail)
    sequential.push(one.ms)
  }
  const started = performance.now()
  const results = await Promise.all(Array.from({ length: execs }, (_, i) => exec(i)))
  const wallMs = performance.now() - started
  const failed = results.filter((r) => !r.ok)
  const latencies = results.map((r) => r.ms)
  log(
    "load",
    `${execs} execs over ${workspaces} workspaces in ${Math.round(wallMs)} ms, ${failed.length} wrong`
  )
  const p50 = percentile(latencies, 50)
  const result = {
    bench: "load",
    load_average: { before: loadBefore, after: loadAverage() },
    execs,
    workspaces,
    all_correct: failed.length === 0,
    wrong: failed.map((r) => r.detail).slice(0, 5),
    latency_ms: {
      p50: Math.round(p50),
      p99: Math.round(percentile(latencies, 99)),
      max: Math.round(Math.max(...latencies))
    },
    wall_ms: Math.round(wallMs),
    execs_per_second: Number((execs / (wallMs / 1000)).toFixed(2)),
    sequential_median_ms: Math.round(median(sequential)),
    p50_vs_sequential: Number((p50 / median(sequential)).toFixed(2))
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
} finally {
  for (const name of names) await cli(state, ["delete", "--force", name])
  cleanup(state)
}
