/**
 * Named volumes: ext4 disks that outlive workspaces. A volume is held read-write by at most one
 * workspace at a time; the holder is recorded so that a second claim can be refused.
 */
import { Context, type Effect, Schema } from "effect"
import type { Conflict, InvalidInput, NotFound, Permanent, ResourceExhausted } from "../domain/Errors.ts"

/** The size of a volume made without one (MiB). */
export const defaultVolumeMiB = 1024

export class Volume extends Schema.Class<Volume>("Volume")({
  name: Schema.String,
  path: Schema.String,
  sizeMiB: Schema.Int,
  /** The workspace holding it read-write, if any. */
  attachedTo: Schema.optional(Schema.String),
  /** The workspaces that have it mounted read-only. */
  readers: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  createdAt: Schema.DateTimeUtc
}) {}

export interface AttachOptions {
  readonly readOnly: boolean
  /**
   * A holder the caller found stale (its workspace is gone or not running): the claim may take the
   * volume from it. Any other holder is a `Conflict`.
   */
  readonly replacing?: string | undefined
  /** Read-only users the caller found stale: they are let go; any other reader stops a read-write claim. */
  readonly staleReaders?: ReadonlyArray<string> | undefined
}

export interface VolumesShape {
  /** Makes an empty ext4 volume; a taken name is a `Conflict`, a bad one `InvalidInput`. */
  readonly create: (
    name: string,
    sizeMiB: number
  ) => Effect.Effect<Volume, Permanent | Conflict | ResourceExhausted | InvalidInput>
  readonly list: Effect.Effect<ReadonlyArray<Volume>, Permanent>
  readonly inspect: (name: string) => Effect.Effect<Volume, Permanent | NotFound | InvalidInput>
  /** Removes the volume and its data; the caller decides whether its holder still runs. */
  readonly remove: (name: string) => Effect.Effect<void, Permanent | Conflict | NotFound | InvalidInput>
  /** Offline: grows the filesystem, or shrinks it when the content fits. Refused while held or read. */
  readonly resize: (
    name: string,
    sizeMiB: number
  ) => Effect.Effect<Volume, Permanent | Conflict | NotFound | ResourceExhausted | InvalidInput>
  /**
   * Claims a volume for a workspace. Read-write claims record the holder atomically: a volume held
   * by another workspace (other than `replacing`), or read by one (other than `staleReaders`), is a
   * `Conflict` naming it. Read-only claims record a reader, refused while another workspace holds
   * the volume read-write; several readers may share a volume.
   */
  readonly attach: (
    name: string,
    workspace: string,
    options: AttachOptions
  ) => Effect.Effect<Volume, Permanent | Conflict | NotFound | InvalidInput>
  /** Releases the claim (read-write or read-only) of `workspace` on the volume, if it has one. */
  readonly detach: (name: string, workspace: string) => Effect.Effect<void, Permanent>
  /** Releases every claim of `workspace`. */
  readonly release: (workspace: string) => Effect.Effect<void, Permanent>
}

export class Volumes extends Context.Tag("microagent/Volumes")<Volumes, VolumesShape>() {}
