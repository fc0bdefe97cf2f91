/**
 * `perf`: what a boot costs, phase by phase, and what a running workspace costs the host.
 *
 * `perfBoot` creates disposable workspaces as `run` does and times each to its first command's result;
 * the edges are taken from outside the backend (the console log appearing, the agent's first line
 * appearing in it, the guest's own uptime it prints) so the measured path is the real one, and split
 * into phases: firmware/loader, kernel to /init, /init to agent ready, first exec. `perfFootprint`
 * reads /proc.
 */
import { Clock, Duration, Effect, Fiber, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Conflict } from "../domain/Errors.ts"
import { defaultImage } from "../domain/ImageRef.ts"
import type { BootRun, PerfBootResult, PerfFootprintResult, ProcessMemory } from "../domain/Perf.ts"
import { isLive } from "../domain/State.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { Hypervisor, rootDiskOf } from "../services/Hypervisor.ts"
import { StateStore } from "../services/StateStore.ts"
import { create } from "./Create.ts"
import { remove } from "./Delete.ts"
import { exec } from "./Exec.ts"
import { reconcile, vmHandleOf } from "./internal/Reconcile.ts"
import { execRequestFor } from "./internal/Requests.ts"
import { start } from "./Start.ts"

export interface PerfBootOptions {
  readonly image?: string | undefined
  readonly runs?: number | undefined
  readonly command?: ReadonlyArray<string> | undefined
  readonly network?: "user" | "isolated" | undefined
  /** Warm starts (templates restored) instead of cold boots. */
  readonly warm?: boolean | undefined
}

const now = Clock.currentTimeMillis

/** The guest's uptimes in the agent's console lines ("starting at 0.81s uptime", "ready at 0.95s uptime"). */
export const consoleUptimes = (text: string): { readonly initMs?: number; readonly readyMs?: number } => {
  const init = /starting at ([0-9.]+)s uptime/.exec(text)
  const ready = /ready at ([0-9.]+)s uptime/.exec(text)
  return {
    ...(init === null ? {} : { initMs: Math.round(Number(init[1]) * 1000) }),
    ...(ready === null ? {} : { readyMs: Math.round(Number(ready[1]) * 1000) })
  }
}

const readText = (path: string) => {
  try {
    return NodeFs.readFileSync(path, "utf8")
  } catch {
    return undefined
  }
}

/**
 * Watches a console log from outside: resolves with when the file appeared (the VMM is up) and
 * records when the agent's "starting" line showed up in it (the kernel ran /init).
 */
const watchConsole = (path: string) => {
  const seen: { vmmAt?: number; initAt?: number } = {}
  const fiber = Effect.async<void>((resume) => {
    const timer = setInterval(() => {
      const text = readText(path)
      if (text === undefined) return
      seen.vmmAt ??= Date.now()
      if (/starting at [0-9.]+s uptime/.test(text)) {
        seen.initAt = Date.now()
        clearInterval(timer)
        resume(Effect.void)
      }
    }, 2)
    return Effect.sync(() => clearInterval(timer))
  })
  return { seen, fiber }
}

const oneBoot = (options: PerfBootOptions, command: readonly [string, ...Array<string>]) =>
  Effect.scoped(Effect.gen(function*() {
    const began = yield* now
    const since = (t: number) => t - began
    const edges: { -readonly [K in keyof BootRun]: BootRun[K] } = { ok: false }
    const workspace = yield* Effect.acquireRelease(
      create({
        image: options.image ?? defaultImage,
        ephemeral: true,
        namePrefix: "perf",
        ...(options.network === undefined ? {} : { network: options.network })
      }),
      (ws) => remove(ws.name, { force: true }).pipe(Effect.ignore)
    )
    edges.createdMs = since(yield* now)
    const consoleLog = NodePath.join(workspace.runtimeDir, "console.log")
    const watch = watchConsole(consoleLog)
    const watcher = yield* Effect.fork(watch.fiber)
    edges.startCalledMs = since(yield* now)
    yield* start(workspace.name, { cold: options.warm !== true })
    const ready = yield* now
    edges.agentReadyMs = since(ready)
    yield* Fiber.interrupt(watcher)
    if (watch.seen.vmmAt !== undefined) edges.vmmStartedMs = since(watch.seen.vmmAt)
    const latest = yield* Effect.flatMap(StateStore, (store) => store.get(workspace.name))
    const result = yield* exec(workspace.name, execRequestFor(latest, command))
    edges.firstExecMs = since(yield* now)
    edges.exitCode = result.exitCode
    edges.ok = result.exitCode === 0
    if (!edges.ok) edges.error = `the command exited ${result.exitCode}`
    const uptimes = consoleUptimes(
      readText(Option.match(vmHandleOf(latest), { onNone: () => consoleLog, onSome: (vm) => vm.consoleLog }))
        ?? readText(consoleLog) ?? ""
    )
    if (uptimes.readyMs !== undefined) edges.guestUptimeAtReadyMs = uptimes.readyMs
    if (uptimes.initMs !== undefined) edges.guestUptimeAtInitMs = uptimes.initMs
    if (watch.seen.initAt !== undefined) edges.initStartedMs = since(watch.seen.initAt)
    // The kernel's start on the host's clock: when /init announced itself, less the guest's uptime then.
    if (edges.initStartedMs !== undefined && uptimes.initMs !== undefined) {
      edges.kernelStartedMs = Math.max(edges.vmmStartedMs ?? 0, edges.initStartedMs - uptimes.initMs)
    } else if (uptimes.readyMs !== undefined) {
      edges.kernelStartedMs = since(ready - uptimes.readyMs)
    }
    const warm = (yield* Effect.flatMap(StateStore, (store) => store.events(workspace.name))).find((event) =>
      event.type === "warm" && event.detail.startsWith("restored template")
    )
    if (warm !== undefined) {
      edges.warm = true
      edges.templateBuilt = warm.detail.includes("built by this start")
      if (edges.vmmStartedMs !== undefined) {
        edges.warmPhases = {
          prepareMs: edges.vmmStartedMs - edges.startCalledMs,
          restoreMs: edges.agentReadyMs - edges.vmmStartedMs,
          execMs: edges.firstExecMs - edges.agentReadyMs
        }
      }
    } else if (
      edges.vmmStartedMs !== undefined && edges.kernelStartedMs !== undefined
      && edges.initStartedMs !== undefined
    ) {
      edges.phases = {
        firmwareMs: edges.kernelStartedMs - edges.vmmStartedMs,
        kernelMs: edges.initStartedMs - edges.kernelStartedMs,
        initMs: edges.agentReadyMs - edges.initStartedMs,
        execMs: edges.firstExecMs - edges.agentReadyMs
      }
    }
    return edges as BootRun
  }))

const stat = (values: ReadonlyArray<number | undefined>) => {
  const xs = values.filter((v): v is number => v !== undefined).sort((a, b) => a - b)
  if (xs.length === 0) return undefined
  const mid = Math.floor(xs.length / 2)
  const median = xs.length % 2 === 1 ? xs[mid]! : (xs[mid - 1]! + xs[mid]!) / 2
  return { min: xs[0]!, median, max: xs.at(-1)! }
}

const describe = (cause: unknown) =>
  typeof cause === "object" && cause !== null && "message" in cause ? String(cause.message) : String(cause)

export const perfBoot = Effect.fn("perfBoot")(function*(options: PerfBootOptions) {
  const hypervisor = yield* Hypervisor
  const command = (options.command !== undefined && options.command.length > 0
    ? options.command
    : ["true"]) as [string, ...Array<string>]
  const runs: Array<BootRun> = []
  for (let i = 0; i < (options.runs ?? 1); i++) {
    runs.push(
      yield* oneBoot(options, command).pipe(
        Effect.catchAll((error) => Effect.succeed<BootRun>({ ok: false, error: describe(error) }))
      )
    )
  }
  const good = runs.filter((run) => run.ok)
  const summary: Record<string, unknown> = { count: runs.length, failures: runs.length - good.length }
  for (
    const edge of [
      "createdMs",
      "vmmStartedMs",
      "kernelStartedMs",
      "initStartedMs",
      "agentReadyMs",
      "firstExecMs"
    ] as const
  ) {
    const s = stat(good.map((run) => run[edge]))
    if (s !== undefined) summary[edge] = s
  }
  const phased = good.flatMap((run) => run.phases === undefined ? [] : [run.phases])
  if (phased.length > 0) {
    summary.phases = {
      firmwareMs: stat(phased.map((p) => p.firmwareMs)),
      kernelMs: stat(phased.map((p) => p.kernelMs)),
      initMs: stat(phased.map((p) => p.initMs)),
      execMs: stat(phased.map((p) => p.execMs))
    }
  }
  // The run that built its template measured a boot and a capture too: left out of the summary.
  const warmed = good.flatMap((run) =>
    run.warmPhases === undefined || run.templateBuilt === true ? [] : [run.warmPhases]
  )
  if (warmed.length > 0) {
    summary.warmPhases = {
      prepareMs: stat(warmed.map((p) => p.prepareMs)),
      restoreMs: stat(warmed.map((p) => p.restoreMs)),
      execMs: stat(warmed.map((p) => p.execMs))
    }
  }
  return {
    image: options.image ?? defaultImage,
    backend: hypervisor.backend,
    command,
    runs,
    summary: summary as PerfBootResult["summary"]
  } satisfies PerfBootResult
})

const kib = (text: string, field: string) => {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text)
  return match === null ? undefined : Number(match[1])
}

/** RSS from /proc/PID/status, PSS from /proc/PID/smaps_rollup; undefined when the process is gone. */
export const processMemory = (pid: number): ProcessMemory | undefined => {
  try {
    const rss = kib(NodeFs.readFileSync(`/proc/${pid}/status`, "utf8"), "VmRSS")
    if (rss === undefined) return undefined
    let pss: number | undefined
    try {
      pss = kib(NodeFs.readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"), "Pss")
    } catch {
      pss = undefined
    }
    return { pid, rssKiB: rss, ...(pss === undefined ? {} : { pssKiB: pss }) }
  } catch {
    return undefined
  }
}

const footprintOf = (workspace: Workspace) => {
  // An overlay's file: what the workspace's disk takes on the host beside its base.
  const disk = rootDiskOf(workspace.rootfsPath).path
  const stat = NodeFs.statSync(disk, { throwIfNoEntry: false })
  const vmm = Option.match(vmHandleOf(workspace), {
    onNone: () => undefined,
    onSome: (handle) => processMemory(handle.pid)
  })
  return {
    workspace: workspace.name,
    backend: workspace.backend,
    ...(vmm === undefined ? {} : { vmm }),
    rootfs: {
      path: disk,
      apparentBytes: stat?.size ?? 0,
      allocatedBytes: stat === undefined ? 0 : stat.blocks * 512
    }
  }
}

/** The host memory of this process and of the named (or every running) workspace's VMM; disk use. */
export const perfFootprint = Effect.fn("perfFootprint")(function*(name?: string) {
  const store = yield* StateStore
  const workspaces = name === undefined
    ? (yield* store.list).filter((ws) => isLive(ws.state))
    : [yield* store.get(name).pipe(Effect.flatMap(reconcile))]
  for (const ws of workspaces) {
    if (name !== undefined && ws.state !== "running") {
      return yield* new Conflict({
        message: `workspace ${ws.name} is ${ws.state}, not running`,
        remediation: `start it first: microagent start ${ws.name}`
      })
    }
  }
  const self = processMemory(process.pid) ?? { pid: process.pid, rssKiB: 0 }
  return {
    runtime: { ...self, heapUsedBytes: process.memoryUsage().heapUsed },
    workspaces: workspaces.map(footprintOf)
  } satisfies PerfFootprintResult
})

export interface PerfSteadyOptions {
  /** How long to sample (default 10 s). */
  readonly duration?: Duration.DurationInput | undefined
  /** Time between samples (default 1 s). */
  readonly interval?: Duration.DurationInput | undefined
}

/**
 * The resident memory of a running workspace's VMM sampled over a while: whether it holds steady
 * once booted, or creeps. Samples stop early (the summary says so) when the workspace stops.
 */
export const perfSteady = Effect.fn("perfSteady")(function*(name: string, options: PerfSteadyOptions = {}) {
  const store = yield* StateStore
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  const handle = vmHandleOf(workspace)
  if (workspace.state !== "running" || Option.isNone(handle)) {
    return yield* new Conflict({
      message: `workspace ${name} is ${workspace.state}, not running`,
      remediation: `start it first: microagent start ${name}`
    })
  }
  const durationMs = Duration.toMillis(Duration.decode(options.duration ?? Duration.seconds(10)))
  const intervalMs = Math.max(10, Duration.toMillis(Duration.decode(options.interval ?? Duration.seconds(1))))
  const began = yield* now
  const samples: Array<{ readonly atMs: number; readonly rssKiB: number; readonly pssKiB?: number }> = []
  let stopped = false
  while (true) {
    const at = (yield* now) - began
    // A sleep that overran the window ends it: every sample lies within the duration.
    if (samples.length > 0 && at > durationMs) break
    const memory = processMemory(handle.value.pid)
    if (memory === undefined) {
      stopped = true
      break
    }
    samples.push({
      atMs: at,
      rssKiB: memory.rssKiB,
      ...(memory.pssKiB === undefined ? {} : { pssKiB: memory.pssKiB })
    })
    if (at + intervalMs > durationMs) break
    yield* Effect.sleep(Duration.millis(intervalMs))
  }
  const rss = samples.map((s) => s.rssKiB)
  return {
    workspace: name,
    pid: handle.value.pid,
    durationMs: samples.length === 0 ? 0 : samples.at(-1)!.atMs,
    intervalMs,
    samples,
    summary: {
      count: samples.length,
      stopped,
      ...(rss.length === 0 ? {} : {
        minRssKiB: Math.min(...rss),
        maxRssKiB: Math.max(...rss),
        meanRssKiB: Math.round(rss.reduce((a, b) => a + b, 0) / rss.length),
        /** Last minus first: growth over the window. */
        growthKiB: rss.at(-1)! - rss[0]!
      })
    }
  }
})
