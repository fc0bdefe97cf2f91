/**
 * The user's shared kernel store (docs/kernels.md, "One download per user"). Installing the
 * distribution's kernel costs seconds of download and decompression, and every new state directory
 * used to pay it again; the store under the user's cache directory
 * (`$XDG_CACHE_HOME/microagent/kernels`, else `~/.cache/microagent/kernels`, or
 * `MICROAGENT_KERNEL_CACHE=DIR`; `off` turns sharing off) keeps the kernels a state directory installed
 * from the distribution and the initramfs images built for them, in the layout of a state directory's
 * own store.
 *
 * A state directory with no kernel copies the newest shared one of its architecture into its own store,
 * checking every file's sha256 on the way; a distribution install, and every initramfs built for a
 * shared kernel, is copied back. Kernels installed from a file or a URL stay in their state directory.
 * The shared store is a cache: when it is missing, untrusted, damaged or racing another process, the
 * state directory installs or builds as before, so sharing never fails a start.
 */
import { Effect, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InitramfsEntry, KernelEntry, KernelModule } from "../../../services/KernelCache.ts"
import { privateDirectory, userCacheDirectory } from "../../host/UserCache.ts"
import { type KernelStore, makeKernelStore } from "./store.ts"
import { io, KernelCacheFailure, sha256Hex } from "./tools.ts"

/** The shared store's directory; undefined when sharing is off or no private directory is at hand. */
export const sharedKernelRoot = (): string | undefined => {
  const setting = process.env.MICROAGENT_KERNEL_CACHE
  if (setting === "off" || setting === "0") return undefined
  if (setting !== undefined && setting !== "") return privateDirectory(NodePath.resolve(setting))
  return userCacheDirectory("kernels")
}

/** Only the distribution's kernel is shared: one a user installed from a file or URL is their choice for one state directory. */
const shareable = (kernel: KernelEntry) => kernel.source.startsWith("debian:")

/** Kernels of an architecture the shared store keeps (the newest), and initramfs images per kernel and machine. */
const keptKernels = 2
const keptImages = 4

/**
 * Copies the blob at `from` into `to`, refusing it unless its content has `sha256`. Publishing
 * rewrites the shared copy even when one of that size is there, so a damaged shared file is mended by
 * the next install instead of being kept.
 */
const copyBlob = (to: KernelStore, from: string, sha256: string, rewrite: boolean) =>
  Effect.gen(function*() {
    const bytes = yield* io(`reading ${from}`, () => NodeFs.readFileSync(from))
    if (sha256Hex(bytes) !== sha256) {
      return yield* new KernelCacheFailure({
        reason: "Checksum",
        message: `${from} does not match its sha256`
      })
    }
    return (yield* to.putBlob(bytes, { rewrite })).path
  })

/** `kernel` with its files copied into `to`. */
const copyKernel = (to: KernelStore, kernel: KernelEntry, rewrite: boolean) =>
  Effect.gen(function*() {
    const path = yield* copyBlob(to, kernel.path, kernel.sha256, rewrite)
    const modules = yield* Effect.forEach(
      kernel.modules,
      (m) =>
        copyBlob(to, m.path, m.sha256, rewrite).pipe(
          Effect.map((copied) => new KernelModule({ ...m, path: copied }))
        )
    )
    return new KernelEntry({ ...kernel, path, modules })
  })

const copyInitramfs = (to: KernelStore, image: InitramfsEntry, rewrite: boolean) =>
  copyBlob(to, image.path, image.sha256, rewrite).pipe(
    Effect.map((path) => new InitramfsEntry({ ...image, path }))
  )

/** A blob younger than this may belong to an entry another process is about to index: pruning spares it. */
const pruneGraceMs = 3_600_000

/** The shared store as seen by one state directory's store `local`. */
export const makeSharedKernels = (local: KernelStore) => {
  const root = sharedKernelRoot()
  const shared = root === undefined ? undefined : makeKernelStore(root)

  /** Runs a sharing step; any failure of it is only a missed saving. */
  const quietly = <A>(step: (store: KernelStore) => Effect.Effect<Option.Option<A>, KernelCacheFailure>) =>
    shared === undefined ? Effect.succeedNone : step(shared).pipe(
      Effect.catchAll((error) =>
        Effect.logDebug(`shared kernel store: ${error.message}`).pipe(Effect.as(Option.none<A>()))
      )
    )

  /** The newest shared kernel of `arch`, copied into the state directory's store and indexed there. */
  const importKernel = (arch: KernelEntry["arch"]) =>
    quietly((store) =>
      Effect.gen(function*() {
        const newest = (yield* store.readIndex).kernels.filter((k) => k.arch === arch && shareable(k)).at(-1)
        if (newest === undefined) return Option.none()
        yield* local.prepare
        const copy = yield* copyKernel(local, newest, false)
        yield* local.addKernel(copy)
        return Option.some(copy)
      })
    )

  /** An initramfs the shared store holds for `wanted`, copied and indexed in the state directory's store. */
  const importInitramfs = (wanted: (image: InitramfsEntry) => boolean) =>
    quietly((store) =>
      Effect.gen(function*() {
        const found = (yield* store.readIndex).initramfs.filter(wanted).at(-1)
        if (found === undefined) return Option.none()
        const copy = yield* copyInitramfs(local, found, false)
        yield* local.addInitramfs(copy)
        return Option.some(copy)
      })
    )

  /** Drops what the kept kernels and images no longer need from the shared index, then their files. */
  const prune = (store: KernelStore) =>
    Effect.gen(function*() {
      let referenced = new Set<string>()
      yield* store.updateIndex((index) => {
        const kernels = index.kernels.filter((k, i) =>
          index.kernels.slice(i + 1).filter((later) => later.arch === k.arch).length < keptKernels
        )
        const kernelShas = new Set(kernels.map((k) => k.sha256))
        const initramfs = index.initramfs.filter((image, i) =>
          kernelShas.has(image.kernelSha256)
          && index.initramfs.slice(i + 1).filter((later) =>
              later.kernelSha256 === image.kernelSha256 && later.machine === image.machine
            ).length < keptImages
        )
        referenced = new Set([
          ...kernels.flatMap((k) => [k.path, ...k.modules.map((m) => m.path)]),
          ...initramfs.map((image) => image.path)
        ])
        return { kernels, initramfs }
      })
      yield* io("pruning the shared kernel store", () => {
        for (const name of NodeFs.readdirSync(store.blobDir)) {
          const path = NodePath.join(store.blobDir, name)
          const stat = NodeFs.statSync(path, { throwIfNoEntry: false })
          const old = stat !== undefined && Date.now() - stat.mtimeMs > pruneGraceMs
          if (!name.startsWith(".") && !referenced.has(path) && old) NodeFs.rmSync(path, { force: true })
        }
      })
    })

  /** Copies a distribution kernel the state directory installed into the shared store. */
  const publishKernel = (kernel: KernelEntry) =>
    quietly((store) =>
      Effect.gen(function*() {
        if (!shareable(kernel)) return Option.none()
        yield* store.prepare
        const copy = yield* copyKernel(store, kernel, true)
        yield* store.addKernel(copy)
        yield* prune(store)
        return Option.some(copy)
      })
    )

  /** Copies an initramfs built for a shared kernel into the shared store. */
  const publishInitramfs = (kernel: KernelEntry, image: InitramfsEntry) =>
    quietly((store) =>
      Effect.gen(function*() {
        if (!shareable(kernel)) return Option.none()
        const index = yield* store.readIndex
        if (!index.kernels.some((k) => k.sha256 === image.kernelSha256)) return Option.none()
        const copy = yield* copyInitramfs(store, image, true)
        yield* store.addInitramfs(copy)
        yield* prune(store)
        return Option.some(copy)
      })
    )

  return { importKernel, importInitramfs, publishKernel, publishInitramfs }
}
