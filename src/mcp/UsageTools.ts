/**
 * MCP tools of a workspace's resource use, under the original's names: `workspace.stats` (one sample;
 * following is CLI-only, as in the original) and `workspace.resize` (offline; `preview` first).
 */
import { Effect, Schema } from "effect"
import { isMicroagentError, toErrorBody } from "../domain/Errors.ts"
import { ResizeResult, WorkspaceStats } from "../domain/Usage.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { defined } from "../rpc/Rpcs.ts"
import { type AnyTool, defineTool, described, optional, type PreviewResult } from "./Tool.ts"

const workspaceName = { name: described(Schema.String, "the workspace's name") }

export const usageTools: ReadonlyArray<AnyTool> = [
  defineTool({
    name: "workspace.stats",
    title: "Resource use of a running workspace",
    description: "One sample of a running workspace, taken on the host: the VMM's CPU time and CPU use "
      + "over interval_seconds (percent of one core), its resident memory, its storage I/O, and the root "
      + "disk file's apparent and allocated bytes. A workspace that is not running is a conflict.",
    input: {
      ...workspaceName,
      interval_seconds: optional(
        Schema.Number.pipe(Schema.between(0.05, 60)),
        "how long CPU use is measured over (default 0.5)"
      )
    },
    output: WorkspaceStats,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.stats(defined({ name: args.name, intervalSeconds: args.interval_seconds }))
      )
  }),
  defineTool({
    name: "workspace.resize",
    title: "Resize a workspace's root disk",
    description: "Grow (or shrink, no further than its content) the root disk of a workspace that is not "
      + "running, offline (e2fsck, then resize2fs). A running workspace is a conflict: halt it first. "
      + "Refused while the workspace has snapshots.",
    input: {
      ...workspaceName,
      size_mib: described(Schema.Int.pipe(Schema.between(16, 16 * 1024 * 1024)), "the new size in MiB")
    },
    output: ResizeResult,
    kind: "destructive",
    sideEffects: ["resizes the workspace's root disk file and filesystem"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.resize({ name: args.name, sizeMiB: args.size_mib }))
        .pipe(
          // Without preview the procedure answers with the full result.
          Effect.map((r) => r as ResizeResult)
        ),
    preview: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.resize({ name: args.name, sizeMiB: args.size_mib, preview: true })
      ).pipe(
        Effect.map((plan): PreviewResult => ({
          preview: true,
          workspace: args.name,
          actions: plan.from_size_mib === plan.to_size_mib
            ? []
            : [
              `check the filesystem of ${args.name}'s root disk (e2fsck)`,
              `${
                plan.to_size_mib > plan.from_size_mib ? "grow" : "shrink"
              } it from ${plan.from_size_mib} MiB to ${plan.to_size_mib} MiB (resize2fs)`
            ]
        })),
        Effect.catchIf(isMicroagentError, (error) =>
          Effect.succeed<PreviewResult>({
            preview: true,
            workspace: args.name,
            actions: [],
            wouldFail: toErrorBody(error)
          }))
      )
  })
]
