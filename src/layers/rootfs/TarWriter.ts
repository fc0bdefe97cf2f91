/**
 * A small tar writer for copying host trees into workspaces: ustar headers, with pax records for what
 * ustar cannot hold (long or non-ASCII names and link targets, sizes of 8 GiB and more). It walks a host
 * path without following symlinks below the top, keeps permission bits, and writes every entry as
 * owned by root (files copied into a workspace belong to the guest's root, as with `cp` by root).
 * Sockets, FIFOs and devices are skipped: they cannot be copied as data.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { LayerEntry } from "../../services/DiskTrees.ts"
import type { HostEntry, HostTree } from "../../services/HostTrees.ts"

const BLOCK = 512
const CHUNK = 1024 * 1024

export type { HostEntry, HostTree } from "../../services/HostTrees.ts"

/**
 * Lists a host path as archive entries under `name`. The top is followed if it is a symlink (as `cp`
 * follows the path it is given); everything below is taken as it is, symlinks as symlinks.
 */
export const walkHost = (source: string, name: string): HostTree => {
  const entries: Array<HostEntry> = []
  const skipped: Array<string> = []
  const visit = (path: string, entryName: string, stat: NodeFs.Stats) => {
    const base = {
      name: entryName,
      source: path,
      mode: stat.mode & 0o7777,
      mtime: Math.floor(stat.mtimeMs / 1000)
    }
    if (stat.isSymbolicLink()) {
      entries.push({ ...base, type: "symlink", size: 0, linkname: NodeFs.readlinkSync(path) })
    } else if (stat.isFile()) {
      entries.push({ ...base, type: "file", size: stat.size, linkname: "" })
    } else if (stat.isDirectory()) {
      entries.push({ ...base, type: "directory", size: 0, linkname: "" })
      for (const child of NodeFs.readdirSync(path).sort()) {
        const childPath = NodePath.join(path, child)
        visit(childPath, `${entryName}/${child}`, NodeFs.lstatSync(childPath))
      }
    } else {
      skipped.push(path)
    }
  }
  visit(source, name, NodeFs.statSync(source))
  return { entries, skipped }
}

const octal = (value: number, width: number): string => value.toString(8).padStart(width - 1, "0") + "\0"

const fitsOctal = (value: number, width: number) => value < 8 ** (width - 1)

/** A pax record `"<len> key=value\n"`, whose length counts itself. */
const paxRecord = (key: string, value: string): Buffer => {
  const body = ` ${key}=${value}\n`
  const bodyLength = Buffer.byteLength(body)
  let digits = 1
  while (String(bodyLength + digits).length !== digits) digits++
  return Buffer.from(`${bodyLength + digits}${body}`)
}

const isPortable = (text: string) => /^[\x20-\x7e]*$/.test(text)

/** Splits a name into ustar's prefix (155) and name (100) fields, or undefined when it does not fit. */
const splitName = (name: string): { prefix: string; name: string } | undefined => {
  if (!isPortable(name)) return undefined
  if (name.length <= 100) return { prefix: "", name }
  for (let i = name.indexOf("/"); i !== -1; i = name.indexOf("/", i + 1)) {
    if (i <= 155 && name.length - i - 1 <= 100 && name.length - i - 1 > 0) {
      return { prefix: name.slice(0, i), name: name.slice(i + 1) }
    }
  }
  return undefined
}

const header = (
  fields: {
    name: string
    prefix: string
    mode: number
    size: number
    mtime: number
    typeflag: string
    linkname: string
    uid?: number
    gid?: number
    uname?: string
    gname?: string
    devmajor?: number
    devminor?: number
  }
): Buffer => {
  const block = Buffer.alloc(BLOCK)
  block.write(fields.name, 0, 100, "utf8")
  block.write(octal(fields.mode, 8), 100, 8, "latin1")
  block.write(octal(fitsOctal(fields.uid ?? 0, 8) ? fields.uid ?? 0 : 0, 8), 108, 8, "latin1")
  block.write(octal(fitsOctal(fields.gid ?? 0, 8) ? fields.gid ?? 0 : 0, 8), 116, 8, "latin1")
  block.write(octal(fitsOctal(fields.size, 12) ? fields.size : 0, 12), 124, 12, "latin1")
  block.write(octal(fitsOctal(fields.mtime, 12) ? fields.mtime : 0, 12), 136, 12, "latin1")
  block.write("        ", 148, 8, "latin1")
  block.write(fields.typeflag, 156, 1, "latin1")
  block.write(fields.linkname, 157, 100, "utf8")
  block.write("ustar\0", 257, 6, "latin1")
  block.write("00", 263, 2, "latin1")
  block.write(fields.uname ?? "root", 265, 32, "latin1")
  block.write(fields.gname ?? "root", 297, 32, "latin1")
  if (fields.devmajor !== undefined) block.write(octal(fields.devmajor, 8), 329, 8, "latin1")
  if (fields.devminor !== undefined) block.write(octal(fields.devminor, 8), 337, 8, "latin1")
  block.write(fields.prefix, 345, 155, "utf8")
  let sum = 0
  for (let i = 0; i < BLOCK; i++) sum += block[i]!
  block.write(octal(sum, 7) + " ", 148, 8, "latin1")
  return block
}

export const padding = (size: number) => Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK)

/** `main`, preceded by a pax extended header carrying `records` when there are any. */
const withPax = (
  main: Buffer,
  records: ReadonlyArray<Buffer>,
  mtime: number,
  owner: Pick<Parameters<typeof header>[0], "uid" | "gid" | "uname" | "gname"> = {}
): Buffer => {
  if (records.length === 0) return main
  const pax = Buffer.concat(records)
  return Buffer.concat([
    header({
      name: "PaxHeader",
      prefix: "",
      mode: 0o644,
      size: pax.length,
      mtime,
      typeflag: "x",
      linkname: "",
      ...owner
    }),
    pax,
    padding(pax.length),
    main
  ])
}

/** The header blocks of one entry (a pax header first when ustar cannot hold it). */
export const entryHeader = (entry: HostEntry): Buffer => {
  const typeflag = entry.type === "file" ? "0" : entry.type === "directory" ? "5" : "2"
  const name = entry.type === "directory" ? `${entry.name}/` : entry.name
  const split = splitName(name)
  const linkFits = isPortable(entry.linkname) && entry.linkname.length <= 100
  const sizeFits = fitsOctal(entry.size, 12)
  const records: Array<Buffer> = []
  if (split === undefined) records.push(paxRecord("path", name))
  if (!linkFits) records.push(paxRecord("linkpath", entry.linkname))
  if (!sizeFits) records.push(paxRecord("size", String(entry.size)))
  const main = header({
    name: split?.name ?? name.slice(-100).replace(/[^\x20-\x7e]/g, "_"),
    prefix: split?.prefix ?? "",
    mode: entry.mode,
    size: entry.type === "file" ? entry.size : 0,
    mtime: entry.mtime,
    typeflag,
    linkname: linkFits ? entry.linkname : ""
  })
  return withPax(main, records, entry.mtime)
}

/**
 * The archive of a tree, produced lazily in chunks of at most about 1 MiB. A file that changes size
 * while it is read is an error rather than a corrupt archive.
 */
export async function* tarStream(tree: HostTree): AsyncGenerator<Uint8Array> {
  for (const entry of tree.entries) {
    yield entryHeader(entry)
    if (entry.type !== "file") continue
    const fd = NodeFs.openSync(entry.source, NodeFs.constants.O_RDONLY | NodeFs.constants.O_NOFOLLOW)
    try {
      let remaining = entry.size
      while (remaining > 0) {
        const buffer = Buffer.allocUnsafe(Math.min(CHUNK, remaining))
        const n = NodeFs.readSync(fd, buffer, 0, buffer.length, null)
        if (n === 0) throw new Error(`${entry.source} shrank while it was being copied`)
        remaining -= n
        yield n === buffer.length ? buffer : buffer.subarray(0, n)
      }
    } finally {
      NodeFs.closeSync(fd)
    }
    const pad = padding(entry.size)
    if (pad.length > 0) yield pad
  }
  yield Buffer.alloc(BLOCK * 2)
}

/** A pax record whose value is raw bytes (xattr values need not be text). */
const paxRecordBytes = (key: string, value: Uint8Array): Buffer => {
  const fixed = Buffer.byteLength(` ${key}=`) + value.length + 1
  let digits = 1
  while (String(fixed + digits).length !== digits) digits++
  return Buffer.concat([Buffer.from(`${fixed + digits} ${key}=`), value, Buffer.from("\n")])
}

const layerTypeflags: Record<LayerEntry["type"], string> = {
  file: "0",
  hardlink: "1",
  symlink: "2",
  char: "3",
  block: "4",
  directory: "5",
  fifo: "6"
}

/**
 * The header blocks of one layer entry. Owners are numeric only (no user or group names, which would
 * depend on the host's databases); pax records carry what ustar cannot hold, and xattrs as
 * `SCHILY.xattr.NAME`, the form Docker, containerd and umoci read.
 */
export const layerEntryHeader = (entry: LayerEntry): Buffer => {
  const name = entry.type === "directory" ? `${entry.name}/` : entry.name
  const split = splitName(name)
  const linkFits = isPortable(entry.linkname) && entry.linkname.length <= 100
  const size = entry.type === "file" ? entry.size : 0
  const records: Array<Buffer> = []
  if (!linkFits) records.push(paxRecord("linkpath", entry.linkname))
  if (split === undefined) records.push(paxRecord("path", name))
  if (!fitsOctal(size, 12)) records.push(paxRecord("size", String(size)))
  if (!fitsOctal(entry.uid, 8)) records.push(paxRecord("uid", String(entry.uid)))
  if (!fitsOctal(entry.gid, 8)) records.push(paxRecord("gid", String(entry.gid)))
  for (const xattr of [...entry.xattrs].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    records.push(paxRecordBytes(`SCHILY.xattr.${xattr.name}`, xattr.value))
  }
  const special = entry.type === "char" || entry.type === "block"
  const main = header({
    name: split?.name ?? name.slice(-100).replace(/[^\x20-\x7e]/g, "_"),
    prefix: split?.prefix ?? "",
    mode: entry.mode,
    size,
    mtime: entry.mtime,
    typeflag: layerTypeflags[entry.type],
    linkname: linkFits ? entry.linkname : "",
    uid: entry.uid,
    gid: entry.gid,
    uname: "",
    gname: "",
    ...(special ? { devmajor: entry.devMajor, devminor: entry.devMinor } : {})
  })
  return withPax(main, records, entry.mtime, { uid: 0, gid: 0, uname: "", gname: "" })
}

/** The end-of-archive marker. */
export const endOfArchive = (): Buffer => Buffer.alloc(BLOCK * 2)
