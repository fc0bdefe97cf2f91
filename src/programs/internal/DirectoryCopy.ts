/**
 * `cp` on a workspace whose disk is a host directory standing for the guest's root (a backend with the
 * `DirectoryDisk` capability: the fake). The same rules as over the channel or on an ext4 disk: guest
 * paths resolve inside the root as a chroot would (`..` stops at it, a symlink is followed inside it),
 * so nothing outside is read or written; a missing path is `not_found`, a missing parent directory too;
 * copies in keep the source's mode (without set-id bits) and are written by this process's user, as
 * root writes them in a guest; copies out land as `HostWrite` places them. While the workspace runs, a
 * disk mounted in it is reached through the mountpoint (the backend links it to the disk's own
 * directory); while it is stopped, only the root disk is, as offline on ext4.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Conflict, InvalidInput, NotFound, Permanent } from "../../domain/Errors.ts"
import { resolveInRoot, RootedPathLoop } from "../../domain/RootedPath.ts"
import type { Workspace } from "../../domain/Workspace.ts"
import { hostDestination, writeHostFile } from "./HostWrite.ts"

const failure =
  (name: string, what: string) => (cause: unknown): Conflict | NotFound | InvalidInput | Permanent =>
    cause instanceof Conflict || cause instanceof NotFound || cause instanceof InvalidInput
      || cause instanceof Permanent
      ? cause
      : cause instanceof RootedPathLoop
      ? new InvalidInput({ message: `workspace ${name}: ${cause.message}`, remediation: "check the path" })
      : new Permanent({
        message: `workspace ${name}: ${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
        remediation: "check the path and the host's free space"
      })

/**
 * The host path of `guestPath` in the workspace: inside the disk mounted there while it runs (the
 * mountpoint is a symlink to the disk's directory, which is then the root), else inside the root disk.
 */
const hostPathOf = (workspace: Workspace, live: boolean, guestPath: string, followLast = true) => {
  const root = workspace.rootfsPath
  if (live) {
    const mount = [...workspace.mounts]
      .sort((a, b) => b.target.length - a.target.length)
      .find((m) => guestPath === m.target || guestPath.startsWith(`${m.target.replace(/\/$/, "")}/`))
    if (mount !== undefined) {
      const at = resolveInRoot(root, mount.target, false)
      const stat = NodeFs.lstatSync(at, { throwIfNoEntry: false })
      if (stat?.isSymbolicLink()) {
        const disk = NodeFs.readlinkSync(at)
        return resolveInRoot(disk, guestPath.slice(mount.target.length), followLast)
      }
    }
  }
  return resolveInRoot(root, guestPath, followLast)
}

const isDirectory = (path: string) => NodeFs.statSync(path, { throwIfNoEntry: false })?.isDirectory() === true

/** Writes `source` to `target` through a temporary beside it, so a failure leaves the target as it was. */
const writeFile = (source: string, target: string, mode: number) => {
  const temp = NodePath.join(NodePath.dirname(target), `.${NodePath.basename(target)}.ma-${process.pid}`)
  NodeFs.rmSync(temp, { force: true })
  try {
    NodeFs.copyFileSync(source, temp, NodeFs.constants.COPYFILE_EXCL)
    NodeFs.chmodSync(temp, mode & 0o777)
    NodeFs.renameSync(temp, target)
  } finally {
    NodeFs.rmSync(temp, { force: true })
  }
}

/**
 * Copies the host tree at `source` into the workspace at `guestTarget`, merging into directories that
 * exist (as `tar -x` does in a guest). Each entry is placed by resolving its guest path again, so a
 * symlink met on the way is followed inside the root only. Devices, FIFOs and sockets are skipped.
 */
const copyTreeIn = (source: string, guestTarget: string, place: (guestPath: string) => string) => {
  const stat = NodeFs.lstatSync(source)
  const target = place(guestTarget)
  if (stat.isDirectory()) {
    if (!isDirectory(target)) {
      NodeFs.rmSync(target, { force: true })
      NodeFs.mkdirSync(target, { mode: 0o700 })
    }
    for (const entry of NodeFs.readdirSync(source)) {
      copyTreeIn(NodePath.join(source, entry), NodePath.posix.join(guestTarget, entry), place)
    }
    NodeFs.chmodSync(target, stat.mode & 0o777)
  } else if (stat.isFile()) {
    writeFile(source, target, stat.mode)
  } else if (stat.isSymbolicLink()) {
    NodeFs.rmSync(target, { force: true })
    NodeFs.symlinkSync(NodeFs.readlinkSync(source), target)
  }
}

/** Host → workspace; the result's guest path. `live`: the workspace runs (else it is stopped, its disk held). */
export const copyInDirectory = (workspace: Workspace, live: boolean, hostPath: string, guestPath: string) =>
  Effect.try({
    try: () => {
      const name = workspace.name
      const at = hostPathOf(workspace, live, guestPath)
      const target = isDirectory(at) ? NodePath.posix.join(guestPath, NodePath.basename(hostPath)) : guestPath
      const parent = NodePath.posix.dirname(target)
      if (!isDirectory(hostPathOf(workspace, live, parent))) {
        throw new NotFound({
          message: `workspace ${name}: ${parent}: no such directory`,
          remediation: "create it first, or name an existing directory"
        })
      }
      const existing = NodeFs.statSync(hostPathOf(workspace, live, target), { throwIfNoEntry: false })
      const source = NodeFs.statSync(hostPath)
      // Offline, as on an ext4 disk, a directory is never merged into; a running guest merges (tar -x).
      if (existing?.isDirectory() && (!live || source.isFile())) {
        throw new Conflict({
          message: `workspace ${name}: ${target} already exists and is a directory`,
          remediation: live
            ? "copy into a new path, or name the directory to copy into"
            : "copy into a new path, or start the workspace to merge into it"
        })
      }
      copyTreeIn(hostPath, target, (path) => hostPathOf(workspace, live, path))
      return target
    },
    catch: failure(workspace.name, `copying ${hostPath} in`)
  })

interface Copied {
  entries: number
  bytes: number
}

/** Copies the guest tree at `source` (a host path in the root) to a fresh host path; nothing is followed. */
const copyTreeOut = (source: string, target: string, copied: Copied) => {
  const stat = NodeFs.lstatSync(source)
  if (stat.isDirectory()) {
    NodeFs.mkdirSync(target, { mode: 0o700 })
    copied.entries++
    for (const entry of NodeFs.readdirSync(source)) {
      copyTreeOut(NodePath.join(source, entry), NodePath.join(target, entry), copied)
    }
    NodeFs.chmodSync(target, stat.mode & 0o777)
  } else if (stat.isFile()) {
    NodeFs.copyFileSync(source, target, NodeFs.constants.COPYFILE_EXCL)
    NodeFs.chmodSync(target, stat.mode & 0o777)
    copied.entries++
    copied.bytes += stat.size
  } else if (stat.isSymbolicLink()) {
    NodeFs.symlinkSync(NodeFs.readlinkSync(source), target)
    copied.entries++
  }
}

/** Workspace → host: what was copied, for the result. */
export const copyOutDirectory = (
  workspace: Workspace,
  live: boolean,
  guestPath: string,
  hostPath: string,
  base: string
) =>
  Effect.gen(function*() {
    const name = workspace.name
    const at = yield* Effect.try({
      try: () => hostPathOf(workspace, live, guestPath),
      catch: failure(name, `reading ${guestPath}`)
    })
    const stat = NodeFs.statSync(at, { throwIfNoEntry: false })
    if (stat === undefined) {
      return yield* new NotFound({
        message: `workspace ${name}: ${guestPath} does not exist`,
        remediation: "check the path"
      })
    }
    if (!stat.isFile() && !stat.isDirectory()) {
      return yield* new InvalidInput({
        message: `workspace ${name}: ${guestPath} is neither a file nor a directory`,
        remediation: "copy regular files and directories"
      })
    }
    if (stat.isFile()) {
      const target = yield* hostDestination(hostPath, base, false)
      const bytes = yield* writeHostFile(target, (write) =>
        Effect.try({
          try: () => {
            const fd = NodeFs.openSync(at, NodeFs.constants.O_RDONLY | NodeFs.constants.O_NOFOLLOW)
            try {
              const buffer = Buffer.allocUnsafe(1024 * 1024)
              for (let n = NodeFs.readSync(fd, buffer); n > 0; n = NodeFs.readSync(fd, buffer)) {
                write(buffer.subarray(0, n))
              }
            } finally {
              NodeFs.closeSync(fd)
            }
            return stat.mode & 0o777
          },
          catch: failure(name, `reading ${guestPath}`)
        }))
      return { kind: "file" as const, target, entries: 1, bytes }
    }
    const target = yield* hostDestination(hostPath, base, true)
    const copied: Copied = { entries: 0, bytes: 0 }
    yield* Effect.try({
      try: () => {
        // Staged beside the target and renamed into place: a failure leaves nothing at the target.
        const staging = NodeFs.mkdtempSync(
          NodePath.join(NodePath.dirname(target), `.${NodePath.basename(target)}.ma-`)
        )
        try {
          copyTreeOut(at, NodePath.join(staging, base), copied)
          NodeFs.renameSync(NodePath.join(staging, base), target)
        } finally {
          NodeFs.rmSync(staging, { recursive: true, force: true })
        }
      },
      catch: failure(name, `copying ${guestPath} out`)
    })
    return { kind: "directory" as const, target, ...copied }
  })
