/**
 * Footprint benchmark: host memory the runtime adds per extra running workspace, beyond its VMM.
 * Runtime RSS (and PSS) with 1 and with 5 workspaces running, each having run a few execs (so its
 * guest connection is open); (rss5 - rss1) / 4 against a target of <= 8 MiB, and against the VMM's own
 * RSS in the same run (ratio); the runtime's RSS with one workspace against <= 120 MiB. Prints one JSON
 * object on stdout.
 */
import { cleanup, loadAverage, log, must, stateDir } from "./lib.ts"

const state = stateDir("footprint")
const memoryMiB = process.env.BENCH_MEMORY ?? "256"

const footprint = async () => JSON.parse((await must(state, ["perf", "footprint"])).stdout)

const bringUp = async (name: string) => {
  await must(state, ["create", "--network", "isolated", "--memory", memoryMiB, name])
  await must(state, ["start", name])
  for (let i = 0; i < 3; i++) await must(state, ["exec", name, "--", "true"])
}

/**
 * RSS of a V8 process moves with garbage collection and with memory returned to the system: the
 * smallest of five samples a second apart (what stays resident), not one snapshot.
 */
const sample = async () => {
  const samples = []
  for (let i = 0; i < 5; i++) {
    await new Promise((resolve) => setTimeout(resolve, 1000))
    samples.push(await footprint())
  }
  samples.sort((a, b) => a.runtime.rssKiB - b.runtime.rssKiB)
  return samples[0]
}

try {
  const loadBefore = loadAverage()
  // A first workspace up and gone, so that both samples come after the same code has run.
  await bringUp("w0")
  await must(state, ["delete", "--force", "w0"])
  await bringUp("w1")
  const one = await sample()
  for (const name of ["w2", "w3", "w4", "w5"]) await bringUp(name)
  const five = await sample()
  if (five.workspaces.length !== 5) {
    throw new Error(`expected 5 running workspaces, got ${five.workspaces.length}`)
  }
  const perExtraKiB = (five.runtime.rssKiB - one.runtime.rssKiB) / 4
  const vmmRssKiB = five.workspaces.reduce((sum: number, ws: { vmm: { rssKiB: number } }) =>
    sum + ws.vmm.rssKiB, 0) / 5
  log("footprint", `runtime rss ${one.runtime.rssKiB} KiB with 1, ${five.runtime.rssKiB} KiB with 5`)
  const result = {
    bench: "footprint",
    load_average: { before: loadBefore, after: loadAverage() },
    guest_memory_mib: Number(memoryMiB),
    runtime_rss_kib: { one: one.runtime.rssKiB, five: five.runtime.rssKiB },
    // The runtime's own resident memory with one idle workspace, against a target of <= 120 MiB.
    runtime_rss_mib_one_workspace: Number((one.runtime.rssKiB / 1024).toFixed(1)),
    target_runtime_rss_mib: 120,
    runtime_rss_vs_target: Number((one.runtime.rssKiB / 1024 / 120).toFixed(3)),
    runtime_pss_kib: { one: one.runtime.pssKiB, five: five.runtime.pssKiB },
    runtime_heap_bytes: { one: one.runtime.heapUsedBytes, five: five.runtime.heapUsedBytes },
    per_extra_workspace_mib: Number((perExtraKiB / 1024).toFixed(2)),
    per_extra_workspace_heap_mib: Number(
      ((five.runtime.heapUsedBytes - one.runtime.heapUsedBytes) / 4 / (1024 * 1024)).toFixed(2)
    ),
    target_per_extra_mib: 8,
    vmm_rss_mib: Number((vmmRssKiB / 1024).toFixed(1)),
    per_extra_vs_vmm_ratio: Number((perExtraKiB / vmmRssKiB).toFixed(3)),
    rootfs_allocated_vs_apparent: five.workspaces.map((
      ws: { rootfs: { allocatedBytes: number; apparentBytes: number } }
    ) => Number((ws.rootfs.allocatedBytes / ws.rootfs.apparentBytes).toFixed(4)))
  }
  process.stdout.write(`${JSON.stringify(result)}\n`)
} finally {
  cleanup(state)
}
