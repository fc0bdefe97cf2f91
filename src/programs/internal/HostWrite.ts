/**
 * Writing what comes out of a workspace onto the host, so that nothing lands outside the target the user
 * named: a file goes to a fresh temporary beside the target and is renamed over it (a symlink there is
 * replaced, never followed); a tree is extracted by the safe tar extractor (Stage: no absolute names, no
 * `..`, no path resolved through a symlink out of the staging root, devices and FIFOs never created)
 * into a staging directory beside the target, then renamed into place. Modes are kept without
 * set-id bits.
 */
import { Effect } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { Conflict, NotFound, Permanent } from "../../domain/Errors.ts"
import { HostTrees } from "../../services/HostTrees.ts"

/** `unsafeArchive`: whether the cause says a workspace's archive was unsafe or malformed (extraction only). */
const hostFailure =
  (what: string, unsafeArchive: (cause: unknown) => boolean = () => false) => (cause: unknown) =>
    cause instanceof Conflict || cause instanceof NotFound || cause instanceof Permanent
      ? cause
      : new Permanent({
        message: `${what}: ${cause instanceof Error ? cause.message : String(cause)}`,
        remediation: unsafeArchive(cause)
          ? "the workspace sent an unsafe or malformed tree; nothing was written to the target"
          : "check the host path and its permissions"
      })

/**
 * Where a copy out lands: inside `hostPath` when it is a directory (keeping the guest basename), else
 * `hostPath` itself, whose parent must exist. A tree is never merged into or written over something.
 */
export const hostDestination = (hostPath: string, guestBase: string, tree: boolean) =>
  Effect.try({
    try: () => {
      const st = NodeFs.statSync(hostPath, { throwIfNoEntry: false })
      const target = st?.isDirectory() ? NodePath.join(hostPath, guestBase) : hostPath
      const parent = NodeFs.statSync(NodePath.dirname(target), { throwIfNoEntry: false })
      if (!parent?.isDirectory()) {
        throw new NotFound({
          message: `host directory ${NodePath.dirname(target)} does not exist`,
          remediation: "create it first, or name an existing directory"
        })
      }
      const existing = NodeFs.lstatSync(target, { throwIfNoEntry: false })
      if (existing !== undefined && (tree || existing.isDirectory())) {
        throw new Conflict({
          message: `${target} already exists${existing.isDirectory() ? " and is a directory" : ""}`,
          remediation: "remove it, or name a new path"
        })
      }
      return target
    },
    catch: hostFailure(`cannot copy to ${hostPath}`)
  })

/** A sink for one file's bytes: a private temporary beside `target`, renamed over it on `commit`. */
const openHostFile = (target: string) =>
  Effect.try({
    try: () => {
      const temp = NodePath.join(
        NodePath.dirname(target),
        `.${NodePath.basename(target)}.ma-${process.pid}-${Date.now().toString(36)}`
      )
      const fd = NodeFs.openSync(
        temp,
        NodeFs.constants.O_WRONLY | NodeFs.constants.O_CREAT | NodeFs.constants.O_EXCL
          | NodeFs.constants.O_NOFOLLOW,
        0o600
      )
      let bytes = 0
      return {
        temp,
        write: (chunk: Uint8Array) => {
          let done = 0
          while (done < chunk.length) done += NodeFs.writeSync(fd, chunk, done, chunk.length - done)
          bytes += chunk.length
        },
        commit: (mode: number) => {
          NodeFs.fchmodSync(fd, mode & 0o777)
          NodeFs.closeSync(fd)
          NodeFs.renameSync(temp, target)
          return bytes
        },
        abort: () => {
          try {
            NodeFs.closeSync(fd)
          } catch {
            // Closed already by a commit that failed at the rename.
          }
          NodeFs.rmSync(temp, { force: true })
        }
      }
    },
    catch: hostFailure(`cannot write ${target}`)
  })

/** Writes a file: `fill` pushes the bytes; on any failure the temporary is removed and `target` untouched. */
export const writeHostFile = <E, R>(
  target: string,
  fill: (write: (chunk: Uint8Array) => void) => Effect.Effect<number, E, R>
) =>
  Effect.acquireUseRelease(
    openHostFile(target),
    (sink) =>
      Effect.flatMap(
        fill(sink.write),
        (mode) => Effect.try({ try: () => sink.commit(mode), catch: hostFailure(`cannot write ${target}`) })
      ),
    (sink, exit) => (exit._tag === "Failure" ? Effect.sync(sink.abort) : Effect.void)
  )

export interface TreeSink {
  readonly write: (chunk: Uint8Array) => void
}

/**
 * Extracts a tar stream whose top entry is `top` to `target`: `fill` pushes the archive's bytes. Entries
 * outside `top` are dropped with the staging directory. Returns what was written.
 */
export const extractHostTree = <E, R>(
  target: string,
  top: string,
  fill: (sink: TreeSink) => Effect.Effect<void, E, R>
) =>
  Effect.flatMap(HostTrees, (trees) =>
    Effect.acquireUseRelease(
      Effect.try({
        try: () =>
          NodeFs.mkdtempSync(NodePath.join(NodePath.dirname(target), `.${NodePath.basename(target)}.ma-`)),
        catch: hostFailure(`cannot create a staging directory beside ${target}`, trees.isUnsafeArchive)
      }),
      (staging) =>
        Effect.gen(function*() {
          const extraction = trees.extract(staging)
          yield* fill({ write: extraction.write })
          return yield* Effect.try({
            try: () => {
              const ledger = extraction.finish()
              const top_ = ledger.get(top)
              if (top_ === undefined || top_.type !== "directory") {
                throw new Permanent({
                  message: top_?.type === "symlink"
                    ? `${top} is a symlink in the workspace`
                    : `the workspace's archive has no directory ${top}`,
                  remediation: top_?.type === "symlink"
                    ? "copy the path it points to"
                    : "check that the guest path is a directory"
                })
              }
              NodeFs.renameSync(NodePath.join(staging, top), target)
              let entries = 0
              let bytes = 0
              const skipped: Array<string> = []
              // Exact modes once everything is in place: a read-only directory would have refused its children.
              const placed = [...ledger.entries()].filter(([rel]) => rel === top || rel.startsWith(`${top}/`))
              placed.sort((a, b) => b[0].length - a[0].length)
              for (const [rel, meta] of placed) {
                const path = NodePath.join(target, rel.slice(top.length))
                entries++
                if (meta.type === "file") {
                  bytes += meta.size
                  NodeFs.chmodSync(path, meta.perm & 0o777)
                } else if (meta.type === "directory") NodeFs.chmodSync(path, meta.perm & 0o777)
                else if (meta.type !== "symlink") skipped.push(`/${rel}`)
              }
              return { entries, bytes, skipped }
            },
            catch: hostFailure(`cannot extract to ${target}`, trees.isUnsafeArchive)
          })
        }).pipe(
          Effect.catchAllDefect((defect) =>
            Effect.fail(hostFailure(`cannot extract to ${target}`, trees.isUnsafeArchive)(defect))
          )
        ),
      (staging) => Effect.sync(() => NodeFs.rmSync(staging, { recursive: true, force: true }))
    ))
