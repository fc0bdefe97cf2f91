/**
 * Parallel boot benchmark: BENCH_PARALLEL (default 8) `microagent run --network isolated IMAGE -- true`
 * CLI processes at once (one runtime serving them all) against as many raw QEMU boots at once with
 * the CLI VMM's own arguments, each on its own copy of the same rootfs, powered off as soon as its agent
 * answers. Throughput = boots per second of wall time; target: CLI >= 80% of raw. BENCH_N rounds of
 * each, interleaved, after a warm-up CLI run that starts the runtime. Prints one JSON object on stdout.
 */
import {
  cleanup,
  cli,
  loadAverage,
  log,
  median,
  probeRawQemu,
  rawBoot,
  rawInstance,
  stateDir
} from "./lib.ts"

const parallel = Number(process.env.BENCH_PARALLEL ?? 8)
const rounds = Number(process.env.BENCH_N ?? 2)
const image = process.env.BENCH_IMAGE ?? "microagent.local/busybox:latest"
const state = stateDir("parallel")

try {
  const loadBefore = loadAverage()
  const raw = await probeRawQemu(state, ["--network", "isolated", "--image", image])
  const instances = Array.from({ length: parallel }, (_, i) => rawInstance(state, raw, String(i)))
  const warm = await cli(state, ["run", "--cold", "--network", "isolated", image, "--", "true"])
  if (warm.code !== 0) throw new Error(`run exited ${warm.code}: ${warm.stderr}`)
  const cliWall: Array<number> = []
  const rawWall: Array<number> = []
  for (let round = 0; round < rounds; round++) {
    let started = performance.now()
    const runs = await Promise.all(
      Array.from(
        { length: parallel },
        () => cli(state, ["run", "--cold", "--network", "isolated", image, "--", "true"])
      )
    )
    cliWall.push(performance.now() - started)
    const failed = runs.filter((r) => r.code !== 0)
    if (failed.length > 0) throw new Error(`${failed.length} runs failed: ${failed[0]!.stderr}`)
    for (const instance of instances) instance.reset()
    started = performance.now()
    await Promise.all(instances.map(rawBoot))
    rawWall.push(performance.now() - started)
    log(
      "parallel",
      `round ${round + 1}: ${parallel} cli runs ${cliWall.at(-1)!.toFixed(0)} ms, raw ${
        rawWall.at(-1)!.toFixed(0)
      } ms`
    )
  }
  const cliThroughput = parallel / (median(cliWall) / 1000)
  const rawThroughput = parallel / (median(rawWall) / 1000)
  const result = {
    bench: "parallel",
    parallel,
    rounds,
    load_average: { before: loadBefore, after: loadAverage() },
    cli_wall_ms: cliWall.map(Math.round),
    raw_wall_ms: rawWall.map(Math.round),
    cli_boots_per_s: Number(cliThroughput.toFixed(3)),
    raw_boots_per_s: Number(rawThroughput.toFixed(3)),
    throughput_ratio: Number((cliThroughput / rawThroughput).toFixed(3)),
    target_throughput_ratio: 0.8
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
} finally {
  cleanup(state)
}
