/**
 * `fork W --count N`: N live children of a running workspace in one call. The parent is captured once
 * (a memory snapshot: it is paused for the capture and runs on), each child is made from that snapshot
 * (`createFromSnapshot`: a copy of the disk and of the VM state, its own name, hostname and machine-id)
 * and started, which resumes the captured VM rather than booting it. The snapshot goes once the children
 * have their own copies.
 *
 * All or nothing: the children's names are checked before anything is captured, and a child that
 * cannot be made or started takes the ones made before it with it.
 */
import { Effect, Either, Schema } from "effect"
import { Conflict, InvalidInput, type MicroagentError } from "../domain/Errors.ts"
import { forkChildNames } from "../domain/Requests.ts"
import { nameProblem, Workspace } from "../domain/Workspace.ts"
import { faultPoint, type Faults } from "../services/Faults.ts"
import { Processes } from "../services/Processes.ts"
import { StateStore } from "../services/StateStore.ts"
import { createFromSnapshot } from "./Clone.ts"
import { remove } from "./Delete.ts"
import { reconcile, requireBackend } from "./internal/Reconcile.ts"
import type { SecretValues } from "./internal/SecretDelivery.ts"
import { snapshotCreate, snapshotDelete } from "./Snapshot.ts"
import { start } from "./Start.ts"

export const maxForkCount = 16

/** A count a fork can make (1 to 16), else `InvalidInput`: checked before anything is looked up. */
export const checkForkCount = (count: number) =>
  Number.isInteger(count) && count >= 1 && count <= maxForkCount
    ? Effect.void
    : Effect.fail(
      new InvalidInput({
        message: `invalid count ${count}: a fork makes 1 to ${maxForkCount} children`,
        remediation: "give --count N, e.g. --count 3"
      })
    )

export interface ForkOptions {
  /** How many children (1 to 16; default 1). */
  readonly count?: number | undefined
  /** Children are named PREFIX-1 … PREFIX-N (default: the parent's name and `-fork`). */
  readonly namePrefix?: string | undefined
  /** The parent's secret values (resolved by the caller): delivered again to it and to each child. */
  readonly secretValues?: SecretValues | undefined
}

export class ForkResult extends Schema.Class<ForkResult>("ForkResult")({
  source: Schema.String,
  /** The running children, in order. */
  children: Schema.Array(Workspace),
  /** Milliseconds the parent was held paused for the capture. */
  pausedMs: Schema.optional(Schema.Number)
}) {}

/** What the programs a fork is made of need. */
type ForkServices =
  | Effect.Effect.Context<ReturnType<typeof start>>
  | Effect.Effect.Context<ReturnType<typeof snapshotCreate>>
  | Effect.Effect.Context<ReturnType<typeof createFromSnapshot>>
  | Effect.Effect.Context<ReturnType<typeof remove>>
  | Processes
  | Faults

// Annotated: inferred through four other programs, the type came out `unknown` where a module that
// imports them all was checked first. It can fail with every kind (a launch's six, ResourceExhausted
// and PolicyDenied besides), so it keeps the whole union.
export const fork: (
  name: string,
  options?: ForkOptions
) => Effect.Effect<ForkResult, MicroagentError, ForkServices> = Effect.fn("fork")(function*(
  name: string,
  options: ForkOptions = {}
) {
  const count = options.count ?? 1
  yield* checkForkCount(count)
  const names = forkChildNames(name, { count, namePrefix: options.namePrefix })
  for (const child of names) {
    const problem = nameProblem(child)
    if (problem !== undefined) {
      return yield* new InvalidInput({
        message: `the child name ${child} is not valid: ${problem}`,
        remediation: "choose another --name-prefix"
      })
    }
  }
  const store = yield* StateStore
  const parent = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(parent)
  if (parent.state !== "running") {
    return yield* new Conflict({
      message: `workspace ${name} is ${parent.state}: fork takes a running workspace`,
      remediation: parent.state === "paused"
        ? `resume it first (microagent resume ${name})`
        : `start it first, or copy it stopped: microagent clone ${name} NEW`
    })
  }
  for (const child of names) {
    if ((yield* store.find(child))._tag === "Some") {
      return yield* new Conflict({
        message: `a workspace named ${child} exists already`,
        remediation: "choose another --name-prefix, or delete it first"
      })
    }
  }

  // This process's mark on the capture and on each child until the fork ends: if it dies half way, the
  // runtime and gc undo the fork whole (Gc.ts `abandonedForks`).
  const self = (yield* Processes).self
  const forkedBy = { pid: self.pid, startTime: self.startTime ?? "" }
  const tag = `fork-${Date.now().toString(36)}-${process.pid.toString(36)}`
  const manifest = yield* snapshotCreate(name, { tag, secretValues: options.secretValues, forkedBy })
  const made: Array<string> = []
  // Children are independent: made and started a few at a time (a restore mostly waits on I/O).
  const children = yield* Effect.forEach(
    names,
    (child, index) =>
      // Child i's address on QEMU's network is the i-th after the parent's: no two children share one.
      createFromSnapshot(child, `${name}:${tag}`, { copyIndex: index, freshPorts: true, forkedBy }).pipe(
        Effect.tap(() => Effect.sync(() => made.push(child))),
        Effect.zipRight(start(child, { secretValues: options.secretValues })),
        Effect.tap(() => faultPoint("fork.child-started"))
      ),
    { concurrency: 4 }
  ).pipe(
    // Whole: the children are ordinary workspaces from here.
    Effect.flatMap((started) =>
      Effect.forEach(
        started,
        (child) => store.update(child.name, (ws) => new Workspace({ ...ws, forkedBy: undefined }))
      )
    ),
    // All or nothing: what was made of the children goes with a failure, and with an interruption (a
    // caller's Ctrl-C), which error handlers never see.
    Effect.onError(() =>
      Effect.forEach(made, (child) => Effect.either(remove(child, { force: true })), { discard: true })
    ),
    Effect.ensuring(Effect.either(snapshotDelete(name, tag)).pipe(Effect.map(Either.isRight)))
  )
  return new ForkResult({
    source: name,
    children,
    ...(manifest.pausedMs === undefined ? {} : { pausedMs: manifest.pausedMs })
  })
})
