/**
 * The SQLite database behind every store: opened in WAL mode with a busy timeout (better-sqlite3's
 * default), migrated on open, file modes 0600.
 */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Effect, Layer } from "effect"
import * as NodeFs from "node:fs"
import { Permanent } from "../../domain/Errors.ts"
import { Home } from "../../services/Home.ts"
import { migrations } from "./Migrations.ts"

const storeError = (what: string) => (cause: unknown) =>
  new Permanent({
    message: `state store: ${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
    remediation: "check the state directory; `microagent doctor` reports what is wrong"
  })

const migrate = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  for (;;) {
    const [row] = yield* sql<{ user_version: number }>`PRAGMA user_version`
    const version = row?.user_version ?? 0
    if (version >= migrations.length) return
    yield* sql.unsafe("BEGIN IMMEDIATE")
    const applied = Effect.gen(function*() {
      const [again] = yield* sql<{ user_version: number }>`PRAGMA user_version`
      // Another process may have migrated while this one waited for the lock.
      if ((again?.user_version ?? 0) !== version) return
      for (const statement of migrations[version]!.sql.split(";").map((s) => s.trim()).filter(Boolean)) {
        yield* sql.unsafe(statement)
      }
      yield* sql.unsafe(`PRAGMA user_version = ${version + 1}`)
    })
    yield* applied.pipe(
      Effect.zipRight(sql.unsafe("COMMIT")),
      Effect.tapErrorCause(() => sql.unsafe("ROLLBACK").pipe(Effect.ignore))
    )
  }
}).pipe(Effect.mapError(storeError("migration failed")))

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

/** SqlClient for the state store of the current `Home`, migrated. */
export const DatabaseLive: Layer.Layer<SqlClient.SqlClient, Permanent, Home> = Layer.unwrapEffect(
  Effect.gen(function*() {
    const home = yield* Home
    const client = SqliteClient.layer({ filename: home.database }).pipe(
      Layer.mapError(storeError(`cannot open ${home.database}`))
    )
    return Layer.effectDiscard(Effect.zipRight(migrate, restrictModes(home.database))).pipe(
      Layer.provideMerge(client)
    )
  })
)
