/**
 * Keeping workspaces alive: the service's restart back-off, health checks from the spec, the restart
 * decisions of `supervise`, and the systemd user unit that runs `supervise` at login. Pure: the
 * programs that act on these live in programs/Service.ts, programs/Health.ts and programs/Supervise.ts.
 */
import { Either } from "effect"
import type { SpecHealth, SpecService } from "./Spec.ts"
import type { State } from "./State.ts"
import { HealthCheck, healthDefaults } from "./Workspace.ts"

/** The service's back-off: 1 s before the first restart, doubling up to 30 s, back to 1 s after 30 s up. */
export const serviceBackoff = { initialSeconds: 1, maxSeconds: 30, resetAfterSeconds: 30 } as const

/**
 * The delay before the next restart of a service that exited after `uptimeSeconds`, given the delay
 * before its previous restart (undefined: it has not been restarted yet).
 */
export const nextServiceDelay = (previousDelay: number | undefined, uptimeSeconds: number): number =>
  previousDelay === undefined || uptimeSeconds >= serviceBackoff.resetAfterSeconds
    ? serviceBackoff.initialSeconds
    : Math.min(previousDelay * 2, serviceBackoff.maxSeconds)

/** Quotes one word for /bin/sh. */
export const shellWord = (word: string): string =>
  /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`

/** The spec's `service` as one shell command (an argv list is quoted word by word). */
export const serviceCommandOf = (service: typeof SpecService.Type): string =>
  typeof service === "string"
    ? service
    : typeof service.command === "string"
    ? service.command
    : service.command.map(shellWord).join(" ")

/** The spec's `health` as a check, or why it is not one. */
export const healthCheckOf = (spec: typeof SpecHealth.Type): Either.Either<HealthCheck, string> => {
  const httpGet = typeof spec.httpGet === "string"
    ? spec.port === undefined ? undefined : { path: spec.httpGet, port: spec.port }
    : spec.httpGet
  if (typeof spec.httpGet === "string" && spec.port === undefined) {
    return Either.left("health.httpGet needs health.port, the published guest port to probe")
  }
  if (typeof spec.httpGet === "object" && spec.port !== undefined) {
    return Either.left("health.port is given twice: once in health.httpGet and once beside it")
  }
  if ((spec.exec === undefined) === (httpGet === undefined)) {
    return Either.left("health needs exactly one of exec (an argv list) and httpGet (with port)")
  }
  if (httpGet !== undefined && !httpGet.path.startsWith("/")) {
    return Either.left(`health.httpGet: the path must start with "/" (got ${JSON.stringify(httpGet.path)})`)
  }
  return Either.right(
    new HealthCheck({
      ...(spec.exec === undefined ? {} : { exec: spec.exec }),
      ...(httpGet === undefined ? {} : { httpGet }),
      intervalSeconds: spec.intervalSeconds ?? healthDefaults.intervalSeconds,
      timeoutSeconds: spec.timeoutSeconds ?? healthDefaults.timeoutSeconds,
      retries: spec.retries ?? healthDefaults.retries,
      startPeriodSeconds: spec.startPeriodSeconds ?? healthDefaults.startPeriodSeconds
    })
  )
}

export type RestartPolicy = "never" | "on-failure" | "always"

/** What `supervise` does on seeing a workspace in `state`. */
export type SuperviseStep =
  | { readonly _tag: "Wait" }
  | { readonly _tag: "Start" }
  | { readonly _tag: "Stop"; readonly reason: string }

/**
 * One decision of the supervise loop. A live workspace is left alone. The first time round, one that
 * is not running is started whatever the policy. Afterwards: `always` restarts after `stopped` or
 * `failed`, `on-failure` after `failed`, `never` not at all; a `halted` workspace was halted on purpose
 * and ends supervision, as does reaching `maxRestarts` (0: no limit). `quarantined` is never restarted.
 */
export const superviseStep = (input: {
  readonly state: State
  readonly policy: RestartPolicy
  readonly first: boolean
  readonly restarts: number
  readonly maxRestarts: number
}): SuperviseStep => {
  const { first, maxRestarts, policy, restarts, state } = input
  if (state === "starting" || state === "running" || state === "paused" || state === "stopping") {
    return { _tag: "Wait" }
  }
  if (state === "quarantined") return { _tag: "Stop", reason: "the workspace is quarantined" }
  if (first) return { _tag: "Start" }
  if (state === "halted" || state === "prepared") {
    return { _tag: "Stop", reason: `the workspace was ${state === "halted" ? "halted" : "reset"}` }
  }
  const wanted = policy === "always" || (policy === "on-failure" && state === "failed")
  if (!wanted) {
    return { _tag: "Stop", reason: `the workspace is ${state} and its restart policy is ${policy}` }
  }
  if (maxRestarts > 0 && restarts >= maxRestarts) {
    return {
      _tag: "Stop",
      reason: `the workspace is ${state} and it was restarted ${restarts} times (--max-restarts)`
    }
  }
  return { _tag: "Start" }
}

/** The systemd user unit's name for a workspace's supervisor. */
export const supervisorUnitName = (workspace: string) => `microagent-supervise-${workspace}.service`

/** Quotes one word of a systemd command line. */
const unitWord = (word: string) =>
  /^[A-Za-z0-9_@%+=:,./-]+$/.test(word) ? word : `"${word.replace(/(["\\])/g, "\\$1")}"`

/**
 * The unit: `supervise NAME` on the state directory of whoever installed it, started at login and
 * restarted by systemd if the loop itself fails.
 */
export const supervisorUnit = (input: {
  readonly workspace: string
  readonly command: ReadonlyArray<string>
  readonly stateDir: string
}): string =>
  [
    "[Unit]",
    `Description=microagent supervise ${input.workspace}`,
    "After=network-online.target",
    "",
    "[Service]",
    "Type=simple",
    `ExecStart=${
      [...input.command, "supervise", input.workspace, "--state-dir", input.stateDir].map(unitWord).join(" ")
    }`,
    "Restart=on-failure",
    "",
    "[Install]",
    "WantedBy=default.target",
    ""
  ].join("\n")
