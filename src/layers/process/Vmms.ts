/**
 * Finding the VMM processes of a state directory without trusting the store: a VMM is ours when its
 * process name is a VMM's and its command line names a runtime directory of this state directory
 * (`ROOT/run/NAME/…`: the pid file, sockets and console log all live there). The pid files VMMs
 * leave behind are read too: a bare pid only as a candidate checked the same way, a pid with its
 * start time as an identity of its own. The identity (pid plus start time) is taken at the scan and
 * checked again before any signal, so a recycled pid is never killed.
 */
import { Duration, Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { VmmProcess } from "../../services/Processes.ts"
import { isAlive, signal, startTimeOf, waitGone } from "./Processes.ts"

export type { VmmProcess } from "../../services/Processes.ts"

/** Process names (`/proc/PID/comm`, at most 15 characters) of the VMMs the backends start. */
const isVmmName = (comm: string) => comm.startsWith("qemu-system") || comm === "firecracker"

const readArgv = (pid: number): ReadonlyArray<string> | undefined => {
  try {
    const raw = NodeFs.readFileSync(`/proc/${pid}/cmdline`, "utf8")
    return raw.length === 0 ? undefined : raw.split("\0")
  } catch {
    return undefined
  }
}

const readComm = (pid: number): string => {
  try {
    return NodeFs.readFileSync(`/proc/${pid}/comm`, "utf8").trim()
  } catch {
    return ""
  }
}

/** The workspace runtime directory under `runRoot` that some argument names, if any. */
const runtimeDirNamed = (argv: ReadonlyArray<string>, runRoot: string): string | undefined => {
  const prefix = runRoot + NodePath.sep
  for (const arg of argv) {
    // QEMU options embed paths in key=value lists (`path=/…/qmp.sock,server=on`).
    let at = arg.indexOf(prefix)
    while (at >= 0) {
      const name = arg.slice(at + prefix.length).split(/[/,]/)[0] ?? ""
      if (name.length > 0 && name !== "." && name !== "..") return NodePath.join(runRoot, name)
      at = arg.indexOf(prefix, at + 1)
    }
  }
  return undefined
}

/** Identifies one pid as a VMM of `runRoot`, or undefined. */
const identify = (pid: number, runRoot: string): VmmProcess | undefined => {
  if (!isVmmName(readComm(pid))) return undefined
  const startTime = startTimeOf(pid)
  const argv = readArgv(pid)
  if (startTime === undefined || argv === undefined || !isAlive(pid, startTime)) return undefined
  const runtimeDir = runtimeDirNamed(argv, runRoot)
  return runtimeDir === undefined
    ? undefined
    : { pid, startTime, runtimeDir, workspace: NodePath.basename(runtimeDir) }
}

/**
 * What VMMs left in the runtime directories: `qemu.pid` (QEMU's own, a bare pid: only a candidate)
 * and `vmm.pid` ("PID STARTTIME", written by a backend that launched a process with no telling name,
 * such as the fake one: the start time is its identity).
 */
const pidFiles = (
  runRoot: string
): ReadonlyArray<{ pid: number; startTime?: string; runtimeDir: string }> => {
  let names: Array<string>
  try {
    names = NodeFs.readdirSync(runRoot)
  } catch {
    return []
  }
  return names.flatMap((name) =>
    ["qemu.pid", "vmm.pid"].flatMap((file) => {
      try {
        const [pid, startTime] = NodeFs.readFileSync(NodePath.join(runRoot, name, file), "utf8").trim().split(
          /\s+/
        )
        const number = Number(pid)
        if (!Number.isInteger(number) || number <= 0) return []
        const runtimeDir = NodePath.join(runRoot, name)
        return [
          file === "vmm.pid" && startTime !== undefined
            ? { pid: number, startTime, runtimeDir }
            : { pid: number, runtimeDir }
        ]
      } catch {
        return []
      }
    })
  )
}

/**
 * Every live VMM of the state directory `root`, found from its pid files and a scan of /proc. Works
 * when the directory itself is gone: command lines still name it.
 */
export const vmmsOf = (root: string): ReadonlyArray<VmmProcess> => {
  const runRoot = NodePath.join(NodePath.resolve(root), "run")
  let pids: Array<number>
  try {
    pids = NodeFs.readdirSync("/proc").filter((entry) => /^\d+$/.test(entry)).map(Number)
  } catch {
    pids = []
  }
  const found = new Map<number, VmmProcess>()
  const files = pidFiles(runRoot)
  for (const file of files) {
    if (file.startTime === undefined || file.pid === process.pid || !isAlive(file.pid, file.startTime)) {
      continue
    }
    found.set(file.pid, {
      pid: file.pid,
      startTime: file.startTime,
      runtimeDir: file.runtimeDir,
      workspace: NodePath.basename(file.runtimeDir)
    })
  }
  for (const pid of new Set([...files.map((f) => f.pid), ...pids])) {
    if (pid === process.pid || found.has(pid)) continue
    const vmm = identify(pid, runRoot)
    if (vmm !== undefined) found.set(pid, vmm)
  }
  return [...found.values()]
}

/**
 * Ends a VMM found by `vmmsOf` (SIGKILL: nobody owns it, so nobody waits for a clean power-off) and
 * removes the control files it leaves in its runtime directory. True if it is gone.
 */
export const endVmm = (vmm: VmmProcess) =>
  Effect.gen(function*() {
    // The identity check right before the signal: a pid that was recycled since the scan is left alone.
    if (isAlive(vmm.pid, vmm.startTime)) signal(vmm.pid, "SIGKILL")
    const gone = yield* waitGone(vmm.pid, vmm.startTime, Duration.seconds(10))
    if (gone) {
      yield* Effect.sync(() => {
        for (const file of ["qemu.pid", "vmm.pid", "qmp.sock", "agent.sock"]) {
          NodeFs.rmSync(NodePath.join(vmm.runtimeDir, file), { force: true })
        }
      }).pipe(Effect.ignore)
    }
    return gone
  })
