/**
 * Fault points armed in the test's own process (src/layers/process/FaultPoint.ts), for fast tests that
 * pause a program at a step and interrupt it there.
 */
import { Duration, Effect, Schedule } from "effect"
import * as NodeFs from "node:fs"
import * as NodeOs from "node:os"
import * as NodePath from "node:path"
import type { FaultStep } from "../../src/services/Faults.ts"

/** Arms `step` until the scope closes; answers the marker file a process paused there writes. */
export const armFault = (step: FaultStep) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const dir = NodeFs.mkdtempSync(NodePath.join(NodeOs.tmpdir(), "ma-fault-"))
      process.env.MICROAGENT_FAULT_PAUSE = step
      process.env.MICROAGENT_FAULT_DIR = dir
      return { dir, marker: NodePath.join(dir, step) }
    }),
    ({ dir }) =>
      Effect.sync(() => {
        delete process.env.MICROAGENT_FAULT_PAUSE
        delete process.env.MICROAGENT_FAULT_DIR
        NodeFs.rmSync(dir, { recursive: true, force: true })
      })
  ).pipe(Effect.map(({ marker }) => marker))

/** Waits until `path` exists, looking every 10 ms for up to 20 s (under load a launch takes a while). */
export const untilExists = (path: string) =>
  Effect.suspend(() => NodeFs.existsSync(path) ? Effect.void : Effect.fail("not yet")).pipe(
    Effect.retry(Schedule.spaced(Duration.millis(10)).pipe(Schedule.upTo(Duration.seconds(20)))),
    Effect.orDie
  )
