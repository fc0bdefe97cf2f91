/**
 * `supervise`, and the spec's and flags' service, shell and health check as `create` records them.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Either, Option } from "effect"
import { spawnSync } from "node:child_process"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import { InvalidInput } from "../domain/Errors.ts"
import type { Spec } from "../domain/Spec.ts"
import { healthCheckOf, serviceCommandOf, supervisorUnit, supervisorUnitName } from "../domain/Supervision.ts"
import type { HealthCheck } from "../domain/Workspace.ts"
import { superviseDetail, type SuperviseReport, superviseWith } from "../programs/Supervise.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { Home } from "../services/Home.ts"
import { StateStore } from "../services/StateStore.ts"
import { optionalDuration, optionalInt, orUndefined } from "./Flags.ts"
import { Invocation } from "./Invocation.ts"
import { withRuntime, withStore } from "./Layers.ts"
import { emit } from "./Output.ts"
import { secretsForStart } from "./volume.ts"

export const serviceCommandOption = Options.text("service-command").pipe(
  Options.withPseudoName("CMD"),
  Options.withDescription(
    "shell command the guest keeps running, restarted with back-off (1 s doubling to 30 s)"
  ),
  Options.optional
)

export const shellOption = Options.text("shell").pipe(
  Options.withPseudoName("PATH"),
  Options.withDescription("the guest shell `connect` runs (default /bin/sh)"),
  Options.optional
)

/** The service, shell and health check of a new workspace: the flags over the spec. */
export const supervisionOf = (
  spec: Spec,
  flags: { readonly serviceCommand: Option.Option<string>; readonly shell: Option.Option<string> }
): Effect.Effect<
  { service?: string | undefined; shell?: string | undefined; health?: HealthCheck | undefined },
  InvalidInput
> => {
  const health = spec.health === undefined ? undefined : healthCheckOf(spec.health)
  if (health !== undefined && Either.isLeft(health)) {
    return Effect.fail(
      new InvalidInput({
        message: `spec: ${health.left}`,
        remediation: "see docs/agents.md for the health fields"
      })
    )
  }
  return Effect.succeed({
    service: orUndefined(flags.serviceCommand)
      ?? (spec.service === undefined ? undefined : serviceCommandOf(spec.service)),
    shell: orUndefined(flags.shell) ?? spec.shell,
    health: health === undefined ? undefined : health.right
  })
}

/** `run` is one-shot: a service or a health check in its spec would be ignored, so it is refused. */
export const refuseSupervisionInRun = (spec: Spec) =>
  spec.service !== undefined || spec.health !== undefined
    ? Effect.fail(
      new InvalidInput({
        message: "the spec's service and health check keep a persistent workspace up; run does not take them",
        remediation: "microagent create --file SPEC NAME, then microagent start NAME (or supervise NAME)"
      })
    )
    : Effect.void

/** Where systemd looks for the user's units: $XDG_CONFIG_HOME/systemd/user, else ~/.config/systemd/user. */
export const userUnitDir = () => {
  const config = process.env.XDG_CONFIG_HOME
  return NodePath.join(
    config !== undefined && NodePath.isAbsolute(config) ? config : NodePath.join(NodeOs.homedir(), ".config"),
    "systemd",
    "user"
  )
}

/** How to run this very CLI again: node and the absolute path of its script. */
const selfCommand = (): ReadonlyArray<string> => {
  const script = process.argv[1]
  return script === undefined ? [process.execPath] : [process.execPath, NodeFs.realpathSync(script)]
}

/** Runs `systemctl --user ARGS...`; undefined when it worked, else what it said. */
const systemctl = (args: ReadonlyArray<string>): string | undefined => {
  const result = spawnSync("systemctl", ["--user", ...args], { encoding: "utf8", timeout: 20_000 })
  if (result.error !== undefined) return `systemctl: ${result.error.message}`
  if (result.status !== 0) {
    return (result.stderr.trim() || result.stdout.trim() || `systemctl exited ${result.status}`).split(
      "\n"
    )[0]
  }
  return undefined
}

export interface UnitReport {
  readonly workspace: string
  readonly unit: string
  readonly path: string
  readonly installed: boolean
  readonly enabled: boolean
  /** What to run by hand when registration did not work. */
  readonly command?: string
  readonly error?: string
}

const install = (workspace: string, stateDir: string): UnitReport => {
  const unit = supervisorUnitName(workspace)
  const dir = userUnitDir()
  const path = NodePath.join(dir, unit)
  NodeFs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  NodeFs.writeFileSync(path, supervisorUnit({ workspace, command: selfCommand(), stateDir }), { mode: 0o600 })
  const error = systemctl(["daemon-reload"]) ?? systemctl(["enable", "--now", unit])
  return {
    workspace,
    unit,
    path,
    installed: true,
    enabled: error === undefined,
    ...(error === undefined
      ? {}
      : { command: `systemctl --user daemon-reload && systemctl --user enable --now ${unit}`, error })
  }
}

const uninstall = (workspace: string): UnitReport => {
  const unit = supervisorUnitName(workspace)
  const path = NodePath.join(userUnitDir(), unit)
  const error = NodeFs.existsSync(path) ? systemctl(["disable", "--now", unit]) : undefined
  NodeFs.rmSync(path, { force: true })
  if (error === undefined) systemctl(["daemon-reload"])
  return {
    workspace,
    unit,
    path,
    installed: false,
    enabled: false,
    ...(error === undefined ? {} : { command: `systemctl --user disable --now ${unit}`, error })
  }
}

const unitLines = (r: UnitReport) =>
  [
    `${r.installed ? "wrote" : "removed"} ${r.path}`,
    r.installed
      ? (r.enabled ? `enabled ${r.unit}` : `not enabled (${r.error}); run: ${r.command}`)
      : (r.command === undefined ? `disabled ${r.unit}` : `could not disable (${r.error}); run: ${r.command}`)
  ].join("\n")

const reportLines = (r: SuperviseReport) =>
  `supervision of ${r.workspace} ended after ${r.restarts} restart(s): ${r.reason}`

export const superviseCommand = Command.make("supervise", {
  interval: optionalDuration("interval", "how often to look at the workspace (default 5s)"),
  maxRestarts: optionalInt("max-restarts", "end supervision after this many restarts (default 0: no limit)"),
  install: Options.boolean("install").pipe(
    Options.withDescription(
      "write and enable a systemd user unit that supervises the workspace from login on"
    )
  ),
  uninstall: Options.boolean("uninstall").pipe(Options.withDescription("disable and remove that unit")),
  name: Args.text({ name: "name" }).pipe(Args.withDescription("workspace name"))
}, (options) =>
  Effect.gen(function*() {
    const invocation = yield* Invocation
    if (options.install && options.uninstall) {
      return yield* new InvalidInput({
        message: "--install and --uninstall contradict each other",
        remediation: "pick one"
      })
    }
    const maxRestarts = orUndefined(options.maxRestarts)
    if (maxRestarts !== undefined && maxRestarts < 0) {
      return yield* new InvalidInput({
        message: `invalid --max-restarts ${maxRestarts}`,
        remediation: "give 0 (no limit) or more"
      })
    }
    // The workspace must exist, whatever is asked.
    yield* withStore(Effect.flatMap(StateStore, (store) => store.get(options.name)))
    if (options.install || options.uninstall) {
      const stateDir = Home.resolveRoot(invocation.stateDir)
      const report = yield* Effect.try({
        try: () => options.install ? install(options.name, stateDir) : uninstall(options.name),
        catch: (cause) =>
          new InvalidInput({
            message: `cannot write the unit: ${cause instanceof Error ? cause.message : String(cause)}`,
            remediation: "check that $XDG_CONFIG_HOME (or ~/.config) is writable"
          })
      })
      return yield* emit(report, unitLines)
    }
    const report = yield* superviseWith(options.name, {
      inspect: (name) =>
        withRuntime(Effect.flatMap(MicroagentClient, (client) => client.inspect({ name }))).pipe(
          Effect.map((r) => r.workspace)
        ),
      start: (name) =>
        withRuntime(Effect.flatMap(MicroagentClient, (client) =>
          Effect.flatMap(secretsForStart(client, name, []), (secrets) =>
            client.start({ name, ...secrets }))))
    }, {
      intervalSeconds: orUndefined(options.interval),
      maxRestarts,
      onStart: (event) => {
        const detail = superviseDetail(event)
        return withStore(Effect.flatMap(StateStore, (store) =>
          store.appendEvent(event.workspace, { type: "supervise", detail }))).pipe(
            Effect.ignore,
            Effect.zipRight(Effect.sync(() =>
              process.stderr.write(`supervise ${event.workspace}: ${detail}\n`)
            ))
          )
      }
    })
    yield* emit(report, reportLines)
  })).pipe(
    Command.withDescription(
      "keep a workspace up in the foreground: start it, restart it per its restart policy (ending the loop leaves the VM running)"
    )
  )
