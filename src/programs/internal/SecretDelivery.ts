/**
 * Secrets for a start: the values the caller resolved (in its own process, with its own environment)
 * arrive in memory, are checked against the workspace's references before anything boots, and are
 * handed to the guest agent right after boot, before the workspace is reported running.
 */
import { Effect, Redacted } from "effect"
import { InvalidInput, Permanent } from "../../domain/Errors.ts"
import { validateSecretRefs } from "../../domain/SecretRefs.ts"
import type { SecretRef } from "../../domain/Workspace.ts"
import { GuestChannel } from "../../services/GuestChannel.ts"
import type { VmHandle } from "../../services/Hypervisor.ts"

export type SecretValues = ReadonlyArray<
  { readonly name: string; readonly value: Redacted.Redacted<Uint8Array> }
>

/** Every reference has a value and every value a reference; checked before the workspace changes state. */
export const checkSecretValues = (workspace: string, refs: ReadonlyArray<SecretRef>, values: SecretValues) =>
  Effect.gen(function*() {
    yield* validateSecretRefs(refs)
    const missing = refs.filter((ref) => !values.some((v) => v.name === ref.name)).map((ref) => ref.name)
    if (missing.length > 0) {
      return yield* new InvalidInput({
        message: `workspace ${workspace} needs secret${missing.length > 1 ? "s" : ""} ${
          missing.join(", ")
        }, and no value came with the start`,
        remediation:
          "the caller resolves secrets and sends their values (the CLI does this for start and run)"
      })
    }
    const unknown = values.filter((v) => !refs.some((ref) => ref.name === v.name)).map((v) => v.name)
    if (unknown.length > 0) {
      return yield* new InvalidInput({
        message: `values were sent for secret${unknown.length > 1 ? "s" : ""} ${
          unknown.join(", ")
        }, which workspace ${workspace} does not reference`,
        remediation: "send --secret NAME=SOURCE with the start, or drop the value"
      })
    }
    const empty = values.find((v) => Redacted.value(v.value).length === 0)
    if (empty !== undefined) {
      return yield* new InvalidInput({
        message: `secret ${empty.name} is empty`,
        remediation: "give it a value"
      })
    }
  })

/** Hands the values to the guest (a 0400 file each in the tmpfs at /run/secrets). */
export const deliverSecrets = (workspace: string, handle: VmHandle, values: SecretValues) =>
  values.length === 0 ? Effect.void : Effect.scoped(Effect.gen(function*() {
    const channel = yield* GuestChannel
    const connection = yield* channel.connect(handle.channel, { timeout: "30 seconds" })
    yield* connection.deliverSecrets(values.map((v) => ({ name: v.name, value: Redacted.value(v.value) })))
  })).pipe(
    Effect.mapError((error) =>
      new Permanent({
        message: `workspace ${workspace}: cannot deliver its secrets to the guest: ${error.message}`,
        remediation: "the VM was stopped; `microagent logs` shows its console"
      })
    )
  )

/**
 * Wipes the guest's secrets before a memory capture: every file in /run/secrets is overwritten with
 * zeros in place and removed (the agent also zeroes its own copies), so the captured memory holds no
 * value. Fails closed: a guest that does not confirm is not captured.
 */
export const purgeSecrets = (workspace: string, handle: VmHandle) =>
  Effect.scoped(Effect.gen(function*() {
    const channel = yield* GuestChannel
    const connection = yield* channel.connect(handle.channel, { timeout: "30 seconds" })
    yield* connection.deliverSecrets([], { purge: true })
  })).pipe(
    Effect.mapError((error) =>
      new Permanent({
        message: `workspace ${workspace}: cannot wipe its secrets before the capture: ${error.message}`,
        remediation: "nothing was captured; retry once the guest answers (`microagent exec` works)"
      })
    )
  )
