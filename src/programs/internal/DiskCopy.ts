/**
 * Copies of a workspace's root disk for snapshots, restores and clones: a reflink where the filesystem
 * can, else a sparse copy (zero blocks are not stored). A disk is replaced by writing the copy beside
 * it and renaming it over the old one, so a failure at any point leaves the old disk as it was.
 */
import { Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Permanent } from "../../domain/Errors.ts"
import { consoleFileOf, memoryFileOf, overlayFileOf, rootDiskOf } from "../../services/Hypervisor.ts"
import { Processes } from "../../services/Processes.ts"

/**
 * Copies a disk image (a file), or a directory tree (the fake backend's "disk"), to `to`, which must
 * not exist yet.
 */
export const copyDisk = (from: string, to: string) =>
  Effect.async<void, Permanent>((resume) => {
    let directory = false
    try {
      directory = NodeFs.statSync(from).isDirectory()
    } catch (cause) {
      return resume(Effect.fail(new Permanent({ message: `cannot read the disk ${from}: ${String(cause)}` })))
    }
    const args = directory
      ? ["-a", "--reflink=auto", from, to]
      : ["--reflink=auto", "--sparse=always", from, to]
    NodeChild.execFile("cp", args, (error, _stdout, stderr) => {
      if (error === null) return resume(Effect.void)
      NodeFs.rmSync(to, { recursive: true, force: true })
      resume(
        Effect.fail(
          new Permanent({
            message: `copying the disk ${from} failed: ${String(stderr).trim() || error.message}`,
            remediation: "check the free space of the state directory's filesystem"
          })
        )
      )
    })
  })

/** Where a copy made from a memory snapshot keeps the VM state its first start resumes (then removed). */
export const resumeStateFile = "vm.state"

/**
 * Copies a saved VM state with its memory file and console log, if it has them, hard-linked where
 * they can be: neither is written after its capture (restores map the memory file privately), so
 * copies share its pages on disk and in the page cache.
 */
export const copyState = (from: string, to: string) =>
  copyDisk(from, to).pipe(
    Effect.zipRight(Effect.forEach([memoryFileOf, consoleFileOf], (sidecar) =>
      Effect.suspend(() => {
        if (!NodeFs.existsSync(sidecar(from))) return Effect.void
        try {
          NodeFs.linkSync(sidecar(from), sidecar(to))
          return Effect.void
        } catch {
          return copyDisk(sidecar(from), sidecar(to))
        }
      }), { discard: true }))
  )

/** Removes a saved VM state and its memory file. */
export const removeState = (path: string) =>
  Effect.sync(() => {
    NodeFs.rmSync(path, { force: true })
    NodeFs.rmSync(memoryFileOf(path), { force: true })
    NodeFs.rmSync(consoleFileOf(path), { force: true })
  })

/** Where a replacement disk for `target` is written before it is renamed into place. */
export const pendingDiskPath = (target: string, purpose: string) =>
  NodePath.join(NodePath.dirname(target), `.${NodePath.basename(target)}.${purpose}-${process.pid}`)

/**
 * Removes replacement disks beside `target` whose process is gone: a restore killed between its copy
 * and its rename (kill -9 leaves no finalizer) would otherwise keep a full disk copy forever.
 */
export const sweepPendingDisks = (target: string) =>
  Effect.gen(function*() {
    const processes = yield* Processes
    const dir = NodePath.dirname(target)
    const prefix = `.${NodePath.basename(target)}.`
    let entries: Array<string> = []
    try {
      entries = NodeFs.readdirSync(dir)
    } catch {
      return
    }
    for (const entry of entries) {
      if (!entry.startsWith(prefix)) continue
      // A pending overlay's name ends in .qcow2 after the pid.
      const pid = /-(\d+)(\.qcow2)?$/.exec(entry)
      if (pid === null || (yield* processes.isAlive(Number(pid[1])))) continue
      NodeFs.rmSync(NodePath.join(dir, entry), { recursive: true, force: true })
    }
  })

/** Bytes a file occupies on the host (sparse: holes are not counted); 0 when it is not there. */
export const allocatedBytes = (path: string): number => {
  try {
    return NodeFs.statSync(path).blocks * 512
  } catch {
    return 0
  }
}

/** Flushes a file or a directory (its entries) to disk. */
export const fsyncPath = (path: string) => {
  const fd = NodeFs.openSync(path, "r")
  try {
    NodeFs.fsyncSync(fd)
  } finally {
    NodeFs.closeSync(fd)
  }
}

/** The format of a disk a caller made: a raw image, or a qcow2 overlay (never read from the file). */
export type DiskFormat = "raw" | "qcow2"

/**
 * Puts the disk at `pending` (of `format`, as its maker knows it) in place of the workspace's root disk
 * at `target` with one rename, keeping the previous disk beside it (a hard link to it, or for a
 * directory, the fake backend's disk, the directory moved aside) until the caller knows whether the
 * start that needs the new disk worked: `putBack` undoes the swap, `removePath` of the returned path
 * drops the old disk. Returns where the previous disk is.
 *
 * A raw disk goes to `target`, an overlay to `overlayFileOf(target)`. When the format changes, the
 * previous disk's name is removed after the rename: until then `rootDiskOf` reads the raw one of the
 * two, so an interruption leaves either disk whole (and `flattenDisk` removes an overlay left beside a
 * raw disk).
 */
export const replaceDisk = (pending: string, target: string, format: DiskFormat = "raw") =>
  Effect.try({
    try: () => {
      const current = rootDiskOf(target)
      const destination = format === "qcow2" ? overlayFileOf(target) : target
      const previous = pendingDiskPath(current.path, "previous")
      NodeFs.rmSync(previous, { recursive: true, force: true })
      if (NodeFs.statSync(pending).isFile()) {
        fsyncPath(pending)
        NodeFs.linkSync(current.path, previous)
        NodeFs.renameSync(pending, destination)
      } else {
        NodeFs.renameSync(current.path, previous)
        NodeFs.renameSync(pending, destination)
      }
      if (current.path !== destination) NodeFs.rmSync(current.path, { recursive: true, force: true })
      fsyncPath(NodePath.dirname(target))
      return previous
    },
    catch: (cause) =>
      new Permanent({
        message: `cannot put the restored disk in place of ${target}: ${String(cause)}`,
        remediation: "the workspace's disk was not changed; retry"
      })
  })

/**
 * Undoes `replaceDisk`: the previous disk is the workspace's again, under the name of its format (an
 * overlay's previous name starts with the overlay's), and a replacement of the other format goes.
 */
export const putBack = (previous: string, target: string) =>
  Effect.try({
    try: () => {
      if (!NodeFs.existsSync(previous)) return
      const overlay = NodePath.basename(previous).startsWith(`.${NodePath.basename(overlayFileOf(target))}.`)
      const original = overlay ? overlayFileOf(target) : target
      if (NodeFs.statSync(previous).isDirectory()) NodeFs.rmSync(target, { recursive: true, force: true })
      NodeFs.renameSync(previous, original)
      NodeFs.rmSync(overlay ? target : overlayFileOf(target), { recursive: true, force: true })
      fsyncPath(NodePath.dirname(target))
    },
    catch: (cause) =>
      new Permanent({
        message: `cannot put the previous disk ${previous} back at ${target}: ${String(cause)}`
      })
  })

export const removePath = (path: string) =>
  Effect.sync(() => NodeFs.rmSync(path, { recursive: true, force: true }))
