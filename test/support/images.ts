/**
 * Test images written with our own tar and OCI layout writers (no third-party code), pushed to a
 * loopback registry with skopeo. Includes a busybox image built from Debian's `busybox-static`
 * (/bin/busybox) that the QEMU tests boot.
 */
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { busyboxConfig, busyboxLayers } from "../../src/layers/image/BuiltinImages.ts"
import { type ImageSpec, writeOciLayout } from "../../src/layers/image/OciWriter.ts"
import { testCacheDir } from "./kernel.ts"
import { pushImage, requireTool, type TestRegistry } from "./registry.ts"

export { busyboxConfig, busyboxLayers } from "../../src/layers/image/BuiltinImages.ts"
export {
  compress,
  type Compression,
  type ImageSpec,
  tarOf,
  type TarSpec,
  writeOciLayout
} from "../../src/layers/image/OciWriter.ts"

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

/** A bookworm minbase root as a tarball, built once per machine. */
export const minbaseTarball = (): string => {
  const cached = NodePath.join(testCacheDir(), "bookworm-minbase-nodev.tar")
  if (!NodeFs.existsSync(cached)) {
    requireTool("mmdebstrap", "mmdebstrap")
    // mmdebstrap picks its output format from the name: keep the .tar ending.
    const temp = `${cached}.${process.pid}.tmp.tar`
    // No device nodes: the guest mounts its own /dev, and images with devices need --allow-devices.
    NodeChild.execFileSync("mmdebstrap", [
      "--variant=minbase",
      "--quiet",
      "--skip=output/dev",
      "bookworm",
      temp
    ], {
      stdio: "inherit"
    })
    NodeFs.renameSync(temp, cached)
  }
  return cached
}
