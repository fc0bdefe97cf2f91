/**
 * A streaming tar reader (POSIX ustar, pax extended headers, GNU long names, base-256 numbers).
 *
 * Push-based so it can sit behind a decompressor without buffering layers in memory: `write` takes
 * chunks of any size and calls the handler synchronously with each entry, its data and its end.
 */

export type TarEntryType =
  | "file"
  | "hardlink"
  | "symlink"
  | "char"
  | "block"
  | "directory"
  | "fifo"

export interface TarEntry {
  readonly path: string
  readonly type: TarEntryType
  readonly mode: number
  readonly uid: number
  readonly gid: number
  readonly size: number
  readonly mtime: number
  readonly linkname: string
  readonly devmajor: number
  readonly devminor: number
  /** Extended attributes from pax `SCHILY.xattr.*` records. */
  readonly xattrs: ReadonlyMap<string, Buffer>
}

export interface TarHandler {
  readonly entry: (entry: TarEntry) => void
  readonly data: (chunk: Buffer) => void
  readonly end: () => void
  /** Releases what an unfinished entry holds, when the stream fails part-way. */
  readonly abort?: () => void
}

export class TarFormatError extends Error {
  override readonly name = "TarFormatError"
}

const BLOCK = 512
/** Bounds on metadata records, so a hostile archive cannot make us buffer without limit. */
const maxMetaBytes = 1024 * 1024

const cString = (buf: Buffer, start: number, length: number): string => {
  const end = buf.indexOf(0, start)
  return buf.toString("utf8", start, end === -1 || end > start + length ? start + length : end)
}

const parseNumber = (buf: Buffer, start: number, length: number, field: string): number => {
  const first = buf[start]!
  if (first & 0x80) {
    // GNU base-256: big-endian two's complement in the remaining bits.
    if (first === 0xff) throw new TarFormatError(`negative ${field} in tar header`)
    let value = first & 0x7f
    for (let i = 1; i < length; i++) value = value * 256 + buf[start + i]!
    if (!Number.isSafeInteger(value)) throw new TarFormatError(`${field} too large in tar header`)
    return value
  }
  const text = buf.toString("latin1", start, start + length).replace(/[\0 ]+$/, "").trim()
  if (text.length === 0) return 0
  if (!/^[0-7]+$/.test(text)) throw new TarFormatError(`bad octal ${field} "${text}" in tar header`)
  return parseInt(text, 8)
}

const checksumOk = (header: Buffer): boolean => {
  const stored = parseNumber(header, 148, 8, "checksum")
  let unsigned = 0
  let signed = 0
  for (let i = 0; i < BLOCK; i++) {
    const byte = i >= 148 && i < 156 ? 32 : header[i]!
    unsigned += byte
    signed += byte > 127 ? byte - 256 : byte
  }
  return stored === unsigned || stored === signed
}

const isZeroBlock = (buf: Buffer): boolean => {
  for (let i = 0; i < BLOCK; i++) if (buf[i] !== 0) return false
  return true
}

interface Overrides {
  path?: string
  linkpath?: string
  size?: number
  uid?: number
  gid?: number
  mtime?: number
  devmajor?: number
  devminor?: number
  xattrs?: Map<string, Buffer>
}

const parsePax = (data: Buffer, into: Overrides): void => {
  let offset = 0
  while (offset < data.length) {
    const space = data.indexOf(0x20, offset)
    if (space === -1) break
    const length = parseInt(data.toString("latin1", offset, space), 10)
    if (!Number.isFinite(length) || length <= 0 || offset + length > data.length) {
      throw new TarFormatError("malformed pax extended header")
    }
    // The record is "<len> key=value\n"; values are raw bytes (xattrs can be binary).
    const record = data.subarray(space + 1, offset + length - 1)
    const eq = record.indexOf(0x3d)
    if (eq === -1) throw new TarFormatError("malformed pax record (no '=')")
    const key = record.toString("utf8", 0, eq)
    const value = record.subarray(eq + 1)
    const text = () => value.toString("utf8")
    const int = () => {
      const n = Number(text())
      if (!Number.isFinite(n) || n < 0) throw new TarFormatError(`bad pax ${key} "${text()}"`)
      return Math.floor(n)
    }
    if (key === "path") into.path = text()
    else if (key === "linkpath") into.linkpath = text()
    else if (key === "size") into.size = int()
    else if (key === "uid") into.uid = int()
    else if (key === "gid") into.gid = int()
    else if (key === "mtime") into.mtime = int()
    else if (key === "SCHILY.devmajor") into.devmajor = int()
    else if (key === "SCHILY.devminor") into.devminor = int()
    else if (key.startsWith("SCHILY.xattr.")) {
      ;(into.xattrs ??= new Map()).set(key.slice("SCHILY.xattr.".length), Buffer.from(value))
    } else if (key.startsWith("GNU.sparse.")) {
      throw new TarFormatError("sparse files in layers are not supported")
    }
    offset += length
  }
}

type State =
  | { readonly kind: "header" }
  | { readonly kind: "data"; remaining: number; padding: number }
  | {
    readonly kind: "meta"
    readonly type: string
    remaining: number
    padding: number
    readonly parts: Array<Buffer>
  }
  | { readonly kind: "skip"; remaining: number }
  | { readonly kind: "done" }

export class TarReader {
  private state: State = { kind: "header" }
  private readonly header = Buffer.alloc(BLOCK)
  private headerFill = 0
  private pending: Overrides = {}
  private global: Overrides = {}
  private zeroBlocks = 0
  private entries = 0

  constructor(private readonly handler: TarHandler) {}

  get finished(): boolean {
    return this.state.kind === "done"
  }

  get entryCount(): number {
    return this.entries
  }

  write(chunk: Buffer): void {
    let offset = 0
    while (offset < chunk.length) {
      const state = this.state
      switch (state.kind) {
        case "done":
          return
        case "header": {
          const take = Math.min(BLOCK - this.headerFill, chunk.length - offset)
          chunk.copy(this.header, this.headerFill, offset, offset + take)
          this.headerFill += take
          offset += take
          if (this.headerFill === BLOCK) {
            this.headerFill = 0
            this.onHeader()
          }
          break
        }
        case "data": {
          if (state.remaining > 0) {
            const take = Math.min(state.remaining, chunk.length - offset)
            this.handler.data(chunk.subarray(offset, offset + take))
            state.remaining -= take
            offset += take
            if (state.remaining === 0) {
              this.handler.end()
              if (state.padding === 0) this.state = { kind: "header" }
            }
          } else {
            const take = Math.min(state.padding, chunk.length - offset)
            state.padding -= take
            offset += take
            if (state.padding === 0) this.state = { kind: "header" }
          }
          break
        }
        case "meta": {
          if (state.remaining > 0) {
            const take = Math.min(state.remaining, chunk.length - offset)
            state.parts.push(Buffer.from(chunk.subarray(offset, offset + take)))
            state.remaining -= take
            offset += take
          } else {
            const take = Math.min(state.padding, chunk.length - offset)
            state.padding -= take
            offset += take
          }
          if (state.remaining === 0 && state.padding === 0) {
            this.state = { kind: "header" }
            this.onMeta(state.type, Buffer.concat(state.parts))
          }
          break
        }
        case "skip": {
          const take = Math.min(state.remaining, chunk.length - offset)
          state.remaining -= take
          offset += take
          if (state.remaining === 0) this.state = { kind: "header" }
          break
        }
      }
    }
  }

  /** Checks the archive ended cleanly; a truncated stream is an error, not a short layer. */
  finish(): void {
    if (this.state.kind === "done") return
    if (this.state.kind === "header" && this.headerFill === 0 && (this.zeroBlocks > 0 || this.entries > 0)) {
      // Some writers omit the end-of-archive blocks; accept an archive cut exactly at an entry boundary.
      this.state = { kind: "done" }
      return
    }
    if (this.state.kind === "header" && this.headerFill === 0 && this.entries === 0) {
      this.state = { kind: "done" }
      return
    }
    throw new TarFormatError("the tar stream ended in the middle of an entry (truncated layer?)")
  }

  private onMeta(type: string, data: Buffer): void {
    if (type === "x") parsePax(data, this.pending)
    else if (type === "g") parsePax(data, this.global)
    else if (type === "L") this.pending.path = data.toString("utf8").replace(/\0+$/, "")
    else if (type === "K") this.pending.linkpath = data.toString("utf8").replace(/\0+$/, "")
  }

  private onHeader(): void {
    const h = this.header
    if (isZeroBlock(h)) {
      this.zeroBlocks++
      if (this.zeroBlocks >= 2) this.state = { kind: "done" }
      return
    }
    this.zeroBlocks = 0
    if (!checksumOk(h)) throw new TarFormatError("bad tar header checksum (not a tar stream, or corrupted)")
    const typeflag = h[156] === 0 ? "0" : String.fromCharCode(h[156]!)
    const size = parseNumber(h, 124, 12, "size")
    const padding = (BLOCK - (size % BLOCK)) % BLOCK
    if (typeflag === "x" || typeflag === "g" || typeflag === "L" || typeflag === "K") {
      if (size > maxMetaBytes) throw new TarFormatError(`tar metadata record of ${size} bytes is too large`)
      if (size === 0) return
      this.state = { kind: "meta", type: typeflag, remaining: size, padding, parts: [] }
      return
    }
    const magic = h.toString("latin1", 257, 263)
    const ustar = magic === "ustar\0"
    let name = cString(h, 0, 100)
    if (ustar) {
      const prefix = cString(h, 345, 155)
      if (prefix.length > 0) name = `${prefix}/${name}`
    }
    // Global records carry defaults for ownership, times and xattrs, never a name or size.
    const { path: _gp, linkpath: _gl, size: _gs, ...global } = this.global
    const o: Overrides = { ...global, ...this.pending }
    this.pending = {}
    const path = o.path ?? name
    const linkname = o.linkpath ?? cString(h, 157, 100)
    const fullSize = o.size ?? size
    const fullPadding = (BLOCK - (fullSize % BLOCK)) % BLOCK
    let type: TarEntryType
    switch (typeflag) {
      case "0":
      case "7":
        type = "file"
        break
      case "1":
        type = "hardlink"
        break
      case "2":
        type = "symlink"
        break
      case "3":
        type = "char"
        break
      case "4":
        type = "block"
        break
      case "5":
        type = "directory"
        break
      case "6":
        type = "fifo"
        break
      case "S":
        throw new TarFormatError(`${path}: GNU sparse files in layers are not supported`)
      default:
        // Unknown or irrelevant types (volume labels, multi-volume parts): skip their data.
        if (fullSize + fullPadding > 0) this.state = { kind: "skip", remaining: fullSize + fullPadding }
        return
    }
    // Old tars mark directories only by a trailing slash.
    if (type === "file" && path.endsWith("/")) type = "directory"
    this.entries++
    const dataSize = type === "file" ? fullSize : 0
    this.handler.entry({
      path,
      type,
      mode: parseNumber(h, 100, 8, "mode") & 0o7777,
      uid: o.uid ?? parseNumber(h, 108, 8, "uid"),
      gid: o.gid ?? parseNumber(h, 116, 8, "gid"),
      size: dataSize,
      mtime: o.mtime ?? parseNumber(h, 136, 12, "mtime"),
      linkname,
      devmajor: o.devmajor ?? (ustar || magic === "ustar " ? parseNumber(h, 329, 8, "devmajor") : 0),
      devminor: o.devminor ?? (ustar || magic === "ustar " ? parseNumber(h, 337, 8, "devminor") : 0),
      xattrs: o.xattrs ?? new Map()
    })
    if (dataSize === 0) {
      this.handler.end()
      // Non-file entries with a size field (hard links in some writers) still carry data blocks.
      const skip = type === "file" ? fullPadding : fullSize + fullPadding
      if (skip > 0) this.state = { kind: "skip", remaining: skip }
      return
    }
    this.state = { kind: "data", remaining: dataSize, padding: fullPadding }
  }
}
