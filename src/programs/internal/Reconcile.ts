/**
 * Bringing the store in line with reality: a record that says a VM is live is checked against the
 * backend, and repaired when the VMM or the process that was starting or halting it is gone.
 */
import { Effect, Option, Schema } from "effect"
import { Conflict } from "../../domain/Errors.ts"
import { isLive } from "../../domain/State.ts"
import type { Workspace } from "../../domain/Workspace.ts"
import { Hypervisor, VmHandle } from "../../services/Hypervisor.ts"
import { Processes, type ProcessIdentity } from "../../services/Processes.ts"
import { StateStore } from "../../services/StateStore.ts"
import { reapNetworks } from "./NetworkPlumbing.ts"

export const vmHandleOf = (workspace: Workspace): Option.Option<VmHandle> =>
  workspace.vm === undefined ? Option.none() : Schema.decodeUnknownOption(VmHandle)(workspace.vm)

/** Marks `owner` (the calling process: `Processes.self`) as the one carrying out a start or halt. */
export const ownedBy = (owner: ProcessIdentity) => (workspace: Workspace): Workspace =>
  ({
    ...workspace,
    owner: { pid: owner.pid, startTime: owner.startTime ?? "" }
  }) as Workspace

/** `ownedBy` this process. */
export const ownedByMe = Effect.map(Processes, (processes) => ownedBy(processes.self))

export const withoutOwner = (workspace: Workspace): Workspace =>
  ({ ...workspace, owner: undefined }) as Workspace

/** The backend of the workspace must be the one this process was given. */
export const requireBackend = (workspace: Workspace) =>
  Effect.gen(function*() {
    const hypervisor = yield* Hypervisor
    if (hypervisor.backend !== workspace.backend) {
      return yield* new Conflict({
        message:
          `workspace ${workspace.name} runs on the ${workspace.backend} backend, not ${hypervisor.backend}`,
        remediation: `drop --backend, or pass --backend ${workspace.backend}`
      })
    }
  })

const ownerGone = (workspace: Workspace) =>
  workspace.owner === undefined || workspace.owner.pid === process.pid
    ? Effect.succeed(false)
    : Effect.flatMap(
      Processes,
      (processes) =>
        Effect.map(
          processes.isAlive(workspace.owner!.pid, workspace.owner!.startTime || undefined),
          (alive) => !alive
        )
    )

/** Returns the workspace with a state that matches its VMM. */
export const reconcile = (workspace: Workspace) =>
  Effect.gen(function*() {
    if (!isLive(workspace.state) || workspace.backend !== (yield* Hypervisor).backend) return workspace
    const hypervisor = yield* Hypervisor
    const store = yield* StateStore
    const handle = vmHandleOf(workspace)
    if (Option.isNone(handle)) {
      // Starting, with no VMM recorded yet: only stale if the starting process died.
      if (!(yield* ownerGone(workspace))) return workspace
      return yield* store.transition(workspace.name, "crashed", {
        patch: withoutOwner,
        detail: "the process starting it exited before the VM booted"
      })
    }
    const status = yield* hypervisor.inspect(handle.value)
    // A VMM that exits while a live process halts it has powered off: that process records `halted`.
    if (
      status === "exited" && workspace.state === "stopping" && !(yield* ownerGone(workspace))
    ) return workspace
    if (status === "exited") {
      return yield* store.transition(workspace.name, "crashed", {
        patch: (ws) => withoutOwner({ ...ws, vm: undefined } as Workspace),
        detail: "the VMM exited"
      })
    }
    if (workspace.state === "stopping" && (yield* ownerGone(workspace))) {
      // The halting process died half way: finish the job so that no VM outlives a stopped record.
      yield* hypervisor.kill(handle.value)
      return yield* store.transition(workspace.name, "kill", {
        patch: (ws) => withoutOwner({ ...ws, vm: undefined } as Workspace),
        detail: "the process halting it exited; the VM was killed"
      })
    }
    if (workspace.state === "paused" && (yield* ownerGone(workspace))) {
      // Paused by a snapshot whose process died mid-capture: nothing else would ever let it run again.
      yield* hypervisor.resume(handle.value)
      return yield* store.transition(workspace.name, "resume", {
        patch: withoutOwner,
        detail: "the process snapshotting it exited; the VM was resumed"
      })
    }
    const expected = status === "paused" ? "paused" : "running"
    if (workspace.state === "paused" && expected === "running") {
      return yield* store.transition(workspace.name, "resume", { detail: "found running" })
    }
    return workspace
  }).pipe(
    // A member of a named network that is gone may have been the last one on it: its namespace goes too.
    Effect.tap((after) =>
      workspace.networks.length > 0 && isLive(workspace.state) && !isLive(after.state)
        ? Effect.ignore(reapNetworks)
        : Effect.void
    ),
    // A concurrent command may have moved it already; what it says now is the truth.
    Effect.catchTag("Conflict", () => StateStore.pipe(Effect.flatMap((store) => store.get(workspace.name))))
  )
