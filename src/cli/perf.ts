/**
 * `perf boot` and `perf footprint`: measurements through the runtime, which boots and holds the VMs.
 */
import { Args, Command, Options } from "@effect/cli"
import { Duration, Effect, Option } from "effect"
import { InvalidInput } from "../domain/Errors.ts"
import type { PerfBootResult, PerfFootprintResult } from "../domain/Perf.ts"
import { defaultBackend } from "../layers/backends/Backends.ts"
import { perfSteady } from "../programs/Perf.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { defined } from "../rpc/Rpcs.ts"
import { optionalDuration, orUndefined } from "./Flags.ts"
import { Invocation } from "./Invocation.ts"
import { withRuntime, withWorkspaceBackend } from "./Layers.ts"
import { emit, table } from "./Output.ts"

const edges = [
  ["createdMs", "created"],
  ["vmmStartedMs", "vmm"],
  ["kernelStartedMs", "kernel"],
  ["initStartedMs", "init"],
  ["agentReadyMs", "agent"],
  ["firstExecMs", "exec"]
] as const

const ms = (value: number | undefined) => (value === undefined ? "-" : String(Math.round(value)))

const bootText = (report: PerfBootResult) => {
  const header = ["run", "ok", ...edges.map(([, label]) => label)]
  const rows = report.runs.map((run, i) => [
    String(i + 1),
    run.ok ? "ok" : `failed: ${run.error ?? ""}`,
    ...edges.map(([edge]) => ms(run[edge]))
  ])
  const summary = report.summary
  for (const which of ["min", "median", "max"] as const) {
    rows.push([which, "", ...edges.map(([edge]) => ms(summary[edge]?.[which]))])
  }
  const phases = summary.phases
  return [
    `perf boot ${report.image} (${report.backend}), ${summary.count} run(s), ${summary.failures} failed; `
    + `command: ${report.command.join(" ")}`,
    "milliseconds since the run began: created (image + rootfs), vmm (process up), kernel (guest kernel",
    "started, from its uptime), init (the agent started as /init), agent (handshake), exec (first result)",
    table(header, rows),
    ...(phases === undefined ? [] : [
      `phases (median ms): firmware/loader ${ms(phases.firmwareMs.median)}, kernel to /init `
      + `${ms(phases.kernelMs.median)}, /init to agent ready ${ms(phases.initMs.median)}, first exec `
      + `${ms(phases.execMs.median)}`
    ]),
    ...(summary.warmPhases === undefined ? [] : [
      `warm phases (median ms): template and disk ${ms(summary.warmPhases.prepareMs.median)}, restore to `
      + `agent ready ${ms(summary.warmPhases.restoreMs.median)}, first exec ${
        ms(summary.warmPhases.execMs.median)
      }`
    ]),
    ...(report.runs.some((run) => run.templateBuilt === true)
      ? ["(a run that built its template is left out of the warm phases)"]
      : [])
  ].join("\n")
}

const boot = Command.make("boot", {
  runs: Options.integer("runs").pipe(
    Options.withAlias("iterations"),
    Options.withDescription("boots to measure (default 1)"),
    Options.optional
  ),
  exec: Options.text("exec").pipe(
    Options.withPseudoName("CMD"),
    Options.withDescription("the shell command each boot is timed to (default: true)"),
    Options.optional
  ),
  network: Options.choice("network", ["user", "isolated"]).pipe(
    Options.withDescription("the workspaces' network (default user)"),
    Options.optional
  ),
  warm: Options.boolean("warm").pipe(
    Options.withDescription("time warm starts (a template restored) instead of cold boots")
  ),
  image: Args.text({ name: "image" }).pipe(Args.withDescription("OCI image reference"), Args.optional)
}, (options) =>
  Effect.gen(function*() {
    const invocation = yield* Invocation
    const runs = orUndefined(options.runs)
    if (runs !== undefined && (runs < 1 || runs > 100)) {
      return yield* new InvalidInput({
        message: `--runs ${runs} is out of range`,
        remediation: "give 1 to 100"
      })
    }
    const report = yield* withRuntime(Effect.flatMap(MicroagentClient, (client) =>
      client.perfBoot(defined({
        image: orUndefined(options.image),
        runs,
        command: Option.isSome(options.exec) ? ["sh", "-c", options.exec.value] : undefined,
        network: orUndefined(options.network),
        warm: options.warm || undefined,
        backend: invocation.backend ?? defaultBackend()
      }))))
    yield* emit(report, bootText)
    if (report.summary.failures > 0) process.exitCode = 1
  })).pipe(Command.withDescription("time the phases of booting disposable workspaces to a first command"))

const mib = (kib: number | undefined) => (kib === undefined ? "-" : `${(kib / 1024).toFixed(1)} MiB`)
const bytes = (n: number) => `${(n / (1024 * 1024)).toFixed(1)} MiB`

const footprintText = (report: PerfFootprintResult) =>
  [
    `runtime pid ${report.runtime.pid}: rss ${mib(report.runtime.rssKiB)}, pss ${
      mib(report.runtime.pssKiB)
    }, `
    + `heap ${bytes(report.runtime.heapUsedBytes)}`,
    table(
      ["WORKSPACE", "VMM PID", "RSS", "PSS", "ROOTFS APPARENT", "ROOTFS ALLOCATED"],
      report.workspaces.map((ws) => [
        ws.workspace,
        ws.vmm === undefined ? "-" : String(ws.vmm.pid),
        mib(ws.vmm?.rssKiB),
        mib(ws.vmm?.pssKiB),
        bytes(ws.rootfs.apparentBytes),
        bytes(ws.rootfs.allocatedBytes)
      ])
    )
  ].join("\n")

const footprint = Command.make(
  "footprint",
  {
    name: Args.text({ name: "workspace" }).pipe(
      Args.withDescription("a running workspace (default: every running one)"),
      Args.optional
    )
  },
  (options) =>
    withRuntime(
      Effect.flatMap(MicroagentClient, (client) =>
        client.perfFootprint(defined({ name: orUndefined(options.name) })))
    ).pipe(
      Effect.flatMap((report) =>
        emit(report, footprintText)
      )
    )
).pipe(
  Command.withDescription("host memory of the runtime and of VMMs (RSS/PSS), disk use of root filesystems")
)

type SteadyReport = Effect.Effect.Success<ReturnType<typeof perfSteady>>

const steadyText = (report: SteadyReport) =>
  [
    table(
      ["MS", "RSS", "PSS"],
      report.samples.map((s) => [String(s.atMs), mib(s.rssKiB), mib(s.pssKiB)])
    ),
    `${report.workspace} (VMM pid ${report.pid}): ${report.summary.count} sample(s) over ${report.durationMs} ms`
    + (report.summary.minRssKiB === undefined
      ? ""
      : `; rss min ${mib(report.summary.minRssKiB)}, mean ${mib(report.summary.meanRssKiB)}, max ${
        mib(report.summary.maxRssKiB)
      }, growth ${mib(report.summary.growthKiB)}`)
    + (report.summary.stopped ? "; the workspace stopped" : "")
  ].join("\n")

const steady = Command.make("steady", {
  duration: optionalDuration("duration", "how long to sample (default 10s)"),
  interval: optionalDuration("interval", "time between samples (default 1s)"),
  name: Args.text({ name: "workspace" }).pipe(Args.withDescription("a running workspace"))
}, ({ duration, interval, name }) =>
  withWorkspaceBackend(
    name,
    perfSteady(name, {
      duration: Option.isSome(duration) ? Duration.seconds(duration.value) : undefined,
      interval: Option.isSome(interval) ? Duration.seconds(interval.value) : undefined
    })
  ).pipe(Effect.flatMap((report) => emit(report, steadyText)))).pipe(
    Command.withDescription("sample a running workspace's VMM memory (RSS/PSS) over a while, with a summary")
  )

export const perfCommand = Command.make("perf").pipe(
  Command.withDescription("measure boots and footprints"),
  Command.withSubcommands([boot, footprint, steady])
)
