/**
 * `state check` and `state backup`: the health of `state.db` and consistent copies of it. Both work on
 * the file with their own connection, so they also run when the store cannot be opened (a check must
 * be able to say what is wrong). `state restore` is in src/runtime/StateRestore.ts: it must run with
 * no runtime serving the directory.
 */
import { Effect, Schema } from "effect"
import * as NodeFs from "node:fs"
import type { Permanent } from "../domain/Errors.ts"
import { Home } from "../services/Home.ts"
import { StateDatabase, type StateDatabaseShape } from "../services/StateDatabase.ts"

export const StateBackup = Schema.Struct({
  path: Schema.String,
  reason: Schema.String,
  createdAt: Schema.String,
  sizeBytes: Schema.Number
})
export type StateBackup = typeof StateBackup.Type

export const StateCheckResult = Schema.Struct({
  ok: Schema.Boolean,
  database: Schema.String,
  exists: Schema.Boolean,
  sizeBytes: Schema.optional(Schema.Number),
  /** `user_version`, when the file could be read. */
  schemaVersion: Schema.optional(Schema.Number),
  /** The version this release migrates to. */
  currentSchemaVersion: Schema.Number,
  /** What `integrity_check` (or opening the file) reported; empty when clean. */
  problems: Schema.Array(Schema.String),
  backups: Schema.Array(StateBackup),
  remediation: Schema.optional(Schema.String)
})
export type StateCheckResult = typeof StateCheckResult.Type

const modeProblem = (path: string): string | undefined => {
  const mode = NodeFs.statSync(path).mode & 0o777
  return (mode & 0o077) === 0 ? undefined : `${path} has mode ${mode.toString(8)}; it should be 600`
}

/** The full `integrity_check` of the state database of `root`, and its backups. Reads only. */
export const checkStateFile = (
  db: StateDatabaseShape,
  database: string,
  evidence: ReadonlyArray<string>
): StateCheckResult => {
  const backups = db.backups(database)
  const base = { database, currentSchemaVersion: db.currentSchemaVersion, backups }
  if (!NodeFs.existsSync(database)) {
    return evidence.length === 0
      ? { ...base, ok: true, exists: false, problems: [] }
      : {
        ...base,
        ok: false,
        exists: false,
        problems: [`the database is missing, but this state directory has ${evidence.join(", ")}`],
        remediation: db.recoveryRemediation(database)
      }
  }
  const sizeBytes = NodeFs.statSync(database).size
  const check = sizeBytes === 0
    ? {
      ok: evidence.length === 0,
      problems: evidence.length === 0 ? [] : ["the database file is empty (truncated)"]
    }
    : db.checkFile(database)
  const problems = [...check.problems]
  const mode = modeProblem(database)
  if (mode !== undefined) problems.push(mode)
  const ok = check.ok && mode === undefined
  return {
    ...base,
    ok,
    exists: true,
    sizeBytes,
    ...("schemaVersion" in check && check.schemaVersion !== undefined
      ? { schemaVersion: check.schemaVersion }
      : {}),
    problems,
    ...(ok
      ? {}
      : { remediation: check.ok ? `chmod 600 ${database}` : db.recoveryRemediation(database) })
  }
}

/** `state check` for the current Home. */
export const checkState = Effect.fn("State.check")(function*() {
  const home = yield* Home
  const db = yield* StateDatabase
  return checkStateFile(db, home.database, db.evidenceOfRecords(home))
})

/**
 * `state backup`: a consistent copy of the database, into `<state>/backups/` (rotated, newest N kept)
 * or to `to`, a file that must not exist.
 */
export const backupState = Effect.fn("State.backup")(
  function*(
    options: { readonly to?: string | undefined } = {}
  ): Effect.fn.Return<StateBackup, Permanent, Home | StateDatabase> {
    const home = yield* Home
    const db = yield* StateDatabase
    return yield* db.backup(home.database, { reason: "manual", to: options.to })
  }
)
