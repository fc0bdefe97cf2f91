/**
 * The TLS interceptor of `--egress mitm`: one detached host process per running mediated workspace,
 * beside its mediator (guest/host/egress.c). The mediator classifies each guest connection as it does
 * in `broker` mode; an allowed one that opens with a TLS handshake (and is not a passthrough
 * destination) comes here over a Unix socket, after one line naming the address the guest dialled and
 * the name it looked up.
 *
 * Here the guest's TLS ends, with a certificate for the name it asked for (its SNI) issued by a CA
 * minted when this process starts: an ECDSA P-256 key that lives only in this process's memory, its
 * certificate written to `caFile` for the start to install in the guest's trust stores. Each request
 * then goes on over a TLS connection of this process's own to exactly the address the guest dialled
 * (never a name resolved again: DNS rebinding stays defeated), the upstream's certificate checked
 * against the name. On the way:
 *
 * - credential swaps: a request to a swap's domains gets the swap's header set from a host-held secret
 *   (values came on stdin and live only here), whatever the guest put there;
 * - DNS over HTTPS (`/dns-query`, `application/dns-message`) is refused (403, signal `dns-over-https`).
 *
 * Audited in the workspace's egress log (names, never values, paths or bodies): `egress_mitm_request`,
 * `egress_mitm_handshake_error`, `egress_mitm_upstream_error`, `egress_deny`. The process ends when the
 * VM does (the VMM's pid file), or on SIGTERM from the host.
 */
import { Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import * as NodeHttps from "node:https"
import * as NodeNet from "node:net"
import { Duplex } from "node:stream"
import * as NodeTls from "node:tls"
import { hostMatches } from "../domain/Egress.ts"
import { isAlive } from "../layers/process/Processes.ts"
import { issueLeaf, mintAuthority } from "./Certificates.ts"
import { answerUpstreamFailure, hopHeaders, relayAnswer } from "./HttpRelay.ts"

export const MitmBridgeConfig = Schema.Struct({
  workspace: Schema.String,
  /** The Unix socket the mediator hands TLS flows to. */
  socket: Schema.String,
  /** The workspace's egress audit log (the mediator's). */
  auditLog: Schema.String,
  /** Where the CA's certificate (public) is written. */
  caFile: Schema.String,
  /** The VMM's pid file: this process ends once the pid it names is gone. */
  vmmPidFile: Schema.String,
  /** A PEM bundle trusted for upstreams besides the usual roots. */
  upstreamCa: Schema.optional(Schema.String),
  swaps: Schema.Array(Schema.Struct({
    name: Schema.String,
    domains: Schema.Array(Schema.String),
    header: Schema.String,
    format: Schema.String,
    secret: Schema.String
  }))
})
export type MitmBridgeConfig = typeof MitmBridgeConfig.Type

/** One intercepted connection: what the mediator said of it, and the name the guest's TLS asked for. */
interface Flow {
  readonly ip: string
  readonly port: number
  /** The name the guest looked up for this address, if it did. */
  readonly name: string | undefined
  sni: string | undefined
}

/** The preamble's longest line: an address, a port and a name of at most 255 bytes. */
const preambleLimit = 320

/** Reads the mediator's line off `socket`, then hands on a stream of the bytes after it. */
const afterPreamble = (socket: NodeNet.Socket, onFlow: (flow: Flow, stream: Duplex) => void) => {
  let buffered = Buffer.alloc(0)
  const onData = (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk])
    const end = buffered.indexOf(0x0a)
    if (end < 0) {
      if (buffered.length > preambleLimit) socket.destroy()
      return
    }
    socket.off("data", onData)
    const [ip, port, name] = buffered.subarray(0, end).toString("latin1").split(" ")
    if (ip === undefined || NodeNet.isIPv4(ip) === false || !/^\d{1,5}$/.test(port ?? "")) {
      return socket.destroy()
    }
    // A stream of its own: TLSSocket reads a net.Socket's handle directly and would miss the rest.
    const stream = new Duplex({
      read: () => socket.resume(),
      write: (data, _encoding, done) => socket.write(data, done),
      final: (done) => socket.end(done),
      destroy: (error, done) => {
        socket.destroy()
        done(error)
      }
    })
    socket.on("data", (data: Buffer) => {
      if (!stream.push(data)) socket.pause()
    })
    socket.on("end", () => stream.push(null))
    socket.on("error", (error) => stream.destroy(error))
    socket.on("close", () => stream.destroy())
    const rest = buffered.subarray(end + 1)
    if (rest.length > 0) stream.push(rest)
    onFlow({
      ip,
      port: Number(port),
      name: name === undefined || name === "-" ? undefined : name,
      sni: undefined
    }, stream)
  }
  socket.on("data", onData)
}

const isDnsOverHttps = (request: NodeHttp.IncomingMessage) => {
  const path = (request.url ?? "/").split("?")[0]!
  const types = `${request.headers["content-type"] ?? ""} ${request.headers.accept ?? ""}`.toLowerCase()
  return path === "/dns-query" || path.startsWith("/dns-query/") || types.includes("application/dns-message")
}

export const runMitmBridge = (config: MitmBridgeConfig, values: ReadonlyMap<string, string>) => {
  const audit = (event: string, fields: Record<string, unknown>) => {
    try {
      NodeFs.appendFileSync(
        config.auditLog,
        `${
          JSON.stringify({ ts: new Date().toISOString(), event, workspace: config.workspace, ...fields })
        }\n`,
        { mode: 0o600 }
      )
    } catch {
      // Best effort once the workspace directory is gone.
    }
  }
  const authority = mintAuthority(`microagent egress CA ${config.workspace}`)
  NodeFs.writeFileSync(config.caFile, authority.certPem, { mode: 0o644 })
  const upstreamCa = config.upstreamCa === undefined
    ? undefined
    : [...NodeTls.rootCertificates, NodeFs.readFileSync(config.upstreamCa, "utf8")]

  /** A leaf per name, issued once. */
  const contexts = new Map<string, NodeTls.SecureContext>()
  const contextFor = (host: string) => {
    const key = host.toLowerCase()
    let context = contexts.get(key)
    if (context === undefined) {
      const leaf = issueLeaf(authority, key)
      context = NodeTls.createSecureContext({ cert: leaf.certPem, key: leaf.keyPem })
      contexts.set(key, context)
    }
    return context
  }

  const flows = new WeakMap<object, Flow>()
  const where = (flow: Flow) => ({ dst: `${flow.ip}:${flow.port}`, host: flow.sni ?? flow.name ?? flow.ip })

  /** The request's headers as they go upstream: hop-by-hop ones dropped, the swaps applied. */
  const outgoingHeaders = (request: NodeHttp.IncomingMessage, host: string) => {
    const headers: Record<string, string | Array<string>> = {}
    for (const [name, value] of Object.entries(request.headers)) {
      if (value !== undefined && !hopHeaders.has(name)) headers[name] = value
    }
    const swapped: Array<string> = []
    const missing: Array<string> = []
    for (const swap of config.swaps) {
      if (!hostMatches(swap.domains, host)) continue
      const value = values.get(swap.secret)
      if (value === undefined) {
        missing.push(swap.name)
        continue
      }
      headers[swap.header.toLowerCase()] = swap.format.split("{key}").join(value)
      swapped.push(swap.name)
    }
    return { headers, swapped, missing }
  }

  const upstreamOptions = (flow: Flow) => ({
    host: flow.ip,
    port: flow.port,
    // The certificate is checked against the name the guest asked for, the address is the one it dialled.
    ...(flow.sni ?? flow.name ? { servername: flow.sni ?? flow.name } : {}),
    ...(upstreamCa === undefined ? {} : { ca: upstreamCa })
  })

  const http = NodeHttp.createServer((request, response) => {
    const flow = flows.get(request.socket)
    if (flow === undefined) return response.destroy()
    const started = Date.now()
    const method = request.method ?? "GET"
    const { dst, host } = where(flow)
    const refuse = (status: number, signal: string, message: string) => {
      audit("egress_deny", { proto: "https", dst, host, method, status, signal, mitm: true })
      request.resume()
      response.writeHead(status, { "content-type": "application/json", connection: "close" })
      response.end(JSON.stringify({ error: { type: "egress_denied", signal, message } }))
    }
    if (isDnsOverHttps(request)) {
      return refuse(403, "dns-over-https", "DNS over HTTPS is refused: the mediator is the only resolver")
    }
    const { headers, missing, swapped } = outgoingHeaders(request, host)
    if (missing.length > 0) {
      return refuse(403, "unresolved-secret-ref", `no value was given for the swap ${missing.join(", ")}`)
    }
    let bytesOut = 0
    request.on("data", (chunk: Buffer) => (bytesOut += chunk.length))
    const outgoing = NodeHttps.request({
      ...upstreamOptions(flow),
      method,
      path: request.url ?? "/",
      headers,
      agent: false
    }, (answer) => {
      let bytesIn = 0
      answer.on("data", (chunk: Buffer) => (bytesIn += chunk.length))
      answer.on("end", () =>
        audit("egress_mitm_request", {
          dst,
          host,
          method,
          status: answer.statusCode,
          swaps: swapped,
          bytes_out: bytesOut,
          bytes_in: bytesIn,
          duration_ms: Date.now() - started
        }))
      relayAnswer(answer, response)
    })
    outgoing.on("error", (error) => {
      audit("egress_mitm_upstream_error", { dst, host, method, error: error.message })
      answerUpstreamFailure(response, error)
    })
    request.pipe(outgoing)
  })
  // An upgrade (a WebSocket) goes on as bytes once its request, swaps applied, reached the upstream.
  http.on("upgrade", (request: NodeHttp.IncomingMessage, socket: Duplex, head: Buffer) => {
    const flow = flows.get(request.socket)
    if (flow === undefined) return socket.destroy()
    const { dst, host } = where(flow)
    const { headers, missing, swapped } = outgoingHeaders(request, host)
    if (missing.length > 0 || isDnsOverHttps(request)) return socket.destroy()
    headers.connection = request.headers.connection ?? "upgrade"
    if (request.headers.upgrade !== undefined) headers.upgrade = request.headers.upgrade
    const upstream = NodeTls.connect(upstreamOptions(flow), () => {
      const lines = Object.entries(headers).flatMap(([name, value]) =>
        (Array.isArray(value) ? value : [value]).map((v) => `${name}: ${v}`)
      )
      upstream.write(`${request.method} ${request.url} HTTP/1.1\r\n${lines.join("\r\n")}\r\n\r\n`)
      if (head.length > 0) upstream.write(head)
      audit("egress_mitm_request", { dst, host, method: request.method, upgrade: true, swaps: swapped })
      socket.pipe(upstream).pipe(socket)
    })
    upstream.on("error", (error) => {
      audit("egress_mitm_upstream_error", { dst, host, method: request.method, error: error.message })
      socket.destroy()
    })
    socket.on("error", () => upstream.destroy())
  })
  http.on("clientError", (_error, socket: Duplex) => socket.destroy())

  const server = NodeNet.createServer((socket) =>
    afterPreamble(socket, (flow, stream) => {
      const tls = new NodeTls.TLSSocket(stream, {
        isServer: true,
        ALPNProtocols: ["http/1.1"],
        SNICallback: (servername, done) => {
          flow.sni = servername
          done(null, contextFor(servername))
        },
        secureContext: contextFor(flow.name ?? flow.ip)
      })
      flows.set(tls, flow)
      tls.on("error", (error: Error) => {
        audit("egress_mitm_handshake_error", { ...where(flow), error: error.message })
        tls.destroy()
      })
      http.emit("connection", tls)
    })
  )
  audit("egress_mitm_start", {
    pid: process.pid,
    ca_sha256: authority.fingerprint256,
    swaps: config.swaps.map((s) => s.name)
  })
  const stop = (reason: string) => {
    server.close()
    NodeFs.rmSync(config.socket, { force: true })
    audit("egress_mitm_stop", { reason })
    process.exit(0)
  }
  // The VMM's pid appears once it runs; this process goes when it is gone, or if none came in 10 minutes.
  const begun = Date.now()
  let vmm: number | undefined
  setInterval(() => {
    if (vmm === undefined) {
      try {
        const pid = Number(NodeFs.readFileSync(config.vmmPidFile, "utf8").trim())
        if (Number.isInteger(pid) && pid > 0) vmm = pid
      } catch {
        // Not written yet.
      }
      if (vmm === undefined && Date.now() - begun > 600_000) stop("no VM came")
      return
    }
    if (!isAlive(vmm, undefined)) stop("the VM stopped")
  }, 250)
  process.on("SIGTERM", () => stop("stopped by the host"))
  process.on("SIGINT", () => stop("stopped by the host"))
  // Listening (the socket 0600) is what the caller waits for.
  NodeFs.rmSync(config.socket, { force: true })
  const umask = process.umask(0o077)
  return new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(config.socket, () => {
      process.umask(umask)
      resolve()
    })
  })
}
