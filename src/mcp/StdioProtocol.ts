/**
 * JSON-RPC 2.0 over stdio for the MCP server, written for hostile input: the framing is detected on the
 * first bytes (`{` or `[`: one message per line; anything else: `Content-Length: N` headers, as several
 * MCP clients send) and replies use the same framing. Every message is checked before the MCP server
 * sees it: unparseable input is answered `-32700` (id null), a message that is not a JSON-RPC request
 * or response `-32600`, an unknown method `-32601` with the caller's id. No input ends the server; only
 * the end of stdin does. Request ids are kept as the client sent them (numbers or strings).
 */
import * as McpSchema from "@effect/ai/McpSchema"
import { RpcServer } from "@effect/rpc"
import type { FromClientEncoded, FromServerEncoded } from "@effect/rpc/RpcMessage"
import { Effect, Either, Mailbox, ParseResult, Schema, type Sink, Stream } from "effect"

/** A frame larger than this is refused (and skipped) rather than buffered. */
export const maxFrameBytes = 64 * 1024 * 1024

export type Framing = "lines" | "content-length"

export type Frame =
  | { readonly _tag: "Message"; readonly text: string }
  | { readonly _tag: "Malformed"; readonly reason: string }

const isSpace = (byte: number) => byte === 0x20 || byte === 0x09 || byte === 0x0a || byte === 0x0d

/**
 * Cuts a byte stream into frames. Pure and incremental: `push` takes whatever arrived and returns the
 * frames it completed; `end` the last line of line framing when it had no newline.
 */
export class FrameReader {
  framing: Framing | undefined = undefined
  private buffer: Buffer = Buffer.alloc(0)
  /** Bytes still to drop: the rest of an oversized line (-1: up to the next newline) or body. */
  private skipping = 0
  /** Whether a message was read: until then, a client whose first line was garbage may still use lines. */
  private framed = false

  push(chunk: Uint8Array): Array<Frame> {
    this.buffer = this.buffer.length === 0 ? Buffer.from(chunk) : Buffer.concat([this.buffer, chunk])
    const frames: Array<Frame> = []
    for (;;) {
      if (this.framing === undefined) {
        let i = 0
        while (i < this.buffer.length && isSpace(this.buffer[i]!)) i++
        this.buffer = this.buffer.subarray(i)
        if (this.buffer.length === 0) return frames
        const first = this.buffer[0]
        this.framing = first === 0x7b || first === 0x5b ? "lines" : "content-length"
      }
      const frame = this.framing === "lines" ? this.nextLine() : this.nextBody()
      if (frame === undefined) return frames
      if (frame !== null) frames.push(frame)
      if (frame?._tag === "Message") this.framed = true
    }
  }

  end(): Array<Frame> {
    const rest = this.buffer.toString("utf8").trim()
    this.buffer = Buffer.alloc(0)
    return this.framing === "lines" && rest.length > 0 && this.skipping === 0
      ? [{ _tag: "Message", text: rest }]
      : []
  }

  /** The next frame; null when something was consumed without a frame; undefined when more input is needed. */
  private nextLine(): Frame | null | undefined {
    const newline = this.buffer.indexOf(0x0a)
    if (this.skipping !== 0) {
      if (newline === -1) {
        this.buffer = Buffer.alloc(0)
        return undefined
      }
      this.buffer = this.buffer.subarray(newline + 1)
      this.skipping = 0
      return null
    }
    if (newline === -1) {
      if (this.buffer.length <= maxFrameBytes) return undefined
      this.buffer = Buffer.alloc(0)
      this.skipping = -1
      return { _tag: "Malformed", reason: `a line longer than ${maxFrameBytes} bytes` }
    }
    const line = this.buffer.subarray(0, newline).toString("utf8").trim()
    this.buffer = this.buffer.subarray(newline + 1)
    return line.length === 0 ? null : { _tag: "Message", text: line }
  }

  private nextBody(): Frame | null | undefined {
    if (this.skipping > 0) {
      const n = Math.min(this.skipping, this.buffer.length)
      this.buffer = this.buffer.subarray(n)
      this.skipping -= n
      return this.skipping > 0 ? undefined : null
    }
    let i = 0
    while (i < this.buffer.length && isSpace(this.buffer[i]!)) i++
    this.buffer = this.buffer.subarray(i)
    if (this.buffer.length === 0) return undefined
    if (!this.framed && (this.buffer[0] === 0x7b || this.buffer[0] === 0x5b)) {
      // The first bytes were garbage, not headers; the client speaks lines.
      this.framing = "lines"
      return null
    }
    const newline = this.buffer.indexOf(0x0a)
    const firstLine = this.buffer.subarray(0, newline === -1 ? this.buffer.length : newline).toString(
      "latin1"
    )
    if ((newline !== -1 || firstLine.includes(":")) && !/^[A-Za-z0-9-]+:/.test(firstLine)) {
      // Not a header: drop the line, so that the next message can be read.
      if (newline === -1) return undefined
      this.buffer = this.buffer.subarray(newline + 1)
      return { _tag: "Malformed", reason: "a line that is neither a header nor a JSON message" }
    }
    const crlf = this.buffer.indexOf("\r\n\r\n")
    const lf = this.buffer.indexOf("\n\n")
    const end = crlf !== -1 && (lf === -1 || crlf < lf) ? crlf : lf
    if (end === -1) {
      if (this.buffer.length <= 64 * 1024) return undefined
      this.buffer = Buffer.alloc(0)
      return { _tag: "Malformed", reason: "a header block longer than 64 KiB" }
    }
    const header = this.buffer.subarray(0, end).toString("latin1")
    const bodyStart = end + (end === crlf ? 4 : 2)
    const match = /^content-length:[ \t]*(\d+)[ \t]*$/im.exec(header)
    if (match === null) {
      this.buffer = this.buffer.subarray(bodyStart)
      return { _tag: "Malformed", reason: "a header block without Content-Length" }
    }
    const length = Number(match[1])
    if (length > maxFrameBytes) {
      this.buffer = this.buffer.subarray(bodyStart)
      this.skipping = length
      return { _tag: "Malformed", reason: `a body of ${length} bytes, more than ${maxFrameBytes}` }
    }
    if (this.buffer.length < bodyStart + length) return undefined
    const text = this.buffer.subarray(bodyStart, bodyStart + length).toString("utf8")
    this.buffer = this.buffer.subarray(bodyStart + length)
    return { _tag: "Message", text }
  }
}

/** One outgoing message in the framing the client uses. */
export const frame = (framing: Framing | undefined, message: unknown): string => {
  const text = JSON.stringify(message)
  return framing === "content-length"
    ? `Content-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`
    : `${text}\n`
}

export const ParseError = -32700
export const InvalidRequest = -32600
export const MethodNotFound = -32601
export const InvalidParams = -32602
export const InternalError = -32603

type Id = string | number

const isId = (value: unknown): value is Id =>
  (typeof value === "number" && Number.isFinite(value)) || typeof value === "string"

const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

const requests: ReadonlyMap<string, { readonly payloadSchema: Schema.Schema<any, any, never> }> = McpSchema
  .ClientRequestRpcs.requests as any
const notificationTags: ReadonlySet<string> = new Set(McpSchema.ClientNotificationRpcs.requests.keys())

/** What the server learns from the protocol itself, besides the requests it serves. */
export interface ProtocolObserver {
  /** The client's `initialize` parameters, before the server answers them. */
  readonly onInitialize?: (params: Record<string, unknown>) => void
  /** `notifications/roots/list_changed`. */
  readonly onRootsChanged?: () => void
}

export interface StdioOptions {
  readonly stdin: Stream.Stream<Uint8Array, unknown>
  readonly stdout: Sink.Sink<void, string | Uint8Array, unknown, unknown>
  /** Runs once stdin has ended (or failed). */
  readonly onEnd: Effect.Effect<void>
  readonly observer?: ProtocolObserver
}

/** The Cause's encoded form, as the RPC server hands it over, reduced to what a reply says. */
const errorOf = (cause: unknown): { readonly code: number; readonly message: string } | "interrupted" => {
  const failures: Array<unknown> = []
  const defects: Array<unknown> = []
  let interrupted = false
  const walk = (node: unknown) => {
    if (!isObject(node)) return
    switch (node._tag) {
      case "Fail":
        failures.push(node.error)
        break
      case "Die":
        defects.push(node.defect)
        break
      case "Interrupt":
        interrupted = true
        break
      case "Sequential":
      case "Parallel":
        walk(node.left)
        walk(node.right)
    }
  }
  walk(cause)
  const failure = failures[0]
  if (isObject(failure) && typeof failure.code === "number" && typeof failure.message === "string") {
    return { code: failure.code, message: failure.message }
  }
  if (failures.length === 0 && defects.length === 0 && interrupted) return "interrupted"
  return { code: InternalError, message: "internal error" }
}

/** The stdio protocol the MCP server runs on; `onEnd` tells the caller that the client went away. */
export const makeStdioProtocol = (options: StdioOptions) =>
  RpcServer.Protocol.make((dispatch) =>
    Effect.gen(function*() {
      const reader = new FrameReader()
      const outbox = yield* Mailbox.make<string>()
      /** Our request ids (what the RPC server sees) to the client's. */
      const ids = new Map<string, Id>()
      let nextId = 0

      const reply = (message: unknown) => outbox.offer(frame(reader.framing, message))
      const error = (id: Id | null, code: number, message: string) =>
        reply({ jsonrpc: "2.0", id, error: { code, message } })

      const handle = (text: string): Effect.Effect<void> => {
        let value: unknown
        try {
          value = JSON.parse(text)
        } catch (cause) {
          return error(
            null,
            ParseError,
            `Parse error: ${cause instanceof Error ? cause.message : String(cause)}`
          )
        }
        if (Array.isArray(value)) {
          return error(
            null,
            InvalidRequest,
            "Invalid Request: batches are not supported; send one message at a time"
          )
        }
        if (!isObject(value)) return error(null, InvalidRequest, "Invalid Request: not a JSON-RPC object")
        const id = isId(value.id) ? value.id : null
        if (value.jsonrpc !== "2.0") {
          return error(id, InvalidRequest, 'Invalid Request: jsonrpc must be "2.0"')
        }
        if ("method" in value) {
          if (typeof value.method !== "string") {
            return error(id, InvalidRequest, "Invalid Request: method must be a string")
          }
          const hasId = "id" in value && value.id !== undefined
          if (hasId && id === null) {
            return error(null, InvalidRequest, "Invalid Request: id must be a number or a string")
          }
          const method = value.method
          if (value.params !== undefined && !isObject(value.params)) {
            return hasId ? error(id, InvalidParams, `Invalid params: ${method} takes an object`) : Effect.void
          }
          let params = value.params as Record<string, unknown> | undefined
          if (!hasId) {
            // Notifications get no answer, known or not.
            if (!notificationTags.has(method)) return Effect.void
            if (method === "notifications/roots/list_changed") options.observer?.onRootsChanged?.()
            if (method === "notifications/cancelled" && params !== undefined) {
              // The client names its own id; the server knows the request by ours.
              const cancelled = params.requestId
              const ours = [...ids.entries()].find(([, theirs]) => theirs === cancelled)?.[0]
              if (ours === undefined) return Effect.void
              params = { ...params, requestId: Number(ours) }
            }
            return dispatch(0, { _tag: "Request", id: "", tag: method, payload: params, headers: [] })
          }
          const rpc = requests.get(method)
          if (rpc === undefined) return error(id, MethodNotFound, `Method not found: ${method}`)
          // MCP lets a call to a tool without arguments leave them out; the server's schema does not.
          if (method === "tools/call" && params !== undefined && params.arguments === undefined) {
            params = { ...params, arguments: {} }
          }
          const valid = Schema.decodeUnknownEither(rpc.payloadSchema)(params)
          if (Either.isLeft(valid)) {
            return error(
              id,
              InvalidParams,
              `Invalid params: ${
                ParseResult.ArrayFormatter.formatErrorSync(valid.left).map((issue) =>
                  `${issue.path.length > 0 ? `${issue.path.join(".")}: ` : ""}${issue.message}`
                ).join("; ")
              }`
            )
          }
          if (method === "initialize" && params !== undefined) options.observer?.onInitialize?.(params)
          const ours = String(++nextId)
          ids.set(ours, id!)
          return dispatch(0, { _tag: "Request", id: ours, tag: method, payload: params, headers: [] })
        }
        if (id !== null && ("result" in value || "error" in value)) {
          // The client's answer to a request of ours (roots/list).
          const message = ("error" in value && value.error !== undefined
            ? {
              _tag: "Exit",
              requestId: String(id),
              exit: { _tag: "Failure", cause: { _tag: "Die", defect: value.error } }
            }
            : {
              _tag: "Exit",
              requestId: String(id),
              exit: { _tag: "Success", value: value.result }
            }) as unknown as FromClientEncoded
          return dispatch(0, message)
        }
        return error(id, InvalidRequest, "Invalid Request: neither a request, a notification nor a response")
      }

      const feed = (frames: ReadonlyArray<Frame>) =>
        Effect.forEach(frames, (f) =>
          f._tag === "Message"
            ? handle(f.text).pipe(
              Effect.catchAllCause((cause) => Effect.logError("mcp: a message could not be handled", cause))
            )
            : error(null, ParseError, `Parse error: ${f.reason}`), { discard: true })

      yield* options.stdin.pipe(
        Stream.runForEach((chunk) => feed(reader.push(chunk))),
        Effect.catchAllCause((cause) => Effect.logError("mcp: reading stdin failed", cause)),
        Effect.zipRight(Effect.suspend(() => feed(reader.end()))),
        Effect.ensuring(options.onEnd),
        Effect.forkScoped
      )
      yield* Mailbox.toStream(outbox).pipe(
        Stream.run(options.stdout),
        Effect.catchAllCause((cause) => Effect.logError("mcp: writing stdout failed", cause)),
        Effect.forkScoped
      )

      // Besides replies, the server sends its own requests and notifications through here.
      const send = (_clientId: number, message: FromServerEncoded): Effect.Effect<void> => {
        const response = message as FromServerEncoded | {
          readonly _tag: "Request"
          readonly id?: string
          readonly tag: string
          readonly payload: unknown
        }
        switch (response._tag) {
          case "Exit": {
            const id = ids.get(response.requestId)
            if (id === undefined) return Effect.void
            ids.delete(response.requestId)
            if (response.exit._tag === "Success") {
              return reply({ jsonrpc: "2.0", id, result: response.exit.value })
            }
            const failure = errorOf(response.exit.cause)
            // A cancelled request is not answered (MCP: the client has stopped waiting for it).
            if (failure === "interrupted") return Effect.void
            return error(id, failure.code, failure.message)
          }
          case "Request": {
            // A request (roots/list) or a notification (list_changed) of the server to the client.
            const id = response.id === "" || response.id === undefined
              ? undefined
              : /^\d+$/.test(String(response.id))
              ? Number(response.id)
              : String(response.id)
            return reply({
              jsonrpc: "2.0",
              method: response.tag,
              ...(response.payload === undefined ? {} : { params: response.payload }),
              ...(id === undefined ? {} : { id })
            })
          }
          case "Defect":
            return Effect.zipRight(
              Effect.logError("mcp: server defect", response.defect),
              error(null, InternalError, "internal error")
            )
          default:
            return Effect.void
        }
      }

      return {
        disconnects: yield* Mailbox.make<number>(),
        send,
        end: () => outbox.end.pipe(Effect.asVoid),
        clientIds: Effect.succeed(new Set([0])),
        initialMessage: Effect.succeedNone,
        supportsAck: false,
        supportsTransferables: false,
        supportsSpanPropagation: false
      }
    })
  )
