/**
 * The one error class of the Promise API. Every failure of the library arrives as one of these, with
 * the `kind`, `tag`, message and remediation of the library's classified error (src/domain/Errors.ts),
 * so an application branches on `error.kind` as an Effect program would on the tagged error.
 */
import { Cause } from "effect"
import { type ErrorKind, isMicroagentError } from "../domain/Errors.ts"

export type { ErrorKind } from "../domain/Errors.ts"

export class MicroagentError extends Error {
  override readonly name = "MicroagentError"
  /** `transient`, `permanent`, `conflict`, `not_found`, `resource_exhausted`, `unsupported`, `policy_denied`. */
  readonly kind: ErrorKind
  /** The library's error class: `Transient`, `Conflict`, `NotFound`, `InvalidInput`, … */
  readonly tag: string
  /** What to do about it. */
  readonly remediation: string
  /** For `transient` errors that say when a retry may succeed. */
  readonly retryAfterMs: number | undefined

  constructor(options: {
    readonly kind: ErrorKind
    readonly tag: string
    readonly message: string
    readonly remediation: string
    readonly retryAfterMs?: number | undefined
    readonly cause?: unknown
  }) {
    super(options.message, { cause: options.cause })
    this.kind = options.kind
    this.tag = options.tag
    this.remediation = options.remediation
    this.retryAfterMs = options.retryAfterMs
  }

  /** A retry may succeed (`transient`, `resource_exhausted`). */
  get retryable(): boolean {
    return this.kind === "transient" || this.kind === "resource_exhausted"
  }
}

/**
 * What a failed Effect becomes: a classified failure keeps its kind; an interruption by the caller's
 * `AbortSignal` rejects with the signal's reason, as `fetch` does; anything else (a defect) is a
 * `permanent` error carrying the original as its `cause`.
 */
export const fromCause = (cause: Cause.Cause<unknown>, signal?: AbortSignal): unknown => {
  const failure = Cause.failureOption(cause)
  if (failure._tag === "Some") {
    const error = failure.value
    if (isMicroagentError(error)) {
      return new MicroagentError({
        kind: error.kind,
        tag: error._tag,
        message: error.message,
        remediation: error.remediation,
        retryAfterMs: error._tag === "Transient" ? error.retryAfterMs : undefined,
        cause: error
      })
    }
  }
  if (signal?.aborted === true && Cause.isInterruptedOnly(cause)) return signal.reason
  const squashed = Cause.squash(cause)
  return new MicroagentError({
    kind: "permanent",
    tag: "Defect",
    message: squashed instanceof Error ? squashed.message : String(squashed),
    remediation: "this is a bug (in this library or its environment); the cause holds the details",
    cause: squashed
  })
}
