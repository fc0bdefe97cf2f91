/**
 * The RPC API: one procedure per lifecycle program, with the domain Schemas as payloads and results (the
 * operations' requests of domain/Requests.ts, as they are) and the classified `MicroagentError` as the
 * failure of every one. It is the whole program surface, so the same group serves host applications,
 * the MCP server and (later) the CLI talking to the runtime.
 */
import { Rpc, RpcGroup } from "@effect/rpc"
import { Schema } from "effect"
import { EgressReceipt, EgressRecord } from "../domain/Egress.ts"
import { MicroagentError } from "../domain/Errors.ts"
import { WorkspaceEvent } from "../domain/Event.ts"
import { ExecResult } from "../domain/Exec.ts"
import { ArtifactCopy, ArtifactList, CopyResult } from "../domain/Files.ts"
import { PerfBootPayload, PerfBootResult, PerfFootprintResult } from "../domain/Perf.ts"
import { RunPlan } from "../domain/Plan.ts"
import {
  ApplyRequest,
  Bytes,
  CloneRequest,
  CommitRequest,
  CpRequest,
  CreateFromSnapshotRequest,
  CreateRequest,
  DeleteRequest,
  ExecCommand,
  FollowRequest,
  ForkRequest,
  HaltRequest,
  KillRequest,
  PlanRequest,
  QuarantineRequest,
  ResultRequest,
  RunRequest,
  SnapshotCreateRequest,
  StartRequest,
  WaitRequest
} from "../domain/Requests.ts"
import { SnapshotDeleted, SnapshotManifest, WorkspaceCopy } from "../domain/Snapshot.ts"
import { EntrypointResult, ProfileName, Workspace } from "../domain/Workspace.ts"
import { ApplyResult } from "../programs/Apply.ts"
import { CommitResult } from "../programs/Commit.ts"
import { ForkResult } from "../programs/Fork.ts"
import { QuarantineResult } from "../programs/Quarantine.ts"
import { Network } from "../services/Networks.ts"
import { Volume } from "../services/Volumes.ts"
import { ConnectInputPayload, ConnectOutput, ConnectPayload, ConnectResizePayload } from "./ConnectSchemas.ts"
import { hostRpcs } from "./HostRpcs.ts"
import { usageRpcs } from "./UsageRpcs.ts"

const PositiveInt = Schema.Int.pipe(Schema.positive())

export const RunResult = Schema.Struct({
  workspace: Schema.String,
  kept: Schema.Boolean,
  result: ExecResult,
  receipt: Schema.optional(EgressReceipt)
})

/** A piece of streamed exec output; the last one is `Exit`. */
export const ExecOutput = Schema.Union(
  Schema.TaggedStruct("Stdout", { data: Bytes }),
  Schema.TaggedStruct("Stderr", { data: Bytes }),
  Schema.TaggedStruct("Exit", { result: ExecResult })
)
export type ExecOutput = typeof ExecOutput.Type

export const DeleteResult = Schema.Struct({ workspace: Schema.String, deleted: Schema.Boolean })

export const InspectResult = Schema.Struct({
  workspace: Workspace,
  lastEvent: Schema.optional(WorkspaceEvent)
})

export const Profile = Schema.Struct({ memoryMiB: Schema.Int, cpus: Schema.Int, sizeMiB: Schema.Int })

export const ProfilesResult = Schema.Struct({
  profiles: Schema.Record({ key: ProfileName, value: Profile })
})

const named = { name: Schema.String }

export const NetworkInspectResult = Schema.Struct({
  network: Network,
  members: Schema.Array(Schema.Struct({ workspace: Schema.String, ip: Schema.String, state: Schema.String }))
})

/** Drops undefined fields: the payloads' optional fields are exact and do not accept them. */
export const defined = <A extends Record<string, unknown>>(fields: A) =>
  Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined)) as {
    [K in keyof A]: Exclude<A[K], undefined>
  }

export class Rpcs extends RpcGroup.make(
  Rpc.make("version", { success: Schema.Struct({ version: Schema.String }) }),
  ...hostRpcs,
  ...usageRpcs,
  /** Create, boot, run one command, tear down (or keep, halted). */
  Rpc.make("run", { payload: RunRequest, success: RunResult, error: MicroagentError }),
  Rpc.make("create", { payload: CreateRequest, success: Workspace, error: MicroagentError }),
  /** The plan of a `run` or `create`, without pulling, booting or writing anything. */
  Rpc.make("plan", { payload: PlanRequest, success: RunPlan, error: MicroagentError }),
  /** Brings a workspace's record in line with a spec's fields, or refuses (conflict) and writes nothing. */
  Rpc.make("apply", { payload: ApplyRequest, success: ApplyResult, error: MicroagentError }),
  Rpc.make("start", {
    payload: StartRequest,
    success: Workspace,
    error: MicroagentError
  }),
  Rpc.make("exec", { payload: ExecCommand, success: ExecResult, error: MicroagentError }),
  /** Output as it comes; interrupting the stream stops the guest command. */
  Rpc.make("execStream", { payload: ExecCommand, success: ExecOutput, error: MicroagentError, stream: true }),
  Rpc.make("halt", {
    payload: HaltRequest,
    success: Workspace,
    error: MicroagentError
  }),
  Rpc.make("kill", {
    payload: KillRequest,
    success: Workspace,
    error: MicroagentError
  }),
  /** Freeze and thaw the vCPUs of a running workspace. */
  Rpc.make("pause", {
    payload: KillRequest,
    success: Workspace,
    error: MicroagentError
  }),
  Rpc.make("resume", {
    payload: KillRequest,
    success: Workspace,
    error: MicroagentError
  }),
  /** Fence, freeze, capture and stop a running or paused workspace into custody (Quarantine.ts). */
  Rpc.make("quarantine", {
    payload: QuarantineRequest,
    success: QuarantineResult,
    error: MicroagentError
  }),
  /** Memory, device state and disk of a running or paused workspace; the disk of a stopped one. */
  Rpc.make("snapshotCreate", {
    payload: SnapshotCreateRequest,
    success: SnapshotManifest,
    error: MicroagentError
  }),
  /**
   * A stopped workspace's root filesystem as an image of the store (one squashed layer, or with `diff`
   * the base's layers plus one of the changes), pushed afterwards with `push`.
   */
  Rpc.make("workspaceCommit", {
    payload: CommitRequest,
    success: CommitResult,
    error: MicroagentError
  }),
  /** N running children of a running workspace, each resumed from one memory capture (Fork.ts). */
  Rpc.make("fork", {
    payload: ForkRequest,
    success: ForkResult,
    error: MicroagentError
  }),
  /** A prepared, halted or stopped workspace copied to a new one with its own identity. */
  Rpc.make("clone", {
    payload: CloneRequest,
    success: WorkspaceCopy,
    error: MicroagentError
  }),
  /**
   * A new workspace whose disk is a snapshot's (`WORKSPACE:TAG`); from a memory snapshot its first
   * start resumes the captured VM under the new identity, from a disk snapshot it boots.
   */
  Rpc.make("createFromSnapshot", {
    payload: CreateFromSnapshotRequest,
    success: WorkspaceCopy,
    error: MicroagentError
  }),
  Rpc.make("snapshotList", {
    payload: named,
    success: Schema.Array(SnapshotManifest),
    error: MicroagentError
  }),
  Rpc.make("snapshotDelete", {
    payload: { ...named, tag: Schema.String },
    success: SnapshotDeleted,
    error: MicroagentError
  }),
  /** Idempotent: deleting what is not there answers `deleted: false`. */
  Rpc.make("delete", {
    payload: DeleteRequest,
    success: DeleteResult,
    error: MicroagentError
  }),
  Rpc.make("inspect", { payload: named, success: InspectResult, error: MicroagentError }),
  /** The entrypoint's result of the latest start that ran one; `NotFound` before any. */
  Rpc.make("result", {
    payload: ResultRequest,
    success: EntrypointResult,
    error: MicroagentError
  }),
  Rpc.make("list", {
    payload: { runningOnly: Schema.optional(Schema.Boolean) },
    success: Schema.Array(Workspace),
    error: MicroagentError
  }),
  Rpc.make("logs", {
    payload: FollowRequest,
    success: Bytes,
    error: MicroagentError,
    stream: true
  }),
  Rpc.make("events", {
    payload: FollowRequest,
    success: WorkspaceEvent,
    error: MicroagentError,
    stream: true
  }),
  /** The egress audit log, oldest first; with `follow`, new records until the workspace stops. */
  Rpc.make("egress", {
    payload: FollowRequest,
    success: EgressRecord,
    error: MicroagentError,
    stream: true
  }),
  /** Blocks until the workspace settles; running out of time is `Transient`. */
  Rpc.make("wait", {
    payload: WaitRequest,
    success: Workspace,
    error: MicroagentError
  }),
  Rpc.make("profiles", { success: ProfilesResult }),
  Rpc.make("volumeCreate", {
    payload: { ...named, sizeMiB: Schema.optional(PositiveInt) },
    success: Volume,
    error: MicroagentError
  }),
  Rpc.make("volumeList", { success: Schema.Array(Volume), error: MicroagentError }),
  Rpc.make("volumeInspect", { payload: named, success: Volume, error: MicroagentError }),
  /** Refused while a running workspace holds the volume, unless `force`. */
  Rpc.make("volumeRemove", {
    payload: { ...named, force: Schema.optional(Schema.Boolean) },
    success: Schema.Struct({ volume: Schema.String, removed: Schema.Boolean }),
    error: MicroagentError
  }),
  /** Offline: refused while a running workspace holds the volume. */
  Rpc.make("volumeResize", {
    payload: { ...named, sizeMiB: PositiveInt },
    success: Volume,
    error: MicroagentError
  }),
  Rpc.make("networkCreate", {
    payload: { ...named, subnet: Schema.optional(Schema.String) },
    success: Network,
    error: MicroagentError
  }),
  Rpc.make("networkList", { success: Schema.Array(Network), error: MicroagentError }),
  Rpc.make("networkInspect", { payload: named, success: NetworkInspectResult, error: MicroagentError }),
  /** Refused while the network has members; `force` detaches stopped members first. */
  Rpc.make("networkRemove", {
    payload: { ...named, force: Schema.optional(Schema.Boolean) },
    success: Schema.Struct({ network: Schema.String, removed: Schema.Boolean }),
    error: MicroagentError
  }),
  /**
   * Copies between a host path and a workspace path, either way; the server reads or writes the host
   * path itself (it runs as the same user), so no file bytes cross the socket.
   */
  Rpc.make("cp", {
    payload: CpRequest,
    success: CopyResult,
    error: MicroagentError
  }),
  Rpc.make("artifactsList", { payload: named, success: ArtifactList, error: MicroagentError }),
  Rpc.make("artifactsGet", {
    payload: { ...named, artifact: Schema.String, hostPath: Schema.String },
    success: ArtifactCopy,
    error: MicroagentError
  }),
  Rpc.make("artifactsRemove", {
    payload: named,
    success: Schema.Struct({ workspace: Schema.String, removed: Schema.Boolean }),
    error: MicroagentError
  }),
  /** An interactive session; its input and resizes go by `connectInput` / `connectResize`. */
  Rpc.make("connect", {
    payload: ConnectPayload,
    success: ConnectOutput,
    error: MicroagentError,
    stream: true
  }),
  Rpc.make("connectInput", { payload: ConnectInputPayload, error: MicroagentError }),
  Rpc.make("connectResize", { payload: ConnectResizePayload, error: MicroagentError }),
  /** Boots disposable workspaces and times each boot's phases. */
  Rpc.make("perfBoot", { payload: PerfBootPayload, success: PerfBootResult, error: MicroagentError }),
  /** Host memory of the runtime and of a workspace's (or every running one's) VMM; rootfs disk use. */
  Rpc.make("perfFootprint", {
    payload: { name: Schema.optional(Schema.String) },
    success: PerfFootprintResult,
    error: MicroagentError
  })
) {}
