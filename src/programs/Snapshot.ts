/**
 * `snapshot create|list|delete`. A snapshot lives in `<workspace dir>/snapshots/<tag>/`: `manifest.json`,
 * `disk.ext4` (a sparse or reflinked copy of the workspace's disk) and, for a live workspace, `vm.state`
 * (device state and memory as QEMU's migration stream).
 *
 * Crash consistency: everything is written into `snapshots/.staging-<tag>-<pid>/`, fsynced, and published
 * by one rename; a create that dies leaves only a staging directory, which no listing reports and the
 * next create or list removes once its process is gone. Delete renames before it removes, for the same
 * reason. A running workspace goes through the store's `pause` and `resume` transitions, so no exec or
 * halt races the capture.
 */
import { Effect, Option, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { guestSecrets } from "../domain/Broker.ts"
import { Conflict, InvalidInput, NotFound, Permanent, Unsupported } from "../domain/Errors.ts"
import { SnapshotDeleted, SnapshotManifest, tagPattern } from "../domain/Snapshot.ts"
import type { Workspace } from "../domain/Workspace.ts"

import { faultPoint } from "../services/Faults.ts"
import { Home } from "../services/Home.ts"
import { Hypervisor, memoryFileOf, type VmHandle } from "../services/Hypervisor.ts"
import { KernelCache } from "../services/KernelCache.ts"
import { Processes } from "../services/Processes.ts"
import { StateStore } from "../services/StateStore.ts"
import { guestValues } from "./internal/Brokering.ts"
import { allocatedBytes, fsyncPath } from "./internal/DiskCopy.ts"
import { copyDiskFlat } from "./internal/DiskOverlay.ts"
import { syncGuest } from "./internal/GuestSync.ts"
import { ownedByMe, reconcile, requireBackend, vmHandleOf, withoutOwner } from "./internal/Reconcile.ts"
import {
  checkSecretValues,
  deliverSecrets,
  purgeSecrets,
  type SecretValues
} from "./internal/SecretDelivery.ts"

export interface SnapshotCreateOptions {
  readonly tag?: string | undefined
  /**
   * Keep everything as evidence: the memory with any secrets in it, whatever disks and networks the
   * workspace has. Never restored (restores refuse it); the default tag is `forensic-<time>`.
   */
  readonly forensic?: boolean | undefined
  /**
   * The values of the workspace's secrets, resolved by the caller (as for `start`): a live capture of
   * a workspace holding secrets wipes them from the guest first and delivers these again afterwards.
   */
  readonly secretValues?: SecretValues | undefined
  /** A fork's capture: the fork's process (see `SnapshotManifest.forkedBy`). */
  readonly forkedBy?: { readonly pid: number; readonly startTime: string } | undefined
}

const diskFile = "disk.ext4"
const stateFile = "vm.state"
const manifestFile = "manifest.json"

export const snapshotsDir = (home: { readonly workspaceDir: (name: string) => string }, name: string) =>
  NodePath.join(home.workspaceDir(name), "snapshots")

const defaultTag = (now: Date, prefix: "snap" | "forensic") =>
  `${prefix}-${now.toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z")}`

const checkTag = (tag: string) =>
  tagPattern.test(tag)
    ? Effect.succeed(tag)
    : Effect.fail(
      new InvalidInput({
        message: `"${tag}" is not a snapshot tag`,
        remediation:
          "use letters, digits, '.', '_' and '-', starting with a letter or digit, up to 63 characters"
      })
    )

/**
 * Removes staging and deleting directories whose process is gone (what a crash left). A zombie (a
 * killed process nobody reaped yet) counts as gone: `kill(pid, 0)` would say alive.
 */
const sweepLeftovers = (dir: string) =>
  Effect.gen(function*() {
    const processes = yield* Processes
    let entries: Array<string> = []
    try {
      entries = NodeFs.readdirSync(dir)
    } catch {
      return
    }
    for (const entry of entries) {
      const match = /^\.(staging|deleting)-.*-(\d+)$/.exec(entry)
      if (match === null) continue
      if (match[1] === "staging" && (yield* processes.isAlive(Number(match[2])))) continue
      NodeFs.rmSync(NodePath.join(dir, entry), { recursive: true, force: true })
    }
  })

const writeManifest = (dir: string, manifest: SnapshotManifest) =>
  Effect.sync(() => {
    const file = NodePath.join(dir, manifestFile)
    NodeFs.writeFileSync(file, JSON.stringify(manifest, null, 2) + "\n", { mode: 0o600 })
  })

const readManifest = (dir: string) =>
  Effect.try({
    try: () => JSON.parse(NodeFs.readFileSync(NodePath.join(dir, manifestFile), "utf8")) as unknown,
    catch: (cause) => new Permanent({ message: `cannot read the manifest in ${dir}: ${String(cause)}` })
  }).pipe(
    Effect.flatMap((json) =>
      Effect.try({
        try: () => Schema.decodeUnknownSync(SnapshotManifest)(json),
        catch: (cause) => new Permanent({ message: `the manifest in ${dir} is not valid: ${String(cause)}` })
      })
    )
  )

/** Why a live workspace cannot have its memory captured (yet), if it cannot. */
const liveProblem = (workspace: Workspace): Unsupported | undefined => {
  const refuse = (feature: string, message: string, remediation: string) =>
    new Unsupported({ message, remediation, backend: workspace.backend, feature })
  const inGuest = guestSecrets(workspace.secrets)
  if (inGuest.length > 0 && workspace.state !== "running") {
    // Fail closed: the secrets can only be wiped from a running guest, and the image would hold them.
    return refuse(
      "snapshot of a paused workspace holding secrets",
      `workspace ${workspace.name} is paused and holds secrets (${
        inGuest.map((s) => s.name).join(", ")
      }); they cannot be wiped from it before the capture`,
      `resume it first (microagent resume ${workspace.name}), or halt it and snapshot its disk only`
    )
  }
  if (workspace.mounts.length > 0) {
    return refuse(
      "snapshot of a workspace with attached disks",
      `workspace ${workspace.name} has disks attached (${
        workspace.mounts.map((m) => m.target).join(", ")
      }); their contents are not part of a snapshot and a restore would see them changed`,
      `halt it and snapshot its disk only (microagent halt ${workspace.name})`
    )
  }
  if (workspace.networks.length > 0) {
    return refuse(
      "snapshot of a workspace on a named network",
      `workspace ${workspace.name} is on named networks (${workspace.networks.join(", ")})`,
      `halt it and snapshot its disk only (microagent halt ${workspace.name})`
    )
  }
  return undefined
}

export const snapshotCreate = Effect.fn("snapshot.create")(function*(
  name: string,
  options: SnapshotCreateOptions = {}
) {
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const home = yield* Home
  const forensic = options.forensic === true
  const tag = yield* checkTag(options.tag ?? defaultTag(new Date(), forensic ? "forensic" : "snap"))
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(workspace)
  const live = workspace.state === "running" || workspace.state === "paused"
  const stopped = workspace.state === "prepared" || workspace.state === "halted"
    || workspace.state === "stopped"
  if (!live && !stopped) {
    return yield* new Conflict({
      message: `cannot snapshot workspace ${name} while it is ${workspace.state}`,
      remediation: "wait until it is running, paused, halted or stopped"
    })
  }
  if (live) {
    if (!hypervisor.capabilities.has("Snapshot")) {
      return yield* new Unsupported({
        message: `the ${hypervisor.backend} backend cannot capture a running VM`,
        remediation: `halt the workspace and snapshot its disk`,
        backend: hypervisor.backend,
        feature: "Snapshot"
      })
    }
    // What makes a capture unsafe to restore is what a forensic capture is for.
    const problem = forensic ? undefined : liveProblem(workspace)
    if (problem !== undefined) return yield* problem
  }
  // The secrets are wiped before the capture and delivered again after it: their values come first.
  // Broker-held secrets never reach the guest: only the others are wiped and delivered again.
  const purge = live && !forensic && guestSecrets(workspace.secrets).length > 0
  if (purge) yield* checkSecretValues(name, workspace.secrets, options.secretValues ?? [])
  const dir = yield* home.ensureDir(snapshotsDir(home, name))
  yield* sweepLeftovers(dir)
  const final = NodePath.join(dir, tag)
  if (NodeFs.existsSync(final)) {
    return yield* new Conflict({
      message: `workspace ${name} already has a snapshot tagged ${tag}`,
      remediation: `pick another tag, or delete it first (microagent snapshot delete ${name} ${tag})`
    })
  }
  const kernels = yield* Effect.serviceOption(KernelCache)
  const boot = live && Option.isSome(kernels)
    ? Option.some(yield* kernels.value.ensure(process.arch === "arm64" ? "aarch64" : "x86_64"))
    : Option.none()

  const staging = NodePath.join(dir, `.staging-${tag}-${process.pid}`)
  const capture = Effect.gen(function*() {
    yield* home.ensureDir(staging)
    let pausedMs: number | undefined
    if (live) {
      const handle = vmHandleOf(workspace)
      if (Option.isNone(handle)) {
        return yield* new Conflict({ message: `workspace ${name} has no VM recorded`, remediation: "retry" })
      }
      pausedMs = purge
        ? yield* purgeSecrets(name, handle.value).pipe(
          Effect.zipRight(captureLive(name, workspace.state === "running", handle.value, staging)),
          // Whatever the capture did, the running guest gets its secrets back.
          Effect.ensuring(
            deliverSecrets(name, handle.value, guestValues(workspace, options.secretValues ?? [])).pipe(
              Effect.ignore
            )
          )
        )
        : yield* captureLive(name, workspace.state === "running", handle.value, staging)
    } else {
      yield* copyDiskFlat(workspace.rootfsPath, NodePath.join(staging, diskFile))
    }
    const disk = NodePath.join(staging, diskFile)
    const state = NodePath.join(staging, stateFile)
    const memory = NodeFs.existsSync(memoryFileOf(state)) ? memoryFileOf(state) : undefined
    const manifest = SnapshotManifest.make({
      formatVersion: 1,
      workspace: name,
      tag,
      kind: live ? "memory" : "disk",
      createdAt: new Date().toISOString(),
      sourceState: workspace.state,
      backend: workspace.backend,
      image: {
        ref: workspace.image.ref,
        ...(workspace.image.digest ? { digest: workspace.image.digest } : {})
      },
      ...(Option.isSome(boot)
        ? { kernelSha256: boot.value.kernelSha256, initrdSha256: boot.value.initrdSha256 }
        : {}),
      // A live capture holds the memory the VM was launched with, which a one-start override changes.
      resources: live ? workspace.launched ?? workspace.resources : workspace.resources,
      hostname: workspace.hostname,
      network: workspace.network,
      ports: workspace.ports,
      // A live capture wiped the secrets first, unless forensic; a disk never holds them (tmpfs).
      secretsPurged: !(live && forensic && workspace.secrets.length > 0),
      ...(forensic ? { forensic: true } : {}),
      ...(options.forkedBy === undefined ? {} : { forkedBy: options.forkedBy }),
      secretNames: workspace.secrets.map((s) => s.name),
      files: {
        disk: diskFile,
        ...(live ? { state: stateFile } : {}),
        ...(memory !== undefined ? { memory: NodePath.basename(memory) } : {})
      },
      allocatedBytes: allocatedBytes(disk) + (live ? allocatedBytes(state) : 0)
        + (memory !== undefined ? allocatedBytes(memory) : 0),
      diskBytes: NodeFs.statSync(disk).size,
      ...(live ? { stateBytes: NodeFs.statSync(state).size } : {}),
      ...(memory !== undefined ? { memoryBytes: NodeFs.statSync(memory).size } : {}),
      ...(pausedMs === undefined ? {} : { pausedMs })
    })
    yield* writeManifest(staging, manifest)
    yield* Effect.sync(() => {
      for (const file of NodeFs.readdirSync(staging)) fsyncPath(NodePath.join(staging, file))
      fsyncPath(staging)
    })
    if (NodeFs.existsSync(final)) {
      return yield* new Conflict({ message: `workspace ${name} already has a snapshot tagged ${tag}` })
    }
    yield* Effect.sync(() => {
      NodeFs.renameSync(staging, final)
      fsyncPath(dir)
    })
    yield* store.appendEvent(name, {
      type: "snapshot",
      detail: `created ${tag} (${manifest.kind}${forensic ? ", forensic" : ""})`
    })
    return manifest
  })
  return yield* capture.pipe(
    Effect.onError(() => Effect.sync(() => NodeFs.rmSync(staging, { recursive: true, force: true })))
  )
})

/**
 * Pauses (through the store, when it was running), writes the VM state and copies the disk while
 * paused, then resumes; returns how long the guest was held. Resuming is not skipped on failure.
 */
const captureLive = (name: string, wasRunning: boolean, handle: VmHandle, staging: string) =>
  Effect.gen(function*() {
    const store = yield* StateStore
    const hypervisor = yield* Hypervisor
    const workspace = yield* store.get(name)
    const started = Date.now()
    const held = Effect.gen(function*() {
      yield* hypervisor.pause(handle)
      yield* hypervisor.saveState(handle, NodePath.join(staging, stateFile))
      yield* faultPoint("snapshot.capturing")
      yield* copyDiskFlat(workspace.rootfsPath, NodePath.join(staging, diskFile))
    })
    if (!wasRunning) {
      yield* held
      return Date.now() - started
    }
    // The disk copy is taken while the guest is held: what the guest wrote but did not flush yet would
    // be missing from it when it boots cold (`create --from-snapshot`). Best effort: a guest whose
    // agent does not answer is still captured.
    yield* syncGuest(handle)
    // Owned while paused: if this process dies mid-capture, the next reader resumes the VM.
    yield* store.transition(name, "pause", { patch: yield* ownedByMe, detail: "snapshot" })
    yield* held.pipe(
      Effect.ensuring(
        hypervisor.resume(handle).pipe(
          Effect.zipRight(
            store.transition(name, "resume", { patch: withoutOwner, detail: "snapshot taken" })
          ),
          Effect.ignore
        )
      ),
      Effect.uninterruptible
    )
    return Date.now() - started
  })

/** One snapshot of a workspace: its manifest and the absolute paths of its files. */
export interface LoadedSnapshot {
  readonly manifest: SnapshotManifest
  readonly dir: string
  readonly disk: string
  readonly state: string | undefined
}

/** Reads a published snapshot to restore from; an unknown tag is `NotFound`, a forensic one `Conflict`. */
export const loadSnapshot = Effect.fn("snapshot.load")(function*(name: string, tag: string) {
  const home = yield* Home
  yield* checkTag(tag)
  const dir = NodePath.join(snapshotsDir(home, name), tag)
  if (!NodeFs.existsSync(NodePath.join(dir, manifestFile))) {
    return yield* new NotFound({
      message: `workspace ${name} has no snapshot tagged ${tag}`,
      remediation: `see microagent snapshot list ${name}`
    })
  }
  const manifest = yield* readManifest(dir)
  if (manifest.forensic === true) {
    return yield* new Conflict({
      message: `snapshot ${name}:${tag} is forensic: evidence, never restored`,
      remediation: `read its files in ${dir}, or take an ordinary snapshot to restore from`
    })
  }
  const inside = (file: string) => {
    // The manifest names files of its own directory; anything else is not ours to read.
    const path = NodePath.resolve(dir, file)
    return NodePath.dirname(path) === dir ? path : undefined
  }
  const disk = inside(manifest.files.disk)
  const state = manifest.files.state === undefined ? undefined : inside(manifest.files.state)
  if (disk === undefined || (manifest.files.state !== undefined && state === undefined)) {
    return yield* new Permanent({ message: `the manifest of snapshot ${name}:${tag} names files outside it` })
  }
  for (const file of [disk, ...(state === undefined ? [] : [state])]) {
    if (!NodeFs.existsSync(file)) {
      return yield* new Permanent({
        message: `snapshot ${name}:${tag} is missing ${NodePath.basename(file)}`,
        remediation: `delete it (microagent snapshot delete ${name} ${tag})`
      })
    }
  }
  return { manifest, dir, disk, state } satisfies LoadedSnapshot
})

export const snapshotList = Effect.fn("snapshot.list")(function*(name: string) {
  const store = yield* StateStore
  const home = yield* Home
  yield* store.get(name)
  const dir = snapshotsDir(home, name)
  yield* sweepLeftovers(dir)
  const entries = yield* Effect.sync(() => {
    try {
      return NodeFs.readdirSync(dir).filter((entry) => tagPattern.test(entry)).sort()
    } catch {
      return []
    }
  })
  const manifests = yield* Effect.forEach(entries, (entry) =>
    readManifest(NodePath.join(dir, entry)).pipe(
      Effect.map(Option.some),
      // An unreadable manifest is not a snapshot; it is reported by `snapshot create` refusing its tag.
      Effect.catchAll(() => Effect.succeed(Option.none()))
    ))
  return manifests.flatMap((m) => (Option.isSome(m) ? [m.value] : [])).sort((a, b) =>
    a.createdAt.localeCompare(b.createdAt)
  )
})

export const snapshotDelete = Effect.fn("snapshot.delete")(function*(name: string, tag: string) {
  const store = yield* StateStore
  const home = yield* Home
  yield* checkTag(tag)
  yield* store.get(name)
  const dir = snapshotsDir(home, name)
  const final = NodePath.join(dir, tag)
  if (!NodeFs.existsSync(final)) {
    return yield* new NotFound({
      message: `workspace ${name} has no snapshot tagged ${tag}`,
      remediation: `see microagent snapshot list ${name}`
    })
  }
  const doomed = NodePath.join(dir, `.deleting-${tag}-${process.pid}`)
  yield* Effect.try({
    try: () => {
      NodeFs.renameSync(final, doomed)
      fsyncPath(dir)
      NodeFs.rmSync(doomed, { recursive: true, force: true })
    },
    catch: (cause) => new Permanent({ message: `cannot delete snapshot ${tag}: ${String(cause)}` })
  })
  yield* store.appendEvent(name, { type: "snapshot", detail: `deleted ${tag}` })
  return new SnapshotDeleted({ workspace: name, tag, deleted: true })
})
