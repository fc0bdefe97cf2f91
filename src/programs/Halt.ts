/**
 * `halt` (graceful, bounded, then forced) and `kill` (at once; also from `failed`, to end a VMM the
 * record lost track of).
 */
import { Cause, Duration, Effect, Exit, Option } from "effect"
import { Conflict } from "../domain/Errors.ts"
import type { HaltRequest, KillRequest } from "../domain/Requests.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { faultPoint } from "../services/Faults.ts"
import { Hypervisor } from "../services/Hypervisor.ts"
import { StateStore } from "../services/StateStore.ts"
import { collectEntrypoint } from "./Entrypoint.ts"
import { releaseBroker } from "./internal/Brokering.ts"
import { releaseModel } from "./internal/ModelPairing.ts"
import { releaseMounts } from "./internal/Mounts.ts"
import { detachNetworks } from "./internal/NetworkPlumbing.ts"
import { reapOrphanVmms } from "./internal/Orphans.ts"
import { ownedByMe, reconcile, requireBackend, vmHandleOf, withoutOwner } from "./internal/Reconcile.ts"

/** A halt's request (domain/Requests.ts) without the name. */
export type HaltOptions = Omit<HaltRequest, "name">

const detached = (workspace: Workspace) => withoutOwner({ ...workspace, vm: undefined } as Workspace)

export const halt = Effect.fn("halt")(function*(name: string, options: HaltOptions = {}) {
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const current = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(current)
  // An entrypoint that has finished keeps its outcome only in the guest until collected.
  if (current.state === "running" && current.result?.status === "running") {
    yield* collectEntrypoint(name).pipe(Effect.timeout(Duration.seconds(10)), Effect.ignore)
  }
  const stopping = yield* store.transition(name, "halt", {
    patch: yield* ownedByMe,
    detail: options.reason ?? ""
  })
  const handle = vmHandleOf(stopping)
  const timeoutSeconds = options.timeoutSeconds ?? 15
  // Once stopping, finish the job even if interrupted, so the record and the VMM agree; once stopped,
  // its volumes are released and its bundle disks removed.
  return yield* Effect.uninterruptible(Effect.gen(function*() {
    yield* faultPoint("halt.stopping")
    if (Option.isNone(handle)) {
      return yield* store.transition(name, "halted", { patch: detached, detail: "no VM was recorded" })
    }
    // Interruptible inside, so that its own timeouts can end a wait on a VMM that is dying (its
    // sockets accept but never answer); an interruption (Ctrl-C) there ends in a forced stop.
    const graceful = yield* Effect.exit(Effect.interruptible(hypervisor.halt(handle.value, timeoutSeconds)))
    if (Exit.isFailure(graceful)) {
      yield* hypervisor.kill(handle.value)
      const failure = Cause.failureOption(graceful.cause)
      return yield* store.transition(name, "halted", {
        patch: detached,
        detail: `forced: ${Option.isSome(failure) ? failure.value.message : "interrupted"}`
      })
    }
    return yield* store.transition(name, "halted", { patch: detached, detail: "guest powered off" })
  })).pipe(
    Effect.tap(releaseMounts),
    Effect.tap(detachNetworks),
    Effect.tap(releaseModel),
    Effect.tap(releaseBroker),
    Effect.uninterruptible
  )
})

/** A kill's request (domain/Requests.ts) without the name. */
export type KillOptions = Omit<KillRequest, "name">

export const kill = Effect.fn("kill")(function*(name: string, options: KillOptions = {}) {
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const current = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(current)
  const handle = vmHandleOf(current)
  if (current.state === "starting" && Option.isNone(handle)) {
    return yield* new Conflict({
      message: `workspace ${name} is still starting`,
      remediation: `wait for it (microagent wait ${name}) or retry kill in a moment`
    })
  }
  return yield* Effect.uninterruptible(
    store.transition(name, "kill", {
      patch: detached,
      detail: options.reason === undefined || options.reason === "" ? "killed" : `killed: ${options.reason}`
    }).pipe(
      Effect.tap(() => Option.isSome(handle) ? hypervisor.kill(handle.value) : Effect.void),
      // Now stopped, the record owns no VMM: any still running for it (a start that died) goes too.
      Effect.tap(() => reapOrphanVmms({ workspace: name })),
      Effect.tap(releaseMounts),
      Effect.tap(detachNetworks),
      Effect.tap(releaseModel),
      Effect.tap(releaseBroker)
    )
  )
})
