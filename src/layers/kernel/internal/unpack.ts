/**
 * Turns what a kernel source gave us (an ELF vmlinux, an x86 bzImage, an arm64 Image, possibly
 * gzipped) into what the VMM boots: for x86 the ELF vmlinux, booted directly via its PVH note, which
 * skips the in-guest decompressor (slow under TCG).
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as NodeZlib from "node:zlib"
import type { Arch, KernelFormat } from "../../../services/KernelCache.ts"
import { type Compression, decompressors, isBzImage, parseBzImage } from "./bzimage.ts"
import { EM_AARCH64, EM_X86_64, hasPvhEntry, isElf, linuxVersionIn, parseElf } from "./elf.ts"
import { decodeLz4Legacy } from "./lz4.ts"
import { io, KernelCacheFailure, runTool, type ToolMissing } from "./tools.ts"

export interface BootableKernel {
  readonly format: KernelFormat
  readonly bytes: Uint8Array
  readonly arch: Arch
  readonly version: string
}

const bad = (message: string) => new KernelCacheFailure({ reason: "BadInput", message })

const isArm64Image = (bytes: Uint8Array) =>
  bytes.length > 0x40
  && Buffer.from(bytes.buffer, bytes.byteOffset + 0x38, 4).toString("latin1") === "ARM\x64"

const isGzip = (bytes: Uint8Array) => bytes[0] === 0x1f && bytes[1] === 0x8b

/** Decompresses with a host tool; accepts a non-zero exit when the output is complete. */
const decompressWithTool = (
  payload: Uint8Array,
  compression: Exclude<Compression, "gzip" | "none">,
  scratchDir: string
): Effect.Effect<Uint8Array, KernelCacheFailure | ToolMissing> =>
  Effect.gen(function*() {
    const tool = decompressors[compression]
    const input = NodePath.join(scratchDir, "payload")
    const output = NodePath.join(scratchDir, "payload.out")
    yield* io("writing the kernel payload", () => NodeFs.writeFileSync(input, payload, { mode: 0o600 }))
    const result = yield* runTool({
      command: tool.command,
      args: tool.args,
      debianPackage: tool.debianPackage,
      stdinFile: input,
      stdoutFile: output
    })
    const bytes = yield* io("reading the decompressed kernel", () => NodeFs.readFileSync(output))
    yield* io("removing scratch files", () => {
      NodeFs.rmSync(input, { force: true })
      NodeFs.rmSync(output, { force: true })
    })
    // The kernel build appends the uncompressed size as a trailing u32, which some tools reject.
    const trailer = payload.length >= 4
      ? new DataView(payload.buffer, payload.byteOffset + payload.length - 4, 4).getUint32(0, true)
      : -1
    if (result.code !== 0 && !(isElf(bytes) && bytes.length === trailer)) {
      return yield* bad(`${tool.command} could not decompress the kernel payload: ${result.stderr.trim()}`)
    }
    return bytes
  })

const decompressPayload = (
  payload: Uint8Array,
  compression: Compression,
  scratchDir: string
): Effect.Effect<Uint8Array, KernelCacheFailure | ToolMissing> => {
  switch (compression) {
    case "none":
      return Effect.succeed(payload)
    case "gzip":
      // Some builds append the size word after gzip's own trailer; zlib rejects it as a new member.
      return Effect.try({
        try: () => {
          try {
            return NodeZlib.gunzipSync(payload)
          } catch {
            return NodeZlib.gunzipSync(payload.subarray(0, payload.length - 4))
          }
        },
        catch: (cause) => bad(`gzip kernel payload: ${String(cause)}`)
      })
    case "lz4":
      return Effect.try({
        try: () => decodeLz4Legacy(payload),
        catch: (cause) => bad(`lz4 kernel payload: ${String(cause)}`)
      })
    default:
      return decompressWithTool(payload, compression, scratchDir)
  }
}

/** Finds the bootable form of a kernel image. `scratchDir` holds temporary files of decompression. */
export const unpackKernel = (
  input: Uint8Array,
  scratchDir: string,
  versionHint?: string
): Effect.Effect<BootableKernel, KernelCacheFailure | ToolMissing> =>
  Effect.gen(function*() {
    if (isBzImage(input)) {
      const image = yield* Effect.try({
        try: () => parseBzImage(input),
        catch: (cause) => bad(String(cause))
      })
      const vmlinux = yield* decompressPayload(image.payload, image.compression, scratchDir)
      return yield* fromElf(vmlinux, versionHint ?? image.version)
    }
    if (isElf(input)) return yield* fromElf(input, versionHint)
    const plain = isGzip(input)
      ? yield* Effect.try({
        try: () => NodeZlib.gunzipSync(input),
        catch: (cause) => bad(`gzip: ${String(cause)}`)
      })
      : input
    if (isArm64Image(plain)) {
      const version = versionHint ?? linuxVersionIn(plain)
      if (version === undefined) return yield* bad("cannot find the kernel version in the arm64 Image")
      return { format: "Image" as const, bytes: plain, arch: "aarch64" as const, version }
    }
    return yield* bad("not a kernel: expected an ELF vmlinux, an x86 bzImage or an arm64 Image")
  })

const fromElf = (bytes: Uint8Array, versionHint: string | undefined) =>
  Effect.gen(function*() {
    const elf = yield* Effect.try({ try: () => parseElf(bytes), catch: (cause) => bad(String(cause)) })
    const arch = elf.machine === EM_X86_64
      ? "x86_64" as const
      : elf.machine === EM_AARCH64
      ? "aarch64" as const
      : undefined
    if (arch === undefined) return yield* bad(`unsupported ELF machine ${elf.machine}`)
    if (arch === "x86_64" && !hasPvhEntry(elf)) {
      return yield* bad("the x86 vmlinux has no PVH entry note (the kernel needs CONFIG_PVH=y)")
    }
    const version = versionHint ?? linuxVersionIn(bytes)
    if (version === undefined) return yield* bad("cannot find the kernel version in the vmlinux")
    return { format: "elf" as const, bytes, arch, version }
  })
