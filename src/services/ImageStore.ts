/**
 * Images: OCI references resolved, pulled, verified and turned into ext4 baselines, recorded in the store.
 */
import { Context, type Effect, Schema } from "effect"
import type {
  Conflict,
  InvalidInput,
  NotFound,
  Permanent,
  PolicyDenied,
  ResourceExhausted
} from "../domain/Errors.ts"
import { ImageInfo } from "../domain/Workspace.ts"
import { Platform, type RegistryError } from "./Registry.ts"

/** Where an image came from. */
export const ImageSource = Schema.Literal("registry", "oci-layout", "oci-archive", "docker-archive")
export type ImageSource = typeof ImageSource.Type

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
  createdAt: Schema.DateTimeUtc,
  platform: Schema.optional(Platform),
  /** Digest of the multi-arch index the manifest was chosen from. */
  indexDigest: Schema.optional(Schema.String),
  configDigest: Schema.optional(Schema.String),
  /** Layer digests, bottom first. */
  layers: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  source: Schema.optional(ImageSource),
  /** `strip` (default) removes setuid/setgid bits; `keep` is `--allow-guest-setuid`. */
  setuidPolicy: Schema.optional(Schema.Literal("strip", "keep")),
  setuidStripped: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  /** The smallest root disk (MiB) the content fits in. */
  neededMiB: Schema.optional(Schema.Number),
  labels: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String })),
  exposedPorts: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  lastUsedAt: Schema.optional(Schema.DateTimeUtc)
}) {}

/** What `image rm` and `image prune` did. */
export interface RemoveResult {
  /** References whose records were removed. */
  readonly removed: ReadonlyArray<string>
  /** Files deleted from the store. */
  readonly deleted: ReadonlyArray<string>
  /** Files kept because a record or a workspace still uses them. */
  readonly kept: ReadonlyArray<string>
}

export interface EnsureOptions {
  /** The root disk the image must fit in (fails with the size needed otherwise); the baseline keeps its own size. */
  readonly sizeMiB?: number
  /** The baseline's size (`image pull --size-mib`); default content plus headroom. */
  readonly baselineSizeMiB?: number
  readonly allowGuestSetuid?: boolean
  /**
   * Refuse layers holding character or block devices (`--refuse-devices`). By default they are accepted:
   * recorded in the ledger and created only inside the image, never on the host.
   */
  readonly refuseDevices?: boolean
  readonly insecureRegistry?: boolean
  /** `linux/amd64`, `linux/arm64/v8`…; default the host's. */
  readonly platform?: string
  /** Resolve the reference again even when a record exists (`image pull`). */
  readonly refresh?: boolean
  /** Called with human-readable progress (layers, bytes). */
  readonly onProgress?: (
    event: { readonly phase: string; readonly done?: number; readonly total?: number }
  ) => void
}

/**
 * What resolving, pulling or importing an image and building its baseline can fail with: what a
 * registry call can (`RegistryError`), and the build's own refusals (a full disk or a size too small, a
 * layer that writes outside its root, a bad size, a failing tool). Never `Conflict` or `Unsupported`.
 */
export type EnsureError = RegistryError | Permanent | PolicyDenied | ResourceExhausted | InvalidInput

export interface ImageStoreShape {
  /** Resolves a reference to a recorded image with a baseline, pulling and building what is missing. */
  readonly ensure: (ref: string, options?: EnsureOptions) => Effect.Effect<ImageRecord, EnsureError>
  /** Gives a workspace its private root disk: a sparse or reflink copy of the baseline, never a re-extraction. */
  readonly cloneRootfs: (image: ImageRecord, destination: string, sizeMiB?: number) => Effect.Effect<
    void,
    Permanent | NotFound | Conflict | ResourceExhausted
  >
  readonly list: Effect.Effect<ReadonlyArray<ImageRecord>, Permanent>
  /** Finds a record by reference, full digest or digest prefix (12+ hex digits). */
  readonly inspect: (ref: string) => Effect.Effect<ImageRecord, Permanent | NotFound | Conflict>
}

/**
 * The store's maintenance operations (the `image` commands). Kept off the ImageStore tag so that fakes
 * of the store used by the lifecycle programs need not implement them; the live store provides both.
 */
export interface ImageStoreAdmin extends ImageStoreShape {
  /** Records `target` as another name of the image `source` names. */
  readonly tag: (
    source: string,
    target: string
  ) => Effect.Effect<ImageRecord, Permanent | NotFound | Conflict | InvalidInput>
  /** Removes records; with `purge`, deletes their files when no record or workspace uses them. */
  readonly remove: (
    refs: ReadonlyArray<string>,
    options?: { readonly purge?: boolean }
  ) => Effect.Effect<RemoveResult, Permanent | NotFound>
  /**
   * Drops records whose baseline vanished and files no record uses (and stale partial downloads);
   * with `purge`, removes every record and store file no workspace uses.
   */
  readonly prune: (options?: { readonly purge?: boolean }) => Effect.Effect<RemoveResult, Permanent>
  /**
   * Writes the image as an OCI archive (a tarball of an OCI layout holding its manifest, config and
   * layers as stored, named by its reference), which `importImage` and `skopeo … oci-archive:` read.
   */
  readonly save: (
    ref: string,
    output: string
  ) => Effect.Effect<
    { readonly ref: string; readonly digest: string; readonly file: string; readonly bytes: number },
    Permanent | NotFound | Conflict | ResourceExhausted
  >
  /** Imports an OCI layout directory or an OCI/Docker archive tarball and builds its baseline. */
  readonly importImage: (
    path: string,
    options?: EnsureOptions & { readonly tag?: string }
  ) => Effect.Effect<ImageRecord, EnsureError>
}

export class ImageStore extends Context.Tag("microagent/ImageStore")<ImageStore, ImageStoreShape>() {}
