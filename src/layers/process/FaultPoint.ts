/**
 * TEST-ONLY fault injection: named points in the lifecycle where a crash test can stop a process and
 * kill it (or another) at a known step instead of guessing with sleeps. Inert unless the environment
 * asks for it; nothing in normal operation sets these variables.
 *
 * With `MICROAGENT_FAULT_PAUSE` listing step names (comma-separated) and `MICROAGENT_FAULT_DIR` naming
 * a directory, the process that reaches a listed step appends its pid to `DIR/STEP` and waits until
 * that file is removed, then carries on. The variables are read when the step is reached, so a
 * runtime started by a command carries the command's environment. Without `MICROAGENT_FAULT_PAUSE`,
 * the steps named in the file `DIR/armed` (one per line) are armed: a test arms and disarms them there
 * case by case, and one runtime serves every case.
 */
import { Duration, Effect, Layer, Schedule } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Faults, type FaultStep } from "../../services/Faults.ts"

export type { FaultStep } from "../../services/Faults.ts"

const armedSteps = (dir: string): ReadonlyArray<string> => {
  const fromEnv = process.env.MICROAGENT_FAULT_PAUSE
  if (fromEnv !== undefined) return fromEnv.split(",")
  try {
    return NodeFs.readFileSync(NodePath.join(dir, "armed"), "utf8").split("\n")
  } catch {
    return []
  }
}

const armed = (step: FaultStep): string | undefined => {
  const dir = process.env.MICROAGENT_FAULT_DIR
  if (dir === undefined || !armedSteps(dir).includes(step)) return undefined
  return NodePath.join(dir, step)
}

/** Pauses at `step` when a test armed it (see the module comment); otherwise does nothing. */
export const faultPoint = (step: FaultStep): Effect.Effect<void> =>
  Effect.suspend(() => {
    const marker = armed(step)
    if (marker === undefined) return Effect.void
    // One line per arrival: a test can wait for several requests to reach the same step.
    NodeFs.appendFileSync(marker, `${process.pid}\n`)
    return Effect.suspend(() => NodeFs.existsSync(marker) ? Effect.fail("paused" as const) : Effect.void)
      .pipe(
        Effect.retry(Schedule.spaced(Duration.millis(20))),
        Effect.orDie
      )
  })

/** `Faults` from the environment, as described above. */
export const layer = Layer.succeed(Faults, Faults.of({ point: faultPoint }))
