/**
 * Trees of files on the host as tar streams, both ways: a host path walked into archive entries and
 * written as tar (copies into workspaces, collected outputs), and a tar stream from a workspace extracted
 * safely into a staging directory (no absolute names, no `..`, nothing resolved through a symlink out of
 * the staging root, devices and FIFOs never created).
 */
import { Context } from "effect"

export interface HostEntry {
  /** The entry's name in the archive, relative (`top`, `top/sub/file`). */
  readonly name: string
  readonly type: "file" | "directory" | "symlink"
  /** The host path to read the data (files) from. */
  readonly source: string
  /** Permission and special bits (07777). */
  readonly mode: number
  readonly size: number
  readonly mtime: number
  readonly linkname: string
}

export interface HostTree {
  readonly entries: ReadonlyArray<HostEntry>
  /** Host paths left out (sockets, FIFOs, devices). */
  readonly skipped: ReadonlyArray<string>
}

/** One extracted entry: its type, its size (files) and its permission bits (07777). */
export interface ExtractedEntry {
  readonly type: "file" | "directory" | "symlink" | "char" | "block" | "fifo"
  readonly size: number
  readonly perm: number
}

/** A tar stream being extracted: `write` its bytes in order, then `finish`. Both throw on an unsafe or malformed archive. */
export interface TarExtraction {
  readonly write: (chunk: Uint8Array) => void
  /** Ends the archive; the entries written, by path relative to the staging directory. */
  readonly finish: () => ReadonlyMap<string, ExtractedEntry>
}

export interface HostTreesShape {
  /**
   * Lists a host path as archive entries under `name`. The top is followed if it is a symlink (as `cp`
   * follows the path it is given); everything below is taken as it is, symlinks as symlinks. Throws
   * when the path cannot be read.
   */
  readonly walk: (source: string, name: string) => HostTree
  /** The tar stream of a tree (every entry owned by root; pax records for what ustar cannot hold). */
  readonly tar: (tree: HostTree) => AsyncIterable<Uint8Array>
  /** Extracts a tar stream into the directory `staging`, which must exist and be empty. */
  readonly extract: (staging: string) => TarExtraction
  /** Whether `cause` (thrown by an extraction) says the archive was unsafe or malformed. */
  readonly isUnsafeArchive: (cause: unknown) => boolean
}

export class HostTrees extends Context.Tag("microagent/HostTrees")<HostTrees, HostTreesShape>() {}
