/**
 * One connection to the guest agent and the streams multiplexed on it: frames from the socket are
 * decoded and handed to their stream's inbox; stream 0 carries the handshake and connection errors.
 *
 * Incoming data is bounded by the credit this side grants (`HOST_WINDOW` per stream, topped up as the
 * consumer pulls), outgoing data by the agent's credit, so neither side buffers without bound.
 */
import { Cause, Duration, Effect, Either, Option, Stream } from "effect"
import * as Net from "node:net"
import {
  type AgentInfo,
  type GuestError,
  GuestProtocolError,
  GuestRemoteError,
  GuestUnreachable
} from "../../../services/GuestChannel.ts"
import { decodeMessage, frameBytes, type Message } from "./messages.ts"
import { FrameDecoder, HEADER_SIZE, MAX_PAYLOAD, PROTOCOL_VERSION, WireError } from "./wire.ts"

/** Credit granted to the agent per stream for stdout/stderr/file data. */
const HOST_WINDOW = 4 * 1024 * 1024
/** Largest data frame we send; the agent's window (256 KiB) usually bounds it first. */
const MAX_CHUNK = 256 * 1024
const HANDSHAKE_ATTEMPT = Duration.seconds(3)

const protocolCodes = new Set([
  "bad_magic",
  "frame_too_large",
  "bad_frame",
  "unknown_type",
  "bad_message",
  "bad_stream",
  "unsupported_version",
  "flow_control",
  "too_many_streams"
])

export const errorFromWire = (m: { code: string; message?: string | undefined }): GuestError =>
  protocolCodes.has(m.code)
    ? new GuestProtocolError({ message: `agent: ${m.code}${m.message ? `: ${m.message}` : ""}` })
    : new GuestRemoteError({ message: m.message ?? m.code, code: m.code })

export type Item = Message | { readonly _tag: "Failed"; readonly error: GuestError }
/** One stream's inbox (single consumer) and its send credit. */
export class StreamState {
  private items: Array<Item> = []
  private waiter: ((item: Item) => void) | undefined
  private creditWaiters: Array<() => void> = []
  private pendingGrant = 0
  /** The agent sent its final message (or the stream failed): no Cancel needed. */
  finished = false
  failure: GuestError | undefined

  constructor(readonly conn: Connection, readonly id: number, public credit: number) {}

  push(item: Item): void {
    if (item._tag === "Failed") {
      this.failure ??= item.error
      const waiters = this.creditWaiters
      this.creditWaiters = []
      for (const w of waiters) w()
    }
    const w = this.waiter
    if (w) {
      this.waiter = undefined
      w(item)
    } else {
      this.items.push(item)
    }
  }

  /** Everything queued, or waits for the next item: amortises per-element work on bulk output. */
  readonly takeBatch: Effect.Effect<ReadonlyArray<Item>> = Effect.suspend(() => {
    if (this.items.length > 0) {
      const all = this.items
      this.items = []
      return Effect.succeed(all)
    }
    return Effect.map(this.take, (item) => [item])
  })

  readonly take: Effect.Effect<Item> = Effect.async<Item>((resume) => {
    const item = this.items.shift()
    if (item !== undefined) return resume(Effect.succeed(item))
    this.waiter = (i) => resume(Effect.succeed(i))
    return Effect.sync(() => {
      this.waiter = undefined
    })
  })

  addCredit(n: number): void {
    this.credit += n
    const waiters = this.creditWaiters
    this.creditWaiters = []
    for (const w of waiters) w()
  }

  /** Waits for send credit and takes up to `want` bytes of it. */
  acquire(want: number): Effect.Effect<number, GuestError> {
    return Effect.suspend(() => {
      if (this.failure) return Effect.fail(this.failure)
      if (this.credit > 0) {
        const n = Math.min(this.credit, want)
        this.credit -= n
        return Effect.succeed(n)
      }
      return Effect.async<void>((resume) => {
        const w = () => resume(Effect.void)
        this.creditWaiters.push(w)
        return Effect.sync(() => {
          this.creditWaiters = this.creditWaiters.filter((x) => x !== w)
        })
      }).pipe(Effect.zipRight(this.acquire(want)))
    })
  }

  /** The consumer took `n` data bytes: give the agent that much credit back, in batches. */
  consumed(n: number): void {
    this.pendingGrant += n
    if (this.pendingGrant >= HOST_WINDOW / 4 && !this.finished) {
      this.conn.send(this.id, { _tag: "Window", increment: this.pendingGrant })
      this.pendingGrant = 0
    }
  }

  /** Sends data under the agent's credit, split into frames. */
  sendData(tag: "Stdin" | "FileData", data: Uint8Array): Effect.Effect<void, GuestError> {
    const loop = (offset: number): Effect.Effect<void, GuestError> =>
      offset >= data.length
        ? Effect.void
        : Effect.flatMap(this.acquire(Math.min(MAX_CHUNK, data.length - offset)), (n) => {
          this.conn.send(this.id, { _tag: tag, data: data.subarray(offset, offset + n) })
          return loop(offset + n)
        })
    return loop(0)
  }
}
export class Connection {
  private readonly decoder = new FrameDecoder()
  private readonly streams = new Map<number, StreamState>()
  private nextStream = 1
  private failure: GuestError | undefined
  private helloWaiter: ((r: Either.Either<AgentInfo, GuestError>) => void) | undefined
  private readonly closeWaiters = new Set<() => void>()
  agentWindow = 256 * 1024
  info: AgentInfo | undefined

  constructor(private readonly socket: Net.Socket, sink: Sink) {
    sink.onData = (chunk) => this.onData(chunk)
    socket.on("error", (e) => this.fail(new GuestUnreachable({ message: `guest channel: ${e.message}` })))
    socket.on("close", () => this.fail(new GuestUnreachable({ message: "guest channel closed" })))
  }

  send(stream: number, message: Message): void {
    if (this.failure) return
    this.socket.write(frameBytes(stream, message))
  }

  /** Sends a request frame, refusing one the agent would reject as oversized. */
  sendRequest(st: StreamState, message: Message): Effect.Effect<void, GuestRemoteError> {
    return Effect.suspend(() => {
      const bytes = frameBytes(st.id, message)
      if (bytes.length - HEADER_SIZE > (this.info?.maxPayload ?? MAX_PAYLOAD)) {
        st.finished = true // never opened on the agent: nothing to cancel
        return Effect.fail(
          new GuestRemoteError({
            code: "invalid_argument",
            message: `${message._tag} request of ${bytes.length} bytes exceeds the 1 MiB frame limit`
          })
        )
      }
      if (!this.failure) this.socket.write(bytes)
      return Effect.void
    })
  }

  open(): StreamState {
    const st = new StreamState(this, this.nextStream++, this.agentWindow)
    if (this.failure) st.push({ _tag: "Failed", error: this.failure })
    else this.streams.set(st.id, st)
    return st
  }

  /** Forgets a stream; tells the agent to stop it unless it already finished. */
  release(st: StreamState): void {
    if (!this.streams.has(st.id)) return
    this.streams.delete(st.id)
    if (!st.finished) this.send(st.id, { _tag: "Cancel" })
  }

  handshake(): Effect.Effect<AgentInfo, GuestError> {
    return Effect.async<AgentInfo, GuestError>((resume) => {
      if (this.failure) return resume(Effect.fail(this.failure))
      this.helloWaiter = (r) => resume(r)
      this.send(0, { _tag: "Hello", version: PROTOCOL_VERSION, capabilities: [], window: HOST_WINDOW })
      return Effect.sync(() => {
        this.helloWaiter = undefined
      })
    })
  }

  close(): void {
    this.fail(new GuestUnreachable({ message: "guest connection closed by the host" }))
  }

  /** Completes once the connection has failed or closed. */
  readonly closed: Effect.Effect<void> = Effect.async<void>((resume) => {
    if (this.failure) return resume(Effect.void)
    const waiter = () => resume(Effect.void)
    this.closeWaiters.add(waiter)
    return Effect.sync(() => {
      this.closeWaiters.delete(waiter)
    })
  })

  private fail(error: GuestError): void {
    if (this.failure) return
    this.failure = error
    this.socket.destroy()
    const hw = this.helloWaiter
    this.helloWaiter = undefined
    hw?.(Either.left(error))
    for (const st of this.streams.values()) st.push({ _tag: "Failed", error })
    this.streams.clear()
    const waiters = [...this.closeWaiters]
    this.closeWaiters.clear()
    for (const waiter of waiters) waiter()
  }

  private onData(chunk: Uint8Array): void {
    for (const f of this.decoder.push(chunk)) {
      if (this.failure) return
      if (f instanceof WireError) {
        // The agent never sends malformed frames: the byte stream is no longer trustworthy.
        this.fail(new GuestProtocolError({ message: `from agent: ${f.code}: ${f.message}` }))
        return
      }
      const decoded = decodeMessage(f.type, f.payload)
      if (Either.isLeft(decoded)) {
        this.fail(new GuestProtocolError({ message: `from agent: ${decoded.left.message}` }))
        return
      }
      this.dispatch(f.stream, decoded.right)
    }
  }

  private dispatch(stream: number, m: Message): void {
    if (stream === 0) {
      if (m._tag === "Hello") {
        if (m.version !== PROTOCOL_VERSION) {
          this.fail(new GuestProtocolError({ message: `agent speaks protocol version ${m.version}, not 1` }))
          return
        }
        this.agentWindow = m.window ?? this.agentWindow
        this.info = {
          version: m.version,
          software: m.software ?? "unknown",
          capabilities: m.capabilities,
          maxPayload: m.maxPayload ?? MAX_PAYLOAD
        }
        const hw = this.helloWaiter
        this.helloWaiter = undefined
        hw?.(Either.right(this.info))
      } else if (m._tag === "Error") {
        this.fail(
          errorFromWire(m)._tag === "GuestRemoteError"
            ? new GuestProtocolError({ message: `agent: ${m.code}: ${m.message ?? ""}` })
            : errorFromWire(m)
        )
      } else if (m._tag !== "Pong") {
        this.fail(new GuestProtocolError({ message: `unexpected ${m._tag} on stream 0` }))
      }
      return
    }
    const st = this.streams.get(stream)
    if (!st) return // late frames for a stream we already let go of
    if (m._tag === "Window") {
      st.addCredit(m.increment)
      return
    }
    if (m._tag === "Exit" || m._tag === "Ok" || m._tag === "Error" || m._tag === "Eof" || m._tag === "Pong") {
      st.finished = true
    }
    st.push(m)
  }
}
// ---- opening ----

/** Receives the socket's bytes; the chunk is only valid during the call (one reused buffer). */
type Sink = { onData: (chunk: Uint8Array) => void }

const connectSocket = (path: string) =>
  Effect.async<{ socket: Net.Socket; sink: Sink }, GuestUnreachable>((resume) => {
    const sink: Sink = { onData: () => {} }
    // One read buffer per socket: bulk output arrives in up to 1 MiB reads with no per-read
    // allocation (the decoder copies what it keeps).
    const socket = Net.createConnection({
      path,
      onread: {
        buffer: new Uint8Array(1024 * 1024),
        callback: (n, buf) => {
          sink.onData(buf.subarray(0, n))
          return true
        }
      }
    })
    const onError = (e: Error) => {
      socket.destroy()
      resume(Effect.fail(new GuestUnreachable({ message: `cannot connect to ${path}: ${e.message}` })))
    }
    socket.once("error", onError)
    socket.once("connect", () => {
      socket.off("error", onError)
      resume(Effect.succeed({ socket, sink }))
    })
    return Effect.sync(() => socket.destroy())
  })
/** One attempt: connect and handshake; the socket is closed again if the attempt fails. */
export const attempt = (path: string) =>
  Effect.flatMap(connectSocket(path), ({ sink, socket }) => {
    const conn = new Connection(socket, sink)
    return conn.handshake().pipe(
      Effect.timeoutFail({
        duration: HANDSHAKE_ATTEMPT,
        onTimeout: () => new GuestUnreachable({ message: `no handshake from the agent at ${path}` })
      }),
      Effect.as(conn),
      Effect.onExit((exit) => (exit._tag === "Failure" ? Effect.sync(() => conn.close()) : Effect.void))
    )
  })
// ---- helpers for the operations ----

export const takeOrFail = (st: StreamState): Effect.Effect<Message, GuestError> =>
  Effect.flatMap(st.take, (item) => item._tag === "Failed" ? Effect.fail(item.error) : Effect.succeed(item))

/** Waits for a stream's final `OK` (or its `ERROR`). */
export const awaitOk = (st: StreamState): Effect.Effect<void, GuestError> =>
  Effect.flatMap(takeOrFail(st), (m): Effect.Effect<void, GuestError> => {
    switch (m._tag) {
      case "Ok":
        return Effect.void
      case "Error":
        return Effect.fail(errorFromWire(m))
      case "Window":
        return awaitOk(st)
      default:
        return Effect.fail(new GuestProtocolError({ message: `unexpected ${m._tag} while waiting for OK` }))
    }
  })

export const scopedStream = (conn: Connection) =>
  Effect.acquireRelease(Effect.sync(() => conn.open()), (st) => Effect.sync(() => conn.release(st)))
/**
 * Sends a stream (stdin, a file's contents) on an open stream, then EOF, in the background. If the
 * source fails, the guest side is cancelled and the failure is reported on the stream.
 */
export const pump = (
  conn: Connection,
  st: StreamState,
  data: Stream.Stream<Uint8Array, GuestError>,
  tag: "Stdin" | "FileData",
  what: string
) =>
  data.pipe(
    Stream.runForEach((chunk) => st.sendData(tag, chunk)),
    Effect.zipRight(Effect.sync(() => conn.send(st.id, { _tag: "Eof" }))),
    Effect.catchAllCause((cause) =>
      Effect.sync(() => {
        if (Cause.isInterruptedOnly(cause)) return
        const error = Cause.failureOption(cause).pipe(
          Option.getOrElse(() =>
            new GuestProtocolError({ message: `${what} failed: ${Cause.pretty(cause)}` })
          )
        )
        if (!st.finished) conn.send(st.id, { _tag: "Cancel" })
        st.push({ _tag: "Failed", error })
      })
    ),
    Effect.forkScoped
  )
