/**
 * StateStore on SQLite. State changes are optimistic compare-and-set on a version column, so that
 * concurrent CLI processes never both win a transition.
 */
import { SqlClient } from "@effect/sql"
import { DateTime, Effect, Either, Layer, Option, Schema } from "effect"
import { Conflict, NotFound, type Permanent } from "../../domain/Errors.ts"
import { maxEventsPerWorkspace, WorkspaceEvent } from "../../domain/Event.ts"
import { transition as applyTransition } from "../../domain/State.ts"
import { Workspace } from "../../domain/Workspace.ts"
import { Home } from "../../services/Home.ts"
import { StateStore, type StateStoreShape } from "../../services/StateStore.ts"
import { removeManifest, writeManifest } from "./Manifest.ts"
import { databaseFileOf, storeFailure } from "./StoreFailure.ts"

interface Row {
  readonly name: string
  readonly state: string
  readonly record: string
  readonly version: number
}

const encode = Schema.encodeSync(Schema.parseJson(Workspace))
const decode = Schema.decodeUnknown(Schema.parseJson(Workspace))

const notFound = (name: string) =>
  new NotFound({
    message: `workspace ${name} not found`,
    remediation: "`microagent list` shows the workspaces of this state directory"
  })

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const storeError = storeFailure({
    prefix: "state store",
    remediation:
      "check the state directory; `microagent state check` and `microagent doctor` report what is wrong",
    database: databaseFileOf(sql)
  })
  // With a Home, every write of a record is mirrored into the workspace's manifest (see Manifest.ts).
  const home = yield* Effect.serviceOption(Home)
  const mirror = (workspace: Workspace) =>
    Option.match(home, {
      onNone: () => Effect.void,
      onSome: (h) => writeManifest(h.workspaceDir(workspace.name), workspace)
    })

  const readRow = (name: string) =>
    sql<Row>`SELECT name, state, record, version FROM workspaces WHERE name = ${name}`.pipe(
      Effect.map((rows) => Option.fromNullable(rows[0]))
    )

  const decodeRow = (row: Row) => decode(row.record).pipe(Effect.mapError(storeError))

  const appendEvent: StateStoreShape["appendEvent"] = (name, event) =>
    Effect.gen(function*() {
      const at = DateTime.formatIso(yield* DateTime.now)
      const state = event.state ?? null
      yield* sql`INSERT INTO events (workspace, at, type, state, detail)
        VALUES (${name}, ${at}, ${event.type}, ${state}, ${event.detail ?? ""})`
      yield* sql`DELETE FROM events WHERE workspace = ${name} AND id <= (
        SELECT id FROM events WHERE workspace = ${name} ORDER BY id DESC LIMIT 1 OFFSET ${maxEventsPerWorkspace})`
    }).pipe(Effect.mapError(storeError))

  /** Reads, computes the next record, and writes it only if nobody wrote in between; retries otherwise. */
  const compareAndSet = <E>(
    name: string,
    next: (current: Workspace) => Either.Either<Workspace, E>
  ): Effect.Effect<{ before: Workspace; after: Workspace }, E | NotFound | Permanent> =>
    Effect.gen(function*() {
      for (;;) {
        const row = yield* readRow(name).pipe(Effect.mapError(storeError))
        if (Option.isNone(row)) return yield* notFound(name)
        const before = yield* decodeRow(row.value)
        const result = next(before)
        if (Either.isLeft(result)) return yield* Effect.fail(result.left)
        const after = new Workspace({ ...result.right, updatedAt: yield* DateTime.now })
        const written = yield* sql<{ name: string }>`UPDATE workspaces
          SET state = ${after.state}, record = ${encode(after)}, version = version + 1,
              updated_at = ${DateTime.formatIso(after.updatedAt)}
          WHERE name = ${name} AND version = ${row.value.version}
          RETURNING name`.pipe(Effect.mapError(storeError))
        if (written.length === 1) {
          yield* mirror(after)
          return { before, after }
        }
      }
    })

  const store: StateStoreShape = {
    writeManifest,
    create: (workspace) =>
      Effect.gen(function*() {
        const inserted = yield* sql<
          { name: string }
        >`INSERT INTO workspaces (name, state, record, version, updated_at)
          VALUES (${workspace.name}, ${workspace.state}, ${encode(workspace)}, 1,
                  ${DateTime.formatIso(workspace.updatedAt)})
          ON CONFLICT (name) DO NOTHING RETURNING name`.pipe(Effect.mapError(storeError))
        if (inserted.length === 0) {
          return yield* new Conflict({
            message: `workspace ${workspace.name} already exists`,
            remediation: "pick another --name, or delete the existing one with `microagent delete`"
          })
        }
        yield* appendEvent(workspace.name, {
          type: "created",
          state: workspace.state,
          detail: workspace.image.ref
        })
        yield* mirror(workspace)
        return workspace
      }),
    get: (name) =>
      Effect.gen(function*() {
        const row = yield* readRow(name).pipe(Effect.mapError(storeError))
        if (Option.isNone(row)) return yield* notFound(name)
        return yield* decodeRow(row.value)
      }),
    find: (name) =>
      readRow(name).pipe(
        Effect.mapError(storeError),
        Effect.flatMap(Option.match({
          onNone: () => Effect.succeedNone,
          onSome: (row) => Effect.asSome(decodeRow(row))
        }))
      ),
    list: sql<Row>`SELECT name, state, record, version FROM workspaces ORDER BY name`.pipe(
      Effect.mapError(storeError),
      Effect.flatMap(Effect.forEach(decodeRow))
    ),
    transition: (name, t, options) =>
      compareAndSet(name, (current) =>
        options?.session !== undefined && current.sessionId !== options.session
          ? Either.left(
            new Conflict({
              message: `workspace ${name} was started again (${t} was for an earlier start)`,
              remediation: "nothing to do: the new start is left as it is"
            })
          )
          : Either.map(applyTransition(name, current.state, t), (state) => {
            const patched = options?.patch ? options.patch(current) : current
            return new Workspace({ ...patched, state })
          })).pipe(
          Effect.tap(({ after }) =>
            appendEvent(name, { type: t, state: after.state, detail: options?.detail ?? "" })
          ),
          Effect.map(({ after }) => after)
        ),
    update: (name, patch) =>
      compareAndSet(
        name,
        (current) => Either.right(new Workspace({ ...patch(current), state: current.state }))
      ).pipe(
        Effect.map(({ after }) => after)
      ),
    remove: (name) =>
      Effect.gen(function*() {
        // The manifest goes first: a manifest without a record would bring a deleted workspace back.
        if (Option.isSome(home)) yield* removeManifest(home.value.workspaceDir(name))
        const removed = yield* sql<
          { name: string }
        >`DELETE FROM workspaces WHERE name = ${name} RETURNING name`
        yield* sql`DELETE FROM events WHERE workspace = ${name}`
        return removed.length > 0
      }).pipe(Effect.mapError(storeError)),
    recover: (workspace, detail) =>
      Effect.gen(function*() {
        yield* sql`INSERT INTO workspaces (name, state, record, version, updated_at)
          VALUES (${workspace.name}, ${workspace.state}, ${encode(workspace)}, 1,
                  ${DateTime.formatIso(workspace.updatedAt)})
          ON CONFLICT (name) DO UPDATE SET state = excluded.state, record = excluded.record,
            version = workspaces.version + 1, updated_at = excluded.updated_at`.pipe(
          Effect.mapError(storeError)
        )
        yield* appendEvent(workspace.name, { type: "recovered", state: workspace.state, detail })
        yield* mirror(workspace)
        return workspace
      }),
    appendEvent,
    events: (name, options) =>
      sql<WorkspaceEvent>`SELECT id, workspace, at, type, state, detail FROM events
        WHERE workspace = ${name} AND id > ${options?.afterId ?? 0}
        ORDER BY id LIMIT ${options?.limit ?? maxEventsPerWorkspace}`.pipe(
        Effect.map((rows) =>
          rows.map((row) =>
            new WorkspaceEvent({
              id: row.id,
              workspace: row.workspace,
              at: row.at,
              type: row.type,
              detail: row.detail,
              ...(row.state ? { state: row.state } : {})
            })
          )
        ),
        Effect.mapError(storeError)
      )
  }
  return store
})

export const layer = Layer.effect(StateStore, make)
