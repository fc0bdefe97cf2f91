/** HostTrees on the host: the tar writer and walker, and the tar reader into a safe Stage. */
import { Layer } from "effect"
import { HostTrees } from "../../services/HostTrees.ts"
import { defaultStageOptions, Stage, UnsafeLayerError } from "./Stage.ts"
import { TarFormatError, TarReader } from "./Tar.ts"
import { tarStream, walkHost } from "./TarWriter.ts"

export const layer: Layer.Layer<HostTrees> = Layer.succeed(
  HostTrees,
  HostTrees.of({
    walk: walkHost,
    tar: tarStream,
    extract: (staging) => {
      const stage = new Stage(staging, { ...defaultStageOptions, refuseDevices: false })
      const reader = new TarReader(stage.layer())
      return {
        write: (chunk) => reader.write(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length)),
        finish: () => {
          reader.finish()
          stage.finish()
          return stage.ledger
        }
      }
    },
    isUnsafeArchive: (cause) => cause instanceof UnsafeLayerError || cause instanceof TarFormatError
  })
)
