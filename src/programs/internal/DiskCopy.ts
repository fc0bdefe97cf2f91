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
import { isAlive } from "../../layers/process/Processes.ts"

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

/** Where a replacement disk for `target` is written before it is renamed into place. */
export const pendingDiskPath = (target: string, purpose: string) =>
  NodePath.join(NodePath.dirname(target), `.${NodePath.basename(target)}.${purpose}-${process.pid}`)

/**
 * Removes replacement disks beside `target` whose process is gone: a restore killed between its copy
 * and its rename (kill -9 leaves no finalizer) would otherwise keep a full disk copy forever.
 */
export const sweepPendingDisks = (target: string) =>
  Effect.sync(() => {
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
      const pid = /-(\d+)(\.old)?$/.exec(entry)
      if (pid === null || isAlive(Number(pid[1]), undefined)) continue
      NodeFs.rmSync(NodePath.join(dir, entry), { recursive: true, force: true })
    }
  })

const fsyncPath = (path: string) => {
  const fd = NodeFs.openSync(path, "r")
  try {
    NodeFs.fsyncSync(fd)
  } finally {
    NodeFs.closeSync(fd)
  }
}

/**
 * Puts the disk at `pending` in place of `target`: one rename for a file. A directory (the fake
 * backend) cannot be renamed over a non-empty one, so the old one is moved aside first.
 */
export const replaceDisk = (pending: string, target: string) =>
  Effect.try({
    try: () => {
      if (NodeFs.statSync(pending).isFile()) {
        fsyncPath(pending)
        NodeFs.renameSync(pending, target)
      } else {
        const aside = `${pending}.old`
        NodeFs.renameSync(target, aside)
        NodeFs.renameSync(pending, target)
        NodeFs.rmSync(aside, { recursive: true, force: true })
      }
      fsyncPath(NodePath.dirname(target))
    },
    catch: (cause) =>
      new Permanent({
        message: `cannot put the restored disk in place of ${target}: ${String(cause)}`,
        remediation: "the workspace's disk was not changed; retry"
      })
  })

export const removePath = (path: string) =>
  Effect.sync(() => NodeFs.rmSync(path, { recursive: true, force: true }))
