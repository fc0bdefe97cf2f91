/**
 * A workspace snapshot: its manifest (what was captured and from what), shared by the CLI, RPC and MCP.
 */
import { Schema } from "effect"
import { Backend, Mount, NetworkMode, PublishedPort, Resources, Workspace } from "./Workspace.ts"

/** Tags name a snapshot within its workspace (and its directory). */
export const tagPattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/

export const SnapshotTag = Schema.String.pipe(
  Schema.filter(
    (s) => tagPattern.test(s) || `"${s}" is not a snapshot tag (letters, digits, . _ -; up to 63)`,
    {
      identifier: "SnapshotTag"
    }
  )
)

/** `memory`: device state, memory and disk of a live VM; `disk`: the disk of a stopped one. */
export const SnapshotKind = Schema.Literal("memory", "disk")
export type SnapshotKind = typeof SnapshotKind.Type

export class SnapshotManifest extends Schema.Class<SnapshotManifest>("SnapshotManifest")({
  formatVersion: Schema.Literal(1),
  workspace: Schema.String,
  tag: SnapshotTag,
  kind: SnapshotKind,
  createdAt: Schema.String,
  /** The state the workspace was in when captured. */
  sourceState: Schema.String,
  backend: Backend,
  image: Schema.Struct({ ref: Schema.String, digest: Schema.optional(Schema.String) }),
  /** The kernel the VM ran; a restore on another kernel is refused. */
  kernelSha256: Schema.optional(Schema.String),
  initrdSha256: Schema.optional(Schema.String),
  resources: Resources,
  hostname: Schema.String,
  network: NetworkMode,
  ports: Schema.Array(PublishedPort),
  /** True when no secret value was in the guest's memory at capture (none delivered, or purged). */
  secretsPurged: Schema.Boolean,
  /** Names of the secrets the workspace references (never values); a restore delivers them again. */
  secretNames: Schema.Array(Schema.String),
  /** Files of the snapshot, relative to its directory. */
  files: Schema.Struct({
    disk: Schema.String,
    state: Schema.optional(Schema.String),
    /** The guest's RAM as a sparse file, mapped copy-on-write by restores (else it is in `state`). */
    memory: Schema.optional(Schema.String)
  }),
  /** Bytes the snapshot's files occupy on the host (sparse: zero blocks are not stored). */
  allocatedBytes: Schema.Number,
  /** Apparent size of the disk copy. */
  diskBytes: Schema.Number,
  stateBytes: Schema.optional(Schema.Number),
  /** Apparent size of the memory file (the guest's RAM size). */
  memoryBytes: Schema.optional(Schema.Number),
  /** Milliseconds the VM was held paused for the capture (memory snapshots). */
  pausedMs: Schema.optional(Schema.Number),
  /** Kept as evidence (secrets and all); restores refuse it. */
  forensic: Schema.optional(Schema.Boolean),
  /**
   * The capture of a fork under way, made by this process: the fork deletes it when it ends, and the
   * runtime and `gc` delete one whose process died (Gc.ts `abandonedForks`).
   */
  forkedBy: Schema.optional(Schema.Struct({ pid: Schema.Int, startTime: Schema.String }))
}) {}

export class SnapshotDeleted extends Schema.Class<SnapshotDeleted>("SnapshotDeleted")({
  workspace: Schema.String,
  tag: Schema.String,
  deleted: Schema.Boolean
}) {}

/**
 * A workspace made from another (`clone`) or from a snapshot (`create --from-snapshot`): a new record
 * with its own identity (name, hostname, addresses) over a copy of the disk.
 */
export class WorkspaceCopy extends Schema.Class<WorkspaceCopy>("WorkspaceCopy")({
  workspace: Workspace,
  /** The workspace it was copied from. */
  source: Schema.String,
  /** The snapshot tag whose disk it got; absent for a clone. */
  snapshot: Schema.optional(Schema.String),
  /**
   * Disks of the source that were not carried over: read-write volumes and image files, which two
   * workspaces must not share.
   */
  droppedMounts: Schema.Array(Mount),
  /**
   * What the copy's first start does: `boot`, a cold boot from the copied disk; `resume`, the captured
   * VM of a memory snapshot resumed with this workspace's identity.
   */
  firstStart: Schema.Literal("boot", "resume")
}) {}
