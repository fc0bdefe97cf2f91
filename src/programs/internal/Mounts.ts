/**
 * The disks of a start: named volumes claimed for the workspace, tar bundles built into one-shot ext4
 * disks in its runtime directory, ext4 images attached as they are. Claims are released, and bundle
 * disks removed, when the VM stops (halt, kill, boot failure) or the workspace is deleted; the volumes
 * themselves, and their data, outlive it.
 */
import { Effect, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Conflict, NotFound, PolicyDenied, Unsupported } from "../../domain/Errors.ts"
import { validateMounts } from "../../domain/MountFlag.ts"
import { isLive } from "../../domain/State.ts"
import type { Mount, Workspace } from "../../domain/Workspace.ts"
import { DiskAttachment, Hypervisor } from "../../services/Hypervisor.ts"
import { Processes } from "../../services/Processes.ts"
import { RootfsBuilder } from "../../services/RootfsBuilder.ts"
import { StateStore } from "../../services/StateStore.ts"
import { Volumes } from "../../services/Volumes.ts"
import { reconcile } from "./Reconcile.ts"

/** Whether a recorded holder still holds its volume: its workspace exists and its VM may be alive. */
export const holderIsLive = (holder: string) =>
  Effect.gen(function*() {
    const resizing = /^!resize:(\d+)$/.exec(holder)
    if (resizing !== null) return yield* (yield* Processes).isAlive(Number(resizing[1]))
    const store = yield* StateStore
    const found = yield* store.find(holder)
    if (Option.isNone(found) || !isLive(found.value.state)) return false
    const hypervisor = yield* Hypervisor
    // Another backend's VMs cannot be checked from here; their record is believed.
    if (found.value.backend !== hypervisor.backend) return true
    const now = yield* reconcile(found.value).pipe(Effect.catchAll(() => Effect.succeed(found.value)))
    return isLive(now.state)
  })

const volumesOf = (workspace: Workspace) => workspace.mounts.filter((m) => m.kind === "volume")

const requireVolumes = (workspace: string) =>
  Effect.gen(function*() {
    const volumes = yield* Effect.serviceOption(Volumes)
    if (Option.isNone(volumes)) {
      return yield* new Unsupported({
        message: `workspace ${workspace} mounts named volumes, and this process has no volume store`,
        remediation: "start it through the runtime (the CLI does), or provide the Volumes layer",
        feature: "Volumes"
      })
    }
    return volumes.value
  })

/**
 * Whether `workspace` may have the volume: a live holder (or, for a read-write mount, a live reader)
 * is a `Conflict` naming it; stale ones are returned for the claim to let go.
 */
const claimable = (workspace: string, mount: Mount) =>
  Effect.gen(function*() {
    const volumes = yield* requireVolumes(workspace)
    const volume = yield* volumes.inspect(mount.source).pipe(
      Effect.catchTag("NotFound", () =>
        Effect.fail(
          new NotFound({
            message: `workspace ${workspace} mounts volume ${mount.source}, which does not exist`,
            remediation: `create it: microagent volume create ${mount.source}`
          })
        ))
    )
    const holder = volume.attachedTo
    let replacing: string | undefined
    if (holder !== undefined && holder !== workspace) {
      if (yield* holderIsLive(holder)) {
        return yield* new Conflict({
          message: holder.startsWith("!resize:")
            ? `volume ${mount.source} is being resized`
            : `volume ${mount.source} is attached read-write to workspace ${holder}, which is running`,
          remediation: holder.startsWith("!resize:")
            ? "retry when the resize has finished"
            : `halt or delete ${holder} first (microagent halt ${holder}), or use another volume`
        })
      }
      replacing = holder
    }
    const staleReaders: Array<string> = []
    if (!mount.readOnly) {
      for (const reader of volume.readers.filter((r) => r !== workspace)) {
        if (!(yield* holderIsLive(reader))) staleReaders.push(reader)
        else {
          return yield* new Conflict({
            message: `volume ${mount.source} is mounted read-only by workspace ${reader}, which is running`,
            remediation:
              `halt or delete ${reader} first (microagent halt ${reader}), or mount it read-only (:ro)`
          })
        }
      }
    }
    return { replacing, staleReaders }
  })

/**
 * Before the workspace changes state: every source exists, the backend attaches disks, and no volume
 * is held by another running workspace. A refusal here leaves the workspace as it was.
 */
export const checkMounts = (workspace: Workspace) =>
  Effect.gen(function*() {
    if (workspace.mounts.length === 0) return
    yield* validateMounts(workspace.mounts)
    const hypervisor = yield* Hypervisor
    if (!hypervisor.capabilities.has("Volumes")) {
      return yield* new Unsupported({
        message:
          `the ${hypervisor.backend} backend does not attach disks (workspace ${workspace.name} mounts ${workspace.mounts.length})`,
        remediation: "use the qemu backend",
        backend: hypervisor.backend,
        feature: "Volumes"
      })
    }
    for (const mount of workspace.mounts) {
      if (mount.kind !== "volume" && !hypervisor.capabilities.has("DiskImages")) {
        return yield* new Unsupported({
          message:
            `the ${hypervisor.backend} backend attaches named volumes only, not the ${mount.kind} ${mount.source} of workspace ${workspace.name}`,
          remediation: "use the qemu backend, or put the files in a named volume",
          backend: hypervisor.backend,
          feature: "DiskImages"
        })
      }
    }
    for (const mount of workspace.mounts) {
      if (mount.kind === "volume") yield* claimable(workspace.name, mount)
      else if (!NodeFs.statSync(mount.source, { throwIfNoEntry: false })?.isFile()) {
        return yield* new NotFound({
          message: `workspace ${workspace.name} mounts ${mount.source}, which is not a file`,
          remediation: "put the file back, or recreate the workspace without it"
        })
      }
    }
  })

const bundleDisk = (runtimeDir: string, index: number) => NodePath.join(runtimeDir, `bundle-${index}.ext4`)

/** The default size of a bundle's disk; bigger when the content needs it. */
const bundleMiB = 64

const buildBundle = (source: string, output: string) =>
  Effect.gen(function*() {
    const builder = yield* RootfsBuilder
    NodeFs.rmSync(output, { force: true })
    const request = (sizeMiB: number | undefined) =>
      builder.build({
        layers: [{ digest: `bundle ${source}`, blob: Effect.succeed(source) }],
        output,
        sizeMiB
      })
    yield* request(bundleMiB).pipe(
      Effect.catchTag("ResourceExhausted", () => request(undefined)),
      Effect.mapError((error) =>
        error._tag === "PolicyDenied"
          ? new PolicyDenied({
            message: `refusing bundle ${source}: ${error.message.replace(/^refusing image: /, "")}`,
            remediation: "the archive tries to write outside its root, or holds device nodes; rebuild it"
          })
          : error
      )
    )
  })

/**
 * Claims the volumes and builds the bundle disks of a workspace that is `starting`; the disks to
 * attach, in mount order. On failure, what was claimed or built is released.
 */
export const attachMounts = (workspace: Workspace, runtimeDir: string) =>
  Effect.gen(function*() {
    const disks: Array<DiskAttachment> = []
    for (const [index, mount] of workspace.mounts.entries()) {
      if (mount.kind === "volume") {
        const volumes = yield* requireVolumes(workspace.name)
        const stale = yield* claimable(workspace.name, mount)
        const volume = yield* volumes.attach(mount.source, workspace.name, {
          readOnly: mount.readOnly,
          ...stale
        })
        disks.push(
          new DiskAttachment({
            name: mount.source,
            path: volume.path,
            mountpoint: mount.target,
            readOnly: mount.readOnly,
            kind: "volume"
          })
        )
      } else if (mount.kind === "bundle") {
        const path = bundleDisk(runtimeDir, index)
        yield* buildBundle(mount.source, path)
        disks.push(
          new DiskAttachment({
            name: `bundle-${index}`,
            path,
            mountpoint: mount.target,
            readOnly: mount.readOnly,
            kind: "bundle"
          })
        )
      } else {
        disks.push(
          new DiskAttachment({
            name: NodePath.basename(mount.source),
            path: mount.source,
            mountpoint: mount.target,
            readOnly: mount.readOnly,
            kind: "image"
          })
        )
      }
    }
    return disks
  }).pipe(Effect.tapError(() => releaseMounts(workspace)))

/** Releases the workspace's volume claims and removes its bundle disks. Never fails. */
export const releaseMounts = (workspace: Workspace) =>
  Effect.gen(function*() {
    if (workspace.mounts.length === 0) return
    const volumes = yield* Effect.serviceOption(Volumes)
    if (Option.isSome(volumes) && volumesOf(workspace).length > 0) {
      yield* volumes.value.release(workspace.name).pipe(
        Effect.tapError((error) =>
          Effect.logWarning(`cannot release the volumes of ${workspace.name}`, error)
        ),
        Effect.ignore
      )
    }
    yield* Effect.sync(() => {
      for (const index of workspace.mounts.keys()) {
        NodeFs.rmSync(bundleDisk(workspace.runtimeDir, index), { force: true })
      }
    })
  })

/** For `delete`: release by name, whatever the record says now. */
export const releaseVolumesOf = (name: string) =>
  Effect.flatMap(
    Effect.serviceOption(Volumes),
    (volumes) => Option.isSome(volumes) ? volumes.value.release(name).pipe(Effect.ignore) : Effect.void
  )
