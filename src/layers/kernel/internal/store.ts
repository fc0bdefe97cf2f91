/**
 * The kernel cache's files under `$MICROAGENT_HOME/kernels`: content-addressed blobs (`sha256/<hex>`,
 * 0600), the JSON index (`index.json`, replaced atomically under a lock file, so concurrent CLI processes
 * never lose an entry), and the check that every indexed file still has its recorded sha256.
 */
import { Duration, Effect, Schedule, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InitramfsEntry, KernelEntry, type VerifyResult } from "../../../services/KernelCache.ts"
import { ensurePrivateDir, io, KernelCacheFailure, sha256File, sha256Hex, writeFileAtomic } from "./tools.ts"

const Index = Schema.Struct({
  kernels: Schema.Array(KernelEntry),
  initramfs: Schema.Array(InitramfsEntry)
})
export type Index = typeof Index.Type
const IndexJson = Schema.parseJson(Index)

/** The index and blobs of a kernel store: a state directory's (`home.kernels`) or the user's shared one. */
export const makeKernelStore = (root: string) => {
  const blobDir = NodePath.join(root, "sha256")
  const indexPath = NodePath.join(root, "index.json")
  const lockPath = NodePath.join(root, "index.lock")

  const prepare = Effect.all([ensurePrivateDir(root), ensurePrivateDir(blobDir)])

  const readIndex: Effect.Effect<Index, KernelCacheFailure> = Effect.gen(function*() {
    const text = yield* io(
      "reading the kernel index",
      () => NodeFs.existsSync(indexPath) ? NodeFs.readFileSync(indexPath, "utf8") : undefined
    )
    if (text === undefined) {
      return { kernels: [], initramfs: [] }
    }
    return yield* Schema.decodeUnknown(IndexJson)(text).pipe(
      Effect.mapError(() =>
        new KernelCacheFailure({
          reason: "Io",
          message: `${indexPath} is damaged`,
          remediation: `remove ${root} and install the kernel again`
        })
      )
    )
  })

  // An exclusive lock file; a lock older than a minute belongs to a process that died holding it.
  const acquireLock = Effect.suspend(() => {
    try {
      NodeFs.closeSync(NodeFs.openSync(lockPath, "wx", 0o600))
      return Effect.void
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") {
        return Effect.fail(
          new KernelCacheFailure({ reason: "Io", message: `locking ${lockPath}: ${String(error)}` })
        )
      }
      const stat = NodeFs.statSync(lockPath, { throwIfNoEntry: false })
      if (stat !== undefined && Date.now() - stat.mtimeMs > 60_000) {
        NodeFs.rmSync(lockPath, { force: true })
      }
      return Effect.fail(
        new KernelCacheFailure({ reason: "ToolFailed", message: "kernel index is locked" })
      )
    }
  }).pipe(Effect.retry({ schedule: Schedule.spaced(Duration.millis(25)), times: 2400 }))

  const updateIndex = (f: (index: Index) => Index) =>
    Effect.acquireUseRelease(
      acquireLock,
      () =>
        Effect.gen(function*() {
          const next = f(yield* readIndex)
          yield* writeFileAtomic(indexPath, JSON.stringify(Schema.encodeSync(Index)(next), null, 2) + "\n")
        }),
      () => Effect.sync(() => NodeFs.rmSync(lockPath, { force: true }))
    )

  /** Indexes `kernel` as the newest of its architecture, replacing an entry of the same sha256. */
  const addKernel = (kernel: KernelEntry) =>
    updateIndex((index) => ({
      ...index,
      kernels: [...index.kernels.filter((k) => k.sha256 !== kernel.sha256), kernel]
    }))

  /** Indexes `image`, replacing an entry of the same sha256. */
  const addInitramfs = (image: InitramfsEntry) =>
    updateIndex((index) => ({
      ...index,
      initramfs: [...index.initramfs.filter((i) => i.sha256 !== image.sha256), image]
    }))

  /** Stores bytes under their sha256 (a no-op when a file of that size is there, unless `rewrite`). */
  const putBlob = (bytes: Uint8Array, options?: { readonly rewrite?: boolean }) =>
    Effect.gen(function*() {
      const sha256 = sha256Hex(bytes)
      const path = NodePath.join(blobDir, sha256)
      const stat = NodeFs.statSync(path, { throwIfNoEntry: false })
      if (options?.rewrite === true || stat === undefined || stat.size !== bytes.length) {
        yield* writeFileAtomic(path, bytes)
      }
      return { sha256, path, sizeBytes: bytes.length }
    })

  /** Every indexed file (kernels, modules, initramfs images) hashed against its entry. */
  const verify = Effect.gen(function*() {
    const index = yield* readIndex
    const files = new Map<string, string>()
    for (const kernel of index.kernels) {
      files.set(kernel.path, kernel.sha256)
      for (const m of kernel.modules) files.set(m.path, m.sha256)
    }
    for (const initramfs of index.initramfs) files.set(initramfs.path, initramfs.sha256)
    return yield* Effect.forEach(
      [...files],
      ([path, expected]) =>
        (NodeFs.existsSync(path) ? sha256File(path) : Effect.succeed("missing")).pipe(
          Effect.map((actual): VerifyResult => ({ path, ok: actual === expected, expected, actual }))
        ),
      { concurrency: 2 }
    )
  })

  return { root, blobDir, prepare, readIndex, updateIndex, addKernel, addInitramfs, putBlob, verify }
}

export type KernelStore = ReturnType<typeof makeKernelStore>
