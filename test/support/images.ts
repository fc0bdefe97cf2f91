/**
 * Test images written with our own tar and OCI layout writers (no third-party code), pushed to a
 * loopback registry with skopeo. Includes a busybox image built from Debian's `busybox-static`
 * (/bin/busybox) that the QEMU tests boot.
 */
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import * as NodeZlib from "node:zlib"
import { pushImage, requireTool, type TestRegistry } from "./registry.ts"

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
    requireTool("zstd", "zstd")
    return NodeChild.execFileSync("zstd", ["-q", "-c", "-3"], { input: tar, maxBuffer: 1 << 30 })
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

/** Builds an OCI layout in a fresh directory and pushes it; returns `host/repo:tag` and the pushed digest. */
export const pushSpec = (
  registry: TestRegistry,
  scratch: string,
  repoTag: string,
  images: ReadonlyArray<ImageSpec>
): { readonly ref: string; readonly digest: string; readonly layout: string } => {
  const layout = NodePath.join(
    scratch,
    `layout-${repoTag.replace(/[^a-z0-9]/gi, "_")}-${NodeCrypto.randomBytes(3).toString("hex")}`
  )
  const digest = writeOciLayout(layout, images, "latest")
  pushImage(registry, `oci:${layout}:latest`, repoTag)
  return { ref: `${registry.host}/${repoTag}`, digest, layout }
}

/** The host's architecture in OCI terms. */
export const hostArchitecture = process.arch === "arm64" ? "arm64" : "amd64"

/** Layers of a busybox image from Debian's busybox-static: /bin/busybox, applet links, passwd and group. */
export const busyboxLayers = (): Array<Array<TarSpec>> => {
  const busybox = requireTool("busybox", "busybox-static")
  const applets = NodeChild.execFileSync(busybox, ["--list-full"], { encoding: "utf8" }).split("\n")
    .map((l) => l.trim()).filter((l) => l.length > 0 && l !== "bin/busybox")
  const dirs = new Set<string>([
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "etc",
    "root",
    "tmp",
    "proc",
    "sys",
    "dev",
    "run",
    "var",
    "var/tmp",
    "home"
  ])
  for (const applet of applets) dirs.add(NodePath.posix.dirname(applet))
  const base: Array<TarSpec> = [...dirs].sort().map((dir) => ({
    path: `${dir}/`,
    type: "dir" as const,
    mode: dir === "tmp" || dir === "var/tmp" ? 0o1777 : dir === "root" ? 0o700 : 0o755
  }))
  base.push({ path: "bin/busybox", content: NodeFs.readFileSync(busybox), mode: 0o755 })
  for (const applet of applets.sort()) base.push({ path: applet, type: "symlink", linkname: "/bin/busybox" })
  const etc: Array<TarSpec> = [
    {
      path: "etc/passwd",
      content: "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    },
    { path: "etc/group", content: "root:x:0:\nnogroup:x:65534:\n" },
    { path: "etc/shadow", content: "root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", mode: 0o640 },
    { path: "etc/hostname", content: "busybox\n" }
  ]
  return [base, etc]
}

export const busyboxConfig = {
  Env: ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
  Cmd: ["/bin/sh"]
}

/**
 * Builds the busybox image and pushes it to the registry as `repo:tag` (default `busybox:latest`).
 * Returns the reference to pull (`127.0.0.1:PORT/busybox:latest`) and the manifest digest.
 */
export const pushBusyboxImage = (
  registry: TestRegistry,
  scratch: string,
  repoTag = "busybox:latest"
): { readonly ref: string; readonly digest: string } => {
  const pushed = pushSpec(registry, scratch, repoTag, [{
    layers: busyboxLayers(),
    architecture: hostArchitecture,
    config: busyboxConfig
  }])
  return { ref: pushed.ref, digest: pushed.digest }
}

export interface TreeEntry {
  readonly type: "file" | "dir" | "symlink" | "char" | "block" | "fifo" | "socket"
  /** Permission and special bits. */
  readonly mode: number
  readonly uid: number
  readonly gid: number
  readonly link?: string
  readonly sha256?: string
}

const typeOfMode = (mode: number): TreeEntry["type"] => {
  switch (mode & 0o170000) {
    case 0o040000:
      return "dir"
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
      return "file"
  }
}

/** Reads an ext4 image's tree (types, modes, owners, link targets, content hashes) with debugfs. */
export const readExt4Tree = (image: string, scratch: string): Map<string, TreeEntry> => {
  requireTool("debugfs", "e2fsprogs")
  const dump = NodePath.join(scratch, `dump-${NodeCrypto.randomBytes(3).toString("hex")}`)
  NodeFs.mkdirSync(dump)
  NodeChild.execFileSync("debugfs", ["-R", `rdump / ${dump}`, image], { stdio: "pipe" })
  const tree = new Map<string, TreeEntry>()
  let level = ["/"]
  while (level.length > 0) {
    const script = level.map((dir) => `ls -p "${dir}"`).join("\n") + "\n"
    const scriptFile = NodePath.join(scratch, "ls.debugfs")
    NodeFs.writeFileSync(scriptFile, script)
    const out = NodeChild.execFileSync("debugfs", ["-f", scriptFile, image], {
      encoding: "utf8",
      stdio: "pipe",
      maxBuffer: 1 << 28
    })
    const next: Array<string> = []
    let current = "/"
    for (const line of out.split("\n")) {
      const cmd = /^debugfs: ls -p "(.*)"$/.exec(line)
      if (cmd !== null) {
        current = cmd[1]!
        continue
      }
      const m = /^\/(\d+)\/(\d+)\/(\d+)\/(\d+)\/(.*)\/(\d*)\/$/.exec(line)
      if (m === null) continue
      const name = m[5]!
      if (name === "." || name === ".." || (current === "/" && name === "lost+found")) continue
      const path = current === "/" ? `/${name}` : `${current}/${name}`
      const mode = parseInt(m[2]!, 8)
      const type = typeOfMode(mode)
      const local = NodePath.join(dump, path)
      const entry: TreeEntry = {
        type,
        mode: mode & 0o7777,
        uid: Number(m[3]),
        gid: Number(m[4]),
        ...(type === "symlink" ? { link: NodeFs.readlinkSync(local) } : {}),
        ...(type === "file"
          ? { sha256: NodeCrypto.createHash("sha256").update(NodeFs.readFileSync(local)).digest("hex") }
          : {})
      }
      tree.set(path, entry)
      if (type === "dir") next.push(path)
    }
    level = next
  }
  return tree
}

const unvis = (name: string) =>
  name.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))

/** Reads the mtree manifest `umoci unpack` writes (with rootless owners from `user.rootlesscontainers`). */
export const readUmociTree = (bundle: string): Map<string, TreeEntry> => {
  const mtreeFile = NodeFs.readdirSync(bundle).find((f) => f.endsWith(".mtree"))
  if (mtreeFile === undefined) throw new Error(`no mtree manifest in ${bundle}`)
  const tree = new Map<string, TreeEntry>()
  let defaults: Record<string, string> = {}
  const stack: Array<string> = []
  for (const raw of NodeFs.readFileSync(NodePath.join(bundle, mtreeFile), "utf8").split("\n")) {
    const line = raw.trim()
    if (line.length === 0 || line.startsWith("#")) continue
    const [first, ...rest] = line.split(/\s+/)
    const keywords: Record<string, string> = {}
    for (const kv of rest) {
      const eq = kv.indexOf("=")
      if (eq > 0) keywords[kv.slice(0, eq)] = kv.slice(eq + 1)
    }
    if (first === "/set") {
      defaults = { ...defaults, ...keywords }
      continue
    }
    if (first === "..") {
      stack.pop()
      continue
    }
    const k = { ...defaults, ...keywords }
    const name = unvis(first!)
    if (name === ".") {
      continue
    }
    const path = `/${[...stack, name].join("/")}`
    const type = k.type === "dir" ? "dir" : k.type === "link" ? "symlink" : k.type === "char"
      ? "char"
      : k.type === "block"
      ? "block"
      : k.type === "fifo"
      ? "fifo"
      : "file"
    let uid = 0
    let gid = 0
    const rootless = k["xattr.user.rootlesscontainers"]
    if (rootless !== undefined) {
      // A protobuf message: field 1 (uid) and field 2 (gid), varints.
      const bytes = Buffer.from(rootless, "base64")
      let i = 0
      while (i < bytes.length) {
        const tag = bytes[i++]!
        let value = 0
        let shift = 0
        for (;;) {
          const b = bytes[i++]!
          value += (b & 0x7f) * 2 ** shift
          shift += 7
          if ((b & 0x80) === 0) break
        }
        // 2^32-1 is the "unset" id: the owner stays root.
        if (tag >> 3 === 1 && value !== 4294967295) uid = value
        if (tag >> 3 === 2 && value !== 4294967295) gid = value
      }
    } else {
      uid = Number(k.uid ?? 0)
      gid = Number(k.gid ?? 0)
    }
    tree.set(path, {
      type,
      mode: parseInt(k.mode ?? "0", 8),
      uid,
      gid,
      ...(type === "symlink" ? { link: unvis(k.link ?? "") } : {}),
      ...(type === "file" && k.sha256digest !== undefined ? { sha256: k.sha256digest } : {})
    })
    if (type === "dir") stack.push(name)
  }
  return tree
}

/** `umoci unpack --rootless` of a layout's tag into a fresh bundle directory. */
export const umociUnpack = (layout: string, tag: string, bundle: string): Map<string, TreeEntry> => {
  requireTool("umoci", "umoci")
  NodeChild.execFileSync("umoci", ["unpack", "--rootless", "--image", `${layout}:${tag}`, bundle], {
    stdio: "pipe"
  })
  return readUmociTree(bundle)
}
