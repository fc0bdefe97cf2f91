/**
 * The Lifecycle and Observe groups: `inspect`, `wait`, `halt`, `kill`, `delete`, `list`, `ps`, `logs`,
 * `events`, and `profiles`.
 */
import { Args, Command, Options } from "@effect/cli"
import { DateTime, Duration, Effect, Layer, Option, Stream } from "effect"
import type { EgressRecord } from "../domain/Egress.ts"
import { InvalidInput } from "../domain/Errors.ts"
import type { WorkspaceEvent } from "../domain/Event.ts"
import { isLive } from "../domain/State.ts"
import { type EntrypointResult, profiles, type Workspace } from "../domain/Workspace.ts"
import * as NetworkFabricLive from "../layers/network/NetworkFabricLive.ts"
import * as VolumesLive from "../layers/volume/VolumesLive.ts"
import { egressLog } from "../programs/EgressLog.ts"
import {
  abandonedForks,
  abandonedRuns,
  expiredLive,
  gcReconcile,
  type GcReport,
  gcSweep
} from "../programs/Gc.ts"
import { entrypointDone, events, inspect, logs, wait } from "../programs/Observe.ts"
import type { QuarantineResult } from "../programs/Quarantine.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { StateStore } from "../services/StateStore.ts"
import { optionalDuration } from "./Flags.ts"
import { Invocation } from "./Invocation.ts"
import { clusterOr, withBackend, withRuntime, withStore, withWorkspaceBackend } from "./Layers.ts"
import { emit, emitList, jsonMode, quietOption, table, writeStdout } from "./Output.ts"

const nameArg = Args.text({ name: "name" }).pipe(Args.withDescription("workspace name"))

const stateLine = (ws: Workspace) => `${ws.name}: ${ws.state}`

const expired = (ws: Workspace) => ws.expiresAt !== undefined && ws.expiresAt.epochMillis < Date.now()

const inspectCommand = Command.make(
  "inspect",
  { name: nameArg },
  ({ name }) =>
    clusterOr(
      Effect.flatMap(MicroagentClient, (client) => client.inspect({ name })),
      withWorkspaceBackend(name, inspect(name))
    ).pipe(
      Effect.flatMap((report) =>
        emit(report, ({ workspace: ws, lastEvent }) =>
          [
            `name:      ${ws.name}`,
            `state:     ${ws.state}`,
            ...(ws.host === undefined ? [] : [`host:      ${ws.host}`]),
            `backend:   ${ws.backend}`,
            `image:     ${ws.image.ref}${ws.image.digest ? ` (${ws.image.digest})` : ""}`,
            `resources: ${ws.resources.memoryMiB} MiB, ${ws.resources.cpus} vCPU${
              ws.profile ? ` (profile ${ws.profile})` : ""
            }`,
            `network:   ${ws.network}`,
            `hostname:  ${ws.hostname}`,
            ...ws.mounts.map((m) =>
              `mount:     ${m.source}:${m.target}${m.readOnly ? ":ro" : ""} (${m.kind})`
            ),
            ...ws.secrets.map((r) =>
              `secret:    ${r.name} from ${r.source}${r.use === "broker" ? " (held by the broker)" : ""}`
            ),
            ...ws.brokers.map((b) =>
              `broker:    127.0.0.1:${b.guestPort} -> ${b.upstream}${
                b.assurance === "semantic"
                  ? ` (semantic: ${b.grant?.operations.map((o) => o.name).join(", ") ?? ""})`
                  : ""
              }`
            ),
            ...(ws.service === undefined ? [] : [
              `service:   ${ws.service}${
                ws.serviceStatus === undefined ? "" : ` (restarts: ${ws.serviceStatus.restarts})`
              }`
            ]),
            ...(ws.health === undefined ? [] : [
              `health:    ${
                ws.health.exec !== undefined
                  ? ws.health.exec.join(" ")
                  : `GET ${ws.health.httpGet?.path} on guest port ${ws.health.httpGet?.port}`
              } every ${ws.health.intervalSeconds}s`
            ]),
            ...(ws.failure === undefined ? [] : [`failure:   ${ws.failure}`]),
            `restart:   ${ws.restart}`,
            `created:   ${ws.createdAt.toJSON()}`,
            ...(ws.expiresAt === undefined
              ? []
              : [`expires:   ${DateTime.formatIso(ws.expiresAt)}${expired(ws) ? " (expired)" : ""}`]),
            ...(lastEvent
              ? [`last:      ${lastEvent.at} ${lastEvent.type} ${lastEvent.detail}`.trimEnd()]
              : [])
          ].join("\n"))
      )
    )
).pipe(Command.withDescription("show a workspace's record and state (alias: status)"))

/**
 * Blocks until the workspace settles or its entrypoint has finished, prints `{workspace, state, ok}`
 * (with the entrypoint's outcome) and sets the exit code: 0 when it ended well, 1 otherwise.
 */
export const waitAndReport = (
  name: string,
  options: { readonly timeout?: number | undefined; readonly interval?: number | undefined }
) =>
  Effect.gen(function*() {
    const recorded = yield* withStore(Effect.flatMap(StateStore, (store) => store.get(name)))
    // The runtime is what copies a finished entrypoint's outcome into the record: it must be up.
    if (recorded.result?.status === "running") yield* withRuntime(Effect.void)
    const ws = yield* withWorkspaceBackend(
      name,
      wait(name, {
        ...(options.timeout === undefined ? {} : { timeout: Duration.seconds(options.timeout) }),
        ...(options.interval === undefined ? {} : { interval: Duration.seconds(options.interval) })
      })
    )
    const entrypoint = entrypointDone(ws) ? ws.result : undefined
    const ok = ws.state !== "failed" && ws.state !== "quarantined"
      && (entrypoint === undefined || (entrypoint.status === "exited" && entrypoint.exitCode === 0))
    if (!ok) process.exitCode = 1
    return yield* emit(
      {
        workspace: ws.name,
        state: ws.state,
        ok,
        ...(entrypoint === undefined ? {} : { entrypoint: entrypoint.status, exitCode: entrypoint.exitCode })
      },
      () =>
        entrypoint === undefined
          ? stateLine(ws)
          : `${stateLine(ws)} (entrypoint ${entrypoint.status}${
            entrypoint.exitCode === undefined ? "" : ` ${entrypoint.exitCode}`
          })`
    )
  })

const waitCommand = Command.make(
  "wait",
  {
    timeout: optionalDuration("timeout", "give up after this long (exit 75)"),
    interval: optionalDuration("interval", "how often to look (default 250ms)"),
    name: nameArg
  },
  ({ interval, name, timeout }) =>
    waitAndReport(name, {
      timeout: Option.getOrUndefined(timeout),
      interval: Option.getOrUndefined(interval)
    })
).pipe(
  Command.withDescription(
    "block until a workspace is stopped, halted, failed or prepared, or its entrypoint has finished"
  )
)

const resultLines = (r: EntrypointResult) =>
  [
    `entrypoint: ${r.command}`,
    `status:     ${r.status}${r.exitCode === undefined ? "" : ` (exit ${r.exitCode})`}`,
    ...(r.startError === undefined ? [] : [`start error: ${r.startError}`]),
    ...(r.error === undefined ? [] : [`error:      ${r.error}`]),
    ...(r.startedAt === undefined ? [] : [`started:    ${r.startedAt.toJSON()}`]),
    ...(r.finishedAt === undefined ? [] : [`finished:   ${r.finishedAt.toJSON()}`]),
    ...(r.stdout === "" ? [] : [`stdout${r.stdoutTruncated ? " (truncated)" : ""}:`, r.stdout.trimEnd()]),
    ...(r.stderr === "" ? [] : [`stderr${r.stderrTruncated ? " (truncated)" : ""}:`, r.stderr.trimEnd()])
  ].join("\n")

const resultCommand = Command.make(
  "result",
  {
    wait: Options.boolean("wait").pipe(Options.withDescription("block until the entrypoint has finished")),
    timeout: optionalDuration("timeout", "with --wait: give up after this long (exit 75)"),
    name: nameArg
  },
  ({ name, timeout, wait: block }) =>
    withRuntime(Effect.flatMap(MicroagentClient, (client) =>
      client.result({
        name,
        ...(block ? { wait: true } : {}),
        ...(timeout._tag === "Some" ? { timeoutSeconds: timeout.value } : {})
      }))).pipe(
        Effect.flatMap((r) => {
          // The entrypoint's own failure is this command's failure; a running one is not (yet).
          if (r.status !== "running" && !(r.status === "exited" && r.exitCode === 0)) process.exitCode = 1
          return emit(r, resultLines)
        })
      )
).pipe(
  Command.withDescription(
    "show the result of the entrypoint of a workspace's latest start (exit code, output, times)"
  )
)

const haltCommand = Command.make(
  "halt",
  {
    timeout: optionalDuration(
      "timeout",
      "how long the guest gets to shut down before it is killed (default 15s)"
    ),
    reason: Options.text("reason").pipe(Options.withDescription("recorded in the events"), Options.optional),
    name: nameArg
  },
  ({ name, reason, timeout }) =>
    withRuntime(Effect.flatMap(MicroagentClient, (client) =>
      client.halt({
        name,
        ...(timeout._tag === "Some" ? { timeoutSeconds: timeout.value } : {}),
        ...(reason._tag === "Some" ? { reason: reason.value } : {})
      }))).pipe(
        Effect.flatMap((ws) => emit(ws, stateLine))
      )
).pipe(Command.withDescription("shut a workspace down gracefully, forced after a timeout (alias: stop)"))

const reasonOption = Options.text("reason").pipe(
  Options.withDescription("recorded in the events"),
  Options.optional
)

const killCommand = Command.make(
  "kill",
  { reason: reasonOption, name: nameArg },
  ({ name, reason }) =>
    withRuntime(
      Effect.flatMap(MicroagentClient, (client) =>
        client.kill({ name, ...(reason._tag === "Some" ? { reason: reason.value } : {}) }))
    ).pipe(
      Effect.flatMap((ws) =>
        emit(ws, stateLine)
      )
    )
).pipe(
  Command.withDescription("stop a workspace's VM at once")
)

const pauseCommand = Command.make(
  "pause",
  { reason: reasonOption, name: nameArg },
  ({ name, reason }) =>
    withRuntime(
      Effect.flatMap(MicroagentClient, (client) =>
        client.pause({ name, ...(reason._tag === "Some" ? { reason: reason.value } : {}) }))
    ).pipe(
      Effect.flatMap((ws) =>
        emit(ws, stateLine)
      )
    )
).pipe(
  Command.withDescription("freeze a running workspace's vCPUs; memory, disk and network are kept")
)

const quarantineLine = (r: QuarantineResult) =>
  `${r.workspace}: quarantined (${
    r.captured ? "memory and disk captured" : "logs only"
  }); custody in ${r.custody}`

const quarantineCommand = Command.make(
  "quarantine",
  {
    reason: reasonOption,
    noCapture: Options.boolean("no-capture").pipe(
      Options.withDescription(
        "keep only the logs: no memory or disk capture (when capture fails or is unwanted)"
      )
    ),
    name: nameArg
  },
  ({ name, noCapture, reason }) =>
    withRuntime(
      Effect.flatMap(MicroagentClient, (client) =>
        client.quarantine({
          name,
          ...(reason._tag === "Some" ? { reason: reason.value } : {}),
          ...(noCapture ? { capture: false } : {})
        }))
    ).pipe(Effect.flatMap((r) => emit(r, quarantineLine)))
).pipe(
  Command.withDescription(
    "cut a workspace's network, freeze it, capture the evidence and stop it into custody (start refused after)"
  )
)

const resumeCommand = Command.make(
  "resume",
  { reason: reasonOption, name: nameArg },
  ({ name, reason }) =>
    withRuntime(
      Effect.flatMap(MicroagentClient, (client) =>
        client.resume({ name, ...(reason._tag === "Some" ? { reason: reason.value } : {}) }))
    ).pipe(
      Effect.flatMap((ws) =>
        emit(ws, stateLine)
      )
    )
).pipe(
  Command.withDescription("let a paused workspace run on")
)

const deleteCommand = Command.make(
  "delete",
  {
    yes: Options.boolean("yes").pipe(
      Options.withAlias("y"),
      Options.withDescription("halt a running workspace first")
    ),
    force: Options.boolean("force").pipe(
      Options.withAlias("f"),
      Options.withDescription("kill a running workspace first")
    ),
    names: Args.text({ name: "name" }).pipe(Args.atLeast(1))
  },
  ({ force, names, yes }) =>
    Effect.forEach(names, (name) =>
      // Idempotent: deleting what is not there answers `deleted: false`.
      withRuntime(Effect.flatMap(MicroagentClient, (client) => client.delete({ name, force, yes })))).pipe(
        Effect.flatMap((results) =>
          emit(
            results.length === 1 ? results[0]! : { results },
            () =>
              results.map((r) => `${r.workspace}: ${r.deleted ? "deleted" : "not found (nothing to do)"}`)
                .join("\n")
          )
        )
      )
).pipe(Command.withDescription("delete workspaces and their disks; idempotent (alias: rm)"))

const listTable = (workspaces: ReadonlyArray<Workspace>) =>
  workspaces.some((ws) => ws.host !== undefined)
    ? table(
      ["NAME", "STATE", "HOST", "BACKEND", "PROFILE", "NETWORK", "IMAGE"],
      workspaces.map((ws) => [
        ws.name,
        ws.state,
        ws.host ?? "-",
        ws.backend,
        ws.profile ?? "-",
        ws.network,
        ws.image.ref
      ])
    )
    : table(
      ["NAME", "STATE", "BACKEND", "PROFILE", "NETWORK", "IMAGE"],
      workspaces.map((ws) => [ws.name, ws.state, ws.backend, ws.profile ?? "-", ws.network, ws.image.ref])
    )

const listRows = (workspaces: ReadonlyArray<Workspace>) => ({
  workspaces: workspaces.map((ws) => ({
    name: ws.name,
    state: ws.state,
    ...(ws.host === undefined ? {} : { host: ws.host }),
    backend: ws.backend,
    profile: ws.profile ?? null,
    restart: ws.restart,
    network: ws.network,
    image: ws.image.ref,
    observed_at: ws.updatedAt
  }))
})

/** Lists every backend's workspaces; each is reconciled against its own backend. */
const listAll = (runningOnly: boolean, quiet: boolean) =>
  clusterOr(
    Effect.flatMap(MicroagentClient, (client) => client.list({ runningOnly })),
    withStore(Effect.flatMap(StateStore, (store) => store.list)).pipe(
      Effect.flatMap((all) =>
        Effect.forEach(all, (ws) =>
          withWorkspaceBackend(ws.name, inspect(ws.name)).pipe(
            Effect.map((report) => [report.workspace]),
            Effect.catchTag("NotFound", () => Effect.succeed([]))
          ))
      ),
      Effect.map((found) => found.flat())
    )
  ).pipe(
    Effect.map((found) => found.filter((ws) => !runningOnly || isLive(ws.state))),
    Effect.flatMap((workspaces) =>
      emitList(quiet, workspaces.map((ws) => ws.name), listRows(workspaces), () => listTable(workspaces))
    )
  )

const listCommand = Command.make("list", { quiet: quietOption }, ({ quiet }) => listAll(false, quiet)).pipe(
  Command.withDescription("list workspaces (alias: ls)")
)
const psCommand = Command.make("ps", { quiet: quietOption }, ({ quiet }) => listAll(true, quiet)).pipe(
  Command.withDescription("list running workspaces")
)

const follow = Options.boolean("follow").pipe(
  Options.withAlias("f"),
  Options.withDescription("keep following")
)

const logsCommand = Command.make(
  "logs",
  { follow, name: nameArg },
  ({ follow, name }) =>
    Effect.gen(function*() {
      const invocation = yield* Invocation
      // A followed log is a text stream: piping it (`logs -f | grep …`) keeps it text; only an explicit
      // `--json`/`--output json` asks for the one-document form, which cannot follow.
      if (follow && invocation.json === true) {
        return yield* new InvalidInput({
          message: "--follow cannot be combined with JSON output",
          remediation: "drop --json (or --output json), or drop --follow"
        })
      }
      const json = follow ? false : yield* jsonMode
      if (invocation.cluster !== undefined) {
        const remote = Stream.unwrap(Effect.map(MicroagentClient, (client) => client.logs({ name, follow })))
        if (json) {
          const chunks = yield* withRuntime(Stream.runCollect(remote))
          const text = Buffer.concat([...chunks].map((chunk) => Buffer.from(chunk))).toString("utf8")
          return yield* emit({ logs: text }, () => "")
        }
        return yield* withRuntime(Stream.runForEach(remote, (chunk) => writeStdout(chunk)))
      }
      const stream = logs(name, { follow })
      if (json) {
        const chunks = yield* withWorkspaceBackend(name, Stream.runCollect(stream))
        const text = Buffer.concat([...chunks].map((chunk) => Buffer.from(chunk))).toString("utf8")
        return yield* emit({ logs: text }, () => "")
      }
      yield* withWorkspaceBackend(name, Stream.runForEach(stream, (chunk) => writeStdout(chunk)))
    })
).pipe(Command.withDescription("show a workspace's serial console log (alias: log)"))

/**
 * A log's items (JSON without --follow) collected for one document, or else printed a line each as
 * they come (undefined then).
 */
const collectedOrPrinted = <A, E, R>(
  stream: Stream.Stream<A, E, R>,
  collect: boolean,
  line: (item: A) => string
): Effect.Effect<Array<A> | undefined, E, R> =>
  collect
    ? Effect.map(Stream.runCollect(stream), (all) => [...all])
    : Effect.as(Stream.runForEach(stream, (item) => writeStdout(`${line(item)}\n`)), undefined)

const eventLine = (event: WorkspaceEvent) =>
  `${event.at}  ${event.type.padEnd(12)} ${event.state ?? ""}${event.detail ? `  ${event.detail}` : ""}`

const eventsCommand = Command.make(
  "events",
  { follow, name: nameArg },
  ({ follow, name }) =>
    Effect.gen(function*() {
      const json = yield* jsonMode
      const shown = <E, R>(stream: Stream.Stream<WorkspaceEvent, E, R>) =>
        collectedOrPrinted(
          stream,
          json && !follow,
          (event) => json ? JSON.stringify(event) : eventLine(event)
        )
      const collected = yield* clusterOr(
        shown(Stream.unwrap(Effect.map(MicroagentClient, (client) => client.events({ name, follow })))),
        withWorkspaceBackend(name, shown(events(name, { follow })))
      )
      if (collected !== undefined) return yield* emit({ events: collected }, () => "")
    })
).pipe(Command.withDescription("show a workspace's lifecycle events, oldest first"))

/** `ts  event  dst/name  signal`: one line per audit record. */
const egressLine = (record: EgressRecord) => {
  const fields = record as Record<string, unknown>
  const what = [fields.dst, fields.name, fields.host].filter((v) => typeof v === "string").join(" ")
  const signal = typeof fields.signal === "string" ? `  signal=${fields.signal}` : ""
  return `${record.ts}  ${record.event.padEnd(24)} ${what}${signal}`
}

const egressCommand = Command.make(
  "egress",
  { follow, name: nameArg },
  ({ follow, name }) =>
    Effect.gen(function*() {
      const json = yield* jsonMode
      const shown = <E, R>(stream: Stream.Stream<EgressRecord, E, R>) =>
        collectedOrPrinted(stream, json && !follow, (record) =>
          json ? JSON.stringify(record) : egressLine(record))
      const collected = yield* clusterOr(
        shown(Stream.unwrap(Effect.map(MicroagentClient, (client) =>
          client.egress({ name, follow })))),
        withWorkspaceBackend(name, shown(egressLog(name, { follow })))
      )
      if (collected !== undefined) {
        return yield* emit({ workspace: name, records: collected }, () =>
          "")
      }
    })
).pipe(
  Command.withDescription("show a workspace's egress audit log (allowed and denied flows, DNS), oldest first")
)

const profilesCommand = Command.make("profiles", {}, () =>
  emit(
    { profiles },
    () =>
      table(
        ["PROFILE", "MEMORY_MIB", "CPUS", "DISK_MIB"],
        Object.entries(profiles).map(([name, p]) => [name, `${p.memoryMiB}`, `${p.cpus}`, `${p.sizeMiB}`])
      )
  )).pipe(Command.withDescription("show the resource profiles"))

export const lifecycleGroup = [
  inspectCommand,
  waitCommand,
  resultCommand,
  haltCommand,
  killCommand,
  pauseCommand,
  resumeCommand,
  quarantineCommand,
  deleteCommand,
  listCommand,
  psCommand,
  logsCommand,
  eventsCommand,
  egressCommand,
  profilesCommand
] as const

/**
 * One of gc's clean-ups, done by the runtime, as a report line: what it did, `gone already` when
 * something else (the runtime's own reconcile pass, say) removed it first, or why it failed.
 */
const cleanedUp = <A, E extends { readonly _tag: string; readonly message: string }, R>(
  what: string,
  call: Effect.Effect<A, E, R | MicroagentClient>,
  done: (result: A) => string
) =>
  withRuntime(call).pipe(
    Effect.map((result) => ({ workspace: what, action: done(result) })),
    Effect.catchAll((error) =>
      Effect.succeed({
        workspace: what,
        action: error._tag === "NotFound" ? "gone already" : `failed: ${error.message}`
      })
    )
  )

/** A workspace deleted (`--force`) by the runtime, for gc's report. */
const deletedByRuntime = (name: string) =>
  cleanedUp(
    name,
    Effect.flatMap(MicroagentClient, (client) => client.delete({ name, force: true })),
    (result) => (result.deleted ? "deleted" : "gone already")
  )

const gcCommand = Command.make("gc", {}, () =>
  Effect.gen(function*() {
    const all = yield* withStore(Effect.flatMap(StateStore, (store) => store.list))
    // Each workspace is reconciled against its own backend; the sweep needs only the store.
    const backends = [...new Set(all.map((ws) => ws.backend))]
    const reconciled = yield* Effect.forEach(backends, (backend) => withBackend(backend, gcReconcile()))
    // Live workspaces past their lease are halted (killed when the halt fails); their disks stay.
    const due = yield* withStore(expiredLive())
    const expired = yield* Effect.forEach(due, (ws) =>
      withRuntime(Effect.flatMap(MicroagentClient, (client) =>
        client.halt({ name: ws.name, reason: "lease expired (gc)" }).pipe(
          Effect.as("halted"),
          Effect.orElse(() =>
            Effect.as(client.kill({ name: ws.name }), "killed")
          )
        ))).pipe(
          Effect.map((action) => ({ workspace: ws.name, action })),
          Effect.catchAll((error) =>
            Effect.succeed({ workspace: ws.name, action: `failed: ${error.message}` })
          )
        ))
    // One-shot workspaces whose run died with its process: nothing else would ever delete them.
    const orphanedRuns = yield* withStore(abandonedRuns())
    const abandoned = yield* Effect.forEach(orphanedRuns, (ws) =>
      deletedByRuntime(ws.name))
    // Forks whose process died half way: undone whole, as the fork would have done.
    const forks = yield* withStore(abandonedForks())
    const forkChildren = yield* Effect.forEach(forks.children, (ws) =>
      deletedByRuntime(ws.name))
    const forkCaptures = yield* Effect.forEach(forks.captures, (capture) =>
      cleanedUp(
        `${capture.workspace}:${capture.tag}`,
        Effect.flatMap(MicroagentClient, (client) =>
          client.snapshotDelete({ name: capture.workspace, tag: capture.tag })),
        () =>
          "deleted"
      ))
    const unfinishedForks = [...forkChildren, ...forkCaptures]
    // The host's named-network plumbing is swept whatever the backend: it is the live fabric's.
    const swept = yield* withStore(
      Effect.provide(gcSweep(), Layer.merge(VolumesLive.layer, NetworkFabricLive.layer))
    )
    const report: GcReport & {
      readonly expired: typeof expired
      readonly abandoned: typeof abandoned
      readonly unfinishedForks: typeof unfinishedForks
    } = {
      reconciled: reconciled.flat(),
      expired,
      abandoned,
      unfinishedForks,
      ...swept
    }
    yield* emit(report, (r) =>
      [
        ...r.reconciled.map((x) => `reconciled ${x.workspace}: ${x.from} -> ${x.to}`),
        ...r.expired.map((x) => `lease expired ${x.workspace}: ${x.action}`),
        ...r.abandoned.map((x) => `one-shot ${x.workspace}, its run's process gone: ${x.action}`),
        ...r.unfinishedForks.map((x) => `${x.workspace}, of a fork whose process is gone: ${x.action}`),
        ...r.killed.map((pid) => `killed orphaned VMM ${pid}`),
        ...r.removed.map((path) => `removed ${path}`)
      ].join("\n") || "nothing to do")
  })).pipe(
    Command.withDescription(
      "reap what a crash left behind and stop workspaces past their lease (--ttl); never deletes a disk"
    )
  )

export const maintenanceGroup = [gcCommand] as const
