/**
 * TEST-ONLY fault injection: named points in the lifecycle where a crash test can stop a process and
 * kill it (or another) at a known step instead of guessing with sleeps. Inert unless a test arms it;
 * nothing in normal operation does (layers/process/FaultPoint.ts says how).
 */
import { Context, Effect } from "effect"

/** The steps that exist (named here so the tests and the code name the same ones). */
export type FaultStep =
  | "create.recorded" // the record is written, the staged disk not yet moved into place
  | "vmm.booting" // the VMM runs, the guest agent has not been asked yet
  | "exec.connected" // the guest channel is open, the request not yet sent
  | "halt.stopping" // the record says stopping, the guest has not been asked to power off
  | "delete.files-removed" // the workspace's files are gone, its record not yet
  | "cp.reached" // the workspace is reached (channel or disk), no byte copied yet
  | "snapshot.capturing" // the VM is paused and its state written into staging, nothing published yet
  | "fork.child-started" // a fork's child runs, the fork not yet ended (its capture and marks still there)
  | "runtime.leaving" // the runtime found itself idle and is about to go, its socket still there

export interface FaultsShape {
  /** Pauses at `step` when a test armed it; otherwise does nothing. */
  readonly point: (step: FaultStep) => Effect.Effect<void>
}

export class Faults extends Context.Tag("microagent/Faults")<Faults, FaultsShape>() {}

/** `Faults.point(step)` of the environment's `Faults`. */
export const faultPoint = (step: FaultStep): Effect.Effect<void, never, Faults> =>
  Effect.flatMap(Faults, (faults) => faults.point(step))
