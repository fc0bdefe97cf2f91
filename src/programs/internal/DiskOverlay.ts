/**
 * Copy-on-write root disks for workspaces made from a snapshot (each child of a `fork`,
 * `create --from-snapshot`, a roll back) and, when the disk is large (`shareAboveBytes`), from an image
 * or a warm-start template. Where the state directory's filesystem can reflink (btrfs, XFS), a copy
 * shares the source's blocks already and stays a raw image. Elsewhere (ext4), the source disk (never
 * written again) becomes a read-only base under `<state>/bases` (a hard link: the snapshot, image or
 * template may go while copies use it) and the copy's disk is a qcow2 overlay over it
 * (`overlayFileOf`) that holds only the clusters the copy writes. Creating one takes `qemu-img`
 * (Debian: qemu-utils); without it, and on backends that boot only raw disks, the copy is a full
 * sparse copy as before.
 *
 * The host tools that work on a stopped disk (offline `cp`, `resize`, `commit`, `start --from-snapshot`)
 * read and write raw ext4: the first of them flattens the overlay into the workspace's own raw disk,
 * once (`flattenDisk`). Copies of an overlay (snapshots, clones, quarantine custody) are flattened as
 * they are written (`copyDiskFlat`). A base goes when no overlay names it any more (`sweepBases`, after
 * a delete or a flatten, and in `gc`).
 */
import { Effect } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Permanent } from "../../domain/Errors.ts"
import { Home, type HomeShape } from "../../services/Home.ts"
import { Hypervisor, overlayFileOf, rootDiskOf } from "../../services/Hypervisor.ts"
import { Processes } from "../../services/Processes.ts"
import {
  allocatedBytes,
  copyDisk,
  fsyncPath,
  pendingDiskPath,
  removePath,
  sweepPendingDisks
} from "./DiskCopy.ts"

/** Where the read-only bases of overlays are kept. */
export const basesDirOf = (home: HomeShape) => NodePath.join(home.root, "bases")

/** How `shareDisk` made a copy. */
export type ShareKind = "reflink" | "overlay" | "copy"

const qemuImgMissing = {
  message: "qemu-img is not installed",
  remediation: "install qemu-utils (apt-get install qemu-utils)"
}

const qemuImg = (args: ReadonlyArray<string>, cwd?: string) =>
  Effect.async<void, Permanent>((resume) => {
    NodeChild.execFile("qemu-img", [...args], { cwd }, (error, _stdout, stderr) => {
      if (error === null) return resume(Effect.void)
      resume(Effect.fail(
        (error as NodeJS.ErrnoException).code === "ENOENT"
          ? new Permanent(qemuImgMissing)
          : new Permanent({
            message: `qemu-img ${args[0]} failed: ${String(stderr).trim() || error.message}`,
            remediation: "check the free space of the state directory's filesystem"
          })
      ))
    })
  })

const reflink = (from: string, to: string) =>
  Effect.async<boolean>((resume) => {
    NodeChild.execFile("cp", ["--reflink=always", from, to], (error) => {
      if (error !== null) NodeFs.rmSync(to, { force: true })
      resume(Effect.succeed(error === null))
    })
  })

/**
 * Runs `effect` holding `bases/.lock` (`Processes.tryLock`: a lock whose process is gone is taken
 * over): making an overlay and sweeping the bases never interleave, so a sweep cannot take a base whose
 * overlay is being made. Waits at most 30 s for another holder.
 */
const withBasesLock = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const home = yield* Home
    const processes = yield* Processes
    const lock = NodePath.join(yield* home.ensureDir(basesDirOf(home)), ".lock")
    const take = Effect.gen(function*() {
      for (let attempt = 0; !(yield* processes.tryLock(lock)); attempt++) {
        if (attempt >= 1500) {
          return yield* new Permanent({
            message: `${lock} stayed held by another process for 30 s`,
            remediation: "retry once that process has finished"
          })
        }
        // A failed attempt removes a dead holder's lock, so the first retry comes at once.
        if (attempt > 0) yield* Effect.sleep("20 millis")
      }
    })
    return yield* Effect.acquireUseRelease(take, () => effect, () => processes.releaseLock(lock))
  })

/**
 * The base for copies of `disk` (never written again): a hard link under `bases`, named by the file's
 * identity so every copy of one snapshot, image or template shares one base.
 */
const baseFor = (disk: string) =>
  Effect.gen(function*() {
    const home = yield* Home
    const dir = yield* home.ensureDir(basesDirOf(home))
    const stat = NodeFs.statSync(disk)
    const base = NodePath.join(dir, `${stat.dev}-${stat.ino}.ext4`)
    const existing = NodeFs.statSync(base, { throwIfNoEntry: false })
    if (existing !== undefined && existing.ino === stat.ino) return base
    NodeFs.rmSync(base, { force: true })
    try {
      NodeFs.linkSync(disk, base)
    } catch {
      // Another filesystem: the base is a copy of its own.
      yield* copyDisk(disk, base)
    }
    NodeFs.chmodSync(base, 0o400)
    return base
  }).pipe(
    Effect.catchAllDefect((cause) =>
      Effect.fail(new Permanent({ message: `cannot keep ${disk} as a base for copies: ${String(cause)}` }))
    )
  )

/**
 * Gives a new workspace at `to` (its `rootfsPath`, in a staging directory, or a pending disk beside it)
 * a disk with the content of `disk` (a snapshot's, an image's baseline or a template's: never written
 * again), as cheaply as this host allows: a reflink, else a qcow2 overlay over a shared base, else a
 * sparse copy (see the module comment).
 */
export const shareDisk = (
  disk: string,
  to: string
): Effect.Effect<ShareKind, Permanent, Home | Hypervisor | Processes> =>
  Effect.gen(function*() {
    const hypervisor = yield* Hypervisor
    const stat = NodeFs.statSync(disk, { throwIfNoEntry: false })
    const overlays = stat !== undefined && stat.isFile() && hypervisor.capabilities.has("OverlayDisk")
    if (overlays && (yield* reflink(disk, to))) return "reflink"
    if (!overlays || (yield* (yield* Processes).commandPath("qemu-img")) === undefined) {
      yield* copyDisk(disk, to)
      return "copy"
    }
    const overlay = overlayFileOf(to)
    yield* withBasesLock(Effect.gen(function*() {
      const base = yield* baseFor(disk)
      // Named relative to the overlay (../../bases/…): staging and workspace directories sit at one
      // depth, and a state directory moved elsewhere keeps its overlays working.
      const backing = NodePath.relative(NodePath.dirname(overlay), base)
      yield* qemuImg(
        ["create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing, overlay],
        NodePath.dirname(overlay)
      )
        .pipe(Effect.tapError(() => Effect.sync(() => NodeFs.rmSync(overlay, { force: true }))))
    }))
    NodeFs.chmodSync(overlay, 0o600)
    return "overlay"
  })

/**
 * Below this many allocated bytes a disk is copied rather than shared when a workspace is made from an
 * image or a warm-start template: `qemu-img create` costs 25-40 ms here whatever the disk holds, and a
 * sparse copy about 0.5 ms per MiB (busybox's 2.4 MiB in 12 ms, 256 MiB in 120 ms). A Debian-sized
 * image is shared; a busybox or Alpine one is copied.
 */
export const shareAboveBytes = 64 * 1024 * 1024

/**
 * `shareDisk` for a disk worth sharing (`shareAboveBytes` or more allocated), else undefined: the
 * caller copies it its own way.
 */
export const shareLargeDisk = (disk: string, to: string) =>
  Effect.gen(function*() {
    const hypervisor = yield* Hypervisor
    if (!hypervisor.capabilities.has("OverlayDisk") || allocatedBytes(disk) < shareAboveBytes) {
      return undefined
    }
    return yield* shareDisk(disk, to)
  })

/**
 * A replacement for the root disk at `rootfsPath`, written beside it (`.rootfs.PURPOSE-PID`, `.qcow2`
 * after it for an overlay) for `replaceDisk` to swap in: `make` writes it at the raw name and says
 * how. Pending disks of processes that are gone are removed first.
 */
export const pendingDisk = <E, R>(
  rootfsPath: string,
  purpose: string,
  make: (to: string) => Effect.Effect<ShareKind, E, R>
) =>
  Effect.gen(function*() {
    const pending = pendingDiskPath(rootfsPath, purpose)
    yield* sweepPendingDisks(rootfsPath)
    yield* removePath(pending)
    yield* removePath(overlayFileOf(pending))
    return (yield* make(pending)) === "overlay"
      ? { path: overlayFileOf(pending), format: "qcow2" as const }
      : { path: pending, format: "raw" as const }
  })

/**
 * Writes the content of the root disk at `rootfsPath` (raw, or an overlay) to `to` as a raw image. An
 * overlay is read without taking QEMU's lock (`-U`): the callers copy a disk no VM writes, or one whose
 * VM is paused, which QEMU flushed to the file when it paused.
 */
export const copyDiskFlat = (rootfsPath: string, to: string) => {
  const root = rootDiskOf(rootfsPath)
  if (root.format === "raw") return copyDisk(root.path, to)
  return qemuImg(["convert", "-U", "-q", "-f", "qcow2", "-O", "raw", root.path, to]).pipe(
    Effect.tap(() => Effect.sync(() => NodeFs.chmodSync(to, 0o600))),
    Effect.tapError(() => Effect.sync(() => NodeFs.rmSync(to, { force: true })))
  )
}

/**
 * Makes a stopped workspace's overlay its own raw disk at `rootfsPath`, for the host tools that read
 * ext4. The raw disk is written aside and renamed into place before the overlay goes, so an
 * interruption leaves one or the other whole (`rootDiskOf` prefers the raw disk when both are there).
 */
export const flattenDisk = (rootfsPath: string) =>
  Effect.gen(function*() {
    const overlay = overlayFileOf(rootfsPath)
    if (rootDiskOf(rootfsPath).format === "raw") {
      // A flatten interrupted after its rename leaves the overlay behind.
      if (NodeFs.existsSync(rootfsPath) && NodeFs.existsSync(overlay)) NodeFs.rmSync(overlay, { force: true })
      return false
    }
    const pending = pendingDiskPath(rootfsPath, "flatten")
    NodeFs.rmSync(pending, { force: true })
    yield* copyDiskFlat(rootfsPath, pending)
    yield* Effect.try({
      try: () => {
        fsyncPath(pending)
        NodeFs.renameSync(pending, rootfsPath)
        fsyncPath(NodePath.dirname(rootfsPath))
        NodeFs.rmSync(overlay, { force: true })
      },
      catch: (cause) => {
        NodeFs.rmSync(pending, { force: true })
        return new Permanent({ message: `cannot put the flattened disk at ${rootfsPath}: ${String(cause)}` })
      }
    })
    yield* sweepBases
    return true
  })

/** The backing file a qcow2 image names in its header, if any (read from the header, never guessed). */
export const backingFileOf = (file: string): string | undefined => {
  let fd: number | undefined
  try {
    fd = NodeFs.openSync(file, "r")
    const header = Buffer.alloc(20)
    if (NodeFs.readSync(fd, header, 0, 20, 0) < 20 || header.readUInt32BE(0) !== 0x514649fb) return undefined
    const offset = Number(header.readBigUInt64BE(8))
    const size = header.readUInt32BE(16)
    if (offset === 0 || size === 0 || size > 1023) return undefined
    const name = Buffer.alloc(size)
    NodeFs.readSync(fd, name, 0, size, offset)
    return name.toString("utf8")
  } catch {
    return undefined
  } finally {
    if (fd !== undefined) NodeFs.closeSync(fd)
  }
}

/** The virtual size of the root disk at `rootfsPath`: a raw image's length, an overlay's from its header. */
export const diskSizeOf = (rootfsPath: string): number | undefined => {
  const root = rootDiskOf(rootfsPath)
  const stat = NodeFs.statSync(root.path, { throwIfNoEntry: false })
  if (stat === undefined || !stat.isFile()) return undefined
  if (root.format === "raw") return stat.size
  const fd = NodeFs.openSync(root.path, "r")
  try {
    const header = Buffer.alloc(32)
    NodeFs.readSync(fd, header, 0, 32, 0)
    return Number(header.readBigUInt64BE(24))
  } finally {
    NodeFs.closeSync(fd)
  }
}

const listBases = (dir: string) => {
  try {
    return NodeFs.readdirSync(dir).filter((entry) => entry.endsWith(".ext4"))
  } catch {
    return []
  }
}

/**
 * The overlays in a workspace's (or staging) directory: its disk, and a roll back's pending or previous
 * one (`.rootfs.restore-TAG-PID.qcow2`, `.rootfs.qcow2.previous-PID`). Only files the host named so
 * are read: a raw disk is the guest's to write and could look like anything.
 */
const overlaysIn = (dir: string): Array<string> => {
  try {
    return NodeFs.readdirSync(dir).filter((name) =>
      name === "rootfs.qcow2" || name.startsWith(".rootfs.qcow2.previous-")
      || (name.startsWith(".rootfs.") && name.endsWith(".qcow2"))
    ).map((name) => NodePath.join(dir, name))
  } catch {
    return []
  }
}

/**
 * Removes the bases no overlay names any more (the overlays of every workspace and staging directory
 * are read, a roll back's pending and previous ones among them). Returns the paths removed.
 */
export const sweepBases: Effect.Effect<ReadonlyArray<string>, Permanent, Home | Processes> = Effect.gen(
  function*() {
    const home = yield* Home
    const dir = basesDirOf(home)
    if (listBases(dir).length === 0) return []
    return yield* withBasesLock(Effect.sync(() => {
      const named = new Set<string>()
      for (const entry of NodeFs.readdirSync(home.workspaces)) {
        for (const overlay of overlaysIn(NodePath.join(home.workspaces, entry))) {
          const backing = backingFileOf(overlay)
          if (backing !== undefined) named.add(NodePath.basename(backing))
        }
      }
      const removed: Array<string> = []
      for (const base of listBases(dir)) {
        if (named.has(base)) continue
        NodeFs.rmSync(NodePath.join(dir, base), { force: true })
        removed.push(NodePath.join(dir, base))
      }
      return removed
    }))
  }
)
