/** FILE_PUT and FILE_GET on a guest connection: a file's contents streamed under flow control. */
import { Effect, Option, Stream } from "effect"
import { type GuestError, GuestProtocolError, type PutFile } from "../../../services/GuestChannel.ts"
import { awaitOk, type Connection, errorFromWire, pump, scopedStream, takeOrFail } from "./connection.ts"

/** The file operations of a connection. */
export const fileOperations = (conn: Connection) => {
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
  return { putFile, getFile }
}
