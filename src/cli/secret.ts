/**
 * `microagent secret check NAME=SOURCE...`: resolves references the way a start would, here, and
 * reports what each gave (its scheme and size, never its value) without delivering anything.
 */
import { Args, Command } from "@effect/cli"
import { Effect, Either, Redacted } from "effect"
import { parseSecretFlag } from "../domain/SecretRefs.ts"
import * as SecretsLive from "../layers/secrets/SecretsLive.ts"
import { Secrets } from "../services/Secrets.ts"
import { emit } from "./Output.ts"

interface CheckResult {
  readonly name: string
  readonly ok: boolean
  readonly source?: string
  readonly bytes?: number
  readonly error?: string
}

const checkOne = (text: string) =>
  Effect.gen(function*() {
    const ref = yield* parseSecretFlag(text, process.cwd())
    const [resolved] = yield* Effect.flatMap(Secrets, (secrets) => secrets.resolve([ref]))
    return {
      name: ref.name,
      ok: true,
      source: ref.source.slice(0, ref.source.indexOf(":")),
      bytes: Redacted.value(resolved!.value).length
    } satisfies CheckResult
  }).pipe(
    Effect.either,
    Effect.map(Either.getOrElse((error): CheckResult => ({
      name: text.slice(0, Math.max(0, text.indexOf("="))) || text,
      ok: false,
      error: error.message
    })))
  )

const check = Command.make("check", {
  secrets: Args.text({ name: "NAME=SOURCE" }).pipe(Args.atLeast(1))
}, ({ secrets }) =>
  Effect.gen(function*() {
    const results = yield* Effect.forEach(secrets, checkOne).pipe(Effect.provide(SecretsLive.layer))
    if (results.some((r) => !r.ok)) process.exitCode = 1
    yield* emit(
      results,
      (all) =>
        all.map((r) =>
          r.ok ? `${r.name} ok source=${r.source} bytes=${r.bytes}` : `${r.name} error: ${r.error}`
        )
          .join("\n")
    )
  })).pipe(
    Command.withDescription("resolve secret references here, without delivering them; exit 1 if any fails")
  )

export const secretCommand = Command.make("secret").pipe(
  Command.withDescription("check secret references (alias: secrets)"),
  Command.withSubcommands([check])
)
