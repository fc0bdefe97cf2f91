/**
 * What `cp` and `artifacts` answer: where a copy landed and what it moved, and the declared outputs of a
 * workspace with what was collected of them.
 */
import { Schema } from "effect"

export const CopyResult = Schema.Struct({
  workspace: Schema.String,
  direction: Schema.Literal("in", "out"),
  /** Where the copy landed (out) or came from (in), absolute. */
  hostPath: Schema.String,
  /** Where the copy landed (in) or came from (out). */
  guestPath: Schema.String,
  kind: Schema.Literal("file", "directory"),
  /** Over the guest channel, offline on the stopped disk, or from a collection. */
  via: Schema.Literal("channel", "offline", "collected"),
  entries: Schema.Number,
  bytes: Schema.Number
})
export type CopyResult = typeof CopyResult.Type

export const CollectedOutput = Schema.Struct({
  name: Schema.String,
  path: Schema.String,
  collected: Schema.Boolean,
  kind: Schema.optional(Schema.Literal("file", "directory")),
  /** Bytes of file content. */
  size: Schema.optional(Schema.Number),
  /** Why it was not collected. */
  error: Schema.optional(Schema.String)
})
export type CollectedOutput = typeof CollectedOutput.Type

export const Manifest = Schema.Struct({
  workspace: Schema.String,
  collectedAt: Schema.String,
  outputs: Schema.Array(CollectedOutput)
})
export type Manifest = typeof Manifest.Type

export const ArtifactList = Schema.Struct({
  workspace: Schema.String,
  /** Whether the workspace itself still exists (else only collected artifacts can be fetched). */
  exists: Schema.Boolean,
  artifacts: Schema.Array(CollectedOutput)
})

export const ArtifactCopy = Schema.Struct({
  ...CopyResult.fields,
  artifact: Schema.String,
  from: Schema.Literal("workspace", "collection")
})
