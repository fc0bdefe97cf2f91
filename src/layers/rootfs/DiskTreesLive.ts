/** DiskTrees on the host: `cp` for the copy, debugfs for the tree (Ext4Tree.ts), the layer writer (CommitLayer.ts). */
import { Effect, Layer } from "effect"
import * as NodeChild from "node:child_process"
import { DiskTrees, DiskTreesFailed } from "../../services/DiskTrees.ts"
import { layerTar, specialBitsIn, writeLayer } from "../image/CommitLayer.ts"
import type { ImageError } from "./Debugfs.ts"
import { dumpInodes, readExt4Tree } from "./Ext4Tree.ts"

const failed = (error: ImageError) =>
  new DiskTreesFailed(
    error._tag === "ToolMissing"
      ? { message: error.message, remediation: error.remediation }
      : { message: error.message }
  )

const thrown = (cause: unknown) =>
  new DiskTreesFailed({ message: cause instanceof Error ? cause.message : String(cause) })

const copy = (from: string, to: string) =>
  Effect.async<void, DiskTreesFailed>((resume) => {
    NodeChild.execFile("cp", ["--reflink=auto", "--sparse=always", from, to], (error, _stdout, stderr) => {
      if (error === null) return resume(Effect.void)
      resume(
        Effect.fail(
          new DiskTreesFailed({ message: `copying the disk ${from} failed: ${String(stderr).trim()}` })
        )
      )
    })
  })

/** The host's DiskTrees. */
export const layer: Layer.Layer<DiskTrees> = Layer.succeed(
  DiskTrees,
  DiskTrees.of({
    copy,
    read: (image, workDir, options) => Effect.mapError(readExt4Tree(image, workDir, options), failed),
    dumpInodes: (image, inos, tree, workDir) =>
      Effect.mapError(dumpInodes(image, inos, tree, workDir), failed),
    writeLayer: (items, trees, output) =>
      Effect.tryPromise({
        try: () => writeLayer(layerTar(items, trees), output, items.length),
        catch: thrown
      }),
    specialBits: (layers, wanted) =>
      Effect.tryPromise({ try: () => specialBitsIn(layers, wanted), catch: thrown })
  })
)
