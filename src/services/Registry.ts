/**
 * Registry: the OCI distribution API as the image store needs it: resolve a reference to a platform
 * manifest and its config, and download blobs verified by digest.
 */
import { Context, type Effect, Schema } from "effect"
import type {
  InvalidInput,
  NotFound,
  Permanent,
  PolicyDenied,
  ResourceExhausted,
  Transient
} from "../domain/Errors.ts"
import type { ImageRef } from "../domain/ImageRef.ts"

export const MediaTypes = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayer: "application/vnd.oci.image.layer.v1.tar",
  ociLayerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  ociLayerZstd: "application/vnd.oci.image.layer.v1.tar+zstd",
  ociLayerNondistributableGzip: "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  dockerLayerGzip: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  dockerForeignLayer: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
} as const

export const isIndexMediaType = (mediaType: string | undefined): boolean =>
  mediaType === MediaTypes.ociIndex || mediaType === MediaTypes.dockerManifestList

export const isManifestMediaType = (mediaType: string | undefined): boolean =>
  mediaType === MediaTypes.ociManifest || mediaType === MediaTypes.dockerManifest

export const Platform = Schema.Struct({
  os: Schema.String,
  architecture: Schema.String,
  variant: Schema.optional(Schema.String)
})
export type Platform = typeof Platform.Type

/** The platform of this host, in OCI terms (`x64` is `amd64`). */
export const hostPlatform = (): Platform =>
  process.arch === "arm64"
    ? { os: "linux", architecture: "arm64", variant: "v8" }
    : { os: "linux", architecture: process.arch === "x64" ? "amd64" : process.arch }

/** Parses `linux/arm64/v8`, `arm64`, `amd64`. */
export const parsePlatform = (text: string): Platform | undefined => {
  const parts = text.split("/")
  const [os, architecture, variant] = parts.length === 1 ? ["linux", parts[0], undefined] : parts
  if (os === undefined || architecture === undefined || os === "" || architecture === "") return undefined
  const arch = architecture === "x86_64" || architecture === "x64"
    ? "amd64"
    : architecture === "aarch64"
    ? "arm64"
    : architecture
  return variant === undefined ? { os, architecture: arch } : { os, architecture: arch, variant }
}

export const formatPlatform = (p: Platform): string =>
  `${p.os}/${p.architecture}${p.variant !== undefined ? `/${p.variant}` : ""}`

export interface Descriptor {
  readonly mediaType: string
  readonly digest: string
  readonly size: number
  readonly urls?: ReadonlyArray<string> | undefined
  readonly platform?: Platform | undefined
  readonly annotations?: Readonly<Record<string, string>> | undefined
}

/** The parts of an image config the store keeps. */
export interface ImageConfigFile {
  readonly architecture?: string
  readonly os?: string
  readonly variant?: string
  readonly config?: {
    readonly Entrypoint?: ReadonlyArray<string> | null
    readonly Cmd?: ReadonlyArray<string> | null
    readonly Env?: ReadonlyArray<string> | null
    readonly User?: string
    readonly WorkingDir?: string
    readonly StopSignal?: string
    readonly ExposedPorts?: Readonly<Record<string, unknown>> | null
    readonly Labels?: Readonly<Record<string, string>> | null
    readonly Volumes?: Readonly<Record<string, unknown>> | null
  } | null
  readonly rootfs?: { readonly type?: string; readonly diff_ids?: ReadonlyArray<string> }
}

/** A reference resolved to one platform's manifest. */
export interface ResolvedImage {
  readonly ref: ImageRef
  /** Digest of the platform manifest (what baselines are keyed by). */
  readonly digest: string
  /** Digest of the index the manifest was chosen from, when the reference named one. */
  readonly indexDigest?: string | undefined
  readonly manifestMediaType: string
  readonly manifest: Uint8Array
  readonly configDescriptor: Descriptor
  readonly config: ImageConfigFile
  readonly configBytes: Uint8Array
  readonly layers: ReadonlyArray<Descriptor>
  readonly platform: Platform
}

export interface RegistryOptions {
  /** Allow plain http for this registry (loopback registries always may). */
  readonly insecure?: boolean | undefined
  readonly platform?: Platform | undefined
}

/** What happened to one blob of a push. */
export type BlobPushOutcome = "pushed" | "skipped" | "mounted"

export interface PushOptions {
  /** Allow plain http for this registry (loopback registries always may). */
  readonly insecure?: boolean | undefined
  /** A repository on the same registry that holds the blob: tried as a cross-repository mount first. */
  readonly mountFrom?: string | undefined
  readonly onBytes?: ((bytes: number) => void) | undefined
}

/** A username and password to check against a registry (`registry login`). */
export interface LoginCredential {
  readonly username: string
  readonly password: string
  /** Where the credential came from, named in errors (never the password). */
  readonly source: string
}

export const RegistryLogin = Schema.Struct({
  registry: Schema.String,
  username: Schema.optional(Schema.String),
  /** The file (or credential helper) it comes from. */
  source: Schema.String
})
export type RegistryLogin = typeof RegistryLogin.Type

/**
 * What a call to a registry can fail with: the network or the registry (transient), a full disk, an
 * absent image, refused credentials, content that does not match its digest, an unsupported format.
 */
export type RegistryError = Transient | Permanent | NotFound | ResourceExhausted | PolicyDenied | InvalidInput

export interface RegistryShape {
  readonly resolve: (
    ref: ImageRef,
    options?: RegistryOptions
  ) => Effect.Effect<ResolvedImage, RegistryError>
  /**
   * Downloads a blob to `destination` (atomically, verified against its digest), resuming an interrupted
   * transfer with a Range request and retrying transient failures.
   */
  readonly fetchBlob: (
    ref: ImageRef,
    descriptor: Descriptor,
    destination: string,
    options?: RegistryOptions & { readonly onBytes?: ((bytes: number) => void) | undefined }
  ) => Effect.Effect<void, RegistryError>
  /**
   * Puts a blob into `ref`'s repository from a local file: nothing is sent when the registry has it, a
   * cross-repository mount is tried when `mountFrom` is given, else a monolithic upload (digest checked).
   */
  readonly pushBlob: (
    ref: ImageRef,
    descriptor: Descriptor,
    file: string,
    options?: PushOptions
  ) => Effect.Effect<BlobPushOutcome, RegistryError>
  /** PUTs a manifest's exact bytes under `ref`'s tag (or digest); returns the digest the registry recorded. */
  readonly pushManifest: (
    ref: ImageRef,
    manifest: Uint8Array,
    mediaType: string,
    options?: PushOptions
  ) => Effect.Effect<string, RegistryError>
  /**
   * `registry login`: checks the credential against the registry (GET /v2/ and its challenge, a token
   * fetch for bearer) and only then saves it into the auth file the pull and push paths read. A rejected
   * credential saves nothing and is policy_denied. Returns the file written.
   */
  readonly login: (
    registry: string,
    credential: LoginCredential,
    options?: { readonly insecure?: boolean | undefined }
  ) => Effect.Effect<{ readonly registry: string; readonly file: string }, RegistryError>
  /** Removes a saved login (not_found when there is none). Returns the file written. */
  readonly logout: (
    registry: string
  ) => Effect.Effect<{ readonly registry: string; readonly file: string }, Permanent | NotFound>
  /** The saved logins the client can read: hosts, usernames and their files, never passwords. */
  readonly logins: Effect.Effect<ReadonlyArray<RegistryLogin>, Permanent>
}

export class Registry extends Context.Tag("microagent/Registry")<Registry, RegistryShape>() {}
