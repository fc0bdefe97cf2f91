/**
 * Workspace states and the one state machine every program goes through.
 */
import { Either, Schema } from "effect"
import { Conflict } from "./Errors.ts"

export const State = Schema.Literal(
  "prepared",
  "starting",
  "running",
  "paused",
  "stopping",
  "halted",
  "quarantined",
  "stopped",
  "failed",
  /** Only in a cluster: the workspace's host stopped heart-beating (its last known record, as it was). */
  "lost"
)
export type State = typeof State.Type

export const Transition = Schema.Literal(
  "start",
  "booted",
  "bootFailed",
  "halt",
  "halted",
  "haltTimedOut",
  "kill",
  "exited",
  "crashed",
  "pause",
  "resume",
  "quarantine"
)
export type Transition = typeof Transition.Type

const live: ReadonlyArray<State> = ["starting", "running", "paused", "stopping"]

/** For each transition: the states it may leave, and the state it reaches. */
export const transitions: Record<Transition, { readonly from: ReadonlyArray<State>; readonly to: State }> = {
  start: { from: ["prepared", "halted", "stopped", "failed"], to: "starting" },
  booted: { from: ["starting"], to: "running" },
  bootFailed: { from: ["starting"], to: "failed" },
  halt: { from: ["running", "paused"], to: "stopping" },
  halted: { from: ["stopping"], to: "halted" },
  haltTimedOut: { from: ["stopping"], to: "failed" },
  /** From `failed` too: a VMM its record lost track of may still run, and kill ends it. */
  kill: { from: [...live, "failed"], to: "stopped" },
  /** The guest powered off by itself. */
  exited: { from: ["running", "stopping"], to: "stopped" },
  /** The VMM died or the runtime found it gone. */
  crashed: { from: live, to: "failed" },
  pause: { from: ["running"], to: "paused" },
  resume: { from: ["paused"], to: "running" },
  quarantine: { from: ["running", "paused"], to: "quarantined" }
}

/** States in which a VMM may be alive. */
export const isLive = (state: State): boolean => live.includes(state)

/** States `wait` returns on. */
export const isSettled = (state: State): boolean =>
  state === "stopped" || state === "halted" || state === "failed" || state === "quarantined"
  || state === "prepared"

/** States from which a workspace can be deleted without stopping it first. */
export const isDeletable = (state: State): boolean =>
  state === "prepared" || state === "halted" || state === "stopped" || state === "failed"

const verbs: Record<Transition, string> = {
  start: "start",
  booted: "finish booting",
  bootFailed: "fail booting",
  halt: "halt",
  halted: "finish halting",
  haltTimedOut: "time out halting",
  kill: "kill",
  exited: "exit",
  crashed: "crash",
  pause: "pause",
  resume: "resume",
  quarantine: "quarantine"
}

const remedies: Partial<Record<State, string>> = {
  running: "it is already running; use `exec`, `halt` or `kill`",
  starting: "another command is starting it; wait for it with `microagent wait`",
  stopping: "it is being halted; wait for it with `microagent wait`",
  paused: "it is paused; `microagent resume` lets it run on, `microagent halt` or `kill` stops it",
  quarantined: "a quarantined workspace is held for inspection and cannot change"
}

export const canTransition = (from: State, transition: Transition): boolean =>
  transitions[transition].from.includes(from)

/** The next state, or a `Conflict` naming the workspace, the current state and what to do. */
export const transition = (
  name: string,
  from: State,
  t: Transition
): Either.Either<State, Conflict> =>
  canTransition(from, t)
    ? Either.right(transitions[t].to)
    : Either.left(
      new Conflict({
        message: `cannot ${verbs[t]} workspace ${name} from state ${from}`,
        remediation: remedies[from]
          ?? `it must be ${transitions[t].from.join(", ")} to ${verbs[t]}; see \`microagent inspect ${name}\``
      })
    )
