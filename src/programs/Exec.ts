/**
 * `exec`: run a command in a running workspace over the guest channel.
 */
import { Effect, Option, Stream } from "effect"
import { Conflict, Permanent, Transient } from "../domain/Errors.ts"
import type { ExecRequest } from "../domain/Exec.ts"
import { faultPoint } from "../services/Faults.ts"
import { GuestChannel, type GuestError } from "../services/GuestChannel.ts"
import { StateStore } from "../services/StateStore.ts"
import { reconcile, requireBackend, vmHandleOf } from "./internal/Reconcile.ts"

export const guestFailure = (name: string) => (error: GuestError) =>
  error._tag === "GuestUnreachable"
    ? new Transient({
      message: `workspace ${name}: the guest agent is unreachable: ${error.message}`,
      remediation: "retry shortly; `microagent logs` shows the console",
      retryAfterMs: 1000
    })
    : new Permanent({
      message: `workspace ${name}: ${error.message}`,
      remediation: error._tag === "GuestProtocolError"
        ? "the guest agent and this host speak different protocols; recreate the workspace"
        : "check the command and its arguments"
    })

/** The running workspace's VM handle, or a clear reason why there is none. */
export const runningHandle = Effect.fn("runningHandle")(function*(name: string) {
  const store = yield* StateStore
  const workspace = yield* store.get(name).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(workspace)
  const handle = vmHandleOf(workspace)
  if (workspace.state !== "running" || Option.isNone(handle)) {
    return yield* new Conflict({
      message: `workspace ${name} is ${workspace.state}, not running`,
      remediation: workspace.state === "paused"
        ? `it is paused: \`microagent resume ${name}\` lets it run on`
        : `start it first: microagent start ${name}`
    })
  }
  // Reconciling asked the VMM already (alive, and its status): a second query would cost a round trip.
  return handle.value
})

const recordExec = (name: string, request: ExecRequest, outcome: string) =>
  StateStore.pipe(
    Effect.flatMap((store) =>
      store.appendEvent(name, { type: "exec", detail: `${request.argv[0]} ${outcome}` })
    ),
    Effect.ignore
  )

export const exec = Effect.fn("exec")(function*(
  name: string,
  request: ExecRequest,
  stdin?: Stream.Stream<Uint8Array, GuestError>
) {
  const handle = yield* runningHandle(name)
  const channel = yield* GuestChannel
  const result = yield* Effect.scoped(
    channel.connect(handle.channel).pipe(
      Effect.tap(() => faultPoint("exec.connected")),
      Effect.flatMap((connection) => connection.exec(request, stdin))
    )
  ).pipe(Effect.mapError(guestFailure(name)))
  yield* recordExec(name, request, `${result.status} ${result.exitCode}`)
  return result
})

/** Like `exec`, with output streamed as it comes. */
export const execStream = (
  name: string,
  request: ExecRequest,
  stdin?: Stream.Stream<Uint8Array, GuestError>
) =>
  Stream.unwrapScoped(
    Effect.gen(function*() {
      const handle = yield* runningHandle(name)
      const channel = yield* GuestChannel
      const connection = yield* channel.connect(handle.channel).pipe(Effect.mapError(guestFailure(name)))
      return connection.execStream(request, stdin).pipe(
        Stream.mapError(guestFailure(name)),
        Stream.tap((output) =>
          output._tag === "Exit"
            ? recordExec(name, request, `${output.result.status} ${output.result.exitCode}`)
            : Effect.void
        )
      )
    })
  )
