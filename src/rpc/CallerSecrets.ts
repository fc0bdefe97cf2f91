/**
 * The caller's side of secrets: references are resolved in the process that makes the call (the CLI,
 * the MCP server, a host application), so `env:` is that process's environment, and the values travel
 * to the runtime in memory only, as `secretValues` of `run` and `start`.
 */
import { Effect } from "effect"
import { mergeRefs } from "../domain/SecretRefs.ts"
import type { SecretRef } from "../domain/Workspace.ts"
import * as SecretsLive from "../layers/secrets/SecretsLive.ts"
import { Secrets } from "../services/Secrets.ts"
import type { MicroagentClient } from "./Client.ts"

/** Resolves references here, into memory; a secret that cannot be resolved fails before anything starts. */
export const resolveSecrets = (refs: ReadonlyArray<SecretRef>) =>
  refs.length === 0
    ? Effect.succeed(undefined)
    : Effect.flatMap(Secrets, (secrets) => secrets.resolve(refs)).pipe(Effect.provide(SecretsLive.layer))

/**
 * What `start` sends: the references given to it, and the values of every reference the workspace
 * will have, resolved here at every start.
 */
export const secretsForStart = (
  client: MicroagentClient["Type"],
  name: string,
  given: ReadonlyArray<SecretRef> | undefined
) =>
  Effect.gen(function*() {
    const { workspace } = yield* client.inspect({ name })
    const secretValues = yield* resolveSecrets(mergeRefs(workspace.secrets, given ?? []))
    return {
      ...(given === undefined ? {} : { secrets: given }),
      ...(secretValues === undefined ? {} : { secretValues })
    }
  })

/**
 * The values of the secrets a workspace references, resolved here: what a memory capture (`snapshot
 * create`, `fork`) delivers again after wiping them from the guest. Undefined when it has none.
 */
export const workspaceSecretValues = (client: MicroagentClient["Type"], name: string) =>
  Effect.gen(function*() {
    const { workspace } = yield* client.inspect({ name })
    return yield* resolveSecrets(workspace.secrets)
  })
