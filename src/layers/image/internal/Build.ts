/**
 * Turning an image's layers into an ext4 baseline under `images/rootfs/` (one per manifest digest and
 * build policy), recording it, and copying a baseline into a workspace's root disk.
 *
 * A baseline file appears (by rename) only once complete, and a record only once its baseline exists.
 */
import { DateTime, Deferred, Effect } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { classifyNoSpace } from "../../../domain/DiskFull.ts"
import { Conflict, NotFound, Permanent, ResourceExhausted } from "../../../domain/Errors.ts"
import { ImageInfo } from "../../../domain/Workspace.ts"
import type { HomeShape } from "../../../services/Home.ts"
import { type EnsureOptions, ImageRecord, type ImageSource } from "../../../services/ImageStore.ts"
import type { Descriptor, ImageConfigFile, Platform, RegistryError } from "../../../services/Registry.ts"
import type { RootfsBuilderShape } from "../../../services/RootfsBuilder.ts"
import { removeStaleWork } from "../../rootfs/RootfsBuilderLive.ts"
import { runTool } from "../../rootfs/Tools.ts"
import { type BlobFiles, hexOf, removeStalePartials } from "./Blobs.ts"
import type { ImageRecords } from "./Records.ts"

const MiB = 1024 * 1024

/** What an image needs to be built, from a registry or a local source. */
export interface Buildable {
  readonly ref: string
  readonly digest: string
  readonly indexDigest?: string | undefined
  readonly manifest: Uint8Array
  readonly configDescriptor: Descriptor
  readonly config: ImageConfigFile
  readonly configBytes: Uint8Array
  readonly layers: ReadonlyArray<Descriptor>
  readonly platform: Platform
  readonly source: ImageSource
  /** Puts one layer blob into the store (no-op when present), reporting bytes as they arrive. */
  readonly fetchLayer: (
    descriptor: Descriptor,
    destination: string,
    onBytes: (n: number) => void
  ) => Effect.Effect<
    void,
    RegistryError
  >
}

const imageInfo = (ref: string, digest: string, config: ImageConfigFile) => {
  const c = config.config ?? {}
  return new ImageInfo({
    ref,
    digest,
    entrypoint: [...(c.Entrypoint ?? [])],
    cmd: [...(c.Cmd ?? [])],
    env: [...(c.Env ?? [])],
    ...(c.User ? { user: c.User } : {}),
    ...(c.WorkingDir ? { workingDir: c.WorkingDir } : {}),
    ...(c.StopSignal ? { stopSignal: c.StopSignal } : {})
  })
}

/** Baselines of the store under `home`, built by `builder` from blobs in `blobs` and recorded in `records`. */
export const makeBaselines = (
  home: HomeShape,
  records: ImageRecords,
  blobs: BlobFiles,
  builder: RootfsBuilderShape
) => {
  const { blobDir, blobPath } = blobs
  const { findExact, readAll, upsert } = records
  const rootfsDir = NodePath.join(home.images, "rootfs")
  const locks = new Map<string, Effect.Semaphore>()
  const lockFor = (key: string) => {
    let lock = locks.get(key)
    if (lock === undefined) {
      lock = Effect.unsafeMakeSemaphore(1)
      locks.set(key, lock)
    }
    return lock
  }
  const ensureDirs = Effect.all([
    home.ensureDir(home.images),
    home.ensureDir(rootfsDir),
    home.ensureDir(home.blobs),
    home.ensureDir(blobDir)
  ])

  const baselineFor = (digest: string, options: EnsureOptions | undefined) => {
    const parts = [hexOf(digest), options?.allowGuestSetuid === true ? "setuid" : "nosetuid"]
    // A refusing build must not reuse a baseline that was built with the image's devices.
    if (options?.refuseDevices === true) parts.push("nodev")
    if (options?.baselineSizeMiB !== undefined) parts.push(`${options.baselineSizeMiB}m`)
    return NodePath.join(rootfsDir, `${parts.join("-")}.ext4`)
  }

  const checkFits = (record: ImageRecord, options: EnsureOptions | undefined) =>
    options?.sizeMiB !== undefined && record.neededMiB !== undefined && options.sizeMiB < record.neededMiB
      ? Effect.fail(
        new ResourceExhausted({
          message:
            `${record.ref} needs about ${record.neededMiB} MiB but the root disk is ${options.sizeMiB} MiB`,
          remediation: `use a size of at least ${record.neededMiB} MiB`
        })
      )
      : Effect.succeed(record)
  /** Downloads (concurrently) and builds a baseline unless one exists, then records `image.ref`. */
  const materialize = (image: Buildable, options: EnsureOptions | undefined) =>
    Effect.gen(function*() {
      yield* ensureDirs
      yield* removeStalePartials(blobDir)
      yield* removeStaleWork(home.tmp)
      const progress = options?.onProgress ?? (() => {})
      const baseline = baselineFor(image.digest, options)
      // Manifest and config are kept so the store can describe (and later export) what it built.
      yield* blobs.writeBlobs([[image.digest, image.manifest], [
        image.configDescriptor.digest,
        image.configBytes
      ]])
      // One build per baseline at a time in this process: a second caller finds the finished file and record.
      const record = yield* lockFor(baseline).withPermits(1)(Effect.gen(function*() {
        let built: { sizeBytes: number; neededMiB: number; setuidStripped: ReadonlyArray<string> } | undefined
        if (!NodeFs.existsSync(baseline)) {
          const total = image.layers.reduce((sum, l) => sum + l.size, 0)
          let received = 0
          const onBytes = (n: number) => {
            received += n
            progress({ phase: "download", done: received, total })
          }
          const deferreds = yield* Effect.forEach(
            image.layers,
            () => Deferred.make<string, RegistryError>()
          )
          const downloads = Effect.forEach(
            image.layers,
            (layer, i) =>
              image.fetchLayer(layer, blobPath(layer.digest), onBytes).pipe(
                Effect.as(blobPath(layer.digest)),
                Effect.intoDeferred(deferreds[i]!)
              ),
            { concurrency: 3, discard: true }
          )
          const build = builder.build({
            layers: image.layers.map((layer, i) => ({
              digest: layer.digest,
              size: layer.size,
              blob: Deferred.await(deferreds[i]!)
            })),
            output: baseline,
            sizeMiB: options?.baselineSizeMiB,
            allowGuestSetuid: options?.allowGuestSetuid,
            refuseDevices: options?.refuseDevices,
            onProgress: (p) =>
              progress(
                p.phase === "extract-layers"
                  ? { phase: "extract", done: p.layer ?? 0, total: p.layers ?? image.layers.length }
                  : { phase: p.phase }
              )
          })
          const [, result] = yield* Effect.all([downloads, build], { concurrency: 2 })
          built = result
        }
        const previous = yield* findExact(image.ref)
        const sameBaseline = (yield* readAll).find((r) => r.baselinePath === baseline)
        const now = yield* DateTime.now
        const c = image.config.config ?? {}
        const made = new ImageRecord({
          ref: image.ref,
          digest: image.digest,
          config: imageInfo(image.ref, image.digest, image.config),
          baselinePath: baseline,
          sizeBytes: built?.sizeBytes ?? sameBaseline?.sizeBytes
            ?? (yield* Effect.sync(() => NodeFs.statSync(baseline).size)),
          createdAt: previous?.digest === image.digest ? previous.createdAt : now,
          platform: image.platform,
          ...(image.indexDigest !== undefined ? { indexDigest: image.indexDigest } : {}),
          configDigest: image.configDescriptor.digest,
          layers: image.layers.map((l) => l.digest),
          source: image.source,
          setuidPolicy: options?.allowGuestSetuid === true ? "keep" : "strip",
          setuidStripped: built?.setuidStripped ?? sameBaseline?.setuidStripped ?? [],
          ...(built?.neededMiB ?? sameBaseline?.neededMiB) !== undefined
            ? { neededMiB: (built?.neededMiB ?? sameBaseline?.neededMiB)! }
            : {},
          ...(c.Labels ? { labels: { ...c.Labels } } : {}),
          exposedPorts: Object.keys(c.ExposedPorts ?? {}),
          lastUsedAt: now
        })
        return yield* upsert(made)
      }))
      progress({ phase: "complete" })
      return yield* checkFits(record, options)
    })

  const cloneRootfs = Effect.fn("ImageStore.cloneRootfs")(function*(
    image: ImageRecord,
    destination: string,
    sizeMiB?: number
  ) {
    const baseline = image.baselinePath
    if (baseline === undefined || !NodeFs.existsSync(baseline)) {
      return yield* new NotFound({
        message: `the root filesystem baseline of ${image.ref} is missing`,
        remediation: `run \`microagent image pull ${image.ref}\` to rebuild it`
      })
    }
    if (sizeMiB !== undefined && image.neededMiB !== undefined && sizeMiB < image.neededMiB) {
      return yield* new ResourceExhausted({
        message: `${image.ref} needs about ${image.neededMiB} MiB but the root disk is ${sizeMiB} MiB`,
        remediation: `use a size of at least ${image.neededMiB} MiB`
      })
    }
    if (NodeFs.existsSync(destination)) {
      return yield* new Conflict({ message: `${destination} already exists`, remediation: "remove it first" })
    }
    const partial = `${destination}.partial-${process.pid}-${NodeCrypto.randomBytes(4).toString("hex")}`
    const work = Effect.gen(function*() {
      // reflink where the filesystem can (btrfs, xfs), else a sparse copy: never a re-extraction.
      yield* runTool("cp", ["--reflink=auto", "--sparse=always", baseline, partial]).pipe(
        Effect.flatMap((r) =>
          r.code === 0
            ? Effect.void
            : Effect.fail(new Permanent({ message: `copying the baseline failed: ${r.stderr.trim()}` }))
        )
      )
      const current = NodeFs.statSync(partial).size
      if (sizeMiB !== undefined && sizeMiB * MiB !== current) {
        if (sizeMiB * MiB > current) yield* Effect.sync(() => NodeFs.truncateSync(partial, sizeMiB * MiB))
        else {
          // Shrinking needs a checked filesystem.
          const checked = yield* runTool("e2fsck", ["-f", "-y", "-q", partial])
          if (checked.code !== null && checked.code > 1) {
            return yield* new Permanent({
              message: `e2fsck before shrinking failed: ${checked.stderr.trim()}`
            })
          }
        }
        const resized = yield* runTool("resize2fs", [partial, `${sizeMiB}M`])
        if (resized.code !== 0) {
          return yield* new ResourceExhausted({
            message: `resizing the root disk to ${sizeMiB} MiB failed: ${
              (resized.stderr || resized.stdout).trim()
            }`,
            remediation: "choose a larger size"
          })
        }
      }
      yield* Effect.sync(() => {
        NodeFs.chmodSync(partial, 0o600)
        NodeFs.renameSync(partial, destination)
      })
    })
    yield* work.pipe(
      Effect.mapError((e) =>
        e._tag === "ToolMissing"
          ? new Permanent({ message: e.message, remediation: e.remediation })
          : e._tag === "ToolFailed"
          ? new Permanent({ message: e.message })
          : e
      ),
      // A workspace's disk is made in a staging directory renamed into place: name where it lives.
      Effect.mapError(classifyNoSpace(
        `copying the root disk of ${image.ref}`,
        NodePath.basename(NodePath.dirname(destination)).startsWith(".staging")
          ? NodePath.dirname(NodePath.dirname(destination))
          : NodePath.dirname(destination)
      )),
      Effect.onExit(() => Effect.sync(() => NodeFs.rmSync(partial, { force: true })))
    )
  })

  return { rootfsDir, baselineFor, checkFits, materialize, cloneRootfs }
}

export type Baselines = ReturnType<typeof makeBaselines>
