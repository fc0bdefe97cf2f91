/**
 * `state restore`: puts a backup of `state.db` back and reconciles it with the disk and the VMMs.
 *
 * It must run with no runtime serving the directory (a runtime holds the database open and would
 * keep writing to the file being replaced), so it stops the one that runs (SIGTERM; its VMMs are
 * detached and keep running) and holds the runtime lock until it is done, so that none starts
 * meanwhile. That is also why restore is a CLI and library operation, not an RPC procedure: the RPC
 * API is served by the runtime it has to stop.
 *
 * The current database files are renamed aside (`state.db.damaged-STAMP`), never deleted. With no
 * backup at all, an unusable database is set aside and a new one is filled from the disk.
 */
import { Duration, Effect, Layer, Schedule, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { NotFound, Permanent } from "../domain/Errors.ts"
import { isLive } from "../domain/State.ts"
import { defaultBackend } from "../layers/backends/Backends.ts"
import { WorkspaceBackends } from "../layers/backends/WorkspaceBackends.ts"
import * as HostServices from "../layers/host/HostServices.ts"
import { isAlive, signal } from "../layers/process/Processes.ts"
import { backupsDirOf, checkFile, listBackups, replaceWithBackup, setAside } from "../layers/state/Backups.ts"
import { databaseLayer } from "../layers/state/Database.ts"
import { DiskReconcileReport, reconcileWithDisk } from "../layers/state/Recovery.ts"
import * as SqliteStateStore from "../layers/state/SqliteStateStore.ts"
import * as VolumesLive from "../layers/volume/VolumesLive.ts"
import { Home, type HomeShape } from "../services/Home.ts"
import { StateStore } from "../services/StateStore.ts"
import { reconcileAll, runtimeFiles } from "./Runtime.ts"
import { acquireRuntimeLock } from "./RuntimeLock.ts"

export const RestoreReport = Schema.Struct({
  database: Schema.String,
  /** The backup put back; absent when there was none and a new database was filled from the disk. */
  restoredFrom: Schema.optional(Schema.String),
  /** The previous database files, renamed aside. */
  setAside: Schema.Array(Schema.String),
  /** Backups skipped because they do not check clean. */
  skippedBackups: Schema.Array(Schema.String),
  /** The pid of the runtime that was stopped first. */
  stoppedRuntime: Schema.optional(Schema.Number),
  disk: DiskReconcileReport,
  /** Live workspaces after their VMMs were looked at: still running (the next runtime re-adopts them) or ended. */
  vms: Schema.Array(Schema.Struct({ workspace: Schema.String, from: Schema.String, to: Schema.String }))
})
export type RestoreReport = typeof RestoreReport.Type

const runtimePid = (home: HomeShape): number | undefined => {
  try {
    const [pid, startTime] = NodeFs.readFileSync(runtimeFiles(home.root).pid, "utf8").trim().split(/\s+/)
    const number = Number(pid)
    return Number.isInteger(number) && number > 0 && isAlive(number, startTime || undefined)
      ? number
      : undefined
  } catch {
    return undefined
  }
}

/**
 * Stops the runtime serving `home` (if any) and takes its lock for the scope. SIGTERM first; SIGKILL
 * after 10 s. Either way its VMMs keep running.
 */
const takeOverRuntime = (home: HomeShape) =>
  Effect.gen(function*() {
    const lock = runtimeFiles(home.root).lock
    const pid = runtimePid(home)
    if (pid !== undefined) signal(pid, "SIGTERM")
    const started = Date.now()
    yield* acquireRuntimeLock(lock).pipe(
      Effect.tapError(() =>
        Effect.sync(() => {
          const still = runtimePid(home)
          if (still !== undefined && Date.now() - started > 10_000) signal(still, "SIGKILL")
        })
      ),
      Effect.retry({
        while: (error) => error._tag === "Conflict",
        schedule: Schedule.spaced(Duration.millis(100)).pipe(Schedule.upTo(Duration.seconds(20)))
      })
    )
    return pid
  })

/** The backup named on the command line: a path, or a file name in `<state>/backups/`. */
const resolveBackup = (home: HomeShape, name: string) => {
  const candidates = [NodePath.resolve(name), NodePath.join(backupsDirOf(home.database), name)]
  const found = candidates.find((path) => NodeFs.existsSync(path))
  return found === undefined
    ? Effect.fail(
      new NotFound({
        message: `backup ${name} not found`,
        remediation: `\`microagent state check\` lists the backups in ${backupsDirOf(home.database)}`
      })
    )
    : Effect.succeed(found)
}

export interface RestoreOptions {
  /** A backup file (path, or name in `<state>/backups/`); default the newest that checks clean. */
  readonly backup?: string | undefined
}

export const restoreState = (root: string, options: RestoreOptions = {}) =>
  Effect.scoped(Effect.gen(function*() {
    const home = yield* Home.make(root)
    const database = home.database
    const stoppedRuntime = yield* takeOverRuntime(home)
    const skippedBackups: Array<string> = []
    let restoredFrom: string | undefined
    let setAsideFiles: ReadonlyArray<string> = []
    if (options.backup !== undefined) {
      restoredFrom = yield* resolveBackup(home, options.backup)
      const check = checkFile(restoredFrom, { full: true })
      if (!check.ok) {
        return yield* new Permanent({
          message: `backup ${restoredFrom} does not check clean: ${check.problems.slice(0, 3).join("; ")}`,
          remediation: "pick another: `microagent state check` lists the backups"
        })
      }
    } else {
      for (const backup of listBackups(backupsDirOf(database))) {
        if (checkFile(backup.path, { full: true }).ok) {
          restoredFrom = backup.path
          break
        }
        skippedBackups.push(backup.path)
      }
    }
    if (restoredFrom !== undefined) {
      setAsideFiles = yield* replaceWithBackup(restoredFrom, database)
    } else if (NodeFs.existsSync(database) && checkFile(database).ok && NodeFs.statSync(database).size > 0) {
      return yield* new NotFound({
        message: `there is no backup to restore in ${backupsDirOf(database)}, and ${database} checks clean`,
        remediation: "nothing to restore; `microagent state backup` takes a backup"
      })
    } else {
      // Nothing to restore from: the unusable file goes aside and the disk fills a new database.
      setAsideFiles = yield* setAside(database)
    }

    const store = Layer.mergeAll(SqliteStateStore.layer, VolumesLive.layer, HostServices.layer).pipe(
      Layer.provideMerge(databaseLayer({ expectRecords: false })),
      Layer.provideMerge(Layer.succeed(Home, home))
    )
    const services = WorkspaceBackends.layer({ defaultBackend: defaultBackend() }).pipe(
      Layer.provideMerge(store)
    )
    const { disk, vms } = yield* Effect.gen(function*() {
      const disk = yield* reconcileWithDisk
      const stateStore = yield* StateStore
      const before = (yield* stateStore.list).filter((ws) => isLive(ws.state))
      yield* reconcileAll({ reapOrphans: false }) // restore ends nothing; gc and the runtime reap orphans
      const vms: Array<{ workspace: string; from: string; to: string }> = []
      for (const workspace of before) {
        const after = yield* stateStore.get(workspace.name)
        vms.push({ workspace: workspace.name, from: workspace.state, to: after.state })
      }
      return { disk, vms }
    }).pipe(Effect.provide(services))
    return {
      database,
      ...(restoredFrom === undefined ? {} : { restoredFrom }),
      setAside: setAsideFiles,
      skippedBackups,
      ...(stoppedRuntime === undefined ? {} : { stoppedRuntime }),
      disk,
      vms
    } satisfies RestoreReport
  }))
