/**
 * The workspace manifest: a copy of a workspace's record in its own directory
 * (`workspaces/NAME/workspace.json`, 0600), rewritten atomically (temporary file, fsync, rename) on every
 * write of the record. If `state.db` is lost or restored from an older backup, the manifests re-register
 * the workspaces whose disks are still there. The database stays the source of truth; a manifest is
 * validated with Schema when read and ignored when it does not decode.
 */
import { Effect, Either, Schema } from "effect"
import { randomBytes } from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Workspace } from "../../domain/Workspace.ts"

const manifestFileName = "workspace.json"

export const WorkspaceManifest = Schema.Struct({
  /** Bumped when the file's shape changes incompatibly. */
  format: Schema.Literal(1),
  workspace: Workspace
})
export type WorkspaceManifest = typeof WorkspaceManifest.Type

const ManifestJson = Schema.parseJson(WorkspaceManifest)
const encode = Schema.encodeSync(ManifestJson)
const decode = Schema.decodeUnknownEither(ManifestJson)

export const manifestPath = (workspaceDir: string) => NodePath.join(workspaceDir, manifestFileName)

/**
 * Writes the manifest into `workspaceDir` if that directory exists (a workspace being created gets its
 * directory only once its record is in; `create` writes the first manifest into the staging directory).
 */
const writeManifestSync = (workspaceDir: string, workspace: Workspace): void => {
  if (!NodeFs.existsSync(workspaceDir)) return
  const target = manifestPath(workspaceDir)
  const partial = `${target}.partial-${process.pid}-${randomBytes(4).toString("hex")}`
  const fd = NodeFs.openSync(partial, "wx", 0o600)
  try {
    NodeFs.writeSync(fd, `${encode({ format: 1, workspace })}\n`)
    NodeFs.fsyncSync(fd)
  } finally {
    NodeFs.closeSync(fd)
  }
  try {
    NodeFs.renameSync(partial, target)
  } catch (cause) {
    NodeFs.rmSync(partial, { force: true })
    throw cause
  }
}

/**
 * Keeps the manifest in step with the record. A failure to write it is logged, not raised: the
 * record is written already, and the next write of the record rewrites the manifest.
 */
export const writeManifest = (workspaceDir: string, workspace: Workspace) =>
  Effect.try(() => writeManifestSync(workspaceDir, workspace)).pipe(
    Effect.catchAll((error) =>
      Effect.logWarning(`cannot write the manifest of workspace ${workspace.name}`, error.error)
    )
  )

export const removeManifest = (workspaceDir: string) =>
  Effect.sync(() => NodeFs.rmSync(manifestPath(workspaceDir), { force: true }))

/** The manifest in `workspaceDir`: the record, or why it cannot be used. */
export const readManifest = (workspaceDir: string): Either.Either<Workspace, string> => {
  let text: string
  try {
    text = NodeFs.readFileSync(manifestPath(workspaceDir), "utf8")
  } catch (cause) {
    return Either.left((cause as { code?: string }).code === "ENOENT" ? "no manifest" : String(cause))
  }
  return Either.mapBoth(decode(text), {
    onLeft: (error) => `the manifest does not decode: ${error.message.split("\n")[0]}`,
    onRight: (manifest) => manifest.workspace
  })
}
