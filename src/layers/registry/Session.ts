/**
 * What the registry client's pull and push paths share: the session (HTTP client, credential sources,
 * cached Authorization headers), answering authentication challenges (bearer tokens from the realm, or
 * basic credentials), failure classification and bounded retries of transient failures.
 */
import type * as HttpClient from "@effect/platform/HttpClient"
import type * as HttpClientError from "@effect/platform/HttpClientError"
import * as HttpClientRequest from "@effect/platform/HttpClientRequest"
import type * as HttpClientResponse from "@effect/platform/HttpClientResponse"
import { Data, Duration, Effect, Schedule } from "effect"
import * as NodeCrypto from "node:crypto"
import {
  InvalidInput,
  NotFound,
  Permanent,
  PolicyDenied,
  ResourceExhausted,
  Transient
} from "../../domain/Errors.ts"
import { type ImageRef, isLoopbackRegistry } from "../../domain/ImageRef.ts"
import type { RegistryError, RegistryOptions } from "../../services/Registry.ts"
import { type Credential, type CredentialSources, lookupCredential } from "./Credentials.ts"

export type FailureKind =
  | "transient"
  | "permanent"
  | "not_found"
  | "auth"
  | "digest"
  | "unsupported"
  | "no_space"

export class RegistryFailure extends Data.TaggedError("RegistryFailure")<{
  readonly kind: FailureKind
  readonly message: string
  readonly retryAfterMs?: number | undefined
}> {}

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

export const statusFailure = (
  response: HttpClientResponse.HttpClientResponse,
  what: string,
  body: string
) => {
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

export const transport = (what: string) => (error: HttpClientError.HttpClientError) =>
  new RegistryFailure({ kind: "transient", message: `${what}: ${error.message}` })

const retryPolicy = Schedule.exponential(Duration.millis(200), 2).pipe(
  Schedule.intersect(Schedule.recurs(4))
)

export const retryTransient = <A, R>(effect: Effect.Effect<A, RegistryFailure, R>) =>
  Effect.retry(effect, { schedule: retryPolicy, while: (e) => e.kind === "transient" })

/**
 * How long a registry may go silent (no response headers, or no body bytes) before the attempt is
 * abandoned and retried: a stalled connection must not hang a pull. `MICROAGENT_REGISTRY_STALL_SECONDS`
 * changes it (a very slow link may need more).
 */
export const stallTimeout = (): Duration.Duration => {
  const seconds = Number(process.env.MICROAGENT_REGISTRY_STALL_SECONDS)
  return Duration.seconds(Number.isFinite(seconds) && seconds > 0 ? seconds : 30)
}

/** What a caller should wait before retrying a pull the registry or network failed. */
const defaultRetryAfterMs = 5000

export const isNoSpace = (cause: unknown) => {
  const code = (cause as { readonly code?: unknown } | undefined)?.code
  return code === "ENOSPC" || code === "EDQUOT"
}

/** Maps an adapter failure to the classified errors callers see. */
export const toMicroagentError = (ref: ImageRef) => (failure: RegistryFailure): RegistryError => {
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

export interface Session {
  readonly client: HttpClient.HttpClient
  readonly sources: CredentialSources
  /** Authorization header values by `registry|repository`. */
  readonly authorizations: Map<string, string>
}

export const drain = (response: HttpClientResponse.HttpClientResponse) =>
  response.text.pipe(Effect.orElseSucceed(() => ""))

const useHttp = (ref: ImageRef, options: RegistryOptions | undefined): boolean =>
  options?.insecure === true || isLoopbackRegistry(ref.registry)

export const apiUrl = (ref: ImageRef, options: RegistryOptions | undefined, path: string) =>
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

/**
 * A bearer token from the challenge's realm. `scopes` overrides the challenge's scope: a push asks for
 * `repository:<repo>:pull,push` (and pull on a mount's source) up front.
 */
const fetchToken = (
  session: Session,
  ref: ImageRef,
  params: Readonly<Record<string, string>>,
  credential: Credential | undefined,
  scopes?: ReadonlyArray<string>
): Effect.Effect<string, RegistryFailure> =>
  Effect.gen(function*() {
    const realm = params.realm
    if (realm === undefined) {
      return yield* new RegistryFailure({ kind: "auth", message: "bearer challenge without a realm" })
    }
    const scopeList = scopes ?? [params.scope ?? `repository:${ref.repository}:pull`]
    const query: Record<string, string> = {}
    if (params.service !== undefined) query.service = params.service
    let response: HttpClientResponse.HttpClientResponse
    if (credential?.identityToken !== undefined) {
      // An identity token is an OAuth2 refresh token: exchanged with a POST (Docker's protocol).
      const request = HttpClientRequest.post(realm).pipe(
        HttpClientRequest.bodyUrlParams({
          ...query,
          scope: scopeList.join(" "),
          grant_type: "refresh_token",
          client_id: "microagent",
          refresh_token: credential.identityToken
        })
      )
      response = yield* session.client.execute(request).pipe(Effect.mapError(transport(`POST ${realm}`)))
    } else {
      const url = new URL(realm)
      for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v)
      for (const scope of scopeList) url.searchParams.append("scope", scope)
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

/**
 * The Authorization header answering a 401's challenge: a bearer token (for `scopes`, default the
 * challenge's) or basic credentials. A rejected credential names where it came from, never its secret.
 */
export const authorize = (
  session: Session,
  ref: ImageRef,
  challengeHeader: string | undefined,
  scopes?: ReadonlyArray<string>,
  credentialOverride?: Credential
): Effect.Effect<
  { readonly authorization: string; readonly credential: Credential | undefined },
  RegistryFailure
> =>
  Effect.gen(function*() {
    const challenge = challengeHeader !== undefined ? parseChallenge(challengeHeader) : undefined
    const credential = credentialOverride ?? (yield* lookupCredential(ref.registry, session.sources).pipe(
      Effect.mapError((e) => new RegistryFailure({ kind: "permanent", message: e.message }))
    ))
    if (challenge?.scheme === "bearer") {
      const token = yield* fetchToken(session, ref, challenge.params, credential, scopes).pipe(
        Effect.mapError((e) =>
          e.kind === "auth" && credential !== undefined
            ? new RegistryFailure({
              kind: "auth",
              message: `the credentials from ${credential.source} were rejected (${e.message})`
            })
            : e
        )
      )
      return { authorization: `Bearer ${token}`, credential }
    }
    if (challenge?.scheme === "basic" && credential !== undefined) {
      return {
        authorization: `Basic ${
          Buffer.from(`${credential.username}:${credential.password}`).toString("base64")
        }`,
        credential
      }
    }
    return yield* new RegistryFailure({
      kind: "auth",
      message: credential === undefined
        ? "authentication required and no credentials found"
        : `authentication required (challenge: ${challengeHeader ?? "none"})`
    })
  })

export const rejected = (credential: Credential | undefined) =>
  new RegistryFailure({
    kind: "auth",
    message: credential === undefined
      ? "authentication required and no credentials found"
      : `the credentials from ${credential.source} were rejected`
  })

/** A GET against the registry API that answers authentication challenges. */
export const authorizedGet = (
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
    const { authorization, credential } = yield* authorize(session, ref, challengeHeader)
    session.authorizations.set(key, authorization)
    const second = yield* getFollowing(session, url, headers, authorization)
    if (second.status === 401) {
      yield* drain(second)
      return yield* rejected(credential)
    }
    return second
  })
