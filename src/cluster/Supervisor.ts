/**
 * The supervisor, a cluster singleton (one instance runs, on one of the runners): it moves the
 * `restart: always` workspaces of lost runners to live ones, and forgets runners silent for longer
 * than `forgetAfterMs` that hold no workspace (0: never), so retired hosts leave `list` and placement. A move is a compare-and-set in the
 * directory (from the lost host to the chosen one), so two supervisors, or a supervisor and the
 * returning runner, never both win; then the chosen runner creates the workspace from its create
 * request and starts it. A failed create gives the name back to the lost host for a later round.
 *
 * What moves is the workspace's definition, not its disk: the disk stays on the lost host (the cluster
 * replicates no disks), and the workspace starts again from its image.
 */
import { Duration, Effect, Option, Schedule, Schema } from "effect"
import { demandOf, place, placementDefaultCpus } from "../domain/Placement.ts"
import { CreateRequest } from "../domain/Requests.ts"
import { Directory } from "./Directory.ts"
import { MicroagentHost } from "./Protocol.ts"

const decodeCreate = Schema.decodeUnknown(CreateRequest)

export const supervise = (lockExpiryMs: number, forgetAfterMs: number) =>
  Effect.gen(function*() {
    const directory = yield* Directory
    const hosts = yield* MicroagentHost.client
    const fallbackCpus = yield* placementDefaultCpus
    const round = Effect.gen(function*() {
      if (forgetAfterMs > 0) {
        for (const id of yield* directory.forget(forgetAfterMs)) {
          yield* Effect.logInfo(
            `runner ${id}: silent for over ${forgetAfterMs / 1000} s with no workspace; forgotten`
          )
        }
      }
      const runners = yield* directory.runners
      const alive = new Set(runners.filter((runner) => runner.alive).map((runner) => runner.id))
      const entries = yield* directory.entries
      for (const entry of entries) {
        if (entry.restart !== "always" || alive.has(entry.host)) continue
        const decoded = yield* Effect.option(decodeCreate(entry.request))
        if (Option.isNone(decoded)) {
          yield* Effect.logWarning(
            `${entry.name}: lost with ${entry.host}, and no create request to move it with`
          )
          continue
        }
        const request = decoded.value
        const placement = place(runners, {
          ...demandOf(request, fallbackCpus),
          image: request.image,
          constraints: request.constraints ?? {}
        }, { sample: 2, random: Math.random })
        const target = placement.order[0]
        if (target === undefined) {
          yield* Effect.logWarning(`${entry.name}: lost with ${entry.host}, and no runner can take it`)
          continue
        }
        if (!(yield* directory.move(entry.name, entry.host, target, { fromLost: true }))) continue
        yield* Effect.logInfo(`${entry.name}: ${entry.host} is lost; moving the workspace to ${target}`)
        const host = hosts(target)
        const moved = yield* host.create({ ...request, name: entry.name }).pipe(
          Effect.zipRight(host.start({ name: entry.name })),
          Effect.as(true),
          Effect.catchAllCause((cause) =>
            Effect.as(Effect.logWarning(`${entry.name}: could not start it on ${target}`, cause), false)
          )
        )
        if (!moved) {
          const current = yield* directory.lookup(entry.name)
          if (Option.isSome(current) && current.value.host === target) {
            yield* directory.move(entry.name, target, entry.host)
          }
        }
      }
    })
    yield* round.pipe(
      Effect.catchAllCause((cause) => Effect.logWarning("supervisor round failed", cause)),
      Effect.repeat(Schedule.spaced(Duration.millis(Math.max(250, Math.floor(lockExpiryMs / 4)))))
    )
  })
