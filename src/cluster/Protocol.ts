/**
 * What runners of a cluster say to each other and to clients: the `MicroagentHost` entity, one per
 * runner, whose procedures are the workspace procedures of the RPC API (`Rpcs`, unchanged) plus file
 * transfer by value (`cpIn`, `cpOut`, `artifactsOut`: the caller's files are not on the runner's disk) and the runner's
 * status. Each runner serves the entity whose id is its own runner id, in a shard group of its own
 * (`host-<id>`), so the cluster's sharding routes a message to the one host that holds the workspace's
 * VM and disk; the choice of that host for a new workspace is made by placement (Placement.ts).
 */
import { ClusterSchema, Entity } from "@effect/cluster"
import { Rpc, RpcGroup } from "@effect/rpc"
import { Schema } from "effect"
import { isMicroagentError, MicroagentError, Transient } from "../domain/Errors.ts"
import { ArtifactCopy, CopyResult } from "../domain/Files.ts"
import { Bytes } from "../domain/Requests.ts"
import type { MicroagentRpcs } from "../rpc/Client.ts"
import { Rpcs } from "../rpc/Rpcs.ts"

/** A runner id: also its entity id and the suffix of its shard group. */
export const RunnerId = Schema.String.pipe(
  Schema.pattern(/^[a-z0-9][a-z0-9.-]{0,62}$/),
  Schema.annotations({ description: "lower-case letters, digits, dots and dashes, up to 63" })
)

export const hostGroup = (runnerId: string) => `host-${runnerId}`

/**
 * The procedures of `Rpcs` a workspace's host serves through the cluster, by the workspace's name (a
 * `connect` session's input and resizes go where its `connect` went).
 */
export const routedTags = [
  "run",
  "create",
  "start",
  "exec",
  "execStream",
  "halt",
  "kill",
  "delete",
  "inspect",
  "list",
  "logs",
  "events",
  "wait",
  "result",
  "pause",
  "resume",
  "connect",
  "connectInput",
  "connectResize",
  "quarantine",
  "snapshotCreate",
  "snapshotList",
  "snapshotDelete",
  "workspaceCommit",
  "egress",
  "artifactsList",
  "artifactsRemove",
  "clone",
  "createFromSnapshot",
  "fork"
] as const satisfies ReadonlyArray<MicroagentRpcs["_tag"]>
export type RoutedTag = (typeof routedTags)[number]

/**
 * The procedures of `Rpcs` a client sends to every live runner: an image pulled through the cluster is
 * in the store of whichever runner placement later picks (placement prefers runners that hold it).
 */
export const everywhereTags = ["imagePull"] as const satisfies ReadonlyArray<MicroagentRpcs["_tag"]>
export type EverywhereTag = (typeof everywhereTags)[number]

export type RoutedRpcs = Extract<MicroagentRpcs, { readonly _tag: RoutedTag | EverywhereTag }>

const routedGroup = RpcGroup.make(
  ...[...routedTags, ...everywhereTags].map((tag) => Rpcs.requests.get(tag)!)
) as unknown as RpcGroup.RpcGroup<RoutedRpcs>

/** Resources in use or declared: memory in MiB, vCPUs, workspaces. */
export const Resources = Schema.Struct({
  memoryMiB: Schema.Number,
  cpus: Schema.Number,
  workspaces: Schema.Number
})
export type Resources = typeof Resources.Type

export const RunnerStatus = Schema.Struct({
  id: Schema.String,
  capacity: Resources,
  load: Resources,
  /** References of the images in the runner's store (tags and digests). */
  images: Schema.Array(Schema.String)
})
export type RunnerStatus = typeof RunnerStatus.Type

/** At most this much travels in one `cpIn` / `cpOut` (a tar of the file or directory). */
export const maxTransferBytes = 256 * 1024 * 1024

export class HostRpcs extends routedGroup.add(
  Rpc.make("cpIn", {
    payload: { name: Schema.String, guestPath: Schema.String, tar: Bytes },
    success: CopyResult,
    error: MicroagentError
  }),
  Rpc.make("cpOut", {
    payload: { name: Schema.String, guestPath: Schema.String },
    success: Schema.Struct({ result: CopyResult, tar: Bytes }),
    error: MicroagentError
  }),
  /** `artifacts get` by value: the declared output, as a tar the client unpacks where it was asked. */
  Rpc.make("artifactsOut", {
    payload: { name: Schema.String, artifact: Schema.String },
    success: Schema.Struct({ result: ArtifactCopy, tar: Bytes }),
    error: MicroagentError
  }),
  Rpc.make("status", { success: RunnerStatus, error: MicroagentError })
) {}

export const MicroagentHost = Entity.fromRpcGroup("MicroagentHost", HostRpcs).annotate(
  ClusterSchema.ShardGroup,
  (entityId) => hostGroup(entityId)
)

/**
 * A failure as the cluster reports it: a `MicroagentError` as it is; anything else (a transport, a
 * mailbox, the cluster's storage) as `Transient`, after `what`.
 */
export const classified = (what: string, remediation: string) => (error: unknown): MicroagentError =>
  isMicroagentError(error)
    ? error
    : new Transient({
      message: `${what}: ${
        String((error as { message?: unknown })?.message ?? (error as { _tag?: unknown })?._tag ?? error)
      }`,
      remediation,
      retryAfterMs: 1000
    })
