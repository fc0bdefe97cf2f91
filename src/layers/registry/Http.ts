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
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Data, Duration, Effect, Layer, Schedule, Stream } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import {
  InvalidInput,
  type MicroagentError,
  NotFound,
  Permanent,
  PolicyDenied,
  ResourceExhausted,
  Transient
} from "../../domain/Errors.ts"
import { type ImageRef, isLoopbackRegistry } from "../../domain/ImageRef.ts"
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
import {
  type Credential,
  type CredentialSources,
  defaultCredentialSources,
  lookupCredential
} from "./Credentials.ts"

type FailureKind = "transient" | "permanent" | "not_found" | "auth" | "digest" | "unsupported" | "no_space"

export class RegistryFailure extends Data.TaggedError("RegistryFailure")<{
  readonly kind: FailureKind
  readonly message: string
  readonly retryAfterMs?: number | undefined
}> {}

const maxManifestBytes = 4 * 1024 * 1024
const maxConfigBytes = 4 * 1024 * 1024
const acceptManifests = [
  MediaTypes.ociIndex,
  MediaTypes.ociManifest,
  MediaTypes.dockerManifestList,
  MediaTypes.dockerManifest
].join(", ")

export const sha256Hex = (data: Uint8Array): string =>
  NodeCrypto.createHash("sha256").update(data).digest("hex")

/** Parses `Bearer realm="…",service="…",scope="…"` (and `Basic realm="…"`). */
export const parseChallenge = (
  header: string
): { readonly scheme: string; readonly params: Readonly<Record<string, string>> } | undefined => {
  const match = /^\s*(\w+)\s*(.*)$/s.exec(header)
  if (match === null) return undefined
  const params: Record<string, string> = {}
  const re = /(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g
  for (let m = re.exec(match[2]!); m !== null; m = re.exec(match[2]!)) {
    params[m[1]!.toLowerCase()] = (m[2] ?? m[3] ?? "").replace(/\\(.)/g, "$1")
  }
  return { scheme: match[1]!.toLowerCase(), params }
}

const retryAfter = (response: HttpClientResponse.HttpClientResponse): number | undefined => {
  const value = response.headers["retry-after"]
  if (value === undefined) return undefined
  const seconds = Number(value)
  return Number.isFinite(seconds) ? seconds * 1000 : undefined
}

const statusFailure = (response: HttpClientResponse.HttpClientResponse, what: string, body: string) => {
  const detail = (() => {
    try {
      const parsed = JSON.parse(body) as { errors?: Array<{ code?: string; message?: string }> }
      return parsed.errors?.map((e) => `${e.code ?? ""} ${e.message ?? ""}`.trim()).join("; ")
        ?? body.slice(0, 200)
    } catch {
      return body.slice(0, 200)
    }
  })()
  const status = response.status
  const kind: FailureKind = status === 404
    ? "not_found"
    : status === 401 || status === 403
    ? "auth"
    : status === 429 || status >= 500
    ? "transient"
    : "permanent"
  return new RegistryFailure({
    kind,
    message: `${what}: HTTP ${status}${detail ? ` (${detail})` : ""}`,
    retryAfterMs: retryAfter(response)
  })
}

const transport = (what: string) => (error: HttpClientError.HttpClientError) =>
  new RegistryFailure({ kind: "transient", message: `${what}: ${error.message}` })

const retryPolicy = Schedule.exponential(Duration.millis(200), 2).pipe(
  Schedule.intersect(Schedule.recurs(4))
)

const retryTransient = <A, R>(effect: Effect.Effect<A, RegistryFailure, R>) =>
  Effect.retry(effect, { schedule: retryPolicy, while: (e) => e.kind === "transient" })

/**
 * How long a registry may go silent (no response headers, or no body bytes) before the attempt is
 * abandoned and retried: a stalled connection must not hang a pull. `MICROAGENT_REGISTRY_STALL_SECONDS`
 * changes it (a very slow link may need more).
 */
const stallTimeout = (): Duration.Duration => {
  const seconds = Number(process.env.MICROAGENT_REGISTRY_STALL_SECONDS)
  return Duration.seconds(Number.isFinite(seconds) && seconds > 0 ? seconds : 30)
}

/** What a caller should wait before retrying a pull the registry or network failed. */
const defaultRetryAfterMs = 5000

const isNoSpace = (cause: unknown) => {
  const code = (cause as { readonly code?: unknown } | undefined)?.code
  return code === "ENOSPC" || code === "EDQUOT"
}

/** Maps an adapter failure to the classified errors callers see. */
export const toMicroagentError = (ref: ImageRef) => (failure: RegistryFailure): MicroagentError => {
  switch (failure.kind) {
    case "transient":
      return new Transient({
        message: `registry ${ref.registry}: ${failure.message}`,
        remediation: "the registry or the network failed; try again",
        retryAfterMs: failure.retryAfterMs ?? defaultRetryAfterMs
      })
    case "no_space":
      return new ResourceExhausted({
        message: failure.message,
        remediation:
          "free space on that file system (`microagent image prune`, `microagent gc`), then pull again"
      })
    case "not_found":
      return new NotFound({
        message: `${ref.toString()}: ${failure.message}`,
        remediation: "check the image name and tag (`skopeo inspect docker://…` lists what exists)"
      })
    case "auth":
      return new PolicyDenied({
        message: `registry ${ref.registry} refused access: ${failure.message}`,
        remediation:
          "log in (credentials are read from $REGISTRY_AUTH_FILE, <state-dir>/auth.json or ~/.docker/config.json) or check the repository name"
      })
    case "digest":
      return new Permanent({
        message: failure.message,
        remediation: "the registry served content that does not match its digest; nothing was recorded"
      })
    case "unsupported":
      return new InvalidInput({ message: failure.message })
    default:
      return new Permanent({ message: `registry ${ref.registry}: ${failure.message}` })
  }
}

interface Session {
  readonly client: HttpClient.HttpClient
  readonly sources: CredentialSources
  /** Authorization header values by `registry|repository`. */
  readonly authorizations: Map<string, string>
}

const drain = (response: HttpClientResponse.HttpClientResponse) =>
  response.text.pipe(Effect.orElseSucceed(() => ""))

const useHttp = (ref: ImageRef, options: RegistryOptions | undefined): boolean =>
  options?.insecure === true || isLoopbackRegistry(ref.registry)

const apiUrl = (ref: ImageRef, options: RegistryOptions | undefined, path: string) =>
  `${useHttp(ref, options) ? "http" : "https"}://${ref.apiHost}/v2/${ref.repository}/${path}`

/** GET with redirects followed by hand; the Authorization header only goes to the original host. */
const getFollowing = (
  session: Session,
  url: string,
  headers: Record<string, string>,
  authorization: string | undefined
): Effect.Effect<HttpClientResponse.HttpClientResponse, RegistryFailure> =>
  Effect.gen(function*() {
    const origin = new URL(url).host
    let current = url
    for (let hop = 0; hop < 6; hop++) {
      const sameHost = new URL(current).host === origin
      const request = HttpClientRequest.get(current).pipe(
        HttpClientRequest.setHeaders(
          sameHost && authorization !== undefined ? { ...headers, authorization } : headers
        )
      )
      const response = yield* session.client.execute(request).pipe(
        Effect.mapError(transport(`GET ${current}`))
      )
      if ([301, 302, 303, 307, 308].includes(response.status) && response.headers.location !== undefined) {
        yield* drain(response)
        current = new URL(response.headers.location, current).toString()
        continue
      }
      return response
    }
    return yield* new RegistryFailure({ kind: "permanent", message: `too many redirects from ${url}` })
  })

const fetchToken = (
  session: Session,
  ref: ImageRef,
  params: Readonly<Record<string, string>>,
  credential: Credential | undefined
): Effect.Effect<string, RegistryFailure> =>
  Effect.gen(function*() {
    const realm = params.realm
    if (realm === undefined) {
      return yield* new RegistryFailure({ kind: "auth", message: "bearer challenge without a realm" })
    }
    const scope = params.scope ?? `repository:${ref.repository}:pull`
    const query: Record<string, string> = { scope }
    if (params.service !== undefined) query.service = params.service
    let response: HttpClientResponse.HttpClientResponse
    if (credential?.identityToken !== undefined) {
      // An identity token is an OAuth2 refresh token: exchanged with a POST (Docker's protocol).
      const request = HttpClientRequest.post(realm).pipe(
        HttpClientRequest.bodyUrlParams({
          ...query,
          grant_type: "refresh_token",
          client_id: "microagent",
          refresh_token: credential.identityToken
        })
      )
      response = yield* session.client.execute(request).pipe(Effect.mapError(transport(`POST ${realm}`)))
    } else {
      const url = new URL(realm)
      for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v)
      const basic = credential !== undefined
        ? `Basic ${Buffer.from(`${credential.username}:${credential.password}`).toString("base64")}`
        : undefined
      response = yield* getFollowing(session, url.toString(), {}, basic)
    }
    if (response.status !== 200) {
      const body = yield* drain(response)
      return yield* statusFailure(response, `token from ${realm}`, body)
    }
    const body = yield* response.json.pipe(
      Effect.mapError(() =>
        new RegistryFailure({ kind: "permanent", message: `token from ${realm}: not JSON` })
      )
    )
    const token = (body as { token?: string; access_token?: string }).token
      ?? (body as { access_token?: string }).access_token
    if (typeof token !== "string" || token.length === 0) {
      return yield* new RegistryFailure({
        kind: "auth",
        message: `token endpoint ${realm} returned no token`
      })
    }
    return token
  })

/** A GET against the registry API that answers authentication challenges. */
const authorizedGet = (
  session: Session,
  ref: ImageRef,
  url: string,
  headers: Record<string, string>
): Effect.Effect<HttpClientResponse.HttpClientResponse, RegistryFailure> =>
  Effect.gen(function*() {
    const key = `${ref.registry}|${ref.repository}`
    const first = yield* getFollowing(session, url, headers, session.authorizations.get(key))
    if (first.status !== 401) return first
    const challengeHeader = first.headers["www-authenticate"]
    yield* drain(first)
    const challenge = challengeHeader !== undefined ? parseChallenge(challengeHeader) : undefined
    const credential = yield* lookupCredential(ref.registry, session.sources).pipe(
      Effect.mapError((e) => new RegistryFailure({ kind: "permanent", message: e.message }))
    )
    let authorization: string
    if (challenge?.scheme === "bearer") {
      authorization = `Bearer ${yield* fetchToken(session, ref, challenge.params, credential)}`
    } else if (challenge?.scheme === "basic" && credential !== undefined) {
      authorization = `Basic ${
        Buffer.from(`${credential.username}:${credential.password}`).toString("base64")
      }`
    } else {
      return yield* new RegistryFailure({
        kind: "auth",
        message: credential === undefined
          ? "authentication required and no credentials found"
          : "authentication required"
      })
    }
    session.authorizations.set(key, authorization)
    const second = yield* getFollowing(session, url, headers, authorization)
    if (second.status === 401) {
      yield* drain(second)
      return yield* new RegistryFailure({
        kind: "auth",
        message: credential === undefined
          ? "authentication required and no credentials found"
          : `the credentials from ${credential.source} were rejected`
      })
    }
    return second
  })

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

export const makeRegistry = (
  client: HttpClient.HttpClient,
  sources: CredentialSources
): RegistryShape => {
  const session: Session = { client, sources, authorizations: new Map() }
  const resolve = resolveWith(session)
  const fetchBlob = fetchBlobWith(session)
  return Registry.of({
    resolve: Effect.fn("Registry.resolve")(function*(ref: ImageRef, options?: RegistryOptions) {
      return yield* resolve(ref, options).pipe(Effect.mapError(toMicroagentError(ref)))
    }),
    fetchBlob: Effect.fn("Registry.fetchBlob")(function*(ref, descriptor, destination, options) {
      return yield* fetchBlob(ref, descriptor, destination, options).pipe(
        Effect.mapError(toMicroagentError(ref))
      )
    })
  })
}

/** The registry client with Node's http stack; credentials from the default places (and the Home's auth.json). */
export const layer = (homeRoot?: string): Layer.Layer<Registry> =>
  Layer.effect(
    Registry,
    Effect.map(HttpClient.HttpClient, (client) => makeRegistry(client, defaultCredentialSources(homeRoot)))
  ).pipe(Layer.provide(NodeHttpClient.layer))

export const RegistryHttp = { layer, makeRegistry } as const
