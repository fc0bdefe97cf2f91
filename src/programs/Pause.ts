/**
 * `pause` and `resume`: freeze and thaw a running workspace's vCPUs. Memory, disk, network and the
 * guest channel are kept; exec, connect and cp are refused while paused (the guest cannot answer).
 * The record moves first and the VM second, so a crash in between leaves a record the runtime's
 * reconcile corrects from the VMM's own status; a VM that refuses to pause puts the record back.
 */
import { Effect, Option } from "effect"
import { Conflict } from "../domain/Errors.ts"
import type { KillRequest } from "../domain/Requests.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { Hypervisor } from "../services/Hypervisor.ts"
import { StateStore } from "../services/StateStore.ts"
import { reconcile, requireBackend, vmHandleOf } from "./internal/Reconcile.ts"

/** A pause's or resume's request (domain/Requests.ts) without the name. */
export type PauseOptions = Omit<KillRequest, "name">

const current = (name: string) =>
  Effect.gen(function*() {
    const store = yield* StateStore
    const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
    yield* requireBackend(workspace)
    return workspace
  })

const noVm = (workspace: Workspace) =>
  new Conflict({
    message: `workspace ${workspace.name} has no VM to ${workspace.state === "paused" ? "resume" : "pause"}`,
    remediation: `start it first: microagent start ${workspace.name}`
  })

/** Pauses a running workspace; one already paused is returned as it is. */
export const pause = Effect.fn("pause")(function*(name: string, options: PauseOptions = {}) {
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const workspace = yield* current(name)
  if (workspace.state === "paused") return workspace
  const paused = yield* store.transition(name, "pause", { detail: options.reason ?? "" })
  const handle = vmHandleOf(paused)
  if (Option.isNone(handle)) {
    yield* store.transition(name, "resume", { detail: "no VM was recorded" })
    return yield* noVm(workspace)
  }
  return yield* hypervisor.pause(handle.value).pipe(
    Effect.as(paused),
    Effect.tapError((error) =>
      store.transition(name, "resume", { detail: `the VM did not pause: ${error.message}` }).pipe(
        Effect.ignore
      )
    ),
    Effect.uninterruptible
  )
})

/** Resumes a paused workspace; one already running is returned as it is. */
export const resume = Effect.fn("resume")(function*(name: string, options: PauseOptions = {}) {
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const workspace = yield* current(name)
  if (workspace.state === "running") return workspace
  if (workspace.state === "paused" && workspace.owner !== undefined) {
    return yield* new Conflict({
      message: `workspace ${name} is paused by a snapshot being taken`,
      remediation: `it resumes by itself when the snapshot is written; see \`microagent inspect ${name}\``
    })
  }
  const handle = vmHandleOf(workspace)
  if (workspace.state === "paused" && Option.isNone(handle)) return yield* noVm(workspace)
  // The VM runs before the record says so: an exec let in by `running` must find it thawed.
  if (Option.isSome(handle) && workspace.state === "paused") yield* hypervisor.resume(handle.value)
  return yield* store.transition(name, "resume", { detail: options.reason ?? "" })
})
