/**
 * `microagent state check|backup|restore`: the health, backups and recovery of `state.db`. They run in
 * this process on the files, never through the runtime (which cannot start on a damaged database);
 * `restore` stops the runtime that serves the directory first (see src/runtime/StateRestore.ts).
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect, Option } from "effect"
import * as HostChecks from "../layers/host/HostChecks.ts"
import { backupState, checkState, type StateCheckResult } from "../programs/State.ts"
import { type RestoreReport, restoreState } from "../runtime/StateRestore.ts"
import { Home } from "../services/Home.ts"
import { Invocation } from "./Invocation.ts"
import { emit, table } from "./Output.ts"

/**
 * The state directory's layout, creating nothing (`check` only reads, and `backup` makes its own
 * directory), and the state database as a file.
 */
const withHome = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.flatMap(
    Invocation,
    (invocation) =>
      effect.pipe(
        Effect.provideService(Home, Home.layout(Home.resolveRoot(invocation.stateDir))),
        Effect.provide(HostChecks.layerStateDatabase)
      )
  )

const describeCheck = (r: StateCheckResult) => {
  const lines = [
    `database:  ${r.database}${r.exists ? ` (${r.sizeBytes ?? 0} bytes)` : " (none)"}`,
    `schema:    ${r.schemaVersion ?? "-"} (this release: ${r.currentSchemaVersion})`,
    `integrity: ${r.ok ? "ok" : "FAILED"}`,
    ...r.problems.slice(0, 20).map((p) => `  ${p}`),
    `backups:   ${r.backups.length === 0 ? "none" : ""}`
  ]
  if (r.backups.length > 0) {
    lines.push(table(
      ["  CREATED", "REASON", "SIZE", "FILE"],
      r.backups.map((b) => [`  ${b.createdAt}`, b.reason, `${b.sizeBytes}`, b.path])
    ))
  }
  if (r.remediation !== undefined) lines.push("", `fix: ${r.remediation}`)
  return lines.join("\n")
}

const check = Command.make("check", {}, () =>
  withHome(checkState()).pipe(
    Effect.tap((r) => Effect.sync(() => (process.exitCode = r.ok ? 0 : 1))),
    Effect.flatMap((r) => emit(r, describeCheck))
  )).pipe(
    Command.withDescription("check state.db (full integrity_check) and list its backups; exit 1 when damaged")
  )

const backup = Command.make("backup", {
  to: Options.file("to").pipe(
    Options.withDescription("write the backup to this file (must not exist) instead of <state>/backups/"),
    Options.optional
  )
}, ({ to }) =>
  withHome(backupState({ to: Option.getOrUndefined(to) })).pipe(
    Effect.flatMap((b) => emit(b, () => `backed up to ${b.path} (${b.sizeBytes} bytes)`))
  )).pipe(
    Command.withDescription("take a consistent backup of state.db now (SQLite's online backup)")
  )

const describeRestore = (r: RestoreReport) => {
  const list = (label: string, items: ReadonlyArray<string>) =>
    items.length === 0 ? [] : [`${label}: ${items.join(", ")}`]
  return [
    r.restoredFrom === undefined
      ? `no usable backup: a new ${r.database} was filled from the disk`
      : `restored ${r.database} from ${r.restoredFrom}`,
    ...list("set aside", r.setAside),
    ...list("skipped backups (damaged)", r.skippedBackups),
    ...(r.stoppedRuntime === undefined
      ? []
      : [`stopped the runtime (pid ${r.stoppedRuntime}); its VMs kept running`]),
    ...list("workspaces re-registered from their manifests", r.disk.reregistered),
    ...list("workspaces updated from newer manifests", r.disk.refreshed),
    ...r.disk.failed.map((f) => `workspace ${f.workspace} marked failed: ${f.reason}`),
    ...r.disk.unrecognized.map((u) => `left alone: ${u.path} (${u.reason})`),
    ...list("volumes re-registered", r.disk.volumes),
    ...list("volume records without a file", r.disk.volumesMissing),
    ...list("images re-registered", r.disk.images),
    ...list("networks to re-create (`microagent network create NAME`)", r.disk.networksMissing),
    ...r.vms.map((v) => `workspace ${v.workspace}: ${v.from} -> ${v.to}`)
  ].join("\n")
}

const restore = Command.make(
  "restore",
  {
    backup: Args.text({ name: "backup" }).pipe(
      Args.withDescription(
        "a backup file, or its name in <state>/backups/ (default: the newest that checks clean)"
      ),
      Args.optional
    )
  },
  ({ backup }) =>
    Effect.flatMap(
      Invocation,
      (invocation) =>
        restoreState(Home.resolveRoot(invocation.stateDir), { backup: Option.getOrUndefined(backup) }).pipe(
          Effect.flatMap((r) => emit(r, describeRestore))
        )
    )
).pipe(
  Command.withDescription(
    "put a backup of state.db back (stopping the runtime first), then re-register what is on disk"
  )
)

export const stateCommand = Command.make("state").pipe(
  Command.withDescription("check, back up and restore the state database (state.db)"),
  Command.withSubcommands([check, backup, restore])
)
