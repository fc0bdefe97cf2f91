/**
 * New workspaces from existing disks: `clone SRC DST` copies a stopped workspace, and
 * `create NAME --from-snapshot W:T` takes a snapshot's disk. Either way the copy is a new record with the
 * source's configuration and its own identity (name, hostname, named-network addresses and MACs), in
 * state `prepared`. Its first start boots cold from the copied disk, except for a copy of a memory
 * snapshot, which carries the captured VM state too and resumes it (see Start.ts: `pendingResume`).
 * Read-write volumes and image files are not shared between two workspaces: they
 * are left out of the copy and reported.
 *
 * The disk is copied (reflink or sparse) into a staging directory that is renamed into place once the
 * record exists, as `create` does: a failure leaves neither a record nor a directory behind. A copy of
 * a snapshot's disk shares it copy-on-write instead where the host allows (internal/DiskOverlay.ts).
 */
import { DateTime, Effect, Either } from "effect"
import { randomBytes } from "node:crypto"
import * as NodePath from "node:path"
import { copyAddressing, copyIndexOf } from "../domain/Addressing.ts"
import { Conflict, InvalidInput } from "../domain/Errors.ts"
import { freshHostPorts } from "../domain/Publish.ts"
import { WorkspaceCopy } from "../domain/Snapshot.ts"
import { parseSnapshotRef, restoreRefusal } from "../domain/SnapshotRestore.ts"
import { type Mount, nameProblem, Workspace, type WorkspaceName } from "../domain/Workspace.ts"
import { Home } from "../services/Home.ts"
import { Hypervisor } from "../services/Hypervisor.ts"
import { Processes } from "../services/Processes.ts"
import { StateStore } from "../services/StateStore.ts"
import { hostnameFor, publishWorkspace } from "./Create.ts"
import { copyState, removePath, resumeStateFile } from "./internal/DiskCopy.ts"
import { copyDiskFlat, shareDisk } from "./internal/DiskOverlay.ts"
import { reconcile, requireBackend } from "./internal/Reconcile.ts"
import { stagingName } from "./internal/Staging.ts"
import { loadSnapshot } from "./Snapshot.ts"

/** Disks two workspaces must not both write: read-write volumes and image files. Bundles are per start. */
const shared = (mount: Mount) => !mount.readOnly && mount.kind !== "bundle"

const checkName = (name: string) => {
  const problem = nameProblem(name)
  return problem === undefined ? Effect.void : Effect.fail(
    new InvalidInput({
      message: `invalid workspace name: ${problem}`,
      remediation:
        "names are 1-63 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"
    })
  )
}

/** A memory snapshot whose VM the copy resumes on its first start. */
interface Resumable {
  readonly state: string
  readonly pending: NonNullable<Workspace["pendingResume"]>
  /** Which copy this is, for its address (a fork's child number, else drawn from its name). */
  readonly index: number
}

/** Records `name` as a copy of `source` over a copy of `disk`; see the module comment. */
const copyWorkspace = (
  source: Workspace,
  name: string,
  disk: string,
  snapshot: string | undefined,
  resumable?: Resumable,
  options: {
    readonly freshPorts?: boolean
    readonly forkedBy?: Workspace["forkedBy"]
  } = {}
) =>
  Effect.gen(function*() {
    const home = yield* Home
    const store = yield* StateStore
    const taken = yield* store.find(name)
    if (taken._tag === "Some") {
      return yield* new Conflict({
        message: `workspace ${name} already exists`,
        remediation: "pick another name, or delete it first"
      })
    }
    const workspaceDir = home.workspaceDir(name)
    const staging = yield* home.ensureDir(
      NodePath.join(home.workspaces, stagingName((yield* Processes).self, randomBytes(6).toString("hex")))
    )
    return yield* Effect.gen(function*() {
      // A snapshot's disk is never written again: the copy shares it copy-on-write where it can. A
      // stopped workspace's disk is its own, so a clone of it is a copy of its content.
      yield* (snapshot === undefined
        ? copyDiskFlat(disk, NodePath.join(staging, "rootfs"))
        : shareDisk(disk, NodePath.join(staging, "rootfs")))
      if (resumable !== undefined) yield* copyState(resumable.state, NodePath.join(staging, resumeStateFile))
      const now = yield* DateTime.now
      const dropped = source.mounts.filter(shared)
      // A fork's children run beside their parent: each publishes on host ports of its own.
      const ports = options.freshPorts === true && source.ports.length > 0
        ? yield* freshHostPorts(source.ports)
        : source.ports
      const {
        expiresAt: _lease,
        launched: _launched,
        pendingResume: _pending,
        owner: _owner,
        heldBy: _heldBy,
        forkedBy: _forkedBy,
        result: _result,
        sessionId: _session,
        vm: _vm,
        ...config
      } = source
      const workspace = new Workspace({
        ...config,
        name: name as WorkspaceName,
        state: "prepared",
        hostname: hostnameFor(name),
        mounts: source.mounts.filter((m) => !shared(m)),
        ports,
        ephemeral: false,
        ...(options.forkedBy === undefined ? {} : { forkedBy: options.forkedBy }),
        ...(resumable === undefined ? {} : { pendingResume: resumable.pending }),
        // A resumed copy takes over its source's guest: on QEMU's network it gets an address of its
        // own, which its first start's FRESHEN gives the guest with its MAC.
        ...(resumable === undefined || config.network !== "user"
          ? {}
          : { addressing: copyAddressing(config.addressing, resumable.index) }),
        rootfsPath: NodePath.join(workspaceDir, "rootfs"),
        runtimeDir: home.runtimeDir(name),
        createdAt: now,
        // Another workspace's disk (or a snapshot's): never a template's.
        diskFromImage: undefined,
        updatedAt: now
      })
      // New addresses (and MACs) on the source's named networks.
      yield* publishWorkspace(workspace, staging, workspaceDir)
      yield* store.appendEvent(name, {
        type: "snapshot",
        detail: snapshot === undefined
          ? `cloned from ${source.name}`
          : `created from snapshot ${source.name}:${snapshot}`
      }).pipe(Effect.ignore)
      return new WorkspaceCopy({
        workspace,
        source: source.name,
        ...(snapshot === undefined ? {} : { snapshot }),
        droppedMounts: dropped,
        firstStart: resumable === undefined ? "boot" : "resume"
      })
    }).pipe(Effect.ensuring(removePath(staging)))
  })

/** `clone SOURCE TARGET`: a prepared, halted or stopped workspace copied to a new one. */
export const clone = Effect.fn("clone")(function*(source: string, target: string) {
  yield* checkName(target)
  const store = yield* StateStore
  const original = yield* store.get(source).pipe(Effect.flatMap(reconcile))
  yield* requireBackend(original)
  if (!(original.state === "prepared" || original.state === "halted" || original.state === "stopped")) {
    return yield* new Conflict({
      message: `cannot clone workspace ${source} while it is ${original.state}: its disk is in use`,
      remediation:
        `halt it first (microagent halt ${source}), or snapshot it and create from the snapshot (microagent snapshot create ${source}; microagent create ${target} --from-snapshot ${source}:TAG)`
    })
  }
  return yield* copyWorkspace(original, target, original.rootfsPath, undefined)
})

/**
 * `create NAME --from-snapshot W:T`: a new workspace whose disk is the snapshot's; from a memory
 * snapshot its first start resumes the captured VM, from a disk snapshot it boots.
 */
export const createFromSnapshot = Effect.fn("createFromSnapshot")(function*(
  name: string,
  reference: string,
  options: {
    /** Which copy this is, for its own address (a fork's child number; default: drawn from the name). */
    readonly copyIndex?: number | undefined
    /** Publish the source's guest ports on host ports picked free now (a fork's children). */
    readonly freshPorts?: boolean | undefined
    /** A fork's child: the fork's process, recorded until the fork ends (see `Workspace.forkedBy`). */
    readonly forkedBy?: { readonly pid: number; readonly startTime: string } | undefined
  } = {}
) {
  yield* checkName(name)
  const ref = yield* Either.match(parseSnapshotRef(reference), {
    onLeft: (error) => Effect.fail(error),
    onRight: (value) => Effect.succeed(value)
  })
  const store = yield* StateStore
  const hypervisor = yield* Hypervisor
  const source = yield* store.get(ref.workspace)
  yield* requireBackend(source)
  const snapshot = yield* loadSnapshot(ref.workspace, ref.tag)
  // Only the backend is checked here; a resume's kernel and size are checked by the start that does it.
  const refusal = restoreRefusal({ ...snapshot.manifest, kind: "disk" }, {
    backend: hypervisor.backend,
    memoryMiB: snapshot.manifest.resources.memoryMiB
  })
  if (Either.isLeft(refusal)) return yield* refusal.left
  const { manifest } = snapshot
  // A memory snapshot is resumed by the copy's first start when nothing it holds would be wrong in
  // the copy: no attached disks or named networks (those are refused at capture, but the record may
  // have changed since), and no secret values left in the captured memory (its secrets were wiped
  // before the capture; the copy's starts deliver them again). Otherwise the copy boots cold.
  const resumable = manifest.kind === "memory" && snapshot.state !== undefined
      && source.mounts.length === 0 && source.networks.length === 0 && manifest.secretsPurged
    ? {
      state: snapshot.state,
      index: options.copyIndex ?? copyIndexOf(name),
      pending: {
        snapshot: `${ref.workspace}:${ref.tag}`,
        hostname: manifest.hostname,
        resources: manifest.resources,
        ...(manifest.kernelSha256 === undefined ? {} : { kernelSha256: manifest.kernelSha256 })
      }
    }
    : undefined
  return yield* copyWorkspace(source, name, snapshot.disk, ref.tag, resumable, {
    freshPorts: options.freshPorts === true,
    forkedBy: options.forkedBy === undefined
      ? undefined
      : { ...options.forkedBy, snapshot: `${ref.workspace}:${ref.tag}` }
  })
})
