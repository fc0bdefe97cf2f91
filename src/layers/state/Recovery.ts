/**
 * Bringing a restored (or new) `state.db` in line with what is on disk, after `microagent state
 * restore`: workspaces whose directories hold a manifest but have no record (or an older one) are
 * re-registered from it, records whose disks are gone are marked `failed` with the reason, volume
 * files without a record and image record files whose images lost their record are re-registered.
 * Nothing on disk is deleted or changed besides the database and the manifests it rewrites.
 */
import { SqlClient } from "@effect/sql"
import { DateTime, Effect, Either, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { volumeNameProblem } from "../../domain/MountFlag.ts"
import { isLive } from "../../domain/State.ts"
import { Workspace } from "../../domain/Workspace.ts"
import { Home } from "../../services/Home.ts"
import { rootDiskOf } from "../../services/Hypervisor.ts"
import { ImageRecord } from "../../services/ImageStore.ts"
import { StateStore } from "../../services/StateStore.ts"
import { readImageRecordFiles } from "../image/ImageRecordFiles.ts"
import { readManifest } from "./Manifest.ts"
import { databaseFileOf, storeFailure } from "./StoreFailure.ts"

export const DiskReconcileReport = Schema.Struct({
  /** Workspaces brought back from their manifests (no record in the restored database). */
  reregistered: Schema.Array(Schema.String),
  /** Workspaces whose manifest was newer than the restored record, and replaced it. */
  refreshed: Schema.Array(Schema.String),
  /** Records whose disks are gone, now `failed`. */
  failed: Schema.Array(Schema.Struct({ workspace: Schema.String, reason: Schema.String })),
  /** Directories under workspaces/ that could not be re-registered (left as they are). */
  unrecognized: Schema.Array(Schema.Struct({ path: Schema.String, reason: Schema.String })),
  volumes: Schema.Array(Schema.String),
  /** Volume records whose file is gone (kept: `volume rm` removes them). */
  volumesMissing: Schema.Array(Schema.String),
  images: Schema.Array(Schema.String),
  /** Named networks that workspaces are on but the database does not know: `network create` them. */
  networksMissing: Schema.Array(Schema.String)
})
export type DiskReconcileReport = typeof DiskReconcileReport.Type

const entries = (dir: string) => {
  try {
    return NodeFs.readdirSync(dir, { withFileTypes: true })
  } catch {
    return []
  }
}

const encodeVolume = Schema.encodeSync(Schema.parseJson(Schema.Struct({
  name: Schema.String,
  path: Schema.String,
  sizeMiB: Schema.Int,
  createdAt: Schema.DateTimeUtc
})))
const encodeImage = Schema.encodeSync(Schema.parseJson(ImageRecord))

/** A record as recovery writes it: nobody is starting or halting it any more. */
const unowned = (workspace: Workspace, patch: Partial<Workspace> = {}) =>
  new Workspace({ ...workspace, ...patch, owner: undefined })

export const reconcileWithDisk = Effect.gen(function*() {
  const home = yield* Home
  const store = yield* StateStore
  const sql = yield* SqlClient.SqlClient
  const sqlError = storeFailure({
    prefix: "state recovery",
    remediation: "`microagent state check` reports on the database",
    database: databaseFileOf(sql)
  })
  const reregistered: Array<string> = []
  const refreshed: Array<string> = []
  const failed: Array<{ workspace: string; reason: string }> = []
  const unrecognized: Array<{ path: string; reason: string }> = []

  const records = new Map((yield* store.list).map((ws) => [ws.name as string, ws]))
  for (const entry of entries(home.workspaces)) {
    if (!entry.isDirectory() || entry.name.startsWith(".")) continue
    const dir = home.workspaceDir(entry.name)
    const manifest = readManifest(dir)
    const record = records.get(entry.name)
    if (Either.isLeft(manifest)) {
      if (record === undefined) unrecognized.push({ path: dir, reason: manifest.left })
      continue
    }
    const workspace = manifest.right
    if (workspace.name !== entry.name) {
      unrecognized.push({ path: dir, reason: `its manifest names workspace ${workspace.name}` })
      continue
    }
    if (record === undefined) {
      yield* store.recover(unowned(workspace), "re-registered from its manifest after state.db was restored")
      reregistered.push(entry.name)
    } else if (DateTime.greaterThan(workspace.updatedAt, record.updatedAt)) {
      yield* store.recover(unowned(workspace), "its manifest was newer than the restored record")
      refreshed.push(entry.name)
    }
  }

  for (const workspace of yield* store.list) {
    if (isLive(workspace.state) || workspace.state === "failed") continue
    if (NodeFs.existsSync(rootDiskOf(workspace.rootfsPath).path)) continue
    const reason = `its disk ${workspace.rootfsPath} is gone`
    yield* store.recover(unowned(workspace, { state: "failed", vm: undefined }), reason)
    failed.push({ workspace: workspace.name, reason })
  }

  // Volumes: a file without a record is re-registered with the file's size.
  const volumeRows = yield* sql<{ name: string; record: string }>`SELECT name, record FROM volumes`.pipe(
    Effect.mapError(sqlError)
  )
  const knownVolumes = new Set(volumeRows.map((row) => row.name))
  const volumes: Array<string> = []
  for (const entry of entries(home.volumes)) {
    if (!entry.isFile() || !entry.name.endsWith(".ext4")) continue
    const name = entry.name.slice(0, -".ext4".length)
    if (knownVolumes.has(name) || volumeNameProblem(name) !== undefined) continue
    const path = NodePath.join(home.volumes, entry.name)
    const stat = NodeFs.statSync(path)
    const createdAt = DateTime.unsafeMake(stat.mtimeMs)
    yield* sql`INSERT INTO volumes (name, record, attached_to, created_at)
      VALUES (${name}, ${
      encodeVolume({ name, path, sizeMiB: Math.max(1, Math.floor(stat.size / (1024 * 1024))), createdAt })
    }, NULL, ${DateTime.formatIso(createdAt)})
      ON CONFLICT (name) DO NOTHING`.pipe(Effect.mapError(sqlError))
    volumes.push(name)
  }
  const volumesMissing = volumeRows
    .filter((row) => !NodeFs.existsSync(NodePath.join(home.volumes, `${row.name}.ext4`)))
    .map((row) => row.name)

  // Images: a record file whose image lost its record, and whose baseline (if any) is still there.
  const imageRows = yield* sql<{ ref: string }>`SELECT ref FROM images`.pipe(Effect.mapError(sqlError))
  const knownImages = new Set(imageRows.map((row) => row.ref))
  const images: Array<string> = []
  for (const record of readImageRecordFiles(home.images)) {
    if (knownImages.has(record.ref)) continue
    if (record.baselinePath !== undefined && !NodeFs.existsSync(record.baselinePath)) continue
    yield* sql`INSERT INTO images (ref, digest, record, created_at)
      VALUES (${record.ref}, ${record.digest}, ${encodeImage(record)}, ${
      DateTime.formatIso(record.createdAt)
    })
      ON CONFLICT (ref) DO NOTHING`.pipe(Effect.mapError(sqlError))
    images.push(record.ref)
  }

  const networkRows = yield* sql<{ name: string }>`SELECT name FROM networks`.pipe(Effect.mapError(sqlError))
  const knownNetworks = new Set(networkRows.map((row) => row.name))
  const networksMissing = [
    ...new Set((yield* store.list).flatMap((ws) => ws.networks.filter((n) => !knownNetworks.has(n))))
  ].sort()

  return {
    reregistered,
    refreshed,
    failed,
    unrecognized,
    volumes,
    volumesMissing,
    images,
    networksMissing
  } satisfies DiskReconcileReport
})
