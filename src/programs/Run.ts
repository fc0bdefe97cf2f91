/**
 * `run`: create a one-shot workspace, boot it, run one command, tear it all down. The workspace is a
 * scoped resource: failure or interruption (Ctrl-C) kills the VM and removes every file and record,
 * unless `keep` asks to keep it (halted) for inspection.
 */
import { Effect, Exit, Option, type Stream } from "effect"
import { defaultEgress, receiptOf } from "../domain/Egress.ts"
import { InvalidInput } from "../domain/Errors.ts"
import type { RunRequest } from "../domain/Requests.ts"
import { Egress } from "../services/Egress.ts"
import type { GuestError } from "../services/GuestChannel.ts"
import { StateStore } from "../services/StateStore.ts"
import { collectOutputs } from "./Artifacts.ts"
import { create } from "./Create.ts"
import { remove } from "./Delete.ts"
import { exec } from "./Exec.ts"
import { halt, kill } from "./Halt.ts"
import { execRequestFor, imageCommand } from "./internal/Requests.ts"
import { start } from "./Start.ts"

/**
 * A run's request (domain/Requests.ts), with its stdin as a stream, and a hook the CLI and the library
 * use to learn the generated name.
 */
export interface RunOptions extends Omit<RunRequest, "stdin"> {
  readonly stdin?: Stream.Stream<Uint8Array, GuestError> | undefined
  /** Called once the workspace has a name (the CLI prints it with `keep`). */
  readonly onCreated?: ((name: string) => Effect.Effect<void>) | undefined
}

export const run = Effect.fn("run")(function*(options: RunOptions) {
  const store = yield* StateStore
  const acquire = create({ ...options, ephemeral: !options.keep, namePrefix: options.namePrefix ?? "run" })
  // Volumes and disk images outlive the run: a VM that wrote to one powers off cleanly (the guest syncs)
  // before it goes, unless the run was interrupted.
  const keepsData = (options.mounts ?? []).some((m) => !m.readOnly && m.kind !== "bundle")
  const release = (name: string, exit: Exit.Exit<unknown, unknown>) =>
    options.keep && Exit.isSuccess(exit)
      ? halt(name, { reason: "run finished" }).pipe(Effect.ignore)
      : keepsData && Exit.isSuccess(exit)
      ? halt(name, { reason: "run finished" }).pipe(
        Effect.ignore,
        Effect.zipRight(remove(name, { force: true })),
        Effect.ignore
      )
      : remove(name, { force: true }).pipe(Effect.ignore)

  return yield* Effect.scoped(Effect.gen(function*() {
    const workspace = yield* Effect.acquireRelease(acquire, (ws, exit) => release(ws.name, exit))
    if (options.onCreated) yield* options.onCreated(workspace.name)
    const argv = options.command.length > 0 ? options.command : imageCommand(workspace)
    if (argv.length === 0) {
      return yield* new InvalidInput({
        message: `image ${workspace.image.ref} has no Entrypoint or Cmd, and no command was given`,
        remediation: "give a command after the image: microagent run IMAGE -- CMD [ARG...]"
      })
    }
    yield* start(workspace.name, {
      bootTimeoutSeconds: options.bootTimeoutSeconds,
      secretValues: options.secretValues,
      cold: options.cold
    })
    const latest = yield* store.get(workspace.name)
    const { cwd, stderrLimit, stdoutLimit, timeoutSeconds, user } = options
    const request = execRequestFor(latest, argv as [string, ...Array<string>], {
      cwd,
      user,
      timeoutSeconds,
      stdoutLimit,
      stderrLimit
    })
    const result = yield* exec(workspace.name, request, options.stdin)
    // Declared outputs outlive the one-shot workspace; a failed collection is recorded, not fatal.
    if (latest.outputs.length > 0) yield* collectOutputs(workspace.name).pipe(Effect.ignoreLogged)
    if (!options.receipt) return { workspace: workspace.name, kept: options.keep ?? false, result }
    // Stopped first, so that the mediator has written its last records.
    if (options.keep) yield* halt(workspace.name, { reason: "dispatch finished" })
    else yield* kill(workspace.name)
    const mode = latest.network === "user" ? (latest.egress ?? defaultEgress).mode : "none"
    const egress = yield* Effect.serviceOption(Egress)
    // The mediator's records, and the credential broker's (which any network mode may have).
    const records =
      (mode === "broker" || mode === "mitm" || latest.brokers.length > 0) && Option.isSome(egress)
        ? yield* egress.value.read(workspace.name)
        : []
    return {
      workspace: workspace.name,
      kept: options.keep ?? false,
      result,
      receipt: receiptOf(mode, records)
    }
  }))
})
