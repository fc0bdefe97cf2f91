/**
 * The credential broker's `assurance=semantic` relay (domain/BrokerGrant.ts): a request goes upstream
 * only if one operation of the endpoint's grant describes it (method, route, path parameters, query,
 * headers, body), and its answer reaches the guest only once it was held whole and found to be what
 * that operation allows (status, content type, size, JSON shape) and to hold none of the endpoint's
 * credentials. Redirects are followed here, and only as the grant's `redirects` says, each hop
 * authorized again; a credential goes to the upstream's origin only.
 */
import { Either } from "effect"
import type * as NodeHttp from "node:http"
import * as NodeHttps from "node:https"
import {
  authorize,
  bodyLimit,
  type BrokerGrant,
  brokerHeaders,
  checkBody,
  checkResponse,
  type GrantDenial,
  type GrantOperation,
  isRedirect,
  redirectTarget,
  responseLimit
} from "../domain/BrokerGrant.ts"
import { hopHeaders } from "./HttpRelay.ts"

export interface SemanticCall {
  readonly grant: BrokerGrant
  readonly upstream: URL
  /** The upstream's path prefix, without a trailing slash. */
  readonly prefix: string
  readonly ca: ReadonlyArray<string> | undefined
  /** Every value the endpoint holds: none may come back in an answer. */
  readonly held: ReadonlyArray<string>
  readonly request: NodeHttp.IncomingMessage
  readonly response: NodeHttp.ServerResponse
  /** The request target as the guest sent it (a path and query, references unswapped). */
  readonly target: string
  /** Swaps references in a value (the caller has checked that every one resolves). */
  readonly swap: (text: string) => string
  /** Swaps the held references in the body (checked as the guest sent it). */
  readonly swapBody: (body: Buffer) => Buffer
  readonly deny: (status: number, denial: GrantDenial, operation?: GrantOperation) => void
  readonly allowed: (fields: Record<string, unknown>) => void
}

const splitTarget = (target: string) => {
  const q = target.indexOf("?")
  return q < 0
    ? { path: target, query: "" }
    : { path: target.slice(0, q), query: target.slice(q + 1) }
}

const hasBody = (request: NodeHttp.IncomingMessage) =>
  request.headers["transfer-encoding"] !== undefined || Number(request.headers["content-length"] ?? 0) > 0

/** Reads a stream whole, or stops at `limit` bytes (undefined: larger than that). */
const readUpTo = (stream: NodeHttp.IncomingMessage, limit: number) =>
  new Promise<Buffer | undefined>((resolve, reject) => {
    const chunks: Array<Buffer> = []
    let size = 0
    stream.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > limit) {
        stream.destroy()
        return resolve(undefined)
      }
      chunks.push(chunk)
    })
    stream.on("end", () => resolve(Buffer.concat(chunks)))
    stream.on("error", reject)
  })

interface Answer {
  readonly status: number
  readonly headers: NodeHttp.IncomingHttpHeaders
  readonly body: Buffer | undefined
}

const send = (
  url: URL,
  options: { method: string; headers: Record<string, string | Array<string>>; ca?: ReadonlyArray<string> },
  body: Buffer,
  limit: number
) =>
  new Promise<Answer>((resolve, reject) => {
    const outgoing = NodeHttps.request(url, {
      method: options.method,
      headers: {
        ...options.headers,
        host: url.host,
        "accept-encoding": "identity",
        "content-length": body.length
      },
      ...(options.ca === undefined ? {} : { ca: [...options.ca] })
    }, (answer) => {
      readUpTo(answer, limit).then(
        (read) => resolve({ status: answer.statusCode ?? 502, headers: answer.headers, body: read }),
        reject
      )
    })
    outgoing.on("error", reject)
    outgoing.end(body)
  })

/** The operation a request for `url` matches (the path under the upstream's prefix on its origin). */
const operationFor = (
  call: SemanticCall,
  method: string,
  url: URL,
  headers: NodeHttp.IncomingHttpHeaders
): Either.Either<GrantOperation, GrantDenial> => {
  let path = url.pathname
  if (url.origin === call.upstream.origin && call.prefix !== "") {
    if (!`${path}/`.startsWith(`${call.prefix}/`)) {
      return Either.left({ rule: "redirect-denied", message: "the redirect leaves the upstream's path" })
    }
    path = path.slice(call.prefix.length) || "/"
  }
  const decided = authorize(call.grant, {
    method,
    path,
    query: [...url.searchParams.entries()],
    headers,
    hasBody: false
  })
  return decided._tag === "Allowed" ? Either.right(decided.operation) : Either.left(decided.denial)
}

export const relaySemantic = async (call: SemanticCall): Promise<void> => {
  const { request } = call
  const started = Date.now()
  const method = request.method ?? "GET"
  const { path, query } = splitTarget(call.target)
  const decided = authorize(call.grant, {
    method,
    path,
    query: [...new URLSearchParams(query).entries()],
    headers: request.headers,
    hasBody: hasBody(request)
  })
  if (decided._tag === "Denied") return call.deny(403, decided.denial)
  const operation = decided.operation
  const body = await readUpTo(request, bodyLimit(operation))
  if (body === undefined) {
    return call.deny(
      413,
      { rule: "body-too-large", message: "the body is larger than the grant allows" },
      operation
    )
  }
  const bodyDenial = checkBody(operation, body)
  if (bodyDenial !== undefined) return call.deny(403, bodyDenial, operation)

  const credentialed: Record<string, string | Array<string>> = {}
  const plain: Record<string, string | Array<string>> = {}
  for (const [name, value] of Object.entries(request.headers)) {
    if (value === undefined || (brokerHeaders.has(name) && name !== "content-type")) continue
    const swapped = Array.isArray(value) ? value.map(call.swap) : call.swap(value)
    credentialed[name] = swapped
    if (JSON.stringify(swapped) === JSON.stringify(value)) plain[name] = value
  }
  const sent = call.swapBody(body)
  let url = new URL(`${call.upstream.origin}${call.prefix}${call.swap(call.target)}`)
  let current = operation
  let hops = 0
  for (;;) {
    const onUpstream = url.origin === call.upstream.origin
    let answer: Answer
    try {
      answer = await send(
        url,
        {
          method,
          headers: onUpstream ? credentialed : plain,
          ...(call.ca === undefined ? {} : { ca: call.ca })
        },
        hops === 0 ? sent : Buffer.alloc(0),
        responseLimit(current)
      )
    } catch (error) {
      return call.deny(502, { rule: "upstream-error", message: (error as Error).message }, current)
    }
    if (answer.body === undefined) {
      return call.deny(502, {
        rule: "response-too-large",
        message: "the upstream's answer is larger than the grant allows"
      }, current)
    }
    const location = answer.headers.location
    if (call.grant.redirects?.allow === true && isRedirect(answer.status, location)) {
      const next = redirectTarget(
        call.grant,
        { method, hadBody: body.length > 0, hops },
        call.upstream.origin,
        url,
        location!
      ).pipe(
        Either.flatMap((target) =>
          operationFor(call, method, target, request.headers).pipe(Either.map((op) => ({ target, op })))
        )
      )
      if (Either.isLeft(next)) return call.deny(502, next.left, current)
      url = next.right.target
      current = next.right.op
      hops += 1
      continue
    }
    const encoding = answer.headers["content-encoding"]
    if (encoding !== undefined && encoding !== "identity") {
      return call.deny(502, {
        rule: "response-encoding",
        message: `the upstream answered with content-encoding ${encoding}, which the broker cannot check`
      }, current)
    }
    const responseDenial = checkResponse(
      current,
      { status: answer.status, headers: answer.headers, body: answer.body },
      call.held
    )
    if (responseDenial !== undefined) return call.deny(502, responseDenial, current)
    const back: Record<string, string | Array<string>> = {}
    for (const [name, value] of Object.entries(answer.headers)) {
      if (value !== undefined && !hopHeaders.has(name) && name !== "content-length") back[name] = value
    }
    call.response.writeHead(answer.status, { ...back, "content-length": answer.body.length })
    call.response.end(answer.body)
    call.allowed({
      operation: current.name,
      effect: current.effect,
      method,
      status: answer.status,
      redirects: hops,
      bytes_out: body.length,
      bytes_in: answer.body.length,
      duration_ms: Date.now() - started
    })
    return
  }
}
