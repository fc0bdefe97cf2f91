/**
 * Installing a kernel from one of its sources: a file (a vmlinux, bzImage or .deb, with an optional
 * modules directory), a URL with its sha256, or the host distribution's cloud kernel package
 * (`apt-get download` + `dpkg-deb -x`, no install). The kernel is unpacked to what a VMM boots, the
 * guest's modules are picked, and everything is stored by sha256 and recorded in the index.
 */
import { type HttpClient, HttpClientRequest } from "@effect/platform"
import { Effect, Stream } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as NodeZlib from "node:zlib"
import type { HomeShape } from "../../../services/Home.ts"
import { type Arch, KernelEntry, KernelModule, type KernelSource } from "../../../services/KernelCache.ts"
import { hzBesideKernel } from "./config.ts"
import {
  defaultDebianPackage,
  downloadPackage,
  extractPackage,
  findKernelInTree,
  isDebianLike,
  resolvePackage
} from "./debian.ts"
import { moduleDepends } from "./elf.ts"
import {
  canonicalModuleName,
  type ModuleSource,
  optionalModules,
  requiredModules,
  resolveModules
} from "./modules.ts"
import type { KernelStore } from "./store.ts"
import { ensurePrivateDir, io, KernelCacheFailure, runTool, type ToolMissing } from "./tools.ts"
import { unpackKernel } from "./unpack.ts"

const hostArch = (): Arch | undefined =>
  process.arch === "x64" ? "x86_64" : process.arch === "arm64" ? "aarch64" : undefined

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
/** Installs kernels into `store`, fetching URL sources with `http`. */
export const makeKernelInstaller = (home: HomeShape, http: HttpClient.HttpClient, store: KernelStore) => {
  const { addKernel, prepare, putBlob } = store

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
            message: "no kernel is cached and this host has no apt to fetch the distribution's cloud kernel",
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
      yield* addKernel(entry)
      return entry
    }).pipe(Effect.scoped)

  return { installFrom }
}
