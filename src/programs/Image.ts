/**
 * Images out: `image push` sends an image of the local store (pulled, imported or built-in) to a
 * registry, blob by blob (skipped when the registry has it, mounted from the image's source repository
 * on the same registry when it can be, uploaded otherwise), then its manifest with the exact bytes the
 * store kept, so that the pushed digest is the local one. `registry login|logout|list` manage the auth
 * file those transfers read.
 */
import { Effect, Either, Schema } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InvalidInput, NotFound, Permanent } from "../domain/Errors.ts"
import { parseImageRef } from "../domain/ImageRef.ts"
import { Home } from "../services/Home.ts"
import { type ImageRecord, ImageStore } from "../services/ImageStore.ts"
import {
  type BlobPushOutcome,
  type Descriptor,
  MediaTypes,
  Registry,
  type RegistryLogin
} from "../services/Registry.ts"

export const PushResult = Schema.Struct({
  /** The reference pushed to. */
  ref: Schema.String,
  /** The manifest digest the registry recorded (the local one unless the manifest had to be rebuilt). */
  digest: Schema.String,
  pushed: Schema.Array(Schema.String),
  skipped: Schema.Array(Schema.String),
  mounted: Schema.Array(Schema.String),
  /** Bytes uploaded (blobs pushed; skipped and mounted ones cost nothing). */
  bytes: Schema.Number,
  /** Set when the store kept no manifest bytes for the image and a manifest was rebuilt from its record. */
  rebuiltManifest: Schema.optional(Schema.Boolean)
})
export type PushResult = typeof PushResult.Type

export interface PushOptions {
  /** Where to push (default: the image's own reference). */
  readonly to?: string | undefined
  /** Plain http to a registry that is not on loopback. */
  readonly insecureRegistry?: boolean | undefined
  readonly onProgress?:
    | ((event: { readonly phase: string; readonly done?: number; readonly total?: number }) => void)
    | undefined
}

interface ManifestDoc {
  readonly mediaType?: string
  readonly config?: Descriptor
  readonly layers?: ReadonlyArray<Descriptor>
}

const hexOf = (digest: string) => digest.replace(/^sha256:/, "")

/** A layer's media type from its first bytes, for manifests rebuilt from a record. */
const layerMediaType = (file: string): string => {
  const fd = NodeFs.openSync(file, "r")
  const head = Buffer.alloc(4)
  try {
    NodeFs.readSync(fd, head, 0, 4, 0)
  } finally {
    NodeFs.closeSync(fd)
  }
  if (head[0] === 0x1f && head[1] === 0x8b) return MediaTypes.ociLayerGzip
  if (head.readUInt32LE(0) === 0xfd2fb528) return MediaTypes.ociLayerZstd
  return MediaTypes.ociLayer
}

/**
 * The manifest to push: the bytes the store kept (checked against the record's digest), else an OCI
 * manifest rebuilt from the record's config and layer blobs (a new digest, reported as such).
 */
const manifestOf = (record: ImageRecord, blobPath: (digest: string) => string) =>
  Effect.try({
    try: () => {
      const kept = blobPath(record.digest)
      if (NodeFs.existsSync(kept)) {
        const bytes = new Uint8Array(NodeFs.readFileSync(kept))
        const doc = JSON.parse(Buffer.from(bytes).toString("utf8")) as ManifestDoc
        if (doc.config === undefined || doc.layers === undefined) {
          throw new Permanent({ message: `the stored manifest of ${record.ref} holds no config or layers` })
        }
        const mediaType = doc.mediaType
          ?? (doc.config.mediaType === MediaTypes.dockerConfig
            ? MediaTypes.dockerManifest
            : MediaTypes.ociManifest)
        return { bytes, mediaType, config: doc.config, layers: doc.layers, rebuilt: false }
      }
      if (record.configDigest === undefined) {
        throw new NotFound({
          message: `${record.ref} has neither a stored manifest nor a config digest`,
          remediation: `pull or import it again: microagent image pull ${record.ref}`
        })
      }
      const describe = (digest: string, mediaType: string): Descriptor => {
        const file = blobPath(digest)
        if (!NodeFs.existsSync(file)) {
          throw new NotFound({
            message: `blob ${digest} of ${record.ref} is not in the store`,
            remediation: `pull or import it again: microagent image pull ${record.ref}`
          })
        }
        return { mediaType, digest, size: NodeFs.statSync(file).size }
      }
      const config = describe(record.configDigest, MediaTypes.ociConfig)
      const layers = record.layers.map((digest) => describe(digest, layerMediaType(blobPath(digest))))
      const manifest = { schemaVersion: 2, mediaType: MediaTypes.ociManifest, config, layers }
      return {
        bytes: new Uint8Array(Buffer.from(JSON.stringify(manifest))),
        mediaType: MediaTypes.ociManifest,
        config,
        layers,
        rebuilt: true
      }
    },
    catch: (cause): Permanent | NotFound =>
      cause instanceof Permanent || cause instanceof NotFound
        ? cause
        : new Permanent({
          message: `reading the stored manifest of ${record.ref}: ${
            cause instanceof Error ? cause.message : String(cause)
          }`,
          remediation: `pull or import it again: microagent image pull ${record.ref}`
        })
  })

const parseRef = (text: string) =>
  Either.match(parseImageRef(text), {
    onLeft: (e) =>
      Effect.fail(
        new InvalidInput({ message: e.message, remediation: "for example: registry.example:5000/team/app:1" })
      ),
    onRight: Effect.succeed
  })

/** Pushes an image of the local store to a registry (its own reference, or `to`). */
export const imagePush = Effect.fn("imagePush")(function*(ref: string, options: PushOptions = {}) {
  const store = yield* ImageStore
  const registry = yield* Registry
  const home = yield* Home
  const record = yield* store.inspect(ref)
  const target = yield* parseRef(options.to ?? record.ref)
  const blobPath = (digest: string) => NodePath.join(home.blobs, "sha256", hexOf(digest))
  const manifest = yield* manifestOf(record, blobPath)
  // A registry that already holds the blob in the repository the image came from can link it.
  const source = record.source === "registry" ? Either.getOrUndefined(parseImageRef(record.ref)) : undefined
  const mountFrom = source !== undefined && source.registry === target.registry
      && source.repository !== target.repository
    ? source.repository
    : undefined
  const blobs = [manifest.config, ...manifest.layers]
  const total = blobs.reduce((sum, b) => sum + b.size, 0)
  let sent = 0
  const progress = options.onProgress ?? (() => {})
  progress({ phase: "upload", done: 0, total })
  const outcomes = yield* Effect.forEach(
    blobs,
    (descriptor) =>
      registry.pushBlob(target, descriptor, blobPath(descriptor.digest), {
        insecure: options.insecureRegistry,
        mountFrom,
        onBytes: (n) => {
          sent += n
          progress({ phase: "upload", done: sent, total })
        }
      }).pipe(Effect.map((outcome): [Descriptor, BlobPushOutcome] => [descriptor, outcome])),
    { concurrency: 3 }
  )
  progress({ phase: "manifest" })
  const digest = yield* registry.pushManifest(target, manifest.bytes, manifest.mediaType, {
    insecure: options.insecureRegistry
  })
  const pick = (outcome: BlobPushOutcome) => outcomes.filter(([, o]) => o === outcome).map(([d]) => d)
  progress({ phase: "complete" })
  return {
    ref: target.toString(),
    digest,
    pushed: pick("pushed").map((d) => d.digest),
    skipped: pick("skipped").map((d) => d.digest),
    mounted: pick("mounted").map((d) => d.digest),
    bytes: pick("pushed").reduce((sum, d) => sum + d.size, 0),
    ...(manifest.rebuilt ? { rebuiltManifest: true } : {})
  } satisfies PushResult
})

/** Checks a registry credential and saves it into the auth file pulls and pushes read. */
export const registryLogin = Effect.fn("registryLogin")(function*(
  host: string,
  credential: { readonly username: string; readonly password: string },
  options: { readonly insecureRegistry?: boolean | undefined } = {}
) {
  const registry = yield* Registry
  return yield* registry.login(host, { ...credential, source: `the login for ${host}` }, {
    insecure: options.insecureRegistry
  })
})

/** Removes a saved registry login. */
export const registryLogout = Effect.fn("registryLogout")(function*(host: string) {
  const registry = yield* Registry
  return yield* registry.logout(host)
})

/** The saved registry logins (hosts, usernames, files), never passwords. */
export const registryList = Effect.gen(function*() {
  const registry = yield* Registry
  const logins: ReadonlyArray<RegistryLogin> = yield* registry.logins
  return { logins }
}).pipe(Effect.withSpan("registryList"))
