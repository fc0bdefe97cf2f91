/**
 * MCP tools for snapshots: thin calls into the RPC API, like the workspace tools. Deleting one can be
 * previewed.
 */
import { Effect, Schema } from "effect"
import { toErrorBody } from "../domain/Errors.ts"
import { SnapshotDeleted, SnapshotManifest, WorkspaceCopy } from "../domain/Snapshot.ts"
import { TemplateEntry, TemplatesPruned } from "../domain/Template.ts"
import { ForkResult } from "../programs/Fork.ts"
import { resolveSecrets } from "../rpc/CallerSecrets.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { defined } from "../rpc/Rpcs.ts"
import {
  type AnyTool,
  defineTool,
  described,
  optional,
  type PreviewResult,
  type ToolContext
} from "./Tool.ts"

const workspaceName = { name: described(Schema.String, "the workspace's name") }
const tag = described(
  Schema.String,
  "the snapshot's tag: letters, digits, '.', '_' and '-', starting with a letter or digit (up to 63)"
)

/** The workspace's secret values, resolved by this server for a capture; each reference must still be allowed. */
const mcpSecretValues = (
  client: MicroagentClient["Type"],
  context: ToolContext,
  tool: string,
  name: string
) =>
  Effect.gen(function*() {
    const { workspace } = yield* client.inspect({ name })
    if (workspace.secrets.length === 0) return undefined
    const refs = yield* context.host.checkRefs(workspace.secrets, { tool, workspace: name })
    return yield* resolveSecrets(refs)
  })

export const snapshotTools: ReadonlyArray<AnyTool> = [
  defineTool({
    name: "workspace.clone",
    title: "Clone a stopped workspace",
    description: "Copy a prepared, halted or stopped workspace (its disk, reflinked or sparse, and its "
      + "configuration) to a new prepared workspace with its own identity: hostname, addresses on named "
      + "networks. Read-write volumes and image files are not shared: they are left out and listed in "
      + "droppedMounts. Refused (conflict) while the source runs.",
    input: {
      source: described(Schema.String, "the workspace to copy"),
      target: described(Schema.String, "the new workspace's name")
    },
    output: WorkspaceCopy,
    kind: "mutate",
    sideEffects: ["creates a workspace record and a copy of the disk"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.clone({ source: args.source, target: args.target }))
  }),
  defineTool({
    name: "workspace.fork",
    title: "Fork a running workspace",
    description: "Make count (1-16) running children of a running workspace in one call: it is captured "
      + "once (paused for the capture, then running on) and each child resumes that capture under its own "
      + "name, hostname and machine-id, named name_prefix-1 … (default NAME-fork-1 …). All or nothing. "
      + "Its secrets are wiped before the capture and delivered again to it and to each child. Refused "
      + "for a workspace with attached disks or named networks, as snapshots are.",
    input: {
      ...workspaceName,
      count: optional(Schema.Number, "how many children (default 1, at most 16)"),
      name_prefix: optional(Schema.String, "children are named PREFIX-1 … PREFIX-N")
    },
    output: ForkResult,
    kind: "mutate",
    sideEffects: ["pauses the workspace for a moment", "creates and starts count workspaces"],
    cost: "host_compute_and_storage",
    run: (args, context) =>
      Effect.gen(function*() {
        const client = yield* MicroagentClient
        const secretValues = yield* mcpSecretValues(client, context, "workspace.fork", args.name)
        return yield* client.fork(
          defined({ name: args.name, count: args.count, namePrefix: args.name_prefix, secretValues })
        )
      })
  }),
  defineTool({
    name: "snapshot.create",
    title: "Snapshot a workspace",
    description: "Capture a workspace: memory, device state and disk of a running or paused one (a running "
      + "one is paused for the capture and resumed), the disk of a halted or stopped one. Published "
      + "atomically under a tag (default snap-<time>). A workspace's secrets are wiped from the guest "
      + "before the capture (the memory holds no value) and delivered again after; restores deliver them "
      + "too. Refused for a workspace with attached disks or named networks, unless forensic: a forensic "
      + "capture keeps everything as evidence and is never restored.",
    input: {
      ...workspaceName,
      tag: optional(tag, "the tag (default snap-<UTC time>, or forensic-<UTC time>)"),
      forensic: optional(
        Schema.Boolean,
        "keep everything as evidence (secrets in memory, attached disks, networks); restores refuse it"
      )
    },
    output: SnapshotManifest,
    kind: "mutate",
    sideEffects: ["pauses a running workspace for the capture", "writes the snapshot's files"],
    cost: "host_io",
    run: (args, context) =>
      Effect.gen(function*() {
        const client = yield* MicroagentClient
        const secretValues = args.forensic === true
          ? undefined
          : yield* mcpSecretValues(client, context, "snapshot.create", args.name)
        return yield* client.snapshotCreate(
          defined({ name: args.name, tag: args.tag, forensic: args.forensic, secretValues })
        )
      })
  }),
  defineTool({
    name: "snapshot.list",
    title: "List a workspace's snapshots",
    description: "The snapshots of a workspace, oldest first, with their manifests.",
    input: workspaceName,
    output: Schema.Struct({ snapshots: Schema.Array(SnapshotManifest) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) =>
      Effect.map(
        Effect.flatMap(MicroagentClient, (client) => client.snapshotList({ name: args.name })),
        (snapshots) => ({ snapshots })
      )
  }),
  defineTool({
    name: "snapshot.delete",
    title: "Delete a snapshot",
    description: "Remove one snapshot of a workspace and its files.",
    input: { ...workspaceName, tag },
    output: SnapshotDeleted,
    kind: "destructive",
    sideEffects: ["deletes the snapshot's files"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.snapshotDelete({ name: args.name, tag: args.tag })),
    preview: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.snapshotList({ name: args.name })).pipe(
        Effect.map((snapshots): PreviewResult => {
          const found = snapshots.find((s) => s.tag === args.tag)
          return found === undefined
            ? { preview: true, workspace: args.name, target: args.tag, actions: [] }
            : {
              preview: true,
              workspace: args.name,
              target: args.tag,
              actions: [
                `delete snapshot ${args.tag} of ${args.name} (${found.kind}, ${found.allocatedBytes} bytes on disk)`
              ]
            }
        }),
        Effect.catchTag("NotFound", (error) =>
          Effect.succeed<PreviewResult>({
            preview: true,
            workspace: args.name,
            target: args.tag,
            actions: [],
            wouldFail: toErrorBody(error)
          }))
      )
  }),
  defineTool({
    name: "templates.list",
    title: "List warm-start templates",
    description:
      "The saved template VMs a workspace's first start restores instead of booting (one per image, kernel and machine shape), each with whether its image and kernel are still there.",
    input: {},
    output: Schema.Struct({ templates: Schema.Array(TemplateEntry) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () =>
      Effect.map(
        Effect.flatMap(MicroagentClient, (client) => client.templateList()),
        (templates) => ({ templates })
      )
  }),
  defineTool({
    name: "templates.prune",
    title: "Prune warm-start templates",
    description:
      "Remove templates whose image or kernel is gone, or every template with all=true. Running workspaces keep working; the next first start builds a template again.",
    input: { all: optional(Schema.Boolean, "remove every template, not only stale ones") },
    output: TemplatesPruned,
    kind: "destructive",
    sideEffects: ["deletes template files"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.templatePrune(defined({ all: args.all }))),
    preview: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.templateList()).pipe(
        Effect.map((templates): PreviewResult => ({
          preview: true,
          actions: templates
            .filter((t) => args.all === true || t.stale !== undefined)
            .map((t) =>
              `remove template ${t.manifest.key} of ${t.manifest.imageRef} (${t.manifest.allocatedBytes} bytes on disk)`
            )
        }))
      )
  })
]
