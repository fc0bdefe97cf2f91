/**
 * The cluster's plumbing from @effect/cluster: sharding over sockets, runners and messages in
 * PostgreSQL (`SqlRunnerStorage`, `SqlMessageStorage`, shard locks), msgpack on the wire. A runner
 * listens at its advertised address and holds the shards of its own group (`host-<id>`) and a share of
 * the `default` group (where the cluster's singletons run); a client holds no shard and only sends.
 */
import * as RunnerAddress from "@effect/cluster/RunnerAddress"
import * as RunnerHealth from "@effect/cluster/RunnerHealth"
import * as Runners from "@effect/cluster/Runners"
import * as ShardingConfig from "@effect/cluster/ShardingConfig"
import * as SocketRunner from "@effect/cluster/SocketRunner"
import * as SqlMessageStorage from "@effect/cluster/SqlMessageStorage"
import * as SqlRunnerStorage from "@effect/cluster/SqlRunnerStorage"
import { layerClientProtocol, layerSocketServer } from "@effect/platform-node-shared/NodeClusterSocket"
import * as RpcSerialization from "@effect/rpc/RpcSerialization"
import * as PgClient from "@effect/sql-pg/PgClient"
import { SqlError } from "@effect/sql/SqlError"
import { Cause, Duration, Effect, Layer, Option, Redacted, Schedule, Stream } from "effect"
import Pg from "pg"
import { hostGroup } from "./Protocol.ts"

/** Every runner and client of a cluster must agree on it. */
export const shardsPerGroup = 16

export { defaultLockExpiryMs } from "../domain/Placement.ts"

/**
 * The cluster's database. The pool is ours so that every connection has an `error` listener: when
 * PostgreSQL restarts, `pg` emits errors on idle connections and on ones already given back, and
 * one without a listener would end the process (a client crashed this way mid-call in a test).
 * Queries still fail with `SqlError`, which the directory reports as `transient`.
 */
export const layerDatabase = (url: string) =>
  PgClient.layerFromPool({
    acquire: Effect.acquireRelease(
      Effect.sync(() => {
        const pool = new Pg.Pool({
          connectionString: Redacted.value(Redacted.make(url)),
          application_name: "microagent",
          connectionTimeoutMillis: 5000,
          max: 8
        })
        const ignore = () => {}
        pool.on("error", ignore)
        pool.on("connect", (client) => client.on("error", ignore))
        return pool
      }),
      (pool) => Effect.tryPromise(() => pool.end()).pipe(Effect.ignore)
    ),
    applicationName: "microagent"
  })

const common = (lockExpiryMs: number): Partial<ShardingConfig.ShardingConfig["Type"]> => ({
  shardsPerGroup,
  // Advisory lock numbers come from a group's index in `availableShardGroups`, which differs between
  // runners here (each lists its own host group): two runners would fight over the same numbers. The
  // lock table keys locks by shard id, which is unique.
  shardLockDisableAdvisory: true,
  shardLockExpiration: Duration.millis(lockExpiryMs),
  shardLockRefreshInterval: Duration.millis(Math.max(500, Math.floor(lockExpiryMs / 3))),
  refreshAssignmentsInterval: Duration.millis(Math.min(3000, Math.max(250, Math.floor(lockExpiryMs / 6)))),
  runnerHealthCheckInterval: Duration.millis(Math.max(1000, Math.floor(lockExpiryMs / 2))),
  entityMessagePollInterval: Duration.seconds(1),
  entityReplyPollInterval: Duration.millis(100),
  // A routed call may be a long exec: an entity that is idle is cheap to keep.
  entityMaxIdleTime: Duration.hours(1)
})

/**
 * The storages create their tables on first use; runners starting together can race each other's
 * CREATE TABLE (PostgreSQL fails one with a duplicate key in its catalog), so a failed start is tried
 * again a few times. Both storages turn a database that does not answer at their start into a defect;
 * it is made a failure again here, so that it is retried and, when it persists, reported as
 * `transient` with its remedy by a runner or a client (a CLI call made while PostgreSQL restarts)
 * rather than as an internal error.
 */
const migrating = Schedule.intersect(Schedule.recurs(5), Schedule.spaced(Duration.millis(300)))

/** The `SqlError` a cause died of, if it died of one. */
const sqlDefect = (cause: Cause.Cause<unknown>): Option.Option<SqlError> =>
  Option.filter(Cause.dieOption(cause), (defect): defect is SqlError => defect instanceof SqlError)

export const databaseDefectsAsFailures = <A, E, R>(layer: Layer.Layer<A, E, R>) =>
  Layer.catchAllCause(
    layer,
    (cause): Layer.Layer<A, E | SqlError> =>
      Option.match(sqlDefect(cause), { onNone: () => Layer.failCause(cause), onSome: Layer.fail })
  )

/** The same for one effect: a `SqlError` the cluster's code turned into a defect fails with it again. */
export const databaseDefectAsFailure = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.catchSomeDefect(
    effect,
    (defect) => defect instanceof SqlError ? Option.some(Effect.fail(defect)) : Option.none()
  )

/** The same for a stream (`exec --stream`, `connect`, `logs -f`): a cut in the middle fails it. */
export const databaseDefectAsStreamFailure = <A, E, R>(stream: Stream.Stream<A, E, R>) =>
  Stream.catchAllCause(
    stream,
    (cause): Stream.Stream<never, E | SqlError> =>
      Option.match(sqlDefect(cause), { onNone: () => Stream.failCause(cause), onSome: Stream.fail })
  )

const storage = Layer.mergeAll(
  Layer.retry(databaseDefectsAsFailures(SqlMessageStorage.layer), migrating),
  Layer.retry(databaseDefectsAsFailures(SqlRunnerStorage.layer), migrating)
)

/** A runner: sharding with a socket server at `listen` (by default the advertised address). */
export const layerRunner = (options: {
  readonly runnerId: string
  readonly advertise: { readonly host: string; readonly port: number }
  readonly listen?: { readonly host: string; readonly port: number } | undefined
  readonly lockExpiryMs: number
}) => {
  const config = ShardingConfig.layer({
    ...common(options.lockExpiryMs),
    runnerAddress: Option.some(RunnerAddress.make(options.advertise.host, options.advertise.port)),
    runnerListenAddress: Option.map(
      Option.fromNullable(options.listen),
      (listen) => RunnerAddress.make(listen.host, listen.port)
    ),
    availableShardGroups: ["default", hostGroup(options.runnerId)],
    assignedShardGroups: ["default", hostGroup(options.runnerId)]
  })
  const health = RunnerHealth.layerPing.pipe(
    Layer.provide(Runners.layerRpc),
    Layer.provide(layerClientProtocol)
  )
  return SocketRunner.layer.pipe(
    Layer.provide([layerSocketServer, layerClientProtocol, health]),
    Layer.provideMerge(storage),
    Layer.provide(config),
    Layer.provide(RpcSerialization.layerMsgPack)
  )
}

/** A client: sends to runners, holds no shard. */
export const layerClient = (options: { readonly lockExpiryMs: number }) =>
  SocketRunner.layerClientOnly.pipe(
    Layer.provide(layerClientProtocol),
    Layer.provideMerge(storage),
    Layer.provide(ShardingConfig.layer({ ...common(options.lockExpiryMs), runnerAddress: Option.none() })),
    Layer.provide(RpcSerialization.layerMsgPack)
  )
