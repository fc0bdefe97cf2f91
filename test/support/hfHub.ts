/**
 * A loopback stand-in for the Hugging Face hub paths the model store uses: paths-info with LFS
 * sha256, `resolve/REV/PATH` answered with a 302 to a second path (as the hub sends files to its
 * CDN), bearer auth, Range, and a mode that cuts a download half way once.
 */
import { createHash } from "node:crypto"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"

export interface HubFile {
  readonly bytes: Buffer
  /** The sha256 paths-info reports (defaults to the real one); `null` reports no LFS entry. */
  readonly sha256?: string | null
}

export interface Hub {
  readonly endpoint: string
  /** `org/repo/rev/path` → file. */
  readonly files: Map<string, HubFile>
  /** Required bearer token, if any. */
  token: string | undefined
  /** Cut the next download after this many bytes (once). */
  cutNextAfter: number | undefined
  /** Range headers the CDN path received, in order. */
  readonly ranges: Array<string | undefined>
  readonly close: () => Promise<void>
}

export const startHub = async (): Promise<Hub> => {
  const hub: Omit<Hub, "endpoint" | "close"> = {
    files: new Map(),
    token: undefined,
    cutNextAfter: undefined,
    ranges: []
  }
  const authorized = (req: Http.IncomingMessage) =>
    hub.token === undefined || req.headers.authorization === `Bearer ${hub.token}`
  const server = Http.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://hub")
    const info = /^\/api\/models\/([^/]+)\/([^/]+)\/paths-info\/([^/]+)$/.exec(url.pathname)
    if (req.method === "POST" && info !== null) {
      if (!authorized(req)) return void res.writeHead(401).end()
      let body = ""
      req.on("data", (c) => (body += c))
      req.on("end", () => {
        const paths = new URLSearchParams(body).getAll("paths")
        const out = paths.flatMap((path) => {
          const file = hub.files.get(`${info[1]}/${info[2]}/${decodeURIComponent(info[3]!)}/${path}`)
          if (file === undefined) return []
          const sha = file.sha256 === undefined
            ? createHash("sha256").update(file.bytes).digest("hex")
            : file.sha256
          return [{
            type: "file",
            path,
            size: file.bytes.length,
            oid: "0".repeat(40),
            ...(sha === null ? {} : { lfs: { oid: sha, size: file.bytes.length, pointerSize: 134 } })
          }]
        })
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(out))
      })
      return
    }
    const resolve = /^\/([^/]+)\/([^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname)
    if (req.method === "GET" && resolve !== null) {
      if (!authorized(req)) return void res.writeHead(401).end()
      const key = `${resolve[1]}/${resolve[2]}/${decodeURIComponent(resolve[3]!)}/${
        decodeURIComponent(resolve[4]!)
      }`
      if (!hub.files.has(key)) return void res.writeHead(404).end()
      return void res.writeHead(302, { location: `/cdn/${encodeURIComponent(key)}` }).end()
    }
    const cdn = /^\/cdn\/(.+)$/.exec(url.pathname)
    if (req.method === "GET" && cdn !== null) {
      const file = hub.files.get(decodeURIComponent(cdn[1]!))
      if (file === undefined) return void res.writeHead(404).end()
      hub.ranges.push(req.headers.range)
      const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "")
      const start = range === null ? 0 : Number(range[1])
      if (start >= file.bytes.length && range !== null) return void res.writeHead(416).end()
      const body = file.bytes.subarray(start)
      res.writeHead(range === null ? 200 : 206, {
        "content-length": String(body.length),
        ...(range === null
          ? {}
          : { "content-range": `bytes ${start}-${file.bytes.length - 1}/${file.bytes.length}` })
      })
      if (hub.cutNextAfter !== undefined) {
        const cut = hub.cutNextAfter
        hub.cutNextAfter = undefined
        res.write(body.subarray(0, cut), () => res.destroy())
        return
      }
      res.end(body)
      return
    }
    res.writeHead(404).end()
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  return Object.assign(hub, {
    endpoint: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }) as Hub
}
