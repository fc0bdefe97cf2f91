/**
 * Files in and out of a stopped workspace's ext4 disk, on the host, without root and without mounting
 * (offline `cp`): the disk is repaired the way a boot would first, then paths are read, dumped and written.
 */
import { Context, Data, type Effect } from "effect"
import type { HostTree } from "./HostTrees.ts"

/** The disk tools failed, or are missing (then `remediation` names the package to install). */
export class DiskFilesFailed extends Data.TaggedError("DiskFilesFailed")<{
  readonly message: string
  readonly remediation?: string | undefined
}> {}

export interface DiskStat {
  readonly type: "file" | "directory" | "symlink" | "other"
  readonly mode: number
  readonly size: number
}

export interface DiskFilesShape {
  /** Repairs the filesystem of `image` the way a boot would (replays the journal a killed VM left). */
  readonly repair: (image: string) => Effect.Effect<void, DiskFilesFailed>
  /** What `path` is in `image`, or undefined when it does not exist. Does not follow a last symlink. */
  readonly stat: (image: string, path: string) => Effect.Effect<DiskStat | undefined, DiskFilesFailed>
  /**
   * Writes a host tree at `target` (its first entry lands there, the rest below it), each entry owned by
   * root with its host permission bits and mtime. `replace` removes the file or symlink at `target`
   * first; `workDir` is a private directory for the tools' scripts.
   */
  readonly writeTree: (
    image: string,
    tree: HostTree,
    target: string,
    options: { readonly replace: boolean; readonly workDir: string }
  ) => Effect.Effect<void, DiskFilesFailed>
  /** Copies one regular file out of `image` to `hostFile` (created, mode from the image). */
  readonly dumpFile: (image: string, path: string, hostFile: string) => Effect.Effect<void, DiskFilesFailed>
  /** Copies a directory tree out of `image` into `hostDir` (as `hostDir/<basename>`), modes kept. */
  readonly dumpTree: (image: string, path: string, hostDir: string) => Effect.Effect<void, DiskFilesFailed>
}

export class DiskFiles extends Context.Tag("microagent/DiskFiles")<DiskFiles, DiskFilesShape>() {}
