/**
 * The services of `doctor` and `state check|backup`, which run without a store or a backend: the state
 * database as a file, and the host's probes.
 */
import { Layer } from "effect"
import { HostProbes } from "../../services/HostProbes.ts"
import { StateDatabase } from "../../services/StateDatabase.ts"
import { fabricProblem } from "../network/Fabric.ts"
import { onPath } from "../process/Installed.ts"
import { backupsDirOf, checkFile, listBackups, takeBackup } from "../state/Backups.ts"
import { evidenceOfRecords } from "../state/Database.ts"
import { migrations } from "../state/Migrations.ts"
import { recoveryRemediation } from "../state/StoreFailure.ts"

export const layerStateDatabase: Layer.Layer<StateDatabase> = Layer.succeed(
  StateDatabase,
  StateDatabase.of({
    currentSchemaVersion: migrations.length,
    checkFile: (database) => checkFile(database, { full: true }),
    evidenceOfRecords,
    backups: (database) => listBackups(backupsDirOf(database)),
    recoveryRemediation,
    backup: takeBackup
  })
)

export const layerHostProbes: Layer.Layer<HostProbes> = Layer.succeed(
  HostProbes,
  HostProbes.of({ onPath, fabricProblem })
)

export type HostChecks = StateDatabase | HostProbes

export const layer: Layer.Layer<HostChecks> = Layer.mergeAll(layerStateDatabase, layerHostProbes)
