/**
 * What a failed statement of the state database means for the user. SQLite's own message and code are
 * kept (not @effect/sql's generic "Failed to execute statement"), and a damaged, unreadable or missing
 * database becomes one `permanent` error that names the file and the command that recovers it.
 */
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { isNoSpace } from "../../domain/DiskFull.ts"
import { Permanent } from "../../domain/Errors.ts"

export interface SqliteFailure {
  /** `SQLITE_CORRUPT`, `SQLITE_NOTADB`, `SQLITE_BUSY`…, when SQLite gave one. */
  readonly code: string | undefined
  readonly message: string
}

/** The innermost SQLite error in a chain of causes (SqlError → SqliteError), else the outermost message. */
export const sqliteFailureOf = (cause: unknown): SqliteFailure => {
  let current: unknown = cause
  let found: SqliteFailure | undefined
  for (let depth = 0; depth < 6 && current !== undefined && current !== null; depth++) {
    const code = (current as { readonly code?: unknown }).code
    if (typeof code === "string" && code.startsWith("SQLITE_")) {
      found = { code, message: String((current as { readonly message?: unknown }).message ?? code) }
    }
    current = (current as { readonly cause?: unknown }).cause
  }
  if (found !== undefined) return found
  return { code: undefined, message: cause instanceof Error ? cause.message : String(cause) }
}

/** Codes that mean the file itself is damaged or is not a database: retrying cannot help, restoring can. */
export const isDamage = (failure: SqliteFailure): boolean =>
  failure.code !== undefined
  && (failure.code.startsWith("SQLITE_CORRUPT") || failure.code === "SQLITE_NOTADB")

const freeBytes = (dir: string): number => {
  try {
    const stats = NodeFs.statfsSync(dir)
    return stats.bavail * stats.bsize
  } catch {
    return Number.POSITIVE_INFINITY
  }
}

/**
 * Whether a failure of the database in `dir` comes from a full file system. SQLite says SQLITE_FULL
 * when a page cannot be written, but a -shm or -wal file that cannot be created or grown on open is an
 * I/O error (SQLITE_IOERR_SHMSIZE, SQLITE_IOERR_WRITE…): that is a full disk too when the directory
 * has (next to) no space left, and must not read as a damaged database.
 */
export const isFullDisk = (failure: SqliteFailure, dir: string): boolean =>
  failure.code === "SQLITE_FULL"
  || isNoSpace(failure.message)
  || (failure.code?.startsWith("SQLITE_IOERR") === true && freeBytes(dir) < 256 * 1024)

/** The file behind an SqlClient of @effect/sql-sqlite-node (the client object carries its config). */
export const databaseFileOf = (sql: unknown): string | undefined => {
  const filename = (sql as { readonly config?: { readonly filename?: unknown } } | undefined)?.config
    ?.filename
  return typeof filename === "string" && filename !== ":memory:" && filename !== "" ? filename : undefined
}

/** How to get a damaged or lost database back; the same words wherever the problem is found. */
export const recoveryRemediation = (database: string | undefined): string => {
  const backups = database === undefined ? "backups/" : NodePath.join(NodePath.dirname(database), "backups")
  return `run \`microagent state restore\`: it sets the damaged file aside, restores the newest backup (${backups}) `
    + "and re-registers the workspaces, volumes and images found on disk; `microagent state check` shows what is wrong"
}

/** A database that cannot be used as it is: damaged, truncated, unreadable or missing. */
export const unusableDatabase = (database: string | undefined, problem: string): Permanent =>
  new Permanent({
    message: `state database ${database ?? "state.db"} ${problem}`,
    remediation: recoveryRemediation(database)
  })

/**
 * Maps a failure of the state database to a `Permanent` error: damage becomes `unusableDatabase`, anything
 * else keeps the caller's prefix and remediation with SQLite's own message.
 */
export const storeFailure = (options: {
  readonly prefix: string
  readonly remediation: string
  readonly database?: string | undefined
}) =>
(cause: unknown): Permanent => {
  if (cause instanceof Permanent) return cause
  const failure = sqliteFailureOf(cause)
  if (isDamage(failure)) return unusableDatabase(options.database, `is damaged: ${failure.message}`)
  return new Permanent({
    message: `${options.prefix}: ${failure.message}${failure.code === undefined ? "" : ` (${failure.code})`}`,
    remediation: options.remediation
  })
}
