/**
 * `cp SRC DST` and `artifacts ls|get|rm`: thin clients of the runtime, which reads and writes the host
 * paths itself. Host paths are made absolute here, against this process's working directory.
 */
import { Args, Command } from "@effect/cli"
import { Effect } from "effect"
import * as NodePath from "node:path"
import { InvalidInput } from "../domain/Errors.ts"
import type { CopyResult } from "../domain/Files.ts"
import { listArtifacts, removeArtifacts } from "../programs/Artifacts.ts"
import { planCopy } from "../programs/internal/CopyPaths.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { withRuntime, withStore } from "./Layers.ts"
import { emit, table } from "./Output.ts"

const describeCopy = (r: CopyResult) => {
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

const workspaceArg = Args.text({ name: "workspace" }).pipe(Args.withDescription("workspace name"))

const lsCommand = Command.make(
  "ls",
  { workspace: workspaceArg },
  ({ workspace }) =>
    withStore(listArtifacts(workspace)).pipe(
      Effect.flatMap((listed) =>
        emit(listed, (l) =>
          l.artifacts.length === 0
            ? `${l.workspace} declares no outputs`
            : table(
              ["NAME", "PATH", "COLLECTED", "SIZE"],
              l.artifacts.map((
                a
              ) => [a.name, a.path, a.collected ? "yes" : "no", a.size === undefined ? "-" : `${a.size}`])
            ))
      )
    )
).pipe(Command.withDescription("list a workspace's declared outputs and what was collected"))

const getCommand = Command.make(
  "get",
  {
    workspace: workspaceArg,
    artifact: Args.text({ name: "name" }).pipe(Args.withDescription("output name")),
    destination: Args.text({ name: "destination" }).pipe(Args.withDescription("host file or directory"))
  },
  ({ artifact, destination, workspace }) =>
    withRuntime(
      Effect.flatMap(MicroagentClient, (client) =>
        client.artifactsGet({ name: workspace, artifact, hostPath: NodePath.resolve(destination) }))
    ).pipe(
      Effect.flatMap((copied) =>
        emit(copied, describeCopy)
      )
    )
).pipe(
  Command.withDescription(
    "copy one declared output to the host: off the workspace, or from its collection once it is gone"
  )
)

const rmCommand = Command.make(
  "rm",
  { workspace: workspaceArg },
  ({ workspace }) =>
    withStore(removeArtifacts(workspace)).pipe(Effect.flatMap((removed) =>
      emit(removed, (r) => (r.removed
        ? `removed the artifacts of ${r.workspace}`
        : `${r.workspace} has no collected artifacts`))
    ))
).pipe(Command.withDescription("remove a workspace's collected artifacts"))

const artifactsCommand = Command.make("artifacts").pipe(
  Command.withDescription("declared outputs of workspaces and their collected copies"),
  Command.withSubcommands([lsCommand, getCommand, rmCommand])
)

export const filesGroup = [cpCommand, artifactsCommand] as const
