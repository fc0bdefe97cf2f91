/**
 * Named volumes: ext4 disks that outlive workspaces.
 */
import { Context, type Effect, Schema } from "effect"
import type { MicroagentError } from "../domain/Errors.ts"

export class Volume extends Schema.Class<Volume>("Volume")({
  name: Schema.String,
  path: Schema.String,
  sizeMiB: Schema.Int,
  /** The workspace holding it read-write, if any. */
  attachedTo: Schema.optional(Schema.String),
  createdAt: Schema.DateTimeUtc
}) {}

export interface VolumesShape {
  readonly create: (name: string, sizeMiB: number) => Effect.Effect<Volume, MicroagentError>
  readonly list: Effect.Effect<ReadonlyArray<Volume>, MicroagentError>
  readonly inspect: (name: string) => Effect.Effect<Volume, MicroagentError>
  readonly remove: (name: string) => Effect.Effect<void, MicroagentError>
  readonly resize: (name: string, sizeMiB: number) => Effect.Effect<Volume, MicroagentError>
  /** Claims a volume for a workspace; a second read-write claim is a `Conflict`. */
  readonly attach: (
    name: string,
    workspace: string,
    readOnly: boolean
  ) => Effect.Effect<Volume, MicroagentError>
  readonly detach: (name: string, workspace: string) => Effect.Effect<void, MicroagentError>
}

export class Volumes extends Context.Tag("microagent/Volumes")<Volumes, VolumesShape>() {}
