/**
 * The kernel cache kept as files under `$MICROAGENT_HOME/kernels`: content-addressed blobs
 * (`sha256/<hex>`, 0600) and a small JSON index (`index.json`, replaced atomically under a lock
 * file, so concurrent CLI processes never lose an entry).
 *
 * This module answers the service's calls and builds the initramfs of a kernel; internal/store.ts holds
 * the index, blobs and verification, internal/install.ts the install sources (file, URL, distribution).
 */
import { HttpClient } from "@effect/platform"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Effect, Layer, Option } from "effect"
import * as NodeFs from "node:fs"
import { NotFound, Permanent, Transient, Unsupported } from "../../domain/Errors.ts"
import { Home } from "../../services/Home.ts"
import {
  type Arch,
  BootArtifacts,
  type EnsureOptions,
  InitramfsEntry,
  KernelCache,
  type KernelEntry,
  type KernelSource,
  type Machine
} from "../../services/KernelCache.ts"
import { findAgent } from "./internal/agent.ts"
import { hzBesideKernel } from "./internal/config.ts"
import { buildInitramfs } from "./internal/initramfs.ts"
import { makeKernelInstaller } from "./internal/install.ts"
import { resolveModuleClasses } from "./internal/modules.ts"
import { makeSharedKernels } from "./internal/shared.ts"
import { makeKernelStore } from "./internal/store.ts"
import { io, KernelCacheFailure, sha256Hex, type ToolMissing } from "./internal/tools.ts"

export interface FileKernelCacheOptions {
  /** The guest agent put at the initramfs's /init; by default found near the package (see internal/agent.ts). */
  readonly agentPath?: string
  /** `none` (default) unpacks in the guest in ~0.11 s against ~0.19 s for gzip -1 under TCG; gzip is a third of the size. */
  readonly initramfsCompression?: "gzip" | "none"
}
/** Maps the adapter's failures to the classified errors every caller sees. */
const toPublic = (
  error: KernelCacheFailure | ToolMissing
): Permanent | NotFound | Unsupported | Transient => {
  if (error._tag === "ToolMissing") {
    return new Permanent({
      message: error.message,
      remediation: `install it: apt-get install ${error.debianPackage}`
    })
  }
  const remediation = error.remediation ?? ""
  switch (error.reason) {
    case "NotFound":
      return new NotFound({ message: error.message, remediation })
    case "Unsupported":
      return new Unsupported({ message: error.message, remediation, feature: "kernel" })
    case "ToolFailed":
      return new Transient({ message: error.message, remediation })
    default:
      return new Permanent({ message: error.message, remediation })
  }
}
const sameStrings = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) =>
  a.length === b.length && a.every((x, i) => x === b[i])

export const make = (options: FileKernelCacheOptions = {}) =>
  Effect.gen(function*() {
    const home = yield* Home
    const http = yield* HttpClient.HttpClient
    const compression = options.initramfsCompression ?? "none"
    const store = makeKernelStore(home.kernels)
    const { prepare, putBlob, readIndex } = store
    const { installFrom } = makeKernelInstaller(home, http, store)
    const shared = makeSharedKernels(store)
    /** An install, copied to the user's shared store when it is the distribution's kernel. */
    const installShared = (source: KernelSource, arch: Arch | undefined) =>
      installFrom(source, arch).pipe(Effect.tap(shared.publishKernel))

    const moduleOrder = (kernel: KernelEntry, machine: Machine) =>
      Effect.try({
        try: () => {
          if (kernel.modules.length === 0) return [] // a bare kernel: its drivers must be built in
          const byName = new Map(kernel.modules.map((m) => [m.name, m]))
          const order = resolveModuleClasses(
            {
              locate: (name) => byName.get(name)?.path,
              builtin: new Set(kernel.builtinModules),
              depends: (path) => kernel.modules.find((m) => m.path === path)?.depends ?? []
            },
            machine
          )
          return order.map((m) => ({ module: byName.get(m.name)!, loadClass: m.loadClass }))
        },
        catch: (cause) =>
          new KernelCacheFailure({
            reason: "BadInput",
            message: `kernel ${kernel.version} cannot run the guest on ${machine}: ${String(cause)}`
          })
      })

    const ensureInitramfs = (kernel: KernelEntry, machine: Machine) =>
      Effect.gen(function*() {
        const agentPath = findAgent(options.agentPath)
        if (agentPath === undefined || !NodeFs.existsSync(agentPath)) {
          return yield* new KernelCacheFailure({
            reason: "NotFound",
            message: `the guest agent binary is missing${agentPath === undefined ? "" : ` (${agentPath})`}`,
            remediation: "build it with `make -C guest` (npm run build:guest), or set MICROAGENT_AGENT"
          })
        }
        const agent = yield* io(`reading ${agentPath}`, () => NodeFs.readFileSync(agentPath))
        const agentSha256 = sha256Hex(agent)
        const modules = yield* moduleOrder(kernel, machine)
        const names = modules.map((m) => m.module.name)
        const loadClasses = modules.map((m) => m.loadClass)
        const index = yield* readIndex
        const wanted = (entry: InitramfsEntry) =>
          entry.kernelSha256 === kernel.sha256 && entry.agentSha256 === agentSha256
          && entry.machine === machine
          && entry.compression === compression && sameStrings(entry.modules, names)
          && sameStrings(entry.loadClasses ?? [], loadClasses)
          && NodeFs.statSync(entry.path, { throwIfNoEntry: false })?.size === entry.sizeBytes
        const cached = index.initramfs.find(wanted)
        if (cached !== undefined) return cached
        const imported = yield* shared.importInitramfs(wanted)
        if (Option.isSome(imported)) return imported.value
        const moduleData = yield* Effect.forEach(
          modules,
          ({ loadClass, module }) =>
            io(`reading module ${module.name}`, () => ({
              name: module.name,
              loadClass,
              data: NodeFs.readFileSync(module.path)
            }))
        )
        const bytes = buildInitramfs({ agent, modules: moduleData, compression })
        const blob = yield* putBlob(bytes)
        const entry = new InitramfsEntry({
          path: blob.path,
          sha256: blob.sha256,
          sizeBytes: blob.sizeBytes,
          kernelSha256: kernel.sha256,
          agentSha256,
          machine,
          modules: names,
          loadClasses,
          compression
        })
        yield* store.addInitramfs(entry)
        yield* shared.publishInitramfs(kernel, entry)
        return entry
      })

    const ensure = Effect.fn("KernelCache.ensure")(function*(arch: Arch, ensureOptions?: EnsureOptions) {
      yield* prepare
      const index = yield* readIndex
      const cached = Option.fromNullable(index.kernels.filter((k) => k.arch === arch).at(-1))
      const kernel = Option.isSome(cached) && NodeFs.existsSync(cached.value.path)
        ? cached.value
        : yield* shared.importKernel(arch).pipe(
          Effect.flatMap(Option.match({ onNone: () => installShared({}, arch), onSome: Effect.succeed }))
        )
      const initramfs = yield* ensureInitramfs(kernel, ensureOptions?.machine ?? "microvm")
      // Installs from before `hz` was recorded: a path source may still have its configuration beside it.
      const hz = kernel.hz
        ?? (kernel.source.startsWith("path:")
          ? hzBesideKernel(kernel.source.slice(5), kernel.version)
          : undefined)
      return new BootArtifacts({
        kernelPath: kernel.path,
        kernelSha256: kernel.sha256,
        initrdPath: initramfs.path,
        initrdSha256: initramfs.sha256,
        kernelVersion: kernel.version,
        cmdline: [],
        ...(hz === undefined ? {} : { kernelHz: hz })
      })
    }, Effect.mapError(toPublic))

    const install = Effect.fn("KernelCache.install")(
      function*(source: KernelSource, arch?: Arch) {
        return yield* installShared(source, arch)
      },
      Effect.mapError(toPublic)
    )

    const list = Effect.gen(function*() {
      return (yield* readIndex).kernels
    }).pipe(Effect.mapError(toPublic), Effect.withSpan("KernelCache.list"))
    const verify = store.verify.pipe(Effect.mapError(toPublic), Effect.withSpan("KernelCache.verify"))

    return KernelCache.of({ ensure, install, list, verify })
  })

export const FileKernelCache = {
  /**
   * Needs Home. URL sources are fetched with node's own HTTP client, not `fetch`: the runtime runs
   * with --jitless (Launcher.ts), where `fetch` cannot load its WebAssembly HTTP parser and the
   * failure ends the process.
   */
  layer: (options: FileKernelCacheOptions = {}) =>
    Layer.effect(KernelCache, make(options)).pipe(Layer.provide(NodeHttpClient.layer))
} as const
