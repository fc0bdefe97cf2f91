/**
 * Model runners: host processes serving a pulled model over the OpenAI-compatible HTTP API on loopback
 * (`llama-server` when installed, else the embedded runner, or a command of the user's). Each runner is
 * recorded in the state directory so any process finds it; a runner that died is dropped when seen and
 * started again by the next `serve`.
 */
import { Context, type Effect, Schema } from "effect"
import type { InvalidInput, NotFound, Permanent, Transient } from "../domain/Errors.ts"

export const RunnerKind = Schema.Literal("llama-server", "embedded", "custom")
export type RunnerKind = typeof RunnerKind.Type

export class RunnerRecord extends Schema.Class<RunnerRecord>("RunnerRecord")({
  /** The model's canonical reference. */
  ref: Schema.String,
  digest: Schema.String,
  runner: RunnerKind,
  pid: Schema.Number,
  /** The process's start time (from /proc), so a reused pid is not taken for the runner. */
  startTime: Schema.optional(Schema.String),
  port: Schema.Number,
  /** The OpenAI-compatible base URL, `http://127.0.0.1:PORT/v1`. */
  url: Schema.String,
  command: Schema.Array(Schema.String),
  /** Started by `serve` (kept until `stop`), rather than held for workspaces only. */
  pinned: Schema.Boolean,
  /** Started by `serve --dedicated`: exclusive to its caller, never shared with workspaces. */
  dedicated: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** The workspaces holding it (paired and running); filled in by `list`. */
  holders: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  startedAt: Schema.String,
  log: Schema.String
}) {}

export interface ServeOptions {
  /** `llamacpp` (default: llama-server if installed, else embedded) or `custom`. */
  readonly runner?: "llamacpp" | "custom" | undefined
  /** For `custom`: the command line, with `{model}`, `{port}`, `{host}` and `{ref}` replaced. */
  readonly runnerCommand?: string | undefined
  /** Appended to the runner's command line. */
  readonly runnerArgs?: ReadonlyArray<string> | undefined
  /** The loopback port; default a free one. */
  readonly port?: number | undefined
  /** Context size for the llama.cpp runners (default 4096, capped at the model's). */
  readonly contextSize?: number | undefined
  /** A runner of its own, not shared with workspaces or other `serve` calls. */
  readonly dedicated?: boolean | undefined
}

/** How a paired workspace's model bridge treats the guest's requests (see domain/ModelPolicy.ts). */
export interface BridgeOptions {
  readonly workspace: string
  /** The model's canonical reference. */
  readonly ref: string
  /** QEMU's end of the model channel. */
  readonly socket: string
  /** The VMM; the bridge ends with it. */
  readonly vmmPid: number
  readonly vmmStartTime?: string | undefined
  readonly mediation: "off" | "local-allow" | "policy"
  /** For `policy`: the policy file (validated before). */
  readonly policyFile?: string | undefined
  /** Where the mediator appends its audit (JSON lines). */
  readonly auditLog: string
}

/** A hold let go: the runner, and whether it stopped for want of holders. */
export interface Released {
  readonly ref: string
  readonly pid: number
  readonly stopped: boolean
}

export interface ModelRunnersShape {
  /** The model's runner, started (and health-probed) unless a live one serves it already. */
  readonly serve: (
    ref: string,
    options?: ServeOptions
  ) => Effect.Effect<RunnerRecord, Permanent | NotFound | Transient | InvalidInput>
  /** Stops the model's runners (the shared one and any dedicated ones); returns the first. */
  readonly stop: (ref: string) => Effect.Effect<RunnerRecord, Permanent | NotFound | InvalidInput>
  /**
   * The runner a paired workspace uses: the model's shared runner, started unpinned (it stops with its
   * last holder) unless one runs already.
   */
  readonly ensureShared: (
    ref: string,
    options?: ServeOptions
  ) => Effect.Effect<RunnerRecord, Permanent | NotFound | Transient | InvalidInput>
  /** Starts the workspace's model bridge on its VMM's model channel and records the workspace as a holder. */
  readonly attach: (options: BridgeOptions) => Effect.Effect<{ readonly bridgePid: number }, Permanent>
  /**
   * Lets go of the workspace's holds (ending its bridge); unpinned runners left unheld stop. With `ref`,
   * that model's shared runner stops too if nobody holds it (a start that failed before its bridge ran).
   */
  readonly release: (
    workspace: string,
    ref?: string
  ) => Effect.Effect<ReadonlyArray<Released>>
  /** The live runners; dead ones are dropped from the records. */
  readonly list: Effect.Effect<ReadonlyArray<RunnerRecord>>
}

export class ModelRunners extends Context.Tag("microagent/ModelRunners")<ModelRunners, ModelRunnersShape>() {}
