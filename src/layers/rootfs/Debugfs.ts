/**
 * Files in and out of a stopped workspace's ext4 disk with e2fsprogs, without root and without mounting:
 * `e2fsck -fy` first (replays the journal a killed VM left), then debugfs `stat`, `dump`, `rdump`, and a
 * write batch (`mkdir`, `write`, `symlink`, `sif` for modes and owners). debugfs exits 0 even when its
 * commands fail, so failures are read from its stderr.
 */
import { Data, Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { HostTree } from "./TarWriter.ts"
import { runTool, runToolOk, type ToolFailed, type ToolMissing } from "./Tools.ts"

export class DebugfsFailed extends Data.TaggedError("DebugfsFailed")<{ readonly detail: string }> {
  override get message(): string {
    return `debugfs: ${this.detail}`
  }
}

export type ImageError = DebugfsFailed | ToolMissing | ToolFailed

export interface ImageStat {
  readonly type: "file" | "directory" | "symlink" | "other"
  readonly mode: number
  readonly size: number
}

/** debugfs's parser takes double-quoted words with `""` for a literal quote. */
export const quote = (path: string): string => `"${path.replace(/"/g, '""')}"`

/** The lines of debugfs's stderr that report failures (not its banner). */
const failures = (stderr: string) =>
  stderr.split("\n").map((line) => line.trim()).filter((line) => line.length > 0 && !/^debugfs \d/.test(line))

/** Repairs the filesystem the way a boot would: exit 1 and 2 mean "fixed". */
export const fsck = (image: string): Effect.Effect<void, ImageError> =>
  Effect.flatMap(
    runTool("e2fsck", ["-fy", image]),
    (result) =>
      result.code !== null && (result.code & ~3) === 0
        ? Effect.void
        : Effect.fail(
          new DebugfsFailed({
            detail: `e2fsck -fy exited ${result.code}: ${
              result.stdout.trim().split("\n").slice(-3).join("; ")
            }`
          })
        )
  )

const typeOf = (text: string): ImageStat["type"] =>
  text === "regular" ? "file" : text === "directory" ? "directory" : text === "symlink" ? "symlink" : "other"

/** What the path is in the image, or undefined when it does not exist. Does not follow a last symlink. */
export const statPath = (image: string, path: string): Effect.Effect<ImageStat | undefined, ImageError> =>
  Effect.gen(function*() {
    const result = yield* runToolOk("debugfs", ["-R", `stat ${quote(path)}`, image])
    const head = /Type:\s+(\S+(?: special)?)\s+Mode:\s+([0-7]+)/.exec(result.stdout)
    if (head === null) {
      if (/File not found|not found by ext2_lookup/.test(result.stderr)) return undefined
      return yield* new DebugfsFailed({
        detail: failures(result.stderr).join("; ") || "stat printed nothing"
      })
    }
    const size = /Size:\s+(\d+)/.exec(result.stdout)
    return { type: typeOf(head[1]!), mode: parseInt(head[2]!, 8), size: size === null ? 0 : Number(size[1]) }
  })

/** Runs a read-only debugfs command; any failure it reports is an error. */
const readCommand = (image: string, command: string) =>
  Effect.flatMap(runToolOk("debugfs", ["-R", command, image]), (result) => {
    const errors = failures(result.stderr)
    return errors.length === 0 ? Effect.void : Effect.fail(new DebugfsFailed({ detail: errors.join("; ") }))
  })

/** Copies one regular file out of the image to `hostFile` (created by debugfs, mode from the image). */
export const dumpFile = (image: string, path: string, hostFile: string) =>
  readCommand(image, `dump ${quote(path)} ${quote(hostFile)}`)

/** Copies a directory tree out of the image into `hostDir` (as `hostDir/<basename>`), modes kept. */
export const rdump = (image: string, path: string, hostDir: string) =>
  readCommand(image, `rdump ${quote(path)} ${quote(hostDir)}`)

/** Runs a write batch; `workDir` holds the script. Any reported failure is an error. */
export const writeBatch = (image: string, lines: ReadonlyArray<string>, workDir: string) =>
  Effect.gen(function*() {
    const script = NodePath.join(workDir, "cp.debugfs")
    yield* Effect.sync(() => NodeFs.writeFileSync(script, `${lines.join("\n")}\n`, { mode: 0o600 }))
    const result = yield* runToolOk("debugfs", ["-w", "-f", script, image])
    const errors = failures(result.stderr).filter((line) => !line.startsWith("Allocated inode"))
    if (errors.length > 0) return yield* new DebugfsFailed({ detail: errors.slice(0, 5).join("; ") })
  })

const typeBits = { file: 0o100000, directory: 0o040000, symlink: 0o120000 } as const

/**
 * The batch that writes a host tree at `target` (its first entry lands there, the rest below it), each
 * entry owned by root with its host permission bits and mtime. `replace` removes the file or symlink at
 * `target` first (the caller refuses to write over a directory).
 */
export const writeTreeScript = (tree: HostTree, target: string, replace: boolean): Array<string> => {
  if (/[\n\r]/.test(target) || tree.entries.some((entry) => /[\n\r]/.test(entry.name))) {
    throw new DebugfsFailed({ detail: "a path contains a newline" })
  }
  const lines: Array<string> = replace ? [`rm ${quote(target)}`] : []
  const top = tree.entries[0]?.name ?? ""
  for (const entry of tree.entries) {
    const path = `${target}${entry.name.slice(top.length)}`
    const dir = NodePath.posix.dirname(path)
    const base = NodePath.posix.basename(path)
    const q = quote(path)
    // debugfs 1.47 makes entries by name in the current directory.
    lines.push(`cd ${quote(dir)}`)
    if (entry.type === "directory") lines.push(`mkdir ${quote(base)}`)
    else if (entry.type === "file") lines.push(`write ${quote(entry.source)} ${quote(base)}`)
    else lines.push(`symlink ${quote(base)} ${quote(entry.linkname)}`)
    lines.push("cd /")
    if (entry.type !== "symlink") {
      lines.push(`sif ${q} mode 0${(typeBits[entry.type] | entry.mode).toString(8)}`)
    }
    lines.push(`sif ${q} uid 0`, `sif ${q} gid 0`, `sif ${q} mtime @${entry.mtime}`)
  }
  return lines
}
