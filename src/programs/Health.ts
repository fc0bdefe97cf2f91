/**
 * Health checks of running workspaces, run by the runtime: `exec` runs an argv in the guest over the
 * VM's channel (healthy on exit 0); `httpGet` is a GET from the host to the workspace's published port
 * for that guest port (healthy on a status below 400), so it needs nothing in the image. After the
 * start period (counted from the end of the start: setup, service, entrypoint launched), one probe every interval; `retries` failures in a row kill the VM and record the
 * workspace `failed`, with the reason in its events and in `failure` (what `supervise` restarts under
 * `on-failure` and `always`).
 *
 * The count of failures lives in the runtime's memory: a runtime that restarts begins the start
 * period and the count afresh for the VMs it finds.
 */
import { Duration, Effect, Option, Ref } from "effect"
import * as NodeHttp from "node:http"
import type { HealthCheck, Workspace } from "../domain/Workspace.ts"
import { Hypervisor } from "../services/Hypervisor.ts"
import { StateStore } from "../services/StateStore.ts"
import { guestRun } from "./Entrypoint.ts"
import { releaseBroker } from "./internal/Brokering.ts"
import { releaseModel } from "./internal/ModelPairing.ts"
import { releaseMounts } from "./internal/Mounts.ts"
import { detachNetworks } from "./internal/NetworkPlumbing.ts"
import { reapOrphanVmms } from "./internal/Orphans.ts"
import { vmHandleOf, withoutOwner } from "./internal/Reconcile.ts"
import { execRequestFor } from "./internal/Requests.ts"

/** What the runtime remembers of one workspace's checks. */
export interface HealthTrack {
  readonly sessionId: string
  readonly failures: number
  /** When the next probe is due (epoch ms). */
  readonly nextAt: number
}

export type HealthTracks = Ref.Ref<ReadonlyMap<string, HealthTrack>>

export const makeHealthTracks = Ref.make<ReadonlyMap<string, HealthTrack>>(new Map())

/** A GET to host:port/path; undefined when healthy, else why not. */
const httpProbe = (host: string, port: number, path: string, timeoutSeconds: number) =>
  Effect.async<string | undefined>((resume) => {
    // A fresh connection each time (no keep-alive): each probe tests that the port accepts one.
    const request = NodeHttp.get(
      { host, port, path, timeout: timeoutSeconds * 1000, agent: false },
      (response) => {
        response.resume()
        const status = response.statusCode ?? 0
        resume(Effect.succeed(status >= 200 && status < 400 ? undefined : `GET ${path} answered ${status}`))
      }
    )
    request.on("timeout", () => request.destroy(new Error(`no answer within ${timeoutSeconds}s`)))
    request.on("error", (error) => resume(Effect.succeed(`GET ${path}: ${error.message}`)))
    return Effect.sync(() => request.destroy())
  })

/** Runs the workspace's check once: undefined when healthy, else why not. */
export const probe = (workspace: Workspace, check: HealthCheck) =>
  Effect.gen(function*() {
    const handle = vmHandleOf(workspace)
    if (Option.isNone(handle)) return "the VM has no handle"
    if (check.httpGet !== undefined) {
      const { path, port } = check.httpGet
      const published = workspace.ports.find((p) => p.guestPort === port)
      if (published === undefined) return `guest port ${port} is not published`
      const host = published.hostIp === "0.0.0.0" || published.hostIp === "" ? "127.0.0.1" : published.hostIp
      return yield* httpProbe(host, published.hostPort, path, check.timeoutSeconds)
    }
    const argv = check.exec as readonly [string, ...Array<string>]
    const outcome = yield* guestRun(
      handle.value,
      execRequestFor(workspace, argv, {
        timeoutSeconds: check.timeoutSeconds,
        stdoutLimit: 4096,
        stderrLimit: 4096
      })
    ).pipe(
      Effect.timeout(Duration.seconds(check.timeoutSeconds + 10)),
      Effect.either
    )
    if (outcome._tag === "Left") return `${argv[0]}: ${outcome.left.message}`
    const result = outcome.right
    if (result.status === "exited" && result.exitCode === 0) return undefined
    const said = (result.stderr.trim() || result.stdout.trim()).split("\n").at(-1) ?? ""
    return `${argv.join(" ")}: ${result.status === "timed_out" ? "timed out" : `exit ${result.exitCode}`}${
      said === "" ? "" : ` (${said.slice(0, 200)})`
    }`
  })

/**
 * Kills a workspace whose checks failed and records it `failed` with the reason (in the record's
 * `failure` and the transition's event).
 */
export const failUnhealthy = Effect.fn("failUnhealthy")(
  function*(name: string, reason: string, session: string) {
    const store = yield* StateStore
    const hypervisor = yield* Hypervisor
    const current = yield* store.get(name)
    const handle = vmHandleOf(current)
    // Two checkers (the runtime's and a supervising process's) may both reach the verdict; the second,
    // or one that lost a race with a restart, must not kill the VM of the next start.
    return yield* Effect.uninterruptible(
      store.transition(name, "crashed", {
        patch: (ws) => withoutOwner({ ...ws, vm: undefined, failure: reason } as Workspace),
        detail: reason,
        session
      }).pipe(
        Effect.tap(() => Option.isSome(handle) ? hypervisor.kill(handle.value) : Effect.void),
        Effect.tap(() => reapOrphanVmms({ workspace: name })),
        Effect.tap(releaseMounts),
        Effect.tap(releaseModel),
        Effect.tap(releaseBroker),
        Effect.tap(releaseBroker),
        Effect.tap(detachNetworks)
      )
    )
  }
)

/**
 * Whether the start of the running session has got through setup, the service's launch and the
 * entrypoint's: checks begin (with the start period) only then, so a long first setup is not killed
 * for being unhealthy.
 */
export const startFinished = (workspace: Workspace): boolean =>
  !(workspace.setup.length > 0 && workspace.setupDone === undefined)
  && (workspace.service === undefined || workspace.serviceStatus?.sessionId === workspace.sessionId)
  && (workspace.entrypoint === undefined || workspace.result?.sessionId === workspace.sessionId)

/**
 * One pass over one workspace: probes it when due and acts on the outcome. Answers its track
 * afterwards (undefined once it is no longer checked).
 */
export const checkWorkspace = Effect.fn("checkWorkspace")(function*(
  workspace: Workspace,
  track: HealthTrack | undefined,
  now: number
) {
  const check = workspace.health
  if (check === undefined || workspace.state !== "running" || workspace.sessionId === undefined) {
    return undefined
  }
  const store = yield* StateStore
  if (track === undefined || track.sessionId !== workspace.sessionId || !startFinished(workspace)) {
    return { sessionId: workspace.sessionId, failures: 0, nextAt: now + check.startPeriodSeconds * 1000 }
  }
  if (now < track.nextAt) return track
  const problem = yield* probe(workspace, check)
  const next = now + check.intervalSeconds * 1000
  if (problem === undefined) {
    if (track.failures > 0) {
      yield* store.appendEvent(workspace.name, { type: "health", detail: "healthy again" })
    }
    return { ...track, failures: 0, nextAt: next }
  }
  const failures = track.failures + 1
  yield* store.appendEvent(workspace.name, {
    type: "health",
    detail: `check failed (${failures}/${check.retries}): ${problem}`
  })
  if (failures < check.retries) return { ...track, failures, nextAt: next }
  // Still this session's VM (nobody halted or restarted it meanwhile)?
  const latest = yield* store.get(workspace.name)
  if (latest.state !== "running" || latest.sessionId !== workspace.sessionId) return undefined
  yield* failUnhealthy(
    workspace.name,
    `health check failed ${failures} times in a row: ${problem}`,
    workspace.sessionId
  ).pipe(
    // Someone else got there first (the other checker, or a restart): nothing left to do here.
    Effect.catchTag("Conflict", () => Effect.void)
  )
  return undefined
})
