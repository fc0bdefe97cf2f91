/**
 * A copy of each image record on disk (`images/records/<sha256 of the reference>.json`, 0600, written
 * atomically), kept in step with the `images` table so that `microagent state restore` can re-register
 * the images whose baselines are still in the store when the database lost their records.
 */
import { Effect, Either, Schema } from "effect"
import { createHash, randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { ImageRecord } from "../../services/ImageStore.ts"

const RecordJson = Schema.parseJson(ImageRecord)
const encode = Schema.encodeSync(RecordJson)
const decode = Schema.decodeUnknownEither(RecordJson)

const imageRecordsDir = (imagesDir: string) => NodePath.join(imagesDir, "records")

const fileFor = (imagesDir: string, ref: string) =>
  NodePath.join(imageRecordsDir(imagesDir), `${createHash("sha256").update(ref).digest("hex")}.json`)

/** Writes the copy of a record; a failure is logged (the database has the record). */
export const writeImageRecordFile = (imagesDir: string, record: ImageRecord) =>
  Effect.try(() => {
    const dir = imageRecordsDir(imagesDir)
    NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    const target = fileFor(imagesDir, record.ref)
    const partial = `${target}.partial-${process.pid}-${randomBytes(4).toString("hex")}`
    NodeFs.writeFileSync(partial, `${encode(record)}\n`, { mode: 0o600, flag: "wx" })
    NodeFs.renameSync(partial, target)
  }).pipe(
    Effect.catchAll((error) =>
      Effect.logWarning(`cannot write the record file of image ${record.ref}`, error.error)
    )
  )

export const removeImageRecordFile = (imagesDir: string, ref: string) =>
  Effect.sync(() => NodeFs.rmSync(fileFor(imagesDir, ref), { force: true }))

/** Every record file that decodes. */
export const readImageRecordFiles = (imagesDir: string): ReadonlyArray<ImageRecord> => {
  let names: Array<string>
  try {
    names = NodeFs.readdirSync(imageRecordsDir(imagesDir))
  } catch {
    return []
  }
  return names.filter((name) => /^[0-9a-f]{64}\.json$/.test(name)).flatMap((name) => {
    try {
      const decoded = decode(NodeFs.readFileSync(NodePath.join(imageRecordsDir(imagesDir), name), "utf8"))
      return Either.isRight(decoded) ? [decoded.right] : []
    } catch {
      return []
    }
  })
}
