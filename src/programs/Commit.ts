/**
 * `commit W REF`: a stopped workspace's root filesystem as an OCI image in the local store, so that
 * `run REF`, `create --image REF` and `image push REF` use it like any other image.
 *
 * The disk is copied first (reflink or sparse copy) and read from the copy, without root and without
 * mounting (e2fsck, then debugfs). The copy holds the disk's claim (internal/DiskClaim.ts), which offline
 * `cp` holds too, and the workspace's record must be unchanged across the copy, so a start racing the
 * commit makes it fail with `conflict` instead of reading a disk being written. The layer keeps
 * owners, modes with setuid/setgid/sticky bits, symlinks, hard links, device nodes, FIFOs and xattrs; what
 * the runtime wrote for its own use is not committed (see internal/CommitPlan.ts). Config comes from
 * the base image (Env, WorkingDir, User, Entrypoint, Cmd, labels, ports…), with one history entry.
 *
 * Reproducible: the same disk content gives the same digest. The tar is sorted and deterministic, mtimes
 * come from the inodes, and the image's `created` is the newest modification time in the committed tree.
 */
import { Effect, Either, Schema } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { classifyNoSpace } from "../domain/DiskFull.ts"
import { Conflict, InvalidInput, NotFound, Permanent } from "../domain/Errors.ts"
import { parseImageRef } from "../domain/ImageRef.ts"
import type { State } from "../domain/State.ts"
import { DiskFiles, type DiskFilesFailed } from "../services/DiskFiles.ts"
import { DiskTrees, type DiskTreesFailed, type Ext4Tree } from "../services/DiskTrees.ts"
import { Home, scopedWorkDir } from "../services/Home.ts"
import { type ImageRecord, ImageStore } from "../services/ImageStore.ts"
import { type Descriptor, hostPlatform, type ImageConfigFile, MediaTypes } from "../services/Registry.ts"
import { StateStore } from "../services/StateStore.ts"
import { imagePush, PushResult } from "./Image.ts"
import {
  createdOf,
  diffTree,
  layerEntries,
  needsContentCheck,
  planTree,
  restoreSpecialBits,
  runtimePaths
} from "./internal/CommitPlan.ts"
import { claimDisk } from "./internal/DiskClaim.ts"
import { flattenDisk } from "./internal/DiskOverlay.ts"
import { reconcile } from "./internal/Reconcile.ts"

export interface CommitOptions {
  /** Push the image after committing it (same credentials as pulls). */
  readonly push?: boolean | undefined
  /** One layer of what changed against the base image, on top of the base's layers. */
  readonly diff?: boolean | undefined
  /** The history entry's comment. */
  readonly message?: string | undefined
  readonly author?: string | undefined
  /** Plain http to a registry that is not on loopback (with `push`). */
  readonly insecureRegistry?: boolean | undefined
}

export const CommitResult = Schema.Struct({
  workspace: Schema.String,
  ref: Schema.String,
  /** The manifest digest (the same for the same content). */
  digest: Schema.String,
  /** The base image the workspace was created from. */
  base: Schema.String,
  diff: Schema.Boolean,
  layers: Schema.Number,
  /** The new layer: its blob digest, size and number of entries. */
  layer: Schema.Struct({ digest: Schema.String, size: Schema.Number, entries: Schema.Number }),
  created: Schema.String,
  push: Schema.optional(PushResult)
})
export type CommitResult = typeof CommitResult.Type

/** States with no VM: the disk is at rest. */
const committable: ReadonlyArray<State> = ["prepared", "halted", "stopped"]

const hexOf = (digest: string) => digest.replace(/^sha256:/, "")

/** A failure of the disk tools while repairing or reading a disk; a missing tool names its package. */
const readFailed = (name: string) => (error: DiskFilesFailed | DiskTreesFailed) =>
  error.remediation !== undefined
    ? new Permanent({ message: error.message, remediation: error.remediation })
    : new Permanent({
      message: `workspace ${name}: reading its disk failed: ${error.message}`,
      remediation: "check the disk with `e2fsck -fn`; start and halt the workspace once to repair it"
    })

const sha256 = (bytes: Uint8Array) => `sha256:${NodeCrypto.createHash("sha256").update(bytes).digest("hex")}`

interface ManifestDoc {
  readonly layers?: ReadonlyArray<Descriptor>
}

interface ConfigDoc extends ImageConfigFile {
  readonly history?: ReadonlyArray<unknown>
}

const readJsonBlob = <A>(file: string, what: string) =>
  Effect.try({
    try: () => JSON.parse(NodeFs.readFileSync(file, "utf8")) as A,
    catch: (cause) =>
      new NotFound({
        message: `the ${what} is not readable in the store: ${
          cause instanceof Error ? cause.message : String(cause)
        }`,
        remediation: "pull the base image again (microagent image pull REF), then retry"
      })
  })

/** Commits a stopped workspace's root filesystem as image `ref` in the local store (and pushes it). */
export const workspaceCommit = Effect.fn("workspaceCommit")(function*(
  name: string,
  ref: string,
  options: CommitOptions = {}
) {
  const store = yield* StateStore
  const images = yield* ImageStore
  const home = yield* Home
  const files = yield* DiskFiles
  const trees = yield* DiskTrees
  const target = yield* Either.match(parseImageRef(ref), {
    onLeft: (e) =>
      Effect.fail(new InvalidInput({ message: e.message, remediation: "for example: localhost/team/app:1" })),
    onRight: Effect.succeed
  })
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  if (!committable.includes(workspace.state)) {
    return yield* new Conflict({
      message: `cannot commit workspace ${name} while it is ${workspace.state}`,
      remediation: workspace.state === "failed"
        ? `\`microagent kill ${name}\` makes sure no VM is left, then commit`
        : `halt it first: microagent halt ${name}`
    })
  }
  const baseRecord: ImageRecord | undefined = yield* images.inspect(
    workspace.image.digest ?? workspace.image.ref
  )
    .pipe(
      Effect.orElse(() => images.inspect(workspace.image.ref)),
      Effect.catchTag("NotFound", () => Effect.succeed(undefined))
    )
  const baseline = baseRecord?.baselinePath !== undefined && NodeFs.existsSync(baseRecord.baselinePath)
    ? baseRecord.baselinePath
    : undefined
  if (options.diff === true && (baseRecord === undefined || baseline === undefined)) {
    return yield* new NotFound({
      message: `the base image ${workspace.image.ref} of workspace ${name} is not in the store`,
      remediation: `pull it (microagent image pull ${workspace.image.ref}) or commit without --diff`
    })
  }
  yield* home.ensureDir(home.tmp)
  const committed = yield* Effect.scoped(Effect.gen(function*() {
    const work = yield* scopedWorkDir(home.tmp, "commit-")
    const disk = NodePath.join(work, "disk.ext4")
    // Held only while copying: what follows reads the copy.
    yield* Effect.scoped(Effect.zipRight(
      Effect.zipRight(claimDisk(name, "a commit"), flattenDisk(workspace.rootfsPath)),
      trees.copy(workspace.rootfsPath, disk).pipe(
        Effect.mapError((e) => new Permanent({ message: e.message }))
      )
    ))
    const after = yield* store.get(name)
    if (
      after.state !== workspace.state || after.sessionId !== workspace.sessionId
      || after.updatedAt.epochMillis !== workspace.updatedAt.epochMillis
    ) {
      return yield* new Conflict({
        message: `workspace ${name} changed while its disk was being copied (now ${after.state})`,
        remediation: `retry once it is halted: microagent halt ${name}`
      })
    }
    yield* files.repair(disk).pipe(Effect.mapError(readFailed(name)))
    // The two disks are read side by side.
    const [tree, baseTree] = yield* Effect.all([
      trees.read(disk, NodePath.join(work, "ws")),
      baseline === undefined
        ? Effect.succeed<Ext4Tree | undefined>(undefined)
        : trees.read(baseline, NodePath.join(work, "base"), { withData: false })
    ], { concurrency: 2 }).pipe(Effect.mapError(readFailed(name)))
    const blobOf = (digest: string) => NodePath.join(home.blobs, "sha256", hexOf(digest))
    const initial = planTree(tree.entries, baseTree?.entries, runtimePaths(workspace))
    // A squashed commit replaces the base's layers: the bits the store stripped from them come back.
    const stripped = new Set(baseRecord?.setuidStripped ?? [])
    const planned = options.diff === true || baseTree === undefined || stripped.size === 0
      ? initial
      : restoreSpecialBits(
        initial,
        baseTree.entries,
        yield* trees.specialBits(baseRecord!.layers.map(blobOf), stripped).pipe(
          Effect.mapError((e) =>
            new Permanent({
              message: `reading the base image's layers failed: ${e.message}`,
              remediation: `pull the base image again (microagent image pull ${workspace.image.ref})`
            })
          )
        )
      )
    const toCompare = baseTree === undefined ? [] : needsContentCheck(planned, baseTree.entries)
    if (baseTree !== undefined) {
      const inos = [
        ...planned.filter((p) => p.origin === "base" && p.entry.type === "file").map((p) => p.entry.ino),
        ...(options.diff === true ? toCompare.map((c) => c.baseIno) : [])
      ]
      yield* trees.dumpInodes(baseline!, inos, baseTree, NodePath.join(work, "base")).pipe(
        Effect.mapError(readFailed(name))
      )
    }
    const comparable = new Map(toCompare.map((c) => [c.path, c]))
    const sameContent = (path: string) => {
      const pair = comparable.get(path)
      if (pair === undefined || baseTree === undefined) return false
      return NodeFs.readFileSync(tree.dataFile(pair.workspaceIno)).equals(
        NodeFs.readFileSync(baseTree.dataFile(pair.baseIno))
      )
    }
    const diff = options.diff === true ? diffTree(planned, baseTree!.entries, sameContent) : undefined
    const items = diff === undefined ? layerEntries(planned) : layerEntries(diff.changed, diff.deleted)
    const layerFile = NodePath.join(work, "layer.tar.gz")
    const layer = yield* trees.writeLayer(items, { workspace: tree, base: baseTree }, layerFile).pipe(
      Effect.mapError((e) =>
        new Permanent({ message: `workspace ${name}: writing the layer failed: ${e.message}` })
      )
    )

    const baseConfig: ConfigDoc = baseRecord?.configDigest !== undefined
      ? yield* readJsonBlob<ConfigDoc>(blobOf(baseRecord.configDigest), "base image's config")
      : {}
    const baseLayers: ReadonlyArray<Descriptor> = diff === undefined
      ? []
      : ((yield* readJsonBlob<ManifestDoc>(blobOf(baseRecord!.digest), "base image's manifest")).layers ?? [])
        .map((l) =>
          l.mediaType === MediaTypes.dockerLayerGzip ? { ...l, mediaType: MediaTypes.ociLayerGzip } : l
        )
    const baseDiffIds = baseConfig.rootfs?.diff_ids ?? []
    if (diff !== undefined && baseDiffIds.length !== baseLayers.length) {
      return yield* new Permanent({
        message: `the base image ${
          baseRecord!.ref
        } has ${baseLayers.length} layers but ${baseDiffIds.length} diff_ids`,
        remediation: "commit without --diff"
      })
    }
    const created = createdOf(planned, 0)
    const host = hostPlatform()
    const historyEntry = {
      created,
      created_by: "microagent commit",
      ...(options.author !== undefined ? { author: options.author } : {}),
      ...(options.message !== undefined ? { comment: options.message } : {})
    }
    const config = {
      created,
      ...(options.author !== undefined ? { author: options.author } : {}),
      architecture: baseConfig.architecture ?? host.architecture,
      os: baseConfig.os ?? host.os,
      ...(baseConfig.variant !== undefined ? { variant: baseConfig.variant } : {}),
      config: baseConfig.config ?? {},
      rootfs: { type: "layers", diff_ids: [...(diff === undefined ? [] : baseDiffIds), layer.diffId] },
      history: [...(diff === undefined ? [] : baseConfig.history ?? []), historyEntry]
    }
    const configBytes = Buffer.from(JSON.stringify(config))
    const layerDescriptor = { mediaType: MediaTypes.ociLayerGzip, digest: layer.digest, size: layer.size }
    const manifest = {
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, digest: sha256(configBytes), size: configBytes.length },
      layers: [
        ...baseLayers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
        layerDescriptor
      ]
    }
    const manifestBytes = Buffer.from(JSON.stringify(manifest))
    const digest = sha256(manifestBytes)
    const layout = NodePath.join(work, "layout")
    yield* Effect.try({
      try: () => {
        const blobs = NodePath.join(layout, "blobs", "sha256")
        NodeFs.mkdirSync(blobs, { recursive: true, mode: 0o700 })
        NodeFs.writeFileSync(
          NodePath.join(layout, "oci-layout"),
          JSON.stringify({ imageLayoutVersion: "1.0.0" })
        )
        NodeFs.writeFileSync(
          NodePath.join(layout, "index.json"),
          JSON.stringify({
            schemaVersion: 2,
            manifests: [{
              mediaType: MediaTypes.ociManifest,
              digest,
              size: manifestBytes.length,
              annotations: { "io.containerd.image.name": target.toString() }
            }]
          })
        )
        NodeFs.writeFileSync(NodePath.join(blobs, hexOf(digest)), manifestBytes)
        NodeFs.writeFileSync(NodePath.join(blobs, hexOf(manifest.config.digest)), configBytes)
        NodeFs.renameSync(layerFile, NodePath.join(blobs, hexOf(layer.digest)))
        for (const l of baseLayers) {
          NodeFs.symlinkSync(blobOf(l.digest), NodePath.join(blobs, hexOf(l.digest)))
        }
      },
      catch: (cause) =>
        new Permanent({
          message: `writing the image layout failed: ${
            cause instanceof Error ? cause.message : String(cause)
          }`
        })
    })
    const record = yield* images.ensure(`oci:${layout}`)
    return { record, layer, created, layers: manifest.layers.length }
  })).pipe(
    Effect.mapError((e) => classifyNoSpace(`committing workspace ${name}`, home.tmp)(e))
  )
  yield* store.appendEvent(name, {
    type: "commit",
    detail: `${committed.record.ref} ${committed.record.digest}`
  })
  const pushed = options.push === true
    ? yield* imagePush(committed.record.ref, { insecureRegistry: options.insecureRegistry })
    : undefined
  return {
    workspace: name,
    ref: committed.record.ref,
    digest: committed.record.digest,
    base: workspace.image.ref,
    diff: options.diff === true,
    layers: committed.layers,
    layer: { digest: committed.layer.digest, size: committed.layer.size, entries: committed.layer.entries },
    created: committed.created,
    ...(pushed !== undefined ? { push: pushed } : {})
  } satisfies CommitResult
})
