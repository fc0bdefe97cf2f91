/**
 * Kernels and the initramfs that carries the guest agent, cached by sha256.
 *
 * A kernel comes from an explicit file, a URL with its sha256, or the host distribution's cloud
 * kernel package; the cache keeps what the VMM boots (the ELF vmlinux for PVH when the kernel can be
 * unpacked to one, else the image as given) and the modules the guest needs, and builds one
 * initramfs per (kernel, agent, machine).
 */
import { Context, type Effect, Schema } from "effect"
import type { NotFound, Permanent, Transient, Unsupported } from "../domain/Errors.ts"

export const Arch = Schema.Literal("x86_64", "aarch64")
export type Arch = typeof Arch.Type

/** The VMM machine type the initramfs is built for (its bus decides which virtio transport loads). */
export const Machine = Schema.Literal("microvm", "q35")
export type Machine = typeof Machine.Type

export class BootArtifacts extends Schema.Class<BootArtifacts>("BootArtifacts")({
  /** What the VMM boots: an ELF vmlinux (PVH) or a bzImage. */
  kernelPath: Schema.String,
  kernelSha256: Schema.String,
  initrdPath: Schema.String,
  initrdSha256: Schema.String,
  kernelVersion: Schema.String,
  /** Extra kernel command-line words this kernel needs beyond what the backend passes (usually none). */
  cmdline: Schema.Array(Schema.String),
  /** The kernel's CONFIG_HZ, when its build configuration was found at install. */
  kernelHz: Schema.optional(Schema.Int)
}) {}

export const KernelFormat = Schema.Literal("elf", "bzImage", "Image")
export type KernelFormat = typeof KernelFormat.Type

export class KernelModule extends Schema.Class<KernelModule>("KernelModule")({
  /** Canonical module name (underscores), e.g. `virtio_blk`. */
  name: Schema.String,
  path: Schema.String,
  sha256: Schema.String,
  /** Canonical names from the module's `depends=`. */
  depends: Schema.Array(Schema.String)
}) {}

export class KernelEntry extends Schema.Class<KernelEntry>("KernelEntry")({
  version: Schema.String,
  arch: Arch,
  /** Where it came from: `path:/…`, `url:https://…`, `debian:linux-image-…=version`. */
  source: Schema.String,
  path: Schema.String,
  sha256: Schema.String,
  sizeBytes: Schema.Number,
  format: Schema.optionalWith(KernelFormat, { default: () => "elf" as const }),
  /** The guest modules kept from the package (the virtio set and their dependencies). */
  modules: Schema.optionalWith(Schema.Array(KernelModule), { default: () => [] }),
  /** Names of wanted modules that this kernel builds in (nothing to load for those). */
  builtinModules: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** CONFIG_HZ from the build configuration beside the kernel (`boot/config-<version>`), if there was one. */
  hz: Schema.optional(Schema.Int),
  installedAt: Schema.optional(Schema.String)
}) {}

export class InitramfsEntry extends Schema.Class<InitramfsEntry>("InitramfsEntry")({
  path: Schema.String,
  sha256: Schema.String,
  sizeBytes: Schema.Number,
  kernelSha256: Schema.String,
  agentSha256: Schema.String,
  machine: Machine,
  /** Module names in load order, as written to /lib/modules/load.list. */
  modules: Schema.Array(Schema.String),
  /** Each module's load class (`boot`, `net`, `vsock`), parallel to `modules`; absent in older builds. */
  loadClasses: Schema.optional(Schema.Array(Schema.String)),
  compression: Schema.Literal("gzip", "none")
}) {}

/** Where `install` gets a kernel. */
export const KernelSource = Schema.Union(
  /** A vmlinux, bzImage or Debian .deb on this host; `modulesDir` adds modules for a bare kernel file. */
  Schema.Struct({ path: Schema.String, modulesDir: Schema.optional(Schema.String) }),
  /** A kernel file or .deb to download; refused unless its sha256 matches. */
  Schema.Struct({ url: Schema.String, sha256: Schema.String }),
  /** The distribution's cloud kernel (default `linux-image-cloud-amd64`/`-arm64`), downloaded, never installed. */
  Schema.Struct({ debianPackage: Schema.optional(Schema.String), version: Schema.optional(Schema.String) })
)
export type KernelSource = typeof KernelSource.Type

export const VerifyResultSchema = Schema.Struct({
  path: Schema.String,
  ok: Schema.Boolean,
  expected: Schema.String,
  actual: Schema.String
})
export type VerifyResult = typeof VerifyResultSchema.Type

export interface EnsureOptions {
  readonly machine?: Machine
}

export interface KernelCacheShape {
  /** The kernel and initramfs for an architecture, installing the default kernel when none is cached. */
  readonly ensure: (
    arch: Arch,
    options?: EnsureOptions
  ) => Effect.Effect<BootArtifacts, Permanent | NotFound | Unsupported | Transient>
  /** Adds a kernel to the cache (the newest install of an architecture is the one `ensure` uses). */
  readonly install: (
    source: KernelSource,
    arch?: Arch
  ) => Effect.Effect<KernelEntry, Permanent | NotFound | Unsupported | Transient>
  readonly list: Effect.Effect<ReadonlyArray<KernelEntry>, Permanent | NotFound | Unsupported | Transient>
  /** Recomputes every cached file's sha256 and reports mismatches. */
  readonly verify: Effect.Effect<ReadonlyArray<VerifyResult>, Permanent | NotFound | Unsupported | Transient>
}

export class KernelCache extends Context.Tag("microagent/KernelCache")<KernelCache, KernelCacheShape>() {}
