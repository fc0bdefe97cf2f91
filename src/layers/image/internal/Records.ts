/**
 * The image records: one row per reference in the `images` table of state.db (its JSON beside it under
 * `images/records/`), and how a user's words (a reference, a digest or a hex prefix) find them.
 */
import type { SqlClient } from "@effect/sql"
import { DateTime, Effect, Either, Schema } from "effect"
import { InvalidInput } from "../../../domain/Errors.ts"
import { parseImageRef } from "../../../domain/ImageRef.ts"
import type { HomeShape } from "../../../services/Home.ts"
import { ImageRecord } from "../../../services/ImageStore.ts"
import { databaseFileOf, storeFailure } from "../../state/StoreFailure.ts"
import { removeImageRecordFile, writeImageRecordFile } from "../ImageRecordFiles.ts"
import { hexOf } from "./Blobs.ts"

const RecordJson = Schema.parseJson(ImageRecord)
const decodeRecord = Schema.decodeUnknownEither(RecordJson)
const encodeRecord = Schema.encodeSync(RecordJson)

/** A reference as the user typed it, parsed and normalized. */
export const parseRef = (text: string) =>
  Either.match(parseImageRef(text), {
    onLeft: (e) =>
      Effect.fail(
        new InvalidInput({
          message: e.message,
          remediation: "for example: alpine:3.20, ghcr.io/org/app@sha256:…"
        })
      ),
    onRight: (ref) => Effect.succeed(ref)
  })

/** The records of the store behind `sql`. */
export const makeImageRecords = (home: HomeShape, sql: SqlClient.SqlClient) => {
  const sqlError = (what: string) =>
    storeFailure({
      prefix: `image store: ${what}`,
      remediation: "check the state directory; `microagent state check` reports on the database",
      database: databaseFileOf(sql)
    })

  const readAll = sql<{ ref: string; record: string }>`SELECT ref, record FROM images ORDER BY ref`.pipe(
    Effect.mapError(sqlError("reading records")),
    Effect.map((rows) =>
      rows.flatMap((row) => {
        const decoded = decodeRecord(row.record)
        return Either.isRight(decoded) ? [decoded.right] : []
      })
    )
  )

  const upsert = (record: ImageRecord) =>
    sql`INSERT INTO images (ref, digest, record, created_at)
        VALUES (${record.ref}, ${record.digest}, ${encodeRecord(record)}, ${
      DateTime.formatIso(record.createdAt)
    })
        ON CONFLICT (ref) DO UPDATE SET digest = excluded.digest, record = excluded.record`.pipe(
      Effect.mapError(sqlError(`recording ${record.ref}`)),
      Effect.tap(() => writeImageRecordFile(home.images, record)),
      Effect.as(record)
    )

  const findExact = (ref: string) =>
    sql<{ record: string }>`SELECT record FROM images WHERE ref = ${ref}`.pipe(
      Effect.mapError(sqlError("reading records")),
      Effect.map((rows) => {
        const decoded = rows[0] === undefined ? undefined : decodeRecord(rows[0].record)
        return decoded !== undefined && Either.isRight(decoded) ? decoded.right : undefined
      })
    )

  /** Records matching a user's words: a reference (normalized or as typed), a digest or a 12+ hex prefix. */
  const matching = (text: string) =>
    Effect.gen(function*() {
      const records = yield* readAll
      const normalized = Either.getOrUndefined(parseImageRef(text))?.toString()
      const hex = /^(?:sha256:)?([a-f0-9]{12,64})$/.exec(text)?.[1]
      return records.filter((r) =>
        r.ref === text || r.ref === normalized || r.digest === text
        || (hex !== undefined && hexOf(r.digest).startsWith(hex))
      )
    })

  const touch = (record: ImageRecord) =>
    Effect.flatMap(DateTime.now, (now) => upsert(new ImageRecord({ ...record, lastUsedAt: now })))

  /** Files workspaces still reference (their records mention a baseline path or digest). */
  const usedByWorkspaces = (path: string) =>
    sql<{ n: number }>`SELECT count(*) AS n FROM workspaces WHERE record LIKE ${`%${path}%`}`.pipe(
      Effect.map((rows) => (rows[0]?.n ?? 0) > 0),
      Effect.orElseSucceed(() => false)
    )

  const deleteRecord = (ref: string) =>
    sql`DELETE FROM images WHERE ref = ${ref}`.pipe(
      Effect.mapError(sqlError(`removing ${ref}`)),
      Effect.tap(() => removeImageRecordFile(home.images, ref))
    )

  return { readAll, upsert, findExact, matching, touch, usedByWorkspaces, deleteRecord }
}

export type ImageRecords = ReturnType<typeof makeImageRecords>
