/**
 * Host commands: `doctor`.
 */
import { Command } from "@effect/cli"
import { Effect } from "effect"
import { doctor } from "../programs/Doctor.ts"
import { emit } from "./Output.ts"

const doctorCommand = Command.make("doctor", {}, () =>
  doctor.pipe(
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
            : "Install what is marked FAIL, then run `microagent doctor` again."
        ].join("\n"))
    )
  )).pipe(Command.withDescription("check this host: QEMU, acceleration, e2fsprogs, kernel tools, networking"))

export const hostGroup = [doctorCommand] as const
