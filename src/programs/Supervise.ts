/**
 * `supervise`: a foreground loop that keeps one workspace up according to its restart policy. It
 * starts the workspace if it is not running, then looks at its state every interval and starts it
 * again when the policy says so (`superviseStep` in domain/Supervision.ts): a health check that kills
 * the VM leaves it `failed`, so it counts as a failure. The loop owns nothing: ending it (Ctrl-C, a
 * signal, `--max-restarts`) leaves a running VM running.
 *
 * The loop is written against two operations, so that the CLI can drive it through the runtime (the
 * process that holds the VMs and runs the health checks) and a host application through the programs.
 */
import { Duration, Effect } from "effect"
import type { State } from "../domain/State.ts"
import { superviseStep } from "../domain/Supervision.ts"
import type { Workspace } from "../domain/Workspace.ts"
import { StateStore } from "../services/StateStore.ts"
import { checkWorkspace, type HealthTrack } from "./Health.ts"
import { inspect } from "./Observe.ts"
import { collectService } from "./Service.ts"
import { start } from "./Start.ts"

export interface SuperviseOptions<R = never> {
  /** Seconds between looks at the workspace (default 5). */
  readonly intervalSeconds?: number | undefined
  /** Restarts after which supervision ends (0 or absent: no limit). The first start is not one. */
  readonly maxRestarts?: number | undefined
  /** Told of each start the loop makes (`restart` 0 is the first start). */
  readonly onStart?: ((event: SuperviseStart) => Effect.Effect<unknown, never, R>) | undefined
}

export interface SuperviseStart {
  readonly workspace: string
  /** 0 for the first start, then 1, 2, … */
  readonly restart: number
  /** The state it was started from. */
  readonly from: State
  /** Why it was down (a failed health check, say), when the record says. */
  readonly failure?: string | undefined
  /** Set when the start itself failed (the loop goes on). */
  readonly error?: string | undefined
}

export interface SuperviseReport {
  readonly workspace: string
  readonly restarts: number
  readonly state: State
  /** Why supervision ended. */
  readonly reason: string
}

export interface SuperviseOps<E, R> {
  /** The workspace's record, brought in line with its VMM. */
  readonly inspect: (name: string) => Effect.Effect<Workspace, E, R>
  readonly start: (name: string) => Effect.Effect<unknown, E, R>
}

/** The loop, over any way of inspecting and starting a workspace. Ends only when the policy says so. */
export const superviseWith = <E, R>(
  name: string,
  ops: SuperviseOps<E, R>,
  options: SuperviseOptions<R> = {}
) =>
  Effect.gen(function*() {
    const interval = Duration.seconds(options.intervalSeconds ?? 5)
    const maxRestarts = options.maxRestarts ?? 0
    let restarts = 0
    let first = true
    for (;;) {
      const workspace = yield* ops.inspect(name)
      const step = superviseStep({
        state: workspace.state,
        policy: workspace.restart,
        first,
        restarts,
        maxRestarts
      })
      if (step._tag === "Stop") {
        return {
          workspace: name,
          restarts,
          state: workspace.state,
          reason: step.reason
        } satisfies SuperviseReport
      }
      if (step._tag === "Start") {
        const restart = first ? 0 : restarts + 1
        if (!first) restarts += 1
        const started = yield* Effect.either(ops.start(name))
        const error = started._tag === "Left" ? describe(started.left) : undefined
        if (options.onStart !== undefined) {
          yield* options.onStart({
            workspace: name,
            restart,
            from: workspace.state,
            ...(workspace.failure === undefined || workspace.state !== "failed"
              ? {}
              : { failure: workspace.failure }),
            ...(error === undefined ? {} : { error })
          })
        }
      }
      first = false
      yield* Effect.sleep(interval)
    }
  })

const describe = (error: unknown) =>
  typeof error === "object" && error !== null && "message" in error ? String(error.message) : String(error)

/**
 * What the runtime does for every running workspace, for one workspace in this process: its health
 * checks, and copying its service's restarts into the record.
 */
const watch = (name: string) =>
  Effect.gen(function*() {
    const store = yield* StateStore
    let track: HealthTrack | undefined
    let lastService = 0
    for (;;) {
      const workspace = yield* store.get(name).pipe(Effect.option)
      if (workspace._tag === "Some") {
        const before = track
        track = yield* checkWorkspace(workspace.value, before, Date.now()).pipe(
          Effect.catchAllCause(() => Effect.succeed(before))
        )
      }
      if (Date.now() - lastService >= 2000) {
        lastService = Date.now()
        yield* collectService(name).pipe(Effect.ignore)
      }
      yield* Effect.sleep(Duration.seconds(1))
    }
  })

/**
 * The loop in this process, on the programs: for a host application that composes the layers itself
 * and so holds the VMs. It also runs the workspace's health checks and follows its service's restarts
 * while it runs (the CLI's `supervise` goes through the runtime, which does that for every workspace).
 * Each start is recorded as a `supervise` event.
 */
export const supervise = (name: string, options: SuperviseOptions = {}) =>
  Effect.flatMap(StateStore, (store) =>
    Effect.zipRight(
      Effect.forkScoped(watch(name)),
      superviseWith(name, {
        inspect: (n) => Effect.map(inspect(n), (report) => report.workspace),
        start: (n) => start(n)
      }, {
        ...options,
        onStart: (event) =>
          store.appendEvent(name, { type: "supervise", detail: superviseDetail(event) }).pipe(
            Effect.ignore,
            Effect.zipRight(options.onStart === undefined ? Effect.void : options.onStart(event))
          )
      })
    )).pipe(Effect.scoped)

/** One start as an event's text. */
export const superviseDetail = (event: SuperviseStart) =>
  `${event.restart === 0 ? "started" : `restart ${event.restart}`} from ${event.from}${
    event.failure === undefined ? "" : ` (${event.failure})`
  }${event.error === undefined ? "" : `: start failed: ${event.error}`}`
