/**
 * What decides whether a snapshot can be restored here: the `WORKSPACE:TAG` reference that
 * `create --from-snapshot` takes, and the checks of a manifest against the current host and target.
 * Pure, so every surface (CLI, RPC, MCP, library) refuses the same way with the same words.
 */
import { Either } from "effect"
import { Conflict, InvalidInput, Unsupported } from "./Errors.ts"
import type { SnapshotManifest } from "./Snapshot.ts"
import { tagPattern } from "./Snapshot.ts"

export interface SnapshotRef {
  readonly workspace: string
  readonly tag: string
}

/** Reads `WORKSPACE:TAG`; the tag alphabet has no colon, so the last colon splits. */
export const parseSnapshotRef = (text: string): Either.Either<SnapshotRef, InvalidInput> => {
  const at = text.lastIndexOf(":")
  const workspace = at < 0 ? "" : text.slice(0, at)
  const tag = at < 0 ? "" : text.slice(at + 1)
  if (workspace === "" || tag === "") {
    return Either.left(
      new InvalidInput({
        message: `"${text}" is not a snapshot reference`,
        remediation: "write it as WORKSPACE:TAG (see: microagent snapshot list WORKSPACE)"
      })
    )
  }
  if (!tagPattern.test(tag)) {
    return Either.left(
      new InvalidInput({
        message: `"${tag}" is not a snapshot tag (letters, digits, . _ -; up to 63)`,
        remediation: "list the workspace's snapshots: microagent snapshot list WORKSPACE"
      })
    )
  }
  return Either.right({ workspace, tag })
}

/** The host and target a restore would run on. */
export interface RestoreTarget {
  readonly backend: string
  /** sha256 of the kernel the target would boot; undefined when unknown. */
  readonly kernelSha256?: string | undefined
  readonly memoryMiB: number
}

/**
 * Why this snapshot cannot be restored onto this target, or nothing. A disk snapshot boots cold, so
 * only the backend must match; a memory snapshot resumes a running kernel, so the kernel and the
 * memory size must be exactly the captured ones.
 */
export const restoreRefusal = (
  manifest: SnapshotManifest,
  target: RestoreTarget
): Either.Either<void, Unsupported | Conflict> => {
  const name = `${manifest.workspace}:${manifest.tag}`
  if (manifest.backend !== target.backend) {
    return Either.left(
      new Unsupported({
        message:
          `snapshot ${name} was taken on the ${manifest.backend} backend, this host runs ${target.backend}`,
        remediation: `restore it on a host with the ${manifest.backend} backend`,
        backend: target.backend,
        feature: "restore across backends"
      })
    )
  }
  if (manifest.kind === "disk") return Either.void
  if (
    manifest.kernelSha256 !== undefined && target.kernelSha256 !== undefined
    && manifest.kernelSha256 !== target.kernelSha256
  ) {
    return Either.left(
      new Unsupported({
        message: `snapshot ${name} captured a guest running kernel sha256 ${
          manifest.kernelSha256.slice(0, 12)
        }…, this host would run ${target.kernelSha256.slice(0, 12)}…`,
        remediation:
          "restore it where that kernel is cached, or take a disk snapshot (halt first) to move the disk",
        backend: target.backend,
        feature: "memory restore across kernels"
      })
    )
  }
  if (manifest.resources.memoryMiB !== target.memoryMiB) {
    return Either.left(
      new Conflict({
        message:
          `snapshot ${name} holds ${manifest.resources.memoryMiB} MiB of guest memory, the target has ${target.memoryMiB} MiB`,
        remediation: `give the target ${manifest.resources.memoryMiB} MiB of memory (the captured size)`
      })
    )
  }
  if (!manifest.secretsPurged) {
    return Either.left(
      new Unsupported({
        message: `snapshot ${name} holds secret values in its memory`,
        remediation:
          "a capture whose secrets were not wiped (forensic) is not restorable; use another snapshot",
        backend: target.backend,
        feature: "restore of a forensic capture"
      })
    )
  }
  return Either.void
}
