/**
 * The image store on the host: records in the `images` table of state.db, blobs content-addressed under
 * `images/blobs/sha256/`, ext4 baselines under `images/rootfs/`, one per manifest digest and build policy.
 *
 * A baseline file appears (by rename) only once complete, and a record only once its baseline exists,
 * so an interrupted pull leaves neither a half record nor a half file; partial downloads and work
 * directories of dead processes are removed by the next pull.
 *
 * This module wires the store's operations together; internal/Records (the records), internal/Blobs
 * (the blob files), internal/Build (baselines) and internal/Sources (registry, local and built-in
 * images) hold the parts.
 */
import { SqlClient } from "@effect/sql"
import { DateTime, Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Conflict, NotFound } from "../../domain/Errors.ts"
import { ImageInfo } from "../../domain/Workspace.ts"
import { Home } from "../../services/Home.ts"
import {
  type EnsureOptions,
  ImageRecord,
  ImageStore,
  type ImageStoreAdmin,
  type RemoveResult
} from "../../services/ImageStore.ts"
import { formatPlatform, Registry } from "../../services/Registry.ts"
import { RootfsBuilder } from "../../services/RootfsBuilder.ts"
import { removeStaleWork } from "../rootfs/RootfsBuilderLive.ts"
import { isBuiltinImage } from "./BuiltinImages.ts"
import { makeBlobFiles, removeStalePartials, storeError } from "./internal/Blobs.ts"
import { makeBaselines } from "./internal/Build.ts"
import { makeImageRecords, parseRef } from "./internal/Records.ts"
import { localTransport, makeSources, resolvePlatform } from "./internal/Sources.ts"

export const makeImageStore = Effect.gen(function*() {
  const home = yield* Home
  const sql = yield* SqlClient.SqlClient
  const registry = yield* Registry
  const builder = yield* RootfsBuilder

  const blobs = makeBlobFiles(home)
  const records = makeImageRecords(home, sql)
  const baselines = makeBaselines(home, records, blobs, builder)
  const { fromRegistry, importImage, importBuiltin } = makeSources(home, registry, baselines)
  const { blobDir, blobPath } = blobs
  const { readAll, upsert, findExact, matching, touch, usedByWorkspaces, deleteRecord } = records
  const { rootfsDir, baselineFor, checkFits, cloneRootfs } = baselines

  const ensure = Effect.fn("ImageStore.ensure")(function*(text: string, options?: EnsureOptions) {
    const local = localTransport.exec(text)
    if (local !== null) return yield* importImage(local[2]!, options ?? {})
    const ref = yield* parseRef(text)
    const key = ref.toString()
    if (options?.refresh !== true) {
      const existing = yield* findExact(key)
      const wanted = existing !== undefined ? baselineFor(existing.digest, options) : undefined
      if (
        existing?.baselinePath !== undefined && existing.baselinePath === wanted && NodeFs.existsSync(wanted)
      ) {
        const platform = yield* resolvePlatform(options)
        if (
          existing.platform === undefined || formatPlatform(existing.platform) === formatPlatform(platform)
          || existing.platform.architecture === platform.architecture
        ) {
          return yield* Effect.flatMap(touch(existing), (r) => checkFits(r, options))
        }
      }
    }
    if (isBuiltinImage(key)) return yield* importBuiltin(key, options ?? {})
    return yield* fromRegistry(ref, options)
  })
  const list = readAll.pipe(Effect.withSpan("ImageStore.list"))

  const inspect = Effect.fn("ImageStore.inspect")(function*(text: string) {
    const found = yield* matching(text)
    if (found.length === 0) {
      return yield* new NotFound({
        message: `no image ${text} in the store`,
        remediation: `pull it: microagent image pull ${text}`
      })
    }
    const digests = new Set(found.map((r) => r.digest))
    if (digests.size > 1) {
      return yield* new Conflict({
        message: `${text} matches several images: ${found.map((r) => r.ref).join(", ")}`,
        remediation: "use a longer digest prefix or the full reference"
      })
    }
    return found[0]!
  })

  const tag = Effect.fn("ImageStore.tag")(function*(source: string, target: string) {
    const image = yield* inspect(source)
    const ref = yield* parseRef(target)
    const now = yield* DateTime.now
    return yield* upsert(
      new ImageRecord({
        ...image,
        ref: ref.toString(),
        config: new ImageInfo({ ...image.config, ref: ref.toString() }),
        createdAt: now
      })
    )
  })
  const filesOf = (record: ImageRecord): Array<string> => [
    ...(record.baselinePath !== undefined ? [record.baselinePath] : []),
    ...record.layers.map(blobPath),
    ...(record.configDigest !== undefined ? [blobPath(record.configDigest)] : []),
    blobPath(record.digest)
  ]

  const insideStore = (path: string) => {
    const resolved = NodePath.resolve(path)
    return resolved.startsWith(`${NodePath.resolve(home.images)}/`)
  }

  /** Deletes candidate files no kept record uses and no workspace mentions. */
  const deleteUnused = (candidates: Iterable<string>, kept: ReadonlyArray<ImageRecord>) =>
    Effect.gen(function*() {
      const inUse = new Set(kept.flatMap(filesOf))
      const deleted: Array<string> = []
      const keptFiles: Array<string> = []
      for (const file of new Set(candidates)) {
        if (!insideStore(file) || !NodeFs.existsSync(file)) continue
        if (inUse.has(file) || (yield* usedByWorkspaces(file))) {
          keptFiles.push(file)
          continue
        }
        yield* Effect.try({
          try: () => NodeFs.rmSync(file, { force: true }),
          catch: storeError(`deleting ${file}`)
        })
        deleted.push(file)
      }
      return { deleted, kept: keptFiles }
    })
  const remove = Effect.fn("ImageStore.remove")(
    function*(refs: ReadonlyArray<string>, options?: { readonly purge?: boolean }) {
      const victims = new Map<string, ImageRecord>()
      for (const text of refs) {
        const found = yield* matching(text)
        if (found.length === 0) {
          return yield* new NotFound({
            message: `no image ${text} in the store`,
            remediation: "`microagent image list` shows what is there"
          })
        }
        for (const record of found) victims.set(record.ref, record)
      }
      for (const ref of victims.keys()) yield* deleteRecord(ref)
      if (options?.purge !== true) {
        return { removed: [...victims.keys()], deleted: [], kept: [] } satisfies RemoveResult
      }
      const remaining = yield* readAll
      const files = yield* deleteUnused([...victims.values()].flatMap(filesOf), remaining)
      return { removed: [...victims.keys()], ...files } satisfies RemoveResult
    }
  )

  const listFiles = (dir: string) =>
    Effect.sync(() => {
      try {
        return NodeFs.readdirSync(dir).map((name) => NodePath.join(dir, name))
      } catch {
        return []
      }
    })

  const prune = Effect.fn("ImageStore.prune")(function*(options?: { readonly purge?: boolean }) {
    yield* removeStalePartials(blobDir)
    yield* removeStalePartials(rootfsDir)
    yield* removeStaleWork(home.tmp)
    const records = yield* readAll
    const removed: Array<string> = []
    for (const record of records) {
      const gone = record.baselinePath === undefined || !NodeFs.existsSync(record.baselinePath)
      if (gone || options?.purge === true) {
        yield* deleteRecord(record.ref)
        removed.push(record.ref)
      }
    }
    const remaining = yield* readAll
    const candidates = [...(yield* listFiles(rootfsDir)), ...(yield* listFiles(blobDir))].filter((f) =>
      !f.includes(".partial-")
    )
    const files = yield* deleteUnused(candidates, remaining)
    return { removed, ...files } satisfies RemoveResult
  })

  const save = Effect.fn("ImageStore.save")(function*(text: string, output: string) {
    const image = yield* inspect(text)
    return yield* blobs.saveArchive(image, output)
  })

  return {
    ensure,
    save,
    cloneRootfs,
    list,
    inspect,
    tag,
    remove,
    prune,
    importImage
  } satisfies ImageStoreAdmin
})

/** ImageStore on the host, for the lifecycle programs. */
export const layer: Layer.Layer<
  ImageStore,
  never,
  Home | SqlClient.SqlClient | Registry | RootfsBuilder
> = Layer.effect(ImageStore, makeImageStore)
