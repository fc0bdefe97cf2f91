/**
 * The runtime's lock: at most one runtime per state directory. It is an exclusive SQLite (fcntl) lock
 * on `run/runtime.lock`, held for the process's life and released by the kernel when the process
 * ends, however it ends — so a runtime killed with -9 never leaves a stale lock behind.
 *
 * A starting runtime waits a few seconds for a lock that is held while nobody answers on the socket:
 * that is a runtime leaving when idle (it unlinks its socket first and holds the lock until its last
 * client is served). When the socket answers, another runtime serves and this one goes at once — a
 * runtime launched late by one of many concurrent commands must not queue up behind the winner and
 * take over when it leaves.
 */
import Sqlite from "better-sqlite3"
import { Duration, Effect, Option, type Scope } from "effect"
import * as NodeNet from "node:net"
import { Conflict, Permanent } from "../domain/Errors.ts"

/** How long a starting runtime waits for the lock of one that is leaving. */
const lockWaitMs = 3000
const lockPollMs = 100

const busy = () =>
  new Conflict({
    message: "another runtime already serves this state directory",
    remediation: "there is nothing to do: commands use the running one"
  })

/** Takes the lock now, or finds it held (`None`). */
const tryLock = (path: string): Effect.Effect<Option.Option<Sqlite.Database>, Permanent> =>
  Effect.try({
    try: () => {
      const db = new Sqlite(path, { timeout: 0 })
      try {
        db.pragma("journal_mode = DELETE")
        db.exec("BEGIN EXCLUSIVE")
      } catch (error) {
        db.close()
        throw error
      }
      return Option.some(db)
    },
    catch: (cause) => cause
  }).pipe(
    Effect.catchAll((cause) =>
      String((cause as { code?: string }).code).startsWith("SQLITE_BUSY")
        ? Effect.succeed(Option.none())
        : Effect.fail(
          new Permanent({
            message: `cannot take the runtime lock ${path}: ${String(cause)}`,
            remediation: "check the state directory's permissions"
          })
        )
    )
  )

/** Whether something accepts connections on the Unix socket at `path`. */
const answers = (path: string): Effect.Effect<boolean> =>
  Effect.async<boolean>((resume) => {
    const socket = NodeNet.createConnection({ path })
    const done = (value: boolean) => {
      socket.destroy()
      resume(Effect.succeed(value))
    }
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
    return Effect.sync(() => socket.destroy())
  }).pipe(Effect.timeoutTo({ duration: Duration.millis(500), onTimeout: () => false, onSuccess: (v) => v }))

/**
 * Holds the runtime lock at `path` for the scope. With `socket`, waits while the holder is leaving
 * (nobody answers there) and fails with `Conflict` as soon as a runtime answers or the wait is over.
 */
export const acquireRuntimeLock = (
  path: string,
  socket?: string
): Effect.Effect<void, Conflict | Permanent, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const deadline = Date.now() + lockWaitMs
      for (;;) {
        const held = yield* tryLock(path)
        if (Option.isSome(held)) return held.value
        if (socket === undefined || Date.now() >= deadline || (yield* answers(socket))) return yield* busy()
        yield* Effect.sleep(Duration.millis(lockPollMs))
      }
    }),
    (db) => Effect.sync(() => db.close())
  ).pipe(Effect.asVoid)
