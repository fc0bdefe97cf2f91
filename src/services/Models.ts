/**
 * The local store of GGUF model files pulled from a Hugging Face-compatible hub. A blob is published
 * only after its sha256 matched the hub's LFS digest and its GGUF header read cleanly.
 */
import { Context, type Effect, Schema } from "effect"
import type { InvalidInput, NotFound, Permanent, PolicyDenied, Transient } from "../domain/Errors.ts"
import { GgufInfo } from "../domain/Gguf.ts"

export class ModelRecord extends Schema.Class<ModelRecord>("ModelRecord")({
  /** Canonical `hf.co/org/repo@rev/path`. */
  ref: Schema.String,
  /** The URL the bytes were requested from. */
  resolvedUrl: Schema.String,
  /** `sha256:<hex>`. */
  digest: Schema.String,
  sizeBytes: Schema.Number,
  path: Schema.String,
  gguf: GgufInfo,
  pulledAt: Schema.String
}) {}

export interface PullOptions {
  /** Bearer token; otherwise HF_TOKEN, then HUGGING_FACE_HUB_TOKEN. Never stored. */
  readonly token?: string | undefined
  /** Called with bytes written so far and the total (for a progress display). */
  readonly onProgress?: ((done: number, total: number) => void) | undefined
}

export interface PruneResult {
  readonly partials: ReadonlyArray<string>
  readonly blobs: ReadonlyArray<string>
}

export interface ModelsShape {
  readonly pull: (
    ref: string,
    options?: PullOptions
  ) => Effect.Effect<ModelRecord, Permanent | PolicyDenied | NotFound | Transient | InvalidInput>
  readonly list: Effect.Effect<ReadonlyArray<ModelRecord>, Permanent>
  /** The record, with its header read again from the stored blob. */
  readonly inspect: (ref: string) => Effect.Effect<ModelRecord, Permanent | NotFound | InvalidInput>
  /** Drops the record; the blob goes too when no other record uses it. */
  readonly remove: (ref: string) => Effect.Effect<ModelRecord, Permanent | NotFound | InvalidInput>
  /** Removes partial downloads and blobs no record uses. */
  readonly prune: Effect.Effect<PruneResult, Permanent>
}

export class Models extends Context.Tag("microagent/Models")<Models, ModelsShape>() {}
