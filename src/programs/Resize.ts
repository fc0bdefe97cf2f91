/**
 * `resize`: grows (or shrinks, down to its content) a workspace's root disk, offline. Refused while
 * the workspace's VM may be alive, and while it has snapshots (a snapshot's memory expects the disk
 * it was taken with). It holds the disk's claim (internal/DiskClaim.ts) while it changes it, so a start
 * or an offline cp or commit cannot run on the disk at the same time.
 */
import { Effect } from "effect"
import { Conflict, InvalidInput, Unsupported } from "../domain/Errors.ts"
import { isLive } from "../domain/State.ts"
import type { ResizeResult } from "../domain/Usage.ts"
import { Resources, type Workspace } from "../domain/Workspace.ts"
import { Disks } from "../services/Disks.ts"
import { StateStore } from "../services/StateStore.ts"
import { claimStoppedDisk } from "./internal/DiskClaim.ts"
import { diskSizeOf } from "./internal/DiskOverlay.ts"
import { reconcile } from "./internal/Reconcile.ts"
import { snapshotList } from "./Snapshot.ts"

const MiB = 1024 * 1024
export const minRootMiB = 16
export const maxRootMiB = 16 * 1024 * 1024

/** What a resize would do, or why it cannot: checked without changing anything. */
export const resizePlan = Effect.fn("resize.plan")(function*(name: string, sizeMiB: number) {
  if (!Number.isInteger(sizeMiB) || sizeMiB < minRootMiB || sizeMiB > maxRootMiB) {
    return yield* new InvalidInput({
      message:
        `invalid size ${sizeMiB}: --size-mib must be a whole number from ${minRootMiB} to ${maxRootMiB}`,
      remediation: "give --size-mib N, e.g. --size-mib 4096"
    })
  }
  const store = yield* StateStore
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  if (isLive(workspace.state) || workspace.state === "quarantined") {
    return yield* new Conflict({
      message: `workspace ${name} is ${workspace.state}: its disk is resized offline`,
      remediation: workspace.state === "quarantined"
        ? "a quarantined workspace is held for inspection and cannot change"
        : `halt it first (microagent halt ${name}), then resize and start it again`
    })
  }
  const snapshots = yield* snapshotList(name)
  if (snapshots.length > 0) {
    return yield* new Conflict({
      message:
        `workspace ${name} has ${snapshots.length} snapshot(s): they expect the disk they were taken with`,
      remediation: `delete them first (microagent snapshot delete ${name} TAG)`
    })
  }
  const size = diskSizeOf(workspace.rootfsPath)
  if (size === undefined) {
    return yield* new Unsupported({
      message: `workspace ${name} has no root disk file to resize (the ${workspace.backend} backend)`,
      remediation: "resize workspaces of a backend that boots from an ext4 disk (qemu)",
      backend: workspace.backend,
      feature: "resize"
    })
  }
  const fromMiB = Math.round(size / MiB)
  return { workspace, fromMiB }
})

export const resize = Effect.fn("resize")(function*(name: string, sizeMiB: number) {
  const { fromMiB, workspace } = yield* resizePlan(name, sizeMiB)
  const disks = yield* Disks
  const store = yield* StateStore
  const what = `workspace ${name}'s root disk`
  if (sizeMiB !== fromMiB) {
    yield* Effect.scoped(
      Effect.zipRight(claimStoppedDisk(name, "a resize"), disks.resize(workspace.rootfsPath, sizeMiB, what))
    )
    yield* store.update(name, (ws) =>
      ({
        ...ws,
        resources: new Resources({ ...ws.resources, sizeMiB })
      }) as Workspace)
    yield* store.appendEvent(name, { type: "resized", detail: `root disk ${fromMiB} MiB -> ${sizeMiB} MiB` })
  }
  const usage = yield* disks.usage(workspace.rootfsPath, what)
  return { workspace: name, from_size_mib: fromMiB, to_size_mib: sizeMiB, usage } satisfies ResizeResult
})
