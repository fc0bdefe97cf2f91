/**
 * `connect`: an interactive session in a running workspace — a shell (or a given command) in a guest
 * PTY when the caller has a terminal, plain pipes otherwise. Keystrokes and terminal resizes arrive as
 * streams; output streams back; the session ends when the command exits or the caller goes away
 * (interrupting the stream stops the guest command; the VM keeps running).
 */
import { Effect, Stream } from "effect"
import { type ExecControl, GuestChannel, type GuestError } from "../services/GuestChannel.ts"
import { StateStore } from "../services/StateStore.ts"
import { guestFailure, runningHandle } from "./Exec.ts"
import { execRequestFor } from "./internal/Requests.ts"

export interface ConnectOptions {
  /** The command; the workspace's shell (its `shell`, default /bin/sh) when empty. */
  readonly argv: ReadonlyArray<string>
  /** The caller's terminal size: a PTY when given, pipes otherwise. */
  readonly tty?: { readonly rows: number; readonly cols: number } | undefined
  readonly env?: Readonly<Record<string, string>> | undefined
  readonly input: Stream.Stream<Uint8Array, GuestError>
  readonly resizes: Stream.Stream<ExecControl, GuestError>
}

export const defaultShell = ["/bin/sh"] as const

export const connect = (name: string, options: ConnectOptions) =>
  Stream.unwrapScoped(
    Effect.gen(function*() {
      const handle = yield* runningHandle(name)
      const workspace = yield* Effect.flatMap(StateStore, (store) => store.get(name))
      const channel = yield* GuestChannel
      const connection = yield* channel.connect(handle.channel).pipe(Effect.mapError(guestFailure(name)))
      const argv = (options.argv.length > 0 ? options.argv : [workspace.shell ?? defaultShell[0]]) as [
        string,
        ...Array<string>
      ]
      const base = execRequestFor(workspace, argv, { env: options.env })
      const request = options.tty === undefined ? base : { ...base, tty: options.tty }
      yield* Effect.flatMap(StateStore, (store) =>
        store.appendEvent(name, { type: "connect", detail: `${argv[0]}${options.tty ? " (tty)" : ""}` }))
        .pipe(Effect.ignore)
      return connection.execStream(request as typeof base, options.input, options.resizes).pipe(
        Stream.mapError(guestFailure(name))
      )
    })
  )
