/**
 * Host processes that outlive the process that started them (VMMs, the runtime, builders holding a
 * lock): identity by pid plus start time, so a recycled pid is never mistaken for a live owner; the
 * VMMs of a state directory found without trusting the store; and the commands installed on the host.
 */
import { Context, type Effect } from "effect"

/** A process as recorded by whoever relies on it later: its pid and its start time (clock ticks since boot). */
export interface ProcessIdentity {
  readonly pid: number
  /** Undefined when it could not be read (the process is then known by its pid only). */
  readonly startTime: string | undefined
}

/** A VMM process of a state directory, found by `Processes.vmms`. */
export interface VmmProcess {
  readonly pid: number
  readonly startTime: string
  /** The runtime directory its command line names (`ROOT/run/NAME`). */
  readonly runtimeDir: string
  /** NAME: the workspace that runtime directory belongs to. */
  readonly workspace: string
}

export interface ProcessesShape {
  /** This process. */
  readonly self: ProcessIdentity
  /** Alive and the same process: not a zombie, and with `startTime` (when given) not a recycled pid. */
  readonly isAlive: (pid: number, startTime?: string | undefined) => Effect.Effect<boolean>
  /**
   * Takes a lock file if free (created exclusively, holding this process's identity); a lock whose
   * process is gone is removed, so the next attempt takes it. Never waits.
   */
  readonly tryLock: (path: string) => Effect.Effect<boolean>
  /** Removes a lock taken by `tryLock`. */
  readonly releaseLock: (path: string) => Effect.Effect<void>
  /** Every live VMM of the state directory `root` (works when the directory itself is gone). */
  readonly vmms: (root: string) => Effect.Effect<ReadonlyArray<VmmProcess>>
  /** Ends a VMM found by `vmms` and removes the control files it leaves; true if it is gone. */
  readonly endVmm: (vmm: VmmProcess) => Effect.Effect<boolean>
  /** The first executable `command` on the PATH (then /usr/sbin and /sbin), if any. */
  readonly commandPath: (command: string) => Effect.Effect<string | undefined>
}

export class Processes extends Context.Tag("microagent/Processes")<Processes, ProcessesShape>() {}
