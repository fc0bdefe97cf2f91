/**
 * The SQLite database behind every store. Before it is used it is checked (`PRAGMA quick_check`): a
 * damaged, truncated, unreadable or missing database is a `permanent` error that names the file and
 * `microagent state restore`, never a store that silently starts empty. It is opened in WAL mode with
 * `synchronous = FULL` (a transaction is on disk before its statement returns; see "Durability and
 * recovery of state.db" in docs/architecture.md), migrated on open, file modes 0600. A migration runs
 * in a transaction after a backup; if it fails half way the previous database is left usable, restored
 * from that backup when the transaction could not undo everything.
 */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Cause, Effect, Layer, Option } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { diskFull } from "../../domain/DiskFull.ts"
import { Permanent, type ResourceExhausted } from "../../domain/Errors.ts"
import { Home, type HomeShape } from "../../services/Home.ts"
import {
  type BackupFile,
  backupsDirOf,
  checkFile,
  listBackups,
  restoreInPlace,
  tableCount,
  takeBackup
} from "./Backups.ts"
import { manifestPath } from "./Manifest.ts"
import { type Migration, migrations as releasedMigrations } from "./Migrations.ts"
import { isDamage, isFullDisk, sqliteFailureOf, storeFailure, unusableDatabase } from "./StoreFailure.ts"

/**
 * Why the database could not be opened: a full file system is `resource_exhausted` naming the state
 * directory (SQLite's own words for it, "disk I/O error", would send the user to a restore they do
 * not need); anything else is the store's `permanent` error.
 */
const openFailure = (database: string) => (cause: unknown): Permanent | ResourceExhausted => {
  const dir = NodePath.dirname(database)
  if (!(cause instanceof Permanent) && isFullDisk(sqliteFailureOf(cause), dir)) {
    return diskFull(`cannot open the state database ${database}`, dir)
  }
  return storeFailure({
    prefix: `state store: cannot open ${database}`,
    remediation:
      "check the state directory's permissions and free space; `microagent state check` reports on it",
    database
  })(cause)
}

/**
 * What in the state directory shows that it had records: backups, workspace manifests, volume files.
 * A store that is missing or empty beside any of these was lost, not never made.
 */
export const evidenceOfRecords = (home: HomeShape): ReadonlyArray<string> => {
  const found: Array<string> = []
  const backups = listBackups(backupsDirOf(home.database))
  if (backups.length > 0) found.push(`${backups.length} backup(s) in ${backupsDirOf(home.database)}`)
  const list = (dir: string) => {
    try {
      return NodeFs.readdirSync(dir)
    } catch {
      return []
    }
  }
  const manifests = list(home.workspaces).filter((name) =>
    !name.startsWith(".") && NodeFs.existsSync(manifestPath(home.workspaceDir(name)))
  )
  if (manifests.length > 0) found.push(`${manifests.length} workspace(s) in ${home.workspaces}`)
  const volumes = list(home.volumes).filter((name) => name.endsWith(".ext4"))
  if (volumes.length > 0) found.push(`${volumes.length} volume(s) in ${home.volumes}`)
  return found
}

const accessProblem = (path: string): string | undefined => {
  try {
    NodeFs.accessSync(path, NodeFs.constants.R_OK | NodeFs.constants.W_OK)
    return undefined
  } catch (cause) {
    return cause instanceof Error ? cause.message : String(cause)
  }
}

/**
 * The checks made before the store is opened: the file is there if the directory had records, and
 * it reads clean. Fails with the error that leads to `microagent state restore`.
 */
const preflight = (
  home: HomeShape,
  expectRecords = true
): Effect.Effect<void, Permanent | ResourceExhausted> =>
  Effect.gen(function*() {
    const database = home.database
    const exists = NodeFs.existsSync(database)
    if (!exists || NodeFs.statSync(database).size === 0) {
      const evidence = expectRecords ? evidenceOfRecords(home) : []
      if (evidence.length === 0) return
      return yield* unusableDatabase(
        database,
        `is ${exists ? "empty (truncated)" : "missing"}, but this state directory has ${evidence.join(", ")}`
      )
    }
    const access = accessProblem(database)
    if (access !== undefined) {
      return yield* unusableDatabase(database, `cannot be read and written: ${access}`)
    }
    const check = checkFile(database)
    if (check.failure !== undefined && !isDamage(check.failure)) {
      // Busy, locked, unreadable: the file may well be sound.
      const busy = check.failure.code?.startsWith("SQLITE_BUSY")
        || check.failure.code?.startsWith("SQLITE_LOCKED")
      return yield* busy
        ? new Permanent({
          message: `state database ${database} stayed busy for 5 s: ${check.failure.message}`,
          remediation: "retry; another process holds a long write transaction on it"
        })
        : openFailure(database)(check.failure)
    }
    if (!check.ok) {
      return yield* unusableDatabase(database, `is damaged: ${check.problems.slice(0, 3).join("; ")}`)
    }
    // A file SQLite reads as a database with no tables, beside evidence of records, was emptied.
    if (expectRecords && check.schemaVersion === 0 && tableCount(database) === 0) {
      const evidence = evidenceOfRecords(home)
      if (evidence.length > 0) {
        return yield* unusableDatabase(
          database,
          `has no tables, but this state directory has ${evidence.join(", ")}`
        )
      }
    }
  })

const schemaOf = (sql: SqlClient.SqlClient) =>
  sql<{ sql: string | null }>`SELECT sql FROM sqlite_master ORDER BY type, name`.pipe(
    Effect.map((rows) => rows.map((row) => row.sql ?? "").join("\n"))
  )

const userVersion = (sql: SqlClient.SqlClient) =>
  sql<{ user_version: number }>`PRAGMA user_version`.pipe(Effect.map(([row]) => row?.user_version ?? 0))

const migrate = (database: string, list: ReadonlyArray<Migration>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const failure = openFailure(database)
    const initial = yield* userVersion(sql).pipe(Effect.mapError(failure))
    if (initial >= list.length) return
    // A store with records is backed up once before it is migrated; a new one has nothing to lose.
    const backup = initial > 0
      ? Option.some(yield* takeBackup(database, { reason: `pre-migration-v${initial}` }))
      : Option.none<BackupFile>()
    for (;;) {
      const version = yield* userVersion(sql).pipe(Effect.mapError(failure))
      if (version >= list.length) return
      const migration = list[version]!
      const schemaBefore = yield* schemaOf(sql).pipe(Effect.mapError(failure))
      yield* sql.unsafe("BEGIN IMMEDIATE").pipe(Effect.mapError(failure))
      const applied = Effect.gen(function*() {
        // Another process may have migrated while this one waited for the lock.
        if ((yield* userVersion(sql)) !== version) return
        for (const statement of migration.sql.split(";").map((s) => s.trim()).filter(Boolean)) {
          yield* sql.unsafe(statement)
        }
        yield* sql.unsafe(`PRAGMA user_version = ${version + 1}`)
      })
      const outcome = yield* applied.pipe(Effect.zipRight(sql.unsafe("COMMIT")), Effect.either)
      if (outcome._tag === "Right") continue
      yield* sql.unsafe("ROLLBACK").pipe(Effect.ignore)
      const reason = `migration ${version + 1} (${migration.name}) failed: ${
        storeFailure({ prefix: "sql", remediation: "" })(outcome.left).message.replace(/^sql: /, "")
      }`
      // The transaction undoes the statements SQLite could run in it; anything else shows as a changed
      // schema or a wrong version, and then the backup taken above is put back.
      const intact = (yield* userVersion(sql).pipe(Effect.orElseSucceed(() => -1))) === version
        && (yield* schemaOf(sql).pipe(Effect.orElseSucceed(() => ""))) === schemaBefore
        && checkFile(database).ok
      if (intact) {
        return yield* new Permanent({
          message:
            `state database ${database}: ${reason}; the database was left as it was (schema version ${version})`,
          remediation: Option.match(backup, {
            onNone: () => "this release cannot use the state directory; report the message above",
            onSome: (b) =>
              `this release cannot use the state directory; the previous release still can, and ${b.path} holds a copy`
          })
        })
      }
      if (Option.isNone(backup)) {
        return yield* new Permanent({
          message: `state database ${database}: ${reason}; the new database is incomplete`,
          remediation: `remove ${database} (it holds no records yet) and try again`
        })
      }
      yield* restoreInPlace(backup.value.path, database)
      return yield* new Permanent({
        message: `state database ${database}: ${reason}; it was restored from ${backup.value.path}, `
          + `taken just before (schema version ${initial})`,
        remediation: "this release cannot use the state directory; the previous release still can"
      })
    }
  })

const restrictModes = (database: string) =>
  Effect.sync(() => {
    for (const file of [database, `${database}-wal`, `${database}-shm`]) {
      try {
        NodeFs.chmodSync(file, 0o600)
      } catch {
        // The -wal and -shm files come and go with connections.
      }
    }
  })

/**
 * SqlClient for the state store of the current `Home`, checked and migrated. `migrations` is for tests;
 * `expectRecords: false` (recovery) accepts a missing or empty database beside workspaces and backups.
 */
export const databaseLayer = (
  options: { readonly migrations?: ReadonlyArray<Migration>; readonly expectRecords?: boolean } = {}
): Layer.Layer<SqlClient.SqlClient, Permanent | ResourceExhausted, Home> =>
  Layer.unwrapEffect(
    Effect.gen(function*() {
      const home = yield* Home
      const database = home.database
      yield* preflight(home, options.expectRecords ?? true)
      const client = SqliteClient.layer({ filename: database }).pipe(
        // better-sqlite3 throws from its constructor (a defect to Effect) on a file it cannot open.
        Layer.catchAllCause((cause) => Layer.fail(openFailure(database)(Cause.squash(cause))))
      )
      const setup = Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        // WAL keeps readers off writers' backs; FULL syncs the WAL at every commit, so nothing a command
        // was told succeeded is lost to a power cut (NORMAL could lose the last commits).
        yield* sql.unsafe("PRAGMA synchronous = FULL").pipe(Effect.mapError(openFailure(database)))
        yield* migrate(database, options.migrations ?? releasedMigrations)
        yield* restrictModes(database)
      })
      return Layer.effectDiscard(setup).pipe(Layer.provideMerge(client))
    })
  )

/** SqlClient for the state store of the current `Home`, checked and migrated. */
export const layer: Layer.Layer<SqlClient.SqlClient, Permanent | ResourceExhausted, Home> = databaseLayer()
