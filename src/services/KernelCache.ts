/**
 * Kernels and the initramfs that carries the guest agent, cached by sha256.
 */
import { Context, type Effect, Schema } from "effect"
import type { MicroagentError } from "../domain/Errors.ts"

export const Arch = Schema.Literal("x86_64", "aarch64")
export type Arch = typeof Arch.Type

export class BootArtifacts extends Schema.Class<BootArtifacts>("BootArtifacts")({
  /** What the VMM boots: an ELF vmlinux (PVH) or a bzImage. */
  kernelPath: Schema.String,
  kernelSha256: Schema.String,
  initrdPath: Schema.String,
  initrdSha256: Schema.String,
  kernelVersion: Schema.String,
  /** Kernel command-line words the kernel needs (console, module list, …). */
  cmdline: Schema.Array(Schema.String)
}) {}

export class KernelEntry extends Schema.Class<KernelEntry>("KernelEntry")({
  version: Schema.String,
  arch: Arch,
  source: Schema.String,
  path: Schema.String,
  sha256: Schema.String,
  sizeBytes: Schema.Number
}) {}

export interface KernelCacheShape {
  /** The kernel and initramfs for an architecture, installing the default kernel when none is cached. */
  readonly ensure: (arch: Arch) => Effect.Effect<BootArtifacts, MicroagentError>
  readonly list: Effect.Effect<ReadonlyArray<KernelEntry>, MicroagentError>
  /** Recomputes every cached file's sha256 and reports mismatches. */
  readonly verify: Effect.Effect<ReadonlyArray<{ path: string; ok: boolean; expected: string; actual: string }>, MicroagentError>
}

export class KernelCache extends Context.Tag("microagent/KernelCache")<KernelCache, KernelCacheShape>() {}
