/**
 * `microagent kernel list|install|verify|ensure`: the kernel cache of the state directory. Each
 * subcommand builds its own layers, so `--help` opens nothing.
 */
import { Command, Options } from "@effect/cli"
import { Effect, Layer, Option } from "effect"
import { InvalidInput, type MicroagentError, Permanent } from "../domain/Errors.ts"
import { FileKernelCache } from "../layers/kernel/FileKernelCache.ts"
import { Home } from "../services/Home.ts"
import { type Arch, KernelCache, type KernelEntry, type KernelSource } from "../services/KernelCache.ts"
import { Invocation } from "./Invocation.ts"
import { emit, table } from "./Output.ts"

/** Runs `f` with the kernel cache of this invocation's state directory. */
const withKernels = <A>(f: (cache: KernelCache["Type"]) => Effect.Effect<A, MicroagentError>) =>
  Effect.flatMap(Invocation, (invocation) =>
    Effect.flatMap(KernelCache, f).pipe(
      Effect.provide(
        FileKernelCache.layer().pipe(
          Layer.provide(Home.layer(Home.resolveRoot(invocation.stateDir)))
        )
      )
    ))

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MiB`

const entryJson = (k: KernelEntry) => ({
  version: k.version,
  arch: k.arch,
  format: k.format,
  sha256: k.sha256,
  size_bytes: k.sizeBytes,
  path: k.path,
  source: k.source,
  modules: k.modules.map((m) => m.name),
  installed_at: k.installedAt
})

const renderKernels = (kernels: ReadonlyArray<ReturnType<typeof entryJson>>) =>
  kernels.length === 0
    ? "no kernels cached (`microagent kernel install` fetches the distribution's cloud kernel)"
    : table(
      ["VERSION", "ARCH", "FORMAT", "SHA256", "SIZE", "SOURCE"],
      kernels.map((k) => [k.version, k.arch, k.format, k.sha256.slice(0, 12), mib(k.size_bytes), k.source])
    )

const archOption = Options.choice("arch", ["x86_64", "aarch64"]).pipe(
  Options.withDescription("architecture (default: the host's)"),
  Options.optional
)

const list = Command.make("list", {}, () =>
  withKernels((cache) => cache.list).pipe(
    Effect.flatMap((kernels) => emit({ kernels: kernels.map(entryJson) }, (v) => renderKernels(v.kernels)))
  )).pipe(Command.withDescription("list cached kernels (the newest of an architecture is the default)"))

const install = Command.make(
  "install",
  {
    path: Options.text("path").pipe(
      Options.withDescription("a vmlinux, bzImage or kernel .deb on this host"),
      Options.optional
    ),
    modulesDir: Options.text("modules-dir").pipe(
      Options.withPseudoName("DIR"),
      Options.withDescription("with --path to a bare kernel: its lib/modules/<version> directory"),
      Options.optional
    ),
    url: Options.text("url").pipe(
      Options.withDescription("download a kernel or .deb (needs --sha256)"),
      Options.optional
    ),
    sha256: Options.text("sha256").pipe(
      Options.withDescription("expected sha256 of --url"),
      Options.optional
    ),
    pkg: Options.text("package").pipe(
      Options.withDescription("Debian package (default linux-image-cloud-amd64 / -arm64)"),
      Options.optional
    ),
    version: Options.text("version").pipe(
      Options.withDescription("Debian package version"),
      Options.optional
    ),
    arch: archOption
  },
  (flags) =>
    Effect.gen(function*() {
      const given = [flags.path, flags.url, flags.pkg].filter(Option.isSome).length
      if (given > 1) {
        return yield* new InvalidInput({ message: "give one of --path, --url and --package" })
      }
      if (Option.isSome(flags.url) !== Option.isSome(flags.sha256)) {
        return yield* new InvalidInput({ message: "--url and --sha256 go together" })
      }
      const source: KernelSource = Option.isSome(flags.path)
        ? {
          path: flags.path.value,
          ...(Option.isSome(flags.modulesDir) ? { modulesDir: flags.modulesDir.value } : {})
        }
        : Option.isSome(flags.url) && Option.isSome(flags.sha256)
        ? { url: flags.url.value, sha256: flags.sha256.value }
        : {
          ...(Option.isSome(flags.pkg) ? { debianPackage: flags.pkg.value } : {}),
          ...(Option.isSome(flags.version) ? { version: flags.version.value } : {})
        }
      const arch = Option.getOrUndefined(flags.arch) as Arch | undefined
      const entry = yield* withKernels((cache) => cache.install(source, arch))
      yield* emit(
        entryJson(entry),
        (k) =>
          `installed ${k.version} (${k.arch}, ${k.format}, sha256 ${k.sha256.slice(0, 12)}) from ${k.source}`
      )
    })
).pipe(
  Command.withDescription("add a kernel: --path, --url with --sha256, or the distribution's cloud kernel")
)

const verify = Command.make("verify", {}, () =>
  Effect.gen(function*() {
    const results = yield* withKernels((cache) => cache.verify)
    const bad = results.filter((r) => !r.ok)
    yield* emit(
      { ok: bad.length === 0, files: results },
      (v) =>
        v.files.length === 0
          ? "nothing cached"
          : table(
            ["STATUS", "SHA256", "PATH"],
            v.files.map((f) => [f.ok ? "ok" : "MISMATCH", f.actual.slice(0, 12), f.path])
          )
    )
    if (bad.length > 0) {
      return yield* new Permanent({
        message: `${bad.length} cached kernel file(s) do not match their sha256`,
        remediation: "install the kernel again (microagent kernel install)"
      })
    }
  })).pipe(Command.withDescription("recompute the sha256 of every cached kernel, module and initramfs"))

const ensure = Command.make(
  "ensure",
  {
    arch: archOption,
    machine: Options.choice("machine", ["microvm", "q35"]).pipe(
      Options.withDescription("VMM machine the initramfs is for"),
      Options.withDefault("microvm" as const)
    )
  },
  (flags) =>
    Effect.gen(function*() {
      const arch =
        (Option.getOrUndefined(flags.arch) ?? (process.arch === "arm64" ? "aarch64" : "x86_64")) as Arch
      const boot = yield* withKernels((cache) => cache.ensure(arch, { machine: flags.machine }))
      yield* emit(
        {
          kernel: boot.kernelPath,
          kernel_sha256: boot.kernelSha256,
          initrd: boot.initrdPath,
          initrd_sha256: boot.initrdSha256,
          version: boot.kernelVersion
        },
        (b) => `kernel ${b.version}\n  ${b.kernel}\ninitramfs\n  ${b.initrd}`
      )
    })
).pipe(Command.withDescription("make sure a kernel and the agent's initramfs are cached; print their paths"))

export const kernelCommand = Command.make("kernel").pipe(
  Command.withDescription("list, install and verify guest kernels"),
  Command.withSubcommands([list, install, verify, ensure])
)
