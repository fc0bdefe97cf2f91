/**
 * Warm start, snapshot and fork benchmark (issue 14's figures). Prints one JSON object on stdout:
 *
 * - `run IMAGE -- true` warm (a template restored) against `run --cold IMAGE -- true`, interleaved in
 *   the same run after one warm-up run that builds the template. Target ratio <= 0.25 (goal 0.15).
 * - `snapshot create` of a running 512 MiB guest against a cold `start` of the same shape: target
 *   <= 0.5; the snapshot's size on disk (sparse: untouched pages are not stored).
 * - `fork --count 8` of that running workspace: its wall time against one restore of the same capture
 *   (`create --from-snapshot` + `start`), target <= 2; each idle child's host PSS, target <= 48 MiB.
 *
 * Default network (egress mediation) for the runs; `--egress off` for the workspace that is forked.
 * BENCH_N sets the run pairs (default 6); BENCH_CPUS the vCPUs of every workspace (default: the
 * runtime's, 2 unless MICROAGENT_DEFAULT_CPUS says): a guest of one vCPU idles tickless, of two on a
 * periodic tick (docs/kernels.md), which matters to eight idle children.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { cleanup, loadAverage, log, must, stateDir, summary } from "./lib.ts"

const pairs = Number(process.env.BENCH_N ?? 6)
const image = process.env.BENCH_IMAGE ?? "microagent.local/busybox:latest"
const cpus = process.env.BENCH_CPUS === undefined ? [] : ["--cpus", process.env.BENCH_CPUS]

const pssKiB = (pid: number): number | undefined => {
  try {
    const text = NodeFs.readFileSync(`/proc/${pid}/smaps_rollup`, "utf8")
    const match = /^Pss:\s+(\d+) kB/m.exec(text)
    return match === null ? undefined : Number(match[1])
  } catch {
    return undefined
  }
}

const vmmPid = async (state: string, name: string): Promise<number> =>
  JSON.parse((await must(state, ["inspect", name, "--json"])).stdout).workspace.vm.pid

const main = async () => {
  const state = stateDir("warm")
  try {
    log("warm", "warm-up: the first run builds the template")
    const first = await must(state, ["run", ...cpus, image, "--", "true"])
    const warm: Array<number> = []
    const cold: Array<number> = []
    for (let i = 0; i < pairs; i++) {
      const order = i % 2 === 0 ? ["warm", "cold"] : ["cold", "warm"]
      for (const kind of order) {
        const run = await must(state, [
          "run",
          ...cpus,
          ...(kind === "cold" ? ["--cold"] : []),
          image,
          "--",
          "true"
        ])
        ;(kind === "warm" ? warm : cold).push(run.ms)
      }
      log("warm", `pair ${i + 1}: warm ${warm.at(-1)} ms, cold ${cold.at(-1)} ms`)
    }

    // A running workspace (warm-started itself) to capture and fork.
    await must(state, ["create", ...cpus, "--image", image, "--egress", "off", "parent"])
    await must(state, ["start", "parent"])
    await must(state, ["exec", "parent", "--", "true"])
    const snapshotMs: Array<number> = []
    let snapshot: { allocatedBytes: number; memoryBytes?: number; stateBytes?: number } | undefined
    for (let i = 0; i < 3; i++) {
      const made = await must(state, ["snapshot", "create", "parent", "--tag", `s${i}`, "--json"])
      snapshotMs.push(made.ms)
      snapshot = JSON.parse(made.stdout)
    }
    const coldStartMs: Array<number> = []
    for (let i = 0; i < 3; i++) {
      await must(state, ["create", ...cpus, "--image", image, "--egress", "off", `cold${i}`])
      coldStartMs.push((await must(state, ["start", "--cold", `cold${i}`])).ms)
      await must(state, ["delete", "--force", `cold${i}`])
    }

    const restoreMs: Array<number> = []
    for (let i = 0; i < 3; i++) {
      const create = await must(state, ["create", `copy${i}`, "--from-snapshot", "parent:s0"])
      const start = await must(state, ["start", `copy${i}`])
      restoreMs.push(create.ms + start.ms)
      await must(state, ["delete", "--force", `copy${i}`])
    }
    const fork = await must(state, ["fork", "parent", "--count", "8", "--name-prefix", "child", "--json"])
    const children = (JSON.parse(fork.stdout).children as Array<{ name: string }>).map((c) => c.name)
    // Idle for a moment, then each child's proportional share of host memory.
    await new Promise((resolve) => setTimeout(resolve, 3000))
    const childPss: Array<number> = []
    for (const child of children) {
      const pss = pssKiB(await vmmPid(state, child))
      if (pss !== undefined) childPss.push(pss / 1024)
    }
    const parentPss = pssKiB(await vmmPid(state, "parent"))
    // What each child's disk holds on the host: an overlay (or reflink) holds what the child wrote.
    const childDiskKiB = children.map((child) => {
      const dir = NodePath.join(state, "workspaces", child)
      const file = NodeFs.existsSync(NodePath.join(dir, "rootfs")) ? "rootfs" : "rootfs.qcow2"
      return Math.round(NodeFs.statSync(NodePath.join(dir, file)).blocks / 2)
    })
    const parentDiskKiB = Math.round(
      NodeFs.statSync(NodePath.join(state, "workspaces", "parent", "rootfs")).blocks / 2
    )
    const result = {
      bench: "warm",
      image,
      cpus: process.env.BENCH_CPUS === undefined ? "default" : Number(process.env.BENCH_CPUS),
      run_ms: { warm: summary(warm), cold: summary(cold), first_warm_with_build: first.ms },
      ratio: Number((summary(warm).median / summary(cold).median).toFixed(3)),
      target_ratio: 0.25,
      snapshot: {
        create_ms: summary(snapshotMs),
        cold_start_ms: summary(coldStartMs),
        ratio: Number((summary(snapshotMs).median / summary(coldStartMs).median).toFixed(3)),
        target_ratio: 0.5,
        allocated_bytes: snapshot?.allocatedBytes,
        memory_bytes: snapshot?.memoryBytes,
        device_state_bytes: snapshot?.stateBytes
      },
      fork: {
        count: children.length,
        wall_ms: fork.ms,
        one_restore_ms: summary(restoreMs),
        ratio: Number((fork.ms / summary(restoreMs).median).toFixed(3)),
        target_ratio: 2,
        child_pss_mib: childPss.length > 0 ? summary(childPss.map((x) => Number(x.toFixed(1)))) : undefined,
        target_child_pss_mib: 48,
        parent_pss_mib: parentPss === undefined ? undefined : Number((parentPss / 1024).toFixed(1)),
        child_disk_kib: summary(childDiskKiB),
        parent_disk_kib: parentDiskKiB
      },
      load_average: loadAverage()
    }
    process.stdout.write(`${JSON.stringify(result)}\n`)
  } finally {
    cleanup(state)
  }
}

await main()
