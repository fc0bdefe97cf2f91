/**
 * The qemu backend's control of a running VMM over QMP: attach, status, halt (through the guest
 * agent, QMP's powerdown as a fallback), kill, pause and resume, saving the VM state (migration to a
 * file, the shared memfd copied beside it) and cutting the network. Booting and restoring are
 * Qemu.ts's.
 */
import { Duration, Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Conflict, InvalidInput, NotFound, Permanent, Transient } from "../../../../domain/Errors.ts"
import {
  type ChannelEndpoint,
  consoleFileOf,
  memoryFileOf,
  type VmHandle,
  type VmStatus
} from "../../../../services/Hypervisor.ts"
import { isAlive, waitGone } from "../../../process/Processes.ts"
import { type RuntimePaths, runtimePaths } from "./args.ts"
import { copyMemory, sharedMemoryOf } from "./Memory.ts"
import { qmpExecute, qmpStatus } from "./Qmp.ts"

/**
 * How the backend knows the guest is up and asks it to stop. The real one uses the guest channel
 * (the agent's answer to HELLO is the readiness signal); tests of the VMM plumbing alone can plug in
 * another (see `QemuHypervisor.layerWithGuestControl`).
 */
export interface GuestControl {
  /** One attempt to reach the agent; retried by the backend until the boot deadline. */
  readonly ready: (channel: ChannelEndpoint) => Effect.Effect<void, unknown>
  /** Asks the agent to power off; the backend then waits for the VMM to exit. */
  readonly shutdown: (channel: ChannelEndpoint) => Effect.Effect<void, unknown>
}

/** Removes a VMM's sockets and pid file, and its console log when asked. */
export const removeFiles = (paths: RuntimePaths, options: { readonly console: boolean }) =>
  Effect.sync(() => {
    for (const file of [paths.qmpSocket, paths.agentSocket, paths.pidFile, paths.modelSocket]) {
      NodeFs.rmSync(file, { force: true })
    }
    if (options.console) NodeFs.rmSync(paths.consoleLog, { force: true })
  })

/** The runtime paths of a VMM, from its handle. */
export const pathsOf = (handle: VmHandle): RuntimePaths => runtimePaths(NodePath.dirname(handle.consoleLog))

/** Ends a VMM at once and removes its sockets and pid file. */
export const destroy = (handle: VmHandle, removeConsole: boolean) =>
  Effect.gen(function*() {
    if (isAlive(handle.pid, handle.pidStartTime)) {
      yield* Effect.sync(() => {
        try {
          process.kill(handle.pid, "SIGKILL")
        } catch {
          // Gone in between.
        }
      })
      yield* waitGone(handle.pid, handle.pidStartTime, Duration.seconds(10))
    }
    yield* removeFiles(pathsOf(handle), { console: removeConsole })
  })

export const requireQemu = (handle: VmHandle) =>
  handle.backend === "qemu"
    ? Effect.void
    : Effect.fail(
      new InvalidInput({ message: `handle belongs to the ${handle.backend} backend, not qemu` })
    )

export const controlSocket = (handle: VmHandle) => handle.controlSocket ?? pathsOf(handle).qmpSocket

export const qmp = (handle: VmHandle, command: string) =>
  qmpExecute(controlSocket(handle), command).pipe(
    Effect.mapError((error) =>
      new Transient({
        message: `QMP ${command} on pid ${handle.pid} failed: ${error.message}`,
        remediation: "retry; if the VMM is wedged, kill the workspace"
      })
    )
  )

export const requireAlive = (handle: VmHandle, action: string) =>
  isAlive(handle.pid, handle.pidStartTime)
    ? Effect.void
    : Effect.fail(
      new Conflict({ message: `cannot ${action}: the VMM (pid ${handle.pid}) is not running` })
    )

/** Polls `query-migrate` until the stream is complete; QEMU leaves the VM paused (postmigrate). */
export const awaitMigration = (
  handle: VmHandle,
  deadline: number,
  verb: "saving" | "loading",
  started = Date.now()
): Effect.Effect<void, Permanent | Transient> =>
  qmpExecute(controlSocket(handle), "query-migrate").pipe(
    Effect.mapError((error) => new Transient({ message: `QMP query-migrate failed: ${error.message}` })),
    Effect.flatMap((info) => {
      const { status, "error-desc": errorDesc } = (info ?? {}) as {
        status?: string
        "error-desc"?: string
      }
      if (status === "completed") return Effect.void
      if (status === "failed" || status === "cancelled") {
        return Effect.fail(
          new Permanent({
            message: `${verb} the VM state of pid ${handle.pid} ${status}: ${errorDesc ?? "no detail"}`
          })
        )
      }
      if (Date.now() > deadline) {
        return qmpExecute(controlSocket(handle), "migrate_cancel").pipe(
          Effect.ignore,
          Effect.zipRight(Effect.fail(
            new Transient({
              message: `${verb} the VM state of pid ${handle.pid} did not finish (status ${status})`,
              remediation: "retry when the host is less loaded"
            })
          ))
        )
      }
      // A device-state stream takes milliseconds: poll closely at first, then every 50 ms.
      return Effect.sleep(Duration.millis(Date.now() - started < 250 ? 5 : 50)).pipe(
        Effect.zipRight(Effect.suspend(() => awaitMigration(handle, deadline, verb, started)))
      )
    })
  )

/** Sets QMP's `x-ignore-shared`: with it a migration stream leaves out shared RAM (the memfd). */
export const ignoreSharedMemory = (handle: VmHandle, on: boolean) =>
  qmpExecute(controlSocket(handle), "migrate-set-capabilities", {
    capabilities: [{ capability: "x-ignore-shared", state: on }]
  }).pipe(
    Effect.mapError((error) =>
      new Transient({
        message: `QMP migrate-set-capabilities on pid ${handle.pid} failed: ${error.message}`
      })
    )
  )

/** The control half of the backend's `Hypervisor`, for VMMs the boot half started. */
export const makeControl = (control: GuestControl) => {
  const attach = Effect.fn("Hypervisor.attach")(function*(handle: VmHandle) {
    yield* requireQemu(handle)
    if (!isAlive(handle.pid, handle.pidStartTime)) {
      return yield* new NotFound({
        message: `the VMM (pid ${handle.pid}) is gone`,
        remediation: "start the workspace again"
      })
    }
    yield* qmpStatus(controlSocket(handle)).pipe(
      Effect.mapError((error) =>
        new Transient({
          message: `pid ${handle.pid} is alive but its QMP socket does not answer: ${error.message}`
        })
      )
    )
    return handle
  })

  const inspect = Effect.fn("Hypervisor.inspect")(function*(handle: VmHandle) {
    yield* requireQemu(handle)
    if (!isAlive(handle.pid, handle.pidStartTime)) return "exited" as VmStatus
    const status = yield* qmpStatus(controlSocket(handle)).pipe(
      // It may have exited between the check and the query, or be exiting: a VMM that powers off
      // closes its QMP socket a moment before the process ends.
      Effect.catchAll((error) =>
        Effect.flatMap(
          waitGone(handle.pid, handle.pidStartTime, Duration.seconds(2)),
          (gone) =>
            gone
              ? Effect.succeed("shutdown")
              : Effect.fail(new Transient({ message: `QMP query-status failed: ${error.message}` }))
        )
      )
    )
    switch (status) {
      case "running":
        return "running" as VmStatus
      case "shutdown":
      case "internal-error":
      case "guest-panicked":
        return "exited" as VmStatus
      default:
        return "paused" as VmStatus
    }
  })

  const halt = Effect.fn("Hypervisor.halt")(function*(handle: VmHandle, timeoutSeconds: number) {
    yield* requireQemu(handle)
    const paths = pathsOf(handle)
    if (isAlive(handle.pid, handle.pidStartTime)) {
      const budget = Duration.millis(Math.round(timeoutSeconds * 1000))
      // A paused guest cannot hear the request: let it run first.
      yield* qmpStatus(controlSocket(handle)).pipe(
        Effect.flatMap((status) =>
          status === "paused" ? qmpExecute(controlSocket(handle), "cont") : Effect.void
        ),
        Effect.ignore
      )
      // The agent powers off on SHUTDOWN; system_powerdown is a fallback for guests that listen to ACPI.
      yield* control.shutdown(handle.channel).pipe(
        Effect.timeout(Duration.min(budget, Duration.seconds(5))),
        Effect.catchAllCause(() => qmpExecute(controlSocket(handle), "system_powerdown").pipe(Effect.ignore))
      )
      const gone = yield* waitGone(handle.pid, handle.pidStartTime, budget)
      if (!gone) {
        return yield* new Transient({
          message: `the VM (pid ${handle.pid}) did not power off within ${timeoutSeconds} s`,
          remediation: "kill it, or halt again with a longer timeout"
        })
      }
    }
    yield* removeFiles(paths, { console: false })
  })

  const kill = Effect.fn("Hypervisor.kill")(function*(handle: VmHandle) {
    yield* requireQemu(handle)
    yield* destroy(handle, false)
  })

  const pause = Effect.fn("Hypervisor.pause")(function*(handle: VmHandle) {
    yield* requireQemu(handle)
    yield* requireAlive(handle, "pause")
    yield* qmp(handle, "stop")
  })

  const resume = Effect.fn("Hypervisor.resume")(function*(handle: VmHandle) {
    yield* requireQemu(handle)
    yield* requireAlive(handle, "resume")
    yield* qmp(handle, "cont")
  })

  const saveState = Effect.fn("Hypervisor.saveState")(function*(handle: VmHandle, file: string) {
    yield* requireQemu(handle)
    yield* requireAlive(handle, "save the VM state")
    // The path goes through QEMU's `exec:` (sh -c): only plain paths are accepted.
    if (!/^[A-Za-z0-9_./+-]+$/.test(file)) {
      return yield* new InvalidInput({
        message: `cannot save VM state to ${file}: unusual characters in path`
      })
    }
    // A booted VM's RAM is a shared memfd: copied out as a file, and left out of the stream. A
    // restored VM maps its memory privately, so its RAM goes into the stream.
    const memfd = sharedMemoryOf(handle.pid)
    yield* ignoreSharedMemory(handle, memfd !== undefined)
    // The file is created by QEMU's shell: make it private first.
    yield* Effect.sync(() => NodeFs.writeFileSync(file, "", { mode: 0o600 }))
    yield* qmpExecute(controlSocket(handle), "migrate", { uri: `exec:cat > ${file}` }).pipe(
      Effect.mapError((error) =>
        new Transient({ message: `QMP migrate on pid ${handle.pid} failed: ${error.message}` })
      )
    )
    yield* awaitMigration(handle, Date.now() + 300_000, "saving")
    if (memfd !== undefined) yield* copyMemory(memfd, memoryFileOf(file))
    // What the guest printed so far, for the restored VM's log (best effort).
    yield* Effect.sync(() => {
      try {
        NodeFs.copyFileSync(pathsOf(handle).consoleLog, consoleFileOf(file))
        NodeFs.chmodSync(consoleFileOf(file), 0o600)
      } catch {
        // No console log: the restored VM's starts empty.
      }
    })
  })

  /** `set_link … up=false` on each netdev the launch arguments name: `net0`, then `nic1`, `nic2`, … */
  const sever = Effect.fn("Hypervisor.sever")(function*(handle: VmHandle) {
    yield* requireQemu(handle)
    yield* requireAlive(handle, "cut the network of")
    const down = (name: string) =>
      qmpExecute(controlSocket(handle), "set_link", { name, up: false }).pipe(
        Effect.as(true),
        // A netdev the VM does not have is a command error; anything else is a real failure.
        Effect.catchIf((error) => error.reason === "Command", () => Effect.succeed(false)),
        Effect.mapError((error) =>
          new Transient({ message: `QMP set_link ${name} on pid ${handle.pid} failed: ${error.message}` })
        )
      )
    yield* down("net0")
    for (let i = 1; i <= 64; i++) {
      if (!(yield* down(`nic${i}`))) break
    }
  })

  return { attach, inspect, halt, kill, pause, resume, saveState, sever }
}
