/**
 * `Processes` on Linux: identities read from /proc (Processes.ts), VMMs found by Vmms.ts, commands on
 * the PATH by Installed.ts.
 */
import { Effect, Layer } from "effect"
import { Processes } from "../../services/Processes.ts"
import { onPath } from "./Installed.ts"
import { isAlive, releasePidLock, startTimeOf, tryPidLock } from "./Processes.ts"
import { endVmm, vmmsOf } from "./Vmms.ts"

export const layer = Layer.sync(Processes, () =>
  Processes.of({
    self: { pid: process.pid, startTime: startTimeOf(process.pid) },
    isAlive: (pid, startTime) => Effect.sync(() => isAlive(pid, startTime)),
    tryLock: (path) => Effect.sync(() => tryPidLock(path)),
    releaseLock: (path) => Effect.sync(() => releasePidLock(path)),
    vmms: (root) => Effect.sync(() => vmmsOf(root)),
    endVmm,
    commandPath: (command) => Effect.sync(() => onPath(command))
  }))
