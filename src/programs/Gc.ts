/**
 * `gc`: reaps what a crash left behind. Live records are reconciled with their VMMs; runtime
 * directories and staging directories that no record owns are removed, and every VMM of this state
 * directory that no live record owns is killed. Disks of recorded workspaces are never touched.
 */
import { DateTime, Effect, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { isLive } from "../domain/State.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { Egress } from "../services/Egress.ts"
import { Home } from "../services/Home.ts"
import { Processes } from "../services/Processes.ts"
import { StateStore, type StateStoreShape } from "../services/StateStore.ts"
import { Volume, Volumes } from "../services/Volumes.ts"
import { remove } from "./Delete.ts"
import { sweepBases } from "./internal/DiskOverlay.ts"
import { reapNetworks } from "./internal/NetworkPlumbing.ts"
import { reapOrphanVmms } from "./internal/Orphans.ts"
import { reconcile } from "./internal/Reconcile.ts"
import { stagingInUse } from "./internal/Staging.ts"
import { snapshotList } from "./Snapshot.ts"

export interface GcReport {
  readonly reconciled: ReadonlyArray<
    { readonly workspace: string; readonly from: string; readonly to: string }
  >
  readonly removed: ReadonlyArray<string>
  readonly killed: ReadonlyArray<number>
}

const entries = (dir: string) => (NodeFs.existsSync(dir) ? NodeFs.readdirSync(dir) : [])

/** Scratch that another command may still be using is left alone until it is this old. */
const staleAfterMs = 15 * 60 * 1000
const isStale = (path: string, now: number) => {
  try {
    return now - NodeFs.statSync(path).mtimeMs > staleAfterMs
  } catch {
    return false
  }
}

/** Reconciles the live workspaces of the provided backend with their VMMs; reports what changed. */
export const gcReconcile = Effect.fn("gcReconcile")(function*() {
  const store = yield* StateStore
  const reconciled: Array<GcReport["reconciled"][number]> = []
  for (const workspace of yield* store.list) {
    const after = yield* reconcile(workspace).pipe(Effect.catchAll(() => Effect.succeed(workspace)))
    if (after.state !== workspace.state) {
      reconciled.push({ workspace: workspace.name, from: workspace.state, to: after.state })
    }
  }
  return reconciled
})

/**
 * Whether a workspace's record is live now, asked as each leftover comes up rather than from a list
 * read before: a start admitted meanwhile keeps what it made. An unreadable store keeps everything.
 */
export const stillLive = (store: StateStoreShape) => (name: string) =>
  store.find(name).pipe(
    Effect.map((found) => Option.isSome(found) && isLive(found.value.state)),
    Effect.orElseSucceed(() => true)
  )

/**
 * One-shot workspaces whose `run` died with its process (a runtime killed mid-run, an application
 * that crashed): nothing else would ever delete them (see `reapAbandoned`). A workspace whose
 * process lives is left alone.
 */
export const abandonedRuns = Effect.fn("gcAbandonedRuns")(function*() {
  const store = yield* StateStore
  const processes = yield* Processes
  return yield* Effect.filter(
    (yield* store.list).filter((ws) => ws.ephemeral && ws.heldBy !== undefined),
    (ws) =>
      Effect.map(processes.isAlive(ws.heldBy!.pid, ws.heldBy!.startTime || undefined), (alive) => !alive)
  )
})

/**
 * Deletes a workspace its maker abandoned (a one-shot run, a fork's child), killing its VM first;
 * answers whether it went.
 */
export const reapAbandoned = (name: string) =>
  remove(name, { force: true }).pipe(
    Effect.map((result) => result.deleted),
    Effect.catchAll(() => Effect.succeed(false))
  )

/** A fork's children and its capture, left by a process that died before the fork ended. */
export interface AbandonedFork {
  /** The children made so far (each still carries the fork's mark). */
  readonly children: ReadonlyArray<Workspace>
  /** Captures (`workspace`, `tag`) whose fork's process is gone. */
  readonly captures: ReadonlyArray<{ readonly workspace: string; readonly tag: string }>
}

/**
 * What forks whose process died half way (a runtime killed mid-fork) left: the children, by the mark
 * each carries until its fork ends, and the captures, by the mark in their manifests. A fork that
 * lived would have undone itself (all or nothing); these are undone for it. `withCaptures: false`
 * looks at the records only (cheap, for every pass of the runtime); captures need the snapshots read.
 */
export const abandonedForks = Effect.fn("gcAbandonedForks")(function*(
  options: { readonly withCaptures: boolean } = { withCaptures: true }
) {
  const store = yield* StateStore
  const processes = yield* Processes
  const gone = (mark: { readonly pid: number; readonly startTime: string }) =>
    Effect.map(processes.isAlive(mark.pid, mark.startTime || undefined), (alive) => !alive)
  const all = yield* store.list
  const children = yield* Effect.filter(
    all,
    (ws) => ws.forkedBy === undefined ? Effect.succeed(false) : gone(ws.forkedBy)
  )
  const captures: Array<AbandonedFork["captures"][number]> = []
  if (options.withCaptures) {
    for (const ws of all) {
      for (const manifest of yield* snapshotList(ws.name).pipe(Effect.orElseSucceed(() => []))) {
        if (manifest.forkedBy !== undefined && (yield* gone(manifest.forkedBy))) {
          captures.push({ workspace: ws.name, tag: manifest.tag })
        }
      }
    }
  }
  return { children, captures } satisfies AbandonedFork
})

/**
 * Live workspaces whose lease (`--ttl`) has run out, for `gc` to stop. Leases are enforced by `gc`
 * only: nothing stops a workspace the moment its lease ends.
 */
export const expiredLive = Effect.fn("gcExpired")(function*() {
  const store = yield* StateStore
  const now = yield* DateTime.now
  return (yield* store.list).filter((ws) =>
    isLive(ws.state) && ws.expiresAt !== undefined && DateTime.lessThan(ws.expiresAt, now)
  )
})

/** Kills VMMs no live record owns; removes runtime and staging directories no record owns. */
export const gcSweep = Effect.fn("gcSweep")(function*() {
  const store = yield* StateStore
  const home = yield* Home
  const workspaces = yield* store.list
  const known = new Set<string>(workspaces.map((ws) => ws.name))
  const removed: Array<string> = []
  // VMMs no live record owns, whatever their records say (a start whose runtime died, a deleted record).
  const killed = [...yield* reapOrphanVmms()]
  const runRoot = NodePath.join(home.root, "run")
  for (const name of entries(runRoot)) {
    const dir = NodePath.join(runRoot, name)
    if (known.has(name) || !NodeFs.statSync(dir).isDirectory()) continue
    if ((yield* store.find(name))._tag === "Some") continue
    NodeFs.rmSync(dir, { recursive: true, force: true })
    removed.push(dir)
  }
  const now = Date.now()
  for (const name of entries(home.workspaces)) {
    const dir = NodePath.join(home.workspaces, name)
    // Staging of a create still under way is left alone: its process lives (or, for old names, it is recent).
    if (
      known.has(name) || (name.startsWith(".staging-") && (yield* stagingInUse(name)) && !isStale(dir, now))
    ) {
      continue
    }
    // A create may have finished since the list was read.
    if ((yield* store.find(name))._tag === "Some") continue
    // Staging directories of interrupted creates, and directories whose record is gone.
    NodeFs.rmSync(dir, { recursive: true, force: true })
    removed.push(dir)
  }
  // Bases of copy-on-write disks that no overlay names any more.
  removed.push(...yield* sweepBases.pipe(Effect.orElseSucceed((): ReadonlyArray<string> => [])))
  for (const name of entries(home.tmp)) {
    const path = NodePath.join(home.tmp, name)
    if (!isStale(path, now)) continue
    NodeFs.rmSync(path, { recursive: true, force: true })
    removed.push(path)
  }
  // Volume claims of workspaces that are no longer live (their VM died without a halt or kill).
  const volumes = yield* Effect.serviceOption(Volumes)
  if (Option.isSome(volumes)) {
    const liveNow = new Set<string>((yield* store.list).filter((ws) => isLive(ws.state)).map((ws) => ws.name))
    const all = yield* volumes.value.list.pipe(Effect.orElseSucceed((): ReadonlyArray<Volume> => []))
    const stale = new Set(
      all.flatMap((v) => [...(v.attachedTo === undefined ? [] : [v.attachedTo]), ...v.readers])
        .filter((holder) => !holder.startsWith("!") && !liveNow.has(holder))
    )
    for (const holder of stale) {
      yield* volumes.value.release(holder).pipe(Effect.ignore)
      removed.push(`volume claims of ${holder}`)
    }
  }
  // Namespaces (with their bridges) of named networks no live workspace is on.
  const namespaces = yield* reapNetworks.pipe(Effect.orElseSucceed((): ReadonlyArray<string> => []))
  removed.push(...namespaces.map((ns) => `netns ${ns}`))
  // Egress mediators and namespaces of workspaces that no longer run (the mediator normally goes with its VM).
  const egress = yield* Effect.serviceOption(Egress)
  if (Option.isSome(egress)) {
    const reaped = yield* egress.value.reap(stillLive(store))
    removed.push(...reaped.map((ws) => `egress mediation of ${ws}`))
  }
  return { removed, killed }
})
