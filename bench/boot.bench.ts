/**
 * Boot benchmark: the whole `microagent run --network isolated IMAGE -- true` CLI path (a fresh CLI
 * process, the runtime already up: create, boot, exec, teardown) against raw QEMU booting the same
 * kernel, initramfs and rootfs with the very arguments the CLI's VMM got, told to power off as soon as
 * its agent answers. Interleaved in the same run, after one warm-up of each (the warm-up CLI run also
 * starts the runtime: reported as `cold_first_run_ms`). Then `perf boot` says where the CLI path's time
 * goes. Target ratio <= 1.25. Prints one JSON object on stdout. BENCH_N sets the iterations (default 5).
 */
import {
  cleanup,
  cli,
  loadAverage,
  log,
  median,
  must,
  probeRawQemu,
  rawBoot,
  rawInstance,
  stateDir,
  summary
} from "./lib.ts"

const iterations = Number(process.env.BENCH_N ?? 5)
const image = process.env.BENCH_IMAGE ?? "microagent.local/busybox:latest"
const state = stateDir("boot")

try {
  const loadBefore = loadAverage()
  const raw = await probeRawQemu(state, ["--network", "isolated", "--image", image])
  const instance = rawInstance(state, raw, "0")
  const cliTimes: Array<number> = []
  const rawTimes: Array<number> = []
  let cold = 0
  for (let i = -1; i < iterations; i++) {
    const run = await cli(state, ["run", "--cold", "--network", "isolated", image, "--", "true"])
    if (run.code !== 0) throw new Error(`run exited ${run.code}: ${run.stderr}`)
    instance.reset()
    const rawMs = await rawBoot(instance)
    if (i < 0) cold = run.ms
    else {
      cliTimes.push(run.ms)
      rawTimes.push(rawMs)
    }
    log(
      "boot",
      `${i < 0 ? "warm-up" : `#${i + 1}`}: cli run ${run.ms.toFixed(0)} ms, raw ${rawMs.toFixed(0)} ms`
    )
  }
  const phases = JSON.parse(
    (await must(state, ["perf", "boot", "--runs", "3", "--network", "isolated", image])).stdout
  ).summary
  const result = {
    bench: "boot",
    iterations,
    image,
    load_average: { before: loadBefore, after: loadAverage() },
    cli_run_ms: summary(cliTimes),
    raw_qemu_ms: summary(rawTimes),
    ratio: Number((median(cliTimes) / median(rawTimes)).toFixed(3)),
    target_ratio: 1.25,
    cold_first_run_ms: Math.round(cold),
    // Where the CLI path's time goes: medians of the edges, ms since `run` began (inside the runtime).
    phases_median_ms: Object.fromEntries(
      Object.entries(phases).filter(([, v]) => typeof v === "object").map((
        [k, v]
      ) => [k, (v as { median: number }).median])
    )
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
} finally {
  cleanup(state)
}
