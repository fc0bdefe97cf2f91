/**
 * The whole file tree of an ext4 image read on the host, without root and without mounting, and an
 * image layer written from it (what `commit` makes of a stopped workspace's disk): the disk copied
 * aside first, every entry with its owners, modes, times, device numbers and xattrs, the data of
 * chosen inodes, the layer as a deterministic gzip tar, and the special bits a base image's layers
 * give paths.
 */
import { Context, Data, type Effect } from "effect"

/** The disk tools failed, or are missing (then `remediation` names the package to install). */
export class DiskTreesFailed extends Data.TaggedError("DiskTreesFailed")<{
  readonly message: string
  readonly remediation?: string | undefined
}> {}

export type Ext4Type = "file" | "directory" | "symlink" | "char" | "block" | "fifo" | "socket"

/** One extended attribute of an entry. */
export interface Ext4Xattr {
  readonly name: string
  readonly value: Uint8Array
}

/** One entry of an ext4 tree (each name of a hard-linked inode is an entry of its own). */
export interface Ext4Entry {
  /** Absolute path in the image (`/`, `/etc/passwd`). */
  readonly path: string
  readonly ino: number
  readonly type: Ext4Type
  /** Permission and special bits (07777). */
  readonly mode: number
  readonly uid: number
  readonly gid: number
  readonly size: number
  /** Seconds since the epoch. */
  readonly mtime: number
  /** `seconds:nanoseconds` of the inode change time: unchanged means the inode was not touched. */
  readonly ctime: string
  readonly linkTarget: string
  readonly devMajor: number
  readonly devMinor: number
  readonly xattrs: ReadonlyArray<Ext4Xattr>
}

/** An ext4 image's tree as read by `DiskTrees.read`. */
export interface Ext4Tree {
  /** Sorted by path (byte order), `/` first. */
  readonly entries: ReadonlyArray<Ext4Entry>
  /** Where the data of regular files (and slow symlinks) was copied, by inode number. */
  readonly dataFile: (ino: number) => string
}

/** One entry of an image layer: owners, special files, hard links and xattrs kept. */
export interface LayerEntry {
  /** Relative name (`etc/passwd`); directories without a trailing slash. */
  readonly name: string
  readonly type: "file" | "directory" | "symlink" | "hardlink" | "char" | "block" | "fifo"
  /** Permission and special bits (07777). */
  readonly mode: number
  readonly uid: number
  readonly gid: number
  readonly size: number
  readonly mtime: number
  /** A symlink's target, or a hard link's first name. */
  readonly linkname: string
  readonly devMajor: number
  readonly devMinor: number
  readonly xattrs: ReadonlyArray<{ readonly name: string; readonly value: Uint8Array }>
}

/** A layer entry and, for a regular file, the tree and inode its data is read from. */
export interface LayerItem {
  readonly entry: LayerEntry
  readonly data?: { readonly origin: "workspace" | "base"; readonly ino: number } | undefined
}

/** A layer blob written by `DiskTrees.writeLayer`. */
export interface WrittenLayer {
  /** sha256 of the gzip blob. */
  readonly digest: string
  /** sha256 of the uncompressed tar (the config's diff_id). */
  readonly diffId: string
  readonly size: number
  readonly entries: number
}

export interface DiskTreesShape {
  /** Copies a disk image to `to` (a new file): a reflink where the filesystem can, else a sparse copy. */
  readonly copy: (from: string, to: string) => Effect.Effect<void, DiskTreesFailed>
  /**
   * Reads the whole tree of `image` (repaired beforehand by the caller), copying the data of regular
   * files (unless `withData` is false) and of slow symlinks into `workDir`.
   */
  readonly read: (
    image: string,
    workDir: string,
    options?: { readonly withData?: boolean }
  ) => Effect.Effect<Ext4Tree, DiskTreesFailed>
  /** Copies the data of the given inodes into `tree`'s data files (for a tree read without data). */
  readonly dumpInodes: (
    image: string,
    inos: ReadonlyArray<number>,
    tree: Ext4Tree,
    workDir: string
  ) => Effect.Effect<void, DiskTreesFailed>
  /**
   * Writes the items, in the order given, as a gzip tar layer blob at `output` (the same items give the
   * same bytes), the data of files read from the tree their `origin` names.
   */
  readonly writeLayer: (
    items: ReadonlyArray<LayerItem>,
    trees: { readonly workspace: Ext4Tree; readonly base?: Ext4Tree | undefined },
    output: string
  ) => Effect.Effect<WrittenLayer, DiskTreesFailed>
  /**
   * The setuid/setgid bits the layer blobs `layers` (bottom first; the top one's entry wins) give the
   * paths of `wanted`. zstd layers are not read.
   */
  readonly specialBits: (
    layers: ReadonlyArray<string>,
    wanted: ReadonlySet<string>
  ) => Effect.Effect<ReadonlyMap<string, number>, DiskTreesFailed>
}

export class DiskTrees extends Context.Tag("microagent/DiskTrees")<DiskTrees, DiskTreesShape>() {}
