/**
 * Structured exec: what the host asks the guest to run, and what comes back.
 */
import { Schema } from "effect"

export class ExecRequest extends Schema.Class<ExecRequest>("ExecRequest")({
  /** Executed directly, no shell. */
  argv: Schema.NonEmptyArray(Schema.String),
  env: Schema.optionalWith(Schema.Record({ key: Schema.String, value: Schema.String }), {
    default: () => ({})
  }),
  cwd: Schema.optional(Schema.String),
  user: Schema.optional(Schema.String),
  /** Seconds; the guest sends TERM then KILL to the process group when it runs out. */
  timeoutSeconds: Schema.optional(Schema.Number.pipe(Schema.positive())),
  /** Bytes of stdout / stderr kept; more is discarded and flagged as truncated. */
  stdoutLimit: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  stderrLimit: Schema.optional(Schema.Int.pipe(Schema.nonNegative())),
  tty: Schema.optional(Schema.Struct({ rows: Schema.Int, cols: Schema.Int }))
}) {}

export const ExitStatus = Schema.Literal("exited", "signaled", "timed_out", "failed_to_start")
export type ExitStatus = typeof ExitStatus.Type

export class ExecResult extends Schema.Class<ExecResult>("ExecResult")({
  status: ExitStatus,
  /** Exit code for `exited`; 128+signal for `signaled`; 124 for `timed_out`; 127 for `failed_to_start`. */
  exitCode: Schema.Int,
  signal: Schema.optional(Schema.Int),
  stdout: Schema.String,
  stderr: Schema.String,
  stdoutTruncated: Schema.Boolean,
  stderrTruncated: Schema.Boolean,
  durationMs: Schema.Number,
  error: Schema.optional(Schema.String)
}) {}

/** A piece of streamed exec output. */
export type ExecOutput =
  | { readonly _tag: "Stdout"; readonly data: Uint8Array }
  | { readonly _tag: "Stderr"; readonly data: Uint8Array }
  | { readonly _tag: "Exit"; readonly result: ExecResult }
