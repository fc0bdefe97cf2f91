/**
 * The real `GuestChannel`: speaks docs/protocol.md to the guest agent over a unix stream socket
 * (QEMU's virtio-serial chardev, or the agent's own `--listen-unix` test mode).
 *
 * One socket per connection; every exec, transfer and ping is a stream on it. Incoming data is
 * bounded by the credit this side grants (`HOST_WINDOW` per stream, topped up as the consumer
 * pulls), outgoing data by the agent's credit, so neither side buffers without bound.
 */
import {
  Cause,
  Chunk,
  Duration,
  Effect,
  Either,
  Layer,
  Option,
  ParseResult,
  Schedule,
  Schema,
  Stream
} from "effect"
import * as Net from "node:net"
import { type ExecOutput, type ExecRequest, ExecResult } from "../../domain/Exec.ts"
import {
  type AgentInfo,
  type ConnectOptions,
  type ExecControl,
  type FreshenRequest,
  type FreshenResult,
  type FreshenStep,
  GuestChannel,
  type GuestConnection,
  type GuestError,
  GuestProtocolError,
  GuestRemoteError,
  GuestUnreachable,
  GuestUnsupported,
  type PutFile
} from "../../services/GuestChannel.ts"
import type { ChannelEndpoint } from "../../services/Hypervisor.ts"
import { decodeMessage, frameBytes, Freshen, type Message, SecretName } from "./internal/messages.ts"
import { FrameDecoder, HEADER_SIZE, MAX_PAYLOAD, PROTOCOL_VERSION, WireError } from "./internal/wire.ts"

/** Credit granted to the agent per stream for stdout/stderr/file data. */
const HOST_WINDOW = 4 * 1024 * 1024
/** Largest data frame we send; the agent's window (256 KiB) usually bounds it first. */
const MAX_CHUNK = 256 * 1024
/** What `exec` keeps of each output stream when the request sets no limit. */
export const DEFAULT_COLLECT_LIMIT = 10 * 1024 * 1024
const HANDSHAKE_ATTEMPT = Duration.seconds(3)
const DEFAULT_CONNECT_TIMEOUT = Duration.seconds(60)

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

const errorFromWire = (m: { code: string; message?: string | undefined }): GuestError =>
  protocolCodes.has(m.code)
    ? new GuestProtocolError({ message: `agent: ${m.code}${m.message ? `: ${m.message}` : ""}` })
    : new GuestRemoteError({ message: m.message ?? m.code, code: m.code })

type Item = Message | { readonly _tag: "Failed"; readonly error: GuestError }

/** One stream's inbox (single consumer) and its send credit. */
class StreamState {
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

class Connection {
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
const attempt = (path: string) =>
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

// ---- operations ----

const takeOrFail = (st: StreamState): Effect.Effect<Message, GuestError> =>
  Effect.flatMap(st.take, (item) => item._tag === "Failed" ? Effect.fail(item.error) : Effect.succeed(item))

/** Waits for a stream's final `OK` (or its `ERROR`). */
const awaitOk = (st: StreamState): Effect.Effect<void, GuestError> =>
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

const scopedStream = (conn: Connection) =>
  Effect.acquireRelease(Effect.sync(() => conn.open()), (st) => Effect.sync(() => conn.release(st)))

const execMessage = (request: ExecRequest, hasStdin: boolean, collect: boolean): Message => ({
  _tag: "Exec",
  argv: request.argv,
  env: Object.entries(request.env).map(([k, v]) => `${k}=${v}`),
  stdin: hasStdin,
  ...(request.cwd !== undefined ? { cwd: request.cwd } : {}),
  ...(request.user !== undefined ? { user: request.user } : {}),
  ...(request.timeoutSeconds !== undefined
    ? { timeoutMs: Math.max(1, Math.round(request.timeoutSeconds * 1000)) }
    : {}),
  ...(request.stdoutLimit !== undefined
    ? { stdoutLimit: request.stdoutLimit }
    : collect
    ? { stdoutLimit: DEFAULT_COLLECT_LIMIT }
    : {}),
  ...(request.stderrLimit !== undefined
    ? { stderrLimit: request.stderrLimit }
    : collect
    ? { stderrLimit: DEFAULT_COLLECT_LIMIT }
    : {}),
  ...(request.tty !== undefined ? { ptyRows: request.tty.rows, ptyCols: request.tty.cols } : {})
})

const toResult = (m: Extract<Message, { _tag: "Exit" }>, stdout: string, stderr: string) =>
  new ExecResult({
    status: m.status,
    exitCode: m.exitCode,
    ...(m.signal !== undefined ? { signal: m.signal } : {}),
    stdout,
    stderr,
    stdoutTruncated: m.stdoutTruncated,
    stderrTruncated: m.stderrTruncated,
    durationMs: (m.durationUs ?? 0) / 1000,
    ...(m.error !== undefined ? { error: m.error } : {})
  })

/** Opens an exec stream in the current scope (closing it early cancels the process). */
const startExec = (
  conn: Connection,
  request: ExecRequest,
  stdin: Stream.Stream<Uint8Array, GuestError> | undefined,
  collect: boolean,
  controls?: Stream.Stream<ExecControl, GuestError>
) =>
  Effect.gen(function*() {
    const st = yield* scopedStream(conn)
    yield* conn.sendRequest(st, execMessage(request, stdin !== undefined, collect))
    if (stdin !== undefined) {
      yield* pump(conn, st, stdin, "Stdin", "stdin")
    }
    if (controls !== undefined) {
      yield* controls.pipe(
        Stream.runForEach((c) =>
          c._tag === "Signal"
            ? Number.isInteger(c.signal) && c.signal >= 1 && c.signal <= 64
              ? Effect.sync(() => conn.send(st.id, { _tag: "Signal", signal: c.signal }))
              : Effect.fail(
                new GuestRemoteError({ code: "invalid_argument", message: `no signal ${c.signal}` })
              )
            : Effect.sync(() =>
              conn.send(st.id, { _tag: "Resize", rows: clamp16(c.rows), cols: clamp16(c.cols) })
            )
        ),
        Effect.catchAllCause((cause) =>
          Effect.sync(() => {
            if (Cause.isInterruptedOnly(cause)) return
            const error = Cause.failureOption(cause).pipe(
              Option.getOrElse(() =>
                new GuestProtocolError({ message: `controls failed: ${Cause.pretty(cause)}` })
              )
            )
            if (!st.finished) conn.send(st.id, { _tag: "Cancel" })
            st.push({ _tag: "Failed", error })
          })
        ),
        Effect.forkScoped
      )
    }
    return st
  })

const clamp16 = (n: number) => Math.max(0, Math.min(0xffff, Math.trunc(n)))

/** Maps one queued item of an exec: output, a failure, or nothing (STARTED). */
const outputOf = (st: StreamState, item: Item): ExecOutput | GuestError | undefined => {
  switch (item._tag) {
    case "Failed":
      return item.error
    case "Stdout":
    case "Stderr":
      st.consumed(item.data.length)
      return { _tag: item._tag, data: item.data }
    case "Exit":
      return { _tag: "Exit", result: toResult(item, "", "") }
    case "Error":
      return errorFromWire(item)
    case "Started":
      return undefined
    default:
      return new GuestProtocolError({ message: `unexpected ${item._tag} in an exec` })
  }
}

/** The next piece of an exec's output; `Exit` is the last. */
const nextOutput = (st: StreamState): Effect.Effect<ExecOutput, GuestError> =>
  Effect.flatMap(takeOrFail(st), (m): Effect.Effect<ExecOutput, GuestError> => {
    switch (m._tag) {
      case "Stdout":
      case "Stderr":
        st.consumed(m.data.length)
        return Effect.succeed({ _tag: m._tag, data: m.data })
      case "Exit":
        return Effect.succeed({ _tag: "Exit", result: toResult(m, "", "") })
      case "Error":
        return Effect.fail(errorFromWire(m))
      case "Started":
        return nextOutput(st)
      default:
        return Effect.fail(new GuestProtocolError({ message: `unexpected ${m._tag} in an exec` }))
    }
  })

const decoder = new TextDecoder()
const concat = (chunks: ReadonlyArray<Uint8Array>): Uint8Array => Buffer.concat(chunks)

const makeConnection = (conn: Connection): GuestConnection => {
  // A plain loop rather than a Stream: this is the latency-sensitive path.
  const exec = Effect.fn("GuestChannel.exec")(function*(
    request: ExecRequest,
    stdin?: Stream.Stream<Uint8Array, GuestError>
  ) {
    const st = yield* startExec(conn, request, stdin, true)
    const out: Array<Uint8Array> = []
    const err: Array<Uint8Array> = []
    for (;;) {
      const o = yield* nextOutput(st)
      if (o._tag === "Stdout") out.push(o.data)
      else if (o._tag === "Stderr") err.push(o.data)
      else {
        return new ExecResult({
          ...o.result,
          stdout: decoder.decode(concat(out)),
          stderr: decoder.decode(concat(err))
        })
      }
    }
  }, Effect.scoped)

  const execStream = (
    request: ExecRequest,
    stdin?: Stream.Stream<Uint8Array, GuestError>,
    controls?: Stream.Stream<ExecControl, GuestError>
  ): Stream.Stream<ExecOutput, GuestError> =>
    Stream.unwrapScoped(Effect.map(startExec(conn, request, stdin, false, controls), (st) => {
      let done = false
      let failure: GuestError | undefined
      // One pull takes every queued frame, so a burst of output costs one Effect step.
      const pull: Effect.Effect<Chunk.Chunk<ExecOutput>, Option.Option<GuestError>> = Effect.suspend(() => {
        if (failure !== undefined) return Effect.fail(Option.some(failure))
        if (done) return Effect.fail(Option.none())
        return Effect.flatMap(st.takeBatch, (items) => {
          const out: Array<ExecOutput> = []
          for (const item of items) {
            const o = outputOf(st, item)
            if (o === undefined) continue
            if (
              o instanceof GuestProtocolError || o instanceof GuestRemoteError
              || o instanceof GuestUnreachable
            ) {
              // output that arrived before the failure is delivered first
              failure = o
              return out.length > 0 ? Effect.succeed(Chunk.unsafeFromArray(out)) : Effect.fail(Option.some(o))
            }
            out.push(o)
            if (o._tag === "Exit") {
              done = true
              break
            }
          }
          return out.length > 0 ? Effect.succeed(Chunk.unsafeFromArray(out)) : pull
        })
      })
      return Stream.repeatEffectChunkOption(pull)
    }))

  const putFile = Effect.fn("GuestChannel.putFile")(function*(file: PutFile) {
    const st = yield* scopedStream(conn)
    yield* conn.sendRequest(st, {
      _tag: "FilePut",
      path: file.path,
      mode: file.mode,
      ...(file.uid !== undefined ? { uid: file.uid } : {}),
      ...(file.gid !== undefined ? { gid: file.gid } : {})
    })
    yield* pump(conn, st, file.data, "FileData", "upload")
    yield* awaitOk(st)
  }, Effect.scoped)

  const getFile = Effect.fn("GuestChannel.getFile")(function*(path: string) {
    const st = conn.open()
    const release = Effect.sync(() => conn.release(st))
    yield* conn.sendRequest(st, { _tag: "FileGet", path }).pipe(Effect.tapError(() => release))
    const first = yield* takeOrFail(st).pipe(
      Effect.onInterrupt(() => release),
      Effect.tapError(() => release)
    )
    if (first._tag === "Error") {
      yield* release
      return yield* errorFromWire(first)
    }
    if (first._tag !== "FileInfo") {
      yield* release
      return yield* new GuestProtocolError({ message: `unexpected ${first._tag} answering FILE_GET` })
    }
    let done = false
    const next: Effect.Effect<Uint8Array, Option.Option<GuestError>> = Effect.suspend(() =>
      done ? Effect.fail(Option.none()) : Effect.mapError(takeOrFail(st), Option.some)
    ).pipe(Effect.flatMap((m): Effect.Effect<Uint8Array, Option.Option<GuestError>> => {
      switch (m._tag) {
        case "FileData":
          st.consumed(m.data.length)
          return Effect.succeed(m.data)
        case "Eof":
          done = true
          return Effect.fail(Option.none())
        case "Error":
          done = true
          return Effect.fail(Option.some(errorFromWire(m)))
        default:
          done = true
          return Effect.fail(
            Option.some(new GuestProtocolError({ message: `unexpected ${m._tag} in a download` }))
          )
      }
    }))
    return {
      mode: first.mode,
      size: first.size,
      data: Stream.repeatEffectOption(next).pipe(Stream.ensuring(release))
    }
  })

  const deliverSecrets = Effect.fn("GuestChannel.deliverSecrets")(function*(
    secrets: ReadonlyArray<{ name: string; value: Uint8Array }>,
    options?: { readonly purge?: boolean | undefined }
  ) {
    const invalid = secrets.find((s) => !Schema.is(SecretName)(s.name))
    if (invalid) {
      return yield* new GuestRemoteError({
        code: "invalid_argument",
        message: `secret name ${JSON.stringify(invalid.name)} must match [A-Za-z_][A-Za-z0-9_]*`
      })
    }
    const size = secrets.reduce((n, s) => n + 12 + s.name.length + s.value.length, 0)
    if (size > MAX_PAYLOAD) {
      return yield* new GuestRemoteError({
        code: "invalid_argument",
        message: "secrets exceed 1 MiB in total"
      })
    }
    const st = yield* scopedStream(conn)
    yield* conn.sendRequest(st, {
      _tag: "Secrets",
      secrets,
      ...(options?.purge === true ? { purge: true } : {})
    })
    yield* awaitOk(st)
    if (options?.purge === true) {
      // The guest kernel keeps what arrived on the port in its receive buffers (a ring of pages, reused,
      // never cleared): 16 MiB of zeros through them overwrites every one that held a SECRETS frame
      // (2 MiB did not, here; the test reads every snapshot file for the value).
      const zeros = new Uint8Array(256 * 1024)
      for (let i = 0; i < 64; i++) yield* pingWith(zeros)
    }
  }, Effect.scoped)

  const freshen = Effect.fn("GuestChannel.freshen")(function*(request: FreshenRequest) {
    const unsupported = () =>
      new GuestUnsupported({
        operation: "freshen",
        message: `the guest agent (${conn.info?.software ?? "unknown"}) does not know FRESHEN`
      })
    // An agent announces what it knows; one from before FRESHEN is not asked at all.
    if (conn.info !== undefined && !conn.info.capabilities.includes("freshen")) return yield* unsupported()
    const message: Message = {
      _tag: "Freshen",
      ...(request.time === undefined
        ? {}
        : { timeSec: request.time.seconds, timeNsec: request.time.nanoseconds }),
      ...(request.entropy === undefined ? {} : { entropy: request.entropy }),
      ...(request.hostname === undefined ? {} : { hostname: request.hostname }),
      ...(request.newMachineId === true ? { machineId: true } : {})
    }
    const invalid = Either.getLeft(Schema.validateEither(Freshen)(message))
    if (Option.isSome(invalid)) {
      return yield* new GuestRemoteError({
        code: "invalid_argument",
        message: `freshen: ${ParseResult.TreeFormatter.formatErrorSync(invalid.value)}`
      })
    }
    const st = yield* scopedStream(conn)
    yield* conn.sendRequest(st, message)
    for (;;) {
      const m = yield* takeOrFail(st)
      if (m._tag === "Window") continue
      if (m._tag === "Ok") return freshenResult(m)
      // What an agent that does not know the type answers (docs/protocol.md §1).
      if (m._tag === "Error" && m.code === "unknown_type") return yield* unsupported()
      if (m._tag === "Error") return yield* errorFromWire(m)
      return yield* new GuestProtocolError({ message: `unexpected ${m._tag} answering FRESHEN` })
    }
  }, Effect.scoped)

  const pingWith = (data: Uint8Array) =>
    Effect.gen(function*() {
      const st = yield* scopedStream(conn)
      conn.send(st.id, { _tag: "Ping", data })
      const m = yield* takeOrFail(st)
      if (m._tag !== "Pong") {
        return yield* new GuestProtocolError({ message: `unexpected ${m._tag} answering PING` })
      }
    }).pipe(Effect.scoped)
  const ping = pingWith(new Uint8Array(0)).pipe(Effect.withSpan("GuestChannel.ping"))

  const shutdown = Effect.gen(function*() {
    const st = yield* scopedStream(conn)
    conn.send(st.id, { _tag: "Shutdown", action: "poweroff" })
    yield* awaitOk(st)
  }).pipe(Effect.scoped, Effect.withSpan("GuestChannel.shutdown"))

  return {
    exec,
    execStream,
    putFile,
    getFile,
    deliverSecrets,
    freshen,
    ping,
    shutdown,
    closed: conn.closed,
    agent: conn.info!
  }
}

/** The OK that answers FRESHEN: one step per outcome field. */
const freshenResult = (m: Extract<Message, { _tag: "Ok" }>): FreshenResult => {
  const steps: { -readonly [K in keyof FreshenResult]?: FreshenStep } = {}
  const add = (
    name: keyof FreshenResult,
    outcome: FreshenStep["outcome"] | undefined,
    errno: number | undefined
  ) => {
    if (outcome !== undefined) steps[name] = errno === undefined ? { outcome } : { outcome, errno }
  }
  add("clock", m.clock, m.clockErrno)
  add("rng", m.rng, m.rngErrno)
  add("hostname", m.hostname, m.hostnameErrno)
  add("machineId", m.machineId, m.machineIdErrno)
  return steps
}

/**
 * Sends a stream (stdin, a file's contents) on an open stream, then EOF, in the background. If the
 * source fails, the guest side is cancelled and the failure is reported on the stream.
 */
const pump = (
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

const connect = Effect.fn("GuestChannel.connect")(
  function*(endpoint: ChannelEndpoint, options?: ConnectOptions) {
    if (endpoint._tag !== "UnixSocket") {
      return yield* new GuestUnreachable({
        message: `the agent channel cannot reach a ${endpoint._tag} endpoint`
      })
    }
    const timeout = options?.timeout ?? DEFAULT_CONNECT_TIMEOUT
    const conn = yield* Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        const conn = yield* restore(
          attempt(endpoint.path).pipe(
            // The VM may still be booting: the socket may not exist yet, or nobody answers yet.
            Effect.retry({
              while: (e) => e._tag === "GuestUnreachable",
              schedule: Schedule.spaced("50 millis")
            }),
            Effect.timeoutFail({
              duration: timeout,
              onTimeout: () =>
                new GuestUnreachable({
                  message: `the guest agent at ${endpoint.path} did not answer within ${
                    Duration.format(timeout)
                  }`
                })
            })
          )
        )
        yield* Effect.addFinalizer(() => Effect.sync(() => conn.close()))
        return conn
      })
    )
    return makeConnection(conn)
  }
)

export const AgentChannel = {
  layer: Layer.succeed(GuestChannel, GuestChannel.of({ connect }))
} as const
