/**
 * The runtime's lock: at most one runtime per state directory. It is an exclusive SQLite (fcntl) lock
 * on `run/runtime.lock`, held for the process's life and released by the kernel when the process
 * ends, however it ends — so a runtime killed with -9 never leaves a stale lock behind. A new runtime
 * waits a few seconds for it: one that is leaving when idle holds it until its last client is served.
 */
import Sqlite from "better-sqlite3"
import { Effect, type Scope } from "effect"
import { Conflict, Permanent } from "../domain/Errors.ts"

/** How long a starting runtime waits for the lock of one that is leaving. */
const lockWaitMs = 3000

export const acquireRuntimeLock = (path: string): Effect.Effect<void, Conflict | Permanent, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        const db = new Sqlite(path, { timeout: lockWaitMs })
        try {
          db.pragma("journal_mode = DELETE")
          db.exec("BEGIN EXCLUSIVE")
        } catch (error) {
          db.close()
          throw error
        }
        return db
      },
      catch: (cause) =>
        String((cause as { code?: string }).code).startsWith("SQLITE_BUSY")
          ? new Conflict({
            message: "another runtime already serves this state directory",
            remediation: "there is nothing to do: commands use the running one"
          })
          : new Permanent({
            message: `cannot take the runtime lock ${path}: ${String(cause)}`,
            remediation: "check the state directory's permissions"
          })
    }),
    (db) => Effect.sync(() => db.close())
  ).pipe(Effect.asVoid)
