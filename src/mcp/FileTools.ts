/**
 * MCP tools for files: `workspace.cp` between the server's host and a workspace, and the declared
 * outputs of a workspace (`artifacts.*`). Host paths are the MCP server's: relative ones are taken
 * from its working directory. The client these tools call confines them to the host roots (Confined.ts)
 * and hands the runtime, which reads or writes them itself, their resolved real paths.
 */
import { Effect, Schema } from "effect"
import * as NodePath from "node:path"
import { InvalidInput } from "../domain/Errors.ts"
import { ArtifactCopy, ArtifactList, CopyResult } from "../domain/Files.ts"
import { planCopy } from "../programs/internal/CopyPaths.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { type AnyTool, defineTool, described } from "./Tool.ts"

const workspaceName = { name: described(Schema.String, "the workspace's name") }

export const fileTools: ReadonlyArray<AnyTool> = [
  defineTool({
    name: "workspace.cp",
    title: "Copy files to or from a workspace",
    description: "Copy a file or a directory tree (modes kept) between the server's host and a workspace. "
      + "Exactly one of source and target is WORKSPACE:/absolute/path. A running workspace copies over "
      + "its guest channel; a prepared, halted or stopped one is written or read offline on its disk. "
      + "Copying to a host directory keeps the basename; nothing is written outside the target named. "
      + "The host path must lie inside the server's host roots (see hostAccess in microagent.describe).",
    input: {
      source: described(Schema.NonEmptyString, "host path, or WORKSPACE:/absolute/path"),
      target: described(Schema.NonEmptyString, "host path, or WORKSPACE:/absolute/path")
    },
    output: CopyResult,
    kind: "mutate",
    sideEffects: ["writes the target: a path in the workspace, or on the host"],
    cost: "host_io",
    run: (args) =>
      Effect.gen(function*() {
        const plan = planCopy(args.source, args.target, process.cwd())
        if (plan instanceof InvalidInput) return yield* plan
        const client = yield* MicroagentClient
        return yield* client.cp({
          name: plan.workspace,
          direction: plan.direction,
          hostPath: plan.hostPath,
          guestPath: plan.guestPath
        })
      })
  }),
  defineTool({
    name: "artifacts.list",
    title: "List a workspace's declared outputs",
    description: "The outputs declared with `outputs` at create or run: name, guest path, whether they "
      + "were collected and their size. A one-shot run's collected outputs outlive its workspace.",
    input: workspaceName,
    output: ArtifactList,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) => Effect.flatMap(MicroagentClient, (client) => client.artifactsList({ name: args.name }))
  }),
  defineTool({
    name: "artifacts.get",
    title: "Fetch a declared output",
    description: "Copy one declared output to a host path inside the server's host roots: from the "
      + "collection a run made, or from the workspace itself (live when running, offline when stopped).",
    input: {
      ...workspaceName,
      artifact: described(Schema.NonEmptyString, "the output's name"),
      target: described(Schema.NonEmptyString, "host path to write (a directory keeps the output's name)")
    },
    output: ArtifactCopy,
    kind: "mutate",
    sideEffects: ["writes the target path on the host"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) =>
        client.artifactsGet({
          name: args.name,
          artifact: args.artifact,
          hostPath: NodePath.resolve(process.cwd(), args.target)
        }))
  })
]
