/**
 * `stats`: what a running workspace costs the host right now, read from outside the guest: the VMM's
 * CPU time and CPU use over a short interval (/proc/PID/stat), its resident memory (/proc/PID/status),
 * its storage I/O (/proc/PID/io) and the root disk file's apparent and allocated sizes.
 */
import { Clock, Duration, Effect, Option } from "effect"
import * as NodeFs from "node:fs"
import { Conflict } from "../domain/Errors.ts"
import type { WorkspaceStats } from "../domain/Usage.ts"
import { rootDiskOf } from "../services/Hypervisor.ts"
import { StateStore } from "../services/StateStore.ts"
import { reconcile, vmHandleOf } from "./internal/Reconcile.ts"

/** Clock ticks per second of /proc/PID/stat: USER_HZ, 100 on every Linux architecture we run on. */
const userHz = 100

/** User + system CPU time of a process in seconds, or undefined when it is gone. */
export const cpuSecondsOf = (pid: number): number | undefined => {
  try {
    const text = NodeFs.readFileSync(`/proc/${pid}/stat`, "utf8")
    // The command name may hold spaces and parentheses: the fields start after its last ')'.
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ")
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    return (Number(fields[11]) + Number(fields[12])) / userHz
  } catch {
    return undefined
  }
}

const readOr = (path: string) => {
  try {
    return NodeFs.readFileSync(path, "utf8")
  } catch {
    return undefined
  }
}

const field = (text: string | undefined, name: string) => {
  const match = text === undefined ? null : new RegExp(`^${name}:\\s+(\\d+)`, "m").exec(text)
  return match === null ? undefined : Number(match[1])
}

const notRunning = (name: string, state: string) =>
  new Conflict({
    message: `workspace ${name} is ${state}, not running`,
    remediation: state === "paused"
      ? `resume it first, or look at \`microagent inspect ${name}\``
      : `start it first: microagent start ${name}`
  })

export interface StatsOptions {
  /** How long CPU use is measured over (default 500 ms). */
  readonly interval?: Duration.DurationInput | undefined
}

/** One sample of a running workspace; any other state is a `Conflict`. */
export const stats = Effect.fn("stats")(function*(name: string, options: StatsOptions = {}) {
  const store = yield* StateStore
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  const handle = vmHandleOf(workspace)
  if (workspace.state !== "running" || Option.isNone(handle)) {
    return yield* notRunning(name, workspace.state)
  }
  const pid = handle.value.pid
  const interval = Duration.decode(options.interval ?? Duration.millis(500))
  const before = cpuSecondsOf(pid)
  const began = yield* Clock.currentTimeMillis
  yield* Effect.sleep(interval)
  const after = cpuSecondsOf(pid)
  const ended = yield* Clock.currentTimeMillis
  const rssKiB = field(readOr(`/proc/${pid}/status`), "VmRSS")
  if (before === undefined || after === undefined || rssKiB === undefined) {
    // The VMM went away while it was measured.
    return yield* notRunning(name, (yield* store.get(name).pipe(Effect.flatMap(reconcile))).state)
  }
  const io = readOr(`/proc/${pid}/io`)
  const readBytes = field(io, "read_bytes")
  const writeBytes = field(io, "write_bytes")
  // A copy-on-write overlay's figures are what the workspace holds of its own.
  const root = rootDiskOf(workspace.rootfsPath)
  const disk = NodeFs.statSync(root.path, { throwIfNoEntry: false })
  const elapsedMs = Math.max(1, ended - began)
  return {
    workspace: name,
    pid,
    sampledAt: new Date(ended).toISOString(),
    intervalMs: elapsedMs,
    cpuSeconds: Math.round(after * 100) / 100,
    cpuPercent: Math.round(((after - before) * 1000 / elapsedMs) * 1000) / 10,
    memoryBytes: rssKiB * 1024,
    ...(readBytes === undefined ? {} : { ioReadBytes: readBytes }),
    ...(writeBytes === undefined ? {} : { ioWriteBytes: writeBytes }),
    disk: {
      path: root.path,
      apparentBytes: disk?.size ?? 0,
      allocatedBytes: disk === undefined ? 0 : disk.blocks * 512
    }
  } satisfies WorkspaceStats
})
