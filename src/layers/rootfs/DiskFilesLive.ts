/** DiskFiles on the host: e2fsck and debugfs (see Debugfs.ts). */
import { Effect, Layer } from "effect"
import { DiskFiles, DiskFilesFailed } from "../../services/DiskFiles.ts"
import * as Debugfs from "./Debugfs.ts"

const failed = (error: Debugfs.ImageError) =>
  new DiskFilesFailed(
    error._tag === "ToolMissing"
      ? { message: error.message, remediation: error.remediation }
      : { message: error.message }
  )

export const layer: Layer.Layer<DiskFiles> = Layer.succeed(
  DiskFiles,
  DiskFiles.of({
    repair: (image) => Effect.mapError(Debugfs.fsck(image), failed),
    stat: (image, path) => Effect.mapError(Debugfs.statPath(image, path), failed),
    writeTree: (image, tree, target, options) =>
      Effect.try({
        try: () => Debugfs.writeTreeScript(tree, target, options.replace),
        catch: (cause) =>
          cause instanceof Debugfs.DebugfsFailed
            ? cause
            : new Debugfs.DebugfsFailed({ detail: String(cause) })
      }).pipe(
        Effect.flatMap((lines) => Debugfs.writeBatch(image, lines, options.workDir)),
        Effect.mapError(failed)
      ),
    dumpFile: (image, path, hostFile) => Effect.mapError(Debugfs.dumpFile(image, path, hostFile), failed),
    dumpTree: (image, path, hostDir) => Effect.mapError(Debugfs.rdump(image, path, hostDir), failed)
  })
)
