/**
 * The image store on the host: records in the `images` table of state.db, blobs content-addressed under
 * `images/blobs/sha256/`, ext4 baselines under `images/rootfs/`, one per manifest digest and build policy.
 *
 * A baseline file appears (by rename) only once complete, and a record only once its baseline exists,
 * so an interrupted pull leaves neither a half record nor a half file; partial downloads and work
 * directories of dead processes are removed by the next pull.
 */
import { SqlClient } from "@effect/sql"
import { DateTime, Deferred, Effect, Either, Layer, Schema } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { classifyNoSpace, diskFull, isNoSpace } from "../../domain/DiskFull.ts"
import {
  Conflict,
  InvalidInput,
  type MicroagentError,
  NotFound,
  Permanent,
  ResourceExhausted
} from "../../domain/Errors.ts"
import { type ImageRef, parseImageRef } from "../../domain/ImageRef.ts"
import { ImageInfo } from "../../domain/Workspace.ts"
import { Home } from "../../services/Home.ts"
import {
  type EnsureOptions,
  ImageRecord,
  type ImageSource,
  ImageStore,
  type ImageStoreAdmin,
  type RemoveResult
} from "../../services/ImageStore.ts"
import {
  type Descriptor,
  formatPlatform,
  hostPlatform,
  type ImageConfigFile,
  parsePlatform,
  type Platform,
  Registry
} from "../../services/Registry.ts"
import { RootfsBuilder } from "../../services/RootfsBuilder.ts"
import { isAlive } from "../process/Processes.ts"
import { removeStaleWork, scopedWorkDir } from "../rootfs/RootfsBuilderLive.ts"
import { runTool } from "../rootfs/Tools.ts"
import { databaseFileOf, storeFailure } from "../state/StoreFailure.ts"
import { isBuiltinImage, MissingBuiltinTool, writeBuiltinLayout } from "./BuiltinImages.ts"
import { removeImageRecordFile, writeImageRecordFile } from "./ImageRecordFiles.ts"
import { openLocalSource } from "./LocalSource.ts"
import { writeOciArchive } from "./OciWriter.ts"

const MiB = 1024 * 1024
const RecordJson = Schema.parseJson(ImageRecord)
const decodeRecord = Schema.decodeUnknownEither(RecordJson)
const encodeRecord = Schema.encodeSync(RecordJson)

const storeError = (what: string) => (cause: unknown) =>
  new Permanent({
    message: `image store: ${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
    remediation: "check the state directory; `microagent image prune` removes unusable records"
  })

/** What an image needs to be built, from a registry or a local source. */
interface Buildable {
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
    MicroagentError
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

const hexOf = (digest: string) => digest.replace(/^sha256:/, "")

/** Copies a local blob into the store, verifying its digest on the way. */
const copyVerified = (
  from: string,
  descriptor: Descriptor,
  destination: string,
  onBytes: (n: number) => void
) =>
  Effect.try({
    try: () => {
      if (NodeFs.existsSync(destination)) return
      const partial = `${destination}.partial-${process.pid}-${NodeCrypto.randomBytes(4).toString("hex")}`
      const hash = NodeCrypto.createHash("sha256")
      const input = NodeFs.openSync(from, "r")
      const output = NodeFs.openSync(partial, "w", 0o600)
      const buffer = Buffer.allocUnsafe(1024 * 1024)
      let total = 0
      try {
        for (;;) {
          const n = NodeFs.readSync(input, buffer, 0, buffer.length, null)
          if (n === 0) break
          hash.update(buffer.subarray(0, n))
          NodeFs.writeSync(output, buffer, 0, n)
          total += n
          onBytes(n)
        }
        const actual = `sha256:${hash.digest("hex")}`
        if (actual !== descriptor.digest || total !== descriptor.size) {
          throw new Permanent({
            message:
              `blob digest mismatch: expected ${descriptor.digest} (${descriptor.size} bytes), got ${actual} (${total} bytes)`,
            remediation: "the local image is corrupted; nothing was recorded"
          })
        }
        NodeFs.renameSync(partial, destination)
      } finally {
        NodeFs.closeSync(input)
        NodeFs.closeSync(output)
        NodeFs.rmSync(partial, { force: true })
      }
    },
    catch: (cause) => cause instanceof Permanent ? cause : storeError(`copying ${from}`)(cause)
  })

/** A zombie (a killed process nobody reaped yet) counts as gone: `kill(pid, 0)` would say alive. */
const pidAlive = (pid: number): boolean => isAlive(pid, undefined)

/** Removes partial downloads whose process is gone. */
const removeStalePartials = (dir: string) =>
  Effect.sync(() => {
    let names: Array<string> = []
    try {
      names = NodeFs.readdirSync(dir)
    } catch {
      return
    }
    for (const name of names) {
      const match = /\.partial-(\d+)-/.exec(name)
      if (match !== null && !pidAlive(Number(match[1]))) {
        NodeFs.rmSync(NodePath.join(dir, name), { force: true })
      }
    }
  })

export const makeImageStore = Effect.gen(function*() {
  const home = yield* Home
  const sql = yield* SqlClient.SqlClient
  const sqlError = (what: string) =>
    storeFailure({
      prefix: `image store: ${what}`,
      remediation: "check the state directory; `microagent state check` reports on the database",
      database: databaseFileOf(sql)
    })
  const registry = yield* Registry
  const builder = yield* RootfsBuilder

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
  const blobDir = NodePath.join(home.blobs, "sha256")
  const blobPath = (digest: string) => NodePath.join(blobDir, hexOf(digest))
  const ensureDirs = Effect.all([
    home.ensureDir(home.images),
    home.ensureDir(rootfsDir),
    home.ensureDir(home.blobs),
    home.ensureDir(blobDir)
  ])

  const readAll = sql<{ ref: string; record: string }>`SELECT ref, record FROM images ORDER BY ref`.pipe(
    Effect.mapError(sqlError("reading records")),
    Effect.map((rows) =>
      rows.flatMap((row) => {
        const decoded = decodeRecord(row.record)
        return Either.isRight(decoded) ? [decoded.right] : []
      })
    )
  )

  const upsert = (record: ImageRecord) =>
    sql`INSERT INTO images (ref, digest, record, created_at)
        VALUES (${record.ref}, ${record.digest}, ${encodeRecord(record)}, ${
      DateTime.formatIso(record.createdAt)
    })
        ON CONFLICT (ref) DO UPDATE SET digest = excluded.digest, record = excluded.record`.pipe(
      Effect.mapError(sqlError(`recording ${record.ref}`)),
      Effect.tap(() => writeImageRecordFile(home.images, record)),
      Effect.as(record)
    )

  const findExact = (ref: string) =>
    sql<{ record: string }>`SELECT record FROM images WHERE ref = ${ref}`.pipe(
      Effect.mapError(sqlError("reading records")),
      Effect.map((rows) => {
        const decoded = rows[0] === undefined ? undefined : decodeRecord(rows[0].record)
        return decoded !== undefined && Either.isRight(decoded) ? decoded.right : undefined
      })
    )

  const parseRef = (text: string) =>
    Either.match(parseImageRef(text), {
      onLeft: (e) =>
        Effect.fail(
          new InvalidInput({
            message: e.message,
            remediation: "for example: alpine:3.20, ghcr.io/org/app@sha256:…"
          })
        ),
      onRight: (ref) => Effect.succeed(ref)
    })

  /** Records matching a user's words: a reference (normalized or as typed), a digest or a 12+ hex prefix. */
  const matching = (text: string) =>
    Effect.gen(function*() {
      const records = yield* readAll
      const normalized = Either.getOrUndefined(parseImageRef(text))?.toString()
      const hex = /^(?:sha256:)?([a-f0-9]{12,64})$/.exec(text)?.[1]
      return records.filter((r) =>
        r.ref === text || r.ref === normalized || r.digest === text
        || (hex !== undefined && hexOf(r.digest).startsWith(hex))
      )
    })

  const resolvePlatform = (options: EnsureOptions | undefined) => {
    if (options?.platform === undefined) return Effect.succeed(hostPlatform())
    const parsed = parsePlatform(options.platform)
    return parsed === undefined
      ? Effect.fail(
        new InvalidInput({
          message: `invalid platform "${options.platform}"`,
          remediation: "for example: linux/arm64"
        })
      )
      : Effect.succeed(parsed)
  }

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

  const touch = (record: ImageRecord) =>
    Effect.flatMap(DateTime.now, (now) => upsert(new ImageRecord({ ...record, lastUsedAt: now })))

  /** Downloads (concurrently) and builds a baseline unless one exists, then records `image.ref`. */
  const materialize = (image: Buildable, options: EnsureOptions | undefined) =>
    Effect.gen(function*() {
      yield* ensureDirs
      yield* removeStalePartials(blobDir)
      yield* removeStaleWork(home.tmp)
      const progress = options?.onProgress ?? (() => {})
      const baseline = baselineFor(image.digest, options)
      // Manifest and config are kept so the store can describe (and later export) what it built.
      yield* Effect.try({
        try: () => {
          for (
            const [digest, bytes] of [[image.digest, image.manifest], [
              image.configDescriptor.digest,
              image.configBytes
            ]] as const
          ) {
            const path = blobPath(digest)
            if (NodeFs.existsSync(path)) continue
            const partial = `${path}.partial-${process.pid}-${NodeCrypto.randomBytes(4).toString("hex")}`
            NodeFs.writeFileSync(partial, bytes, { mode: 0o600 })
            NodeFs.renameSync(partial, path)
          }
        },
        catch: storeError("writing metadata blobs")
      })
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
            () => Deferred.make<string, MicroagentError>()
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

  const fromRegistry = (ref: ImageRef, options: EnsureOptions | undefined) =>
    Effect.gen(function*() {
      const platform = yield* resolvePlatform(options)
      options?.onProgress?.({ phase: "resolve" })
      const registryOptions = { insecure: options?.insecureRegistry, platform }
      const resolved = yield* registry.resolve(ref, registryOptions)
      return yield* materialize({
        ...resolved,
        ref: ref.toString(),
        source: "registry",
        fetchLayer: (descriptor, destination, onBytes) =>
          registry.fetchBlob(ref, descriptor, destination, { ...registryOptions, onBytes })
      }, options)
    })

  const importImage = Effect.fn("ImageStore.importImage")(function*(
    path: string,
    options?: EnsureOptions & { readonly tag?: string }
  ) {
    const platform = yield* resolvePlatform(options)
    const tagRef = options?.tag !== undefined ? yield* parseRef(options.tag) : undefined
    yield* home.ensureDir(home.tmp)
    return yield* Effect.scoped(Effect.gen(function*() {
      const scratch = yield* scopedWorkDir(home.tmp, "image-import-")
      const local = yield* openLocalSource(NodePath.resolve(path), scratch, platform, undefined).pipe(
        Effect.mapError((e) =>
          new InvalidInput({
            message: e.message,
            remediation: "give an OCI layout directory or an OCI/docker archive"
          })
        )
      )
      const named = tagRef?.toString()
        ?? (local.name !== undefined
          ? Either.getOrUndefined(parseImageRef(local.name))?.toString()
          : undefined)
        ?? `localhost/imported/${hexOf(local.digest).slice(0, 12)}:latest`
      return yield* materialize({
        ...local,
        ref: named,
        fetchLayer: (descriptor, destination, onBytes) =>
          Effect.suspend(() =>
            copyVerified(local.blobFile(descriptor.digest), descriptor, destination, onBytes)
          )
      }, options)
    }))
  })

  const localTransport = /^(oci|oci-archive|docker-archive):(.+)$/

  /** Builds a built-in image on the host and imports it under its name: no network involved. */
  const importBuiltin = (ref: string, options: EnsureOptions) =>
    Effect.acquireUseRelease(
      Effect.sync(() => NodePath.join(home.tmp, `builtin-${process.pid}-${Date.now()}`)),
      (layout) =>
        Effect.try({
          try: () => writeBuiltinLayout(ref, layout),
          catch: (cause) =>
            isNoSpace(cause)
              ? diskFull(`building the built-in image ${ref}`, home.tmp)
              : new ResourceExhausted({
                message: `cannot build the built-in image ${ref}: ${
                  cause instanceof Error ? cause.message : String(cause)
                }`,
                remediation: cause instanceof MissingBuiltinTool
                  ? "install the package named above"
                  : "see `microagent doctor`"
              })
        }).pipe(Effect.zipRight(importImage(layout, { ...options, tag: ref }))),
      (layout) => Effect.sync(() => NodeFs.rmSync(layout, { recursive: true, force: true }))
    )

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
      Effect.mapError((e): MicroagentError =>
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

  /** Files workspaces still reference (their records mention a baseline path or digest). */
  const usedByWorkspaces = (path: string) =>
    sql<{ n: number }>`SELECT count(*) AS n FROM workspaces WHERE record LIKE ${`%${path}%`}`.pipe(
      Effect.map((rows) => (rows[0]?.n ?? 0) > 0),
      Effect.orElseSucceed(() => false)
    )

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

  const deleteRecord = (ref: string) =>
    sql`DELETE FROM images WHERE ref = ${ref}`.pipe(
      Effect.mapError(sqlError(`removing ${ref}`)),
      Effect.tap(() => removeImageRecordFile(home.images, ref))
    )

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
    const target = NodePath.resolve(output)
    if (NodeFs.existsSync(target)) {
      return yield* new Conflict({
        message: `${target} already exists`,
        remediation: "remove it or pick another name"
      })
    }
    const manifestFile = blobPath(image.digest)
    const missing = [
      image.digest,
      ...(image.configDigest !== undefined ? [image.configDigest] : []),
      ...image.layers
    ]
      .filter((digest) => !NodeFs.existsSync(blobPath(digest)))
    if (image.configDigest === undefined || missing.length > 0) {
      return yield* new NotFound({
        message: `the store lacks blobs of ${image.ref}: ${missing.join(", ") || "its config"}`,
        remediation: `pull or import it again: microagent image pull ${image.ref}`
      })
    }
    const manifest = NodeFs.readFileSync(manifestFile)
    const mediaType = (JSON.parse(manifest.toString("utf8")) as { mediaType?: string }).mediaType
      ?? "application/vnd.oci.image.manifest.v1+json"
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{
        mediaType,
        digest: image.digest,
        size: manifest.length,
        ...(image.platform !== undefined ? { platform: image.platform } : {}),
        annotations: {
          "org.opencontainers.image.ref.name": image.ref,
          "io.containerd.image.name": image.ref
        }
      }]
    }))
    yield* Effect.try({
      try: () =>
        writeOciArchive(
          target,
          index,
          [image.digest, image.configDigest, ...image.layers].map((digest) => ({
            digest: digest!,
            file: blobPath(digest!)
          }))
        ),
      catch: (cause) =>
        isNoSpace(cause)
          ? diskFull(`writing ${target}`, NodePath.dirname(target))
          : storeError(`writing ${target}`)(cause)
    })
    return { ref: image.ref, digest: image.digest, file: target, bytes: NodeFs.statSync(target).size }
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
export const ImageStoreLive: Layer.Layer<
  ImageStore,
  never,
  Home | SqlClient.SqlClient | Registry | RootfsBuilder
> = Layer.effect(ImageStore, makeImageStore)
