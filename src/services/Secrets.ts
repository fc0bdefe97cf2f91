/**
 * Secrets: resolved on the host into memory only, handed to the guest over the channel.
 */
import { Context, type Effect, type Redacted } from "effect"
import type { InvalidInput } from "../domain/Errors.ts"

/** `NAME=env:VAR`, `NAME=file:PATH`, `NAME=dotenv:PATH[:KEY]`. */
export interface SecretSpec {
  readonly name: string
  readonly source: string
}

export interface SecretsShape {
  /** Fails before boot when any secret cannot be resolved; values never touch the host disk. */
  readonly resolve: (specs: ReadonlyArray<SecretSpec>) => Effect.Effect<
    ReadonlyArray<{ readonly name: string; readonly value: Redacted.Redacted<Uint8Array> }>,
    InvalidInput
  >
}

export class Secrets extends Context.Tag("microagent/Secrets")<Secrets, SecretsShape>() {}
