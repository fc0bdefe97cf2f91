/**
 * The kernel cache kept as files under `$MICROAGENT_HOME/kernels`: content-addressed blobs
 * (`sha256/<hex>`, 0600) and a small JSON index (`index.json`, replaced atomically under a lock
 * file, so concurrent CLI processes never lose an entry).
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Duration, Effect, Layer, Option, Schedule, Schema, Stream } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as NodeZlib from "node:zlib"
import { type MicroagentError, NotFound, Permanent, Transient, Unsupported } from "../../domain/Errors.ts"
import { Home } from "../../services/Home.ts"
import {
  type Arch,
  BootArtifacts,
  type EnsureOptions,
  InitramfsEntry,
  KernelCache,
  KernelEntry,
  KernelModule,
  type KernelSource,
  type Machine,
  type VerifyResult
} from "../../services/KernelCache.ts"
import { findAgent } from "./internal/agent.ts"
import { hzBesideKernel } from "./internal/config.ts"
import {
  defaultDebianPackage,
  downloadPackage,
  extractPackage,
  findKernelInTree,
  isDebianLike,
  resolvePackage
} from "./internal/debian.ts"
import { moduleDepends } from "./internal/elf.ts"
import { buildInitramfs } from "./internal/initramfs.ts"
import {
  canonicalModuleName,
  type ModuleSource,
  optionalModules,
  requiredModules,
  resolveModuleClasses,
  resolveModules
} from "./internal/modules.ts"
import {
  ensurePrivateDir,
  io,
  KernelCacheFailure,
  runTool,
  sha256File,
  sha256Hex,
  type ToolMissing,
  writeFileAtomic
} from "./internal/tools.ts"
import { unpackKernel } from "./internal/unpack.ts"

export interface FileKernelCacheOptions {
  /** The guest agent put at the initramfs's /init; by default found near the package (see internal/agent.ts). */
  readonly agentPath?: string
  /** `none` (default) unpacks in the guest in ~0.11 s against ~0.19 s for gzip -1 under TCG; gzip is a third of the size. */
  readonly initramfsCompression?: "gzip" | "none"
}

const Index = Schema.Struct({
  kernels: Schema.Array(KernelEntry),
  initramfs: Schema.Array(InitramfsEntry)
})
type Index = typeof Index.Type
const IndexJson = Schema.parseJson(Index)

export const hostArch = (): Arch | undefined =>
  process.arch === "x64" ? "x86_64" : process.arch === "arm64" ? "aarch64" : undefined

/** Maps the adapter's failures to the classified errors every caller sees. */
const toPublic = (error: KernelCacheFailure | ToolMissing): MicroagentError => {
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

const ModuleFileSuffix = /\.ko(\.(xz|zst|gz))?$/

/** Every module file under a modules directory, by canonical name. */
const scanModules = (dir: string) =>
  io(`scanning ${dir}`, () => {
    const found = new Map<string, string>()
    const walk = (current: string) => {
      for (const entry of NodeFs.readdirSync(current, { withFileTypes: true })) {
        const path = NodePath.join(current, entry.name)
        if (entry.isDirectory()) walk(path)
        else if (ModuleFileSuffix.test(entry.name)) {
          found.set(canonicalModuleName(entry.name.replace(ModuleFileSuffix, "")), path)
        }
      }
    }
    walk(dir)
    const builtinFile = NodePath.join(dir, "modules.builtin")
    const builtin = new Set(
      NodeFs.existsSync(builtinFile)
        ? NodeFs.readFileSync(builtinFile, "utf8").split("\n").filter((l) => l.length > 0).map((line) =>
          canonicalModuleName(NodePath.basename(line).replace(ModuleFileSuffix, ""))
        )
        : []
    )
    return { found, builtin }
  })

/** A module's plain ELF bytes (compressed modules are unpacked with the matching host tool). */
const readModule = (
  path: string,
  scratchDir: string
): Effect.Effect<Uint8Array, KernelCacheFailure | ToolMissing> => {
  if (path.endsWith(".ko")) return io(`reading ${path}`, () => NodeFs.readFileSync(path))
  if (path.endsWith(".gz")) {
    return io(`reading ${path}`, () => NodeZlib.gunzipSync(NodeFs.readFileSync(path)))
  }
  const [command, debianPackage] = path.endsWith(".xz") ? ["xz", "xz-utils"] : ["zstd", "zstd"]
  const out = NodePath.join(scratchDir, `${NodePath.basename(path)}.plain`)
  return runTool({
    command: command!,
    args: ["-dc"],
    debianPackage: debianPackage!,
    stdinFile: path,
    stdoutFile: out
  })
    .pipe(
      Effect.filterOrFail(
        (result) => result.code === 0,
        (result) =>
          new KernelCacheFailure({ reason: "ToolFailed", message: `${command} ${path}: ${result.stderr}` })
      ),
      Effect.flatMap(() => io(`reading ${out}`, () => NodeFs.readFileSync(out)))
    )
}

const sameStrings = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) =>
  a.length === b.length && a.every((x, i) => x === b[i])

export const make = (options: FileKernelCacheOptions = {}) =>
  Effect.gen(function*() {
    const home = yield* Home
    const http = yield* HttpClient.HttpClient
    const root = home.kernels
    const blobDir = NodePath.join(root, "sha256")
    const indexPath = NodePath.join(root, "index.json")
    const lockPath = NodePath.join(root, "index.lock")
    const compression = options.initramfsCompression ?? "none"

    const prepare = Effect.all([ensurePrivateDir(root), ensurePrivateDir(blobDir)])

    const readIndex: Effect.Effect<Index, KernelCacheFailure> = Effect.gen(function*() {
      const text = yield* io("reading the kernel index", () =>
        NodeFs.existsSync(indexPath) ? NodeFs.readFileSync(indexPath, "utf8") : undefined)
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
        () =>
          Effect.sync(() => NodeFs.rmSync(lockPath, { force: true }))
      )

    /** Stores bytes under their sha256 (a no-op when already there). */
    const putBlob = (bytes: Uint8Array) =>
      Effect.gen(function*() {
        const sha256 = sha256Hex(bytes)
        const path = NodePath.join(blobDir, sha256)
        const stat = NodeFs.statSync(path, { throwIfNoEntry: false })
        if (stat === undefined || stat.size !== bytes.length) yield* writeFileAtomic(path, bytes)
        return { sha256, path, sizeBytes: bytes.length }
      })

    /** A private scratch directory under the state root's tmp, removed when the scope closes. */
    const scratch = Effect.acquireRelease(
      ensurePrivateDir(home.tmp).pipe(
        Effect.flatMap(() =>
          io("creating a scratch directory", () => NodeFs.mkdtempSync(NodePath.join(home.tmp, "kernel-")))
        )
      ),
      (dir) => Effect.sync(() => NodeFs.rmSync(dir, { recursive: true, force: true }))
    )

    /** Streams a URL to a file while hashing it; refuses a body whose sha256 differs. */
    const download = (url: string, expected: string, file: string) =>
      Effect.gen(function*() {
        const response = yield* http.execute(HttpClientRequest.get(url))
        if (response.status !== 200) {
          return yield* new KernelCacheFailure({
            reason: response.status === 404 ? "NotFound" : "ToolFailed",
            message: `GET ${url}: HTTP ${response.status}`
          })
        }
        const hash = NodeCrypto.createHash("sha256")
        const fd = yield* Effect.acquireRelease(
          io(`creating ${file}`, () => NodeFs.openSync(file, "w", 0o600)),
          (fd) => Effect.sync(() => NodeFs.closeSync(fd))
        )
        yield* response.stream.pipe(
          Stream.runForEach((chunk) =>
            io(`writing ${file}`, () => {
              hash.update(chunk)
              NodeFs.writeSync(fd, chunk)
            })
          )
        )
        const actual = hash.digest("hex")
        if (actual !== expected.toLowerCase()) {
          return yield* new KernelCacheFailure({
            reason: "Checksum",
            message: `${url} has sha256 ${actual}, expected ${expected}`,
            remediation: "check the URL and the sha256 you gave"
          })
        }
      }).pipe(
        Effect.scoped,
        Effect.catchTags({
          RequestError: (e) =>
            Effect.fail(new KernelCacheFailure({ reason: "ToolFailed", message: e.message })),
          ResponseError: (e) =>
            Effect.fail(new KernelCacheFailure({ reason: "ToolFailed", message: e.message }))
        })
      )

    const isDeb = (file: string) =>
      io(`reading ${file}`, () => {
        const fd = NodeFs.openSync(file, "r")
        const head = Buffer.alloc(8)
        NodeFs.readSync(fd, head, 0, 8, 0)
        NodeFs.closeSync(fd)
        return head.toString("latin1") === "!<arch>\n"
      })

    /** Picks, stores and records the guest modules of a modules directory. */
    const storeModules = (modulesDir: string, scratchDir: string) =>
      Effect.gen(function*() {
        const { builtin, found } = yield* scanModules(modulesDir)
        const bytesByPath = new Map<string, Uint8Array>()
        const dependsByPath = new Map<string, ReadonlyArray<string>>()
        // Modules are read once (dependency lookup needs their bytes anyway).
        const load = (path: string) =>
          Effect.gen(function*() {
            const cached = bytesByPath.get(path)
            if (cached !== undefined) return cached
            const bytes = yield* readModule(path, scratchDir)
            bytesByPath.set(path, bytes)
            dependsByPath.set(
              path,
              yield* Effect.try({
                try: () => moduleDepends(bytes).map(canonicalModuleName),
                catch: (cause) =>
                  new KernelCacheFailure({ reason: "BadInput", message: `${path}: ${String(cause)}` })
              })
            )
            return bytes
          })
        // resolveModules is synchronous: preload everything reachable first.
        const pending = [...requiredModules("microvm"), ...requiredModules("q35"), ...optionalModules].map(
          canonicalModuleName
        )
        const seen = new Set<string>()
        while (pending.length > 0) {
          const name = pending.pop()!
          if (seen.has(name)) continue
          seen.add(name)
          const path = found.get(name)
          if (path === undefined) continue
          yield* load(path)
          pending.push(...dependsByPath.get(path)!)
        }
        const source: ModuleSource = {
          locate: (name) => found.get(name),
          builtin,
          depends: (path) => dependsByPath.get(path) ?? []
        }
        const chosen = new Map<string, string>()
        for (const machine of ["microvm", "q35"] as const) {
          const order = yield* Effect.try({
            try: () => resolveModules(source, requiredModules(machine), optionalModules),
            catch: (cause) =>
              new KernelCacheFailure({
                reason: "BadInput",
                message: `the kernel cannot run the guest on ${machine}: ${String(cause)}`
              })
          })
          for (const m of order) chosen.set(m.name, m.path)
        }
        const modules: Array<KernelModule> = []
        for (const [name, path] of chosen) {
          const blob = yield* putBlob(bytesByPath.get(path)!)
          modules.push(
            new KernelModule({
              name,
              path: blob.path,
              sha256: blob.sha256,
              depends: dependsByPath.get(path) ?? []
            })
          )
        }
        const builtinModules = [...seen].filter((name) => builtin.has(name)).sort()
        return { modules, builtinModules }
      })

    const installFrom = (source: KernelSource, wantedArch: Arch | undefined) =>
      Effect.gen(function*() {
        yield* prepare
        const dir = yield* scratch
        let rawFile: string
        let origin: string
        let modulesDirHint: string | undefined
        if ("path" in source) {
          rawFile = NodePath.resolve(source.path)
          if (!NodeFs.existsSync(rawFile)) {
            return yield* new KernelCacheFailure({ reason: "NotFound", message: `no such file: ${rawFile}` })
          }
          origin = `path:${rawFile}`
          modulesDirHint = source.modulesDir === undefined ? undefined : NodePath.resolve(source.modulesDir)
        } else if ("url" in source) {
          if (!/^[0-9a-fA-F]{64}$/.test(source.sha256)) {
            return yield* new KernelCacheFailure({
              reason: "BadInput",
              message: `"${source.sha256}" is not a sha256 (64 hex digits)`
            })
          }
          rawFile = NodePath.join(dir, "download")
          yield* download(source.url, source.sha256, rawFile)
          origin = `url:${source.url}`
        } else {
          const arch = wantedArch ?? hostArch()
          if (arch === undefined || arch !== hostArch()) {
            return yield* new KernelCacheFailure({
              reason: "Unsupported",
              message: `only the host architecture's distribution kernel can be fetched (asked for ${arch})`,
              remediation: "install a kernel for that architecture with --path or --url"
            })
          }
          if (!isDebianLike()) {
            return yield* new KernelCacheFailure({
              reason: "NotFound",
              message:
                "no kernel is cached and this host has no apt to fetch the distribution's cloud kernel",
              remediation:
                "microagent kernel install --path <vmlinux|bzImage|.deb> (or --url <url> --sha256 <sum>)"
            })
          }
          const wanted = source.debianPackage ?? defaultDebianPackage(arch)
          const resolved = yield* resolvePackage(wanted, source.version)
          const downloads = NodePath.join(dir, "apt")
          yield* ensurePrivateDir(downloads)
          rawFile = yield* downloadPackage(resolved.name, resolved.version, downloads)
          origin = `debian:${NodePath.basename(rawFile, ".deb").split("_").slice(0, 2).join("=")}`
        }

        let kernelFile = rawFile
        let versionHint: string | undefined
        let modulesDir = modulesDirHint
        if (yield* isDeb(rawFile)) {
          const tree = NodePath.join(dir, "deb")
          yield* ensurePrivateDir(tree)
          yield* extractPackage(rawFile, tree)
          const found = yield* findKernelInTree(tree)
          kernelFile = found.kernelFile
          versionHint = found.version
          modulesDir = found.modulesDir
        }
        const input = yield* io(`reading ${kernelFile}`, () => NodeFs.readFileSync(kernelFile))
        const kernel = yield* unpackKernel(input, dir, versionHint)
        if (wantedArch !== undefined && kernel.arch !== wantedArch) {
          return yield* new KernelCacheFailure({
            reason: "BadInput",
            message: `the kernel is for ${kernel.arch}, not ${wantedArch}`
          })
        }
        const { builtinModules, modules } = modulesDir === undefined
          ? { modules: [], builtinModules: [] }
          : yield* storeModules(modulesDir, dir)
        const blob = yield* putBlob(kernel.bytes)
        const hz = hzBesideKernel(kernelFile, kernel.version)
        const entry = new KernelEntry({
          version: kernel.version,
          arch: kernel.arch,
          source: origin,
          path: blob.path,
          sha256: blob.sha256,
          sizeBytes: blob.sizeBytes,
          format: kernel.format,
          modules,
          builtinModules,
          ...(hz === undefined ? {} : { hz }),
          installedAt: new Date().toISOString()
        })
        // The newest install of an architecture is the default: keep it last.
        yield* updateIndex((index) => ({
          ...index,
          kernels: [...index.kernels.filter((k) => k.sha256 !== entry.sha256), entry]
        }))
        return entry
      }).pipe(Effect.scoped)

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
        const cached = index.initramfs.find((entry) =>
          entry.kernelSha256 === kernel.sha256 && entry.agentSha256 === agentSha256
          && entry.machine === machine
          && entry.compression === compression && sameStrings(entry.modules, names)
          && sameStrings(entry.loadClasses ?? [], loadClasses)
          && NodeFs.statSync(entry.path, { throwIfNoEntry: false })?.size === entry.sizeBytes
        )
        if (cached !== undefined) return cached
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
        yield* updateIndex((current) => ({
          ...current,
          initramfs: [...current.initramfs.filter((i) => i.sha256 !== entry.sha256), entry]
        }))
        return entry
      })

    const ensure = Effect.fn("KernelCache.ensure")(function*(arch: Arch, ensureOptions?: EnsureOptions) {
      yield* prepare
      const index = yield* readIndex
      const cached = Option.fromNullable(index.kernels.filter((k) => k.arch === arch).at(-1))
      const kernel = Option.isSome(cached) && NodeFs.existsSync(cached.value.path)
        ? cached.value
        : yield* installFrom({}, arch)
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
        return yield* installFrom(source, arch)
      },
      Effect.mapError(toPublic)
    )

    const list = Effect.gen(function*() {
      return (yield* readIndex).kernels
    }).pipe(Effect.mapError(toPublic), Effect.withSpan("KernelCache.list"))

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
    }).pipe(Effect.mapError(toPublic), Effect.withSpan("KernelCache.verify"))

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
