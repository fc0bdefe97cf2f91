/**
 * Which entries the layer `commit` makes from a workspace's disk holds: the whole tree, or only what
 * changed against the base image's baseline (with whiteouts), in a fixed order, so that the same disk
 * content always gives the same layer. Pure: the trees are read and the layer written by `DiskTrees`.
 *
 * What the runtime itself wrote onto the disk is not committed: `/etc/hosts` and `/etc/resolv.conf`
 * (the guest agent rewrites them at every boot) and the targets of the workspace's `files` (copied in
 * at every start) are taken as the base image has them, or left out when it has none; the mount points
 * the agent creates (`/dev`, `/proc`, `/sys`, the targets of attached disks) are left out unless the
 * base image has them; `lost+found` is never committed. Secrets are never on the disk (they live in a
 * tmpfs in the guest).
 */
import type { Ext4Entry, LayerItem } from "../../services/DiskTrees.ts"

/** Byte order of paths, so that the layer's order is the same on every host and locale. */
const comparePaths = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b))

/** Paths the runtime writes; see the module comment. */
export interface RuntimePaths {
  /** Files replaced by the base image's version (or dropped when it has none). */
  readonly files: ReadonlyArray<string>
  /** Directories (and what is below them) dropped unless the base image has them. */
  readonly mountPoints: ReadonlyArray<string>
}

export const runtimePaths = (
  workspace: {
    readonly files: ReadonlyArray<{ readonly target: string }>
    readonly mounts: ReadonlyArray<{ readonly target: string }>
  }
): RuntimePaths => ({
  files: ["/etc/hosts", "/etc/resolv.conf", ...workspace.files.map((f) => normalize(f.target))],
  mountPoints: ["/dev", "/proc", "/sys", ...workspace.mounts.map((m) => normalize(m.target))]
})

const normalize = (path: string) => `/${path.split("/").filter((c) => c !== "" && c !== ".").join("/")}`

/** One entry to commit and where its data is read from. */
export interface Planned {
  readonly entry: Ext4Entry
  /** The data file of regular files (and the origin of hard-link groups). */
  readonly origin: "workspace" | "base"
}

const isUnder = (path: string, dir: string) => path === dir || path.startsWith(`${dir}/`)

/** Everything but the root and lost+found (a filesystem artefact, not content). */
const content = (entries: ReadonlyArray<Ext4Entry>) =>
  entries.filter((e) => e.path !== "/" && !isUnder(e.path, "/lost+found"))

/**
 * The committed tree: the workspace's entries with the runtime's own paths resolved against the base
 * (see the module comment). Sorted by path.
 */
export const planTree = (
  workspace: ReadonlyArray<Ext4Entry>,
  base: ReadonlyArray<Ext4Entry> | undefined,
  runtime: RuntimePaths
): Array<Planned> => {
  const baseByPath = new Map((base ?? []).map((e) => [e.path, e]))
  const droppedDirs = runtime.mountPoints.filter((dir) => !baseByPath.has(dir))
  const replaced = new Set(runtime.files)
  const planned: Array<Planned> = []
  for (const entry of content(workspace)) {
    if (droppedDirs.some((dir) => isUnder(entry.path, dir))) continue
    if (replaced.has(entry.path)) continue
    planned.push({ entry, origin: "workspace" })
  }
  for (const path of replaced) {
    const original = baseByPath.get(path)
    const parent = path.slice(0, path.lastIndexOf("/")) || "/"
    const parentKept = parent === "/"
      || planned.some((p) => p.entry.path === parent && p.entry.type === "directory")
    if (original !== undefined && original.type !== "directory" && parentKept) {
      planned.push({ entry: original, origin: "base" })
    }
  }
  return planned.sort((a, b) => comparePaths(a.entry.path, b.entry.path))
}

const sameXattrs = (a: Ext4Entry, b: Ext4Entry) =>
  a.xattrs.length === b.xattrs.length
  && a.xattrs.every((x, i) =>
    x.name === b.xattrs[i]!.name && Buffer.from(x.value).equals(Buffer.from(b.xattrs[i]!.value))
  )

/** Same metadata (content of regular files is compared separately). */
const sameMetadata = (a: Ext4Entry, b: Ext4Entry) =>
  a.type === b.type && a.mode === b.mode && a.uid === b.uid && a.gid === b.gid && a.mtime === b.mtime
  && a.size === b.size && a.linkTarget === b.linkTarget && a.devMajor === b.devMajor
  && a.devMinor === b.devMinor && sameXattrs(a, b)

/**
 * Files whose bytes must be compared to know whether they changed: same metadata as in the base, but
 * the inode differs or was changed since the copy (an untouched inode of a disk cloned from the
 * baseline keeps its number and change time).
 */
export const needsContentCheck = (planned: ReadonlyArray<Planned>, base: ReadonlyArray<Ext4Entry>) => {
  const baseByPath = new Map(base.map((e) => [e.path, e]))
  return planned.filter((p) => {
    const b = baseByPath.get(p.entry.path)
    return p.origin === "workspace" && p.entry.type === "file" && b !== undefined && sameMetadata(p.entry, b)
      && !(b.ino === p.entry.ino && b.ctime === p.entry.ctime)
  }).map((p) => ({
    path: p.entry.path,
    workspaceIno: p.entry.ino,
    baseIno: baseByPath.get(p.entry.path)!.ino
  }))
}

export interface DiffPlan {
  readonly changed: Array<Planned>
  /** Paths deleted since the base, each to become a `.wh.` entry in its parent. */
  readonly deleted: Array<string>
}

/**
 * What changed against the base: entries added or modified (a hard-link group whole when any of its
 * names changed, so no link points outside the layer's knowledge), and deletions, named only at their
 * topmost deleted directory. `sameContent(path)` answers for the files `needsContentCheck` listed.
 */
export const diffTree = (
  planned: ReadonlyArray<Planned>,
  base: ReadonlyArray<Ext4Entry>,
  sameContent: (path: string) => boolean
): DiffPlan => {
  const baseContent = content(base)
  const baseByPath = new Map(baseContent.map((e) => [e.path, e]))
  const unchanged = (p: Planned) => {
    const b = baseByPath.get(p.entry.path)
    if (b === undefined || !sameMetadata(p.entry, b)) return false
    if (p.origin === "base" || p.entry.type !== "file") return true
    if (b.ino === p.entry.ino && b.ctime === p.entry.ctime) return true
    return sameContent(p.entry.path)
  }
  const changedSet = new Set(planned.filter((p) => !unchanged(p)).map((p) => p.entry.path))
  const groupKey = (p: Planned) => `${p.origin}:${p.entry.ino}`
  const changedGroups = new Set(
    planned.filter((p) => changedSet.has(p.entry.path) && p.entry.type !== "directory").map(groupKey)
  )
  const changed = planned.filter((p) =>
    changedSet.has(p.entry.path) || (p.entry.type !== "directory" && changedGroups.has(groupKey(p)))
  )
  const present = new Map(planned.map((p) => [p.entry.path, p.entry]))
  const deleted: Array<string> = []
  for (const b of baseContent) {
    if (present.has(b.path)) continue
    const parent = b.path.slice(0, b.path.lastIndexOf("/")) || "/"
    // Below a deleted (or no longer a) directory, the parent's own whiteout or replacement covers it.
    if (parent !== "/" && present.get(parent)?.type !== "directory") continue
    deleted.push(b.path)
  }
  return { changed, deleted }
}

/** The layer entries in archive order, hard links as links to the group's first name. */
export const layerEntries = (planned: ReadonlyArray<Planned>, deleted: ReadonlyArray<string> = []) => {
  const firstName = new Map<string, string>()
  const items: Array<LayerItem> = []
  for (const p of planned) {
    const e = p.entry
    const name = e.path.slice(1)
    const key = `${p.origin}:${e.ino}`
    const first = e.type === "directory" ? undefined : firstName.get(key)
    const base = {
      name,
      mode: e.mode,
      uid: e.uid,
      gid: e.gid,
      mtime: e.mtime,
      devMajor: e.devMajor,
      devMinor: e.devMinor,
      xattrs: e.xattrs
    }
    if (first !== undefined) {
      items.push({ entry: { ...base, type: "hardlink", size: 0, linkname: first } })
      continue
    }
    if (e.type !== "directory") firstName.set(key, name)
    if (e.type === "socket") continue
    items.push({
      entry: { ...base, type: e.type, size: e.type === "file" ? e.size : 0, linkname: e.linkTarget },
      ...(e.type === "file" ? { data: { origin: p.origin, ino: e.ino } } : {})
    })
  }
  for (const path of deleted) {
    const slash = path.lastIndexOf("/")
    items.push({
      entry: {
        name: `${path.slice(1, slash + 1)}.wh.${path.slice(slash + 1)}`,
        type: "file",
        mode: 0,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        linkname: "",
        devMajor: 0,
        devMinor: 0,
        xattrs: []
      }
    })
  }
  return items.sort((a, b) => comparePaths(a.entry.name, b.entry.name))
}

/** The creation time of a commit: the newest modification time in what it holds (never the clock). */
export const createdOf = (planned: ReadonlyArray<Planned>, fallback: number) =>
  new Date(planned.reduce((max, p) => Math.max(max, p.entry.mtime), fallback) * 1000).toISOString()

/**
 * Gives back the bits the store stripped from base files the workspace left untouched (same inode and
 * change time as in the baseline), so that a squashed commit keeps what the base image had.
 */
export const restoreSpecialBits = (
  planned: ReadonlyArray<Planned>,
  base: ReadonlyArray<Ext4Entry>,
  bits: ReadonlyMap<string, number>
): Array<Planned> => {
  const baseByPath = new Map(base.map((e) => [e.path, e]))
  return planned.map((p) => {
    const wanted = bits.get(p.entry.path)
    const b = baseByPath.get(p.entry.path)
    if (
      wanted === undefined || wanted === 0 || b === undefined || b.ino !== p.entry.ino
      || b.ctime !== p.entry.ctime
    ) return p
    return { ...p, entry: { ...p.entry, mode: p.entry.mode | wanted } }
  })
}
