/**
 * Backups of `state.db` and the checks that decide whether a database file can be used. Backups are
 * taken with SQLite's online backup API (a consistent copy while other connections keep writing),
 * checked, made self-contained (no -wal beside them), written 0600 under a temporary name and renamed
 * into `<state>/backups/` (0700), and rotated to the newest N. These functions work on files, with their
 * own connections, so that they also run when no store can be opened.
 */
import Sqlite from "better-sqlite3"
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Permanent } from "../../domain/Errors.ts"
import { type SqliteFailure, sqliteFailureOf } from "./StoreFailure.ts"

/** How many backups are kept: `MICROAGENT_STATE_BACKUPS`, default 5. */
const backupsToKeep = (): number => {
  const fromEnv = Number(process.env.MICROAGENT_STATE_BACKUPS)
  return Number.isInteger(fromEnv) && fromEnv >= 1 ? fromEnv : 5
}

/** The least time between two automatic backups: `MICROAGENT_STATE_BACKUP_INTERVAL_SECONDS`, default an hour. */
const backupIntervalMs = (): number => {
  const fromEnv = Number(process.env.MICROAGENT_STATE_BACKUP_INTERVAL_SECONDS)
  return (Number.isFinite(fromEnv) && fromEnv > 0 ? fromEnv : 3600) * 1000
}

export const backupsDirOf = (database: string) => NodePath.join(NodePath.dirname(database), "backups")

export interface BackupFile {
  readonly path: string
  /** Why it was taken: `manual`, `hourly`, `pre-migration-v3`, `pre-restore`. */
  readonly reason: string
  readonly createdAt: string
  readonly sizeBytes: number
}

const backupName = /^state-(\d{8}T\d{6}\.\d{3}Z)-([a-z0-9-]+)\.db$/

const stamp = (date: Date) => date.toISOString().replace(/[-:]/g, "")

const unstamp = (text: string) =>
  `${text.slice(0, 4)}-${text.slice(4, 6)}-${text.slice(6, 8)}T${text.slice(9, 11)}:${text.slice(11, 13)}:${
    text.slice(13)
  }`

/** The backups in `dir`, newest first. */
export const listBackups = (dir: string): ReadonlyArray<BackupFile> => {
  let names: Array<string>
  try {
    names = NodeFs.readdirSync(dir)
  } catch {
    return []
  }
  return names.flatMap((name) => {
    const match = backupName.exec(name)
    if (match === null) return []
    const path = NodePath.join(dir, name)
    try {
      return [{
        path,
        reason: match[2]!,
        createdAt: unstamp(match[1]!),
        sizeBytes: NodeFs.statSync(path).size
      }]
    } catch {
      return []
    }
  }).sort((a, b) => (a.path < b.path ? 1 : a.path > b.path ? -1 : 0))
}

export interface FileCheck {
  readonly ok: boolean
  /** What SQLite reported, empty when ok. */
  readonly problems: ReadonlyArray<string>
  /** The schema version (`user_version`) when it could be read. */
  readonly schemaVersion?: number
  /** SQLite's error when the check could not run at all (damage, or a busy or unreadable file). */
  readonly failure?: SqliteFailure
}

/** Opens a database file, runs `fn` and closes it; SQLite's failures come back as values. */
const withFile = <A>(path: string, options: Sqlite.Options, fn: (db: Sqlite.Database) => A): A => {
  const db = new Sqlite(path, { fileMustExist: true, ...options })
  try {
    return fn(db)
  } finally {
    db.close()
  }
}

/**
 * Checks a database file: `quick_check` (every page read, structure verified; O(N)) or the full
 * `integrity_check` (also indexes against their tables). Never creates the file.
 */
export const checkFile = (path: string, options: { readonly full?: boolean } = {}): FileCheck => {
  try {
    return withFile(path, { timeout: 5000 }, (db) => {
      const pragma = options.full === true ? "integrity_check" : "quick_check"
      const rows = db.prepare(`PRAGMA ${pragma}`).pluck().all() as Array<unknown>
      const problems = rows.map((row) => String(row).replace(/\s*\n\s*/g, " ")).filter((row) => row !== "ok")
      const schemaVersion = Number(db.pragma("user_version", { simple: true }))
      return { ok: problems.length === 0, problems, schemaVersion }
    })
  } catch (cause) {
    const failure = sqliteFailureOf(cause)
    return {
      ok: false,
      problems: [`${failure.message}${failure.code === undefined ? "" : ` (${failure.code})`}`],
      failure
    }
  }
}

/** Tables in the database besides SQLite's own: zero for a file that was never a store (or was emptied). */
export const tableCount = (path: string): number =>
  withFile(path, { timeout: 5000 }, (db) =>
    Number(
      db.prepare("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .pluck()
        .get()
    ))

const backupFailed = (what: string) => (cause: unknown) =>
  cause instanceof Permanent ? cause : new Permanent({
    message: `${what}: ${sqliteFailureOf(cause).message}`,
    remediation: "check the free space and permissions of the state directory"
  })

const syncDir = (dir: string) => {
  try {
    const fd = NodeFs.openSync(dir, "r")
    try {
      NodeFs.fsyncSync(fd)
    } finally {
      NodeFs.closeSync(fd)
    }
  } catch {
    // Some filesystems cannot sync a directory; the rename is still atomic.
  }
}

const syncFile = (path: string) => {
  const fd = NodeFs.openSync(path, "r+")
  try {
    NodeFs.fsyncSync(fd)
  } finally {
    NodeFs.closeSync(fd)
  }
}

/**
 * Copies the database `source` into `destination` (which must not exist) with the online backup API,
 * then checks the copy and makes it self-contained. The copy is 0600.
 */
const copyDatabase = (source: string, destination: string) =>
  Effect.gen(function*() {
    yield* Effect.tryPromise({
      try: async () => {
        const db = new Sqlite(source, { fileMustExist: true, timeout: 5000 })
        try {
          await db.backup(destination)
        } finally {
          db.close()
        }
      },
      catch: backupFailed(`cannot copy ${source}`)
    })
    yield* Effect.try({
      try: () => {
        NodeFs.chmodSync(destination, 0o600)
        withFile(destination, {}, (db) => {
          // The copy carries the source's WAL flag; a backup is one file, so it goes back to a rollback journal.
          db.pragma("journal_mode = DELETE")
        })
        const check = checkFile(destination)
        if (!check.ok) {
          throw new Permanent({
            message: `the copy of ${source} does not check clean: ${check.problems.slice(0, 3).join("; ")}`,
            remediation: "`microagent state check` reports what is wrong with the database"
          })
        }
        syncFile(destination)
      },
      catch: backupFailed(`cannot finish the copy of ${source}`)
    })
  }).pipe(
    Effect.tapError(() =>
      Effect.sync(() => {
        for (const suffix of ["", "-wal", "-shm", "-journal"]) {
          NodeFs.rmSync(`${destination}${suffix}`, { force: true })
        }
      })
    )
  )

const partialName = (dir: string) =>
  NodePath.join(dir, `.partial-${process.pid}-${randomBytes(4).toString("hex")}.db`)

/** Removes all but the newest `keep` backups of `dir`. */
const pruneBackups = (dir: string, keep: number = backupsToKeep()): ReadonlyArray<string> => {
  const removed: Array<string> = []
  for (const old of listBackups(dir).slice(keep)) {
    NodeFs.rmSync(old.path, { force: true })
    removed.push(old.path)
  }
  return removed
}

/**
 * A consistent backup of `database` into its state directory's `backups/`, then rotation. `to` writes
 * the backup to that file instead (no rotation); it must not exist.
 */
export const takeBackup = (
  database: string,
  options: { readonly reason: string; readonly to?: string | undefined }
): Effect.Effect<BackupFile, Permanent> =>
  Effect.gen(function*() {
    if (!NodeFs.existsSync(database)) {
      return yield* new Permanent({
        message: `there is no state database to back up at ${database}`,
        remediation: "nothing to do: a state directory without state.db has no records yet"
      })
    }
    const target = options.to === undefined ? undefined : NodePath.resolve(options.to)
    if (target !== undefined && NodeFs.existsSync(target)) {
      return yield* new Permanent({
        message: `${target} exists already`,
        remediation: "give --to a path that does not exist; backups never overwrite a file"
      })
    }
    const dir = target === undefined ? backupsDirOf(database) : NodePath.dirname(target)
    yield* Effect.try({
      try: () => {
        if (target === undefined) {
          NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
          NodeFs.chmodSync(dir, 0o700)
        }
      },
      catch: backupFailed(`cannot create ${dir}`)
    })
    const partial = partialName(dir)
    yield* copyDatabase(database, partial)
    const now = new Date()
    const path = target ?? NodePath.join(dir, `state-${stamp(now)}-${options.reason}.db`)
    yield* Effect.try({
      try: () => {
        if (target !== undefined) {
          // link(2) fails when the target exists, where rename(2) would replace it.
          NodeFs.linkSync(partial, target)
          NodeFs.rmSync(partial)
        } else {
          NodeFs.renameSync(partial, path)
        }
        syncDir(dir)
      },
      catch: backupFailed(`cannot write ${path}`)
    }).pipe(Effect.tapError(() => Effect.sync(() => NodeFs.rmSync(partial, { force: true }))))
    if (target === undefined) pruneBackups(dir)
    return {
      path,
      reason: options.reason,
      createdAt: now.toISOString(),
      sizeBytes: NodeFs.statSync(path).size
    }
  })

/** The newest backup's age in milliseconds, or undefined when there is none. */
const newestBackupAgeMs = (database: string): number | undefined => {
  const newest = listBackups(backupsDirOf(database))[0]
  return newest === undefined ? undefined : Date.now() - Date.parse(newest.createdAt)
}

/**
 * Overwrites the live database `database` with the content of `backup`, through SQLite (so that
 * connections open on it see the change), for a migration that must be undone in place.
 */
export const restoreInPlace = (backup: string, database: string) =>
  Effect.tryPromise({
    try: async () => {
      const db = new Sqlite(backup, { readonly: true, fileMustExist: true })
      try {
        await db.backup(database)
      } finally {
        db.close()
      }
    },
    catch: backupFailed(`cannot restore ${database} from ${backup}`)
  })

/**
 * Replaces the database file with a copy of `backup`: the copy is made beside it, every file of the
 * current database (state.db, -wal, -shm) is renamed aside as `state.db.damaged-STAMP*` (never
 * deleted), and the copy is renamed into place. The caller holds the runtime lock.
 */
export const replaceWithBackup = (backup: string, database: string) =>
  Effect.gen(function*() {
    const partial = `${database}.restoring-${process.pid}-${randomBytes(4).toString("hex")}`
    yield* copyDatabase(backup, partial)
    const aside = `${database}.damaged-${stamp(new Date())}`
    const setAside: Array<string> = []
    yield* Effect.try({
      try: () => {
        // The -wal goes first: a WAL left beside another database would be replayed into it.
        for (const suffix of ["-wal", "-shm", ""]) {
          if (!NodeFs.existsSync(`${database}${suffix}`)) continue
          NodeFs.renameSync(`${database}${suffix}`, `${aside}${suffix}`)
          setAside.push(`${aside}${suffix}`)
        }
        NodeFs.renameSync(partial, database)
        syncDir(NodePath.dirname(database))
      },
      catch: backupFailed(`cannot put the restored database in place at ${database}`)
    }).pipe(Effect.tapError(() => Effect.sync(() => NodeFs.rmSync(partial, { force: true }))))
    return setAside
  })

/** Sets the current database files aside (as `replaceWithBackup` does) so that a fresh one can be made. */
export const setAside = (database: string) =>
  Effect.try({
    try: () => {
      const aside = `${database}.damaged-${stamp(new Date())}`
      const moved: Array<string> = []
      for (const suffix of ["-wal", "-shm", ""]) {
        if (!NodeFs.existsSync(`${database}${suffix}`)) continue
        NodeFs.renameSync(`${database}${suffix}`, `${aside}${suffix}`)
        moved.push(`${aside}${suffix}`)
      }
      syncDir(NodePath.dirname(database))
      return moved
    },
    catch: backupFailed(`cannot set ${database} aside`)
  })

let lastLookMs = 0

/**
 * The runtime's automatic backup: taken when the newest backup is older than the interval (an hour by
 * default), looked at no more than once a minute. A failure is logged; the runtime carries on.
 */
export const backupIfDue = (database: string) =>
  Effect.suspend(() => {
    const now = Date.now()
    if (now - lastLookMs < Math.min(60_000, backupIntervalMs())) return Effect.void
    lastLookMs = now
    const age = newestBackupAgeMs(database)
    if (age !== undefined && age < backupIntervalMs()) return Effect.void
    return takeBackup(database, { reason: "hourly" }).pipe(
      Effect.tap((backup) => Effect.logInfo(`backed up the state database to ${backup.path}`)),
      Effect.catchAll((error) => Effect.logWarning(`automatic backup failed: ${error.message}`))
    )
  })
