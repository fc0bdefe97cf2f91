/**
 * Streams one layer blob (gzip, zstd or plain tar, detected by magic bytes) into a stage.
 * zstd goes through the `zstd` binary as a streaming subprocess: Node 20's zlib has no zstd.
 */
import { Data, Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import type { Readable } from "node:stream"
import * as NodeZlib from "node:zlib"
import type { Stage } from "./Stage.ts"
import { UnsafeLayerError } from "./Stage.ts"
import { TarFormatError, TarReader } from "./Tar.ts"
import { findTool, type ToolMissing } from "./Tools.ts"

export type Compression = "gzip" | "zstd" | "none"

export class LayerFailed extends Data.TaggedError("LayerFailed")<{
  readonly layer: string
  readonly reason: string
  readonly unsafe: boolean
}> {
  override get message(): string {
    return `layer ${this.layer}: ${this.reason}`
  }
}

export const detectCompression = (path: string): Compression => {
  const fd = NodeFs.openSync(path, "r")
  const head = Buffer.alloc(4)
  const n = NodeFs.readSync(fd, head, 0, 4, 0)
  NodeFs.closeSync(fd)
  if (n >= 2 && head[0] === 0x1f && head[1] === 0x8b) return "gzip"
  if (n >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return "zstd"
  return "none"
}

/** Applies the tar stream in `path` to the stage; `label` names the layer in errors. */
export const applyLayer = (
  stage: Stage,
  path: string,
  label: string,
  onBytes?: (compressedBytes: number) => void
): Effect.Effect<{ readonly entries: number }, LayerFailed | ToolMissing> =>
  Effect.gen(function*() {
    const compression = yield* Effect.try({
      try: () => detectCompression(path),
      catch: (cause) => new LayerFailed({ layer: label, reason: String(cause), unsafe: false })
    })
    const zstd = compression === "zstd" ? yield* findTool("zstd") : undefined
    return yield* Effect.async<{ readonly entries: number }, LayerFailed>((resume) => {
      const handler = stage.layer()
      const reader = new TarReader(handler)
      const file = NodeFs.createReadStream(path, { highWaterMark: 256 * 1024 })
      let child: NodeChild.ChildProcess | undefined
      let source: Readable = file
      let settled = false
      const fail = (cause: unknown) => {
        if (settled) return
        settled = true
        cleanup()
        const unsafe = cause instanceof UnsafeLayerError
        const reason = cause instanceof UnsafeLayerError || cause instanceof TarFormatError
          ? cause.message
          : cause instanceof Error
          ? cause.message
          : String(cause)
        resume(Effect.fail(new LayerFailed({ layer: label, reason, unsafe })))
      }
      const cleanup = () => {
        handler.abort?.()
        file.destroy()
        if (source !== file) source.destroy()
        child?.kill("SIGKILL")
      }
      if (onBytes !== undefined) file.on("data", (chunk) => onBytes(chunk.length))
      file.on("error", fail)
      if (compression === "gzip") {
        const gunzip = NodeZlib.createGunzip({ chunkSize: 256 * 1024 })
        file.pipe(gunzip)
        source = gunzip
      } else if (zstd !== undefined) {
        child = NodeChild.spawn(zstd, ["-d", "-c", "-q"], { stdio: ["pipe", "pipe", "pipe"] })
        const stderr: Array<Buffer> = []
        child.stderr!.on("data", (b: Buffer) => stderr.push(b))
        child.on("error", fail)
        child.stdin!.on("error", () => {
          // zstd closing its input early shows up as its exit status below.
        })
        child.on("close", (code) => {
          if (code !== 0 && code !== null) fail(new Error(`zstd: ${Buffer.concat(stderr).toString().trim()}`))
        })
        file.pipe(child.stdin!)
        source = child.stdout!
      }
      source.on("error", (cause) => fail(new Error(`decompression failed: ${cause.message}`)))
      source.on("data", (chunk: Buffer) => {
        if (settled) return
        try {
          reader.write(chunk)
        } catch (cause) {
          fail(cause)
        }
      })
      source.on("end", () => {
        if (settled) return
        try {
          reader.finish()
        } catch (cause) {
          fail(cause)
          return
        }
        const finishOk = () => {
          if (settled) return
          settled = true
          resume(Effect.succeed({ entries: reader.entryCount }))
        }
        // Wait for zstd's exit status so a corrupt frame is not mistaken for a short layer.
        if (child !== undefined && child.exitCode === null) {
          child.once("close", (code) => code === 0 && finishOk())
        } else if (child !== undefined && child.exitCode !== 0) fail(new Error("zstd failed"))
        else finishOk()
      })
      return Effect.sync(() => {
        settled = true
        cleanup()
      })
    })
  })
