/**
 * Interactive sessions (`connect`) in the process that holds the VMs: each session is a guest PTY exec
 * fed by two queues — keystrokes and terminal resizes — that `connectInput` and `connectResize` fill,
 * keyed by the session id the client picked. The session exists exactly as long as its `connect`
 * stream: when that ends or is interrupted (the client detached or went away), the guest command is
 * stopped and the entry removed.
 */
import { Effect, Option, Queue, Stream } from "effect"
import { Conflict, NotFound } from "../domain/Errors.ts"
import { streamWithWorkspaceBackend, type WorkspaceBackends } from "../layers/backends/WorkspaceBackends.ts"
import type { HostServices } from "../layers/host/HostServices.ts"
import { connect } from "../programs/Connect.ts"
import type { ExecControl } from "../services/GuestChannel.ts"
import type { Home } from "../services/Home.ts"
import type { StateStore } from "../services/StateStore.ts"
import type {
  ConnectInputPayload,
  ConnectOutput,
  ConnectPayload,
  ConnectResizePayload
} from "./ConnectSchemas.ts"

interface Session {
  /** `None` ends the command's stdin. */
  readonly input: Queue.Queue<Option.Option<Uint8Array>>
  readonly resizes: Queue.Queue<ExecControl>
}

type Services = WorkspaceBackends | StateStore | Home | HostServices

const gone = (sessionId: string) =>
  new NotFound({
    message: `no connect session ${sessionId}`,
    remediation: "the session ended; connect again"
  })

/** The handlers of `connect`, `connectInput` and `connectResize`, sharing one table of sessions. */
export const makeConnectHandlers = (
  localStream: <A, E>(stream: Stream.Stream<A, E, Services>) => Stream.Stream<A, E>
) => {
  const sessions = new Map<string, Session>()

  const open = (sessionId: string) =>
    Effect.acquireRelease(
      Effect.gen(function*() {
        if (sessions.has(sessionId)) {
          return yield* new Conflict({
            message: `connect session ${sessionId} exists already`,
            remediation: "use a fresh session id"
          })
        }
        // Bounded: a client pasting faster than the guest reads waits for its calls to return.
        const session: Session = {
          input: yield* Queue.bounded<Option.Option<Uint8Array>>(64),
          resizes: yield* Queue.sliding<ExecControl>(4)
        }
        sessions.set(sessionId, session)
        return session
      }),
      (session) =>
        Effect.gen(function*() {
          sessions.delete(sessionId)
          yield* Queue.shutdown(session.input)
          yield* Queue.shutdown(session.resizes)
        })
    )

  const lookup = (sessionId: string) =>
    Effect.suspend(() => {
      const session = sessions.get(sessionId)
      return session === undefined ? Effect.fail(gone(sessionId)) : Effect.succeed(session)
    })

  return {
    connect: (p: typeof ConnectPayload.Type) =>
      localStream(Stream.unwrapScoped(Effect.map(open(p.sessionId), (session) =>
        Stream.concat(
          Stream.succeed<ConnectOutput>({ _tag: "Ready" }),
          streamWithWorkspaceBackend(
            p.name,
            connect(p.name, {
              argv: p.argv,
              tty: p.tty,
              env: p.env,
              input: Stream.fromQueue(session.input).pipe(
                Stream.takeWhile(Option.isSome),
                Stream.map((chunk) => chunk.value)
              ),
              resizes: Stream.fromQueue(session.resizes)
            })
          )
        )))),
    connectInput: (p: typeof ConnectInputPayload.Type) =>
      Effect.gen(function*() {
        const session = yield* lookup(p.sessionId)
        if (p.data.length > 0) yield* Queue.offer(session.input, Option.some(p.data))
        if (p.eof) yield* Queue.offer(session.input, Option.none())
      }),
    connectResize: (p: typeof ConnectResizePayload.Type) =>
      Effect.flatMap(
        lookup(p.sessionId),
        (session) => Queue.offer(session.resizes, { _tag: "Resize", rows: p.rows, cols: p.cols })
      ).pipe(Effect.asVoid)
  }
}
