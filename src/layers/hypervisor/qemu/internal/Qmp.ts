/**
 * A QMP client for one command at a time: connect, read the greeting, negotiate capabilities, send
 * the command, wait for its answer (events in between are skipped), hang up. QEMU serves one QMP
 * client per socket at a time, so connections are never held.
 */
import { Data, Duration, Effect, Schedule } from "effect"
import * as NodeNet from "node:net"

export class QmpError extends Data.TaggedError("QmpError")<{
  readonly reason: "Unreachable" | "Protocol" | "Command" | "Timeout"
  readonly message: string
}> {}

/**
 * One QMP conversation per socket at a time within this process. An entry lives only while someone
 * uses or waits for its socket: every workspace has its own socket path, and a long-lived runtime
 * would otherwise keep one lock per workspace it ever ran.
 */
const conversations = new Map<string, { readonly lock: Effect.Semaphore; users: number }>()
const withConversationLock = <A, E>(socketPath: string, effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      let entry = conversations.get(socketPath)
      if (entry === undefined) {
        entry = { lock: Effect.unsafeMakeSemaphore(1), users: 0 }
        conversations.set(socketPath, entry)
      }
      entry.users++
      return entry
    }),
    (entry) => entry.lock.withPermits(1)(effect),
    (entry) =>
      Effect.sync(() => {
        if (--entry.users === 0) conversations.delete(socketPath)
      })
  )

/**
 * Runs one QMP command. Conversations on a socket are serialized here; a socket busy with another
 * process's conversation refuses the connection (EAGAIN), so that is retried for a moment.
 */
export const qmpExecute = (
  socketPath: string,
  command: string,
  args?: Record<string, unknown>,
  timeout: Duration.DurationInput = Duration.seconds(5)
): Effect.Effect<unknown, QmpError> =>
  withConversationLock(
    socketPath,
    qmpConversation(socketPath, command, args, timeout).pipe(
      Effect.retry({
        while: (error) => error.reason === "Unreachable" && /EAGAIN|ECONNREFUSED/.test(error.message),
        schedule: Schedule.intersect(Schedule.spaced(Duration.millis(20)), Schedule.recurs(100))
      })
    )
  )

const qmpConversation = (
  socketPath: string,
  command: string,
  args?: Record<string, unknown>,
  timeout: Duration.DurationInput = Duration.seconds(5)
): Effect.Effect<unknown, QmpError> =>
  Effect.async<unknown, QmpError>((resume) => {
    const socket = NodeNet.createConnection({ path: socketPath })
    let buffered = ""
    let phase: "greeting" | "capabilities" | "command" = "greeting"
    let settled = false
    const finish = (result: Effect.Effect<unknown, QmpError>) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      resume(result)
    }
    // Timed here, not only by an interruption: a VMM that is exiting still accepts on its socket but
    // never answers, and a caller in an uninterruptible region could not be interrupted out of it.
    const timer = setTimeout(
      () => finish(Effect.fail(new QmpError({ reason: "Timeout", message: `QMP ${command} got no answer` }))),
      Duration.toMillis(Duration.decode(timeout))
    )
    const send = (message: object) => socket.write(JSON.stringify(message) + "\n")
    socket.setEncoding("utf8")
    socket.on("error", (error) =>
      finish(
        Effect.fail(new QmpError({ reason: "Unreachable", message: `QMP ${socketPath}: ${error.message}` }))
      ))
    socket.on("close", () =>
      finish(
        Effect.fail(
          new QmpError({ reason: "Unreachable", message: `QMP ${socketPath} closed during ${command}` })
        )
      ))
    socket.on("data", (chunk: string) => {
      buffered += chunk
      let newline: number
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline).trim()
        buffered = buffered.slice(newline + 1)
        if (line.length === 0) {
          continue
        }
        let message: Record<string, unknown>
        try {
          message = JSON.parse(line) as Record<string, unknown>
        } catch {
          return finish(
            Effect.fail(new QmpError({ reason: "Protocol", message: `QMP sent bad JSON: ${line}` }))
          )
        }
        if ("event" in message) {
          continue
        }
        if (phase === "greeting") {
          if (!("QMP" in message)) {
            return finish(Effect.fail(new QmpError({ reason: "Protocol", message: "no QMP greeting" })))
          }
          phase = "capabilities"
          send({ execute: "qmp_capabilities" })
        } else if ("error" in message) {
          const error = message.error as { class?: string; desc?: string }
          return finish(
            Effect.fail(
              new QmpError({ reason: "Command", message: `${command}: ${error.class}: ${error.desc}` })
            )
          )
        } else if (phase === "capabilities") {
          phase = "command"
          send(args === undefined ? { execute: command } : { execute: command, arguments: args })
        } else {
          return finish(Effect.succeed(message.return))
        }
      }
    })
    return Effect.sync(() => {
      settled = true
      clearTimeout(timer)
      socket.destroy()
    })
  })

/** `query-status`'s run state: running, paused, shutdown, internal-error, … */
export const qmpStatus = (socketPath: string) =>
  qmpExecute(socketPath, "query-status").pipe(
    Effect.map((result) => String((result as { status?: unknown } | undefined)?.status ?? "unknown"))
  )
