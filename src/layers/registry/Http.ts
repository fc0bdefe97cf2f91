/**
 * The Registry over HTTP (OCI distribution spec, Docker registry v2), on @effect/platform's HttpClient.
 *
 * Authentication follows the registry's challenge: anonymous first, then a bearer token from the realm
 * it names (with credentials when we have them) or basic auth. Redirects (blob storage on another host)
 * are followed by hand so credentials never leave the registry's host. Plain http is used only for
 * loopback registries or ones marked insecure.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import * as HttpClient from "@effect/platform/HttpClient"
import { Duration, Effect, Layer, Stream } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { InvalidInput, NotFound } from "../../domain/Errors.ts"
import { ImageRef } from "../../domain/ImageRef.ts"
import {
  type Descriptor,
  formatPlatform,
  hostPlatform,
  type ImageConfigFile,
  isIndexMediaType,
  isManifestMediaType,
  MediaTypes,
  type Platform,
  Registry,
  type RegistryOptions,
  type RegistryShape,
  type ResolvedImage
} from "../../services/Registry.ts"
import { listLogins, loginFile, removeLogin, saveLogin } from "./AuthFile.ts"
import { type CredentialSources, defaultCredentialSources, normalizeAuthKey } from "./Credentials.ts"
import { checkLoginWith, pushBlobWith, pushManifestWith } from "./Push.ts"
import {
  apiUrl,
  authorizedGet,
  drain,
  isNoSpace,
  RegistryFailure,
  retryTransient,
  type Session,
  sha256Hex,
  stallTimeout,
  statusFailure,
  toMicroagentError,
  transport
} from "./Session.ts"

export { parseChallenge, RegistryFailure, sha256Hex, toMicroagentError } from "./Session.ts"

const maxManifestBytes = 4 * 1024 * 1024
const maxConfigBytes = 4 * 1024 * 1024
const acceptManifests = [
  MediaTypes.ociIndex,
  MediaTypes.ociManifest,
  MediaTypes.dockerManifestList,
  MediaTypes.dockerManifest
].join(", ")

/** Reads a small document (manifest, config) and checks its size bound and digest. */
const readDocument = (
  session: Session,
  ref: ImageRef,
  options: RegistryOptions | undefined,
  path: string,
  headers: Record<string, string>,
  bound: number,
  what: string
) =>
  Effect.gen(function*() {
    const response = yield* authorizedGet(session, ref, apiUrl(ref, options, path), headers)
    if (response.status !== 200) return yield* statusFailure(response, what, yield* drain(response))
    const length = Number(response.headers["content-length"] ?? "0")
    if (length > bound) {
      yield* drain(response)
      return yield* new RegistryFailure({
        kind: "permanent",
        message: `${what} is ${length} bytes, over ${bound}`
      })
    }
    const bytes = new Uint8Array(yield* response.arrayBuffer.pipe(Effect.mapError(transport(what))))
    if (bytes.length > bound) {
      return yield* new RegistryFailure({ kind: "permanent", message: `${what} is over ${bound} bytes` })
    }
    return { bytes, contentType: response.headers["content-type"] ?? "" }
  }).pipe(
    // Documents are small: the whole exchange gets the stall bound.
    Effect.timeoutFail({
      duration: stallTimeout(),
      onTimeout: () =>
        new RegistryFailure({
          kind: "transient",
          message: `${what}: no answer within ${Duration.format(stallTimeout())}`
        })
    })
  )

interface ManifestDoc {
  readonly schemaVersion?: number
  readonly mediaType?: string
  readonly manifests?: ReadonlyArray<Descriptor>
  readonly config?: Descriptor
  readonly layers?: ReadonlyArray<Descriptor>
}

const parseJson = <A>(bytes: Uint8Array, what: string): Effect.Effect<A, RegistryFailure> =>
  Effect.try({
    try: () => JSON.parse(Buffer.from(bytes).toString("utf8")) as A,
    catch: () => new RegistryFailure({ kind: "permanent", message: `${what} is not valid JSON` })
  })

/** Picks the manifest for a platform from an index; arm64 variants match loosely (v8 is the default). */
export const choosePlatform = (
  manifests: ReadonlyArray<Descriptor>,
  wanted: Platform
): Descriptor | undefined => {
  const candidates = manifests.filter((m) =>
    m.platform !== undefined && m.platform.os === wanted.os && m.platform.architecture === wanted.architecture
    && isManifestMediaType(m.mediaType ?? MediaTypes.ociManifest)
  )
  const exact = candidates.find((m) => (m.platform!.variant ?? "") === (wanted.variant ?? ""))
  if (exact !== undefined) return exact
  if (wanted.architecture === "arm64") {
    return candidates.find((m) => m.platform!.variant === undefined || m.platform!.variant === "v8")
  }
  return wanted.variant === undefined ? candidates[0] : undefined
}

export const supportedLayer = (mediaType: string): boolean =>
  mediaType === MediaTypes.ociLayer || mediaType === MediaTypes.ociLayerGzip
  || mediaType === MediaTypes.ociLayerZstd || mediaType === MediaTypes.dockerLayerGzip
  || mediaType === MediaTypes.ociLayerNondistributableGzip || mediaType === MediaTypes.dockerForeignLayer
  || mediaType === "application/vnd.oci.image.layer.nondistributable.v1.tar"
  || mediaType === "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

const resolveWith = (session: Session) => (ref: ImageRef, options?: RegistryOptions) =>
  Effect.gen(function*() {
    const wanted = options?.platform ?? hostPlatform()
    const manifestHeaders = { accept: acceptManifests }
    const fetchManifest = (reference: string) =>
      retryTransient(readDocument(
        session,
        ref,
        options,
        `manifests/${reference}`,
        manifestHeaders,
        maxManifestBytes,
        `manifest ${ref.name}:${reference}`
      ))
    const first = yield* fetchManifest(ref.reference)
    const firstDigest = `sha256:${sha256Hex(first.bytes)}`
    if (ref.digest !== undefined && firstDigest !== ref.digest) {
      return yield* new RegistryFailure({
        kind: "digest",
        message: `manifest digest mismatch for ${ref.toString()}: the registry served ${firstDigest}`
      })
    }
    let doc = yield* parseJson<ManifestDoc>(first.bytes, "manifest")
    let mediaType = doc.mediaType ?? first.contentType.split(";")[0]!.trim()
    let manifestBytes = first.bytes
    let digest = firstDigest
    let indexDigest: string | undefined
    if (doc.schemaVersion === 1) {
      return yield* new RegistryFailure({
        kind: "unsupported",
        message: `${ref.toString()} uses the Docker schema 1 manifest format, which is not supported`
      })
    }
    if (isIndexMediaType(mediaType) || (doc.manifests !== undefined && doc.layers === undefined)) {
      indexDigest = firstDigest
      const chosen = choosePlatform(doc.manifests ?? [], wanted)
      if (chosen === undefined) {
        const offered = (doc.manifests ?? []).flatMap((m) => m.platform ? [formatPlatform(m.platform)] : [])
          .filter((p) => p !== "unknown/unknown")
        return yield* new RegistryFailure({
          kind: "not_found",
          message: `no ${formatPlatform(wanted)} image in the index (it offers ${
            offered.join(", ") || "nothing"
          })`
        })
      }
      const second = yield* fetchManifest(chosen.digest)
      digest = `sha256:${sha256Hex(second.bytes)}`
      if (digest !== chosen.digest) {
        return yield* new RegistryFailure({
          kind: "digest",
          message: `manifest digest mismatch: expected ${chosen.digest}, got ${digest}`
        })
      }
      manifestBytes = second.bytes
      doc = yield* parseJson<ManifestDoc>(second.bytes, "manifest")
      mediaType = doc.mediaType ?? second.contentType.split(";")[0]!.trim()
    }
    if (doc.config === undefined || doc.layers === undefined) {
      return yield* new RegistryFailure({
        kind: "unsupported",
        message: `${ref.toString()}: unsupported manifest (media type ${mediaType || "unknown"})`
      })
    }
    for (const layer of doc.layers) {
      if (!supportedLayer(layer.mediaType)) {
        return yield* new RegistryFailure({
          kind: "unsupported",
          message: `${ref.toString()}: layer ${layer.digest} has unsupported media type ${layer.mediaType}`
        })
      }
    }
    const configDoc = yield* retryTransient(readDocument(
      session,
      ref,
      options,
      `blobs/${doc.config.digest}`,
      {},
      maxConfigBytes,
      `config ${doc.config.digest}`
    ))
    if (`sha256:${sha256Hex(configDoc.bytes)}` !== doc.config.digest) {
      return yield* new RegistryFailure({
        kind: "digest",
        message: `config digest mismatch for ${doc.config.digest}`
      })
    }
    const config = yield* parseJson<ImageConfigFile>(configDoc.bytes, "image config")
    if (config.os !== undefined && config.architecture !== undefined) {
      if (config.os !== wanted.os || config.architecture !== wanted.architecture) {
        return yield* new RegistryFailure({
          kind: "not_found",
          message: `${ref.toString()} is a ${config.os}/${config.architecture} image, not ${
            formatPlatform(wanted)
          }`
        })
      }
    }
    return {
      ref,
      digest,
      indexDigest,
      manifestMediaType: mediaType || MediaTypes.ociManifest,
      manifest: manifestBytes,
      configDescriptor: doc.config,
      config,
      configBytes: configDoc.bytes,
      layers: doc.layers,
      platform: {
        os: config.os ?? wanted.os,
        architecture: config.architecture ?? wanted.architecture,
        ...(config.variant ?? wanted.variant ? { variant: config.variant ?? wanted.variant } : {})
      }
    } satisfies ResolvedImage
  })

/** Streams a blob into `destination`, verified, resuming with Range after a broken transfer. */
const fetchBlobWith = (session: Session) =>
(
  ref: ImageRef,
  descriptor: Descriptor,
  destination: string,
  options?: RegistryOptions & { readonly onBytes?: ((bytes: number) => void) | undefined }
) =>
  Effect.gen(function*() {
    if (NodeFs.existsSync(destination)) return
    const expected = descriptor.digest.replace(/^sha256:/, "")
    if (!/^[a-f0-9]{64}$/.test(expected)) {
      return yield* new RegistryFailure({
        kind: "unsupported",
        message: `unsupported digest ${descriptor.digest}`
      })
    }
    const partial = `${destination}.partial-${process.pid}-${NodeCrypto.randomBytes(4).toString("hex")}`
    const url = apiUrl(ref, options, `blobs/${descriptor.digest}`)
    yield* Effect.acquireUseRelease(
      Effect.sync(() => NodeFs.openSync(partial, "w", 0o600)),
      (fd) =>
        Effect.gen(function*() {
          let hash = NodeCrypto.createHash("sha256")
          let offset = 0
          const reset = () => {
            NodeFs.ftruncateSync(fd, 0)
            hash = NodeCrypto.createHash("sha256")
            offset = 0
          }
          const attempt = Effect.gen(function*() {
            const headers: Record<string, string> = offset > 0 ? { range: `bytes=${offset}-` } : {}
            const response = yield* authorizedGet(session, ref, url, headers).pipe(
              Effect.timeoutFail({
                duration: stallTimeout(),
                onTimeout: () =>
                  new RegistryFailure({
                    kind: "transient",
                    message: `blob ${descriptor.digest}: no answer within ${Duration.format(stallTimeout())}`
                  })
              })
            )
            if (response.status === 200) {
              if (offset > 0) yield* Effect.sync(reset)
            } else if (response.status === 206) {
              const start = /bytes (\d+)-/.exec(response.headers["content-range"] ?? "")?.[1]
              if (start === undefined || Number(start) !== offset) {
                yield* drain(response)
                yield* Effect.sync(reset)
                return yield* new RegistryFailure({
                  kind: "transient",
                  message: "the registry answered a different range"
                })
              }
            } else if (response.status === 416 && offset === descriptor.size) {
              yield* drain(response)
              return
            } else {
              return yield* statusFailure(response, `blob ${descriptor.digest}`, yield* drain(response))
            }
            yield* response.stream.pipe(
              Stream.timeoutFail(
                () =>
                  new RegistryFailure({
                    kind: "transient",
                    message:
                      `blob ${descriptor.digest}: the transfer stalled at ${offset} of ${descriptor.size} bytes`
                  }),
                stallTimeout()
              ),
              Stream.runForEachChunk((chunk) =>
                Effect.sync(() => {
                  for (const piece of chunk) {
                    if (offset + piece.length > descriptor.size) {
                      throw new RegistryFailure({
                        kind: "digest",
                        message:
                          `blob ${descriptor.digest} is larger than its descriptor says (${descriptor.size} bytes)`
                      })
                    }
                    let written = 0
                    while (written < piece.length) {
                      written += NodeFs.writeSync(
                        fd,
                        piece,
                        written,
                        piece.length - written,
                        offset + written
                      )
                    }
                    hash.update(piece)
                    offset += piece.length
                    options?.onBytes?.(piece.length)
                  }
                })
              ),
              Effect.catchAllDefect((defect) =>
                defect instanceof RegistryFailure
                  ? Effect.fail(defect)
                  : isNoSpace(defect)
                  ? Effect.fail(
                    new RegistryFailure({
                      kind: "no_space",
                      message: `the file system holding ${
                        NodePath.dirname(partial)
                      } is full: cannot store blob ${descriptor.digest} (${descriptor.size} bytes)`
                    })
                  )
                  : Effect.fail(
                    new RegistryFailure({ kind: "permanent", message: `writing ${partial}: ${defect}` })
                  )
              ),
              Effect.mapError((e) =>
                e instanceof RegistryFailure
                  ? e
                  : new RegistryFailure({
                    kind: "transient",
                    message: `blob ${descriptor.digest}: ${e.message}`
                  })
              )
            )
            if (offset < descriptor.size) {
              return yield* new RegistryFailure({
                kind: "transient",
                message:
                  `blob ${descriptor.digest}: connection closed at ${offset} of ${descriptor.size} bytes`
              })
            }
          })
          yield* retryTransient(attempt)
          const actual = hash.digest("hex")
          if (offset !== descriptor.size || actual !== expected) {
            return yield* new RegistryFailure({
              kind: "digest",
              message:
                `blob digest mismatch: expected ${descriptor.digest}, got sha256:${actual} (${offset} of ${descriptor.size} bytes)`
            })
          }
          yield* Effect.sync(() => {
            NodeFs.fsyncSync(fd)
            NodeFs.renameSync(partial, destination)
          })
        }),
      (fd) =>
        Effect.sync(() => {
          NodeFs.closeSync(fd)
          NodeFs.rmSync(partial, { force: true })
        })
    )
  })

const makeRegistry = (
  client: HttpClient.HttpClient,
  sources: CredentialSources
): RegistryShape => {
  const session: Session = { client, sources, authorizations: new Map() }
  const resolve = resolveWith(session)
  const fetchBlob = fetchBlobWith(session)
  const pushBlob = pushBlobWith(session)
  const pushManifest = pushManifestWith(session)
  const checkLogin = checkLoginWith(session)
  return Registry.of({
    resolve: Effect.fn("Registry.resolve")(function*(ref: ImageRef, options?: RegistryOptions) {
      return yield* resolve(ref, options).pipe(Effect.mapError(toMicroagentError(ref)))
    }),
    fetchBlob: Effect.fn("Registry.fetchBlob")(function*(ref, descriptor, destination, options) {
      return yield* fetchBlob(ref, descriptor, destination, options).pipe(
        Effect.mapError(toMicroagentError(ref))
      )
    }),
    pushBlob: Effect.fn("Registry.pushBlob")(function*(ref, descriptor, file, options) {
      return yield* pushBlob(ref, descriptor, file, options).pipe(Effect.mapError(toMicroagentError(ref)))
    }),
    pushManifest: Effect.fn("Registry.pushManifest")(function*(ref, manifest, mediaType, options) {
      return yield* pushManifest(ref, manifest, mediaType, options).pipe(
        Effect.mapError(toMicroagentError(ref))
      )
    }),
    login: Effect.fn("Registry.login")(function*(registry, credential, options) {
      const host = normalizeAuthKey(registry)
      const file = loginFile(sources)
      if (file === undefined) {
        return yield* new InvalidInput({
          message: "no auth file to write: set REGISTRY_AUTH_FILE or use a state directory"
        })
      }
      if (credential.username.length === 0 || credential.username.includes(":")) {
        return yield* new InvalidInput({
          message: "the username must be non-empty and hold no colon",
          remediation: "microagent registry login HOST -u USER --password-stdin"
        })
      }
      yield* checkLogin(host, credential, options).pipe(
        Effect.mapError(toMicroagentError(new ImageRef({ registry: host, repository: "-" })))
      )
      yield* saveLogin(file, host, credential.username, credential.password)
      return { registry: host, file }
    }),
    logout: Effect.fn("Registry.logout")(function*(registry) {
      const host = normalizeAuthKey(registry)
      const file = loginFile(sources)
      if (file === undefined) {
        return yield* new NotFound({ message: `no credential for ${host}: no auth file` })
      }
      yield* removeLogin(file, host)
      return { registry: host, file }
    }),
    logins: listLogins(sources).pipe(Effect.withSpan("Registry.logins"))
  })
}

/** The registry client with Node's http stack; credentials from the default places (and the Home's auth.json). */
export const layer = (homeRoot?: string): Layer.Layer<Registry> =>
  Layer.effect(
    Registry,
    Effect.map(HttpClient.HttpClient, (client) => makeRegistry(client, defaultCredentialSources(homeRoot)))
  ).pipe(Layer.provide(NodeHttpClient.layer))

export const RegistryHttp = { layer, makeRegistry } as const
