/** EXEC on a guest connection: the collected result (`exec`) and the streamed output (`execStream`). */
import { Cause, Chunk, Effect, Option, Stream } from "effect"
import { type ExecOutput, type ExecRequest, ExecResult } from "../../../domain/Exec.ts"
import {
  type ExecControl,
  type GuestError,
  GuestProtocolError,
  GuestRemoteError,
  GuestUnreachable
} from "../../../services/GuestChannel.ts"
import {
  type Connection,
  errorFromWire,
  type Item,
  pump,
  scopedStream,
  type StreamState,
  takeOrFail
} from "./connection.ts"
import type { Message } from "./messages.ts"

/** What `exec` keeps of each output stream when the request sets no limit. */
const DEFAULT_COLLECT_LIMIT = 10 * 1024 * 1024

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
/** The exec operations of a connection. */
export const execOperations = (conn: Connection) => {
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
  return { exec, execStream }
}
