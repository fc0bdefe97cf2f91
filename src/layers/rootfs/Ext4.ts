/**
 * Turns a stage tree and its ledger into an ext4 image: `mke2fs -d` copies the tree, then a debugfs
 * batch applies what the host stage could not hold (owners, special bits, devices, FIFOs, xattrs).
 */
import { Data, Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { guestPath, type LedgerEntry, type Stage } from "./Stage.ts"
import { runTool, runToolOk, ToolFailed, type ToolMissing } from "./Tools.ts"

const MiB = 1024 * 1024

export class TooSmall
  extends Data.TaggedError("TooSmall")<{ readonly requestedMiB: number; readonly neededMiB: number }>
{
  override get message(): string {
    return `the root filesystem needs about ${this.neededMiB} MiB but ${this.requestedMiB} MiB was requested`
  }
}

/** The host file system holding the image filled up while it was written (not the image being too small). */
export class HostFull
  extends Data.TaggedError("HostFull")<{ readonly path: string; readonly detail: string }>
{
  override get message(): string {
    return `No space left on device writing ${this.path}: ${this.detail}`
  }
}

/**
 * mke2fs and debugfs say "Could not allocate block" both when the image is too small for its content
 * and when the host file system under the sparse image file cannot grow it: when the host has less
 * free space than the content needs, it is the host that is full.
 */
const outOfSpace = (output: string, neededMiB: number, requestedMiB: number, detail: string) => {
  let free = Number.POSITIVE_INFINITY
  try {
    const stats = NodeFs.statfsSync(NodePath.dirname(output))
    free = stats.bavail * stats.bsize
  } catch {
    // Unknown: the image's own size is the likelier cause.
  }
  return free < neededMiB * MiB
    ? new HostFull({ path: output, detail: detail.trim().split("\n")[0] ?? "" })
    : new TooSmall({ requestedMiB, neededMiB: Math.ceil(neededMiB * 1.1) })
}

export class LedgerFailed extends Data.TaggedError("LedgerFailed")<{ readonly detail: string }> {
  override get message(): string {
    return `applying ownership and special files to the image failed: ${this.detail}`
  }
}

/** mke2fs's default journal size (in bytes) for a filesystem of the given size. */
const journalBytes = (sizeBytes: number): number => {
  const blocks = sizeBytes / 4096
  const journalBlocks = blocks < 32768
    ? 1024
    : blocks < 256 * 1024
    ? 4096
    : blocks < 512 * 1024
    ? 8192
    : blocks < 4096 * 1024
    ? 16384
    : blocks < 8192 * 1024
    ? 32768
    : blocks < 16384 * 1024
    ? 65536
    : blocks < 32768 * 1024
    ? 131072
    : 262144
  return journalBlocks * 4096
}

const roundUp = (value: number, unit: number) => Math.ceil(value / unit) * unit

/** The smallest image (MiB) that holds the content, with metadata and journal overheads. */
const requiredMiB = (content: { readonly bytes: number; readonly inodes: number }): number => {
  const inodes = inodeCount(content, 0)
  let size = content.bytes * 1.04 + inodes * 256 + 8 * MiB
  size += journalBytes(size)
  // Group descriptors, bitmaps and slack: grows slowly with size.
  size += Math.ceil(size / (128 * MiB)) * 2 * MiB
  return Math.ceil(size / MiB)
}

/** The default size: content plus room for a workspace to work in, rounded to 64 MiB. */
const defaultMiB = (content: { readonly bytes: number; readonly inodes: number }): number => {
  const needed = requiredMiB(content)
  return roundUp(needed + Math.max(256, Math.ceil(needed * 0.5)), 64)
}

const inodeCount = (content: { readonly inodes: number }, sizeBytes: number): number =>
  Math.max(Math.ceil(content.inodes * 1.25) + 1024, Math.floor(sizeBytes / 16384))

/** debugfs's command parser takes double-quoted words with `""` for a literal quote. */
const quote = (path: string): string => {
  if (/[\n\r]/.test(path)) {
    throw new LedgerFailed({ detail: `a path contains a newline: ${JSON.stringify(path)}` })
  }
  return `"${path.replace(/"/g, '""')}"`
}

const typeBits: Record<LedgerEntry["type"], number> = {
  file: 0o100000,
  directory: 0o040000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000
}

/** What mke2fs copied from the stage for an entry: the stage's owner and the builder's stage mode. */
const stagePerm = (meta: LedgerEntry): number =>
  meta.type === "directory" ? (meta.perm & 0o777) | 0o700 : (meta.perm & 0o777) | 0o400

/** The debugfs batch that makes the image match the ledger. Value files for xattrs go to `workDir`. */
const ledgerScript = (stage: Stage, workDir: string, owner: { uid: number; gid: number }): string => {
  const lines: Array<string> = []
  const done = new Set<LedgerEntry>()
  let valueIndex = 0
  for (const [rel, meta] of stage.ledger) {
    const path = guestPath(rel)
    const virtual = meta.type === "char" || meta.type === "block" || meta.type === "fifo"
    if (virtual) {
      // debugfs 1.47's mknod takes a name in the current directory (a path would become the name).
      lines.push(`cd ${quote(NodePath.posix.dirname(path))}`)
      const base = quote(NodePath.posix.basename(path))
      lines.push(
        meta.type === "fifo"
          ? `mknod ${base} p`
          : `mknod ${base} ${meta.type === "char" ? "c" : "b"} ${meta.devmajor} ${meta.devminor}`
      )
      lines.push("cd /")
    } else if (done.has(meta)) {
      continue
    }
    done.add(meta)
    const q = quote(path)
    if (virtual || (meta.type !== "symlink" && meta.perm !== stagePerm(meta))) {
      lines.push(`sif ${q} mode 0${(typeBits[meta.type] | meta.perm).toString(8)}`)
    }
    if (virtual || meta.uid !== owner.uid) lines.push(`sif ${q} uid ${meta.uid}`)
    if (virtual || meta.gid !== owner.gid) lines.push(`sif ${q} gid ${meta.gid}`)
    if (virtual) lines.push(`sif ${q} mtime @${meta.mtime}`)
    for (const [name, value] of meta.xattrs) {
      const file = NodePath.join(workDir, `xattr-${valueIndex++}`)
      NodeFs.writeFileSync(file, value, { mode: 0o600 })
      lines.push(`ea_set -f ${quote(file)} ${q} ${quote(name)}`)
    }
  }
  return lines.length === 0 ? "" : `${lines.join("\n")}\n`
}

export interface Ext4Options {
  readonly output: string
  readonly sizeMiB?: number | undefined
  /** Scratch directory for the debugfs script and xattr values. */
  readonly workDir: string
  readonly label?: string
}

/** Builds the image at `output` (which must not exist); returns its size in bytes. */
export const buildExt4 = (
  stage: Stage,
  options: Ext4Options
): Effect.Effect<
  { readonly sizeBytes: number; readonly neededMiB: number },
  TooSmall | HostFull | LedgerFailed | ToolMissing | ToolFailed
> =>
  Effect.gen(function*() {
    const content = stage.measure()
    const neededMiB = requiredMiB(content)
    if (options.sizeMiB !== undefined && options.sizeMiB < neededMiB) {
      return yield* new TooSmall({ requestedMiB: options.sizeMiB, neededMiB })
    }
    const sizeMiB = options.sizeMiB ?? defaultMiB(content)
    const sizeBytes = sizeMiB * MiB
    yield* Effect.sync(() => {
      const fd = NodeFs.openSync(options.output, "wx", 0o600)
      NodeFs.ftruncateSync(fd, sizeBytes)
      NodeFs.closeSync(fd)
    })
    const root = stage.ledger.get("")!
    const made = yield* runTool("mke2fs", [
      "-q",
      "-F",
      "-t",
      "ext4",
      "-b",
      "4096",
      "-m",
      "1",
      "-N",
      String(inodeCount(content, sizeBytes)),
      "-L",
      options.label ?? "rootfs",
      "-E",
      // The file was just created by truncate, so it reads as zeros: mke2fs need not zero the journal.
      `root_owner=${root.uid}:${root.gid},lazy_itable_init=0,lazy_journal_init=1`,
      "-d",
      stage.root,
      options.output
    ])
    if (made.code !== 0) {
      if (/allocate|No space left|Could not allocate|too small/i.test(made.stderr + made.stdout)) {
        return yield* outOfSpace(options.output, neededMiB, sizeMiB, made.stderr || made.stdout)
      }
      return yield* new ToolFailed({ tool: "mke2fs", code: made.code, stderr: made.stderr || made.stdout })
    }
    const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }
    const script = yield* Effect.try({
      try: () => ledgerScript(stage, options.workDir, owner),
      catch: (cause) => cause instanceof LedgerFailed ? cause : new LedgerFailed({ detail: String(cause) })
    })
    if (script.length > 0) {
      const scriptPath = NodePath.join(options.workDir, "ledger.debugfs")
      yield* Effect.sync(() => NodeFs.writeFileSync(scriptPath, script, { mode: 0o600 }))
      const result = yield* runToolOk("debugfs", ["-w", "-f", scriptPath, options.output])
      // debugfs exits 0 even when commands fail; its errors are the stderr lines after the banner.
      const errors = result.stderr.split("\n").filter((l) => l.trim().length > 0 && !/^debugfs \d/.test(l))
      if (errors.length > 0) {
        if (errors.some((l) => /No free space|No space left|Could not allocate/i.test(l))) {
          return yield* outOfSpace(options.output, neededMiB, sizeMiB, errors.join("\n"))
        }
        return yield* new LedgerFailed({ detail: errors.slice(0, 5).join("; ") })
      }
    }
    return { sizeBytes, neededMiB }
  })
