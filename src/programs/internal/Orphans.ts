/**
 * The one rule for VMMs that outlive their record: whatever a record says, a VMM of this state
 * directory that no live record owns is ended. `gc`, `delete`, `kill` and the runtime's reconcile all
 * go through `reapOrphanVmms`, so they agree on what "owned" means.
 *
 * A record owns a VMM when it is live and either names that very process (pid and start time) or is
 * `starting` under a process that is still alive (the launch is under way and the handle is not
 * recorded yet). The VMMs are listed before the records are read: a VMM that a concurrent start
 * launches after the listing is not in the list, and one it launched before is covered by its
 * `starting` record.
 */
import { Effect, Option } from "effect"
import { isLive } from "../../domain/State.ts"
import type { Workspace } from "../../domain/Workspace.ts"
import { Home } from "../../services/Home.ts"
import { Processes, type ProcessesShape, type VmmProcess } from "../../services/Processes.ts"
import { StateStore } from "../../services/StateStore.ts"
import { vmHandleOf } from "./Reconcile.ts"
import { templateBuildRunning } from "./TemplateFiles.ts"

const ownerAlive = (processes: ProcessesShape, workspace: Workspace) =>
  workspace.owner === undefined
    ? Effect.succeed(false)
    : workspace.owner.pid === process.pid
    ? Effect.succeed(true)
    : processes.isAlive(workspace.owner.pid, workspace.owner.startTime || undefined)

const ownsVmm = (processes: ProcessesShape, workspace: Workspace, vmm: VmmProcess) =>
  Effect.gen(function*() {
    // A quarantine holds its frozen VM while it captures evidence, as long as its process lives.
    const holds = isLive(workspace.state)
      || (workspace.state === "quarantined" && (yield* ownerAlive(processes, workspace)))
    if (!holds || workspace.runtimeDir !== vmm.runtimeDir) return false
    const handle = vmHandleOf(workspace)
    if (Option.isSome(handle)) {
      return handle.value.pid === vmm.pid
        && (handle.value.pidStartTime === undefined || handle.value.pidStartTime === vmm.startTime)
    }
    return workspace.state === "starting" && (yield* ownerAlive(processes, workspace))
  })

/**
 * Ends every VMM of the state directory (or only those of `workspace`) that no live record owns;
 * returns their pids.
 */
export const reapOrphanVmms = Effect.fn("reapOrphanVmms")(function*(
  options: { readonly workspace?: string | undefined } = {}
) {
  const home = yield* Home
  const store = yield* StateStore
  const processes = yield* Processes
  const vmms = (yield* processes.vmms(home.root)).filter((vmm) =>
    options.workspace === undefined || vmm.workspace === options.workspace
  )
  const killed: Array<number> = []
  for (const vmm of vmms) {
    const record = yield* store.find(vmm.workspace)
    if (Option.isSome(record) && (yield* ownsVmm(processes, record.value, vmm))) continue
    // A warm-start template's VM belongs to its build while the build runs.
    if (yield* templateBuildRunning(home.root, vmm.workspace)) continue
    if (yield* processes.endVmm(vmm)) killed.push(vmm.pid)
  }
  return killed as ReadonlyArray<number>
})
