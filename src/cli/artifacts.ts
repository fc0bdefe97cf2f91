/**
 * `artifacts ls|get|rm`: declared outputs and their collections. `ls` and `rm` read the state directory
 * here; `get` goes through the runtime, which may have to reach a running workspace's channel. Under
 * `--cluster` all three go to the runner that holds the workspace.
 */
import { Args, Command } from "@effect/cli"
import { Effect } from "effect"
import * as NodePath from "node:path"
import { listArtifacts, removeArtifacts } from "../programs/Artifacts.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { describeCopy } from "./cp.ts"
import { clusterOr, withRuntime, withStore } from "./Layers.ts"
import { emit, table } from "./Output.ts"

const workspaceArg = Args.text({ name: "workspace" }).pipe(Args.withDescription("workspace name"))

const lsCommand = Command.make(
  "ls",
  { workspace: workspaceArg },
  ({ workspace }) =>
    clusterOr(
      Effect.flatMap(MicroagentClient, (client) => client.artifactsList({ name: workspace })),
      withStore(listArtifacts(workspace))
    ).pipe(
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
    clusterOr(
      Effect.flatMap(MicroagentClient, (client) => client.artifactsRemove({ name: workspace })),
      withStore(removeArtifacts(workspace))
    ).pipe(Effect.flatMap((removed) =>
      emit(removed, (r) => (r.removed
        ? `removed the artifacts of ${r.workspace}`
        : `${r.workspace} has no collected artifacts`))
    ))
).pipe(Command.withDescription("remove a workspace's collected artifacts"))

const artifactsCommand = Command.make("artifacts").pipe(
  Command.withDescription("declared outputs of workspaces and their collected copies"),
  Command.withSubcommands([lsCommand, getCommand, rmCommand])
)

export const artifactsGroup = [artifactsCommand] as const
