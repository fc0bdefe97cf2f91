/**
 * The cluster as a `MicroagentClient`: the same procedures as a host's runtime, so the CLI, the MCP
 * server and host applications use a cluster the way they use one host (`--cluster URL`).
 *
 * - A workspace's procedures go to the runner the directory names for it, through the cluster's
 *   sharding (the `MicroagentHost` entity of that runner). A runner that stopped heart-beating is
 *   reported at once (`Transient`, naming it), not waited for.
 * - `run` and `create` are placed: the runners are ranked by capacity, labels and cached images
 *   (Placement.ts) and tried in turn while they refuse for lack of room.
 * - `list` asks every live runner and adds the workspaces of lost runners as `lost`, from the record
 *   their runner last reported.
 * - `cp` carries the files by value (a tar), since the caller's paths are not on the runner.
 * - `imagePull` pulls on every live runner at once, so that placement finds the image wherever the
 *   workspace lands.
 * - The other host-wide procedures (the image store's other verbs, volumes, networks, models…) belong
 *   to each host: they answer `Unsupported` here, with the remedy.
 */
import { RpcSchema } from "@effect/rpc"
import { Duration, Effect, Either, Fiber, Layer, Option, Schema, Stream } from "effect"
import * as NodePath from "node:path"
import {
  type InvalidInput,
  type MicroagentError,
  NotFound,
  Transient,
  Unsupported
} from "../domain/Errors.ts"
import { demandOf, place, placementDefaultCpus, redact } from "../domain/Placement.ts"
import type {
  CloneRequest,
  CpRequest,
  CreateFromSnapshotRequest,
  CreateRequest,
  ExecCommand,
  RunRequest
} from "../domain/Requests.ts"
import { parseSnapshotRef } from "../domain/SnapshotRestore.ts"
import { version } from "../domain/Version.ts"
import { Workspace } from "../domain/Workspace.ts"
import { MicroagentClient, type MicroagentClientShape } from "../rpc/Client.ts"
import type { ImagePullRequest } from "../rpc/HostRpcs.ts"
import { Rpcs } from "../rpc/Rpcs.ts"
import {
  databaseDefectAsFailure,
  databaseDefectAsStreamFailure,
  databaseDefectsAsFailures,
  defaultLockExpiryMs,
  layerClient,
  layerDatabase
} from "./ClusterLayers.ts"
import { Directory, layer as layerDirectory } from "./Directory.ts"
import { classified, type EverywhereTag, maxTransferBytes, MicroagentHost, routedTags } from "./Protocol.ts"
import { packPath, unpackTo } from "./Transfer.ts"

/** How many runners placement draws before ranking them (the rest are fallbacks). */
export const placementSample = 3

/** The cluster's own failures (a full mailbox, storage) are worth a retry. */
const routingFailure = classified(
  "the cluster did not deliver the call",
  "retry; `microagent --cluster URL list` shows whether the workspace's runner is up"
)

/** A call's failures as the cluster reports them, a database defect of the cluster's code included. */
const reported = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  effect.pipe(databaseDefectAsFailure, Effect.mapError(routingFailure))

/** The same for a streamed call. */
const reportedStream = <A, E, R>(stream: Stream.Stream<A, E, R>) =>
  stream.pipe(databaseDefectAsStreamFailure, Stream.mapError(routingFailure))

const decode = Schema.decodeUnknown(Workspace)

/** A runner's failure, its message prefixed with the runner's id (same kind, same remedy). */
const onRunner = (id: string) => (error: unknown): MicroagentError => {
  const reportedError = routingFailure(error)
  return Object.assign(Object.create(Object.getPrototypeOf(reportedError)), reportedError, {
    message: `runner ${id}: ${reportedError.message}`
  })
}

export const make = Effect.gen(function*() {
  const directory = yield* Directory
  const hosts = yield* MicroagentHost.client
  const fallbackCpus = yield* placementDefaultCpus

  const hostOf = (name: string) =>
    Effect.gen(function*() {
      const found = yield* directory.route(name)
      if (Option.isNone(found)) {
        return yield* Effect.fail(
          new NotFound({
            message: `no workspace named "${name}" in the cluster`,
            remediation: "`microagent --cluster URL list` shows the cluster's workspaces"
          })
        )
      }
      const entry = found.value
      if (!entry.alive) {
        return yield* Effect.fail(
          new Transient({
            message: `workspace "${name}" is on runner ${entry.host}, which is lost${
              entry.ageMs === undefined ? "" : ` (no heartbeat for ${Math.round(entry.ageMs / 1000)} s)`
            }`,
            remediation: entry.restart === "always"
              ? "it is being moved to another runner (restart: always); retry in a few seconds"
              : "retry once the runner is back; its disk stays on its host",
            retryAfterMs: 2000
          })
        )
      }
      return entry.host
    })

  const call = (host: string, tag: string, payload: unknown): unknown =>
    (hosts(host) as unknown as Record<string, (payload: unknown) => unknown>)[tag]!(payload)

  /**
   * Fails once the workspace's runner is lost (or the workspace moved) while a call to it is in
   * flight: a runner that dies mid-call sends no reply, and the call would wait for ever.
   */
  const watch = (host: string, what: string) =>
    Effect.gen(function*() {
      while (true) {
        yield* Effect.sleep(Duration.seconds(1))
        const runners = yield* Effect.option(directory.runners)
        if (Option.isNone(runners)) continue
        const runner = runners.value.find((candidate) => candidate.id === host)
        if (runner === undefined || !runner.alive) {
          return yield* Effect.fail(
            new Transient({
              message: `runner ${host} was lost while it served ${what}`,
              remediation:
                "the call's outcome is unknown: check the workspace (`inspect`, `list`) before retrying",
              retryAfterMs: 2000
            })
          )
        }
      }
    })

  /**
   * A call to `host` that fails if the runner is lost before it answers. The call runs in a fiber of
   * its own that is interrupted, and awaited, whenever this ends without its answer: its interruption
   * reaches the runner (an `exec`'s command stops) before the caller goes on. A race would interrupt
   * the losing call without waiting for it, and a CLI interrupted by Ctrl-C then closed the cluster's
   * client before the interruption was sent.
   */
  const guarded = (
    host: string,
    tag: string,
    payload: { readonly name?: string | undefined; readonly [field: string]: unknown }
  ) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(
        Effect.fork(restore(call(host, tag, payload) as Effect.Effect<unknown, unknown>)),
        (fiber) =>
          restore(Effect.raceFirst(
            Fiber.join(fiber),
            watch(host, payload.name === undefined ? tag : `${tag} on "${payload.name}"`)
          )).pipe(Effect.ensuring(Fiber.interrupt(fiber)))
      )
    )

  const routed = (tag: string, stream: boolean) => (payload: { readonly name: string }) =>
    stream
      ? Stream.unwrap(Effect.map(hostOf(payload.name), (host) =>
        (call(host, tag, payload) as Stream.Stream<unknown, unknown>).pipe(
          Stream.interruptWhen(watch(host, `${tag} on "${payload.name}"`))
        ))).pipe(reportedStream)
      : reported(Effect.flatMap(hostOf(payload.name), (host) =>
        guarded(host, tag, payload)))

  /**
   * On every live runner at once; the answer is the first runner's, and a runner's failure fails the
   * call, naming that runner (the others' work stands: a pull is whole or absent on each).
   */
  const everywhere = (tag: EverywhereTag, payload: { readonly [field: string]: unknown }) =>
    Effect.gen(function*() {
      const alive = (yield* directory.runners).filter((runner) => runner.alive)
      if (alive.length === 0) {
        return yield* Effect.fail(
          new Transient({
            message: `no runner is alive to serve ${tag}`,
            remediation:
              "start a runner (`microagent serve runner --advertise HOST:PORT`, with the cluster's URL)",
            retryAfterMs: 5000
          })
        )
      }
      const answers = yield* Effect.forEach(
        alive,
        (runner) => guarded(runner.id, tag, payload).pipe(Effect.mapError(onRunner(runner.id))),
        { concurrency: "unbounded" }
      )
      return answers[0]
    }).pipe(reported)

  /** Places a new workspace: tries the ranked runners while they refuse for lack of room. */
  const placed = (tag: "create" | "run", payload: CreateRequest | RunRequest) =>
    Effect.gen(function*() {
      const runners = yield* directory.runners
      const placement = place(runners, {
        ...demandOf(payload, fallbackCpus),
        image: payload.image,
        constraints: payload.constraints ?? {}
      }, { sample: placementSample, random: Math.random })
      let refused: Array<string> = placement.refused.map(({ id, reason }) => `${id}: ${reason}`)
      for (const host of placement.order) {
        const outcome = yield* Effect.either(guarded(host, tag, payload))
        if (outcome._tag === "Right") return outcome.right
        const error = routingFailure(outcome.left)
        if (error._tag !== "ResourceExhausted") return yield* Effect.fail(error)
        refused = [...refused, error.message]
      }
      return yield* Effect.fail(
        new Transient({
          message: `no runner can take the workspace${
            refused.length > 0 ? `: ${refused.join("; ")}` : " (no runner is alive)"
          }`,
          remediation:
            "start a runner (`microagent serve runner --advertise HOST:PORT`, with the cluster's URL), free capacity, or relax --constraint",
          retryAfterMs: 5000
        })
      )
    })

  const list = (payload: { readonly runningOnly?: boolean }) =>
    Effect.gen(function*() {
      const runners = yield* directory.runners
      const alive = runners.filter((runner) => runner.alive)
      // A runner that does not answer within 10 s is shown as lost too (its workspaces from the
      // records it last reported), not left out.
      const answers = yield* Effect.forEach(
        alive,
        (runner) =>
          (call(runner.id, "list", payload) as Effect.Effect<ReadonlyArray<Workspace>, unknown>).pipe(
            Effect.timeout("10 seconds"),
            Effect.option,
            Effect.map((listed) => ({ id: runner.id, listed }))
          ),
        { concurrency: "unbounded" }
      )
      const live = answers.flatMap((answer) => Option.getOrElse(answer.listed, () => []))
      const aliveIds = new Set(
        answers.filter((answer) => Option.isSome(answer.listed)).map((answer) => answer.id)
      )
      const lost: Array<Workspace> = []
      if (payload.runningOnly !== true) {
        for (const entry of yield* directory.entries) {
          if (aliveIds.has(entry.host) || entry.record === undefined) continue
          const record = yield* Effect.option(decode(entry.record))
          if (Option.isSome(record)) {
            lost.push(new Workspace({ ...record.value, state: "lost", host: entry.host }))
          }
        }
      }
      return [...live, ...lost].sort((a, b) => a.name.localeCompare(b.name))
    }).pipe(reported)

  const cp = (payload: CpRequest) =>
    Effect.gen(function*() {
      const host = yield* hostOf(payload.name)
      if (payload.direction === "in") {
        const tar = yield* packPath(payload.hostPath, maxTransferBytes)
        const result = yield* (guarded(host, "cpIn", {
          name: payload.name,
          guestPath: payload.guestPath,
          tar
        }) as Effect.Effect<{ readonly hostPath: string }, unknown>)
        return { ...result, hostPath: NodePath.resolve(payload.hostPath) }
      }
      return yield* broughtBack(
        host,
        "cpOut",
        { name: payload.name, guestPath: payload.guestPath },
        payload.hostPath
      )
    }).pipe(reported)

  /**
   * A copy out of a workspace by value (`cpOut`, `artifactsOut`): the runner answers with the copy's
   * result and a tar of it, unpacked here at `hostPath` (into it, when it is a directory).
   */
  const broughtBack = (
    host: string,
    tag: "cpOut" | "artifactsOut",
    payload: { readonly name: string; readonly [field: string]: unknown },
    hostPath: string
  ) =>
    Effect.gen(function*() {
      const { result, tar } = yield* (guarded(host, tag, payload) as Effect.Effect<
        {
          readonly result: { readonly hostPath: string; readonly guestPath: string }
          readonly tar: Uint8Array
        },
        unknown
      >)
      const target = yield* unpackTo(tar, hostPath, NodePath.posix.basename(result.guestPath) || "payload")
      return { ...result, hostPath: target }
    })

  /** `artifacts get`: the runner copies the output into a staging tar, unpacked here where asked. */
  const artifactsGet = (
    payload: { readonly name: string; readonly artifact: string; readonly hostPath: string }
  ) =>
    Effect.flatMap(
      hostOf(payload.name),
      (host) =>
        broughtBack(
          host,
          "artifactsOut",
          { name: payload.name, artifact: payload.artifact },
          payload.hostPath
        )
    ).pipe(
      reported
    )

  const client: Record<string, unknown> = {}
  for (const [tag, rpc] of Rpcs.requests) {
    const stream = RpcSchema.isStreamSchema(rpc.successSchema)
    client[tag] = stream
      ? () =>
        Stream.fail(
          new Unsupported({
            message: `${tag} is not available through the cluster`,
            remediation: "run it on the runner's host, without --cluster"
          })
        )
      : () =>
        Effect.fail(
          new Unsupported({
            message: `${tag} is not available through the cluster: it acts on one host`,
            remediation: "run it on the runner's host, without --cluster"
          })
        )
  }
  for (const tag of routedTags) {
    client[tag] = routed(tag, RpcSchema.isStreamSchema(Rpcs.requests.get(tag)!.successSchema))
  }
  // A copy goes to the runner that holds its source (the disk and memory it copies are there).
  const byRunnerOf = (
    tag: string,
    source: Either.Either<string, InvalidInput>,
    payload: { readonly [field: string]: unknown }
  ) => reported(Effect.flatMap(Effect.flatMap(source, hostOf), (host) => guarded(host, tag, payload)))
  client.clone = (payload: CloneRequest) => byRunnerOf("clone", Either.right(payload.source), payload)
  client.createFromSnapshot = (payload: CreateFromSnapshotRequest) =>
    byRunnerOf(
      "createFromSnapshot",
      Either.map(parseSnapshotRef(payload.snapshot), (ref) => ref.workspace),
      payload
    )
  client.create = (payload: CreateRequest) => reported(placed("create", payload))
  client.run = (payload: RunRequest) => reported(placed("run", payload))
  // A connect session's keystrokes and resizes go to the runner its `connect` went to.
  const sessions = new Map<string, string>()
  client.connect = (payload: { readonly name: string; readonly sessionId: string }) =>
    Stream.unwrapScoped(Effect.gen(function*() {
      const host = yield* hostOf(payload.name)
      yield* Effect.acquireRelease(
        Effect.sync(() => sessions.set(payload.sessionId, host)),
        () => Effect.sync(() => sessions.delete(payload.sessionId))
      )
      return (call(host, "connect", payload) as Stream.Stream<unknown, unknown>).pipe(
        Stream.interruptWhen(watch(host, `connect on "${payload.name}"`))
      )
    })).pipe(reportedStream)
  for (const tag of ["connectInput", "connectResize"] as const) {
    client[tag] = (payload: { readonly sessionId: string }) => {
      const host = sessions.get(payload.sessionId)
      return host === undefined
        ? Effect.fail(
          new NotFound({ message: `no connect session ${payload.sessionId} through this client` })
        )
        : Effect.mapError(call(host, tag, payload) as Effect.Effect<unknown, unknown>, routingFailure)
    }
  }
  client.list = list
  client.imagePull = (payload: { readonly ref: string }) => everywhere("imagePull", payload)
  client.cp = cp
  client.artifactsGet = artifactsGet
  client.version = () => Effect.succeed({ version })
  return client as unknown as MicroagentClientShape
})

/** A client of the cluster whose PostgreSQL is at `url`, as a `MicroagentClient`. */
export const layer = (options: { readonly url: string; readonly lockExpiryMs?: number | undefined }) =>
  Layer.effect(MicroagentClient, make).pipe(
    Layer.provide(layerClient({ lockExpiryMs: options.lockExpiryMs ?? defaultLockExpiryMs })),
    Layer.provide(layerDirectory),
    Layer.provide(layerDatabase(options.url)),
    databaseDefectsAsFailures,
    Layer.mapError((error) =>
      new Transient({
        message: `could not join the cluster at ${redact(options.url)}: ${
          String((error as { message?: unknown }).message ?? error)
        }`,
        remediation: "check the --cluster URL and that PostgreSQL is up",
        retryAfterMs: 1000
      })
    )
  )

/** The cluster's workspace operations as Effects over its `MicroagentClient` (for the Promise API). */
export const operations = {
  create: (request: CreateRequest) => Effect.flatMap(MicroagentClient, (client) => client.create(request)),
  run: (request: RunRequest) => Effect.flatMap(MicroagentClient, (client) => client.run(request)),
  start: (name: string) => Effect.flatMap(MicroagentClient, (client) => client.start({ name })),
  exec: (command: ExecCommand) => Effect.flatMap(MicroagentClient, (client) => client.exec(command)),
  halt: (name: string) => Effect.flatMap(MicroagentClient, (client) => client.halt({ name })),
  delete: (name: string, options: { readonly force?: boolean } = {}) =>
    Effect.flatMap(MicroagentClient, (client) => client.delete({ name, ...options })),
  inspect: (name: string) => Effect.flatMap(MicroagentClient, (client) => client.inspect({ name })),
  list: Effect.flatMap(MicroagentClient, (client) => client.list({})),
  cp: (request: CpRequest) => Effect.flatMap(MicroagentClient, (client) => client.cp(request)),
  imagePull: (request: ImagePullRequest) =>
    Effect.flatMap(MicroagentClient, (client) => client.imagePull(request))
}
