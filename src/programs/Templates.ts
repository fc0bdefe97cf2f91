/**
 * Warm-start templates (docs/snapshots.md, "Warm starts"). The first start of a workspace whose disk is
 * still the image's restores a template instead of booting: a VM of the same image, kernel and machine
 * shape, booted once, saved the moment its agent answered and kept in the store. A missing template is
 * built by that start (one build per shape at a time, across processes); a template that cannot be
 * built or restored only costs the warm start: the workspace boots cold.
 *
 * The store: `templates/<key>/` (0700) holding `disk.ext4` (the disk the guest had mounted), `vm.state`
 * (device state), `vm.state.mem` (its RAM, mapped copy-on-write by every restore) and `manifest.json`.
 */
import { Effect, Either, Option, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Permanent } from "../domain/Errors.ts"
import {
  TemplateEntry,
  templateKey,
  TemplateManifest,
  type TemplateShape,
  TemplatesPruned,
  warmRefusal
} from "../domain/Template.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { Home } from "../services/Home.ts"
import {
  DiskAttachment,
  Hypervisor,
  LaunchConfig,
  memoryFileOf,
  NicAttachment,
  rootDiskOf,
  standInNicMac
} from "../services/Hypervisor.ts"
import { ImageStore } from "../services/ImageStore.ts"
import { type BootArtifacts, KernelCache } from "../services/KernelCache.ts"
import { Processes } from "../services/Processes.ts"
import { allocatedBytes, fsyncPath } from "./internal/DiskCopy.ts"
import { copyDiskFlat, diskSizeOf } from "./internal/DiskOverlay.ts"
import { syncGuest } from "./internal/GuestSync.ts"
import { templateLock, templateRuntimeName, templatesDir } from "./internal/TemplateFiles.ts"

const manifestFile = "manifest.json"
const diskFile = "disk.ext4"
const stateFile = "vm.state"

export interface LoadedTemplate {
  readonly manifest: TemplateManifest
  readonly dir: string
  readonly disk: string
  readonly state: string
}

/**
 * Drops a template whose state the VMM refused (damaged, or written by another version of it), so
 * the next first start of its shape builds it again instead of failing the same way. A restore under
 * way keeps the files it opened.
 */
export const discardTemplate = (template: LoadedTemplate) =>
  Effect.sync(() => NodeFs.rmSync(template.dir, { recursive: true, force: true }))

const decodeManifest = Schema.decodeUnknownEither(Schema.parseJson(TemplateManifest))

/** A published template, or none when its directory is missing or incomplete. */
const readTemplate = (dir: string): Option.Option<LoadedTemplate> => {
  let text: string
  try {
    text = NodeFs.readFileSync(NodePath.join(dir, manifestFile), "utf8")
  } catch {
    return Option.none()
  }
  const manifest = decodeManifest(text)
  const state = NodePath.join(dir, stateFile)
  const disk = NodePath.join(dir, diskFile)
  if (Either.isLeft(manifest) || ![state, memoryFileOf(state), disk].every((f) => NodeFs.existsSync(f))) {
    return Option.none()
  }
  return Option.some({ manifest: manifest.right, dir, disk, state })
}

/** What a start knows about itself that decides whether it may be warm. */
export interface WarmRequest {
  readonly cold: boolean
  readonly resources: { readonly memoryMiB: number; readonly cpus: number }
  readonly artifacts: BootArtifacts | undefined
  readonly modelChannel: boolean
}

export type WarmPlan =
  | { readonly _tag: "Warm"; readonly template: LoadedTemplate; readonly built: boolean }
  | { readonly _tag: "Cold"; readonly reason: string; readonly buildFailed?: boolean }

const diskPristine = (workspace: Workspace) => {
  // A clone's or a snapshot copy's disk is another workspace's, whatever its times say.
  if (workspace.diskFromImage !== true) return false
  try {
    // The record is written after the clone, its time in whole milliseconds.
    const mtime = Math.floor(NodeFs.statSync(rootDiskOf(workspace.rootfsPath).path).mtimeMs)
    return mtime <= workspace.createdAt.epochMillis
  } catch {
    return false
  }
}

/**
 * Decides a start: the template to restore (built now if missing), or why it boots. Never fails: a
 * template that cannot be built is a reason to boot.
 */
export const planWarmStart = (workspace: Workspace, request: WarmRequest) =>
  Effect.gen(function*() {
    const hypervisor = yield* Hypervisor
    const refusal = warmRefusal({
      cold: request.cold,
      restorable: hypervisor.capabilities.has("Snapshot") && request.artifacts !== undefined,
      firstStart: workspace.state === "prepared",
      diskPristine: diskPristine(workspace),
      imageDigest: workspace.image.digest,
      mounts: workspace.mounts.length,
      namedNetworks: workspace.networks.length,
      brokers: workspace.brokers.length
    })
    if (refusal !== undefined || request.artifacts === undefined) {
      return { _tag: "Cold", reason: refusal ?? "no kernel" } satisfies WarmPlan as WarmPlan
    }
    const variant = hypervisor.guestVariant?.()
    const shape: TemplateShape = {
      backend: hypervisor.backend,
      imageDigest: workspace.image.digest!,
      diskBytes: diskSizeOf(workspace.rootfsPath) ?? 0,
      kernelSha256: request.artifacts.kernelSha256,
      initrdSha256: request.artifacts.initrdSha256,
      memoryMiB: request.resources.memoryMiB,
      cpus: request.resources.cpus,
      network: workspace.network,
      ...(workspace.mounts.length === 0 ? {} : { disks: workspace.mounts.length }),
      ...(workspace.networks.length === 0 ? {} : { nets: workspace.networks.length }),
      ...(request.modelChannel ? { model: true as const } : {}),
      ...(workspace.brokers.length === 0 ? {} : { brokers: workspace.brokers.length }),
      ...(variant === undefined ? {} : { variant })
    }
    return yield* ensureTemplate(shape, workspace, request.artifacts).pipe(
      Effect.map(({ built, template }): WarmPlan => ({ _tag: "Warm", template, built })),
      Effect.catchAll((error) =>
        Effect.succeed<WarmPlan>({ _tag: "Cold", reason: `no template: ${error.message}`, buildFailed: true })
      )
    )
  })

/** The template of this shape: the published one, or one built from the workspace's pristine disk. */
const ensureTemplate = (shape: TemplateShape, workspace: Workspace, artifacts: BootArtifacts) =>
  Effect.gen(function*() {
    const home = yield* Home
    const root = yield* home.ensureDir(templatesDir(home.root))
    const key = templateKey(shape)
    const dir = NodePath.join(root, key)
    const lock = templateLock(home.root, key)
    const processes = yield* Processes
    // One build per shape: a start that finds another building waits for its result (bounded).
    const deadline = Date.now() + 180_000
    while (true) {
      const published = readTemplate(dir)
      if (Option.isSome(published)) return { built: false, template: published.value }
      if (yield* processes.tryLock(lock)) break
      if (Date.now() > deadline) {
        return yield* new Permanent({ message: `template ${key} is still being built by another process` })
      }
      yield* Effect.sleep("100 millis")
    }
    return yield* Effect.gen(function*() {
      // Published between the last look and the lock.
      const raced = readTemplate(dir)
      if (Option.isSome(raced)) return { built: false, template: raced.value }
      yield* sweepBuilds(root)
      const template = yield* buildTemplate(key, shape, workspace, artifacts, dir)
      yield* dropSuperseded(root, template.manifest)
      return { built: true, template }
    }).pipe(Effect.ensuring(processes.releaseLock(lock)))
  })

/**
 * Boots the template's VM on a copy of the workspace's disk (still the image's), waits for its agent,
 * flushes the guest's writes, pauses and saves it, and publishes the directory atomically. The VM is
 * killed whatever happens; a failed build leaves nothing.
 */
const buildTemplate = (
  key: string,
  shape: TemplateShape,
  workspace: Workspace,
  artifacts: BootArtifacts,
  dir: string
) =>
  Effect.gen(function*() {
    const home = yield* Home
    const hypervisor = yield* Hypervisor
    const processes = yield* Processes
    const started = Date.now()
    const staging = `${dir}.staging-${process.pid}`
    const runtimeDir = home.runtimeDir(templateRuntimeName(key))
    const build = Effect.gen(function*() {
      // Under the build lock: a VMM left there is a dead build's (kill -9 of its process).
      for (const vmm of yield* processes.vmms(home.root)) {
        if (vmm.workspace === templateRuntimeName(key)) yield* processes.endVmm(vmm)
      }
      NodeFs.rmSync(staging, { recursive: true, force: true })
      yield* home.ensureDir(staging)
      const disk = NodePath.join(staging, diskFile)
      yield* copyDiskFlat(workspace.rootfsPath, disk)
      yield* home.ensureDir(runtimeDir)
      // Empty stand-ins where the workspaces will have their disks: the guest sees as many block devices
      // (each of size 0, so it reads and caches nothing of them), and mounts the real ones after a restore.
      const standIns = Array.from({ length: shape.disks ?? 0 }, (_, i) => {
        const path = NodePath.join(runtimeDir, `stand-in-${i + 1}.img`)
        NodeFs.writeFileSync(path, new Uint8Array(0), { mode: 0o600 })
        return new DiskAttachment({
          name: `stand-in-${i + 1}`,
          path,
          mountpoint: "",
          readOnly: false,
          kind: "stand-in"
        })
      })
      const config = new LaunchConfig({
        kernelPath: artifacts.kernelPath,
        initrdPath: artifacts.initrdPath,
        ...(artifacts.kernelHz === undefined ? {} : { kernelHz: artifacts.kernelHz }),
        workspace: `template-${key.slice(0, 12)}`,
        runtimeDir,
        rootfsPath: disk,
        memoryMiB: shape.memoryMiB,
        cpus: shape.cpus,
        hostname: "template",
        network: shape.network,
        disks: standIns,
        // Stand-ins for NICs on named networks: nothing behind them, left down by the guest.
        nics: Array.from({ length: shape.nets ?? 0 }, (_, i) =>
          new NicAttachment({ network: "", tap: "", mac: standInNicMac(i), address: "", standIn: true })),
        // The channels a restore serves (the agent starts their forwarders then), with nothing behind them.
        ...(shape.model === true ? { modelChannel: true } : {}),
        ...(shape.brokers === undefined
          ? {}
          : {
            brokerPorts: Array.from({ length: shape.brokers }, (_, i) =>
              i + 1)
          }),
        channelsUnannounced: true,
        // No NAT state in the saved stream: the template then restores behind QEMU's NAT or a tap.
        unpluggedNic: true,
        ports: [],
        bootTimeoutSeconds: 60
      })
      yield* Effect.acquireUseRelease(
        hypervisor.launch(config),
        (handle) =>
          syncGuest(handle).pipe(
            Effect.zipRight(hypervisor.pause(handle)),
            Effect.zipRight(hypervisor.saveState(handle, NodePath.join(staging, stateFile)))
          ),
        (handle) =>
          hypervisor.kill(handle).pipe(Effect.ignore)
      )
      const state = NodePath.join(staging, stateFile)
      const manifest = TemplateManifest.make({
        formatVersion: 1,
        key,
        imageRef: workspace.image.ref,
        shape,
        createdAt: new Date().toISOString(),
        buildMs: Date.now() - started,
        allocatedBytes: allocatedBytes(disk) + allocatedBytes(state) + allocatedBytes(memoryFileOf(state))
      })
      NodeFs.writeFileSync(
        NodePath.join(staging, manifestFile),
        JSON.stringify(Schema.encodeSync(TemplateManifest)(manifest), null, 2) + "\n",
        { mode: 0o600 }
      )
      for (const file of NodeFs.readdirSync(staging)) fsyncPath(NodePath.join(staging, file))
      NodeFs.renameSync(staging, dir)
      fsyncPath(NodePath.dirname(dir))
      return { manifest, dir, disk: NodePath.join(dir, diskFile), state: NodePath.join(dir, stateFile) }
    })
    return yield* build.pipe(
      Effect.ensuring(Effect.sync(() => NodeFs.rmSync(runtimeDir, { recursive: true, force: true }))),
      Effect.onError(() => Effect.sync(() => NodeFs.rmSync(staging, { recursive: true, force: true })))
    )
  })

/**
 * A new template of an image replaces the ones of the same image reference and machine built on an
 * older image or kernel: they would never match again.
 */
const dropSuperseded = (root: string, fresh: TemplateManifest) =>
  Effect.sync(() => {
    for (const entry of templateDirs(root)) {
      const other = readTemplate(NodePath.join(root, entry))
      if (Option.isNone(other) || other.value.manifest.key === fresh.key) continue
      const { manifest } = other.value
      const sameMachine = manifest.imageRef === fresh.imageRef
        && manifest.shape.memoryMiB === fresh.shape.memoryMiB
        && manifest.shape.cpus === fresh.shape.cpus && manifest.shape.network === fresh.shape.network
        && manifest.shape.diskBytes === fresh.shape.diskBytes && manifest.shape.disks === fresh.shape.disks
        && manifest.shape.nets === fresh.shape.nets && manifest.shape.model === fresh.shape.model
        && manifest.shape.brokers === fresh.shape.brokers
      if (sameMachine) NodeFs.rmSync(other.value.dir, { recursive: true, force: true })
    }
  })

const templateDirs = (root: string): Array<string> => {
  try {
    return NodeFs.readdirSync(root).filter((entry) => /^[0-9a-f]{24}$/.test(entry))
  } catch {
    return []
  }
}

/** Leftovers of builds whose process died (kill -9): staging directories and locks. */
const sweepBuilds = (root: string) =>
  Effect.gen(function*() {
    const processes = yield* Processes
    let entries: Array<string> = []
    try {
      entries = NodeFs.readdirSync(root)
    } catch {
      return
    }
    for (const entry of entries) {
      const staging = /\.staging-(\d+)$/.exec(entry)
      if (staging !== null && !(yield* processes.isAlive(Number(staging[1])))) {
        NodeFs.rmSync(NodePath.join(root, entry), { recursive: true, force: true })
      }
    }
  })

/** The templates in the store, each with whether its image and kernel are still there. */
export const listTemplates = Effect.fn("templates.list")(function*() {
  const home = yield* Home
  const root = templatesDir(home.root)
  const images = yield* ImageStore
  const digests = new Set((yield* images.list).map((image) => image.digest))
  const kernels = yield* Effect.serviceOption(KernelCache)
  const kernelShas = Option.isSome(kernels)
    ? new Set((yield* kernels.value.list).map((k) => k.sha256))
    : undefined
  return templateDirs(root).flatMap((entry) =>
    Option.match(readTemplate(NodePath.join(root, entry)), {
      onNone: () => [],
      onSome: ({ manifest }) => {
        const stale = !digests.has(manifest.shape.imageDigest)
          ? "its image is no longer in the store"
          : kernelShas !== undefined && !kernelShas.has(manifest.shape.kernelSha256)
          ? "its kernel is no longer installed"
          : undefined
        return [new TemplateEntry({ manifest, ...(stale === undefined ? {} : { stale }) })]
      }
    })
  )
})

/**
 * Removes stale templates (or all with `all`), and what dead builds left. Safe while workspaces run
 * from them: a restored VM maps its memory file, which outlives the unlink, and has its own disk.
 */
export const pruneTemplates = Effect.fn("templates.prune")(
  function*(options: { readonly all?: boolean } = {}) {
    const home = yield* Home
    const root = templatesDir(home.root)
    yield* sweepBuilds(root)
    const entries = yield* listTemplates()
    const removed: Array<string> = []
    let freedBytes = 0
    for (const entry of entries) {
      if (options.all !== true && entry.stale === undefined) continue
      freedBytes += entry.manifest.allocatedBytes
      NodeFs.rmSync(NodePath.join(root, entry.manifest.key), { recursive: true, force: true })
      removed.push(entry.manifest.key)
    }
    return new TemplatesPruned({ removed, kept: entries.length - removed.length, freedBytes })
  }
)
