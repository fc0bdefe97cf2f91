/**
 * Host commands: `doctor`, and `runtime` (the per-state-directory process the CLI starts on demand).
 */
import { Command } from "@effect/cli"
import { Effect } from "effect"
import * as HostChecks from "../layers/host/HostChecks.ts"
import { doctorWithState } from "../programs/Doctor.ts"
import { runRuntime } from "../runtime/RuntimeMain.ts"
import { Home } from "../services/Home.ts"
import { optionalInt, orUndefined } from "./Flags.ts"
import { Invocation } from "./Invocation.ts"
import { emit } from "./Output.ts"

const doctorCommand = Command.make(
  "doctor",
  {},
  () =>
    Effect.flatMap(
      Invocation,
      (invocation) => doctorWithState(Home.layout(Home.resolveRoot(invocation.stateDir)))
    ).pipe(
      Effect.provide(HostChecks.layer),
      Effect.tap((report) => Effect.sync(() => (process.exitCode = report.ok ? 0 : 1))),
      Effect.flatMap((report) =>
        emit(report, (r) =>
          [
            ...r.checks.map((check) =>
              `${check.ok ? "ok  " : check.required ? "FAIL" : "WARN"} ${
                check.name.padEnd(14)
              } ${check.detail}${
                check.remediation && !check.ok ? `\n     ${"".padEnd(14)} fix: ${check.remediation}` : ""
              }`
            ),
            "",
            r.ok
              ? "This host can run microagent."
              : "Fix what is marked FAIL, then run `microagent doctor` again."
          ].join("\n"))
      )
    )
).pipe(Command.withDescription(
  "check this host (QEMU, acceleration, e2fsprogs, kernel tools, networking) and the state database"
))

export const hostGroup = [doctorCommand] as const

const runtimeCommand = Command.make("runtime", {
  idleSeconds: optionalInt(
    "idle-seconds",
    "exit after this many seconds with no client and no running workspace (default 30)"
  )
}, ({ idleSeconds }) =>
  Effect.gen(function*() {
    const invocation = yield* Invocation
    yield* runRuntime(Home.resolveRoot(invocation.stateDir), {
      idleSeconds: orUndefined(idleSeconds),
      defaultBackend: invocation.backend
    })
  })).pipe(
    Command.withDescription(
      "serve this state directory's runtime in the foreground (commands start it on demand)"
    )
  )

export const runtimeGroup = [runtimeCommand] as const
