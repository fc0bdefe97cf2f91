/**
 * Volumes on SQLite and ext4 files: each volume is `<state>/volumes/<name>.ext4` (0600, in a 0700
 * directory), made with mke2fs and resized offline with e2fsck + resize2fs. The holder column is
 * claimed by compare-and-set, so two processes never both hold a volume read-write.
 */
import { SqlClient } from "@effect/sql"
import { DateTime, Effect, Layer, Option, Schema } from "effect"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { classifyNoSpace } from "../../domain/DiskFull.ts"
import { Conflict, InvalidInput, NotFound, Permanent } from "../../domain/Errors.ts"
import { invalidVolumeName, volumeNameProblem } from "../../domain/MountFlag.ts"
import { Home } from "../../services/Home.ts"
import { volumeDirectoryOf } from "../../services/Hypervisor.ts"
import { defaultVolumeMiB, Volume, Volumes, type VolumesShape } from "../../services/Volumes.ts"
import { resizeExt4, toolError } from "../rootfs/Ext4Resize.ts"
import { runToolOk } from "../rootfs/Tools.ts"
import { databaseFileOf, storeFailure } from "../state/StoreFailure.ts"

const MiB = 1024 * 1024
const minVolumeMiB = 16
const maxVolumeMiB = 16 * 1024 * 1024
export { defaultVolumeMiB } from "../../services/Volumes.ts"

/** The holder a resize puts on a volume while it works, so no workspace attaches it meanwhile. */
const resizeHolder = (pid: number) => `!resize:${pid}`

interface Row {
  readonly name: string
  readonly record: string
  readonly attached_to: string | null
}

const Stored = Schema.parseJson(Schema.Struct({
  name: Schema.String,
  path: Schema.String,
  sizeMiB: Schema.Int,
  createdAt: Schema.DateTimeUtc
}))
const encodeStored = Schema.encodeSync(Stored)
const decodeStored = Schema.decodeUnknown(Stored)

const notFound = (name: string) =>
  new NotFound({
    message: `volume ${name} not found`,
    remediation: "`microagent volume ls` lists the volumes; `microagent volume create NAME` makes one"
  })

const checkSize = (sizeMiB: number) =>
  Number.isInteger(sizeMiB) && sizeMiB >= minVolumeMiB && sizeMiB <= maxVolumeMiB
    ? Effect.void
    : Effect.fail(
      new InvalidInput({
        message:
          `invalid volume size ${sizeMiB}: --size-mib must be an integer from ${minVolumeMiB} to ${maxVolumeMiB}`,
        remediation: `give --size-mib N, e.g. --size-mib ${defaultVolumeMiB}`
      })
    )

const fsStep = <A>(what: string, step: () => A) =>
  Effect.try({
    try: step,
    catch: (cause) =>
      new Permanent({
        message: `${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
        remediation: "check the state directory's permissions and free space"
      })
  })

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const storeError = storeFailure({
    prefix: "volume store",
    remediation: "check the state directory; `microagent state check` reports on the database",
    database: databaseFileOf(sql)
  })
  const home = yield* Home

  const pathOf = (name: string) => NodePath.join(home.volumes, `${name}.ext4`)

  const readersOf = (name: string) =>
    sql<{ workspace: string }>`SELECT workspace FROM volume_readers WHERE volume = ${name} ORDER BY workspace`
      .pipe(
        Effect.map((rows) => rows.map((row) => row.workspace)),
        Effect.mapError(storeError)
      )

  const toVolume = (row: Row) =>
    Effect.gen(function*() {
      const stored = yield* decodeStored(row.record).pipe(Effect.mapError(storeError))
      const readers = yield* readersOf(row.name)
      return new Volume({
        ...stored,
        readers,
        ...(row.attached_to === null ? {} : { attachedTo: row.attached_to })
      })
    })

  const dropReader = (name: string, workspace: string) =>
    sql`DELETE FROM volume_readers WHERE volume = ${name} AND workspace = ${workspace}`.pipe(
      Effect.mapError(storeError),
      Effect.asVoid
    )

  const readBy = (volume: string, reader: string) =>
    new Conflict({
      message: `volume ${volume} is mounted read-only by workspace ${reader}`,
      remediation:
        `halt or delete ${reader} first (microagent halt ${reader}), or mount the volume read-only too`
    })

  const readRow = (name: string) =>
    sql<Row>`SELECT name, record, attached_to FROM volumes WHERE name = ${name}`.pipe(
      Effect.map((rows) => Option.fromNullable(rows[0])),
      Effect.mapError(storeError)
    )

  const inspect = (name: string) =>
    Effect.gen(function*() {
      if (volumeNameProblem(name) !== undefined) return yield* invalidVolumeName(name)
      const row = yield* readRow(name)
      if (Option.isNone(row)) return yield* notFound(name)
      return yield* toVolume(row.value)
    })

  /** Sets the holder from `from` to `to` only if it is still `from`; true when it was. */
  const swapHolder = (name: string, from: string | null, to: string | null) =>
    (from === null
      ? sql<{ name: string }>`UPDATE volumes SET attached_to = ${to}
          WHERE name = ${name} AND attached_to IS NULL RETURNING name`
      : sql<{ name: string }>`UPDATE volumes SET attached_to = ${to}
          WHERE name = ${name} AND attached_to = ${from} RETURNING name`).pipe(
        Effect.map((rows) => rows.length === 1),
        Effect.mapError(storeError)
      )

  const heldBy = (volume: string, holder: string) =>
    new Conflict({
      message: holder.startsWith("!resize:")
        ? `volume ${volume} is being resized`
        : `volume ${volume} is attached read-write to workspace ${holder}`,
      remediation: holder.startsWith("!resize:")
        ? "retry when the resize has finished"
        : `halt or delete ${holder} first (microagent halt ${holder}), or use another volume`
    })

  const create: VolumesShape["create"] = (name, sizeMiB) =>
    Effect.gen(function*() {
      if (volumeNameProblem(name) !== undefined) return yield* invalidVolumeName(name)
      yield* checkSize(sizeMiB)
      if (Option.isSome(yield* readRow(name))) {
        return yield* new Conflict({
          message: `volume ${name} already exists`,
          remediation: "pick another name, or remove it first with `microagent volume rm`"
        })
      }
      yield* home.ensureDir(home.volumes)
      const path = pathOf(name)
      // Made under a temporary name and renamed once the name is ours, so a file appears only with its record.
      const staging = NodePath.join(home.volumes, `.staging-${randomBytes(6).toString("hex")}.ext4`)
      return yield* Effect.gen(function*() {
        yield* fsStep(`cannot create ${staging}`, () => {
          const fd = NodeFs.openSync(staging, "wx", 0o600)
          try {
            NodeFs.ftruncateSync(fd, sizeMiB * MiB)
          } finally {
            NodeFs.closeSync(fd)
          }
        })
        // The file reads as zeros after truncate: mke2fs need not zero the journal or inode tables.
        yield* runToolOk("mke2fs", [
          "-q",
          "-F",
          "-t",
          "ext4",
          "-b",
          "4096",
          "-L",
          name.slice(0, 16),
          "-E",
          "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=1",
          staging
        ]).pipe(
          Effect.mapError(
            toolError(`cannot make volume ${name}`, "check the volume file and the host's free space")
          )
        )
        const now = yield* DateTime.now
        const stored = { name, path, sizeMiB, createdAt: now }
        const inserted = yield* sql<
          { name: string }
        >`INSERT INTO volumes (name, record, attached_to, created_at)
          VALUES (${name}, ${encodeStored(stored)}, NULL, ${DateTime.formatIso(now)})
          ON CONFLICT (name) DO NOTHING RETURNING name`.pipe(Effect.mapError(storeError))
        if (inserted.length === 0) {
          return yield* new Conflict({
            message: `volume ${name} already exists`,
            remediation: "pick another name, or remove it first with `microagent volume rm`"
          })
        }
        yield* fsStep(`cannot move the volume into ${path}`, () => NodeFs.renameSync(staging, path)).pipe(
          Effect.tapError(() => sql`DELETE FROM volumes WHERE name = ${name}`.pipe(Effect.ignore))
        )
        return new Volume(stored)
      }).pipe(
        Effect.mapError(classifyNoSpace(`making volume ${name} (${sizeMiB} MiB, sparse)`, home.volumes)),
        Effect.ensuring(Effect.sync(() => NodeFs.rmSync(staging, { force: true })))
      )
    })

  const resize: VolumesShape["resize"] = (name, sizeMiB) =>
    Effect.gen(function*() {
      yield* checkSize(sizeMiB)
      const volume = yield* inspect(name)
      if (volume.attachedTo !== undefined) return yield* heldBy(name, volume.attachedTo)
      if (volume.readers.length > 0) return yield* readBy(name, volume.readers[0]!)
      if (sizeMiB === volume.sizeMiB) return volume
      const holder = resizeHolder(process.pid)
      if (!(yield* swapHolder(name, null, holder))) {
        return yield* heldBy(name, (yield* inspect(name)).attachedTo ?? "?")
      }
      return yield* Effect.gen(function*() {
        yield* resizeExt4(volume.path, sizeMiB, `volume ${name}`)
        const resized = new Volume({ ...volume, sizeMiB, attachedTo: undefined, readers: [] })
        yield* sql`UPDATE volumes SET record = ${
          encodeStored({ name, path: volume.path, sizeMiB, createdAt: volume.createdAt })
        } WHERE name = ${name}`.pipe(Effect.mapError(storeError))
        return resized
      }).pipe(Effect.ensuring(swapHolder(name, holder, null).pipe(Effect.ignore)))
    })

  return Volumes.of({
    create,
    list: sql<Row>`SELECT name, record, attached_to FROM volumes ORDER BY name`.pipe(
      Effect.mapError(storeError),
      Effect.flatMap(Effect.forEach(toVolume))
    ),
    inspect,
    remove: (name) =>
      Effect.gen(function*() {
        const volume = yield* inspect(name)
        const removed = volume.attachedTo === undefined
          ? yield* sql<{ name: string }>`DELETE FROM volumes WHERE name = ${name} AND attached_to IS NULL
              RETURNING name`.pipe(Effect.mapError(storeError))
          : yield* sql<{ name: string }>`DELETE FROM volumes WHERE name = ${name}
              AND attached_to = ${volume.attachedTo} RETURNING name`.pipe(Effect.mapError(storeError))
        if (removed.length === 0) {
          return yield* new Conflict({
            message: `volume ${name} was attached or detached while it was being removed`,
            remediation: "look at `microagent volume inspect` and retry"
          })
        }
        yield* sql`DELETE FROM volume_readers WHERE volume = ${name}`.pipe(Effect.mapError(storeError))
        yield* fsStep(`cannot remove ${volume.path}`, () => {
          NodeFs.rmSync(volume.path, { force: true })
          // The data the fake backend kept for the volume, if it was ever attached there.
          NodeFs.rmSync(volumeDirectoryOf(volume.path), { recursive: true, force: true })
        })
      }),
    resize,
    attach: (name, workspace, options) =>
      Effect.gen(function*() {
        const volume = yield* inspect(name)
        const holder = volume.attachedTo
        if (holder !== undefined && holder !== workspace && holder !== options.replacing) {
          return yield* heldBy(name, holder)
        }
        // Claim first, then look again: of two racing claims, at worst both give up, never both win.
        if (options.readOnly) {
          if (holder !== undefined && holder !== workspace) yield* swapHolder(name, holder, null)
          yield* sql`INSERT INTO volume_readers (volume, workspace) VALUES (${name}, ${workspace})
            ON CONFLICT DO NOTHING`.pipe(Effect.mapError(storeError))
          const now = yield* inspect(name)
          if (now.attachedTo !== undefined && now.attachedTo !== workspace) {
            yield* dropReader(name, workspace)
            return yield* heldBy(name, now.attachedTo)
          }
          return now
        }
        for (const stale of options.staleReaders ?? []) yield* dropReader(name, stale)
        const reader = (yield* readersOf(name)).find((r) => r !== workspace)
        if (reader !== undefined) return yield* readBy(name, reader)
        if (holder !== workspace && !(yield* swapHolder(name, holder ?? null, workspace))) {
          return yield* heldBy(name, (yield* inspect(name)).attachedTo ?? "another workspace")
        }
        const now = yield* inspect(name)
        const late = now.readers.find((r) => r !== workspace)
        if (late !== undefined) {
          yield* swapHolder(name, workspace, null)
          return yield* readBy(name, late)
        }
        return now
      }),
    detach: (name, workspace) =>
      Effect.zipRight(swapHolder(name, workspace, null), dropReader(name, workspace)),
    release: (workspace) =>
      Effect.zipRight(
        sql`UPDATE volumes SET attached_to = NULL WHERE attached_to = ${workspace}`,
        sql`DELETE FROM volume_readers WHERE workspace = ${workspace}`
      ).pipe(Effect.mapError(storeError), Effect.asVoid)
  })
})

/** Needs the Home and the state database (the `volumes` table of the store). */
export const layer: Layer.Layer<Volumes, never, Home | SqlClient.SqlClient> = Layer.effect(
  Volumes,
  make
)
