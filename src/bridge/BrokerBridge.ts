/**
 * The credential broker: one detached host process per running workspace with `--broker` endpoints.
 * Endpoint N's guest port arrives over its own guest channel (ChannelServer.ts); each connection is
 * served as HTTP. A request's `@secret:NAME` references, in header values, in the path and query, and
 * in the body (BodySwap.ts), are swapped for the values this process holds (they came on its stdin from the start that launched
 * it, and live only in its memory), and the request goes to the endpoint's upstream over a connection
 * (and TLS) of the broker's own. What the upstream answers goes back to the guest as it comes.
 *
 * Refused before anything is sent upstream: a reference to a secret the endpoint does not hold (403,
 * `unresolved-secret-ref`), a request target that is not a path under the upstream's (400), a request
 * that is not HTTP (400). Every request is audited in `broker-access.jsonl` with names, never values,
 * paths, headers or bodies; `capture` endpoints also write the request as the guest sent it (before the
 * swap) to `broker-capture.jsonl`, owner-only.
 *
 * CONNECT is answered 405 unless the endpoint is the proxy (`proxy`); then the named destination is
 * resolved here, an address that is not inside (domain/Inside.ts: loopback, private ranges, the host's
 * own addresses, …) is dialled exactly, and the tunnel carries bytes as they are (nothing is swapped
 * in a tunnel); an endpoint with `connect-allow` tunnels only to the destinations listed. Audited as
 * `broker_request_allow` with `mode: connect`, or denied with its rule (`inside`, `not-allowlisted`, …).
 *
 * The bridge ends when the VM does (or on SIGTERM from the host).
 */
import { Schema } from "effect"
import * as NodeDns from "node:dns"
import * as NodeFs from "node:fs"
import * as NodeHttp from "node:http"
import * as NodeHttps from "node:https"
import * as NodeNet from "node:net"
import * as NodeOs from "node:os"
import type { Duplex } from "node:stream"
import * as NodeTls from "node:tls"
import { connectAllowed, swapReferences } from "../domain/Broker.ts"
import { BrokerGrant } from "../domain/BrokerGrant.ts"
import { insideReason } from "../domain/Inside.ts"
import { isAlive } from "../layers/process/Processes.ts"
import { ReferenceSwap, swapBody } from "./BodySwap.ts"
import { serveChannel } from "./ChannelServer.ts"
import { answerUpstreamFailure, hopHeaders, relayAnswer } from "./HttpRelay.ts"
import { relaySemantic } from "./SemanticRelay.ts"

export const BrokerBridgeConfig = Schema.Struct({
  workspace: Schema.String,
  vmmPid: Schema.Number,
  vmmStartTime: Schema.optional(Schema.String),
  /** `broker-access.jsonl` in the workspace's directory. */
  auditLog: Schema.String,
  /** `broker-capture.jsonl`, written only for endpoints with `capture`. */
  captureLog: Schema.String,
  endpoints: Schema.Array(Schema.Struct({
    socket: Schema.String,
    upstream: Schema.String,
    secrets: Schema.Array(Schema.String),
    ca: Schema.optional(Schema.String),
    capture: Schema.Boolean,
    proxy: Schema.optionalWith(Schema.Boolean, { default: () => false }),
    connectAllow: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
    /** `semantic`: only the grant's operations, their answers checked whole (SemanticRelay.ts). */
    assurance: Schema.optionalWith(Schema.Literal("trusted-upstream", "semantic"), {
      default: () => "trusted-upstream" as const
    }),
    grant: Schema.optional(BrokerGrant),
    guestPort: Schema.Number
  }))
})
export type BrokerBridgeConfig = typeof BrokerBridgeConfig.Type

/** Bytes of a captured request body. */
const captureLimit = 1024 * 1024
/** A body up to this length goes upstream whole, with its length after the swap. */
const wholeBodyBytes = 1024 * 1024

const append = (file: string, record: Record<string, unknown>) => {
  try {
    NodeFs.appendFileSync(file, `${JSON.stringify(record)}\n`, { mode: 0o600 })
  } catch {
    // Best effort once the workspace directory is gone.
  }
}

export const runBrokerBridge = (config: BrokerBridgeConfig, values: ReadonlyMap<string, string>) => {
  const audit = (event: string, fields: Record<string, unknown>) =>
    append(config.auditLog, { ts: new Date().toISOString(), event, workspace: config.workspace, ...fields })
  const vmmAlive = () => isAlive(config.vmmPid, config.vmmStartTime)

  const serveEndpoint = (endpoint: BrokerBridgeConfig["endpoints"][number], index: number) => {
    const upstream = new URL(endpoint.upstream)
    const prefix = upstream.pathname.replace(/\/+$/, "")
    const held = new Map(endpoint.secrets.flatMap((name) => {
      const value = values.get(name)
      return value === undefined ? [] : [[name, value] as const]
    }))
    const ca = endpoint.ca === undefined
      ? undefined
      : [...NodeTls.rootCertificates, NodeFs.readFileSync(endpoint.ca, "utf8")]
    const base = { endpoint: index, mode: "terminate", assurance: endpoint.assurance, host: upstream.host }

    const server = NodeHttp.createServer((request, response) => {
      const started = Date.now()
      const method = request.method ?? "GET"
      const deny = (
        status: number,
        rule: string,
        refs: ReadonlyArray<string>,
        message: string,
        fields: Record<string, unknown> = {}
      ) => {
        audit("broker_request_deny", { ...base, method, status, rule, ...fields, secret_refs: refs })
        request.resume()
        if (response.headersSent) return void response.destroy()
        response.writeHead(status, { "content-type": "application/json", connection: "close" }).end(
          JSON.stringify({ error: { type: "broker_denied", rule, message } })
        )
      }
      const target = request.url ?? "/"
      // Origin form only: an absolute or authority form would name another host.
      if (!target.startsWith("/") || target.startsWith("//")) {
        return deny(400, "bad-target", [], "the request target must be a path")
      }
      const refs = new Set<string>()
      const unresolved = new Set<string>()
      const swap = (text: string) => {
        const result = swapReferences(text, held)
        result.refs.forEach((r) => refs.add(r))
        result.unresolved.forEach((r) => unresolved.add(r))
        return result.text
      }
      const path = swap(target)
      const headers: Record<string, string | Array<string>> = {}
      for (const [name, value] of Object.entries(request.headers)) {
        // Host is the broker's to set (the upstream's).
        if (value === undefined || hopHeaders.has(name) || name === "host") continue
        headers[name] = Array.isArray(value) ? value.map(swap) : swap(value)
      }
      if (unresolved.size > 0) {
        return deny(
          403,
          "unresolved-secret-ref",
          [...refs],
          `this endpoint holds no secret ${[...unresolved].join(", ")}`
        )
      }
      let url: URL
      try {
        url = new URL(`${upstream.origin}${prefix}${path}`)
      } catch {
        return deny(400, "bad-target", [...refs], "the request target is not a valid path")
      }
      // Dot segments would climb out of the upstream's path.
      if (url.origin !== upstream.origin || (prefix !== "" && !`${url.pathname}/`.startsWith(`${prefix}/`))) {
        return deny(400, "bad-target", [...refs], "the request target leaves the upstream's path")
      }
      if (endpoint.capture) {
        const body: Array<Buffer> = []
        let kept = 0
        request.on("data", (chunk: Buffer) => {
          if (kept < captureLimit) body.push(chunk.subarray(0, captureLimit - kept))
          kept += chunk.length
        })
        request.on("end", () =>
          append(config.captureLog, {
            ts: new Date().toISOString(),
            workspace: config.workspace,
            endpoint: index,
            method,
            path: target,
            headers: request.headers,
            body: Buffer.concat(body).toString("base64"),
            bodyBytes: kept
          }))
      }
      if (endpoint.assurance === "semantic" && endpoint.grant !== undefined) {
        return void relaySemantic({
          grant: endpoint.grant,
          upstream,
          prefix,
          ca,
          held: [...held.values()],
          request,
          response,
          target,
          swap,
          swapBody: (body) => swapBody(body, held, refs),
          deny: (status, denial, operation) =>
            deny(status, denial.rule, [...refs], denial.message, {
              reason: denial.message,
              ...(operation === undefined ? {} : { operation: operation.name, effect: operation.effect })
            }),
          allowed: (fields) => audit("broker_request_allow", { ...base, ...fields, secret_refs: [...refs] })
        }).catch(() => response.destroy())
      }
      let bytesOut = 0
      request.on("data", (chunk: Buffer) => (bytesOut += chunk.length))
      const send = url.protocol === "https:" ? NodeHttps.request : NodeHttp.request
      // The body's references are swapped as it streams; a body of known length is held whole (up to
      // a MiB) so that the upstream gets its new length, a longer or chunked one goes chunked.
      const length = request.headers["content-length"] === undefined
        ? undefined
        : Number(request.headers["content-length"])
      const chunked = request.headers["transfer-encoding"] !== undefined
      const whole = !chunked && length !== undefined && length <= wholeBodyBytes
      if (!whole) delete headers["content-length"]
      const body = request.pipe(new ReferenceSwap(held, refs))
      const outgoing = send(url, {
        method,
        headers: { ...headers, host: url.host },
        ...(ca === undefined ? {} : { ca })
      }, (answer) => {
        let bytesIn = 0
        answer.on("data", (chunk: Buffer) => (bytesIn += chunk.length))
        answer.on("end", () =>
          audit("broker_request_allow", {
            ...base,
            method,
            status: answer.statusCode,
            bytes_out: bytesOut,
            bytes_in: bytesIn,
            duration_ms: Date.now() - started,
            secret_refs: [...refs]
          }))
        relayAnswer(answer, response)
      })
      outgoing.on("error", (error) => {
        audit("broker_request_deny", {
          ...base,
          method,
          status: 502,
          rule: "upstream-error",
          reason: error.message,
          secret_refs: [...refs]
        })
        answerUpstreamFailure(response, error)
      })
      if (!whole) {
        body.pipe(outgoing)
      } else {
        const chunks: Array<Buffer> = []
        body.on("data", (chunk: Buffer) => chunks.push(chunk))
        body.on("end", () => {
          const swapped = Buffer.concat(chunks)
          outgoing.setHeader("content-length", swapped.length)
          outgoing.end(swapped)
        })
      }
    })
    server.on("connect", (request: NodeHttp.IncomingMessage, socket: Duplex, head: Buffer) => {
      const started = Date.now()
      const target = request.url ?? ""
      const connectBase = { ...base, mode: "connect", method: "CONNECT", host: target, secret_refs: [] }
      const refuse = (status: number, reason: string, rule: string, message: string) => {
        audit("broker_request_deny", {
          ...connectBase,
          status,
          rule,
          ...(message === "" ? {} : { reason: message })
        })
        socket.end(`HTTP/1.1 ${status} ${reason}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`)
      }
      if (!endpoint.proxy) return refuse(405, "Method Not Allowed", "connect-disabled", "")
      const authority = /^([A-Za-z0-9.-]{1,253}|\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(target)
      const port = Number(authority?.[2])
      if (authority === null || port < 1 || port > 65535) {
        return refuse(400, "Bad Request", "bad-target", "CONNECT takes host:port")
      }
      NodeDns.lookup(authority[1]!, { all: true, family: 4 }, (error, addresses) => {
        if (error !== null) return refuse(502, "Bad Gateway", "upstream-error", error.message)
        const own = Object.values(NodeOs.networkInterfaces()).flatMap((list) => list ?? []).map((a) =>
          a.address
        )
        const outsiders = addresses.filter((a) => insideReason(a.address, own) === undefined)
        if (outsiders.length === 0) {
          const reason = insideReason(addresses[0]?.address ?? "", own)
          return refuse(403, "Forbidden", "inside", `${target} is inside (${reason})`)
        }
        const outside = outsiders.find((a) =>
          connectAllowed(endpoint.connectAllow, { host: authority[1]!, address: a.address, port })
        )
        if (outside === undefined) {
          return refuse(
            403,
            "Forbidden",
            "not-allowlisted",
            `${target} is not on the endpoint's connect-allow`
          )
        }
        const upstream = NodeNet.connect({ host: outside.address, port })
        let bytesOut = head.length
        let bytesIn = 0
        let established = false
        upstream.once("connect", () => {
          established = true
          socket.write("HTTP/1.1 200 Connection Established\r\n\r\n")
          if (head.length > 0) upstream.write(head)
          socket.on("data", (chunk: Buffer) => (bytesOut += chunk.length))
          upstream.on("data", (chunk: Buffer) => (bytesIn += chunk.length))
          socket.pipe(upstream).pipe(socket)
        })
        upstream.once("error", (failure) => {
          if (!established) refuse(502, "Bad Gateway", "upstream-error", failure.message)
          else socket.destroy()
        })
        socket.on("error", () => upstream.destroy())
        upstream.once("close", () => {
          if (!established) return
          socket.end()
          audit("broker_request_allow", {
            ...connectBase,
            dst: `${outside.address}:${port}`,
            status: 200,
            bytes_out: bytesOut,
            bytes_in: bytesIn,
            duration_ms: Date.now() - started
          })
        })
      })
    })
    server.on("clientError", (_error, socket: Duplex) => {
      audit("broker_request_deny", { ...base, status: 400, rule: "malformed-request", secret_refs: [] })
      if (socket.writable) {
        socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
      }
      socket.destroy()
    })
    return serveChannel({
      socket: endpoint.socket,
      vmmAlive,
      onConnection: (guest) => server.emit("connection", guest),
      onMalformed: () =>
        audit("broker_channel_reset", { ...base, reason: "a malformed frame from the guest" })
    })
  }

  const channels = config.endpoints.map(serveEndpoint)
  audit("broker_start", {
    pid: process.pid,
    endpoints: config.endpoints.map((e) => ({ upstream: e.upstream, secrets: e.secrets, port: e.guestPort }))
  })
  const stop = (reason: string) => {
    for (const channel of channels) channel.stop()
    audit("broker_stop", { reason })
    process.exit(0)
  }
  setInterval(() => {
    if (!vmmAlive()) stop("the VM stopped")
  }, 1000)
  process.on("SIGTERM", () => stop("stopped by the host"))
  process.on("SIGINT", () => stop("stopped by the host"))
}
