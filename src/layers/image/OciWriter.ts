/**
 * Writes OCI image layouts: tar layers (ustar, with pax records for long names and xattrs), their
 * compressed blobs, the config, the manifest (or a multi-arch index) and `index.json`. Used for the
 * built-in images and by the tests that build images of their own. Synchronous: layouts are small.
 */
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as NodeZlib from "node:zlib"

export interface TarSpec {
  readonly path: string
  readonly type?: "file" | "dir" | "symlink" | "hardlink" | "char" | "block" | "fifo"
  readonly mode?: number
  readonly uid?: number
  readonly gid?: number
  readonly content?: string | Buffer
  readonly linkname?: string
  readonly devmajor?: number
  readonly devminor?: number
  readonly xattrs?: Readonly<Record<string, string>>
  readonly mtime?: number
}

const typeFlags = {
  file: "0",
  hardlink: "1",
  symlink: "2",
  char: "3",
  block: "4",
  dir: "5",
  fifo: "6"
} as const

const octal = (value: number, width: number) => value.toString(8).padStart(width - 1, "0") + "\0"

const header = (name: string, spec: {
  mode: number
  uid: number
  gid: number
  size: number
  mtime: number
  flag: string
  linkname: string
  devmajor: number
  devminor: number
}): Buffer => {
  const h = Buffer.alloc(512)
  h.write(name.slice(0, 100), 0, "utf8")
  h.write(octal(spec.mode, 8), 100, "latin1")
  h.write(octal(spec.uid, 8), 108, "latin1")
  h.write(octal(spec.gid, 8), 116, "latin1")
  h.write(octal(spec.size, 12), 124, "latin1")
  h.write(octal(spec.mtime, 12), 136, "latin1")
  h.write("        ", 148, "latin1")
  h.write(spec.flag, 156, "latin1")
  h.write(spec.linkname.slice(0, 100), 157, "utf8")
  h.write("ustar\0", 257, "latin1")
  h.write("00", 263, "latin1")
  h.write(octal(spec.devmajor, 8), 329, "latin1")
  h.write(octal(spec.devminor, 8), 337, "latin1")
  let sum = 0
  for (const byte of h) sum += byte
  h.write(sum.toString(8).padStart(6, "0") + "\0 ", 148, "latin1")
  return h
}

const pad = (length: number) => Buffer.alloc((512 - (length % 512)) % 512)

const paxRecord = (key: string, value: Buffer): Buffer => {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from("\n")])
  let length = body.length + 1
  while (String(length).length + body.length !== length) length = String(length).length + body.length
  return Buffer.concat([Buffer.from(String(length)), body])
}

/** A tar stream (ustar, with pax records for long names and xattrs) of the given entries. */
export const tarOf = (entries: ReadonlyArray<TarSpec>): Buffer => {
  const parts: Array<Buffer> = []
  for (const entry of entries) {
    const type = entry.type ?? "file"
    const content = type === "file" ? Buffer.from(entry.content ?? "") : Buffer.alloc(0)
    const linkname = entry.linkname ?? ""
    const pax: Array<Buffer> = []
    if (Buffer.byteLength(entry.path) > 99) pax.push(paxRecord("path", Buffer.from(entry.path)))
    if (Buffer.byteLength(linkname) > 99) pax.push(paxRecord("linkpath", Buffer.from(linkname)))
    for (const [key, value] of Object.entries(entry.xattrs ?? {})) {
      pax.push(paxRecord(`SCHILY.xattr.${key}`, Buffer.from(value, "binary")))
    }
    const common = {
      uid: entry.uid ?? 0,
      gid: entry.gid ?? 0,
      mtime: entry.mtime ?? 1_700_000_000,
      devmajor: entry.devmajor ?? 0,
      devminor: entry.devminor ?? 0
    }
    if (pax.length > 0) {
      const data = Buffer.concat(pax)
      parts.push(
        header("PaxHeaders/x", { ...common, mode: 0o644, size: data.length, flag: "x", linkname: "" }),
        data,
        pad(data.length)
      )
    }
    parts.push(header(entry.path, {
      ...common,
      mode: entry.mode ?? (type === "dir" ? 0o755 : type === "symlink" ? 0o777 : 0o644),
      size: content.length,
      flag: typeFlags[type],
      linkname
    }))
    parts.push(content, pad(content.length))
  }
  parts.push(Buffer.alloc(1024))
  return Buffer.concat(parts)
}

export type Compression = "gzip" | "zstd" | "none"

export const compress = (tar: Buffer, compression: Compression): Buffer => {
  if (compression === "gzip") return NodeZlib.gzipSync(tar, { level: 6 })
  if (compression === "zstd") {
    try {
      return NodeChild.execFileSync("zstd", ["-q", "-c", "-3"], { input: tar, maxBuffer: 1 << 30 })
    } catch (error) {
      throw new Error(`zstd failed (is Debian's zstd package installed?): ${String(error)}`)
    }
  }
  return tar
}

const layerMediaType: Record<Compression, string> = {
  gzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  zstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  none: "application/vnd.oci.image.layer.v1.tar"
}

const sha256 = (data: Buffer) => `sha256:${NodeCrypto.createHash("sha256").update(data).digest("hex")}`

export interface ImageSpec {
  readonly layers: ReadonlyArray<ReadonlyArray<TarSpec> | Buffer>
  readonly compression?: Compression
  readonly architecture?: string
  readonly variant?: string
  readonly config?: Record<string, unknown>
}

const writeBlob = (layout: string, data: Buffer) => {
  const digest = sha256(data)
  const path = NodePath.join(layout, "blobs", "sha256", digest.slice(7))
  if (!NodeFs.existsSync(path)) NodeFs.writeFileSync(path, data)
  return { digest, size: data.length }
}

const writeManifest = (layout: string, image: ImageSpec) => {
  const compression = image.compression ?? "gzip"
  const layers = image.layers.map((layer) => {
    const tar = Buffer.isBuffer(layer) ? layer : tarOf(layer)
    const blob = compress(tar, compression)
    return { ...writeBlob(layout, blob), mediaType: layerMediaType[compression], diffId: sha256(tar) }
  })
  const architecture = image.architecture ?? "amd64"
  const config = Buffer.from(JSON.stringify({
    architecture,
    os: "linux",
    ...(image.variant !== undefined ? { variant: image.variant } : {}),
    config: image.config ?? {},
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
    history: layers.map(() => ({ created_by: "microagent test" }))
  }))
  const configBlob = writeBlob(layout, config)
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...configBlob },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size }))
  }))
  return {
    ...writeBlob(layout, manifest),
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    platform: {
      architecture,
      os: "linux",
      ...(image.variant !== undefined ? { variant: image.variant } : {})
    }
  }
}

/**
 * Writes an OCI image layout with one image, or (several specs) a multi-arch index, tagged `tag`.
 * Returns the digest of what the tag points at.
 */
export const writeOciLayout = (layout: string, images: ReadonlyArray<ImageSpec>, tag = "latest"): string => {
  NodeFs.mkdirSync(NodePath.join(layout, "blobs", "sha256"), { recursive: true })
  NodeFs.writeFileSync(NodePath.join(layout, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }))
  const manifests = images.map((image) => writeManifest(layout, image))
  let top: { digest: string; size: number; mediaType: string }
  if (manifests.length === 1) {
    const { platform: _platform, ...descriptor } = manifests[0]!
    top = descriptor
  } else {
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests
    }))
    top = { ...writeBlob(layout, index), mediaType: "application/vnd.oci.image.index.v1+json" }
  }
  const indexPath = NodePath.join(layout, "index.json")
  const existing = NodeFs.existsSync(indexPath)
    ? (JSON.parse(NodeFs.readFileSync(indexPath, "utf8")) as { manifests: Array<unknown> }).manifests
    : []
  NodeFs.writeFileSync(
    indexPath,
    JSON.stringify({
      schemaVersion: 2,
      manifests: [...existing, { ...top, annotations: { "org.opencontainers.image.ref.name": tag } }]
    })
  )
  return top.digest
}

/**
 * Writes an OCI archive (a tar of an OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/…`)
 * streaming each blob from its file, into a temporary file renamed to `output` once complete.
 */
export const writeOciArchive = (
  output: string,
  index: Uint8Array,
  blobs: ReadonlyArray<{ readonly digest: string; readonly file: string }>
): void => {
  const partial = `${output}.partial-${process.pid}-${Date.now().toString(36)}`
  const fd = NodeFs.openSync(partial, "wx", 0o644)
  const common = { uid: 0, gid: 0, mtime: 0, devmajor: 0, devminor: 0, linkname: "" }
  const write = (bytes: Uint8Array) => {
    let done = 0
    while (done < bytes.length) done += NodeFs.writeSync(fd, bytes, done, bytes.length - done)
  }
  try {
    const small = (name: string, content: Uint8Array) => {
      write(header(name, { ...common, mode: 0o644, size: content.length, flag: "0" }))
      write(content)
      write(pad(content.length))
    }
    small("oci-layout", Buffer.from(JSON.stringify({ imageLayoutVersion: "1.0.0" })))
    small("index.json", index)
    for (const dir of ["blobs/", "blobs/sha256/"]) {
      write(header(dir, { ...common, mode: 0o755, size: 0, flag: "5" }))
    }
    const buffer = Buffer.allocUnsafe(1024 * 1024)
    for (const blob of new Map(blobs.map((b) => [b.digest, b])).values()) {
      const size = NodeFs.statSync(blob.file).size
      write(
        header(`blobs/sha256/${blob.digest.replace(/^sha256:/, "")}`, {
          ...common,
          mode: 0o644,
          size,
          flag: "0"
        })
      )
      const input = NodeFs.openSync(blob.file, "r")
      try {
        let copied = 0
        for (;;) {
          const n = NodeFs.readSync(input, buffer, 0, buffer.length, null)
          if (n === 0) break
          write(buffer.subarray(0, n))
          copied += n
        }
        if (copied !== size) throw new Error(`${blob.file} changed while it was archived`)
      } finally {
        NodeFs.closeSync(input)
      }
      write(pad(size))
    }
    write(Buffer.alloc(1024))
    NodeFs.fsyncSync(fd)
    NodeFs.closeSync(fd)
    NodeFs.renameSync(partial, output)
  } catch (cause) {
    try {
      NodeFs.closeSync(fd)
    } catch {
      // Already closed.
    }
    NodeFs.rmSync(partial, { force: true })
    throw cause
  }
}
