/**
 * Applies OCI layers to a stage directory on the host, safely, and keeps the metadata ledger.
 *
 * The stage only ever holds plain directories, regular files, symlinks and hard links owned by the
 * builder, with owner-readable modes. Everything the host should not hold or an unprivileged user cannot
 * create (foreign owners, setuid/setgid bits, device nodes, FIFOs, xattrs, unreadable modes) lives in the
 * ledger and is applied to the finished ext4 image with debugfs. No path is ever resolved through the host
 * kernel across a symlink: every component is walked here, with symlinks evaluated as if the stage were
 * the root, and anything that would climb above it is refused.
 */
import * as NodeFs from "node:fs"
import type { TarEntry, TarEntryType, TarHandler } from "./Tar.ts"

export type LedgerType = Exclude<TarEntryType, "hardlink">

/** The desired metadata of one inode in the final filesystem. Hard links share one object. */
export interface LedgerEntry {
  type: LedgerType
  /** Permission and special bits (07777), after the setuid policy. */
  perm: number
  uid: number
  gid: number
  mtime: number
  size: number
  devmajor: number
  devminor: number
  linkname: string
  xattrs: ReadonlyMap<string, Buffer>
}

export class UnsafeLayerError extends Error {
  override readonly name = "UnsafeLayerError"
}

export interface StageOptions {
  /** Keep setuid/setgid bits on files (`--allow-guest-setuid`). */
  readonly allowSetuid: boolean
  /**
   * Refuse character and block device entries (`--refuse-devices`). Accepted by default: like FIFOs they
   * live only in the ledger and are created inside the ext4 image, never on the host.
   */
  readonly refuseDevices: boolean
  /** Bound on the expanded bytes of all layers. */
  readonly maxBytes: number
  /** Bound on entries across all layers. */
  readonly maxEntries: number
}

export const defaultStageOptions: StageOptions = {
  allowSetuid: false,
  refuseDevices: false,
  maxBytes: 32 * 1024 * 1024 * 1024,
  maxEntries: 2_000_000
}

const maxDepth = 256
const maxSymlinkHops = 40
const whiteoutPrefix = ".wh."
const opaqueMarker = ".wh..wh..opq"

/** Splits a tar name into safe components; refuses absolute paths, `..` and NUL. */
const cleanComponents = (name: string, what: string): Array<string> => {
  if (name.includes("\0")) throw new UnsafeLayerError(`${what} "${name.replace(/\0/g, "\\0")}" contains NUL`)
  if (name.startsWith("/")) throw new UnsafeLayerError(`${what} "${name}" is absolute`)
  const parts = name.split("/").filter((p) => p.length > 0 && p !== ".")
  if (parts.includes("..")) {
    throw new UnsafeLayerError(`${what} "${name}" contains ".." and would escape the root`)
  }
  if (parts.length > maxDepth) {
    throw new UnsafeLayerError(`${what} "${name}" is deeper than ${maxDepth} components`)
  }
  return parts
}

export class Stage {
  /** Desired metadata by resolved path relative to the root ("" is the root itself). */
  readonly ledger = new Map<string, LedgerEntry>()
  /** Paths whose setuid/setgid bits were removed by the policy. */
  readonly setuidStripped = new Set<string>()
  private readonly knownDirs = new Set<string>([""])
  private currentLayer = new Set<string>()
  private totalBytes = 0
  private totalEntries = 0

  constructor(readonly root: string, readonly options: StageOptions = defaultStageOptions) {
    NodeFs.mkdirSync(root, { recursive: true, mode: 0o700 })
    this.ledger.set("", this.dirEntry(0o755))
  }

  get expandedBytes(): number {
    return this.totalBytes
  }

  private abs(rel: string): string {
    return rel === "" ? this.root : `${this.root}/${rel}`
  }

  private dirEntry(perm: number): LedgerEntry {
    return {
      type: "directory",
      perm,
      uid: 0,
      gid: 0,
      mtime: 0,
      size: 0,
      devmajor: 0,
      devminor: 0,
      linkname: "",
      xattrs: new Map()
    }
  }

  private lstat(rel: string): NodeFs.Stats | undefined {
    return NodeFs.lstatSync(this.abs(rel), { throwIfNoEntry: false })
  }

  /**
   * Resolves components to a real path inside the root, following symlinks as the guest would see them
   * (absolute targets restart at the root). Refuses resolutions that climb above the root. Missing
   * components are returned as they are, for the caller to create.
   */
  resolve(components: ReadonlyArray<string>, followLast: boolean, what: string): Array<string> {
    const queue = [...components]
    const out: Array<string> = []
    let hops = 0
    while (queue.length > 0) {
      const part = queue.shift()!
      if (part === "." || part === "") continue
      if (part === "..") {
        if (out.length === 0) {
          throw new UnsafeLayerError(`${what}: a symlink on the way leads outside the root`)
        }
        out.pop()
        continue
      }
      out.push(part)
      const rel = out.join("/")
      if (this.knownDirs.has(rel)) continue
      const isLast = queue.length === 0
      if (isLast && !followLast) break
      const st = this.lstat(rel)
      if (st === undefined) continue
      if (st.isSymbolicLink()) {
        if (++hops > maxSymlinkHops) throw new UnsafeLayerError(`${what}: too many levels of symlinks`)
        const target = NodeFs.readlinkSync(this.abs(rel))
        out.pop()
        if (target.startsWith("/")) out.length = 0
        queue.unshift(...target.split("/"))
      } else if (st.isDirectory()) {
        this.knownDirs.add(rel)
      }
    }
    return out
  }

  /** Makes sure every component of a resolved directory path exists as a real directory. */
  private ensureDirs(components: ReadonlyArray<string>, what: string): void {
    for (let i = 1; i <= components.length; i++) {
      const rel = components.slice(0, i).join("/")
      if (this.knownDirs.has(rel)) continue
      const st = this.lstat(rel)
      if (st === undefined) {
        const virtual = this.ledger.get(rel)
        if (virtual !== undefined) this.forget(rel)
        NodeFs.mkdirSync(this.abs(rel), { mode: 0o700 })
        this.ledger.set(rel, this.dirEntry(0o755))
        this.currentLayer.add(rel)
      } else if (!st.isDirectory()) {
        throw new UnsafeLayerError(`${what}: parent "${rel}" is not a directory`)
      }
      this.knownDirs.add(rel)
    }
  }

  /** Drops ledger and cache entries at and below a path (after it was removed or replaced). */
  private forget(rel: string): void {
    this.ledger.delete(rel)
    this.knownDirs.delete(rel)
    const prefix = `${rel}/`
    for (const key of this.ledger.keys()) if (key.startsWith(prefix)) this.ledger.delete(key)
    for (const key of this.knownDirs) if (key.startsWith(prefix)) this.knownDirs.delete(key)
  }

  private remove(rel: string): void {
    if (rel === "") throw new UnsafeLayerError("a layer tried to remove the root directory")
    NodeFs.rmSync(this.abs(rel), { recursive: true, force: true })
    this.forget(rel)
  }

  /** Opaque directory: removes what lower layers put there, keeping what this layer wrote. */
  private clearLower(dir: string): void {
    const names = new Set<string>()
    const st = this.lstat(dir)
    if (st === undefined || !st.isDirectory()) return
    for (const name of NodeFs.readdirSync(this.abs(dir))) names.add(name)
    const prefix = dir === "" ? "" : `${dir}/`
    for (const key of this.ledger.keys()) {
      if (key.startsWith(prefix) && key !== dir && !key.slice(prefix.length).includes("/")) {
        names.add(key.slice(prefix.length))
      }
    }
    for (const name of names) {
      const child = `${prefix}${name}`
      if (!this.currentLayer.has(child)) this.remove(child)
      else if (this.ledger.get(child)?.type === "directory") this.clearLower(child)
    }
  }

  private policyPerm(rel: string, type: LedgerType, mode: number): number {
    let perm = mode & 0o7777
    if (type !== "directory" && (perm & 0o6000) !== 0 && !this.options.allowSetuid) {
      perm &= ~0o6000
      this.setuidStripped.add(`/${rel}`)
    }
    return perm
  }

  /** A handler for one layer's tar stream. */
  layer(): TarHandler {
    this.currentLayer = new Set()
    let fd: number | undefined
    let fileEntry: { rel: string; mtime: number; perm: number } | undefined
    return {
      entry: (entry) => {
        fileEntry = undefined
        const opened = this.onEntry(entry)
        if (opened !== undefined) {
          fd = opened.fd
          fileEntry = opened
        }
      },
      data: (chunk) => {
        if (fd !== undefined) {
          let written = 0
          while (written < chunk.length) {
            written += NodeFs.writeSync(fd, chunk, written, chunk.length - written)
          }
        }
      },
      end: () => {
        if (fd !== undefined && fileEntry !== undefined) {
          const stagePerm = (fileEntry.perm & 0o777) | 0o400
          NodeFs.fchmodSync(fd, stagePerm)
          NodeFs.futimesSync(fd, fileEntry.mtime, fileEntry.mtime)
          NodeFs.closeSync(fd)
        }
        fd = undefined
        fileEntry = undefined
      },
      abort: () => {
        if (fd !== undefined) NodeFs.closeSync(fd)
        fd = undefined
      }
    }
  }

  private onEntry(entry: TarEntry): { fd: number; rel: string; mtime: number; perm: number } | undefined {
    if (++this.totalEntries > this.options.maxEntries) {
      throw new UnsafeLayerError(`the layers hold more than ${this.options.maxEntries} entries`)
    }
    const components = cleanComponents(entry.path, "entry")
    if (components.length === 0) {
      // The root entry carries the root's own metadata.
      const root = this.ledger.get("")!
      root.perm = entry.mode & 0o7777
      root.uid = entry.uid
      root.gid = entry.gid
      root.mtime = entry.mtime
      return undefined
    }
    const base = components[components.length - 1]!
    const what = `entry "${entry.path}"`
    const parent = this.resolve(components.slice(0, -1), true, what)
    if (base.startsWith(whiteoutPrefix)) {
      if (base === opaqueMarker) {
        this.clearLower(parent.join("/"))
      } else if (!base.startsWith(".wh..wh.")) {
        const victim = [...parent, base.slice(whiteoutPrefix.length)].join("/")
        if (victim.length > 0 && !this.currentLayer.has(victim)) this.remove(victim)
      }
      return undefined
    }
    this.ensureDirs(parent, what)
    const rel = [...parent, base].join("/")
    const abs = this.abs(rel)
    const existing = this.lstat(rel)
    if (entry.type === "directory" && existing?.isDirectory()) {
      const meta = this.ledger.get(rel) ?? this.dirEntry(0o755)
      meta.perm = entry.mode & 0o7777
      meta.uid = entry.uid
      meta.gid = entry.gid
      meta.mtime = entry.mtime
      meta.xattrs = entry.xattrs
      this.ledger.set(rel, meta)
      this.currentLayer.add(rel)
      return undefined
    }
    // Resolve the hard link target before removing anything: the entry may be replacing its own target.
    let linkTarget: string | undefined
    if (entry.type === "hardlink") {
      const target = this.resolve(cleanComponents(entry.linkname, `hard link target of ${what}`), false, what)
        .join("/")
      const meta = this.ledger.get(target)
      if (target === "" || meta === undefined) {
        throw new UnsafeLayerError(
          `${what}: hard link target "${entry.linkname}" does not exist in the image`
        )
      }
      if (meta.type === "directory") throw new UnsafeLayerError(`${what}: hard link to a directory`)
      if (target === rel) return undefined
      linkTarget = target
    }
    if (existing !== undefined || this.ledger.has(rel)) this.remove(rel)
    this.currentLayer.add(rel)

    if (entry.type === "hardlink") {
      const meta = this.ledger.get(linkTarget!)!
      if (meta.type !== "char" && meta.type !== "block" && meta.type !== "fifo") {
        NodeFs.linkSync(this.abs(linkTarget!), abs)
      }
      this.ledger.set(rel, meta)
      return undefined
    }
    const type = entry.type
    if ((type === "char" || type === "block") && this.options.refuseDevices) {
      throw new UnsafeLayerError(
        `${what} is a ${type} device (${entry.devmajor}:${entry.devminor}); device nodes are refused (--refuse-devices)`
      )
    }
    const perm = this.policyPerm(rel, type, entry.mode)
    const meta: LedgerEntry = {
      type,
      perm,
      uid: entry.uid,
      gid: entry.gid,
      mtime: entry.mtime,
      size: entry.size,
      devmajor: entry.devmajor,
      devminor: entry.devminor,
      linkname: type === "symlink" ? entry.linkname : "",
      xattrs: entry.xattrs
    }
    this.ledger.set(rel, meta)
    switch (type) {
      case "file": {
        this.totalBytes += entry.size
        if (this.totalBytes > this.options.maxBytes) {
          throw new UnsafeLayerError(`the layers expand to more than ${this.options.maxBytes} bytes`)
        }
        const flags = NodeFs.constants.O_WRONLY | NodeFs.constants.O_CREAT | NodeFs.constants.O_EXCL
          | NodeFs.constants.O_NOFOLLOW
        return { fd: NodeFs.openSync(abs, flags, 0o600), rel, mtime: entry.mtime, perm }
      }
      case "directory":
        NodeFs.mkdirSync(abs, { mode: 0o700 })
        this.knownDirs.add(rel)
        return undefined
      case "symlink":
        if (entry.linkname.includes("\0")) throw new UnsafeLayerError(`${what}: symlink target contains NUL`)
        // Symlinks are inert data on the host: nothing here follows one out of the root.
        NodeFs.symlinkSync(entry.linkname, abs)
        return undefined
      default:
        // Devices and FIFOs exist only in the ledger; debugfs creates them inside the image.
        return undefined
    }
  }

  /** Sets directory modes and times once all layers are in (children would have changed the times). */
  finish(): void {
    const dirs = [...this.ledger.entries()].filter(([, m]) => m.type === "directory")
    dirs.sort((a, b) => b[0].length - a[0].length)
    for (const [rel, meta] of dirs) {
      const abs = this.abs(rel)
      NodeFs.chmodSync(abs, (meta.perm & 0o777) | 0o700)
      NodeFs.utimesSync(abs, meta.mtime, meta.mtime)
    }
  }

  /** Bytes and inodes the content needs in ext4 with 4 KiB blocks (hard links counted once). */
  measure(): { readonly bytes: number; readonly inodes: number } {
    const seen = new Set<LedgerEntry>()
    let bytes = 0
    for (const [, meta] of this.ledger) {
      if (seen.has(meta)) continue
      seen.add(meta)
      if (meta.type === "file") {
        bytes += Math.ceil(meta.size / 4096) * 4096 + (meta.size > 48 * 4096 ? 4096 : 0)
      } else if (meta.type === "directory") bytes += 4096
      else if (meta.type === "symlink" && Buffer.byteLength(meta.linkname) >= 60) bytes += 4096
    }
    return { bytes, inodes: seen.size }
  }
}

/** The absolute guest path of a ledger key. */
export const guestPath = (rel: string): string => (rel === "" ? "/" : `/${rel}`)
