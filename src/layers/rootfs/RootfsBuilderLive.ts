/**
 * The RootfsBuilder on the host: a scoped work directory under the Home's tmp dir holds the stage, the
 * image being built and the debugfs batch; success renames the image into place, and any failure or
 * interruption removes the whole directory. Work directories left by a killed process are removed by
 * the next build.
 */
import { Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { classifyNoSpace, diskFull } from "../../domain/DiskFull.ts"
import { InvalidInput, Permanent, PolicyDenied, ResourceExhausted } from "../../domain/Errors.ts"
import { Home, scopedWorkDir } from "../../services/Home.ts"
import { type BuildRequest, type BuildResult, RootfsBuilder } from "../../services/RootfsBuilder.ts"
import { isAlive } from "../process/Processes.ts"
import { applyLayer } from "./Apply.ts"
import { buildExt4 } from "./Ext4.ts"
import { defaultStageOptions, Stage } from "./Stage.ts"

const workPrefix = "rootfs-build-"

/** A zombie (a killed process nobody reaped yet) counts as gone: `kill(pid, 0)` would say alive. */
const pidAlive = (pid: number): boolean => isAlive(pid, undefined)

/** Where stages go when they fit in memory (tmpfs): file creation there is an order of magnitude faster. */
const memoryStageDir = (): string | undefined => {
  const configured = process.env.MICROAGENT_STAGE_DIR
  if (configured !== undefined) return configured === "" ? undefined : configured
  return "/dev/shm"
}

/** Removes work directories whose builder process is gone (killed mid-build), here and in the memory stage dir. */
export const removeStaleWork = (tmp: string): Effect.Effect<ReadonlyArray<string>> =>
  Effect.sync(() => {
    const removed: Array<string> = []
    const memory = memoryStageDir()
    for (const dir of memory !== undefined ? [tmp, memory] : [tmp]) {
      let names: Array<string> = []
      try {
        names = NodeFs.readdirSync(dir)
      } catch {
        continue
      }
      for (const name of names) {
        const match = /^(?:rootfs-build|rootfs-stage|image-pull|image-import|commit)-(\d+)-/.exec(name)
        if (match === null || pidAlive(Number(match[1]))) continue
        NodeFs.rmSync(NodePath.join(dir, name), { recursive: true, force: true })
        removed.push(NodePath.join(dir, name))
      }
    }
    return removed
  })

/**
 * Picks the memory stage dir when the layers' estimated expanded size (4x compressed) is under 1 GiB and
 * a quarter of its free space; otherwise the stage stays in the Home's tmp dir on disk.
 */
const stageParentFor = (compressedBytes: number | undefined): string | undefined => {
  const dir = memoryStageDir()
  if (dir === undefined || compressedBytes === undefined) return undefined
  const estimate = compressedBytes * 4 + 16 * 1024 * 1024
  try {
    const stats = NodeFs.statfsSync(dir)
    const free = stats.bavail * stats.bsize
    NodeFs.accessSync(dir, NodeFs.constants.W_OK)
    return estimate <= 1024 * 1024 * 1024 && estimate <= free / 4 ? dir : undefined
  } catch {
    return undefined
  }
}

const permanent = (message: string, remediation = "") => new Permanent({ message, remediation })

export const build = (tmp: string, request: BuildRequest) =>
  Effect.scoped(Effect.gen(function*() {
    yield* removeStaleWork(tmp)
    const work = yield* scopedWorkDir(tmp, workPrefix).pipe(
      Effect.catchAllDefect((cause) =>
        Effect.fail(permanent(`cannot create a build directory in ${tmp}: ${cause}`))
      )
    )
    const sizes = request.layers.map((l) => l.size)
    const memoryParent = sizes.every((s) => s !== undefined)
      ? stageParentFor(sizes.reduce<number>((a, b) => a + (b ?? 0), 0))
      : undefined
    const stageWork = memoryParent === undefined
      ? work
      : yield* scopedWorkDir(memoryParent, "rootfs-stage-").pipe(
        Effect.catchAllDefect(() => Effect.succeed(work))
      )
    const stage = yield* Effect.try({
      try: () =>
        new Stage(NodePath.join(stageWork, "stage"), {
          ...defaultStageOptions,
          allowSetuid: request.allowGuestSetuid === true,
          refuseDevices: request.refuseDevices === true
        }),
      catch: (cause) => permanent(`cannot create the stage directory: ${cause}`)
    })
    const progress = request.onProgress ?? (() => {})
    let entries = 0
    let bytes = 0
    for (const [index, layer] of request.layers.entries()) {
      const blob = yield* layer.blob
      progress({ phase: "extract-layers", layer: index, layers: request.layers.length, bytes })
      const applied = yield* applyLayer(stage, blob, layer.digest, (n) => {
        bytes += n
      }).pipe(
        Effect.mapError((error) =>
          error._tag === "ToolMissing"
            ? permanent(error.message, error.remediation)
            : error.unsafe
            ? new PolicyDenied({
              message: `refusing image: ${error.message}`,
              remediation: error.reason.includes("device")
                ? "the image holds device nodes and devices were refused; leave out --refuse-devices to accept them (they are created only inside the guest's disk)"
                : "the layer tries to write outside its root filesystem; do not use this image"
            })
            : permanent(
              `cannot apply ${error.message}`,
              "the layer is not a valid tar stream; check the image"
            )
        )
      )
      entries += applied.entries
      progress({ phase: "extract-layers", layer: index + 1, layers: request.layers.length, bytes })
    }
    yield* Effect.try({
      try: () => stage.finish(),
      catch: (cause) => permanent(`finishing the stage failed: ${cause}`)
    })
    progress({ phase: "build-ext4" })
    const image = NodePath.join(work, "rootfs.ext4")
    const built = yield* buildExt4(stage, { output: image, sizeMiB: request.sizeMiB, workDir: work }).pipe(
      Effect.mapError((error) => {
        switch (error._tag) {
          case "TooSmall":
            return new ResourceExhausted({
              message: error.message,
              remediation:
                `use --size-mib ${error.neededMiB} or more, or leave the size out to size it to the content`
            })
          case "HostFull":
            return diskFull("building a root filesystem image", work)
          case "ToolMissing":
            return permanent(error.message, error.remediation)
          default:
            return permanent(error.message)
        }
      })
    )
    yield* Effect.try({
      try: () => {
        NodeFs.chmodSync(image, 0o600)
        NodeFs.renameSync(image, request.output)
      },
      catch: (cause) => permanent(`cannot move the image to ${request.output}: ${cause}`)
    })
    progress({ phase: "complete" })
    return {
      sizeBytes: built.sizeBytes,
      neededMiB: built.neededMiB,
      entries,
      setuidStripped: [...stage.setuidStripped].sort(),
      setuidPolicy: request.allowGuestSetuid === true ? "keep" : "strip"
    } satisfies BuildResult
  })).pipe(Effect.mapError(classifyNoSpace("building a root filesystem image", tmp)))

export const layer: Layer.Layer<RootfsBuilder, never, Home> = Layer.effect(
  RootfsBuilder,
  Effect.gen(function*() {
    const home = yield* Home
    return RootfsBuilder.of({
      build: Effect.fn("RootfsBuilder.build")(function*(request: BuildRequest) {
        if (request.sizeMiB !== undefined && (!Number.isInteger(request.sizeMiB) || request.sizeMiB < 16)) {
          return yield* new InvalidInput({
            message: `--size-mib must be an integer of at least 16 (got ${request.sizeMiB})`
          })
        }
        return yield* build(home.tmp, request)
      })
    })
  })
)
