/**
 * Images: OCI references resolved, pulled, verified and turned into ext4 baselines, recorded in the store.
 */
import { Context, type Effect, Schema } from "effect"
import type { MicroagentError } from "../domain/Errors.ts"
import { ImageInfo } from "../domain/Workspace.ts"

export class ImageRecord extends Schema.Class<ImageRecord>("ImageRecord")({
  /** The normalized reference, e.g. `docker.io/library/alpine:3.20`. */
  ref: Schema.String,
  /** Manifest digest (`sha256:…`). */
  digest: Schema.String,
  /** The image config that decides what runs: Entrypoint, Cmd, Env, User, WorkingDir, StopSignal. */
  config: ImageInfo,
  /** The ext4 baseline every workspace of this digest is copied from; absent when none is built. */
  baselinePath: Schema.optional(Schema.String),
  sizeBytes: Schema.Number,
  createdAt: Schema.DateTimeUtc
}) {}

export interface EnsureOptions {
  readonly sizeMiB?: number
  readonly allowGuestSetuid?: boolean
  readonly insecureRegistry?: boolean
  /** Called with human-readable progress (layers, bytes). */
  readonly onProgress?: (event: { readonly phase: string; readonly done?: number; readonly total?: number }) => void
}

export interface ImageStoreShape {
  /** Resolves a reference to a recorded image with a baseline, pulling and building what is missing. */
  readonly ensure: (ref: string, options?: EnsureOptions) => Effect.Effect<ImageRecord, MicroagentError>
  /** Gives a workspace its private root disk: a sparse or reflink copy of the baseline, never a re-extraction. */
  readonly cloneRootfs: (image: ImageRecord, destination: string, sizeMiB?: number) => Effect.Effect<
    void,
    MicroagentError
  >
  readonly list: Effect.Effect<ReadonlyArray<ImageRecord>, MicroagentError>
  readonly inspect: (ref: string) => Effect.Effect<ImageRecord, MicroagentError>
}

export class ImageStore extends Context.Tag("microagent/ImageStore")<ImageStore, ImageStoreShape>() {}
