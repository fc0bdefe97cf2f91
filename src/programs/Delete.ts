/**
 * `delete`: idempotent; a live workspace needs `yes` (halt first) or `force` (kill first). A VMM of
 * the workspace that its record does not own (see internal/Orphans.ts) is ended before the files go.
 */
import { Effect, Option } from "effect"
import * as NodeFs from "node:fs"
import { Conflict, Permanent } from "../domain/Errors.ts"
import type { DeleteRequest } from "../domain/Requests.ts"
import { isDeletable } from "../domain/State.ts"
import { faultPoint } from "../services/Faults.ts"
import { Home } from "../services/Home.ts"
import { StateStore } from "../services/StateStore.ts"
import { halt, kill } from "./Halt.ts"
import { sweepBases } from "./internal/DiskOverlay.ts"
import { releaseVolumesOf } from "./internal/Mounts.ts"
import { forgetNetworks } from "./internal/NetworkPlumbing.ts"
import { reapOrphanVmms } from "./internal/Orphans.ts"
import { reconcile, requireBackend } from "./internal/Reconcile.ts"

/** A delete's request (domain/Requests.ts) without the name. */
export type DeleteOptions = Omit<DeleteRequest, "name">

export const remove = Effect.fn("delete")(function*(name: string, options: DeleteOptions = {}) {
  const store = yield* StateStore
  const home = yield* Home
  const found = yield* store.find(name)
  if (Option.isNone(found)) return { workspace: name, deleted: false }
  const workspace = yield* reconcile(found.value)
  if (workspace.state === "quarantined") {
    // Its VM is stopped already; what a delete would lose is the custody record.
    if (!options.force) {
      return yield* new Conflict({
        message: `workspace ${name} is quarantined: it and its custody record (console, events, egress `
          + `log, memory and disk) are held for inspection`,
        remediation: `copy what you need from ${home.workspaceDir(name)}/custody, then delete --force ${name}`
      })
    }
  } else if (!isDeletable(workspace.state)) {
    yield* requireBackend(workspace)
    if (options.force) yield* kill(name)
    else if (options.yes) yield* halt(name)
    else {
      return yield* new Conflict({
        message: `workspace ${name} is ${workspace.state}`,
        remediation: `pass --yes to halt it first, or --force to kill it first`
      })
    }
  }
  // A VMM the record lost track of (its start died half way) must not keep writing to the disk below.
  yield* reapOrphanVmms({ workspace: name })
  yield* Effect.try({
    try: () => {
      for (const dir of [home.workspaceDir(name), workspace.runtimeDir]) {
        NodeFs.rmSync(dir, { recursive: true, force: true })
      }
    },
    catch: (cause) =>
      new Permanent({
        message: `cannot remove the files of workspace ${name}: ${String(cause)}`,
        remediation: "fix the permissions and run delete again; the record is kept until its files are gone"
      })
  })
  yield* faultPoint("delete.files-removed")
  yield* store.remove(name)
  // A base that only this workspace's overlay used goes with it (gc sweeps whatever this leaves).
  yield* sweepBases.pipe(Effect.ignore)
  // The volumes outlive the workspace; only its claims go.
  yield* releaseVolumesOf(name)
  yield* forgetNetworks(workspace)
  return { workspace: name, deleted: true }
})
