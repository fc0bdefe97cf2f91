/**
 * The state database as a file, apart from the store's connection: its full check, the signs in the
 * state directory that it had records, and its backups. `state check`, `state backup` and `doctor` use
 * it, so they also run when the store cannot be opened.
 */
import { Context, type Effect } from "effect"
import type { Permanent } from "../domain/Errors.ts"
import type { HomeShape } from "./Home.ts"

export interface DatabaseBackup {
  readonly path: string
  /** Why it was taken: `manual`, `hourly`, `pre-migration-v3`, `pre-restore`. */
  readonly reason: string
  readonly createdAt: string
  readonly sizeBytes: number
}

export interface DatabaseFileCheck {
  readonly ok: boolean
  /** What SQLite reported, empty when ok. */
  readonly problems: ReadonlyArray<string>
  /** The schema version (`user_version`) when it could be read. */
  readonly schemaVersion?: number
}

export interface StateDatabaseShape {
  /** The schema version this release migrates to. */
  readonly currentSchemaVersion: number
  /** The full `integrity_check` of the file `database`, with its own connection; never creates it. */
  readonly checkFile: (database: string) => DatabaseFileCheck
  /** What in `home` shows it had records (backups, manifests, volumes): a missing store beside them was lost. */
  readonly evidenceOfRecords: (home: HomeShape) => ReadonlyArray<string>
  /** The backups of `database`, newest first. */
  readonly backups: (database: string) => ReadonlyArray<DatabaseBackup>
  /** What to do about a damaged or lost `database`. */
  readonly recoveryRemediation: (database: string) => string
  /** A consistent backup of `database` (rotated among its backups), or to `to`, a file that must not exist. */
  readonly backup: (
    database: string,
    options: { readonly reason: string; readonly to?: string | undefined }
  ) => Effect.Effect<DatabaseBackup, Permanent>
}

export class StateDatabase
  extends Context.Tag("microagent/StateDatabase")<StateDatabase, StateDatabaseShape>()
{}
