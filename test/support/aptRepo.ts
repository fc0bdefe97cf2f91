/**
 * A flat apt repository served over HTTP for guests: real Debian packages fetched on the host with
 * `apt-get download` (cached per machine), indexed here (Packages and Release, written from each
 * package's own control fields), and served on one of the host's addresses, which a guest under
 * egress mediation reaches once that address is allowed. Guests use it unsigned:
 * `deb [trusted=yes] http://ADDR:PORT ./`.
 */
import * as NodeChild from "node:child_process"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import type * as NodeNet from "node:net"
import * as NodePath from "node:path"
import { requireTool, testCacheDir } from "./kernel.ts"

export interface AptRepo {
  readonly url: string
  readonly address: string
  readonly port: number
  /** Paths asked for, in order. */
  readonly requests: ReadonlyArray<string>
  /** While false, the packages themselves answer 404 (the index is served): an install fails. */
  serving: boolean
  readonly close: () => Promise<void>
}

/** The .deb files of `packages` for this machine's architecture, downloaded once per machine. */
export const debianPackages = (packages: ReadonlyArray<string>): Array<string> => {
  requireTool("apt-get", "apt")
  requireTool("dpkg-deb", "dpkg")
  const dir = NodePath.join(testCacheDir(), "debs")
  NodeFs.mkdirSync(dir, { recursive: true })
  const present = (name: string) =>
    NodeFs.readdirSync(dir).find((f) => f.startsWith(`${name}_`) && f.endsWith(".deb"))
  const missing = packages.filter((name) => present(name) === undefined)
  if (missing.length > 0) {
    const temp = NodeFs.mkdtempSync(NodePath.join(dir, ".download-"))
    try {
      NodeChild.execFileSync("apt-get", ["download", "-q", ...missing], {
        cwd: temp,
        stdio: ["ignore", "ignore", "pipe"]
      })
      for (const file of NodeFs.readdirSync(temp)) {
        NodeFs.renameSync(NodePath.join(temp, file), NodePath.join(dir, file))
      }
    } finally {
      NodeFs.rmSync(temp, { recursive: true, force: true })
    }
  }
  return packages.map((name) => NodePath.join(dir, present(name)!))
}

const sha256 = (data: Buffer) => NodeCrypto.createHash("sha256").update(data).digest("hex")

/** The Packages index of `debs`: each package's control fields, then where and what the file is. */
const packagesIndex = (debs: ReadonlyArray<string>) =>
  debs.map((deb) => {
    const control = NodeChild.execFileSync("dpkg-deb", ["-f", deb], { encoding: "utf8" }).trimEnd()
    const bytes = NodeFs.readFileSync(deb)
    return `${control}\nFilename: ./${NodePath.basename(deb)}\nSize: ${bytes.length}\nSHA256: ${
      sha256(bytes)
    }\n`
  }).join("\n")

export const startAptRepo = async (address: string, debs: ReadonlyArray<string>): Promise<AptRepo> => {
  const packages = Buffer.from(packagesIndex(debs))
  const release = Buffer.from(
    `Date: ${new Date().toUTCString()}\nSHA256:\n ${sha256(packages)} ${packages.length} Packages\n`
  )
  const files = new Map<string, Buffer>([["/Packages", packages], ["/Release", release]])
  const requests: Array<string> = []
  const debByPath = new Map(debs.map((deb) => [`/${NodePath.basename(deb)}`, deb]))
  const repo = {
    url: "",
    address,
    port: 0,
    requests,
    serving: true,
    close: async () => {}
  } as { -readonly [K in keyof AptRepo]: AptRepo[K] }
  const server = NodeHttp.createServer((request, response) => {
    const path = decodeURIComponent(new URL(request.url ?? "/", "http://x").pathname)
    requests.push(path)
    const index = files.get(path)
    const deb = debByPath.get(path)
    if (index !== undefined) response.end(index)
    else if (deb !== undefined && repo.serving) NodeFs.createReadStream(deb).pipe(response)
    else {
      response.statusCode = 404
      response.end()
    }
  })
  await new Promise<void>((resolve, reject) => server.listen(0, address, resolve).on("error", reject))
  repo.port = (server.address() as NodeNet.AddressInfo).port
  repo.url = `http://${address}:${repo.port}`
  repo.close = () => new Promise<void>((resolve) => server.close(() => resolve()))
  return repo
}
