/**
 * The fake backend's disks, simulated on the host: a named volume is a directory beside its ext4 file
 * (`volumeDirectoryOf`, which the fake never reads or writes), and attaching it puts a symlink to that
 * directory at the mountpoint inside the fake guest's root, so what one workspace writes there the next
 * one that mounts the volume sees. A read-only mount is a copy of the volume's directory made at launch
 * with the write bits taken off: the volume itself is never written through it, whatever the host lets
 * its (root) user do to the copy, which goes with the VM. Bundles and ext4 images are not simulated.
 * The mounts are listed beside the root, so that halting or killing the fake VM (or the next launch,
 * after a crash) takes them down again, leaving an empty mountpoint as a real guest's disk would.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Permanent, Unsupported } from "../../../domain/Errors.ts"
import { resolveInRoot } from "../../../domain/RootedPath.ts"
import { type DiskAttachment, type LaunchConfig, volumeDirectoryOf } from "../../../services/Hypervisor.ts"

const listOf = (root: string) => `${root}.fake-mounts`

interface Mounted {
  /** The mountpoint's host path inside the root. */
  readonly at: string
  /** The mountpoint, as the guest names it. */
  readonly mountpoint?: string | undefined
  /** The directory mounted there. */
  readonly source?: string | undefined
  /** A read-only copy made for this VM, removed with the mount. */
  readonly copy?: string | undefined
}

const read = (root: string): Array<Mounted> => {
  try {
    return NodeFs.readFileSync(listOf(root), "utf8").split("\n").filter((line) => line.length > 0).map(
      (line) => JSON.parse(line) as Mounted
    )
  } catch {
    return []
  }
}

const remember = (root: string, mounted: Mounted) =>
  NodeFs.appendFileSync(listOf(root), `${JSON.stringify(mounted)}\n`, { mode: 0o600 })

/** Takes down every mount of the fake guest rooted at `root`; the mountpoints stay, empty. Never throws. */
export const unmountAll = (root: string) => {
  for (const mounted of read(root)) {
    try {
      if (NodeFs.lstatSync(mounted.at, { throwIfNoEntry: false })?.isSymbolicLink()) {
        NodeFs.unlinkSync(mounted.at)
        NodeFs.mkdirSync(mounted.at, { recursive: true, mode: 0o755 })
      }
    } catch {
      // The guest moved it: nothing of ours is left there.
    }
    if (mounted.copy !== undefined) removeCopy(mounted.copy)
  }
  NodeFs.rmSync(listOf(root), { force: true })
}

/**
 * The host path of `guestPath` in the fake guest rooted at `root`, as its kernel would resolve it: inside
 * the disk mounted there, if any, else inside the root (`resolveInRoot`: `..` and symlinks cannot lead
 * out). Throws `RootedPathLoop` on a symlink loop.
 */
export const hostPathIn = (root: string, guestPath: string): string => {
  const normal = NodePath.posix.normalize(`/${guestPath}`)
  const mounted = read(root)
    .filter((m) => m.mountpoint !== undefined && m.source !== undefined)
    .sort((a, b) => b.mountpoint!.length - a.mountpoint!.length)
    .find((m) => normal === m.mountpoint || normal.startsWith(`${m.mountpoint}/`))
  return mounted === undefined
    ? resolveInRoot(root, guestPath)
    : resolveInRoot(mounted.source!, normal.slice(mounted.mountpoint!.length))
}

const removeCopy = (copy: string) => {
  try {
    makeWritable(copy)
    NodeFs.rmSync(copy, { recursive: true, force: true })
  } catch {
    // Gone already.
  }
}

const walk = (path: string, visit: (path: string, stat: NodeFs.Stats) => void) => {
  const stat = NodeFs.lstatSync(path)
  visit(path, stat)
  if (stat.isDirectory()) {
    for (const entry of NodeFs.readdirSync(path)) walk(NodePath.join(path, entry), visit)
  }
}

const makeReadOnly = (path: string) =>
  walk(path, (p, stat) => {
    if (!stat.isSymbolicLink()) NodeFs.chmodSync(p, stat.mode & 0o7555)
  })

const makeWritable = (path: string) => {
  if (!NodeFs.existsSync(path)) return
  walk(path, (p, stat) => {
    if (stat.isDirectory()) NodeFs.chmodSync(p, (stat.mode & 0o7777) | 0o700)
  })
}

const refuse = (message: string): Unsupported =>
  new Unsupported({
    message,
    remediation: "use --backend qemu, which attaches real disks",
    backend: "fake",
    feature: "Volumes"
  })

/** The directory the guest sees at the mountpoint for `disk` (a copy for a read-only mount). */
const sourceOf = (config: LaunchConfig, disk: DiskAttachment, index: number): string => {
  const data = volumeDirectoryOf(disk.path)
  NodeFs.mkdirSync(data, { recursive: true, mode: 0o755 })
  if (!disk.readOnly) return data
  const copy = NodePath.join(config.runtimeDir, `fake-disk-${index}`)
  removeCopy(copy)
  NodeFs.cpSync(data, copy, { recursive: true, verbatimSymlinks: true, preserveTimestamps: true })
  makeReadOnly(copy)
  return copy
}

/**
 * Mounts the disks of `config` in the fake guest's root (after taking down any a crashed VM left).
 * A disk that is not a named volume, or a mountpoint that is a non-empty directory or a file, is refused;
 * on any failure what was mounted is taken down again.
 */
export const mountDisks = (config: LaunchConfig): Effect.Effect<void, Unsupported | Permanent> =>
  Effect.suspend(() => {
    const root = config.rootfsPath
    unmountAll(root)
    const other = config.disks.find((disk) => disk.kind !== "volume")
    if (other !== undefined) {
      return Effect.fail(
        refuse(
          `the fake backend attaches named volumes only (as host directories), not ${
            other.kind ?? "the disk"
          } ${other.path}`
        )
      )
    }
    return Effect.try({
      try: () => {
        for (const [index, disk] of config.disks.entries()) {
          const at = resolveInRoot(root, disk.mountpoint)
          const there = NodeFs.lstatSync(at, { throwIfNoEntry: false })
          if (there !== undefined) {
            if (!there.isDirectory() || NodeFs.readdirSync(at).length > 0) {
              throw refuse(
                `the fake backend mounts on an absent or empty directory only; ${disk.mountpoint} in workspace ${config.workspace} is ${
                  there.isDirectory() ? "a directory with files in it" : "not a directory"
                }`
              )
            }
            NodeFs.rmdirSync(at)
          }
          NodeFs.mkdirSync(NodePath.dirname(at), { recursive: true, mode: 0o755 })
          const source = sourceOf(config, disk, index)
          NodeFs.symlinkSync(source, at)
          remember(root, {
            at,
            mountpoint: disk.mountpoint,
            source,
            ...(disk.readOnly ? { copy: source } : {})
          })
        }
      },
      catch: (cause): Unsupported | Permanent =>
        cause instanceof Unsupported ? cause : new Permanent({
          message: `the fake backend could not mount the disks of ${config.workspace}: ${String(cause)}`,
          remediation: "check the workspace's mountpoints"
        })
    }).pipe(Effect.tapError(() => Effect.sync(() => unmountAll(root))))
  })
