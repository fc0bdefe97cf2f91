/**
 * The state database's checks, errors, backups and migrations, on real SQLite files.
 */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { assert, describe, it } from "@effect/vitest"
import Sqlite from "better-sqlite3"
import { Cause, DateTime, Effect, Exit, Layer, Option } from "effect"
import * as NodeChild from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import type { Permanent } from "../../src/domain/Errors.ts"
import { ImageInfo, Resources, Workspace, type WorkspaceName } from "../../src/domain/Workspace.ts"
import { backupsDirOf, checkFile, listBackups, takeBackup } from "../../src/layers/state/Backups.ts"
import { databaseLayer } from "../../src/layers/state/Database.ts"
import { readManifest } from "../../src/layers/state/Manifest.ts"
import { migrations } from "../../src/layers/state/Migrations.ts"
import * as SqliteStateStore from "../../src/layers/state/SqliteStateStore.ts"
import { storeFailure } from "../../src/layers/state/StoreFailure.ts"
import { Home } from "../../src/services/Home.ts"
import { StateStore } from "../../src/services/StateStore.ts"
import { makeTempDir } from "../support/fakeEnvironment.ts"

const workspace = (root: string, name: string) =>
  new Workspace({
    name: name as WorkspaceName,
    state: "prepared",
    backend: "fake",
    resources: new Resources({ memoryMiB: 256, cpus: 1 }),
    image: new ImageInfo({ ref: "alpine" }),
    env: {},
    hostname: name,
    network: "user",
    restart: "never",
    ephemeral: false,
    rootfsPath: NodePath.join(root, "workspaces", name, "rootfs"),
    runtimeDir: NodePath.join(root, "run", name),
    createdAt: DateTime.unsafeNow(),
    updatedAt: DateTime.unsafeNow()
  })

const storeOn = (root: string, options: Parameters<typeof databaseLayer>[0] = {}) =>
  SqliteStateStore.layer.pipe(
    Layer.provideMerge(databaseLayer(options)),
    Layer.provideMerge(Home.layer(root))
  )

const failureOf = <A, E>(exit: Exit.Exit<A, E>): E => {
  assert.isTrue(Exit.isFailure(exit), "expected a failure")
  return Option.getOrThrow(Cause.failureOption((exit as Exit.Failure<A, E>).cause))
}

/** Overwrites one page of a database file with garbage. */
const damagePage = (file: string, page: number) => {
  const fd = NodeFs.openSync(file, "r+")
  NodeFs.writeSync(fd, Buffer.alloc(4096, 0xa5), 0, 4096, (page - 1) * 4096)
  NodeFs.closeSync(fd)
}

const rootPageOf = (file: string, table: string) => {
  const db = new Sqlite(file)
  try {
    db.pragma("wal_checkpoint(TRUNCATE)")
    return Number(db.prepare("SELECT rootpage FROM sqlite_master WHERE name = ?").pluck().get(table))
  } finally {
    db.close()
  }
}

describe("the state database", () => {
  it.scoped("runs with WAL and synchronous = FULL, and keeps a manifest beside every workspace record", () =>
    Effect.gen(function*() {
      const root = yield* makeTempDir("microagent-state")
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const [mode] = yield* sql<{ journal_mode: string }>`PRAGMA journal_mode`
        const [sync] = yield* sql<{ synchronous: number }>`PRAGMA synchronous`
        assert.strictEqual(mode?.journal_mode, "wal")
        assert.strictEqual(sync?.synchronous, 2)
        const store = yield* StateStore
        NodeFs.mkdirSync(NodePath.join(root, "workspaces", "m1"), { mode: 0o700 })
        yield* store.create(workspace(root, "m1"))
        yield* store.transition("m1", "start")
        const dir = NodePath.join(root, "workspaces", "m1")
        const manifest = readManifest(dir)
        assert.strictEqual(manifest._tag === "Right" && manifest.right.state, "starting")
        assert.strictEqual(NodeFs.statSync(NodePath.join(dir, "workspace.json")).mode & 0o777, 0o600)
        // A manifest that does not decode is reported, never trusted.
        NodeFs.writeFileSync(NodePath.join(dir, "workspace.json"), '{"format":1,"workspace":{"name":3}}')
        assert.strictEqual(readManifest(dir)._tag, "Left")
        yield* store.remove("m1")
        assert.isFalse(NodeFs.existsSync(NodePath.join(dir, "workspace.json")))
      }).pipe(Effect.provide(storeOn(root)))
    }))

  it.scoped("a damaged page is an error naming the file and `state restore`, from the open and from any statement", () =>
    Effect.gen(function*() {
      const root = yield* makeTempDir("microagent-state")
      yield* Effect.flatMap(StateStore, (store) => store.create(workspace(root, "d1"))).pipe(
        Effect.provide(storeOn(root))
      )
      const database = NodePath.join(root, "state.db")
      damagePage(database, rootPageOf(database, "workspaces"))

      const opened = failureOf(yield* Effect.exit(Effect.provide(StateStore, storeOn(root))))
      assert.strictEqual(opened._tag, "Permanent")
      assert.include(opened.message, database)
      assert.include(opened.message, "is damaged")
      assert.include(opened.remediation, "microagent state restore")
      assert.notInclude(opened.message, "Failed to execute statement")

      // Past the open check (a client opened directly), a statement that meets the damage says the same.
      const direct = SqliteStateStore.layer.pipe(Layer.provide(SqliteClient.layer({ filename: database })))
      const listed = failureOf(
        yield* Effect.exit(Effect.flatMap(StateStore, (s) => s.list).pipe(Effect.provide(direct)))
      )
      assert.include(listed.message, `state database ${database} is damaged`)
      assert.include(listed.message, "malformed")
      assert.include((listed as Permanent).remediation, "microagent state restore")

      const notADatabase = storeFailure({ prefix: "x", remediation: "y", database })({
        message: "Failed to execute statement",
        cause: Object.assign(new Error("file is not a database"), { code: "SQLITE_NOTADB" })
      })
      assert.strictEqual(
        notADatabase.message,
        `state database ${database} is damaged: file is not a database`
      )
    }))

  it.scoped("a file that is not a database, an emptied one and a missing one beside records are errors", () =>
    Effect.gen(function*() {
      const root = yield* makeTempDir("microagent-state")
      const database = NodePath.join(root, "state.db")
      NodeFs.mkdirSync(NodePath.join(root, "workspaces", "kept"), { recursive: true })
      yield* Effect.flatMap(StateStore, (store) => store.create(workspace(root, "kept"))).pipe(
        Effect.provide(storeOn(root))
      )
      const saved = NodeFs.readFileSync(database)
      for (
        const [damage, expected] of [
          [() => NodeFs.writeFileSync(database, "x".repeat(8192)), "is damaged: file is not a database"],
          [() => NodeFs.truncateSync(database, 0), "is empty (truncated)"],
          [() => NodeFs.rmSync(database), "is missing"]
        ] as const
      ) {
        NodeFs.writeFileSync(database, saved)
        damage()
        const error = failureOf(yield* Effect.exit(Effect.provide(StateStore, storeOn(root))))
        assert.include(error.message, `state database ${database} ${expected}`)
        assert.include(error.remediation, "microagent state restore")
        // Nothing was made in its place.
        assert.isTrue(!NodeFs.existsSync(database) || NodeFs.statSync(database).size <= 8192)
      }
    }))

  it.scopedLive("backups are consistent, checked, 0600 in a 0700 directory, and rotated to the newest N", () =>
    Effect.gen(function*() {
      const root = yield* makeTempDir("microagent-state")
      const database = NodePath.join(root, "state.db")
      yield* Effect.flatMap(StateStore, (store) => store.create(workspace(root, "b1"))).pipe(
        Effect.provide(storeOn(root))
      )
      const previous = process.env.MICROAGENT_STATE_BACKUPS
      process.env.MICROAGENT_STATE_BACKUPS = "2"
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          if (previous === undefined) delete process.env.MICROAGENT_STATE_BACKUPS
          else process.env.MICROAGENT_STATE_BACKUPS = previous
        })
      )
      const taken = []
      for (let i = 0; i < 3; i++) {
        taken.push(yield* takeBackup(database, { reason: "manual" }))
        yield* Effect.sleep("5 millis")
      }
      const kept = listBackups(backupsDirOf(database))
      assert.deepStrictEqual(kept.map((b) => b.path), [taken[2]!.path, taken[1]!.path])
      assert.strictEqual(NodeFs.statSync(backupsDirOf(database)).mode & 0o777, 0o700)
      for (const backup of kept) {
        assert.strictEqual(NodeFs.statSync(backup.path).mode & 0o777, 0o600)
        assert.isTrue(checkFile(backup.path, { full: true }).ok)
        assert.isFalse(NodeFs.existsSync(`${backup.path}-wal`))
      }
      const to = NodePath.join(root, "elsewhere.db")
      yield* takeBackup(database, { reason: "manual", to })
      const again = failureOf(yield* Effect.exit(takeBackup(database, { reason: "manual", to })))
      assert.include(again.message, "exists already")
    }))

  it.scoped("a migration that fails half way leaves the previous database usable", () =>
    Effect.gen(function*() {
      const root = yield* makeTempDir("microagent-state")
      const database = NodePath.join(root, "state.db")
      yield* Effect.flatMap(StateStore, (store) => store.create(workspace(root, "before"))).pipe(
        Effect.provide(storeOn(root))
      )
      const tables = () => {
        const db = new Sqlite(database, { readonly: true })
        try {
          return db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").pluck().all()
        } finally {
          db.close()
        }
      }
      const tablesBefore = tables()

      // In its transaction: the statements that ran are rolled back.
      const inTransaction = failureOf(
        yield* Effect.exit(Effect.provide(
          StateStore,
          storeOn(root, {
            migrations: [...migrations, {
              name: "broken",
              sql: "CREATE TABLE half (x); INSERT INTO nosuch VALUES (1)"
            }]
          })
        ))
      )
      assert.include(inTransaction.message, `migration ${migrations.length + 1} (broken) failed`)
      assert.include(inTransaction.message, "no such table: nosuch")
      assert.include(inTransaction.message, `left as it was (schema version ${migrations.length})`)
      assert.deepStrictEqual(tables(), tablesBefore)

      // A step that escapes the transaction: the backup taken before is put back.
      const escaping = failureOf(
        yield* Effect.exit(Effect.provide(
          StateStore,
          storeOn(root, {
            migrations: [...migrations, {
              name: "escapes",
              sql: "CREATE TABLE half (x); COMMIT; BEGIN; INSERT INTO nosuch VALUES (1)"
            }]
          })
        ))
      )
      assert.include(escaping.message, "restored from")
      assert.include(escaping.message, `pre-migration-v${migrations.length}`)
      assert.deepStrictEqual(tables(), tablesBefore)
      assert.isTrue(checkFile(database, { full: true }).ok)

      // The released migrations open it as before, with its records.
      const names = yield* Effect.flatMap(StateStore, (store) => store.list).pipe(
        Effect.map((all) => all.map((ws) => ws.name)),
        Effect.provide(storeOn(root))
      )
      assert.deepStrictEqual(names, ["before"])
    }))

  it.scoped("a full disk on open is resource_exhausted naming the state directory, not a damaged database", () =>
    Effect.gen(function*() {
      // A tmpfs of 4 MiB (needs root, util-linux mount), filled to the last block.
      const mountPoint = yield* makeTempDir("microagent-state-full")
      const mounted = NodeChild.spawnSync("mount", [
        "-t",
        "tmpfs",
        "-o",
        "size=4m,mode=0700",
        "tmpfs",
        mountPoint
      ], {
        encoding: "utf8"
      })
      assert.strictEqual(
        mounted.status,
        0,
        `mounting a tmpfs needs root (util-linux mount): ${mounted.stderr}`
      )
      yield* Effect.addFinalizer(() => Effect.sync(() => NodeChild.spawnSync("umount", ["-l", mountPoint])))
      const filler = NodePath.join(mountPoint, "filler")
      const fill = () => {
        const { bavail, bsize } = NodeFs.statfsSync(mountPoint)
        const made = NodeChild.spawnSync("fallocate", ["-l", String(bavail * bsize), filler], {
          encoding: "utf8"
        })
        assert.strictEqual(made.status, 0, `fallocate (util-linux): ${made.stderr}`)
      }
      const existing = NodePath.join(mountPoint, "existing")
      const fresh = NodePath.join(mountPoint, "fresh")
      NodeFs.mkdirSync(NodePath.join(existing, "workspaces", "kept"), { recursive: true })
      yield* Effect.flatMap(StateStore, (store) => store.create(workspace(existing, "kept"))).pipe(
        Effect.provide(storeOn(existing))
      )
      NodeFs.mkdirSync(fresh)
      fill()
      // An existing store (its -shm file cannot be made: SQLite says "disk I/O error") and a new one.
      for (const root of [existing, fresh]) {
        const error = failureOf(yield* Effect.exit(Effect.provide(StateStore, storeOn(root))))
        assert.strictEqual(error._tag, "ResourceExhausted", `${root}: ${error.message}`)
        assert.include(error.message, `the file system holding ${root} is full`)
        assert.include(error.message, "state database")
        assert.notInclude(error.remediation, "state restore")
      }
      NodeFs.rmSync(filler)
      // Once space is freed both open, and the existing one kept its record.
      const names = yield* Effect.flatMap(StateStore, (store) => store.list).pipe(
        Effect.map((all) => all.map((ws) => ws.name)),
        Effect.provide(storeOn(existing))
      )
      assert.deepStrictEqual(names, ["kept"])
      yield* Effect.flatMap(StateStore, (store) => store.list).pipe(Effect.provide(storeOn(fresh)))
    }))
})
