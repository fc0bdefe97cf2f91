/**
 * The payloads of `connect` (an interactive session through the runtime): @effect/rpc has no
 * streaming request payloads, so the session's output is one streaming procedure and its keystrokes
 * and terminal resizes are small calls keyed by a session id the client chose (docs/architecture.md).
 */
import { Schema } from "effect"
import { ExecResult } from "../domain/Exec.ts"

const Bytes = Schema.Uint8ArrayFromBase64
const Dimension = Schema.Int.pipe(Schema.between(1, 0xffff))

export const SessionId = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9-]{8,64}$/))

export const ConnectPayload = Schema.Struct({
  name: Schema.String,
  sessionId: SessionId,
  /** The command; the workspace's shell when empty. */
  argv: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** The caller's terminal size: the command gets a PTY when present, pipes otherwise. */
  tty: Schema.optional(Schema.Struct({ rows: Dimension, cols: Dimension })),
  env: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String }))
})

/** `Ready` first (the session accepts input from then on), then output, and `Exit` last. */
export const ConnectOutput = Schema.Union(
  Schema.TaggedStruct("Ready", {}),
  Schema.TaggedStruct("Stdout", { data: Bytes }),
  Schema.TaggedStruct("Stderr", { data: Bytes }),
  Schema.TaggedStruct("Exit", { result: ExecResult })
)
export type ConnectOutput = typeof ConnectOutput.Type

export const ConnectInputPayload = Schema.Struct({
  sessionId: SessionId,
  data: Bytes,
  /** The caller's input ended (piped stdin): the command's stdin is closed after `data`. */
  eof: Schema.optional(Schema.Boolean)
})

export const ConnectResizePayload = Schema.Struct({ sessionId: SessionId, rows: Dimension, cols: Dimension })
