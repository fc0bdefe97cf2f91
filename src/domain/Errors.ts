/**
 * The classified error shape that crosses every boundary (library, CLI, RPC, MCP).
 *
 * Every failure a user can see is one of seven kinds; each carries a message, a remediation
 * (what to do about it) and whether retrying may help.
 */
import { Schema } from "effect"

export const ErrorKind = Schema.Literal(
  "transient",
  "permanent",
  "conflict",
  "not_found",
  "resource_exhausted",
  "unsupported",
  "policy_denied"
)
export type ErrorKind = typeof ErrorKind.Type

const fields = {
  message: Schema.String,
  remediation: Schema.optionalWith(Schema.String, { default: () => "" })
}

/** The operation may succeed if retried (exit 75). */
export class Transient extends Schema.TaggedError<Transient>()("Transient", {
  ...fields,
  retryAfterMs: Schema.optional(Schema.Number)
}) {
  readonly kind = "transient" as const
}

/** The operation ran and failed; retrying the same request will fail again. */
export class Permanent extends Schema.TaggedError<Permanent>()("Permanent", fields) {
  readonly kind = "permanent" as const
}

/** The request conflicts with the current state (illegal transition, concurrent command, name taken). */
export class Conflict extends Schema.TaggedError<Conflict>()("Conflict", fields) {
  readonly kind = "conflict" as const
}

export class NotFound extends Schema.TaggedError<NotFound>()("NotFound", fields) {
  readonly kind = "not_found" as const
}

/** Out of disk, memory, a size limit or a host ceiling. */
export class ResourceExhausted extends Schema.TaggedError<ResourceExhausted>()("ResourceExhausted", fields) {
  readonly kind = "resource_exhausted" as const
}

/** The backend or host cannot do this; names the backend and the feature. */
export class Unsupported extends Schema.TaggedError<Unsupported>()("Unsupported", {
  ...fields,
  backend: Schema.optional(Schema.String),
  feature: Schema.optional(Schema.String)
}) {
  readonly kind = "unsupported" as const
}

export class PolicyDenied extends Schema.TaggedError<PolicyDenied>()("PolicyDenied", fields) {
  readonly kind = "policy_denied" as const
}

/** A malformed request: bad flags, bad names, a spec file that does not decode. Exit 2 on the CLI. */
export class InvalidInput extends Schema.TaggedError<InvalidInput>()("InvalidInput", fields) {
  readonly kind = "permanent" as const
}

export const MicroagentError = Schema.Union(
  Transient,
  Permanent,
  Conflict,
  NotFound,
  ResourceExhausted,
  Unsupported,
  PolicyDenied,
  InvalidInput
)
export type MicroagentError = typeof MicroagentError.Type

export const isMicroagentError = Schema.is(MicroagentError)

/** The wire form of an error, as printed by the CLI and carried by RPC and MCP. */
export interface ErrorBody {
  readonly kind: ErrorKind
  readonly message: string
  readonly remediation: string
  readonly retryable: boolean
  readonly retry_after_ms?: number
  readonly usage?: boolean
}

export const toErrorBody = (error: MicroagentError): ErrorBody => ({
  kind: error.kind,
  message: error.message,
  remediation: error.remediation,
  retryable: error.kind === "transient",
  ...(error._tag === "Transient" && error.retryAfterMs !== undefined
    ? { retry_after_ms: error.retryAfterMs }
    : {}),
  ...(error._tag === "InvalidInput" ? { usage: true } : {})
})

/** Process exit codes: 0 ok, 1 failed, 2 usage, 75 retryable. Guest exit codes pass through `run`/`exec`. */
export const ExitCode = {
  ok: 0,
  failed: 1,
  usage: 2,
  retryable: 75
} as const

export const exitCodeFor = (error: MicroagentError): number =>
  error._tag === "InvalidInput"
    ? ExitCode.usage
    : error.kind === "transient"
    ? ExitCode.retryable
    : ExitCode.failed
