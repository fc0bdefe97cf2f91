/**
 * Offline resizing of an ext4 disk file, shared by volumes and workspace root disks: e2fsck first (a
 * resize of an unclean filesystem can lose data), then grow (enlarge the file, resize2fs) or shrink
 * (resize2fs to the new size, refused below what the content needs, then cut the file). Also reads
 * how full such a filesystem is, from its superblock.
 */
import { Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import { Permanent, ResourceExhausted } from "../../domain/Errors.ts"
import type { Ext4Usage } from "../../domain/Usage.ts"
import { Disks } from "../../services/Disks.ts"
import { runTool, type ToolFailed, type ToolMissing } from "./Tools.ts"

const MiB = 1024 * 1024

/** `what` names the disk in messages: "volume data", "workspace dev". */
export const toolError = (what: string, remediation = "check the disk file and the host's free space") =>
(
  error: ToolMissing | ToolFailed
) =>
  error._tag === "ToolMissing"
    ? new Permanent({ message: error.message, remediation: error.remediation })
    : new Permanent({
      message: `${what}: ${error.tool} exited ${error.code}: ${
        error.stderr.trim().split("\n").slice(-3).join("; ")
      }`,
      remediation
    })

const fsStep = <A>(what: string, step: () => A) =>
  Effect.try({
    try: step,
    catch: (cause) =>
      new Permanent({
        message: `${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
        remediation: "check the state directory's permissions and free space"
      })
  })

/** e2fsck in preen mode: 0 clean, 1 fixed, anything else means a human should look. */
const checkExt4 = (path: string, what: string) =>
  runTool("e2fsck", ["-f", "-p", path]).pipe(
    Effect.mapError(toolError(`checking ${what}`)),
    Effect.flatMap((result) =>
      result.code === 0 || result.code === 1
        ? Effect.void
        : Effect.fail(
          new Permanent({
            message: `${what} has filesystem errors e2fsck cannot fix on its own (exit ${result.code})`,
            remediation: `inspect it by hand: e2fsck -f ${path}`
          })
        )
    )
  )

/** The superblock's counts (`dumpe2fs -h`). */
const superblock = (path: string, what: string) =>
  runTool("dumpe2fs", ["-h", path]).pipe(
    Effect.mapError(toolError(`reading ${what}'s superblock`)),
    Effect.flatMap((result) => {
      const field = (name: string) => Number(new RegExp(`^${name}:\\s*(\\d+)`, "m").exec(result.stdout)?.[1])
      const blockSize = field("Block size")
      const blocks = field("Block count")
      const free = field("Free blocks")
      return result.code === 0 && [blockSize, blocks, free].every(Number.isFinite)
        ? Effect.succeed({ blockSize, blocks, free })
        : Effect.fail(
          new Permanent({
            message: `${what}: cannot read its filesystem's superblock: ${result.stderr.trim()}`,
            remediation: `inspect it by hand: dumpe2fs -h ${path}`
          })
        )
    })
  )

const round = (n: number) => Math.round(n * 10) / 10

/** How full the filesystem in an ext4 file is, and what the file takes on the host. */
const ext4Usage = (path: string, what: string) =>
  Effect.gen(function*() {
    const sb = yield* superblock(path, what)
    const stat = yield* fsStep(`cannot examine ${path}`, () => NodeFs.statSync(path))
    const size = (sb.blocks * sb.blockSize) / MiB
    const free = (sb.free * sb.blockSize) / MiB
    return {
      sizeMiB: round(size),
      fsUsedMiB: round(size - free),
      fsFreeMiB: round(free),
      hostAllocatedMiB: round((stat.blocks * 512) / MiB),
      usedPercent: size === 0 ? 0 : round(((size - free) / size) * 100)
    } satisfies Ext4Usage
  })

/**
 * Resizes the ext4 filesystem in `path` (and the file) to `sizeMiB`, offline: the caller makes sure
 * nothing uses it. `what` names it in messages. Shrinking below the content is `ResourceExhausted`.
 */
export const resizeExt4 = (path: string, sizeMiB: number, what: string) =>
  Effect.gen(function*() {
    yield* checkExt4(path, what)
    const currentMiB = (yield* fsStep(`cannot examine ${path}`, () => NodeFs.statSync(path))).size / MiB
    if (sizeMiB >= currentMiB) {
      if (sizeMiB > currentMiB) {
        yield* fsStep(`cannot grow ${path}`, () => NodeFs.truncateSync(path, sizeMiB * MiB))
      }
      const grown = yield* runTool("resize2fs", [path, `${sizeMiB}M`]).pipe(
        Effect.mapError(toolError(`cannot grow ${what}`))
      )
      if (grown.code !== 0) {
        return yield* new Permanent({
          message: `cannot grow ${what}: resize2fs: ${grown.stderr.trim()}`,
          remediation: "the file was enlarged; retry the resize"
        })
      }
      return
    }
    const minimum = yield* runTool("resize2fs", ["-P", path]).pipe(
      Effect.mapError(toolError(`cannot measure ${what}`))
    )
    const blocks = Number(/minimum size of the filesystem:\s*(\d+)/i.exec(minimum.stdout)?.[1] ?? NaN)
    // resize2fs -P counts filesystem blocks.
    const { blockSize } = yield* superblock(path, what)
    const neededMiB = Number.isFinite(blocks) ? Math.ceil((blocks * blockSize) / MiB) : undefined
    if (neededMiB === undefined || sizeMiB < neededMiB) {
      return yield* new ResourceExhausted({
        message: `${what} cannot shrink to ${sizeMiB} MiB: its content needs ${neededMiB ?? "more"} MiB`,
        remediation: `give --size-mib ${neededMiB ?? Math.ceil(currentMiB)} or more, or remove files first`
      })
    }
    const shrunk = yield* runTool("resize2fs", [path, `${sizeMiB}M`]).pipe(
      Effect.mapError(toolError(`cannot shrink ${what}`))
    )
    if (shrunk.code !== 0) {
      return yield* new ResourceExhausted({
        message: `${what} cannot shrink to ${sizeMiB} MiB: ${shrunk.stderr.trim().split("\n").at(-1)}`,
        remediation: "give a larger --size-mib, or remove files first"
      })
    }
    yield* fsStep(`cannot shrink ${path}`, () => NodeFs.truncateSync(path, sizeMiB * MiB))
  })

/** The `Disks` service on e2fsprogs. */
export const Ext4Disks = Layer.succeed(Disks, Disks.of({ resize: resizeExt4, usage: ext4Usage }))
