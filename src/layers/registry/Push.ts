/**
 * Pushing to a registry over HTTP (OCI distribution spec): blobs by HEAD-then-upload, cross-repository
 * mounts, monolithic uploads streamed from the store's blob files, and manifests PUT with their exact
 * bytes so that the registry's digest is the local one. Authentication reuses the pull path's session
 * (Http.ts): the same credential sources, bearer tokens asked for `pull,push`, or basic credentials.
 */
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Duration, Effect, Stream } from "effect"
import * as NodeCrypto from "node:crypto"
import * as NodeFs from "node:fs"
import { ImageRef, isLoopbackRegistry } from "../../domain/ImageRef.ts"
import type { BlobPushOutcome, Descriptor, PushOptions } from "../../services/Registry.ts"
import type { Credential } from "./Credentials.ts"
import {
  apiUrl,
  authorize,
  drain,
  RegistryFailure,
  rejected,
  retryTransient,
  type Session,
  sha256Hex,
  stallTimeout,
  statusFailure,
  transport
} from "./Session.ts"

const pushScopes = (ref: ImageRef, mountFrom: string | undefined): ReadonlyArray<string> => [
  `repository:${ref.repository}:pull,push`,
  ...(mountFrom !== undefined && mountFrom !== ref.repository ? [`repository:${mountFrom}:pull`] : [])
]

/**
 * Sends a request built by `build` (called again after a challenge, so a streamed body is made afresh),
 * answering a 401 with the push scopes. The Authorization header only goes to the registry's own host.
 */
const send = (
  session: Session,
  ref: ImageRef,
  mountFrom: string | undefined,
  url: string,
  build: (url: string) => HttpClientRequest.HttpClientRequest,
  what: string
): Effect.Effect<HttpClientResponse.HttpClientResponse, RegistryFailure> =>
  Effect.gen(function*() {
    const key = `${ref.registry}|${ref.repository}|push|${mountFrom ?? ""}`
    const sameHost = new URL(url).host === ref.apiHost
    const withAuth = (authorization: string | undefined) => {
      const request = build(url)
      return sameHost && authorization !== undefined
        ? HttpClientRequest.setHeader(request, "authorization", authorization)
        : request
    }
    const execute = (authorization: string | undefined) =>
      session.client.execute(withAuth(authorization)).pipe(Effect.mapError(transport(what)))
    const first = yield* execute(session.authorizations.get(key))
    if (first.status !== 401 || !sameHost) return first
    const challenge = first.headers["www-authenticate"]
    yield* drain(first)
    const { authorization, credential } = yield* authorize(
      session,
      ref,
      challenge,
      pushScopes(ref, mountFrom)
    )
    session.authorizations.set(key, authorization)
    const second = yield* execute(authorization)
    if (second.status === 401) {
      yield* drain(second)
      return yield* rejected(credential)
    }
    return second
  })

/** A 5xx or 429 answer as a failure, so that retryTransient sends the request again. */
const failRetryable = (what: string) => (response: HttpClientResponse.HttpClientResponse) =>
  response.status >= 500 || response.status === 429
    ? Effect.flatMap(drain(response), (body) => Effect.fail(statusFailure(response, what, body)))
    : Effect.succeed(response)

/** A file's bytes as a stream, hashed on the way so a changed blob file is noticed. */
const fileStream = (file: string, onChunk: (chunk: Uint8Array) => void) =>
  Stream.fromAsyncIterable(
    NodeFs.createReadStream(file, { highWaterMark: 1024 * 1024 }) as AsyncIterable<Buffer>,
    (cause) => new RegistryFailure({ kind: "permanent", message: `reading ${file}: ${String(cause)}` })
  ).pipe(Stream.map((chunk) => {
    onChunk(chunk)
    return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)
  }))

/** Where an upload continues: the Location (relative or absolute), else the upload UUID. */
const uploadLocation = (
  response: HttpClientResponse.HttpClientResponse,
  ref: ImageRef,
  options: PushOptions | undefined,
  base: string
): URL | undefined => {
  const location = response.headers.location
  if (location !== undefined && location.length > 0) return new URL(location, base)
  const uuid = response.headers["docker-upload-uuid"]
  return uuid !== undefined ? new URL(apiUrl(ref, options, `blobs/uploads/${uuid}`)) : undefined
}

const pushBlobOnce = (
  session: Session,
  ref: ImageRef,
  descriptor: Descriptor,
  file: string,
  options: PushOptions | undefined
): Effect.Effect<BlobPushOutcome, RegistryFailure> =>
  Effect.gen(function*() {
    const mountFrom = options?.mountFrom !== undefined && options.mountFrom !== ref.repository
      ? options.mountFrom
      : undefined
    const blobUrl = apiUrl(ref, options, `blobs/${descriptor.digest}`)
    const head = yield* send(session, ref, mountFrom, blobUrl, (u) =>
      HttpClientRequest.head(u), `HEAD ${blobUrl}`)
    yield* drain(head)
    // A redirect (to blob storage) is only given for a blob the registry holds.
    if (head.status === 200 || [301, 302, 303, 307, 308].includes(head.status)) {
      return "skipped"
    }
    if (head.status !== 404) {
      return yield* statusFailure(head, `blob ${descriptor.digest}`, "")
    }
    const uploads = apiUrl(ref, options, "blobs/uploads/")
    const start = mountFrom !== undefined
      ? `${uploads}?mount=${encodeURIComponent(descriptor.digest)}&from=${encodeURIComponent(mountFrom)}`
      : uploads
    const started = yield* send(
      session,
      ref,
      mountFrom,
      start,
      (u) =>
        HttpClientRequest.post(u).pipe(HttpClientRequest.setHeader("content-length", "0")),
      `POST ${start}`
    )
    const startBody = yield* drain(started)
    if (started.status === 201 && mountFrom !== undefined) {
      return "mounted"
    }
    if (started.status !== 202) {
      return yield* statusFailure(started, `starting the upload of ${descriptor.digest}`, startBody)
    }
    const location = uploadLocation(started, ref, options, start)
    if (location === undefined) {
      return yield* new RegistryFailure({
        kind: "permanent",
        message: `the registry started an upload of ${descriptor.digest} without a Location`
      })
    }
    location.searchParams.set("digest", descriptor.digest)
    // Reset per request built: an answered challenge streams the body again from the start.
    const streamed = { hash: NodeCrypto.createHash("sha256"), count: 0 }
    const put = yield* send(
      session,
      ref,
      mountFrom,
      location.toString(),
      (u) => {
        streamed.hash = NodeCrypto.createHash("sha256")
        streamed.count = 0
        return HttpClientRequest.put(u).pipe(
          HttpClientRequest.bodyStream(
            fileStream(file, (chunk) => {
              streamed.hash.update(chunk)
              streamed.count += chunk.length
              options?.onBytes?.(chunk.length)
            }),
            { contentType: "application/octet-stream", contentLength: descriptor.size }
          )
        )
      },
      `PUT blob ${descriptor.digest}`
    ).pipe(
      Effect.timeoutFail({
        duration: stallTimeout(),
        onTimeout: () =>
          new RegistryFailure({
            kind: "transient",
            message: `blob ${descriptor.digest}: no answer to the upload within ${
              Duration.format(stallTimeout())
            }`
          })
      })
    )
    const putBody = yield* drain(put)
    const actual = `sha256:${streamed.hash.digest("hex")}`
    if (actual !== descriptor.digest || streamed.count !== descriptor.size) {
      return yield* new RegistryFailure({
        kind: "digest",
        message:
          `the stored blob ${file} does not match ${descriptor.digest} (read ${actual}, ${streamed.count} bytes)`
      })
    }
    if (put.status !== 201 && put.status !== 204 && put.status !== 200) {
      return yield* statusFailure(put, `uploading ${descriptor.digest}`, putBody)
    }
    return "pushed"
  })

/** Puts one blob: skipped when the registry has it, mounted from `mountFrom` when it can, else uploaded. */
export const pushBlobWith = (session: Session) =>
(
  ref: ImageRef,
  descriptor: Descriptor,
  file: string,
  options?: PushOptions
): Effect.Effect<BlobPushOutcome, RegistryFailure> =>
  Effect.gen(function*() {
    if (!/^sha256:[a-f0-9]{64}$/.test(descriptor.digest)) {
      return yield* new RegistryFailure({
        kind: "unsupported",
        message: `unsupported digest ${descriptor.digest}`
      })
    }
    if (!NodeFs.existsSync(file)) {
      return yield* new RegistryFailure({
        kind: "not_found",
        message: `blob ${descriptor.digest} is not in the local store (${file})`
      })
    }
    // A transient failure restarts the blob from its HEAD: a half-sent upload is abandoned, never resumed blind.
    return yield* retryTransient(pushBlobOnce(session, ref, descriptor, file, options))
  })

/** PUTs a manifest's exact bytes; the registry's digest must be the local one. */
export const pushManifestWith = (session: Session) =>
(
  ref: ImageRef,
  manifest: Uint8Array,
  mediaType: string,
  options?: PushOptions
): Effect.Effect<string, RegistryFailure> =>
  Effect.gen(function*() {
    const digest = `sha256:${sha256Hex(manifest)}`
    if (ref.digest !== undefined && ref.tag === undefined && ref.digest !== digest) {
      return yield* new RegistryFailure({
        kind: "unsupported",
        message: `${ref.toString()} names digest ${ref.digest} but the manifest's is ${digest}`
      })
    }
    const url = apiUrl(ref, options, `manifests/${ref.tag ?? digest}`)
    const response = yield* retryTransient(
      send(
        session,
        ref,
        options?.mountFrom,
        url,
        (u) => HttpClientRequest.put(u).pipe(HttpClientRequest.bodyUint8Array(manifest, mediaType)),
        `PUT ${url}`
      ).pipe(Effect.flatMap(failRetryable(`manifest ${ref.toString()}`)))
    )
    const body = yield* drain(response)
    if (response.status !== 201 && response.status !== 200 && response.status !== 204) {
      return yield* statusFailure(response, `manifest ${ref.toString()}`, body)
    }
    const answered = response.headers["docker-content-digest"]
    if (answered !== undefined && answered !== digest) {
      return yield* new RegistryFailure({
        kind: "digest",
        message: `the registry recorded the manifest as ${answered}, not ${digest}`
      })
    }
    return digest
  })

/**
 * Checks a credential against a registry before it is saved: GET /v2/, and when challenged, a token
 * fetch (bearer) or the same GET with basic credentials. A registry that asks for none accepts it.
 */
export const checkLoginWith = (session: Session) =>
(
  host: string,
  credential: Credential,
  options?: { readonly insecure?: boolean | undefined }
): Effect.Effect<void, RegistryFailure> =>
  Effect.gen(function*() {
    const ref = new ImageRef({ registry: host, repository: "library/login-check" })
    const scheme = options?.insecure === true || isLoopbackRegistry(host) ? "http" : "https"
    const url = `${scheme}://${ref.apiHost}/v2/`
    const get = (authorization: string | undefined) =>
      session.client.execute(
        HttpClientRequest.get(url).pipe(
          authorization !== undefined ? HttpClientRequest.setHeader("authorization", authorization) : (r) => r
        )
      ).pipe(Effect.mapError(transport(`GET ${url}`)))
    const first = yield* get(undefined)
    yield* drain(first)
    if (first.status === 200) return
    if (first.status !== 401) return yield* statusFailure(first, `GET ${url}`, "")
    const { authorization } = yield* authorize(
      session,
      ref,
      first.headers["www-authenticate"],
      [],
      credential
    )
    const second = yield* get(authorization)
    const body = yield* drain(second)
    if (second.status === 401 || second.status === 403) return yield* rejected(credential)
    if (second.status !== 200) return yield* statusFailure(second, `GET ${url}`, body)
  }).pipe(retryTransient)
