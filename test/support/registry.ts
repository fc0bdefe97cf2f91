/**
 * A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution) on a free loopback port,
 * optionally behind htpasswd (bcrypt, from apache2-utils). Images are pushed with skopeo.
 */
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"

/** Fails (never skips) when a tool is missing, naming the Debian package. */
export const requireTool = (tool: string, pkg: string): string => {
  const dirs = [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
  for (const dir of dirs) {
    const path = NodePath.join(dir, tool)
    try {
      NodeFs.accessSync(path, NodeFs.constants.X_OK)
      return path
    } catch {
      // Keep looking.
    }
  }
  throw new Error(`${tool} is required by this test but not installed: apt-get install ${pkg}`)
}

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = NodeNet.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address() as NodeNet.AddressInfo
      server.close(() => resolve(address.port))
    })
  })

export interface TestRegistry {
  /** `127.0.0.1:PORT` */
  readonly host: string
  readonly port: number
  readonly root: string
  readonly credentials?: { readonly username: string; readonly password: string } | undefined
  readonly stop: () => Promise<void>
}

const waitForPort = async (port: number, child: NodeChild.ChildProcess, log: () => string) => {
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited (${child.exitCode}): ${log()}`)
    const ok = await new Promise<boolean>((resolve) => {
      const socket = NodeNet.connect(port, "127.0.0.1")
      socket.once("connect", () => {
        socket.destroy()
        resolve(true)
      })
      socket.once("error", () => resolve(false))
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`docker-registry did not listen on ${port}: ${log()}`)
}

/** The scopes a token server was asked for, and the user it issued each token to ("" for anonymous). */
export interface TokenLog {
  readonly requests: Array<{ readonly scopes: ReadonlyArray<string>; readonly user: string }>
}

const base64url = (data: Buffer | string) => Buffer.from(data).toString("base64url")

/**
 * A token server as distribution's `auth: token` expects one: basic credentials in, an RS256 JWT out,
 * signed by a key whose self-signed certificate (made with openssl) the registry trusts and carried in
 * the token's `x5c` header. It grants every requested action to the configured user, nothing to anyone
 * else (the registry then refuses with 401), and refuses wrong credentials with 401 itself.
 */
const startTokenServer = async (
  root: string,
  login: { readonly username: string; readonly password: string },
  service: string,
  issuer: string
) => {
  requireTool("openssl", "openssl")
  const keyFile = NodePath.join(root, "token.key")
  const certFile = NodePath.join(root, "token.crt")
  NodeChild.execFileSync("openssl", [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    keyFile,
    "-out",
    certFile,
    "-days",
    "1",
    "-subj",
    "/CN=microagent-test-token-issuer"
  ], { stdio: "ignore" })
  const key = NodeFs.readFileSync(keyFile, "utf8")
  const der = NodeFs.readFileSync(certFile, "utf8").replace(/-----[^-]+-----/g, "").replace(/\s+/g, "")
  const log: TokenLog = { requests: [] }
  const NodeHttp = await import("node:http")
  const NodeCrypto = await import("node:crypto")
  const expected = `Basic ${Buffer.from(`${login.username}:${login.password}`).toString("base64")}`
  const server = NodeHttp.createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1")
    const basic = req.headers.authorization
    if (url.pathname !== "/token" || (basic !== undefined && basic !== expected)) {
      res.writeHead(401, { "content-type": "application/json" })
      res.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] }))
      return
    }
    const user = basic === undefined ? "" : login.username
    const scopes = url.searchParams.getAll("scope")
    log.requests.push({ scopes, user })
    const access = user === "" ? [] : scopes.flatMap((scope) => {
      const match = /^repository:(.+):([a-z,*]+)$/.exec(scope)
      return match === null ? [] : [{ type: "repository", name: match[1], actions: match[2]!.split(",") }]
    })
    const now = Math.floor(Date.now() / 1000)
    const header = base64url(JSON.stringify({ typ: "JWT", alg: "RS256", x5c: [der] }))
    const claims = base64url(JSON.stringify({
      iss: issuer,
      sub: user,
      aud: service,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: NodeCrypto.randomBytes(8).toString("hex"),
      access
    }))
    const signature = NodeCrypto.sign("RSA-SHA256", Buffer.from(`${header}.${claims}`), key).toString(
      "base64url"
    )
    const token = `${header}.${claims}.${signature}`
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify({ token, access_token: token, expires_in: 300 }))
  })
  const port = await freePort()
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
  return {
    realm: `http://127.0.0.1:${port}/token`,
    certFile,
    log,
    stop: async () => {
      server.closeAllConnections()
      await new Promise((r) => server.close(r))
    }
  }
}

/**
 * Starts a registry; with `auth`, every request needs basic credentials; with `token`, bearer tokens
 * from a token server this starts beside it (Docker Hub's scheme), whose requests `tokens` records.
 */
export const startRegistry = async (
  options: {
    readonly auth?: { readonly username: string; readonly password: string }
    readonly token?: { readonly username: string; readonly password: string }
  } = {}
): Promise<TestRegistry & { readonly tokens?: TokenLog }> => {
  const binary = requireTool("docker-registry", "docker-registry")
  const root = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-registry-"))
  const port = await freePort()
  let authBlock = ""
  const tokenServer = options.token === undefined
    ? undefined
    : await startTokenServer(root, options.token, "microagent-test-registry", "microagent-test-issuer")
  if (tokenServer !== undefined) {
    authBlock = [
      "auth:",
      "  token:",
      `    realm: ${tokenServer.realm}`,
      "    service: microagent-test-registry",
      "    issuer: microagent-test-issuer",
      `    rootcertbundle: ${tokenServer.certFile}`,
      ""
    ].join("\n")
  } else if (options.auth !== undefined) {
    requireTool("htpasswd", "apache2-utils")
    const line = NodeChild.execFileSync("htpasswd", ["-Bbn", options.auth.username, options.auth.password], {
      encoding: "utf8"
    }).trim()
    NodeFs.writeFileSync(NodePath.join(root, "htpasswd"), `${line}\n`)
    authBlock = `auth:\n  htpasswd:\n    realm: microagent-test\n    path: ${
      NodePath.join(root, "htpasswd")
    }\n`
  }
  const config = [
    "version: 0.1",
    "log:",
    "  level: error",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${NodePath.join(root, "data")}`,
    "  delete:",
    "    enabled: true",
    "http:",
    `  addr: 127.0.0.1:${port}`,
    authBlock
  ].join("\n")
  NodeFs.writeFileSync(NodePath.join(root, "config.yml"), config)
  const output: Array<string> = []
  const child = NodeChild.spawn(binary, ["serve", NodePath.join(root, "config.yml")], {
    stdio: ["ignore", "pipe", "pipe"]
  })
  child.stdout!.on("data", (b: Buffer) => output.push(b.toString()))
  child.stderr!.on("data", (b: Buffer) => output.push(b.toString()))
  await waitForPort(port, child, () => output.join("").slice(-2000))
  return {
    host: `127.0.0.1:${port}`,
    port,
    root,
    credentials: options.auth ?? options.token,
    ...(tokenServer === undefined ? {} : { tokens: tokenServer.log }),
    stop: async () => {
      await tokenServer?.stop()
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r))
        child.kill("SIGTERM")
        await exited
      }
      NodeFs.rmSync(root, { recursive: true, force: true })
    }
  }
}

/** `skopeo copy` from any transport (`oci:dir:tag`, `oci-archive:…`) to `registry/repo:tag`; `--all` keeps indexes. */
export const pushImage = (registry: TestRegistry, source: string, target: string): void => {
  requireTool("skopeo", "skopeo")
  const args = ["copy", "--quiet", "--all", "--dest-tls-verify=false"]
  if (registry.credentials !== undefined) {
    args.push("--dest-creds", `${registry.credentials.username}:${registry.credentials.password}`)
  }
  args.push(source, `docker://${registry.host}/${target}`)
  skopeo(args)
}

/** skopeo needs a signature policy; tests carry their own "accept anything" one. */
const policyFile = (): string => {
  const dir = NodePath.join(NodeOs.tmpdir(), "ma-skopeo-policy")
  const file = NodePath.join(dir, "policy.json")
  if (!NodeFs.existsSync(file)) {
    NodeFs.mkdirSync(dir, { recursive: true })
    NodeFs.writeFileSync(file, JSON.stringify({ default: [{ type: "insecureAcceptAnything" }] }))
  }
  return file
}

/** Runs skopeo with the test policy and returns stdout. */
export const skopeo = (args: ReadonlyArray<string>): string => {
  requireTool("skopeo", "skopeo")
  const withPolicy = ["--policy", policyFile(), ...args]
  return NodeChild.execFileSync("skopeo", withPolicy, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] })
}

/** `skopeo inspect` of an image in the registry (the manifest's digest, layers, platform). */
export const inspectImage = (registry: TestRegistry, target: string, raw = false): unknown => {
  const args = ["inspect", "--tls-verify=false"]
  if (raw) args.push("--raw")
  if (registry.credentials !== undefined) {
    args.push("--creds", `${registry.credentials.username}:${registry.credentials.password}`)
  }
  args.push(`docker://${registry.host}/${target}`)
  return JSON.parse(skopeo(args))
}

export interface TokenProxy {
  /** `127.0.0.1:PORT`: the registry API, behind bearer tokens. */
  readonly host: string
  /** Scopes tokens were issued for, and whether the request carried basic credentials. */
  readonly tokens: Array<{ readonly scope: string; readonly basic: string | undefined }>
  /** Range headers blob downloads were resumed with. */
  readonly ranges: Array<string>
  /** Requests the storage host received with an Authorization header (must stay empty). */
  readonly leakedAuthorization: Array<string>
  readonly stop: () => Promise<void>
}

/**
 * A registry front like Docker Hub's: bearer tokens from a separate realm (optionally only for basic
 * credentials), blobs redirected to a storage host on another name (`localhost`), and the first transfer
 * of every large blob cut in the middle so clients must resume with a Range request.
 */
export const startTokenProxy = async (
  upstream: TestRegistry,
  options: {
    readonly login?: { readonly username: string; readonly password: string }
    readonly cutAfter?: number
  } = {}
): Promise<TokenProxy> => {
  const NodeHttp = await import("node:http")
  const issued = new Set<string>()
  const tokens: TokenProxy["tokens"] = []
  const ranges: Array<string> = []
  const leakedAuthorization: Array<string> = []
  const cut = new Set<string>()
  const cutAfter = options.cutAfter ?? 64 * 1024
  const forward = (
    path: string,
    headers: Record<string, string>,
    res: import("node:http").ServerResponse,
    onBody?: (upstreamRes: import("node:http").IncomingMessage) => boolean
  ) => {
    const req = NodeHttp.request({ host: "127.0.0.1", port: upstream.port, path, headers }, (up) => {
      if (onBody?.(up) === true) return
      res.writeHead(up.statusCode ?? 502, up.headers)
      up.pipe(res)
    })
    req.on("error", () => res.destroy())
    req.end()
  }
  const storagePort = await freePort()
  const storage = NodeHttp.createServer((req, res) => {
    if (req.headers.authorization !== undefined) leakedAuthorization.push(req.url ?? "")
    const path = (req.url ?? "").replace(/^\/storage/, "")
    const headers: Record<string, string> = {}
    if (req.headers.range !== undefined) {
      headers.range = req.headers.range
      ranges.push(req.headers.range)
    }
    forward(path, headers, res, (up) => {
      const length = Number(up.headers["content-length"] ?? 0)
      if (up.statusCode !== 200 || length <= cutAfter || cut.has(path)) return false
      cut.add(path)
      // Send the headers and part of the body, then drop the connection.
      res.writeHead(200, up.headers)
      let sent = 0
      up.on("data", (chunk: Buffer) => {
        if (sent >= cutAfter) return
        const piece = chunk.subarray(0, Math.max(0, cutAfter - sent))
        sent += piece.length
        res.write(piece)
        if (sent >= cutAfter) {
          up.destroy()
          // Let the client read what was sent before the connection drops.
          setTimeout(() => res.socket?.destroy(), 100)
        }
      })
      return true
    })
  })
  const port = await freePort()
  const realm = `http://127.0.0.1:${port}/token`
  const api = NodeHttp.createServer((req, res) => {
    const url = new URL(req.url ?? "/", `http://127.0.0.1:${port}`)
    if (url.pathname === "/token") {
      const basic = req.headers.authorization
      if (options.login !== undefined) {
        const expected = `Basic ${
          Buffer.from(`${options.login.username}:${options.login.password}`).toString("base64")
        }`
        if (basic !== expected) {
          res.writeHead(401, { "content-type": "application/json" })
          res.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] }))
          return
        }
      }
      const token = `tok-${Math.random().toString(36).slice(2)}`
      issued.add(token)
      tokens.push({ scope: url.searchParams.get("scope") ?? "", basic })
      res.writeHead(200, { "content-type": "application/json" })
      res.end(JSON.stringify({ token, expires_in: 300 }))
      return
    }
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1]
    const repo = /^\/v2\/(.+?)\/(?:manifests|blobs|tags)\//.exec(url.pathname)?.[1] ?? ""
    if (bearer === undefined || !issued.has(bearer)) {
      res.writeHead(401, {
        "www-authenticate": `Bearer realm="${realm}",service="test-registry",scope="repository:${repo}:pull"`,
        "content-type": "application/json"
      })
      res.end(JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }))
      return
    }
    if (/\/blobs\/sha256:/.test(url.pathname)) {
      res.writeHead(307, { location: `http://localhost:${storagePort}/storage${url.pathname}` })
      res.end()
      return
    }
    const headers: Record<string, string> = {}
    if (req.headers.accept !== undefined) headers.accept = String(req.headers.accept)
    forward(url.pathname, headers, res)
  })
  await new Promise<void>((resolve) => storage.listen(storagePort, "127.0.0.1", resolve))
  await new Promise<void>((resolve) => api.listen(port, "127.0.0.1", resolve))
  return {
    host: `127.0.0.1:${port}`,
    tokens,
    ranges,
    leakedAuthorization,
    stop: async () => {
      storage.closeAllConnections()
      api.closeAllConnections()
      await Promise.all([new Promise((r) => storage.close(r)), new Promise((r) => api.close(r))])
    }
  }
}
