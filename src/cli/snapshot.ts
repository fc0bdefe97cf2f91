/**
 * `microagent snapshot create|list|delete` (`ls` for list, `rm` for delete): thin clients of the
 * runtime, which owns the VMs being captured.
 */
import { Args, Command, Options } from "@effect/cli"
import { Effect } from "effect"
import type { SnapshotManifest } from "../domain/Snapshot.ts"
import { workspaceSecretValues } from "../rpc/CallerSecrets.ts"
import { MicroagentClient } from "../rpc/Client.ts"
import { withRuntime } from "./Layers.ts"
import { emit, table } from "./Output.ts"

const nameArg = Args.text({ name: "workspace" }).pipe(Args.withDescription("workspace name"))
const tagArg = Args.text({ name: "tag" }).pipe(Args.withDescription("snapshot tag"))

const mib = (bytes: number) => `${(bytes / (1024 * 1024)).toFixed(1)}`

const describeSnapshot = (m: SnapshotManifest) =>
  `${m.workspace}:${m.tag} (${m.kind}${m.forensic === true ? ", forensic" : ""}, ${
    mib(m.allocatedBytes)
  } MiB on disk${m.pausedMs === undefined ? "" : `, paused ${m.pausedMs} ms`})`

const create = Command.make(
  "create",
  {
    tag: Options.text("tag").pipe(
      Options.withDescription("the snapshot's tag (default snap-<UTC time>, forensic-<UTC time>)"),
      Options.optional
    ),
    forensic: Options.boolean("forensic").pipe(
      Options.withDescription("keep everything as evidence (secrets, disks, networks); never restorable")
    ),
    name: nameArg
  },
  ({ forensic, name, tag }) =>
    withRuntime(
      Effect.gen(function*() {
        const client = yield* MicroagentClient
        // Resolved here like a start's: the capture wipes them from the guest and delivers them again.
        const secretValues = forensic ? undefined : yield* workspaceSecretValues(client, name)
        return yield* client.snapshotCreate({
          name,
          ...(tag._tag === "Some" ? { tag: tag.value } : {}),
          ...(forensic ? { forensic: true } : {}),
          ...(secretValues === undefined ? {} : { secretValues })
        })
      })
    ).pipe(
      Effect.flatMap((manifest) => emit(manifest, describeSnapshot))
    )
).pipe(
  Command.withDescription(
    "capture a workspace: memory and disk of a running or paused one, the disk of a stopped one"
  )
)

const listHandler = ({ name }: { readonly name: string }) =>
  withRuntime(Effect.flatMap(MicroagentClient, (client) => client.snapshotList({ name }))).pipe(
    Effect.flatMap((snapshots) =>
      emit(snapshots, (all) =>
        table(
          ["TAG", "KIND", "CREATED", "ON_DISK_MIB", "DISK_MIB"],
          all.map((m) => [m.tag, m.kind, m.createdAt, mib(m.allocatedBytes), mib(m.diskBytes)])
        ))
    )
  )
const list = Command.make("list", { name: nameArg }, listHandler).pipe(
  Command.withDescription("list a workspace's snapshots (alias: ls)")
)
const ls = Command.make("ls", { name: nameArg }, listHandler).pipe(
  Command.withDescription("list a workspace's snapshots")
)

const deleteHandler = ({ name, tag }: { readonly name: string; readonly tag: string }) =>
  withRuntime(Effect.flatMap(MicroagentClient, (client) => client.snapshotDelete({ name, tag }))).pipe(
    Effect.flatMap((result) => emit(result, (r) => `deleted ${r.workspace}:${r.tag}`))
  )
const del = Command.make("delete", { name: nameArg, tag: tagArg }, deleteHandler).pipe(
  Command.withDescription("delete a snapshot and its files (alias: rm)")
)
const rm = Command.make("rm", { name: nameArg, tag: tagArg }, deleteHandler).pipe(
  Command.withDescription("delete a snapshot and its files")
)

export const snapshotCommand = Command.make("snapshot").pipe(
  Command.withDescription("capture, list and delete workspace snapshots (alias: snapshots)"),
  Command.withSubcommands([create, list, ls, del, rm])
)
