/**
 * Exec and CLI start-up benchmark on a running QEMU workspace. Prints one JSON object on stdout:
 * - (b) `exec true` round trip through the library (`MicroagentClient.layerRuntime`, the state
 *   directory's runtime), p50 over BENCH_EXECS calls (default 200); target p50 <= 5 ms under TCG;
 *   against the same client's `version` round trip (RPC transport only) in the same run (ratio);
 * - (e) a fresh CLI process: `microagent --version` against `node -e 0` (target ratio <= 1.3), and
 *   `microagent exec W -- true` (the fast path; target <= 300 ms) against the full CLI
 *   (MICROAGENT_NO_FAST_PATH=1), medians of BENCH_N spawns (default 10);
 * - the full CLI's start-up with V8's code cache against the same without it (MICROAGENT_CODE_CACHE=0):
 *   `microagent list`, median wall time and CPU time (user + system) of BENCH_N spawns each.
 */
import { Effect, Layer } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { MicroagentClient } from "../src/rpc/Client.ts"
import { bin, cleanup, cli, loadAverage, log, median, must, percentile, stateDir } from "./lib.ts"

const execs = Number(process.env.BENCH_EXECS ?? 200)
const spawns = Number(process.env.BENCH_N ?? 10)
const state = stateDir("exec")
const round = (x: number, digits = 2) => Number(x.toFixed(digits))

const spawnMs = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  new Promise<number>((resolve, reject) => {
    const started = performance.now()
    const child = NodeChild.spawn(process.execPath, [...args], {
      env: { ...process.env, MICROAGENT_HOME: state, MICROAGENT_OUTPUT: "json", ...env },
      stdio: "ignore"
    })
    child.on(
      "close",
      (code) =>
        code === 0
          ? resolve(performance.now() - started)
          : reject(new Error(`${args.join(" ")} exited ${code}`))
    )
  })

const times = async (n: number, f: () => Promise<number>) => {
  const xs: Array<number> = []
  for (let i = 0; i < n; i++) xs.push(await f())
  return xs
}

try {
  const loadBefore = loadAverage()
  await must(state, ["create", "--network", "isolated", "w"])
  await must(state, ["start", "w"])

  const library = await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const context = yield* Layer.build(MicroagentClient.layerRuntime(state))
    const client = context.unsafeMap.get(MicroagentClient.key) as MicroagentClient["Type"]
    const measure = (n: number, call: Effect.Effect<unknown, unknown>) =>
      Effect.gen(function*() {
        const xs: Array<number> = []
        for (let i = 0; i < n; i++) {
          const started = performance.now()
          yield* call
          xs.push(performance.now() - started)
        }
        return xs
      })
    const exec = client.exec({ name: "w", argv: ["true"] })
    yield* measure(10, exec)
    const execTimes = yield* measure(execs, exec)
    const versionTimes = yield* measure(execs, client.version())
    return { execTimes, versionTimes }
  })))
  log("exec", `library exec p50 ${median(library.execTimes).toFixed(2)} ms`)

  const node = await times(spawns, () => spawnMs(["-e", "0"]))
  const version = await times(spawns, () => spawnMs([bin, "--version"]))
  const fast = await times(spawns, () => spawnMs([bin, "exec", "w", "--", "true"]))
  const full = await times(
    spawns,
    () => spawnMs([bin, "exec", "w", "--", "true"], { MICROAGENT_NO_FAST_PATH: "1" })
  )
  // The full CLI with and without its code cache, interleaved; the first run writes the cache.
  // Each process reports its own CPU time as it exits (a preloaded script), in a file of its own.
  const preload = NodePath.join(state, "cpu-report.cjs")
  NodeFs.writeFileSync(
    preload,
    "process.on('exit', () => { const u = process.cpuUsage(); require('fs').writeFileSync(process.env.BENCH_CPU_FILE, String((u.user + u.system) / 1000)) })\n"
  )
  const measured = async (env: Record<string, string>) => {
    const file = NodePath.join(state, "cpu-report.txt")
    const ms = await spawnMs([bin, "list"], {
      ...env,
      NODE_OPTIONS: `--require ${preload}`,
      BENCH_CPU_FILE: file
    })
    return { ms, cpu: Number(NodeFs.readFileSync(file, "utf8")) }
  }
  const cached: Array<number> = []
  const uncached: Array<number> = []
  const cachedCpu: Array<number> = []
  const uncachedCpu: Array<number> = []
  await measured({})
  for (let i = 0; i < spawns; i++) {
    const withCache = await measured({})
    const without = await measured({ MICROAGENT_CODE_CACHE: "0" })
    cached.push(withCache.ms)
    cachedCpu.push(withCache.cpu)
    uncached.push(without.ms)
    uncachedCpu.push(without.cpu)
  }
  const check = await cli(state, ["exec", "w", "--", "true"])
  if (check.code !== 0) throw new Error(`exec failed: ${check.stderr}`)

  const result = {
    bench: "exec",
    load_average: { before: loadBefore, after: loadAverage() },
    library_exec_true_ms: {
      p50: round(median(library.execTimes)),
      p95: round(percentile(library.execTimes, 95)),
      samples: library.execTimes.length
    },
    library_version_rpc_ms: { p50: round(median(library.versionTimes)) },
    exec_vs_rpc_ratio: round(median(library.execTimes) / median(library.versionTimes)),
    target_library_exec_p50_ms: 5,
    node_e0_ms: round(median(node), 1),
    cli_version_ms: round(median(version), 1),
    version_vs_node_ratio: round(median(version) / median(node)),
    target_version_ratio: 1.3,
    cli_exec_fast_ms: round(median(fast), 1),
    cli_exec_full_ms: round(median(full), 1),
    fast_vs_full_ratio: round(median(fast) / median(full)),
    target_cli_exec_ms: 300,
    cli_list_cached_ms: round(median(cached), 1),
    cli_list_uncached_ms: round(median(uncached), 1),
    cli_list_cached_cpu_ms: round(median(cachedCpu), 1),
    cli_list_uncached_cpu_ms: round(median(uncachedCpu), 1),
    code_cache_cpu_ratio: round(median(cachedCpu) / median(uncachedCpu))
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
} finally {
  cleanup(state)
}
