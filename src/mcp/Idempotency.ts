/**
 * Idempotency keys of the MCP server's mutating tools. The first completed result of a (tool, key) is
 * kept for 15 minutes in the state store, so that a client retrying after a lost reply, or after the
 * server restarted, gets that result again instead of a second workspace; the same key with other
 * arguments is a `Conflict`. Concurrent calls with one key wait for the first: in one server through
 * a Deferred, across servers on one state directory through a claim row in the store, taken over when
 * the process holding it has died.
 */
import { SqlClient } from "@effect/sql"
import { Clock, Context, Deferred, Duration, Effect, Layer, Option } from "effect"
import { createHash, randomUUID } from "node:crypto"
import { Conflict, Permanent } from "../domain/Errors.ts"
import { isAlive, startTimeOf } from "../layers/process/Processes.ts"

/** How long a result is replayed. */
export const replayWindowMs = 15 * 60 * 1000
/** Keys kept at most; the oldest go first. */
export const maxKeys = 1024

export interface Recorded {
  readonly argsHash: string
  readonly envelope: unknown
}

export interface IdempotencyShape {
  /**
   * Runs `execute` once per (tool, key) within the window: a repeat with the same arguments gets the
   * recorded envelope (`replayed: true`), a repeat with others a `Conflict`. `keep` decides whether an
   * outcome is recorded (a retryable failure is not: the retry should run).
   */
  readonly once: <E, R>(
    request: { readonly tool: string; readonly key: string; readonly args: unknown },
    execute: Effect.Effect<unknown, E, R>,
    keep: (envelope: unknown) => boolean
  ) => Effect.Effect<{ readonly envelope: unknown; readonly replayed: boolean }, E | Conflict | Permanent, R>
}

export class Idempotency extends Context.Tag("microagent/mcp/Idempotency")<Idempotency, IdempotencyShape>() {
  static readonly layer: Layer.Layer<Idempotency, never, SqlClient.SqlClient> = Layer.effect(
    Idempotency,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      // Who holds a claim: this instance, in this process (whose death frees the claim).
      const me = { owner: randomUUID(), pid: process.pid, startTime: startTimeOf(process.pid) ?? "" }
      const inFlight = new Map<string, { argsHash: string; done: Deferred.Deferred<unknown, unknown> }>()

      const storeError = (cause: unknown) =>
        new Permanent({
          message: `idempotency store: ${cause instanceof Error ? cause.message : String(cause)}`,
          remediation: "check the state directory; retry without idempotency_key to skip the store"
        })

      const lookup = (tool: string, key: string, now: number) =>
        sql<{ args_hash: string; envelope: string }>`SELECT args_hash, envelope FROM mcp_idempotency
          WHERE tool = ${tool} AND key = ${key} AND created_at > ${now - replayWindowMs}`.pipe(
          Effect.map((rows) =>
            Option.map(Option.fromNullable(rows[0]), (row): Recorded => ({
              argsHash: row.args_hash,
              envelope: JSON.parse(row.envelope)
            }))
          ),
          Effect.mapError(storeError)
        )

      const record = (tool: string, key: string, argsHash: string, envelope: unknown, now: number) =>
        Effect.gen(function*() {
          yield* sql`INSERT OR REPLACE INTO mcp_idempotency (tool, key, args_hash, envelope, created_at)
            VALUES (${tool}, ${key}, ${argsHash}, ${JSON.stringify(envelope)}, ${now})`
          yield* sql`DELETE FROM mcp_idempotency WHERE created_at <= ${now - replayWindowMs}`
          yield* sql`DELETE FROM mcp_idempotency WHERE rowid IN (
            SELECT rowid FROM mcp_idempotency ORDER BY created_at DESC, rowid DESC LIMIT -1 OFFSET ${maxKeys})`
        }).pipe(sql.withTransaction, Effect.mapError(storeError))

      /** Claims (tool, key) for this instance; false when another holds it. */
      const claim = (tool: string, key: string, argsHash: string, now: number) =>
        sql<{ owner: string }>`INSERT INTO mcp_idempotency_claims
            (tool, key, args_hash, owner, pid, start_time, claimed_at)
          VALUES (${tool}, ${key}, ${argsHash}, ${me.owner}, ${me.pid}, ${me.startTime}, ${now})
          ON CONFLICT (tool, key) DO NOTHING RETURNING owner`.pipe(
          Effect.map((rows) => rows.length === 1),
          Effect.mapError(storeError)
        )

      const holderOf = (tool: string, key: string) =>
        sql<{ args_hash: string; owner: string; pid: number; start_time: string }>`SELECT args_hash, owner,
            pid, start_time FROM mcp_idempotency_claims WHERE tool = ${tool} AND key = ${key}`.pipe(
          Effect.map((rows) => Option.fromNullable(rows[0])),
          Effect.mapError(storeError)
        )

      /** Takes over the claim of a dead holder; false when someone else was quicker. */
      const takeOver = (tool: string, key: string, deadOwner: string, now: number) =>
        sql<{ owner: string }>`UPDATE mcp_idempotency_claims SET owner = ${me.owner}, pid = ${me.pid},
            start_time = ${me.startTime}, claimed_at = ${now}
          WHERE tool = ${tool} AND key = ${key} AND owner = ${deadOwner} RETURNING owner`.pipe(
          Effect.map((rows) => rows.length === 1),
          Effect.mapError(storeError)
        )

      const release = (tool: string, key: string) =>
        sql`DELETE FROM mcp_idempotency_claims WHERE tool = ${tool} AND key = ${key} AND owner = ${me.owner}`
          .pipe(Effect.mapError(storeError))

      /**
       * Waits until this instance holds the claim of (tool, key), or another server's result is
       * recorded (then that result).
       */
      const claimOrReplay = (tool: string, key: string, argsHash: string) =>
        Effect.gen(function*() {
          for (;;) {
            const now = yield* Clock.currentTimeMillis
            const found = yield* lookup(tool, key, now)
            if (Option.isSome(found)) {
              if (found.value.argsHash !== argsHash) return yield* conflict(tool, key)
              return Option.some(found.value.envelope)
            }
            if (yield* claim(tool, key, argsHash, now)) return Option.none()
            const holder = yield* holderOf(tool, key)
            // Released without a result (a retryable failure): try to claim it again.
            if (Option.isNone(holder)) continue
            if (holder.value.args_hash !== argsHash) return yield* conflict(tool, key)
            if (!isAlive(holder.value.pid, holder.value.start_time || undefined)) {
              if (yield* takeOver(tool, key, holder.value.owner, now)) return Option.none()
              continue
            }
            yield* Effect.sleep(Duration.millis(50))
          }
        })

      const conflict = (tool: string, key: string) =>
        new Conflict({
          message: `${tool}: idempotency_key "${key}" was used with other arguments in the last 15 minutes`,
          remediation: "use a new idempotency_key for a different request"
        })

      const once: IdempotencyShape["once"] = (request, execute, keep) =>
        Effect.gen(function*() {
          const argsHash = hashOf(request.args)
          const slot = `${request.tool}\u0000${request.key}`
          const running = inFlight.get(slot)
          if (running !== undefined) {
            if (running.argsHash !== argsHash) return yield* conflict(request.tool, request.key)
            const envelope = yield* Deferred.await(running.done).pipe(Effect.orDie)
            return { envelope, replayed: true }
          }
          const done = yield* Deferred.make<unknown, unknown>()
          inFlight.set(slot, { argsHash, done })
          const replay = yield* claimOrReplay(request.tool, request.key, argsHash).pipe(
            Effect.tapErrorCause((cause) =>
              Effect.sync(() => inFlight.delete(slot)).pipe(Effect.zipRight(Deferred.failCause(done, cause)))
            )
          )
          if (Option.isSome(replay)) {
            inFlight.delete(slot)
            yield* Deferred.succeed(done, replay.value)
            return { envelope: replay.value, replayed: true }
          }
          const envelope = yield* execute.pipe(
            Effect.tap((envelope) =>
              keep(envelope)
                ? Clock.currentTimeMillis.pipe(
                  Effect.flatMap((at) => record(request.tool, request.key, argsHash, envelope, at))
                )
                : Effect.void
            ),
            Effect.onExit((exit) =>
              release(request.tool, request.key).pipe(
                Effect.ignore,
                Effect.zipRight(Effect.sync(() => inFlight.delete(slot))),
                Effect.zipRight(Deferred.done(done, exit))
              )
            )
          )
          return { envelope, replayed: false }
        })

      return Idempotency.of({ once })
    })
  )
}

/** Keys sorted, so that the same arguments in another order hash alike. */
const canonical = (value: unknown): unknown => {
  if (Array.isArray(value)) return value.map(canonical)
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.keys(value).sort().map((key) => [key, canonical((value as Record<string, unknown>)[key])])
    )
  }
  return value
}

export const hashOf = (args: unknown): string =>
  createHash("sha256").update(JSON.stringify(canonical(args)) ?? "null").digest("hex")
