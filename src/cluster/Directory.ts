/**
 * The cluster's directory, in PostgreSQL beside the cluster's own tables: the runners (address,
 * labels, capacity, load, cached images, last heartbeat) and the workspaces (name → host). A workspace's
 * name is unique across the cluster because claiming it is an INSERT on the primary key: of two clients
 * creating the same name at once, one inserts and the other gets `Conflict`. A runner is alive while
 * its last heartbeat is younger than the lock expiry, measured by the database's clock (runners'
 * clocks are never compared).
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Layer, Option, Schema } from "effect"
import { Conflict, Transient } from "../domain/Errors.ts"
import type { Candidate } from "../domain/Placement.ts"
import { Resources } from "./Protocol.ts"

export interface RunnerEntry extends Candidate {
  readonly address: string
  /** Milliseconds since the last heartbeat, by the database's clock. */
  readonly ageMs: number
}

export const WorkspaceEntry = Schema.Struct({
  name: Schema.String,
  host: Schema.String,
  restart: Schema.String,
  /** The create request, kept to create the workspace again elsewhere (`restart: always`). */
  request: Schema.optional(Schema.Unknown),
  generation: Schema.Number,
  movedFrom: Schema.optional(Schema.String),
  /** The workspace's record as its host last reported it (encoded), shown while the host is lost. */
  record: Schema.optional(Schema.Unknown)
})
export type WorkspaceEntry = typeof WorkspaceEntry.Type

export interface Heartbeat {
  readonly id: string
  readonly address: string
  readonly labels: Readonly<Record<string, string>>
  readonly capacity: Resources
  readonly load: Resources
  readonly images: ReadonlyArray<string>
  /** The runner's lock expiry: it is lost once its last heartbeat is older. */
  readonly expiryMs: number
}

export interface DirectoryShape {
  readonly heartbeat: (beat: Heartbeat) => Effect.Effect<void, Transient>
  /** The liveness part of a heartbeat alone: the runner's row is younger. */
  readonly touch: (id: string) => Effect.Effect<void, Transient>
  /** Every runner that ever beat, alive or not (until it is forgotten). */
  readonly runners: Effect.Effect<ReadonlyArray<RunnerEntry>, Transient>
  /**
   * Removes the runners silent for longer than `silentMs` that hold no workspace, and returns their
   * ids. One that comes back registers again with its first heartbeat.
   */
  readonly forget: (silentMs: number) => Effect.Effect<ReadonlyArray<string>, Transient>
  /** Claims a name for a host; `Conflict` when the name is taken anywhere in the cluster. */
  readonly claim: (
    entry: Omit<WorkspaceEntry, "generation" | "record">
  ) => Effect.Effect<void, Transient | Conflict>
  readonly lookup: (name: string) => Effect.Effect<Option.Option<WorkspaceEntry>, Transient>
  /**
   * A workspace's entry with its runner's liveness, in one query (the data path's only read): the
   * runner's age is undefined when it never beat.
   */
  readonly route: (
    name: string
  ) => Effect.Effect<
    Option.Option<WorkspaceEntry & { readonly alive: boolean; readonly ageMs?: number }>,
    Transient
  >
  readonly entries: Effect.Effect<ReadonlyArray<WorkspaceEntry>, Transient>
  /** Gives the name up, if `host` still holds it. */
  readonly release: (name: string, host: string) => Effect.Effect<void, Transient>
  /**
   * Moves a workspace from `from` to `to` if `from` still holds it; false when another move won. With
   * `fromLost`, only while `from` reads lost at that moment, by the database's clock: a runner whose
   * touch went through keeps its workspaces, however old the supervisor's view of it.
   */
  readonly move: (
    name: string,
    from: string,
    to: string,
    options?: { readonly fromLost?: boolean }
  ) => Effect.Effect<boolean, Transient>
  /** Keeps the host's latest record of a workspace (written only when it changed). */
  readonly remember: (name: string, host: string, record: unknown) => Effect.Effect<void, Transient>
}

export class Directory extends Context.Tag("microagent/cluster/Directory")<Directory, DirectoryShape>() {}

const unavailable = (error: SqlError) =>
  new Transient({
    message: `the cluster database did not answer: ${error.message}`,
    remediation: "retry; check that PostgreSQL at the --cluster URL is up",
    retryAfterMs: 1000
  })

interface RunnerRow {
  readonly id: string
  readonly address: string
  readonly labels: Record<string, string>
  readonly capacity: Resources
  readonly load: Resources
  readonly images: ReadonlyArray<string>
  readonly expiry_ms: number
  readonly age_ms: number | string
}

interface WorkspaceRow {
  readonly name: string
  readonly host: string
  readonly restart: string
  readonly request: unknown
  readonly generation: number
  readonly moved_from: string | null
  readonly record: unknown
}

const json = (value: unknown) => (typeof value === "string" ? JSON.parse(value) : value)

const toEntry = (row: WorkspaceRow): WorkspaceEntry => ({
  name: row.name,
  host: row.host,
  restart: row.restart,
  ...(row.request === null || row.request === undefined ? {} : { request: json(row.request) }),
  generation: Number(row.generation),
  ...(row.moved_from === null ? {} : { movedFrom: row.moved_from }),
  ...(row.record === null || row.record === undefined ? {} : { record: json(row.record) })
})

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  // Runners starting together would race their CREATE TABLE IF NOT EXISTS (PostgreSQL can fail one
  // with a duplicate key in its catalog): a transaction-level lock makes them take turns.
  yield* Effect.gen(function*() {
    yield* sql`SELECT pg_advisory_xact_lock(hashtext('microagent directory'))`
    yield* sql`CREATE TABLE IF NOT EXISTS microagent_runners (
        id text PRIMARY KEY,
        address text NOT NULL,
        labels jsonb NOT NULL,
        capacity jsonb NOT NULL,
        load jsonb NOT NULL,
        images jsonb NOT NULL,
        expiry_ms integer NOT NULL,
        last_seen timestamptz NOT NULL
      )`
    yield* sql`CREATE TABLE IF NOT EXISTS microagent_workspaces (
        name text PRIMARY KEY,
        host text NOT NULL,
        restart text NOT NULL,
        request jsonb,
        generation integer NOT NULL DEFAULT 1,
        moved_from text,
        record jsonb,
        updated_at timestamptz NOT NULL DEFAULT now()
      )`
  }).pipe(sql.withTransaction)

  const heartbeat: DirectoryShape["heartbeat"] = (beat) =>
    sql`INSERT INTO microagent_runners (id, address, labels, capacity, load, images, expiry_ms, last_seen)
        VALUES (${beat.id}, ${beat.address}, ${JSON.stringify(beat.labels)}::jsonb,
          ${JSON.stringify(beat.capacity)}::jsonb, ${JSON.stringify(beat.load)}::jsonb,
          ${JSON.stringify(beat.images)}::jsonb, ${beat.expiryMs}, now())
        ON CONFLICT (id) DO UPDATE SET address = EXCLUDED.address, labels = EXCLUDED.labels,
          capacity = EXCLUDED.capacity, load = EXCLUDED.load, images = EXCLUDED.images, expiry_ms = EXCLUDED.expiry_ms, last_seen = now()`
      .pipe(Effect.asVoid, Effect.mapError(unavailable))

  const touch: DirectoryShape["touch"] = (id) =>
    sql`UPDATE microagent_runners SET last_seen = now() WHERE id = ${id}`.pipe(
      Effect.asVoid,
      Effect.mapError(unavailable)
    )

  const runners: DirectoryShape["runners"] = sql<
    RunnerRow
  >`SELECT id, address, labels, capacity, load, images, expiry_ms,
        (extract(epoch FROM now() - last_seen) * 1000)::float8 AS age_ms FROM microagent_runners ORDER BY id`
    .pipe(
      Effect.map((rows) =>
        rows.map((row): RunnerEntry => {
          const ageMs = Number(row.age_ms)
          return {
            id: row.id,
            address: row.address,
            labels: json(row.labels),
            capacity: json(row.capacity),
            load: json(row.load),
            images: json(row.images),
            ageMs,
            alive: ageMs < Number(row.expiry_ms)
          }
        })
      ),
      Effect.mapError(unavailable)
    )

  const claim: DirectoryShape["claim"] = (entry) =>
    sql<
      { readonly name: string }
    >`INSERT INTO microagent_workspaces (name, host, restart, request, moved_from)
        VALUES (${entry.name}, ${entry.host}, ${entry.restart},
          ${entry.request === undefined ? null : JSON.stringify(entry.request)}::jsonb, ${
      entry.movedFrom ?? null
    })
        ON CONFLICT (name) DO NOTHING RETURNING name`.pipe(
      Effect.mapError(unavailable),
      Effect.flatMap((rows) =>
        rows.length === 1 ? Effect.void : Effect.flatMap(lookup(entry.name), (held) =>
          Effect.fail(
            new Conflict({
              message: `a workspace named "${entry.name}" already exists in the cluster${
                Option.match(held, { onNone: () => "", onSome: (found) => ` (on ${found.host})` })
              }`,
              remediation: "choose another --name, or delete the existing workspace first"
            })
          ))
      )
    )

  const lookup: DirectoryShape["lookup"] = (name) =>
    sql<WorkspaceRow>`SELECT name, host, restart, request, generation, moved_from, record
        FROM microagent_workspaces WHERE name = ${name}`.pipe(
      Effect.map((rows) => Option.map(Option.fromNullable(rows[0]), toEntry)),
      Effect.mapError(unavailable)
    )

  const route: DirectoryShape["route"] = (name) =>
    sql<WorkspaceRow & { readonly age_ms: number | string | null; readonly expiry_ms: number | null }>`SELECT
        w.name, w.host, w.restart, NULL::jsonb AS request, w.generation, w.moved_from, NULL::jsonb AS record,
        r.expiry_ms, (extract(epoch FROM now() - r.last_seen) * 1000)::float8 AS age_ms
      FROM microagent_workspaces w LEFT JOIN microagent_runners r ON r.id = w.host
      WHERE w.name = ${name}`.pipe(
      Effect.map((rows) =>
        Option.map(Option.fromNullable(rows[0]), (row) => {
          const ageMs = row.age_ms === null ? undefined : Number(row.age_ms)
          return {
            ...toEntry(row),
            alive: ageMs !== undefined && ageMs < Number(row.expiry_ms),
            ...(ageMs === undefined ? {} : { ageMs })
          }
        })
      ),
      Effect.mapError(unavailable)
    )

  const entries: DirectoryShape["entries"] = sql<WorkspaceRow>`SELECT name, host, restart, request,
        generation, moved_from, record FROM microagent_workspaces ORDER BY name`.pipe(
    Effect.map((rows) => rows.map(toEntry)),
    Effect.mapError(unavailable)
  )

  const release: DirectoryShape["release"] = (name, host) =>
    sql`DELETE FROM microagent_workspaces WHERE name = ${name} AND host = ${host}`.pipe(
      Effect.asVoid,
      Effect.mapError(unavailable)
    )

  const move: DirectoryShape["move"] = (name, from, to, options) =>
    sql<{ readonly name: string }>`UPDATE microagent_workspaces
        SET host = ${to}, moved_from = ${from}, generation = generation + 1, updated_at = now()
        WHERE name = ${name} AND host = ${from}
          AND (NOT ${options?.fromLost === true} OR NOT EXISTS (SELECT 1 FROM microagent_runners r
            WHERE r.id = ${from} AND r.last_seen > now() - r.expiry_ms * interval '1 millisecond'))
        RETURNING name`.pipe(
      Effect.map((rows) => rows.length === 1),
      Effect.mapError(unavailable)
    )

  const forget: DirectoryShape["forget"] = (silentMs) =>
    sql<{ readonly id: string }>`DELETE FROM microagent_runners r
        WHERE last_seen < now() - ${silentMs} * interval '1 millisecond'
          AND NOT EXISTS (SELECT 1 FROM microagent_workspaces w WHERE w.host = r.id)
        RETURNING id`.pipe(
      Effect.map((rows) => rows.map((row) => row.id)),
      Effect.mapError(unavailable)
    )

  const written = new Map<string, string>()
  const remember: DirectoryShape["remember"] = (name, host, record) =>
    Effect.suspend(() => {
      const text = JSON.stringify(record)
      if (written.get(name) === text) return Effect.void
      return sql`UPDATE microagent_workspaces SET record = ${text}::jsonb WHERE name = ${name} AND host = ${host}`
        .pipe(
          Effect.tap(() => Effect.sync(() => written.set(name, text))),
          Effect.asVoid,
          Effect.mapError(unavailable)
        )
    })

  return Directory.of({
    heartbeat,
    touch,
    runners,
    forget,
    claim,
    lookup,
    route,
    entries,
    release,
    move,
    remember
  })
})

/** Creates the tables when missing; needs a `SqlClient` on the cluster's database. */
export const layer = Layer.effect(Directory, Effect.mapError(make, unavailable))
