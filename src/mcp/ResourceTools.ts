/**
 * MCP tools for the resources workspaces use: named networks and named volumes. Thin calls into the
 * RPC API, like the workspace tools; deleting either can be previewed.
 */
import { Effect, Schema } from "effect"
import { Conflict, type MicroagentError, toErrorBody } from "../domain/Errors.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { defined, NetworkInspectResult } from "../rpc/Rpcs.ts"
import { Network } from "../services/Networks.ts"
import { Volume } from "../services/Volumes.ts"
import { type AnyTool, defineTool, described, optional, type PreviewResult } from "./Tool.ts"

const networkName = { name: described(Schema.String, "the network's name") }
const volumeName = {
  name: described(
    Schema.String,
    "the volume's name: lowercase letters, digits and '-', starting with a letter or digit"
  )
}
const sizeMiB = Schema.Int.pipe(Schema.between(1, 16 * 1024 * 1024))

/** A preview that found nothing to act on, or a reason the call would fail. */
const refused = (target: string, error: MicroagentError): PreviewResult => ({
  preview: true,
  target,
  actions: [],
  wouldFail: toErrorBody(error)
})

export const resourceTools: ReadonlyArray<AnyTool> = [
  defineTool({
    name: "network.create",
    title: "Create a named network",
    description:
      "A network workspaces join with `networks: [name]` at create or run: a bridge in a namespace "
      + "of its own, a stable IPv4 address per member, members reachable by workspace name.",
    input: {
      ...networkName,
      subnet: optional(Schema.String, "IPv4 subnet, /16 to /29 (default: the next free /24 of 10.89.0.0/16)")
    },
    output: Network,
    kind: "mutate",
    sideEffects: ["records a network (its bridge appears when the first member starts)"],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.networkCreate(defined({ name: args.name, subnet: args.subnet }))
      )
  }),
  defineTool({
    name: "network.list",
    title: "List networks",
    description: "Every named network with its subnet and members.",
    input: {},
    output: Schema.Struct({ networks: Schema.Array(Network) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () =>
      Effect.map(
        Effect.flatMap(MicroagentClient, (client) => client.networkList()),
        (networks) => ({ networks })
      )
  }),
  defineTool({
    name: "network.inspect",
    title: "Inspect a network",
    description: "A named network, its members, their addresses and states.",
    input: networkName,
    output: NetworkInspectResult,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) => Effect.flatMap(MicroagentClient, (client) => client.networkInspect({ name: args.name }))
  }),
  defineTool({
    name: "network.delete",
    title: "Delete a network",
    description: "Remove a named network. Refused while it has members; force: true detaches stopped members "
      + "first (a running member still refuses).",
    input: { ...networkName, force: optional(Schema.Boolean, "detach stopped members first") },
    output: Schema.Struct({ network: Schema.String, removed: Schema.Boolean }),
    kind: "destructive",
    sideEffects: ["removes the network record", "detaches stopped members with force"],
    cost: "metadata",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.networkRemove(defined({ name: args.name, force: args.force }))
      ),
    preview: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.networkInspect({ name: args.name })).pipe(
        Effect.map((report): PreviewResult => {
          const running = report.members.filter((m) => m.state === "running" || m.state === "starting")
          if (running.length > 0 || (report.members.length > 0 && args.force !== true)) {
            return refused(
              args.name,
              new Conflict({
                message: `network ${args.name} has members: ${
                  report.members.map((m) => m.workspace).join(", ")
                }`,
                remediation: running.length > 0
                  ? "halt or delete its running members first"
                  : "pass force: true to detach its stopped members"
              })
            )
          }
          return {
            preview: true,
            target: args.name,
            actions: [
              ...report.members.map((m) => `detach ${m.workspace} (${m.state}) from ${args.name}`),
              `remove network ${args.name} (${report.network.subnet})`
            ]
          }
        }),
        Effect.catchTag("NotFound", (error) => Effect.succeed(refused(args.name, error)))
      )
  }),
  defineTool({
    name: "volume.create",
    title: "Create a named volume",
    description: 'An empty ext4 disk that outlives workspaces; attach it with `volumes: ["name:/path"]` at '
      + "create or run (`:ro` for read-only).",
    input: { ...volumeName, size_mib: optional(sizeMiB, "size in MiB (default 1024)") },
    output: Volume,
    kind: "mutate",
    sideEffects: ["creates an ext4 file in the state directory"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.volumeCreate(defined({ name: args.name, sizeMiB: args.size_mib }))
      )
  }),
  defineTool({
    name: "volume.list",
    title: "List volumes",
    description: "Every named volume, its size, and the workspaces using it.",
    input: {},
    output: Schema.Struct({ volumes: Schema.Array(Volume) }),
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: () =>
      Effect.map(
        Effect.flatMap(MicroagentClient, (client) => client.volumeList()),
        (volumes) => ({ volumes })
      )
  }),
  defineTool({
    name: "volume.inspect",
    title: "Inspect a volume",
    description: "A named volume: size, path, its read-write holder and read-only readers.",
    input: volumeName,
    output: Volume,
    kind: "read",
    sideEffects: [],
    cost: "metadata",
    run: (args) => Effect.flatMap(MicroagentClient, (client) => client.volumeInspect({ name: args.name }))
  }),
  defineTool({
    name: "volume.resize",
    title: "Resize a volume",
    description: "Offline (refused while a running workspace uses it): grows the filesystem, or shrinks it "
      + "when the content fits.",
    input: { ...volumeName, size_mib: described(sizeMiB, "the new size in MiB") },
    output: Volume,
    kind: "mutate",
    sideEffects: ["resizes the volume's file and filesystem"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.volumeResize({ name: args.name, sizeMiB: args.size_mib })
      )
  }),
  defineTool({
    name: "volume.delete",
    title: "Delete a volume",
    description: "Remove a named volume and its data. Refused while a running workspace uses it, unless "
      + "force: true.",
    input: {
      ...volumeName,
      force: optional(Schema.Boolean, "remove it even from under a running workspace")
    },
    output: Schema.Struct({ volume: Schema.String, removed: Schema.Boolean }),
    kind: "destructive",
    sideEffects: ["deletes the volume's data"],
    cost: "host_io",
    run: (args) =>
      Effect.flatMap(
        MicroagentClient,
        (client) => client.volumeRemove(defined({ name: args.name, force: args.force }))
      ),
    preview: (args) =>
      Effect.flatMap(MicroagentClient, (client) => client.volumeInspect({ name: args.name })).pipe(
        Effect.map((volume): PreviewResult => {
          const users = [...(volume.attachedTo === undefined ? [] : [volume.attachedTo]), ...volume.readers]
          if (users.length > 0 && args.force !== true) {
            return refused(
              args.name,
              new Conflict({
                message: `volume ${args.name} is in use by ${users.join(", ")}`,
                remediation: "halt the workspaces using it, or pass force: true"
              })
            )
          }
          return {
            preview: true,
            target: args.name,
            actions: [`delete volume ${args.name} and its ${volume.sizeMiB} MiB of data (${volume.path})`]
          }
        }),
        Effect.catchTag("NotFound", (error) => Effect.succeed(refused(args.name, error)))
      )
  })
]
