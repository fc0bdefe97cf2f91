/**
 * `cp SRC DST`: a thin client of the runtime, which reads and writes the host path itself. The host
 * path is made absolute here, against this process's working directory.
 */
import { Args, Command } from "@effect/cli"
import { Effect } from "effect"
import { InvalidInput } from "../domain/Errors.ts"
import type { CopyResult } from "../domain/Files.ts"
import { planCopy } from "../programs/internal/CopyPaths.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { withRuntime } from "./Layers.ts"
import { emit } from "./Output.ts"

export const describeCopy = (r: CopyResult) => {
  const [from, to] = r.direction === "in"
    ? [r.hostPath, `${r.workspace}:${r.guestPath}`]
    : [`${r.workspace}:${r.guestPath}`, r.hostPath]
  const what = r.kind === "file" ? `${r.bytes} bytes` : `${r.entries} entries, ${r.bytes} bytes`
  return `${from} -> ${to} (${what}, ${r.via})`
}

const cpCommand = Command.make("cp", {
  source: Args.text({ name: "source" }).pipe(Args.withDescription("host path, or WORKSPACE:/absolute/path")),
  destination: Args.text({ name: "destination" }).pipe(
    Args.withDescription("host path, or WORKSPACE:/absolute/path")
  )
}, ({ destination, source }) =>
  Effect.gen(function*() {
    const plan = planCopy(source, destination, process.cwd())
    if (plan instanceof InvalidInput) return yield* plan
    const result = yield* withRuntime(Effect.flatMap(MicroagentClient, (client) =>
      client.cp({
        name: plan.workspace,
        direction: plan.direction,
        hostPath: plan.hostPath,
        guestPath: plan.guestPath
      })))
    yield* emit(result, describeCopy)
  })).pipe(
    Command.withDescription(
      "copy a file or directory tree between the host and a workspace (running: over the channel; stopped: offline)"
    )
  )

export const cpGroup = [cpCommand] as const
