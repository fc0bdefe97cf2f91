/**
 * Reads a whole ext4 image as a tree of entries, without root and without mounting, for `commit`:
 * debugfs batch scripts list every directory (`ls -p`, one level per run), `stat` every inode (mtime,
 * ctime, device numbers, fast symlink targets, xattr names), fetch xattr values (`ea_get -f`) and copy
 * file and slow-symlink data out by inode number (`dump <ino>`), so hard links are read once and
 * nothing depends on the host user being able to own or read what it extracts.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { Ext4Entry, Ext4Tree, Ext4Type } from "../../services/DiskTrees.ts"
import { DebugfsFailed, type ImageError, quote } from "./Debugfs.ts"
import { runToolOk } from "./Tools.ts"

export type { Ext4Entry, Ext4Tree, Ext4Type, Ext4Xattr } from "../../services/DiskTrees.ts"

/** One line of `ls -p`: `/ino/mode/uid/gid/name/size/` (size empty for directories). */
export interface ListedEntry {
  readonly ino: number
  readonly mode: number
  readonly uid: number
  readonly gid: number
  readonly name: string
  readonly size: number
}

const typeOfMode = (mode: number): Ext4Type | undefined => {
  switch (mode & 0o170000) {
    case 0o100000:
      return "file"
    case 0o040000:
      return "directory"
    case 0o120000:
      return "symlink"
    case 0o020000:
      return "char"
    case 0o060000:
      return "block"
    case 0o010000:
      return "fifo"
    case 0o140000:
      return "socket"
    default:
      return undefined
  }
}

/**
 * The entries of one `ls -p` listing, without `.` and `..`. The name is everything between the
 * fourth slash and the size field, so a name holding a slash-free oddity still parses; a line that is
 * not an entry is an error rather than a silently missing file.
 */
export const parseLsP = (text: string): Array<ListedEntry> => {
  const entries: Array<ListedEntry> = []
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue
    const m = /^\/(\d+)\/([0-7]+)\/(\d+)\/(\d+)\/(.*)\/(\d*)\/$/.exec(line)
    if (m === null) throw new DebugfsFailed({ detail: `unexpected listing line: ${JSON.stringify(line)}` })
    const name = m[5]!
    // Inode 0 marks an unused slot (a removed entry debugfs still shows).
    if (name === "." || name === ".." || m[1] === "0") continue
    entries.push({
      ino: Number(m[1]),
      mode: parseInt(m[2]!, 8),
      uid: Number(m[3]),
      gid: Number(m[4]),
      name,
      size: m[6] === "" ? 0 : Number(m[6])
    })
  }
  return entries
}

export interface StatInfo {
  readonly mtime: number
  readonly ctime: string
  readonly devMajor: number
  readonly devMinor: number
  /** Present for symlinks whose target lives in the inode. */
  readonly fastLink?: string | undefined
  readonly xattrNames: ReadonlyArray<string>
}

/** The fields of one `stat <ino>` that `ls -p` does not give. */
export const parseStat = (text: string, size: number): StatInfo => {
  const mtime = /\bmtime: 0x([0-9a-f]+)/.exec(text)
  const ctime = /\bctime: 0x([0-9a-f]+)(?::([0-9a-f]+))?/.exec(text)
  if (mtime === null || ctime === null) {
    throw new DebugfsFailed({ detail: `stat printed no times: ${text.slice(0, 200)}` })
  }
  const device = /Device major\/minor number: (\d+):(\d+)/.exec(text)
  const fast = text.indexOf('Fast link dest: "')
  const xattrNames: Array<string> = []
  const section = /\nExtended attributes:\n((?: {2}.*\n?)*)/.exec(text)
  if (section !== null) {
    for (const line of section[1]!.split("\n")) {
      const name = /^ {2}(\S+) \(\d+\)/.exec(line)
      // Inline file data is stored as an xattr but is the file's content, not an attribute.
      if (name !== null && name[1] !== "system.data") xattrNames.push(name[1]!)
    }
  }
  return {
    mtime: parseInt(mtime[1]!, 16),
    ctime: `${parseInt(ctime[1]!, 16)}:${ctime[2] === undefined ? 0 : parseInt(ctime[2], 16)}`,
    devMajor: device === null ? 0 : Number(device[1]),
    devMinor: device === null ? 0 : Number(device[2]),
    fastLink: fast === -1 ? undefined : text.slice(fast + 17, fast + 17 + size),
    xattrNames: xattrNames.sort()
  }
}

/** Splits the output of a `-f` batch into each command's output, in order (debugfs echoes each command). */
export const splitBatch = (stdout: string, count: number): Array<string> => {
  const parts = stdout.split(/^debugfs: .*$/m).slice(1)
  if (parts.length !== count) {
    throw new DebugfsFailed({ detail: `expected ${count} command outputs, got ${parts.length}` })
  }
  return parts.map((part) => part.replace(/^\n/, ""))
}

let batchCounter = 0

/** Runs commands as one debugfs batch in `workDir`, returning each command's output. */
const batch = (image: string, commands: ReadonlyArray<string>, workDir: string) =>
  Effect.gen(function*() {
    if (commands.length === 0) return []
    const script = NodePath.join(workDir, `read-${batchCounter++}.debugfs`)
    yield* Effect.sync(() => NodeFs.writeFileSync(script, `${commands.join("\n")}\n`, { mode: 0o600 }))
    // A pager (PAGER, DEBUGFS_PAGER) would write some outputs out of order with the command echoes.
    const result = yield* runToolOk("debugfs", ["-f", script, image], {
      env: { DEBUGFS_PAGER: "__none__", PAGER: "__none__" }
    })
    yield* Effect.sync(() => NodeFs.rmSync(script, { force: true }))
    const errors = result.stderr.split("\n").map((l) => l.trim()).filter((l) =>
      l.length > 0 && !/^debugfs \d/.test(l)
    )
    if (errors.length > 0) return yield* new DebugfsFailed({ detail: errors.slice(0, 5).join("; ") })
    return yield* Effect.try({
      try: () => splitBatch(result.stdout, commands.length),
      catch: (cause) => cause instanceof DebugfsFailed ? cause : new DebugfsFailed({ detail: String(cause) })
    })
  })

const CHUNK = 2000

const chunked = <A>(items: ReadonlyArray<A>): Array<ReadonlyArray<A>> => {
  const out: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < items.length; i += CHUNK) out.push(items.slice(i, i + CHUNK))
  return out
}

/** Runs the commands in batches, two debugfs processes at a time (they only read the image). */
const batches = (image: string, commands: ReadonlyArray<string>, workDir: string) =>
  Effect.map(
    Effect.forEach(chunked(commands), (part) => batch(image, part, workDir), { concurrency: 2 }),
    (outputs) => outputs.flat()
  )

const join = (dir: string, name: string) => dir === "/" ? `/${name}` : `${dir}/${name}`

/**
 * Walks the image (checked beforehand by the caller) and copies the data of regular files and slow
 * symlinks into `workDir`. `skip` leaves paths out (and everything below them).
 */
export const readExt4Tree = (
  image: string,
  workDir: string,
  options: { readonly skip?: (path: string) => boolean; readonly withData?: boolean } = {}
): Effect.Effect<Ext4Tree, ImageError> =>
  Effect.gen(function*() {
    const dataDir = NodePath.join(workDir, "data")
    yield* Effect.sync(() => NodeFs.mkdirSync(dataDir, { recursive: true, mode: 0o700 }))
    const listed: Array<{ path: string; entry: ListedEntry }> = []
    const rootStat = yield* batch(image, ["stat <2>"], workDir)
    const rootMode = /Mode:\s+([0-7]+)/.exec(rootStat[0]!)
    const rootIds = /User:\s+(\d+)\s+Group:\s+(\d+)/.exec(rootStat[0]!)
    listed.push({
      path: "/",
      entry: {
        ino: 2,
        mode: 0o040000 | parseInt(rootMode?.[1] ?? "755", 8),
        uid: Number(rootIds?.[1] ?? 0),
        gid: Number(rootIds?.[2] ?? 0),
        name: "",
        size: 0
      }
    })
    let level: Array<{ path: string; ino: number }> = [{ path: "/", ino: 2 }]
    while (level.length > 0) {
      const outputs = yield* batches(image, level.map((d) => `ls -p <${d.ino}>`), workDir)
      const next: Array<{ path: string; ino: number }> = []
      for (let i = 0; i < level.length; i++) {
        const dir = level[i]!
        const children = yield* Effect.try({
          try: () => parseLsP(outputs[i]!),
          catch: (cause) =>
            cause instanceof DebugfsFailed ? cause : new DebugfsFailed({ detail: String(cause) })
        })
        for (const child of children) {
          const path = join(dir.path, child.name)
          if (options.skip?.(path) === true) continue
          listed.push({ path, entry: child })
          if ((child.mode & 0o170000) === 0o040000) next.push({ path, ino: child.ino })
        }
      }
      level = next
    }
    const inodes = [...new Set(listed.map((l) => l.entry.ino))]
    const statOutputs = yield* batches(image, inodes.map((ino) => `stat <${ino}>`), workDir)
    const sizeOf = new Map(listed.map((l) => [l.entry.ino, l.entry.size]))
    const stats = new Map<number, StatInfo>()
    for (let i = 0; i < inodes.length; i++) {
      const ino = inodes[i]!
      const info = yield* Effect.try({
        try: () => parseStat(statOutputs[i]!, sizeOf.get(ino) ?? 0),
        catch: (cause) =>
          cause instanceof DebugfsFailed ? cause : new DebugfsFailed({ detail: String(cause) })
      })
      stats.set(ino, info)
    }
    const dataFile = (ino: number) => NodePath.join(dataDir, String(ino))
    const xattrFile = (ino: number, i: number) => NodePath.join(dataDir, `${ino}.xattr.${i}`)
    const typeOf = new Map(listed.map((l) => [l.entry.ino, typeOfMode(l.entry.mode)]))
    const dumps: Array<string> = []
    for (const ino of inodes) {
      const type = typeOf.get(ino)
      const info = stats.get(ino)!
      if (
        (type === "file" && options.withData !== false) || (type === "symlink" && info.fastLink === undefined)
      ) {
        dumps.push(`dump <${ino}> ${quote(dataFile(ino))}`)
      }
      info.xattrNames.forEach((name, i) =>
        dumps.push(`ea_get -f ${quote(xattrFile(ino, i))} <${ino}> ${quote(name)}`)
      )
    }
    yield* batches(image, dumps, workDir)
    const entries: Array<Ext4Entry> = []
    for (const { path, entry } of listed) {
      const type = typeOfMode(entry.mode)
      if (type === undefined) {
        return yield* new DebugfsFailed({
          detail: `${path} has an unknown file type (mode ${entry.mode.toString(8)})`
        })
      }
      const info = stats.get(entry.ino)!
      const linkTarget = type !== "symlink"
        ? ""
        : info.fastLink ?? (yield* Effect.sync(() => NodeFs.readFileSync(dataFile(entry.ino), "utf8")))
      const xattrs = yield* Effect.sync(() =>
        info.xattrNames.map((name, i) => ({
          name,
          value: new Uint8Array(NodeFs.readFileSync(xattrFile(entry.ino, i)))
        }))
      )
      entries.push({
        path,
        ino: entry.ino,
        type,
        mode: entry.mode & 0o7777,
        uid: entry.uid,
        gid: entry.gid,
        size: type === "file" ? entry.size : 0,
        mtime: info.mtime,
        ctime: info.ctime,
        linkTarget,
        devMajor: info.devMajor,
        devMinor: info.devMinor,
        xattrs
      })
    }
    entries.sort((a, b) => comparePaths(a.path, b.path))
    return { entries, dataFile }
  })

/** Byte order of paths, so that listings sort the same on every host and locale. */
export const comparePaths = (a: string, b: string): number => {
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return Buffer.compare(x, y)
}

/** Copies the data of the given inodes into the tree's data files (for a tree read without data). */
export const dumpInodes = (
  image: string,
  inos: ReadonlyArray<number>,
  tree: Ext4Tree,
  workDir: string
): Effect.Effect<void, ImageError> =>
  Effect.asVoid(
    batches(image, [...new Set(inos)].map((ino) => `dump <${ino}> ${quote(tree.dataFile(ino))}`), workDir)
  )
